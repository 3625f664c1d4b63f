/*
 * engine_internal.h: what the engine's own files share: the request and sequence structs, the
 * output channel's engine-side functions and the metrics accumulators. Not a public header.
 *
 * DESIGN: a request (one HTTP completion call) owns one or more sequences (choices, best_of
 * candidates, beams). Sequences live only on the engine thread. The request's output channel is
 * a growable ring of fixed-size events behind the request's mutex: the engine pushes, the HTTP
 * thread polls. The ring starts at a capacity that covers many steps of output, so the engine
 * step normally allocates nothing; it grows only when a reader falls behind (or a beam search
 * dumps its winners at the end), and a reader that falls ENGINE_RING_MAX events behind has its
 * request failed instead of growing memory without bound.
 */
#ifndef GPTD_ENGINE_INTERNAL_H
#define GPTD_ENGINE_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>

#include <gptd/engine.h>

#define ENGINE_RING_MIN  64
#define ENGINE_MAX_BEAMS 16
#define ENGINE_RING_MAX  65536

enum seq_state {
    SEQ_STATE_WAITING = 0, /* not admitted (new, or preempted: KV freed, tokens kept) */
    SEQ_STATE_FORK_WAIT,   /* n > 1: waits for sequence 0's prompt, then forks its KV */
    SEQ_STATE_RUNNING,     /* has KV for tokens[0..n_computed) */
    SEQ_STATE_FINISHED,
};

/* One sequence: a choice, a best_of candidate or a beam. Engine thread only. */
struct seq {
    struct engine_request *req; /* borrowed: the owning request */
    int32_t index;              /* choice index reported in events */
    enum seq_state state;
    struct kv_seq kv;
    int32_t *tokens;    /* (cap_tokens,) prompt then generated ids */
    int32_t n_tokens;   /* prompt + generated */
    int32_t n_computed; /* tokens whose K/V are in the cache */
    int32_t n_generated;
    int32_t cap_tokens;
    struct sampler *sampler;
    struct detok detok;
    struct stop_matcher *stop;
    double sum_logprob;
    int64_t t_last_token_us;
    /* Beam search only. */
    double beam_score; /* sum of the beam's token logprobs */
    bool has_cand;     /* cand_* hold this beam's best next tokens for the pending step */
    int32_t n_cand;
    int32_t cand_id[2 * ENGINE_MAX_BEAMS];
    float cand_lp[2 * ENGINE_MAX_BEAMS];
    int32_t *spare_tokens;  /* (cap_tokens,) swapped with tokens when beams are reassigned */
    struct kv_seq spare_kv; /* an empty table swapped likewise */
};

struct engine_request {
    struct engine *engine; /* borrowed */
    atomic_int refs;
    atomic_bool is_cancelled;

    pthread_mutex_t lock; /* guards everything down to notify_ctx */
    struct engine_event *ring;
    size_t ring_cap, ring_head, ring_len;
    bool is_done;
    engine_notify_fn notify;
    void *notify_ctx;

    /* Immutable after create. */
    int32_t *prompt; /* (n_prompt,) */
    int32_t n_prompt;
    struct engine_request_params params; /* params.prompt points at prompt above */
    int32_t n_seqs;                      /* best_of (or n), beams for beam search */

    /* Engine thread only. */
    struct seq *seqs; /* (n_seqs,) */
    /* Beam search: finished hypotheses (ended by EOS), at most n_seqs. */
    int32_t n_hyps;
    int32_t *hyp_tokens; /* (n_seqs, max_tokens) generated tokens of each hypothesis */
    int32_t *hyp_len;    /* (n_seqs,) */
    double *hyp_sum;     /* (n_seqs,) sum of token logprobs */
    int32_t n_finished;
    int32_t n_prompt_logprobs_done; /* prompt positions whose logprobs were emitted */
    int64_t t_submit_us, t_admit_us, t_first_token_us;
    int32_t n_cached_tokens; /* prefix-cache hit of sequence 0 at its first admission */
    bool is_cache_counted;
    uint64_t admit_order;
    bool is_admitted;
    struct engine_request *next; /* submit queue / waiting list link */
};

