/*
 * response.c: OpenAI error objects, text_completion bodies and SSE chunks (see response.h).
 *
 * Everything is written with struct sbuf and our own JSON escaper (no cJSON tree per token),
 * and every string passes through sbuf_json_string, so every body and every `data:` line is
 * valid UTF-8 JSON whatever bytes a token holds.
 */
#include "response.h"

#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <gptd/util.h>

void response_error_json(struct sbuf *out, const struct api_error *e) {
    sbuf_puts(out, "{\"error\":{\"message\":");
    sbuf_json_cstr(out, e->message);
    sbuf_puts(out, ",\"type\":");
    sbuf_json_cstr(out, e->type != NULL ? e->type : "server_error");
    sbuf_puts(out, ",\"param\":");
    sbuf_json_cstr(out, e->param);
    sbuf_puts(out, ",\"code\":");
    sbuf_json_cstr(out, e->code);
    sbuf_puts(out, "}}");
}

void response_sse_error(struct sbuf *out, const struct api_error *e) {
    sbuf_puts(out, "data: ");
    response_error_json(out, e);
    sbuf_puts(out, "\n\ndata: [DONE]\n\n");
}

void response_engine_error(struct api_error *e, enum engine_status status, bool at_submit,
                           const char *engine_message) {
    const char *m = engine_message != NULL && engine_message[0] != '\0' ? engine_message : NULL;
    switch (status) {
    case ENGINE_ERR_OVERLOADED:
        if (at_submit) {
            api_error_set(e, 503, "overloaded_error", "queue_full", NULL,
                          "the server is busy: the request queue is full; retry later");
        } else {
            api_error_set(e, 503, "overloaded_error", "queue_timeout", NULL,
                          "the request waited too long in the queue; retry later");
        }
        break;
    case ENGINE_ERR_DRAINING:
        api_error_set(e, 503, "unavailable_error", at_submit ? "draining" : "shutting_down", NULL,
                      "the server is shutting down");
        break;
    case ENGINE_ERR_CONTEXT:
        api_error_set(e, 400, "invalid_request_error", "context_length_exceeded", "max_tokens",
                      "%s", m != NULL ? m : "prompt + max_tokens exceeds the model's context");
        break;
    case ENGINE_ERR_INVALID:
        api_error_set(e, 400, "invalid_request_error", "invalid_value", NULL, "%s",
                      m != NULL ? m : "invalid request parameters");
        break;
    case ENGINE_ERR_TOO_LARGE:
        api_error_set(e, 400, "invalid_request_error", "request_too_large", NULL,
                      "the request can never fit in the server's KV cache");
        break;
    case ENGINE_ERR_NOMEM:
        api_error_set(e, 500, "server_error", "out_of_memory", NULL,
                      "the server ran out of memory");
        break;
    default:
        api_error_set(e, 500, "server_error", "internal_error", NULL, "internal server error");
        break;
    }
}

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

void completion_meta_init(struct completion_meta *m, bool chat, const char *model,
                          const char *fingerprint) {
    static atomic_uint_fast64_t counter;
    uint64_t s = (uint64_t)time_now_us() ^ ((uint64_t)atomic_fetch_add(&counter, 1) << 40) ^
                 (uint64_t)(uintptr_t)m;
    uint64_t a = splitmix64(&s), b = splitmix64(&s);
    snprintf(m->id, sizeof(m->id), "%s-%016llx%016llx", chat ? "chatcmpl" : "cmpl",
             (unsigned long long)a, (unsigned long long)b);
    m->created = time_wall_s();
    m->model = model;
    m->fingerprint = fingerprint;
}

/* The legacy logprobs lists, kept as JSON array bodies (elements without the brackets); for
 * chat, the elements of logprobs.content instead. */
struct lp_lists {
    struct sbuf tokens, values, top, offsets;
    struct sbuf content; /* chat: {"token","logprob","bytes","top_logprobs"} elements */
    size_t n;
};

static void lp_init(struct lp_lists *l) {
    sbuf_init(&l->tokens);
    sbuf_init(&l->values);
    sbuf_init(&l->top);
    sbuf_init(&l->offsets);
    sbuf_init(&l->content);
    l->n = 0;
}

static void lp_finish(struct lp_lists *l) {
    sbuf_finish(&l->tokens);
    sbuf_finish(&l->values);
    sbuf_finish(&l->top);
    sbuf_finish(&l->offsets);
    sbuf_finish(&l->content);
    l->n = 0;
}

