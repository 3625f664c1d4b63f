/*
 * test_server_response.c: the JSON the server writes — error objects, text_completion and
 * chat.completion bodies, SSE chunks — built from hand-made engine events, checked by parsing
 * them back with cJSON.
 */
#include <stdlib.h>
#include <string.h>

#include <check.h>
#include <cjson/cJSON.h>

#include "../src/server/response.h"

static const char *const vocab[] = {"Hel", "lo", " world", "\xe2\x82", "\xac", "!", "<eos>"};

static const char *fake_token_text(void *ctx, int32_t id, size_t *len) {
    (void)ctx;
    if (id < 0 || id >= (int32_t)(sizeof(vocab) / sizeof(vocab[0]))) {
        *len = 0;
        return NULL;
    }
    *len = strlen(vocab[id]);
    return vocab[id];
}

static struct completion_builder *make(int32_t n_prompts, int32_t n, int32_t best_of,
                                       int32_t logprobs, bool echo, bool stream, bool usage) {
    struct completion_meta meta;
    completion_meta_init(&meta, false, "gpt2-test", "fp_gptd");
    struct completion_builder_config cfg = {
        .n_prompts = n_prompts,
        .n = n,
        .best_of = best_of,
        .logprobs = logprobs,
        .echo = echo,
        .stream = stream,
        .include_usage = usage,
        .eos_id = 6,
        .token_text = fake_token_text,
        .token_text_ctx = NULL,
    };
    struct completion_builder *b = completion_builder_create(&meta, &cfg);
    ck_assert_ptr_nonnull(b);
    return b;
}

/* A chat builder (chat.completion objects) with one prompt. */
static struct completion_builder *make_chat(int32_t n, int32_t logprobs, bool stream) {
    struct completion_meta meta;
    completion_meta_init(&meta, true, "chat-test", "fp_gptd");
    struct completion_builder_config cfg = {
        .n_prompts = 1,
        .n = n,
        .best_of = n,
        .logprobs = logprobs,
        .stream = stream,
        .include_usage = stream,
        .chat = true,
        .eos_id = 6,
        .token_text = fake_token_text,
    };
    struct completion_builder *b = completion_builder_create(&meta, &cfg);
    ck_assert_ptr_nonnull(b);
    int32_t ids[] = {0, 1};
    ck_assert_int_eq(completion_builder_set_prompt(b, 0, "", 0, ids, 2), 0);
    return b;
}

static struct engine_event token_ev(int32_t index, int32_t token, const char *text, float lp) {
    struct engine_event ev;
    memset(&ev, 0, sizeof(ev));
    ev.type = ENGINE_EVENT_TOKEN;
    ev.index = index;
    ev.token = token;
    ev.text_len = (uint32_t)strlen(text);
    memcpy(ev.text, text, ev.text_len);
    ev.has_logprob = true;
    ev.logprob = lp;
    ev.n_top = 2;
    ev.top[0].token_id = token;
    ev.top[0].logprob = lp;
    ev.top[1].token_id = 5;
    ev.top[1].logprob = lp - 1.0f;
    return ev;
}

static struct engine_event finish_ev(int32_t index, enum engine_finish_reason r, const char *stop,
                                     int32_t stop_token, int32_t n_tokens, double sum_lp) {
    struct engine_event ev;
    memset(&ev, 0, sizeof(ev));
    ev.type = ENGINE_EVENT_FINISH;
    ev.index = index;
    ev.finish_reason = r;
    strcpy(ev.stop_reason, stop);
    ev.stop_token = stop_token;
    ev.n_completion_tokens = n_tokens;
    ev.sum_logprob = sum_lp;
    return ev;
}

static cJSON *parse_body(const struct sbuf *b) {
    ck_assert(!b->failed);
    cJSON *j = cJSON_ParseWithLength(b->data, b->len);
    ck_assert_msg(j != NULL, "not JSON: %s", b->data);
    return j;
}

static const cJSON *get(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    ck_assert_msg(v != NULL, "missing %s", k);
    return v;
}

