/*
 * tests/common.h: what several Check suites repeated, as static inline functions: where the
 * fixtures are, reading a file whole, loading the tiny model (and its tokenizer) and its
 * transformers goldens, and whether the suite runs under valgrind. Helpers only the model
 * suites share (half-float references, the golden prompts fixture) are in model_common.h.
 *
 * Committed fixtures live in tests/data/ (one folder each, with its PROVENANCE.md); meson passes
 * the folder's absolute path as GPTD_TESTDATA_DIR (the environment variable of the same name
 * overrides it). Fixtures that come from a registry package are not committed: tools/fetch-testdata
 * puts them in a cache outside the build folder, and registry_path() finds them there, or
 * fails the test with the command that fetches them.
 *
 * The helpers that fail with ck_assert work in tests and in checked or unchecked fixtures (Check
 * reports a failed unchecked fixture and skips its test case).
 */
#ifndef GPTD_TESTS_COMMON_H
#define GPTD_TESTS_COMMON_H

#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <check.h>
#include <cjson/cJSON.h>

#include <gptd/model.h>
#include <gptd/tokenizer.h>

#ifndef GPTD_TESTDATA_DIR
#error "meson passes -DGPTD_TESTDATA_DIR=<source>/tests/data"
#endif

/* The committed fixtures' folder. */
static inline const char *testdata_dir(void) {
    const char *d = getenv("GPTD_TESTDATA_DIR");
    return d != NULL && d[0] != '\0' ? d : GPTD_TESTDATA_DIR;
}

/* out = tests/data/REL. Returns out. */
static inline const char *testdata_path(char *out, size_t n, const char *rel) {
    int k = snprintf(out, n, "%s/%s", testdata_dir(), rel);
    if (k < 0 || (size_t)k >= n) {
        fprintf(stderr, "fixture path too long: %s/%s\n", testdata_dir(), rel);
        abort();
    }
    return out;
}

/* The tiny random GPT-2 with transformers' goldens (tests/data/gpt2-tiny-random). */
static inline const char *tiny_model_dir(char *out, size_t n) {
    return testdata_path(out, n, "gpt2-tiny-random");
}

/* The cache of registry fixtures, as tools/fetch-testdata computes it. */
static inline const char *registry_cache_dir(char *out, size_t n) {
    const char *d = getenv("GPTD_TESTDATA_CACHE");
    const char *xdg = getenv("XDG_CACHE_HOME");
    const char *home = getenv("HOME");
    if (d != NULL && d[0] != '\0') {
        snprintf(out, n, "%s", d);
    } else if (xdg != NULL && xdg[0] != '\0') {
        snprintf(out, n, "%s/gptd/testdata", xdg);
    } else {
        snprintf(out, n, "%s/.cache/gptd/testdata", home != NULL ? home : "");
    }
    return out;
}

/* out = <cache>/FIXTURE/FILE. Returns out, or NULL after printing which command fetches it when
 * the file is not there (the caller fails its test: missing data is never a silent skip). */
static inline const char *registry_path(char *out, size_t n, const char *fixture,
                                        const char *file) {
    char cache[1024];
    registry_cache_dir(cache, sizeof(cache));
    int k = snprintf(out, n, "%s/%s/%s", cache, fixture, file);
    struct stat st;
    if (k < 0 || (size_t)k >= n || stat(out, &st) != 0) {
        fprintf(stderr, "missing test data %s/%s (looked in %s): run tools/fetch-testdata %s\n",
                fixture, file, cache, fixture);
        return NULL;
    }
    return out;
}

/* Whether meson's valgrind setup runs the suite (GPTD_UNDER_VALGRIND=1): ~50x slower, so the
 * longest loops run fewer steps, with the same assertions on each. */
static inline int under_valgrind(void) {
    const char *v = getenv("GPTD_UNDER_VALGRIND");
    return v != NULL && v[0] == '1';
}

/* The whole of PATH, NUL-terminated (len, when not NULL, gets its size without the NUL), or
 * NULL when it cannot be read. The caller frees it. */
static inline char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        return NULL;
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = n >= 0 ? malloc((size_t)n + 1) : NULL;
    if (buf != NULL && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf != NULL) {
        buf[n] = '\0';
        if (len != NULL) {
            *len = (size_t)n;
        }
    }
    return buf;
}

/* The tiny model and, when tok is not NULL, its tokenizer; fails with the loader's error. */
static inline struct model *load_tiny_model(struct tokenizer **tok) {
    char dir[1024];
    tiny_model_dir(dir, sizeof(dir));
    char err[512] = "";
    struct model *m = model_load(dir, err, sizeof(err));
    ck_assert_msg(m != NULL, "model_load: %s", err);
    if (tok != NULL) {
        *tok = tokenizer_load(dir, err, sizeof(err));
        ck_assert_msg(*tok != NULL, "tokenizer_load: %s", err);
    }
    return m;
}

/* The tiny model's golden/NAME (forward.json, generate.json) parsed; the caller deletes it. */
static inline cJSON *read_golden_json(const char *name) {
    char dir[1024];
    char path[1200];
    snprintf(path, sizeof(path), "%s/golden/%s", tiny_model_dir(dir, sizeof(dir)), name);
    char *text = read_file(path, NULL);
    ck_assert_msg(text != NULL, "cannot read %s", path);
    cJSON *json = cJSON_Parse(text);
    free(text);
    ck_assert_msg(json != NULL, "%s is not JSON", path);
    return json;
}

#endif
