/*
 * test_engine.c: Check suite for src/engine with the real tiny model from tests/data (no HTTP).
 *
 * The central claim: a request's output does not depend on what else the engine is doing —
 * concurrent requests, chunked prefill, preemption under KV pressure. Also: cancellation in
 * every state returns the KV pool to full, queue overflow and timeout say "overloaded", and
 * n > 1 / best_of groups behave.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <check.h>
#include <cjson/cJSON.h>

#include <gptd/engine.h>
#include <gptd/model.h>
#include <gptd/sampling.h>
#include <gptd/tokenizer.h>
#include <gptd/util.h>

#include "common.h"

#define MAX_OUT 256
#define MAX_IDX 8

static struct model *model;
static struct tokenizer *tok;

static void load_model(void) {
    log_set_level(LOG_LEVEL_WARN);
    model = load_tiny_model(&tok);
}

static void free_model(void) {
    tokenizer_destroy(tok);
    model_destroy(model);
}

/* What one request produced, gathered from its events. */
struct outcome {
    int32_t n_tokens[MAX_IDX];
    int32_t tokens[MAX_IDX][MAX_OUT];
    char text[MAX_IDX][4096];
    size_t text_len[MAX_IDX];
    enum engine_finish_reason finish[MAX_IDX];
    double sum_logprob[MAX_IDX];
    float logprob[MAX_IDX][MAX_OUT]; /* each generated token's raw logprob */
    int32_t n_cached;                /* prompt tokens from the prefix cache (FINISH) */
    int32_t n_finished;
    int32_t n_admitted;
    bool has_error;
    enum engine_status error;
    int32_t n_events_after_cancel;
};

struct job {
    struct engine_request_params params;
    int32_t prompt[600];
    struct engine_request *req;
    struct outcome out;
    bool is_done;
};

static void job_init(struct job *job, int32_t n_prompt, int32_t first_token, int32_t max_tokens,
                     float temperature, uint64_t seed) {
    memset(job, 0, sizeof(*job));
    for (int32_t i = 0; i < n_prompt; i++) {
        /* A deterministic, varied prompt of ordinary tokens. */
        job->prompt[i] = (first_token + i * 7919) % 50000;
    }
    job->params.prompt = job->prompt;
    job->params.n_prompt = (size_t)n_prompt;
    sampling_params_init_default(&job->params.sampling);
    job->params.sampling.max_tokens = max_tokens;
    job->params.sampling.temperature = temperature;
    job->params.sampling.has_seed = true;
    job->params.sampling.seed = seed;
    job->params.sampling.ignore_eos = true;
    job->params.n = 1;
    job->params.best_of = 1;
}

static void drain_events(struct job *job) {
    struct engine_event ev[16];
    size_t n;
    while ((n = engine_request_poll(job->req, ev, 16)) > 0) {
        for (size_t i = 0; i < n; i++) {
            struct outcome *o = &job->out;
            int32_t idx = ev[i].index;
            ck_assert_int_lt(idx, MAX_IDX);
            switch (ev[i].type) {
            case ENGINE_EVENT_TOKEN:
                if (ev[i].token >= 0) {
                    ck_assert_int_lt(o->n_tokens[idx], MAX_OUT);
                    o->logprob[idx][o->n_tokens[idx]] = ev[i].logprob;
                    o->tokens[idx][o->n_tokens[idx]++] = ev[i].token;
                }
                ck_assert_uint_lt(o->text_len[idx] + ev[i].text_len, sizeof(o->text[idx]));
                memcpy(o->text[idx] + o->text_len[idx], ev[i].text, ev[i].text_len);
                o->text_len[idx] += ev[i].text_len;
                break;
            case ENGINE_EVENT_FINISH:
                o->finish[idx] = ev[i].finish_reason;
                o->sum_logprob[idx] = ev[i].sum_logprob;
                o->n_cached = ev[i].n_cached_tokens;
                o->n_finished++;
                break;
            case ENGINE_EVENT_ERROR:
                o->has_error = true;
                o->error = ev[i].error;
                break;
            case ENGINE_EVENT_PROMPT_TOKEN:
                break;
            case ENGINE_EVENT_ADMITTED:
                o->n_admitted++;
                break;
            }
        }
    }
}

/* The prefix cache for every engine this suite makes: on, unless GPTD_TEST_PREFIX_CACHE=off
 * (meson runs the suite both ways: outputs must not depend on it). */
static bool prefix_cache_on(void) {
    const char *v = getenv("GPTD_TEST_PREFIX_CACHE");
    return v == NULL || strcmp(v, "off") != 0;
}

static int32_t next_max_running;    /* 0 = the engine's default; reset after each make_engine */
static bool next_prefix_cache_off;  /* the next make_engine without the prefix cache */
static enum kv_dtype next_kv_dtype; /* the KV cache's element type for make_engine */

