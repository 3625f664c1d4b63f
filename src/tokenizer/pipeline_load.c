/*
 * pipeline_load.c: reads the parts of tokenizer.json around the vocabulary -- the model's
 * options, "normalizer", "pre_tokenizer", "decoder", "post_processor" -- and the model folder's
 * tokenizer_config.json, into struct tokenizer's pipeline fields.
 *
 * Called once per load from tokenizer_load.c. What gptd implements (see docs/ARCHITECTURE.md):
 *   normalizer     NFC, Prepend, Replace (String pattern), Sequence of those
 *   pre_tokenizer  ByteLevel (GPT-2's regex, or none with use_regex false), Split (Regex or
 *                  String pattern; Isolated, Removed, MergedWithPrevious, MergedWithNext),
 *                  Metaspace, Sequence of those with at most one splitting step
 *   decoder        ByteLevel; Replace (String), ByteFallback, Fuse, Strip, Metaspace, Sequence
 *   post_processor TemplateProcessing (single), ByteLevel, Sequence of those
 * Everything else -- another type, an option that changes the result and that gptd ignores --
 * is refused naming the file, the field and the value: a tokenizer that loads encodes exactly.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "load_internal.h"

/*
 * The GPT-2 split pattern,
 *   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 * with \s spelled out as WS, Unicode's White_Space property (25 code points, unchanged since
 * Unicode 6.3). Why: PCRE2 10.42's \s also matches U+180E MONGOLIAN VOWEL SEPARATOR, which
 * White_Space, and so Python's regex module that the original encoder uses, left out in 6.3; we
 * compared PCRE2's \s with Python regex's over the whole code space and that is the only
 * difference. Letters and numbers stay PCRE2's \p{L} and \p{N}. Keeping every class a plain
 * character class (no alternation inside a repeat) also keeps the JIT's stack use flat on a
 * 900,000-character run.
 */
#define WS                                                                                         \
    "\\t-\\r\\x{20}\\x{85}\\x{a0}\\x{1680}\\x{2000}-\\x{200a}\\x{2028}\\x{2029}\\x{202f}\\x{205f}" \
    "\\x{3000}"
static const char gpt2_pattern[] = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^" WS
                                   "\\p{L}\\p{N}]+|[" WS "]+(?![^" WS "])|[" WS "]+";

/* ---- small JSON helpers --------------------------------------------------------------- */

static const cJSON *get(const cJSON *obj, const char *key) {
    return cJSON_IsObject(obj) ? cJSON_GetObjectItemCaseSensitive(obj, key) : NULL;
}

static int is_null(const cJSON *v) {
    return v == NULL || cJSON_IsNull(v);
}