START_TEST(test_response_error_object_has_openai_shape) {
    struct api_error e;
    api_error_set(&e, 400, "invalid_request_error", "invalid_value", "temperature",
                  "temperature must be in [0, 2], got %g", -1.0);
    struct sbuf b;
    sbuf_init(&b);
    response_error_json(&b, &e);
    cJSON *j = parse_body(&b);
    const cJSON *err = get(j, "error");
    ck_assert_str_eq(get(err, "message")->valuestring, "temperature must be in [0, 2], got -1");
    ck_assert_str_eq(get(err, "type")->valuestring, "invalid_request_error");
    ck_assert_str_eq(get(err, "param")->valuestring, "temperature");
    ck_assert_str_eq(get(err, "code")->valuestring, "invalid_value");
    cJSON_Delete(j);
    /* null param and code are JSON nulls, not missing keys */
    api_error_set(&e, 404, "not_found_error", NULL, NULL, "no such route");
    sbuf_reset(&b);
    response_error_json(&b, &e);
    j = parse_body(&b);
    ck_assert(cJSON_IsNull(get(get(j, "error"), "param")));
    ck_assert(cJSON_IsNull(get(get(j, "error"), "code")));
    cJSON_Delete(j);
    /* After headers: one data event then [DONE] */
    sbuf_reset(&b);
    response_sse_error(&b, &e);
    ck_assert(strncmp(b.data, "data: {\"error\":", 15) == 0);
    ck_assert(strstr(b.data, "\n\ndata: [DONE]\n\n") != NULL);
    sbuf_finish(&b);
}
END_TEST

START_TEST(test_response_engine_errors_map_to_statuses) {
    struct api_error e;
    response_engine_error(&e, ENGINE_ERR_OVERLOADED, true, NULL);
    ck_assert_int_eq(e.status, 503);
    ck_assert_str_eq(e.code, "queue_full");
    ck_assert_str_eq(e.type, "overloaded_error");
    response_engine_error(&e, ENGINE_ERR_OVERLOADED, false, NULL);
    ck_assert_str_eq(e.code, "queue_timeout");
    response_engine_error(&e, ENGINE_ERR_DRAINING, false, NULL);
    ck_assert_int_eq(e.status, 503);
    ck_assert_str_eq(e.code, "shutting_down");
    response_engine_error(&e, ENGINE_ERR_CONTEXT, true, "too long");
    ck_assert_int_eq(e.status, 400);
    ck_assert_str_eq(e.code, "context_length_exceeded");
    response_engine_error(&e, ENGINE_ERR_NOMEM, true, NULL);
    ck_assert_int_eq(e.status, 500);
}
END_TEST

START_TEST(test_response_body_has_every_field) {
    struct completion_builder *b = make(2, 1, 1, -1, false, false, false);
    int32_t ids0[] = {0}, ids1[] = {2, 5};
    ck_assert_int_eq(completion_builder_set_prompt(b, 0, "Hel", 3, ids0, 1), 0);
    ck_assert_int_eq(completion_builder_set_prompt(b, 1, " world!", 7, ids1, 2), 0);
    struct engine_event ev = token_ev(0, 1, "lo", -0.5f);
    ck_assert_int_eq(completion_builder_event(b, 0, &ev, NULL), 0);
    ev = token_ev(0, 2, " world", -0.25f);
    ck_assert_int_eq(completion_builder_event(b, 0, &ev, NULL), 0);
    ck_assert(!completion_builder_is_done(b));
    ev = finish_ev(0, ENGINE_FINISH_LENGTH, "", -1, 2, -0.75);
    ck_assert_int_eq(completion_builder_event(b, 0, &ev, NULL), 0);
    ev = finish_ev(0, ENGINE_FINISH_STOP, "\n", -1, 0, 0);
    ck_assert_int_eq(completion_builder_event(b, 1, &ev, NULL), 0);
    ck_assert(completion_builder_is_done(b));
    struct sbuf out;
    sbuf_init(&out);
    completion_builder_body(b, &out);
    cJSON *j = parse_body(&out);
    ck_assert(strncmp(get(j, "id")->valuestring, "cmpl-", 5) == 0);
    ck_assert_str_eq(get(j, "object")->valuestring, "text_completion");
    ck_assert(cJSON_IsNumber(get(j, "created")));
    ck_assert_str_eq(get(j, "model")->valuestring, "gpt2-test");
    ck_assert_str_eq(get(j, "system_fingerprint")->valuestring, "fp_gptd");
    const cJSON *choices = get(j, "choices");
    ck_assert_int_eq(cJSON_GetArraySize(choices), 2);
    const cJSON *c0 = cJSON_GetArrayItem(choices, 0), *c1 = cJSON_GetArrayItem(choices, 1);
    ck_assert_str_eq(get(c0, "text")->valuestring, "lo world");
    ck_assert_int_eq(get(c0, "index")->valueint, 0);
    ck_assert(cJSON_IsNull(get(c0, "logprobs")));
    ck_assert_str_eq(get(c0, "finish_reason")->valuestring, "length");
    ck_assert(cJSON_IsNull(get(c0, "stop_reason")));
    ck_assert_int_eq(get(c1, "index")->valueint, 1);
    ck_assert_str_eq(get(c1, "text")->valuestring, "");
    ck_assert_str_eq(get(c1, "finish_reason")->valuestring, "stop");
    ck_assert_str_eq(get(c1, "stop_reason")->valuestring, "\n");
    const cJSON *usage = get(j, "usage");
    ck_assert_int_eq(get(usage, "prompt_tokens")->valueint, 3);
    ck_assert_int_eq(get(usage, "completion_tokens")->valueint, 2);
    ck_assert_int_eq(get(usage, "total_tokens")->valueint, 5);
    cJSON_Delete(j);
    sbuf_finish(&out);
    completion_builder_destroy(b);
}
END_TEST

