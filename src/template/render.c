/*
 * render.c: walks a compiled template's tree and writes its output, with jinja2's semantics:
 * scopes (a for body, a macro, a filter or with block each get a frame; `if` does not; a for
 * body's frame is reset every iteration), Python operators, jinja2's getattr/getitem of the
 * sandbox (attributes fall back to items and back; mutating methods are refused), Undefined
 * (prints as nothing, is false, iterates as empty, fails on any other use), loops, macros and
 * call blocks.
 *
 * A render owns every value it makes; nothing of the compiled template is written (constants
 * are immortal), so one template renders in many threads at once. Every statement and
 * expression evaluated counts one step; macro calls count depth; all text is built in buffers
 * bounded by max_output.
 *
 * Frames: a for loop reuses one frame for its iterations, a macro call frees its frame on
 * return, unless a macro or call block was defined in the frame (it is then "captured": the
 * macro value points at it) and lives until the end of the render. Namespaces and loop objects
 * are remembered so that their contents can be dropped at the end, which breaks any reference
 * cycle a template made through them (`{% set ns.self = ns %}`).
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "template_internal.h"

struct binding {
    const char *name; /* borrowed from the tree (or a literal) */
    size_t len;
    struct template_value *value; /* owned */
};

struct frame {
    struct frame *parent;
    struct frame *next_captured;
    struct binding *v;
    size_t n, cap;
    bool captured;
};

enum exec_status { EXEC_OK, EXEC_BREAK, EXEC_CONTINUE, EXEC_FAIL };

struct render {
    const struct template *t;
    const struct template_value *vars;
    uint64_t steps, max_steps;
    uint32_t depth, max_depth;   /* macro calls */
    uint32_t native, max_native; /* nested evaluations */
    size_t max_output;
    time_t now;
    uint32_t line;
    enum template_status status;
    char *err;
    size_t err_size;
    struct buf *out;
    struct frame *captured;         /* frames kept until the end */
    struct template_value **cyclic; /* namespaces and loops, cleared at the end */
    size_t n_cyclic, cap_cyclic;
    struct template_value *filter_input; /* the body's text inside {% filter %} */
};

static struct template_value builtin_values[] = {
    {.type = TEMPLATE_OTHER, .refs = VALUE_IMMORTAL, .u.other = {.kind = OTHER_BUILTIN, .id = 0}},
    {.type = TEMPLATE_OTHER, .refs = VALUE_IMMORTAL, .u.other = {.kind = OTHER_BUILTIN, .id = 1}},
    {.type = TEMPLATE_OTHER, .refs = VALUE_IMMORTAL, .u.other = {.kind = OTHER_BUILTIN, .id = 2}},
    {.type = TEMPLATE_OTHER, .refs = VALUE_IMMORTAL, .u.other = {.kind = OTHER_BUILTIN, .id = 3}},
    {.type = TEMPLATE_OTHER, .refs = VALUE_IMMORTAL, .u.other = {.kind = OTHER_BUILTIN, .id = 4}},
    {.type = TEMPLATE_OTHER, .refs = VALUE_IMMORTAL, .u.other = {.kind = OTHER_BUILTIN, .id = 5}},
    {.type = TEMPLATE_OTHER, .refs = VALUE_IMMORTAL, .u.other = {.kind = OTHER_BUILTIN, .id = 6}},
    {.type = TEMPLATE_OTHER, .refs = VALUE_IMMORTAL, .u.other = {.kind = OTHER_BUILTIN, .id = 7}},
};

/* ---- errors and limits ---- */

struct template_value *render_fail(struct render *r, const char *fmt, ...) {
    if (r->status != TEMPLATE_OK) {
        return NULL;
    }
    r->status = TEMPLATE_ERROR;
    int n = snprintf(r->err, r->err_size, "line %u: ", r->line);
    if (n >= 0 && (size_t)n < r->err_size) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(r->err + n, r->err_size - (size_t)n, fmt, ap);
        va_end(ap);
    }
    return NULL;
}

struct template_value *render_limit(struct render *r, const char *what) {
    if (r->status == TEMPLATE_OK) {
        r->status = TEMPLATE_LIMIT;
        snprintf(r->err, r->err_size, "line %u: template limit exceeded: %s", r->line, what);
    }
    return NULL;
}

struct template_value *render_nomem(struct render *r) {
    if (r->status == TEMPLATE_OK) {
        r->status = TEMPLATE_NOMEM;
        snprintf(r->err, r->err_size, "out of memory");
    }
    return NULL;
}

size_t render_max_output(const struct render *r) {
    return r->max_output;
}

bool render_failed(const struct render *r) {
    return r->status != TEMPLATE_OK;
}

time_t render_now(const struct render *r) {
    return r->now;
}

bool render_step(struct render *r) {
    if (++r->steps > r->max_steps) {
        render_limit(r, "max_steps");
        return false;
    }
    return r->status == TEMPLATE_OK;
}

bool render_add_steps(struct render *r, uint64_t n) {
    r->steps += n;
    if (r->steps > r->max_steps) {
        render_limit(r, "max_steps");
        return false;
    }
    return r->status == TEMPLATE_OK;
}

/* Reports a buffer's overflow or allocation failure; true when it is fine. */
static bool buf_check(struct render *r, const struct buf *b) {
    if (b->nomem) {
        render_nomem(r);
        return false;
    }
    if (b->over) {
        render_limit(r, "max_output");
        return false;
    }
    return true;
}

static bool remember_cyclic(struct render *r, struct template_value *v) {
    if (r->n_cyclic == r->cap_cyclic) {
        size_t cap = r->cap_cyclic ? r->cap_cyclic * 2 : 8;
        struct template_value **c = realloc(r->cyclic, cap * sizeof(*c));
        if (c == NULL) {
            render_nomem(r);
            return false;
        }
        r->cyclic = c;
        r->cap_cyclic = cap;
    }
    r->cyclic[r->n_cyclic++] = template_value_ref(v);
    return true;
}

/* ---- frames ---- */

static struct frame *frame_new(struct render *r, struct frame *parent) {
    struct frame *f = calloc(1, sizeof(*f));
    if (f == NULL) {
        render_nomem(r);
        return NULL;
    }
    f->parent = parent;
    return f;
}

static void frame_clear(struct frame *f) {
    for (size_t i = 0; i < f->n; i++) {
        template_value_unref(f->v[i].value);
    }
    f->n = 0;
}

/* Frees f unless captured (then it waits in r->captured for the end of the render). */
static void frame_release(struct render *r, struct frame *f) {
    if (f == NULL) {
        return;
    }
    if (f->captured) {
        f->next_captured = r->captured;
        r->captured = f;
        return;
    }
    frame_clear(f);
    free(f->v);
    free(f);
}

/* Binds name in f, taking over v. */
static bool frame_set(struct render *r, struct frame *f, const char *name, size_t len,
                      struct template_value *v) {
    if (v == NULL) {
        return false;
    }
    for (size_t i = 0; i < f->n; i++) {
        if (f->v[i].len == len && memcmp(f->v[i].name, name, len) == 0) {
            template_value_unref(f->v[i].value);
            f->v[i].value = v;
            return true;
        }
    }
    if (f->n == f->cap) {
        size_t cap = f->cap ? f->cap * 2 : 8;
        struct binding *b = realloc(f->v, cap * sizeof(*b));
        if (b == NULL) {
            template_value_unref(v);
            render_nomem(r);
            return false;
        }
        f->v = b;
        f->cap = cap;
    }
    f->v[f->n].name = name;
    f->v[f->n].len = len;
    f->v[f->n].value = v;
    f->n++;
    return true;
}

static struct template_value *lookup(struct render *r, struct frame *f, const char *name,
                                     size_t len) {
    for (; f != NULL; f = f->parent) {
        for (size_t i = 0; i < f->n; i++) {
            if (f->v[i].len == len && memcmp(f->v[i].name, name, len) == 0) {
                return template_value_ref(f->v[i].value);
            }
        }
    }
    struct dict_entry *e = value_dict_find_str(r->vars, name, len);
    if (e != NULL) {
        return template_value_ref(e->value);
    }
    int id = builtins_global_id(name);
    if (id >= 0 && (size_t)id < sizeof(builtin_values) / sizeof(builtin_values[0])) {
        return &builtin_values[id];
    }
    char hint[160];
    snprintf(hint, sizeof(hint), "'%.*s' is undefined", (int)(len < 100 ? len : 100), name);
    struct template_value *u = value_undefined(hint);
    return u != NULL ? u : render_nomem(r);
}

