/*
 * request.c: a completion request's life outside the scheduler: creation and validation, the
 * reference count shared by the submitter and the engine, and the output channel (a ring of
 * fixed-size events behind the request's mutex) that the engine thread pushes to and an HTTP
 * thread polls from.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine_internal.h"

static void set_err(char *err, size_t err_size, const char *msg) {
    if (err != NULL && err_size > 0) {
        snprintf(err, err_size, "%s", msg);
    }
}

/* Everything a sequence needs is allocated here, on the submitting thread, so that the engine
 * step allocates nothing. */
static int seq_setup(struct engine *engine, struct engine_request *req, struct seq *seq,
                     int32_t index, char *err, size_t err_size) {
    const struct engine_request_params *p = &req->params;
    seq->req = req;
    seq->index = index;
    seq->state = index == 0 ? SEQ_STATE_WAITING : SEQ_STATE_FORK_WAIT;
    int64_t cap = (int64_t)req->n_prompt + p->sampling.max_tokens;
    seq->cap_tokens = (int32_t)(cap < engine->mc->n_ctx ? cap : engine->mc->n_ctx);
    seq->tokens = malloc((size_t)seq->cap_tokens * sizeof(int32_t));
    if (seq->tokens == NULL || kv_seq_init(&seq->kv, engine->kv) != 0) {
        set_err(err, err_size, "out of memory");
        return -1;
    }
    memcpy(seq->tokens, req->prompt, (size_t)req->n_prompt * sizeof(int32_t));
    seq->n_tokens = req->n_prompt;
    if (p->use_beam_search) {
        seq->spare_tokens = malloc((size_t)seq->cap_tokens * sizeof(int32_t));
        if (seq->spare_tokens == NULL || kv_seq_init(&seq->spare_kv, engine->kv) != 0) {
            set_err(err, err_size, "out of memory");
            return -1;
        }
    }
    /* The sampler needs logprobs to rank best_of candidates even when the client asked for
     * none; events only carry them when the client did. */
    struct sampling_params sp = p->sampling;
    if (p->best_of > p->n && sp.logprobs < 0) {
        sp.logprobs = 0;
    }
    if (sp.max_tokens == 0) {
        sp.max_tokens = 1; /* echo-only request: the sampler is never asked */
    }
    seq->sampler = sampler_create(&sp, index, engine->n_vocab, engine->eos_ids, engine->n_eos,
                                  req->prompt, req->n_prompt, err, err_size);
    seq->stop = stop_matcher_create(&sp);
    if (seq->sampler == NULL || seq->stop == NULL) {
        if (seq->stop == NULL) {
            set_err(err, err_size, "out of memory");
        }
        return -1;
    }
    /* Generated text continues the prompt: no start-of-text strip (SentencePiece's leading
     * space stays, as vLLM shows it). */
    detok_init_with(&seq->detok, engine->tok,
                    TOKENIZER_CONTINUATION | (p->skip_special_tokens ? TOKENIZER_SKIP_SPECIAL : 0));
    return 0;
}

