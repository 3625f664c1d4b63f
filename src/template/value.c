/*
 * value.c: the values of the template renderer (include/gptd/template.h) and the Python text
 * conventions the goldens depend on -- str() and repr() of values, repr(float), str.isspace,
 * json.dumps(ensure_ascii=False) and a small JSON parser that keeps 1 and 1.0 apart.
 *
 * Values are reference counted without atomics (one render owns its values); the statics and a
 * compiled template's constants are immortal so that concurrent renders never write to them.
 * Freeing is iterative: a render can build a list nested a million deep, which a recursive free
 * would overflow the stack on.
 */
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "template_internal.h"

struct template_value value_undefined_static = {.type = TEMPLATE_UNDEFINED, .refs = VALUE_IMMORTAL};
struct template_value value_none_static = {.type = TEMPLATE_NONE, .refs = VALUE_IMMORTAL};
struct template_value value_true_static = {
    .type = TEMPLATE_BOOL, .refs = VALUE_IMMORTAL, .u.b = true};
struct template_value value_false_static = {
    .type = TEMPLATE_BOOL, .refs = VALUE_IMMORTAL, .u.b = false};

/* Past this nesting, repr/tojson/== stop (Python would raise RecursionError). */
#define MAX_WALK_DEPTH 512

/* ---- construction and freeing ---- */

static struct template_value *value_new(enum template_value_type type) {
    struct template_value *v = calloc(1, sizeof(*v));
    if (v != NULL) {
        v->type = type;
        v->refs = 1;
    }
    return v;
}

struct template_value *template_value_none(void) {
    return &value_none_static;
}

struct template_value *template_value_bool(bool b) {
    return value_bool_ref(b);
}

struct template_value *template_value_int(int64_t i) {
    struct template_value *v = value_new(TEMPLATE_INT);
    if (v != NULL) {
        v->u.i = i;
    }
    return v;
}

struct template_value *value_float(double f) {
    struct template_value *v = value_new(TEMPLATE_FLOAT);
    if (v != NULL) {
        v->u.f = f;
    }
    return v;
}

struct template_value *value_string_take(char *s, size_t len) {
    struct template_value *v = value_new(TEMPLATE_STRING);
    if (v == NULL) {
        free(s);
        return NULL;
    }
    v->u.str.s = s;
    v->u.str.len = len;
    return v;
}

struct template_value *template_value_string(const char *s, size_t len) {
    char *copy = malloc(len + 1);
    if (copy == NULL) {
        return NULL;
    }
    if (len > 0) {
        memcpy(copy, s, len);
    }
    copy[len] = '\0';
    return value_string_take(copy, len);
}

struct template_value *template_value_list(void) {
    return value_new(TEMPLATE_LIST);
}

struct template_value *value_tuple(void) {
    struct template_value *v = value_new(TEMPLATE_LIST);
    if (v != NULL) {
        v->u.list.is_tuple = true;
    }
    return v;
}

struct template_value *template_value_dict(void) {
    return value_new(TEMPLATE_DICT);
}

struct template_value *value_undefined(const char *hint) {
    if (hint == NULL) {
        return &value_undefined_static;
    }
    struct template_value *v = value_new(TEMPLATE_UNDEFINED);
    if (v == NULL) {
        return NULL;
    }
    v->u.undef.hint = strdup(hint);
    if (v->u.undef.hint == NULL) {
        free(v);
        return NULL;
    }
    return v;
}

struct template_value *value_other(enum other_kind kind) {
    struct template_value *v = value_new(TEMPLATE_OTHER);
    if (v != NULL) {
        v->u.other.kind = kind;
    }
    return v;
}

struct template_value *template_value_ref(struct template_value *v) {
    if (v != NULL && v->refs != VALUE_IMMORTAL) {
        v->refs++;
    }
    return v;
}

/* A to-free stack: values whose count reached zero, their children pushed in turn. */
struct free_stack {
    struct template_value **v;
    size_t n, cap;
    struct template_value *local[64];
};

static void free_push(struct free_stack *fs, struct template_value *v) {
    if (v == NULL || v->refs == VALUE_IMMORTAL) {
        return;
    }
    if (--v->refs > 0) {
        return;
    }
    if (fs->n == fs->cap) {
        size_t cap = fs->cap * 2;
        struct template_value **nv;
        if (fs->v == fs->local) {
            nv = malloc(cap * sizeof(*nv));
            if (nv != NULL) {
                memcpy(nv, fs->local, fs->n * sizeof(*nv));
            }
        } else {
            nv = realloc(fs->v, cap * sizeof(*nv));
        }
        if (nv == NULL) {
            return; /* out of memory while freeing: leak rather than crash */
        }
        fs->v = nv;
        fs->cap = cap;
    }
    fs->v[fs->n++] = v;
}

static void free_one(struct free_stack *fs, struct template_value *v) {
    switch (v->type) {
    case TEMPLATE_STRING:
        free(v->u.str.s);
        break;
    case TEMPLATE_LIST:
        for (size_t i = 0; i < v->u.list.n; i++) {
            free_push(fs, v->u.list.items[i]);
        }
        free(v->u.list.items);
        break;
    case TEMPLATE_DICT:
        for (size_t i = 0; i < v->u.dict.n; i++) {
            free_push(fs, v->u.dict.entries[i].key);
            free_push(fs, v->u.dict.entries[i].value);
        }
        free(v->u.dict.entries);
        break;
    case TEMPLATE_UNDEFINED:
        free(v->u.undef.hint);
        break;
    case TEMPLATE_OTHER:
        free_push(fs, v->u.other.self);
        free_push(fs, v->u.other.self2);
        break;
    default:
        break;
    }
    free(v);
}

void template_value_unref(struct template_value *v) {
    struct free_stack fs = {.cap = 64};
    fs.v = fs.local;
    free_push(&fs, v);
    while (fs.n > 0) {
        free_one(&fs, fs.v[--fs.n]);
    }
    if (fs.v != fs.local) {
        free(fs.v);
    }
}