static bool lp_failed(const struct lp_lists *l) {
    return l->tokens.failed || l->values.failed || l->top.failed || l->offsets.failed ||
           l->content.failed;
}

struct prompt_state {
    int32_t n_cached; /* prompt tokens served from the prefix cache (FINISH events) */
    char *text;
    size_t text_len;
    size_t n_chars;
    int32_t *ids;
    size_t n_ids;
    struct lp_lists lp; /* echoed prompt tokens (first one with null logprob) */
    size_t lp_chars;    /* characters of the prompt tokens in lp (the next text_offset) */
};

struct seq_state {
    struct sbuf text; /* generated text (non-streamed) */
    struct lp_lists lp;
    struct sbuf cand; /* candidates extension: elements of the list, comma-separated */
    size_t n_cand;
    size_t n_chars; /* characters before the next token (text_offset), echo included */
    bool started;   /* stream: the echo chunk went out */
    bool finished;
    enum engine_finish_reason finish;
    char stop_reason[262];
    int32_t stop_token;
    bool stop_is_eos; /* ended by one of the model's end tokens: stop_reason null */
    int32_t n_completion_tokens;
    int32_t n_token_events;
    double sum_logprob;
};

struct completion_builder {
    struct completion_meta meta;
    struct completion_builder_config cfg;
    struct prompt_state *prompts; /* (n_prompts,) */
    struct seq_state *seqs;       /* (n_prompts * best_of,) */
    int32_t n_seqs;
    int32_t n_finished;
};

struct completion_builder *completion_builder_create(const struct completion_meta *meta,
                                                     const struct completion_builder_config *cfg) {
    if (cfg->n_prompts < 1 || cfg->n < 1 || cfg->best_of < cfg->n) {
        return NULL;
    }
    struct completion_builder *b = calloc(1, sizeof(*b));
    if (b == NULL) {
        return NULL;
    }
    b->meta = *meta;
    b->cfg = *cfg;
    b->n_seqs = cfg->n_prompts * cfg->best_of;
    b->prompts = calloc((size_t)cfg->n_prompts, sizeof(*b->prompts));
    b->seqs = calloc((size_t)b->n_seqs, sizeof(*b->seqs));
    if (b->prompts == NULL || b->seqs == NULL) {
        completion_builder_destroy(b);
        return NULL;
    }
    for (int32_t i = 0; i < cfg->n_prompts; i++) {
        lp_init(&b->prompts[i].lp);
    }
    for (int32_t i = 0; i < b->n_seqs; i++) {
        sbuf_init(&b->seqs[i].text);
        sbuf_init(&b->seqs[i].cand);
        lp_init(&b->seqs[i].lp);
        b->seqs[i].stop_token = -1;
    }
    return b;
}

void completion_builder_destroy(struct completion_builder *b) {
    if (b == NULL) {
        return;
    }
    if (b->prompts != NULL) {
        for (int32_t i = 0; i < b->cfg.n_prompts; i++) {
            free(b->prompts[i].text);
            free(b->prompts[i].ids);
            lp_finish(&b->prompts[i].lp);
        }
    }
    if (b->seqs != NULL) {
        for (int32_t i = 0; i < b->n_seqs; i++) {
            sbuf_finish(&b->seqs[i].text);
            sbuf_finish(&b->seqs[i].cand);
            lp_finish(&b->seqs[i].lp);
        }
    }
    free(b->prompts);
    free(b->seqs);
    free(b);
}

static void sep(struct sbuf *s, size_t n) {
    if (n > 0) {
        sbuf_append(s, ",", 1);
    }
}

static void token_string(const struct completion_builder *b, struct sbuf *out, int32_t id) {
    size_t len = 0;
    const char *t =
        b->cfg.token_text != NULL ? b->cfg.token_text(b->cfg.token_text_ctx, id, &len) : NULL;
    if (t == NULL) {
        t = "";
        len = 0;
    }
    sbuf_json_string(out, t, len);
}

static size_t token_chars(const struct completion_builder *b, int32_t id) {
    size_t len = 0;
    const char *t =
        b->cfg.token_text != NULL ? b->cfg.token_text(b->cfg.token_text_ctx, id, &len) : NULL;
    return t != NULL ? utf8_count_chars(t, len) : 0;
}

