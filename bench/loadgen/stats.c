/*
 * stats.c: percentiles and the vLLM-compatible serving summary (see stats.h).
 */
#include "stats.h"

#include <stdlib.h>
#include <string.h>

void series_init(struct series *s) {
    memset(s, 0, sizeof(*s));
}

void series_finish(struct series *s) {
    free(s->v);
    memset(s, 0, sizeof(*s));
}

int series_push(struct series *s, double x) {
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 1024;
        double *v = realloc(s->v, cap * sizeof(double));
        if (v == NULL) {
            return -1;
        }
        s->v = v;
        s->cap = cap;
    }
    s->v[s->n++] = x;
    return 0;
}

double series_mean(const struct series *s) {
    if (s->n == 0) {
        return 0.0;
    }
    double sum = 0.0;
    for (size_t i = 0; i < s->n; i++) {
        sum += s->v[i];
    }
    return sum / (double)s->n;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

double series_percentile(struct series *s, double p) {
    if (s->n == 0) {
        return 0.0;
    }
    qsort(s->v, s->n, sizeof(double), cmp_double);
    double rank = p / 100.0 * (double)(s->n - 1);
    size_t lo = (size_t)rank;
    if (lo + 1 >= s->n) {
        return s->v[s->n - 1];
    }
    double frac = rank - (double)lo;
    return s->v[lo] + (s->v[lo + 1] - s->v[lo]) * frac;
}

int32_t record_output_tokens(const struct request_record *r) {
    return r->usage_completion_tokens >= 0 ? r->usage_completion_tokens : r->n_chunks;
}

void bench_summarize(const struct request_record *records, size_t n, struct series *itl,
                     double duration_s, struct bench_summary *out) {
    memset(out, 0, sizeof(*out));
    struct series ttft, tpot, e2el;
    series_init(&ttft);
    series_init(&tpot);
    series_init(&e2el);
    for (size_t i = 0; i < n; i++) {
        const struct request_record *r = &records[i];
        if (!r->is_ok) {
            out->n_failed++;
            continue;
        }
        out->n_completed++;
        int32_t tokens = record_output_tokens(r);
        out->total_output_tokens += tokens;
        double t_ttft = r->t_first_us > 0 ? (double)(r->t_first_us - r->t_send_us) / 1000.0 : 0.0;
        double t_e2el = (double)(r->t_end_us - r->t_send_us) / 1000.0;
        series_push(&ttft, t_ttft);
        series_push(&e2el, t_e2el);
        if (tokens > 1) {
            series_push(&tpot, (t_e2el - t_ttft) / (double)(tokens - 1));
        }
    }
    out->duration_s = duration_s;
    if (duration_s > 0.0) {
        out->request_throughput = (double)out->n_completed / duration_s;
        out->output_throughput = (double)out->total_output_tokens / duration_s;
    }
    out->ttft_mean = series_mean(&ttft);
    out->ttft_p50 = series_percentile(&ttft, 50);
    out->ttft_p90 = series_percentile(&ttft, 90);
    out->ttft_p99 = series_percentile(&ttft, 99);
    out->tpot_mean = series_mean(&tpot);
    out->tpot_p50 = series_percentile(&tpot, 50);
    out->tpot_p90 = series_percentile(&tpot, 90);
    out->tpot_p99 = series_percentile(&tpot, 99);
    out->itl_mean = series_mean(itl);
    out->itl_p50 = series_percentile(itl, 50);
    out->itl_p90 = series_percentile(itl, 90);
    out->itl_p99 = series_percentile(itl, 99);
    out->e2el_mean = series_mean(&e2el);
    out->e2el_p50 = series_percentile(&e2el, 50);
    out->e2el_p99 = series_percentile(&e2el, 99);
    series_finish(&ttft);
    series_finish(&tpot);
    series_finish(&e2el);
}