void value_free_immortal(struct template_value *v) {
    if (v == NULL || v == &value_none_static || v == &value_true_static ||
        v == &value_false_static || v == &value_undefined_static) {
        return;
    }
    /* Constants are scalars: strings, ints, floats. */
    if (v->type == TEMPLATE_STRING) {
        free(v->u.str.s);
    }
    free(v);
}

/* ---- containers ---- */

int template_value_list_append(struct template_value *list, struct template_value *v) {
    if (list == NULL || list->type != TEMPLATE_LIST || v == NULL) {
        template_value_unref(v);
        return -1;
    }
    if (list->u.list.n == list->u.list.cap) {
        size_t cap = list->u.list.cap ? list->u.list.cap * 2 : 4;
        struct template_value **items = realloc(list->u.list.items, cap * sizeof(*items));
        if (items == NULL) {
            template_value_unref(v);
            return -1;
        }
        list->u.list.items = items;
        list->u.list.cap = cap;
    }
    list->u.list.items[list->u.list.n++] = v;
    return 0;
}

static bool key_equal(const struct template_value *a, const struct template_value *b) {
    if (a->type == TEMPLATE_STRING || b->type == TEMPLATE_STRING) {
        return a->type == b->type && a->u.str.len == b->u.str.len &&
               memcmp(a->u.str.s, b->u.str.s, a->u.str.len) == 0;
    }
    return value_equal(a, b);
}

struct dict_entry *value_dict_find(const struct template_value *dict,
                                   const struct template_value *key) {
    if (dict == NULL || dict->type != TEMPLATE_DICT) {
        return NULL;
    }
    for (size_t i = 0; i < dict->u.dict.n; i++) {
        if (key_equal(dict->u.dict.entries[i].key, key)) {
            return &dict->u.dict.entries[i];
        }
    }
    return NULL;
}

struct dict_entry *value_dict_find_str(const struct template_value *dict, const char *key,
                                       size_t len) {
    if (dict == NULL || dict->type != TEMPLATE_DICT) {
        return NULL;
    }
    for (size_t i = 0; i < dict->u.dict.n; i++) {
        const struct template_value *k = dict->u.dict.entries[i].key;
        if (k->type == TEMPLATE_STRING && k->u.str.len == len &&
            memcmp(k->u.str.s, key, len) == 0) {
            return &dict->u.dict.entries[i];
        }
    }
    return NULL;
}

int value_dict_put(struct template_value *dict, struct template_value *key,
                   struct template_value *v) {
    if (dict == NULL || dict->type != TEMPLATE_DICT || key == NULL || v == NULL) {
        template_value_unref(key);
        template_value_unref(v);
        return -1;
    }
    struct dict_entry *e = value_dict_find(dict, key);
    if (e != NULL) {
        /* Python keeps the first key object and its position, and takes the new value. */
        template_value_unref(key);
        template_value_unref(e->value);
        e->value = v;
        return 0;
    }
    if (dict->u.dict.n == dict->u.dict.cap) {
        size_t cap = dict->u.dict.cap ? dict->u.dict.cap * 2 : 4;
        struct dict_entry *entries = realloc(dict->u.dict.entries, cap * sizeof(*entries));
        if (entries == NULL) {
            template_value_unref(key);
            template_value_unref(v);
            return -1;
        }
        dict->u.dict.entries = entries;
        dict->u.dict.cap = cap;
    }
    dict->u.dict.entries[dict->u.dict.n].key = key;
    dict->u.dict.entries[dict->u.dict.n].value = v;
    dict->u.dict.n++;
    return 0;
}

int template_value_dict_set(struct template_value *dict, const char *key,
                            struct template_value *v) {
    if (dict == NULL || dict->type != TEMPLATE_DICT || key == NULL) {
        template_value_unref(v);
        return -1;
    }
    struct template_value *k = template_value_string(key, strlen(key));
    if (k == NULL) {
        template_value_unref(v);
        return -1;
    }
    return value_dict_put(dict, k, v);
}

/* ---- accessors ---- */

enum template_value_type template_value_type(const struct template_value *v) {
    return v != NULL ? v->type : TEMPLATE_UNDEFINED;
}

size_t template_value_length(const struct template_value *v) {
    if (v == NULL) {
        return 0;
    }
    if (v->type == TEMPLATE_LIST) {
        return v->u.list.n;
    }
    if (v->type == TEMPLATE_DICT) {
        return v->u.dict.n;
    }
    return 0;
}

struct template_value *template_value_list_get(const struct template_value *list, size_t i) {
    if (list == NULL || list->type != TEMPLATE_LIST || i >= list->u.list.n) {
        return NULL;
    }
    return list->u.list.items[i];
}

struct template_value *template_value_dict_get(const struct template_value *dict, const char *key) {
    struct dict_entry *e = key != NULL ? value_dict_find_str(dict, key, strlen(key)) : NULL;
    return e != NULL ? e->value : NULL;
}

const char *template_value_dict_key(const struct template_value *dict, size_t i) {
    if (dict == NULL || dict->type != TEMPLATE_DICT || i >= dict->u.dict.n ||
        dict->u.dict.entries[i].key->type != TEMPLATE_STRING) {
        return NULL;
    }
    return dict->u.dict.entries[i].key->u.str.s;
}

struct template_value *template_value_dict_value(const struct template_value *dict, size_t i) {
    if (dict == NULL || dict->type != TEMPLATE_DICT || i >= dict->u.dict.n) {
        return NULL;
    }
    return dict->u.dict.entries[i].value;
}

const char *template_value_string_bytes(const struct template_value *v, size_t *len) {
    if (v == NULL || v->type != TEMPLATE_STRING) {
        return NULL;
    }
    if (len != NULL) {
        *len = v->u.str.len;
    }
    return v->u.str.s;
}

bool template_value_truthy(const struct template_value *v) {
    if (v == NULL) {
        return false;
    }
    switch (v->type) {
    case TEMPLATE_UNDEFINED:
    case TEMPLATE_NONE:
        return false;
    case TEMPLATE_BOOL:
        return v->u.b;
    case TEMPLATE_INT:
        return v->u.i != 0;
    case TEMPLATE_FLOAT:
        return v->u.f != 0.0;
    case TEMPLATE_STRING:
        return v->u.str.len > 0;
    case TEMPLATE_LIST:
        return v->u.list.n > 0;
    case TEMPLATE_DICT:
        return v->u.dict.n > 0;
    default:
        return true;
    }
}

