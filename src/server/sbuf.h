/*
 * sbuf.h: a growable byte buffer with JSON writers, used to build every HTTP body the server
 * sends (error objects, completion bodies, SSE chunks) without a cJSON tree per token.
 *
 * Owned by one thread at a time (the HTTP thread serving the connection). Allocation failure is
 * sticky: after it every append is a no-op and sbuf_failed() says so, so builders can append
 * freely and check once at the end.
 */
#ifndef GPTD_SERVER_SBUF_H
#define GPTD_SERVER_SBUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct sbuf {
    char *data; /* NUL-terminated when len > 0 or after any append */
    size_t len;
    size_t cap;
    bool failed;
};

/* init/finish do not allocate the struct itself; finish frees the data and re-inits. */
void sbuf_init(struct sbuf *b);
void sbuf_finish(struct sbuf *b);
/* Empties the buffer, keeping its memory. */
void sbuf_reset(struct sbuf *b);
bool sbuf_failed(const struct sbuf *b);

void sbuf_append(struct sbuf *b, const char *s, size_t len);
void sbuf_puts(struct sbuf *b, const char *s);
void sbuf_printf(struct sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* A JSON string literal (with quotes). Invalid UTF-8 is replaced by U+FFFD (one per maximal
 * invalid subpart), control characters are escaped, so the output is always valid JSON. */
void sbuf_json_string(struct sbuf *b, const char *s, size_t len);
/* sbuf_json_string of a NUL-terminated string, or `null` when s is NULL. */
void sbuf_json_cstr(struct sbuf *b, const char *s);
/* A JSON number; non-finite values are written as -9999.0 / 9999.0 (vLLM's convention for
 * -inf logprobs), since JSON has no infinities. */
void sbuf_json_double(struct sbuf *b, double x);

/* Length of the longest valid UTF-8 prefix check: returns true when s[0..len) is strict UTF-8
 * (no overlongs, no surrogates, nothing above U+10FFFF). */
bool utf8_is_valid(const char *s, size_t len);

/* Number of code points in valid-or-not UTF-8 text (continuation bytes are not counted). */
size_t utf8_count_chars(const char *s, size_t len);

#endif