/* The string value of obj[key], or NULL. */
static const char *get_str(const cJSON *obj, const char *key) {
    const cJSON *v = get(obj, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* A boolean field: absent or null gives dflt; *bad is set when it is something else. */
static int get_bool(const cJSON *obj, const char *key, int dflt, int *bad) {
    const cJSON *v = get(obj, key);
    if (is_null(v)) {
        return dflt;
    }
    if (!cJSON_IsBool(v)) {
        *bad = 1;
        return dflt;
    }
    return cJSON_IsTrue(v);
}

/* A field that must be null, absent or an empty string for us to tokenize like HF does. */
static int is_unset(const cJSON *v) {
    return is_null(v) || (cJSON_IsString(v) && v->valuestring != NULL && v->valuestring[0] == '\0');
}

/* A pattern object {"String": s} or {"Regex": r}: returns the string and sets *is_regex. */
static const char *get_pattern(const cJSON *step, int *is_regex) {
    const cJSON *p = get(step, "pattern");
    const char *s = get_str(p, "String");
    *is_regex = 0;
    if (s == NULL) {
        s = get_str(p, "Regex");
        *is_regex = s != NULL;
    }
    return s;
}

static char *dup_bytes(const char *s, size_t n) {
    char *d = malloc(n + 1);
    if (d != NULL) {
        memcpy(d, s, n);
        d[n] = '\0';
    }
    return d;
}

/* ---- model options -------------------------------------------------------------------- */

int pipeline_load_model_options(struct tokenizer *tok, const cJSON *root, const char *file,
                                char *err, size_t err_size) {
    char q[48];
    const cJSON *model = get(root, "model");
    const cJSON *type = get(model, "type");
    if (type != NULL && !(cJSON_IsString(type) && strcmp(type->valuestring, "BPE") == 0)) {
        const char *t = cJSON_IsString(type) ? type->valuestring : "(not a string)";
        tok_set_err(err, err_size, "%s: model.type \"%s\" is not supported (gptd implements BPE)",
                    file, tok_quote(t, strlen(t), q));
        return -1;
    }
    static const char *const unset_fields[] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (size_t i = 0; i < 2; i++) {
        const cJSON *v = get(model, unset_fields[i]);
        if (!is_unset(v)) {
            const char *s = cJSON_IsString(v) ? v->valuestring : "(not a string)";
            tok_set_err(err, err_size, "%s: model.%s \"%s\" is not supported (only null or \"\")",
                        file, unset_fields[i], tok_quote(s, strlen(s), q));
            return -1;
        }
    }
    const cJSON *dropout = get(model, "dropout");
    if (!is_null(dropout) && !(cJSON_IsNumber(dropout) && dropout->valuedouble == 0.0)) {
        tok_set_err(err, err_size,
                    "%s: model.dropout is %g; gptd encodes deterministically (null or 0 only)",
                    file, cJSON_IsNumber(dropout) ? dropout->valuedouble : -1.0);
        return -1;
    }
    int bad = 0;
    tok->byte_fallback = get_bool(model, "byte_fallback", 0, &bad);
    tok->fuse_unk = get_bool(model, "fuse_unk", 0, &bad);
    tok->ignore_merges = get_bool(model, "ignore_merges", 0, &bad);
    if (bad) {
        tok_set_err(err, err_size,
                    "%s: model.byte_fallback, model.fuse_unk and model.ignore_merges must be "
                    "booleans",
                    file);
        return -1;
    }
    return 0;
}

/* ---- normalizer ----------------------------------------------------------------------- */

static int add_norm(struct tokenizer *tok, enum norm_kind kind, const char *from, const char *to) {
    struct norm_step *grown = realloc(tok->norm, (tok->n_norm + 1) * sizeof(*grown));
    if (grown == NULL) {
        return -1;
    }
    tok->norm = grown;
    struct norm_step *s = &tok->norm[tok->n_norm];
    memset(s, 0, sizeof(*s));
    s->kind = kind;
    if (from != NULL) {
        s->n_from = strlen(from);
        s->from = dup_bytes(from, s->n_from);
    }
    if (to != NULL) {
        s->n_to = strlen(to);
        s->to = dup_bytes(to, s->n_to);
    }
    tok->n_norm++;
    if ((from != NULL && s->from == NULL) || (to != NULL && s->to == NULL)) {
        return -1;
    }
    tok->has_nfc |= kind == NORM_NFC;
    return 0;
}

static int load_normalizer(struct tokenizer *tok, const cJSON *n, const char *field,
                           const char *file, char *err, size_t err_size) {
    char q[48];
    char sub[96];
    if (is_null(n)) {
        return 0;
    }
    const char *type = get_str(n, "type");
    if (type == NULL) {
        tok_set_err(err, err_size, "%s: %s has no \"type\"", file, field);
        return -1;
    }
    int rc = 0;
    if (strcmp(type, "Sequence") == 0) {
        const cJSON *list = get(n, "normalizers");
        if (!cJSON_IsArray(list)) {
            tok_set_err(err, err_size, "%s: %s.normalizers is not an array", file, field);
            return -1;
        }
        int i = 0;
        const cJSON *item;
        cJSON_ArrayForEach(item, list) {
            snprintf(sub, sizeof(sub), "%.60s.normalizers[%d]", field, i++);
            if (load_normalizer(tok, item, sub, file, err, err_size) != 0) {
                return -1;
            }
        }
        return 0;
    } else if (strcmp(type, "NFC") == 0) {
        rc = add_norm(tok, NORM_NFC, NULL, NULL);
    } else if (strcmp(type, "Prepend") == 0) {
        const char *p = get_str(n, "prepend");
        if (p == NULL || p[0] == '\0') {
            tok_set_err(err, err_size, "%s: %s (Prepend) needs a non-empty \"prepend\"", file,
                        field);
            return -1;
        }
        rc = add_norm(tok, NORM_PREPEND, p, NULL);
    } else if (strcmp(type, "Replace") == 0) {
        int is_regex;
        const char *pattern = get_pattern(n, &is_regex);
        const char *content = get_str(n, "content");
        if (is_regex) {
            tok_set_err(err, err_size,
                        "%s: %s (Replace) with a Regex pattern is not supported (String only)",
                        file, field);
            return -1;
        }
        if (pattern == NULL || pattern[0] == '\0' || content == NULL) {
            tok_set_err(err, err_size,
                        "%s: %s (Replace) needs pattern {\"String\": non-empty} and a \"content\"",
                        file, field);
            return -1;
        }
        rc = add_norm(tok, NORM_REPLACE, pattern, content);
    } else {
        tok_set_err(err, err_size,
                    "%s: %s.type \"%s\" is not supported (gptd implements NFC, Prepend, Replace "
                    "and Sequence)",
                    file, field, tok_quote(type, strlen(type), q));
        return -1;
    }
    if (rc != 0) {
        tok_set_err(err, err_size, "%s: out of memory", file);
    }
    return rc;
}

/* ---- pre-tokenizer -------------------------------------------------------------------- */

/*
 * The model's regex, for PCRE2: Hugging Face compiles it with Oniguruma, whose \s is Unicode's
 * White_Space; PCRE2's also takes U+180E (see WS above). So \s becomes the WS class and \S its
 * complement, outside character classes and (\s only) inside them; everything else is passed
 * through as written. Returns a malloc'd pattern or NULL when out of memory.
 */
static char *translate_regex(const char *re) {
    size_t n = strlen(re);
    size_t cap = n * (sizeof(WS) + 4) + 1;
    char *out = malloc(cap);
    if (out == NULL) {
        return NULL;
    }
    size_t at = 0;
    int in_class = 0;
    for (size_t i = 0; i < n; i++) {
        char c = re[i];
        if (c == '\\' && i + 1 < n) {
            char e = re[i + 1];
            const char *put = NULL;
            if (e == 's') {
                put = in_class ? WS : "[" WS "]";
            } else if (e == 'S' && !in_class) {
                put = "[^" WS "]";
            } else if (e == 'Q') {
                /* \Q...\E: literal text, copied as is. */
                const char *end = strstr(re + i + 2, "\\E");
                size_t len = end != NULL ? (size_t)(end - (re + i)) + 2 : n - i;
                memcpy(out + at, re + i, len);
                at += len;
                i += len - 1;
                continue;
            }
            if (put != NULL) {
                size_t len = strlen(put);
                memcpy(out + at, put, len);
                at += len;
            } else {
                out[at++] = c;
                out[at++] = e;
            }
            i++;
            continue;
        }
        if (!in_class && c == '[') {
            in_class = 1;
            out[at++] = c;
            /* A ']' right after '[' or '[^' is a literal. */
            if (i + 1 < n && re[i + 1] == '^') {
                out[at++] = re[++i];
            }
            if (i + 1 < n && re[i + 1] == ']') {
                out[at++] = re[++i];
            }
            continue;
        }
        if (in_class && c == '[' && i + 1 < n && re[i + 1] == ':') {
            /* A POSIX class [:name:] inside a class. */
            const char *end = strstr(re + i + 2, ":]");
            size_t len = end != NULL ? (size_t)(end - (re + i)) + 2 : 1;
            memcpy(out + at, re + i, len);
            at += len;
            i += len - 1;
            continue;
        }
        if (in_class && c == ']') {
            in_class = 0;
        }
        out[at++] = c;
    }
    out[at] = '\0';
    return out;
}

/* A literal string as a PCRE2 pattern: every code point written as \x{HEX}. */
static char *literal_regex(const char *s) {
    size_t n = strlen(s);
    char *out = malloc(n * 12 + 1);
    if (out == NULL) {
        return NULL;
    }
    size_t at = 0;
    const unsigned char *p = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        size_t len = tok_utf8_lead_len(p[i]);
        uint32_t cp = len <= 1 ? p[i] : (uint32_t)(p[i] & (0x7f >> len));
        len = len == 0 ? 1 : len;
        for (size_t k = 1; k < len && i + k < n; k++) {
            cp = (cp << 6) | (p[i + k] & 0x3f);
        }
        at += (size_t)sprintf(out + at, "\\x{%x}", (unsigned)cp);
        i += len;
    }
    out[at] = '\0';
    return out;
}

static int compile_split(struct tokenizer *tok, const char *pattern, const char *field,
                         const char *file, char *err, size_t err_size) {
    int code;
    PCRE2_SIZE at;
    tok->split_re = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP,
                                  &code, &at, NULL);
    if (tok->split_re == NULL) {
        PCRE2_UCHAR msg[120];
        pcre2_get_error_message(code, msg, sizeof(msg));
        tok_set_err(err, err_size, "%s: %s: PCRE2 cannot compile the pattern (offset %zu): %s",
                    file, field, (size_t)at, (char *)msg);
        return -1;
    }
    /* Without JIT (an exotic CPU) the interpreter gives the same matches, only slower. */
    (void)pcre2_jit_compile(tok->split_re, PCRE2_JIT_COMPLETE);
    return 0;
}