/* "token": text, "logprob": x, "bytes": [...] of one chat logprob entry. */
static void chat_token_fields(const struct completion_builder *b, struct sbuf *out, int32_t id,
                              float logprob) {
    size_t len = 0;
    const char *t =
        b->cfg.token_text != NULL ? b->cfg.token_text(b->cfg.token_text_ctx, id, &len) : NULL;
    sbuf_puts(out, "\"token\":");
    sbuf_json_string(out, t != NULL ? t : "", t != NULL ? len : 0);
    sbuf_puts(out, ",\"logprob\":");
    sbuf_json_double(out, logprob);
    /* The token's raw bytes: a token may hold part of a UTF-8 character, which "token" (a JSON
     * string) cannot carry and clients put back together from these. */
    sbuf_puts(out, ",\"bytes\":[");
    for (size_t i = 0; t != NULL && i < len; i++) {
        sbuf_printf(out, i > 0 ? ",%u" : "%u", (unsigned)(unsigned char)t[i]);
    }
    sbuf_puts(out, "]");
}

/* Appends one position to the lists; has_lp false writes null logprob and null top. */
static void lp_add(const struct completion_builder *b, struct lp_lists *l, int32_t token,
                   bool has_lp, float logprob, const struct sampling_logprob *top, int32_t n_top,
                   size_t offset) {
    if (b->cfg.chat) {
        sep(&l->content, l->n);
        sbuf_puts(&l->content, "{");
        /* No logprob (not computed): the number JSON needs, as for -inf (sbuf_json_double). */
        chat_token_fields(b, &l->content, token, has_lp ? logprob : -INFINITY);
        sbuf_puts(&l->content, ",\"top_logprobs\":[");
        for (int32_t k = 0; has_lp && k < n_top && k < b->cfg.logprobs && k < ENGINE_EVENT_TOP_MAX;
             k++) {
            sbuf_puts(&l->content, k > 0 ? ",{" : "{");
            chat_token_fields(b, &l->content, top[k].token_id, top[k].logprob);
            sbuf_puts(&l->content, "}");
        }
        sbuf_puts(&l->content, "]}");
        l->n++;
        return;
    }
    sep(&l->tokens, l->n);
    sep(&l->values, l->n);
    sep(&l->top, l->n);
    sep(&l->offsets, l->n);
    token_string(b, &l->tokens, token);
    if (has_lp) {
        sbuf_json_double(&l->values, logprob);
        sbuf_append(&l->top, "{", 1);
        for (int32_t k = 0; k < n_top && k < ENGINE_EVENT_TOP_MAX; k++) {
            sep(&l->top, (size_t)k);
            token_string(b, &l->top, top[k].token_id);
            sbuf_append(&l->top, ":", 1);
            sbuf_json_double(&l->top, top[k].logprob);
        }
        sbuf_append(&l->top, "}", 1);
    } else {
        sbuf_puts(&l->values, "null");
        sbuf_puts(&l->top, "null");
    }
    sbuf_printf(&l->offsets, "%zu", offset);
    l->n++;
}

/* One element of the candidates extension list for a TOKEN event. */
static void cand_add(const struct completion_builder *b, struct sbuf *out,
                     const struct engine_event *ev) {
    sbuf_printf(out, "{\"n_survivors\":%d,\"candidates\":[", ev->n_survivors);
    for (int32_t k = 0; k < ev->n_candidates && k < SAMPLING_MAX_CANDIDATES; k++) {
        sbuf_printf(out, "%s{\"id\":%d,\"token\":", k > 0 ? "," : "", ev->candidates[k].id);
        token_string(b, out, ev->candidates[k].id);
        sbuf_puts(out, ",\"prob\":");
        sbuf_json_double(out, ev->candidates[k].prob);
        sbuf_puts(out, "}");
    }
    sbuf_puts(out, "]}");
}

/* {"tokens":[...],"token_logprobs":[...],"top_logprobs":[...],"text_offset":[...]} of a then b
 * (a may be NULL). */