struct engine_request *engine_request_create(const struct engine *cengine,
                                             const struct engine_request_params *params,
                                             engine_notify_fn notify, void *notify_ctx,
                                             enum engine_status *status, char *err,
                                             size_t err_size) {
    /* The engine is only read here (config, tokenizer, KV geometry); the cast lets the KV
     * tables be initialised against the pool, which kv_seq_init does not modify. */
    struct engine *engine = (struct engine *)cengine;
    enum engine_status st = ENGINE_ERR_INVALID;
    struct engine_request *req = NULL;
    if (params->n_prompt == 0 || params->n_prompt > (size_t)INT32_MAX / 2) {
        set_err(err, err_size, "the prompt must hold at least one token");
        goto fail;
    }
    for (size_t i = 0; i < params->n_prompt; i++) {
        if (params->prompt[i] < 0 || params->prompt[i] >= engine->n_vocab) {
            snprintf(err, err_size, "prompt token %zu is not a token id of this model (0..%d)", i,
                     (int)engine->n_vocab - 1);
            goto fail;
        }
    }
    if (params->n < 1 || params->best_of < params->n || params->best_of > 256) {
        set_err(err, err_size, "n must be >= 1 and n <= best_of <= 256");
        goto fail;
    }
    if (params->sampling.max_tokens < 0) {
        set_err(err, err_size, "max_tokens must be >= 0");
        goto fail;
    }
    if (engine->tok == NULL && params->sampling.n_stop > 0) {
        set_err(err, err_size, "stop strings need the model's tokenizer files");
        goto fail;
    }
    if (params->use_beam_search && params->best_of > ENGINE_MAX_BEAMS) {
        snprintf(err, err_size, "beam search supports at most %d beams (best_of)",
                 ENGINE_MAX_BEAMS);
        goto fail;
    }
    if ((int64_t)params->n_prompt + params->sampling.max_tokens > engine->mc->n_ctx) {
        st = ENGINE_ERR_CONTEXT;
        snprintf(err, err_size,
                 "this model's maximum context length is %d tokens, but %zu prompt tokens + "
                 "%d max_tokens were requested",
                 (int)engine->mc->n_ctx, params->n_prompt, (int)params->sampling.max_tokens);
        goto fail;
    }
    st = ENGINE_ERR_NOMEM;
    req = calloc(1, sizeof(*req));
    if (req == NULL) {
        set_err(err, err_size, "out of memory");
        goto fail;
    }
    atomic_init(&req->refs, 1);
    atomic_init(&req->is_cancelled, false);
    pthread_mutex_init(&req->lock, NULL);
    req->engine = engine;
    req->notify = notify;
    req->notify_ctx = notify_ctx;
    req->n_prompt = (int32_t)params->n_prompt;
    req->prompt = malloc(params->n_prompt * sizeof(int32_t));
    req->n_seqs = params->best_of;
    req->ring_cap = ENGINE_RING_MIN;
    while (req->ring_cap < (size_t)req->n_seqs * 8 && req->ring_cap < ENGINE_RING_MAX) {
        req->ring_cap *= 2;
    }
    req->ring = malloc(req->ring_cap * sizeof(*req->ring));
    req->seqs = calloc((size_t)req->n_seqs, sizeof(*req->seqs));
    if (req->prompt == NULL || req->ring == NULL || req->seqs == NULL) {
        set_err(err, err_size, "out of memory");
        goto fail;
    }
    memcpy(req->prompt, params->prompt, params->n_prompt * sizeof(int32_t));
    req->params = *params;
    req->params.prompt = req->prompt;
    for (int32_t i = 0; i < req->n_seqs; i++) {
        if (seq_setup(engine, req, &req->seqs[i], i, err, err_size) != 0) {
            goto fail;
        }
    }
    if (params->use_beam_search) {
        size_t n = (size_t)req->n_seqs;
        size_t per = (size_t)(params->sampling.max_tokens > 0 ? params->sampling.max_tokens : 1);
        req->hyp_tokens = malloc(n * per * sizeof(int32_t));
        req->hyp_len = calloc(n, sizeof(int32_t));
        req->hyp_sum = calloc(n, sizeof(double));
        if (req->hyp_tokens == NULL || req->hyp_len == NULL || req->hyp_sum == NULL) {
            set_err(err, err_size, "out of memory");
            goto fail;
        }
    }
    *status = ENGINE_OK;
    return req;
fail:
    if (req != NULL) {
        engine_request_free_seqs(engine, req);
        free(req->seqs);
        free(req->hyp_tokens);
        free(req->hyp_len);
        free(req->hyp_sum);
        free(req->prompt);
        free(req->ring);
        pthread_mutex_destroy(&req->lock);
        free(req);
    }
    *status = st;
    return NULL;
}

