/*
 * parser.c: tokens -> syntax tree, following jinja2's Parser method by method (parse_or,
 * parse_and, ..., parse_unary with filters binding tighter than binary operators, tests with a
 * bare argument `is divisibleby 3`, tuples without parentheses in `for` and `set`), and
 * template_compile / template_destroy.
 *
 * Everything outside the supported subset is refused here with its line and column: unknown
 * statements, filters and tests, `extends`/`include`/`import`, `*args` in calls. The parser
 * bounds its own recursion (TEMPLATE_MAX_NESTING) and the height of every tree
 * (TEMPLATE_MAX_HEIGHT), which in turn bounds every recursive walk of the tree.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "template_internal.h"

struct parser {
    struct token *toks;
    size_t n, pos;
    char *err;
    size_t err_size;
    bool failed;
    int depth;      /* recursion of the parser */
    int loop_depth; /* for loops around the current statement (break/continue) */
    bool iterates_content;
};

static void perr_at(struct parser *p, const struct token *t, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void perr_at(struct parser *p, const struct token *t, const char *fmt, ...) {
    if (p->failed) {
        return;
    }
    p->failed = true;
    int n = snprintf(p->err, p->err_size, "line %u, column %u: ", t->line, t->col);
    if (n >= 0 && (size_t)n < p->err_size) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(p->err + n, p->err_size - (size_t)n, fmt, ap);
        va_end(ap);
    }
}

static struct token *cur(struct parser *p) {
    return &p->toks[p->pos];
}

static struct token *peek(struct parser *p, size_t k) {
    size_t i = p->pos + k;
    return &p->toks[i < p->n ? i : p->n - 1];
}

static struct token *advance(struct parser *p) {
    struct token *t = &p->toks[p->pos];
    if (p->pos + 1 < p->n) {
        p->pos++;
    }
    return t;
}

static bool is_op(const struct token *t, const char *op) {
    return t->type == TOK_OP && strcmp(t->op, op) == 0;
}

static bool is_name(const struct token *t, const char *name) {
    return t->type == TOK_NAME && strcmp(t->str, name) == 0;
}

static const char *describe(const struct token *t) {
    switch (t->type) {
    case TOK_DATA:
        return "template data";
    case TOK_VAR_BEGIN:
        return "begin of print statement";
    case TOK_VAR_END:
        return "end of print statement";
    case TOK_BLOCK_BEGIN:
        return "begin of statement block";
    case TOK_BLOCK_END:
        return "end of statement block";
    case TOK_NAME:
        return t->str;
    case TOK_STRING:
        return "string";
    case TOK_INT:
        return "integer";
    case TOK_FLOAT:
        return "float";
    case TOK_OP:
        return t->op;
    case TOK_RAW:
        return "raw data";
    default:
        return "end of template";
    }
}

static bool expect_op(struct parser *p, const char *op) {
    if (p->failed) {
        return false;
    }
    if (!is_op(cur(p), op)) {
        perr_at(p, cur(p), "expected '%s', got '%s'", op, describe(cur(p)));
        return false;
    }
    advance(p);
    return true;
}

static bool expect_type(struct parser *p, enum tok_type type, const char *what) {
    if (p->failed) {
        return false;
    }
    if (cur(p)->type != type) {
        perr_at(p, cur(p), "expected %s, got '%s'", what, describe(cur(p)));
        return false;
    }
    advance(p);
    return true;
}

/* ---- nodes ---- */

static void list_free(struct node_list *l) {
    for (size_t i = 0; i < l->n; i++) {
        node_free(l->v[i]);
    }
    free(l->v);
}

void node_free(struct node *n) {
    if (n == NULL) {
        return;
    }
    node_free(n->a);
    node_free(n->b);
    node_free(n->c);
    node_free(n->d);
    list_free(&n->body);
    list_free(&n->orelse);
    list_free(&n->params);
    value_free_immortal(n->value);
    free(n->str);
    free(n->str2);
    free(n);
}

static struct node *new_node(struct parser *p, enum node_kind kind, const struct token *at) {
    struct node *n = calloc(1, sizeof(*n));
    if (n == NULL) {
        perr_at(p, at, "out of memory");
        return NULL;
    }
    n->kind = kind;
    n->line = at->line;
    n->col = at->col;
    n->height = 1;
    return n;
}

static void grow_height(struct node *n, const struct node *child) {
    if (child != NULL && child->height + 1 > n->height) {
        n->height = child->height + 1;
    }
}

/* Checks the height of n once its children are attached; frees it on failure. */
static struct node *finish(struct parser *p, struct node *n) {
    if (n == NULL) {
        return NULL;
    }
    grow_height(n, n->a);
    grow_height(n, n->b);
    grow_height(n, n->c);
    grow_height(n, n->d);
    const struct node_list *lists[3] = {&n->body, &n->orelse, &n->params};
    for (int k = 0; k < 3; k++) {
        for (size_t i = 0; i < lists[k]->n; i++) {
            grow_height(n, lists[k]->v[i]);
        }
    }
    if (n->height > TEMPLATE_MAX_HEIGHT) {
        struct token t = {.line = n->line, .col = n->col};
        perr_at(p, &t, "expression or statement nested too deeply");
    }
    if (p->failed) {
        node_free(n);
        return NULL;
    }
    return n;
}

