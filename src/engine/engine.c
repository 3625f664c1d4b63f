/*
 * engine.c: the engine thread and its scheduler step (continuous batching).
 *
 * DESIGN. HTTP threads submit requests into a bounded queue (engine_submit). The engine thread
 * loops: take new submissions, drop cancelled and timed-out requests, then build ONE ragged
 * batch for the model:
 *   1. one decode row for every running sequence that has a token waiting (always first, so
 *      streams never starve behind prompts);
 *   2. prefill chunks of admitted sequences, oldest first, up to max_batch_tokens rows;
 *   3. admission of waiting requests (FIFO) while rows, sequence slots and KV blocks allow.
 * One model_forward call runs the batch; every row whose span reaches the end of its sequence's
 * tokens is sampled with its own sampler, detokenized, run through its stop matcher, and turned
 * into events on its request's channel.
 *
 * A sequence is just tokens[0..n_tokens) with K/V cached for tokens[0..n_computed). A decode
 * step is a span of one token; a prefill chunk a longer span; recomputing a preempted sequence
 * is a prefill of all its tokens. Because the forward pass is batch-invariant, all three give
 * the same logits, so preemption never changes a sequence's output.
 *
 * KV pressure: admission needs blocks for the whole prompt plus one block per sequence of
 * headroom. When a running request's decode step cannot get blocks, the most recently admitted
 * request is preempted (blocks freed, tokens and sampler kept, put back at the head of the
 * queue). engine_submit refuses a request that could not fit in the pool even alone, so the
 * oldest request always makes progress.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <gptd/engine.h>
#include <gptd/util.h>

#include "engine_internal.h"

void engine_config_init_default(struct engine_config *cfg) {
    memset(cfg, 0, sizeof(*cfg));
    cfg->kv_cache_bytes = (size_t)256 << 20;
    cfg->kv_dtype = KV_DTYPE_F32; /* exact; f16 doubles the positions per MiB, rounding K/V */
    cfg->max_batch_tokens = 256;
    /* On 2 cores a decode step of 16 sequences of the 124M model takes ~30 ms (weight streaming)
     * and each prefill row adds ~2 ms of compute: 12-row chunks keep the running streams' ITL
     * p99 within 2x of p50 while a 1000-token prompt joins (docs/PERFORMANCE.md, Engine). */
    cfg->prefill_chunk = 12;
    cfg->max_running = 0;
    cfg->max_queue = 256;
    cfg->queue_timeout_ms = 30000;
    cfg->max_logprobs_rows = 0;
    cfg->prefix_cache = true;
}

const char *const engine_phase_names[ENGINE_N_PHASES] = {"schedule", "forward", "sample", "output",
                                                         "finish"};

static void phase_add(struct engine *e, enum engine_phase p, int64_t us) {
    atomic_fetch_add(&e->m_phase_us[p], (uint64_t)(us > 0 ? us : 0));
}

static int32_t blocks_for(int64_t n_pos) {
    return (int32_t)((n_pos + KV_BLOCK_SIZE - 1) / KV_BLOCK_SIZE);
}

struct engine *engine_create(struct model *model, const struct tokenizer *tok,
                             const struct engine_config *cfg, char *err, size_t err_size) {
    struct engine *e = calloc(1, sizeof(*e));
    if (e == NULL) {
        snprintf(err, err_size, "out of memory");
        return NULL;
    }
    e->model = model;
    e->tok = tok;
    e->mc = model_get_config(model);
    e->cfg = *cfg;
    e->n_vocab = e->mc->n_vocab;
    /* End tokens: the model's (config.json and generation_config.json), else the tokenizer's. */
    for (int32_t i = 0; i < e->mc->n_eos && e->n_eos < SAMPLING_MAX_EOS; i++) {
        e->eos_ids[e->n_eos++] = e->mc->eos_token_ids[i];
    }
    if (e->n_eos == 0 && tokenizer_eos_id(tok) >= 0) {
        e->eos_ids[e->n_eos++] = tokenizer_eos_id(tok);
    }
    e->eos_id = e->n_eos > 0 ? e->eos_ids[0] : -1;
    pthread_mutex_init(&e->lock, NULL);
    pthread_cond_init(&e->cond, NULL);
    atomic_init(&e->is_draining, false);
    atomic_init(&e->n_waiting, 0);
    if (cfg->max_batch_tokens < 1 || cfg->max_queue < 1) {
        snprintf(err, err_size, "max_batch_tokens and max_queue must be >= 1");
        goto fail;
    }
    /* A tokenizer with ids the model has no embedding for is the wrong tokenizer (fewer is
     * normal: vocabularies are padded). */
    if (tok != NULL && tokenizer_n_vocab(tok) > e->n_vocab) {
        snprintf(err, err_size,
                 "the tokenizer has %d token ids but the model only %d: they do not belong "
                 "together",
                 (int)tokenizer_n_vocab(tok), (int)e->n_vocab);
        goto fail;
    }
    if (tokenizer_max_token_bytes(tok) + 2 * SAMPLING_MAX_STOP_BYTES + 64 > ENGINE_EVENT_TEXT_MAX) {
        /* Events carry a token's text plus a released stop-string holdback; longer pieces are
         * split over several events, which is correct but noisy, so say so once. */
        log_warn("engine: tokens of up to %zu bytes will be split across events",
                 tokenizer_max_token_bytes(tok));
    }
    e->kv = kv_cache_create_with(model, cfg->kv_cache_bytes, cfg->kv_dtype, err, err_size);
    if (e->kv == NULL) {
        goto fail;
    }
    int32_t n_blocks = kv_cache_n_blocks_total(e->kv);
    e->max_running = cfg->max_running > 0 ? cfg->max_running : n_blocks;
    if (e->max_running > cfg->max_batch_tokens) {
        e->max_running = cfg->max_batch_tokens; /* each running sequence needs a row per step */
    }
    if (e->max_running > n_blocks) {
        e->max_running = n_blocks;
    }
    int32_t rows = cfg->max_batch_tokens;
    e->scratch = model_scratch_create(model, rows, rows);
    e->logits = malloc((size_t)rows * (size_t)e->n_vocab * sizeof(float));
    e->lp_scratch = malloc((size_t)e->n_vocab * sizeof(float));
    e->batch = calloc((size_t)rows, sizeof(*e->batch));
    e->batch_seq = calloc((size_t)rows, sizeof(*e->batch_seq));
    e->batch_start = calloc((size_t)rows, sizeof(*e->batch_start));
    e->running = calloc((size_t)e->max_running, sizeof(*e->running));
    if (e->scratch == NULL || e->logits == NULL || e->lp_scratch == NULL || e->batch == NULL ||
        e->batch_seq == NULL || e->batch_start == NULL || e->running == NULL) {
        snprintf(err, err_size, "out of memory for the engine's scratch (%d rows)", (int)rows);
        goto fail;
    }
    atomic_store(&e->m_kv_used, 0);
    log_info("engine: KV cache %d blocks of %d positions (%.1f MiB, %s), max %d running "
             "sequences, %d batch tokens, queue %d",
             (int)n_blocks, KV_BLOCK_SIZE,
             (double)n_blocks * (double)kv_cache_bytes_per_block(e->kv) / (1 << 20),
             kv_dtype_name(kv_cache_dtype(e->kv)), (int)e->max_running, (int)rows,
             (int)cfg->max_queue);
    return e;
fail:
    engine_destroy(e);
    return NULL;
}

