/*
 * test_server_request.c: request parsing and validation of POST /v1/completions and
 * /v1/chat/completions without HTTP or a model: docs/RELIABILITY.md's catalogue B (framing and
 * JSON) and F (fields) rows that need no model, as tables, plus the field values that valid
 * requests must carry.
 */
#include <stdlib.h>
#include <string.h>

#include <check.h>

#include "../src/server/request.h"
#include "../src/server/sbuf.h"

struct parse_case {
    const char *name;
    const char *body;
    size_t len; /* 0 = strlen(body) */
    int status; /* 0 = parses */
    const char *code;
    const char *param;
};

#define OK(name, body)                                                                             \
    { name, body, 0, 0, NULL, NULL }
#define BAD(name, body, code, param)                                                               \
    { name, body, 0, 400, code, param }

static const struct parse_case cases[] = {
    /* B: framing and JSON */
    BAD("B01 truncated", "{\"prompt\": \"hi\",", "invalid_json", NULL),
    BAD("B02 empty", "", "invalid_json", NULL),
    BAD("B03 array", "[1,2]", "invalid_body", NULL),
    BAD("B03 number", "42", "invalid_body", NULL),
    BAD("B03 null", "null", "invalid_body", NULL),
    BAD("B03 string", "\"x\"", "invalid_body", NULL),
    BAD("B04 trailing garbage", "{\"prompt\":\"hi\",\"max_tokens\":2} xyz", "invalid_json", NULL),
    {"B04 NUL then garbage", "{\"prompt\":\"hi\"}\0garbage", 23, 400, "invalid_json", NULL},
    BAD("B14 lone high surrogate", "{\"prompt\":\"hi \\ud800 there\"}", "invalid_json", NULL),
    BAD("B14 lone low surrogate", "{\"prompt\":\"hi \\udc00 there\"}", "invalid_json", NULL),
    BAD("B14 surrogate + A", "{\"prompt\":\"hi \\ud800\\u0041\"}", "invalid_json", NULL),
    BAD("B13 invalid utf8", "{\"prompt\":\"hi \xff\xfe there\"}", "invalid_utf8", NULL),
    BAD("B13 overlong", "{\"prompt\":\"\xc0\xaf\"}", "invalid_utf8", NULL),
    BAD("B13 encoded surrogate", "{\"prompt\":\"\xed\xa0\x80\"}", "invalid_utf8", NULL),
    BAD("B13 truncated char", "{\"prompt\":\"a\xe2\x82\"}", "invalid_utf8", NULL),
    BAD("B15 escaped NUL", "{\"prompt\":\"hi \\u0000 there\"}", "nul_in_string", NULL),
    {"B15 raw NUL in string", "{\"prompt\":\"hi \0 there\"}", 22, 400, "nul_in_string", NULL},
    BAD("B16 duplicate key", "{\"prompt\":\"hi\",\"max_tokens\":1,\"max_tokens\":3}",
        "duplicate_key", "max_tokens"),
    BAD("B16 nested duplicate", "{\"prompt\":\"hi\",\"logit_bias\":{\"1\":1,\"1\":2}}",
        "duplicate_key", "logit_bias"),
    BAD("B17 key case", "{\"Prompt\":\"hi\"}", "missing_parameter", "prompt"),
    OK("B17 unknown key case", "{\"prompt\":\"hi\",\"Max_Tokens\":999999}"),
    BAD("NaN literal", "{\"prompt\":\"hi\",\"temperature\":NaN}", "invalid_json", NULL),
    OK("escaped backslash-u0000 is text", "{\"prompt\":\"a\\\\u0000b\"}"),
    OK("valid multibyte", "{\"prompt\":\"h\xc3\xa9llo \xe2\x82\xac \xf0\x9f\x98\x80\"}"),
    /* F: fields */
    BAD("F01 no prompt", "{\"max_tokens\":3}", "missing_parameter", "prompt"),
    BAD("F02 number", "{\"prompt\":42}", "invalid_type", "prompt"),
    BAD("F02 object", "{\"prompt\":{}}", "invalid_type", "prompt"),
    BAD("F02 float id", "{\"prompt\":[1.5]}", "invalid_type", "prompt"),
    BAD("F02 empty inner", "{\"prompt\":[[]]}", "invalid_type", "prompt"),
    BAD("F02 mixed", "{\"prompt\":[\"a\",[1]]}", "invalid_type", "prompt"),
    BAD("F03 empty", "{\"prompt\":\"\"}", "empty_prompt", "prompt"),
    BAD("F03 empty list", "{\"prompt\":[]}", "empty_prompt", "prompt"),
    BAD("F03 empty string in list", "{\"prompt\":[\"a\",\"\"]}", "empty_prompt", "prompt"),
    OK("F04 ids", "{\"prompt\":[15496, 11, 995]}"),
    OK("F04 id lists", "{\"prompt\":[[15496, 11], [995]]}"),
    OK("strings", "{\"prompt\":[\"a\",\"b\",\"c\",\"d\"]}"),
    BAD("F05 vocab", "{\"prompt\":[50257]}", "invalid_token_id", "prompt"),
    BAD("F05 negative", "{\"prompt\":[-1]}", "invalid_token_id", "prompt"),
    BAD("F05 huge", "{\"prompt\":[2147483648]}", "invalid_token_id", "prompt"),
    BAD("F05 nested", "{\"prompt\":[[1],[50257]]}", "invalid_token_id", "prompt"),
    BAD("F06 too many", "{\"prompt\":[\"a\",\"b\",\"c\",\"d\",\"e\"]}", "too_many_prompts",
        "prompt"),
    BAD("F09 zero", "{\"prompt\":\"hi\",\"max_tokens\":0}", "invalid_value", "max_tokens"),
    BAD("F09 negative", "{\"prompt\":\"hi\",\"max_tokens\":-1}", "invalid_value", "max_tokens"),
    BAD("F09 float", "{\"prompt\":\"hi\",\"max_tokens\":1.5}", "invalid_type", "max_tokens"),
    BAD("F09 string", "{\"prompt\":\"hi\",\"max_tokens\":\"10\"}", "invalid_type", "max_tokens"),
    BAD("F09 1e20", "{\"prompt\":\"hi\",\"max_tokens\":1e20}", "invalid_value", "max_tokens"),
    BAD("F09 bool", "{\"prompt\":\"hi\",\"max_tokens\":true}", "invalid_type", "max_tokens"),
    BAD("F09 over context", "{\"prompt\":\"hi\",\"max_tokens\":1025}", "invalid_value",
        "max_tokens"),
    OK("F09 zero with echo", "{\"prompt\":\"hi\",\"max_tokens\":0,\"echo\":true}"),
    BAD("F11 negative", "{\"prompt\":\"hi\",\"temperature\":-1}", "invalid_value", "temperature"),
    BAD("F11 2.5", "{\"prompt\":\"hi\",\"temperature\":2.5}", "invalid_value", "temperature"),
    BAD("F11 inf", "{\"prompt\":\"hi\",\"temperature\":1e400}", "invalid_value", "temperature"),
    BAD("F11 string", "{\"prompt\":\"hi\",\"temperature\":\"1\"}", "invalid_type", "temperature"),
    OK("F12 greedy", "{\"prompt\":\"hi\",\"temperature\":0}"),
    BAD("F13 top_p 0", "{\"prompt\":\"hi\",\"top_p\":0}", "invalid_value", "top_p"),
    BAD("F13 top_p 1.5", "{\"prompt\":\"hi\",\"top_p\":1.5}", "invalid_value", "top_p"),
    BAD("F13 top_p -1", "{\"prompt\":\"hi\",\"top_p\":-1}", "invalid_value", "top_p"),
    /* In range as doubles, out of range once stored as floats. */
    BAD("top_p 1e-50 rounds to 0", "{\"prompt\":\"hi\",\"top_p\":1e-50}", "invalid_value", "top_p"),
    BAD("min_p 0.99999999999 rounds to 1", "{\"prompt\":\"hi\",\"min_p\":0.99999999999}",
        "invalid_value", "min_p"),
    BAD("F13 top_k -5", "{\"prompt\":\"hi\",\"top_k\":-5}", "invalid_value", "top_k"),
    BAD("F13 top_k 2.5", "{\"prompt\":\"hi\",\"top_k\":2.5}", "invalid_type", "top_k"),
    OK("top_k -1 is off", "{\"prompt\":\"hi\",\"top_k\":-1}"),
    BAD("F14 n 0", "{\"prompt\":\"hi\",\"n\":0}", "invalid_value", "n"),
    BAD("F14 n -1", "{\"prompt\":\"hi\",\"n\":-1}", "invalid_value", "n"),
    BAD("F14 n 1e6", "{\"prompt\":\"hi\",\"n\":1000000}", "invalid_value", "n"),
    BAD("F14 n 1.5", "{\"prompt\":\"hi\",\"n\":1.5}", "invalid_type", "n"),
    BAD("F14 best_of < n", "{\"prompt\":\"hi\",\"n\":3,\"best_of\":2}", "invalid_value", "best_of"),
    OK("F14 n 2", "{\"prompt\":\"hi\",\"n\":2}"),
    BAD("best_of > n streamed", "{\"prompt\":\"hi\",\"best_of\":2,\"stream\":true}",
        "invalid_value", "best_of"),
    BAD("F15 17 stops",
        "{\"prompt\":\"hi\",\"stop\":[\"a\",\"b\",\"c\",\"d\",\"e\",\"f\",\"g\",\"h\",\"i\",\"j\","
        "\"k\",\"l\",\"m\",\"n\",\"o\",\"p\",\"q\"]}",
        "invalid_value", "stop"),
    BAD("F15 empty stop", "{\"prompt\":\"hi\",\"stop\":[\"\"]}", "invalid_value", "stop"),
    BAD("F15 number", "{\"prompt\":\"hi\",\"stop\":5}", "invalid_type", "stop"),
    BAD("F15 number list", "{\"prompt\":\"hi\",\"stop\":[1]}", "invalid_type", "stop"),
    OK("F16 one stop", "{\"prompt\":\"hi\",\"stop\":\"\\n\"}"),
    OK("F16 stops", "{\"prompt\":\"hi\",\"stop\":[\"\\n\", \".\"]}"),
    BAD("F17 yes", "{\"prompt\":\"hi\",\"stream\":\"yes\"}", "invalid_type", "stream"),
    BAD("F17 1", "{\"prompt\":\"hi\",\"stream\":1}", "invalid_type", "stream"),
    BAD("F18 21", "{\"prompt\":\"hi\",\"logprobs\":21}", "invalid_value", "logprobs"),
    BAD("F18 -1", "{\"prompt\":\"hi\",\"logprobs\":-1}", "invalid_value", "logprobs"),
    BAD("F18 100", "{\"prompt\":\"hi\",\"logprobs\":100}", "invalid_value", "logprobs"),
    BAD("F19 -5", "{\"prompt\":\"hi\",\"seed\":-5}", "invalid_value", "seed"),
    BAD("F19 1.5", "{\"prompt\":\"hi\",\"seed\":1.5}", "invalid_type", "seed"),
    BAD("F19 x", "{\"prompt\":\"hi\",\"seed\":\"x\"}", "invalid_type", "seed"),
    BAD("F19 2^64", "{\"prompt\":\"hi\",\"seed\":18446744073709551616}", "invalid_value", "seed"),
    OK("F19 -1 random", "{\"prompt\":\"hi\",\"seed\":-1}"),
    BAD("F20 frequency", "{\"prompt\":\"hi\",\"frequency_penalty\":2.5}", "invalid_value",
        "frequency_penalty"),
    BAD("F20 presence", "{\"prompt\":\"hi\",\"presence_penalty\":-3}", "invalid_value",
        "presence_penalty"),
    BAD("F21 key", "{\"prompt\":\"hi\",\"logit_bias\":{\"abc\":5}}", "invalid_value", "logit_bias"),
    BAD("F21 vocab", "{\"prompt\":\"hi\",\"logit_bias\":{\"50257\":1}}", "invalid_value",
        "logit_bias"),
    BAD("F21 value", "{\"prompt\":\"hi\",\"logit_bias\":{\"1\":101}}", "invalid_value",
        "logit_bias"),
    BAD("F22 suffix", "{\"prompt\":\"hi\",\"suffix\":\"x\"}", "unsupported_parameter", "suffix"),
    OK("F23 unknown + user", "{\"prompt\":\"hi\",\"foo_bar\":1,\"user\":\"u1\"}"),
    OK("F24 nulls",
       "{\"prompt\":\"hi\",\"model\":null,\"max_tokens\":null,\"temperature\":null,\"top_p\":"
       "null,\"n\":null,\"best_of\":null,\"stream\":null,\"stream_options\":null,\"logprobs\":"
       "null,\"echo\":null,\"stop\":null,\"presence_penalty\":null,\"frequency_penalty\":null,"
       "\"logit_bias\":null,\"seed\":null,\"user\":null,\"suffix\":null,\"top_k\":null,"
       "\"min_p\":null,\"repetition_penalty\":null,\"min_tokens\":null,\"ignore_eos\":null,"
       "\"stop_token_ids\":null,\"use_beam_search\":null,\"length_penalty\":null}"),
    OK("F25 any model", "{\"prompt\":\"hi\",\"model\":\"does-not-exist\"}"),
    BAD("F26 stream_options without stream",
        "{\"prompt\":\"hi\",\"stream_options\":{\"include_usage\":true}}", "invalid_value",
        "stream_options"),
    BAD("model type", "{\"prompt\":\"hi\",\"model\":5}", "invalid_type", "model"),
    BAD("min_p 1", "{\"prompt\":\"hi\",\"min_p\":1}", "invalid_value", "min_p"),
    BAD("repetition_penalty 0", "{\"prompt\":\"hi\",\"repetition_penalty\":0}", "invalid_value",
        "repetition_penalty"),
    BAD("min_tokens > max_tokens", "{\"prompt\":\"hi\",\"max_tokens\":4,\"min_tokens\":5}",
        "invalid_value", "min_tokens"),
    BAD("stop_token_ids vocab", "{\"prompt\":\"hi\",\"stop_token_ids\":[50257]}",
        "invalid_token_id", "stop_token_ids"),
    BAD("ignore_eos type", "{\"prompt\":\"hi\",\"ignore_eos\":1}", "invalid_type", "ignore_eos"),
    BAD("echo type", "{\"prompt\":\"hi\",\"echo\":\"true\"}", "invalid_type", "echo"),
    BAD("include_usage type",
        "{\"prompt\":\"hi\",\"stream\":true,\"stream_options\":{\"include_usage\":1}}",
        "invalid_type", "stream_options"),
};