static void lp_render(struct sbuf *out, const struct lp_lists *a, const struct lp_lists *b) {
    const struct sbuf *parts[2][4] = {
        {a ? &a->tokens : NULL, a ? &a->values : NULL, a ? &a->top : NULL, a ? &a->offsets : NULL},
        {&b->tokens, &b->values, &b->top, &b->offsets},
    };
    static const char *const names[4] = {"tokens", "token_logprobs", "top_logprobs", "text_offset"};
    sbuf_append(out, "{", 1);
    for (int k = 0; k < 4; k++) {
        sbuf_printf(out, "%s\"%s\":[", k > 0 ? "," : "", names[k]);
        bool any = false;
        for (int s = 0; s < 2; s++) {
            const struct sbuf *p = parts[s][k];
            if (p != NULL && p->len > 0) {
                if (any) {
                    sbuf_append(out, ",", 1);
                }
                sbuf_append(out, p->data, p->len);
                any = true;
            }
        }
        sbuf_append(out, "]", 1);
    }
    sbuf_append(out, "}", 1);
}

int completion_builder_set_prompt(struct completion_builder *b, int32_t i_prompt, const char *text,
                                  size_t text_len, const int32_t *ids, size_t n_ids) {
    if (i_prompt < 0 || i_prompt >= b->cfg.n_prompts) {
        return -1;
    }
    struct prompt_state *p = &b->prompts[i_prompt];
    free(p->text);
    free(p->ids);
    p->text = malloc(text_len + 1);
    p->ids = malloc((n_ids > 0 ? n_ids : 1) * sizeof(*ids));
    if (p->text == NULL || p->ids == NULL) {
        return -1;
    }
    if (text_len > 0) {
        memcpy(p->text, text, text_len);
    }
    p->text[text_len] = '\0';
    p->text_len = text_len;
    p->n_chars = utf8_count_chars(text, text_len);
    if (n_ids > 0) {
        memcpy(p->ids, ids, n_ids * sizeof(*ids));
    }
    p->n_ids = n_ids;
    if (b->cfg.echo && b->cfg.logprobs >= 0 && n_ids > 0) {
        /* The first prompt token has no logprob (nothing precedes it). */
        lp_add(b, &p->lp, ids[0], false, 0, NULL, 0, 0);
        p->lp_chars = token_chars(b, ids[0]);
    }
    for (int32_t k = 0; k < b->cfg.best_of; k++) {
        b->seqs[i_prompt * b->cfg.best_of + k].n_chars = b->cfg.echo ? p->n_chars : 0;
    }
    return 0;
}

static const char *finish_name(enum engine_finish_reason r) {
    switch (r) {
    case ENGINE_FINISH_LENGTH:
        return "length";
    case ENGINE_FINISH_STOP:
        return "stop";
    case ENGINE_FINISH_CANCELLED:
        return "abort";
    case ENGINE_FINISH_ERROR:
        return "error";
    default:
        return NULL;
    }
}

static void stop_reason_json(const struct completion_builder *b, const struct seq_state *s,
                             struct sbuf *out) {
    if (s->stop_reason[0] != '\0') {
        sbuf_json_cstr(out, s->stop_reason);
    } else if (s->finish == ENGINE_FINISH_STOP && s->stop_token >= 0 && !s->stop_is_eos &&
               s->stop_token != b->cfg.eos_id) {
        sbuf_printf(out, "%d", s->stop_token);
    } else {
        sbuf_puts(out, "null");
    }
}

/* Chat: {"content":[...]}. */
static void lp_render_chat(struct sbuf *out, const struct lp_lists *l) {
    sbuf_puts(out, "{\"content\":[");
    sbuf_append(out, l->content.data != NULL ? l->content.data : "", l->content.len);
    sbuf_puts(out, "]}");
}

static void lp_render_any(const struct completion_builder *b, struct sbuf *out,
                          const struct lp_lists *prompt, const struct lp_lists *l) {
    if (b->cfg.chat) {
        lp_render_chat(out, l);
    } else {
        lp_render(out, prompt, l);
    }
}

static void chunk_open(const struct completion_builder *b, struct sbuf *out) {
    sbuf_puts(out, "data: {\"id\":");
    sbuf_json_cstr(out, b->meta.id);
    sbuf_printf(out, ",\"object\":\"%s\",\"created\":%lld,\"model\":",
                b->cfg.chat ? "chat.completion.chunk" : "text_completion",
                (long long)b->meta.created);
    sbuf_json_cstr(out, b->meta.model);
    sbuf_puts(out, ",\"system_fingerprint\":");
    sbuf_json_cstr(out, b->meta.fingerprint);
    sbuf_puts(out, ",\"choices\":[");
}

static void chunk_close(const struct completion_builder *b, struct sbuf *out) {
    sbuf_puts(out, b->cfg.include_usage ? "],\"usage\":null}\n\n" : "]}\n\n");
}