static struct engine *make_engine(size_t kv_bytes, int32_t max_batch_tokens, int32_t max_queue,
                                  int64_t queue_timeout_ms) {
    struct engine_config cfg;
    engine_config_init_default(&cfg);
    cfg.max_running = next_max_running;
    next_max_running = 0;
    cfg.kv_dtype = next_kv_dtype;
    cfg.kv_cache_bytes = kv_bytes;
    cfg.max_batch_tokens = max_batch_tokens;
    cfg.max_queue = max_queue;
    cfg.queue_timeout_ms = queue_timeout_ms;
    cfg.prefix_cache = prefix_cache_on() && !next_prefix_cache_off;
    next_prefix_cache_off = false;
    char err[256];
    struct engine *e = engine_create(model, tok, &cfg, err, sizeof(err));
    ck_assert_msg(e != NULL, "engine_create: %s", err);
    return e;
}

static void job_submit(struct engine *e, struct job *job) {
    enum engine_status st;
    char err[256];
    job->req = engine_request_create(e, &job->params, NULL, NULL, &st, err, sizeof(err));
    ck_assert_msg(job->req != NULL, "engine_request_create: %s", err);
    ck_assert_int_eq(engine_submit(e, job->req), ENGINE_OK);
}

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Polls every job until all are done (or 120 s pass, which fails the test). */
static void wait_all(struct job *jobs, int n) {
    int64_t deadline = time_now_us() + 120 * 1000000LL;
    for (;;) {
        int n_done = 0;
        for (int i = 0; i < n; i++) {
            if (!jobs[i].is_done) {
                drain_events(&jobs[i]);
                jobs[i].is_done = engine_request_is_done(jobs[i].req);
                if (jobs[i].is_done) {
                    drain_events(&jobs[i]);
                }
            }
            n_done += jobs[i].is_done;
        }
        if (n_done == n) {
            return;
        }
        ck_assert_msg(time_now_us() < deadline, "requests did not finish in 120 s");
        sleep_ms(1);
    }
}

static void release_all(struct job *jobs, int n) {
    for (int i = 0; i < n; i++) {
        engine_request_release(jobs[i].req);
        jobs[i].req = NULL;
    }
}

static void assert_same_outcome(const struct outcome *a, const struct outcome *b, int32_t n_idx) {
    for (int32_t i = 0; i < n_idx; i++) {
        ck_assert_int_eq(a->n_tokens[i], b->n_tokens[i]);
        ck_assert_mem_eq(a->tokens[i], b->tokens[i], (size_t)a->n_tokens[i] * sizeof(int32_t));
        ck_assert_uint_eq(a->text_len[i], b->text_len[i]);
        ck_assert_mem_eq(a->text[i], b->text[i], a->text_len[i]);
        ck_assert_int_eq(a->finish[i], b->finish[i]);
    }
}

/* The mixed workload: prompt lengths 1..300, max_tokens 1..40, greedy and seeded sampling. */
#define N_MIXED 32
static void mixed_jobs(struct job *jobs) {
    for (int i = 0; i < N_MIXED; i++) {
        int32_t n_prompt = 1 + (i * 37) % 300;
        int32_t max_tokens = 1 + (i * 13) % 40;
        float temperature = (i % 3 == 0) ? 0.0f : 0.7f + 0.1f * (float)(i % 4);
        job_init(&jobs[i], n_prompt, 100 + i * 11, max_tokens, temperature, 1000 + (uint64_t)i);
        if (i % 5 == 1) {
            jobs[i].params.sampling.top_k = 40;
        }
        if (i % 5 == 2) {
            jobs[i].params.sampling.top_p = 0.9f;
        }
    }
}

/* Runs each job on its own, one at a time, on engine e. */
static void run_alone(struct engine *e, struct job *jobs, int n) {
    for (int i = 0; i < n; i++) {
        job_submit(e, &jobs[i]);
        wait_all(&jobs[i], 1);
        release_all(&jobs[i], 1);
    }
}

/* Loop index 0: float32 KV cache; 1: f16 (batch invariance holds for rounded K/V too). */
START_TEST(test_engine_concurrent_requests_match_alone) {
    static struct job alone[N_MIXED], together[N_MIXED];
    next_kv_dtype = _i == 0 ? KV_DTYPE_F32 : KV_DTYPE_F16;
    mixed_jobs(alone);
    mixed_jobs(together);
    struct engine *e = make_engine((size_t)64 << 20, 64, 256, 0);
    ck_assert_int_eq(engine_start(e), 0);
    run_alone(e, alone, N_MIXED);
    engine_destroy(e);
    /* All 32 are queued before the engine starts, so they really run together whatever the
     * machine's load. */
    e = make_engine((size_t)64 << 20, 64, 256, 0);
    for (int i = 0; i < N_MIXED; i++) {
        job_submit(e, &together[i]);
    }
    ck_assert_int_eq(engine_start(e), 0);
    wait_all(together, N_MIXED);
    for (int i = 0; i < N_MIXED; i++) {
        ck_assert(!together[i].out.has_error);
        ck_assert_int_eq(together[i].out.n_tokens[0], together[i].params.sampling.max_tokens);
        ck_assert_int_eq(together[i].out.n_admitted, 1);
        assert_same_outcome(&alone[i].out, &together[i].out, 1);
    }
    release_all(together, N_MIXED);
    struct engine_metrics m;
    engine_get_metrics(e, &m);
    ck_assert_int_eq(m.kv_blocks_used, 0);
    ck_assert_uint_eq(m.requests_completed, N_MIXED);
    engine_destroy(e);
    next_kv_dtype = KV_DTYPE_F32;
}
END_TEST

