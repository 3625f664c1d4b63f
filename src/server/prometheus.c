/*
 * prometheus.c: GET /metrics in Prometheus' text format: the engine's gauges, counters and
 * histograms (engine_get_metrics, atomic reads) and the server's HTTP counts by route and
 * status. Runs on the HTTP thread serving the request, never through the engine's queue.
 */
#include <math.h>
#include <stdatomic.h>
#include <string.h>

#include <gptd/engine.h>

#include "server_internal.h"

static void prom_metric(struct sbuf *b, const char *name, const char *type, const char *help,
                        double value) {
    sbuf_printf(b, "# HELP %s %s\n# TYPE %s %s\n%s %.17g\n", name, help, name, type, name, value);
}

/* A counter with one label and two values of it. */
static void prom_counter_by(struct sbuf *b, const char *name, const char *help, const char *label,
                            const char *v0, uint64_t n0, const char *v1, uint64_t n1) {
    sbuf_printf(b, "# HELP %s %s\n# TYPE %s counter\n%s{%s=\"%s\"} %llu\n%s{%s=\"%s\"} %llu\n",
                name, help, name, name, label, v0, (unsigned long long)n0, name, label, v1,
                (unsigned long long)n1);
}

static void prom_histogram(struct sbuf *b, const char *name, const char *help,
                           const struct engine_histogram *h, const double *bounds) {
    sbuf_printf(b, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    for (int i = 0; i < ENGINE_HIST_BUCKETS; i++) {
        if (isinf(bounds[i]) || i == ENGINE_HIST_BUCKETS - 1) {
            sbuf_printf(b, "%s_bucket{le=\"+Inf\"} %llu\n", name, (unsigned long long)h->count);
            break;
        }
        sbuf_printf(b, "%s_bucket{le=\"%g\"} %llu\n", name, bounds[i],
                    (unsigned long long)h->counts[i]);
    }
    sbuf_printf(b, "%s_sum %.17g\n%s_count %llu\n", name, h->sum, name,
                (unsigned long long)h->count);
}

enum MHD_Result prometheus_respond(struct conn *x) {
    struct server *s = x->srv;
    struct sbuf b;
    sbuf_init(&b);
    if (atomic_load(&s->ready)) {
        struct engine_metrics m;
        memset(&m, 0, sizeof(m));
        engine_get_metrics(s->engine, &m);
        sbuf_printf(&b,
                    "# HELP gptd_model_info How the model is held in memory (matmul weights, "
                    "KV cache).\n# TYPE gptd_model_info gauge\n"
                    "gptd_model_info{weights=\"%s\",kv_cache_dtype=\"%s\"} 1\n",
                    s->weights_name, s->kv_dtype_name);
        prom_metric(&b, "gptd_requests_waiting", "gauge", "Requests waiting in the queue.",
                    (double)m.n_waiting);
        prom_metric(&b, "gptd_requests_running", "gauge", "Sequences running.",
                    (double)m.n_running);
        prom_metric(&b, "gptd_kv_blocks_used", "gauge", "KV cache blocks in use.",
                    (double)m.kv_blocks_used);
        prom_metric(&b, "gptd_kv_blocks_total", "gauge", "KV cache blocks in the pool.",
                    (double)m.kv_blocks_total);
        prom_metric(&b, "gptd_kv_blocks_free", "gauge", "KV cache blocks free.",
                    (double)(m.kv_blocks_total - m.kv_blocks_used));
        prom_metric(&b, "gptd_kv_blocks_cached", "gauge",
                    "KV cache blocks holding a cached prompt prefix (in use or evictable).",
                    (double)m.kv_blocks_cached);
        prom_metric(&b, "gptd_prefix_cache_queries_total", "counter",
                    "Tokens looked up in the prefix cache when sequences started.",
                    (double)m.prefix_cache_queries);
        prom_metric(&b, "gptd_prefix_cache_hit_tokens_total", "counter",
                    "Tokens whose K/V came from the prefix cache.", (double)m.prefix_cache_hits);
        prom_metric(&b, "gptd_requests_started_total", "counter", "Requests admitted.",
                    (double)m.requests_started);
        prom_metric(&b, "gptd_requests_completed_total", "counter", "Requests finished.",
                    (double)m.requests_completed);
        prom_metric(&b, "gptd_requests_cancelled_total", "counter",
                    "Requests cancelled (client gone or shutdown).", (double)m.requests_cancelled);
        prom_metric(&b, "gptd_requests_rejected_total", "counter",
                    "Requests refused at submission (queue full, draining).",
                    (double)m.requests_rejected);
        prom_metric(&b, "gptd_requests_failed_total", "counter", "Requests failed.",
                    (double)m.requests_failed);
        prom_metric(&b, "gptd_preemptions_total", "counter", "Sequences preempted.",
                    (double)m.preemptions);
        prom_metric(&b, "gptd_prompt_tokens_total", "counter", "Prompt tokens processed.",
                    (double)m.prompt_tokens);
        prom_metric(&b, "gptd_generation_tokens_total", "counter", "Tokens generated.",
                    (double)m.generation_tokens);
        prom_metric(&b, "gptd_steps_total", "counter", "Engine steps (forward passes).",
                    (double)m.steps);
        sbuf_puts(&b, "# HELP gptd_engine_phase_seconds_total Engine step time by phase "
                      "(schedule, forward, sample, output, finish).\n"
                      "# TYPE gptd_engine_phase_seconds_total counter\n");
        for (int i = 0; i < ENGINE_N_PHASES; i++) {
            sbuf_printf(&b, "gptd_engine_phase_seconds_total{phase=\"%s\"} %.17g\n",
                        engine_phase_names[i], m.phase_seconds[i]);
        }
        prom_histogram(&b, "gptd_step_seconds", "Duration of one engine step.", &m.step_seconds,
                       engine_hist_seconds_bounds);
        prom_histogram(&b, "gptd_batch_rows", "Rows (tokens) per forward pass.", &m.batch_rows,
                       engine_hist_rows_bounds);
        prom_histogram(&b, "gptd_queue_seconds", "Time requests spent queued.", &m.queue_seconds,
                       engine_hist_seconds_bounds);
        prom_histogram(&b, "gptd_ttft_seconds", "Time to first token.", &m.ttft_seconds,
                       engine_hist_seconds_bounds);
        prom_histogram(&b, "gptd_itl_seconds", "Inter-token latency.", &m.itl_seconds,
                       engine_hist_seconds_bounds);
        prom_histogram(&b, "gptd_e2e_seconds", "Request latency end to end.", &m.e2e_seconds,
                       engine_hist_seconds_bounds);
    }
    prom_metric(&b, "gptd_http_inflight_requests", "gauge",
                "Completion requests admitted and not finished.",
                (double)atomic_load(&s->n_inflight));
    struct conn_guard *g = &s->guard;
    prom_metric(&b, "gptd_connections_open", "gauge",
                "Open connections of the main listener (any phase, kept-alive included).",
                (double)conn_guard_open(g));
    prom_metric(&b, "gptd_connections_limit", "gauge",
                "Connections the main listener accepts in all (--connection-limit).",
                (double)g->limit);
    prom_counter_by(&b, "gptd_connections_rejected_total",
                    "Connections refused at accept, by reason.", "reason", "connection_limit",
                    atomic_load(&g->rejected_limit), "per_client_limit",
                    atomic_load(&g->rejected_per_client));
    prom_counter_by(&b, "gptd_connections_timed_out_total",
                    "Connections closed because a request's headers or body did not arrive in "
                    "time (--header-timeout, --body-timeout).",
                    "phase", "headers", atomic_load(&g->timed_out_headers), "body",
                    atomic_load(&g->timed_out_body));
    sbuf_puts(&b, "# HELP gptd_http_requests_total HTTP requests by route and status.\n"
                  "# TYPE gptd_http_requests_total counter\n");
    for (int r = 0; r < N_ROUTES; r++) {
        for (int st = 0; st < MAX_STATUS; st++) {
            uint64_t n = atomic_load(&s->http_counts[r][st]);
            if (n > 0) {
                sbuf_printf(&b, "gptd_http_requests_total{route=\"%s\",status=\"%d\"} %llu\n",
                            server_routes[r].path, st, (unsigned long long)n);
            }
        }
    }
    enum MHD_Result rc;
    if (b.failed) {
        rc = conn_respond_errorf(x, 500, "server_error", "out_of_memory", "out of memory");
    } else {
        rc = conn_respond_bytes(x, 200, "text/plain; version=0.0.4; charset=utf-8", b.data, b.len);
    }
    sbuf_finish(&b);
    return rc;
}
