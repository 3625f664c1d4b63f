/*
 * template_internal.h: what the files of src/template/ share -- the value representation, the
 * growable byte buffer every string is built in, Python-compatible text helpers (UTF-8,
 * str.isspace, float repr, repr(), json.dumps), the token list of the lexer, the syntax tree the
 * parser builds and the renderer walks, and the ids of the built-in filters, tests, methods and
 * globals.
 *
 * Nothing here is visible outside the module (include/gptd/template.h is the public API).
 */
#ifndef GPTD_TEMPLATE_INTERNAL_H
#define GPTD_TEMPLATE_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <gptd/template.h>

/* A value whose refs is VALUE_IMMORTAL is never counted nor freed by unref: the statics below
 * and the constants of a compiled template, which threads share while rendering. */
#define VALUE_IMMORTAL UINT32_MAX

/* Static nesting the parser accepts (statements and parenthesised expressions), and the
 * height of one expression tree (long `a + b + c ...` chains): both bound the recursion of the
 * renderer, of the tree walks and of destruction. */
#define TEMPLATE_MAX_NESTING 100
#define TEMPLATE_MAX_HEIGHT  256
/* Nested evaluations of one render (a recursion through macros multiplies the static depth). */
#define TEMPLATE_MAX_NATIVE_DEPTH 1500

enum other_kind {
    OTHER_NAMESPACE, /* self: dict of attributes (mutable through {% set ns.x %}) */
    OTHER_MACRO,     /* ptr: the macro's node; ptr2: the frame it was defined in; id 1: caller */
    OTHER_LOOP,      /* self: the items; self2: loop.changed's last value; pos: index0; id:
                        length */
    OTHER_BUILTIN,   /* id: enum builtin_id */
    OTHER_METHOD,    /* id: enum method_id; self: the receiver */
    OTHER_CYCLER,    /* self: list of items; pos: next index */
    OTHER_JOINER,    /* self: separator; pos: 0 until the first call */
};

struct dict_entry {
    struct template_value *key;
    struct template_value *value;
};

struct template_value {
    enum template_value_type type;
    uint32_t refs;
    union {
        bool b;
        int64_t i;
        double f;
        struct {
            char *s; /* NUL-terminated (the NUL not counted), may hold NULs */
            size_t len;
        } str;
        struct {
            struct template_value **items;
            size_t n, cap;
            bool is_tuple; /* printed (a, b); otherwise the same as a list */
        } list;
        struct {
            struct dict_entry *entries;
            size_t n, cap;
        } dict;
        struct {
            char *hint; /* why it is undefined, for error messages; may be NULL */
        } undef;
        struct {
            enum other_kind kind;
            int id;
            size_t pos;
            struct template_value *self;  /* owned */
            struct template_value *self2; /* owned */
            void *ptr;                    /* borrowed */
            void *ptr2;                   /* borrowed */
        } other;
    } u;
};

extern struct template_value value_undefined_static;
extern struct template_value value_none_static;
extern struct template_value value_true_static;
extern struct template_value value_false_static;

/* ---- values (value.c) ---- */

struct template_value *value_float(double f);
struct template_value *value_undefined(const char *hint);      /* hint copied; NULL allowed */
struct template_value *value_string_take(char *s, size_t len); /* takes s (malloc'd, NUL at len) */
struct template_value *value_tuple(void);
struct template_value *value_other(enum other_kind kind);
static inline struct template_value *value_bool_ref(bool b) {
    return b ? &value_true_static : &value_false_static;
}
/* Deep-frees an immortal constant of a compiled template. */
void value_free_immortal(struct template_value *v);
/* Python hashable-key equality for dict keys: 1 == 1.0 == True. */
struct dict_entry *value_dict_find(const struct template_value *dict,
                                   const struct template_value *key);
struct dict_entry *value_dict_find_str(const struct template_value *dict, const char *key,
                                       size_t len);
/* Sets key (a new reference taken over) to v (taken over). */
int value_dict_put(struct template_value *dict, struct template_value *key,
                   struct template_value *v);
