/*
 * bench_util.h: small helpers the benchmark programs share.
 */
#ifndef GPTD_BENCH_UTIL_H
#define GPTD_BENCH_UTIL_H

#include <stdio.h>
#include <stdlib.h>

/* The whole file, NUL-terminated (malloc'd; *len its size), or NULL. */
static inline char *bench_read_file(const char *path, size_t *len) {
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
        *len = (size_t)n;
    }
    return buf;
}

#endif
