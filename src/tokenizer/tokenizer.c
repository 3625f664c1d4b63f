/*
 * tokenizer.c: text -> ids (tokenizer_encode) and the read-only accessors.
 *
 * Called from HTTP threads (prompts, concurrently), the CLI and tests. Encoding follows Hugging
 * Face's pipeline, stage by stage:
 *   1. added tokens matched in the raw text are cut out first, leftmost-longest (added.c);
 *   2. each segment between them is normalized (normalize.c: NFC, Prepend, Replace);
 *   3. added tokens marked "normalized" are cut out of the normalized segment;
 *   4. each remaining piece is pre-tokenized: the Metaspace replacement and prefix, then the
 *      split pattern (PCRE2, JIT) with its behaviour;
 *   5. each word is BPE-merged (bpe.c), through the shared cache;
 *   6. with TOKENIZER_ADD_SPECIAL, the post-processor's ids (BOS) go around the result.
 * Per call it allocates the output array, one PCRE2 match block and a few scratch buffers that
 * grow as needed; nothing per piece or per word.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer_internal.h"

int32_t tokenizer_n_vocab(const struct tokenizer *tok) {
    return tok->n_vocab;
}

int32_t tokenizer_eos_id(const struct tokenizer *tok) {
    return tok != NULL ? tok->eos_id : -1;
}

int32_t tokenizer_bos_id(const struct tokenizer *tok) {
    return tok != NULL ? tok->bos_id : -1;
}

size_t tokenizer_max_token_bytes(const struct tokenizer *tok) {
    return tok != NULL ? tok->max_token_bytes : 0;
}

size_t tokenizer_max_text_per_token(const struct tokenizer *tok) {
    return tok != NULL ? tok->max_text_per_token : 0;
}

int tokenizer_is_special(const struct tokenizer *tok, int32_t id) {
    return tok != NULL && id >= 0 && id < tok->n_vocab && tok->is_special[id];
}

const char *tokenizer_token_bytes(const struct tokenizer *tok, int32_t id, size_t *len) {
    if (tok == NULL || id < 0 || id >= tok->n_vocab || !tok->is_valid[id]) {
        *len = 0;
        return NULL;
    }
    *len = tok->token_off[id + 1] - tok->token_off[id];
    return tok->blob + tok->token_off[id];
}

int32_t tokenizer_token_id(const struct tokenizer *tok, const char *bytes, size_t len) {
    for (size_t i = 0; i < tok->n_added; i++) {
        const struct added_token *a = &tok->added[i];
        size_t n = tok->key_off[a->id + 1] - tok->key_off[a->id];
        if (n == len && memcmp(tok->key_blob + tok->key_off[a->id], bytes, len) == 0) {
            return a->id;
        }
    }
    return tokenizer_vocab_lookup(tok, bytes, len, tokenizer_hash_bytes(bytes, len));
}

/* Everything one encode call needs besides the tokenizer. */
struct encode_state {
    struct tokenizer *tok;
    int flags;
    pcre2_match_data *md;
    struct bpe_scratch scratch; /* BPE */
    struct bpe_scratch norm_a;  /* normalizer ping-pong buffers */
    struct bpe_scratch norm_b;
    struct bpe_scratch u32;  /* NFC */
    struct bpe_scratch meta; /* Metaspace output */
    int32_t *ids;
    size_t n_ids;
    size_t cap_ids;
};

static int push_id(struct encode_state *st, int32_t id) {
    if (st->n_ids == st->cap_ids) {
        size_t cap = st->cap_ids * 2 + 16;
        int32_t *grown = realloc(st->ids, cap * sizeof(*grown));
        if (grown == NULL) {
            return -1;
        }
        st->ids = grown;
        st->cap_ids = cap;
    }
    st->ids[st->n_ids++] = id;
    return 0;
}

static int bpe_part(struct encode_state *st, const char *w, size_t n) {
    return bpe_encode_word(st->tok, (const unsigned char *)w, n, &st->scratch, &st->ids, &st->n_ids,
                           &st->cap_ids);
}

/* Whether a word may be cut at p (w[p..] starts with the separator, p > 0): the character
 * before is not a separator, and no token has it before a separator -- nor '>' when that
 * character is no token of its own (byte tokens "<0xNN>" and "<unk>" end in '>'). */
