/*
 * test_stop.c: Check suite for src/sampling's stop-string matcher (struct stop_matcher).
 *
 * The reference is the definition itself, computed on the whole text: the stop-string
 * occurrence that ends earliest (the longest at that end) cuts the text before it. Every test
 * pushes the text in pieces — split at every possible character boundary, in two and in three
 * pieces — and checks that the released pieces concatenate to the reference, that the held
 * tail after every push is exactly the longest suffix that is still a stop-string prefix, and
 * that every released piece is valid UTF-8.
 */
#include <stdlib.h>
#include <string.h>

#include <check.h>

#include <gptd/sampling.h>

struct ref_cut {
    size_t len;
    int32_t i_stop;
};

static struct ref_cut reference_cut(const char *text, const char *const *stops, int n_stop) {
    size_t n = strlen(text);
    for (size_t e = 1; e <= n; e++) {
        int32_t best = -1;
        for (int i = 0; i < n_stop; i++) {
            size_t sl = strlen(stops[i]);
            if (sl <= e && memcmp(text + e - sl, stops[i], sl) == 0 &&
                (best < 0 || sl > strlen(stops[best]))) {
                best = i;
            }
        }
        if (best >= 0) {
            return (struct ref_cut){e - strlen(stops[best]), best};
        }
    }
    return (struct ref_cut){n, -1};
}

/* The longest suffix of text[0, n) that is a proper prefix of some stop string. */
static size_t reference_holdback(const char *text, size_t n, const char *const *stops, int n_stop) {
    size_t best = 0;
    for (int i = 0; i < n_stop; i++) {
        size_t sl = strlen(stops[i]);
        for (size_t k = 1; k < sl && k <= n; k++) {
            if (memcmp(text + n - k, stops[i], k) == 0 && k > best) {
                best = k;
            }
        }
    }
    return best;
}

static bool is_utf8_boundary(const char *text, size_t i) {
    return ((unsigned char)text[i] & 0xc0) != 0x80;
}

static bool valid_utf8(const char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned char c = (unsigned char)s[i];
        size_t k = c < 0x80 ? 1 : c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc0 ? 2 : 0;
        if (k == 0 || i + k > n) {
            return false;
        }
        for (size_t j = 1; j < k; j++) {
            if (((unsigned char)s[i + j] & 0xc0) != 0x80) {
                return false;
            }
        }
        i += k;
    }
    return true;
}

static struct stop_matcher *make_matcher(const char *const *stops, int n_stop) {
    struct sampling_params p;
    sampling_params_init_default(&p);
    for (int i = 0; i < n_stop; i++) {
        ck_assert_int_eq(sampling_params_add_stop(&p, stops[i], strlen(stops[i])), 0);
    }
    const char *param;
    ck_assert_int_eq(sampling_params_validate(&p, 10, &param, NULL, 0), 0);
    struct stop_matcher *m = stop_matcher_create(&p);
    ck_assert_ptr_nonnull(m);
    return m;
}

/*
 * Pushes text cut at the given byte offsets (cuts[0..n_cuts), ascending, on character
 * boundaries) and checks everything the file comment promises.
 */
static void run_split(const char *text, const char *const *stops, int n_stop, const size_t *cuts,
                      int n_cuts) {
    struct ref_cut want = reference_cut(text, stops, n_stop);
    struct stop_matcher *m = make_matcher(stops, n_stop);
    size_t n = strlen(text);
    static char got[8192];
    size_t got_len = 0;
    int32_t i_stop = -1;
    size_t start = 0;
    for (int c = 0; c <= n_cuts && i_stop < 0; c++) {
        size_t end = c < n_cuts ? cuts[c] : n;
        struct stop_output out;
        ck_assert_int_eq(stop_matcher_push(m, text + start, end - start, true, &out), 0);
        ck_assert(valid_utf8(out.text, out.len));
        memcpy(got + got_len, out.text, out.len);
        got_len += out.len;
        i_stop = out.i_stop;
        if (i_stop < 0) {
            /* Released + held == pushed, and the held tail is the minimal one. */
            size_t held = end - got_len;
            ck_assert_uint_eq(held, reference_holdback(text, end, stops, n_stop));
            ck_assert(memcmp(got, text, got_len) == 0);
        }
        start = end;
    }
    if (i_stop < 0) {
        struct stop_output out;
        stop_matcher_finish(m, &out);
        ck_assert(valid_utf8(out.text, out.len));
        memcpy(got + got_len, out.text, out.len);
        got_len += out.len;
    }
    ck_assert_msg(got_len == want.len && memcmp(got, text, want.len) == 0,
                  "text \"%s\": released %zu bytes \"%.*s\", want %zu", text, got_len, (int)got_len,
                  got, want.len);
    ck_assert_int_eq(i_stop, want.i_stop);
    ck_assert(stop_matcher_is_stopped(m) == (want.i_stop >= 0));
    stop_matcher_destroy(m);
}

