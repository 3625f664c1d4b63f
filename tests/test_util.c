/*
 * test_util.c: Check suite for src/util (log level parsing, clocks).
 */
#include <stdlib.h>

#include <check.h>

#include <gptd/util.h>

START_TEST(test_log_level_parse_accepts_known_names) {
    enum log_level level;
    ck_assert_int_eq(log_level_parse("error", &level), 0);
    ck_assert_int_eq(level, LOG_LEVEL_ERROR);
    ck_assert_int_eq(log_level_parse("debug", &level), 0);
    ck_assert_int_eq(level, LOG_LEVEL_DEBUG);
}
END_TEST

START_TEST(test_log_level_parse_rejects_unknown_names) {
    enum log_level level = LOG_LEVEL_WARN;
    ck_assert_int_eq(log_level_parse("verbose", &level), -1);
    ck_assert_int_eq(log_level_parse("", &level), -1);
    ck_assert_int_eq(level, LOG_LEVEL_WARN);
}
END_TEST

START_TEST(test_log_set_level_filters) {
    log_set_level(LOG_LEVEL_ERROR);
    ck_assert_int_eq(log_get_level(), LOG_LEVEL_ERROR);
    log_info("this line must be dropped");
    log_set_level(LOG_LEVEL_INFO);
    ck_assert_int_eq(log_get_level(), LOG_LEVEL_INFO);
}
END_TEST

START_TEST(test_time_now_us_is_monotonic) {
    int64_t a = time_now_us();
    int64_t b = time_now_us();
    ck_assert_int_ge(b, a);
    ck_assert_int_gt(time_wall_s(), 1700000000);
}
END_TEST

static Suite *util_suite(void) {
    Suite *s = suite_create("util");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_log_level_parse_accepts_known_names);
    tcase_add_test(tc, test_log_level_parse_rejects_unknown_names);
    tcase_add_test(tc, test_log_set_level_filters);
    tcase_add_test(tc, test_time_now_us_is_monotonic);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(util_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
