/*
 * chat.c: a model's chat template and the variables transformers renders it with (chat.h).
 *
 * Loaded once at start-up (chat_load) by serve and `gptd template`; chat_render runs on HTTP
 * threads, each call with its own variables. The rules follow transformers'
 * apply_chat_template: variables are the tokenizer's special-token strings, then the caller's
 * extra variables, then messages, tools and add_generation_prompt; continue_final_message cuts
 * the text after the last message's content as transformers does.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>

#include <gptd/chat.h>

/* tokenizer_config.json files carry the whole added-token table (Llama 3: 50 KB, some models a
 * few MB); a chat template is a few KB. Anything bigger than these is not a config. */
#define CONFIG_MAX_BYTES   (64u << 20)
#define TEMPLATE_MAX_BYTES (4u << 20)

/* The special-token variables transformers passes (tokenizer.special_tokens_map), besides
 * additional_special_tokens. */
static const char *const special_names[] = {"bos_token", "eos_token", "unk_token", "sep_token",
                                            "pad_token", "cls_token", "mask_token"};
#define N_SPECIAL      (sizeof(special_names) / sizeof(special_names[0]))
#define MAX_ADDITIONAL 1024

struct chat {
    struct template *tmpl; /* NULL: the model has no chat template */
    char origin[4096];
    char *special[N_SPECIAL]; /* owned, NULL when the config has none */
    char **additional;        /* additional_special_tokens: owned strings */
    size_t n_additional;
    bool has_additional;
};

/* Reads a whole file. Returns a malloc'd NUL-terminated buffer, or NULL with err (ENOENT is
 * reported through *missing when missing is not NULL, without a message). */