/* ---- channel helpers (engine thread) ---------------------------------------------------- */

static void event_init(struct engine_event *ev, enum engine_event_type type, int32_t index) {
    /* Only the header fields are cleared: the text and top arrays are written up to their
     * lengths, so clearing 1 KiB per event would be wasted work. */
    ev->type = type;
    ev->index = index;
    ev->token = -1;
    ev->logprob = 0.0f;
    ev->has_logprob = false;
    ev->n_top = 0;
    ev->n_survivors = 0;
    ev->n_candidates = 0;
    ev->text_len = 0;
    ev->finish_reason = ENGINE_FINISH_NONE;
    ev->stop_reason[0] = '\0';
    ev->stop_token = -1;
    ev->is_eos = false;
    ev->n_prompt_tokens = 0;
    ev->n_completion_tokens = 0;
    ev->sum_logprob = 0.0;
    ev->error = ENGINE_OK;
    ev->error_message[0] = '\0';
}

/* Pushes ev; a reader too far behind gets its request cancelled (it will never catch up). */
static void push_locked(struct engine_request *req, const struct engine_event *ev) {
    if (engine_request_push_locked(req, ev) != 0) {
        log_warn("engine: a client fell %d events behind; cancelling its request", ENGINE_RING_MAX);
        atomic_store(&req->is_cancelled, true);
    }
}

/* Pushes text as TOKEN events: the first carries the token, continuations (token -1) the rest
 * of a text longer than one event holds, split on UTF-8 character boundaries. */
static void push_text_locked(struct engine_request *req, struct engine_event *ev, const char *text,
                             size_t len) {
    size_t off = 0;
    do {
        size_t n = len - off;
        if (n > ENGINE_EVENT_TEXT_MAX) {
            n = ENGINE_EVENT_TEXT_MAX;
            while (n > 0 && ((unsigned char)text[off + n] & 0xC0) == 0x80) {
                n--; /* never cut inside a character */
            }
        }
        memcpy(ev->text, text + off, n);
        ev->text_len = (uint32_t)n;
        push_locked(req, ev);
        off += n;
        /* Continuations carry text only. */
        ev->token = -1;
        ev->has_logprob = false;
        ev->n_top = 0;
        ev->n_survivors = 0;
        ev->n_candidates = 0;
    } while (off < len);
}

/* Publishes the running and KV gauges. Called before a request is marked done, so that a
 * client that sees its request done also sees its blocks returned. */
static void update_gauges(struct engine *e) {
    atomic_store(&e->m_running, e->n_running_seqs);
    atomic_store(&e->m_kv_used, kv_cache_n_blocks_total(e->kv) - kv_cache_n_blocks_free(e->kv));
    atomic_store(&e->m_kv_cached, kv_cache_n_blocks_cached(e->kv));
}

/* A sequence starts (or restarts after preemption): the longest cached prefix of its tokens
 * is shared from the prefix cache and only the rest is prefilled -- always at least the last
 * token, whose logits start the answer. Requests that want every prompt position's logprobs
 * (echo + logprobs) compute the prompt themselves: cached blocks hold K/V, not logits. */
static void seq_match_prefix(struct engine *e, struct seq *seq) {
    struct engine_request *req = seq->req;
    if (!e->cfg.prefix_cache || req->params.want_prompt_logprobs || seq->kv.n_pos != 0) {
        return;
    }
    int32_t hit = kv_seq_match_prefix(e->kv, &seq->kv, seq->tokens, seq->n_tokens - 1);
    seq->n_computed = hit;
    atomic_fetch_add(&e->m_prefix_queries, (uint64_t)seq->n_tokens);
    atomic_fetch_add(&e->m_prefix_hits, (uint64_t)hit);
    if (seq->index == 0 && !req->is_cache_counted) {
        req->n_cached_tokens = hit < req->n_prompt ? hit : req->n_prompt;
        req->is_cache_counted = true;
    }
}

static void request_fail(struct engine *e, struct engine_request *req, enum engine_status st,
                         const char *message) {
    struct engine_event ev;
    event_init(&ev, ENGINE_EVENT_ERROR, 0);
    ev.error = st;
    snprintf(ev.error_message, sizeof(ev.error_message), "%s", message);
    engine_request_lock(req);
    push_locked(req, &ev);
    engine_request_mark_done_locked(req);
    engine_request_unlock_notify(req);
    (void)e;
}

/* ---- queue and running set -------------------------------------------------------------- */

enum engine_status engine_submit(struct engine *e, struct engine_request *req) {
    const struct engine_request_params *p = &req->params;
    /* Every call counts as started, so that started == completed + cancelled + rejected +
     * failed holds at all times. */
    atomic_fetch_add(&e->m_started, 1);
    /* The request must fit in the pool alone, even recomputed after a preemption (sequences
     * then share nothing), and its sequences in one step: otherwise it could never finish. */
    int64_t per_seq = blocks_for((int64_t)req->n_prompt + p->sampling.max_tokens) + 1;
    if (per_seq * req->n_seqs > kv_cache_n_blocks_total(e->kv) || req->n_seqs > e->max_running) {
        atomic_fetch_add(&e->m_rejected, 1);
        return ENGINE_ERR_TOO_LARGE;
    }
    pthread_mutex_lock(&e->lock);
    enum engine_status st = ENGINE_OK;
    if (atomic_load(&e->is_draining) || e->is_stopping) {
        st = ENGINE_ERR_DRAINING;
    } else if (atomic_load(&e->n_waiting) >= e->cfg.max_queue) {
        st = ENGINE_ERR_OVERLOADED;
    } else {
        atomic_fetch_add(&req->refs, 1); /* the engine's reference */
        req->t_submit_us = time_now_us();
        req->next = NULL;
        if (e->submit_tail != NULL) {
            e->submit_tail->next = req;
        } else {
            e->submit_head = req;
        }
        e->submit_tail = req;
        atomic_fetch_add(&e->n_waiting, 1);
        pthread_cond_signal(&e->cond);
    }
    pthread_mutex_unlock(&e->lock);
    if (st != ENGINE_OK) {
        atomic_fetch_add(&e->m_rejected, 1);
    }
    return st;
}

static void wait_push_tail(struct engine *e, struct engine_request *req) {
    req->next = NULL;
    if (e->wait_tail != NULL) {
        e->wait_tail->next = req;
    } else {
        e->wait_head = req;
    }
    e->wait_tail = req;
}