int pipeline_use_gpt2_split(struct tokenizer *tok, char *err, size_t err_size) {
    tok->split_behavior = SPLIT_ISOLATED;
    return compile_split(tok, gpt2_pattern, "pre_tokenizer", "tokenizer", err, err_size);
}

/* What the pre-tokenizer steps amount to, gathered before anything is compiled. */
struct pre_plan {
    int has_byte_level;
    int n_splits;         /* splitting steps seen (at most one is supported) */
    char *split_pattern;  /* owned: the PCRE2 pattern of that split */
    char split_field[96]; /* which field it came from, for messages */
    enum split_behavior behavior;
};

static int load_pre_step(struct tokenizer *tok, struct pre_plan *plan, const cJSON *p,
                         const char *field, const char *file, char *err, size_t err_size) {
    char q[48];
    const char *type = get_str(p, "type");
    int bad = 0;
    if (type == NULL) {
        tok_set_err(err, err_size, "%s: %s has no \"type\"", file, field);
        return -1;
    }
    /* gptd runs Metaspace, then the split, then the byte mapping: a file that orders them
     * otherwise would split a different text. */
    if (plan->has_byte_level) {
        tok_set_err(err, err_size,
                    "%s: %s (%s) after a ByteLevel is not supported (ByteLevel must come last)",
                    file, field, tok_quote(type, strlen(type), q));
        return -1;
    }
    if (strcmp(type, "Metaspace") == 0 && plan->n_splits > 0) {
        tok_set_err(err, err_size, "%s: %s: a Metaspace after %s is not supported", file, field,
                    plan->split_field);
        return -1;
    }
    char *pattern = NULL;
    enum split_behavior behavior = SPLIT_ISOLATED;
    if (strcmp(type, "ByteLevel") == 0) {
        int add_prefix_space = get_bool(p, "add_prefix_space", 0, &bad);
        int use_regex = get_bool(p, "use_regex", 1, &bad);
        if (bad || add_prefix_space) {
            tok_set_err(err, err_size,
                        "%s: %s (ByteLevel) with add_prefix_space true is not supported (need "
                        "add_prefix_space false)",
                        file, field);
            return -1;
        }
        plan->has_byte_level = 1;
        if (!use_regex) {
            return 0;
        }
        pattern = dup_bytes(gpt2_pattern, strlen(gpt2_pattern));
    } else if (strcmp(type, "Split") == 0) {
        int is_regex;
        const char *pat = get_pattern(p, &is_regex);
        const char *beh = get_str(p, "behavior");
        int invert = get_bool(p, "invert", 0, &bad);
        if (pat == NULL || pat[0] == '\0' || bad) {
            tok_set_err(err, err_size,
                        "%s: %s (Split) needs a non-empty pattern {\"Regex\"} or {\"String\"}",
                        file, field);
            return -1;
        }
        if (invert) {
            tok_set_err(err, err_size, "%s: %s.invert true is not supported", file, field);
            return -1;
        }
        static const struct {
            const char *name;
            enum split_behavior b;
        } behaviors[] = {{"Isolated", SPLIT_ISOLATED},
                         {"Removed", SPLIT_REMOVED},
                         {"MergedWithPrevious", SPLIT_MERGED_WITH_PREVIOUS},
                         {"MergedWithNext", SPLIT_MERGED_WITH_NEXT}};
        size_t k = 0;
        while (k < 4 && (beh == NULL || strcmp(beh, behaviors[k].name) != 0)) {
            k++;
        }
        if (k == 4) {
            const char *b = beh != NULL ? beh : "(missing)";
            tok_set_err(err, err_size,
                        "%s: %s.behavior \"%s\" is not supported (Isolated, Removed, "
                        "MergedWithPrevious, MergedWithNext)",
                        file, field, tok_quote(b, strlen(b), q));
            return -1;
        }
        behavior = behaviors[k].b;
        pattern = is_regex ? translate_regex(pat) : literal_regex(pat);
    } else if (strcmp(type, "Metaspace") == 0) {
        const char *rep = get_str(p, "replacement");
        const char *scheme = get_str(p, "prepend_scheme");
        int split = get_bool(p, "split", 1, &bad);
        int add_prefix_space = get_bool(p, "add_prefix_space", 1, &bad);
        if (bad || rep == NULL || rep[0] == '\0' || strlen(rep) >= sizeof(tok->ms_rep) ||
            tok_utf8_lead_len((unsigned char)rep[0]) != strlen(rep)) {
            tok_set_err(err, err_size,
                        "%s: %s (Metaspace) needs a one-character \"replacement\" and boolean "
                        "options",
                        file, field);
            return -1;
        }
        if (scheme == NULL) {
            tok->ms_prepend = add_prefix_space ? PREPEND_ALWAYS : PREPEND_NEVER;
        } else if (strcmp(scheme, "first") == 0) {
            tok->ms_prepend = PREPEND_FIRST;
        } else if (strcmp(scheme, "always") == 0) {
            tok->ms_prepend = PREPEND_ALWAYS;
        } else if (strcmp(scheme, "never") == 0) {
            tok->ms_prepend = PREPEND_NEVER;
        } else {
            tok_set_err(err, err_size,
                        "%s: %s.prepend_scheme \"%s\" is not one of first, always, never", file,
                        field, tok_quote(scheme, strlen(scheme), q));
            return -1;
        }
        if (tok->has_metaspace) {
            tok_set_err(err, err_size, "%s: %s: a second Metaspace is not supported", file, field);
            return -1;
        }
        tok->has_metaspace = 1;
        tok->n_ms_rep = strlen(rep);
        memcpy(tok->ms_rep, rep, tok->n_ms_rep);
        if (!split) {
            return 0;
        }
        behavior = SPLIT_MERGED_WITH_NEXT;
        pattern = literal_regex(rep);
    } else {
        tok_set_err(err, err_size,
                    "%s: %s.type \"%s\" is not supported (gptd implements ByteLevel, Split, "
                    "Metaspace and Sequence)",
                    file, field, tok_quote(type, strlen(type), q));
        return -1;
    }
    if (pattern == NULL) {
        tok_set_err(err, err_size, "%s: out of memory", file);
        return -1;
    }
    if (++plan->n_splits > 1) {
        free(pattern);
        tok_set_err(err, err_size,
                    "%s: %s: a second splitting pre-tokenizer (after %s) is not supported", file,
                    field, plan->split_field);
        return -1;
    }
    plan->split_pattern = pattern;
    plan->behavior = behavior;
    snprintf(plan->split_field, sizeof(plan->split_field), "%s", field);
    return 0;
}

