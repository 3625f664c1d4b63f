/*
 * test_template.c: Check suite for the chat-template renderer (src/template/,
 * include/gptd/template.h).
 *
 * 1. Goldens: every visible case of the seven real templates in tests/data/chat/<family>/
 *    renders byte-equal to Python jinja2 (or raises the same raise_exception message).
 * 2. Features: tests/data/chat/features.json, ~170 small templates over shared variables whose
 *    expected output (or compile / render error, or raised message) tools/make-template-cases
 *    made with python3-jinja2 configured as transformers configures it.
 * 3. What jinja2 cannot tell: compile errors carry line and column, each limit stops a render
 *    with TEMPLATE_LIMIT naming it, deep nesting is refused at compile time, the JSON parser's
 *    refusals, the value API, template_iterates_content, strftime_now at a given time.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <check.h>

#include <gptd/template.h>

#include "common.h"

static const char *const families[] = {"chatml_smollm2", "deepseek_v3", "gemma3", "llama3",
                                       "llama3_1",       "qwen2_5",     "qwen3"};
#define N_FAMILIES (sizeof(families) / sizeof(families[0]))

/* ---- helpers ------------------------------------------------------------------------- */

static char *read_fixture(const char *rel, size_t *len) {
    char path[1024];
    testdata_path(path, sizeof(path), rel);
    char *text = read_file(path, len);
    ck_assert_msg(text != NULL, "cannot read %s", path);
    return text;
}

static struct template_value *read_json_fixture(const char *rel) {
    size_t len;
    char *text = read_fixture(rel, &len);
    char err[256];
    struct template_value *v = template_value_from_json(text, len, err, sizeof(err));
    ck_assert_msg(v != NULL, "%s: %s", rel, err);
    free(text);
    return v;
}

static struct template *compile_ok(const char *src) {
    char err[256] = "";
    struct template *t = template_compile(src, strlen(src), err, sizeof(err));
    ck_assert_msg(t != NULL, "compile %s: %s", src, err);
    return t;
}

/* Renders src with vars (JSON text or NULL) and lim; returns the status, *out the text. */
static enum template_status render_src(const char *src, const char *vars_json,
                                       const struct template_limits *lim, char **out, char *err,
                                       size_t err_size) {
    struct template *t = compile_ok(src);
    struct template_value *vars = NULL;
    if (vars_json != NULL) {
        char jerr[128];
        vars = template_value_from_json(vars_json, strlen(vars_json), jerr, sizeof(jerr));
        ck_assert_msg(vars != NULL, "vars: %s", jerr);
    }
    size_t len;
    enum template_status st = template_render(t, vars, lim, out, &len, err, err_size);
    template_value_unref(vars);
    template_destroy(t);
    return st;
}

static void assert_renders(const char *src, const char *vars_json, const char *want) {
    char *out = NULL;
    char err[256] = "";
    enum template_status st = render_src(src, vars_json, NULL, &out, err, sizeof(err));
    ck_assert_msg(st == TEMPLATE_OK, "%s: status %d: %s", src, st, err);
    ck_assert_msg(strcmp(out, want) == 0, "%s: got [%s], want [%s]", src, out, want);
    free(out);
}

/* ---- goldens --------------------------------------------------------------------------- */

