/*
 * request.h: the pure part of POST /v1/completions (and /tokenize, /detokenize): request body
 * bytes -> a validated struct completion_request, or an OpenAI error object's fields.
 *
 * No HTTP and no engine here, so every rule of docs/RELIABILITY.md's catalogue B/F that needs no
 * model is unit-tested directly (tests/test_server_request.c). Called on HTTP threads; every
 * function is a pure function of its arguments (the tokenizer is thread-safe).
 *
 * Parsing rules (cJSON 1.7.15 passes invalid UTF-8 through, truncates at \u0000, returns the
 * first of duplicate keys, matches keys case-insensitively with its plain getter and saturates
 * valueint): a lexical pre-scan rejects raw NULs, \u0000 escapes and invalid UTF-8 inside
 * strings and absurd nesting; cJSON_ParseWithLengthOpts with require_null_terminated rejects
 * trailing garbage; a tree walk rejects duplicate keys; fields are read with the case-sensitive
 * getter and numbers from valuedouble (finite, integral where an integer is expected, in range).
 * Error messages are fixed text plus numbers we parsed: request bytes are never echoed.
 */
#ifndef GPTD_SERVER_REQUEST_H
#define GPTD_SERVER_REQUEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <gptd/sampling.h>
#include <gptd/tokenizer.h>

/* One OpenAI error object plus its HTTP status. type/code/param point at static strings. */
struct api_error {
    int status;        /* HTTP status: 400, 401, 404, 413, 503, ... */
    const char *type;  /* "invalid_request_error", "overloaded_error", ... */
    const char *code;  /* "invalid_json", ...; NULL = JSON null */
    const char *param; /* request field name; NULL = JSON null */
    char message[256];
};

/* Fills *e; returns -1 so that parsers can `return api_error_set(...)`. */
int api_error_set(struct api_error *e, int status, const char *type, const char *code,
                  const char *param, const char *fmt, ...) __attribute__((format(printf, 6, 7)));

/* Limits a request is validated against (from the model and the server's flags). */
struct request_limits {
    int32_t n_vocab;        /* token ids must be < n_vocab; 0 = unknown (no upper check) */
    int32_t n_ctx;          /* model context: prompt + max_tokens must fit; 0 = unknown */
    int32_t max_tokens_cap; /* largest max_tokens accepted; 0 = n_ctx (or INT32_MAX) */
    int32_t max_n;          /* largest n and best_of */
    int32_t max_prompts;    /* prompts in one request (array forms) */
    size_t max_token_bytes; /* most text bytes one token stands for
                               (tokenizer_max_text_per_token): bounds the token count from
                               below before tokenizing (0 = skip that early check) */
};

/* Defaults: unknown vocabulary and context, max_n 16, max_prompts 16. */
void server_request_limits_init_default(struct request_limits *lim);

/* One prompt: text (string forms) and/or token ids (id forms, or after server_request_tokenize). */
struct prompt {
    char *text; /* owned; valid UTF-8 without NULs, NUL-terminated; NULL for the id forms */
    size_t text_len;
    int32_t *ids; /* owned; (n_ids,) */
    size_t n_ids;
};

/* A validated completion request. Plain data plus owned prompt arrays (server_request_finish). */
struct completion_request {
    struct prompt *prompts; /* (n_prompts,) owned; each prompt gives n choices */
    size_t n_prompts;
    bool has_model;     /* "model" was a string; its value is not kept (the served name answers) */
    bool model_matches; /* it equals the served model's name (for --strict-model) */
    struct sampling_params sampling; /* sampling.max_tokens = max(max_tokens, 1) */
    int32_t max_tokens;              /* as requested: 0 only with echo */
    int32_t n;                       /* choices per prompt */
    int32_t best_of;                 /* sequences per prompt (>= n) */
    bool use_beam_search;
    float length_penalty;
    bool stream;
    bool include_usage; /* stream_options.include_usage */
    bool echo;
    bool skip_special_tokens; /* vLLM's field: special tokens left out of the generated text;
                                 default true for chat, false for completions */

    /* /v1/chat/completions only (server_request_parse_chat) */
    bool is_chat;
    bool max_tokens_auto;        /* no max_tokens given: the rest of the context, set by
                                    server_request_tokenize (max_tokens holds the cap until then) */
    bool add_generation_prompt;  /* default true */
    bool continue_final_message; /* default false */
};