static int load_pre_tokenizer(struct tokenizer *tok, const cJSON *root, const char *file, char *err,
                              size_t err_size) {
    struct pre_plan plan = {0};
    const cJSON *pre = get(root, "pre_tokenizer");
    int rc = -1;
    if (!is_null(pre)) {
        const char *type = get_str(pre, "type");
        if (type != NULL && strcmp(type, "Sequence") == 0) {
            const cJSON *list = get(pre, "pretokenizers");
            if (!cJSON_IsArray(list)) {
                tok_set_err(err, err_size, "%s: pre_tokenizer.pretokenizers is not an array", file);
                goto cleanup;
            }
            int i = 0;
            const cJSON *item;
            cJSON_ArrayForEach(item, list) {
                char field[64];
                snprintf(field, sizeof(field), "pre_tokenizer.pretokenizers[%d]", i++);
                if (load_pre_step(tok, &plan, item, field, file, err, err_size) != 0) {
                    goto cleanup;
                }
            }
        } else if (load_pre_step(tok, &plan, pre, "pre_tokenizer", file, err, err_size) != 0) {
            goto cleanup;
        }
    }
    if (plan.has_byte_level && tok->has_metaspace) {
        tok_set_err(err, err_size,
                    "%s: pre_tokenizer combines ByteLevel and Metaspace, which gptd does not "
                    "support",
                    file);
        goto cleanup;
    }
    tok->alphabet = plan.has_byte_level ? BPE_ALPHABET_BYTES : BPE_ALPHABET_CHARS;
    if (!plan.has_byte_level && !tok->byte_fallback) {
        tok_set_err(err, err_size,
                    "%s: pre_tokenizer has no ByteLevel and model.byte_fallback is not true: gptd "
                    "implements byte-level BPE (a ByteLevel pre_tokenizer) and SentencePiece-style "
                    "BPE (byte_fallback)",
                    file);
        goto cleanup;
    }
    tok->split_behavior = plan.behavior;
    if (plan.split_pattern != NULL &&
        compile_split(tok, plan.split_pattern, plan.split_field, file, err, err_size) != 0) {
        goto cleanup;
    }
    rc = 0;
cleanup:
    free(plan.split_pattern);
    return rc;
}

/* ---- decoder -------------------------------------------------------------------------- */

static int add_dec(struct tokenizer *tok, const struct dec_step *step) {
    struct dec_step *grown = realloc(tok->dec, (tok->n_dec + 1) * sizeof(*grown));
    if (grown == NULL) {
        free(step->from);
        free(step->to);
        return -1;
    }
    tok->dec = grown;
    tok->dec[tok->n_dec++] = *step;
    return 0;
}