/* ---- helpers ---- */

static struct template_value *undefined_error(struct render *r, const struct template_value *u) {
    if (u->type == TEMPLATE_UNDEFINED && u->u.undef.hint != NULL) {
        return render_fail(r, "%s", u->u.undef.hint);
    }
    return render_fail(r, "undefined value");
}

static struct template_value *new_string(struct render *r, struct buf *b) {
    if (!buf_check(r, b) || !render_add_steps(r, b->len / 64)) {
        buf_free(b);
        return NULL;
    }
    size_t len;
    char *s = buf_take(b, &len);
    if (s == NULL) {
        return render_nomem(r);
    }
    struct template_value *v = value_string_take(s, len);
    return v != NULL ? v : render_nomem(r);
}

struct template_value *render_to_string(struct render *r, struct template_value *v) {
    if (v->type == TEMPLATE_STRING) {
        return template_value_ref(v);
    }
    struct buf b;
    buf_init(&b, r->max_output);
    value_str(&b, v);
    return new_string(r, &b);
}

static struct template_value *make_int(struct render *r, int64_t i) {
    struct template_value *v = template_value_int(i);
    return v != NULL ? v : render_nomem(r);
}

static struct template_value *make_float(struct render *r, double f) {
    struct template_value *v = value_float(f);
    return v != NULL ? v : render_nomem(r);
}

/* Appends v to list (taking it over); false after an error. */
static bool list_add(struct render *r, struct template_value *list, struct template_value *v) {
    if (v == NULL) {
        return false;
    }
    if (!render_step(r)) { /* bulk copies cost their items, so that loops over them stay bounded */
        template_value_unref(v);
        return false;
    }
    if ((list->u.list.n + 1) * sizeof(void *) > r->max_output) {
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

struct template_value *render_iterate(struct render *r, struct template_value *v) {
    /* copying costs a step per item, so that loops over big values stay bounded */
    size_t n = v->type == TEMPLATE_LIST     ? v->u.list.n
               : v->type == TEMPLATE_DICT   ? v->u.dict.n
               : v->type == TEMPLATE_STRING ? v->u.str.len
                                            : 0;
    if (!render_add_steps(r, n)) {
        return NULL;
    }
    struct template_value *list = template_value_list();
    if (list == NULL) {
        return render_nomem(r);
    }
    switch (v->type) {
    case TEMPLATE_UNDEFINED:
        return list;
    case TEMPLATE_LIST:
        for (size_t i = 0; i < v->u.list.n; i++) {
            if (!list_add(r, list, template_value_ref(v->u.list.items[i]))) {
                template_value_unref(list);
                return NULL;
            }
        }
        return list;
    case TEMPLATE_DICT:
        for (size_t i = 0; i < v->u.dict.n; i++) {
            if (!list_add(r, list, template_value_ref(v->u.dict.entries[i].key))) {
                template_value_unref(list);
                return NULL;
            }
        }
        return list;
    case TEMPLATE_STRING:
        for (size_t i = 0; i < v->u.str.len;) {
            size_t k = i;
            utf8_next(v->u.str.s, v->u.str.len, &k);
            struct template_value *c = template_value_string(v->u.str.s + i, k - i);
            if (c == NULL) {
                render_nomem(r);
            }
            if (!list_add(r, list, c)) {
                template_value_unref(list);
                return NULL;
            }
            i = k;
        }
        return list;
    default:
        template_value_unref(list);
        return render_fail(r, "'%s' object is not iterable", value_type_name(v));
    }
}

/* ---- attribute and item access ---- */

static struct template_value *missing(struct render *r, const struct template_value *obj,
                                      const char *name, size_t len) {
    char hint[200];
    snprintf(hint, sizeof(hint), "'%s object' has no attribute '%.*s'", value_type_name(obj),
             (int)(len < 100 ? len : 100), name);
    struct template_value *u = value_undefined(hint);
    return u != NULL ? u : render_nomem(r);
}

static struct template_value *method_value(struct render *r, struct template_value *obj, int id) {
    struct template_value *m = value_other(OTHER_METHOD);
    if (m == NULL) {
        return render_nomem(r);
    }
    m->u.other.id = id;
    m->u.other.self = template_value_ref(obj);
    return m;
}

/* An unsafe attribute: jinja2's sandbox gives an undefined that fails when used. */
static struct template_value *unsafe(struct render *r, const struct template_value *obj,
                                     const char *name, size_t len) {
    char hint[200];
    snprintf(hint, sizeof(hint), "access to attribute '%.*s' of '%s' object is unsafe.",
             (int)(len < 100 ? len : 100), name, value_type_name(obj));
    struct template_value *u = value_undefined(hint);
    return u != NULL ? u : render_nomem(r);
}

static struct template_value *loop_attr(struct render *r, struct template_value *loop,
                                        const char *name) {
    size_t index0 = loop->u.other.pos;
    struct template_value *items = loop->u.other.self;
    size_t length = items->u.list.n;
    if (strcmp(name, "index0") == 0) {
        return make_int(r, (int64_t)index0);
    }
    if (strcmp(name, "index") == 0) {
        return make_int(r, (int64_t)index0 + 1);
    }
    if (strcmp(name, "revindex") == 0) {
        return make_int(r, (int64_t)(length - index0));
    }
    if (strcmp(name, "revindex0") == 0) {
        return make_int(r, (int64_t)(length - index0) - 1);
    }
    if (strcmp(name, "first") == 0) {
        return value_bool_ref(index0 == 0);
    }
    if (strcmp(name, "last") == 0) {
        return value_bool_ref(index0 + 1 == length);
    }
    if (strcmp(name, "length") == 0) {
        return make_int(r, (int64_t)length);
    }
    if (strcmp(name, "depth") == 0) {
        return make_int(r, loop->u.other.id);
    }
    if (strcmp(name, "depth0") == 0) {
        return make_int(r, loop->u.other.id - 1);
    }
    if (strcmp(name, "previtem") == 0) {
        if (index0 == 0) {
            return value_undefined("there is no previous item");
        }
        return template_value_ref(items->u.list.items[index0 - 1]);
    }
    if (strcmp(name, "nextitem") == 0) {
        if (index0 + 1 >= length) {
            return value_undefined("there is no next item");
        }
        return template_value_ref(items->u.list.items[index0 + 1]);
    }
    return NULL;
}

struct template_value *render_getattr(struct render *r, struct template_value *obj,
                                      const char *name, size_t len) {
    if (obj->type == TEMPLATE_UNDEFINED) {
        return undefined_error(r, obj);
    }
    if (obj->type == TEMPLATE_OTHER) {
        if (obj->u.other.kind == OTHER_NAMESPACE) {
            struct dict_entry *e = value_dict_find_str(obj->u.other.self, name, len);
            return e != NULL ? template_value_ref(e->value) : missing(r, obj, name, len);
        }
        if (obj->u.other.kind == OTHER_LOOP && strlen(name) == len) {
            struct template_value *v = loop_attr(r, obj, name);
            if (v != NULL || render_failed(r)) {
                return v;
            }
        }
    }
    bool is_unsafe = false;
    int id = builtins_method_id(obj, name, len, &is_unsafe);
    if (id >= 0) {
        return is_unsafe ? unsafe(r, obj, name, len) : method_value(r, obj, id);
    }
    if (len > 0 && name[0] == '_') {
        return unsafe(r, obj, name, len);
    }
    if (obj->type == TEMPLATE_DICT) {
        struct dict_entry *e = value_dict_find_str(obj, name, len);
        if (e != NULL) {
            return template_value_ref(e->value);
        }
    }
    return missing(r, obj, name, len);
}

static bool as_index(const struct template_value *k, int64_t *out) {
    if (k->type == TEMPLATE_INT) {
        *out = k->u.i;
        return true;
    }
    if (k->type == TEMPLATE_BOOL) {
        *out = k->u.b;
        return true;
    }
    return false;
}

/* Byte offset of code point i of s (i <= count). */
static size_t cp_offset(const char *s, size_t len, size_t i) {
    size_t off = 0;
    while (i > 0 && off < len) {
        utf8_next(s, len, &off);
        i--;
    }
    return off;
}

struct template_value *render_getitem(struct render *r, struct template_value *obj,
                                      struct template_value *key) {
    if (obj->type == TEMPLATE_UNDEFINED) {
        return undefined_error(r, obj);
    }
    int64_t idx;
    if (obj->type == TEMPLATE_DICT) {
        if (key->type == TEMPLATE_LIST && !key->u.list.is_tuple) {
            return render_fail(r, "unhashable type: 'list'");
        }
        struct dict_entry *e = value_dict_find(obj, key);
        if (e != NULL) {
            return template_value_ref(e->value);
        }
    } else if (obj->type == TEMPLATE_LIST && as_index(key, &idx)) {
        int64_t n = (int64_t)obj->u.list.n;
        if (idx < 0) {
            idx += n;
        }
        if (idx >= 0 && idx < n) {
            return template_value_ref(obj->u.list.items[idx]);
        }
    } else if (obj->type == TEMPLATE_STRING && as_index(key, &idx)) {
        int64_t n = (int64_t)utf8_count(obj->u.str.s, obj->u.str.len);
        if (idx < 0) {
            idx += n;
        }
        if (idx >= 0 && idx < n) {
            size_t off = cp_offset(obj->u.str.s, obj->u.str.len, (size_t)idx);
            size_t end = off;
            utf8_next(obj->u.str.s, obj->u.str.len, &end);
            struct template_value *c = template_value_string(obj->u.str.s + off, end - off);
            return c != NULL ? c : render_nomem(r);
        }
    }
    if (key->type == TEMPLATE_STRING) {
        if (obj->type == TEMPLATE_DICT) {
            /* not a key: jinja2 tries the attribute (a method) */
            bool is_unsafe = false;
            int id = builtins_method_id(obj, key->u.str.s, key->u.str.len, &is_unsafe);
            if (id >= 0) {
                return is_unsafe ? unsafe(r, obj, key->u.str.s, key->u.str.len)
                                 : method_value(r, obj, id);
            }
            return missing(r, obj, key->u.str.s, key->u.str.len);
        }
        return render_getattr(r, obj, key->u.str.s, key->u.str.len);
    }
    struct template_value *u = value_undefined("no such item");
    return u != NULL ? u : render_nomem(r);
}

/* Python's slice.indices(). */
static bool slice_indices(struct render *r, struct template_value *const sv[3], int64_t len,
                          int64_t *start, int64_t *stop, int64_t *step) {
    int64_t v[3];
    bool given[3];
    for (int k = 0; k < 3; k++) {
        given[k] = sv[k] != NULL && sv[k]->type != TEMPLATE_NONE;
        if (given[k] && !as_index(sv[k], &v[k])) {
            render_fail(r, "slice indices must be integers or None");
            return false;
        }
    }
    *step = given[2] ? v[2] : 1;
    if (*step == 0) {
        render_fail(r, "slice step cannot be zero");
        return false;
    }
    if (*step == INT64_MIN) {
        *step = -INT64_MAX;
    }
    int64_t lower = *step < 0 ? -1 : 0, upper = *step < 0 ? len - 1 : len;
    for (int k = 0; k < 2; k++) {
        int64_t x;
        if (!given[k]) {
            x = (k == 0) == (*step > 0) ? lower : upper;
        } else {
            x = v[k];
            if (x < 0) {
                x = x < -len ? lower : x + len;
                if (x < lower) {
                    x = lower;
                }
            } else if (x > upper) {
                x = upper;
            }
        }
        if (k == 0) {
            *start = x;
        } else {
            *stop = x;
        }
    }
    return true;
}

static struct template_value *do_slice(struct render *r, struct template_value *obj,
                                       struct template_value *const sv[3]) {
    if (obj->type == TEMPLATE_UNDEFINED) {
        return undefined_error(r, obj);
    }
    int64_t start, stop, step;
    if (obj->type == TEMPLATE_LIST) {
        if (!slice_indices(r, sv, (int64_t)obj->u.list.n, &start, &stop, &step)) {
            return NULL;
        }
        struct template_value *out = obj->u.list.is_tuple ? value_tuple() : template_value_list();
        if (out == NULL) {
            return render_nomem(r);
        }
        for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
            if (!list_add(r, out, template_value_ref(obj->u.list.items[i]))) {
                template_value_unref(out);
                return NULL;
            }
            if ((step > 0 && i > INT64_MAX - step) || (step < 0 && i < INT64_MIN - step)) {
                break;
            }
        }
        return out;
    }
    if (obj->type == TEMPLATE_STRING) {
        const char *s = obj->u.str.s;
        size_t len = obj->u.str.len;
        size_t n = utf8_count(s, len);
        if (!slice_indices(r, sv, (int64_t)n, &start, &stop, &step)) {
            return NULL;
        }
        /* Byte offsets of every code point, then pick. */
        size_t *offs = malloc((n + 1) * sizeof(*offs));
        if (offs == NULL) {
            return render_nomem(r);
        }
        size_t k = 0;
        for (size_t i = 0; i < len;) {
            offs[k++] = i;
            utf8_next(s, len, &i);
        }
        offs[n] = len;
        struct buf b;
        buf_init(&b, r->max_output);
        for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
            buf_add(&b, s + offs[i], offs[i + 1] - offs[i]);
            if ((step > 0 && i > INT64_MAX - step) || (step < 0 && i < INT64_MIN - step)) {
                break;
            }
        }
        free(offs);
        return new_string(r, &b);
    }
    struct template_value *u = value_undefined("cannot slice this value");
    return u != NULL ? u : render_nomem(r);
}