static void limits(struct request_limits *lim) {
    server_request_limits_init_default(lim);
    lim->n_vocab = 50257;
    lim->n_ctx = 1024;
    lim->max_prompts = 4;
}

START_TEST(test_request_parse_table_gives_expected_status_code_and_param) {
    const struct parse_case *c = &cases[_i];
    struct request_limits lim;
    limits(&lim);
    struct completion_request r;
    struct api_error err;
    memset(&err, 0, sizeof(err));
    size_t len = c->len != 0 ? c->len : strlen(c->body);
    int rc = server_request_parse_completion(c->body, len, &lim, "gpt2", &r, &err);
    if (c->status == 0) {
        ck_assert_msg(rc == 0, "%s: expected success, got %s (%s)", c->name,
                      err.code ? err.code : "?", err.message);
        ck_assert_uint_ge(r.n_prompts, 1);
        server_request_finish(&r);
        return;
    }
    ck_assert_msg(rc == -1, "%s: expected an error", c->name);
    ck_assert_int_eq(err.status, c->status);
    ck_assert_str_eq(err.type, "invalid_request_error");
    ck_assert_msg(err.code != NULL && strcmp(err.code, c->code) == 0, "%s: code %s, want %s",
                  c->name, err.code ? err.code : "null", c->code);
    if (c->param == NULL) {
        ck_assert_msg(err.param == NULL, "%s: param %s, want null", c->name, err.param);
    } else {
        ck_assert_msg(err.param != NULL && strcmp(err.param, c->param) == 0,
                      "%s: param %s, want %s", c->name, err.param ? err.param : "null", c->param);
    }
    /* Messages are ours: valid UTF-8, short, and never a copy of the request's bytes. */
    ck_assert(utf8_is_valid(err.message, strlen(err.message)));
    ck_assert_uint_le(strlen(err.message), 200);
    ck_assert_ptr_null(strstr(err.message, "there"));
    ck_assert_uint_eq(r.n_prompts, 0);
}
END_TEST