/* A long prompt arriving while a sequence decodes is fed prefill_chunk rows per step (so no
 * step grows past decode rows + chunk), gives the same output as alone, and without the chunk
 * (prefill_chunk 0) goes in as one big step: the check can fail. Returns the largest step's
 * row-histogram bound index. */
static int long_prompt_steps(int32_t prefill_chunk, struct job *decoding, struct job *longp) {
    struct engine_config cfg;
    engine_config_init_default(&cfg);
    cfg.kv_cache_bytes = (size_t)64 << 20;
    cfg.prefill_chunk = prefill_chunk;
    char err[256];
    struct engine *e = engine_create(model, tok, &cfg, err, sizeof(err));
    ck_assert_msg(e != NULL, "engine_create: %s", err);
    ck_assert_int_eq(engine_start(e), 0);
    job_submit(e, decoding);
    int64_t deadline = time_now_us() + 60 * 1000000LL;
    while (decoding->out.n_tokens[0] < 2) { /* it decodes: its prefill is done */
        drain_events(decoding);
        ck_assert(time_now_us() < deadline);
        sleep_ms(1);
    }
    job_submit(e, longp);
    struct job *both[2] = {decoding, longp};
    for (int i = 0; i < 2; i++) {
        wait_all(both[i], 1);
    }
    struct engine_metrics m;
    engine_get_metrics(e, &m);
    int top = 0;
    while (top < ENGINE_HIST_BUCKETS && m.batch_rows.counts[top] < m.batch_rows.count) {
        top++;
    }
    release_all(decoding, 1);
    release_all(longp, 1);
    engine_destroy(e);
    return top;
}

START_TEST(test_engine_long_prompt_is_chunked_while_others_decode) {
    static struct job alone, decoding, longp, decoding2, longp2;
    job_init(&alone, 200, 77, 4, 0.0f, 1);
    struct engine *e = make_engine((size_t)64 << 20, 256, 256, 0);
    ck_assert_int_eq(engine_start(e), 0);
    run_alone(e, &alone, 1);
    engine_destroy(e);

    job_init(&decoding, 4, 5, 200, 0.0f, 2);
    job_init(&longp, 200, 77, 4, 0.0f, 1);
    int top = long_prompt_steps(12, &decoding, &longp);
    /* bounds 1, 2, 4, 8, 16, ...: every step had at most 16 rows (1 decode + 12 prefill). */
    ck_assert_msg(engine_hist_rows_bounds[top] <= 16, "a step had up to %g rows",
                  engine_hist_rows_bounds[top]);
    assert_same_outcome(&alone.out, &longp.out, 1);

    job_init(&decoding2, 4, 5, 200, 0.0f, 2);
    job_init(&longp2, 200, 77, 4, 0.0f, 1);
    top = long_prompt_steps(0, &decoding2, &longp2);
    ck_assert_msg(engine_hist_rows_bounds[top] > 128, "unchunked: largest step bound %g",
                  engine_hist_rows_bounds[top]);
    assert_same_outcome(&alone.out, &longp2.out, 1);
}
END_TEST

/* The 32 jobs alone, one at a time, on a big pool without the prefix cache (the cold
 * reference), then all together in a pool of about 40 blocks (640 positions, far less than
 * they need together: preemption) with the suite's cache setting: every output must equal its
 * reference. *m gets the second engine's metrics. */
static void run_under_pressure(struct job *alone, struct job *together, struct engine_metrics *m) {
    next_prefix_cache_off = true;
    struct engine *big = make_engine((size_t)64 << 20, 64, 256, 0);
    ck_assert_int_eq(engine_start(big), 0);
    run_alone(big, alone, N_MIXED);
    engine_destroy(big);

    size_t per_block = 2 * 4 * 64 * KV_BLOCK_SIZE * sizeof(float);
    struct engine *e = make_engine(40 * per_block, 64, 256, 0);
    for (int i = 0; i < N_MIXED; i++) {
        job_submit(e, &together[i]);
    }
    ck_assert_int_eq(engine_start(e), 0);
    wait_all(together, N_MIXED);
    for (int i = 0; i < N_MIXED; i++) {
        ck_assert(!together[i].out.has_error);
        assert_same_outcome(&alone[i].out, &together[i].out, 1);
    }
    release_all(together, N_MIXED);
    engine_get_metrics(e, m);
    ck_assert_int_eq(m->kv_blocks_used, 0);
    engine_destroy(e);
}

START_TEST(test_engine_preemption_keeps_outputs) {
    static struct job alone[N_MIXED], together[N_MIXED];
    mixed_jobs(alone);
    mixed_jobs(together);
    struct engine_metrics m;
    run_under_pressure(alone, together, &m);
    ck_assert_uint_gt(m.preemptions, 0);
}
END_TEST

/* Cancels one request in a given state and checks the pool returns to full and nothing more
 * arrives. state: 0 queued, 1 mid-prefill, 2 mid-decode. */
/* Cancels one request in a given state and checks the pool returns to full and nothing more
 * arrives. state: 0 queued, 1 mid-prefill, 2 mid-decode. */