START_TEST(test_family_matches_every_visible_case) {
    const char *family = families[_i];
    char rel[256];
    snprintf(rel, sizeof(rel), "chat/%s/template.jinja", family);
    size_t src_len;
    char *src = read_fixture(rel, &src_len);
    char err[512] = "";
    struct template *t = template_compile(src, src_len, err, sizeof(err));
    ck_assert_msg(t != NULL, "%s: %s", family, err);
    ck_assert(template_iterates_content(t) == (strcmp(family, "gemma3") == 0));

    snprintf(rel, sizeof(rel), "chat/%s/visible.json", family);
    struct template_value *cases = read_json_fixture(rel);
    size_t n = template_value_length(cases), failed = 0;
    ck_assert_uint_gt(n, 0);
    for (size_t i = 0; i < n; i++) {
        const struct template_value *c = template_value_list_get(cases, i);
        const char *id = template_value_string_bytes(template_value_dict_get(c, "id"), NULL);
        /* variables = extra + messages + add_generation_prompt */
        struct template_value *vars = template_value_dict();
        const struct template_value *extra = template_value_dict_get(c, "extra");
        for (size_t k = 0; k < template_value_length(extra); k++) {
            template_value_dict_set(vars, template_value_dict_key(extra, k),
                                    template_value_ref(template_value_dict_value(extra, k)));
        }
        template_value_dict_set(vars, "messages",
                                template_value_ref(template_value_dict_get(c, "messages")));
        template_value_dict_set(
            vars, "add_generation_prompt",
            template_value_ref(template_value_dict_get(c, "add_generation_prompt")));
        char *out = NULL;
        size_t out_len = 0;
        enum template_status st = template_render(t, vars, NULL, &out, &out_len, err, sizeof(err));
        const struct template_value *expected = template_value_dict_get(c, "expected");
        size_t want_len;
        const char *want = template_value_string_bytes(expected, &want_len);
        bool ok;
        if (want != NULL) {
            ok = st == TEMPLATE_OK && out_len == want_len && memcmp(out, want, want_len) == 0;
        } else {
            want =
                template_value_string_bytes(template_value_dict_get(expected, "error"), &want_len);
            ok = want != NULL && st == TEMPLATE_RAISED && strlen(err) == want_len &&
                 memcmp(err, want, want_len) == 0;
        }
        if (!ok) {
            failed++;
            fprintf(stderr, "%s/%s: status %d (%s)\n--- got\n%s\n--- want\n%.*s\n", family, id, st,
                    err, out != NULL ? out : "", (int)want_len, want != NULL ? want : "");
        }
        free(out);
        template_value_unref(vars);
    }
    ck_assert_msg(failed == 0, "%s: %zu of %zu cases differ", family, failed, n);
    template_value_unref(cases);
    template_destroy(t);
    free(src);
}
END_TEST

/* ---- jinja2 feature cases -------------------------------------------------------------- */

START_TEST(test_feature_cases_match_jinja2) {
    struct template_value *doc = read_json_fixture("chat/features.json");
    const struct template_value *vars = template_value_dict_get(doc, "vars");
    const struct template_value *cases = template_value_dict_get(doc, "cases");
    size_t n = template_value_length(cases), failed = 0;
    ck_assert_uint_gt(n, 100);
    struct template_limits lim = {.now = 1796601600}; /* 2026-12-07 00:00:00 UTC */
    for (size_t i = 0; i < n; i++) {
        const struct template_value *c = template_value_list_get(cases, i);
        const char *id = template_value_string_bytes(template_value_dict_get(c, "id"), NULL);
        size_t src_len;
        const char *src =
            template_value_string_bytes(template_value_dict_get(c, "template"), &src_len);
        const char *want_error =
            template_value_string_bytes(template_value_dict_get(c, "error"), NULL);
        size_t want_len = 0;
        const char *want =
            template_value_string_bytes(template_value_dict_get(c, "expected"), &want_len);
        size_t raised_len = 0;
        const char *raised =
            template_value_string_bytes(template_value_dict_get(c, "raised"), &raised_len);
        char err[512] = "";
        struct template *t = template_compile(src, src_len, err, sizeof(err));
        if (want_error != NULL && strcmp(want_error, "compile") == 0) {
            if (t != NULL) {
                failed++;
                fprintf(stderr, "%s: compiled, jinja2 refuses it\n", id);
            } else if (strncmp(err, "line ", 5) != 0) {
                failed++;
                fprintf(stderr, "%s: compile error without a line: %s\n", id, err);
            }
            template_destroy(t);
            continue;
        }
        if (t == NULL) {
            failed++;
            fprintf(stderr, "%s: does not compile: %s\n", id, err);
            continue;
        }
        char *out = NULL;
        size_t out_len = 0;
        enum template_status st = template_render(t, vars, &lim, &out, &out_len, err, sizeof(err));
        bool ok;
        if (want != NULL) {
            ok = st == TEMPLATE_OK && out_len == want_len && memcmp(out, want, want_len) == 0;
        } else if (raised != NULL) {
            ok = st == TEMPLATE_RAISED && strlen(err) == raised_len &&
                 memcmp(err, raised, raised_len) == 0;
        } else {
            /* jinja2 raised while rendering; the range limit is ours too */
            ok = (st == TEMPLATE_ERROR || st == TEMPLATE_LIMIT) && strncmp(err, "line ", 5) == 0;
        }
        if (!ok) {
            failed++;
            fprintf(stderr, "%s: status %d (%s)\n--- got\n%s\n--- want\n%.*s\n", id, st, err,
                    out != NULL ? out : "", (int)want_len,
                    want != NULL     ? want
                    : raised != NULL ? raised
                                     : want_error);
        }
        free(out);
        template_destroy(t);
    }
    ck_assert_msg(failed == 0, "%zu of %zu feature cases differ from jinja2", failed, n);
    template_value_unref(doc);
}
END_TEST