/* One decoder step of a SentencePiece-style vocabulary. *fused: a Fuse came before it. */
static int load_dec_step(struct tokenizer *tok, const cJSON *d, const char *field, int *fused,
                         const char *file, char *err, size_t err_size) {
    char q[48];
    const char *type = get_str(d, "type");
    if (type == NULL) {
        tok_set_err(err, err_size, "%s: %s has no \"type\"", file, field);
        return -1;
    }
    struct dec_step step = {0};
    if (strcmp(type, "Fuse") == 0) {
        *fused = 1;
        return 0;
    }
    if (strcmp(type, "Strip") == 0) {
        const char *content = get_str(d, "content");
        const cJSON *start = get(d, "start");
        const cJSON *stop = get(d, "stop");
        if (content == NULL || strlen(content) != 1 || (unsigned char)content[0] >= 0x80 ||
            !cJSON_IsNumber(start) || !cJSON_IsNumber(stop) || start->valuedouble < 0 ||
            stop->valuedouble < 0 || start->valuedouble > 1000 || stop->valuedouble > 1000) {
            tok_set_err(err, err_size,
                        "%s: %s (Strip) needs a one-ASCII-character \"content\" and counts "
                        "\"start\" and \"stop\"",
                        file, field);
            return -1;
        }
        if (*fused) {
            /* On the whole text: the start can be streamed, the end cannot. */
            if (stop->valuedouble != 0 || tok->dec_strip_start != 0) {
                tok_set_err(err, err_size,
                            "%s: %s (Strip after Fuse) with stop %g is not supported (stop 0 "
                            "only, once)",
                            file, field, stop->valuedouble);
                return -1;
            }
            tok->dec_strip_start = (size_t)start->valuedouble;
            tok->dec_strip_char = content[0];
            return 0;
        }
        step.kind = DEC_STRIP;
        step.from = dup_bytes(content, 1);
        step.n_from = 1;
        step.n_start = (size_t)start->valuedouble;
        step.n_end = (size_t)stop->valuedouble;
    } else if (*fused) {
        tok_set_err(err, err_size,
                    "%s: %s.type \"%s\" after Fuse is not supported (only Strip may follow it)",
                    file, field, tok_quote(type, strlen(type), q));
        return -1;
    } else if (strcmp(type, "Replace") == 0) {
        int is_regex;
        const char *pattern = get_pattern(d, &is_regex);
        const char *content = get_str(d, "content");
        if (is_regex || pattern == NULL || pattern[0] == '\0' || content == NULL) {
            tok_set_err(err, err_size,
                        "%s: %s (Replace) needs pattern {\"String\": non-empty} and a \"content\"",
                        file, field);
            return -1;
        }
        step.kind = DEC_REPLACE;
        step.n_from = strlen(pattern);
        step.from = dup_bytes(pattern, step.n_from);
        step.n_to = strlen(content);
        step.to = dup_bytes(content, step.n_to);
    } else if (strcmp(type, "ByteFallback") == 0) {
        step.kind = DEC_BYTE_FALLBACK;
    } else if (strcmp(type, "Metaspace") == 0) {
        /* Each replacement becomes a space; the first token loses one leading space unless
         * the scheme is "never". */
        const char *rep = get_str(d, "replacement");
        const char *scheme = get_str(d, "prepend_scheme");
        int bad = 0;
        int add_prefix_space = get_bool(d, "add_prefix_space", 1, &bad);
        if (bad || rep == NULL || rep[0] == '\0') {
            tok_set_err(err, err_size, "%s: %s (Metaspace) needs a \"replacement\"", file, field);
            return -1;
        }
        tok->dec_strip_first_token =
            scheme != NULL ? strcmp(scheme, "never") != 0 : add_prefix_space;
        step.kind = DEC_REPLACE;
        step.n_from = strlen(rep);
        step.from = dup_bytes(rep, step.n_from);
        step.n_to = 1;
        step.to = dup_bytes(" ", 1);
    } else {
        tok_set_err(err, err_size,
                    "%s: %s.type \"%s\" is not supported for a SentencePiece-style vocabulary "
                    "(gptd implements Replace, ByteFallback, Fuse, Strip, Metaspace and Sequence)",
                    file, field, tok_quote(type, strlen(type), q));
        return -1;
    }
    if ((step.n_from > 0 && step.from == NULL) || (step.n_to > 0 && step.to == NULL) ||
        add_dec(tok, &step) != 0) {
        tok_set_err(err, err_size, "%s: out of memory", file);
        return -1;
    }
    return 0;
}

static int load_decoder(struct tokenizer *tok, const cJSON *root, const char *file, char *err,
                        size_t err_size) {
    char q[48];
    const cJSON *d = get(root, "decoder");
    const char *type = get_str(d, "type");
    if (tok->alphabet == BPE_ALPHABET_BYTES) {
        /* A byte-level vocabulary decodes by unmapping bytes; gptd has always read a missing
         * decoder that way too (files written before decoders existed). */
        if (is_null(d) || (type != NULL && strcmp(type, "ByteLevel") == 0)) {
            return 0;
        }
        const char *t = type != NULL ? type : "(missing)";
        tok_set_err(err, err_size,
                    "%s: decoder.type \"%s\" is not supported with a ByteLevel pre_tokenizer "
                    "(ByteLevel only)",
                    file, tok_quote(t, strlen(t), q));
        return -1;
    }
    if (is_null(d) || type == NULL) {
        tok_set_err(err, err_size,
                    "%s: decoder is missing; a SentencePiece-style vocabulary needs one (e.g. "
                    "Replace, ByteFallback, Fuse, Strip)",
                    file);
        return -1;
    }
    int fused = 0;
    if (strcmp(type, "Sequence") != 0) {
        return load_dec_step(tok, d, "decoder", &fused, file, err, err_size);
    }
    const cJSON *list = get(d, "decoders");
    if (!cJSON_IsArray(list)) {
        tok_set_err(err, err_size, "%s: decoder.decoders is not an array", file);
        return -1;
    }
    int i = 0;
    const cJSON *item;
    cJSON_ArrayForEach(item, list) {
        char field[48];
        snprintf(field, sizeof(field), "decoder.decoders[%d]", i++);
        if (load_dec_step(tok, item, field, &fused, file, err, err_size) != 0) {
            return -1;
        }
    }
    return 0;
}

