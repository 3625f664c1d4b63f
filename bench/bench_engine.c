/*
 * bench_engine.c: in-process benchmark of the continuous-batching engine (no HTTP).
 *
 * For each concurrency C in the list, submits C requests at once (prompt P tokens, N new tokens,
 * greedy, ignore_eos) and reports aggregate generated tokens/s, time to first token and
 * inter-token latency percentiles. Then the "long prompt" scenario: C streams decoding while one
 * request with a 1000-token prompt arrives mid-run; reports the running streams' ITL p50/p99
 * (chunked prefill must keep p99 within 2x p50).
 *
 * usage: bench_engine MODEL_DIR [--concurrency 1,4,16,32,64] [--prompt 64] [--new 128]
 *                     [--batch-tokens 256] [--prefill-chunk 12] [--kv-mb 1024]
 *                     [--long-prompt 1000] [--weights auto|f32|f16|bf16|q8]
 *                     [--kv-cache-dtype f32|f16]
 *                     [--tokenizer DIR]   (tokenizer files when MODEL_DIR has none)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <gptd/engine.h>
#include <gptd/model.h>
#include <gptd/sampling.h>
#include <gptd/tokenizer.h>
#include <gptd/util.h>

struct stream {
    struct engine_request *req;
    int32_t prompt[2048];
    int64_t t_submit_us, t_first_us, t_last_us;
    int32_t n_tokens;
    bool is_done;
    bool is_measured; /* its gaps go into the ITL statistics */
};

static double *gaps;
static size_t n_gaps, cap_gaps;