/* ---- things jinja2 cannot produce ------------------------------------------------------ */

START_TEST(test_generation_tag_renders_its_body) {
    assert_renders("{% for m in messages %}{% generation %}[{{ m }}]{% endgeneration %}"
                   "{% endfor %}",
                   "{\"messages\": [\"a\", \"b\"]}", "[a][b]");
}
END_TEST

static const struct {
    const char *src;
    const char *prefix; /* the error starts with it */
} compile_errors[] = {
    {"{{ x|nosuch }}", "line 1, column 6: "},
    {"ab\n  {{ x is nosuch }}", "line 2, column 11: "},
    {"{% if x %}\nabc", "line 2, column 4: "},
    {"\n\n{% nosuchtag %}", "line 3, column 4: "},
    {"{{ 1 + }}", "line 1, column 8: "},
    {"{# never closed", "line 1, column 1: "},
    {"{{ 'unterminated }}", "line 1, column 4: "},
    {"{% extends 'base' %}", "line 1, column 4: "},
    {"{% include 'x' %}", "line 1, column 4: "},
    {"{% import 'x' as y %}", "line 1, column 4: "},
    {"{% from 'x' import y %}", "line 1, column 4: "},
    {"{% for x in y %}{% endif %}", "line 1, column 20: "},
    {"{% break %}", "line 1, column 4: "},
    {"{{ f(*args) }}", "line 1, column 6: "},
    {"\xff\xfe", "line 1, column 1: "},
};

START_TEST(test_compile_errors_name_line_and_column) {
    const char *src = compile_errors[_i].src;
    char err[256] = "";
    struct template *t = template_compile(src, strlen(src), err, sizeof(err));
    template_destroy(t);
    ck_assert_msg(t == NULL, "%s compiled", src);
    ck_assert_msg(strncmp(err, compile_errors[_i].prefix, strlen(compile_errors[_i].prefix)) == 0,
                  "%s: [%s], want prefix [%s]", src, err, compile_errors[_i].prefix);
}
END_TEST

START_TEST(test_deep_nesting_is_refused_at_compile_time) {
    /* parentheses, lists, statements and left-associative chains */
    const char *open[] = {"(", "[", "{% if x %}", "not ", "-"};
    const char *close[] = {")", "]", "{% endif %}", "", ""};
    for (size_t k = 0; k < sizeof(open) / sizeof(open[0]); k++) {
        size_t depth = 200;
        char *src = malloc(depth * 32 + 64);
        size_t n = 0;
        bool is_stmt = open[k][0] == '{';
        if (!is_stmt) {
            n += (size_t)sprintf(src + n, "{{ ");
        }
        for (size_t i = 0; i < depth; i++) {
            n += (size_t)sprintf(src + n, "%s", open[k]);
        }
        n += (size_t)sprintf(src + n, is_stmt ? "x" : "1");
        for (size_t i = 0; i < depth; i++) {
            n += (size_t)sprintf(src + n, "%s", close[k]);
        }
        if (!is_stmt) {
            n += (size_t)sprintf(src + n, " }}");
        }
        char err[256] = "";
        struct template *t = template_compile(src, n, err, sizeof(err));
        ck_assert_msg(t == NULL, "nesting %s x200 compiled", open[k]);
        ck_assert_msg(strstr(err, "line 1") == err, "%s", err);
        free(src);
    }
    /* 100000 terms of a + chain: a tree too high to walk recursively */
    size_t terms = 100000;
    char *src = malloc(terms * 4 + 16);
    size_t n = (size_t)sprintf(src, "{{ a");
    for (size_t i = 1; i < terms; i++) {
        n += (size_t)sprintf(src + n, "+a");
    }
    n += (size_t)sprintf(src + n, " }}");
    char err[256] = "";
    ck_assert(template_compile(src, n, err, sizeof(err)) == NULL);
    free(src);
    /* moderate nesting still works */
    assert_renders("{{ ((((((((((1)))))))))) + [[[[[2]]]]][0][0][0][0][0] }}", NULL, "3");
}
END_TEST

