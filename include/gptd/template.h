/*
 * template.h: a Jinja renderer for chat templates, byte-exact with Python's jinja2 configured as
 * transformers' apply_chat_template configures it (sandboxed, trim_blocks, lstrip_blocks, loop
 * controls, transformers' tojson, raise_exception, strftime_now).
 *
 * A template is code that came with a model, so the renderer is built to be run on untrusted
 * input: a template is compiled once (anything outside the supported subset is refused at
 * compile time with its line and column), rendering is bounded (steps, recursion depth, output
 * bytes) and never touches anything but its arguments. No dependency on the model, tokenizer or
 * server.
 *
 * Values are JSON-like (none, bool, int, float, string, list, dict) plus the kinds templates
 * make themselves (undefined, namespace, macro, loop). The caller builds the variables with the
 * template_value_* functions, usually from JSON text: template_value_from_json keeps whether a
 * number was written as 1 or 1.0, which cJSON forgets and Python's tojson prints differently.
 *
 * Threads: a compiled template is immutable and may be rendered from many threads at once.
 * Values are reference-counted without atomics: a value tree belongs to one thread at a time.
 */
#ifndef GPTD_TEMPLATE_H
#define GPTD_TEMPLATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

struct template;
struct template_value;

enum template_value_type {
    TEMPLATE_UNDEFINED,
    TEMPLATE_NONE,
    TEMPLATE_BOOL,
    TEMPLATE_INT,
    TEMPLATE_FLOAT,
    TEMPLATE_STRING,
    TEMPLATE_LIST,
    TEMPLATE_DICT,
    TEMPLATE_OTHER, /* namespace, macro, loop, callable: made by templates only */
};

/* ---- Values: constructors return a new reference (NULL when out of memory). ---- */

/* Parses one JSON value (RFC 8259; UTF-8 checked, \u escapes and surrogate pairs decoded,
 * object keys kept in order, a duplicate key keeps its last value as Python's json does,
 * integers kept as integers when they fit int64, otherwise and with '.', 'e' or 'E' as
 * floats). NULL with a message in err on bad JSON or nesting deeper than 256. */
struct template_value *template_value_from_json(const char *json, size_t len, char *err,
                                                size_t err_size);
struct template_value *template_value_none(void);
struct template_value *template_value_bool(bool b);
struct template_value *template_value_int(int64_t i);
struct template_value *template_value_string(const char *s, size_t len); /* copies s */
struct template_value *template_value_list(void);
struct template_value *template_value_dict(void);

/* Appends v to list / sets key in dict (replacing an existing key in place, else appending:
 * dicts keep insertion order). Both take over the caller's reference to v, also on failure.
 * Return 0, or -1 when out of memory or the container has the wrong type. */
int template_value_list_append(struct template_value *list, struct template_value *v);
int template_value_dict_set(struct template_value *dict, const char *key, struct template_value *v);

struct template_value *template_value_ref(struct template_value *v);
void template_value_unref(struct template_value *v); /* NULL is a no-op */

/* Accessors: borrowed results, NULL when absent or of another type. */
enum template_value_type template_value_type(const struct template_value *v);
size_t template_value_length(const struct template_value *v); /* list items, dict keys */
struct template_value *template_value_list_get(const struct template_value *list, size_t i);
struct template_value *template_value_dict_get(const struct template_value *dict, const char *key);
/* Key and value of a dict's i-th entry in insertion order. */
const char *template_value_dict_key(const struct template_value *dict, size_t i);
struct template_value *template_value_dict_value(const struct template_value *dict, size_t i);
/* A string's bytes (not NUL-terminated in general: use *len); NULL for other types. */
const char *template_value_string_bytes(const struct template_value *v, size_t *len);
bool template_value_truthy(const struct template_value *v);

/* ---- Templates ---- */

/*
 * Compiles template source (UTF-8; need not be NUL-terminated). Returns NULL with
 * "line L, column C: problem" in err when the source does not parse or uses something outside
 * the supported subset (unknown filter, test, statement or tag; unclosed block; ...).
 */
struct template *template_compile(const char *src, size_t len, char *err, size_t err_size);
void template_destroy(struct template *t); /* NULL is a no-op */

/* Whether some {% for %} loop iterates over an attribute or item named "content"
 * (`for part in message['content']`): such a template expects OpenAI-style content part lists,
 * others expect strings (the chat layer joins text parts for them, as vLLM does). */
bool template_iterates_content(const struct template *t);

/* Bounds of one render. Zero fields take the defaults below. */
struct template_limits {
    /* statements + expression nodes evaluated (default 10,000,000); each loop iteration and
     * each item that range() or a filter copies counts as one more */
    uint64_t max_steps;
    /* macro/call and expression recursion (default 64): nested macro, caller() and recursive
     * loop() calls; statement and expression nesting is bounded when compiling */
    uint32_t max_depth;
    size_t max_output; /* bytes of output (default 16 MiB); also bounds each string and list */
    time_t now;        /* the time strftime_now formats (local time); 0 = time(NULL) */
};

enum template_status {
    TEMPLATE_OK = 0,
    TEMPLATE_RAISED = 1, /* raise_exception(msg) was called: err holds msg exactly */
    TEMPLATE_ERROR = 2,  /* a runtime error (type error, calling a non-callable, ...) */
    TEMPLATE_LIMIT = 3,  /* a bound of struct template_limits was hit: err names it */
    TEMPLATE_NOMEM = 4,
};

/*
 * Renders t with the variables of vars (a dict: its keys are the template's global names;
 * NULL = none). On TEMPLATE_OK *out is a malloc'd NUL-terminated string of *out_len bytes the
 * caller frees; otherwise *out is NULL and err holds the message (for TEMPLATE_RAISED exactly
 * the template's message, truncated to err_size - 1 bytes; for TEMPLATE_ERROR with the line).
 * lim may be NULL (defaults).
 */
enum template_status template_render(const struct template *t, const struct template_value *vars,
                                     const struct template_limits *lim, char **out, size_t *out_len,
                                     char *err, size_t err_size);

#endif