static void wait_push_head(struct engine *e, struct engine_request *req) {
    req->next = e->wait_head;
    e->wait_head = req;
    if (e->wait_tail == NULL) {
        e->wait_tail = req;
    }
}

static int32_t request_live_seqs(const struct engine_request *req) {
    return req->n_seqs - req->n_finished;
}

static void running_remove(struct engine *e, struct engine_request *req) {
    for (int32_t i = 0; i < e->n_running_reqs; i++) {
        if (e->running[i] == req) {
            memmove(&e->running[i], &e->running[i + 1],
                    (size_t)(e->n_running_reqs - i - 1) * sizeof(*e->running));
            e->n_running_reqs--;
            e->n_running_seqs -= request_live_seqs(req);
            return;
        }
    }
}

/* The engine is done with req: free its sequences and drop the engine's reference. */
static void request_retire(struct engine *e, struct engine_request *req) {
    engine_request_free_seqs(e, req);
    engine_request_unref(req);
}

/* Frees the KV blocks of every sequence; tokens, samplers and matchers stay. */
static void request_preempt(struct engine *e, struct engine_request *req) {
    running_remove(e, req);
    for (int32_t i = 0; i < req->n_seqs; i++) {
        struct seq *seq = &req->seqs[i];
        if (seq->state == SEQ_STATE_FINISHED) {
            continue;
        }
        kv_seq_truncate(e->kv, &seq->kv, 0);
        seq->n_computed = 0;
        seq->has_cand = false;
        if (seq->state == SEQ_STATE_RUNNING) {
            seq->state = SEQ_STATE_WAITING;
        }
    }
    req->is_admitted = false;
    wait_push_head(e, req);
    atomic_fetch_add(&e->n_waiting, 1);
    atomic_fetch_add(&e->m_preemptions, 1);
    log_debug("engine: preempted a request (%d sequences)", (int)req->n_seqs);
}

/* Tells the client its request was cancelled (if it still listens) and retires it. */
static void request_cancelled(struct engine *e, struct engine_request *req, bool is_shutdown) {
    for (int32_t i = 0; i < req->n_seqs; i++) {
        kv_seq_truncate(e->kv, &req->seqs[i].kv, 0);
    }
    update_gauges(e);
    if (is_shutdown) {
        request_fail(e, req, ENGINE_ERR_DRAINING, "the server is shutting down");
    } else {
        struct engine_event ev;
        engine_request_lock(req);
        for (int32_t i = 0; i < req->n_seqs; i++) {
            if (req->seqs[i].state != SEQ_STATE_FINISHED) {
                event_init(&ev, ENGINE_EVENT_FINISH, req->seqs[i].index);
                ev.finish_reason = ENGINE_FINISH_CANCELLED;
                ev.n_prompt_tokens = req->n_prompt;
                ev.n_cached_tokens = req->n_cached_tokens;
                ev.n_completion_tokens = req->seqs[i].n_generated;
                push_locked(req, &ev);
            }
        }
        engine_request_mark_done_locked(req);
        engine_request_unlock_notify(req);
    }
    atomic_fetch_add(&e->m_cancelled, 1);
    request_retire(e, req);
}

/* Moves new submissions to the waiting list. */
static void take_submissions(struct engine *e) {
    pthread_mutex_lock(&e->lock);
    struct engine_request *head = e->submit_head;
    e->submit_head = e->submit_tail = NULL;
    pthread_mutex_unlock(&e->lock);
    while (head != NULL) {
        struct engine_request *next = head->next;
        wait_push_tail(e, head);
        head = next;
    }
}

/* Drops cancelled requests everywhere and times out requests that waited too long. */
static void reap(struct engine *e, int64_t now_us) {
    struct engine_request **link = &e->wait_head;
    struct engine_request *prev = NULL;
    while (*link != NULL) {
        struct engine_request *req = *link;
        bool is_cancelled = atomic_load(&req->is_cancelled);
        bool is_timed_out = !is_cancelled && req->t_admit_us == 0 && e->cfg.queue_timeout_ms > 0 &&
                            now_us - req->t_submit_us > e->cfg.queue_timeout_ms * 1000;
        if (!is_cancelled && !is_timed_out) {
            prev = req;
            link = &req->next;
            continue;
        }
        *link = req->next;
        if (e->wait_tail == req) {
            e->wait_tail = prev;
        }
        atomic_fetch_sub(&e->n_waiting, 1);
        if (is_cancelled) {
            request_cancelled(e, req, false);
        } else {
            atomic_fetch_add(&e->m_rejected, 1);
            request_fail(e, req, ENGINE_ERR_OVERLOADED,
                         "the request waited too long in the queue (queue_timeout)");
            request_retire(e, req);
        }
    }
    for (int32_t i = e->n_running_reqs - 1; i >= 0; i--) {
        struct engine_request *req = e->running[i];
        if (atomic_load(&req->is_cancelled)) {
            running_remove(e, req);
            request_cancelled(e, req, false);
        }
    }
}

/* ---- scheduling ------------------------------------------------------------------------- */

struct step_plan {
    int32_t n_entries;
    int32_t n_rows;
    int32_t n_logit_rows;
};

static bool seq_is_computing(const struct seq *seq) {
    return seq->state == SEQ_STATE_RUNNING && seq->n_computed < seq->n_tokens;
}

static bool plan_add(struct engine *e, struct step_plan *plan, struct seq *seq, int32_t n) {
    if (kv_seq_reserve(e->kv, &seq->kv, n) != KV_OK) {
        return false;
    }
    const struct engine_request *req = seq->req;
    int32_t start = seq->n_computed;
    bool reaches_end = start + n == seq->n_tokens;
    int32_t n_logits = reaches_end ? 1 : 0;
    /* echo + logprobs: every prompt row of the first sequence's first pass gives logprobs. */
    if (req->params.want_prompt_logprobs && seq->index == 0 &&
        req->n_prompt_logprobs_done < req->n_prompt - 1 && start < req->n_prompt - 1) {
        n_logits = n;
    }
    struct model_batch_seq *b = &e->batch[plan->n_entries];
    b->kv = &seq->kv;
    b->tokens = seq->tokens + start;
    b->n_tokens = n;
    b->n_logits = n_logits;
    e->batch_seq[plan->n_entries] = seq;
    e->batch_start[plan->n_entries] = start;
    plan->n_entries++;
    plan->n_rows += n;
    plan->n_logit_rows += n_logits;
    return true;
}

/* The largest chunk of seq's remaining tokens that fits the free KV blocks, keeping one block
 * of headroom for copy-on-write of a shared last block. */
static int32_t chunk_that_fits(struct engine *e, const struct seq *seq, int32_t want) {
    int32_t free_blocks = kv_cache_n_blocks_free(e->kv) - 1;
    int32_t room = seq->kv.n_blocks * KV_BLOCK_SIZE - seq->kv.n_pos;
    if (free_blocks > 0) {
        room += free_blocks * KV_BLOCK_SIZE;
    }
    return want < room ? want : room;
}

