/*
 * sse.c: incremental server-sent-events parser (see sse.h).
 */
#include "sse.h"

#include <stdlib.h>
#include <string.h>

void sse_parser_init(struct sse_parser *p, sse_event_fn on_event, void *ctx) {
    memset(p, 0, sizeof(*p));
    p->on_event = on_event;
    p->ctx = ctx;
}

void sse_parser_finish(struct sse_parser *p) {
    free(p->line);
    free(p->data);
    memset(p, 0, sizeof(*p));
}

static int grow(char **buf, size_t *cap, size_t need) {
    if (need <= *cap) {
        return 0;
    }
    size_t cap2 = *cap ? *cap : 256;
    while (cap2 < need) {
        cap2 *= 2;
    }
    char *b = realloc(*buf, cap2);
    if (b == NULL) {
        return -1;
    }
    *buf = b;
    *cap = cap2;
    return 0;
}

/* Handles one complete line (without its terminator). */
static int process_line(struct sse_parser *p) {
    const char *line = p->line;
    size_t len = p->line_len;
    if (len == 0) {
        /* Blank line: dispatch the event, if it had data. */
        if (!p->has_data) {
            return 0;
        }
        p->data[p->data_len] = '\0';
        int rc = p->on_event(p->ctx, p->data, p->data_len);
        p->data_len = 0;
        p->has_data = false;
        return rc;
    }
    if (line[0] == ':') {
        return 0; /* comment, e.g. ": ping" keep-alives */
    }
    const char *colon = memchr(line, ':', len);
    size_t name_len = colon != NULL ? (size_t)(colon - line) : len;
    if (name_len != 4 || memcmp(line, "data", 4) != 0) {
        return 0; /* event:, id:, retry: and unknown fields do not matter here */
    }
    const char *value = colon != NULL ? colon + 1 : line + len;
    if (value < line + len && *value == ' ') {
        value++; /* one optional space after the colon */
    }
    size_t value_len = (size_t)(line + len - value);
    size_t need = p->data_len + (p->has_data ? 1 : 0) + value_len + 1;
    if (grow(&p->data, &p->data_cap, need) != 0) {
        return -1;
    }
    if (p->has_data) {
        p->data[p->data_len++] = '\n';
    }
    memcpy(p->data + p->data_len, value, value_len);
    p->data_len += value_len;
    p->has_data = true;
    return 0;
}

int sse_parser_feed(struct sse_parser *p, const char *buf, size_t len) {
    if (p->failed) {
        return -1;
    }
    for (size_t i = 0; i < len; i++) {
        char c = buf[i];
        if (c == '\n' && p->last_was_cr) {
            p->last_was_cr = false; /* the LF of a CRLF */
            continue;
        }
        p->last_was_cr = c == '\r';
        if (c == '\n' || c == '\r') {
            if (grow(&p->line, &p->line_cap, p->line_len + 1) != 0 || process_line(p) != 0) {
                p->failed = true;
                return -1;
            }
            p->line_len = 0;
            continue;
        }
        if (grow(&p->line, &p->line_cap, p->line_len + 2) != 0) {
            p->failed = true;
            return -1;
        }
        p->line[p->line_len++] = c;
    }
    return 0;
}