static char *read_file(const char *path, size_t max, size_t *len, bool *missing, char *err,
                       size_t err_size) {
    if (missing != NULL) {
        *missing = false;
    }
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        if (errno == ENOENT && missing != NULL) {
            *missing = true;
            return NULL;
        }
        snprintf(err, err_size, "%s: %s", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        snprintf(err, err_size, "%s: not a regular file", path);
        fclose(f);
        return NULL;
    }
    if ((uint64_t)st.st_size > max) {
        snprintf(err, err_size, "%s: %lld bytes, more than the %zu a chat file may have", path,
                 (long long)st.st_size, max);
        fclose(f);
        return NULL;
    }
    size_t n = (size_t)st.st_size;
    char *buf = malloc(n + 1);
    if (buf == NULL) {
        snprintf(err, err_size, "%s: out of memory", path);
        fclose(f);
        return NULL;
    }
    size_t got = fread(buf, 1, n, f);
    fclose(f);
    if (got != n) {
        snprintf(err, err_size, "%s: short read", path);
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}

/* A special token in tokenizer_config.json: "text" or {"content": "text", ...}. */
static char *special_string(const cJSON *it) {
    if (cJSON_IsObject(it)) {
        it = cJSON_GetObjectItemCaseSensitive(it, "content");
    }
    return cJSON_IsString(it) ? strdup(it->valuestring) : NULL;
}

/* Special tokens of one JSON object (tokenizer_config.json or special_tokens_map.json) for
 * the names still unset. */
static int take_specials(struct chat *c, const cJSON *root) {
    for (size_t i = 0; i < N_SPECIAL; i++) {
        if (c->special[i] == NULL) {
            c->special[i] =
                special_string(cJSON_GetObjectItemCaseSensitive(root, special_names[i]));
        }
    }
    const cJSON *add = cJSON_GetObjectItemCaseSensitive(root, "additional_special_tokens");
    if (c->has_additional || !cJSON_IsArray(add)) {
        return 0;
    }
    size_t n = (size_t)cJSON_GetArraySize(add);
    if (n > MAX_ADDITIONAL) {
        n = MAX_ADDITIONAL;
    }
    c->additional = calloc(n > 0 ? n : 1, sizeof(*c->additional));
    if (c->additional == NULL) {
        return -1;
    }
    c->has_additional = true;
    const cJSON *e;
    cJSON_ArrayForEach(e, add) {
        char *t = special_string(e);
        if (t != NULL && c->n_additional < n) {
            c->additional[c->n_additional++] = t;
        } else {
            free(t);
        }
    }
    return 0;
}

/* special_tokens_map.json, when present: fills the special tokens tokenizer_config.json left
 * out (transformers merges it the same way: the config's own values win). */
/* dir/name parsed as a JSON object into *root (the caller cJSON_Delete()s it); *root NULL and
 * 0 when the file does not exist; -1 with err for anything else. path gets the file's path. */
static int read_json_object(const char *dir, const char *name, cJSON **root, char *path,
                            size_t path_size, char *err, size_t err_size) {
    *root = NULL;
    if ((size_t)snprintf(path, path_size, "%s/%s", dir, name) >= path_size) {
        snprintf(err, err_size, "%s: path too long", dir);
        return -1;
    }
    size_t len = 0;
    bool missing = false;
    char *text = read_file(path, CONFIG_MAX_BYTES, &len, &missing, err, err_size);
    if (text == NULL) {
        return missing ? 0 : -1;
    }
    *root = cJSON_ParseWithLength(text, len);
    free(text);
    if (!cJSON_IsObject(*root)) {
        snprintf(err, err_size, "%s: not a JSON object", path);
        cJSON_Delete(*root);
        *root = NULL;
        return -1;
    }
    return 0;
}

static int load_special_map(struct chat *c, const char *dir, char *err, size_t err_size) {
    char path[4096];
    cJSON *root;
    if (read_json_object(dir, "special_tokens_map.json", &root, path, sizeof(path), err,
                         err_size) != 0) {
        return -1;
    }
    int rc = 0;
    if (root != NULL && take_specials(c, root) != 0) {
        snprintf(err, err_size, "out of memory");
        rc = -1;
    }
    cJSON_Delete(root);
    return rc;
}

static int compile_into(struct chat *c, const char *src, size_t len, const char *origin, char *err,
                        size_t err_size) {
    char msg[512];
    c->tmpl = template_compile(src, len, msg, sizeof(msg));
    if (c->tmpl == NULL) {
        snprintf(err, err_size, "%s: chat template: %s", origin, msg);
        return -1;
    }
    snprintf(c->origin, sizeof(c->origin), "%s", origin);
    return 0;
}

/* tokenizer_config.json: the special tokens, and the chat template when it has one. Returns 0
 * (template found or not), -1 on error. */
static int load_config(struct chat *c, const char *dir, bool want_template, char *err,
                       size_t err_size) {
    char path[4096];
    cJSON *root;
    if (read_json_object(dir, "tokenizer_config.json", &root, path, sizeof(path), err, err_size) !=
        0) {
        return -1;
    }
    if (root == NULL) {
        return 0;
    }
    int rc = 0;
    if (take_specials(c, root) != 0) {
        snprintf(err, err_size, "out of memory");
        cJSON_Delete(root);
        return -1;
    }
    const cJSON *ct = cJSON_GetObjectItemCaseSensitive(root, "chat_template");
    if (want_template && ct != NULL && !cJSON_IsNull(ct)) {
        const char *src = NULL;
        if (cJSON_IsString(ct)) {
            src = ct->valuestring;
        } else if (cJSON_IsArray(ct)) {
            /* Named templates (Cohere, Hermes: "default", "tool_use", "rag"): chat requests use
             * "default", as transformers does when no name is asked for. */
            const cJSON *e;
            cJSON_ArrayForEach(e, ct) {
                const cJSON *name = cJSON_GetObjectItemCaseSensitive(e, "name");
                const cJSON *body = cJSON_GetObjectItemCaseSensitive(e, "template");
                if (cJSON_IsString(name) && strcmp(name->valuestring, "default") == 0 &&
                    cJSON_IsString(body)) {
                    src = body->valuestring;
                }
            }
            if (src == NULL) {
                snprintf(err, err_size,
                         "%s: chat_template is a list of named templates without one named "
                         "\"default\" (start with --chat-template FILE)",
                         path);
                rc = -1;
            }
        } else {
            snprintf(err, err_size, "%s: chat_template is neither a string nor a list", path);
            rc = -1;
        }
        if (src != NULL) {
            rc = compile_into(c, src, strlen(src), path, err, err_size);
        }
    }
    cJSON_Delete(root);
    return rc;
}

static int load_template_file(struct chat *c, const char *path, bool may_be_missing, char *err,
                              size_t err_size) {
    size_t len = 0;
    bool missing = false;
    char *src =
        read_file(path, TEMPLATE_MAX_BYTES, &len, may_be_missing ? &missing : NULL, err, err_size);
    if (src == NULL) {
        return missing ? 0 : -1;
    }
    int rc = compile_into(c, src, len, path, err, err_size);
    free(src);
    return rc;
}

struct chat *chat_load(const char *dir, const char *template_file, char *err, size_t err_size) {
    struct chat *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        snprintf(err, err_size, "out of memory");
        return NULL;
    }
    if (template_file != NULL && load_template_file(c, template_file, false, err, err_size) != 0) {
        goto fail;
    }
    if (dir != NULL && load_config(c, dir, c->tmpl == NULL, err, err_size) != 0) {
        goto fail;
    }
    if (dir != NULL && load_special_map(c, dir, err, err_size) != 0) {
        goto fail;
    }
    if (dir != NULL && c->tmpl == NULL) {
        char path[4096];
        if ((size_t)snprintf(path, sizeof(path), "%s/chat_template.jinja", dir) >= sizeof(path)) {
            snprintf(err, err_size, "%s: path too long", dir);
            goto fail;
        }
        if (load_template_file(c, path, true, err, err_size) != 0) {
            goto fail;
        }
    }
    return c;
fail:
    chat_destroy(c);
    return NULL;
}

