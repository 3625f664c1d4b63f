/*
 * lexer.c: template source -> tokens, the way jinja2's Lexer does it with trim_blocks and
 * lstrip_blocks on and keep_trailing_newline off.
 *
 * The whitespace rules are jinja2's regular expressions spelled out by hand: all newlines are
 * first normalised to "\n" and one trailing newline dropped; `{%-`/`{{-`/`{#-` strip the
 * whitespace before the tag (Python's str.rstrip(), so Unicode whitespace too); without a sign,
 * a block or comment tag alone on its line (after lstrip_blocks' check that only whitespace
 * precedes it since the last newline, or since the start when the previous tag ended a line)
 * takes that whitespace away; `%}` and `#}` eat one following newline (trim_blocks), `-%}`/`-}}`
 * all following whitespace, `+%}` nothing. End tags are only recognised while brackets are
 * balanced (`{{ {'a': 1}}}`).
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "template_internal.h"

#define MAX_BRACKETS 256

struct lexer {
    const char *s; /* normalised source */
    size_t len, pos;
    struct token_list *toks;
    char *err;
    size_t err_size;
    bool failed;
    bool line_starting;
};

static void lex_error_at(struct lexer *lx, size_t at, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void lex_error_at(struct lexer *lx, size_t at, const char *fmt, ...) {
    if (lx->failed) {
        return;
    }
    lx->failed = true;
    uint32_t line = 1, col = 1;
    for (size_t i = 0; i < at && i < lx->len; i++) {
        if (lx->s[i] == '\n') {
            line++;
            col = 1;
        } else if (((unsigned char)lx->s[i] & 0xc0) != 0x80) {
            col++;
        }
    }
    int n = snprintf(lx->err, lx->err_size, "line %u, column %u: ", line, col);
    if (n >= 0 && (size_t)n < lx->err_size) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(lx->err + n, lx->err_size - (size_t)n, fmt, ap);
        va_end(ap);
    }
}

static struct token *push_token(struct lexer *lx, enum tok_type type, size_t at) {
    struct token_list *t = lx->toks;
    if (t->n == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 64;
        struct token *v = realloc(t->v, cap * sizeof(*v));
        if (v == NULL) {
            lex_error_at(lx, at, "out of memory");
            return NULL;
        }
        t->v = v;
        t->cap = cap;
    }
    struct token *tok = &t->v[t->n++];
    memset(tok, 0, sizeof(*tok));
    tok->type = type;
    tok->off = at; /* line and column are computed from it at the end */
    return tok;
}

static int token_set_text(struct lexer *lx, struct token *tok, const char *s, size_t n) {
    tok->str = malloc(n + 1);
    if (tok->str == NULL) {
        lex_error_at(lx, lx->pos, "out of memory");
        return -1;
    }
    if (n > 0) {
        memcpy(tok->str, s, n);
    }
    tok->str[n] = '\0';
    tok->len = n;
    return 0;
}

/* The code point at s[i] and its length. */
static uint32_t cp_at(const struct lexer *lx, size_t i, size_t *n) {
    size_t k = i;
    uint32_t cp = utf8_next(lx->s, lx->len, &k);
    *n = k - i;
    return cp;
}

static size_t skip_space(const struct lexer *lx, size_t i) {
    while (i < lx->len) {
        size_t n;
        if (!py_isspace(cp_at(lx, i, &n))) {
            break;
        }
        i += n;
    }
    return i;
}

/* Length of text once Python's str.rstrip() has run on it. */
static size_t rstrip_len(const char *s, size_t len) {
    size_t end = len;
    size_t i = 0, last_non_space_end = 0;
    while (i < end) {
        size_t k = i;
        uint32_t cp = utf8_next(s, end, &k);
        if (!py_isspace(cp)) {
            last_non_space_end = k;
        }
        i = k;
    }
    return last_non_space_end;
}

static bool all_space(const char *s, size_t len) {
    for (size_t i = 0; i < len;) {
        if (!py_isspace(utf8_next(s, len, &i))) {
            return false;
        }
    }
    return true;
}