START_TEST(test_response_echo_logprobs_use_legacy_shape) {
    struct completion_builder *b = make(1, 1, 1, 1, true, false, false);
    int32_t ids[] = {0, 1};
    ck_assert_int_eq(completion_builder_set_prompt(b, 0, "Hello", 5, ids, 2), 0);
    struct engine_event ev;
    memset(&ev, 0, sizeof(ev));
    ev.type = ENGINE_EVENT_PROMPT_TOKEN;
    ev.token = 1;
    ev.has_logprob = true;
    ev.logprob = -2.0f;
    ev.n_top = 1;
    ev.top[0].token_id = 2;
    ev.top[0].logprob = -1.0f;
    ck_assert_int_eq(completion_builder_event(b, 0, &ev, NULL), 0);
    ev = token_ev(0, 5, "!", -0.5f);
    ck_assert_int_eq(completion_builder_event(b, 0, &ev, NULL), 0);
    ev = finish_ev(0, ENGINE_FINISH_STOP, "", 6, 2, -0.5);
    ck_assert_int_eq(completion_builder_event(b, 0, &ev, NULL), 0);
    struct sbuf out;
    sbuf_init(&out);
    completion_builder_body(b, &out);
    cJSON *j = parse_body(&out);
    const cJSON *c0 = cJSON_GetArrayItem(get(j, "choices"), 0);
    ck_assert_str_eq(get(c0, "text")->valuestring, "Hello!");
    ck_assert(cJSON_IsNull(get(c0, "stop_reason"))); /* EOS reports null */
    const cJSON *lp = get(c0, "logprobs");
    const cJSON *tokens = get(lp, "tokens"), *values = get(lp, "token_logprobs");
    const cJSON *top = get(lp, "top_logprobs"), *off = get(lp, "text_offset");
    ck_assert_int_eq(cJSON_GetArraySize(tokens), 3);
    ck_assert_int_eq(cJSON_GetArraySize(values), 3);
    ck_assert_int_eq(cJSON_GetArraySize(top), 3);
    ck_assert_int_eq(cJSON_GetArraySize(off), 3);
    ck_assert_str_eq(cJSON_GetArrayItem(tokens, 0)->valuestring, "Hel");
    ck_assert_str_eq(cJSON_GetArrayItem(tokens, 2)->valuestring, "!");
    ck_assert(cJSON_IsNull(cJSON_GetArrayItem(values, 0)));
    ck_assert(cJSON_IsNull(cJSON_GetArrayItem(top, 0)));
    ck_assert_double_eq_tol(cJSON_GetArrayItem(values, 1)->valuedouble, -2.0, 1e-6);
    ck_assert_double_eq_tol(
        cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(top, 1), " world")->valuedouble, -1.0,
        1e-6);
    ck_assert_int_eq(cJSON_GetArrayItem(off, 0)->valueint, 0);
    ck_assert_int_eq(cJSON_GetArrayItem(off, 1)->valueint, 3);
    ck_assert_int_eq(cJSON_GetArrayItem(off, 2)->valueint, 5);
    cJSON_Delete(j);
    sbuf_finish(&out);
    completion_builder_destroy(b);
}
END_TEST

