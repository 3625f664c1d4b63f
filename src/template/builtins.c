/*
 * builtins.c: jinja2's filters and tests, the Python str/list/dict methods templates call, and
 * the globals of transformers' chat-template environment (range, dict, namespace, cycler,
 * joiner, raise_exception, strftime_now), each as jinja2 3.1 defines it.
 *
 * Names are resolved at compile time (an unknown filter or test is a compile error); the
 * renderer calls in here with evaluated arguments. Sequences that jinja2 returns as generators
 * (map, select, unique, ...) are returned as lists: they iterate, test and join the same.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <utf8proc.h>

#include "template_internal.h"

/* ---- names ---- */

struct name_id {
    const char *name;
    int id;
};

static const struct name_id filter_names[] = {
    {"abs", F_ABS},
    {"attr", F_ATTR},
    {"batch", F_BATCH},
    {"capitalize", F_CAPITALIZE},
    {"center", F_CENTER},
    {"count", F_COUNT},
    {"d", F_DEFAULT},
    {"default", F_DEFAULT},
    {"dictsort", F_DICTSORT},
    {"e", F_ESCAPE},
    {"escape", F_ESCAPE},
    {"first", F_FIRST},
    {"float", F_FLOAT},
    {"forceescape", F_FORCEESCAPE},
    {"format", F_FORMAT},
    {"indent", F_INDENT},
    {"int", F_INT},
    {"items", F_ITEMS},
    {"join", F_JOIN},
    {"last", F_LAST},
    {"length", F_LENGTH},
    {"list", F_LIST},
    {"lower", F_LOWER},
    {"map", F_MAP},
    {"max", F_MAX},
    {"min", F_MIN},
    {"reject", F_REJECT},
    {"rejectattr", F_REJECTATTR},
    {"replace", F_REPLACE},
    {"reverse", F_REVERSE},
    {"round", F_ROUND},
    {"safe", F_SAFE},
    {"select", F_SELECT},
    {"selectattr", F_SELECTATTR},
    {"slice", F_SLICE},
    {"sort", F_SORT},
    {"string", F_STRING},
    {"striptags", F_STRIPTAGS},
    {"sum", F_SUM},
    {"title", F_TITLE},
    {"tojson", F_TOJSON},
    {"trim", F_TRIM},
    {"truncate", F_TRUNCATE},
    {"unique", F_UNIQUE},
    {"upper", F_UPPER},
    {"wordcount", F_WORDCOUNT},
    {NULL, 0},
};

static const struct name_id test_names[] = {
    {"boolean", T_BOOLEAN},
    {"callable", T_CALLABLE},
    {"defined", T_DEFINED},
    {"divisibleby", T_DIVISIBLEBY},
    {"eq", T_EQ},
    {"equalto", T_EQ},
    {"escaped", T_ESCAPED},
    {"even", T_EVEN},
    {"false", T_FALSE},
    {"filter", T_FILTER},
    {"float", T_FLOAT},
    {"ge", T_GE},
    {"gt", T_GT},
    {"greaterthan", T_GT},
    {"in", T_IN},
    {"integer", T_INTEGER},
    {"iterable", T_ITERABLE},
    {"le", T_LE},
    {"lower", T_LOWER},
    {"lt", T_LT},
    {"lessthan", T_LT},
    {"mapping", T_MAPPING},
    {"ne", T_NE},
    {"none", T_NONE},
    {"number", T_NUMBER},
    {"odd", T_ODD},
    {"sameas", T_SAMEAS},
    {"sequence", T_SEQUENCE},
    {"string", T_STRING},
    {"test", T_TEST},
    {"true", T_TRUE},
    {"undefined", T_UNDEFINED},
    {"upper", T_UPPER},
    /* operator spellings: usable by name in select('==', x), not after `is` */
    {"==", T_EQ},
    {"!=", T_NE},
    {"<", T_LT},
    {"<=", T_LE},
    {">", T_GT},
    {">=", T_GE},
    {NULL, 0},
};

static const struct name_id global_names[] = {
    {"range", B_RANGE},
    {"dict", B_DICT},
    {"namespace", B_NAMESPACE},
    {"raise_exception", B_RAISE_EXCEPTION},
    {"strftime_now", B_STRFTIME_NOW},
    {"cycler", B_CYCLER},
    {"joiner", B_JOINER},
    {"lipsum", B_LIPSUM},
    {NULL, 0},
};

static int find_name(const struct name_id *t, const char *name) {
    for (; t->name != NULL; t++) {
        if (strcmp(t->name, name) == 0) {
            return t->id;
        }
    }
    return -1;
}

int builtins_filter_id(const char *name) {
    return find_name(filter_names, name);
}

int builtins_test_id(const char *name) {
    return find_name(test_names, name);
}

int builtins_global_id(const char *name) {
    return find_name(global_names, name);
}

/* ---- methods ---- */

enum method_id {
    /* str */
    M_STRIP,
    M_LSTRIP,
    M_RSTRIP,
    M_SPLIT,
    M_RSPLIT,
    M_SPLITLINES,
    M_STARTSWITH,
    M_ENDSWITH,
    M_UPPER,
    M_LOWER,
    M_TITLE,
    M_CAPITALIZE,
    M_SWAPCASE,
    M_REPLACE,
    M_FIND,
    M_RFIND,
    M_INDEX,
    M_RINDEX,
    M_COUNT,
    M_JOIN,
    M_FORMAT,
    M_ISDIGIT,
    M_ISALPHA,
    M_ISALNUM,
    M_ISSPACE,
    M_ISLOWER,
    M_ISUPPER,
    M_ISNUMERIC,
    M_ISDECIMAL,
    M_CENTER,
    M_LJUST,
    M_RJUST,
    M_ZFILL,
    M_PARTITION,
    M_RPARTITION,
    M_REMOVEPREFIX,
    M_REMOVESUFFIX,
    M_CASEFOLD,
    /* list */
    M_LIST_INDEX,
    M_LIST_COUNT,
    M_LIST_COPY,
    /* dict */
    M_ITEMS,
    M_KEYS,
    M_VALUES,
    M_GET,
    M_DICT_COPY,
    /* cycler, loop */
    M_CYCLER_NEXT,
    M_CYCLER_RESET,
    M_LOOP_CYCLE,
    M_LOOP_CHANGED,
    M_UNSAFE,
};

static const struct name_id str_methods[] = {
    {"strip", M_STRIP},
    {"lstrip", M_LSTRIP},
    {"rstrip", M_RSTRIP},
    {"split", M_SPLIT},
    {"rsplit", M_RSPLIT},
    {"splitlines", M_SPLITLINES},
    {"startswith", M_STARTSWITH},
    {"endswith", M_ENDSWITH},
    {"upper", M_UPPER},
    {"lower", M_LOWER},
    {"title", M_TITLE},
    {"capitalize", M_CAPITALIZE},
    {"swapcase", M_SWAPCASE},
    {"replace", M_REPLACE},
    {"find", M_FIND},
    {"rfind", M_RFIND},
    {"index", M_INDEX},
    {"rindex", M_RINDEX},
    {"count", M_COUNT},
    {"join", M_JOIN},
    {"format", M_FORMAT},
    {"isdigit", M_ISDIGIT},
    {"isalpha", M_ISALPHA},
    {"isalnum", M_ISALNUM},
    {"isspace", M_ISSPACE},
    {"islower", M_ISLOWER},
    {"isupper", M_ISUPPER},
    {"isnumeric", M_ISNUMERIC},
    {"isdecimal", M_ISDECIMAL},
    {"center", M_CENTER},
    {"ljust", M_LJUST},
    {"rjust", M_RJUST},
    {"zfill", M_ZFILL},
    {"partition", M_PARTITION},
    {"rpartition", M_RPARTITION},
    {"removeprefix", M_REMOVEPREFIX},
    {"removesuffix", M_REMOVESUFFIX},
    {"casefold", M_CASEFOLD},
    {NULL, 0},
};

static const struct name_id list_methods[] = {
    {"index", M_LIST_INDEX}, {"count", M_LIST_COUNT}, {"copy", M_LIST_COPY}, {"append", M_UNSAFE},
    {"extend", M_UNSAFE},    {"insert", M_UNSAFE},    {"pop", M_UNSAFE},     {"remove", M_UNSAFE},
    {"reverse", M_UNSAFE},   {"sort", M_UNSAFE},      {"clear", M_UNSAFE},   {NULL, 0},
};

static const struct name_id tuple_methods[] = {
    {"index", M_LIST_INDEX},
    {"count", M_LIST_COUNT},
    {NULL, 0},
};

static const struct name_id dict_methods[] = {
    {"items", M_ITEMS},
    {"keys", M_KEYS},
    {"values", M_VALUES},
    {"get", M_GET},
    {"copy", M_DICT_COPY},
    {"pop", M_UNSAFE},
    {"popitem", M_UNSAFE},
    {"update", M_UNSAFE},
    {"setdefault", M_UNSAFE},
    {"clear", M_UNSAFE},
    {NULL, 0},
};

static const struct name_id loop_methods[] = {
    {"cycle", M_LOOP_CYCLE},
    {"changed", M_LOOP_CHANGED},
    {NULL, 0},
};

static const struct name_id cycler_methods[] = {
    {"next", M_CYCLER_NEXT},
    {"reset", M_CYCLER_RESET},
    {NULL, 0},
};

int builtins_method_id(const struct template_value *v, const char *name, size_t len, bool *unsafe) {
    const struct name_id *t = NULL;
    if (v->type == TEMPLATE_STRING) {
        t = str_methods;
    } else if (v->type == TEMPLATE_LIST) {
        t = v->u.list.is_tuple ? tuple_methods : list_methods;
    } else if (v->type == TEMPLATE_DICT) {
        t = dict_methods;
    } else if (v->type == TEMPLATE_OTHER && v->u.other.kind == OTHER_CYCLER) {
        t = cycler_methods;
    } else if (v->type == TEMPLATE_OTHER && v->u.other.kind == OTHER_LOOP) {
        t = loop_methods;
    }
    *unsafe = false;
    if (t == NULL || memchr(name, '\0', len) != NULL) {
        return -1;
    }
    for (; t->name != NULL; t++) {
        if (strlen(t->name) == len && memcmp(t->name, name, len) == 0) {
            *unsafe = t->id == M_UNSAFE;
            return t->id;
        }
    }
    return -1;
}

/* ---- argument helpers ---- */

/* Argument i (positional) or name (keyword), NULL when not given. */
static struct template_value *arg(const struct call_args *a, size_t i, const char *name) {
    if (i < a->n_pos) {
        return a->pos[i];
    }
    for (size_t k = 0; name != NULL && k < a->n_kw; k++) {
        if (strcmp(a->kw_names[k], name) == 0) {
            return a->kw[k];
        }
    }
    return NULL;
}

/* Refuses more than max_pos positional arguments and keywords not in names. */
static bool check_args(struct render *r, const struct call_args *a, const char *what,
                       size_t max_pos, const char *const *names) {
    if (a->n_pos > max_pos) {
        render_fail(r, "%s() takes at most %zu positional argument(s) (%zu given)", what, max_pos,
                    a->n_pos);
        return false;
    }
    for (size_t k = 0; k < a->n_kw; k++) {
        bool known = false;
        for (size_t i = 0; names != NULL && names[i] != NULL; i++) {
            if (strcmp(names[i], a->kw_names[k]) == 0) {
                known = i >= a->n_pos;
                if (!known) {
                    render_fail(r, "%s() got multiple values for argument '%s'", what, names[i]);
                    return false;
                }
            }
        }
        if (!known) {
            render_fail(r, "%s() got an unexpected keyword argument '%s'", what, a->kw_names[k]);
            return false;
        }
    }
    return true;
}

static bool int_arg(struct render *r, const struct template_value *v, int64_t *out,
                    const char *what) {
    if (v->type == TEMPLATE_INT) {
        *out = v->u.i;
        return true;
    }
    if (v->type == TEMPLATE_BOOL) {
        *out = v->u.b;
        return true;
    }
    render_fail(r, "%s: an integer is required, not '%s'", what, value_type_name(v));
    return false;
}

static bool str_arg(struct render *r, const struct template_value *v, const char *what) {
    if (v->type == TEMPLATE_STRING) {
        return true;
    }
    render_fail(r, "%s: must be str, not %s", what, value_type_name(v));
    return false;
}

static struct template_value *nomem_if_null(struct render *r, struct template_value *v) {
    return v != NULL ? v : render_nomem(r);
}

static struct template_value *make_int(struct render *r, int64_t i) {
    return nomem_if_null(r, template_value_int(i));
}

static struct template_value *make_str(struct render *r, const char *s, size_t len) {
    return nomem_if_null(r, template_value_string(s, len));
}