/* Blocks a request needs to be admitted: its sequences' tokens (the prompt once for a new
 * request, whose other sequences fork it) plus one block per sequence of headroom. */
static int32_t admission_blocks(const struct engine_request *req) {
    int32_t need = 0;
    for (int32_t i = 0; i < req->n_seqs; i++) {
        const struct seq *seq = &req->seqs[i];
        if (seq->state == SEQ_STATE_WAITING) {
            need += blocks_for(seq->n_tokens);
        }
        if (seq->state != SEQ_STATE_FINISHED) {
            need += 1;
        }
    }
    return need;
}

/* Adds the next prefill chunk of seq to the plan: what is left of its tokens, at most budget
 * rows, at most long_cap rows for a long prompt (long_cap > 0), and what the free KV blocks
 * hold. Returns the rows added. */
static int32_t plan_prefill(struct engine *e, struct step_plan *plan, struct seq *seq,
                            int32_t budget, int32_t long_cap) {
    int32_t n = seq->n_tokens - seq->n_computed;
    n = n < budget ? n : budget;
    if (long_cap > 0 && seq->n_tokens > 4 * long_cap && n > long_cap) {
        n = long_cap;
    }
    n = chunk_that_fits(e, seq, n);
    return n > 0 && plan_add(e, plan, seq, n) ? n : 0;
}

static void plan_step(struct engine *e, struct step_plan *plan) {
    int32_t budget = e->cfg.max_batch_tokens;
    memset(plan, 0, sizeof(*plan));

    /* 1. Decode rows, oldest request first. A request whose sequences may not all get a block
     * preempts the newest running request (possibly itself) until they can. */
    for (int32_t i = 0; i < e->n_running_reqs; i++) {
        struct engine_request *req = e->running[i];
        int32_t n_decode = 0;
        for (int32_t j = 0; j < req->n_seqs; j++) {
            const struct seq *seq = &req->seqs[j];
            n_decode += seq_is_computing(seq) && seq->n_tokens - seq->n_computed == 1;
        }
        if (n_decode == 0) {
            continue;
        }
        while (kv_cache_n_blocks_free(e->kv) < n_decode &&
               e->running[e->n_running_reqs - 1] != req) {
            request_preempt(e, e->running[e->n_running_reqs - 1]);
        }
        if (kv_cache_n_blocks_free(e->kv) < n_decode) {
            request_preempt(e, req); /* the newest: it waits for the older ones */
            break;
        }
        for (int32_t j = 0; j < req->n_seqs; j++) {
            struct seq *seq = &req->seqs[j];
            if (seq_is_computing(seq) && seq->n_tokens - seq->n_computed == 1) {
                plan_add(e, plan, seq, 1); /* cannot fail: blocks were checked above */
                budget--;
            }
        }
    }

    /* While sequences decode, a long prompt (more than 4 chunks) is fed prefill_chunk rows
     * per step, so it is spread over many steps instead of stalling the running streams; short
     * prompts still go in whole, which keeps time to first token low under bursts. */
    int32_t long_cap = plan->n_rows > 0 && e->cfg.prefill_chunk > 0 ? e->cfg.prefill_chunk : 0;

    /* 2. Prefill chunks of admitted sequences, oldest first. */
    for (int32_t i = 0; i < e->n_running_reqs && budget > 0; i++) {
        struct engine_request *req = e->running[i];
        for (int32_t j = 0; j < req->n_seqs && budget > 0; j++) {
            struct seq *seq = &req->seqs[j];
            if (!seq_is_computing(seq) || seq->n_tokens - seq->n_computed == 1) {
                continue;
            }
            budget -= plan_prefill(e, plan, seq, budget, long_cap);
        }
    }

    /* 3. Admit waiting requests, FIFO, while rows, slots and blocks allow. */
    while (e->wait_head != NULL && budget > 0) {
        struct engine_request *req = e->wait_head;
        int32_t live = request_live_seqs(req);
        if (e->n_running_reqs > 0 && (e->n_running_seqs + live > e->max_running ||
                                      admission_blocks(req) > kv_cache_n_blocks_free(e->kv))) {
            break;
        }
        e->wait_head = req->next;
        if (e->wait_head == NULL) {
            e->wait_tail = NULL;
        }
        atomic_fetch_sub(&e->n_waiting, 1);
        int64_t now = time_now_us();
        if (req->t_admit_us == 0) {
            req->t_admit_us = now;
            hist_observe(&e->h_queue, engine_hist_seconds_bounds,
                         (double)(now - req->t_submit_us) / 1e6);
            struct engine_event ev;
            event_init(&ev, ENGINE_EVENT_ADMITTED, 0);
            engine_request_lock(req);
            push_locked(req, &ev);
            engine_request_unlock_notify(req);
        }
        req->is_admitted = true;
        req->admit_order = ++e->admit_counter;
        e->running[e->n_running_reqs++] = req;
        e->n_running_seqs += live;
        for (int32_t j = 0; j < req->n_seqs && budget > 0; j++) {
            struct seq *seq = &req->seqs[j];
            if (seq->state != SEQ_STATE_WAITING) {
                continue;
            }
            seq->state = SEQ_STATE_RUNNING;
            seq_match_prefix(e, seq);
            budget -= plan_prefill(e, plan, seq, budget, long_cap);
        }
        /* Sequences not started for lack of rows are RUNNING with work left: step 2 of the
         * next steps picks them up. */
    }

    /* Nothing could run although requests are admitted: KV is exhausted by prefills that
     * cannot grow. Preempt the newest so the oldest can move on. */
    if (plan->n_rows == 0 && e->n_running_reqs > 1) {
        request_preempt(e, e->running[e->n_running_reqs - 1]);
    }
}

/* ---- sampling and events ---------------------------------------------------------------- */

static void emit_prompt_logprobs(struct engine *e, struct engine_request *req, int32_t start,
                                 int32_t n_rows, const float *logits) {
    int32_t k = req->params.sampling.logprobs > 0 ? req->params.sampling.logprobs : 0;
    struct engine_event ev;
    engine_request_lock(req);
    for (int32_t r = 0; r < n_rows; r++) {
        int32_t pos = start + r; /* this row predicts prompt token pos + 1 */
        if (pos + 1 >= req->n_prompt || pos < req->n_prompt_logprobs_done) {
            continue;
        }
        event_init(&ev, ENGINE_EVENT_PROMPT_TOKEN, 0);
        ev.token = req->prompt[pos + 1];
        ev.has_logprob = true;
        ev.logprob = sampling_logprobs(logits + (size_t)r * (size_t)e->n_vocab, e->n_vocab,
                                       ev.token, k, ev.top, &ev.n_top, e->lp_scratch);
        push_locked(req, &ev);
        req->n_prompt_logprobs_done = pos + 1;
    }
    engine_request_unlock_notify(req);
}

