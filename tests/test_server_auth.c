/*
 * test_server_auth.c: API-key checks (docs/RELIABILITY.md A01-A03 without HTTP): the Bearer scheme
 * is case-insensitive, the key is exact (no prefix, no case folding), every key is accepted.
 */
#include <stdlib.h>

#include <check.h>

#include "../src/server/auth.h"

struct auth_case {
    const char *header; /* NULL = no Authorization header */
    bool ok;
};

static const struct auth_case cases[] = {
    {NULL, false},
    {"", false},
    {"Bearer wrong", false},
    {"Bearer sk-test-KEY2", false}, /* key plus one character */
    {"Bearer sk-test-KE", false},   /* key minus its last character */
    {"Bearer sk-test-kEY", false},  /* one letter's case flipped */
    {"sk-test-KEY", false},         /* bare key */
    {"Basic sk-test-KEY", false},   /* another scheme */
    {"Bearersk-test-KEY", false},   /* no separator */
    {"Bearer ", false},             /* empty key */
    {"Bearer sk-test-KEY", true},
    {"bearer sk-test-KEY", true},  /* A03 */
    {"BEARER sk-test-KEY", true},  /* A03 */
    {"Bearer  sk-test-KEY", true}, /* several spaces */
    {"Bearer sk-test-KEY ", true}, /* trailing space */
    {"Bearer second-key", true},   /* any configured key */
};

START_TEST(test_auth_accepts_exactly_the_configured_keys) {
    char *keys[] = {"sk-test-KEY", "second-key"};
    struct auth_keys *k = auth_keys_create(keys, 2);
    ck_assert_ptr_nonnull(k);
    ck_assert(auth_keys_enabled(k));
    const struct auth_case *c = &cases[_i];
    ck_assert_msg(auth_check(k, c->header) == c->ok, "header '%s': want %s",
                  c->header ? c->header : "(none)", c->ok ? "accept" : "reject");
    auth_keys_destroy(k);
}
END_TEST

START_TEST(test_auth_without_keys_accepts_everything) {
    struct auth_keys *k = auth_keys_create(NULL, 0);
    ck_assert_ptr_nonnull(k);
    ck_assert(!auth_keys_enabled(k));
    ck_assert(auth_check(k, NULL));
    ck_assert(auth_check(k, "Bearer anything"));
    auth_keys_destroy(k);
    auth_keys_destroy(NULL);
}
END_TEST

int main(void) {
    Suite *s = suite_create("server_auth");
    TCase *tc = tcase_create("auth");
    tcase_add_loop_test(tc, test_auth_accepts_exactly_the_configured_keys, 0,
                        (int)(sizeof(cases) / sizeof(cases[0])));
    tcase_add_test(tc, test_auth_without_keys_accepts_everything);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