/* ---- comparison ---- */

bool value_is_number(const struct template_value *v) {
    return v->type == TEMPLATE_BOOL || v->type == TEMPLATE_INT || v->type == TEMPLATE_FLOAT;
}

double value_as_double(const struct template_value *v) {
    switch (v->type) {
    case TEMPLATE_BOOL:
        return v->u.b ? 1.0 : 0.0;
    case TEMPLATE_INT:
        return (double)v->u.i;
    case TEMPLATE_FLOAT:
        return v->u.f;
    default:
        return 0.0;
    }
}

static int64_t as_int(const struct template_value *v) {
    return v->type == TEMPLATE_BOOL ? (int64_t)v->u.b : v->u.i;
}

/* Compares two numbers exactly (an int64 is not always a double). */
static int number_cmp(const struct template_value *a, const struct template_value *b) {
    if (a->type != TEMPLATE_FLOAT && b->type != TEMPLATE_FLOAT) {
        int64_t x = as_int(a), y = as_int(b);
        return x < y ? -1 : x > y;
    }
    double x = value_as_double(a), y = value_as_double(b);
    return x < y ? -1 : x > y ? 1 : 0;
}

static bool equal_depth(const struct template_value *a, const struct template_value *b, int depth) {
    if (a == b) {
        return a->type != TEMPLATE_FLOAT || !isnan(a->u.f);
    }
    if (depth > MAX_WALK_DEPTH) {
        return false;
    }
    if (value_is_number(a) && value_is_number(b)) {
        if (a->type == TEMPLATE_FLOAT && b->type == TEMPLATE_FLOAT) {
            return a->u.f == b->u.f;
        }
        if ((a->type == TEMPLATE_FLOAT && isnan(a->u.f)) ||
            (b->type == TEMPLATE_FLOAT && isnan(b->u.f))) {
            return false;
        }
        return number_cmp(a, b) == 0;
    }
    if (a->type != b->type) {
        return false;
    }
    switch (a->type) {
    case TEMPLATE_UNDEFINED:
    case TEMPLATE_NONE:
        return true;
    case TEMPLATE_STRING:
        return a->u.str.len == b->u.str.len && memcmp(a->u.str.s, b->u.str.s, a->u.str.len) == 0;
    case TEMPLATE_LIST:
        if (a->u.list.is_tuple != b->u.list.is_tuple || a->u.list.n != b->u.list.n) {
            return false;
        }
        for (size_t i = 0; i < a->u.list.n; i++) {
            if (!equal_depth(a->u.list.items[i], b->u.list.items[i], depth + 1)) {
                return false;
            }
        }
        return true;
    case TEMPLATE_DICT:
        if (a->u.dict.n != b->u.dict.n) {
            return false;
        }
        for (size_t i = 0; i < a->u.dict.n; i++) {
            struct dict_entry *e = value_dict_find(b, a->u.dict.entries[i].key);
            if (e == NULL || !equal_depth(a->u.dict.entries[i].value, e->value, depth + 1)) {
                return false;
            }
        }
        return true;
    default:
        return false; /* other kinds compare by identity */
    }
}

bool value_equal(const struct template_value *a, const struct template_value *b) {
    return equal_depth(a, b, 0);
}

static int compare_depth(const struct template_value *a, const struct template_value *b, bool *err,
                         int depth) {
    if (depth > MAX_WALK_DEPTH) {
        *err = true;
        return 0;
    }
    if (value_is_number(a) && value_is_number(b)) {
        return number_cmp(a, b);
    }
    if (a->type == TEMPLATE_STRING && b->type == TEMPLATE_STRING) {
        /* UTF-8 byte order is code point order. */
        size_t n = a->u.str.len < b->u.str.len ? a->u.str.len : b->u.str.len;
        int c = n > 0 ? memcmp(a->u.str.s, b->u.str.s, n) : 0;
        if (c != 0) {
            return c < 0 ? -1 : 1;
        }
        return a->u.str.len < b->u.str.len ? -1 : a->u.str.len > b->u.str.len;
    }
    if (a->type == TEMPLATE_LIST && b->type == TEMPLATE_LIST &&
        a->u.list.is_tuple == b->u.list.is_tuple) {
        size_t n = a->u.list.n < b->u.list.n ? a->u.list.n : b->u.list.n;
        for (size_t i = 0; i < n; i++) {
            if (equal_depth(a->u.list.items[i], b->u.list.items[i], depth + 1)) {
                continue;
            }
            return compare_depth(a->u.list.items[i], b->u.list.items[i], err, depth + 1);
        }
        return a->u.list.n < b->u.list.n ? -1 : a->u.list.n > b->u.list.n;
    }
    *err = true;
    return 0;
}

int value_compare(const struct template_value *a, const struct template_value *b, bool *err) {
    return compare_depth(a, b, err, 0);
}

const char *value_type_name(const struct template_value *v) {
    switch (v->type) {
    case TEMPLATE_UNDEFINED:
        return "Undefined";
    case TEMPLATE_NONE:
        return "NoneType";
    case TEMPLATE_BOOL:
        return "bool";
    case TEMPLATE_INT:
        return "int";
    case TEMPLATE_FLOAT:
        return "float";
    case TEMPLATE_STRING:
        return "str";
    case TEMPLATE_LIST:
        return v->u.list.is_tuple ? "tuple" : "list";
    case TEMPLATE_DICT:
        return "dict";
    default:
        switch (v->u.other.kind) {
        case OTHER_NAMESPACE:
            return "Namespace";
        case OTHER_MACRO:
            return "Macro";
        case OTHER_LOOP:
            return "LoopContext";
        case OTHER_CYCLER:
            return "Cycler";
        case OTHER_JOINER:
            return "Joiner";
        default:
            return "builtin_function_or_method";
        }
    }
}

/* ---- buffers ---- */

void buf_init(struct buf *b, size_t max) {
    memset(b, 0, sizeof(*b));
    b->max = max;
}