START_TEST(test_request_parse_fills_every_field) {
    const char *body = "{\"prompt\":[\"a\",\"bc\"],\"model\":\"gpt2\",\"max_tokens\":7,"
                       "\"temperature\":0.5,\"top_p\":0.9,\"n\":2,\"best_of\":3,\"logprobs\":5,"
                       "\"echo\":true,\"stop\":[\"x\",\"yz\"],\"presence_penalty\":0.5,"
                       "\"frequency_penalty\":-0.5,\"logit_bias\":{\"13\":-100,\"7\":2.5},"
                       "\"seed\":42,\"top_k\":40,\"min_p\":0.05,\"repetition_penalty\":1.2,"
                       "\"min_tokens\":2,\"ignore_eos\":true,\"stop_token_ids\":[50256],"
                       "\"use_beam_search\":false,\"length_penalty\":0.8,\"candidates\":3}";
    struct request_limits lim;
    limits(&lim);
    struct completion_request r;
    struct api_error err;
    ck_assert_int_eq(server_request_parse_completion(body, strlen(body), &lim, "gpt2", &r, &err),
                     0);
    ck_assert_uint_eq(r.n_prompts, 2);
    ck_assert_str_eq(r.prompts[0].text, "a");
    ck_assert_str_eq(r.prompts[1].text, "bc");
    ck_assert(r.has_model && r.model_matches);
    ck_assert_int_eq(r.max_tokens, 7);
    ck_assert_int_eq(r.sampling.max_tokens, 7);
    ck_assert_float_eq(r.sampling.temperature, 0.5f);
    ck_assert_float_eq(r.sampling.top_p, 0.9f);
    ck_assert_int_eq(r.n, 2);
    ck_assert_int_eq(r.best_of, 3);
    ck_assert_int_eq(r.sampling.logprobs, 5);
    ck_assert(r.echo);
    ck_assert_int_eq(r.sampling.n_stop, 2);
    ck_assert_str_eq(r.sampling.stop[1], "yz");
    ck_assert_int_eq(r.sampling.n_logit_bias, 2);
    ck_assert_int_eq(r.sampling.logit_bias[0].token_id, 13);
    ck_assert_float_eq(r.sampling.logit_bias[0].bias, -100.0f);
    ck_assert(r.sampling.has_seed);
    ck_assert_uint_eq(r.sampling.seed, 42);
    ck_assert_int_eq(r.sampling.top_k, 40);
    ck_assert_int_eq(r.sampling.min_tokens, 2);
    ck_assert(r.sampling.ignore_eos);
    ck_assert_int_eq(r.sampling.n_stop_token_ids, 1);
    ck_assert_int_eq(r.sampling.stop_token_ids[0], 50256);
    ck_assert_float_eq_tol(r.length_penalty, 0.8f, 1e-6f);
    ck_assert_int_eq(r.sampling.candidates, 3);
    ck_assert(!r.stream);
    server_request_finish(&r);
}
END_TEST