/* ---- operators ---- */

static struct template_value *type_error(struct render *r, const char *op,
                                         const struct template_value *a,
                                         const struct template_value *b) {
    if (a->type == TEMPLATE_UNDEFINED) {
        return undefined_error(r, a);
    }
    if (b->type == TEMPLATE_UNDEFINED) {
        return undefined_error(r, b);
    }
    return render_fail(r, "unsupported operand type(s) for %s: '%s' and '%s'", op,
                       value_type_name(a), value_type_name(b));
}

static int64_t ival(const struct template_value *v) {
    return v->type == TEMPLATE_BOOL ? (int64_t)v->u.b : v->u.i;
}

static struct template_value *repeat(struct render *r, struct template_value *seq, int64_t n) {
    if (n < 0) {
        n = 0;
    }
    if (seq->type == TEMPLATE_STRING) {
        if (seq->u.str.len > 0 && (uint64_t)n > r->max_output / seq->u.str.len) {
            return render_limit(r, "max_output (string repetition)");
        }
        struct buf b;
        buf_init(&b, r->max_output);
        for (int64_t i = 0; i < n && seq->u.str.len > 0; i++) {
            buf_add(&b, seq->u.str.s, seq->u.str.len);
        }
        return new_string(r, &b);
    }
    if (seq->u.list.n > 0 && (uint64_t)n > r->max_output / sizeof(void *) / seq->u.list.n) {
        return render_limit(r, "max_output (list repetition)");
    }
    struct template_value *out = seq->u.list.is_tuple ? value_tuple() : template_value_list();
    if (out == NULL) {
        return render_nomem(r);
    }
    for (int64_t i = 0; i < n; i++) {
        for (size_t k = 0; k < seq->u.list.n; k++) {
            if (!list_add(r, out, template_value_ref(seq->u.list.items[k]))) {
                template_value_unref(out);
                return NULL;
            }
        }
    }
    return out;
}

static struct template_value *int_pow(struct render *r, int64_t base, int64_t exp) {
    int64_t result = 1;
    while (exp > 0) {
        if (exp & 1) {
            if (__builtin_mul_overflow(result, base, &result)) {
                return render_fail(r, "integer overflow");
            }
        }
        exp >>= 1;
        if (exp > 0 && __builtin_mul_overflow(base, base, &base)) {
            return render_fail(r, "integer overflow");
        }
    }
    return make_int(r, result);
}