START_TEST(test_each_limit_stops_the_render) {
    char *out = NULL;
    char err[256] = "";
    /* steps: nested ranges */
    struct template_limits lim = {.max_steps = 100000};
    enum template_status st =
        render_src("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}"
                   "{% endfor %}",
                   NULL, &lim, &out, err, sizeof(err));
    ck_assert_int_eq(st, TEMPLATE_LIMIT);
    ck_assert_msg(strstr(err, "max_steps") != NULL, "%s", err);
    ck_assert(out == NULL);
    /* depth: unbounded macro recursion */
    st = render_src("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", NULL, NULL, &out, err,
                    sizeof(err));
    ck_assert_int_eq(st, TEMPLATE_LIMIT);
    ck_assert_msg(strstr(err, "max_depth") != NULL, "%s", err);
    lim = (struct template_limits){.max_depth = 3};
    st = render_src("{% macro f(n) %}{% if n < 3 %}{{ f(n + 1) }}{% endif %}{% endmacro %}"
                    "{{ f(0) }}",
                    NULL, &lim, &out, err, sizeof(err));
    ck_assert_int_eq(st, TEMPLATE_LIMIT);
    st = render_src("{% macro f(n) %}{% if n < 2 %}{{ f(n + 1) }}{% endif %}{% endmacro %}"
                    "{{ f(0) }}",
                    NULL, &lim, &out, err, sizeof(err));
    ck_assert_int_eq(st, TEMPLATE_OK);
    free(out);
    /* output: plain text, string repetition, doubling strings */
    lim = (struct template_limits){.max_output = 1000};
    st = render_src("{% for i in range(2000) %}x{% endfor %}", NULL, &lim, &out, err, sizeof(err));
    ck_assert_int_eq(st, TEMPLATE_LIMIT);
    ck_assert_msg(strstr(err, "max_output") != NULL, "%s", err);
    st = render_src("{{ 'ab' * 100000000000 }}", NULL, NULL, &out, err, sizeof(err));
    ck_assert_int_eq(st, TEMPLATE_LIMIT);
    st = render_src("{% set ns = namespace(s='xy') %}{% for i in range(64) %}"
                    "{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s|length }}",
                    NULL, NULL, &out, err, sizeof(err));
    ck_assert_int_eq(st, TEMPLATE_LIMIT);
    st = render_src("{{ 'x'|indent(1000000000000) }}", NULL, NULL, &out, err, sizeof(err));
    ck_assert_int_eq(st, TEMPLATE_LIMIT);
    st = render_src("{{ {'a': 1}|tojson(indent=100000000000) }}", NULL, NULL, &out, err,
                    sizeof(err));
    ck_assert_int_eq(st, TEMPLATE_LIMIT);
    /* range: the sandbox's 100000 */
    st = render_src("{% for i in range(100001) %}{% endfor %}", NULL, NULL, &out, err, sizeof(err));
    ck_assert_int_eq(st, TEMPLATE_LIMIT);
    st = render_src("{{ range(100000)|length }}", NULL, NULL, &out, err, sizeof(err));
    ck_assert_int_eq(st, TEMPLATE_OK);
    ck_assert_str_eq(out, "100000");
    free(out);
}
END_TEST

