/*
 * response.h: the JSON the server writes: OpenAI error objects, the non-streamed
 * text_completion / chat.completion body and the SSE chunks of a stream (`data: {json}\n\n` ...
 * `data: [DONE]`).
 *
 * A struct completion_builder collects the engine events of one HTTP request (all its prompts
 * and choices) and either appends SSE chunks as events arrive or renders the whole body at the
 * end. Pure: it knows token texts only through a callback, so tests need no tokenizer. Owned by
 * whichever HTTP thread is serving the connection at the moment (never two at once).
 */
#ifndef GPTD_SERVER_RESPONSE_H
#define GPTD_SERVER_RESPONSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <gptd/engine.h>

#include "request.h"
#include "sbuf.h"

/* {"error":{"message","type","param","code"}} */
void response_error_json(struct sbuf *out, const struct api_error *e);
/* An error after SSE headers went out: `data: {"error":...}\n\n` then `data: [DONE]\n\n`. */
void response_sse_error(struct sbuf *out, const struct api_error *e);

/*
 * Maps an engine status to the HTTP error (one place for the whole server). at_submit: the
 * status came from engine_submit/engine_request_create (queue full, draining) rather than from
 * an ERROR event of an admitted request (queue timeout, shut down while running).
 */
void response_engine_error(struct api_error *e, enum engine_status status, bool at_submit,
                           const char *engine_message);

/* The bytes of token id (not NUL-terminated, may be part of a UTF-8 character), or NULL. */
typedef const char *(*response_token_text_fn)(void *ctx, int32_t id, size_t *len);

struct completion_meta {
    char id[48];             /* "cmpl-" + 32 hex digits */
    int64_t created;         /* Unix seconds */
    const char *model;       /* borrowed: the served model name */
    const char *fingerprint; /* borrowed: system_fingerprint */
};

/* Fills id with a fresh random "cmpl-..." ("chatcmpl-..." when chat) and created with the wall
 * clock. */
void completion_meta_init(struct completion_meta *m, bool chat, const char *model,
                          const char *fingerprint);

struct completion_builder_config {
    int32_t n_prompts;
    int32_t n;          /* choices returned per prompt */
    int32_t best_of;    /* sequences per prompt (events carry index 0..best_of-1) */
    int32_t logprobs;   /* -1 off, else top-K per position */
    int32_t candidates; /* > 0: the sampler's candidates extension: every choice gets a
                           "candidates" list, one {"n_survivors", "candidates": [{id, token,
                           prob}]} per generated token */
    bool echo;
    bool stream;
    bool include_usage;
    bool chat;      /* chat.completion objects: choices[].message / delta, logprobs.content[] */
    int32_t eos_id; /* a FINISH by this token reports stop_reason null, as vLLM does */
    bool drop_generated; /* echo + max_tokens 0: the engine generates one token (its minimum),
                            which is not reported: no text, 0 completion tokens, "length" */
    response_token_text_fn token_text;
    void *token_text_ctx; /* borrowed */
};

struct completion_builder;

/* meta and cfg are copied (meta's strings stay borrowed). NULL when out of memory. */
struct completion_builder *completion_builder_create(const struct completion_meta *meta,
                                                     const struct completion_builder_config *cfg);
/* NULL is a no-op. */
void completion_builder_destroy(struct completion_builder *b);

/* The prompt of prompt i: text echoed back (decoded by the caller) and its ids (usage, and the
 * echoed tokens' logprobs). Both copied. Call before any event of that prompt. */
int completion_builder_set_prompt(struct completion_builder *b, int32_t i_prompt, const char *text,
                                  size_t text_len, const int32_t *ids, size_t n_ids);

/*
 * Feeds one event of prompt i_prompt's engine request (PROMPT_TOKEN, TOKEN or FINISH; ERROR is
 * the caller's business). In stream mode appends the SSE chunks it produces to sse (which may
 * be NULL otherwise). Returns 0, or -1 for an event that does not fit the request (bad index).
 */
int completion_builder_event(struct completion_builder *b, int32_t i_prompt,
                             const struct engine_event *ev, struct sbuf *sse);

/* True when every sequence of every prompt has finished. */
bool completion_builder_is_done(const struct completion_builder *b);

/* Non-streamed: the whole text_completion body (best_of > n: the n best by mean logprob). */
void completion_builder_body(const struct completion_builder *b, struct sbuf *out);

/* Stream end: the usage chunk (include_usage) and `data: [DONE]\n\n`. */
void completion_builder_stream_end(const struct completion_builder *b, struct sbuf *out);

/* Totals for usage and the access log. */
void completion_builder_usage(const struct completion_builder *b, int64_t *prompt_tokens,
                              int64_t *completion_tokens);

/* Prompt tokens whose K/V came from the prefix cache, over all prompts (usage's
 * prompt_tokens_details.cached_tokens, the access log). */
int64_t completion_builder_cached_tokens(const struct completion_builder *b);

/* "stop", "length", ... of the first finished choice, for the access log ("" if none). */
const char *completion_builder_finish_reason(const struct completion_builder *b);

#endif