/* Python ==. */
bool value_equal(const struct template_value *a, const struct template_value *b);
/* Python <: sets *err when the types do not compare; returns <0, 0, >0. */
int value_compare(const struct template_value *a, const struct template_value *b, bool *err);
const char *value_type_name(const struct template_value *v); /* Python's type name */
bool value_is_number(const struct template_value *v);        /* bool, int or float */
double value_as_double(const struct template_value *v);

/* ---- text (value.c) ---- */

struct buf {
    char *p;
    size_t len, cap;
    size_t max; /* appending past max sets over (and appends nothing) */
    bool over;
    bool nomem;
};
void buf_init(struct buf *b, size_t max);
void buf_free(struct buf *b);
bool buf_ok(const struct buf *b);
void buf_add(struct buf *b, const char *s, size_t n);
void buf_addc(struct buf *b, char c);
void buf_adds(struct buf *b, const char *s);
void buf_addf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void buf_add_cp(struct buf *b, uint32_t cp); /* one code point as UTF-8 */
/* Hands the bytes over (NUL-terminated) and resets b. */
char *buf_take(struct buf *b, size_t *len);

/* Decodes the code point at s[*i] (advancing *i): invalid bytes count as one code point each
 * (U+FFFD), so every byte string walks to its end. */
uint32_t utf8_next(const char *s, size_t len, size_t *i);
size_t utf8_count(const char *s, size_t len);
bool utf8_valid(const char *s, size_t len);
bool py_isspace(uint32_t cp);

/* Python repr(float) ("1.0", "1e-07", "inf", "nan"). out needs 32 bytes. */
void py_float_repr(double f, char *out, size_t size);
/* str(v) as jinja2 prints it: strings as they are, the rest as Python's str(). */
void value_str(struct buf *b, const struct template_value *v);
/* repr(v) as Python writes it inside a list. */
void value_repr(struct buf *b, const struct template_value *v);

struct json_opts {
    bool ensure_ascii;
    bool sort_keys;
    bool has_indent;
    const char *indent; /* with has_indent */
    size_t indent_len;
    const char *item_sep, *key_sep; /* NULL: json.dumps' defaults */
    size_t item_sep_len, key_sep_len;
};
/* json.dumps(v, ...): 0, or -1 with a message in err (a type json cannot write). */
int value_tojson(struct buf *b, const struct template_value *v, const struct json_opts *o,
                 char *err, size_t err_size);

/* ---- tokens (lexer.c) ---- */

enum tok_type {
    TOK_DATA,        /* text between tags: str/len hold the (already stripped) bytes */
    TOK_VAR_BEGIN,   /* {{ */
    TOK_VAR_END,     /* }} */
    TOK_BLOCK_BEGIN, /* {% */
    TOK_BLOCK_END,   /* %} */
    TOK_NAME,
    TOK_STRING, /* str/len: the decoded value */
    TOK_INT,    /* ival */
    TOK_FLOAT,  /* fval */
    TOK_OP,     /* op: the operator's text (1 or 2 chars) */
    TOK_RAW,    /* the body of {% raw %} as data */
    TOK_EOF,
};

struct token {
    enum tok_type type;
    uint32_t line, col;
    size_t off; /* byte offset in the normalised source */
    char *str;  /* owned (names, strings, data) */
    size_t len;
    char op[3];
    int64_t ival;
    double fval;
};

struct token_list {
    struct token *v;
    size_t n, cap;
};

/* Tokenizes src into toks. 0, or -1 with "line L, column C: problem" in err. */
int lexer_run(const char *src, size_t len, struct token_list *toks, char *err, size_t err_size);
void lexer_free(struct token_list *toks);

/* ---- syntax tree (parser.c) ---- */