static bool list_push(struct parser *p, struct node_list *l, struct node *n) {
    if (n == NULL) {
        return false;
    }
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 4;
        struct node **v = realloc(l->v, cap * sizeof(*v));
        if (v == NULL) {
            perr_at(p, cur(p), "out of memory");
            node_free(n);
            return false;
        }
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n++] = n;
    return true;
}

static char *dup_str(struct parser *p, const char *s) {
    char *d = strdup(s);
    if (d == NULL) {
        perr_at(p, cur(p), "out of memory");
    }
    return d;
}

static struct node *const_node(struct parser *p, const struct token *at, struct template_value *v) {
    if (v == NULL) {
        perr_at(p, at, "out of memory");
        return NULL;
    }
    if (v->refs != VALUE_IMMORTAL) {
        v->refs = VALUE_IMMORTAL; /* (the statics already are: never written here) */
    }
    struct node *n = new_node(p, E_CONST, at);
    if (n == NULL) {
        value_free_immortal(v);
        return NULL;
    }
    n->value = v;
    return n;
}

/* ---- expressions ---- */

static struct node *parse_expression(struct parser *p, bool with_condexpr);
static struct node *parse_tuple(struct parser *p, bool simplified, bool with_condexpr,
                                const char *extra_end, bool explicit_parens);
static struct node *parse_unary(struct parser *p, bool with_filter);
static struct node *parse_primary(struct parser *p);
static struct node *parse_postfix(struct parser *p, struct node *n);
static struct node *parse_filter(struct parser *p, struct node *operand, bool start_inline);

static bool enter(struct parser *p) {
    if (++p->depth > TEMPLATE_MAX_NESTING) {
        perr_at(p, cur(p), "nesting too deep");
        return false;
    }
    return !p->failed;
}

static void leave(struct parser *p) {
    p->depth--;
}

/* Call arguments `(a, b, k=v)`: positional into args, keyword (N_PARAM) into kwargs. */
static bool parse_call_args(struct parser *p, struct node_list *args, struct node_list *kwargs) {
    struct token *open = cur(p);
    if (!expect_op(p, "(")) {
        return false;
    }
    bool require_comma = false;
    while (!p->failed && !is_op(cur(p), ")")) {
        if (require_comma) {
            if (!expect_op(p, ",")) {
                return false;
            }
            if (is_op(cur(p), ")")) {
                break;
            }
        }
        if (is_op(cur(p), "*") || is_op(cur(p), "**")) {
            perr_at(p, cur(p), "*args and **kwargs in calls are not supported");
            return false;
        }
        if (cur(p)->type == TOK_NAME && is_op(peek(p, 1), "=")) {
            struct token *name = advance(p);
            advance(p);
            struct node *kw = new_node(p, N_PARAM, name);
            if (kw == NULL) {
                return false;
            }
            kw->str = dup_str(p, name->str);
            kw->a = parse_expression(p, true);
            if (!list_push(p, kwargs, finish(p, kw))) {
                return false;
            }
        } else {
            if (kwargs->n > 0) {
                perr_at(p, open, "invalid syntax for function call expression");
                return false;
            }
            if (!list_push(p, args, parse_expression(p, true))) {
                return false;
            }
        }
        require_comma = true;
    }
    return expect_op(p, ")");
}

static struct node *parse_call(struct parser *p, struct node *callee) {
    struct node *n = new_node(p, E_CALL, cur(p));
    if (n == NULL) {
        node_free(callee);
        return NULL;
    }
    n->a = callee;
    parse_call_args(p, &n->body, &n->params);
    return finish(p, n);
}

/* A filter or test name, dotted names joined (jinja2 allows `foo.bar`). */
static char *parse_dotted_name(struct parser *p) {
    struct token *t = cur(p);
    if (!expect_type(p, TOK_NAME, "a name")) {
        return NULL;
    }
    struct buf b;
    buf_init(&b, 4096);
    buf_adds(&b, t->str);
    while (is_op(cur(p), ".") && peek(p, 1)->type == TOK_NAME) {
        advance(p);
        buf_addc(&b, '.');
        buf_adds(&b, advance(p)->str);
    }
    char *s = buf_ok(&b) ? buf_take(&b, NULL) : NULL;
    buf_free(&b);
    if (s == NULL) {
        perr_at(p, t, "out of memory");
    }
    return s;
}

static struct node *parse_filter(struct parser *p, struct node *operand, bool start_inline) {
    struct node *node = operand;
    while (!p->failed && (is_op(cur(p), "|") || start_inline)) {
        if (!start_inline) {
            advance(p);
        }
        start_inline = false;
        struct token *t = cur(p);
        char *name = parse_dotted_name(p);
        if (name == NULL) {
            node_free(node);
            return NULL;
        }
        int id = builtins_filter_id(name);
        if (id < 0) {
            perr_at(p, t, "no filter named '%s'", name);
            free(name);
            node_free(node);
            return NULL;
        }
        free(name);
        struct node *f = new_node(p, E_FILTER, t);
        if (f == NULL) {
            node_free(node);
            return NULL;
        }
        f->id = id;
        f->a = node;
        if (is_op(cur(p), "(")) {
            if (!enter(p)) {
                leave(p);
                node_free(f);
                return NULL;
            }
            parse_call_args(p, &f->body, &f->params);
            leave(p);
        }
        node = finish(p, f);
        if (node == NULL) {
            return NULL;
        }
    }
    return node;
}