void chat_destroy(struct chat *c) {
    if (c == NULL) {
        return;
    }
    template_destroy(c->tmpl);
    for (size_t i = 0; i < N_SPECIAL; i++) {
        free(c->special[i]);
    }
    for (size_t i = 0; i < c->n_additional; i++) {
        free(c->additional[i]);
    }
    free(c->additional);
    free(c);
}

bool chat_has_template(const struct chat *c) {
    return c != NULL && c->tmpl != NULL;
}

const char *chat_template_origin(const struct chat *c) {
    return c != NULL && c->tmpl != NULL ? c->origin : "";
}

const struct template *chat_template(const struct chat *c) {
    return c != NULL ? c->tmpl : NULL;
}

/* ---- content parts ---- */

/* A message with its list of content parts replaced by their texts joined with "\n". Returns a
 * new reference (the message itself, ref'd, when there is nothing to join), or NULL. */
static struct template_value *join_parts(struct template_value *msg) {
    struct template_value *content = template_value_dict_get(msg, "content");
    if (template_value_type(content) != TEMPLATE_LIST) {
        return template_value_ref(msg);
    }
    size_t total = 0, n_text = 0;
    for (size_t i = 0; i < template_value_length(content); i++) {
        size_t len = 0;
        struct template_value *part = template_value_list_get(content, i);
        if (template_value_string_bytes(template_value_dict_get(part, "text"), &len) != NULL) {
            total += len + 1;
            n_text++;
        }
    }
    char *buf = malloc(total + 1);
    struct template_value *copy = template_value_dict();
    if (buf == NULL || copy == NULL) {
        free(buf);
        template_value_unref(copy);
        return NULL;
    }
    size_t off = 0, k = 0;
    for (size_t i = 0; i < template_value_length(content); i++) {
        size_t len = 0;
        struct template_value *part = template_value_list_get(content, i);
        const char *t = template_value_string_bytes(template_value_dict_get(part, "text"), &len);
        if (t != NULL) {
            memcpy(buf + off, t, len);
            off += len;
            if (++k < n_text) {
                buf[off++] = '\n';
            }
        }
    }
    int rc = 0;
    for (size_t i = 0; i < template_value_length(msg) && rc == 0; i++) {
        const char *key = template_value_dict_key(msg, i);
        struct template_value *v = strcmp(key, "content") == 0
                                       ? template_value_string(buf, off)
                                       : template_value_ref(template_value_dict_value(msg, i));
        rc = v != NULL ? template_value_dict_set(copy, key, v) : -1;
    }
    free(buf);
    if (rc != 0) {
        template_value_unref(copy);
        return NULL;
    }
    return copy;
}