START_TEST(test_request_parse_defaults_match_openai) {
    const char *body = "{\"prompt\":\"Hello\"}";
    struct request_limits lim;
    limits(&lim);
    struct completion_request r;
    struct api_error err;
    ck_assert_int_eq(server_request_parse_completion(body, strlen(body), &lim, "gpt2", &r, &err),
                     0);
    ck_assert_int_eq(r.max_tokens, 16);
    ck_assert_float_eq(r.sampling.temperature, 1.0f);
    ck_assert_float_eq(r.sampling.top_p, 1.0f);
    ck_assert_int_eq(r.n, 1);
    ck_assert_int_eq(r.best_of, 1);
    ck_assert_int_eq(r.sampling.logprobs, -1);
    ck_assert(!r.sampling.has_seed);
    ck_assert(!r.has_model);
    ck_assert_uint_eq(r.prompts[0].text_len, 5);
    ck_assert_ptr_null(r.prompts[0].ids);
    server_request_finish(&r);
}
END_TEST

START_TEST(test_request_parse_streaming_with_usage) {
    const char *body = "{\"prompt\":[1,2,3],\"stream\":true,"
                       "\"stream_options\":{\"include_usage\":true}}";
    struct request_limits lim;
    limits(&lim);
    struct completion_request r;
    struct api_error err;
    ck_assert_int_eq(server_request_parse_completion(body, strlen(body), &lim, NULL, &r, &err), 0);
    ck_assert(r.stream && r.include_usage);
    ck_assert_uint_eq(r.prompts[0].n_ids, 3);
    ck_assert_int_eq(r.prompts[0].ids[2], 3);
    server_request_finish(&r);
}
END_TEST

