/*
 * sse.h: an incremental parser for server-sent events (the text/event-stream format), as
 * gptd-bench reads streamed completions from any OpenAI-compatible server.
 *
 * Bytes arrive in arbitrary pieces (from libcurl's write callback); the parser splits them into
 * lines (LF, CRLF or CR), collects `data:` fields (with or without the space after the colon;
 * several data lines join with "\n"), ignores comments (`: ping`) and other fields, and calls
 * the callback once per event, at the blank line that ends it. One parser per stream; no
 * threads involved.
 */
#ifndef GPTD_BENCH_SSE_H
#define GPTD_BENCH_SSE_H

#include <stdbool.h>
#include <stddef.h>

/* Called with the event's data (NUL-terminated, len bytes). Return 0 to go on, -1 to stop. */
typedef int (*sse_event_fn)(void *ctx, const char *data, size_t len);

struct sse_parser {
    sse_event_fn on_event;
    void *ctx;
    char *line; /* the line being read */
    size_t line_len, line_cap;
    char *data; /* the event's data so far */
    size_t data_len, data_cap;
    bool has_data;
    bool last_was_cr; /* a CR ended the previous piece: a following LF belongs to it */
    bool failed;      /* out of memory or the callback said stop */
};

void sse_parser_init(struct sse_parser *p, sse_event_fn on_event, void *ctx);
void sse_parser_finish(struct sse_parser *p);

/* Feeds bytes. Returns 0, or -1 once the parser has failed (then it ignores input). */
int sse_parser_feed(struct sse_parser *p, const char *buf, size_t len);

#endif