/* Splits an SSE body into its data payloads; returns the count. */
static int sse_payloads(char *body, char **payloads, int max) {
    int n = 0;
    char *p = body;
    while (*p != '\0' && n < max) {
        ck_assert_msg(strncmp(p, "data: ", 6) == 0, "event does not start with data: %s", p);
        char *end = strstr(p, "\n\n");
        ck_assert_ptr_nonnull(end);
        *end = '\0';
        payloads[n++] = p + 6;
        p = end + 2;
    }
    return n;
}

START_TEST(test_response_stream_chunks_join_to_text_and_end_with_usage_and_done) {
    struct completion_builder *b = make(1, 2, 2, -1, false, true, true);
    int32_t ids[] = {0};
    completion_builder_set_prompt(b, 0, "Hel", 3, ids, 1);
    struct sbuf sse;
    sbuf_init(&sse);
    struct engine_event ev = token_ev(0, 1, "lo", -0.5f);
    completion_builder_event(b, 0, &ev, &sse);
    ev = token_ev(1, 2, " world", -0.5f);
    completion_builder_event(b, 0, &ev, &sse);
    ev = token_ev(0, 3, "", -0.5f); /* held back: no chunk */
    completion_builder_event(b, 0, &ev, &sse);
    ev = token_ev(0, 4, "\xe2\x82\xac", -0.5f);
    completion_builder_event(b, 0, &ev, &sse);
    ev = finish_ev(0, ENGINE_FINISH_LENGTH, "", -1, 3, -1.5);
    completion_builder_event(b, 0, &ev, &sse);
    ev = finish_ev(1, ENGINE_FINISH_STOP, "", 5, 1, -0.5);
    completion_builder_event(b, 0, &ev, &sse);
    ck_assert(completion_builder_is_done(b));
    completion_builder_stream_end(b, &sse);
    ck_assert(!sse.failed);
    char *payloads[16];
    int n = sse_payloads(sse.data, payloads, 16);
    ck_assert_int_eq(n, 7); /* 3 text chunks, 2 finish chunks, usage, [DONE] */
    ck_assert_str_eq(payloads[n - 1], "[DONE]");
    char text[2][64] = {"", ""};
    const char *id = NULL;
    double created = 0;
    bool finished[2] = {false, false};
    for (int i = 0; i < n - 2; i++) {
        cJSON *j = cJSON_Parse(payloads[i]);
        ck_assert_ptr_nonnull(j);
        if (id == NULL) {
            id = strdup(get(j, "id")->valuestring);
            created = get(j, "created")->valuedouble;
        }
        ck_assert_str_eq(get(j, "id")->valuestring, id);
        ck_assert_double_eq(get(j, "created")->valuedouble, created);
        ck_assert(cJSON_IsNull(get(j, "usage")));
        const cJSON *c = cJSON_GetArrayItem(get(j, "choices"), 0);
        int idx = get(c, "index")->valueint;
        ck_assert(!finished[idx]); /* nothing after the finishing chunk of that index */
        strcat(text[idx], get(c, "text")->valuestring);
        if (!cJSON_IsNull(get(c, "finish_reason"))) {
            finished[idx] = true;
        }
        if (idx == 1 && finished[1]) {
            ck_assert_int_eq(get(c, "stop_reason")->valueint, 5); /* a stop token id */
        }
        cJSON_Delete(j);
    }
    ck_assert(finished[0] && finished[1]);
    ck_assert_str_eq(text[0], "lo\xe2\x82\xac");
    ck_assert_str_eq(text[1], " world");
    cJSON *u = cJSON_Parse(payloads[n - 2]);
    ck_assert_int_eq(cJSON_GetArraySize(get(u, "choices")), 0);
    ck_assert_int_eq(get(get(u, "usage"), "completion_tokens")->valueint, 4);
    ck_assert_int_eq(get(get(u, "usage"), "prompt_tokens")->valueint, 1);
    ck_assert_str_eq(get(u, "id")->valuestring, id);
    cJSON_Delete(u);
    free((void *)id);
    sbuf_finish(&sse);
    completion_builder_destroy(b);
}
END_TEST

