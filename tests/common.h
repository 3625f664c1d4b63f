/*
 * tests/common.h: where the test suites find their fixtures, shared by every Check suite.
 *
 * Committed fixtures live in tests/data/ (one folder each, with its PROVENANCE.md); meson passes
 * the folder's absolute path as GPTD_TESTDATA_DIR (the environment variable of the same name
 * overrides it). Fixtures that come from a registry package are not committed: tools/fetch-testdata
 * puts them in a cache outside the build folder, and registry_path() finds them there, or
 * fails the test with the command that fetches them.
 */
#ifndef GPTD_TESTS_COMMON_H
#define GPTD_TESTS_COMMON_H

#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

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

#endif