/* B05: 100,000 nested brackets are refused by the pre-scan, never reach cJSON's recursion. */
START_TEST(test_request_parse_refuses_deep_nesting) {
    size_t depth = 100000;
    const char *head = "{\"prompt\":\"hi\",\"x\":";
    size_t len = strlen(head) + 2 * depth + 1;
    char *body = malloc(len);
    ck_assert_ptr_nonnull(body);
    memcpy(body, head, strlen(head));
    memset(body + strlen(head), '[', depth);
    memset(body + strlen(head) + depth, ']', depth);
    body[len - 1] = '}';
    struct request_limits lim;
    limits(&lim);
    struct completion_request r;
    struct api_error err;
    ck_assert_int_eq(server_request_parse_completion(body, len, &lim, NULL, &r, &err), -1);
    ck_assert_str_eq(err.code, "invalid_json");
    free(body);
}
END_TEST

/* An object with thousands of keys is refused instead of an O(n^2) duplicate scan. */
START_TEST(test_request_parse_refuses_huge_objects) {
    struct sbuf b;
    sbuf_init(&b);
    sbuf_puts(&b, "{\"prompt\":\"hi\"");
    for (int i = 0; i < 5000; i++) {
        sbuf_printf(&b, ",\"k%d\":1", i);
    }
    sbuf_puts(&b, "}");
    struct request_limits lim;
    limits(&lim);
    struct completion_request r;
    struct api_error err;
    ck_assert_int_eq(server_request_parse_completion(b.data, b.len, &lim, NULL, &r, &err), -1);
    ck_assert_str_eq(err.code, "invalid_body");
    sbuf_finish(&b);
}
END_TEST