START_TEST(test_raise_exception_gives_the_message_exactly) {
    char *out = NULL;
    char err[64] = "";
    enum template_status st =
        render_src("{{ raise_exception('Conversation roles must alternate user/assistant/"
                   "user/assistant/...') }}",
                   NULL, NULL, &out, err, 16);
    ck_assert_int_eq(st, TEMPLATE_RAISED);
    ck_assert_str_eq(err, "Conversation ro"); /* truncated to err_size - 1 */
    st = render_src("a{% if messages|length > 1 %}{{ raise_exception('two: ' ~ messages[1]) }}"
                    "{% endif %}",
                    "{\"messages\": [1, \"é\"]}", NULL, &out, err, sizeof(err));
    ck_assert_int_eq(st, TEMPLATE_RAISED);
    ck_assert_str_eq(err, "two: é");
    ck_assert(out == NULL);
    /* runtime errors carry the line */
    st = render_src("\n\n{{ x.y }}", NULL, NULL, &out, err, sizeof(err));
    ck_assert_int_eq(st, TEMPLATE_ERROR);
    ck_assert_msg(strncmp(err, "line 3: ", 8) == 0, "%s", err);
    ck_assert_msg(strstr(err, "'x' is undefined") != NULL, "%s", err);
}
END_TEST

START_TEST(test_tojson_writes_python_json_dumps) {
    const char *vars = "{\"v\": [1, 1.0, 0.1, 1e-7, 1.5e-7, 1e16, 1.5e16, 123456789012345678,"
                       " 1e22, -0.0, 0.0001, 0.00001, 2.5e-5, 3.14159, 1e300, 5e-324,"
                       " 9007199254740993.0],"
                       " \"s\": \"\\u00e9\\u4f60\\ud83d\\ude00 \\u007f \\u0000\\u001f\\\"\\\\"
                       "\\/\\b\\f\\n\\r\\t\","
                       " \"nested\": {\"a\": [], \"b\": {}, \"c\": [{\"d\": null}], \"e\": true}}";
    assert_renders("{{ v|tojson }}", vars,
                   "[1, 1.0, 0.1, 1e-07, 1.5e-07, 1e+16, 1.5e+16, 123456789012345678, 1e+22, "
                   "-0.0, 0.0001, 1e-05, 2.5e-05, 3.14159, 1e+300, 5e-324, 9007199254740992.0]");
    assert_renders("{{ s|tojson }}", vars, "\"é你😀 \x7f \\u0000\\u001f\\\"\\\\/\\b\\f\\n\\r\\t\"");
    assert_renders("{{ nested|tojson }}", vars,
                   "{\"a\": [], \"b\": {}, \"c\": [{\"d\": null}], \"e\": true}");
    assert_renders("{{ nested|tojson(indent=2) }}", vars,
                   "{\n  \"a\": [],\n  \"b\": {},\n  \"c\": [\n    {\n      \"d\": null\n    "
                   "}\n  ],\n  \"e\": true\n}");
    assert_renders("{{ v[1] }} {{ v[3] }} {{ v[6] }}", vars, "1.0 1e-07 1.5e+16");
}
END_TEST