/* str % args: the common printf conversions (%s %r %d %i %f %x %%). */
struct template_value *render_percent_format(struct render *r, struct template_value *fmt,
                                             struct template_value *args) {
    struct template_value *single[1] = {args};
    struct template_value *const *av = single;
    size_t n_args = 1, used = 0;
    bool is_mapping = args->type == TEMPLATE_DICT;
    if (args->type == TEMPLATE_LIST && args->u.list.is_tuple) {
        av = args->u.list.items;
        n_args = args->u.list.n;
    }
    struct buf b;
    buf_init(&b, r->max_output);
    const char *s = fmt->u.str.s;
    size_t len = fmt->u.str.len;
    for (size_t i = 0; i < len; i++) {
        if (s[i] != '%') {
            buf_addc(&b, s[i]);
            continue;
        }
        if (++i >= len) {
            buf_free(&b);
            return render_fail(r, "incomplete format");
        }
        struct template_value *arg = NULL;
        if (s[i] == '(' && is_mapping) {
            size_t close = i;
            while (close < len && s[close] != ')') {
                close++;
            }
            if (close >= len) {
                buf_free(&b);
                return render_fail(r, "incomplete format key");
            }
            struct dict_entry *e = value_dict_find_str(args, s + i + 1, close - i - 1);
            if (e == NULL) {
                buf_free(&b);
                return render_fail(r, "format key not found");
            }
            arg = e->value;
            i = close + 1;
        }
        char spec[32];
        size_t ns = 0;
        spec[ns++] = '%';
        while (i < len && strchr("-+ #0123456789.", s[i]) != NULL && ns < sizeof(spec) - 8) {
            spec[ns++] = s[i++];
        }
        if (i >= len) {
            buf_free(&b);
            return render_fail(r, "incomplete format");
        }
        char conv = s[i];
        if (conv == '%') {
            buf_addc(&b, '%');
            continue;
        }
        if (arg == NULL) {
            if (used >= n_args) {
                buf_free(&b);
                return render_fail(r, "not enough arguments for format string");
            }
            arg = av[used++];
        }
        spec[ns] = '\0';
        if (conv == 's' || conv == 'r') {
            struct buf tmp;
            buf_init(&tmp, r->max_output);
            if (conv == 's') {
                value_str(&tmp, arg);
            } else {
                value_repr(&tmp, arg);
            }
            if (!buf_check(r, &tmp)) {
                buf_free(&tmp);
                buf_free(&b);
                return NULL;
            }
            int width = ns > 1 ? atoi(spec + 1 + (spec[1] == '-')) : 0;
            size_t chars = utf8_count(tmp.p != NULL ? tmp.p : "", tmp.len);
            bool left = ns > 1 && spec[1] == '-';
            for (size_t k = chars; !left && width > 0 && k < (size_t)width; k++) {
                buf_addc(&b, ' ');
            }
            buf_add(&b, tmp.p != NULL ? tmp.p : "", tmp.len);
            for (size_t k = chars; left && width > 0 && k < (size_t)width; k++) {
                buf_addc(&b, ' ');
            }
            buf_free(&tmp);
        } else if (strchr("dixXoeEfFgG", conv) != NULL) {
            if (!value_is_number(arg)) {
                buf_free(&b);
                return render_fail(r, "%%%c format: a real number is required, not %s", conv,
                                   value_type_name(arg));
            }
            if (strchr("dixXo", conv) != NULL) {
                long long x = arg->type == TEMPLATE_FLOAT ? (long long)arg->u.f : ival(arg);
                spec[ns++] = 'l';
                spec[ns++] = 'l';
                spec[ns++] = conv == 'i' ? 'd' : conv;
                spec[ns] = '\0';
                buf_addf(&b, spec, x);
            } else {
                spec[ns++] = conv;
                spec[ns] = '\0';
                buf_addf(&b, spec, value_as_double(arg));
            }
        } else {
            buf_free(&b);
            return render_fail(r, "unsupported format character '%c'", conv);
        }
    }
    if (used < n_args && !is_mapping && args->type == TEMPLATE_LIST && args->u.list.is_tuple) {
        buf_free(&b);
        return render_fail(r, "not all arguments converted during string formatting");
    }
    return new_string(r, &b);
}

static struct template_value *binop(struct render *r, int op, struct template_value *a,
                                    struct template_value *b) {
    static const char *const names[] = {"+", "-", "*", "/", "//", "%", "**"};
    bool num = value_is_number(a) && value_is_number(b);
    bool ints = num && a->type != TEMPLATE_FLOAT && b->type != TEMPLATE_FLOAT;
    int64_t x = 0, y = 0, z;
    if (ints) {
        x = ival(a);
        y = ival(b);
    }
    switch (op) {
    case OP_ADD:
        if (ints) {
            if (__builtin_add_overflow(x, y, &z)) {
                return render_fail(r, "integer overflow");
            }
            return make_int(r, z);
        }
        if (num) {
            return make_float(r, value_as_double(a) + value_as_double(b));
        }
        if (a->type == TEMPLATE_STRING && b->type == TEMPLATE_STRING) {
            struct buf s;
            buf_init(&s, r->max_output);
            buf_add(&s, a->u.str.s, a->u.str.len);
            buf_add(&s, b->u.str.s, b->u.str.len);
            return new_string(r, &s);
        }
        if (a->type == TEMPLATE_LIST && b->type == TEMPLATE_LIST &&
            a->u.list.is_tuple == b->u.list.is_tuple) {
            struct template_value *out = a->u.list.is_tuple ? value_tuple() : template_value_list();
            if (out == NULL) {
                return render_nomem(r);
            }
            for (size_t i = 0; i < a->u.list.n + b->u.list.n; i++) {
                struct template_value *item =
                    i < a->u.list.n ? a->u.list.items[i] : b->u.list.items[i - a->u.list.n];
                if (!list_add(r, out, template_value_ref(item))) {
                    template_value_unref(out);
                    return NULL;
                }
            }
            return out;
        }
        if (a->type == TEMPLATE_STRING && b->type != TEMPLATE_UNDEFINED) {
            return render_fail(r, "can only concatenate str (not \"%s\") to str",
                               value_type_name(b));
        }
        return type_error(r, names[op], a, b);
    case OP_SUB:
        if (ints) {
            if (__builtin_sub_overflow(x, y, &z)) {
                return render_fail(r, "integer overflow");
            }
            return make_int(r, z);
        }
        if (num) {
            return make_float(r, value_as_double(a) - value_as_double(b));
        }
        return type_error(r, names[op], a, b);
    case OP_MUL:
        if (ints) {
            if (__builtin_mul_overflow(x, y, &z)) {
                return render_fail(r, "integer overflow");
            }
            return make_int(r, z);
        }
        if (num) {
            return make_float(r, value_as_double(a) * value_as_double(b));
        }
        if ((a->type == TEMPLATE_STRING || a->type == TEMPLATE_LIST) &&
            (b->type == TEMPLATE_INT || b->type == TEMPLATE_BOOL)) {
            return repeat(r, a, ival(b));
        }
        if ((b->type == TEMPLATE_STRING || b->type == TEMPLATE_LIST) &&
            (a->type == TEMPLATE_INT || a->type == TEMPLATE_BOOL)) {
            return repeat(r, b, ival(a));
        }
        return type_error(r, names[op], a, b);
    case OP_DIV:
        if (num) {
            if (value_as_double(b) == 0.0) {
                return render_fail(r, "division by zero");
            }
            return make_float(r, value_as_double(a) / value_as_double(b));
        }
        return type_error(r, names[op], a, b);
    case OP_FLOORDIV:
    case OP_MOD:
        if (a->type == TEMPLATE_STRING && op == OP_MOD) {
            return render_percent_format(r, a, b);
        }
        if (ints) {
            if (y == 0) {
                return render_fail(r, "integer division or modulo by zero");
            }
            if (x == INT64_MIN && y == -1) {
                return op == OP_MOD ? make_int(r, 0) : render_fail(r, "integer overflow");
            }
            int64_t q = x / y, m = x % y;
            if (m != 0 && ((m < 0) != (y < 0))) {
                q--;
                m += y;
            }
            return make_int(r, op == OP_MOD ? m : q);
        }
        if (num) {
            double fx = value_as_double(a), fy = value_as_double(b);
            if (fy == 0.0) {
                return render_fail(r, "float division by zero");
            }
            /* CPython's float_divmod */
            double mod = fmod(fx, fy);
            double div = (fx - mod) / fy;
            if (mod != 0.0) {
                if ((fy < 0) != (mod < 0)) {
                    mod += fy;
                    div -= 1.0;
                }
            } else {
                mod = copysign(0.0, fy);
            }
            if (op == OP_MOD) {
                return make_float(r, mod);
            }
            double floordiv;
            if (div != 0.0) {
                floordiv = floor(div);
                if (div - floordiv > 0.5) {
                    floordiv += 1.0;
                }
            } else {
                floordiv = copysign(0.0, fx / fy);
            }
            return make_float(r, floordiv);
        }
        return type_error(r, names[op], a, b);
    case OP_POW:
        if (ints && y >= 0) {
            return int_pow(r, x, y);
        }
        if (num) {
            double fx = value_as_double(a), fy = value_as_double(b);
            if (fx == 0.0 && fy < 0) {
                return render_fail(r, "0.0 cannot be raised to a negative power");
            }
            return make_float(r, pow(fx, fy));
        }
        return type_error(r, names[op], a, b);
    default:
        return render_fail(r, "bad operator");
    }
}