static bool engine_is_eos(const struct engine *e, int32_t token) {
    for (int32_t i = 0; i < e->n_eos; i++) {
        if (e->eos_ids[i] == token) {
            return true;
        }
    }
    return false;
}

static void seq_finish_locked(struct engine *e, struct seq *seq, enum engine_finish_reason why,
                              int32_t stop_token, int32_t i_stop) {
    struct engine_request *req = seq->req;
    struct engine_event ev;
    event_init(&ev, ENGINE_EVENT_FINISH, seq->index);
    ev.finish_reason = why;
    ev.stop_token = stop_token;
    ev.is_eos = stop_token >= 0 && !req->params.sampling.ignore_eos && engine_is_eos(e, stop_token);
    if (i_stop >= 0) {
        snprintf(ev.stop_reason, sizeof(ev.stop_reason), "%s", req->params.sampling.stop[i_stop]);
    }
    ev.n_prompt_tokens = req->n_prompt;
    ev.n_cached_tokens = req->n_cached_tokens;
    ev.n_completion_tokens = seq->n_generated;
    ev.sum_logprob = seq->sum_logprob;
    push_locked(req, &ev);
    seq->state = SEQ_STATE_FINISHED;
    kv_seq_finish(e->kv, &seq->kv);
    req->n_finished++;
    e->n_running_seqs--;
}

/* Flushes the detokenizer and stop matcher at the end of a sequence into ev's text. Returns the
 * stop string index if the flushed bytes completed a match, else -1. */
static int32_t seq_flush_text(struct seq *seq, char *buf, size_t cap, size_t *len) {
    char tail[64];
    size_t n = detok_flush(&seq->detok, tail, sizeof(tail));
    struct stop_output out;
    *len = 0;
    if (n > 0 && stop_matcher_push(seq->stop, tail, n, true, &out) == 0) {
        memcpy(buf, out.text, out.len < cap ? out.len : cap);
        *len = out.len < cap ? out.len : cap;
        if (out.i_stop >= 0) {
            return out.i_stop;
        }
    }
    if (!stop_matcher_is_stopped(seq->stop)) {
        stop_matcher_finish(seq->stop, &out);
        size_t m = out.len < cap - *len ? out.len : cap - *len;
        memcpy(buf + *len, out.text, m);
        *len += m;
    }
    return -1;
}

/* Samples one token for seq from row, appends it and emits its events. */
static void seq_sample(struct engine *e, struct seq *seq, const float *row, int64_t now_us) {
    struct engine_request *req = seq->req;
    const struct sampling_params *sp = &req->params.sampling;
    struct sample_result *res = &e->sample;
    char *text = e->text;
    size_t text_cap = sizeof(e->text);
    struct engine_event ev;

    if (sp->max_tokens == 0) { /* echo-only request: nothing to generate */
        engine_request_lock(req);
        seq_finish_locked(e, seq, ENGINE_FINISH_LENGTH, -1, -1);
        engine_request_unlock_notify(req);
        return;
    }
    int64_t t_sampler = time_now_us();
    int32_t token = sampler_sample(seq->sampler, row, res);
    e->sampler_us += time_now_us() - t_sampler;
    if (token < 0) {
        /* Every token was banned (logit_bias): nothing can follow. */
        size_t len = 0;
        int32_t i_stop = seq_flush_text(seq, text, text_cap, &len);
        engine_request_lock(req);
        if (len > 0) {
            event_init(&ev, ENGINE_EVENT_TOKEN, seq->index);
            push_text_locked(req, &ev, text, len);
        }
        seq_finish_locked(e, seq, ENGINE_FINISH_STOP, -1, i_stop);
        engine_request_unlock_notify(req);
        return;
    }
    enum sampler_finish fin = sampler_accept(seq->sampler, token);
    seq->tokens[seq->n_tokens++] = token;
    seq->n_generated++;
    if (res->has_logprobs) {
        seq->sum_logprob += res->logprob;
    }
    atomic_fetch_add(&e->m_generation_tokens, 1);
    if (req->t_first_token_us == 0) {
        req->t_first_token_us = now_us;
        hist_observe(&e->h_ttft, engine_hist_seconds_bounds,
                     (double)(now_us - req->t_submit_us) / 1e6);
    } else if (seq->t_last_token_us != 0) {
        hist_observe(&e->h_itl, engine_hist_seconds_bounds,
                     (double)(now_us - seq->t_last_token_us) / 1e6);
    }
    seq->t_last_token_us = now_us;

    /* Text: an EOS or stop token that ends the sequence is not part of the text. */
    size_t len = 0;
    int32_t i_stop = -1;
    bool ends_on_token = fin == SAMPLER_FINISH_EOS || fin == SAMPLER_FINISH_STOP_TOKEN;
    if (!ends_on_token) {
        char piece[ENGINE_EVENT_TEXT_MAX];
        size_t n = detok_feed(&seq->detok, token, piece, sizeof(piece));
        struct stop_output out;
        bool can_match = seq->n_generated > sp->min_tokens;
        if (n > 0 && stop_matcher_push(seq->stop, piece, n, can_match, &out) == 0) {
            memcpy(text, out.text, out.len);
            len = out.len;
            i_stop = out.i_stop;
        }
    }
    bool at_context_end = seq->n_tokens >= e->mc->n_ctx || seq->n_tokens >= seq->cap_tokens;
    enum engine_finish_reason why = ENGINE_FINISH_NONE;
    if (i_stop >= 0 || ends_on_token) {
        why = ENGINE_FINISH_STOP;
    } else if (fin == SAMPLER_FINISH_LENGTH || at_context_end) {
        why = ENGINE_FINISH_LENGTH;
    }
    if (why != ENGINE_FINISH_NONE && i_stop < 0) {
        size_t more = 0;
        i_stop = seq_flush_text(seq, text + len, text_cap - len, &more);
        len += more;
        if (i_stop >= 0) {
            why = ENGINE_FINISH_STOP;
        }
    }

    engine_request_lock(req);
    event_init(&ev, ENGINE_EVENT_TOKEN, seq->index);
    ev.token = token;
    if (sp->logprobs >= 0 && res->has_logprobs) {
        ev.has_logprob = true;
        ev.logprob = res->logprob;
        ev.n_top = res->n_top_logprobs;
        for (int32_t i = 0; i < res->n_top_logprobs; i++) {
            ev.top[i] = res->top_logprobs[i];
        }
    }
    if (sp->candidates > 0) {
        ev.n_survivors = res->n_survivors;
        ev.n_candidates = res->n_candidates;
        for (int32_t i = 0; i < res->n_candidates; i++) {
            ev.candidates[i].id = res->candidates[i].token_id;
            ev.candidates[i].prob = res->candidates[i].prob;
        }
    }
    push_text_locked(req, &ev, text, len);
    if (why != ENGINE_FINISH_NONE) {
        int32_t stop_token =
            fin == SAMPLER_FINISH_STOP_TOKEN || fin == SAMPLER_FINISH_EOS ? token : -1;
        seq_finish_locked(e, seq, why, stop_token, i_stop);
    }
    engine_request_unlock_notify(req);
}