START_TEST(test_json_parser_keeps_numbers_and_refuses_bad_json) {
    char err[128];
    const char *good = "{\"a\": 1, \"b\": 2, \"a\": 3, \"i\": 9223372036854775807,"
                       " \"big\": 9223372036854775808, \"f\": 1.0, \"e\": 1E2, \"n\": -0}";
    struct template_value *v = template_value_from_json(good, strlen(good), err, sizeof(err));
    ck_assert_msg(v != NULL, "%s", err);
    ck_assert_uint_eq(template_value_length(v), 7);
    ck_assert_str_eq(template_value_dict_key(v, 0), "a"); /* first position, last value */
    ck_assert_int_eq(template_value_type(template_value_dict_get(v, "a")), TEMPLATE_INT);
    ck_assert_int_eq(template_value_type(template_value_dict_get(v, "i")), TEMPLATE_INT);
    ck_assert_int_eq(template_value_type(template_value_dict_get(v, "big")), TEMPLATE_FLOAT);
    ck_assert_int_eq(template_value_type(template_value_dict_get(v, "f")), TEMPLATE_FLOAT);
    ck_assert_int_eq(template_value_type(template_value_dict_get(v, "e")), TEMPLATE_FLOAT);
    ck_assert_int_eq(template_value_type(template_value_dict_get(v, "n")), TEMPLATE_INT);
    struct template *t = compile_ok("{{ a }} {{ f }} {{ e }} {{ big }}");
    char *out;
    size_t len;
    ck_assert_int_eq(template_render(t, v, NULL, &out, &len, err, sizeof(err)), TEMPLATE_OK);
    ck_assert_str_eq(out, "3 1.0 100.0 9.223372036854776e+18");
    free(out);
    template_destroy(t);
    template_value_unref(v);

    const char *bad[] = {"",
                         "{",
                         "[1,]",
                         "{\"a\" 1}",
                         "01",
                         "1.",
                         ".5",
                         "-",
                         "1e",
                         "nul",
                         "[1] x",
                         "\"\\x\"",
                         "\"\\u12\"",
                         "\"a\nb\"",
                         "\"\xff\"",
                         "{1: 2}",
                         "NaN",
                         "'a'",
                         "[1 2]",
                         "\"unterminated",
                         "\"\xc0\x80\"",
                         "tru",
                         "{\"a\":}",
                         "\"\\ud800\\u\""};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        v = template_value_from_json(bad[i], strlen(bad[i]), err, sizeof(err));
        ck_assert_msg(v == NULL, "accepted bad JSON [%s]", bad[i]);
        ck_assert_msg(err[0] != '\0', "no message for [%s]", bad[i]);
    }
    /* nesting: 256 levels parse, 257 do not */
    char deep[600];
    for (int depth = 256; depth <= 257; depth++) {
        memset(deep, '[', (size_t)depth);
        memset(deep + depth, ']', (size_t)depth);
        v = template_value_from_json(deep, (size_t)depth * 2, err, sizeof(err));
        ck_assert_msg((v != NULL) == (depth == 256), "depth %d", depth);
        template_value_unref(v);
    }
    /* surrogate pairs decode; a lone surrogate becomes U+FFFD */
    const char *sur = "[\"\\ud83d\\ude00\", \"\\udc00\"]";
    v = template_value_from_json(sur, strlen(sur), err, sizeof(err));
    ck_assert(v != NULL);
    ck_assert_str_eq(template_value_string_bytes(template_value_list_get(v, 0), NULL),
                     "\xf0\x9f\x98\x80");
    ck_assert_str_eq(template_value_string_bytes(template_value_list_get(v, 1), NULL),
                     "\xef\xbf\xbd");
    template_value_unref(v);
}
END_TEST

START_TEST(test_value_api) {
    struct template_value *d = template_value_dict();
    ck_assert_int_eq(template_value_dict_set(d, "x", template_value_int(1)), 0);
    ck_assert_int_eq(template_value_dict_set(d, "y", template_value_string("ab\0c", 4)), 0);
    ck_assert_int_eq(template_value_dict_set(d, "x", template_value_bool(true)), 0);
    ck_assert_uint_eq(template_value_length(d), 2);
    ck_assert_str_eq(template_value_dict_key(d, 0), "x");
    ck_assert_int_eq(template_value_type(template_value_dict_value(d, 0)), TEMPLATE_BOOL);
    size_t len;
    ck_assert(memcmp(template_value_string_bytes(template_value_dict_get(d, "y"), &len), "ab\0c",
                     4) == 0);
    ck_assert_uint_eq(len, 4);
    struct template_value *l = template_value_list();
    ck_assert_int_eq(template_value_list_append(l, template_value_none()), 0);
    ck_assert_int_eq(template_value_list_append(d, template_value_int(2)), -1); /* wrong type */
    ck_assert_int_eq(template_value_dict_set(l, "k", template_value_int(2)), -1);
    ck_assert(template_value_truthy(l));
    ck_assert(!template_value_truthy(template_value_list_get(l, 0)));
    ck_assert(template_value_list_get(l, 1) == NULL);
    ck_assert(template_value_dict_get(d, "nope") == NULL);
    ck_assert(template_value_string_bytes(l, NULL) == NULL);
    template_value_dict_set(d, "l", l);
    template_value_unref(d);
    template_value_unref(NULL);
    template_destroy(NULL);
    ck_assert(!template_iterates_content(NULL));
}
END_TEST