/* `a in b`: 1/0, -1 on error. */
static int contains(struct render *r, struct template_value *a, struct template_value *b) {
    switch (b->type) {
    case TEMPLATE_UNDEFINED:
        return 0;
    case TEMPLATE_STRING:
        if (a->type != TEMPLATE_STRING) {
            render_fail(r, "'in <string>' requires string as left operand, not %s",
                        value_type_name(a));
            return -1;
        }
        if (a->u.str.len == 0) {
            return 1;
        }
        for (size_t i = 0; i + a->u.str.len <= b->u.str.len; i++) {
            if (memcmp(b->u.str.s + i, a->u.str.s, a->u.str.len) == 0) {
                return 1;
            }
        }
        return 0;
    case TEMPLATE_LIST:
        for (size_t i = 0; i < b->u.list.n; i++) {
            if (value_equal(a, b->u.list.items[i])) {
                return 1;
            }
        }
        return 0;
    case TEMPLATE_DICT:
        return value_dict_find(b, a) != NULL;
    default:
        render_fail(r, "argument of type '%s' is not iterable", value_type_name(b));
        return -1;
    }
}

/* One comparison: 1/0, -1 on error. */
static int compare(struct render *r, int op, struct template_value *a, struct template_value *b) {
    switch (op) {
    case CMP_EQ:
        return value_equal(a, b);
    case CMP_NE:
        return !value_equal(a, b);
    case CMP_IN:
        return contains(r, a, b);
    case CMP_NOTIN: {
        int c = contains(r, a, b);
        return c < 0 ? -1 : !c;
    }
    default: {
        if (a->type == TEMPLATE_UNDEFINED || b->type == TEMPLATE_UNDEFINED) {
            undefined_error(r, a->type == TEMPLATE_UNDEFINED ? a : b);
            return -1;
        }
        bool err = false;
        int c = value_compare(a, b, &err);
        static const char *const names[] = {"==", "!=", "<", "<=", ">", ">="};
        if (err) {
            render_fail(r, "'%s' not supported between instances of '%s' and '%s'", names[op],
                        value_type_name(a), value_type_name(b));
            return -1;
        }
        bool nan = (a->type == TEMPLATE_FLOAT && isnan(a->u.f)) ||
                   (b->type == TEMPLATE_FLOAT && isnan(b->u.f));
        if (nan) {
            return 0;
        }
        return op == CMP_LT ? c < 0 : op == CMP_LE ? c <= 0 : op == CMP_GT ? c > 0 : c >= 0;
    }
    }
}

/* ---- expressions ---- */

static struct template_value *eval(struct render *r, const struct node *n, struct frame *f);
static struct template_value *call_loop(struct render *r, struct template_value *loop,
                                        const struct call_args *args);
static enum exec_status exec_list(struct render *r, const struct node_list *body, struct frame *f);

/* Evaluates positional and keyword arguments into args (values owned by the caller: release
 * with free_args). */
static bool eval_args(struct render *r, const struct node *n, struct frame *f,
                      struct call_args *args) {
    memset(args, 0, sizeof(*args));
    size_t n_pos = n->body.n, n_kw = n->params.n;
    args->pos = calloc(n_pos + 1, sizeof(*args->pos));
    args->kw = calloc(n_kw + 1, sizeof(*args->kw));
    args->kw_names = calloc(n_kw + 1, sizeof(*args->kw_names));
    if (args->pos == NULL || args->kw == NULL || args->kw_names == NULL) {
        render_nomem(r);
        return false;
    }
    for (size_t i = 0; i < n_pos; i++) {
        args->pos[i] = eval(r, n->body.v[i], f);
        if (args->pos[i] == NULL) {
            return false;
        }
        args->n_pos++;
    }
    for (size_t i = 0; i < n_kw; i++) {
        args->kw_names[i] = n->params.v[i]->str;
        args->kw[i] = eval(r, n->params.v[i]->a, f);
        if (args->kw[i] == NULL) {
            return false;
        }
        args->n_kw++;
    }
    return true;
}

static void free_args(struct call_args *args) {
    for (size_t i = 0; i < args->n_pos; i++) {
        template_value_unref(args->pos[i]);
    }
    for (size_t i = 0; i < args->n_kw; i++) {
        template_value_unref(args->kw[i]);
    }
    free(args->pos);
    free(args->kw);
    free(args->kw_names);
}

/* Renders a macro (or a call block's caller) with args. */
static struct template_value *call_macro(struct render *r, struct template_value *m,
                                         const struct call_args *args) {
    const struct node *node = m->u.other.ptr;
    bool is_caller = m->u.other.id == 1;
    const struct node_list *params = &node->params;
    if (r->depth >= r->max_depth) {
        return render_limit(r, "max_depth");
    }
    struct frame *f = frame_new(r, m->u.other.ptr2);
    if (f == NULL) {
        return NULL;
    }
    bool ok = true;
    size_t n_params = params->n;
    struct template_value *varargs = value_tuple();
    struct template_value *kwargs = template_value_dict();
    if (varargs == NULL || kwargs == NULL) {
        render_nomem(r);
        ok = false;
    }
    for (size_t i = 0; ok && i < args->n_pos; i++) {
        if (i < n_params) {
            ok = frame_set(r, f, params->v[i]->str, strlen(params->v[i]->str),
                           template_value_ref(args->pos[i]));
        } else if (node->op & 1) {
            ok = list_add(r, varargs, template_value_ref(args->pos[i]));
        } else {
            render_fail(r, "macro '%s' takes not more than %zu argument(s)",
                        node->str != NULL ? node->str : "caller", n_params);
            ok = false;
        }
    }
    for (size_t i = 0; ok && i < args->n_kw; i++) {
        size_t k = 0;
        while (k < n_params && strcmp(params->v[k]->str, args->kw_names[i]) != 0) {
            k++;
        }
        if (k < n_params) {
            if (k < args->n_pos) {
                render_fail(r, "macro got multiple values for argument '%s'", args->kw_names[i]);
                ok = false;
            } else {
                ok = frame_set(r, f, params->v[k]->str, strlen(params->v[k]->str),
                               template_value_ref(args->kw[i]));
            }
        } else if (strcmp(args->kw_names[i], "caller") == 0 && !is_caller) {
            ok = frame_set(r, f, "caller", 6, template_value_ref(args->kw[i]));
        } else if (node->op & 2) {
            struct template_value *key =
                template_value_string(args->kw_names[i], strlen(args->kw_names[i]));
            if (key == NULL || value_dict_put(kwargs, key, template_value_ref(args->kw[i])) != 0) {
                render_nomem(r);
                ok = false;
            }
        } else {
            render_fail(r, "macro '%s' takes no keyword argument '%s'",
                        node->str != NULL ? node->str : "caller", args->kw_names[i]);
            ok = false;
        }
    }
    /* Parameters not given: their default (evaluated now, in the macro's frame), else
     * undefined. */
    for (size_t k = 0; ok && k < n_params; k++) {
        const char *name = params->v[k]->str;
        bool bound = false;
        for (size_t i = 0; i < f->n; i++) {
            bound = bound || strcmp(f->v[i].name, name) == 0;
        }
        if (bound) {
            continue;
        }
        struct template_value *v;
        if (params->v[k]->a != NULL) {
            v = eval(r, params->v[k]->a, f);
        } else {
            char hint[160];
            snprintf(hint, sizeof(hint), "parameter '%.100s' was not provided", name);
            v = value_undefined(hint);
            if (v == NULL) {
                render_nomem(r);
            }
        }
        ok = v != NULL && frame_set(r, f, name, strlen(name), v);
    }
    if (ok) {
        ok = frame_set(r, f, "varargs", 7, varargs) && frame_set(r, f, "kwargs", 6, kwargs);
    } else {
        template_value_unref(varargs);
        template_value_unref(kwargs);
    }
    struct template_value *result = NULL;
    if (ok) {
        struct buf out;
        buf_init(&out, r->max_output);
        struct buf *saved = r->out;
        r->out = &out;
        r->depth++;
        enum exec_status st = exec_list(r, &node->body, f);
        r->depth--;
        r->out = saved;
        if (st != EXEC_FAIL) {
            result = new_string(r, &out);
        } else {
            buf_free(&out);
        }
    }
    frame_release(r, f);
    return result;
}