/* Emits the data before a tag with jinja2's OptionalLStrip rule applied. */
static int emit_data(struct lexer *lx, size_t start, size_t end, char sign, bool is_variable) {
    const char *text = lx->s + start;
    size_t n = end - start;
    if (sign == '-') {
        n = rstrip_len(text, n);
    } else if (sign != '+' && !is_variable) {
        size_t l_pos = 0;
        for (size_t i = n; i > 0; i--) {
            if (text[i - 1] == '\n') {
                l_pos = i;
                break;
            }
        }
        if ((l_pos > 0 || lx->line_starting) && n > l_pos && all_space(text + l_pos, n - l_pos)) {
            n = l_pos;
        }
    }
    if (n == 0) {
        return 0;
    }
    struct token *tok = push_token(lx, TOK_DATA, start);
    return tok != NULL ? token_set_text(lx, tok, text, n) : -1;
}

static bool starts(const struct lexer *lx, size_t i, const char *w) {
    size_t n = strlen(w);
    return lx->len - i >= n && memcmp(lx->s + i, w, n) == 0;
}

/* Matches `\s*WORD\s*` then an end of block tag at i: returns the position after it, or 0. */
static size_t match_word_tag(struct lexer *lx, size_t i, const char *word, bool trim_newline) {
    i = skip_space(lx, i);
    if (!starts(lx, i, word)) {
        return 0;
    }
    i = skip_space(lx, i + strlen(word));
    if (starts(lx, i, "+%}")) {
        return i + 3;
    }
    if (starts(lx, i, "-%}")) {
        return skip_space(lx, i + 3);
    }
    if (starts(lx, i, "%}")) {
        i += 2;
        if (trim_newline && i < lx->len && lx->s[i] == '\n') {
            i++;
        }
        return i;
    }
    return 0;
}