START_TEST(test_response_chat_body_has_message_and_chat_logprobs) {
    struct completion_builder *b = make_chat(1, 2, false);
    struct engine_event ev = token_ev(0, 2, " world", -0.25f);
    ck_assert_int_eq(completion_builder_event(b, 0, &ev, NULL), 0);
    ev = token_ev(0, 3, "", -0.5f); /* half of the euro sign: bytes only */
    ck_assert_int_eq(completion_builder_event(b, 0, &ev, NULL), 0);
    ev = token_ev(0, 4, "\xe2\x82\xac", -0.75f);
    ck_assert_int_eq(completion_builder_event(b, 0, &ev, NULL), 0);
    ev = finish_ev(0, ENGINE_FINISH_STOP, "", 6, 3, -1.5);
    ev.is_eos = true;
    ev.n_cached_tokens = 16; /* the prompt's first block came from the prefix cache */
    ck_assert_int_eq(completion_builder_event(b, 0, &ev, NULL), 0);
    struct sbuf out;
    sbuf_init(&out);
    completion_builder_body(b, &out);
    cJSON *j = parse_body(&out);
    ck_assert_str_eq(get(j, "object")->valuestring, "chat.completion");
    ck_assert(strncmp(get(j, "id")->valuestring, "chatcmpl-", 9) == 0);
    const cJSON *c = cJSON_GetArrayItem(get(j, "choices"), 0);
    ck_assert_int_eq(get(c, "index")->valueint, 0);
    ck_assert_ptr_null(cJSON_GetObjectItemCaseSensitive(c, "text"));
    const cJSON *msg = get(c, "message");
    ck_assert_str_eq(get(msg, "role")->valuestring, "assistant");
    ck_assert_str_eq(get(msg, "content")->valuestring, " world\xe2\x82\xac");
    ck_assert_str_eq(get(c, "finish_reason")->valuestring, "stop");
    ck_assert(cJSON_IsNull(get(c, "stop_reason"))); /* an end token of the model */
    const cJSON *content = get(get(c, "logprobs"), "content");
    ck_assert_int_eq(cJSON_GetArraySize(content), 3);
    const cJSON *t1 = cJSON_GetArrayItem(content, 1);
    ck_assert_str_eq(get(t1, "token")->valuestring, "\xef\xbf\xbd"); /* a lone byte: U+FFFD */
    ck_assert_double_eq_tol(get(t1, "logprob")->valuedouble, -0.5, 1e-6);
    const cJSON *bytes = get(t1, "bytes"); /* ...but its bytes are exact */
    ck_assert_int_eq(cJSON_GetArraySize(bytes), 2);
    ck_assert_int_eq(cJSON_GetArrayItem(bytes, 0)->valueint, 0xe2);
    ck_assert_int_eq(cJSON_GetArrayItem(bytes, 1)->valueint, 0x82);
    const cJSON *top = get(t1, "top_logprobs");
    ck_assert_int_eq(cJSON_GetArraySize(top), 2);
    ck_assert_str_eq(get(cJSON_GetArrayItem(top, 1), "token")->valuestring, "!");
    ck_assert_double_eq_tol(get(cJSON_GetArrayItem(top, 1), "logprob")->valuedouble, -1.5, 1e-6);
    ck_assert_int_eq(cJSON_GetArraySize(get(cJSON_GetArrayItem(top, 1), "bytes")), 1);
    ck_assert_int_eq(get(get(j, "usage"), "prompt_tokens")->valueint, 2);
    ck_assert_int_eq(get(get(j, "usage"), "completion_tokens")->valueint, 3);
    ck_assert_int_eq(get(get(get(j, "usage"), "prompt_tokens_details"), "cached_tokens")->valueint,
                     16);
    ck_assert_int_eq(completion_builder_cached_tokens(b), 16);
    cJSON_Delete(j);
    sbuf_finish(&out);
    completion_builder_destroy(b);

    /* Without logprobs: null, and top_logprobs 0 gives empty lists. */
    b = make_chat(1, -1, false);
    ev = token_ev(0, 0, "Hel", -0.1f);
    completion_builder_event(b, 0, &ev, NULL);
    ev = finish_ev(0, ENGINE_FINISH_LENGTH, "", -1, 1, -0.1);
    completion_builder_event(b, 0, &ev, NULL);
    sbuf_init(&out);
    completion_builder_body(b, &out);
    j = parse_body(&out);
    ck_assert(cJSON_IsNull(get(cJSON_GetArrayItem(get(j, "choices"), 0), "logprobs")));
    cJSON_Delete(j);
    sbuf_finish(&out);
    completion_builder_destroy(b);
}
END_TEST