START_TEST(test_engine_cancel_frees_everything) {
    int state = _i;
    struct engine *e = make_engine((size_t)16 << 20, 16, 256, 0);
    static struct job victim;
    job_init(&victim, state == 1 ? 500 : 8, 9, state == 1 ? 8 : 200, 0.0f, 2);
    if (state == 0) {
        /* Queued: the engine is not running yet, so the request cannot have left the queue. */
        job_submit(e, &victim);
        engine_request_cancel(victim.req);
        ck_assert_int_eq(engine_start(e), 0);
    } else {
        ck_assert_int_eq(engine_start(e), 0);
        job_submit(e, &victim);
    }
    if (state == 1) {
        /* 500 prompt tokens in chunks of 16: cancel once a few chunks ran. */
        struct engine_metrics m;
        do {
            engine_get_metrics(e, &m);
        } while (m.prompt_tokens < 32);
        engine_request_cancel(victim.req);
    } else if (state == 2) {
        while (victim.out.n_tokens[0] < 3) {
            drain_events(&victim);
        }
        engine_request_cancel(victim.req);
    }
    int64_t deadline = time_now_us() + 10 * 1000000LL;
    while (!engine_request_is_done(victim.req)) {
        drain_events(&victim);
        ck_assert(time_now_us() < deadline);
        sleep_ms(1);
    }
    drain_events(&victim);
    int32_t n_after = victim.out.n_tokens[0];
    sleep_ms(20);
    drain_events(&victim);
    ck_assert_int_eq(victim.out.n_tokens[0], n_after);
    ck_assert_int_eq(victim.out.finish[0], ENGINE_FINISH_CANCELLED);
    if (state == 0) {
        ck_assert_int_eq(victim.out.n_tokens[0], 0);
        ck_assert_int_eq(victim.out.n_admitted, 0); /* never left the queue */
    } else if (state == 2) {
        ck_assert_int_lt(victim.out.n_tokens[0], 200);
    }
    engine_request_release(victim.req);
    struct engine_metrics m;
    for (int i = 0; i < 1000; i++) {
        engine_get_metrics(e, &m);
        if (m.kv_blocks_used == 0 && m.n_running == 0) {
            break;
        }
        sleep_ms(1);
    }
    ck_assert_int_eq(m.kv_blocks_used, 0);
    ck_assert_int_eq(m.n_running, 0);
    ck_assert_int_eq(m.n_waiting, 0);
    ck_assert_uint_eq(m.requests_cancelled, 1);
    engine_destroy(e);
}
END_TEST

START_TEST(test_engine_queue_overflow_is_overloaded) {
    /* Not started: nothing leaves the queue. */
    struct engine *e = make_engine((size_t)16 << 20, 16, 3, 0);
    static struct job jobs[4];
    for (int i = 0; i < 4; i++) {
        job_init(&jobs[i], 4, i, 4, 0.0f, 1);
    }
    for (int i = 0; i < 3; i++) {
        job_submit(e, &jobs[i]);
    }
    enum engine_status st;
    char err[128];
    jobs[3].req = engine_request_create(e, &jobs[3].params, NULL, NULL, &st, err, sizeof(err));
    ck_assert_ptr_nonnull(jobs[3].req);
    ck_assert_int_eq(engine_submit(e, jobs[3].req), ENGINE_ERR_OVERLOADED);
    /* The queued ones still complete once the engine runs. */
    ck_assert_int_eq(engine_start(e), 0);
    wait_all(jobs, 3);
    for (int i = 0; i < 3; i++) {
        ck_assert(!jobs[i].out.has_error);
        ck_assert_int_eq(jobs[i].out.n_tokens[0], 4);
    }
    release_all(jobs, 4);
    engine_destroy(e);
}
END_TEST

START_TEST(test_engine_queue_timeout_is_overloaded) {
    /* One running sequence at a time; the second request waits past its 50 ms timeout. */
    next_max_running = 1;
    struct engine *e = make_engine((size_t)16 << 20, 16, 8, 50);
    static struct job jobs[2];
    job_init(&jobs[0], 200, 1, 250, 0.0f, 1);
    job_init(&jobs[1], 200, 2, 250, 0.0f, 2);
    ck_assert_int_eq(engine_start(e), 0);
    job_submit(e, &jobs[0]);
    job_submit(e, &jobs[1]);
    wait_all(jobs, 2);
    ck_assert(!jobs[0].out.has_error);
    ck_assert(jobs[1].out.has_error);
    ck_assert_int_eq(jobs[1].out.error, ENGINE_ERR_OVERLOADED);
    release_all(jobs, 2);
    engine_destroy(e);
}
END_TEST

START_TEST(test_engine_rejects_context_overflow_and_bad_ids) {
    struct engine *e = make_engine((size_t)16 << 20, 16, 8, 0);
    static struct job job;
    job_init(&job, 500, 1, 100, 0.0f, 1); /* 600 > the tiny model's 512 positions */
    enum engine_status st;
    char err[256];
    ck_assert_ptr_null(engine_request_create(e, &job.params, NULL, NULL, &st, err, sizeof(err)));
    ck_assert_int_eq(st, ENGINE_ERR_CONTEXT);
    ck_assert_ptr_nonnull(strstr(err, "512"));
    job_init(&job, 4, 1, 4, 0.0f, 1);
    job.prompt[2] = 50257;
    ck_assert_ptr_null(engine_request_create(e, &job.params, NULL, NULL, &st, err, sizeof(err)));
    ck_assert_int_eq(st, ENGINE_ERR_INVALID);
    engine_destroy(e);
}
END_TEST