static int can_cut_at(const struct tokenizer *tok, const char *w, size_t p) {
    size_t n_sep = tok->n_cut_sep;
    if (p >= n_sep && memcmp(w + p - n_sep, tok->cut_sep, n_sep) == 0) {
        return 0;
    }
    size_t q = p - 1;
    while (q > 0 && ((unsigned char)w[q] & 0xc0) == 0x80) {
        q--;
    }
    size_t len = p - q;
    int is_token =
        len == 1 && (unsigned char)w[q] < 0x80
            ? tok->char_token[(unsigned char)w[q]] >= 0
            : tokenizer_vocab_lookup(tok, w + q, len, tokenizer_hash_bytes(w + q, len)) >= 0;
    for (size_t i = 0; i < tok->n_cut_unsafe; i++) {
        size_t m = tok->cut_unsafe_len[i];
        if ((m == len && memcmp(tok->cut_unsafe[i], w + q, len) == 0) ||
            (!is_token && m == 1 && tok->cut_unsafe[i][0] == '>')) {
            return 0;
        }
    }
    return 1;
}

/* BPE-encodes one word; a SentencePiece-style word is first cut before its separator runs
 * where no token can span the cut (see tokenizer_internal.h), which gives the same ids. */
static int encode_word(struct encode_state *st, const char *w, size_t n) {
    const struct tokenizer *tok = st->tok;
    if (tok->n_cut_sep == 0) {
        return bpe_part(st, w, n);
    }
    size_t start = 0;
    size_t at = 1;
    while (at < n) {
        size_t hit = tok_find(w + at, n - at, tok->cut_sep, tok->n_cut_sep);
        if (hit == SIZE_MAX) {
            break;
        }
        size_t p = at + hit;
        if (can_cut_at(tok, w, p)) {
            int rc = bpe_part(st, w + start, p - start);
            if (rc != 0) {
                return rc;
            }
            start = p;
        }
        at = p + tok->n_cut_sep;
    }
    return bpe_part(st, w + start, n - start);
}

/* Splits text[0..end) with the pre-tokenizer's pattern and BPE-encodes each word. Returns 0,
 * -1 (out of memory), -2 (PCRE2 failed) or -3 (a character without a token). */
static int split_and_encode(struct encode_state *st, const char *text, size_t end) {
    const struct tokenizer *tok = st->tok;
    if (tok->split_re == NULL) {
        return encode_word(st, text, end);
    }
    PCRE2_SPTR subject = (PCRE2_SPTR)text;
    size_t word_start = 0; /* start of the word not yet emitted */
    size_t search = 0;     /* where the next match may start */
    int rc = 0;
    while (search < end && rc == 0) {
        /* NO_UTF_CHECK: the text is valid UTF-8 (checked once, or made by us); without it
         * PCRE2 would re-check the subject on every call, which is quadratic. */
        int m = pcre2_match(tok->split_re, subject, end, search, PCRE2_NO_UTF_CHECK, st->md, NULL);
        if (m == PCRE2_ERROR_JIT_STACKLIMIT) {
            /* The interpreter keeps its backtracking frames on the heap, so retry there. */
            m = pcre2_match(tok->split_re, subject, end, search, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT,
                            st->md, NULL);
        }
        if (m == PCRE2_ERROR_NOMATCH) {
            break;
        }
        if (m <= 0) {
            return -2;
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(st->md);
        size_t m_start = ov[0];
        size_t m_end = ov[1];
        if (m_end == m_start) {
            /* An empty match splits nothing (as in Hugging Face); look again one character on. */
            size_t len = tok_utf8_lead_len((unsigned char)text[m_start]);
            search = m_start + (len == 0 ? 1 : len);
            continue;
        }
        switch (tok->split_behavior) {
        case SPLIT_ISOLATED:
        case SPLIT_REMOVED:
            if (m_start > word_start) {
                rc = encode_word(st, text + word_start, m_start - word_start);
            }
            if (rc == 0 && tok->split_behavior == SPLIT_ISOLATED) {
                rc = encode_word(st, text + m_start, m_end - m_start);
            }
            word_start = m_end;
            break;
        case SPLIT_MERGED_WITH_PREVIOUS:
            rc = encode_word(st, text + word_start, m_end - word_start);
            word_start = m_end;
            break;
        case SPLIT_MERGED_WITH_NEXT:
            if (m_start > word_start) {
                rc = encode_word(st, text + word_start, m_start - word_start);
            }
            word_start = m_start;
            break;
        }
        search = m_end;
    }
    if (rc == 0 && end > word_start) {
        rc = encode_word(st, text + word_start, end - word_start);
    }
    return rc;
}

/* The pre-tokenizer on one piece of normalized text: Metaspace (spaces become the replacement;
 * the replacement goes in front per the prepend scheme), then the split. is_text_start: the
 * piece begins the whole text (the "first" scheme). */
static int pre_tokenize(struct encode_state *st, const char *p, size_t n, int is_text_start) {
    const struct tokenizer *tok = st->tok;
    if (n == 0) {
        return 0;
    }
    if (!tok->has_metaspace) {
        return split_and_encode(st, p, n);
    }
    const char *rep = tok->ms_rep;
    size_t n_rep = tok->n_ms_rep;
    size_t n_spaces = 0;
    for (size_t i = 0; i < n; i++) {
        n_spaces += p[i] == ' ';
    }
    if (scratch_reserve(&st->meta, n + n_spaces * n_rep + n_rep + 1) != 0) {
        return -1;
    }
    char *out = st->meta.mem;
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] == ' ') {
            memcpy(out + m, rep, n_rep);
            m += n_rep;
        } else {
            out[m++] = p[i];
        }
    }
    int wants =
        tok->ms_prepend == PREPEND_ALWAYS || (tok->ms_prepend == PREPEND_FIRST && is_text_start);
    if (wants && !(m >= n_rep && memcmp(out, rep, n_rep) == 0)) {
        memmove(out + n_rep, out, m);
        memcpy(out, rep, n_rep);
        m += n_rep;
    }
    return split_and_encode(st, out, m);
}