static struct template_value *from_buf(struct render *r, struct buf *b) {
    if (b->nomem) {
        buf_free(b);
        return render_nomem(r);
    }
    if (b->over) {
        buf_free(b);
        return render_limit(r, "max_output");
    }
    if (!render_add_steps(r, b->len / 64)) {
        buf_free(b);
        return NULL;
    }
    size_t len;
    char *s = buf_take(b, &len);
    if (s == NULL) {
        return render_nomem(r);
    }
    return nomem_if_null(r, value_string_take(s, len));
}

static bool push(struct render *r, struct template_value *list, struct template_value *v) {
    if (v == NULL) {
        return false;
    }
    if (!render_step(r)) { /* bulk work costs its items */
        template_value_unref(v);
        return false;
    }
    if ((list->u.list.n + 1) * sizeof(void *) > render_max_output(r)) {
        template_value_unref(v);
        render_limit(r, "max_output (list size)");
        return false;
    }
    if (template_value_list_append(list, v) != 0) {
        render_nomem(r);
        return false;
    }
    return true;
}

static struct template_value *new_list(struct render *r) {
    return nomem_if_null(r, template_value_list());
}

static struct template_value *pair(struct render *r, struct template_value *a,
                                   struct template_value *b) {
    struct template_value *t = value_tuple();
    if (t == NULL) {
        return render_nomem(r);
    }
    if (!push(r, t, template_value_ref(a)) || !push(r, t, template_value_ref(b))) {
        template_value_unref(t);
        return NULL;
    }
    return t;
}

/* ---- text helpers (code points) ---- */

struct cps {
    uint32_t *v;
    size_t n;
};

static bool to_cps(struct render *r, const char *s, size_t len, struct cps *out) {
    out->v = malloc((len + 1) * sizeof(*out->v));
    out->n = 0;
    if (out->v == NULL) {
        render_nomem(r);
        return false;
    }
    for (size_t i = 0; i < len;) {
        out->v[out->n++] = utf8_next(s, len, &i);
    }
    return true;
}

static bool cp_in(uint32_t cp, const struct cps *set) {
    if (set == NULL) {
        return py_isspace(cp);
    }
    for (size_t i = 0; i < set->n; i++) {
        if (set->v[i] == cp) {
            return true;
        }
    }
    return false;
}

/* str.strip/lstrip/rstrip: chars NULL = whitespace. which: 1 left, 2 right, 3 both. */
static struct template_value *strip(struct render *r, struct template_value *s,
                                    struct template_value *chars, int which) {
    struct cps set = {0};
    struct cps *setp = NULL;
    if (chars != NULL && chars->type != TEMPLATE_NONE) {
        if (!str_arg(r, chars, "strip arg")) {
            return NULL;
        }
        if (!to_cps(r, chars->u.str.s, chars->u.str.len, &set)) {
            return NULL;
        }
        setp = &set;
    }
    const char *p = s->u.str.s;
    size_t len = s->u.str.len, start = 0, end = len;
    if (which & 1) {
        while (start < len) {
            size_t k = start;
            if (!cp_in(utf8_next(p, len, &k), setp)) {
                break;
            }
            start = k;
        }
    }
    if (which & 2) {
        /* walk forward remembering where the trailing run starts */
        size_t i = start, run = start;
        bool in_run = false;
        while (i < len) {
            size_t k = i;
            bool hit = cp_in(utf8_next(p, len, &k), setp);
            if (hit && !in_run) {
                run = i;
                in_run = true;
            } else if (!hit) {
                in_run = false;
            }
            i = k;
        }
        end = in_run ? run : len;
    }
    free(set.v);
    return make_str(r, p + start, end - start);
}

static uint32_t cp_upper(uint32_t cp) {
    if (cp < 0x80) {
        return cp >= 'a' && cp <= 'z' ? cp - 32 : cp;
    }
    return (uint32_t)utf8proc_toupper((utf8proc_int32_t)cp);
}

static uint32_t cp_lower(uint32_t cp) {
    if (cp < 0x80) {
        return cp >= 'A' && cp <= 'Z' ? cp + 32 : cp;
    }
    return (uint32_t)utf8proc_tolower((utf8proc_int32_t)cp);
}

static uint32_t cp_title(uint32_t cp) {
    if (cp < 0x80) {
        return cp_upper(cp);
    }
    return (uint32_t)utf8proc_totitle((utf8proc_int32_t)cp);
}