/* One chunk with one choice. lp may be NULL (logprobs null); finished adds the reasons;
 * role_start (chat) is the delta that opens a choice. */
static void chunk_choice(const struct completion_builder *b, struct sbuf *out, int32_t index,
                         const char *text, size_t len, const struct lp_lists *lp,
                         const struct engine_event *cand_ev, const struct seq_state *finished,
                         bool role_start) {
    chunk_open(b, out);
    if (b->cfg.chat) {
        /* The delta: the role opens each choice, content follows, the last chunk has none. */
        sbuf_printf(out, "{\"index\":%d,\"delta\":{", index);
        if (role_start) {
            sbuf_puts(out, "\"role\":\"assistant\",\"content\":\"\"");
        } else if (finished == NULL) {
            sbuf_puts(out, "\"content\":");
            sbuf_json_string(out, text, len);
        }
        sbuf_puts(out, "}");
    } else {
        sbuf_printf(out, "{\"index\":%d,\"text\":", index);
        sbuf_json_string(out, text, len);
    }
    sbuf_puts(out, ",\"logprobs\":");
    if (lp != NULL) {
        lp_render_any(b, out, NULL, lp);
    } else {
        sbuf_puts(out, "null");
    }
    if (b->cfg.candidates > 0 && !role_start) {
        sbuf_puts(out, ",\"candidates\":[");
        if (cand_ev != NULL) {
            cand_add(b, out, cand_ev);
        }
        sbuf_puts(out, "]");
    }
    sbuf_puts(out, ",\"finish_reason\":");
    sbuf_json_cstr(out, finished != NULL ? finish_name(finished->finish) : NULL);
    sbuf_puts(out, ",\"stop_reason\":");
    if (finished != NULL) {
        stop_reason_json(b, finished, out);
    } else {
        sbuf_puts(out, "null");
    }
    sbuf_puts(out, "}");
    chunk_close(b, out);
}

/* Stream + echo: the prompt goes out as the first chunk of each choice. */
static void stream_start(struct completion_builder *b, int32_t i_prompt, int32_t index,
                         struct seq_state *s, struct sbuf *out) {
    if (s->started) {
        return;
    }
    s->started = true;
    if (b->cfg.chat) {
        chunk_choice(b, out, index, "", 0, NULL, NULL, NULL, true);
        return;
    }
    if (!b->cfg.echo) {
        return;
    }
    const struct prompt_state *p = &b->prompts[i_prompt];
    chunk_choice(b, out, index, p->text != NULL ? p->text : "", p->text_len,
                 b->cfg.logprobs >= 0 ? &p->lp : NULL, NULL, NULL, false);
}