/* One segment of the raw text between added tokens: normalize it, cut out the normalized added
 * tokens, pre-tokenize and encode the rest. */
static int encode_segment(struct encode_state *st, const char *text, size_t n, int is_text_start) {
    const struct tokenizer *tok = st->tok;
    if (n == 0) {
        return 0;
    }
    size_t len = n;
    const char *norm = text;
    if (tok->n_norm > 0) {
        norm = normalize_apply(tok, text, n, &st->norm_a, &st->norm_b, &st->u32, &len);
        if (norm == NULL) {
            return -1;
        }
    }
    size_t at = 0;
    while (at < len) {
        size_t a_start = len;
        size_t a_end = len;
        long i = added_find(tok, &tok->norm_trie, norm, len, at, st->flags, &a_start, &a_end);
        int rc = pre_tokenize(st, norm + at, a_start - at, is_text_start && at == 0);
        if (rc != 0) {
            return rc;
        }
        if (i < 0) {
            break;
        }
        if (push_id(st, tok->added[i].id) != 0) {
            return -1;
        }
        at = a_end;
    }
    return 0;
}

int tokenizer_encode(struct tokenizer *tok, const char *text, size_t len, int flags, int32_t **ids,
                     size_t *n_ids, char *err, size_t err_size) {
    *ids = NULL;
    *n_ids = 0;
    size_t bad = tok_utf8_first_invalid((const unsigned char *)text, len);
    if (bad < len) {
        tok_set_err(err, err_size, "text is not valid UTF-8 (byte %zu)", bad);
        return -1;
    }
    struct encode_state st = {.tok = tok, .flags = flags};
    int rc = -1;
    st.cap_ids = len / 3 + 16 + tok->n_prefix + tok->n_suffix;
    st.ids = malloc(st.cap_ids * sizeof(*st.ids));
    if (tok->split_re != NULL) {
        st.md = pcre2_match_data_create_from_pattern(tok->split_re, NULL);
    }
    if (st.ids == NULL || (tok->split_re != NULL && st.md == NULL)) {
        tok_set_err(err, err_size, "out of memory");
        goto cleanup;
    }
    if ((flags & TOKENIZER_ADD_SPECIAL) && tok->n_prefix > 0) {
        memcpy(st.ids, tok->prefix_ids, tok->n_prefix * sizeof(*st.ids));
        st.n_ids = tok->n_prefix;
    }
    size_t at = 0;
    int span_rc = 0;
    while (at < len && span_rc == 0) {
        size_t a_start = len;
        size_t a_end = len;
        long i = added_find(tok, &tok->raw_trie, text, len, at, flags, &a_start, &a_end);
        span_rc = encode_segment(&st, text + at, a_start - at, at == 0);
        if (span_rc == 0 && i >= 0) {
            span_rc = push_id(&st, tok->added[i].id);
        }
        at = i >= 0 ? a_end : len;
    }
    for (size_t k = 0; span_rc == 0 && (flags & TOKENIZER_ADD_SPECIAL) && k < tok->n_suffix; k++) {
        span_rc = push_id(&st, tok->suffix_ids[k]);
    }
    if (span_rc == -2) {
        tok_set_err(err, err_size, "pre-tokenizer failed (PCRE2 match error)");
        goto cleanup;
    }
    if (span_rc == -3) {
        tok_set_err(err, err_size, "the text holds a character that has no token");
        goto cleanup;
    }
    if (span_rc != 0) {
        tok_set_err(err, err_size, "out of memory");
        goto cleanup;
    }
    *ids = st.ids;
    *n_ids = st.n_ids;
    st.ids = NULL;
    rc = 0;
cleanup:
    free(st.ids);
    free(st.scratch.mem);
    free(st.norm_a.mem);
    free(st.norm_b.mem);
    free(st.u32.mem);
    free(st.meta.mem);
    pcre2_match_data_free(st.md);
    return rc;
}