/* messages as the template gets them: a new reference, or NULL when out of memory. */
static struct template_value *prepare_messages(const struct chat *c,
                                               const struct template_value *messages) {
    struct template_value *list = template_value_list();
    if (list == NULL) {
        return NULL;
    }
    bool join = !template_iterates_content(c->tmpl);
    for (size_t i = 0; i < template_value_length(messages); i++) {
        struct template_value *m = template_value_list_get(messages, i);
        struct template_value *v =
            join && template_value_type(m) == TEMPLATE_DICT ? join_parts(m) : template_value_ref(m);
        if (v == NULL || template_value_list_append(list, v) != 0) {
            template_value_unref(list);
            return NULL;
        }
    }
    return list;
}

/* ---- continue_final_message ---- */

/* Python's str.isspace() for one code point. */
static bool py_isspace(uint32_t cp) {
    return (cp >= 0x09 && cp <= 0x0d) || (cp >= 0x1c && cp <= 0x20) || cp == 0x85 || cp == 0xa0 ||
           cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200a) || cp == 0x2028 || cp == 0x2029 ||
           cp == 0x202f || cp == 0x205f || cp == 0x3000;
}

/* Decodes the UTF-8 character at s[0..n) (valid UTF-8 assumed: values come from checked JSON
 * or the renderer); returns its length. */
static size_t utf8_next(const unsigned char *s, size_t n, uint32_t *cp) {
    if (s[0] < 0x80 || n < 2) {
        *cp = s[0];
        return 1;
    }
    if (s[0] < 0xe0) {
        *cp = ((uint32_t)(s[0] & 0x1f) << 6) | (s[1] & 0x3f);
        return 2;
    }
    if (s[0] < 0xf0 || n < 4) {
        *cp = n >= 3
                  ? ((uint32_t)(s[0] & 0x0f) << 12) | ((uint32_t)(s[1] & 0x3f) << 6) | (s[2] & 0x3f)
                  : s[0];
        return n >= 3 ? 3 : 1;
    }
    *cp = ((uint32_t)(s[0] & 0x07) << 18) | ((uint32_t)(s[1] & 0x3f) << 12) |
          ((uint32_t)(s[2] & 0x3f) << 6) | (s[3] & 0x3f);
    return 4;
}

/* Byte offsets of s[0..n) without leading (*lo) and trailing (*hi) Python whitespace. */
static void py_strip_bounds(const char *s, size_t n, size_t *lo, size_t *hi) {
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0, last = 0;
    bool seen = false;
    *lo = n;
    while (i < n) {
        uint32_t cp;
        size_t k = utf8_next(u + i, n - i, &cp);
        if (!py_isspace(cp)) {
            if (!seen) {
                *lo = i;
                seen = true;
            }
            last = i + k;
        }
        i += k;
    }
    *hi = seen ? last : n;
}

/* The text to continue: the last message's content, or the last text part of its list. */
static const char *final_text(const struct template_value *messages, size_t *len) {
    size_t n = template_value_length(messages);
    if (n == 0) {
        return NULL;
    }
    struct template_value *content =
        template_value_dict_get(template_value_list_get(messages, n - 1), "content");
    if (template_value_type(content) == TEMPLATE_LIST) {
        for (size_t i = template_value_length(content); i-- > 0;) {
            struct template_value *t =
                template_value_dict_get(template_value_list_get(content, i), "text");
            if (template_value_type(t) == TEMPLATE_STRING) {
                return template_value_string_bytes(t, len);
            }
        }
        return NULL;
    }
    return template_value_string_bytes(content, len);
}

/* Last occurrence of needle in hay, or -1. */
static ptrdiff_t rfind(const char *hay, size_t n, const char *needle, size_t m) {
    if (m > n) {
        return -1;
    }
    for (size_t i = n - m + 1; i-- > 0;) {
        if (memcmp(hay + i, needle, m) == 0) {
            return (ptrdiff_t)i;
        }
    }
    return -1;
}

/* transformers: find the stripped final message in the text; keep its original trailing
 * spacing when the template kept it, else cut after the stripped text. */