struct template_value *render_call(struct render *r, struct template_value *callee,
                                   const struct call_args *args) {
    if (callee->type == TEMPLATE_UNDEFINED) {
        return undefined_error(r, callee);
    }
    if (callee->type == TEMPLATE_OTHER) {
        switch (callee->u.other.kind) {
        case OTHER_BUILTIN:
            return builtins_global(r, callee->u.other.id, args);
        case OTHER_METHOD:
            return builtins_method(r, callee->u.other.id, callee->u.other.self, args);
        case OTHER_MACRO:
            return call_macro(r, callee, args);
        case OTHER_LOOP:
            return call_loop(r, callee, args);
        case OTHER_JOINER: {
            if (callee->u.other.pos == 0) {
                callee->u.other.pos = 1;
                struct template_value *e = template_value_string("", 0);
                return e != NULL ? e : render_nomem(r);
            }
            return template_value_ref(callee->u.other.self);
        }
        default:
            break;
        }
    }
    return render_fail(r, "'%s' object is not callable", value_type_name(callee));
}

static struct template_value *eval_filter(struct render *r, const struct node *n, struct frame *f) {
    struct template_value *operand =
        n->a != NULL ? eval(r, n->a, f) : template_value_ref(r->filter_input);
    if (operand == NULL) {
        return NULL;
    }
    struct call_args args;
    struct template_value *result = NULL;
    if (eval_args(r, n, f, &args)) {
        result = builtins_filter(r, n->id, operand, &args);
    }
    free_args(&args);
    template_value_unref(operand);
    return result;
}

static struct template_value *eval_test(struct render *r, const struct node *n, struct frame *f) {
    struct template_value *operand = eval(r, n->a, f);
    if (operand == NULL) {
        return NULL;
    }
    struct call_args args;
    struct template_value *result = NULL;
    if (eval_args(r, n, f, &args)) {
        int t = builtins_test(r, n->id, operand, &args);
        result = t < 0 ? NULL : value_bool_ref(t == 1);
    }
    free_args(&args);
    template_value_unref(operand);
    return result;
}

static struct template_value *eval_call(struct render *r, const struct node *n, struct frame *f) {
    struct template_value *callee = eval(r, n->a, f);
    if (callee == NULL) {
        return NULL;
    }
    struct call_args args;
    struct template_value *result = NULL;
    if (eval_args(r, n, f, &args)) {
        result = render_call(r, callee, &args);
    }
    free_args(&args);
    template_value_unref(callee);
    return result;
}

static struct template_value *eval_inner(struct render *r, const struct node *n, struct frame *f) {
    struct template_value *a = NULL, *b = NULL, *v = NULL;
    switch (n->kind) {
    case E_CONST:
        return n->value; /* immortal: no reference to take */
    case E_NAME:
        return lookup(r, f, n->str, n->len);
    case E_GETATTR:
        a = eval(r, n->a, f);
        if (a != NULL) {
            v = render_getattr(r, a, n->str, n->len);
        }
        template_value_unref(a);
        return v;
    case E_GETITEM:
        a = eval(r, n->a, f);
        b = a != NULL ? eval(r, n->b, f) : NULL;
        if (b != NULL) {
            v = render_getitem(r, a, b);
        }
        template_value_unref(a);
        template_value_unref(b);
        return v;
    case E_SLICE: {
        if (n->a == NULL) {
            return render_fail(r, "slices inside tuples are not supported");
        }
        struct template_value *sv[3] = {NULL, NULL, NULL};
        const struct node *parts[3] = {n->b, n->c, n->d};
        a = eval(r, n->a, f);
        bool ok = a != NULL;
        for (int k = 0; ok && k < 3; k++) {
            if (parts[k] != NULL) {
                sv[k] = eval(r, parts[k], f);
                ok = sv[k] != NULL;
            }
        }
        if (ok) {
            v = do_slice(r, a, sv);
        }
        template_value_unref(a);
        for (int k = 0; k < 3; k++) {
            template_value_unref(sv[k]);
        }
        return v;
    }
    case E_CALL:
        return eval_call(r, n, f);
    case E_FILTER:
        return eval_filter(r, n, f);
    case E_TEST:
        return eval_test(r, n, f);
    case E_NOT:
        a = eval(r, n->a, f);
        if (a != NULL) {
            v = value_bool_ref(!template_value_truthy(a));
        }
        template_value_unref(a);
        return v;
    case E_NEG:
    case E_POS:
        a = eval(r, n->a, f);
        if (a == NULL) {
            return NULL;
        }
        if (a->type == TEMPLATE_FLOAT) {
            v = make_float(r, n->kind == E_NEG ? -a->u.f : a->u.f);
        } else if (a->type == TEMPLATE_INT || a->type == TEMPLATE_BOOL) {
            int64_t x = ival(a);
            if (n->kind == E_NEG && x == INT64_MIN) {
                v = render_fail(r, "integer overflow");
            } else {
                v = make_int(r, n->kind == E_NEG ? -x : x);
            }
        } else if (a->type == TEMPLATE_UNDEFINED) {
            v = undefined_error(r, a);
        } else {
            v = render_fail(r, "bad operand type for unary %c: '%s'", n->kind == E_NEG ? '-' : '+',
                            value_type_name(a));
        }
        template_value_unref(a);
        return v;
    case E_BINOP:
        a = eval(r, n->a, f);
        b = a != NULL ? eval(r, n->b, f) : NULL;
        if (b != NULL) {
            v = binop(r, n->op, a, b);
        }
        template_value_unref(a);
        template_value_unref(b);
        return v;
    case E_CONCAT: {
        struct buf s;
        buf_init(&s, r->max_output);
        for (size_t i = 0; i < n->body.n; i++) {
            a = eval(r, n->body.v[i], f);
            if (a == NULL) {
                buf_free(&s);
                return NULL;
            }
            value_str(&s, a);
            template_value_unref(a);
        }
        return new_string(r, &s);
    }
    case E_COMPARE: {
        a = eval(r, n->a, f);
        for (size_t i = 0; a != NULL && i < n->body.n; i++) {
            const struct node *o = n->body.v[i];
            b = eval(r, o->a, f);
            if (b == NULL) {
                template_value_unref(a);
                return NULL;
            }
            int c = compare(r, o->op, a, b);
            template_value_unref(a);
            a = b;
            if (c <= 0) {
                template_value_unref(a);
                return c < 0 ? NULL : &value_false_static;
            }
        }
        template_value_unref(a);
        return a != NULL ? &value_true_static : NULL;
    }
    case E_AND:
    case E_OR:
        a = eval(r, n->a, f);
        if (a == NULL) {
            return NULL;
        }
        if (template_value_truthy(a) == (n->kind == E_OR)) {
            return a;
        }
        template_value_unref(a);
        return eval(r, n->b, f);
    case E_COND:
        a = eval(r, n->b, f);
        if (a == NULL) {
            return NULL;
        }
        bool t = template_value_truthy(a);
        template_value_unref(a);
        if (t) {
            return eval(r, n->a, f);
        }
        if (n->c != NULL) {
            return eval(r, n->c, f);
        }
        v = value_undefined("the inline if expression evaluated to false and no else section "
                            "was defined.");
        return v != NULL ? v : render_nomem(r);
    case E_LIST:
    case E_TUPLE:
        v = n->kind == E_LIST ? template_value_list() : value_tuple();
        if (v == NULL) {
            return render_nomem(r);
        }
        for (size_t i = 0; i < n->body.n; i++) {
            if (!list_add(r, v, eval(r, n->body.v[i], f))) {
                template_value_unref(v);
                return NULL;
            }
        }
        return v;
    case E_DICT:
        v = template_value_dict();
        if (v == NULL) {
            return render_nomem(r);
        }
        for (size_t i = 0; i + 1 < n->body.n; i += 2) {
            a = eval(r, n->body.v[i], f);
            b = a != NULL ? eval(r, n->body.v[i + 1], f) : NULL;
            if (b == NULL) {
                template_value_unref(a);
                template_value_unref(v);
                return NULL;
            }
            if ((a->type == TEMPLATE_LIST && !a->u.list.is_tuple) || a->type == TEMPLATE_DICT) {
                template_value_unref(a);
                template_value_unref(b);
                template_value_unref(v);
                return render_fail(r, "unhashable type: '%s'", value_type_name(a));
            }
            if (value_dict_put(v, a, b) != 0) {
                template_value_unref(v);
                return render_nomem(r);
            }
        }
        return v;
    default:
        return render_fail(r, "unexpected node in expression");
    }
}