static struct node *parse_test(struct parser *p, struct node *operand) {
    struct token *is_tok = advance(p); /* 'is' */
    bool negated = false;
    if (is_name(cur(p), "not")) {
        advance(p);
        negated = true;
    }
    struct token *t = cur(p);
    char *name = parse_dotted_name(p);
    if (name == NULL) {
        node_free(operand);
        return NULL;
    }
    int id = builtins_test_id(name);
    if (id < 0) {
        perr_at(p, t, "no test named '%s'", name);
        free(name);
        node_free(operand);
        return NULL;
    }
    free(name);
    struct node *n = new_node(p, E_TEST, is_tok);
    if (n == NULL) {
        node_free(operand);
        return NULL;
    }
    n->id = id;
    n->a = operand;
    struct token *c = cur(p);
    if (is_op(c, "(")) {
        parse_call_args(p, &n->body, &n->params);
    } else if ((c->type == TOK_NAME || c->type == TOK_STRING || c->type == TOK_INT ||
                c->type == TOK_FLOAT || is_op(c, "(") || is_op(c, "[") || is_op(c, "{")) &&
               !is_name(c, "else") && !is_name(c, "or") && !is_name(c, "and")) {
        if (is_name(c, "is")) {
            perr_at(p, c, "You cannot chain multiple tests with is");
        } else {
            struct node *arg = parse_primary(p);
            arg = arg != NULL ? parse_postfix(p, arg) : NULL;
            list_push(p, &n->body, arg);
        }
    }
    n = finish(p, n);
    if (n != NULL && negated) {
        struct node *no = new_node(p, E_NOT, is_tok);
        if (no == NULL) {
            node_free(n);
            return NULL;
        }
        no->a = n;
        n = finish(p, no);
    }
    return n;
}

static struct node *parse_subscribed(struct parser *p) {
    struct token *start = cur(p);
    struct node *args[3] = {NULL, NULL, NULL};
    if (is_op(cur(p), ":")) {
        advance(p);
    } else {
        struct node *e = parse_expression(p, true);
        if (e == NULL || !is_op(cur(p), ":")) {
            return e;
        }
        advance(p);
        args[0] = e;
    }
    if (!is_op(cur(p), ":") && !is_op(cur(p), "]") && !is_op(cur(p), ",")) {
        args[1] = parse_expression(p, true);
    }
    if (is_op(cur(p), ":")) {
        advance(p);
        if (!is_op(cur(p), "]") && !is_op(cur(p), ",")) {
            args[2] = parse_expression(p, true);
        }
    }
    struct node *n = new_node(p, E_SLICE, start);
    if (n == NULL) {
        node_free(args[0]);
        node_free(args[1]);
        node_free(args[2]);
        return NULL;
    }
    /* a is filled with the sliced object by parse_subscript. */
    n->b = args[0];
    n->c = args[1];
    n->d = args[2];
    return n;
}

static struct node *parse_subscript(struct parser *p, struct node *obj) {
    struct token *t = advance(p);
    if (is_op(t, ".")) {
        struct token *attr = advance(p);
        if (attr->type == TOK_NAME) {
            struct node *n = new_node(p, E_GETATTR, t);
            if (n == NULL) {
                node_free(obj);
                return NULL;
            }
            n->a = obj;
            n->str = dup_str(p, attr->str);
            n->len = attr->str != NULL ? strlen(attr->str) : 0;
            return finish(p, n);
        }
        if (attr->type != TOK_INT) {
            perr_at(p, attr, "expected name or number");
            node_free(obj);
            return NULL;
        }
        struct node *n = new_node(p, E_GETITEM, t);
        if (n == NULL) {
            node_free(obj);
            return NULL;
        }
        n->a = obj;
        n->b = const_node(p, attr, template_value_int(attr->ival));
        return finish(p, n);
    }
    /* '[' */
    struct node_list args = {0};
    while (!p->failed && !is_op(cur(p), "]")) {
        if (args.n > 0 && !expect_op(p, ",")) {
            break;
        }
        list_push(p, &args, parse_subscribed(p));
    }
    expect_op(p, "]");
    if (p->failed) {
        list_free(&args);
        node_free(obj);
        return NULL;
    }
    if (args.n == 0) {
        perr_at(p, t, "expected subscript expression");
        list_free(&args);
        node_free(obj);
        return NULL;
    }
    struct node *key;
    if (args.n == 1) {
        key = args.v[0];
        free(args.v);
    } else {
        key = new_node(p, E_TUPLE, t);
        if (key == NULL) {
            list_free(&args);
            node_free(obj);
            return NULL;
        }
        key->body = args;
        key = finish(p, key);
    }
    if (key != NULL && key->kind == E_SLICE && key->a == NULL) {
        key->a = obj;
        return finish(p, key);
    }
    struct node *n = new_node(p, E_GETITEM, t);
    if (n == NULL) {
        node_free(key);
        node_free(obj);
        return NULL;
    }
    n->a = obj;
    n->b = key;
    return finish(p, n);
}

static struct node *parse_postfix(struct parser *p, struct node *n) {
    while (n != NULL && !p->failed) {
        if (is_op(cur(p), ".") || is_op(cur(p), "[")) {
            n = parse_subscript(p, n);
        } else if (is_op(cur(p), "(")) {
            n = parse_call(p, n);
        } else {
            break;
        }
    }
    return n;
}

static struct node *parse_filter_expr(struct parser *p, struct node *n) {
    while (n != NULL && !p->failed) {
        if (is_op(cur(p), "|")) {
            n = parse_filter(p, n, false);
        } else if (is_name(cur(p), "is")) {
            n = parse_test(p, n);
        } else if (is_op(cur(p), "(")) {
            n = parse_call(p, n);
        } else {
            break;
        }
    }
    return n;
}