int completion_builder_event(struct completion_builder *b, int32_t i_prompt,
                             const struct engine_event *ev, struct sbuf *sse) {
    if (i_prompt < 0 || i_prompt >= b->cfg.n_prompts) {
        return -1;
    }
    struct prompt_state *p = &b->prompts[i_prompt];
    if (ev->type == ENGINE_EVENT_PROMPT_TOKEN) {
        /* Index 0, for every choice: kept once per prompt. */
        if (b->cfg.echo && b->cfg.logprobs >= 0) {
            size_t off = p->lp_chars;
            p->lp_chars += token_chars(b, ev->token);
            lp_add(b, &p->lp, ev->token, ev->has_logprob, ev->logprob, ev->top, ev->n_top, off);
        }
        return 0;
    }
    if (ev->index < 0 || ev->index >= b->cfg.best_of) {
        return -1;
    }
    struct seq_state *s = &b->seqs[i_prompt * b->cfg.best_of + ev->index];
    int32_t out_index = i_prompt * b->cfg.n + ev->index; /* stream: best_of == n */
    bool stream = b->cfg.stream && sse != NULL;
    if (s->finished) {
        return -1;
    }
    if (stream) {
        stream_start(b, i_prompt, out_index, s, sse);
    }
    if (ev->type == ENGINE_EVENT_TOKEN && b->cfg.drop_generated) {
        return 0;
    }
    if (ev->type == ENGINE_EVENT_TOKEN) {
        size_t len = ev->text_len <= ENGINE_EVENT_TEXT_MAX ? ev->text_len : ENGINE_EVENT_TEXT_MAX;
        s->n_token_events++;
        if (ev->has_logprob) {
            s->sum_logprob += ev->logprob;
        }
        size_t offset = s->n_chars;
        s->n_chars += utf8_count_chars(ev->text, len);
        bool want_lp = b->cfg.logprobs >= 0;
        if (stream) {
            if (len == 0 && !want_lp && b->cfg.candidates <= 0) {
                return 0; /* nothing final yet (held back for a stop string or a character) */
            }
            struct lp_lists one;
            lp_init(&one);
            if (want_lp) {
                lp_add(b, &one, ev->token, ev->has_logprob, ev->logprob, ev->top, ev->n_top,
                       offset);
            }
            chunk_choice(b, sse, out_index, ev->text, len, want_lp ? &one : NULL, ev, NULL, false);
            lp_finish(&one);
        } else {
            sbuf_append(&s->text, ev->text, len);
            if (b->cfg.candidates > 0) {
                sep(&s->cand, s->n_cand);
                cand_add(b, &s->cand, ev);
                s->n_cand++;
            }
            if (want_lp) {
                lp_add(b, &s->lp, ev->token, ev->has_logprob, ev->logprob, ev->top, ev->n_top,
                       offset);
            }
        }
        return 0;
    }
    if (ev->type == ENGINE_EVENT_FINISH) {
        if (ev->n_cached_tokens > p->n_cached) {
            p->n_cached = ev->n_cached_tokens;
        }
        s->finished = true;
        b->n_finished++;
        s->finish = ev->finish_reason;
        s->stop_token = ev->stop_token;
        s->stop_is_eos = ev->is_eos;
        size_t sl = strnlen(ev->stop_reason, sizeof(ev->stop_reason));
        if (sl >= sizeof(s->stop_reason)) {
            sl = sizeof(s->stop_reason) - 1;
        }
        memcpy(s->stop_reason, ev->stop_reason, sl);
        s->stop_reason[sl] = '\0';
        s->n_completion_tokens =
            ev->n_completion_tokens > 0 ? ev->n_completion_tokens : s->n_token_events;
        if (ev->sum_logprob != 0) {
            s->sum_logprob = ev->sum_logprob;
        }
        if (b->cfg.drop_generated) {
            s->finish = ENGINE_FINISH_LENGTH;
            s->stop_reason[0] = '\0';
            s->stop_token = -1;
            s->n_completion_tokens = 0;
        }
        if (stream) {
            chunk_choice(b, sse, out_index, "", 0, NULL, NULL, s, false);
        }
        return 0;
    }
    return -1;
}

bool completion_builder_is_done(const struct completion_builder *b) {
    return b->n_finished >= b->n_seqs;
}

void completion_builder_usage(const struct completion_builder *b, int64_t *prompt_tokens,
                              int64_t *completion_tokens) {
    int64_t pt = 0, ct = 0;
    for (int32_t i = 0; i < b->cfg.n_prompts; i++) {
        pt += (int64_t)b->prompts[i].n_ids;
    }
    for (int32_t i = 0; i < b->n_seqs; i++) {
        const struct seq_state *s = &b->seqs[i];
        ct += s->finished ? s->n_completion_tokens : s->n_token_events;
    }
    *prompt_tokens = pt;
    *completion_tokens = ct;
}

const char *completion_builder_finish_reason(const struct completion_builder *b) {
    for (int32_t i = 0; i < b->n_seqs; i++) {
        if (b->seqs[i].finished) {
            const char *n = finish_name(b->seqs[i].finish);
            return n != NULL ? n : "";
        }
    }
    return "";
}

int64_t completion_builder_cached_tokens(const struct completion_builder *b) {
    int64_t n = 0;
    for (int32_t i = 0; i < b->cfg.n_prompts; i++) {
        n += b->prompts[i].n_cached;
    }
    return n;
}

/* OpenAI's usage, with prompt_tokens_details.cached_tokens as OpenAI reports prompt caching. */
static void usage_json(const struct completion_builder *b, struct sbuf *out) {
    int64_t pt, ct;
    completion_builder_usage(b, &pt, &ct);
    sbuf_printf(out,
                "{\"prompt_tokens\":%lld,\"completion_tokens\":%lld,\"total_tokens\":%lld,"
                "\"prompt_tokens_details\":{\"cached_tokens\":%lld}}",
                (long long)pt, (long long)ct, (long long)(pt + ct),
                (long long)completion_builder_cached_tokens(b));
}

static double mean_logprob(const struct seq_state *s) {
    return s->n_completion_tokens > 0 ? s->sum_logprob / s->n_completion_tokens : s->sum_logprob;
}