START_TEST(test_iterates_content_detects_content_loops) {
    const char *yes[] = {"{% for p in m.content %}{% endfor %}",
                         "{% for p in m['content'] %}{% endfor %}",
                         "{% for p in messages[0]['content'] | list %}{% endfor %}"};
    const char *no[] = {"{% for m in messages %}{{ m.content }}{% endfor %}",
                        "{% for p in m.contents %}{% endfor %}", "{{ content }}"};
    for (size_t i = 0; i < 3; i++) {
        struct template *t = compile_ok(yes[i]);
        ck_assert_msg(template_iterates_content(t), "%s", yes[i]);
        template_destroy(t);
        t = compile_ok(no[i]);
        ck_assert_msg(!template_iterates_content(t), "%s", no[i]);
        template_destroy(t);
    }
}
END_TEST

START_TEST(test_strftime_now_uses_the_given_time) {
    char *out = NULL;
    char err[128];
    struct template_limits lim = {.now = 1796601600 + 3600 * 13 + 60 * 5};
    ck_assert_int_eq(
        render_src("{{ strftime_now('%d %b %Y %H:%M') }}", NULL, &lim, &out, err, sizeof(err)),
        TEMPLATE_OK);
    ck_assert_str_eq(out, "07 Dec 2026 13:05");
    free(out);
}
END_TEST

START_TEST(test_values_are_not_changed_by_rendering) {
    /* a shared template renders the same twice; constants survive; vars keep their refs */
    const char *src = "{% set ns = namespace(l=[]) %}{% for i in range(3) %}"
                      "{% set ns.l = ns.l + ['c', i] %}{% endfor %}{{ ns.l }}{{ 'c' ~ 1.5 }}";
    struct template *t = compile_ok(src);
    struct template_value *vars = template_value_dict();
    for (int k = 0; k < 2; k++) {
        char *out;
        size_t len;
        char err[128];
        ck_assert_int_eq(template_render(t, vars, NULL, &out, &len, err, sizeof(err)), TEMPLATE_OK);
        ck_assert_str_eq(out, "['c', 0, 'c', 1, 'c', 2]c1.5");
        free(out);
    }
    /* a namespace holding itself is freed (the leak checkers see it) */
    assert_renders("{% set ns = namespace() %}{% set ns.me = ns %}{% set ns.l = [ns] %}ok", NULL,
                   "ok");
    template_value_unref(vars);
    template_destroy(t);
}
END_TEST

/* ---- set-up --------------------------------------------------------------------------- */

static Suite *template_suite(void) {
    Suite *s = suite_create("template");
    TCase *tc = tcase_create("goldens");
    tcase_set_timeout(tc, 60);
    tcase_add_loop_test(tc, test_family_matches_every_visible_case, 0, (int)N_FAMILIES);
    tcase_add_test(tc, test_feature_cases_match_jinja2);
    suite_add_tcase(s, tc);

    tc = tcase_create("renderer");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_generation_tag_renders_its_body);
    tcase_add_loop_test(tc, test_compile_errors_name_line_and_column, 0,
                        (int)(sizeof(compile_errors) / sizeof(compile_errors[0])));
    tcase_add_test(tc, test_deep_nesting_is_refused_at_compile_time);
    tcase_add_test(tc, test_each_limit_stops_the_render);
    tcase_add_test(tc, test_raise_exception_gives_the_message_exactly);
    tcase_add_test(tc, test_tojson_writes_python_json_dumps);
    tcase_add_test(tc, test_json_parser_keeps_numbers_and_refuses_bad_json);
    tcase_add_test(tc, test_value_api);
    tcase_add_test(tc, test_iterates_content_detects_content_loops);
    tcase_add_test(tc, test_strftime_now_uses_the_given_time);
    tcase_add_test(tc, test_values_are_not_changed_by_rendering);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    /* strftime_now formats local time: the expected strings are in UTC */
    setenv("TZ", "UTC", 1);
    tzset();
    SRunner *sr = srunner_create(template_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