static int cut_after_final(const struct template_value *messages, char *text, size_t *len,
                           char *err, size_t err_size) {
    size_t flen = 0;
    const char *final = final_text(messages, &flen);
    if (final == NULL) {
        snprintf(err, err_size,
                 "continue_final_message: the final message has no text to "
                 "continue");
        return -1;
    }
    size_t lo, hi;
    py_strip_bounds(final, flen, &lo, &hi);
    ptrdiff_t at = rfind(text, *len, final + lo, hi - lo);
    if (at < 0) {
        snprintf(err, err_size,
                 "continue_final_message: the final message does not appear in "
                 "the text the chat template rendered");
        return -1;
    }
    size_t keep_l = flen - lo; /* len(final_message.lstrip()) */
    size_t end = (size_t)at + (hi - lo);
    if ((size_t)at + keep_l <= *len && memcmp(text + at, final + lo, keep_l) == 0 && lo == 0) {
        end = (size_t)at + keep_l;
    }
    text[end] = '\0';
    *len = end;
    return 0;
}

enum template_status chat_render(const struct chat *c, const struct chat_render_params *p,
                                 char **out, size_t *out_len, char *err, size_t err_size) {
    *out = NULL;
    *out_len = 0;
    if (!chat_has_template(c)) {
        snprintf(err, err_size, "model has no chat template (start with --chat-template FILE)");
        return TEMPLATE_ERROR;
    }
    if (p->continue_final_message && p->add_generation_prompt) {
        snprintf(err, err_size,
                 "continue_final_message and add_generation_prompt cannot both be true");
        return TEMPLATE_ERROR;
    }
    enum template_status st = TEMPLATE_NOMEM;
    struct template_value *vars = template_value_dict();
    struct template_value *messages = prepare_messages(c, p->messages);
    if (vars == NULL || messages == NULL) {
        snprintf(err, err_size, "out of memory");
        goto done;
    }
    int rc = 0;
    for (size_t i = 0; i < N_SPECIAL && rc == 0; i++) {
        if (c->special[i] != NULL) {
            rc = template_value_dict_set(
                vars, special_names[i],
                template_value_string(c->special[i], strlen(c->special[i])));
        }
    }
    if (rc == 0 && c->has_additional) {
        struct template_value *list = template_value_list();
        rc = list != NULL ? 0 : -1;
        for (size_t i = 0; i < c->n_additional && rc == 0; i++) {
            rc = template_value_list_append(
                list, template_value_string(c->additional[i], strlen(c->additional[i])));
        }
        if (rc == 0) {
            rc = template_value_dict_set(vars, "additional_special_tokens", list);
        } else {
            template_value_unref(list);
        }
    }
    for (size_t i = 0; i < template_value_length(p->extra) && rc == 0; i++) {
        rc = template_value_dict_set(vars, template_value_dict_key(p->extra, i),
                                     template_value_ref(template_value_dict_value(p->extra, i)));
    }
    if (rc == 0) {
        rc = template_value_dict_set(vars, "messages", template_value_ref(messages));
    }
    if (rc == 0 && p->tools != NULL) {
        rc = template_value_dict_set(vars, "tools",
                                     template_value_ref((struct template_value *)p->tools));
    }
    if (rc == 0 && p->documents != NULL) {
        rc = template_value_dict_set(vars, "documents",
                                     template_value_ref((struct template_value *)p->documents));
    }
    if (rc == 0) {
        rc = template_value_dict_set(vars, "add_generation_prompt",
                                     template_value_bool(p->add_generation_prompt));
    }
    if (rc != 0) {
        snprintf(err, err_size, "out of memory");
        goto done;
    }
    st = template_render(c->tmpl, vars, &p->limits, out, out_len, err, err_size);
    if (st == TEMPLATE_OK && p->continue_final_message &&
        cut_after_final(messages, *out, out_len, err, err_size) != 0) {
        free(*out);
        *out = NULL;
        *out_len = 0;
        st = TEMPLATE_ERROR;
    }
done:
    template_value_unref(messages);
    template_value_unref(vars);
    return st;
}
