/*
 * test_loadgen.c: Check suite for gptd-bench's SSE parser and statistics (bench/loadgen/):
 * known event streams give known events however the bytes are split, and known request
 * timings give the figures vLLM's serving benchmark would report.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>

#include "loadgen/sse.h"
#include "loadgen/stats.h"

struct collected {
    int n;
    char events[16][256];
};

static int collect(void *ctx, const char *data, size_t len) {
    struct collected *c = ctx;
    ck_assert_int_lt(c->n, 16);
    ck_assert_uint_lt(len, 256);
    memcpy(c->events[c->n], data, len);
    c->events[c->n][len] = '\0';
    ck_assert_uint_eq(strlen(c->events[c->n]), len);
    c->n++;
    return 0;
}

/* A stream with comments, data with and without the space, multi-line data, CRLF and CR line
 * ends, an event: field and a trailing [DONE]. */
static const char stream[] = ": ping\n\n"
                             "data: {\"a\":1}\n\n"
                             "data:{\"b\":2}\r\n\r\n"
                             "event: message\ndata: line1\ndata: line2\n\n"
                             "id: 7\rdata: cr\r\r"
                             "data:\n\n"
                             "data: [DONE]\n\n";
static const char *const expected[] = {"{\"a\":1}", "{\"b\":2}", "line1\nline2",
                                       "cr",        "",          "[DONE]"};

static void check_expected(const struct collected *c) {
    ck_assert_int_eq(c->n, 6);
    for (int i = 0; i < 6; i++) {
        ck_assert_str_eq(c->events[i], expected[i]);
    }
}

START_TEST(test_sse_parses_whole_stream) {
    struct collected c = {0};
    struct sse_parser p;
    sse_parser_init(&p, collect, &c);
    ck_assert_int_eq(sse_parser_feed(&p, stream, sizeof(stream) - 1), 0);
    check_expected(&c);
    sse_parser_finish(&p);
}
END_TEST

/* Every split point, and byte-by-byte: the events do not depend on how bytes arrive. */
START_TEST(test_sse_same_events_at_every_split) {
    size_t len = sizeof(stream) - 1;
    for (size_t cut = 0; cut <= len; cut++) {
        struct collected c = {0};
        struct sse_parser p;
        sse_parser_init(&p, collect, &c);
        sse_parser_feed(&p, stream, cut);
        sse_parser_feed(&p, stream + cut, len - cut);
        check_expected(&c);
        sse_parser_finish(&p);
    }
    struct collected c = {0};
    struct sse_parser p;
    sse_parser_init(&p, collect, &c);
    for (size_t i = 0; i < len; i++) {
        sse_parser_feed(&p, stream + i, 1);
    }
    check_expected(&c);
    sse_parser_finish(&p);
}
END_TEST

START_TEST(test_sse_event_without_blank_line_is_not_dispatched) {
    struct collected c = {0};
    struct sse_parser p;
    sse_parser_init(&p, collect, &c);
    const char s[] = "data: one\n\ndata: incomplete\n";
    sse_parser_feed(&p, s, sizeof(s) - 1);
    ck_assert_int_eq(c.n, 1);
    ck_assert_str_eq(c.events[0], "one");
    sse_parser_finish(&p);
}
END_TEST

static int stop_after_first(void *ctx, const char *data, size_t len) {
    (void)data;
    (void)len;
    (*(int *)ctx)++;
    return -1;
}

START_TEST(test_sse_callback_can_stop_the_parser) {
    int n = 0;
    struct sse_parser p;
    sse_parser_init(&p, stop_after_first, &n);
    const char s[] = "data: a\n\ndata: b\n\n";
    ck_assert_int_eq(sse_parser_feed(&p, s, sizeof(s) - 1), -1);
    ck_assert_int_eq(n, 1);
    ck_assert_int_eq(sse_parser_feed(&p, s, sizeof(s) - 1), -1);
    ck_assert_int_eq(n, 1);
    sse_parser_finish(&p);
}
END_TEST