/* Sequence 0 finished its prompt: the other sequences of its group share those blocks. */
static void fork_group(struct engine *e, struct seq *seq0) {
    struct engine_request *req = seq0->req;
    for (int32_t i = 1; i < req->n_seqs; i++) {
        struct seq *seq = &req->seqs[i];
        if (seq->state != SEQ_STATE_FORK_WAIT) {
            continue;
        }
        kv_seq_fork(e->kv, &seq->kv, &seq0->kv);
        seq->n_computed = seq0->n_computed;
        seq->state = SEQ_STATE_RUNNING;
    }
}

/* ---- beam search ------------------------------------------------------------------------ */

/* Stores seq's best next tokens (raw log-softmax) for the pending beam step. */
static void beam_store_candidates(struct engine *e, struct seq *seq, const float *row) {
    int32_t w = seq->req->n_seqs;
    struct sampling_logprob top[ENGINE_MAX_BEAMS * 2];
    /* 2W candidates per beam: up to W of them may be EOS when EOS ends hypotheses. */
    int32_t k = 2 * w;
    int32_t n_top = 0;
    sampling_logprobs(row, e->n_vocab, 0, k, top, &n_top, e->lp_scratch);
    for (int32_t i = 0; i < n_top; i++) {
        seq->cand_id[i] = top[i].token_id;
        seq->cand_lp[i] = top[i].logprob;
    }
    seq->n_cand = n_top;
    seq->has_cand = true;
}

static double beam_normalised(double sum, int32_t len, float length_penalty) {
    return sum / pow((double)(len > 0 ? len : 1), (double)length_penalty);
}

struct beam_cand {
    double score;
    int32_t parent;
    int32_t token;
};

/* Emits the n best of the finished hypotheses and running beams, best first, and ends the
 * request's sequences. */
static void beam_finalize(struct engine *e, struct engine_request *req) {
    const struct engine_request_params *p = &req->params;
    int32_t w = req->n_seqs;
    int32_t max_tokens = p->sampling.max_tokens > 0 ? p->sampling.max_tokens : 1;
    /* Candidates: hypotheses 0..n_hyps-1, then running beams as n_hyps + i. */
    int32_t n_all = req->n_hyps + w;
    int32_t order[ENGINE_MAX_BEAMS * 2];
    double score[ENGINE_MAX_BEAMS * 2];
    for (int32_t i = 0; i < n_all; i++) {
        bool is_hyp = i < req->n_hyps;
        const struct seq *seq = is_hyp ? NULL : &req->seqs[i - req->n_hyps];
        double sum = is_hyp ? req->hyp_sum[i] : seq->beam_score;
        int32_t len = is_hyp ? req->hyp_len[i] : seq->n_generated;
        score[i] = beam_normalised(sum, len, p->length_penalty);
        int32_t pos = i;
        while (pos > 0 && score[order[pos - 1]] < score[i]) {
            order[pos] = order[pos - 1];
            pos--;
        }
        order[pos] = i;
    }
    struct engine_event ev;
    char piece[ENGINE_EVENT_TEXT_MAX];
    engine_request_lock(req);
    for (int32_t r = 0; r < p->n && r < n_all; r++) {
        int32_t c = order[r];
        bool is_hyp = c < req->n_hyps;
        const struct seq *seq = is_hyp ? NULL : &req->seqs[c - req->n_hyps];
        const int32_t *gen =
            is_hyp ? req->hyp_tokens + (size_t)c * (size_t)max_tokens : seq->tokens + req->n_prompt;
        int32_t len = is_hyp ? req->hyp_len[c] : seq->n_generated;
        struct detok d;
        detok_init_with(&d, e->tok,
                        TOKENIZER_CONTINUATION |
                            (p->skip_special_tokens ? TOKENIZER_SKIP_SPECIAL : 0));
        for (int32_t t = 0; t < len; t++) {
            event_init(&ev, ENGINE_EVENT_TOKEN, r);
            ev.token = gen[t];
            size_t n = detok_feed(&d, gen[t], piece, sizeof(piece));
            if (t == len - 1) {
                n += detok_flush(&d, piece + n, sizeof(piece) - n);
            }
            push_text_locked(req, &ev, piece, n);
        }
        event_init(&ev, ENGINE_EVENT_FINISH, r);
        ev.finish_reason = is_hyp ? ENGINE_FINISH_STOP : ENGINE_FINISH_LENGTH;
        ev.stop_token = is_hyp ? e->eos_id : -1;
        ev.is_eos = is_hyp;
        ev.n_prompt_tokens = req->n_prompt;
        ev.n_cached_tokens = req->n_cached_tokens;
        ev.n_completion_tokens = len + (is_hyp ? 1 : 0);
        ev.sum_logprob = is_hyp ? req->hyp_sum[c] : seq->beam_score;
        push_locked(req, &ev);
    }
    engine_request_unlock_notify(req);
    for (int32_t i = 0; i < w; i++) {
        struct seq *seq = &req->seqs[i];
        if (seq->state != SEQ_STATE_FINISHED) {
            seq->state = SEQ_STATE_FINISHED;
            kv_seq_truncate(e->kv, &seq->kv, 0);
            req->n_finished++;
            e->n_running_seqs--;
        }
    }
}

/* One step of beam search once every beam has its candidates: keep the W best continuations
 * over all beams (an EOS among the W best ends a hypothesis instead), reassigning each beam's
 * tokens and KV blocks (shared by forking, copied on write). */