static struct template_value *eval(struct render *r, const struct node *n, struct frame *f) {
    if (!render_step(r)) {
        return NULL;
    }
    if (r->native >= r->max_native) {
        return render_limit(r, "max_depth (nesting)");
    }
    r->line = n->line;
    r->native++;
    struct template_value *v = eval_inner(r, n, f);
    r->native--;
    if (v == NULL && r->status == TEMPLATE_OK) {
        render_nomem(r);
    }
    return v;
}

/* ---- statements ---- */

static bool emit(struct render *r, const char *s, size_t len) {
    buf_add(r->out, s, len);
    return buf_check(r, r->out);
}

/* Assigns v (taken over) to a target: a name, a tuple of names (unpacking) or ns.attr. */
static bool assign(struct render *r, const struct node *target, struct template_value *v,
                   struct frame *f) {
    if (v == NULL) {
        return false;
    }
    if (target->kind == E_NAME) {
        return frame_set(r, f, target->str, target->len, v);
    }
    if (target->kind == E_NSREF) {
        struct template_value *ns = lookup(r, f, target->str, strlen(target->str));
        bool ok = false;
        if (ns == NULL) {
            template_value_unref(v);
            return false;
        }
        if (ns->type != TEMPLATE_OTHER || ns->u.other.kind != OTHER_NAMESPACE) {
            render_fail(r, "cannot assign attribute on non-namespace object");
            template_value_unref(v);
        } else if (template_value_dict_set(ns->u.other.self, target->str2, v) != 0) {
            render_nomem(r);
        } else {
            ok = true;
        }
        template_value_unref(ns);
        return ok;
    }
    /* tuple unpacking */
    struct template_value *items = render_iterate(r, v);
    template_value_unref(v);
    if (items == NULL) {
        return false;
    }
    bool ok = true;
    if (items->u.list.n != target->body.n) {
        if (items->u.list.n > target->body.n) {
            render_fail(r, "too many values to unpack (expected %zu)", target->body.n);
        } else {
            render_fail(r, "not enough values to unpack (expected %zu, got %zu)", target->body.n,
                        items->u.list.n);
        }
        ok = false;
    }
    for (size_t i = 0; ok && i < target->body.n; i++) {
        ok = assign(r, target->body.v[i], template_value_ref(items->u.list.items[i]), f);
    }
    template_value_unref(items);
    return ok;
}

/*
 * Runs a for loop's body over the items of iterable (the loop's filter applied first) at
 * recursion depth (1 for the loop itself, more through loop(...) in a recursive loop).
 */
static enum exec_status run_loop(struct render *r, const struct node *n,
                                 struct template_value *iterable, struct frame *f, size_t depth) {
    struct template_value *items = render_iterate(r, iterable);
    if (items == NULL) {
        return EXEC_FAIL;
    }
    struct frame *body = frame_new(r, f);
    if (body == NULL) {
        template_value_unref(items);
        return EXEC_FAIL;
    }
    enum exec_status st = EXEC_OK;
    if (n->c != NULL) {
        /* `for x in xs if cond`: the loop runs over the items that pass. */
        struct template_value *kept = template_value_list();
        if (kept == NULL) {
            render_nomem(r);
            st = EXEC_FAIL;
        }
        for (size_t i = 0; st == EXEC_OK && i < items->u.list.n; i++) {
            frame_clear(body);
            struct template_value *item = items->u.list.items[i];
            if (!assign(r, n->a, template_value_ref(item), body)) {
                st = EXEC_FAIL;
                break;
            }
            struct template_value *c = eval(r, n->c, body);
            if (c == NULL) {
                st = EXEC_FAIL;
                break;
            }
            if (template_value_truthy(c) && !list_add(r, kept, template_value_ref(item))) {
                st = EXEC_FAIL;
            }
            template_value_unref(c);
        }
        template_value_unref(items);
        items = kept;
    }
    struct template_value *loop = NULL;
    if (st == EXEC_OK) {
        loop = value_other(OTHER_LOOP);
        if (loop == NULL || !remember_cyclic(r, loop)) {
            render_nomem(r);
            st = EXEC_FAIL;
        } else {
            loop->u.other.self = template_value_ref(items);
            loop->u.other.ptr = (void *)n;
            loop->u.other.ptr2 = f;
            loop->u.other.id = (int)depth;
            if (n->op != 0) {
                f->captured = true; /* loop(...) may run the body in f later */
            }
        }
    }
    size_t n_items = items != NULL ? items->u.list.n : 0;
    for (size_t i = 0; st != EXEC_FAIL && i < n_items; i++) {
        if (!render_step(r)) { /* an iteration is a step even with an empty body */
            st = EXEC_FAIL;
            break;
        }
        if (body->captured) {
            /* a macro defined in the last iteration keeps that frame */
            frame_release(r, body);
            body = frame_new(r, f);
            if (body == NULL) {
                st = EXEC_FAIL;
                break;
            }
        }
        frame_clear(body);
        loop->u.other.pos = i;
        if (!assign(r, n->a, template_value_ref(items->u.list.items[i]), body) ||
            !frame_set(r, body, "loop", 4, template_value_ref(loop))) {
            st = EXEC_FAIL;
            break;
        }
        st = exec_list(r, &n->body, body);
        if (st == EXEC_BREAK) {
            st = EXEC_OK;
            break;
        }
        if (st == EXEC_CONTINUE) {
            st = EXEC_OK;
        }
    }
    template_value_unref(loop);
    template_value_unref(items);
    frame_release(r, body);
    if (st == EXEC_OK && n_items == 0 && n->orelse.n > 0) {
        struct frame *ef = frame_new(r, f);
        if (ef == NULL) {
            return EXEC_FAIL;
        }
        st = exec_list(r, &n->orelse, ef);
        frame_release(r, ef);
    }
    return st;
}

static enum exec_status exec_for(struct render *r, const struct node *n, struct frame *f) {
    struct template_value *iterable = eval(r, n->b, f);
    if (iterable == NULL) {
        return EXEC_FAIL;
    }
    enum exec_status st = run_loop(r, n, iterable, f, 1);
    template_value_unref(iterable);
    return st;
}

/* loop(items) in a recursive loop: the body over items, one level deeper, as a string. */
static struct template_value *call_loop(struct render *r, struct template_value *loop,
                                        const struct call_args *args) {
    const struct node *n = loop->u.other.ptr;
    if (n == NULL || n->op == 0) {
        return render_fail(r, "Tried to call non recursive loop.  Maybe you forgot the "
                              "'recursive' modifier.");
    }
    if (args->n_pos != 1 || args->n_kw != 0) {
        return render_fail(r, "loop() takes exactly one argument");
    }
    if (r->depth >= r->max_depth) {
        return render_limit(r, "max_depth");
    }
    struct buf out;
    buf_init(&out, r->max_output);
    struct buf *saved = r->out;
    r->out = &out;
    r->depth++;
    enum exec_status st =
        run_loop(r, n, args->pos[0], loop->u.other.ptr2, (size_t)loop->u.other.id + 1);
    r->depth--;
    r->out = saved;
    if (st == EXEC_FAIL) {
        buf_free(&out);
        return NULL;
    }
    return new_string(r, &out);
}

/* Renders body into a string in a new frame. */
static struct template_value *capture(struct render *r, const struct node_list *body,
                                      struct frame *f) {
    struct frame *inner = frame_new(r, f);
    if (inner == NULL) {
        return NULL;
    }
    struct buf out;
    buf_init(&out, r->max_output);
    struct buf *saved = r->out;
    r->out = &out;
    enum exec_status st = exec_list(r, body, inner);
    r->out = saved;
    frame_release(r, inner);
    if (st == EXEC_FAIL) {
        buf_free(&out);
        return NULL;
    }
    return new_string(r, &out);
}

/* Applies a filter chain whose innermost operand is missing (filter and set blocks). */
static struct template_value *apply_filters(struct render *r, const struct node *chain,
                                            struct template_value *text, struct frame *f) {
    struct template_value *saved = r->filter_input;
    r->filter_input = text;
    struct template_value *v = eval(r, chain, f);
    r->filter_input = saved;
    template_value_unref(text);
    return v;
}

static enum exec_status exec_stmt(struct render *r, const struct node *n, struct frame *f);

static enum exec_status exec_list(struct render *r, const struct node_list *body, struct frame *f) {
    for (size_t i = 0; i < body->n; i++) {
        enum exec_status st = exec_stmt(r, body->v[i], f);
        if (st != EXEC_OK) {
            return st;
        }
    }
    return EXEC_OK;
}

