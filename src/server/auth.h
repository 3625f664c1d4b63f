/*
 * auth.h: API-key checks for `Authorization: Bearer KEY`, as vLLM does them: the scheme is
 * matched case-insensitively (RFC 7235), the key by comparing SHA-256 digests in constant time
 * against every configured key without an early exit, so neither the content nor the length of
 * a key leaks through timing. Keys are never logged.
 *
 * auth_keys_create on the main thread; auth_check from any HTTP thread (read-only).
 */
#ifndef GPTD_SERVER_AUTH_H
#define GPTD_SERVER_AUTH_H

#include <stdbool.h>
#include <stddef.h>

struct auth_keys;

/* Hashes the n keys (copies nothing else). NULL when out of memory. n may be 0. */
struct auth_keys *auth_keys_create(char *const *keys, int n);
/* NULL is a no-op. */
void auth_keys_destroy(struct auth_keys *k);
/* Whether any key is configured. */
bool auth_keys_enabled(const struct auth_keys *k);
/* True when header (the Authorization value, may be NULL) carries one of the keys. */
bool auth_check(const struct auth_keys *k, const char *header);

#endif