static void beam_step(struct engine *e, struct engine_request *req) {
    const struct engine_request_params *p = &req->params;
    int32_t w = req->n_seqs;
    bool is_first = req->seqs[0].n_generated == 0;
    int32_t n_from = is_first ? 1 : w; /* at first all beams are the same prompt */
    struct beam_cand cand[ENGINE_MAX_BEAMS * 2 * ENGINE_MAX_BEAMS];
    int32_t n_cand = 0;
    for (int32_t b = 0; b < n_from; b++) {
        const struct seq *seq = &req->seqs[b];
        for (int32_t j = 0; j < seq->n_cand; j++) {
            struct beam_cand c = {seq->beam_score + seq->cand_lp[j], b, seq->cand_id[j]};
            int32_t pos = n_cand++;
            while (pos > 0 && cand[pos - 1].score < c.score) {
                cand[pos] = cand[pos - 1];
                pos--;
            }
            cand[pos] = c;
        }
    }
    int32_t max_tokens = p->sampling.max_tokens;
    bool eos_ends = !p->sampling.ignore_eos && e->n_eos > 0;
    struct beam_cand chosen[ENGINE_MAX_BEAMS];
    int32_t n_chosen = 0;
    for (int32_t r = 0; r < n_cand && n_chosen < w; r++) {
        if (eos_ends && engine_is_eos(e, cand[r].token)) {
            /* As Hugging Face does: an EOS ranked among the W best ends a hypothesis. */
            if (r < w) {
                const struct seq *parent = &req->seqs[cand[r].parent];
                int32_t slot = req->n_hyps;
                double s = beam_normalised(cand[r].score, parent->n_generated, p->length_penalty);
                if (slot == w) { /* full: replace the worst if this one is better */
                    slot = -1;
                    double worst = INFINITY;
                    for (int32_t h = 0; h < w; h++) {
                        double hs =
                            beam_normalised(req->hyp_sum[h], req->hyp_len[h], p->length_penalty);
                        if (hs < worst && hs < s) {
                            worst = hs;
                            slot = h;
                        }
                    }
                } else {
                    req->n_hyps++;
                }
                if (slot >= 0) {
                    memcpy(req->hyp_tokens + (size_t)slot * (size_t)max_tokens,
                           parent->tokens + req->n_prompt,
                           (size_t)parent->n_generated * sizeof(int32_t));
                    req->hyp_len[slot] = parent->n_generated;
                    req->hyp_sum[slot] = cand[r].score;
                }
            }
            continue;
        }
        chosen[n_chosen++] = cand[r];
    }
    /* Fork every new beam from its parent into the spare tables, then swap them in. */
    int32_t parent_n_tokens[ENGINE_MAX_BEAMS], parent_n_computed[ENGINE_MAX_BEAMS],
        parent_n_generated[ENGINE_MAX_BEAMS];
    for (int32_t i = 0; i < w; i++) {
        parent_n_tokens[i] = req->seqs[i].n_tokens;
        parent_n_computed[i] = req->seqs[i].n_computed;
        parent_n_generated[i] = req->seqs[i].n_generated;
    }
    for (int32_t i = 0; i < n_chosen; i++) {
        struct seq *seq = &req->seqs[i];
        const struct seq *parent = &req->seqs[chosen[i].parent];
        kv_seq_fork(e->kv, &seq->spare_kv, &parent->kv);
        memcpy(seq->spare_tokens, parent->tokens,
               (size_t)parent_n_tokens[chosen[i].parent] * sizeof(int32_t));
    }
    for (int32_t i = 0; i < w; i++) {
        struct seq *seq = &req->seqs[i];
        seq->has_cand = false;
        kv_seq_truncate(e->kv, &seq->kv, 0);
        if (i >= n_chosen) {
            continue; /* cannot happen with W >= 1 and 2W candidates per beam */
        }
        int32_t pi = chosen[i].parent;
        struct kv_seq tmp_kv = seq->kv;
        seq->kv = seq->spare_kv;
        seq->spare_kv = tmp_kv;
        int32_t *tmp_tokens = seq->tokens;
        seq->tokens = seq->spare_tokens;
        seq->spare_tokens = tmp_tokens;
        seq->n_tokens = parent_n_tokens[pi];
        seq->n_computed = parent_n_computed[pi];
        seq->n_generated = parent_n_generated[pi];
        seq->tokens[seq->n_tokens++] = chosen[i].token;
        seq->n_generated++;
        seq->beam_score = chosen[i].score;
    }
    atomic_fetch_add(&e->m_generation_tokens, (uint64_t)n_chosen);

    int32_t len = req->seqs[0].n_generated;
    bool is_done = len >= max_tokens || req->seqs[0].n_tokens >= e->mc->n_ctx ||
                   req->seqs[0].n_tokens >= req->seqs[0].cap_tokens;
    if (!is_done && req->n_hyps == w) {
        /* Hugging Face's early_stopping=False rule: done when the best running beam, at its
         * current length, cannot beat the worst finished hypothesis. */
        double worst = INFINITY;
        for (int32_t h = 0; h < w; h++) {
            double hs = beam_normalised(req->hyp_sum[h], req->hyp_len[h], p->length_penalty);
            worst = hs < worst ? hs : worst;
        }
        is_done = beam_normalised(chosen[0].score, len, p->length_penalty) <= worst;
    }
    if (is_done) {
        beam_finalize(e, req);
    }
}

/* Runs the beam step of every beam request whose beams all have their candidates. */
static void beam_steps(struct engine *e) {
    for (int32_t i = 0; i < e->n_running_reqs; i++) {
        struct engine_request *req = e->running[i];
        if (!req->params.use_beam_search || req->n_finished == req->n_seqs) {
            continue;
        }
        bool is_ready = true;
        bool is_first = req->seqs[0].n_generated == 0;
        for (int32_t b = 0; b < (is_first ? 1 : req->n_seqs); b++) {
            is_ready = is_ready && req->seqs[b].has_cand;
        }
        if (is_ready) {
            if (is_first && req->params.sampling.max_tokens == 0) {
                beam_finalize(e, req);
            } else {
                beam_step(e, req);
            }
        }
    }
}

static void retire_finished(struct engine *e, int64_t now_us) {
    update_gauges(e);
    for (int32_t i = e->n_running_reqs - 1; i >= 0; i--) {
        struct engine_request *req = e->running[i];
        if (req->n_finished < req->n_seqs) {
            continue;
        }
        running_remove(e, req);
        engine_request_lock(req);
        engine_request_mark_done_locked(req);
        engine_request_unlock_notify(req);
        atomic_fetch_add(&e->m_completed, 1);
        hist_observe(&e->h_e2e, engine_hist_seconds_bounds,
                     (double)(now_us - req->t_submit_us) / 1e6);
        request_retire(e, req);
    }
}