void completion_builder_body(const struct completion_builder *b, struct sbuf *out) {
    sbuf_puts(out, "{\"id\":");
    sbuf_json_cstr(out, b->meta.id);
    sbuf_printf(out, ",\"object\":\"%s\",\"created\":%lld,\"model\":",
                b->cfg.chat ? "chat.completion" : "text_completion", (long long)b->meta.created);
    sbuf_json_cstr(out, b->meta.model);
    sbuf_puts(out, ",\"system_fingerprint\":");
    sbuf_json_cstr(out, b->meta.fingerprint);
    sbuf_puts(out, ",\"choices\":[");
    int32_t best_of = b->cfg.best_of;
    int32_t order[64];
    for (int32_t ip = 0; ip < b->cfg.n_prompts; ip++) {
        const struct prompt_state *p = &b->prompts[ip];
        const struct seq_state *seqs = &b->seqs[ip * best_of];
        /* best_of > n: keep the n sequences with the highest mean logprob (stable). */
        int32_t n_order = best_of < 64 ? best_of : 64;
        for (int32_t k = 0; k < n_order; k++) {
            order[k] = k;
        }
        if (best_of > b->cfg.n) {
            for (int32_t k = 1; k < n_order; k++) {
                int32_t v = order[k], j = k;
                while (j > 0 && mean_logprob(&seqs[order[j - 1]]) < mean_logprob(&seqs[v])) {
                    order[j] = order[j - 1];
                    j--;
                }
                order[j] = v;
            }
        }
        for (int32_t rank = 0; rank < b->cfg.n && rank < n_order; rank++) {
            const struct seq_state *s = &seqs[order[rank]];
            if (ip > 0 || rank > 0) {
                sbuf_append(out, ",", 1);
            }
            sbuf_printf(out, "{\"index\":%d,", ip * b->cfg.n + rank);
            if (b->cfg.chat) {
                sbuf_puts(out, "\"message\":{\"role\":\"assistant\",\"content\":");
                sbuf_json_string(out, s->text.data != NULL ? s->text.data : "", s->text.len);
                sbuf_puts(out, "}");
            } else if (b->cfg.echo && p->text_len > 0) {
                sbuf_puts(out, "\"text\":");
                /* Escape the concatenation as one string: the echo and the completion may
                 * split a character only if the prompt ended mid-character, which cannot
                 * happen for decoded text. */
                struct sbuf joined;
                sbuf_init(&joined);
                sbuf_append(&joined, p->text, p->text_len);
                sbuf_append(&joined, s->text.data != NULL ? s->text.data : "", s->text.len);
                sbuf_json_string(out, joined.data, joined.len);
                if (joined.failed) {
                    out->failed = true;
                }
                sbuf_finish(&joined);
            } else {
                sbuf_puts(out, "\"text\":");
                sbuf_json_string(out, s->text.data != NULL ? s->text.data : "", s->text.len);
            }
            sbuf_puts(out, ",\"logprobs\":");
            if (b->cfg.logprobs >= 0) {
                lp_render_any(b, out, b->cfg.echo ? &p->lp : NULL, &s->lp);
                if (lp_failed(&s->lp) || lp_failed(&p->lp)) {
                    out->failed = true;
                }
            } else {
                sbuf_puts(out, "null");
            }
            if (b->cfg.candidates > 0) {
                sbuf_puts(out, ",\"candidates\":[");
                sbuf_append(out, s->cand.data != NULL ? s->cand.data : "", s->cand.len);
                sbuf_puts(out, "]");
            }
            sbuf_puts(out, ",\"finish_reason\":");
            sbuf_json_cstr(out, finish_name(s->finish));
            sbuf_puts(out, ",\"stop_reason\":");
            stop_reason_json(b, s, out);
            sbuf_puts(out, "}");
            if (s->text.failed) {
                out->failed = true;
            }
        }
    }
    sbuf_puts(out, "],\"usage\":");
    usage_json(b, out);
    sbuf_puts(out, "}");
}

void completion_builder_stream_end(const struct completion_builder *b, struct sbuf *out) {
    if (b->cfg.include_usage) {
        chunk_open(b, out);
        sbuf_puts(out, "],\"usage\":");
        usage_json(b, out);
        sbuf_puts(out, "}\n\n");
    }
    sbuf_puts(out, "data: [DONE]\n\n");
}
