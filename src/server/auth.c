/*
 * auth.c: constant-time API-key checks over SHA-256 digests (nettle). See auth.h.
 */
#include "auth.h"

#include <nettle/sha2.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct auth_keys {
    int n;
    uint8_t (*digests)[SHA256_DIGEST_SIZE]; /* (n, 32) */
};

static void digest(const char *s, size_t len, uint8_t out[SHA256_DIGEST_SIZE]) {
    struct sha256_ctx ctx;
    sha256_init(&ctx);
    sha256_update(&ctx, len, (const uint8_t *)s);
    sha256_digest(&ctx, SHA256_DIGEST_SIZE, out);
}

struct auth_keys *auth_keys_create(char *const *keys, int n) {
    struct auth_keys *k = calloc(1, sizeof(*k));
    if (k == NULL) {
        return NULL;
    }
    if (n > 0) {
        k->digests = calloc((size_t)n, sizeof(*k->digests));
        if (k->digests == NULL) {
            free(k);
            return NULL;
        }
    }
    for (int i = 0; i < n; i++) {
        digest(keys[i], strlen(keys[i]), k->digests[i]);
    }
    k->n = n;
    return k;
}

void auth_keys_destroy(struct auth_keys *k) {
    if (k == NULL) {
        return;
    }
    free(k->digests);
    free(k);
}

bool auth_keys_enabled(const struct auth_keys *k) {
    return k != NULL && k->n > 0;
}

static int lower(int c) {
    return c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c;
}

bool auth_check(const struct auth_keys *k, const char *header) {
    if (!auth_keys_enabled(k)) {
        return true;
    }
    if (header == NULL) {
        return false;
    }
    static const char scheme[] = "bearer";
    for (size_t i = 0; i < sizeof(scheme) - 1; i++) {
        if (lower((unsigned char)header[i]) != scheme[i]) {
            return false; /* also stops at the NUL of a short header */
        }
    }
    const char *p = header + sizeof(scheme) - 1;
    if (*p != ' ') {
        return false;
    }
    while (*p == ' ') {
        p++;
    }
    size_t len = strlen(p);
    while (len > 0 && (p[len - 1] == ' ' || p[len - 1] == '\t')) {
        len--;
    }
    if (len == 0) {
        return false;
    }
    uint8_t d[SHA256_DIGEST_SIZE];
    digest(p, len, d);
    /* Compare against every key, accumulating without branching on the data. */
    unsigned match = 0;
    for (int i = 0; i < k->n; i++) {
        unsigned diff = 0;
        for (size_t j = 0; j < SHA256_DIGEST_SIZE; j++) {
            diff |= (unsigned)(d[j] ^ k->digests[i][j]);
        }
        match |= (unsigned)(diff == 0);
    }
    return match != 0;
}