enum node_kind {
    /* statements */
    N_DATA,        /* str: text */
    N_OUTPUT,      /* a: expression */
    N_IF,          /* a: test, body, orelse */
    N_FOR,         /* a: target, b: iterable, c: filter condition, body, orelse */
    N_SET,         /* a: target, b: value */
    N_SETBLOCK,    /* a: target, b: filter chain (operand NULL) or NULL, body */
    N_MACRO,       /* str: name, params (N_PARAM), body */
    N_CALLBLOCK,   /* a: the call (E_CALL), params, body (the caller) */
    N_FILTERBLOCK, /* a: filter chain applied to the body's text, body */
    N_WITH,        /* params: N_PARAM (name = value), body */
    N_BREAK,
    N_CONTINUE,
    N_BODY,  /* body: a list of statements (generation blocks, the template) */
    N_PARAM, /* str: name, a: default value or NULL */
    /* expressions */
    E_CONST,   /* value */
    E_NAME,    /* str */
    E_GETATTR, /* a: object, str: attribute */
    E_GETITEM, /* a: object, b: key */
    E_SLICE,   /* a: object, b/c/d: start/stop/step or NULL */
    E_CALL,    /* a: callee, body: positional args, params: keyword args (N_PARAM) */
    E_FILTER,  /* id: enum filter_id, a: operand (NULL inside filter blocks), body, params */
    E_TEST,    /* id: enum test_id, a: operand, body, params */
    E_NOT,     /* a */
    E_NEG,     /* a */
    E_POS,     /* a */
    E_BINOP,   /* op: enum binop, a, b */
    E_CONCAT,  /* body: operands (~) */
    E_COMPARE, /* a: first operand, body: E_OPERAND nodes */
    E_OPERAND, /* op: enum cmp_op, a */
    E_AND,     /* a, b */
    E_OR,      /* a, b */
    E_COND,    /* a: value if true, b: condition, c: value if false or NULL */
    E_LIST,    /* body */
    E_TUPLE,   /* body */
    E_DICT,    /* body: keys and values alternately */
    E_NSREF,   /* assignment target ns.attr: str: name, str2: attr */
};

enum binop { OP_ADD, OP_SUB, OP_MUL, OP_DIV, OP_FLOORDIV, OP_MOD, OP_POW };
enum cmp_op { CMP_EQ, CMP_NE, CMP_LT, CMP_LE, CMP_GT, CMP_GE, CMP_IN, CMP_NOTIN };

struct node_list {
    struct node **v;
    size_t n, cap;
};

struct node {
    enum node_kind kind;
    int op;
    int id;
    uint32_t line, col;
    uint32_t height;
    char *str;
    size_t len;
    char *str2;
    struct node *a, *b, *c, *d;
    struct node_list body, orelse, params;
    struct template_value *value; /* E_CONST: immortal */
};

struct template {
    struct node *root;
    bool iterates_content;
};

void node_free(struct node *n);

/* ---- built-ins (builtins.c) ---- */

enum filter_id {
    F_ABS,
    F_ATTR,
    F_BATCH,
    F_CAPITALIZE,
    F_CENTER,
    F_COUNT,
    F_DEFAULT,
    F_DICTSORT,
    F_ESCAPE,
    F_FIRST,
    F_FLOAT,
    F_FORCEESCAPE,
    F_FORMAT,
    F_INDENT,
    F_INT,
    F_ITEMS,
    F_JOIN,
    F_LAST,
    F_LENGTH,
    F_LIST,
    F_LOWER,
    F_MAP,
    F_MAX,
    F_MIN,
    F_REJECT,
    F_REJECTATTR,
    F_REPLACE,
    F_REVERSE,
    F_ROUND,
    F_SAFE,
    F_SELECT,
    F_SELECTATTR,
    F_SORT,
    F_STRING,
    F_STRIPTAGS,
    F_SUM,
    F_TITLE,
    F_TOJSON,
    F_TRIM,
    F_TRUNCATE,
    F_UNIQUE,
    F_UPPER,
    F_WORDCOUNT,
    F_SLICE,
    F_GROUPBY,
    F_URLENCODE,
    F_PPRINT,
};