START_TEST(test_request_parse_tokenize_and_detokenize_bodies) {
    struct request_limits lim;
    limits(&lim);
    struct api_error err;
    char *text;
    size_t len;
    bool add_special = false;
    const char *t1 = "{\"prompt\":\"Hello world\"}";
    ck_assert_int_eq(server_request_parse_tokenize(t1, strlen(t1), &text, &len, &add_special, &err),
                     0);
    ck_assert_str_eq(text, "Hello world");
    ck_assert_uint_eq(len, 11);
    ck_assert(add_special); /* vLLM's default */
    free(text);
    const char *t3 = "{\"prompt\":\"hi\",\"add_special_tokens\":false}";
    ck_assert_int_eq(server_request_parse_tokenize(t3, strlen(t3), &text, &len, &add_special, &err),
                     0);
    ck_assert(!add_special);
    free(text);
    const char *t4 = "{\"prompt\":\"hi\",\"add_special_tokens\":1}";
    ck_assert_int_eq(server_request_parse_tokenize(t4, strlen(t4), &text, &len, &add_special, &err),
                     -1);
    ck_assert_str_eq(err.code, "invalid_type");
    const char *t2 = "{\"prompt\":5}";
    ck_assert_int_eq(server_request_parse_tokenize(t2, strlen(t2), &text, &len, &add_special, &err),
                     -1);
    ck_assert_str_eq(err.code, "invalid_type");
    int32_t *ids;
    size_t n;
    const char *d1 = "{\"tokens\":[15496,11]}";
    ck_assert_int_eq(server_request_parse_detokenize(d1, strlen(d1), &lim, &ids, &n, &err), 0);
    ck_assert_uint_eq(n, 2);
    ck_assert_int_eq(ids[0], 15496);
    free(ids);
    const char *d2 = "{\"tokens\":[99999]}";
    ck_assert_int_eq(server_request_parse_detokenize(d2, strlen(d2), &lim, &ids, &n, &err), -1);
    ck_assert_str_eq(err.code, "invalid_token_id");
}
END_TEST

/* POST /v1/chat/completions bodies: the chat fields' rules (the sampling fields are the
 * completion table's, shared code). */