static enum exec_status exec_inner(struct render *r, const struct node *n, struct frame *f) {
    struct template_value *v;
    switch (n->kind) {
    case N_DATA:
        return emit(r, n->str, n->len) ? EXEC_OK : EXEC_FAIL;
    case N_OUTPUT:
        v = eval(r, n->a, f);
        if (v == NULL) {
            return EXEC_FAIL;
        }
        value_str(r->out, v);
        template_value_unref(v);
        return buf_check(r, r->out) ? EXEC_OK : EXEC_FAIL;
    case N_IF: {
        v = eval(r, n->a, f);
        if (v == NULL) {
            return EXEC_FAIL;
        }
        bool t = template_value_truthy(v);
        template_value_unref(v);
        return exec_list(r, t ? &n->body : &n->orelse, f);
    }
    case N_FOR:
        return exec_for(r, n, f);
    case N_SET:
        return assign(r, n->a, eval(r, n->b, f), f) ? EXEC_OK : EXEC_FAIL;
    case N_SETBLOCK:
        v = capture(r, &n->body, f);
        if (v != NULL && n->b != NULL) {
            v = apply_filters(r, n->b, v, f);
        }
        return assign(r, n->a, v, f) ? EXEC_OK : EXEC_FAIL;
    case N_FILTERBLOCK:
        v = capture(r, &n->body, f);
        if (v != NULL) {
            v = apply_filters(r, n->a, v, f);
        }
        if (v == NULL) {
            return EXEC_FAIL;
        }
        value_str(r->out, v);
        template_value_unref(v);
        return buf_check(r, r->out) ? EXEC_OK : EXEC_FAIL;
    case N_MACRO:
        v = value_other(OTHER_MACRO);
        if (v == NULL) {
            render_nomem(r);
            return EXEC_FAIL;
        }
        v->u.other.ptr = (void *)n;
        v->u.other.ptr2 = f;
        f->captured = true;
        return frame_set(r, f, n->str, strlen(n->str), v) ? EXEC_OK : EXEC_FAIL;
    case N_CALLBLOCK: {
        struct template_value *caller = value_other(OTHER_MACRO);
        if (caller == NULL) {
            render_nomem(r);
            return EXEC_FAIL;
        }
        caller->u.other.ptr = (void *)n;
        caller->u.other.ptr2 = f;
        caller->u.other.id = 1;
        f->captured = true;
        const struct node *call = n->a;
        struct template_value *callee = eval(r, call->a, f);
        struct call_args args;
        struct template_value *result = NULL;
        if (callee != NULL && eval_args(r, call, f, &args)) {
            /* caller goes in as one more keyword argument */
            const char **names = realloc(args.kw_names, (args.n_kw + 1) * sizeof(*names));
            struct template_value **kw =
                names != NULL ? realloc(args.kw, (args.n_kw + 1) * sizeof(*kw)) : NULL;
            if (names != NULL) {
                args.kw_names = names;
            }
            if (kw != NULL) {
                args.kw = kw;
                args.kw_names[args.n_kw] = "caller";
                args.kw[args.n_kw++] = caller;
                caller = NULL;
                result = render_call(r, callee, &args);
            } else {
                render_nomem(r);
            }
            free_args(&args);
        } else if (callee != NULL) {
            free_args(&args);
        }
        template_value_unref(caller);
        template_value_unref(callee);
        if (result == NULL) {
            return EXEC_FAIL;
        }
        value_str(r->out, result);
        template_value_unref(result);
        return buf_check(r, r->out) ? EXEC_OK : EXEC_FAIL;
    }
    case N_WITH: {
        struct frame *inner = frame_new(r, f);
        if (inner == NULL) {
            return EXEC_FAIL;
        }
        enum exec_status st = EXEC_OK;
        for (size_t i = 0; st == EXEC_OK && i < n->params.n; i++) {
            const struct node *p = n->params.v[i];
            /* values see the outer scope, as jinja2 evaluates them before entering */
            v = eval(r, p->a, f);
            if (v == NULL || !frame_set(r, inner, p->str, strlen(p->str), v)) {
                st = EXEC_FAIL;
            }
        }
        if (st == EXEC_OK) {
            st = exec_list(r, &n->body, inner);
        }
        frame_release(r, inner);
        return st;
    }
    case N_BREAK:
        return EXEC_BREAK;
    case N_CONTINUE:
        return EXEC_CONTINUE;
    case N_BODY:
        return exec_list(r, &n->body, f);
    default:
        render_fail(r, "unexpected node in statement");
        return EXEC_FAIL;
    }
}

static enum exec_status exec_stmt(struct render *r, const struct node *n, struct frame *f) {
    if (!render_step(r)) {
        return EXEC_FAIL;
    }
    if (r->native >= r->max_native) {
        render_limit(r, "max_depth (nesting)");
        return EXEC_FAIL;
    }
    r->line = n->line;
    r->native++;
    enum exec_status st = exec_inner(r, n, f);
    r->native--;
    if (st == EXEC_FAIL && r->status == TEMPLATE_OK) {
        render_nomem(r);
    }
    return st;
}

/* ---- entry point ---- */

enum template_status template_render(const struct template *t, const struct template_value *vars,
                                     const struct template_limits *lim, char **out, size_t *out_len,
                                     char *err, size_t err_size) {
    char dummy[1];
    if (err == NULL || err_size == 0) {
        err = dummy;
        err_size = sizeof(dummy);
    }
    err[0] = '\0';
    if (out != NULL) {
        *out = NULL;
    }
    if (out_len != NULL) {
        *out_len = 0;
    }
    if (t == NULL || out == NULL) {
        snprintf(err, err_size, "no template");
        return TEMPLATE_ERROR;
    }
    if (vars != NULL && vars->type != TEMPLATE_DICT) {
        snprintf(err, err_size, "the variables must be a dict");
        return TEMPLATE_ERROR;
    }
    struct render r = {
        .t = t,
        .vars = vars,
        .max_steps = lim != NULL && lim->max_steps ? lim->max_steps : 10000000,
        .max_depth = lim != NULL && lim->max_depth ? lim->max_depth : 64,
        .max_native = TEMPLATE_MAX_NATIVE_DEPTH,
        .max_output = lim != NULL && lim->max_output ? lim->max_output : 16u << 20,
        .now = lim != NULL && lim->now ? lim->now : time(NULL),
        .line = 1,
        .status = TEMPLATE_OK,
        .err = err,
        .err_size = err_size,
    };
    struct buf result;
    buf_init(&result, r.max_output);
    r.out = &result;
    struct frame *top = frame_new(&r, NULL);
    if (top != NULL) {
        exec_list(&r, &t->root->body, top);
        frame_release(&r, top);
    }
    /* Drop what namespaces and loops hold (breaking cycles), then the kept frames. */
    for (size_t i = 0; i < r.n_cyclic; i++) {
        struct template_value *c = r.cyclic[i];
        if (c->u.other.kind == OTHER_NAMESPACE) {
            struct template_value *attrs = c->u.other.self;
            c->u.other.self = NULL;
            template_value_unref(attrs);
        } else {
            struct template_value *last = c->u.other.self2;
            c->u.other.self2 = NULL;
            template_value_unref(last);
        }
    }
    while (r.captured != NULL) {
        struct frame *f = r.captured;
        r.captured = f->next_captured;
        frame_clear(f);
        free(f->v);
        free(f);
    }
    for (size_t i = 0; i < r.n_cyclic; i++) {
        template_value_unref(r.cyclic[i]);
    }
    free(r.cyclic);
    if (r.status == TEMPLATE_OK && !buf_check(&r, &result)) {
        /* reported by buf_check */
    }
    if (r.status != TEMPLATE_OK) {
        buf_free(&result);
        return r.status;
    }
    char *s = buf_take(&result, out_len);
    if (s == NULL) {
        snprintf(err, err_size, "out of memory");
        return TEMPLATE_NOMEM;
    }
    *out = s;
    return TEMPLATE_OK;
}

/* Builtins need to register namespaces they make (cycle breaking) and to raise. */
bool render_remember_cyclic(struct render *r, struct template_value *v) {
    return remember_cyclic(r, v);
}

void render_raise(struct render *r, const char *msg, size_t len) {
    if (r->status == TEMPLATE_OK) {
        r->status = TEMPLATE_RAISED;
        size_t n = len < r->err_size - 1 ? len : r->err_size - 1;
        memcpy(r->err, msg, n);
        r->err[n] = '\0';
    }
}