static void run_group(struct engine *e, struct job *job, int32_t n, int32_t best_of) {
    job_init(job, 6, 42, 12, 0.9f, 7);
    job->params.n = n;
    job->params.best_of = best_of;
    job_submit(e, job);
    wait_all(job, 1);
    release_all(job, 1);
}

START_TEST(test_engine_n4_distinct_and_reproducible) {
    struct engine *e = make_engine((size_t)16 << 20, 32, 8, 0);
    ck_assert_int_eq(engine_start(e), 0);
    static struct job a, b;
    run_group(e, &a, 4, 4);
    run_group(e, &b, 4, 4);
    ck_assert_int_eq(a.out.n_finished, 4);
    assert_same_outcome(&a.out, &b.out, 4);
    for (int i = 0; i < 4; i++) {
        ck_assert_int_eq(a.out.n_tokens[i], 12);
        for (int j = 0; j < i; j++) {
            ck_assert_msg(memcmp(a.out.tokens[i], a.out.tokens[j], 12 * sizeof(int32_t)) != 0,
                          "choices %d and %d are identical", i, j);
        }
    }
    /* Choice i of a group equals a single request seeded with seed + i, run alone. */
    static struct job single;
    job_init(&single, 6, 42, 12, 0.9f, 7 + 2);
    job_submit(e, &single);
    wait_all(&single, 1);
    release_all(&single, 1);
    ck_assert_mem_eq(single.out.tokens[0], a.out.tokens[2], 12 * sizeof(int32_t));
    struct engine_metrics m;
    engine_get_metrics(e, &m);
    ck_assert_int_eq(m.kv_blocks_used, 0);
    engine_destroy(e);
}
END_TEST

START_TEST(test_engine_best_of_reports_scores) {
    struct engine *e = make_engine((size_t)16 << 20, 32, 8, 0);
    ck_assert_int_eq(engine_start(e), 0);
    static struct job job;
    run_group(e, &job, 1, 4);
    ck_assert_int_eq(job.out.n_finished, 4);
    /* Each candidate's reported score is the sum of its tokens' raw logprobs: recompute one
     * candidate's score from a logprobs run and compare. */
    static struct job check;
    job_init(&check, 6, 42, 12, 0.9f, 7 + 3);
    check.params.sampling.logprobs = 0;
    job_submit(e, &check);
    wait_all(&check, 1);
    release_all(&check, 1);
    ck_assert_mem_eq(check.out.tokens[0], job.out.tokens[3], 12 * sizeof(int32_t));
    ck_assert_double_eq_tol(check.out.sum_logprob[0], job.out.sum_logprob[3], 1e-5);
    ck_assert(job.out.sum_logprob[0] < 0.0);
    engine_destroy(e);
}
END_TEST

/* ---- golden comparisons with Hugging Face transformers (generate.json, forward.json) ----- */

/* Copies a JSON array of ints into out; returns the count. */
static int32_t json_ids(const cJSON *arr, int32_t *out, int32_t cap) {
    int32_t n = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, arr) {
        ck_assert_int_lt(n, cap);
        out[n++] = (int32_t)it->valuedouble;
    }
    return n;
}

static void job_from_ids(struct job *job, const cJSON *prompt_ids, int32_t max_tokens) {
    job_init(job, 1, 0, max_tokens, 0.0f, 1);
    job->params.n_prompt = (size_t)json_ids(prompt_ids, job->prompt, 600);
}

START_TEST(test_engine_beam_search_matches_transformers) {
    cJSON *golden = read_golden_json("generate.json");
    struct engine *e = make_engine((size_t)16 << 20, 64, 8, 0);
    ck_assert_int_eq(engine_start(e), 0);
    const cJSON *prompt;
    int n_checked = 0;
    cJSON_ArrayForEach(prompt, cJSON_GetObjectItemCaseSensitive(golden, "prompts")) {
        static struct job job;
        job_from_ids(&job, cJSON_GetObjectItemCaseSensitive(prompt, "prompt_ids"), 12);
        job.params.use_beam_search = true;
        job.params.n = 4;
        job.params.best_of = 4;
        job.params.length_penalty = 1.0f;
        job_submit(e, &job);
        wait_all(&job, 1);
        release_all(&job, 1);
        const cJSON *beams = cJSON_GetObjectItemCaseSensitive(prompt, "beam4_ids");
        const cJSON *scores = cJSON_GetObjectItemCaseSensitive(prompt, "beam4_scores");
        for (int b = 0; b < 4; b++) {
            int32_t want[12];
            ck_assert_int_eq(json_ids(cJSON_GetArrayItem(beams, b), want, 12), 12);
            ck_assert_int_eq(job.out.n_tokens[b], 12);
            ck_assert_mem_eq(job.out.tokens[b], want, sizeof(want));
            double score = cJSON_GetArrayItem(scores, b)->valuedouble;
            ck_assert_double_eq_tol(job.out.sum_logprob[b] / 12.0, score, 1e-3);
        }
        n_checked++;
    }
    ck_assert_int_eq(n_checked, 4);
    engine_destroy(e);
    cJSON_Delete(golden);
}
END_TEST