#define USER "{\"role\":\"user\",\"content\":\"hi there\"}"
static const struct parse_case chat_cases[] = {
    OK("chat minimal", "{\"messages\":[" USER "]}"),
    OK("chat every role",
       "{\"messages\":[{\"role\":\"system\",\"content\":\"s\"},{\"role\":\"developer\","
       "\"content\":\"d\"}," USER ",{\"role\":\"assistant\",\"content\":null,\"tool_calls\":"
       "[{\"id\":\"c\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":"
       "\"{}\"}}]},{\"role\":\"tool\",\"tool_call_id\":\"c\",\"content\":\"r\"}]}"),
    OK("chat text parts",
       "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\"}]}]}"),
    OK("chat null fields are defaults",
       "{\"messages\":[" USER "],\"tools\":null,\"tool_choice\":null,\"top_logprobs\":null}"),
    OK("chat tools", "{\"messages\":[" USER "],\"tools\":[{\"type\":\"function\",\"function\":"
                     "{\"name\":\"f\",\"parameters\":{}}}],\"tool_choice\":\"auto\"}"),
    OK("chat response_format text", "{\"messages\":[" USER "],\"response_format\":{\"type\":"
                                    "\"text\"}}"),
    OK("chat kwargs", "{\"messages\":[" USER "],\"chat_template_kwargs\":{\"enable_thinking\":"
                      "false}}"),
    OK("chat prompt field ignored", "{\"messages\":[" USER "],\"prompt\":42,\"echo\":7}"),
    BAD("chat no messages", "{\"model\":\"m\"}", "missing_parameter", "messages"),
    BAD("chat messages not a list", "{\"messages\":\"hi there\"}", "invalid_type", "messages"),
    BAD("chat empty messages", "{\"messages\":[]}", "invalid_value", "messages"),
    BAD("chat message not an object", "{\"messages\":[\"hi there\"]}", "invalid_type", "messages"),
    BAD("chat unknown role", "{\"messages\":[{\"role\":\"there\",\"content\":\"x\"}]}",
        "invalid_value", "messages"),
    BAD("chat role not a string", "{\"messages\":[{\"role\":1,\"content\":\"x\"}]}", "invalid_type",
        "messages"),
    BAD("chat user without content", "{\"messages\":[{\"role\":\"user\"}]}", "missing_parameter",
        "messages"),
    BAD("chat null user content", "{\"messages\":[{\"role\":\"user\",\"content\":null}]}",
        "missing_parameter", "messages"),
    BAD("chat numeric content", "{\"messages\":[{\"role\":\"user\",\"content\":1}]}",
        "invalid_type", "messages"),
    BAD("chat image part",
        "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\",\"image_url\":"
        "{\"url\":\"there\"}}]}]}",
        "unsupported_content_type", "messages"),
    BAD("chat unknown part",
        "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"there\"}]}]}",
        "unsupported_content_type", "messages"),
    BAD("chat part without text",
        "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\"}]}]}", "invalid_type",
        "messages"),
    BAD("chat tool_calls on a user",
        "{\"messages\":[{\"role\":\"user\",\"content\":\"x\","
        "\"tool_calls\":[]}]}",
        "invalid_type", "messages"),
    BAD("chat tool call without a name",
        "{\"messages\":[{\"role\":\"assistant\",\"tool_calls\":"
        "[{\"function\":{\"arguments\":\"{}\"}}]}]}",
        "invalid_type", "messages"),
    BAD("chat tools not a list", "{\"messages\":[" USER "],\"tools\":{}}", "invalid_type", "tools"),
    BAD("chat tool without a function", "{\"messages\":[" USER "],\"tools\":[{\"type\":\"x\"}]}",
        "invalid_type", "tools"),
    BAD("chat tool_choice required", "{\"messages\":[" USER "],\"tool_choice\":\"required\"}",
        "unsupported_parameter", "tool_choice"),
    BAD("chat tool_choice named",
        "{\"messages\":[" USER "],\"tool_choice\":{\"type\":\"function\"}}",
        "unsupported_parameter", "tool_choice"),
    BAD("chat tool_choice other", "{\"messages\":[" USER "],\"tool_choice\":\"there\"}",
        "invalid_type", "tool_choice"),
    BAD("chat response_format json",
        "{\"messages\":[" USER "],\"response_format\":{\"type\":"
        "\"json_object\"}}",
        "unsupported_parameter", "response_format"),
    BAD("chat response_format string", "{\"messages\":[" USER "],\"response_format\":\"text\"}",
        "invalid_type", "response_format"),
    BAD("chat kwargs not an object", "{\"messages\":[" USER "],\"chat_template_kwargs\":[]}",
        "invalid_type", "chat_template_kwargs"),
    BAD("chat logprobs is a flag", "{\"messages\":[" USER "],\"logprobs\":3}", "invalid_type",
        "logprobs"),
    BAD("chat top_logprobs needs logprobs", "{\"messages\":[" USER "],\"top_logprobs\":2}",
        "invalid_value", "top_logprobs"),
    OK("chat top_logprobs 0 alone", "{\"messages\":[" USER "],\"top_logprobs\":0}"),
    BAD("chat max_tokens checked beside max_completion_tokens",
        "{\"messages\":[" USER "],\"max_completion_tokens\":3,\"max_tokens\":-1}", "invalid_value",
        "max_tokens"),
    BAD("chat top_logprobs over 20",
        "{\"messages\":[" USER "],\"logprobs\":true,\"top_logprobs\":21}", "invalid_value",
        "top_logprobs"),
    BAD("chat max_completion_tokens 0", "{\"messages\":[" USER "],\"max_completion_tokens\":0}",
        "invalid_value", "max_completion_tokens"),
    BAD("chat agp and continue", "{\"messages\":[" USER "],\"continue_final_message\":true}",
        "invalid_value", "continue_final_message"),
    BAD("chat agp not a bool", "{\"messages\":[" USER "],\"add_generation_prompt\":1}",
        "invalid_type", "add_generation_prompt"),
    BAD("chat temperature", "{\"messages\":[" USER "],\"temperature\":3}", "invalid_value",
        "temperature"),
};

START_TEST(test_chat_parse_table_gives_expected_status_code_and_param) {
    const struct parse_case *c = &chat_cases[_i];
    struct request_limits lim;
    limits(&lim);
    struct completion_request r;
    struct api_error err;
    memset(&err, 0, sizeof(err));
    int rc = server_request_parse_chat(c->body, strlen(c->body), &lim, "gpt2", &r, &err);
    if (c->status == 0) {
        ck_assert_msg(rc == 0, "%s: expected success, got %s (%s)", c->name,
                      err.code ? err.code : "?", err.message);
        ck_assert(r.is_chat);
        ck_assert_uint_eq(r.n_prompts, 1);
        ck_assert_ptr_null(r.prompts[0].text); /* rendered later, by the template */
        server_request_finish(&r);
        return;
    }
    ck_assert_msg(rc == -1, "%s: expected an error", c->name);
    ck_assert_int_eq(err.status, c->status);
    ck_assert_msg(err.code != NULL && strcmp(err.code, c->code) == 0, "%s: code %s, want %s (%s)",
                  c->name, err.code ? err.code : "null", c->code, err.message);
    ck_assert_msg(err.param != NULL && strcmp(err.param, c->param) == 0, "%s: param %s, want %s",
                  c->name, err.param ? err.param : "null", c->param);
    ck_assert_ptr_null(strstr(err.message, "there")); /* request bytes are never echoed */
    ck_assert_uint_eq(r.n_prompts, 0);
}
END_TEST

