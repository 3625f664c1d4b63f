/*
 * engine.h: the continuous-batching engine. One engine thread owns the model's KV cache, the
 * forward scratch and every sequence's sampler; each step it batches one decode token of every
 * running sequence plus prefill chunks of admitted ones into ONE forward pass, samples every row
 * with its own request's parameters, and pushes events to each request's output channel.
 *
 * Threads: engine_create/engine_destroy on the main thread. engine_submit, engine_request_*
 * and engine_get_metrics from any thread (HTTP threads). Everything else happens on the engine
 * thread, which is the only one that touches the model state, KV blocks and samplers.
 *
 * Ownership of a request: it is reference-counted. engine_request_create returns it with one
 * reference (the submitter's); a successful engine_submit adds the engine's. The submitter drops
 * its reference with engine_request_release (for the server: when the connection completes),
 * which also guarantees the notify callback will not be called after it returns. The engine
 * drops its own when the request has finished, failed or been cancelled.
 */
#ifndef GPTD_ENGINE_H
#define GPTD_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <gptd/model.h>
#include <gptd/sampling.h>
#include <gptd/tokenizer.h>

struct engine_config {
    size_t kv_cache_bytes;     /* KV pool budget (--kv-cache-mb) */
    enum kv_dtype kv_dtype;    /* K/V element type (--kv-cache-dtype), default f32 */
    int32_t max_batch_tokens;  /* rows per forward step: decode rows + prefill chunks */
    int32_t prefill_chunk;     /* while sequences decode, a prompt longer than 4 chunks
                                  gets this many rows per step (0 = no limit): bounds how much
                                  a long prompt stretches the running streams' latency */
    int32_t max_running;       /* running sequences; 0 = derived from the KV budget */
    int32_t max_queue;         /* waiting requests before submit says overloaded */
    int64_t queue_timeout_ms;  /* a request still waiting after this fails (overloaded) */
    int32_t max_logprobs_rows; /* logit rows one step can return (prompt logprobs, n > 1) */
    bool prefix_cache;         /* reuse cached KV blocks of a prompt's prefix (--prefix-cache,
                                  default on); outputs are identical either way */
};

/* Defaults: 256 MiB KV, 256 batch tokens, prefill chunk 12, max_queue 256, 30 s queue
 * timeout, prefix cache on. */
void engine_config_init_default(struct engine_config *cfg);

enum engine_status {
    ENGINE_OK = 0,
    ENGINE_ERR_OVERLOADED = -1, /* queue full: 503 + Retry-After */
    ENGINE_ERR_DRAINING = -2,   /* shutting down: 503 */
    ENGINE_ERR_CONTEXT = -3,    /* prompt + max_tokens exceeds the context: 400 */
    ENGINE_ERR_INVALID = -4,    /* bad parameters (e.g. token id out of vocab): 400 */
    ENGINE_ERR_NOMEM = -5,      /* 500 */
    ENGINE_ERR_TOO_LARGE = -6,  /* would never fit in the KV budget: 400 */
};

/* What one request asks for. Copied by engine_request_create; the caller keeps its own. */
struct engine_request_params {
    const int32_t *prompt; /* (n_prompt,) token ids; borrowed for the create call only */
    size_t n_prompt;
    struct sampling_params sampling; /* per-choice knobs, incl. max_tokens, stop, logprobs, seed */
    int32_t n;                       /* choices returned (>= 1) */
    int32_t best_of;                 /* sequences generated (>= n); ranked by mean logprob */
    bool use_beam_search;            /* beam width = best_of; length_penalty below */
    float length_penalty;
    bool want_prompt_logprobs; /* echo + logprobs: logprobs of prompt tokens 1.. */
    bool skip_special_tokens;  /* leave special tokens (<|im_start|>, ...) out of the text
                                  (vLLM's skip_special_tokens); their ids and logprobs stay */
};

enum engine_event_type {
    ENGINE_EVENT_PROMPT_TOKEN = 0, /* a prompt token's logprob (echo + logprobs); index 0, for
                                      every choice; the first prompt token has none */
    ENGINE_EVENT_TOKEN = 1,        /* a generated token, with its text delta */
    ENGINE_EVENT_FINISH = 2,       /* one choice has finished */
    ENGINE_EVENT_ERROR = 3,        /* the whole request failed; no more events follow */
    ENGINE_EVENT_ADMITTED = 4,     /* the request left the queue and started running (once);
                                      a server sends a stream's 200 + headers only then */
};

enum engine_finish_reason {
    ENGINE_FINISH_NONE = 0,
    ENGINE_FINISH_LENGTH = 1,    /* max_tokens or end of context */
    ENGINE_FINISH_STOP = 2,      /* EOS, a stop string or a stop token */
    ENGINE_FINISH_CANCELLED = 3, /* cancelled by the client or shutdown */
    ENGINE_FINISH_ERROR = 4,
};

#define ENGINE_EVENT_TEXT_MAX 768 /* a token's bytes + a released stop-string holdback */
#define ENGINE_EVENT_TOP_MAX  20