void buf_free(struct buf *b) {
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

bool buf_ok(const struct buf *b) {
    return !b->over && !b->nomem;
}

void buf_add(struct buf *b, const char *s, size_t n) {
    if (b->over || b->nomem) {
        return;
    }
    if (n > b->max || b->len > b->max - n) {
        b->over = true;
        return;
    }
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->len + n + 1) {
            cap *= 2;
        }
        char *p = realloc(b->p, cap);
        if (p == NULL) {
            b->nomem = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    if (n > 0) {
        memcpy(b->p + b->len, s, n);
    }
    b->len += n;
    b->p[b->len] = '\0';
}

void buf_addc(struct buf *b, char c) {
    buf_add(b, &c, 1);
}

void buf_adds(struct buf *b, const char *s) {
    buf_add(b, s, strlen(s));
}

void buf_addf(struct buf *b, const char *fmt, ...) {
    char tmp[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n > 0) {
        buf_add(b, tmp, (size_t)n < sizeof(tmp) ? (size_t)n : sizeof(tmp) - 1);
    }
}

void buf_add_cp(struct buf *b, uint32_t cp) {
    char u[4];
    size_t n;
    if (cp < 0x80) {
        u[0] = (char)cp;
        n = 1;
    } else if (cp < 0x800) {
        u[0] = (char)(0xc0 | (cp >> 6));
        u[1] = (char)(0x80 | (cp & 0x3f));
        n = 2;
    } else if (cp < 0x10000) {
        u[0] = (char)(0xe0 | (cp >> 12));
        u[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        u[2] = (char)(0x80 | (cp & 0x3f));
        n = 3;
    } else {
        u[0] = (char)(0xf0 | (cp >> 18));
        u[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
        u[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
        u[3] = (char)(0x80 | (cp & 0x3f));
        n = 4;
    }
    buf_add(b, u, n);
}

char *buf_take(struct buf *b, size_t *len) {
    if (b->p == NULL) {
        b->p = malloc(1);
        if (b->p == NULL) {
            return NULL;
        }
        b->p[0] = '\0';
    }
    char *p = b->p;
    if (len != NULL) {
        *len = b->len;
    }
    b->p = NULL;
    b->len = b->cap = 0;
    return p;
}

/* ---- UTF-8 and Python's character classes ---- */

uint32_t utf8_next(const char *s, size_t len, size_t *i) {
    const unsigned char *u = (const unsigned char *)s;
    size_t k = *i;
    unsigned c = u[k];
    if (c < 0x80) {
        *i = k + 1;
        return c;
    }
    size_t n = c >= 0xf0 && c <= 0xf4  ? 4
               : c >= 0xe0 && c < 0xf0 ? 3
               : c >= 0xc2 && c < 0xe0 ? 2
                                       : 0;
    if (n == 0 || k + n > len) {
        *i = k + 1;
        return 0xfffd;
    }
    uint32_t cp = c & (n == 2 ? 0x1f : n == 3 ? 0x0f : 0x07);
    for (size_t j = 1; j < n; j++) {
        if ((u[k + j] & 0xc0) != 0x80) {
            *i = k + 1;
            return 0xfffd;
        }
        cp = (cp << 6) | (u[k + j] & 0x3f);
    }
    if ((n == 3 && (cp < 0x800 || (cp >= 0xd800 && cp < 0xe000))) ||
        (n == 4 && (cp < 0x10000 || cp > 0x10ffff))) {
        *i = k + 1;
        return 0xfffd;
    }
    *i = k + n;
    return cp;
}

size_t utf8_count(const char *s, size_t len) {
    size_t n = 0;
    for (size_t i = 0; i < len;) {
        if ((unsigned char)s[i] < 0x80) {
            i++;
        } else {
            utf8_next(s, len, &i);
        }
        n++;
    }
    return n;
}

bool utf8_valid(const char *s, size_t len) {
    for (size_t i = 0; i < len;) {
        size_t k = i;
        uint32_t cp = utf8_next(s, len, &i);
        if (cp == 0xfffd && !(i - k == 3 && (unsigned char)s[k] == 0xef)) {
            return false;
        }
    }
    return true;
}

/* Python's str.isspace() set (Unicode White_Space plus the ASCII separators 0x1c-0x1f); not
 * U+200B or U+FEFF. */
bool py_isspace(uint32_t cp) {
    if (cp < 0x80) {
        return (cp >= 0x09 && cp <= 0x0d) || (cp >= 0x1c && cp <= 0x20);
    }
    return cp == 0x85 || cp == 0xa0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200a) ||
           cp == 0x2028 || cp == 0x2029 || cp == 0x202f || cp == 0x205f || cp == 0x3000;
}

/* ---- Python's repr(float) ---- */

void py_float_repr(double f, char *out, size_t size) {
    if (isnan(f)) {
        snprintf(out, size, "nan");
        return;
    }
    if (isinf(f)) {
        snprintf(out, size, f < 0 ? "-inf" : "inf");
        return;
    }
    if (f == 0.0) {
        snprintf(out, size, signbit(f) ? "-0.0" : "0.0");
        return;
    }
    /* The shortest %e that reads back as f: Python's repr uses the same shortest digits. */
    char tmp[48];
    for (int prec = 0; prec <= 17; prec++) {
        snprintf(tmp, sizeof(tmp), "%.*e", prec, f);
        if (strtod(tmp, NULL) == f) {
            break;
        }
    }
    const char *p = tmp;
    bool neg = *p == '-';
    if (neg) {
        p++;
    }
    char digits[32];
    size_t nd = 0;
    for (; *p != 'e' && *p != '\0'; p++) {
        if (*p >= '0' && *p <= '9' && nd < sizeof(digits) - 1) {
            digits[nd++] = *p;
        }
    }
    int exp = *p == 'e' ? atoi(p + 1) : 0;
    while (nd > 1 && digits[nd - 1] == '0') {
        nd--;
    }
    digits[nd] = '\0';
    struct buf b;
    buf_init(&b, 64);
    if (neg) {
        buf_addc(&b, '-');
    }
    if (exp < -4 || exp >= 16) {
        buf_addc(&b, digits[0]);
        if (nd > 1) {
            buf_addc(&b, '.');
            buf_add(&b, digits + 1, nd - 1);
        }
        buf_addf(&b, "e%c%02d", exp < 0 ? '-' : '+', exp < 0 ? -exp : exp);
    } else if (exp >= 0) {
        size_t int_digits = (size_t)exp + 1;
        if (nd <= int_digits) {
            buf_add(&b, digits, nd);
            for (size_t i = nd; i < int_digits; i++) {
                buf_addc(&b, '0');
            }
            buf_adds(&b, ".0");
        } else {
            buf_add(&b, digits, int_digits);
            buf_addc(&b, '.');
            buf_add(&b, digits + int_digits, nd - int_digits);
        }
    } else {
        buf_adds(&b, "0.");
        for (int i = 0; i < -exp - 1; i++) {
            buf_addc(&b, '0');
        }
        buf_add(&b, digits, nd);
    }
    snprintf(out, size, "%s", b.p != NULL ? b.p : "0.0");
    buf_free(&b);
}

/* ---- str() and repr() ---- */

/* Python's str.isprintable() for one code point. */
static bool py_isprintable(uint32_t cp) {
    if (cp < 0x80) {
        return cp >= 0x20 && cp < 0x7f;
    }
    if (cp == 0xfffd) {
        return true;
    }
    switch (utf8proc_category((utf8proc_int32_t)cp)) {
    case UTF8PROC_CATEGORY_CN:
    case UTF8PROC_CATEGORY_CC:
    case UTF8PROC_CATEGORY_CF:
    case UTF8PROC_CATEGORY_CS:
    case UTF8PROC_CATEGORY_CO:
    case UTF8PROC_CATEGORY_ZL:
    case UTF8PROC_CATEGORY_ZP:
    case UTF8PROC_CATEGORY_ZS:
        return false;
    default:
        return true;
    }
}

static void repr_string(struct buf *b, const char *s, size_t len) {
    bool has_single = memchr(s, '\'', len) != NULL;
    bool has_double = memchr(s, '"', len) != NULL;
    char quote = has_single && !has_double ? '"' : '\'';
    buf_addc(b, quote);
    for (size_t i = 0; i < len;) {
        uint32_t cp = utf8_next(s, len, &i);
        if (cp == (uint32_t)quote || cp == '\\') {
            buf_addc(b, '\\');
            buf_addc(b, (char)cp);
        } else if (cp == '\n') {
            buf_adds(b, "\\n");
        } else if (cp == '\r') {
            buf_adds(b, "\\r");
        } else if (cp == '\t') {
            buf_adds(b, "\\t");
        } else if (py_isprintable(cp)) {
            buf_add_cp(b, cp);
        } else if (cp < 0x100) {
            buf_addf(b, "\\x%02x", cp);
        } else if (cp < 0x10000) {
            buf_addf(b, "\\u%04x", cp);
        } else {
            buf_addf(b, "\\U%08x", cp);
        }
    }
    buf_addc(b, quote);
}

static void repr_depth(struct buf *b, const struct template_value *v, int depth);

static void str_depth(struct buf *b, const struct template_value *v, int depth) {
    char tmp[40];
    switch (v->type) {
    case TEMPLATE_UNDEFINED:
        break;
    case TEMPLATE_NONE:
        buf_adds(b, "None");
        break;
    case TEMPLATE_BOOL:
        buf_adds(b, v->u.b ? "True" : "False");
        break;
    case TEMPLATE_INT:
        buf_addf(b, "%lld", (long long)v->u.i);
        break;
    case TEMPLATE_FLOAT:
        py_float_repr(v->u.f, tmp, sizeof(tmp));
        buf_adds(b, tmp);
        break;
    case TEMPLATE_STRING:
        buf_add(b, v->u.str.s, v->u.str.len);
        break;
    default:
        repr_depth(b, v, depth);
        break;
    }
}

static void repr_depth(struct buf *b, const struct template_value *v, int depth) {
    if (depth > MAX_WALK_DEPTH) {
        buf_adds(b, "...");
        return;
    }
    switch (v->type) {
    case TEMPLATE_UNDEFINED:
        buf_adds(b, "Undefined");
        break;
    case TEMPLATE_STRING:
        repr_string(b, v->u.str.s, v->u.str.len);
        break;
    case TEMPLATE_LIST:
        buf_addc(b, v->u.list.is_tuple ? '(' : '[');
        for (size_t i = 0; i < v->u.list.n && buf_ok(b); i++) {
            if (i > 0) {
                buf_adds(b, ", ");
            }
            repr_depth(b, v->u.list.items[i], depth + 1);
        }
        if (v->u.list.is_tuple && v->u.list.n == 1) {
            buf_addc(b, ',');
        }
        buf_addc(b, v->u.list.is_tuple ? ')' : ']');
        break;
    case TEMPLATE_DICT:
        buf_addc(b, '{');
        for (size_t i = 0; i < v->u.dict.n && buf_ok(b); i++) {
            if (i > 0) {
                buf_adds(b, ", ");
            }
            repr_depth(b, v->u.dict.entries[i].key, depth + 1);
            buf_adds(b, ": ");
            repr_depth(b, v->u.dict.entries[i].value, depth + 1);
        }
        buf_addc(b, '}');
        break;
    case TEMPLATE_OTHER:
        switch (v->u.other.kind) {
        case OTHER_NAMESPACE:
            buf_adds(b, "<Namespace ");
            repr_depth(b, v->u.other.self, depth + 1);
            buf_addc(b, '>');
            break;
        case OTHER_MACRO:
            buf_adds(b, "<Macro>");
            break;
        case OTHER_LOOP:
            buf_adds(b, "<LoopContext>");
            break;
        default:
            buf_adds(b, "<built-in function>");
            break;
        }
        break;
    default:
        str_depth(b, v, depth);
        break;
    }
}

void value_str(struct buf *b, const struct template_value *v) {
    str_depth(b, v, 0);
}

void value_repr(struct buf *b, const struct template_value *v) {
    repr_depth(b, v, 0);
}

/* ---- json.dumps ---- */

static void json_string(struct buf *b, const char *s, size_t len, bool ensure_ascii) {
    buf_addc(b, '"');
    size_t run = 0; /* start of bytes copied as they are */
    for (size_t i = 0; i < len;) {
        unsigned char c = (unsigned char)s[i];
        const char *esc = NULL;
        char tmp[16];
        size_t k = i;
        if (c == '"') {
            esc = "\\\"";
        } else if (c == '\\') {
            esc = "\\\\";
        } else if (c == '\n') {
            esc = "\\n";
        } else if (c == '\r') {
            esc = "\\r";
        } else if (c == '\t') {
            esc = "\\t";
        } else if (c == '\b') {
            esc = "\\b";
        } else if (c == '\f') {
            esc = "\\f";
        } else if (c < 0x20) {
            snprintf(tmp, sizeof(tmp), "\\u%04x", c);
            esc = tmp;
        } else if (c == 0x7f && ensure_ascii) {
            esc = "\\u007f";
        } else if (c >= 0x80 && ensure_ascii) {
            uint32_t cp = utf8_next(s, len, &k);
            if (cp >= 0x10000) {
                cp -= 0x10000;
                snprintf(tmp, sizeof(tmp), "\\u%04x\\u%04x", 0xd800 + (cp >> 10),
                         0xdc00 + (cp & 0x3ff));
            } else {
                snprintf(tmp, sizeof(tmp), "\\u%04x", cp);
            }
            buf_add(b, s + run, i - run);
            buf_adds(b, tmp);
            i = k;
            run = i;
            continue;
        }
        if (esc != NULL) {
            buf_add(b, s + run, i - run);
            buf_adds(b, esc);
            run = i + 1;
        }
        i++;
    }
    buf_add(b, s + run, len - run);
    buf_addc(b, '"');
}

static void json_newline(struct buf *b, const struct json_opts *o, int level) {
    buf_addc(b, '\n');
    for (int i = 0; i < level && buf_ok(b); i++) {
        buf_add(b, o->indent, o->indent_len);
    }
}

static int json_key(struct buf *b, const struct template_value *k, const struct json_opts *o,
                    char *err, size_t err_size) {
    char tmp[40];
    switch (k->type) {
    case TEMPLATE_STRING:
        json_string(b, k->u.str.s, k->u.str.len, o->ensure_ascii);
        return 0;
    case TEMPLATE_INT:
        snprintf(tmp, sizeof(tmp), "%lld", (long long)k->u.i);
        break;
    case TEMPLATE_FLOAT:
        if (isnan(k->u.f)) {
            snprintf(tmp, sizeof(tmp), "NaN");
        } else if (isinf(k->u.f)) {
            snprintf(tmp, sizeof(tmp), k->u.f < 0 ? "-Infinity" : "Infinity");
        } else {
            py_float_repr(k->u.f, tmp, sizeof(tmp));
        }
        break;
    case TEMPLATE_BOOL:
        snprintf(tmp, sizeof(tmp), k->u.b ? "true" : "false");
        break;
    case TEMPLATE_NONE:
        snprintf(tmp, sizeof(tmp), "null");
        break;
    default:
        snprintf(err, err_size, "keys must be str, int, float, bool or None, not %s",
                 value_type_name(k));
        return -1;
    }
    json_string(b, tmp, strlen(tmp), false);
    return 0;
}

static int cmp_entry_keys(const void *x, const void *y) {
    const struct dict_entry *a = *(const struct dict_entry *const *)x;
    const struct dict_entry *b = *(const struct dict_entry *const *)y;
    bool err = false;
    int c = value_compare(a->key, b->key, &err);
    return c != 0 ? c : (a < b ? -1 : a > b); /* stable: position breaks ties */
}

static int json_value(struct buf *b, const struct template_value *v, const struct json_opts *o,
                      int level, char *err, size_t err_size) {
    char tmp[40];
    if (level > MAX_WALK_DEPTH) {
        snprintf(err, err_size, "maximum recursion depth exceeded in tojson");
        return -1;
    }
    if (!buf_ok(b)) {
        return 0;
    }
    const char *item_sep = o->item_sep != NULL ? o->item_sep : o->has_indent ? "," : ", ";
    size_t item_sep_len = o->item_sep != NULL ? o->item_sep_len : strlen(item_sep);
    const char *key_sep = o->key_sep != NULL ? o->key_sep : ": ";
    size_t key_sep_len = o->key_sep != NULL ? o->key_sep_len : 2;
    switch (v->type) {
    case TEMPLATE_NONE:
        buf_adds(b, "null");
        return 0;
    case TEMPLATE_BOOL:
        buf_adds(b, v->u.b ? "true" : "false");
        return 0;
    case TEMPLATE_INT:
        buf_addf(b, "%lld", (long long)v->u.i);
        return 0;
    case TEMPLATE_FLOAT:
        if (isnan(v->u.f)) {
            buf_adds(b, "NaN");
        } else if (isinf(v->u.f)) {
            buf_adds(b, v->u.f < 0 ? "-Infinity" : "Infinity");
        } else {
            py_float_repr(v->u.f, tmp, sizeof(tmp));
            buf_adds(b, tmp);
        }
        return 0;
    case TEMPLATE_STRING:
        json_string(b, v->u.str.s, v->u.str.len, o->ensure_ascii);
        return 0;
    case TEMPLATE_LIST:
        if (v->u.list.n == 0) {
            buf_adds(b, "[]");
            return 0;
        }
        buf_addc(b, '[');
        for (size_t i = 0; i < v->u.list.n; i++) {
            if (i > 0) {
                buf_add(b, item_sep, item_sep_len);
            }
            if (o->has_indent) {
                json_newline(b, o, level + 1);
            }
            if (json_value(b, v->u.list.items[i], o, level + 1, err, err_size) != 0) {
                return -1;
            }
        }
        if (o->has_indent) {
            json_newline(b, o, level);
        }
        buf_addc(b, ']');
        return 0;
    case TEMPLATE_DICT: {
        if (v->u.dict.n == 0) {
            buf_adds(b, "{}");
            return 0;
        }
        const struct dict_entry **order = malloc(v->u.dict.n * sizeof(*order));
        if (order == NULL) {
            b->nomem = true;
            return 0;
        }
        for (size_t i = 0; i < v->u.dict.n; i++) {
            order[i] = &v->u.dict.entries[i];
        }
        if (o->sort_keys) {
            for (size_t i = 1; i < v->u.dict.n; i++) {
                bool cerr = false;
                value_compare(order[0]->key, order[i]->key, &cerr);
                if (cerr) {
                    snprintf(err, err_size,
                             "'<' not supported between instances of '%s' and "
                             "'%s'",
                             value_type_name(order[i]->key), value_type_name(order[0]->key));
                    free(order);
                    return -1;
                }
            }
            qsort(order, v->u.dict.n, sizeof(*order), cmp_entry_keys);
        }
        buf_addc(b, '{');
        int rc = 0;
        for (size_t i = 0; i < v->u.dict.n && rc == 0; i++) {
            if (i > 0) {
                buf_add(b, item_sep, item_sep_len);
            }
            if (o->has_indent) {
                json_newline(b, o, level + 1);
            }
            rc = json_key(b, order[i]->key, o, err, err_size);
            if (rc == 0) {
                buf_add(b, key_sep, key_sep_len);
                rc = json_value(b, order[i]->value, o, level + 1, err, err_size);
            }
        }
        free(order);
        if (rc != 0) {
            return -1;
        }
        if (o->has_indent) {
            json_newline(b, o, level);
        }
        buf_addc(b, '}');
        return 0;
    }
    default:
        snprintf(err, err_size, "Object of type %s is not JSON serializable", value_type_name(v));
        return -1;
    }
}

int value_tojson(struct buf *b, const struct template_value *v, const struct json_opts *o,
                 char *err, size_t err_size) {
    return json_value(b, v, o, 0, err, err_size);
}

/* ---- JSON parser ---- */

struct json_parser {
    const char *s;
    size_t len, pos;
    char *err;
    size_t err_size;
    bool failed;
};

static struct template_value *json_fail(struct json_parser *p, const char *what) {
    if (!p->failed) {
        snprintf(p->err, p->err_size, "JSON: %s at byte %zu", what, p->pos);
        p->failed = true;
    }
    return NULL;
}

static void json_ws(struct json_parser *p) {
    while (p->pos < p->len && (p->s[p->pos] == ' ' || p->s[p->pos] == '\t' ||
                               p->s[p->pos] == '\n' || p->s[p->pos] == '\r')) {
        p->pos++;
    }
}

static int json_hex4(struct json_parser *p, uint32_t *out) {
    if (p->len - p->pos < 4) {
        return -1;
    }
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p->s[p->pos + (size_t)i];
        v <<= 4;
        if (c >= '0' && c <= '9') {
            v |= (uint32_t)(c - '0');
        } else if (c >= 'a' && c <= 'f') {
            v |= (uint32_t)(c - 'a' + 10);
        } else if (c >= 'A' && c <= 'F') {
            v |= (uint32_t)(c - 'A' + 10);
        } else {
            return -1;
        }
    }
    p->pos += 4;
    *out = v;
    return 0;
}

static struct template_value *json_parse_string(struct json_parser *p) {
    struct buf b;
    buf_init(&b, SIZE_MAX / 2);
    p->pos++; /* the opening quote */
    while (true) {
        if (p->pos >= p->len) {
            buf_free(&b);
            return json_fail(p, "unterminated string");
        }
        unsigned char c = (unsigned char)p->s[p->pos];
        if (c == '"') {
            p->pos++;
            break;
        }
        if (c < 0x20) {
            buf_free(&b);
            return json_fail(p, "control character in string");
        }
        if (c == '\\') {
            p->pos++;
            if (p->pos >= p->len) {
                buf_free(&b);
                return json_fail(p, "unterminated string");
            }
            char e = p->s[p->pos++];
            uint32_t cp;
            switch (e) {
            case '"':
            case '\\':
            case '/':
                buf_addc(&b, e);
                break;
            case 'b':
                buf_addc(&b, '\b');
                break;
            case 'f':
                buf_addc(&b, '\f');
                break;
            case 'n':
                buf_addc(&b, '\n');
                break;
            case 'r':
                buf_addc(&b, '\r');
                break;
            case 't':
                buf_addc(&b, '\t');
                break;
            case 'u':
                if (json_hex4(p, &cp) != 0) {
                    buf_free(&b);
                    return json_fail(p, "bad \\u escape");
                }
                if (cp >= 0xd800 && cp < 0xdc00 && p->len - p->pos >= 6 && p->s[p->pos] == '\\' &&
                    p->s[p->pos + 1] == 'u') {
                    size_t save = p->pos;
                    uint32_t lo;
                    p->pos += 2;
                    if (json_hex4(p, &lo) == 0 && lo >= 0xdc00 && lo < 0xe000) {
                        cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                    } else {
                        p->pos = save;
                    }
                }
                if (cp >= 0xd800 && cp < 0xe000) {
                    cp = 0xfffd; /* a lone surrogate has no UTF-8 form */
                }
                buf_add_cp(&b, cp);
                break;
            default:
                buf_free(&b);
                return json_fail(p, "bad escape");
            }
            continue;
        }
        size_t start = p->pos;
        if (c < 0x80) {
            p->pos++;
        } else {
            uint32_t cp = utf8_next(p->s, p->len, &p->pos);
            if (cp == 0xfffd && !(p->pos - start == 3 && c == 0xef)) {
                buf_free(&b);
                p->pos = start;
                return json_fail(p, "invalid UTF-8");
            }
        }
        buf_add(&b, p->s + start, p->pos - start);
    }
    if (!buf_ok(&b)) {
        buf_free(&b);
        return json_fail(p, "out of memory");
    }
    size_t n;
    char *s = buf_take(&b, &n);
    if (s == NULL) {
        return json_fail(p, "out of memory");
    }
    struct template_value *v = value_string_take(s, n);
    return v != NULL ? v : json_fail(p, "out of memory");
}

static struct template_value *json_parse_number(struct json_parser *p) {
    size_t start = p->pos;
    bool is_float = false;
    if (p->pos < p->len && p->s[p->pos] == '-') {
        p->pos++;
    }
    if (p->pos >= p->len || !(p->s[p->pos] >= '0' && p->s[p->pos] <= '9')) {
        return json_fail(p, "bad number");
    }
    if (p->s[p->pos] == '0') {
        p->pos++;
    } else {
        while (p->pos < p->len && p->s[p->pos] >= '0' && p->s[p->pos] <= '9') {
            p->pos++;
        }
    }
    if (p->pos < p->len && p->s[p->pos] == '.') {
        is_float = true;
        p->pos++;
        if (p->pos >= p->len || !(p->s[p->pos] >= '0' && p->s[p->pos] <= '9')) {
            return json_fail(p, "bad number");
        }
        while (p->pos < p->len && p->s[p->pos] >= '0' && p->s[p->pos] <= '9') {
            p->pos++;
        }
    }
    if (p->pos < p->len && (p->s[p->pos] == 'e' || p->s[p->pos] == 'E')) {
        is_float = true;
        p->pos++;
        if (p->pos < p->len && (p->s[p->pos] == '+' || p->s[p->pos] == '-')) {
            p->pos++;
        }
        if (p->pos >= p->len || !(p->s[p->pos] >= '0' && p->s[p->pos] <= '9')) {
            return json_fail(p, "bad number");
        }
        while (p->pos < p->len && p->s[p->pos] >= '0' && p->s[p->pos] <= '9') {
            p->pos++;
        }
    }
    size_t n = p->pos - start;
    char *tmp = malloc(n + 1);
    if (tmp == NULL) {
        return json_fail(p, "out of memory");
    }
    memcpy(tmp, p->s + start, n);
    tmp[n] = '\0';
    struct template_value *v = NULL;
    if (!is_float) {
        /* Fits int64? strtoll saturates; compare digits to be exact. */
        char *end;
        long long i = strtoll(tmp, &end, 10);
        if (!((i == LLONG_MAX || i == LLONG_MIN) &&
              strcmp(tmp, i == LLONG_MAX ? "9223372036854775807" : "-9223372036854775808") != 0)) {
            v = template_value_int((int64_t)i);
            free(tmp);
            return v != NULL ? v : json_fail(p, "out of memory");
        }
    }
    v = value_float(strtod(tmp, NULL));
    free(tmp);
    return v != NULL ? v : json_fail(p, "out of memory");
}

static struct template_value *json_parse_value(struct json_parser *p, int depth);

static struct template_value *json_parse_container(struct json_parser *p, int depth) {
    bool is_object = p->s[p->pos] == '{';
    char close = is_object ? '}' : ']';
    struct template_value *c = is_object ? template_value_dict() : template_value_list();
    if (c == NULL) {
        return json_fail(p, "out of memory");
    }
    p->pos++;
    json_ws(p);
    if (p->pos < p->len && p->s[p->pos] == close) {
        p->pos++;
        return c;
    }
    while (true) {
        json_ws(p);
        struct template_value *key = NULL;
        if (is_object) {
            if (p->pos >= p->len || p->s[p->pos] != '"') {
                template_value_unref(c);
                return json_fail(p, "expected a string key");
            }
            key = json_parse_string(p);
            if (key == NULL) {
                template_value_unref(c);
                return NULL;
            }
            json_ws(p);
            if (p->pos >= p->len || p->s[p->pos] != ':') {
                template_value_unref(key);
                template_value_unref(c);
                return json_fail(p, "expected ':'");
            }
            p->pos++;
        }
        struct template_value *v = json_parse_value(p, depth + 1);
        if (v == NULL) {
            template_value_unref(key);
            template_value_unref(c);
            return NULL;
        }
        int rc = is_object ? value_dict_put(c, key, v) : template_value_list_append(c, v);
        if (rc != 0) {
            template_value_unref(c);
            return json_fail(p, "out of memory");
        }
        json_ws(p);
        if (p->pos < p->len && p->s[p->pos] == ',') {
            p->pos++;
            continue;
        }
        if (p->pos < p->len && p->s[p->pos] == close) {
            p->pos++;
            return c;
        }
        template_value_unref(c);
        return json_fail(p, is_object ? "expected ',' or '}'" : "expected ',' or ']'");
    }
}

static bool json_word(struct json_parser *p, const char *w) {
    size_t n = strlen(w);
    if (p->len - p->pos >= n && memcmp(p->s + p->pos, w, n) == 0) {
        p->pos += n;
        return true;
    }
    return false;
}

static struct template_value *json_parse_value(struct json_parser *p, int depth) {
    json_ws(p);
    if (p->pos >= p->len) {
        return json_fail(p, "unexpected end");
    }
    char c = p->s[p->pos];
    if (c == '{' || c == '[') {
        if (depth >= 256) {
            return json_fail(p, "nesting deeper than 256");
        }
        return json_parse_container(p, depth);
    }
    if (c == '"') {
        return json_parse_string(p);
    }
    if (c == '-' || (c >= '0' && c <= '9')) {
        return json_parse_number(p);
    }
    if (json_word(p, "true")) {
        return &value_true_static;
    }
    if (json_word(p, "false")) {
        return &value_false_static;
    }
    if (json_word(p, "null")) {
        return &value_none_static;
    }
    return json_fail(p, "unexpected character");
}

struct template_value *template_value_from_json(const char *json, size_t len, char *err,
                                                size_t err_size) {
    char dummy[1];
    struct json_parser p = {.s = json != NULL ? json : "",
                            .len = json != NULL ? len : 0,
                            .err = err != NULL && err_size > 0 ? err : dummy,
                            .err_size = err != NULL && err_size > 0 ? err_size : sizeof(dummy)};
    struct template_value *v = json_parse_value(&p, 0);
    if (v == NULL) {
        return NULL;
    }
    json_ws(&p);
    if (p.pos != p.len) {
        template_value_unref(v);
        return json_fail(&p, "trailing characters");
    }
    return v;
}