static void engine_step(struct engine *e) {
    int64_t t0 = time_now_us();
    take_submissions(e);
    reap(e, t0);
    struct step_plan plan;
    plan_step(e, &plan);
    if (plan.n_rows == 0) {
        update_gauges(e);
        return;
    }
    int64_t t_planned = time_now_us();
    phase_add(e, ENGINE_PHASE_SCHEDULE, t_planned - t0);
    int rc_forward =
        model_forward(e->model, e->kv, e->scratch, e->batch, plan.n_entries, e->logits);
    int64_t t_forward = time_now_us();
    phase_add(e, ENGINE_PHASE_FORWARD, t_forward - t_planned);
    e->sampler_us = 0;
    if (rc_forward != 0) {
        /* A batch that does not fit the scratch is a scheduler bug: fail loudly but stay up. */
        log_error("engine: forward pass refused a batch of %d rows; failing its requests",
                  (int)plan.n_rows);
        for (int32_t i = e->n_running_reqs - 1; i >= 0; i--) {
            struct engine_request *req = e->running[i];
            running_remove(e, req);
            request_fail(e, req, ENGINE_ERR_NOMEM, "internal error in the forward pass");
            atomic_fetch_add(&e->m_failed, 1);
            request_retire(e, req);
        }
        update_gauges(e);
        return;
    }
    int64_t now = time_now_us();
    const float *row = e->logits;
    for (int32_t i = 0; i < plan.n_entries; i++) {
        struct seq *seq = e->batch_seq[i];
        const struct model_batch_seq *b = &e->batch[i];
        int32_t start = e->batch_start[i];
        int32_t end = start + b->n_tokens;
        seq->n_computed = end;
        if (e->cfg.prefix_cache) {
            kv_seq_commit_prefix(e->kv, &seq->kv, seq->tokens); /* its newly full blocks */
        }
        if (start < seq->req->n_prompt) {
            int32_t prompt_end = end < seq->req->n_prompt ? end : seq->req->n_prompt;
            atomic_fetch_add(&e->m_prompt_tokens, (uint64_t)(prompt_end - start));
        }
        if (b->n_logits == 0) {
            continue;
        }
        if (b->n_logits > 1) {
            emit_prompt_logprobs(e, seq->req, end - b->n_logits, b->n_logits, row);
        }
        const float *last = row + (size_t)(b->n_logits - 1) * (size_t)e->n_vocab;
        if (seq->n_computed == seq->n_tokens && seq->req->params.use_beam_search) {
            if (seq->index == 0 && seq->n_generated == 0) {
                fork_group(e, seq);
            }
            beam_store_candidates(e, seq, last);
        } else if (seq->n_computed == seq->n_tokens) {
            if (seq->index == 0 && seq->n_generated == 0) {
                fork_group(e, seq);
                for (int32_t j = 1; j < seq->req->n_seqs; j++) {
                    struct seq *other = &seq->req->seqs[j];
                    if (other->state == SEQ_STATE_RUNNING && other->n_generated == 0 &&
                        other->n_computed == other->n_tokens) {
                        seq_sample(e, other, last, now);
                    }
                }
            }
            seq_sample(e, seq, last, now);
        }
        row += (size_t)b->n_logits * (size_t)e->n_vocab;
    }
    int64_t t_rows = time_now_us();
    phase_add(e, ENGINE_PHASE_SAMPLE, e->sampler_us);
    phase_add(e, ENGINE_PHASE_OUTPUT, t_rows - t_forward - e->sampler_us);
    beam_steps(e);
    retire_finished(e, now);
    int64_t t1 = time_now_us();
    atomic_fetch_add(&e->m_steps, 1);
    hist_observe(&e->h_step, engine_hist_seconds_bounds, (double)(t1 - t0) / 1e6);
    hist_observe(&e->h_rows, engine_hist_rows_bounds, (double)plan.n_rows);
    update_gauges(e);
    phase_add(e, ENGINE_PHASE_FINISH, time_now_us() - t_rows);
}

/* ---- thread ----------------------------------------------------------------------------- */

static void cancel_everything(struct engine *e) {
    take_submissions(e);
    while (e->wait_head != NULL) {
        struct engine_request *req = e->wait_head;
        e->wait_head = req->next;
        atomic_fetch_sub(&e->n_waiting, 1);
        request_cancelled(e, req, true);
    }
    e->wait_tail = NULL;
    while (e->n_running_reqs > 0) {
        struct engine_request *req = e->running[e->n_running_reqs - 1];
        running_remove(e, req);
        request_cancelled(e, req, true);
    }
    update_gauges(e);
}

static void *engine_main(void *arg) {
    struct engine *e = arg;
    for (;;) {
        pthread_mutex_lock(&e->lock);
        while (!e->is_stopping && e->submit_head == NULL && e->wait_head == NULL &&
               e->n_running_reqs == 0) {
            pthread_cond_wait(&e->cond, &e->lock);
        }
        bool is_stopping = e->is_stopping;
        pthread_mutex_unlock(&e->lock);
        if (is_stopping) {
            cancel_everything(e);
            return NULL;
        }
        engine_step(e);
        if (e->n_running_reqs == 0 && e->wait_head != NULL) {
            /* Waiting requests that could not be admitted with nothing running: only possible
             * while cancelled ones are being reaped. Avoid a busy loop. */
            struct timespec ts = {0, 1000000};
            nanosleep(&ts, NULL);
        }
    }
}

int engine_start(struct engine *e) {
    if (pthread_create(&e->thread, NULL, engine_main, e) != 0) {
        return -1;
    }
    e->is_started = true;
    return 0;
}

void engine_drain(struct engine *e) {
    atomic_store(&e->is_draining, true);
}

void engine_stop(struct engine *e) {
    if (e == NULL || !e->is_started) {
        return;
    }
    pthread_mutex_lock(&e->lock);
    e->is_stopping = true;
    pthread_cond_signal(&e->cond);
    pthread_mutex_unlock(&e->lock);
    pthread_join(e->thread, NULL);
    e->is_started = false;
}

void engine_destroy(struct engine *e) {
    if (e == NULL) {
        return;
    }
    engine_stop(e);
    if (e->kv != NULL) {
        cancel_everything(e); /* requests submitted but never run (engine never started) */
    }
    model_scratch_destroy(e->scratch);
    kv_cache_destroy(e->kv);
    free(e->logits);
    free(e->lp_scratch);
    free(e->batch);
    free(e->batch_seq);
    free(e->batch_start);
    free(e->running);
    pthread_cond_destroy(&e->cond);
    pthread_mutex_destroy(&e->lock);
    free(e);
}

void engine_get_metrics(struct engine *e, struct engine_metrics *m) {
    memset(m, 0, sizeof(*m));
    m->n_waiting = atomic_load(&e->n_waiting);
    m->n_running = atomic_load(&e->m_running);
    m->kv_blocks_used = atomic_load(&e->m_kv_used);
    m->kv_blocks_total = kv_cache_n_blocks_total(e->kv);
    m->requests_started = atomic_load(&e->m_started);
    m->requests_completed = atomic_load(&e->m_completed);
    m->requests_cancelled = atomic_load(&e->m_cancelled);
    m->requests_rejected = atomic_load(&e->m_rejected);
    m->requests_failed = atomic_load(&e->m_failed);
    m->preemptions = atomic_load(&e->m_preemptions);
    m->prefix_cache_queries = atomic_load(&e->m_prefix_queries);
    m->prefix_cache_hits = atomic_load(&e->m_prefix_hits);
    m->kv_blocks_cached = atomic_load(&e->m_kv_cached);
    for (int i = 0; i < ENGINE_N_PHASES; i++) {
        m->phase_seconds[i] = (double)atomic_load(&e->m_phase_us[i]) / 1e6;
    }
    m->prompt_tokens = atomic_load(&e->m_prompt_tokens);
    m->generation_tokens = atomic_load(&e->m_generation_tokens);
    m->steps = atomic_load(&e->m_steps);
    hist_snapshot(&e->h_step, &m->step_seconds);
    hist_snapshot(&e->h_rows, &m->batch_rows);
    hist_snapshot(&e->h_queue, &m->queue_seconds);
    hist_snapshot(&e->h_ttft, &m->ttft_seconds);
    hist_snapshot(&e->h_itl, &m->itl_seconds);
    hist_snapshot(&e->h_e2e, &m->e2e_seconds);
}
