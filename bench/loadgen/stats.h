/*
 * stats.h: the serving figures gptd-bench reports, computed as vLLM's serving benchmark
 * (benchmarks/serve.py, calculate_metrics) defines them, so numbers compare across tools:
 *   TTFT  = time of the first streamed chunk - time the request was sent
 *   ITL   = every gap between consecutive chunks of one request
 *   TPOT  = (E2EL - TTFT) / (output_tokens - 1), for requests with more than one token
 *   E2EL  = time of the last byte - time the request was sent
 *   request throughput = completed requests / duration; output throughput = output tokens /
 *   duration (output tokens from the server's usage when it reports one, else chunks).
 * Percentiles interpolate linearly between closest ranks, as numpy.percentile does.
 */
#ifndef GPTD_BENCH_STATS_H
#define GPTD_BENCH_STATS_H

#include <stddef.h>
#include <stdint.h>

/* A growable array of doubles (milliseconds, usually). */
struct series {
    double *v;
    size_t n, cap;
};

void series_init(struct series *s);
void series_finish(struct series *s);
/* Returns 0, or -1 when out of memory. */
int series_push(struct series *s, double x);
double series_mean(const struct series *s);
/* p in [0, 100]. Sorts the series in place. 0 for an empty series. */
double series_percentile(struct series *s, double p);

/* What one request produced. */
struct request_record {
    int64_t t_send_us;
    int64_t t_first_us; /* 0 until the first chunk */
    int64_t t_last_us;
    int64_t t_end_us;
    int32_t n_chunks;
    int32_t usage_completion_tokens; /* -1 when the server sent no usage */
    int32_t usage_cached_tokens;     /* usage.prompt_tokens_details.cached_tokens, or -1 */
    int32_t turn;                    /* --turns: the request's turn in its conversation (1..) */
    long http_status;
    int is_ok; /* 200, a finish_reason seen and [DONE], no error event */
};

struct bench_summary {
    size_t n_completed, n_failed;
    double duration_s;
    double request_throughput, output_throughput;
    long total_output_tokens;
    double ttft_mean, ttft_p50, ttft_p90, ttft_p99;
    double tpot_mean, tpot_p50, tpot_p90, tpot_p99;
    double itl_mean, itl_p50, itl_p90, itl_p99;
    double e2el_mean, e2el_p50, e2el_p99;
};

/* Output tokens of one record: usage when reported, else the number of chunks. */
int32_t record_output_tokens(const struct request_record *r);

/*
 * Computes the summary over n records; itl holds every inter-chunk gap (ms) of the completed
 * requests (collected as chunks arrive). duration_s is the wall time of the run.
 */
void bench_summarize(const struct request_record *records, size_t n, struct series *itl,
                     double duration_s, struct bench_summary *out);

#endif
