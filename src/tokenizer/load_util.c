/*
 * load_util.c: small helpers every file of src/tokenizer/ shares: error messages, reading a
 * file or a JSON file whole, strict UTF-8 validation and a substring search.
 *
 * Called at load time (files, messages) and on the encode path (UTF-8 check, search); all
 * functions are pure or touch only their arguments, so any thread may call them.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>

#include "tokenizer_internal.h"

/* Files larger than this are refused before reading: Gemma 3's tokenizer.json is 33 MB. */
#define MAX_FILE_BYTES (256u << 20)

void tok_set_err(char *err, size_t err_size, const char *fmt, ...) {
    if (err == NULL || err_size == 0) {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, err_size, fmt, ap);
    va_end(ap);
}

const char *tok_quote(const char *s, size_t n, char buf[48]) {
    size_t m = n < 40 ? n : 40;
    for (size_t i = 0; i < m; i++) {
        unsigned char c = (unsigned char)s[i];
        buf[i] = (c >= 0x20 && c != 0x7f) ? (char)c : '?';
    }
    buf[m] = '\0';
    return buf;
}

char *tok_read_file(const char *path, size_t *n_bytes, char *err, size_t err_size) {
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        tok_set_err(err, err_size, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    char *buf = NULL;
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        tok_set_err(err, err_size, "%s: not a regular file", path);
        goto cleanup;
    }
    if ((unsigned long long)st.st_size > MAX_FILE_BYTES) {
        tok_set_err(err, err_size, "%s: too large (%lld bytes)", path, (long long)st.st_size);
        goto cleanup;
    }
    size_t size = (size_t)st.st_size;
    buf = malloc(size + 1);
    if (buf == NULL) {
        tok_set_err(err, err_size, "%s: out of memory", path);
        goto cleanup;
    }
    if (fread(buf, 1, size, f) != size) {
        tok_set_err(err, err_size, "%s: read error", path);
        free(buf);
        buf = NULL;
        goto cleanup;
    }
    buf[size] = '\0';
    *n_bytes = size;
cleanup:
    fclose(f);
    return buf;
}

void *tok_parse_json_file(const char *path, char **buf_out, char *err, size_t err_size) {
    size_t n;
    char *buf = tok_read_file(path, &n, err, err_size);
    if (buf == NULL) {
        return NULL;
    }
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(buf, n, &end, 0);
    if (root == NULL) {
        size_t at = (end != NULL && end >= buf && end <= buf + n) ? (size_t)(end - buf) : 0;
        tok_set_err(err, err_size, "%s: invalid JSON near byte %zu", path, at);
        free(buf);
        return NULL;
    }
    *buf_out = buf;
    return root;
}

size_t tok_utf8_lead_len(unsigned char c) {
    if (c < 0x80) {
        return 1;
    }
    if (c >= 0xc2 && c <= 0xdf) {
        return 2;
    }
    if (c >= 0xe0 && c <= 0xef) {
        return 3;
    }
    if (c >= 0xf0 && c <= 0xf4) {
        return 4;
    }
    return 0;
}

size_t tok_utf8_first_invalid(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        /* ASCII runs, 8 bytes at a time: most text is mostly ASCII. */
        while (i + 8 <= n) {
            uint64_t w;
            memcpy(&w, s + i, 8);
            if (w & 0x8080808080808080ull) {
                break;
            }
            i += 8;
        }
        if (i >= n) {
            break;
        }
        unsigned char c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t len = tok_utf8_lead_len(c);
        unsigned char lo = c == 0xe0 ? 0xa0 : c == 0xf0 ? 0x90 : 0x80;
        unsigned char hi = c == 0xed ? 0x9f : c == 0xf4 ? 0x8f : 0xbf;
        if (len < 2 || i + len > n || s[i + 1] < lo || s[i + 1] > hi) {
            return i;
        }
        for (size_t k = 2; k < len; k++) {
            if ((s[i + k] & 0xc0) != 0x80) {
                return i;
            }
        }
        i += len;
    }
    return n;
}

size_t tok_find(const char *hay, size_t n_hay, const char *needle, size_t n_needle) {
    if (n_needle == 0 || n_needle > n_hay) {
        return SIZE_MAX;
    }
    const char *p = hay;
    const char *last = hay + n_hay - n_needle;
    while (p <= last) {
        p = memchr(p, needle[0], (size_t)(last - p) + 1);
        if (p == NULL) {
            return SIZE_MAX;
        }
        if (memcmp(p, needle, n_needle) == 0) {
            return (size_t)(p - hay);
        }
        p++;
    }
    return SIZE_MAX;
}