START_TEST(test_engine_beam_width_1_is_greedy_and_beam_4_beats_it) {
    cJSON *golden = read_golden_json("forward.json");
    struct engine *e = make_engine((size_t)16 << 20, 64, 8, 0);
    ck_assert_int_eq(engine_start(e), 0);
    const cJSON *prompt;
    int n_better = 0;
    cJSON_ArrayForEach(prompt, cJSON_GetObjectItemCaseSensitive(golden, "prompts")) {
        static struct job beam1, greedy, beam4;
        const cJSON *ids = cJSON_GetObjectItemCaseSensitive(prompt, "prompt_ids");
        int32_t want[48];
        ck_assert_int_eq(json_ids(cJSON_GetObjectItemCaseSensitive(prompt, "greedy_ids"), want, 48),
                         48);
        job_from_ids(&beam1, ids, 48);
        beam1.params.use_beam_search = true;
        beam1.params.length_penalty = 1.0f;
        job_from_ids(&greedy, ids, 48);
        greedy.params.sampling.logprobs = 0;
        job_from_ids(&beam4, ids, 48);
        beam4.params.use_beam_search = true;
        beam4.params.best_of = 4;
        beam4.params.length_penalty = 1.0f;
        job_submit(e, &beam1);
        job_submit(e, &greedy);
        job_submit(e, &beam4);
        struct job *jobs[3] = {&beam1, &greedy, &beam4};
        for (int i = 0; i < 3; i++) {
            wait_all(jobs[i], 1);
            release_all(jobs[i], 1);
        }
        ck_assert_mem_eq(beam1.out.tokens[0], want, sizeof(want));
        ck_assert_mem_eq(greedy.out.tokens[0], want, sizeof(want));
        ck_assert_double_eq_tol(beam1.out.sum_logprob[0], greedy.out.sum_logprob[0], 1e-4);
        /* Beam search may lose to greedy on some prompt, but on this model it must find a
         * more likely continuation than greedy for at least one of the seven. */
        n_better += beam4.out.sum_logprob[0] > greedy.out.sum_logprob[0] + 1e-3;
    }
    ck_assert_int_gt(n_better, 0);
    engine_destroy(e);
    cJSON_Delete(golden);
}
END_TEST

START_TEST(test_engine_repetition_penalty_matches_transformers) {
    cJSON *golden = read_golden_json("generate.json");
    struct engine *e = make_engine((size_t)16 << 20, 64, 8, 0);
    ck_assert_int_eq(engine_start(e), 0);
    const cJSON *prompt;
    cJSON_ArrayForEach(prompt, cJSON_GetObjectItemCaseSensitive(golden, "prompts")) {
        static struct job job;
        job_from_ids(&job, cJSON_GetObjectItemCaseSensitive(prompt, "prompt_ids"), 24);
        job.params.sampling.repetition_penalty = 1.3f;
        job_submit(e, &job);
        wait_all(&job, 1);
        release_all(&job, 1);
        int32_t want[24];
        ck_assert_int_eq(
            json_ids(cJSON_GetObjectItemCaseSensitive(prompt, "greedy_rep1.3_ids"), want, 24), 24);
        ck_assert_mem_eq(job.out.tokens[0], want, sizeof(want));
    }
    engine_destroy(e);
    cJSON_Delete(golden);
}
END_TEST

/* A tokenizer with more ids than the model has embeddings is refused when the engine starts
 * (here the GPT-2 tokenizer on a 256-token Qwen2-shaped model). */
START_TEST(test_engine_refuses_a_tokenizer_larger_than_the_model) {
    char dir[1024];
    char err[512] = "";
    testdata_path(dir, sizeof(dir), "llama-tiny/qwen2-mqa");
    struct model *small = model_load(dir, err, sizeof(err));
    ck_assert_msg(small != NULL, "%s", err);
    struct engine_config cfg;
    engine_config_init_default(&cfg);
    cfg.kv_cache_bytes = (size_t)1 << 20;
    struct engine *e = engine_create(small, tok, &cfg, err, sizeof(err));
    ck_assert_ptr_null(e);
    ck_assert_msg(strstr(err, "50257 token ids but the model only 256") != NULL, "%s", err);
    model_destroy(small);
}
END_TEST

/* What the events of one request said about each position's logprobs. */
struct lp_record {
    int32_t n;
    int32_t token[64];
    float logprob[64];
    int32_t n_top[64];
    struct sampling_logprob top[64][ENGINE_EVENT_TOP_MAX];
};