static void add_gap(double ms) {
    if (n_gaps == cap_gaps) {
        cap_gaps = cap_gaps ? cap_gaps * 2 : 4096;
        gaps = realloc(gaps, cap_gaps * sizeof(double));
    }
    gaps[n_gaps++] = ms;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double percentile(double *v, size_t n, double p) {
    if (n == 0) {
        return 0.0;
    }
    qsort(v, n, sizeof(double), cmp_double);
    size_t i = (size_t)(p / 100.0 * (double)(n - 1) + 0.5);
    return v[i < n ? i : n - 1];
}

static void submit(struct engine *e, struct stream *s, int32_t n_prompt, int32_t n_new,
                   int32_t first) {
    struct engine_request_params p;
    memset(&p, 0, sizeof(p));
    for (int32_t i = 0; i < n_prompt; i++) {
        s->prompt[i] = (first + i * 7919) % 50000;
    }
    p.prompt = s->prompt;
    p.n_prompt = (size_t)n_prompt;
    sampling_params_init_default(&p.sampling);
    p.sampling.temperature = 0.0f;
    p.sampling.max_tokens = n_new;
    p.sampling.ignore_eos = true;
    p.n = 1;
    p.best_of = 1;
    enum engine_status st;
    char err[256];
    s->req = engine_request_create(e, &p, NULL, NULL, &st, err, sizeof(err));
    if (s->req == NULL || engine_submit(e, s->req) != ENGINE_OK) {
        fprintf(stderr, "submit failed: %s\n", s->req == NULL ? err : "engine_submit");
        exit(1);
    }
    s->t_submit_us = time_now_us();
    s->t_first_us = s->t_last_us = 0;
    s->n_tokens = 0;
    s->is_done = false;
}

/* Polls the streams, recording arrival times, until all are done. */
static void pump(struct stream *streams, int n) {
    struct engine_event ev[64];
    for (;;) {
        int n_done = 0;
        for (int i = 0; i < n; i++) {
            struct stream *s = &streams[i];
            if (s->is_done) {
                n_done++;
                continue;
            }
            size_t k = engine_request_poll(s->req, ev, 64);
            int64_t now = time_now_us();
            for (size_t j = 0; j < k; j++) {
                if (ev[j].type != ENGINE_EVENT_TOKEN || ev[j].token < 0) {
                    continue;
                }
                if (s->n_tokens == 0) {
                    s->t_first_us = now;
                } else if (s->is_measured) {
                    add_gap((double)(now - s->t_last_us) / 1000.0);
                }
                s->t_last_us = now;
                s->n_tokens++;
            }
            if (k == 0 && engine_request_is_done(s->req)) {
                s->is_done = true;
                engine_request_release(s->req);
                s->req = NULL;
            }
        }
        if (n_done == n) {
            return;
        }
        struct timespec ts = {0, 200000};
        nanosleep(&ts, NULL);
    }
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: bench_engine MODEL_DIR [--concurrency 1,4,16,32,64] [--prompt 64] "
                        "[--new 128] [--batch-tokens 256] [--prefill-chunk 12] [--kv-mb 1024] "
                        "[--long-prompt 1000] [--weights auto|f32|f16|bf16|q8] "
                        "[--kv-cache-dtype f32|f16]\n");
        return 2;
    }
    const char *dir = argv[1];
    char conc_list[256] = "1,4,16,32,64";
    int32_t n_prompt = 64, n_new = 128, batch_tokens = 256, long_prompt = 1000;
    int32_t prefill_chunk = -1; /* -1: the engine's default */
    long kv_mb = 1024;
    const char *tok_dir = dir;
    enum model_weights weights = MODEL_WEIGHTS_AUTO;
    enum kv_dtype kv_dtype = KV_DTYPE_F32;
    for (int i = 2; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--concurrency") == 0) {
            snprintf(conc_list, sizeof(conc_list), "%s", argv[i + 1]);
        } else if (strcmp(argv[i], "--prompt") == 0) {
            n_prompt = atoi(argv[i + 1]);
        } else if (strcmp(argv[i], "--new") == 0) {
            n_new = atoi(argv[i + 1]);
        } else if (strcmp(argv[i], "--batch-tokens") == 0) {
            batch_tokens = atoi(argv[i + 1]);
        } else if (strcmp(argv[i], "--prefill-chunk") == 0) {
            prefill_chunk = atoi(argv[i + 1]);
        } else if (strcmp(argv[i], "--kv-mb") == 0) {
            kv_mb = atol(argv[i + 1]);
        } else if (strcmp(argv[i], "--tokenizer") == 0) {
            tok_dir = argv[i + 1];
        } else if (strcmp(argv[i], "--long-prompt") == 0) {
            long_prompt = atoi(argv[i + 1]);
        } else if (strcmp(argv[i], "--kv-cache-dtype") == 0) {
            if (kv_dtype_parse(argv[i + 1], &kv_dtype) != 0) {
                fprintf(stderr, "--kv-cache-dtype wants f32 or f16\n");
                return 2;
            }
        } else if (strcmp(argv[i], "--weights") == 0) {
            if (model_weights_parse(argv[i + 1], &weights) != 0) {
                fprintf(stderr, "--weights wants auto, f32, f16, bf16 or q8\n");
                return 2;
            }
        } else {
            fprintf(stderr, "unknown option %s\n", argv[i]);
            return 2;
        }
    }
    char err[512];
    log_set_level(LOG_LEVEL_WARN);
    struct model *model = model_load_with(dir, weights, err, sizeof(err));
    struct tokenizer *tok = model != NULL ? tokenizer_load(tok_dir, err, sizeof(err)) : NULL;
    if (model == NULL || tok == NULL) {
        fprintf(stderr, "load: %s\n", err);
        return 1;
    }
    struct engine_config cfg;
    engine_config_init_default(&cfg);
    cfg.kv_cache_bytes = (size_t)kv_mb << 20;
    cfg.kv_dtype = kv_dtype;
    cfg.max_batch_tokens = batch_tokens;
    if (prefill_chunk >= 0) {
        cfg.prefill_chunk = prefill_chunk;
    }
    struct engine *e = engine_create(model, tok, &cfg, err, sizeof(err));
    if (e == NULL || engine_start(e) != 0) {
        fprintf(stderr, "engine: %s\n", err);
        return 1;
    }
    static struct stream streams[257];
    /* Warm-up: page in the weights and let the allocator settle. */
    submit(e, &streams[0], n_prompt, 8, 1);
    pump(streams, 1);

    printf("# engine benchmark: prompt %d, %d new tokens, greedy, batch tokens %d, prefill chunk "
           "%d\n",
           n_prompt, n_new, batch_tokens, cfg.prefill_chunk);
    printf("%-12s %12s %10s %10s %10s %10s %10s\n", "concurrency", "agg tok/s", "TTFT p50",
           "TTFT p99", "ITL p50", "ITL p99", "wall s");
    char *save = NULL;
    for (char *t = strtok_r(conc_list, ",", &save); t != NULL; t = strtok_r(NULL, ",", &save)) {
        int c = atoi(t);
        if (c < 1 || c > 256) {
            continue;
        }
        n_gaps = 0;
        int64_t t0 = time_now_us();
        for (int i = 0; i < c; i++) {
            streams[i].is_measured = true;
            submit(e, &streams[i], n_prompt, n_new, 1000 + i * 31);
        }
        pump(streams, c);
        double wall = (double)(time_now_us() - t0) / 1e6;
        double ttft[256];
        long total = 0;
        for (int i = 0; i < c; i++) {
            ttft[i] = (double)(streams[i].t_first_us - streams[i].t_submit_us) / 1000.0;
            total += streams[i].n_tokens;
        }
        double ttft50 = percentile(ttft, (size_t)c, 50), ttft99 = percentile(ttft, (size_t)c, 99);
        double itl50 = percentile(gaps, n_gaps, 50), itl99 = percentile(gaps, n_gaps, 99);
        printf("%-12d %12.1f %8.1fms %8.1fms %8.1fms %8.1fms %10.2f\n", c, (double)total / wall,
               ttft50, ttft99, itl50, itl99, wall);
        fflush(stdout);
    }

    /* Long prompt arriving mid-run: 16 streams decode; after ~20 tokens a long prompt joins. */
    if (long_prompt > 0) {
        int c = 16;
        n_gaps = 0;
        for (int i = 0; i < c; i++) {
            streams[i].is_measured = true;
            submit(e, &streams[i], n_prompt, n_new, 5000 + i * 17);
        }
        struct engine_event ev[64];
        /* Wait for the first stream's 20th token, collecting its gaps meanwhile via pump of
         * a copy is overkill: just let them start, then submit the long one. */
        while (streams[0].n_tokens < 20) {
            size_t k = engine_request_poll(streams[0].req, ev, 64);
            int64_t now = time_now_us();
            for (size_t j = 0; j < k; j++) {
                if (ev[j].type == ENGINE_EVENT_TOKEN && ev[j].token >= 0) {
                    if (streams[0].n_tokens > 0) {
                        add_gap((double)(now - streams[0].t_last_us) / 1000.0);
                    }
                    streams[0].t_last_us = now;
                    streams[0].n_tokens++;
                }
            }
        }
        streams[c].is_measured = false;
        submit(e, &streams[c], long_prompt, 16, 77);
        pump(streams, c + 1);
        double ttft_long = (double)(streams[c].t_first_us - streams[c].t_submit_us) / 1000.0;
        printf("\n# %d decoding streams + one %d-token prompt arriving mid-run\n", c, long_prompt);
        printf("streams' ITL p50 %.1f ms, p99 %.1f ms (p99/p50 = %.2f); long prompt TTFT %.1f "
               "ms\n",
               percentile(gaps, n_gaps, 50), percentile(gaps, n_gaps, 99),
               percentile(gaps, n_gaps, 99) / percentile(gaps, n_gaps, 50), ttft_long);
    }
    struct engine_metrics m;
    engine_get_metrics(e, &m);
    printf("\npreemptions %llu, steps %llu\n", (unsigned long long)m.preemptions,
           (unsigned long long)m.steps);
    engine_destroy(e);
    tokenizer_destroy(tok);
    model_destroy(model);
    free(gaps);
    return 0;
}