START_TEST(test_response_chat_stream_opens_with_role_and_closes_with_finish) {
    struct completion_builder *b = make_chat(2, 0, true);
    struct sbuf sse;
    sbuf_init(&sse);
    struct engine_event ev = token_ev(0, 0, "Hel", -0.5f);
    completion_builder_event(b, 0, &ev, &sse);
    ev = token_ev(1, 2, " world", -0.5f);
    completion_builder_event(b, 0, &ev, &sse);
    ev = token_ev(0, 1, "lo", -0.5f);
    completion_builder_event(b, 0, &ev, &sse);
    ev = finish_ev(0, ENGINE_FINISH_STOP, "lo!", -1, 2, -1.0);
    completion_builder_event(b, 0, &ev, &sse);
    ev = finish_ev(1, ENGINE_FINISH_LENGTH, "", -1, 1, -0.5);
    completion_builder_event(b, 0, &ev, &sse);
    ck_assert(completion_builder_is_done(b));
    completion_builder_stream_end(b, &sse);
    char *payloads[16];
    int n = sse_payloads(sse.data, payloads, 16);
    /* per choice: role, its tokens, finish; then usage and [DONE] */
    ck_assert_int_eq(n, 2 + 3 + 2 + 2);
    ck_assert_str_eq(payloads[n - 1], "[DONE]");
    char content[2][64] = {"", ""};
    int state[2] = {0, 0}; /* 0 nothing yet, 1 role seen, 2 finished */
    for (int i = 0; i < n - 2; i++) {
        cJSON *j = cJSON_Parse(payloads[i]);
        ck_assert_ptr_nonnull(j);
        ck_assert_str_eq(get(j, "object")->valuestring, "chat.completion.chunk");
        ck_assert(cJSON_IsNull(get(j, "usage")));
        const cJSON *c = cJSON_GetArrayItem(get(j, "choices"), 0);
        int idx = get(c, "index")->valueint;
        const cJSON *delta = get(c, "delta");
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(delta, "role");
        const cJSON *text = cJSON_GetObjectItemCaseSensitive(delta, "content");
        if (state[idx] == 0) {
            ck_assert_str_eq(role->valuestring, "assistant");
            ck_assert_str_eq(text->valuestring, "");
            ck_assert(cJSON_IsNull(get(c, "logprobs")));
            state[idx] = 1;
        } else if (!cJSON_IsNull(get(c, "finish_reason"))) {
            ck_assert_int_eq(state[idx], 1);
            ck_assert_int_eq(cJSON_GetArraySize(delta), 0); /* {} */
            state[idx] = 2;
            if (idx == 0) {
                ck_assert_str_eq(get(c, "finish_reason")->valuestring, "stop");
                ck_assert_str_eq(get(c, "stop_reason")->valuestring, "lo!");
            }
        } else {
            ck_assert_int_eq(state[idx], 1);
            ck_assert_ptr_null(role);
            strcat(content[idx], text->valuestring);
            const cJSON *lp = get(get(c, "logprobs"), "content");
            ck_assert_int_eq(cJSON_GetArraySize(lp), 1);
            ck_assert_int_eq(cJSON_GetArraySize(get(cJSON_GetArrayItem(lp, 0), "top_logprobs")), 0);
        }
        cJSON_Delete(j);
    }
    ck_assert(state[0] == 2 && state[1] == 2);
    ck_assert_str_eq(content[0], "Hello");
    ck_assert_str_eq(content[1], " world");
    cJSON *u = cJSON_Parse(payloads[n - 2]);
    ck_assert_str_eq(get(u, "object")->valuestring, "chat.completion.chunk");
    ck_assert_int_eq(cJSON_GetArraySize(get(u, "choices")), 0);
    ck_assert_int_eq(get(get(u, "usage"), "completion_tokens")->valueint, 3);
    cJSON_Delete(u);
    sbuf_finish(&sse);
    completion_builder_destroy(b);
}
END_TEST