static struct node *parse_seq(struct parser *p, enum node_kind kind, const char *close,
                              bool is_dict) {
    struct token *t = advance(p);
    struct node *n = new_node(p, kind, t);
    if (n == NULL) {
        return NULL;
    }
    while (!p->failed && !is_op(cur(p), close)) {
        if (n->body.n > 0 && !expect_op(p, ",")) {
            break;
        }
        if (is_op(cur(p), close)) {
            break;
        }
        if (!list_push(p, &n->body, parse_expression(p, true))) {
            break;
        }
        if (is_dict) {
            if (!expect_op(p, ":")) {
                break;
            }
            if (!list_push(p, &n->body, parse_expression(p, true))) {
                break;
            }
        }
    }
    expect_op(p, close);
    return finish(p, n);
}

static struct node *parse_primary(struct parser *p) {
    struct token *t = cur(p);
    if (!enter(p)) {
        leave(p);
        return NULL;
    }
    struct node *n = NULL;
    if (t->type == TOK_NAME) {
        advance(p);
        if (strcmp(t->str, "true") == 0 || strcmp(t->str, "True") == 0) {
            n = const_node(p, t, &value_true_static);
        } else if (strcmp(t->str, "false") == 0 || strcmp(t->str, "False") == 0) {
            n = const_node(p, t, &value_false_static);
        } else if (strcmp(t->str, "none") == 0 || strcmp(t->str, "None") == 0) {
            n = const_node(p, t, &value_none_static);
        } else {
            n = new_node(p, E_NAME, t);
            if (n != NULL) {
                n->str = dup_str(p, t->str);
                n->len = strlen(t->str);
            }
        }
    } else if (t->type == TOK_STRING) {
        struct buf b;
        buf_init(&b, SIZE_MAX / 2);
        while (cur(p)->type == TOK_STRING) {
            struct token *s = advance(p);
            buf_add(&b, s->str, s->len);
        }
        size_t len = 0;
        char *s = buf_ok(&b) ? buf_take(&b, &len) : NULL;
        buf_free(&b);
        n = s != NULL ? const_node(p, t, value_string_take(s, len)) : NULL;
        if (s == NULL) {
            perr_at(p, t, "out of memory");
        }
    } else if (t->type == TOK_INT) {
        advance(p);
        n = const_node(p, t, template_value_int(t->ival));
    } else if (t->type == TOK_FLOAT) {
        advance(p);
        n = const_node(p, t, value_float(t->fval));
    } else if (is_op(t, "(")) {
        advance(p);
        n = parse_tuple(p, false, true, NULL, true);
        if (!expect_op(p, ")")) {
            node_free(n);
            n = NULL;
        }
    } else if (is_op(t, "[")) {
        n = parse_seq(p, E_LIST, "]", false);
    } else if (is_op(t, "{")) {
        n = parse_seq(p, E_DICT, "}", true);
    } else {
        perr_at(p, t, "unexpected '%s'", describe(t));
    }
    leave(p);
    if (p->failed) {
        node_free(n);
        return NULL;
    }
    return n;
}

static struct node *parse_unary(struct parser *p, bool with_filter) {
    struct token *t = cur(p);
    if (!enter(p)) {
        leave(p);
        return NULL;
    }
    struct node *n;
    if (is_op(t, "-") || is_op(t, "+")) {
        advance(p);
        n = new_node(p, is_op(t, "-") ? E_NEG : E_POS, t);
        if (n != NULL) {
            n->a = parse_unary(p, false);
            n = finish(p, n);
        }
    } else {
        n = parse_primary(p);
    }
    n = parse_postfix(p, n);
    if (with_filter) {
        n = parse_filter_expr(p, n);
    }
    leave(p);
    return n;
}

static struct node *binop(struct parser *p, enum node_kind kind, int op, const struct token *t,
                          struct node *left, struct node *right) {
    struct node *n = new_node(p, kind, t);
    if (n == NULL) {
        node_free(left);
        node_free(right);
        return NULL;
    }
    n->op = op;
    n->a = left;
    n->b = right;
    return finish(p, n);
}

static struct node *parse_pow(struct parser *p) {
    struct node *left = parse_unary(p, true);
    while (left != NULL && is_op(cur(p), "**")) {
        struct token *t = advance(p);
        left = binop(p, E_BINOP, OP_POW, t, left, parse_unary(p, true));
    }
    return left;
}

static struct node *parse_math2(struct parser *p) {
    struct node *left = parse_pow(p);
    while (left != NULL) {
        struct token *t = cur(p);
        int op = is_op(t, "*")    ? OP_MUL
                 : is_op(t, "/")  ? OP_DIV
                 : is_op(t, "//") ? OP_FLOORDIV
                 : is_op(t, "%")  ? OP_MOD
                                  : -1;
        if (op < 0) {
            break;
        }
        advance(p);
        left = binop(p, E_BINOP, op, t, left, parse_pow(p));
    }
    return left;
}

static struct node *parse_concat(struct parser *p) {
    struct token *t = cur(p);
    struct node *first = parse_math2(p);
    if (first == NULL || !is_op(cur(p), "~")) {
        return first;
    }
    struct node *n = new_node(p, E_CONCAT, t);
    if (n == NULL || !list_push(p, &n->body, first)) {
        node_free(n);
        return NULL;
    }
    while (!p->failed && is_op(cur(p), "~")) {
        advance(p);
        list_push(p, &n->body, parse_math2(p));
    }
    return finish(p, n);
}