/* Every split into one, two and three pieces at character boundaries. */
static void run_all_splits(const char *text, const char *const *stops, int n_stop) {
    size_t n = strlen(text);
    run_split(text, stops, n_stop, NULL, 0);
    for (size_t a = 0; a <= n; a++) {
        if (a < n && !is_utf8_boundary(text, a)) {
            continue;
        }
        size_t cuts[2] = {a, 0};
        run_split(text, stops, n_stop, cuts, 1);
        for (size_t b = a; b <= n; b++) {
            if (b < n && !is_utf8_boundary(text, b)) {
                continue;
            }
            cuts[1] = b;
            run_split(text, stops, n_stop, cuts, 2);
        }
    }
}

struct stop_case {
    const char *text;
    const char *stops[4];
    int n_stop;
};

static const struct stop_case cases[] = {
    /* A plain match, split everywhere. */
    {"Hello world, and more", {"world"}, 1},
    /* No match: everything is released, some of it only at finish. */
    {"Hello wor", {"world"}, 1},
    {"abababab", {"abc"}, 1},
    /* A false start, then the real match: "wor" is held, released, held again. */
    {"the word worm world", {"world"}, 1},
    /* Overlapping stop strings: the one that ends first wins ("bc" in "abcd"). */
    {"xxabcdyy", {"abcd", "bc"}, 2},
    {"xxabcdyy", {"abc", "bcd"}, 2},
    /* Two end on the same byte: the longer one cuts earlier. */
    {"zzabcz", {"bc", "abc"}, 2},
    /* A stop string that is a prefix of another. */
    {"one two three", {"t", "two"}, 2},
    /* Self-overlapping stop string. */
    {"aaaab", {"aab"}, 1},
    /* Newline stops, as in chat-like prompts. */
    {"Q: hi\n\nA: hello\n\nQ:", {"\n\n", "Q:"}, 2},
    /* Multi-byte characters: the stop string is a 2-, 3- and 4-byte character. */
    {"caf\xc3\xa9 cr\xc3\xa8me br\xc3\xbbl\xc3\xa9"
     "e",
     {"\xc3\xa8"},
     1},
    {"ok \xe2\x9c\x93 done \xe2\x9c\x97", {"\xe2\x9c\x97"}, 1},
    {"smile \xf0\x9f\x98\x80 grin \xf0\x9f\x98\x81!", {"\xf0\x9f\x98\x81!"}, 1},
    /* A stop string whose first bytes equal another character's (same lead byte). */
    {"\xc3\xa9\xc3\xa8\xc3\xa9\xc3\xa9", {"\xc3\xa9\xc3\xa9"}, 1},
    /* Match at the very start and at the very end. */
    {"STOP here", {"STOP"}, 1},
    {"the end STOP", {"STOP"}, 1},
};

START_TEST(test_stop_matches_reference_at_every_split) {
    run_all_splits(cases[_i].text, cases[_i].stops, cases[_i].n_stop);
}
END_TEST

START_TEST(test_stop_holds_back_only_a_possible_prefix) {
    const char *stops[] = {"world"};
    struct stop_matcher *m = make_matcher(stops, 1);
    struct stop_output out;
    stop_matcher_push(m, "Hello w", 7, true, &out);
    ck_assert_uint_eq(out.len, 6); /* "Hello " released, "w" held */
    ck_assert(memcmp(out.text, "Hello ", 6) == 0);
    stop_matcher_push(m, "or", 2, true, &out);
    ck_assert_uint_eq(out.len, 0); /* "wor" held */
    stop_matcher_push(m, "m", 1, true, &out);
    ck_assert_uint_eq(out.len, 4); /* "worm" can no longer match: released at once */
    ck_assert(memcmp(out.text, "worm", 4) == 0);
    stop_matcher_push(m, " wo", 3, true, &out);
    ck_assert_uint_eq(out.len, 1);
    stop_matcher_push(m, "rld!", 4, true, &out);
    ck_assert_uint_eq(out.len, 0);
    ck_assert_int_eq(out.i_stop, 0);
    ck_assert(stop_matcher_is_stopped(m));
    /* After a match nothing more comes out. */
    stop_matcher_push(m, "more", 4, true, &out);
    ck_assert_uint_eq(out.len, 0);
    stop_matcher_finish(m, &out);
    ck_assert_uint_eq(out.len, 0);
    stop_matcher_destroy(m);
}
END_TEST

