/*
 * stop_matcher.c: stop strings matched on decoded text, across token boundaries, with the
 * smallest possible holdback while streaming.
 *
 * The engine thread owns one matcher per sequence and pushes each token's decoded text into it.
 * State between pushes: buf[emitted, len) is the held-back tail — the longest suffix of the
 * text so far that is still a proper prefix of some stop string; buf[0, emitted) is what the
 * previous push released (the caller may still be reading it, so it is dropped only at the
 * start of the next push).
 *
 * Why no match can start before the held tail: the tail is the LONGEST suffix that is a prefix
 * of a stop string, so any earlier start would be a longer such suffix. Why released text ends
 * on a UTF-8 boundary: pieces are whole characters, and a stop string (valid UTF-8) starts with
 * a lead byte, so both the held tail and a match start where a character starts.
 *
 * Cost per push: O(bytes * stops) for the match scan (a last-byte check before each memcmp),
 * and O(max_len * stops) first-byte checks for the holdback; stop strings are short and few.
 */
#include <stdlib.h>
#include <string.h>

#include <gptd/sampling.h>

#define INITIAL_CAP 1024

struct stop_matcher {
    int32_t n_stop;
    size_t stop_len[SAMPLING_MAX_STOP];
    char stop[SAMPLING_MAX_STOP][SAMPLING_MAX_STOP_BYTES + 1]; /* owned copies */
    size_t max_len;                                            /* longest stop string */
    char *buf;                                                 /* (cap,) */
    size_t cap;
    size_t len;     /* bytes in buf */
    size_t emitted; /* buf[0, emitted) was released by the last call */
    bool is_stopped;
};

struct stop_matcher *stop_matcher_create(const struct sampling_params *p) {
    struct stop_matcher *m = calloc(1, sizeof(*m));
    if (m == NULL) {
        return NULL;
    }
    for (int32_t i = 0; i < p->n_stop && i < SAMPLING_MAX_STOP; i++) {
        size_t len = strnlen(p->stop[i], SAMPLING_MAX_STOP_BYTES);
        if (len == 0) {
            continue; /* validation refuses these; an empty string would match everywhere */
        }
        memcpy(m->stop[m->n_stop], p->stop[i], len);
        m->stop[m->n_stop][len] = '\0';
        m->stop_len[m->n_stop] = len;
        m->n_stop++;
        if (len > m->max_len) {
            m->max_len = len;
        }
    }
    m->cap = INITIAL_CAP;
    m->buf = malloc(m->cap);
    if (m->buf == NULL) {
        free(m);
        return NULL;
    }
    return m;
}

void stop_matcher_destroy(struct stop_matcher *m) {
    if (m == NULL) {
        return;
    }
    free(m->buf);
    free(m);
}

bool stop_matcher_is_stopped(const struct stop_matcher *m) {
    return m->is_stopped;
}

/* Drops what the previous call released, keeping the held tail at the front. */
static void drop_emitted(struct stop_matcher *m) {
    if (m->emitted > 0) {
        memmove(m->buf, m->buf + m->emitted, m->len - m->emitted);
        m->len -= m->emitted;
        m->emitted = 0;
    }
}

/* The length of the longest suffix of buf[0, len) that is a proper prefix of a stop string. */
static size_t holdback(const struct stop_matcher *m) {
    size_t k = m->len < m->max_len ? m->len : m->max_len - 1;
    for (; k > 0; k--) {
        const char *tail = m->buf + m->len - k;
        for (int32_t i = 0; i < m->n_stop; i++) {
            if (m->stop_len[i] > k && m->stop[i][0] == tail[0] &&
                memcmp(m->stop[i], tail, k) == 0) {
                return k;
            }
        }
    }
    return 0;
}

int stop_matcher_push(struct stop_matcher *m, const char *piece, size_t len, bool can_match,
                      struct stop_output *out) {
    out->text = m->buf;
    out->len = 0;
    out->i_stop = -1;
    if (m->is_stopped) {
        return 0;
    }
    drop_emitted(m);
    if (m->len + len > m->cap) {
        size_t cap = m->cap * 2 > m->len + len ? m->cap * 2 : m->len + len;
        char *buf = realloc(m->buf, cap);
        if (buf == NULL) {
            return -1;
        }
        m->buf = buf;
        m->cap = cap;
        out->text = m->buf;
    }
    size_t old_len = m->len;
    if (len > 0) {
        memcpy(m->buf + m->len, piece, len);
    }
    m->len += len;
    if (!can_match || m->n_stop == 0) {
        /* Before min_tokens (or with no stop strings) nothing can match: release everything. */
        m->emitted = m->len;
        out->len = m->len;
        return 0;
    }
    /* The earliest-ending occurrence among the new bytes; the longest one at that end. Matches
     * ending inside the held tail were ruled out by earlier calls. */
    for (size_t e = old_len; e < m->len; e++) {
        int32_t best = -1;
        for (int32_t i = 0; i < m->n_stop; i++) {
            size_t sl = m->stop_len[i];
            if (sl <= e + 1 && m->buf[e] == m->stop[i][sl - 1] &&
                memcmp(m->buf + e + 1 - sl, m->stop[i], sl) == 0 &&
                (best < 0 || sl > m->stop_len[best])) {
                best = i;
            }
        }
        if (best >= 0) {
            m->is_stopped = true;
            m->emitted = m->len; /* nothing is kept: the rest is never released */
            out->len = e + 1 - m->stop_len[best];
            out->i_stop = best;
            return 0;
        }
    }
    size_t keep = holdback(m);
    m->emitted = m->len - keep;
    out->len = m->emitted;
    return 0;
}

void stop_matcher_finish(struct stop_matcher *m, struct stop_output *out) {
    out->text = m->buf;
    out->len = 0;
    out->i_stop = -1;
    if (m->is_stopped) {
        return;
    }
    drop_emitted(m);
    m->emitted = m->len;
    out->len = m->len;
}