static struct node *parse_math1(struct parser *p) {
    struct node *left = parse_concat(p);
    while (left != NULL && (is_op(cur(p), "+") || is_op(cur(p), "-"))) {
        struct token *t = advance(p);
        left = binop(p, E_BINOP, is_op(t, "+") ? OP_ADD : OP_SUB, t, left, parse_concat(p));
    }
    return left;
}

static struct node *parse_compare(struct parser *p) {
    struct token *start = cur(p);
    struct node *expr = parse_math1(p);
    if (expr == NULL) {
        return NULL;
    }
    struct node *cmp = NULL;
    while (!p->failed) {
        struct token *t = cur(p);
        int op;
        if (is_op(t, "==")) {
            op = CMP_EQ;
        } else if (is_op(t, "!=")) {
            op = CMP_NE;
        } else if (is_op(t, "<")) {
            op = CMP_LT;
        } else if (is_op(t, "<=")) {
            op = CMP_LE;
        } else if (is_op(t, ">")) {
            op = CMP_GT;
        } else if (is_op(t, ">=")) {
            op = CMP_GE;
        } else if (is_name(t, "in")) {
            op = CMP_IN;
        } else if (is_name(t, "not") && is_name(peek(p, 1), "in")) {
            advance(p);
            op = CMP_NOTIN;
        } else {
            break;
        }
        advance(p);
        if (cmp == NULL) {
            cmp = new_node(p, E_COMPARE, start);
            if (cmp == NULL) {
                node_free(expr);
                return NULL;
            }
            cmp->a = expr;
        }
        struct node *operand = new_node(p, E_OPERAND, t);
        if (operand == NULL) {
            break;
        }
        operand->op = op;
        operand->a = parse_math1(p);
        list_push(p, &cmp->body, finish(p, operand));
    }
    if (cmp == NULL) {
        return expr;
    }
    return finish(p, cmp);
}

static struct node *parse_not(struct parser *p) {
    if (is_name(cur(p), "not")) {
        struct token *t = advance(p);
        if (!enter(p)) {
            leave(p);
            return NULL;
        }
        struct node *n = new_node(p, E_NOT, t);
        if (n != NULL) {
            n->a = parse_not(p);
            n = finish(p, n);
        }
        leave(p);
        return n;
    }
    return parse_compare(p);
}

static struct node *parse_and(struct parser *p) {
    struct node *left = parse_not(p);
    while (left != NULL && is_name(cur(p), "and")) {
        struct token *t = advance(p);
        left = binop(p, E_AND, 0, t, left, parse_not(p));
    }
    return left;
}

static struct node *parse_or(struct parser *p) {
    struct node *left = parse_and(p);
    while (left != NULL && is_name(cur(p), "or")) {
        struct token *t = advance(p);
        left = binop(p, E_OR, 0, t, left, parse_and(p));
    }
    return left;
}

static struct node *parse_condexpr(struct parser *p) {
    struct node *expr1 = parse_or(p);
    while (expr1 != NULL && is_name(cur(p), "if")) {
        struct token *t = advance(p);
        struct node *n = new_node(p, E_COND, t);
        if (n == NULL) {
            node_free(expr1);
            return NULL;
        }
        n->a = expr1;
        n->b = parse_or(p);
        if (is_name(cur(p), "else")) {
            advance(p);
            if (enter(p)) {
                n->c = parse_condexpr(p);
            }
            leave(p);
        }
        expr1 = finish(p, n);
    }
    return expr1;
}

static struct node *parse_expression(struct parser *p, bool with_condexpr) {
    if (!enter(p)) {
        leave(p);
        return NULL;
    }
    struct node *n = with_condexpr ? parse_condexpr(p) : parse_or(p);
    leave(p);
    if (p->failed) {
        node_free(n);
        return NULL;
    }
    return n;
}

static bool is_tuple_end(struct parser *p, const char *extra_end) {
    struct token *t = cur(p);
    if (t->type == TOK_VAR_END || t->type == TOK_BLOCK_END || is_op(t, ")")) {
        return true;
    }
    return extra_end != NULL && is_name(t, extra_end);
}

static struct node *parse_tuple(struct parser *p, bool simplified, bool with_condexpr,
                                const char *extra_end, bool explicit_parens) {
    struct token *start = cur(p);
    struct node_list args = {0};
    bool is_tuple = false;
    while (!p->failed) {
        if (args.n > 0 && !expect_op(p, ",")) {
            break;
        }
        if (is_tuple_end(p, extra_end)) {
            break;
        }
        struct node *e = simplified ? parse_primary(p) : parse_expression(p, with_condexpr);
        if (!list_push(p, &args, e)) {
            break;
        }
        if (is_op(cur(p), ",")) {
            is_tuple = true;
        } else {
            break;
        }
    }
    if (p->failed) {
        list_free(&args);
        return NULL;
    }
    if (!is_tuple) {
        if (args.n > 0) {
            struct node *n = args.v[0];
            free(args.v);
            return n;
        }
        if (!explicit_parens) {
            perr_at(p, cur(p), "Expected an expression, got '%s'", describe(cur(p)));
            list_free(&args);
            return NULL;
        }
    }
    struct node *n = new_node(p, E_TUPLE, start);
    if (n == NULL) {
        list_free(&args);
        return NULL;
    }
    n->body = args;
    return finish(p, n);
}