START_TEST(test_response_best_of_keeps_highest_mean_logprob) {
    struct completion_builder *b = make(1, 1, 3, -1, false, false, false);
    int32_t ids[] = {0};
    completion_builder_set_prompt(b, 0, "Hel", 3, ids, 1);
    const char *texts[3] = {"a", "b", "c"};
    double sums[3] = {-3.0, -0.5, -2.0};
    for (int k = 0; k < 3; k++) {
        struct engine_event ev = token_ev(k, 1, texts[k], (float)sums[k]);
        completion_builder_event(b, 0, &ev, NULL);
        ev = finish_ev(k, ENGINE_FINISH_LENGTH, "", -1, 1, sums[k]);
        completion_builder_event(b, 0, &ev, NULL);
    }
    struct sbuf out;
    sbuf_init(&out);
    completion_builder_body(b, &out);
    cJSON *j = parse_body(&out);
    const cJSON *choices = get(j, "choices");
    ck_assert_int_eq(cJSON_GetArraySize(choices), 1);
    ck_assert_str_eq(get(cJSON_GetArrayItem(choices, 0), "text")->valuestring, "b");
    ck_assert_int_eq(get(get(j, "usage"), "completion_tokens")->valueint, 3);
    cJSON_Delete(j);
    sbuf_finish(&out);
    completion_builder_destroy(b);
}
END_TEST

START_TEST(test_response_output_is_valid_utf8_whatever_the_token_bytes) {
    /* Token 3 alone is half a character: logprob token strings must still be valid JSON. */
    struct completion_builder *b = make(1, 1, 1, 0, false, false, false);
    int32_t ids[] = {0};
    completion_builder_set_prompt(b, 0, "Hel", 3, ids, 1);
    struct engine_event ev = token_ev(0, 3, "", -1.0f);
    completion_builder_event(b, 0, &ev, NULL);
    ev = token_ev(0, 4, "\xe2\x82\xac", -1.0f);
    completion_builder_event(b, 0, &ev, NULL);
    ev = finish_ev(0, ENGINE_FINISH_LENGTH, "", -1, 2, -2.0);
    completion_builder_event(b, 0, &ev, NULL);
    struct sbuf out;
    sbuf_init(&out);
    completion_builder_body(b, &out);
    ck_assert(utf8_is_valid(out.data, out.len));
    cJSON *j = parse_body(&out);
    const cJSON *c0 = cJSON_GetArrayItem(get(j, "choices"), 0);
    ck_assert_str_eq(get(c0, "text")->valuestring, "\xe2\x82\xac");
    ck_assert_str_eq(cJSON_GetArrayItem(get(get(c0, "logprobs"), "tokens"), 0)->valuestring,
                     "\xef\xbf\xbd");
    cJSON_Delete(j);
    sbuf_finish(&out);
    completion_builder_destroy(b);
}
END_TEST

START_TEST(test_response_json_string_escapes_controls_and_replaces_bad_bytes) {
    struct sbuf b;
    sbuf_init(&b);
    sbuf_json_string(&b, "a\"\\\n\x01\xff\xc3\xa9", 8);
    ck_assert_str_eq(b.data, "\"a\\\"\\\\\\n\\u0001\xef\xbf\xbd\xc3\xa9\"");
    sbuf_reset(&b);
    sbuf_json_double(&b, -1.0 / 0.0);
    ck_assert_str_eq(b.data, "-9999.0");
    sbuf_finish(&b);
    ck_assert(!utf8_is_valid("\xf4\x90\x80\x80", 4)); /* > U+10FFFF */
    ck_assert(utf8_is_valid("\xf0\x9f\x98\x80", 4));
}
END_TEST

START_TEST(test_response_stream_echo_sends_the_prompt_first) {
    struct completion_builder *b = make(1, 1, 1, 0, true, true, false);
    int32_t ids[] = {0, 1};
    completion_builder_set_prompt(b, 0, "Hello", 5, ids, 2);
    struct sbuf sse;
    sbuf_init(&sse);
    struct engine_event ev = token_ev(0, 5, "!", -0.5f);
    completion_builder_event(b, 0, &ev, &sse);
    ev = finish_ev(0, ENGINE_FINISH_LENGTH, "", -1, 1, -0.5);
    completion_builder_event(b, 0, &ev, &sse);
    completion_builder_stream_end(b, &sse);
    char *payloads[8];
    int n = sse_payloads(sse.data, payloads, 8);
    ck_assert_int_eq(n, 4); /* echo, token, finish, [DONE] */
    cJSON *j = cJSON_Parse(payloads[0]);
    const cJSON *c = cJSON_GetArrayItem(get(j, "choices"), 0);
    ck_assert_str_eq(get(c, "text")->valuestring, "Hello");
    const cJSON *lp = get(c, "logprobs");
    ck_assert_int_eq(cJSON_GetArraySize(get(lp, "tokens")), 1); /* only token 0 without events */
    ck_assert(cJSON_IsNull(cJSON_GetArrayItem(get(lp, "token_logprobs"), 0)));
    cJSON_Delete(j);
    j = cJSON_Parse(payloads[1]);
    c = cJSON_GetArrayItem(get(j, "choices"), 0);
    ck_assert_str_eq(get(c, "text")->valuestring, "!");
    /* text_offset counts the echoed prompt */
    ck_assert_int_eq(cJSON_GetArrayItem(get(get(c, "logprobs"), "text_offset"), 0)->valueint, 5);
    cJSON_Delete(j);
    sbuf_finish(&sse);
    completion_builder_destroy(b);
}
END_TEST