START_TEST(test_percentile_interpolates_like_numpy) {
    struct series s;
    series_init(&s);
    /* numpy.percentile([1,2,3,4], [0,50,90,99,100]) = 1, 2.5, 3.7, 3.97, 4 */
    for (int i = 4; i >= 1; i--) {
        series_push(&s, (double)i);
    }
    ck_assert_double_eq_tol(series_percentile(&s, 0), 1.0, 1e-12);
    ck_assert_double_eq_tol(series_percentile(&s, 50), 2.5, 1e-12);
    ck_assert_double_eq_tol(series_percentile(&s, 90), 3.7, 1e-12);
    ck_assert_double_eq_tol(series_percentile(&s, 99), 3.97, 1e-12);
    ck_assert_double_eq_tol(series_percentile(&s, 100), 4.0, 1e-12);
    ck_assert_double_eq_tol(series_mean(&s), 2.5, 1e-12);
    series_finish(&s);
    struct series empty;
    series_init(&empty);
    ck_assert_double_eq(series_percentile(&empty, 50), 0.0);
    series_finish(&empty);
}
END_TEST

START_TEST(test_summary_matches_vllm_definitions) {
    /* Two completed requests and one failed one over a 2-second run.
     * A: sent at 0, first chunk at 100 ms, last at 500 ms, usage 5 tokens:
     *    TTFT 100, E2EL 500, TPOT (500 - 100) / 4 = 100.
     * B: sent at 1000 ms, first at 1300, end 1300, no usage, 1 chunk: TTFT 300, E2EL 300,
     *    no TPOT (one token).
     * C: failed: counted as failed, ignored by every figure. */
    struct request_record r[3];
    memset(r, 0, sizeof(r));
    r[0] = (struct request_record){.t_send_us = 0,
                                   .t_first_us = 100000,
                                   .t_last_us = 500000,
                                   .t_end_us = 500000,
                                   .n_chunks = 5,
                                   .usage_completion_tokens = 5,
                                   .http_status = 200,
                                   .is_ok = 1};
    r[1] = (struct request_record){.t_send_us = 1000000,
                                   .t_first_us = 1300000,
                                   .t_last_us = 1300000,
                                   .t_end_us = 1300000,
                                   .n_chunks = 1,
                                   .usage_completion_tokens = -1,
                                   .http_status = 200,
                                   .is_ok = 1};
    r[2] = (struct request_record){
        .t_end_us = 50000, .usage_completion_tokens = -1, .http_status = 503, .is_ok = 0};
    struct series itl;
    series_init(&itl);
    series_push(&itl, 100.0);
    series_push(&itl, 100.0);
    series_push(&itl, 150.0);
    series_push(&itl, 50.0);
    struct bench_summary s;
    bench_summarize(r, 3, &itl, 2.0, &s);
    ck_assert_uint_eq(s.n_completed, 2);
    ck_assert_uint_eq(s.n_failed, 1);
    ck_assert_int_eq(s.total_output_tokens, 6);
    ck_assert_double_eq_tol(s.request_throughput, 1.0, 1e-12);
    ck_assert_double_eq_tol(s.output_throughput, 3.0, 1e-12);
    ck_assert_double_eq_tol(s.ttft_mean, 200.0, 1e-9);
    ck_assert_double_eq_tol(s.ttft_p50, 200.0, 1e-9);
    ck_assert_double_eq_tol(s.ttft_p99, 298.0, 1e-9);
    ck_assert_double_eq_tol(s.tpot_mean, 100.0, 1e-9);
    ck_assert_double_eq_tol(s.e2el_mean, 400.0, 1e-9);
    ck_assert_double_eq_tol(s.itl_mean, 100.0, 1e-9);
    ck_assert_double_eq_tol(s.itl_p50, 100.0, 1e-9);
    series_finish(&itl);
}
END_TEST

static Suite *loadgen_suite(void) {
    Suite *s = suite_create("loadgen");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_sse_parses_whole_stream);
    tcase_add_test(tc, test_sse_same_events_at_every_split);
    tcase_add_test(tc, test_sse_event_without_blank_line_is_not_dispatched);
    tcase_add_test(tc, test_sse_callback_can_stop_the_parser);
    tcase_add_test(tc, test_percentile_interpolates_like_numpy);
    tcase_add_test(tc, test_summary_matches_vllm_definitions);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(loadgen_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