/* Runs job to the end, recording the logprobs of its events of type want (choice 0 only). */
static void run_recording(struct engine *e, struct job *job, enum engine_event_type want,
                          struct lp_record *rec) {
    memset(rec, 0, sizeof(*rec));
    job_submit(e, job);
    int64_t deadline = time_now_us() + 120 * 1000000LL;
    bool done = false;
    while (!done) {
        done = engine_request_is_done(job->req);
        struct engine_event ev[8];
        size_t n;
        while ((n = engine_request_poll(job->req, ev, 8)) > 0) {
            for (size_t i = 0; i < n; i++) {
                ck_assert_int_ne(ev[i].type, ENGINE_EVENT_ERROR);
                if (ev[i].type != want || ev[i].token < 0 || ev[i].index != 0) {
                    continue;
                }
                ck_assert(ev[i].has_logprob);
                ck_assert_int_lt(rec->n, 64);
                rec->token[rec->n] = ev[i].token;
                rec->logprob[rec->n] = ev[i].logprob;
                rec->n_top[rec->n] = ev[i].n_top;
                memcpy(rec->top[rec->n], ev[i].top, sizeof(ev[i].top));
                rec->n++;
            }
        }
        ck_assert_msg(time_now_us() < deadline, "request did not finish in 120 s");
        if (!done) {
            sleep_ms(1);
        }
    }
    release_all(job, 1);
}

/* Prompt logprobs (echo) and sampled tokens' logprobs come from one routine: the token at
 * position p has the same logprob and the same top list, bit for bit, whether it was sampled
 * there or sent as part of a later prompt. Loop 0: greedy; 1: seeded sampling at T = 0.9
 * (logprobs are of the raw logits either way). */
START_TEST(test_engine_prompt_logprobs_equal_completion_logprobs) {
    struct engine *e = make_engine((size_t)16 << 20, 64, 8, 0);
    ck_assert_int_eq(engine_start(e), 0);
    static struct job gen, echo;
    const int32_t n_prompt = 9;
    const int32_t n_new = 6;
    job_init(&gen, n_prompt, 321, n_new, _i == 0 ? 0.0f : 0.9f, 77);
    gen.params.sampling.logprobs = 5;
    struct lp_record sampled;
    run_recording(e, &gen, ENGINE_EVENT_TOKEN, &sampled);
    ck_assert_int_eq(sampled.n, n_new);

    job_init(&echo, n_prompt, 321, 1, 0.0f, 1);
    memcpy(echo.prompt + n_prompt, sampled.token, (size_t)n_new * sizeof(int32_t));
    echo.params.n_prompt = (size_t)(n_prompt + n_new);
    echo.params.want_prompt_logprobs = true;
    echo.params.sampling.logprobs = 5;
    struct lp_record prompt_lp;
    run_recording(e, &echo, ENGINE_EVENT_PROMPT_TOKEN, &prompt_lp);
    /* One event per prompt token after the first. */
    ck_assert_int_eq(prompt_lp.n, n_prompt + n_new - 1);
    for (int32_t t = 0; t < n_new; t++) {
        int32_t p = n_prompt - 1 + t; /* the prompt event of prompt[n_prompt + t] */
        ck_assert_int_eq(prompt_lp.token[p], sampled.token[t]);
        ck_assert_mem_eq(&prompt_lp.logprob[p], &sampled.logprob[t], sizeof(float));
        ck_assert_int_eq(prompt_lp.n_top[p], 5);
        ck_assert_int_eq(sampled.n_top[t], 5);
        ck_assert_mem_eq(prompt_lp.top[p], sampled.top[t], 5 * sizeof(struct sampling_logprob));
    }
    engine_destroy(e);
}
END_TEST

/* Bitwise: same tokens, same text, same logprob for every token. */
static void assert_identical(const struct outcome *a, const struct outcome *b) {
    assert_same_outcome(a, b, 1);
    for (int32_t t = 0; t < a->n_tokens[0]; t++) {
        ck_assert_msg(memcmp(&a->logprob[0][t], &b->logprob[0][t], sizeof(float)) == 0,
                      "token %d: logprob %.9g vs %.9g", t, (double)a->logprob[0][t],
                      (double)b->logprob[0][t]);
    }
    ck_assert_msg(a->sum_logprob[0] == b->sum_logprob[0], "%.17g vs %.17g", a->sum_logprob[0],
                  b->sum_logprob[0]);
}

static void run_one(struct engine *e, struct job *job) {
    job_submit(e, job);
    wait_all(job, 1);
    ck_assert(!job->out.has_error);
    release_all(job, 1);
}

/* A prompt served from the prefix cache gives the same tokens and logprobs, bit for bit, as
 * served cold; a prompt sharing only a prefix reuses those blocks; echo with prompt logprobs
 * bypasses the cache (it needs every prompt position's logits). Loop: greedy, then sampled. */