static bool is_ident_start(uint32_t cp) {
    if (cp < 0x80) {
        return (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z') || cp == '_';
    }
    utf8proc_category_t c = utf8proc_category((utf8proc_int32_t)cp);
    return c == UTF8PROC_CATEGORY_LU || c == UTF8PROC_CATEGORY_LL || c == UTF8PROC_CATEGORY_LT ||
           c == UTF8PROC_CATEGORY_LM || c == UTF8PROC_CATEGORY_LO || c == UTF8PROC_CATEGORY_NL;
}

static bool is_ident_char(uint32_t cp) {
    if (cp < 0x80) {
        return is_ident_start(cp) || (cp >= '0' && cp <= '9');
    }
    utf8proc_category_t c = utf8proc_category((utf8proc_int32_t)cp);
    return is_ident_start(cp) || c == UTF8PROC_CATEGORY_MN || c == UTF8PROC_CATEGORY_MC ||
           c == UTF8PROC_CATEGORY_ND || c == UTF8PROC_CATEGORY_PC;
}

static bool is_digit(char c) {
    return c >= '0' && c <= '9';
}

/* `(\d+_)*\d+` at i: the end, or i when absent. */
static size_t match_digits(const struct lexer *lx, size_t i) {
    if (i >= lx->len || !is_digit(lx->s[i])) {
        return i;
    }
    size_t j = i;
    while (true) {
        while (j < lx->len && is_digit(lx->s[j])) {
            j++;
        }
        if (j + 1 < lx->len && lx->s[j] == '_' && is_digit(lx->s[j + 1])) {
            j++;
            continue;
        }
        return j;
    }
}

/* jinja2's float_re at i: the end, or 0. */
static size_t match_float(const struct lexer *lx, size_t i) {
    if (i > 0 && lx->s[i - 1] == '.') {
        return 0;
    }
    size_t j = match_digits(lx, i);
    if (j == i) {
        return 0;
    }
    size_t frac_end = 0;
    if (j < lx->len && lx->s[j] == '.') {
        size_t k = match_digits(lx, j + 1);
        if (k > j + 1) {
            frac_end = k;
        }
    }
    size_t after = frac_end ? frac_end : j;
    if (after < lx->len && (lx->s[after] == 'e' || lx->s[after] == 'E')) {
        size_t k = after + 1;
        if (k < lx->len && (lx->s[k] == '+' || lx->s[k] == '-')) {
            k++;
        }
        size_t e = match_digits(lx, k);
        if (e > k) {
            return e;
        }
    }
    return frac_end;
}

static int hexval(char c) {
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

/* jinja2's integer_re at i: the end (0 when none), the value in *out (-1 on overflow). */
static size_t match_int(struct lexer *lx, size_t i, int64_t *out, bool *overflow) {
    const char *s = lx->s;
    size_t len = lx->len;
    *overflow = false;
    if (s[i] == '0' && i + 2 < len && strchr("bBoOxX", s[i + 1]) != NULL) {
        int base = (s[i + 1] == 'b' || s[i + 1] == 'B')   ? 2
                   : (s[i + 1] == 'o' || s[i + 1] == 'O') ? 8
                                                          : 16;
        size_t j = i + 2;
        uint64_t v = 0;
        bool any = false;
        while (j < len) {
            size_t k = j;
            if (s[k] == '_') {
                k++;
            }
            int d = k < len ? hexval(s[k]) : -1;
            if (d < 0 || d >= base) {
                break;
            }
            if (v > (UINT64_MAX - (uint64_t)d) / (uint64_t)base) {
                *overflow = true;
            }
            v = v * (uint64_t)base + (uint64_t)d;
            j = k + 1;
            any = true;
        }
        if (any) {
            if (v > INT64_MAX) {
                *overflow = true;
            }
            *out = (int64_t)v;
            return j;
        }
    }
    if (s[i] == '0') {
        size_t j = i + 1;
        while (j < len && (s[j] == '0' || (s[j] == '_' && j + 1 < len && s[j + 1] == '0'))) {
            j += s[j] == '_' ? 2 : 1;
        }
        *out = 0;
        return j;
    }
    if (s[i] >= '1' && s[i] <= '9') {
        size_t j = match_digits(lx, i);
        uint64_t v = 0;
        for (size_t k = i; k < j; k++) {
            if (s[k] == '_') {
                continue;
            }
            uint64_t d = (uint64_t)(s[k] - '0');
            if (v > (INT64_MAX - d) / 10) {
                *overflow = true;
            }
            v = v * 10 + d;
        }
        *out = (int64_t)v;
        return j;
    }
    return 0;
}

/* Decodes a string literal's body as Python's unicode-escape codec does after jinja2's
 * backslashreplace. */
static int decode_string(struct lexer *lx, size_t start, size_t end, struct token *tok) {
    struct buf b;
    buf_init(&b, SIZE_MAX / 2);
    const char *s = lx->s;
    for (size_t i = start; i < end;) {
        if (s[i] != '\\') {
            size_t k = i;
            utf8_next(s, end, &k);
            buf_add(&b, s + i, k - i);
            i = k;
            continue;
        }
        size_t at = i;
        i++; /* the body never ends in a lone backslash: the string regex forbids it */
        unsigned char e = (unsigned char)s[i];
        uint32_t cp = 0;
        int digits = 0;
        switch (e) {
        case '\n':
            i++;
            continue;
        case '\\':
        case '\'':
        case '"':
            buf_addc(&b, (char)e);
            i++;
            continue;
        case 'a':
            buf_addc(&b, '\a');
            i++;
            continue;
        case 'b':
            buf_addc(&b, '\b');
            i++;
            continue;
        case 'f':
            buf_addc(&b, '\f');
            i++;
            continue;
        case 'n':
            buf_addc(&b, '\n');
            i++;
            continue;
        case 'r':
            buf_addc(&b, '\r');
            i++;
            continue;
        case 't':
            buf_addc(&b, '\t');
            i++;
            continue;
        case 'v':
            buf_addc(&b, '\v');
            i++;
            continue;
        case 'x':
            digits = 2;
            break;
        case 'u':
            digits = 4;
            break;
        case 'U':
            digits = 8;
            break;
        case 'N':
            buf_free(&b);
            lex_error_at(lx, at, "\\N{...} escapes are not supported");
            return -1;
        default:
            if (e >= '0' && e <= '7') {
                int n = 0;
                while (n < 3 && i < end && s[i] >= '0' && s[i] <= '7') {
                    cp = cp * 8 + (uint32_t)(s[i] - '0');
                    i++;
                    n++;
                }
                buf_add_cp(&b, cp);
                continue;
            }
            if (e >= 0x80) {
                /* backslashreplace turned the character into \xNN, \uNNNN or \UNNNNNNNN, and
                 * the template's backslash escapes that backslash. */
                size_t k = i;
                cp = utf8_next(s, end, &k);
                i = k;
                buf_addc(&b, '\\');
                buf_addf(&b, cp < 0x100 ? "x%02x" : cp < 0x10000 ? "u%04x" : "U%08x", cp);
                continue;
            }
            buf_addc(&b, '\\'); /* unknown escapes stay as written */
            continue;
        }
        i++;
        for (int d = 0; d < digits; d++) {
            int h = i < end ? hexval(s[i]) : -1;
            if (h < 0) {
                buf_free(&b);
                lex_error_at(lx, at, "truncated \\%cXX escape", e);
                return -1;
            }
            cp = cp * 16 + (uint32_t)h;
            i++;
        }
        if (cp > 0x10ffff) {
            buf_free(&b);
            lex_error_at(lx, at, "illegal Unicode character");
            return -1;
        }
        if (cp >= 0xd800 && cp < 0xe000) {
            cp = 0xfffd; /* a lone surrogate has no UTF-8 form */
        }
        buf_add_cp(&b, cp);
    }
    if (!buf_ok(&b)) {
        buf_free(&b);
        lex_error_at(lx, start, "out of memory");
        return -1;
    }
    tok->str = buf_take(&b, &tok->len);
    if (tok->str == NULL) {
        lex_error_at(lx, start, "out of memory");
        return -1;
    }
    return 0;
}

static const char *const operators2[] = {"//", "**", "==", "!=", ">=", "<="};
static const char operators1[] = "+-/*%~[](){}><=.:|,;";

/* Lexes the inside of a {{ }} or {% %} tag up to and including its end. */
static int lex_tag(struct lexer *lx, bool is_block) {
    char brackets[MAX_BRACKETS];
    size_t n_brackets = 0;
    while (true) {
        size_t i = lx->pos;
        if (i >= lx->len) {
            lex_error_at(lx, i,
                         is_block ? "unexpected end of template, expected '%%}'"
                                  : "unexpected end of template, expected '}}'");
            return -1;
        }
        if (n_brackets == 0) {
            size_t end = 0;
            if (is_block) {
                if (starts(lx, i, "+%}")) {
                    end = i + 3;
                } else if (starts(lx, i, "-%}")) {
                    end = skip_space(lx, i + 3);
                } else if (starts(lx, i, "%}")) {
                    end = i + 2;
                    if (end < lx->len && lx->s[end] == '\n') {
                        end++;
                    }
                }
            } else {
                if (starts(lx, i, "-}}")) {
                    end = skip_space(lx, i + 3);
                } else if (starts(lx, i, "}}")) {
                    end = i + 2;
                }
            }
            if (end != 0) {
                if (push_token(lx, is_block ? TOK_BLOCK_END : TOK_VAR_END, i) == NULL) {
                    return -1;
                }
                lx->line_starting = lx->s[end - 1] == '\n';
                lx->pos = end;
                return 0;
            }
        }
        size_t n;
        uint32_t cp = cp_at(lx, i, &n);
        if (py_isspace(cp)) {
            lx->pos = skip_space(lx, i);
            continue;
        }
        size_t end = match_float(lx, i);
        if (end != 0) {
            struct token *tok = push_token(lx, TOK_FLOAT, i);
            if (tok == NULL) {
                return -1;
            }
            char tmp[512];
            size_t m = 0;
            for (size_t k = i; k < end && m < sizeof(tmp) - 1; k++) {
                if (lx->s[k] != '_') {
                    tmp[m++] = lx->s[k];
                }
            }
            tmp[m] = '\0';
            tok->fval = strtod(tmp, NULL);
            lx->pos = end;
            continue;
        }
        if (is_digit(lx->s[i])) {
            int64_t v;
            bool overflow;
            end = match_int(lx, i, &v, &overflow);
            if (overflow) {
                lex_error_at(lx, i, "integer literal too large");
                return -1;
            }
            struct token *tok = push_token(lx, TOK_INT, i);
            if (tok == NULL) {
                return -1;
            }
            tok->ival = v;
            lx->pos = end;
            continue;
        }
        if (is_ident_start(cp)) {
            end = i + n;
            while (end < lx->len) {
                size_t m;
                if (!is_ident_char(cp_at(lx, end, &m))) {
                    break;
                }
                end += m;
            }
            struct token *tok = push_token(lx, TOK_NAME, i);
            if (tok == NULL || token_set_text(lx, tok, lx->s + i, end - i) != 0) {
                return -1;
            }
            lx->pos = end;
            continue;
        }
        if (cp == '\'' || cp == '"') {
            char q = (char)cp;
            size_t k = i + 1;
            while (k < lx->len && lx->s[k] != q) {
                k += lx->s[k] == '\\' && k + 1 < lx->len ? 2 : 1;
            }
            if (k >= lx->len) {
                lex_error_at(lx, i, "unexpected char %s", q == '\'' ? "\"'\"" : "'\"'");
                return -1;
            }
            struct token *tok = push_token(lx, TOK_STRING, i);
            if (tok == NULL || decode_string(lx, i + 1, k, tok) != 0) {
                return -1;
            }
            lx->pos = k + 1;
            continue;
        }
        struct token *tok = NULL;
        for (size_t k = 0; k < sizeof(operators2) / sizeof(operators2[0]); k++) {
            if (starts(lx, i, operators2[k])) {
                tok = push_token(lx, TOK_OP, i);
                if (tok == NULL) {
                    return -1;
                }
                memcpy(tok->op, operators2[k], 2);
                lx->pos = i + 2;
                break;
            }
        }
        if (tok != NULL) {
            continue;
        }
        char c = lx->s[i];
        if (c == '\0' || strchr(operators1, c) == NULL) {
            if (cp < 0x80 && cp >= 0x20) {
                lex_error_at(lx, i, "unexpected char '%c'", c);
            } else {
                lex_error_at(lx, i, "unexpected char U+%04X", cp);
            }
            return -1;
        }
        if (c == '{' || c == '(' || c == '[') {
            if (n_brackets == MAX_BRACKETS) {
                lex_error_at(lx, i, "brackets nested too deeply");
                return -1;
            }
            brackets[n_brackets++] = c == '{' ? '}' : c == '(' ? ')' : ']';
        } else if (c == '}' || c == ')' || c == ']') {
            if (n_brackets == 0) {
                lex_error_at(lx, i, "unexpected '%c'", c);
                return -1;
            }
            char want = brackets[--n_brackets];
            if (want != c) {
                lex_error_at(lx, i, "unexpected '%c', expected '%c'", c, want);
                return -1;
            }
        }
        tok = push_token(lx, TOK_OP, i);
        if (tok == NULL) {
            return -1;
        }
        tok->op[0] = c;
        lx->pos = i + 1;
    }
}

static int lex_root(struct lexer *lx) {
    while (lx->pos < lx->len) {
        /* The next tag start. */
        size_t t = lx->pos;
        const char *hit = NULL;
        while (t + 1 < lx->len) {
            hit = memchr(lx->s + t, '{', lx->len - t - 1);
            if (hit == NULL) {
                break;
            }
            t = (size_t)(hit - lx->s);
            char c = lx->s[t + 1];
            if (c == '{' || c == '%' || c == '#') {
                break;
            }
            hit = NULL;
            t++;
        }
        if (hit == NULL) {
            struct token *tok = push_token(lx, TOK_DATA, lx->pos);
            if (tok == NULL || token_set_text(lx, tok, lx->s + lx->pos, lx->len - lx->pos) != 0) {
                return -1;
            }
            lx->pos = lx->len;
            return 0;
        }
        char kind = lx->s[t + 1];
        size_t after = t + 2;
        char sign = 0;
        if (after < lx->len && (lx->s[after] == '-' || lx->s[after] == '+')) {
            sign = lx->s[after];
            after++;
        }
        if (kind == '%') {
            size_t raw_end = 0;
            size_t k = skip_space(lx, after);
            if (starts(lx, k, "raw")) {
                k = skip_space(lx, k + 3);
                if (starts(lx, k, "-%}")) {
                    raw_end = skip_space(lx, k + 3);
                } else if (starts(lx, k, "%}")) {
                    raw_end = k + 2; /* jinja2 does not trim the newline after {% raw %} */
                }
            }
            if (raw_end != 0) {
                if (emit_data(lx, lx->pos, t, sign, false) != 0) {
                    return -1;
                }
                /* Find {%(-|+|)\s*endraw\s*(end) */
                size_t body = raw_end, j = raw_end, close = 0;
                char esign = 0;
                while (j + 1 < lx->len) {
                    const char *h = memchr(lx->s + j, '{', lx->len - j - 1);
                    if (h == NULL) {
                        break;
                    }
                    j = (size_t)(h - lx->s);
                    if (lx->s[j + 1] == '%') {
                        size_t m = j + 2;
                        esign = 0;
                        if (m < lx->len && (lx->s[m] == '-' || lx->s[m] == '+')) {
                            esign = lx->s[m];
                            m++;
                        }
                        close = match_word_tag(lx, m, "endraw", true);
                        if (close != 0) {
                            break;
                        }
                    }
                    j++;
                }
                if (close == 0) {
                    lex_error_at(lx, t, "Missing end of raw directive");
                    return -1;
                }
                lx->line_starting = lx->s[raw_end - 1] == '\n';
                if (emit_data(lx, body, j, esign, false) != 0) {
                    return -1;
                }
                lx->line_starting = lx->s[close - 1] == '\n';
                lx->pos = close;
                continue;
            }
        }
        if (emit_data(lx, lx->pos, t, sign, kind == '{') != 0) {
            return -1;
        }
        if (kind == '#') {
            size_t j = after, close = 0;
            while (j + 1 < lx->len) {
                if (lx->s[j] == '+' && starts(lx, j, "+#}")) {
                    close = j + 3;
                } else if (lx->s[j] == '-' && starts(lx, j, "-#}")) {
                    close = skip_space(lx, j + 3);
                } else if (lx->s[j] == '#' && lx->s[j + 1] == '}') {
                    close = j + 2;
                    if (close < lx->len && lx->s[close] == '\n') {
                        close++;
                    }
                }
                if (close != 0) {
                    break;
                }
                j++;
            }
            if (close == 0) {
                lex_error_at(lx, t, "Missing end of comment tag");
                return -1;
            }
            lx->line_starting = lx->s[close - 1] == '\n';
            lx->pos = close;
            continue;
        }
        if (push_token(lx, kind == '{' ? TOK_VAR_BEGIN : TOK_BLOCK_BEGIN, t) == NULL) {
            return -1;
        }
        lx->line_starting = false;
        lx->pos = after;
        if (lex_tag(lx, kind == '%') != 0) {
            return -1;
        }
    }
    return 0;
}

void lexer_free(struct token_list *toks) {
    for (size_t i = 0; i < toks->n; i++) {
        free(toks->v[i].str);
    }
    free(toks->v);
    toks->v = NULL;
    toks->n = toks->cap = 0;
}

int lexer_run(const char *src, size_t len, struct token_list *toks, char *err, size_t err_size) {
    memset(toks, 0, sizeof(*toks));
    if (!utf8_valid(src, len)) {
        size_t i = 0, line = 1;
        while (i < len) {
            size_t k = i;
            uint32_t cp = utf8_next(src, len, &k);
            if (cp == 0xfffd && !(k - i == 3 && (unsigned char)src[i] == 0xef)) {
                break;
            }
            line += src[i] == '\n';
            i = k;
        }
        snprintf(err, err_size, "line %zu, column 1: the template is not valid UTF-8", line);
        return -1;
    }
    /* Newlines normalised to \n, one trailing newline dropped (keep_trailing_newline off). */
    char *s = malloc(len + 1);
    if (s == NULL) {
        snprintf(err, err_size, "line 1, column 1: out of memory");
        return -1;
    }
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        if (src[i] == '\r') {
            s[n++] = '\n';
            if (i + 1 < len && src[i + 1] == '\n') {
                i++;
            }
        } else {
            s[n++] = src[i];
        }
    }
    if (n > 0 && s[n - 1] == '\n') {
        n--;
    }
    s[n] = '\0';
    struct lexer lx = {
        .s = s, .len = n, .toks = toks, .err = err, .err_size = err_size, .line_starting = true};
    int rc = lex_root(&lx);
    if (rc == 0 && push_token(&lx, TOK_EOF, n) == NULL) {
        rc = -1;
    }
    if (rc == 0) {
        /* Offsets -> line and column, in one pass. */
        size_t at = 0;
        uint32_t line = 1, col = 1;
        for (size_t k = 0; k < toks->n; k++) {
            struct token *tok = &toks->v[k];
            size_t off = tok->off;
            for (; at < off && at < n; at++) {
                if (s[at] == '\n') {
                    line++;
                    col = 1;
                } else if (((unsigned char)s[at] & 0xc0) != 0x80) {
                    col++;
                }
            }
            tok->line = line;
            tok->col = col;
        }
    } else {
        lexer_free(toks);
    }
    free(s);
    return rc;
}