void engine_request_free_seqs(struct engine *engine, struct engine_request *req) {
    if (req->seqs == NULL) {
        return;
    }
    for (int32_t i = 0; i < req->n_seqs; i++) {
        struct seq *seq = &req->seqs[i];
        kv_seq_finish(engine->kv, &seq->kv);
        kv_seq_finish(engine->kv, &seq->spare_kv);
        free(seq->spare_tokens);
        sampler_destroy(seq->sampler);
        stop_matcher_destroy(seq->stop);
        free(seq->tokens);
        memset(seq, 0, sizeof(*seq));
    }
}

static void engine_request_free(struct engine_request *req) {
    /* Usually the engine tore the sequences down before dropping its reference; a request that
     * was never admitted (rejected at submit) still has them, with no KV blocks in use. */
    engine_request_free_seqs(req->engine, req);
    free(req->seqs);
    free(req->hyp_tokens);
    free(req->hyp_len);
    free(req->hyp_sum);
    free(req->prompt);
    free(req->ring);
    pthread_mutex_destroy(&req->lock);
    free(req);
}

void engine_request_unref(struct engine_request *req) {
    if (atomic_fetch_sub(&req->refs, 1) == 1) {
        engine_request_free(req);
    }
}

void engine_request_release(struct engine_request *req) {
    if (req == NULL) {
        return;
    }
    /* Once the submitter has gone nobody reads the channel: stop notifying, and let the
     * engine drop the work at its next step. */
    pthread_mutex_lock(&req->lock);
    req->notify = NULL;
    req->notify_ctx = NULL;
    pthread_mutex_unlock(&req->lock);
    atomic_store(&req->is_cancelled, true);
    engine_request_unref(req);
}

void engine_request_cancel(struct engine_request *req) {
    atomic_store(&req->is_cancelled, true);
}

size_t engine_request_poll(struct engine_request *req, struct engine_event *out, size_t max) {
    pthread_mutex_lock(&req->lock);
    size_t n = req->ring_len < max ? req->ring_len : max;
    for (size_t i = 0; i < n; i++) {
        out[i] = req->ring[req->ring_head];
        req->ring_head = (req->ring_head + 1) % req->ring_cap;
    }
    req->ring_len -= n;
    pthread_mutex_unlock(&req->lock);
    return n;
}

bool engine_request_is_done(struct engine_request *req) {
    pthread_mutex_lock(&req->lock);
    bool done = req->is_done && req->ring_len == 0;
    pthread_mutex_unlock(&req->lock);
    return done;
}

void engine_request_lock(struct engine_request *req) {
    pthread_mutex_lock(&req->lock);
}

void engine_request_unlock_notify(struct engine_request *req) {
    if (req->notify != NULL) {
        req->notify(req->notify_ctx);
    }
    pthread_mutex_unlock(&req->lock);
}

void engine_request_mark_done_locked(struct engine_request *req) {
    req->is_done = true;
}

static int ring_grow_locked(struct engine_request *req) {
    size_t cap = req->ring_cap * 2;
    if (cap > ENGINE_RING_MAX) {
        return -1;
    }
    struct engine_event *ring = malloc(cap * sizeof(*ring));
    if (ring == NULL) {
        return -1;
    }
    for (size_t i = 0; i < req->ring_len; i++) {
        ring[i] = req->ring[(req->ring_head + i) % req->ring_cap];
    }
    free(req->ring);
    req->ring = ring;
    req->ring_cap = cap;
    req->ring_head = 0;
    return 0;
}

int engine_request_push_locked(struct engine_request *req, const struct engine_event *ev) {
    if (req->ring_len == req->ring_cap && ring_grow_locked(req) != 0) {
        return -1;
    }
    req->ring[(req->ring_head + req->ring_len) % req->ring_cap] = *ev;
    req->ring_len++;
    return 0;
}