int pipeline_load_text_steps(struct tokenizer *tok, const cJSON *root, const char *file, char *err,
                             size_t err_size) {
    if (load_normalizer(tok, get(root, "normalizer"), "normalizer", file, err, err_size) != 0 ||
        load_pre_tokenizer(tok, root, file, err, err_size) != 0 ||
        load_decoder(tok, root, file, err, err_size) != 0) {
        return -1;
    }
    return 0;
}

/* ---- per-token decoding --------------------------------------------------------------- */

static int hex_digit(char c) {
    return c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

size_t pipeline_decode_piece(const struct tokenizer *tok, const char *s, size_t n, char *out,
                             size_t out_cap) {
    /* Steps ping-pong between out and a scratch of the same size. */
    char *tmp = malloc(out_cap + 1);
    if (tmp == NULL || n > out_cap) {
        free(tmp);
        return SIZE_MAX;
    }
    memcpy(out, s, n);
    size_t len = n;
    for (size_t k = 0; k < tok->n_dec; k++) {
        const struct dec_step *st = &tok->dec[k];
        if (st->kind == DEC_BYTE_FALLBACK) {
            int hi = len == 6 ? hex_digit(out[3]) : -1;
            int lo = len == 6 ? hex_digit(out[4]) : -1;
            if (hi >= 0 && lo >= 0 && memcmp(out, "<0x", 3) == 0 && out[5] == '>') {
                out[0] = (char)(hi * 16 + lo);
                len = 1;
            }
        } else if (st->kind == DEC_STRIP) {
            size_t a = 0;
            while (a < st->n_start && a < len && out[a] == st->from[0]) {
                a++;
            }
            size_t b = 0;
            while (b < st->n_end && a + b < len && out[len - 1 - b] == st->from[0]) {
                b++;
            }
            memmove(out, out + a, len - a - b);
            len -= a + b;
        } else {
            size_t m = 0;
            size_t i = 0;
            while (i < len) {
                size_t hit = tok_find(out + i, len - i, st->from, st->n_from);
                size_t keep = hit == SIZE_MAX ? len - i : hit;
                size_t add = hit == SIZE_MAX ? 0 : st->n_to;
                if (m + keep + add > out_cap) {
                    free(tmp);
                    return SIZE_MAX;
                }
                memcpy(tmp + m, out + i, keep);
                memcpy(tmp + m + keep, st->to, add);
                m += keep + add;
                i += keep + (hit == SIZE_MAX ? 0 : st->n_from);
            }
            memcpy(out, tmp, m);
            len = m;
        }
    }
    free(tmp);
    return len;
}

/* ---- cutting long words -------------------------------------------------------------- */

/* Adds character c (UTF-8, len bytes) to the unsafe set; returns -1 when the set is full. */
static int add_unsafe(struct tokenizer *tok, const char *c, size_t len) {
    for (size_t i = 0; i < tok->n_cut_unsafe; i++) {
        if (tok->cut_unsafe_len[i] == len && memcmp(tok->cut_unsafe[i], c, len) == 0) {
            return 0;
        }
    }
    if (tok->n_cut_unsafe == 16 || len > 4) {
        return -1;
    }
    memcpy(tok->cut_unsafe[tok->n_cut_unsafe], c, len);
    tok->cut_unsafe_len[tok->n_cut_unsafe++] = (unsigned char)len;
    return 0;
}

void pipeline_plan_word_cut(struct tokenizer *tok) {
    tok->n_cut_sep = 0;
    if (tok->alphabet != BPE_ALPHABET_CHARS) {
        return;
    }
    /* The separator: what a space becomes (Replace " " -> X, or Metaspace's replacement), one
     * character that is itself a vocabulary token. */
    const char *sep = NULL;
    size_t n_sep = 0;
    for (size_t k = 0; k < tok->n_norm; k++) {
        const struct norm_step *st = &tok->norm[k];
        if (st->kind == NORM_REPLACE && st->n_from == 1 && st->from[0] == ' ') {
            sep = st->to;
            n_sep = st->n_to;
        }
    }
    if (tok->has_metaspace) {
        sep = tok->ms_rep;
        n_sep = tok->n_ms_rep;
    }
    if (sep == NULL || n_sep == 0 || n_sep >= sizeof(tok->cut_sep) ||
        tok_utf8_lead_len((unsigned char)sep[0]) != n_sep ||
        tokenizer_vocab_lookup(tok, sep, n_sep, tokenizer_hash_bytes(sep, n_sep)) < 0) {
        return;
    }
    /* Every character that some token has right before a separator that does not begin it
     * (nor follow another separator): a cut after such a character could split that token. */
    tok->n_cut_unsafe = 0;
    for (int32_t id = 0; id < tok->n_vocab; id++) {
        const char *key = tok->key_blob + tok->key_off[id];
        size_t n = tok->key_off[id + 1] - tok->key_off[id];
        size_t at = 0;
        for (;;) {
            size_t hit = tok_find(key + at, n - at, sep, n_sep);
            if (hit == SIZE_MAX) {
                break;
            }
            size_t p = at + hit;
            at = p + n_sep;
            if (p == 0 || (p >= n_sep && memcmp(key + p - n_sep, sep, n_sep) == 0)) {
                continue;
            }
            size_t q = p - 1;
            while (q > 0 && ((unsigned char)key[q] & 0xc0) == 0x80) {
                q--;
            }
            if (add_unsafe(tok, key + q, p - q) != 0) {
                return; /* too many: no cutting */
            }
        }
    }
    memcpy(tok->cut_sep, sep, n_sep);
    tok->n_cut_sep = n_sep;
}

/* ---- post-processor and tokenizer_config.json ----------------------------------------- */

/* Id of a token named by its content: added tokens first, then the vocabulary, or -1. */
static int32_t token_by_content(const struct tokenizer *tok, const char *s) {
    return tokenizer_token_id(tok, s, strlen(s));
}

static int append_ids(int32_t **ids, size_t *n, const int32_t *more, size_t n_more) {
    int32_t *grown = realloc(*ids, (*n + n_more + 1) * sizeof(*grown));
    if (grown == NULL) {
        return -1;
    }
    memcpy(grown + *n, more, n_more * sizeof(*more));
    *ids = grown;
    *n += n_more;
    return 0;
}

static int load_template(struct tokenizer *tok, const cJSON *p, const char *field, const char *file,
                         char *err, size_t err_size) {
    char q[48];
    const cJSON *single = get(p, "single");
    const cJSON *specials = get(p, "special_tokens");
    if (!cJSON_IsArray(single)) {
        tok_set_err(err, err_size, "%s: %s.single is not an array", file, field);
        return -1;
    }
    int seen_a = 0;
    const cJSON *item;
    cJSON_ArrayForEach(item, single) {
        const cJSON *seq = get(item, "Sequence");
        const cJSON *sp = get(item, "SpecialToken");
        if (seq != NULL) {
            const char *which = get_str(seq, "id");
            if (which == NULL || strcmp(which, "A") != 0 || seen_a) {
                tok_set_err(err, err_size,
                            "%s: %s.single must hold Sequence \"A\" once (got \"%s\")", file, field,
                            which != NULL ? tok_quote(which, strlen(which), q) : "?");
                return -1;
            }
            seen_a = 1;
            continue;
        }
        const char *name = get_str(sp, "id");
        const cJSON *entry = name != NULL ? get(specials, name) : NULL;
        const cJSON *ids = get(entry, "ids");
        if (name == NULL || !cJSON_IsArray(ids)) {
            tok_set_err(err, err_size,
                        "%s: %s.single has an item that is neither a Sequence nor a SpecialToken "
                        "listed in special_tokens",
                        file, field);
            return -1;
        }
        const cJSON *v;
        cJSON_ArrayForEach(v, ids) {
            double d = cJSON_IsNumber(v) ? v->valuedouble : -1;
            int32_t id = (int32_t)d;
            if (!(d >= 0 && d < tok->n_vocab) || (double)id != d || !tok->is_valid[id]) {
                tok_set_err(err, err_size,
                            "%s: %s.special_tokens[\"%s\"].ids holds %g, not a token", file, field,
                            tok_quote(name, strlen(name), q), d);
                return -1;
            }
            int32_t **list = seen_a ? &tok->suffix_ids : &tok->prefix_ids;
            size_t *n = seen_a ? &tok->n_suffix : &tok->n_prefix;
            if (append_ids(list, n, &id, 1) != 0) {
                tok_set_err(err, err_size, "%s: out of memory", file);
                return -1;
            }
        }
    }
    if (!seen_a) {
        tok_set_err(err, err_size, "%s: %s.single has no Sequence \"A\"", file, field);
        return -1;
    }
    return 0;
}

static int load_post_step(struct tokenizer *tok, const cJSON *p, const char *field,
                          const char *file, char *err, size_t err_size) {
    char q[48];
    const char *type = get_str(p, "type");
    if (type != NULL && strcmp(type, "ByteLevel") == 0) {
        return 0; /* offsets only */
    }
    if (type != NULL && strcmp(type, "TemplateProcessing") == 0) {
        if (tok->n_prefix > 0 || tok->n_suffix > 0) {
            tok_set_err(err, err_size, "%s: %s: a second TemplateProcessing is not supported", file,
                        field);
            return -1;
        }
        return load_template(tok, p, field, file, err, err_size);
    }
    const char *t = type != NULL ? type : "(missing)";
    tok_set_err(err, err_size,
                "%s: %s.type \"%s\" is not supported (gptd implements TemplateProcessing, "
                "ByteLevel and Sequence)",
                file, field, tok_quote(t, strlen(t), q));
    return -1;
}

static int load_post_processor(struct tokenizer *tok, const cJSON *root, const char *file,
                               char *err, size_t err_size) {
    const cJSON *p = get(root, "post_processor");
    if (is_null(p)) {
        return 0;
    }
    const char *type = get_str(p, "type");
    if (type == NULL || strcmp(type, "Sequence") != 0) {
        return load_post_step(tok, p, "post_processor", file, err, err_size);
    }
    const cJSON *list = get(p, "processors");
    if (!cJSON_IsArray(list)) {
        tok_set_err(err, err_size, "%s: post_processor.processors is not an array", file);
        return -1;
    }
    int i = 0;
    const cJSON *item;
    cJSON_ArrayForEach(item, list) {
        char field[48];
        snprintf(field, sizeof(field), "post_processor.processors[%d]", i++);
        if (load_post_step(tok, item, field, file, err, err_size) != 0) {
            return -1;
        }
    }
    return 0;
}

/* tokenizer_config.json names a token as a string or as {"content": string}. Returns its id,
 * -1 when the field is absent or null, -2 (with err set) when it names no token. */
static int32_t config_token(const struct tokenizer *tok, const cJSON *cfg, const char *key,
                            const char *path, char *err, size_t err_size) {
    char q[48];
    const cJSON *v = get(cfg, key);
    if (is_null(v)) {
        return -1;
    }
    const char *s = cJSON_IsString(v) ? v->valuestring : get_str(v, "content");
    int32_t id = s != NULL ? token_by_content(tok, s) : -1;
    if (id < 0) {
        tok_set_err(err, err_size, "%s: %s \"%s\" is not a token of the vocabulary", path, key,
                    s != NULL ? tok_quote(s, strlen(s), q) : "(not a string)");
        return -2;
    }
    return id;
}

static int load_config(struct tokenizer *tok, const char *dir, char *err, size_t err_size) {
    size_t n_path = strlen(dir) + 32;
    char *path = malloc(n_path);
    char *buf = NULL;
    cJSON *cfg = NULL;
    int rc = -1;
    if (path == NULL) {
        tok_set_err(err, err_size, "tokenizer: out of memory");
        return -1;
    }
    snprintf(path, n_path, "%s/tokenizer_config.json", dir);
    struct stat st;
    if (stat(path, &st) != 0) {
        rc = 0;
        goto cleanup;
    }
    cfg = tok_parse_json_file(path, &buf, err, err_size);
    if (cfg == NULL) {
        goto cleanup;
    }
    if (!cJSON_IsObject(cfg)) {
        tok_set_err(err, err_size, "%s: the top level is not a JSON object", path);
        goto cleanup;
    }
    int32_t bos = config_token(tok, cfg, "bos_token", path, err, err_size);
    int32_t eos = config_token(tok, cfg, "eos_token", path, err, err_size);
    if (bos == -2 || eos == -2) {
        goto cleanup;
    }
    tok->bos_id = bos >= 0 ? bos : tok->bos_id;
    tok->eos_id = eos >= 0 ? eos : tok->eos_id;
    /* add_prefix_space makes transformers rebuild the pre-tokenizer (GPT-2) or convert the
     * tokenizer anew from SentencePiece (Llama) when it disagrees with tokenizer.json: refused
     * then, rather than encoded differently. */
    const cJSON *aps = get(cfg, "add_prefix_space");
    int prepends = tok->ms_prepend != PREPEND_NEVER && tok->has_metaspace;
    for (size_t k = 0; k < tok->n_norm; k++) {
        prepends |= tok->norm[k].kind == NORM_PREPEND;
    }
    if (cJSON_IsBool(aps) && cJSON_IsTrue(aps) != prepends) {
        tok_set_err(err, err_size,
                    "%s: add_prefix_space %s disagrees with tokenizer.json, which %s a space "
                    "in front of the text; transformers would rebuild the tokenizer, gptd does "
                    "not",
                    path, cJSON_IsTrue(aps) ? "true" : "false", prepends ? "puts" : "does not put");
        goto cleanup;
    }
    /* transformers' Llama and Gemma tokenizers rebuild the post-processor from these two
     * flags (an absent one counting as false); gptd does so whenever either is present. */
    const cJSON *add_bos = get(cfg, "add_bos_token");
    const cJSON *add_eos = get(cfg, "add_eos_token");
    if ((!is_null(add_bos) && !cJSON_IsBool(add_bos)) ||
        (!is_null(add_eos) && !cJSON_IsBool(add_eos))) {
        tok_set_err(err, err_size, "%s: add_bos_token and add_eos_token must be booleans", path);
        goto cleanup;
    }
    if (cJSON_IsBool(add_bos) || cJSON_IsBool(add_eos)) {
        tok->n_prefix = 0;
        tok->n_suffix = 0;
        if (cJSON_IsTrue(add_bos)) {
            if (bos < 0 || append_ids(&tok->prefix_ids, &tok->n_prefix, &bos, 1) != 0) {
                tok_set_err(err, err_size, "%s: add_bos_token is true but bos_token is not set",
                            path);
                goto cleanup;
            }
        }
        if (cJSON_IsTrue(add_eos)) {
            if (eos < 0 || append_ids(&tok->suffix_ids, &tok->n_suffix, &eos, 1) != 0) {
                tok_set_err(err, err_size, "%s: add_eos_token is true but eos_token is not set",
                            path);
                goto cleanup;
            }
        }
    }
    rc = 0;
cleanup:
    cJSON_Delete(cfg);
    free(buf);
    free(path);
    return rc;
}

int pipeline_load_specials(struct tokenizer *tok, const cJSON *root, const char *file,
                           const char *dir, char *err, size_t err_size) {
    char q[48];
    tok->unk_id = -1;
    tok->bos_id = -1;
    tok->eos_id = token_by_content(tok, "<|endoftext|>");
    if (root != NULL) {
        const cJSON *unk = get(get(root, "model"), "unk_token");
        if (!is_null(unk)) {
            const char *s = cJSON_IsString(unk) ? unk->valuestring : NULL;
            tok->unk_id = s != NULL ? token_by_content(tok, s) : -1;
            if (tok->unk_id < 0) {
                tok_set_err(err, err_size, "%s: model.unk_token \"%s\" is not a token", file,
                            s != NULL ? tok_quote(s, strlen(s), q) : "(not a string)");
                return -1;
            }
        }
        if (load_post_processor(tok, root, file, err, err_size) != 0) {
            return -1;
        }
    }
    return load_config(tok, dir, err, err_size);
}