START_TEST(test_engine_prefix_cache_hit_is_identical_to_cold) {
    if (!prefix_cache_on()) {
        return; /* this suite's run without the cache: nothing to compare */
    }
    float temperature = _i == 0 ? 0.0f : 0.9f;
    static struct job cold, warm, other_cold, other_warm, echo;
    job_init(&cold, 100, 31, 24, temperature, 77);
    job_init(&warm, 100, 31, 24, temperature, 77);
    job_init(&other_cold, 100, 31, 24, temperature, 78);
    for (int32_t i = 70; i < 100; i++) {
        other_cold.prompt[i] = 13 + i; /* shares the first 64 tokens (4 blocks) */
    }
    other_warm = other_cold;
    cold.params.sampling.logprobs = warm.params.sampling.logprobs = 0;
    other_cold.params.sampling.logprobs = other_warm.params.sampling.logprobs = 0;
    other_cold.params.prompt = other_cold.prompt;
    other_warm.params.prompt = other_warm.prompt;

    struct engine *e = make_engine((size_t)16 << 20, 64, 256, 0);
    ck_assert_int_eq(engine_start(e), 0);
    run_one(e, &cold);
    ck_assert_int_eq(cold.out.n_cached, 0);
    run_one(e, &warm);
    ck_assert_int_eq(warm.out.n_cached, 96); /* 99 tokens looked up: 6 whole blocks */
    assert_identical(&cold.out, &warm.out);
    run_one(e, &other_warm);
    ck_assert_int_eq(other_warm.out.n_cached, 64);
    job_init(&echo, 100, 31, 4, temperature, 77);
    echo.params.want_prompt_logprobs = true;
    echo.params.sampling.logprobs = 0;
    run_one(e, &echo);
    ck_assert_int_eq(echo.out.n_cached, 0);
    struct engine_metrics m;
    engine_get_metrics(e, &m);
    ck_assert_uint_eq(m.prefix_cache_hits, 96 + 64);
    ck_assert_uint_ge(m.prefix_cache_queries, 3 * 100);
    ck_assert_int_gt(m.kv_blocks_cached, 0);
    ck_assert_int_eq(m.kv_blocks_used, 0); /* cached blocks no sequence holds are free */
    /* The step's time by phase: the forward pass dominates, every phase was timed. */
    double total = 0;
    for (int p = 0; p < ENGINE_N_PHASES; p++) {
        ck_assert(m.phase_seconds[p] >= 0);
        total += m.phase_seconds[p];
    }
    ck_assert(m.phase_seconds[ENGINE_PHASE_FORWARD] > 0);
    ck_assert(m.phase_seconds[ENGINE_PHASE_SAMPLE] > 0);
    ck_assert(total <= m.step_seconds.sum * 1.05 + 0.01);
    engine_destroy(e);

    /* The prefix-sharing prompt cold, on an engine without the cache. */
    next_prefix_cache_off = true;
    e = make_engine((size_t)16 << 20, 64, 256, 0);
    ck_assert_int_eq(engine_start(e), 0);
    run_one(e, &other_cold);
    ck_assert_int_eq(other_cold.out.n_cached, 0);
    assert_identical(&other_cold.out, &other_warm.out);
    engine_get_metrics(e, &m);
    ck_assert_uint_eq(m.prefix_cache_hits, 0);
    ck_assert_int_eq(m.kv_blocks_cached, 0);
    engine_destroy(e);
}
END_TEST

/* Under pressure: a pool of about 40 blocks, 32 requests that share one 48-token system
 * prefix, run together and preempting each other: cached blocks are evicted as needed, the
 * shared ones reused, and every output equals the request's own cold run. */
START_TEST(test_engine_prefix_cache_under_pressure_keeps_outputs) {
    static struct job alone[N_MIXED], together[N_MIXED];
    mixed_jobs(alone);
    mixed_jobs(together);
    for (int i = 0; i < N_MIXED; i++) {
        for (int32_t k = 0; k < 48 && k < (int32_t)alone[i].params.n_prompt; k++) {
            alone[i].prompt[k] = together[i].prompt[k] = 500 + k;
        }
    }
    struct engine_metrics m;
    run_under_pressure(alone, together, &m);
    if (prefix_cache_on()) {
        ck_assert_uint_gt(m.prefix_cache_hits, 0);
    }
}
END_TEST

static Suite *engine_suite(void) {
    Suite *s = suite_create("engine");
    TCase *tc = tcase_create("core");
    tcase_add_unchecked_fixture(tc, load_model, free_model);
    tcase_set_timeout(tc, 300);
    tcase_add_loop_test(tc, test_engine_concurrent_requests_match_alone, 0, 2);
    tcase_add_test(tc, test_engine_preemption_keeps_outputs);
    tcase_add_test(tc, test_engine_long_prompt_is_chunked_while_others_decode);
    tcase_add_loop_test(tc, test_engine_cancel_frees_everything, 0, 3);
    tcase_add_test(tc, test_engine_queue_overflow_is_overloaded);
    tcase_add_test(tc, test_engine_queue_timeout_is_overloaded);
    tcase_add_test(tc, test_engine_rejects_context_overflow_and_bad_ids);
    tcase_add_test(tc, test_engine_n4_distinct_and_reproducible);
    tcase_add_test(tc, test_engine_best_of_reports_scores);
    tcase_add_test(tc, test_engine_beam_search_matches_transformers);
    tcase_add_test(tc, test_engine_beam_width_1_is_greedy_and_beam_4_beats_it);
    tcase_add_test(tc, test_engine_repetition_penalty_matches_transformers);
    tcase_add_loop_test(tc, test_engine_prompt_logprobs_equal_completion_logprobs, 0, 2);
    tcase_add_test(tc, test_engine_refuses_a_tokenizer_larger_than_the_model);
    tcase_add_loop_test(tc, test_engine_prefix_cache_hit_is_identical_to_cold, 0, 2);
    tcase_add_test(tc, test_engine_prefix_cache_under_pressure_keeps_outputs);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(engine_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