START_TEST(test_chat_parse_fills_chat_fields) {
    struct request_limits lim;
    limits(&lim);
    struct completion_request r;
    struct api_error err;
    const char *b1 = "{\"messages\":[" USER "]}";
    ck_assert_int_eq(server_request_parse_chat(b1, strlen(b1), &lim, "gpt2", &r, &err), 0);
    /* No max_tokens: the rest of the context, decided after tokenizing. */
    ck_assert(r.max_tokens_auto);
    ck_assert(r.add_generation_prompt);
    ck_assert(!r.continue_final_message);
    ck_assert_int_eq(r.sampling.logprobs, -1);
    ck_assert(!r.echo);
    ck_assert(r.skip_special_tokens); /* chat text leaves the template's markers out */
    server_request_finish(&r);

    const char *b0 = "{\"messages\":[" USER "],\"skip_special_tokens\":false}";
    ck_assert_int_eq(server_request_parse_chat(b0, strlen(b0), &lim, "gpt2", &r, &err), 0);
    ck_assert(!r.skip_special_tokens);
    server_request_finish(&r);
    const char *c0 = "{\"prompt\":\"x\"}";
    ck_assert_int_eq(server_request_parse_completion(c0, strlen(c0), &lim, "gpt2", &r, &err), 0);
    ck_assert(!r.skip_special_tokens); /* completions: every token's text, as before */
    server_request_finish(&r);
    const char *c1 = "{\"prompt\":\"x\",\"skip_special_tokens\":1}";
    ck_assert_int_eq(server_request_parse_completion(c1, strlen(c1), &lim, "gpt2", &r, &err), -1);
    ck_assert_str_eq(err.param, "skip_special_tokens");

    const char *b2 = "{\"messages\":[" USER "],\"max_tokens\":9,\"max_completion_tokens\":5,"
                     "\"logprobs\":true,\"top_logprobs\":4,\"add_generation_prompt\":false,"
                     "\"continue_final_message\":true,\"n\":2,\"stream\":true}";
    ck_assert_int_eq(server_request_parse_chat(b2, strlen(b2), &lim, "gpt2", &r, &err), 0);
    ck_assert(!r.max_tokens_auto);
    ck_assert_int_eq(r.max_tokens, 5); /* max_completion_tokens wins */
    ck_assert_int_eq(r.sampling.logprobs, 4);
    ck_assert(!r.add_generation_prompt);
    ck_assert(r.continue_final_message);
    ck_assert_int_eq(r.n, 2);
    ck_assert(r.stream);
    server_request_finish(&r);

    const char *b3 = "{\"messages\":[" USER "],\"logprobs\":true}";
    ck_assert_int_eq(server_request_parse_chat(b3, strlen(b3), &lim, "gpt2", &r, &err), 0);
    ck_assert_int_eq(r.sampling.logprobs, 0); /* the chosen token's logprob, no alternatives */
    server_request_finish(&r);
}
END_TEST

Suite *server_request_suite(void) {
    Suite *s = suite_create("server_request");
    TCase *tc = tcase_create("parse");
    tcase_add_loop_test(tc, test_request_parse_table_gives_expected_status_code_and_param, 0,
                        (int)(sizeof(cases) / sizeof(cases[0])));
    tcase_add_test(tc, test_request_parse_fills_every_field);
    tcase_add_test(tc, test_request_parse_defaults_match_openai);
    tcase_add_test(tc, test_request_parse_streaming_with_usage);
    tcase_add_test(tc, test_request_parse_refuses_deep_nesting);
    tcase_add_test(tc, test_request_parse_refuses_huge_objects);
    tcase_add_test(tc, test_request_parse_tokenize_and_detokenize_bodies);
    tcase_add_loop_test(tc, test_chat_parse_table_gives_expected_status_code_and_param, 0,
                        (int)(sizeof(chat_cases) / sizeof(chat_cases[0])));
    tcase_add_test(tc, test_chat_parse_fills_chat_fields);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(server_request_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