/* Metrics accumulators: written by the engine thread, read by anyone. */
struct hist_acc {
    _Atomic uint64_t counts[ENGINE_HIST_BUCKETS];
    _Atomic uint64_t sum_ns; /* values are stored scaled by 1e9 (seconds -> ns, rows -> 1e9) */
    _Atomic uint64_t count;
};
/* The engine. Fields below "engine thread only" are never touched by other threads. */
struct engine {
    struct model *model;           /* borrowed: owned by main */
    const struct tokenizer *tok;   /* borrowed: owned by main */
    const struct model_config *mc; /* borrowed from model */
    struct engine_config cfg;
    struct kv_cache *kv;
    struct model_scratch *scratch;
    int32_t n_vocab;
    int32_t eos_id;                    /* the first end token, or -1 */
    int32_t eos_ids[SAMPLING_MAX_EOS]; /* every token that ends a sequence */
    int32_t n_eos;
    int32_t max_running; /* sequences */

    pthread_t thread;
    bool is_started;
    pthread_mutex_t lock; /* guards the submit queue and is_stopping */
    pthread_cond_t cond;
    struct engine_request *submit_head, *submit_tail;
    bool is_stopping;
    atomic_bool is_draining;
    atomic_long n_waiting; /* submitted, not yet admitted (incl. preempted) */

    /* Engine thread only. */
    struct engine_request *wait_head, *wait_tail; /* FIFO; preempted requests go to the head */
    struct engine_request **running;              /* (max_running,) in admission order */
    int32_t n_running_reqs;
    int32_t n_running_seqs;
    uint64_t admit_counter;
    float *logits;                 /* (max_batch_tokens, V) */
    float *lp_scratch;             /* (V,) for sampling_logprobs() on prompt and beam rows */
    struct model_batch_seq *batch; /* (max_batch_tokens,) */
    struct seq **batch_seq;        /* (max_batch_tokens,) which sequence each entry is */
    int32_t *batch_start;          /* (max_batch_tokens,) first position of each span */
    struct sample_result sample;   /* the sampler's report for the row being sampled */
    char text[ENGINE_EVENT_TEXT_MAX * 2 + 256]; /* a token's text plus a released holdback */

    /* Metrics. */
    atomic_long m_running;
    atomic_long m_kv_used;
    atomic_long m_kv_cached;
    _Atomic uint64_t m_phase_us[ENGINE_N_PHASES];
    int64_t sampler_us; /* sampler time within the current step's row loop */
    _Atomic uint64_t m_prefix_queries, m_prefix_hits;
    _Atomic uint64_t m_started, m_completed, m_cancelled, m_rejected, m_failed, m_preemptions,
        m_prompt_tokens, m_generation_tokens, m_steps;
    struct hist_acc h_step, h_rows, h_queue, h_ttft, h_itl, h_e2e;
};

/* Frees a request's sequences (KV blocks back to the pool, samplers, matchers). */
void engine_request_free_seqs(struct engine *engine, struct engine_request *req);

/* Pushes a copy of ev; returns 0, or -1 when the reader is too far behind. Engine thread. */
int engine_request_push_locked(struct engine_request *req, const struct engine_event *ev);
void engine_request_lock(struct engine_request *req);
/* Unlocks after calling notify if anything was pushed since engine_request_lock. */
void engine_request_unlock_notify(struct engine_request *req);
/* Marks the channel done (no more events). Call with the lock held. */
void engine_request_mark_done_locked(struct engine_request *req);
/* Drops one reference; frees at zero. */
void engine_request_unref(struct engine_request *req);

void hist_observe(struct hist_acc *h, const double *bounds, double value);
void hist_snapshot(const struct hist_acc *h, struct engine_histogram *out);

#endif