/* ---- statements ---- */

static bool parse_body(struct parser *p, struct node_list *body, const char *const *end_names,
                       bool drop_needle);

/* An assignment target: a name, a tuple of names, or (with_namespace) ns.attr. */
static struct node *parse_assign_target(struct parser *p, bool with_tuple, bool with_namespace,
                                        const char *extra_end) {
    struct token *t = cur(p);
    if (with_namespace && t->type == TOK_NAME && is_op(peek(p, 1), ".") &&
        peek(p, 2)->type == TOK_NAME) {
        advance(p);
        advance(p);
        struct token *attr = advance(p);
        struct node *n = new_node(p, E_NSREF, t);
        if (n != NULL) {
            n->str = dup_str(p, t->str);
            n->str2 = dup_str(p, attr->str);
        }
        return finish(p, n);
    }
    struct node *n;
    if (with_tuple) {
        n = parse_tuple(p, true, true, extra_end, false);
    } else {
        if (t->type != TOK_NAME) {
            perr_at(p, t, "expected a name, got '%s'", describe(t));
            return NULL;
        }
        n = parse_primary(p);
    }
    if (n == NULL) {
        return NULL;
    }
    bool ok = n->kind == E_NAME;
    if (n->kind == E_TUPLE) {
        ok = true;
        for (size_t i = 0; i < n->body.n; i++) {
            ok = ok && n->body.v[i]->kind == E_NAME;
        }
    }
    if (!ok) {
        perr_at(p, t, "can't assign to this expression");
        node_free(n);
        return NULL;
    }
    return n;
}

static const char *const end_for[] = {"endfor", "else", NULL};
static const char *const end_for_else[] = {"endfor", NULL};
static const char *const end_if[] = {"elif", "else", "endif", NULL};
static const char *const end_if_else[] = {"endif", NULL};
static const char *const end_set[] = {"endset", NULL};
static const char *const end_macro[] = {"endmacro", NULL};
static const char *const end_call[] = {"endcall", NULL};
static const char *const end_filter[] = {"endfilter", NULL};
static const char *const end_with[] = {"endwith", NULL};
static const char *const end_generation[] = {"endgeneration", NULL};

static bool iterates_content(const struct node *iter) {
    while (iter != NULL && iter->kind == E_FILTER) {
        iter = iter->a;
    }
    if (iter == NULL) {
        return false;
    }
    if (iter->kind == E_GETATTR && strcmp(iter->str, "content") == 0) {
        return true;
    }
    return iter->kind == E_GETITEM && iter->b != NULL && iter->b->kind == E_CONST &&
           iter->b->value->type == TEMPLATE_STRING &&
           strcmp(iter->b->value->u.str.s, "content") == 0;
}

static struct node *parse_for(struct parser *p, struct token *t) {
    struct node *n = new_node(p, N_FOR, t);
    if (n == NULL) {
        return NULL;
    }
    n->a = parse_assign_target(p, true, false, "in");
    if (n->a != NULL && is_name(cur(p), "in")) {
        advance(p);
        n->b = parse_tuple(p, false, false, "recursive", false);
        if (n->b != NULL && iterates_content(n->b)) {
            p->iterates_content = true;
        }
        if (is_name(cur(p), "if")) {
            advance(p);
            n->c = parse_expression(p, true);
        }
        if (is_name(cur(p), "recursive")) {
            advance(p);
            n->op = 1; /* loop(items) renders the body again, one level deeper */
        }
        p->loop_depth++;
        bool ok = parse_body(p, &n->body, end_for, false);
        p->loop_depth--;
        if (ok && is_name(advance(p), "else")) {
            parse_body(p, &n->orelse, end_for_else, true);
        }
    } else if (n->a != NULL) {
        perr_at(p, cur(p), "expected 'in', got '%s'", describe(cur(p)));
    }
    return finish(p, n);
}

static struct node *parse_if(struct parser *p, struct token *t) {
    struct node *n = new_node(p, N_IF, t);
    if (n == NULL) {
        return NULL;
    }
    n->a = parse_tuple(p, false, false, NULL, false);
    if (n->a == NULL || !parse_body(p, &n->body, end_if, false)) {
        node_free(n);
        return NULL;
    }
    struct token *end = advance(p);
    if (is_name(end, "elif")) {
        if (enter(p)) {
            list_push(p, &n->orelse, parse_if(p, end));
        }
        leave(p);
        return finish(p, n);
    }
    if (is_name(end, "else")) {
        parse_body(p, &n->orelse, end_if_else, true);
    }
    return finish(p, n);
}

static bool parse_signature(struct parser *p, struct node_list *params) {
    if (!expect_op(p, "(")) {
        return false;
    }
    bool has_default = false;
    while (!p->failed && !is_op(cur(p), ")")) {
        if (params->n > 0 && !expect_op(p, ",")) {
            return false;
        }
        struct token *t = cur(p);
        if (!expect_type(p, TOK_NAME, "a parameter name")) {
            return false;
        }
        struct node *param = new_node(p, N_PARAM, t);
        if (param == NULL) {
            return false;
        }
        param->str = dup_str(p, t->str);
        if (is_op(cur(p), "=")) {
            advance(p);
            param->a = parse_expression(p, true);
            has_default = true;
        } else if (has_default) {
            perr_at(p, t, "non-default argument follows default argument");
        }
        if (!list_push(p, params, finish(p, param))) {
            return false;
        }
    }
    return expect_op(p, ")");
}