static bool cp_is_cased(uint32_t cp) {
    if (cp < 0x80) {
        return (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z');
    }
    utf8proc_category_t c = utf8proc_category((utf8proc_int32_t)cp);
    return c == UTF8PROC_CATEGORY_LU || c == UTF8PROC_CATEGORY_LL || c == UTF8PROC_CATEGORY_LT;
}

static bool cp_is_upper(uint32_t cp) {
    if (cp < 0x80) {
        return cp >= 'A' && cp <= 'Z';
    }
    utf8proc_category_t c = utf8proc_category((utf8proc_int32_t)cp);
    return c == UTF8PROC_CATEGORY_LU || c == UTF8PROC_CATEGORY_LT;
}

static bool cp_is_lower(uint32_t cp) {
    if (cp < 0x80) {
        return cp >= 'a' && cp <= 'z';
    }
    return utf8proc_category((utf8proc_int32_t)cp) == UTF8PROC_CATEGORY_LL;
}

static bool cp_is_alpha(uint32_t cp) {
    if (cp < 0x80) {
        return (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z');
    }
    utf8proc_category_t c = utf8proc_category((utf8proc_int32_t)cp);
    return c >= UTF8PROC_CATEGORY_LU && c <= UTF8PROC_CATEGORY_LO;
}

static bool cp_is_digit(uint32_t cp) {
    if (cp < 0x80) {
        return cp >= '0' && cp <= '9';
    }
    return utf8proc_category((utf8proc_int32_t)cp) == UTF8PROC_CATEGORY_ND;
}

static bool cp_is_numeric(uint32_t cp) {
    if (cp < 0x80) {
        return cp >= '0' && cp <= '9';
    }
    utf8proc_category_t c = utf8proc_category((utf8proc_int32_t)cp);
    return c == UTF8PROC_CATEGORY_ND || c == UTF8PROC_CATEGORY_NL || c == UTF8PROC_CATEGORY_NO;
}

static bool cp_is_word(uint32_t cp) {
    return cp == '_' || cp_is_alpha(cp) || cp_is_numeric(cp) ||
           (cp >= 0x80 && (utf8proc_category((utf8proc_int32_t)cp) == UTF8PROC_CATEGORY_MN ||
                           utf8proc_category((utf8proc_int32_t)cp) == UTF8PROC_CATEGORY_MC));
}

enum case_mode { CASE_UPPER, CASE_LOWER, CASE_SWAP, CASE_TITLE, CASE_CAPITALIZE };

/* Python's full upper-case mappings that are more than one character (SpecialCasing.txt,
 * the common ones); utf8proc only has the simple one-to-one mappings. */
static const char *special_upper(uint32_t cp) {
    switch (cp) {
    case 0xdf:
        return "SS";
    case 0x149:
        return "\xca\xbcN";
    case 0xfb00:
        return "FF";
    case 0xfb01:
        return "FI";
    case 0xfb02:
        return "FL";
    case 0xfb03:
        return "FFI";
    case 0xfb04:
        return "FFL";
    case 0xfb05:
    case 0xfb06:
        return "ST";
    default:
        return NULL;
    }
}

static struct template_value *change_case(struct render *r, const char *s, size_t len,
                                          enum case_mode mode) {
    struct buf b;
    buf_init(&b, render_max_output(r));
    bool prev_cased = false, first = true;
    for (size_t i = 0; i < len;) {
        uint32_t cp = utf8_next(s, len, &i);
        uint32_t out = cp;
        switch (mode) {
        case CASE_UPPER: {
            const char *sp = special_upper(cp);
            if (sp != NULL) {
                buf_adds(&b, sp);
                first = false;
                continue;
            }
            out = cp_upper(cp);
            break;
        }
        case CASE_LOWER:
            out = cp_lower(cp);
            break;
        case CASE_SWAP:
            out = cp_is_upper(cp) ? cp_lower(cp) : cp_is_lower(cp) ? cp_upper(cp) : cp;
            break;
        case CASE_TITLE:
            out = prev_cased ? cp_lower(cp) : cp_title(cp);
            prev_cased = cp_is_cased(cp);
            break;
        case CASE_CAPITALIZE:
            out = first ? cp_title(cp) : cp_lower(cp);
            break;
        }
        first = false;
        buf_add_cp(&b, out);
    }
    return from_buf(r, &b);
}

/* Byte offset -> code point index. */
static int64_t cp_index(const char *s, size_t byte) {
    return (int64_t)utf8_count(s, byte);
}

static const char *find_bytes(const char *h, size_t hn, const char *n, size_t nn, size_t from) {
    if (nn == 0) {
        return from <= hn ? h + from : NULL;
    }
    for (size_t i = from; i + nn <= hn; i++) {
        if (h[i] == n[0] && memcmp(h + i, n, nn) == 0) {
            return h + i;
        }
    }
    return NULL;
}

static const char *rfind_bytes(const char *h, size_t hn, const char *n, size_t nn) {
    if (nn > hn) {
        return NULL;
    }
    for (size_t i = hn - nn + 1; i > 0; i--) {
        if (memcmp(h + i - 1, n, nn) == 0) {
            return h + i - 1;
        }
    }
    return NULL;
}

/* Python str.replace(old, new, count). */
static struct template_value *replace(struct render *r, struct template_value *s,
                                      struct template_value *old, struct template_value *new_,
                                      int64_t count) {
    struct buf b;
    buf_init(&b, render_max_output(r));
    const char *p = s->u.str.s;
    size_t len = s->u.str.len, on = old->u.str.len;
    int64_t done = 0;
    if (on == 0) {
        size_t i = 0;
        while (true) {
            if (count < 0 || done < count) {
                buf_add(&b, new_->u.str.s, new_->u.str.len);
                done++;
            }
            if (i >= len) {
                break;
            }
            size_t k = i;
            utf8_next(p, len, &k);
            buf_add(&b, p + i, k - i);
            i = k;
            if (!buf_ok(&b)) {
                break;
            }
        }
        return from_buf(r, &b);
    }
    size_t i = 0;
    while (i < len && (count < 0 || done < count)) {
        const char *hit = find_bytes(p, len, old->u.str.s, on, i);
        if (hit == NULL) {
            break;
        }
        size_t at = (size_t)(hit - p);
        buf_add(&b, p + i, at - i);
        buf_add(&b, new_->u.str.s, new_->u.str.len);
        i = at + on;
        done++;
    }
    buf_add(&b, p + i, len - i);
    return from_buf(r, &b);
}

/* Python str.split / rsplit. */
static struct template_value *split(struct render *r, struct template_value *s,
                                    struct template_value *sep, int64_t maxsplit, bool from_right) {
    const char *p = s->u.str.s;
    size_t len = s->u.str.len;
    struct template_value *out = new_list(r);
    if (out == NULL) {
        return NULL;
    }
    if (sep == NULL || sep->type == TEMPLATE_NONE) {
        /* runs of whitespace; the pieces collected in order either way */
        struct cps c;
        if (!to_cps(r, p, len, &c)) {
            template_value_unref(out);
            return NULL;
        }
        size_t *offs = malloc((c.n + 1) * sizeof(*offs));
        if (offs == NULL) {
            free(c.v);
            template_value_unref(out);
            return render_nomem(r);
        }
        for (size_t i = 0, k = 0; i < len; k++) {
            offs[k] = i;
            utf8_next(p, len, &i);
        }
        offs[c.n] = len;
        /* word boundaries as code point ranges */
        size_t n_words = 0, cap_words = 0;
        size_t(*words)[2] = NULL;
        bool ok = true;
        if (!from_right) {
            size_t i = 0;
            while (ok) {
                while (i < c.n && py_isspace(c.v[i])) {
                    i++;
                }
                if (i >= c.n) {
                    break;
                }
                size_t end;
                if (maxsplit >= 0 && (int64_t)n_words == maxsplit) {
                    end = c.n; /* the rest as it is */
                } else {
                    end = i;
                    while (end < c.n && !py_isspace(c.v[end])) {
                        end++;
                    }
                }
                if (n_words == cap_words) {
                    cap_words = cap_words ? cap_words * 2 : 8;
                    void *nw = realloc(words, cap_words * sizeof(*words));
                    if (nw == NULL) {
                        ok = false;
                        break;
                    }
                    words = nw;
                }
                words[n_words][0] = i;
                words[n_words][1] = end;
                n_words++;
                i = end;
            }
        } else {
            size_t i = c.n;
            while (ok) {
                while (i > 0 && py_isspace(c.v[i - 1])) {
                    i--;
                }
                if (i == 0) {
                    break;
                }
                size_t start;
                if (maxsplit >= 0 && (int64_t)n_words == maxsplit) {
                    start = 0; /* the rest as it is */
                } else {
                    start = i;
                    while (start > 0 && !py_isspace(c.v[start - 1])) {
                        start--;
                    }
                }
                if (n_words == cap_words) {
                    cap_words = cap_words ? cap_words * 2 : 8;
                    void *nw = realloc(words, cap_words * sizeof(*words));
                    if (nw == NULL) {
                        ok = false;
                        break;
                    }
                    words = nw;
                }
                words[n_words][0] = start;
                words[n_words][1] = i;
                n_words++;
                i = start;
            }
        }
        for (size_t w = 0; ok && w < n_words; w++) {
            size_t k = from_right ? n_words - 1 - w : w;
            size_t a = offs[words[k][0]], b = offs[words[k][1]];
            ok = push(r, out, make_str(r, p + a, b - a));
        }
        free(words);
        free(offs);
        free(c.v);
        if (!ok) {
            template_value_unref(out);
            return render_failed(r) ? NULL : render_nomem(r);
        }
        return out;
    }
    if (!str_arg(r, sep, "split separator")) {
        template_value_unref(out);
        return NULL;
    }
    size_t sn = sep->u.str.len;
    if (sn == 0) {
        template_value_unref(out);
        return render_fail(r, "empty separator");
    }
    if (!from_right) {
        size_t i = 0;
        int64_t done = 0;
        while (maxsplit < 0 || done < maxsplit) {
            const char *hit = find_bytes(p, len, sep->u.str.s, sn, i);
            if (hit == NULL) {
                break;
            }
            size_t at = (size_t)(hit - p);
            if (!push(r, out, make_str(r, p + i, at - i))) {
                template_value_unref(out);
                return NULL;
            }
            i = at + sn;
            done++;
        }
        if (!push(r, out, make_str(r, p + i, len - i))) {
            template_value_unref(out);
            return NULL;
        }
        return out;
    }
    /* rsplit: pieces from the right, reversed at the end */
    size_t end = len;
    int64_t done = 0;
    while (maxsplit < 0 || done < maxsplit) {
        const char *hit = rfind_bytes(p, end, sep->u.str.s, sn);
        if (hit == NULL) {
            break;
        }
        size_t at = (size_t)(hit - p);
        if (!push(r, out, make_str(r, p + at + sn, end - at - sn))) {
            template_value_unref(out);
            return NULL;
        }
        end = at;
        done++;
    }
    if (!push(r, out, make_str(r, p, end))) {
        template_value_unref(out);
        return NULL;
    }
    for (size_t i = 0; i < out->u.list.n / 2; i++) {
        struct template_value *t = out->u.list.items[i];
        out->u.list.items[i] = out->u.list.items[out->u.list.n - 1 - i];
        out->u.list.items[out->u.list.n - 1 - i] = t;
    }
    return out;
}

static bool is_line_break(uint32_t cp) {
    return cp == '\n' || cp == '\r' || cp == 0x0b || cp == 0x0c || cp == 0x1c || cp == 0x1d ||
           cp == 0x1e || cp == 0x85 || cp == 0x2028 || cp == 0x2029;
}

/* Python str.splitlines(keepends). */
static struct template_value *splitlines(struct render *r, const char *p, size_t len,
                                         bool keepends) {
    struct template_value *out = new_list(r);
    if (out == NULL) {
        return NULL;
    }
    size_t start = 0, i = 0;
    while (i < len) {
        size_t k = i;
        uint32_t cp = utf8_next(p, len, &k);
        if (!is_line_break(cp)) {
            i = k;
            continue;
        }
        size_t eol = k;
        if (cp == '\r' && eol < len && p[eol] == '\n') {
            eol++;
        }
        if (!push(r, out, make_str(r, p + start, (keepends ? eol : i) - start))) {
            template_value_unref(out);
            return NULL;
        }
        start = i = eol;
    }
    if (start < len && !push(r, out, make_str(r, p + start, len - start))) {
        template_value_unref(out);
        return NULL;
    }
    return out;
}

static struct template_value *pad(struct render *r, struct template_value *s, int64_t width,
                                  const char *fill, size_t fill_len, int align) {
    size_t n = utf8_count(s->u.str.s, s->u.str.len);
    if (width <= (int64_t)n) {
        return template_value_ref(s);
    }
    if ((uint64_t)width > render_max_output(r)) {
        return render_limit(r, "max_output");
    }
    size_t total = (size_t)width - n, left;
    if (align < 0) {
        left = 0;
    } else if (align > 0) {
        left = total;
    } else {
        left = total / 2 + (total & (size_t)width & 1);
    }
    struct buf b;
    buf_init(&b, render_max_output(r));
    for (size_t i = 0; i < left; i++) {
        buf_add(&b, fill, fill_len);
    }
    buf_add(&b, s->u.str.s, s->u.str.len);
    for (size_t i = left; i < total; i++) {
        buf_add(&b, fill, fill_len);
    }
    return from_buf(r, &b);
}

/* str.format: {} {0} {name} with an optional !s/!r and a spec (only str()). */
static struct template_value *str_format(struct render *r, struct template_value *fmt,
                                         const struct call_args *a) {
    struct buf b;
    buf_init(&b, render_max_output(r));
    const char *s = fmt->u.str.s;
    size_t len = fmt->u.str.len, auto_index = 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (c == '}') {
            if (i + 1 < len && s[i + 1] == '}') {
                i++;
            }
            buf_addc(&b, '}');
            continue;
        }
        if (c != '{') {
            buf_addc(&b, c);
            continue;
        }
        if (i + 1 < len && s[i + 1] == '{') {
            buf_addc(&b, '{');
            i++;
            continue;
        }
        size_t close = i + 1;
        while (close < len && s[close] != '}') {
            close++;
        }
        if (close >= len) {
            buf_free(&b);
            return render_fail(r, "Single '{' encountered in format string");
        }
        size_t name_end = i + 1;
        while (name_end < close && s[name_end] != '!' && s[name_end] != ':') {
            name_end++;
        }
        bool use_repr = name_end + 1 < close && s[name_end] == '!' && s[name_end + 1] == 'r';
        struct template_value *v = NULL;
        if (name_end == i + 1) {
            v = auto_index < a->n_pos ? a->pos[auto_index] : NULL;
            auto_index++;
        } else if (s[i + 1] >= '0' && s[i + 1] <= '9') {
            size_t idx = (size_t)strtoul(s + i + 1, NULL, 10);
            v = idx < a->n_pos ? a->pos[idx] : NULL;
        } else {
            for (size_t k = 0; k < a->n_kw; k++) {
                if (strlen(a->kw_names[k]) == name_end - i - 1 &&
                    memcmp(a->kw_names[k], s + i + 1, name_end - i - 1) == 0) {
                    v = a->kw[k];
                }
            }
        }
        if (v == NULL) {
            buf_free(&b);
            return render_fail(r, "format: replacement field out of range");
        }
        if (use_repr) {
            value_repr(&b, v);
        } else {
            value_str(&b, v);
        }
        i = close;
    }
    return from_buf(r, &b);
}

static bool str_pred(const struct template_value *s, bool (*pred)(uint32_t)) {
    if (s->u.str.len == 0) {
        return false;
    }
    for (size_t i = 0; i < s->u.str.len;) {
        if (!pred(utf8_next(s->u.str.s, s->u.str.len, &i))) {
            return false;
        }
    }
    return true;
}

static bool cp_is_alnum(uint32_t cp) {
    return cp_is_alpha(cp) || cp_is_numeric(cp);
}

/* islower / isupper: at least one cased character and none of the other case. */
static bool str_case_is(const struct template_value *s, bool upper) {
    bool any = false;
    for (size_t i = 0; i < s->u.str.len;) {
        uint32_t cp = utf8_next(s->u.str.s, s->u.str.len, &i);
        if (upper ? cp_is_lower(cp) : cp_is_upper(cp)) {
            return false;
        }
        any = any || (upper ? cp_is_upper(cp) : cp_is_lower(cp));
    }
    return any;
}

static int starts_or_ends(struct render *r, struct template_value *s, struct template_value *prefix,
                          bool ends) {
    struct template_value *one[1] = {prefix};
    struct template_value *const *v = one;
    size_t n = 1;
    if (prefix->type == TEMPLATE_LIST && prefix->u.list.is_tuple) {
        v = prefix->u.list.items;
        n = prefix->u.list.n;
    }
    for (size_t i = 0; i < n; i++) {
        if (v[i]->type != TEMPLATE_STRING) {
            render_fail(r, "%s first arg must be str or a tuple of str, not %s",
                        ends ? "endswith" : "startswith", value_type_name(v[i]));
            return -1;
        }
        size_t pn = v[i]->u.str.len;
        if (pn <= s->u.str.len &&
            memcmp(s->u.str.s + (ends ? s->u.str.len - pn : 0), v[i]->u.str.s, pn) == 0) {
            return 1;
        }
    }
    return 0;
}

static struct template_value *str_method(struct render *r, int id, struct template_value *s,
                                         const struct call_args *a) {
    struct template_value *a0 = arg(a, 0, NULL), *a1 = arg(a, 1, NULL);
    const char *p = s->u.str.s;
    size_t len = s->u.str.len;
    int64_t n;
    switch (id) {
    case M_STRIP:
    case M_LSTRIP:
    case M_RSTRIP:
        return strip(r, s, a0, id == M_STRIP ? 3 : id == M_LSTRIP ? 1 : 2);
    case M_SPLIT:
    case M_RSPLIT: {
        struct template_value *sep = arg(a, 0, "sep"), *max = arg(a, 1, "maxsplit");
        int64_t maxsplit = -1;
        if (max != NULL && !int_arg(r, max, &maxsplit, "maxsplit")) {
            return NULL;
        }
        return split(r, s, sep, maxsplit, id == M_RSPLIT);
    }
    case M_SPLITLINES: {
        struct template_value *keep = arg(a, 0, "keepends");
        return splitlines(r, p, len, keep != NULL && template_value_truthy(keep));
    }
    case M_STARTSWITH:
    case M_ENDSWITH: {
        if (a0 == NULL) {
            return render_fail(r, "startswith() takes at least 1 argument");
        }
        int c = starts_or_ends(r, s, a0, id == M_ENDSWITH);
        return c < 0 ? NULL : value_bool_ref(c == 1);
    }
    case M_UPPER:
        return change_case(r, p, len, CASE_UPPER);
    case M_LOWER:
    case M_CASEFOLD:
        return change_case(r, p, len, CASE_LOWER);
    case M_TITLE:
        return change_case(r, p, len, CASE_TITLE);
    case M_CAPITALIZE:
        return change_case(r, p, len, CASE_CAPITALIZE);
    case M_SWAPCASE:
        return change_case(r, p, len, CASE_SWAP);
    case M_REPLACE: {
        int64_t count = -1;
        struct template_value *c = arg(a, 2, "count");
        if (a0 == NULL || a1 == NULL || !str_arg(r, a0, "replace() argument 1") ||
            !str_arg(r, a1, "replace() argument 2") ||
            (c != NULL && !int_arg(r, c, &count, "replace() count"))) {
            return render_failed(r) ? NULL : render_fail(r, "replace() takes 2 arguments");
        }
        return replace(r, s, a0, a1, count);
    }
    case M_FIND:
    case M_RFIND:
    case M_INDEX:
    case M_RINDEX:
    case M_COUNT: {
        if (a0 == NULL || !str_arg(r, a0, "substring")) {
            return render_failed(r) ? NULL : render_fail(r, "missing substring argument");
        }
        if (id == M_COUNT) {
            if (a0->u.str.len == 0) {
                return make_int(r, (int64_t)utf8_count(p, len) + 1);
            }
            int64_t count = 0;
            size_t i = 0;
            const char *hit;
            while ((hit = find_bytes(p, len, a0->u.str.s, a0->u.str.len, i)) != NULL) {
                count++;
                i = (size_t)(hit - p) + a0->u.str.len;
            }
            return make_int(r, count);
        }
        const char *hit = id == M_FIND || id == M_INDEX
                              ? find_bytes(p, len, a0->u.str.s, a0->u.str.len, 0)
                              : rfind_bytes(p, len, a0->u.str.s, a0->u.str.len);
        if (hit == NULL) {
            return id == M_INDEX || id == M_RINDEX ? render_fail(r, "substring not found")
                                                   : make_int(r, -1);
        }
        return make_int(r, cp_index(p, (size_t)(hit - p)));
    }
    case M_JOIN: {
        if (a0 == NULL) {
            return render_fail(r, "join() takes exactly one argument");
        }
        struct template_value *items = render_iterate(r, a0);
        if (items == NULL) {
            return NULL;
        }
        struct buf b;
        buf_init(&b, render_max_output(r));
        for (size_t i = 0; i < items->u.list.n; i++) {
            struct template_value *it = items->u.list.items[i];
            if (it->type != TEMPLATE_STRING) {
                buf_free(&b);
                template_value_unref(items);
                return render_fail(r, "sequence item %zu: expected str instance, %s found", i,
                                   value_type_name(it));
            }
            if (i > 0) {
                buf_add(&b, p, len);
            }
            buf_add(&b, it->u.str.s, it->u.str.len);
        }
        template_value_unref(items);
        return from_buf(r, &b);
    }
    case M_FORMAT:
        return str_format(r, s, a);
    case M_ISDIGIT:
    case M_ISDECIMAL:
        return value_bool_ref(str_pred(s, cp_is_digit));
    case M_ISNUMERIC:
        return value_bool_ref(str_pred(s, cp_is_numeric));
    case M_ISALPHA:
        return value_bool_ref(str_pred(s, cp_is_alpha));
    case M_ISALNUM:
        return value_bool_ref(str_pred(s, cp_is_alnum));
    case M_ISSPACE:
        return value_bool_ref(str_pred(s, py_isspace));
    case M_ISLOWER:
        return value_bool_ref(str_case_is(s, false));
    case M_ISUPPER:
        return value_bool_ref(str_case_is(s, true));
    case M_CENTER:
    case M_LJUST:
    case M_RJUST: {
        if (a0 == NULL || !int_arg(r, a0, &n, "width")) {
            return render_failed(r) ? NULL : render_fail(r, "missing width");
        }
        const char *fill = " ";
        size_t fill_len = 1;
        if (a1 != NULL) {
            if (!str_arg(r, a1, "fillchar") || utf8_count(a1->u.str.s, a1->u.str.len) != 1) {
                return render_failed(r) ? NULL
                                        : render_fail(r, "The fill character must be exactly one "
                                                         "character long");
            }
            fill = a1->u.str.s;
            fill_len = a1->u.str.len;
        }
        return pad(r, s, n, fill, fill_len, id == M_CENTER ? 0 : id == M_LJUST ? -1 : 1);
    }
    case M_ZFILL: {
        if (a0 == NULL || !int_arg(r, a0, &n, "width")) {
            return render_failed(r) ? NULL : render_fail(r, "missing width");
        }
        size_t count = utf8_count(p, len);
        if (n <= (int64_t)count) {
            return template_value_ref(s);
        }
        if ((uint64_t)n > render_max_output(r)) {
            return render_limit(r, "max_output");
        }
        struct buf b;
        buf_init(&b, render_max_output(r));
        size_t skip = len > 0 && (p[0] == '-' || p[0] == '+') ? 1 : 0;
        buf_add(&b, p, skip);
        for (int64_t i = (int64_t)count; i < n; i++) {
            buf_addc(&b, '0');
        }
        buf_add(&b, p + skip, len - skip);
        return from_buf(r, &b);
    }
    case M_PARTITION:
    case M_RPARTITION: {
        if (a0 == NULL || !str_arg(r, a0, "separator")) {
            return render_failed(r) ? NULL : render_fail(r, "missing separator");
        }
        if (a0->u.str.len == 0) {
            return render_fail(r, "empty separator");
        }
        const char *hit = id == M_PARTITION ? find_bytes(p, len, a0->u.str.s, a0->u.str.len, 0)
                                            : rfind_bytes(p, len, a0->u.str.s, a0->u.str.len);
        struct template_value *t = value_tuple();
        if (t == NULL) {
            return render_nomem(r);
        }
        bool ok;
        if (hit == NULL) {
            struct template_value *e1 = make_str(r, "", 0), *e2 = make_str(r, "", 0);
            if (id == M_PARTITION) {
                ok = push(r, t, template_value_ref(s)) && push(r, t, e1) && push(r, t, e2);
            } else {
                ok = push(r, t, e1) && push(r, t, e2) && push(r, t, template_value_ref(s));
            }
        } else {
            size_t at = (size_t)(hit - p);
            ok = push(r, t, make_str(r, p, at)) && push(r, t, template_value_ref(a0)) &&
                 push(r, t, make_str(r, p + at + a0->u.str.len, len - at - a0->u.str.len));
        }
        if (!ok) {
            template_value_unref(t);
            return NULL;
        }
        return t;
    }
    case M_REMOVEPREFIX:
    case M_REMOVESUFFIX: {
        if (a0 == NULL || !str_arg(r, a0, "affix")) {
            return render_failed(r) ? NULL : render_fail(r, "missing argument");
        }
        size_t an = a0->u.str.len;
        if (an <= len && id == M_REMOVEPREFIX && memcmp(p, a0->u.str.s, an) == 0) {
            return make_str(r, p + an, len - an);
        }
        if (an <= len && id == M_REMOVESUFFIX && memcmp(p + len - an, a0->u.str.s, an) == 0) {
            return make_str(r, p, len - an);
        }
        return template_value_ref(s);
    }
    default:
        return render_fail(r, "unsupported string method");
    }
}

struct template_value *builtins_method(struct render *r, int id, struct template_value *self,
                                       const struct call_args *a) {
    if (self->type == TEMPLATE_STRING) {
        return str_method(r, id, self, a);
    }
    struct template_value *a0 = arg(a, 0, NULL);
    switch (id) {
    case M_LIST_INDEX:
    case M_LIST_COUNT: {
        if (a0 == NULL) {
            return render_fail(r, "missing argument");
        }
        int64_t count = 0;
        for (size_t i = 0; i < self->u.list.n; i++) {
            if (value_equal(self->u.list.items[i], a0)) {
                if (id == M_LIST_INDEX) {
                    return make_int(r, (int64_t)i);
                }
                count++;
            }
        }
        return id == M_LIST_INDEX ? render_fail(r, "value is not in list") : make_int(r, count);
    }
    case M_LIST_COPY:
        return render_iterate(r, self);
    case M_ITEMS:
    case M_KEYS:
    case M_VALUES: {
        struct template_value *out = new_list(r);
        for (size_t i = 0; out != NULL && i < self->u.dict.n; i++) {
            struct dict_entry *e = &self->u.dict.entries[i];
            struct template_value *item = id == M_ITEMS  ? pair(r, e->key, e->value)
                                          : id == M_KEYS ? template_value_ref(e->key)
                                                         : template_value_ref(e->value);
            if (!push(r, out, item)) {
                template_value_unref(out);
                return NULL;
            }
        }
        return out;
    }
    case M_GET: {
        if (a0 == NULL) {
            return render_fail(r, "get expected at least 1 argument, got 0");
        }
        struct dict_entry *e = value_dict_find(self, a0);
        if (e != NULL) {
            return template_value_ref(e->value);
        }
        struct template_value *def = arg(a, 1, NULL);
        return def != NULL ? template_value_ref(def) : &value_none_static;
    }
    case M_DICT_COPY: {
        struct template_value *d = template_value_dict();
        for (size_t i = 0; d != NULL && i < self->u.dict.n; i++) {
            if (value_dict_put(d, template_value_ref(self->u.dict.entries[i].key),
                               template_value_ref(self->u.dict.entries[i].value)) != 0) {
                template_value_unref(d);
                d = NULL;
            }
        }
        return nomem_if_null(r, d);
    }
    case M_CYCLER_NEXT: {
        struct template_value *items = self->u.other.self;
        if (items->u.list.n == 0) {
            return render_fail(r, "cycler has no items");
        }
        struct template_value *v = items->u.list.items[self->u.other.pos % items->u.list.n];
        self->u.other.pos = (self->u.other.pos + 1) % items->u.list.n;
        return template_value_ref(v);
    }
    case M_CYCLER_RESET:
        self->u.other.pos = 0;
        return &value_none_static;
    case M_LOOP_CYCLE:
        if (a->n_pos == 0) {
            return render_fail(r, "no items for cycling given");
        }
        return template_value_ref(a->pos[self->u.other.pos % a->n_pos]);
    case M_LOOP_CHANGED: {
        /* loop.changed(*values): true when the values differ from the last call's */
        struct template_value *now = value_tuple();
        for (size_t i = 0; now != NULL && i < a->n_pos; i++) {
            if (!push(r, now, template_value_ref(a->pos[i]))) {
                template_value_unref(now);
                return NULL;
            }
        }
        if (now == NULL) {
            return render_nomem(r);
        }
        struct template_value *last = self->u.other.self2;
        bool changed = last == NULL || !value_equal(last, now);
        template_value_unref(last);
        self->u.other.self2 = now;
        return value_bool_ref(changed);
    }
    default:
        return render_fail(r, "unsupported method");
    }
}

/* ---- globals ---- */

static struct template_value *make_namespace(struct render *r, const struct call_args *a) {
    struct template_value *ns = value_other(OTHER_NAMESPACE);
    struct template_value *attrs = template_value_dict();
    if (ns == NULL || attrs == NULL) {
        template_value_unref(ns);
        template_value_unref(attrs);
        return render_nomem(r);
    }
    ns->u.other.self = attrs;
    if (!render_remember_cyclic(r, ns)) {
        template_value_unref(ns);
        return NULL;
    }
    if (a->n_pos > 1) {
        template_value_unref(ns);
        return render_fail(r, "namespace expected at most 1 positional argument");
    }
    if (a->n_pos == 1) {
        struct template_value *init = a->pos[0];
        if (init->type == TEMPLATE_DICT) {
            for (size_t i = 0; i < init->u.dict.n; i++) {
                if (value_dict_put(attrs, template_value_ref(init->u.dict.entries[i].key),
                                   template_value_ref(init->u.dict.entries[i].value)) != 0) {
                    template_value_unref(ns);
                    return render_nomem(r);
                }
            }
        } else if (init->type == TEMPLATE_LIST) {
            for (size_t i = 0; i < init->u.list.n; i++) {
                struct template_value *kv = init->u.list.items[i];
                if (kv->type != TEMPLATE_LIST || kv->u.list.n != 2) {
                    template_value_unref(ns);
                    return render_fail(r, "namespace: sequence elements must be pairs");
                }
                if (value_dict_put(attrs, template_value_ref(kv->u.list.items[0]),
                                   template_value_ref(kv->u.list.items[1])) != 0) {
                    template_value_unref(ns);
                    return render_nomem(r);
                }
            }
        } else {
            template_value_unref(ns);
            return render_fail(r, "namespace: '%s' object is not iterable", value_type_name(init));
        }
    }
    for (size_t k = 0; k < a->n_kw; k++) {
        if (template_value_dict_set(attrs, a->kw_names[k], template_value_ref(a->kw[k])) != 0) {
            template_value_unref(ns);
            return render_nomem(r);
        }
    }
    return ns;
}

struct template_value *builtins_global(struct render *r, int id, const struct call_args *a) {
    switch (id) {
    case B_RANGE: {
        int64_t v[3] = {0, 0, 1};
        if (a->n_pos < 1 || a->n_pos > 3 || a->n_kw > 0) {
            return render_fail(r, "range expected 1 to 3 integer arguments");
        }
        for (size_t i = 0; i < a->n_pos; i++) {
            if (!int_arg(r, a->pos[i], &v[a->n_pos == 1 ? 1 : i], "range()")) {
                return NULL;
            }
        }
        int64_t start = v[0], stop = v[1], step = v[2];
        if (step == 0) {
            return render_fail(r, "range() arg 3 must not be zero");
        }
        /* length without overflow: compare in long double */
        long double span = step > 0 ? (long double)stop - start : (long double)start - stop;
        long double count = span <= 0 ? 0 : ceill(span / (step > 0 ? step : -(long double)step));
        if (count > 100000) {
            return render_limit(r, "range too big (the sandbox allows at most 100000 items)");
        }
        if (!render_add_steps(r, (uint64_t)count)) {
            return NULL;
        }
        struct template_value *out = new_list(r);
        int64_t cur = start;
        for (int64_t i = 0; out != NULL && i < (int64_t)count; i++) {
            if (step > 0 ? cur >= stop : cur <= stop) {
                break; /* the long double count may be one too many */
            }
            if (!push(r, out, make_int(r, cur))) {
                template_value_unref(out);
                return NULL;
            }
            if (__builtin_add_overflow(cur, step, &cur)) {
                break;
            }
        }
        return out;
    }
    case B_DICT: {
        struct template_value *d = template_value_dict();
        if (d == NULL) {
            return render_nomem(r);
        }
        if (a->n_pos > 1 || (a->n_pos == 1 && a->pos[0]->type != TEMPLATE_DICT)) {
            template_value_unref(d);
            return render_fail(r, "dict() takes a mapping and keyword arguments");
        }
        for (size_t i = 0; a->n_pos == 1 && i < a->pos[0]->u.dict.n; i++) {
            if (value_dict_put(d, template_value_ref(a->pos[0]->u.dict.entries[i].key),
                               template_value_ref(a->pos[0]->u.dict.entries[i].value)) != 0) {
                template_value_unref(d);
                return render_nomem(r);
            }
        }
        for (size_t k = 0; k < a->n_kw; k++) {
            if (template_value_dict_set(d, a->kw_names[k], template_value_ref(a->kw[k])) != 0) {
                template_value_unref(d);
                return render_nomem(r);
            }
        }
        return d;
    }
    case B_NAMESPACE:
        return make_namespace(r, a);
    case B_RAISE_EXCEPTION: {
        struct template_value *msg = arg(a, 0, NULL);
        if (msg == NULL) {
            render_raise(r, "", 0);
            return NULL;
        }
        struct template_value *s = render_to_string(r, msg);
        if (s != NULL) {
            render_raise(r, s->u.str.s, s->u.str.len);
            template_value_unref(s);
        }
        return NULL;
    }
    case B_STRFTIME_NOW: {
        struct template_value *fmt = arg(a, 0, NULL);
        if (fmt == NULL || !str_arg(r, fmt, "strftime_now() format")) {
            return render_failed(r) ? NULL : render_fail(r, "strftime_now() takes a format");
        }
        if (memchr(fmt->u.str.s, '\0', fmt->u.str.len) != NULL) {
            return render_fail(r, "embedded null character");
        }
        time_t now = render_now(r);
        struct tm tm;
        if (localtime_r(&now, &tm) == NULL) {
            return render_fail(r, "localtime failed");
        }
        size_t cap = 256 + fmt->u.str.len * 16;
        if (cap > render_max_output(r) + 256) {
            return render_limit(r, "max_output");
        }
        char *out = malloc(cap);
        if (out == NULL) {
            return render_nomem(r);
        }
        size_t n = fmt->u.str.len > 0 ? strftime(out, cap, fmt->u.str.s, &tm) : 0;
        struct template_value *v = make_str(r, out, n);
        free(out);
        return v;
    }
    case B_CYCLER: {
        struct template_value *c = value_other(OTHER_CYCLER);
        struct template_value *items = value_tuple();
        if (c == NULL || items == NULL) {
            template_value_unref(c);
            template_value_unref(items);
            return render_nomem(r);
        }
        c->u.other.self = items;
        for (size_t i = 0; i < a->n_pos; i++) {
            if (!push(r, items, template_value_ref(a->pos[i]))) {
                template_value_unref(c);
                return NULL;
            }
        }
        return c;
    }
    case B_JOINER: {
        struct template_value *sep = arg(a, 0, "sep");
        struct template_value *j = value_other(OTHER_JOINER);
        if (j == NULL) {
            return render_nomem(r);
        }
        j->u.other.self = sep != NULL ? render_to_string(r, sep) : make_str(r, ", ", 2);
        if (j->u.other.self == NULL) {
            template_value_unref(j);
            return NULL;
        }
        return j;
    }
    default:
        return render_fail(r, "'%s' is not supported", "lipsum");
    }
}

/* ---- tests ---- */

static bool is_callable(const struct template_value *v) {
    return v->type == TEMPLATE_OTHER &&
           (v->u.other.kind == OTHER_MACRO || v->u.other.kind == OTHER_BUILTIN ||
            v->u.other.kind == OTHER_METHOD || v->u.other.kind == OTHER_JOINER);
}

int builtins_test(struct render *r, int id, struct template_value *v, const struct call_args *a) {
    struct template_value *a0 = arg(a, 0, NULL);
    int64_t x, y;
    switch (id) {
    case T_DEFINED:
        return v->type != TEMPLATE_UNDEFINED;
    case T_UNDEFINED:
        return v->type == TEMPLATE_UNDEFINED;
    case T_NONE:
        return v->type == TEMPLATE_NONE;
    case T_BOOLEAN:
        return v->type == TEMPLATE_BOOL;
    case T_FALSE:
        return v->type == TEMPLATE_BOOL && !v->u.b;
    case T_TRUE:
        return v->type == TEMPLATE_BOOL && v->u.b;
    case T_INTEGER:
        return v->type == TEMPLATE_INT;
    case T_FLOAT:
        return v->type == TEMPLATE_FLOAT;
    case T_NUMBER:
        return value_is_number(v);
    case T_STRING:
        return v->type == TEMPLATE_STRING;
    case T_MAPPING:
        return v->type == TEMPLATE_DICT;
    case T_ITERABLE:
        return v->type == TEMPLATE_STRING || v->type == TEMPLATE_LIST || v->type == TEMPLATE_DICT ||
               v->type == TEMPLATE_UNDEFINED;
    case T_SEQUENCE:
        return v->type == TEMPLATE_STRING || v->type == TEMPLATE_LIST || v->type == TEMPLATE_DICT ||
               v->type == TEMPLATE_UNDEFINED;
    case T_CALLABLE:
        return is_callable(v);
    case T_ESCAPED:
        return 0;
    case T_LOWER:
    case T_UPPER: {
        struct template_value *s = render_to_string(r, v);
        if (s == NULL) {
            return -1;
        }
        bool res = str_case_is(s, id == T_UPPER);
        template_value_unref(s);
        return res;
    }
    case T_ODD:
    case T_EVEN:
    case T_DIVISIBLEBY:
        if (v->type == TEMPLATE_FLOAT || (a0 != NULL && a0->type == TEMPLATE_FLOAT)) {
            double fx = value_as_double(v);
            double fy = id == T_DIVISIBLEBY ? (a0 != NULL ? value_as_double(a0) : 0) : 2.0;
            if (fy == 0.0) {
                render_fail(r, "float modulo");
                return -1;
            }
            double m = fmod(fx, fy);
            return id == T_ODD ? m != 0.0 : m == 0.0;
        }
        if (!int_arg(r, v, &x, "test operand")) {
            return -1;
        }
        if (id != T_DIVISIBLEBY) {
            return (x % 2 != 0) == (id == T_ODD);
        }
        if (a0 == NULL || !int_arg(r, a0, &y, "divisibleby")) {
            if (!render_failed(r)) {
                render_fail(r, "divisibleby needs a number");
            }
            return -1;
        }
        if (y == 0) {
            render_fail(r, "integer division or modulo by zero");
            return -1;
        }
        return y == -1 || x % y == 0;
    case T_EQ:
    case T_NE:
    case T_LT:
    case T_LE:
    case T_GT:
    case T_GE: {
        if (a0 == NULL) {
            render_fail(r, "the test needs an argument");
            return -1;
        }
        if (id == T_EQ || id == T_NE) {
            return value_equal(v, a0) == (id == T_EQ);
        }
        bool err = false;
        if (v->type == TEMPLATE_UNDEFINED || a0->type == TEMPLATE_UNDEFINED) {
            err = true;
        }
        int c = err ? 0 : value_compare(v, a0, &err);
        if (err) {
            render_fail(r, "'<' not supported between instances of '%s' and '%s'",
                        value_type_name(v), value_type_name(a0));
            return -1;
        }
        return id == T_LT ? c < 0 : id == T_LE ? c <= 0 : id == T_GT ? c > 0 : c >= 0;
    }
    case T_IN: {
        if (a0 == NULL) {
            render_fail(r, "the in test needs an argument");
            return -1;
        }
        if (a0->type == TEMPLATE_STRING) {
            if (v->type != TEMPLATE_STRING) {
                render_fail(r, "'in <string>' requires string as left operand");
                return -1;
            }
            return find_bytes(a0->u.str.s, a0->u.str.len, v->u.str.s, v->u.str.len, 0) != NULL;
        }
        if (a0->type == TEMPLATE_LIST) {
            for (size_t i = 0; i < a0->u.list.n; i++) {
                if (value_equal(v, a0->u.list.items[i])) {
                    return 1;
                }
            }
            return 0;
        }
        if (a0->type == TEMPLATE_DICT) {
            return value_dict_find(a0, v) != NULL;
        }
        if (a0->type == TEMPLATE_UNDEFINED) {
            return 0;
        }
        render_fail(r, "argument of type '%s' is not iterable", value_type_name(a0));
        return -1;
    }
    case T_SAMEAS:
        if (a0 == NULL) {
            render_fail(r, "sameas needs an argument");
            return -1;
        }
        if (v == a0) {
            return 1;
        }
        /* Python's singletons and small ints are shared objects. */
        if (v->type == TEMPLATE_NONE || v->type == TEMPLATE_BOOL) {
            return v->type == a0->type && (v->type == TEMPLATE_NONE || v->u.b == a0->u.b);
        }
        if (v->type == TEMPLATE_INT && a0->type == TEMPLATE_INT && v->u.i == a0->u.i &&
            v->u.i >= -5 && v->u.i <= 256) {
            return 1;
        }
        return 0;
    case T_FILTER:
    case T_TEST:
        if (v->type != TEMPLATE_STRING) {
            return 0;
        }
        return (id == T_FILTER ? builtins_filter_id(v->u.str.s) : builtins_test_id(v->u.str.s)) >=
               0;
    default:
        render_fail(r, "unsupported test");
        return -1;
    }
}

/* ---- filters ---- */

/* jinja2's make_attrgetter: "a.b.0" walks attributes and integer items. */
static struct template_value *get_path_default(struct render *r, struct template_value *item,
                                               struct template_value *attribute,
                                               struct template_value *def);

static struct template_value *get_path(struct render *r, struct template_value *item,
                                       struct template_value *attribute) {
    return get_path_default(r, item, attribute, NULL);
}

/* With def, an undefined step becomes def at once (jinja2's attrgetter default). */
static struct template_value *get_path_default(struct render *r, struct template_value *item,
                                               struct template_value *attribute,
                                               struct template_value *def) {
    if (attribute == NULL || attribute->type == TEMPLATE_NONE) {
        return template_value_ref(item);
    }
    if (attribute->type == TEMPLATE_INT) {
        struct template_value *x = render_getitem(r, item, attribute);
        if (x != NULL && def != NULL && x->type == TEMPLATE_UNDEFINED) {
            template_value_unref(x);
            x = template_value_ref(def);
        }
        return x;
    }
    if (attribute->type != TEMPLATE_STRING) {
        return render_fail(r, "attribute must be a string or an integer");
    }
    struct template_value *cur = template_value_ref(item);
    const char *s = attribute->u.str.s;
    size_t len = attribute->u.str.len, start = 0;
    while (cur != NULL) {
        size_t end = start;
        while (end < len && s[end] != '.') {
            end++;
        }
        struct template_value *next;
        bool digits = end > start;
        for (size_t k = start; k < end; k++) {
            digits = digits && s[k] >= '0' && s[k] <= '9';
        }
        if (digits && end - start < 18) {
            struct template_value *idx = template_value_int(strtoll(s + start, NULL, 10));
            next = idx != NULL ? render_getitem(r, cur, idx) : render_nomem(r);
            template_value_unref(idx);
        } else {
            struct template_value *key = template_value_string(s + start, end - start);
            next = key != NULL ? render_getitem(r, cur, key) : render_nomem(r);
            template_value_unref(key);
        }
        template_value_unref(cur);
        cur = next;
        if (cur != NULL && def != NULL && cur->type == TEMPLATE_UNDEFINED) {
            template_value_unref(cur);
            cur = template_value_ref(def);
        }
        if (end >= len) {
            break;
        }
        start = end + 1;
    }
    return cur;
}

/* ignore_case: strings lowered for comparisons unless case_sensitive. */
static struct template_value *sort_key(struct render *r, struct template_value *item,
                                       struct template_value *attribute, bool case_sensitive) {
    struct template_value *k = get_path(r, item, attribute);
    if (k != NULL && !case_sensitive && k->type == TEMPLATE_STRING) {
        struct template_value *low = change_case(r, k->u.str.s, k->u.str.len, CASE_LOWER);
        template_value_unref(k);
        return low;
    }
    return k;
}

/* Stable merge sort of items by keys (parallel arrays); false on an incomparable pair. */
static bool merge_sort(struct template_value **items, struct template_value **keys, size_t n,
                       bool reverse, struct template_value **tmp_i, struct template_value **tmp_k) {
    if (n < 2) {
        return true;
    }
    size_t h = n / 2;
    if (!merge_sort(items, keys, h, reverse, tmp_i, tmp_k) ||
        !merge_sort(items + h, keys + h, n - h, reverse, tmp_i, tmp_k)) {
        return false;
    }
    size_t i = 0, j = h, k = 0;
    bool err = false;
    while (i < h && j < n) {
        int c = value_compare(keys[j], keys[i], &err);
        if (err) {
            return false;
        }
        /* take from the right only when strictly before (stability; reverse keeps ties in
         * order as Python's sorted(reverse=True) does) */
        bool right = reverse ? c > 0 : c < 0;
        if (right) {
            tmp_i[k] = items[j];
            tmp_k[k++] = keys[j++];
        } else {
            tmp_i[k] = items[i];
            tmp_k[k++] = keys[i++];
        }
    }
    while (i < h) {
        tmp_i[k] = items[i];
        tmp_k[k++] = keys[i++];
    }
    while (j < n) {
        tmp_i[k] = items[j];
        tmp_k[k++] = keys[j++];
    }
    memcpy(items, tmp_i, n * sizeof(*items));
    memcpy(keys, tmp_k, n * sizeof(*keys));
    return true;
}

/* Sorts a list (taken over) by key(attribute); returns the sorted list. */
static struct template_value *sort_list(struct render *r, struct template_value *list,
                                        struct template_value *attribute, bool case_sensitive,
                                        bool reverse, int key_index) {
    size_t n = list->u.list.n;
    struct template_value **keys = calloc(n + 1, sizeof(*keys));
    struct template_value **tmp_i = calloc(n + 1, sizeof(*tmp_i));
    struct template_value **tmp_k = calloc(n + 1, sizeof(*tmp_k));
    bool ok = keys != NULL && tmp_i != NULL && tmp_k != NULL;
    if (!ok) {
        render_nomem(r);
    }
    for (size_t i = 0; ok && i < n; i++) {
        struct template_value *item = list->u.list.items[i];
        if (key_index >= 0) {
            item = item->u.list.items[key_index];
        }
        keys[i] = sort_key(r, item, attribute, case_sensitive);
        ok = keys[i] != NULL;
    }
    if (ok) {
        for (size_t i = 0; ok && i < n; i++) {
            if (keys[i]->type == TEMPLATE_UNDEFINED) {
                render_fail(r, "cannot sort by an undefined value");
                ok = false;
            }
        }
    }
    if (ok && !merge_sort(list->u.list.items, keys, n, reverse, tmp_i, tmp_k)) {
        render_fail(r, "'<' not supported between the items being sorted");
        ok = false;
    }
    for (size_t i = 0; keys != NULL && i < n; i++) {
        template_value_unref(keys[i]);
    }
    free(keys);
    free(tmp_i);
    free(tmp_k);
    if (!ok) {
        template_value_unref(list);
        return NULL;
    }
    return list;
}

static struct template_value *min_max(struct render *r, struct template_value *v,
                                      const struct call_args *a, bool is_max) {
    struct template_value *cs = arg(a, 0, "case_sensitive"), *attribute = arg(a, 1, "attribute");
    bool case_sensitive = cs != NULL && template_value_truthy(cs);
    struct template_value *items = render_iterate(r, v);
    if (items == NULL) {
        return NULL;
    }
    if (items->u.list.n == 0) {
        template_value_unref(items);
        return nomem_if_null(r, value_undefined("No aggregated item, sequence was empty."));
    }
    struct template_value *best = NULL, *best_key = NULL;
    for (size_t i = 0; i < items->u.list.n; i++) {
        struct template_value *k = sort_key(r, items->u.list.items[i], attribute, case_sensitive);
        if (k == NULL) {
            template_value_unref(best_key);
            template_value_unref(items);
            return NULL;
        }
        bool err = false;
        int c = best_key != NULL ? value_compare(k, best_key, &err) : 0;
        if (err) {
            template_value_unref(k);
            template_value_unref(best_key);
            template_value_unref(items);
            return render_fail(r, "'<' not supported between these items");
        }
        if (best_key == NULL || (is_max ? c > 0 : c < 0)) {
            template_value_unref(best_key);
            best_key = k;
            best = items->u.list.items[i];
        } else {
            template_value_unref(k);
        }
    }
    template_value_ref(best);
    template_value_unref(best_key);
    template_value_unref(items);
    return best;
}

/* select/reject/selectattr/rejectattr. */
static struct template_value *select_items(struct render *r, struct template_value *v,
                                           const struct call_args *a, bool with_attr,
                                           bool keep_if) {
    size_t first_test_arg = with_attr ? 1 : 0;
    struct template_value *attribute = with_attr ? arg(a, 0, NULL) : NULL;
    struct template_value *test_name = arg(a, first_test_arg, NULL);
    int test_id = -1;
    if (with_attr && attribute == NULL) {
        return render_fail(r, "Missing parameter for attribute name");
    }
    if (test_name != NULL) {
        if (test_name->type != TEMPLATE_STRING ||
            (test_id = builtins_test_id(test_name->u.str.s)) < 0) {
            return render_fail(r, "No test named %s.",
                               test_name->type == TEMPLATE_STRING ? test_name->u.str.s : "?");
        }
    }
    struct call_args targs = {
        .pos = a->pos + (a->n_pos > first_test_arg + 1 ? first_test_arg + 1 : a->n_pos),
        .n_pos = a->n_pos > first_test_arg + 1 ? a->n_pos - first_test_arg - 1 : 0,
        .kw_names = a->kw_names,
        .kw = a->kw,
        .n_kw = a->n_kw};
    struct template_value *items = render_iterate(r, v);
    if (items == NULL) {
        return NULL;
    }
    struct template_value *out = new_list(r);
    for (size_t i = 0; out != NULL && i < items->u.list.n; i++) {
        struct template_value *item = items->u.list.items[i];
        struct template_value *x =
            with_attr ? get_path(r, item, attribute) : template_value_ref(item);
        if (x == NULL) {
            template_value_unref(out);
            out = NULL;
            break;
        }
        int t = test_id >= 0 ? builtins_test(r, test_id, x, &targs) : template_value_truthy(x);
        template_value_unref(x);
        if (t < 0 || (t == keep_if && !push(r, out, template_value_ref(item)))) {
            template_value_unref(out);
            out = NULL;
        }
    }
    template_value_unref(items);
    return out;
}

static struct template_value *do_map(struct render *r, struct template_value *v,
                                     const struct call_args *a) {
    struct template_value *attribute = arg(a, 99, "attribute");
    struct template_value *def = arg(a, 99, "default");
    int filter_id = -1;
    struct call_args fargs = {0};
    if (attribute == NULL) {
        struct template_value *name = arg(a, 0, NULL);
        if (name == NULL || name->type != TEMPLATE_STRING ||
            (filter_id = builtins_filter_id(name->u.str.s)) < 0) {
            return render_fail(r, "map: no filter named %s",
                               name != NULL && name->type == TEMPLATE_STRING ? name->u.str.s
                                                                             : "(none)");
        }
        fargs.pos = a->pos + 1;
        fargs.n_pos = a->n_pos - 1;
        fargs.kw_names = a->kw_names;
        fargs.kw = a->kw;
        fargs.n_kw = a->n_kw;
    }
    struct template_value *items = render_iterate(r, v);
    if (items == NULL) {
        return NULL;
    }
    struct template_value *out = new_list(r);
    for (size_t i = 0; out != NULL && i < items->u.list.n; i++) {
        struct template_value *item = items->u.list.items[i];
        struct template_value *x;
        if (attribute != NULL) {
            x = get_path_default(r, item, attribute, def);
        } else {
            x = builtins_filter(r, filter_id, item, &fargs);
        }
        if (!push(r, out, x)) {
            template_value_unref(out);
            out = NULL;
        }
    }
    template_value_unref(items);
    return out;
}

static struct template_value *do_indent(struct render *r, struct template_value *v,
                                        const struct call_args *a) {
    struct template_value *width = arg(a, 0, "width"), *first = arg(a, 1, "first"),
                          *blank = arg(a, 2, "blank");
    struct buf ind;
    buf_init(&ind, render_max_output(r));
    if (width != NULL && width->type == TEMPLATE_STRING) {
        buf_add(&ind, width->u.str.s, width->u.str.len);
    } else {
        int64_t w = 4;
        if (width != NULL && !int_arg(r, width, &w, "indent width")) {
            return NULL;
        }
        if (w > 0 && (uint64_t)w > render_max_output(r)) {
            return render_limit(r, "max_output");
        }
        for (int64_t i = 0; i < w; i++) {
            buf_addc(&ind, ' ');
        }
    }
    if (!buf_ok(&ind)) {
        buf_free(&ind);
        return render_nomem(r);
    }
    struct template_value *s = render_to_string(r, v);
    if (s == NULL) {
        buf_free(&ind);
        return NULL;
    }
    /* s += "\n" then splitlines(), as jinja2 does */
    struct buf tmp;
    buf_init(&tmp, render_max_output(r) + 1);
    buf_add(&tmp, s->u.str.s, s->u.str.len);
    buf_addc(&tmp, '\n');
    template_value_unref(s);
    struct template_value *lines =
        buf_ok(&tmp) ? splitlines(r, tmp.p, tmp.len, false) : render_nomem(r);
    buf_free(&tmp);
    if (lines == NULL) {
        buf_free(&ind);
        return NULL;
    }
    const char *in = ind.p != NULL ? ind.p : "";
    size_t in_len = ind.len;
    struct buf b;
    buf_init(&b, render_max_output(r));
    bool do_blank = blank != NULL && template_value_truthy(blank);
    if (first != NULL && template_value_truthy(first)) {
        buf_add(&b, in, in_len);
    }
    for (size_t i = 0; i < lines->u.list.n; i++) {
        struct template_value *line = lines->u.list.items[i];
        if (i > 0) {
            buf_addc(&b, '\n');
            if (do_blank || line->u.str.len > 0) {
                buf_add(&b, in, in_len);
            }
        }
        buf_add(&b, line->u.str.s, line->u.str.len);
    }
    template_value_unref(lines);
    buf_free(&ind);
    return from_buf(r, &b);
}

static struct template_value *do_tojson(struct render *r, struct template_value *v,
                                        const struct call_args *a) {
    static const char *const names[] = {"ensure_ascii", "indent", "separators", "sort_keys", NULL};
    if (!check_args(r, a, "tojson", 4, names)) {
        return NULL;
    }
    /* transformers' tojson(x, ensure_ascii=False, indent=None, separators=None,
     * sort_keys=False) */
    struct template_value *ea = arg(a, 0, "ensure_ascii"), *indent = arg(a, 1, "indent"),
                          *seps = arg(a, 2, "separators"), *sk = arg(a, 3, "sort_keys");
    struct json_opts o = {.ensure_ascii = ea != NULL && template_value_truthy(ea),
                          .sort_keys = sk != NULL && template_value_truthy(sk)};
    char *spaces = NULL;
    if (indent != NULL && indent->type != TEMPLATE_NONE) {
        o.has_indent = true;
        if (indent->type == TEMPLATE_STRING) {
            o.indent = indent->u.str.s;
            o.indent_len = indent->u.str.len;
        } else {
            int64_t n;
            if (!int_arg(r, indent, &n, "tojson indent")) {
                return NULL;
            }
            if (n < 0) {
                n = 0;
            }
            if ((uint64_t)n > render_max_output(r)) {
                return render_limit(r, "max_output");
            }
            spaces = malloc((size_t)n + 1);
            if (spaces == NULL) {
                return render_nomem(r);
            }
            memset(spaces, ' ', (size_t)n);
            o.indent = spaces;
            o.indent_len = (size_t)n;
        }
    }
    if (seps != NULL && seps->type != TEMPLATE_NONE) {
        if (seps->type != TEMPLATE_LIST || seps->u.list.n != 2 ||
            seps->u.list.items[0]->type != TEMPLATE_STRING ||
            seps->u.list.items[1]->type != TEMPLATE_STRING) {
            free(spaces);
            return render_fail(r, "tojson separators must be a pair of strings");
        }
        o.item_sep = seps->u.list.items[0]->u.str.s;
        o.item_sep_len = seps->u.list.items[0]->u.str.len;
        o.key_sep = seps->u.list.items[1]->u.str.s;
        o.key_sep_len = seps->u.list.items[1]->u.str.len;
    }
    struct buf b;
    buf_init(&b, render_max_output(r));
    char err[256];
    int rc = value_tojson(&b, v, &o, err, sizeof(err));
    free(spaces);
    if (rc != 0) {
        buf_free(&b);
        if (v->type == TEMPLATE_UNDEFINED && v->u.undef.hint != NULL) {
            return render_fail(r, "%s", v->u.undef.hint);
        }
        return render_fail(r, "%s", err);
    }
    return from_buf(r, &b);
}

static struct template_value *do_round(struct render *r, struct template_value *v,
                                       const struct call_args *a) {
    struct template_value *prec = arg(a, 0, "precision"), *method = arg(a, 1, "method");
    int64_t p = 0;
    if (prec != NULL && !int_arg(r, prec, &p, "round precision")) {
        return NULL;
    }
    const char *m = method != NULL && method->type == TEMPLATE_STRING ? method->u.str.s : "common";
    if (strcmp(m, "common") != 0 && strcmp(m, "ceil") != 0 && strcmp(m, "floor") != 0) {
        return render_fail(r, "method must be common, ceil or floor");
    }
    if (!value_is_number(v)) {
        return render_fail(r, "type %s doesn't define __round__ method", value_type_name(v));
    }
    double x = value_as_double(v);
    if (p > 300) {
        p = 300;
    } else if (p < -300) {
        p = -300;
    }
    if (strcmp(m, "common") == 0) {
        if (v->type != TEMPLATE_FLOAT) {
            return make_int(r, v->type == TEMPLATE_BOOL ? v->u.b : v->u.i);
        }
        if (!isfinite(x)) {
            return nomem_if_null(r, value_float(x));
        }
        if (p >= 0) {
            /* printf rounds the exact binary value half-even, as Python's round does */
            char tmp[400];
            snprintf(tmp, sizeof(tmp), "%.*f", (int)p, x);
            return nomem_if_null(r, value_float(strtod(tmp, NULL)));
        }
        double scale = pow(10.0, (double)-p);
        double y = x / scale, ry = round(y);
        if (fabs(y - trunc(y)) == 0.5) {
            ry = 2.0 * round(y / 2.0);
        }
        return nomem_if_null(r, value_float(ry * scale));
    }
    double scale = pow(10.0, (double)p);
    double y = strcmp(m, "ceil") == 0 ? ceil(x * scale) : floor(x * scale);
    return nomem_if_null(r, value_float(y / scale));
}

/* Python int(str, base) with jinja2's fallback through float. */
static bool parse_int_str(const char *s, size_t len, int64_t base, int64_t *out) {
    size_t i = 0;
    while (i < len && py_isspace((unsigned char)s[i])) {
        i++;
    }
    while (len > i && py_isspace((unsigned char)s[len - 1])) {
        len--;
    }
    bool neg = false;
    if (i < len && (s[i] == '+' || s[i] == '-')) {
        neg = s[i] == '-';
        i++;
    }
    if (base == 16 && i + 1 < len && s[i] == '0' && (s[i + 1] == 'x' || s[i + 1] == 'X')) {
        i += 2;
    } else if (base == 8 && i + 1 < len && s[i] == '0' && (s[i + 1] == 'o' || s[i + 1] == 'O')) {
        i += 2;
    } else if (base == 2 && i + 1 < len && s[i] == '0' && (s[i + 1] == 'b' || s[i + 1] == 'B')) {
        i += 2;
    }
    if (i >= len || base < 2 || base > 36) {
        return false;
    }
    uint64_t v = 0;
    bool prev_digit = false;
    for (; i < len; i++) {
        char c = s[i];
        if (c == '_' && prev_digit && i + 1 < len) {
            prev_digit = false;
            continue;
        }
        int d = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'a' && c <= 'z' ? c - 'a' + 10
                : c >= 'A' && c <= 'Z' ? c - 'A' + 10
                                       : 99;
        if (d >= base) {
            return false;
        }
        if (v > ((uint64_t)INT64_MAX - (uint64_t)d) / (uint64_t)base) {
            return false;
        }
        v = v * (uint64_t)base + (uint64_t)d;
        prev_digit = true;
    }
    if (!prev_digit) {
        return false;
    }
    *out = neg ? -(int64_t)v : (int64_t)v;
    return true;
}

/* Python float(str). */
static bool parse_float_str(const char *s, size_t len, double *out) {
    char tmp[128];
    size_t i = 0;
    while (i < len && py_isspace((unsigned char)s[i])) {
        i++;
    }
    while (len > i && py_isspace((unsigned char)s[len - 1])) {
        len--;
    }
    size_t n = 0;
    for (; i < len && n < sizeof(tmp) - 1; i++) {
        if (s[i] == '_') {
            continue;
        }
        if (strchr("0123456789+-.eEinfatyINFATY", s[i]) == NULL) {
            return false;
        }
        tmp[n++] = s[i];
    }
    if (i < len || n == 0) {
        return false;
    }
    tmp[n] = '\0';
    char *end;
    double d = strtod(tmp, &end);
    if (*end != '\0') {
        return false;
    }
    *out = d;
    return true;
}

static void html_escape(struct buf *b, const char *s, size_t len) {
    for (size_t i = 0; i < len; i++) {
        switch (s[i]) {
        case '&':
            buf_adds(b, "&amp;");
            break;
        case '<':
            buf_adds(b, "&lt;");
            break;
        case '>':
            buf_adds(b, "&gt;");
            break;
        case '"':
            buf_adds(b, "&#34;");
            break;
        case '\'':
            buf_adds(b, "&#39;");
            break;
        default:
            buf_addc(b, s[i]);
        }
    }
}

struct template_value *builtins_filter(struct render *r, int id, struct template_value *v,
                                       const struct call_args *a) {
    struct template_value *a0 = arg(a, 0, NULL), *a1 = arg(a, 1, NULL);
    struct template_value *s = NULL, *out = NULL;
    struct buf b;
    int64_t n;
    switch (id) {
    case F_ABS:
        if (v->type == TEMPLATE_FLOAT) {
            return nomem_if_null(r, value_float(fabs(v->u.f)));
        }
        if (v->type == TEMPLATE_INT || v->type == TEMPLATE_BOOL) {
            int64_t x = v->type == TEMPLATE_BOOL ? v->u.b : v->u.i;
            if (x == INT64_MIN) {
                return render_fail(r, "integer overflow");
            }
            return make_int(r, x < 0 ? -x : x);
        }
        return render_fail(r, "bad operand type for abs(): '%s'", value_type_name(v));
    case F_ATTR:
        if (a0 == NULL || !str_arg(r, a0, "attr name")) {
            return render_failed(r) ? NULL : render_fail(r, "attr needs a name");
        }
        if (v->type == TEMPLATE_DICT) {
            /* the sandbox's getattr only: a key is not an attribute */
            bool is_unsafe;
            if (builtins_method_id(v, a0->u.str.s, a0->u.str.len, &is_unsafe) < 0 || is_unsafe) {
                return nomem_if_null(r, value_undefined("no such attribute"));
            }
        }
        return render_getattr(r, v, a0->u.str.s, a0->u.str.len);
    case F_BATCH:
    case F_SLICE: {
        if (a0 == NULL || !int_arg(r, a0, &n, id == F_BATCH ? "batch" : "slice")) {
            return render_failed(r) ? NULL : render_fail(r, "missing count");
        }
        if (n <= 0) {
            return render_fail(r, "the count must be positive");
        }
        struct template_value *fill = arg(a, 1, id == F_BATCH ? "fill_with" : "fill_with");
        struct template_value *items = render_iterate(r, v);
        if (items == NULL) {
            return NULL;
        }
        out = new_list(r);
        size_t total = items->u.list.n;
        if (id == F_BATCH) {
            for (size_t i = 0; out != NULL && i < total; i += (size_t)n) {
                struct template_value *chunk = new_list(r);
                for (size_t k = 0; chunk != NULL && k < (size_t)n; k++) {
                    struct template_value *x = i + k < total
                                                   ? template_value_ref(items->u.list.items[i + k])
                                               : fill != NULL ? template_value_ref(fill)
                                                              : NULL;
                    if (x == NULL) {
                        break;
                    }
                    if (!push(r, chunk, x)) {
                        template_value_unref(chunk);
                        chunk = NULL;
                    }
                }
                if (!push(r, out, chunk)) {
                    template_value_unref(out);
                    out = NULL;
                }
            }
        } else {
            size_t per = total / (size_t)n, extra = total % (size_t)n, offset = 0;
            for (size_t i = 0; out != NULL && i < (size_t)n; i++) {
                size_t start = offset + i * per, end = start + per;
                if (i < extra) {
                    offset++;
                }
                end = offset + (i + 1) * per;
                struct template_value *chunk = new_list(r);
                for (size_t k = start; chunk != NULL && k < end && k < total; k++) {
                    if (!push(r, chunk, template_value_ref(items->u.list.items[k]))) {
                        template_value_unref(chunk);
                        chunk = NULL;
                    }
                }
                if (chunk != NULL && fill != NULL && i >= extra && extra > 0 &&
                    !push(r, chunk, template_value_ref(fill))) {
                    template_value_unref(chunk);
                    chunk = NULL;
                }
                if (!push(r, out, chunk)) {
                    template_value_unref(out);
                    out = NULL;
                }
            }
        }
        template_value_unref(items);
        return out;
    }
    case F_CAPITALIZE:
    case F_LOWER:
    case F_UPPER:
        s = render_to_string(r, v);
        if (s != NULL) {
            out = change_case(r, s->u.str.s, s->u.str.len,
                              id == F_LOWER   ? CASE_LOWER
                              : id == F_UPPER ? CASE_UPPER
                                              : CASE_CAPITALIZE);
        }
        template_value_unref(s);
        return out;
    case F_TITLE: {
        s = render_to_string(r, v);
        if (s == NULL) {
            return NULL;
        }
        /* jinja2: split before runs of [-\s({\[<]; each piece: first char upper, rest lower */
        buf_init(&b, render_max_output(r));
        const char *p = s->u.str.s;
        size_t len = s->u.str.len;
        bool at_start = true;
        for (size_t i = 0; i < len;) {
            uint32_t cp = utf8_next(p, len, &i);
            bool sep =
                py_isspace(cp) || cp == '-' || cp == '(' || cp == '{' || cp == '[' || cp == '<';
            if (sep) {
                buf_add_cp(&b, cp);
                at_start = true;
            } else {
                buf_add_cp(&b, at_start ? cp_upper(cp) : cp_lower(cp));
                at_start = false;
            }
        }
        template_value_unref(s);
        return from_buf(r, &b);
    }
    case F_CENTER: {
        int64_t width = 80;
        if (a0 != NULL && !int_arg(r, a0, &width, "center width")) {
            return NULL;
        }
        s = render_to_string(r, v);
        if (s != NULL) {
            out = pad(r, s, width, " ", 1, 0);
        }
        template_value_unref(s);
        return out;
    }
    case F_COUNT:
    case F_LENGTH:
        switch (v->type) {
        case TEMPLATE_UNDEFINED:
            return make_int(r, 0);
        case TEMPLATE_STRING:
            return make_int(r, (int64_t)utf8_count(v->u.str.s, v->u.str.len));
        case TEMPLATE_LIST:
            return make_int(r, (int64_t)v->u.list.n);
        case TEMPLATE_DICT:
            return make_int(r, (int64_t)v->u.dict.n);
        case TEMPLATE_OTHER:
            if (v->u.other.kind == OTHER_NAMESPACE) {
                break;
            }
            break;
        default:
            break;
        }
        return render_fail(r, "object of type '%s' has no len()", value_type_name(v));
    case F_DEFAULT: {
        struct template_value *def = arg(a, 0, "default_value");
        struct template_value *boolean = arg(a, 1, "boolean");
        bool use = v->type == TEMPLATE_UNDEFINED ||
                   (boolean != NULL && template_value_truthy(boolean) && !template_value_truthy(v));
        if (use) {
            return def != NULL ? template_value_ref(def) : make_str(r, "", 0);
        }
        return template_value_ref(v);
    }
    case F_DICTSORT: {
        struct template_value *cs = arg(a, 0, "case_sensitive"), *by = arg(a, 1, "by"),
                              *rev = arg(a, 2, "reverse");
        if (v->type != TEMPLATE_DICT) {
            return render_fail(r, "dictsort: '%s' object has no attribute 'items'",
                               value_type_name(v));
        }
        int pos = 0;
        if (by != NULL) {
            if (by->type == TEMPLATE_STRING && strcmp(by->u.str.s, "value") == 0) {
                pos = 1;
            } else if (!(by->type == TEMPLATE_STRING && strcmp(by->u.str.s, "key") == 0)) {
                return render_fail(r, "You can only sort by either \"key\" or \"value\"");
            }
        }
        out = new_list(r);
        for (size_t i = 0; out != NULL && i < v->u.dict.n; i++) {
            if (!push(r, out, pair(r, v->u.dict.entries[i].key, v->u.dict.entries[i].value))) {
                template_value_unref(out);
                out = NULL;
            }
        }
        if (out == NULL) {
            return NULL;
        }
        return sort_list(r, out, NULL, cs != NULL && template_value_truthy(cs),
                         rev != NULL && template_value_truthy(rev), pos);
    }
    case F_ESCAPE:
    case F_FORCEESCAPE:
        s = render_to_string(r, v);
        if (s == NULL) {
            return NULL;
        }
        buf_init(&b, render_max_output(r));
        html_escape(&b, s->u.str.s, s->u.str.len);
        template_value_unref(s);
        return from_buf(r, &b);
    case F_FIRST:
    case F_LAST: {
        struct template_value *items = render_iterate(r, v);
        if (items == NULL) {
            return NULL;
        }
        if (items->u.list.n == 0) {
            out = nomem_if_null(r, value_undefined(id == F_FIRST ? "No first item, sequence was "
                                                                   "empty."
                                                                 : "No last item, sequence was "
                                                                   "empty."));
        } else {
            out = template_value_ref(items->u.list.items[id == F_FIRST ? 0 : items->u.list.n - 1]);
        }
        template_value_unref(items);
        return out;
    }
    case F_FLOAT: {
        struct template_value *def = arg(a, 0, "default");
        double d;
        if (value_is_number(v)) {
            return nomem_if_null(r, value_float(value_as_double(v)));
        }
        if (v->type == TEMPLATE_STRING && parse_float_str(v->u.str.s, v->u.str.len, &d)) {
            return nomem_if_null(r, value_float(d));
        }
        if (v->type == TEMPLATE_UNDEFINED) {
            return render_fail(r, "%s", v->u.undef.hint != NULL ? v->u.undef.hint : "undefined");
        }
        return def != NULL ? template_value_ref(def) : nomem_if_null(r, value_float(0.0));
    }
    case F_INT: {
        struct template_value *def = arg(a, 0, "default"), *base = arg(a, 1, "base");
        int64_t bv = 10;
        if (base != NULL && !int_arg(r, base, &bv, "int base")) {
            return NULL;
        }
        if (v->type == TEMPLATE_INT || v->type == TEMPLATE_BOOL) {
            return make_int(r, v->type == TEMPLATE_BOOL ? v->u.b : v->u.i);
        }
        if (v->type == TEMPLATE_FLOAT && isfinite(v->u.f) && fabs(v->u.f) < 9.2e18) {
            return make_int(r, (int64_t)v->u.f);
        }
        if (v->type == TEMPLATE_STRING) {
            double d;
            if (parse_int_str(v->u.str.s, v->u.str.len, bv, &n)) {
                return make_int(r, n);
            }
            if (parse_float_str(v->u.str.s, v->u.str.len, &d) && isfinite(d) && fabs(d) < 9.2e18) {
                return make_int(r, (int64_t)d);
            }
        }
        if (v->type == TEMPLATE_UNDEFINED) {
            return render_fail(r, "%s", v->u.undef.hint != NULL ? v->u.undef.hint : "undefined");
        }
        return def != NULL ? template_value_ref(def) : make_int(r, 0);
    }
    case F_FORMAT: {
        s = render_to_string(r, v);
        if (s == NULL) {
            return NULL;
        }
        struct template_value *args;
        if (a->n_kw > 0) {
            args = template_value_dict();
            for (size_t k = 0; args != NULL && k < a->n_kw; k++) {
                if (template_value_dict_set(args, a->kw_names[k], template_value_ref(a->kw[k])) !=
                    0) {
                    template_value_unref(args);
                    args = NULL;
                }
            }
        } else {
            args = value_tuple();
            for (size_t i = 0; args != NULL && i < a->n_pos; i++) {
                if (template_value_list_append(args, template_value_ref(a->pos[i])) != 0) {
                    template_value_unref(args);
                    args = NULL;
                }
            }
        }
        out = args != NULL ? render_percent_format(r, s, args) : render_nomem(r);
        template_value_unref(args);
        template_value_unref(s);
        return out;
    }
    case F_INDENT:
        return do_indent(r, v, a);
    case F_ITEMS:
        if (v->type == TEMPLATE_UNDEFINED) {
            return new_list(r);
        }
        if (v->type != TEMPLATE_DICT) {
            return render_fail(r, "Can only get item pairs from a mapping.");
        }
        return builtins_method(r, M_ITEMS, v, a);
    case F_JOIN: {
        struct template_value *sep = arg(a, 0, "d"), *attribute = arg(a, 1, "attribute");
        struct template_value *items = render_iterate(r, v);
        if (items == NULL) {
            return NULL;
        }
        struct template_value *sep_s = sep != NULL ? render_to_string(r, sep) : make_str(r, "", 0);
        if (sep_s == NULL) {
            template_value_unref(items);
            return NULL;
        }
        buf_init(&b, render_max_output(r));
        bool ok = true;
        for (size_t i = 0; ok && i < items->u.list.n; i++) {
            struct template_value *x = get_path(r, items->u.list.items[i], attribute);
            if (x == NULL) {
                ok = false;
                break;
            }
            if (i > 0) {
                buf_add(&b, sep_s->u.str.s, sep_s->u.str.len);
            }
            value_str(&b, x);
            template_value_unref(x);
        }
        template_value_unref(sep_s);
        template_value_unref(items);
        if (!ok) {
            buf_free(&b);
            return NULL;
        }
        return from_buf(r, &b);
    }
    case F_LIST:
        return render_iterate(r, v);
    case F_MAP:
        return do_map(r, v, a);
    case F_MAX:
    case F_MIN:
        return min_max(r, v, a, id == F_MAX);
    case F_SELECT:
    case F_REJECT:
        return select_items(r, v, a, false, id == F_SELECT);
    case F_SELECTATTR:
    case F_REJECTATTR:
        return select_items(r, v, a, true, id == F_SELECTATTR);
    case F_REPLACE: {
        struct template_value *c = arg(a, 2, "count");
        int64_t count = -1;
        if (a0 == NULL || a1 == NULL) {
            return render_fail(r, "replace needs two arguments");
        }
        if (c != NULL && c->type != TEMPLATE_NONE && !int_arg(r, c, &count, "replace count")) {
            return NULL;
        }
        s = render_to_string(r, v);
        struct template_value *o = s != NULL ? render_to_string(r, a0) : NULL;
        struct template_value *nw = o != NULL ? render_to_string(r, a1) : NULL;
        if (nw != NULL) {
            out = replace(r, s, o, nw, count);
        }
        template_value_unref(s);
        template_value_unref(o);
        template_value_unref(nw);
        return out;
    }
    case F_REVERSE:
        if (v->type == TEMPLATE_STRING) {
            struct cps c;
            if (!to_cps(r, v->u.str.s, v->u.str.len, &c)) {
                return NULL;
            }
            buf_init(&b, render_max_output(r));
            for (size_t i = c.n; i > 0; i--) {
                buf_add_cp(&b, c.v[i - 1]);
            }
            free(c.v);
            return from_buf(r, &b);
        }
        out = render_iterate(r, v);
        if (out != NULL) {
            for (size_t i = 0; i < out->u.list.n / 2; i++) {
                struct template_value *t = out->u.list.items[i];
                out->u.list.items[i] = out->u.list.items[out->u.list.n - 1 - i];
                out->u.list.items[out->u.list.n - 1 - i] = t;
            }
        }
        return out;
    case F_ROUND:
        return do_round(r, v, a);
    case F_SAFE:
    case F_STRING:
        return render_to_string(r, v);
    case F_SORT: {
        struct template_value *rev = arg(a, 0, "reverse"), *cs = arg(a, 1, "case_sensitive"),
                              *attribute = arg(a, 2, "attribute");
        out = render_iterate(r, v);
        if (out == NULL) {
            return NULL;
        }
        return sort_list(r, out, attribute, cs != NULL && template_value_truthy(cs),
                         rev != NULL && template_value_truthy(rev), -1);
    }
    case F_STRIPTAGS: {
        s = render_to_string(r, v);
        if (s == NULL) {
            return NULL;
        }
        /* tags and comments removed, whitespace runs collapsed */
        struct buf t;
        buf_init(&t, render_max_output(r));
        const char *p = s->u.str.s;
        size_t len = s->u.str.len;
        for (size_t i = 0; i < len; i++) {
            if (p[i] == '<') {
                const char *close = memchr(p + i, '>', len - i);
                if (close != NULL) {
                    i = (size_t)(close - p);
                    continue;
                }
            }
            buf_addc(&t, p[i]);
        }
        template_value_unref(s);
        struct template_value *ts = from_buf(r, &t);
        if (ts == NULL) {
            return NULL;
        }
        struct template_value *words = split(r, ts, NULL, -1, false);
        template_value_unref(ts);
        if (words == NULL) {
            return NULL;
        }
        buf_init(&b, render_max_output(r));
        for (size_t i = 0; i < words->u.list.n; i++) {
            if (i > 0) {
                buf_addc(&b, ' ');
            }
            buf_add(&b, words->u.list.items[i]->u.str.s, words->u.list.items[i]->u.str.len);
        }
        template_value_unref(words);
        return from_buf(r, &b);
    }
    case F_SUM: {
        struct template_value *attribute = arg(a, 0, "attribute"), *start = arg(a, 1, "start");
        struct template_value *items = render_iterate(r, v);
        if (items == NULL) {
            return NULL;
        }
        bool is_float = start != NULL && start->type == TEMPLATE_FLOAT;
        int64_t isum = 0;
        double fsum = 0.0;
        if (start != NULL) {
            if (!value_is_number(start)) {
                template_value_unref(items);
                return render_fail(r, "sum: start must be a number");
            }
            isum = start->type == TEMPLATE_FLOAT  ? 0
                   : start->type == TEMPLATE_BOOL ? start->u.b
                                                  : start->u.i;
            fsum = value_as_double(start);
        }
        for (size_t i = 0; i < items->u.list.n; i++) {
            struct template_value *x = get_path(r, items->u.list.items[i], attribute);
            if (x == NULL) {
                template_value_unref(items);
                return NULL;
            }
            if (!value_is_number(x)) {
                template_value_unref(items);
                out = render_fail(r, "unsupported operand type(s) for +: '%s' and '%s'",
                                  is_float ? "float" : "int", value_type_name(x));
                template_value_unref(x);
                return out;
            }
            if (x->type == TEMPLATE_FLOAT && !is_float) {
                is_float = true;
                fsum = (double)isum;
            }
            if (is_float) {
                fsum += value_as_double(x);
            } else {
                int64_t xi = x->type == TEMPLATE_BOOL ? x->u.b : x->u.i;
                if (__builtin_add_overflow(isum, xi, &isum)) {
                    template_value_unref(x);
                    template_value_unref(items);
                    return render_fail(r, "integer overflow");
                }
            }
            template_value_unref(x);
        }
        template_value_unref(items);
        return is_float ? nomem_if_null(r, value_float(fsum)) : make_int(r, isum);
    }
    case F_TOJSON:
        return do_tojson(r, v, a);
    case F_TRIM:
        s = render_to_string(r, v);
        if (s != NULL) {
            out = strip(r, s, arg(a, 0, "chars"), 3);
        }
        template_value_unref(s);
        return out;
    case F_TRUNCATE: {
        struct template_value *len_v = arg(a, 0, "length"), *kill = arg(a, 1, "killwords"),
                              *end = arg(a, 2, "end"), *lw = arg(a, 3, "leeway");
        int64_t length = 255, leeway = 5;
        if ((len_v != NULL && !int_arg(r, len_v, &length, "truncate length")) ||
            (lw != NULL && lw->type != TEMPLATE_NONE && !int_arg(r, lw, &leeway, "leeway"))) {
            return NULL;
        }
        s = render_to_string(r, v);
        struct template_value *end_s = s == NULL     ? NULL
                                       : end != NULL ? render_to_string(r, end)
                                                     : make_str(r, "...", 3);
        if (end_s == NULL) {
            template_value_unref(s);
            return NULL;
        }
        int64_t end_len = (int64_t)utf8_count(end_s->u.str.s, end_s->u.str.len);
        int64_t count = (int64_t)utf8_count(s->u.str.s, s->u.str.len);
        if (length < end_len || leeway < 0) {
            template_value_unref(s);
            template_value_unref(end_s);
            return render_fail(r, "expected length >= %lld, got %lld", (long long)end_len,
                               (long long)length);
        }
        if (count <= length + leeway) {
            template_value_unref(end_s);
            return s;
        }
        /* s[:length - len(end)], cut back to its last space unless killwords */
        size_t cut = 0;
        for (int64_t i = 0; i < length - end_len && cut < s->u.str.len; i++) {
            utf8_next(s->u.str.s, s->u.str.len, &cut);
        }
        if (kill == NULL || !template_value_truthy(kill)) {
            const char *sp = rfind_bytes(s->u.str.s, cut, " ", 1);
            if (sp != NULL) {
                cut = (size_t)(sp - s->u.str.s);
            }
        }
        buf_init(&b, render_max_output(r));
        buf_add(&b, s->u.str.s, cut);
        buf_add(&b, end_s->u.str.s, end_s->u.str.len);
        template_value_unref(s);
        template_value_unref(end_s);
        return from_buf(r, &b);
    }
    case F_UNIQUE: {
        struct template_value *cs = arg(a, 0, "case_sensitive"),
                              *attribute = arg(a, 1, "attribute");
        bool case_sensitive = cs != NULL && template_value_truthy(cs);
        struct template_value *items = render_iterate(r, v);
        struct template_value *seen = items != NULL ? new_list(r) : NULL;
        out = seen != NULL ? new_list(r) : NULL;
        for (size_t i = 0; out != NULL && i < items->u.list.n; i++) {
            struct template_value *k =
                sort_key(r, items->u.list.items[i], attribute, case_sensitive);
            if (k == NULL) {
                template_value_unref(out);
                out = NULL;
                break;
            }
            bool dup = false;
            for (size_t j = 0; j < seen->u.list.n && !dup; j++) {
                dup = value_equal(seen->u.list.items[j], k);
            }
            if (dup) {
                template_value_unref(k);
                continue;
            }
            if (!push(r, seen, k) || !push(r, out, template_value_ref(items->u.list.items[i]))) {
                template_value_unref(out);
                out = NULL;
            }
        }
        template_value_unref(seen);
        template_value_unref(items);
        return out;
    }
    case F_WORDCOUNT: {
        s = render_to_string(r, v);
        if (s == NULL) {
            return NULL;
        }
        int64_t words = 0;
        bool in_word = false;
        for (size_t i = 0; i < s->u.str.len;) {
            bool w = cp_is_word(utf8_next(s->u.str.s, s->u.str.len, &i));
            words += w && !in_word;
            in_word = w;
        }
        template_value_unref(s);
        return make_int(r, words);
    }
    default:
        return render_fail(r, "unsupported filter");
    }
}