enum test_id {
    T_BOOLEAN,
    T_CALLABLE,
    T_DEFINED,
    T_DIVISIBLEBY,
    T_EQ,
    T_ESCAPED,
    T_EVEN,
    T_FALSE,
    T_FILTER,
    T_FLOAT,
    T_GE,
    T_GT,
    T_IN,
    T_INTEGER,
    T_ITERABLE,
    T_LE,
    T_LOWER,
    T_LT,
    T_MAPPING,
    T_NE,
    T_NONE,
    T_NUMBER,
    T_ODD,
    T_SAMEAS,
    T_SEQUENCE,
    T_STRING,
    T_TEST,
    T_TRUE,
    T_UNDEFINED,
    T_UPPER,
};

enum builtin_id {
    B_RANGE,
    B_DICT,
    B_NAMESPACE,
    B_RAISE_EXCEPTION,
    B_STRFTIME_NOW,
    B_CYCLER,
    B_JOINER,
    B_LIPSUM,
};

/* -1 when unknown. */
int builtins_filter_id(const char *name);
int builtins_test_id(const char *name);
int builtins_global_id(const char *name);
const char *builtins_filter_name(int id);
const char *builtins_test_name(int id);

/* ---- rendering (render.c, builtins.c) ---- */

struct render;

/* Arguments of a call: positional values and keyword (name, value) pairs, all borrowed. */
struct call_args {
    struct template_value **pos;
    size_t n_pos;
    const char **kw_names;
    struct template_value **kw;
    size_t n_kw;
};

/* Sets the render's error (TEMPLATE_ERROR) with the current line; returns NULL. */
struct template_value *render_fail(struct render *r, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
struct template_value *render_limit(struct render *r, const char *what);
struct template_value *render_nomem(struct render *r);
size_t render_max_output(const struct render *r);
bool render_failed(const struct render *r);
/* Calls a callable value (macro, builtin, method, cycler...). */
struct template_value *render_call(struct render *r, struct template_value *callee,
                                   const struct call_args *args);
/* jinja2's environment.getattr / getitem. New reference (undefined when missing), NULL on
 * error. */
struct template_value *render_getattr(struct render *r, struct template_value *obj,
                                      const char *name, size_t len);
struct template_value *render_getitem(struct render *r, struct template_value *obj,
                                      struct template_value *key);
/* Items of an iterable as a new list (dict: keys; string: characters; undefined: empty). */
struct template_value *render_iterate(struct render *r, struct template_value *v);
/* One test / filter applied to a value. */
struct template_value *builtins_filter(struct render *r, int id, struct template_value *v,
                                       const struct call_args *args);
int builtins_test(struct render *r, int id, struct template_value *v,
                  const struct call_args *args); /* 0/1, -1 on error */
struct template_value *builtins_global(struct render *r, int id, const struct call_args *args);
struct template_value *builtins_method(struct render *r, int id, struct template_value *self,
                                       const struct call_args *args);
/* The method id of attribute name on v's type, or -1; *unsafe when it exists but the immutable
 * sandbox forbids it (list.append, dict.update, ...). */
int builtins_method_id(const struct template_value *v, const char *name, size_t len, bool *unsafe);
/* The string value of v as str() gives it (new reference). */
struct template_value *render_to_string(struct render *r, struct template_value *v);
time_t render_now(const struct render *r);
/* Remembers a namespace or loop so that the end of the render can clear it (cycles). */
bool render_remember_cyclic(struct render *r, struct template_value *v);
/* raise_exception(msg): stops the render with TEMPLATE_RAISED. */
void render_raise(struct render *r, const char *msg, size_t len);
/* Python's `fmt % args`. */
struct template_value *render_percent_format(struct render *r, struct template_value *fmt,
                                             struct template_value *args);
bool render_step(struct render *r); /* counts one step; false when the limit is hit */
bool render_add_steps(struct render *r, uint64_t n); /* counts n steps (bulk work) */

#endif