/* Whether a macro body reads `varargs` / `kwargs` (jinja2 accepts extra arguments only then). */
static bool uses_name(const struct node *n, const char *name) {
    if (n == NULL) {
        return false;
    }
    if (n->kind == E_NAME && strcmp(n->str, name) == 0) {
        return true;
    }
    if (uses_name(n->a, name) || uses_name(n->b, name) || uses_name(n->c, name) ||
        uses_name(n->d, name)) {
        return true;
    }
    const struct node_list *lists[3] = {&n->body, &n->orelse, &n->params};
    for (int k = 0; k < 3; k++) {
        for (size_t i = 0; i < lists[k]->n; i++) {
            if (uses_name(lists[k]->v[i], name)) {
                return true;
            }
        }
    }
    return false;
}

static void mark_macro(struct node *n) {
    if (n == NULL) {
        return;
    }
    for (size_t i = 0; i < n->body.n; i++) {
        n->op |= uses_name(n->body.v[i], "varargs") ? 1 : 0;
        n->op |= uses_name(n->body.v[i], "kwargs") ? 2 : 0;
    }
}

static struct node *parse_statement(struct parser *p) {
    struct token *t = cur(p);
    if (t->type != TOK_NAME) {
        perr_at(p, t, "tag name expected");
        return NULL;
    }
    const char *name = t->str;
    if (strcmp(name, "for") == 0) {
        advance(p);
        return parse_for(p, t);
    }
    if (strcmp(name, "if") == 0) {
        advance(p);
        return parse_if(p, t);
    }
    if (strcmp(name, "set") == 0) {
        advance(p);
        struct node *target = parse_assign_target(p, true, true, NULL);
        if (target == NULL) {
            return NULL;
        }
        if (is_op(cur(p), "=")) {
            advance(p);
            struct node *n = new_node(p, N_SET, t);
            if (n == NULL) {
                node_free(target);
                return NULL;
            }
            n->a = target;
            n->b = parse_tuple(p, false, true, NULL, false);
            return finish(p, n);
        }
        struct node *n = new_node(p, N_SETBLOCK, t);
        if (n == NULL) {
            node_free(target);
            return NULL;
        }
        n->a = target;
        n->b = parse_filter(p, NULL, false);
        parse_body(p, &n->body, end_set, true);
        return finish(p, n);
    }
    if (strcmp(name, "macro") == 0) {
        advance(p);
        struct token *nt = cur(p);
        if (!expect_type(p, TOK_NAME, "a macro name")) {
            return NULL;
        }
        struct node *n = new_node(p, N_MACRO, t);
        if (n == NULL) {
            return NULL;
        }
        n->str = dup_str(p, nt->str);
        int saved = p->loop_depth;
        p->loop_depth = 0;
        if (parse_signature(p, &n->params)) {
            parse_body(p, &n->body, end_macro, true);
        }
        p->loop_depth = saved;
        n = finish(p, n);
        mark_macro(n);
        return n;
    }
    if (strcmp(name, "call") == 0) {
        advance(p);
        struct node *n = new_node(p, N_CALLBLOCK, t);
        if (n == NULL) {
            return NULL;
        }
        if (is_op(cur(p), "(")) {
            parse_signature(p, &n->params);
        }
        if (!p->failed) {
            n->a = parse_expression(p, true);
            if (n->a != NULL && n->a->kind != E_CALL) {
                perr_at(p, t, "expected call");
            }
        }
        int saved = p->loop_depth;
        p->loop_depth = 0;
        if (!p->failed) {
            parse_body(p, &n->body, end_call, true);
        }
        p->loop_depth = saved;
        n = finish(p, n);
        mark_macro(n);
        return n;
    }
    if (strcmp(name, "filter") == 0) {
        advance(p);
        struct node *n = new_node(p, N_FILTERBLOCK, t);
        if (n == NULL) {
            return NULL;
        }
        n->a = parse_filter(p, NULL, true);
        if (n->a != NULL) {
            parse_body(p, &n->body, end_filter, true);
        }
        return finish(p, n);
    }
    if (strcmp(name, "with") == 0) {
        advance(p);
        struct node *n = new_node(p, N_WITH, t);
        if (n == NULL) {
            return NULL;
        }
        while (!p->failed && cur(p)->type != TOK_BLOCK_END) {
            if (n->params.n > 0 && !expect_op(p, ",")) {
                break;
            }
            struct token *nt = cur(p);
            if (!expect_type(p, TOK_NAME, "a name") || !expect_op(p, "=")) {
                break;
            }
            struct node *param = new_node(p, N_PARAM, nt);
            if (param == NULL) {
                break;
            }
            param->str = dup_str(p, nt->str);
            param->a = parse_expression(p, true);
            list_push(p, &n->params, finish(p, param));
        }
        if (!p->failed) {
            parse_body(p, &n->body, end_with, true);
        }
        return finish(p, n);
    }
    if (strcmp(name, "print") == 0) {
        advance(p);
        struct node *n = new_node(p, E_CONCAT, t);
        while (n != NULL && !p->failed && cur(p)->type != TOK_BLOCK_END) {
            if (n->body.n > 0 && !expect_op(p, ",")) {
                break;
            }
            list_push(p, &n->body, parse_expression(p, true));
        }
        n = finish(p, n);
        struct node *out = n != NULL ? new_node(p, N_OUTPUT, t) : NULL;
        if (out == NULL) {
            node_free(n);
            return NULL;
        }
        out->a = n;
        return finish(p, out);
    }
    if (strcmp(name, "break") == 0 || strcmp(name, "continue") == 0) {
        advance(p);
        if (p->loop_depth == 0) {
            perr_at(p, t, "'%s' outside of a for loop", name);
            return NULL;
        }
        return new_node(p, name[0] == 'b' ? N_BREAK : N_CONTINUE, t);
    }
    if (strcmp(name, "generation") == 0) {
        /* transformers' AssistantTracker tag: the body renders as it is. */
        advance(p);
        struct node *n = new_node(p, N_BODY, t);
        if (n != NULL) {
            parse_body(p, &n->body, end_generation, true);
        }
        return finish(p, n);
    }
    static const char *const unsupported[] = {"extends", "include",    "import", "from",
                                              "block",   "autoescape", "raw",    NULL};
    for (int i = 0; unsupported[i] != NULL; i++) {
        if (strcmp(name, unsupported[i]) == 0) {
            perr_at(p, t, "'%s' is not supported in chat templates", name);
            return NULL;
        }
    }
    perr_at(p, t, "Encountered unknown tag '%s'", name);
    return NULL;
}