/* One event, fixed size so the channel never allocates. */
struct engine_event {
    enum engine_event_type type;
    int32_t index; /* choice index within the request (0..n-1) */
    int32_t token; /* TOKEN / PROMPT_TOKEN: the token id */
    float logprob; /* its raw logprob (log-softmax of unprocessed logits); 0 if not wanted */
    bool has_logprob;
    int32_t n_top;                                     /* top alternatives below (logprobs = K) */
    struct sampling_logprob top[ENGINE_EVENT_TOP_MAX]; /* from sampling_logprobs() */
    /* TOKEN with sampling_params.candidates > 0 (the sampler's candidates extension): the
     * most likely survivors of every filter with renormalised probabilities. */
    int32_t n_survivors; /* nucleus size after all filters (1 for greedy); 0 if not reported */
    int32_t n_candidates;
    struct engine_candidate {
        int32_t id;
        float prob;
    } candidates[SAMPLING_MAX_CANDIDATES];
    uint32_t text_len;                /* TOKEN: text that became final with this token */
    char text[ENGINE_EVENT_TEXT_MAX]; /* valid UTF-8, not NUL-terminated */
    /* FINISH */
    enum engine_finish_reason finish_reason;
    char stop_reason[260]; /* the stop string that matched, NUL-terminated ("" if none) */
    int32_t stop_token;    /* the EOS / stop token id that ended it, or -1 */
    bool is_eos;           /* stop_token is one of the model's end tokens (stop_reason null) */
    int32_t n_prompt_tokens;
    int32_t n_cached_tokens; /* prompt tokens whose K/V came from the prefix cache when the
                                request was first admitted */
    int32_t n_completion_tokens;
    double sum_logprob; /* sum of the choice's raw token logprobs (best_of ranking: mean =
                           sum / n_completion_tokens) */
    /* ERROR */
    enum engine_status error;
    char error_message[200];
};

struct engine;
struct engine_request;

/*
 * Called on the engine thread, with the request's lock held, after events were pushed (or when
 * the request ends). Must be quick and must not call into the engine: resuming a suspended
 * connection is what it is for.
 */
typedef void (*engine_notify_fn)(void *ctx);

/* Borrowed model and tokenizer must outlive the engine. NULL + message on failure. tok may be
 * NULL (`gptd generate --prompt-ids` on a model without tokenizer files): events then carry
 * ids and no text, EOS comes from the model's config, and requests with stop strings are
 * refused. */
struct engine *engine_create(struct model *model, const struct tokenizer *tok,
                             const struct engine_config *cfg, char *err, size_t err_size);
/* Starts the engine thread. Returns 0 or -1. */
int engine_start(struct engine *engine);
/* Refuses new submissions from now on (ENGINE_ERR_DRAINING); running ones go on. */
void engine_drain(struct engine *engine);
/* Cancels everything still running or queued, stops and joins the thread. */
void engine_stop(struct engine *engine);
/* Stops if needed and frees. NULL is a no-op. */
void engine_destroy(struct engine *engine);

/* Validates and copies params. NULL + message (and *status) on failure. */
struct engine_request *engine_request_create(const struct engine *engine,
                                             const struct engine_request_params *params,
                                             engine_notify_fn notify, void *notify_ctx,
                                             enum engine_status *status, char *err,
                                             size_t err_size);
/* Queues the request. ENGINE_OK, or OVERLOADED / DRAINING / CONTEXT / TOO_LARGE. */
enum engine_status engine_submit(struct engine *engine, struct engine_request *req);
/* Moves up to max pending events into out; returns how many. Any thread. */
size_t engine_request_poll(struct engine_request *req, struct engine_event *out, size_t max);
/* True once every event has been pushed (all choices finished, or an error). */
bool engine_request_is_done(struct engine_request *req);
/* Asks the engine to drop the request at its next step. Any thread, idempotent. */
void engine_request_cancel(struct engine_request *req);
/* Drops the caller's reference; notify is never called after this returns. NULL is a no-op. */
void engine_request_release(struct engine_request *req);

/* Counters and gauges for /metrics; a consistent-enough snapshot read with atomics. */
#define ENGINE_HIST_BUCKETS 16
struct engine_histogram {
    uint64_t counts[ENGINE_HIST_BUCKETS]; /* cumulative per upper bound in bounds[] */
    double sum;
    uint64_t count;
};
/* Where an engine step's time goes (the per-phase counters of struct engine_metrics):
 * schedule (new submissions, cancellations, planning the batch, prefix matching), forward
 * (model_forward), sample (the samplers), output (detokenizing, stop strings, events and
 * notifying the connections), finish (beam search bookkeeping, retiring requests, gauges). */
enum engine_phase {
    ENGINE_PHASE_SCHEDULE = 0,
    ENGINE_PHASE_FORWARD,
    ENGINE_PHASE_SAMPLE,
    ENGINE_PHASE_OUTPUT,
    ENGINE_PHASE_FINISH,
    ENGINE_N_PHASES,
};
extern const char *const engine_phase_names[ENGINE_N_PHASES];

struct engine_metrics {
    int64_t n_waiting, n_running;
    int64_t kv_blocks_used, kv_blocks_total;
    uint64_t requests_started, requests_completed, requests_cancelled, requests_rejected,
        requests_failed;
    uint64_t preemptions;
    uint64_t prompt_tokens, generation_tokens;
    /* Prefix cache: tokens looked up at admission, tokens found; blocks holding a cached
     * prefix (in use or evictable). */
    uint64_t prefix_cache_queries, prefix_cache_hits;
    int64_t kv_blocks_cached;
    double phase_seconds[ENGINE_N_PHASES]; /* cumulative, over every step */
    uint64_t steps;
    struct engine_histogram step_seconds, batch_rows, queue_seconds, ttft_seconds, itl_seconds,
        e2e_seconds;
};
/* Bucket upper bounds (the last is +Inf): seconds for the *_seconds histograms, rows for
 * batch_rows. */
extern const double engine_hist_seconds_bounds[ENGINE_HIST_BUCKETS];
extern const double engine_hist_rows_bounds[ENGINE_HIST_BUCKETS];
void engine_get_metrics(struct engine *engine, struct engine_metrics *out);

#endif