START_TEST(test_stop_ignores_text_pushed_before_min_tokens) {
    const char *stops[] = {"END"};
    struct stop_matcher *m = make_matcher(stops, 1);
    struct stop_output out;
    stop_matcher_push(m, "an END and E", 12, false, &out);
    ck_assert_uint_eq(out.len, 12); /* released whole, no match, nothing held */
    ck_assert_int_eq(out.i_stop, -1);
    stop_matcher_push(m, "ND", 2, true, &out); /* "E" was already released: no match */
    ck_assert_uint_eq(out.len, 2);
    stop_matcher_push(m, " END", 4, true, &out);
    ck_assert_uint_eq(out.len, 1);
    ck_assert_int_eq(out.i_stop, 0);
    stop_matcher_destroy(m);
}
END_TEST

START_TEST(test_stop_without_strings_releases_everything) {
    struct stop_matcher *m = make_matcher(NULL, 0);
    struct stop_output out;
    stop_matcher_push(m, "abc", 3, true, &out);
    ck_assert_uint_eq(out.len, 3);
    stop_matcher_push(m, "", 0, true, &out);
    ck_assert_uint_eq(out.len, 0);
    stop_matcher_finish(m, &out);
    ck_assert_uint_eq(out.len, 0);
    stop_matcher_destroy(m);
}
END_TEST

START_TEST(test_stop_handles_pieces_longer_than_its_buffer) {
    enum { N = 5000 };
    static char text[N + 1];
    for (int i = 0; i < N; i++) {
        text[i] = (char)('a' + i % 26);
    }
    memcpy(text + 4000, "<|end|>", 7);
    text[N] = '\0';
    const char *stops[] = {"<|end|>"};
    size_t cuts[2] = {3998, 4003}; /* the stop string spans the second cut */
    run_split(text, stops, 1, cuts, 2);
    size_t one[1] = {1};
    run_split(text, stops, 1, one, 1);
}
END_TEST

START_TEST(test_stop_max_length_strings_match_across_pieces) {
    static char stop[SAMPLING_MAX_STOP_BYTES + 1];
    static char text[3 * SAMPLING_MAX_STOP_BYTES];
    memset(stop, 'q', SAMPLING_MAX_STOP_BYTES);
    stop[SAMPLING_MAX_STOP_BYTES - 1] = 'z';
    stop[SAMPLING_MAX_STOP_BYTES] = '\0';
    /* Many false starts: runs of 'q' one short of the stop string, then the real one. */
    memset(text, 'q', sizeof(text) - 1);
    text[100] = 'x';
    memcpy(text + 300, stop, SAMPLING_MAX_STOP_BYTES);
    text[sizeof(text) - 1] = '\0';
    const char *stops[] = {stop};
    for (size_t a = 0; a < sizeof(text) - 1; a += 37) {
        size_t cuts[1] = {a};
        run_split(text, stops, 1, cuts, 1);
    }
}
END_TEST

static Suite *stop_suite(void) {
    Suite *s = suite_create("stop");
    TCase *tc = tcase_create("splits");
    tcase_set_timeout(tc, 60);
    tcase_add_loop_test(tc, test_stop_matches_reference_at_every_split, 0,
                        sizeof(cases) / sizeof(cases[0]));
    tcase_add_test(tc, test_stop_handles_pieces_longer_than_its_buffer);
    tcase_add_test(tc, test_stop_max_length_strings_match_across_pieces);
    suite_add_tcase(s, tc);
    tc = tcase_create("holdback");
    tcase_add_test(tc, test_stop_holds_back_only_a_possible_prefix);
    tcase_add_test(tc, test_stop_ignores_text_pushed_before_min_tokens);
    tcase_add_test(tc, test_stop_without_strings_releases_everything);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(stop_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