START_TEST(test_response_candidates_extension_lists_survivors_per_token) {
    struct completion_meta meta;
    completion_meta_init(&meta, false, "m", "fp");
    struct completion_builder_config cfg = {.n_prompts = 1,
                                            .n = 1,
                                            .best_of = 1,
                                            .logprobs = -1,
                                            .candidates = 2,
                                            .eos_id = 6,
                                            .token_text = fake_token_text};
    struct completion_builder *b = completion_builder_create(&meta, &cfg);
    int32_t ids[] = {0};
    completion_builder_set_prompt(b, 0, "Hel", 3, ids, 1);
    struct engine_event ev = token_ev(0, 1, "lo", -0.5f);
    ev.n_survivors = 7;
    ev.n_candidates = 2;
    ev.candidates[0].id = 1;
    ev.candidates[0].prob = 0.75f;
    ev.candidates[1].id = 2;
    ev.candidates[1].prob = 0.25f;
    completion_builder_event(b, 0, &ev, NULL);
    ev = finish_ev(0, ENGINE_FINISH_LENGTH, "", -1, 1, -0.5);
    completion_builder_event(b, 0, &ev, NULL);
    struct sbuf out;
    sbuf_init(&out);
    completion_builder_body(b, &out);
    cJSON *j = parse_body(&out);
    const cJSON *cands = get(cJSON_GetArrayItem(get(j, "choices"), 0), "candidates");
    ck_assert_int_eq(cJSON_GetArraySize(cands), 1);
    const cJSON *c0 = cJSON_GetArrayItem(cands, 0);
    ck_assert_int_eq(get(c0, "n_survivors")->valueint, 7);
    const cJSON *list = get(c0, "candidates");
    ck_assert_int_eq(cJSON_GetArraySize(list), 2);
    ck_assert_str_eq(get(cJSON_GetArrayItem(list, 1), "token")->valuestring, " world");
    ck_assert_double_eq_tol(get(cJSON_GetArrayItem(list, 0), "prob")->valuedouble, 0.75, 1e-6);
    cJSON_Delete(j);
    sbuf_finish(&out);
    completion_builder_destroy(b);
}
END_TEST

START_TEST(test_response_rejects_events_out_of_range) {
    struct completion_builder *b = make(1, 1, 1, -1, false, false, false);
    struct engine_event ev = token_ev(3, 1, "x", 0);
    ck_assert_int_eq(completion_builder_event(b, 0, &ev, NULL), -1);
    ck_assert_int_eq(completion_builder_event(b, 2, &ev, NULL), -1);
    completion_builder_destroy(b);
    completion_builder_destroy(NULL);
}
END_TEST

int main(void) {
    Suite *s = suite_create("server_response");
    TCase *tc = tcase_create("response");
    tcase_add_test(tc, test_response_error_object_has_openai_shape);
    tcase_add_test(tc, test_response_engine_errors_map_to_statuses);
    tcase_add_test(tc, test_response_body_has_every_field);
    tcase_add_test(tc, test_response_echo_logprobs_use_legacy_shape);
    tcase_add_test(tc, test_response_stream_chunks_join_to_text_and_end_with_usage_and_done);
    tcase_add_test(tc, test_response_best_of_keeps_highest_mean_logprob);
    tcase_add_test(tc, test_response_chat_body_has_message_and_chat_logprobs);
    tcase_add_test(tc, test_response_chat_stream_opens_with_role_and_closes_with_finish);
    tcase_add_test(tc, test_response_output_is_valid_utf8_whatever_the_token_bytes);
    tcase_add_test(tc, test_response_json_string_escapes_controls_and_replaces_bad_bytes);
    tcase_add_test(tc, test_response_stream_echo_sends_the_prompt_first);
    tcase_add_test(tc, test_response_candidates_extension_lists_survivors_per_token);
    tcase_add_test(tc, test_response_rejects_events_out_of_range);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
