/*
 * sbuf.c: growable buffer and JSON writers for the HTTP layer (see sbuf.h).
 */
#include "sbuf.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void sbuf_init(struct sbuf *b) {
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
    b->failed = false;
}

void sbuf_finish(struct sbuf *b) {
    free(b->data);
    sbuf_init(b);
}

void sbuf_reset(struct sbuf *b) {
    b->len = 0;
    if (b->data != NULL) {
        b->data[0] = '\0';
    }
}

bool sbuf_failed(const struct sbuf *b) {
    return b->failed;
}

/* Makes room for extra more bytes plus the NUL. */
static bool reserve(struct sbuf *b, size_t extra) {
    if (b->failed) {
        return false;
    }
    if (b->len + extra + 1 <= b->cap) {
        return true;
    }
    size_t cap = b->cap == 0 ? 256 : b->cap;
    while (cap < b->len + extra + 1) {
        if (cap > SIZE_MAX / 2) {
            b->failed = true;
            return false;
        }
        cap *= 2;
    }
    char *p = realloc(b->data, cap);
    if (p == NULL) {
        b->failed = true;
        return false;
    }
    b->data = p;
    b->cap = cap;
    return true;
}

void sbuf_append(struct sbuf *b, const char *s, size_t len) {
    if (!reserve(b, len)) {
        return;
    }
    if (len > 0) {
        memcpy(b->data + b->len, s, len);
    }
    b->len += len;
    b->data[b->len] = '\0';
}

void sbuf_puts(struct sbuf *b, const char *s) {
    sbuf_append(b, s, strlen(s));
}

void sbuf_printf(struct sbuf *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || !reserve(b, (size_t)n)) {
        b->failed = true;
        return;
    }
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

/*
 * Length of the valid UTF-8 character at s (1..4), or minus the length of the maximal invalid
 * subpart (Unicode's "maximal subpart" rule, as Python's errors="replace" uses) when invalid.
 */
static int utf8_char(const unsigned char *s, size_t len) {
    unsigned char c = s[0];
    if (c < 0x80) {
        return 1;
    }
    int n;
    unsigned char lo = 0x80, hi = 0xbf; /* allowed range of the second byte */
    if (c >= 0xc2 && c <= 0xdf) {
        n = 2;
    } else if (c == 0xe0) {
        n = 3;
        lo = 0xa0;
    } else if (c == 0xed) {
        n = 3;
        hi = 0x9f; /* no surrogates */
    } else if (c >= 0xe1 && c <= 0xef) {
        n = 3;
    } else if (c == 0xf0) {
        n = 4;
        lo = 0x90;
    } else if (c == 0xf4) {
        n = 4;
        hi = 0x8f;
    } else if (c >= 0xf1 && c <= 0xf3) {
        n = 4;
    } else {
        return -1;
    }
    for (int k = 1; k < n; k++) {
        if ((size_t)k >= len) {
            return -k;
        }
        unsigned char ck = s[k];
        if (k == 1 ? (ck < lo || ck > hi) : (ck & 0xc0) != 0x80) {
            return -k;
        }
    }
    return n;
}

bool utf8_is_valid(const char *s, size_t len) {
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < len) {
        int n = utf8_char(u + i, len - i);
        if (n < 0) {
            return false;
        }
        i += (size_t)n;
    }
    return true;
}

size_t utf8_count_chars(const char *s, size_t len) {
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        if (((unsigned char)s[i] & 0xc0) != 0x80) {
            n++;
        }
    }
    return n;
}

void sbuf_json_string(struct sbuf *b, const char *s, size_t len) {
    static const char hex[] = "0123456789abcdef";
    const unsigned char *u = (const unsigned char *)s;
    /* Worst case 6 output bytes per input byte, plus quotes: reserve once. */
    if (len > (SIZE_MAX - 2) / 6 || !reserve(b, len * 6 + 2)) {
        b->failed = true;
        return;
    }
    char *o = b->data + b->len;
    *o++ = '"';
    size_t i = 0;
    while (i < len) {
        unsigned char c = u[i];
        if (c >= 0x80) {
            int n = utf8_char(u + i, len - i);
            if (n > 0) {
                memcpy(o, u + i, (size_t)n);
                o += n;
                i += (size_t)n;
            } else {
                memcpy(o, "\xef\xbf\xbd", 3); /* U+FFFD */
                o += 3;
                i += (size_t)(-n);
            }
            continue;
        }
        switch (c) {
        case '"':
            *o++ = '\\';
            *o++ = '"';
            break;
        case '\\':
            *o++ = '\\';
            *o++ = '\\';
            break;
        case '\n':
            *o++ = '\\';
            *o++ = 'n';
            break;
        case '\r':
            *o++ = '\\';
            *o++ = 'r';
            break;
        case '\t':
            *o++ = '\\';
            *o++ = 't';
            break;
        default:
            if (c < 0x20 || c == 0x7f) {
                *o++ = '\\';
                *o++ = 'u';
                *o++ = '0';
                *o++ = '0';
                *o++ = hex[c >> 4];
                *o++ = hex[c & 15];
            } else {
                *o++ = (char)c;
            }
        }
        i++;
    }
    *o++ = '"';
    b->len = (size_t)(o - b->data);
    b->data[b->len] = '\0';
}

void sbuf_json_cstr(struct sbuf *b, const char *s) {
    if (s == NULL) {
        sbuf_puts(b, "null");
    } else {
        sbuf_json_string(b, s, strlen(s));
    }
}

void sbuf_json_double(struct sbuf *b, double x) {
    if (!isfinite(x)) {
        sbuf_puts(b, x > 0 ? "9999.0" : "-9999.0");
        return;
    }
    /* %.9g round-trips a float (logprobs are floats); make sure it reads as a number. */
    sbuf_printf(b, "%.9g", x);
}