static bool name_in(const struct token *t, const char *const *names) {
    if (names == NULL || t->type != TOK_NAME) {
        return false;
    }
    for (int i = 0; names[i] != NULL; i++) {
        if (strcmp(t->str, names[i]) == 0) {
            return true;
        }
    }
    return false;
}

/*
 * jinja2's subparse: statements until one of end_names follows a block begin (the current
 * token is then that name) or the end of the template.
 */
static bool subparse(struct parser *p, struct node_list *body, const char *const *end_names) {
    while (!p->failed) {
        struct token *t = cur(p);
        if (t->type == TOK_EOF) {
            return true;
        }
        if (t->type == TOK_DATA) {
            advance(p);
            struct node *n = new_node(p, N_DATA, t);
            if (n != NULL) {
                n->str = malloc(t->len + 1);
                if (n->str == NULL) {
                    perr_at(p, t, "out of memory");
                    node_free(n);
                    return false;
                }
                memcpy(n->str, t->str, t->len + 1);
                n->len = t->len;
            }
            if (!list_push(p, body, n)) {
                return false;
            }
        } else if (t->type == TOK_VAR_BEGIN) {
            advance(p);
            struct node *n = new_node(p, N_OUTPUT, t);
            if (n == NULL) {
                return false;
            }
            n->a = parse_tuple(p, false, true, NULL, false);
            expect_type(p, TOK_VAR_END, "end of print statement");
            if (!list_push(p, body, finish(p, n))) {
                return false;
            }
        } else if (t->type == TOK_BLOCK_BEGIN) {
            advance(p);
            if (name_in(cur(p), end_names)) {
                return true;
            }
            if (!enter(p)) {
                leave(p);
                return false;
            }
            struct node *n = parse_statement(p);
            leave(p);
            if (n != NULL && !p->failed) {
                expect_type(p, TOK_BLOCK_END, "end of statement block");
            }
            if (!list_push(p, body, n)) {
                return false;
            }
        } else {
            perr_at(p, t, "unexpected '%s'", describe(t));
            return false;
        }
    }
    return false;
}

/* jinja2's parse_statements: `%}`, the body, and the end tag (consumed with drop_needle). */
static bool parse_body(struct parser *p, struct node_list *body, const char *const *end_names,
                       bool drop_needle) {
    if (is_op(cur(p), ":")) {
        advance(p);
    }
    if (!expect_type(p, TOK_BLOCK_END, "end of statement block")) {
        return false;
    }
    struct token *start = cur(p);
    if (!subparse(p, body, end_names)) {
        return false;
    }
    if (cur(p)->type == TOK_EOF) {
        perr_at(p, cur(p),
                "Unexpected end of template, expected '%s' (the block opened at "
                "line %u)",
                end_names[0], start->line);
        return false;
    }
    if (drop_needle) {
        advance(p);
    }
    return true;
}

struct template *template_compile(const char *src, size_t len, char *err, size_t err_size) {
    char dummy[1];
    if (err == NULL || err_size == 0) {
        err = dummy;
        err_size = sizeof(dummy);
    }
    err[0] = '\0';
    struct token_list toks;
    if (lexer_run(src != NULL ? src : "", src != NULL ? len : 0, &toks, err, err_size) != 0) {
        return NULL;
    }
    struct parser p = {.toks = toks.v, .n = toks.n, .err = err, .err_size = err_size};
    struct node *root = new_node(&p, N_BODY, &toks.v[0]);
    if (root != NULL) {
        subparse(&p, &root->body, NULL);
        if (!p.failed && cur(&p)->type != TOK_EOF) {
            perr_at(&p, cur(&p), "Encountered unknown tag '%s'", describe(cur(&p)));
        }
        root = finish(&p, root);
    }
    lexer_free(&toks);
    if (p.failed || root == NULL) {
        node_free(root);
        return NULL;
    }
    struct template *t = calloc(1, sizeof(*t));
    if (t == NULL) {
        node_free(root);
        snprintf(err, err_size, "line 1, column 1: out of memory");
        return NULL;
    }
    t->root = root;
    t->iterates_content = p.iterates_content;
    return t;
}

void template_destroy(struct template *t) {
    if (t == NULL) {
        return;
    }
    node_free(t->root);
    free(t);
}

bool template_iterates_content(const struct template *t) {
    return t != NULL && t->iterates_content;
}