/* Zeroes *r (so server_request_finish is safe on it). */
void server_request_init(struct completion_request *r);
/* Frees the prompts; *r is re-initialised. */
void server_request_finish(struct completion_request *r);

/*
 * Parses and validates a /v1/completions body (body[0..len), need not be NUL-terminated).
 * served_model is the name the server answers to (for has_model/model_matches; may be NULL).
 * Returns 0 and fills *out (the caller calls server_request_finish), or -1 with *err filled (400)
 * and *out left empty.
 */
int server_request_parse_completion(const char *body, size_t len, const struct request_limits *lim,
                                    const char *served_model, struct completion_request *out,
                                    struct api_error *err);

/*
 * Parses and validates a /v1/chat/completions (or /apply-template) body: the sampling fields as
 * for completions (chat's logprobs flag with top_logprobs, max_completion_tokens; no prompt,
 * echo or suffix) and the chat fields: messages (roles system, developer, user, assistant,
 * tool; content a string, null or a list of {"type": "text", "text"} parts), tools, tool_choice
 * ("none" and "auto" only), response_format ("text" only), chat_template_kwargs,
 * add_generation_prompt, continue_final_message. Fills *out with is_chat set and one prompt
 * without text (server_request_chat_prompt renders it). Returns 0, or -1 with *err.
 */
int server_request_parse_chat(const char *body, size_t len, const struct request_limits *lim,
                              const char *served_model, struct completion_request *out,
                              struct api_error *err);

struct chat;
struct template_limits;

/*
 * Renders a parsed chat request's messages with the model's chat template into the text of
 * r->prompts[0]. The body is read again by the template module's JSON reader (which keeps
 * whether a number was written 1 or 1.0, as Python's tojson prints it); tool-call arguments
 * sent as JSON strings (OpenAI's form) are passed as objects, as vLLM passes them, since the
 * templates that print them expect a mapping. Variables: messages, tools (none when absent, as
 * transformers passes it), add_generation_prompt, the tokenizer's special-token strings and
 * chat_template_kwargs. Returns 0, or -1 with *err: 400 for a model without a template, a
 * template that raises (its message), fails or runs past its bounds; 500 out of memory.
 */
int server_request_chat_prompt(const char *body, size_t len, const struct chat *chat,
                               const struct template_limits *limits, struct completion_request *r,
                               struct api_error *err);

/*
 * Tokenizes every text prompt (ids stay as given) and checks the context rule:
 * prompt tokens + max_tokens <= n_ctx, else 400 context_length_exceeded (param "prompt" when
 * the prompt alone does not fit, "max_tokens" otherwise) with both numbers in the message.
 * Special tokens in the text are recognised and the tokenizer's own (Llama's BOS) added, as
 * vLLM does for completions; for a chat prompt the BOS is not added a second time when the
 * template already wrote it. max_tokens_auto: max_tokens becomes what the context has left.
 * Returns 0 or -1 with *err filled.
 */
int server_request_tokenize(struct completion_request *r, struct tokenizer *tok,
                            const struct request_limits *lim, struct api_error *err);

/*
 * Body checks shared by every JSON route: the pre-scan, the strict parse and the duplicate-key
 * walk. Returns the parsed tree (the caller cJSON_Delete()s it; a cJSON tree never leaves the
 * server module) or NULL with *err filled. Declared with void * so that this header does not
 * pull in cJSON.
 */
void *server_request_parse_json(const char *body, size_t len, struct api_error *err);

/* POST /tokenize: {"prompt": string, "add_special_tokens"?: bool}. On success *text is a
 * malloc'd NUL-terminated copy (the caller frees) and *add_special the flag (default true, as
 * vLLM). Returns 0 or -1 with *err. */
int server_request_parse_tokenize(const char *body, size_t len, char **text, size_t *text_len,
                                  bool *add_special, struct api_error *err);

/* POST /detokenize: {"tokens": [ids]}. On success *ids is malloc'd (non-NULL even when empty).
 * Returns 0 or -1 with *err. */
int server_request_parse_detokenize(const char *body, size_t len, const struct request_limits *lim,
                                    int32_t **ids, size_t *n_ids, struct api_error *err);

#endif
