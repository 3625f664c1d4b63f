/*
 * request.c: body bytes -> validated struct completion_request (see request.h for the rules).
 *
 * HTTP threads; no shared state. Every error names a field through a static string and never
 * copies request bytes into a message (docs/RELIABILITY.md section 0).
 */
#include "request.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "sbuf.h"

/* Our schema needs depth 3; unknown fields may nest a little more. cJSON's own limit is 1000. */
#define MAX_DEPTH 64
/* Duplicate keys are found by comparing every pair of an object's members, so objects are
 * capped: 1024 members is 0.5 M comparisons at most, and logit_bias needs only 300. */
#define MAX_MEMBERS 1024

static const char *const invalid_request = "invalid_request_error";

int api_error_set(struct api_error *e, int status, const char *type, const char *code,
                  const char *param, const char *fmt, ...) {
    e->status = status;
    e->type = type;
    e->code = code;
    e->param = param;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof(e->message), fmt, ap);
    va_end(ap);
    return -1;
}

void server_request_limits_init_default(struct request_limits *lim) {
    memset(lim, 0, sizeof(*lim));
    lim->max_n = 16;
    lim->max_prompts = 16;
}

void server_request_init(struct completion_request *r) {
    memset(r, 0, sizeof(*r));
}

void server_request_finish(struct completion_request *r) {
    for (size_t i = 0; i < r->n_prompts; i++) {
        free(r->prompts[i].text);
        free(r->prompts[i].ids);
    }
    free(r->prompts);
    server_request_init(r);
}

/* Every field name we read, so that a `param` can point at a static string. */
static const char *const known_fields[] = {
    "prompt",
    "model",
    "max_tokens",
    "temperature",
    "top_p",
    "n",
    "best_of",
    "stream",
    "stream_options",
    "logprobs",
    "echo",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "seed",
    "user",
    "suffix",
    "top_k",
    "min_p",
    "repetition_penalty",
    "min_tokens",
    "ignore_eos",
    "stop_token_ids",
    "use_beam_search",
    "length_penalty",
    "candidates",
    "tokens",
    "add_special_tokens",
    "messages",
    "max_completion_tokens",
    "top_logprobs",
    "tools",
    "tool_choice",
    "response_format",
    "chat_template_kwargs",
    "add_generation_prompt",
    "continue_final_message",
    "skip_special_tokens",
};

static const char *known_name(const char *key) {
    if (key == NULL) {
        return NULL;
    }
    for (size_t i = 0; i < sizeof(known_fields) / sizeof(known_fields[0]); i++) {
        if (strcmp(key, known_fields[i]) == 0) {
            return known_fields[i];
        }
    }
    return NULL;
}

/*
 * Lexical pre-scan: NUL bytes, \u0000 escapes and invalid UTF-8 inside strings, and nesting.
 * Exact for valid JSON; for invalid JSON it may report one of these instead of invalid_json,
 * which is still a 400 with a true message.
 */
static int precheck(const char *body, size_t len, struct api_error *err) {
    const unsigned char *s = (const unsigned char *)body;
    size_t depth = 0;
    size_t i = 0;
    while (i < len) {
        unsigned char c = s[i];
        if (c == 0) {
            return api_error_set(err, 400, invalid_request, "invalid_json", NULL,
                                 "request body is not valid JSON: it contains a NUL byte");
        }
        if (c == '[' || c == '{') {
            if (++depth > MAX_DEPTH) {
                return api_error_set(err, 400, invalid_request, "invalid_json", NULL,
                                     "request body is not valid JSON: nested deeper than %d",
                                     MAX_DEPTH);
            }
        } else if ((c == ']' || c == '}') && depth > 0) {
            depth--;
        } else if (c == '"') {
            size_t start = ++i;
            while (i < len && s[i] != '"') {
                if (s[i] == 0) {
                    return api_error_set(err, 400, invalid_request, "nul_in_string", NULL,
                                         "strings must not contain NUL characters");
                }
                if (s[i] == '\\') {
                    if (i + 5 < len && s[i + 1] == 'u' && memcmp(s + i + 2, "0000", 4) == 0) {
                        return api_error_set(err, 400, invalid_request, "nul_in_string", NULL,
                                             "strings must not contain NUL characters (\\u0000)");
                    }
                    i += 2;
                    continue;
                }
                i++;
            }
            size_t end = i < len ? i : len;
            if (!utf8_is_valid(body + start, end - start)) {
                return api_error_set(err, 400, invalid_request, "invalid_utf8", NULL,
                                     "strings must be valid UTF-8");
            }
        }
        i++;
    }
    return 0;
}

/* Finds duplicate keys anywhere in the tree. *where is the top-level member it was found in. */
static int check_duplicates(const cJSON *node, int depth, struct api_error *err, const char *top) {
    if (cJSON_IsObject(node)) {
        size_t n = 0;
        for (const cJSON *a = node->child; a != NULL; a = a->next) {
            if (++n > MAX_MEMBERS) {
                return api_error_set(err, 400, invalid_request, "invalid_body",
                                     depth == 0 ? NULL : top, "an object has more than %d members",
                                     MAX_MEMBERS);
            }
            for (const cJSON *b = a->next; b != NULL; b = b->next) {
                if (strcmp(a->string, b->string) == 0) {
                    const char *param = depth == 0 ? known_name(a->string) : top;
                    return api_error_set(err, 400, invalid_request, "duplicate_key", param,
                                         "duplicate key in a JSON object%s%s",
                                         param != NULL ? ": " : "", param != NULL ? param : "");
                }
            }
        }
    }
    if (cJSON_IsObject(node) || cJSON_IsArray(node)) {
        for (const cJSON *c = node->child; c != NULL; c = c->next) {
            const char *t = depth == 0 ? known_name(c->string) : top;
            if (check_duplicates(c, depth + 1, err, t) != 0) {
                return -1;
            }
        }
    }
    return 0;
}

void *server_request_parse_json(const char *body, size_t len, struct api_error *err) {
    if (precheck(body, len, err) != 0) {
        return NULL;
    }
    /* cJSON needs the NUL inside the length it is given for require_null_terminated. */
    char *copy = malloc(len + 1);
    if (copy == NULL) {
        api_error_set(err, 500, "server_error", "out_of_memory", NULL, "out of memory");
        return NULL;
    }
    if (len > 0) {
        memcpy(copy, body, len);
    }
    copy[len] = '\0';
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(copy, len + 1, &end, 1);
    if (root != NULL && end != copy + len) {
        cJSON_Delete(root);
        root = NULL;
    }
    free(copy);
    if (root == NULL) {
        api_error_set(err, 400, invalid_request, "invalid_json", NULL,
                      len == 0 ? "request body is empty; expected a JSON object"
                               : "request body is not valid JSON");
        return NULL;
    }
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        api_error_set(err, 400, invalid_request, "invalid_body", NULL,
                      "request body must be a JSON object");
        return NULL;
    }
    if (check_duplicates(root, 0, err, NULL) != 0) {
        cJSON_Delete(root);
        return NULL;
    }
    return root;
}

/* The member, or NULL when absent or JSON null (null means "default" for every field). */
static const cJSON *field(const cJSON *root, const char *name) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(root, name);
    return (it == NULL || cJSON_IsNull(it)) ? NULL : it;
}

static int type_error(struct api_error *err, const char *name, const char *what) {
    return api_error_set(err, 400, invalid_request, "invalid_type", name, "%s must be %s", name,
                         what);
}

/* An integer in [lo, hi] (both exactly representable doubles). */
static int read_int(const cJSON *it, const char *name, double lo, double hi, int64_t *out,
                    struct api_error *err) {
    if (!cJSON_IsNumber(it)) {
        return type_error(err, name, "an integer");
    }
    double x = it->valuedouble;
    if (!isfinite(x)) {
        return api_error_set(err, 400, invalid_request, "invalid_value", name,
                             "%s must be a finite number", name);
    }
    if (floor(x) != x) {
        return type_error(err, name, "an integer");
    }
    if (x < lo || x > hi) {
        return api_error_set(err, 400, invalid_request, "invalid_value", name,
                             "%s must be in [%.0f, %.0f], got %.6g", name, lo, hi, x);
    }
    *out = (int64_t)x;
    return 0;
}

/* A finite number in the range; *_open excludes the bound. */
static int read_number(const cJSON *it, const char *name, double lo, bool lo_open, double hi,
                       bool hi_open, double *out, struct api_error *err) {
    if (!cJSON_IsNumber(it)) {
        return type_error(err, name, "a number");
    }
    double x = it->valuedouble;
    if (!isfinite(x)) {
        return api_error_set(err, 400, invalid_request, "invalid_value", name,
                             "%s must be a finite number", name);
    }
    bool ok = (lo_open ? x > lo : x >= lo) && (hi_open ? x < hi : x <= hi);
    if (!ok) {
        return api_error_set(err, 400, invalid_request, "invalid_value", name,
                             "%s must be in %c%g, %g%c, got %.6g", name, lo_open ? '(' : '[', lo,
                             hi, hi_open ? ')' : ']', x);
    }
    *out = x;
    return 0;
}

static int read_bool(const cJSON *it, const char *name, bool *out, struct api_error *err) {
    if (!cJSON_IsBool(it)) {
        return type_error(err, name, "a boolean");
    }
    *out = cJSON_IsTrue(it);
    return 0;
}

/* A token id: integer, >= 0, < n_vocab when known. */
static int read_token_id(const cJSON *it, const char *name, const struct request_limits *lim,
                         int32_t *out, struct api_error *err) {
    if (!cJSON_IsNumber(it) || !isfinite(it->valuedouble) ||
        floor(it->valuedouble) != it->valuedouble) {
        return type_error(err, name, "an integer token id or a list of them");
    }
    double x = it->valuedouble;
    double hi = lim->n_vocab > 0 ? (double)lim->n_vocab - 1 : 2147483647.0;
    if (x < 0 || x > hi) {
        return api_error_set(err, 400, invalid_request, "invalid_token_id", name,
                             "token ids must be in [0, %.0f], got %.6g", hi, x);
    }
    *out = (int32_t)x;
    return 0;
}

static int oom(struct api_error *err) {
    return api_error_set(err, 500, "server_error", "out_of_memory", NULL, "out of memory");
}

/* An array of token ids -> malloc'd ids. Empty arrays are refused (type error, as F02 [[]]). */
static int read_id_list(const cJSON *arr, const char *name, const struct request_limits *lim,
                        int32_t **ids, size_t *n_ids, struct api_error *err) {
    int n = cJSON_GetArraySize(arr);
    if (n <= 0) {
        return type_error(err, name, "a non-empty list of token ids");
    }
    int32_t *v = malloc((size_t)n * sizeof(*v));
    if (v == NULL) {
        return oom(err);
    }
    size_t i = 0;
    for (const cJSON *c = arr->child; c != NULL; c = c->next) {
        if (read_token_id(c, name, lim, &v[i], err) != 0) {
            free(v);
            return -1;
        }
        i++;
    }
    *ids = v;
    *n_ids = i;
    return 0;
}

static int parse_prompt(const cJSON *root, const struct request_limits *lim,
                        struct completion_request *r, struct api_error *err) {
    const char *name = "prompt";
    const cJSON *p = field(root, name);
    if (p == NULL) {
        return api_error_set(err, 400, invalid_request, "missing_parameter", name,
                             "prompt is required");
    }
    const char *what = "a string, a list of strings, a list of token ids or a list of such lists";
    if (cJSON_IsString(p)) {
        size_t len = strlen(p->valuestring);
        if (len == 0) {
            return api_error_set(err, 400, invalid_request, "empty_prompt", name,
                                 "prompt must not be empty");
        }
        r->prompts = calloc(1, sizeof(*r->prompts));
        if (r->prompts == NULL || (r->prompts[0].text = strdup(p->valuestring)) == NULL) {
            return oom(err);
        }
        r->prompts[0].text_len = len;
        r->n_prompts = 1;
        return 0;
    }
    if (!cJSON_IsArray(p)) {
        return type_error(err, name, what);
    }
    int n = cJSON_GetArraySize(p);
    if (n == 0) {
        return api_error_set(err, 400, invalid_request, "empty_prompt", name,
                             "prompt must not be empty");
    }
    const cJSON *first = p->child;
    if (cJSON_IsNumber(first)) { /* one prompt of token ids */
        r->prompts = calloc(1, sizeof(*r->prompts));
        if (r->prompts == NULL) {
            return oom(err);
        }
        r->n_prompts = 1;
        return read_id_list(p, name, lim, &r->prompts[0].ids, &r->prompts[0].n_ids, err);
    }
    if (!cJSON_IsString(first) && !cJSON_IsArray(first)) {
        return type_error(err, name, what);
    }
    if (n > lim->max_prompts) {
        return api_error_set(err, 400, invalid_request, "too_many_prompts", name,
                             "at most %d prompts per request, got %d", lim->max_prompts, n);
    }
    r->prompts = calloc((size_t)n, sizeof(*r->prompts));
    if (r->prompts == NULL) {
        return oom(err);
    }
    for (const cJSON *c = first; c != NULL; c = c->next) {
        struct prompt *pr = &r->prompts[r->n_prompts++];
        if (cJSON_IsString(first)) {
            if (!cJSON_IsString(c)) {
                return type_error(err, name, what);
            }
            pr->text_len = strlen(c->valuestring);
            if (pr->text_len == 0) {
                return api_error_set(err, 400, invalid_request, "empty_prompt", name,
                                     "prompt must not contain empty strings");
            }
            if ((pr->text = strdup(c->valuestring)) == NULL) {
                return oom(err);
            }
        } else {
            if (!cJSON_IsArray(c)) {
                return type_error(err, name, what);
            }
            if (read_id_list(c, name, lim, &pr->ids, &pr->n_ids, err) != 0) {
                return -1;
            }
        }
    }
    return 0;
}

static int parse_stop(const cJSON *root, struct sampling_params *sp, struct api_error *err) {
    const char *name = "stop";
    const cJSON *s = field(root, name);
    if (s == NULL) {
        return 0;
    }
    const cJSON *one = cJSON_IsString(s) ? s : NULL;
    if (one == NULL && !cJSON_IsArray(s)) {
        return type_error(err, name, "a string or a list of strings");
    }
    if (one == NULL && cJSON_GetArraySize(s) > SAMPLING_MAX_STOP) {
        return api_error_set(err, 400, invalid_request, "invalid_value", name,
                             "at most %d stop sequences, got %d", SAMPLING_MAX_STOP,
                             cJSON_GetArraySize(s));
    }
    for (const cJSON *c = one != NULL ? one : s->child; c != NULL;
         c = one != NULL ? NULL : c->next) {
        if (!cJSON_IsString(c)) {
            return type_error(err, name, "a string or a list of strings");
        }
        size_t len = strlen(c->valuestring);
        if (len == 0 || len > SAMPLING_MAX_STOP_BYTES) {
            return api_error_set(err, 400, invalid_request, "invalid_value", name,
                                 "stop sequences must be 1 to %d bytes long, got %zu",
                                 SAMPLING_MAX_STOP_BYTES, len);
        }
        memcpy(sp->stop[sp->n_stop], c->valuestring, len + 1);
        sp->n_stop++;
    }
    return 0;
}

/* Strict decimal: "0" or [1-9][0-9]*, at most 10 digits. */
static bool parse_decimal_key(const char *s, int64_t *out) {
    size_t len = strlen(s);
    if (len == 0 || len > 10 || (len > 1 && s[0] == '0')) {
        return false;
    }
    int64_t v = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9') {
            return false;
        }
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return true;
}

static int parse_logit_bias(const cJSON *root, const struct request_limits *lim,
                            struct sampling_params *sp, struct api_error *err) {
    const char *name = "logit_bias";
    const cJSON *lb = field(root, name);
    if (lb == NULL) {
        return 0;
    }
    if (!cJSON_IsObject(lb)) {
        return type_error(err, name, "an object mapping token ids to biases");
    }
    if (cJSON_GetArraySize(lb) > SAMPLING_MAX_LOGIT_BIAS) {
        return api_error_set(err, 400, invalid_request, "invalid_value", name,
                             "at most %d logit_bias entries, got %d", SAMPLING_MAX_LOGIT_BIAS,
                             cJSON_GetArraySize(lb));
    }
    for (const cJSON *c = lb->child; c != NULL; c = c->next) {
        int64_t id = 0;
        if (!parse_decimal_key(c->string, &id)) {
            return api_error_set(err, 400, invalid_request, "invalid_value", name,
                                 "logit_bias keys must be token ids written as decimal integers");
        }
        if (lim->n_vocab > 0 ? id >= lim->n_vocab : id > 2147483647) {
            return api_error_set(err, 400, invalid_request, "invalid_value", name,
                                 "logit_bias token id %lld is out of the vocabulary (%d tokens)",
                                 (long long)id, lim->n_vocab);
        }
        double v;
        if (read_number(c, name, -100, false, 100, false, &v, err) != 0) {
            return -1;
        }
        sp->logit_bias[sp->n_logit_bias].token_id = (int32_t)id;
        sp->logit_bias[sp->n_logit_bias].bias = (float)v;
        sp->n_logit_bias++;
    }
    return 0;
}

static int parse_stop_token_ids(const cJSON *root, const struct request_limits *lim,
                                struct sampling_params *sp, struct api_error *err) {
    const char *name = "stop_token_ids";
    const cJSON *s = field(root, name);
    if (s == NULL) {
        return 0;
    }
    if (!cJSON_IsArray(s)) {
        return type_error(err, name, "a list of token ids");
    }
    if (cJSON_GetArraySize(s) > SAMPLING_MAX_STOP_TOKEN_IDS) {
        return api_error_set(err, 400, invalid_request, "invalid_value", name,
                             "at most %d stop_token_ids", SAMPLING_MAX_STOP_TOKEN_IDS);
    }
    for (const cJSON *c = s->child; c != NULL; c = c->next) {
        int32_t id = 0;
        if (read_token_id(c, name, lim, &id, err) != 0) {
            return -1;
        }
        sp->stop_token_ids[sp->n_stop_token_ids++] = id;
    }
    return 0;
}

/* Every field but the prompt, in the order of the issue. */
static int parse_fields(const cJSON *root, const struct request_limits *lim, const char *served,
                        bool is_chat, struct completion_request *r, struct api_error *err) {
    struct sampling_params *sp = &r->sampling;
    const cJSON *it;
    int64_t iv;
    double dv;
    bool bv = false;

    if ((it = field(root, "model")) != NULL) {
        if (!cJSON_IsString(it)) {
            return type_error(err, "model", "a string");
        }
        r->has_model = true;
        r->model_matches = served != NULL && strcmp(it->valuestring, served) == 0;
    }
    if (!is_chat && (it = field(root, "suffix")) != NULL &&
        !(cJSON_IsString(it) && it->valuestring[0] == '\0')) {
        return api_error_set(err, 400, invalid_request, "unsupported_parameter", "suffix",
                             "suffix is not supported: the model has no fill-in-the-middle mode");
    }
    if ((it = field(root, "user")) != NULL && !cJSON_IsString(it)) {
        return type_error(err, "user", "a string");
    }
    if (!is_chat && (it = field(root, "echo")) != NULL &&
        read_bool(it, "echo", &r->echo, err) != 0) {
        return -1;
    }
    if ((it = field(root, "stream")) != NULL && read_bool(it, "stream", &r->stream, err) != 0) {
        return -1;
    }
    if ((it = field(root, "stream_options")) != NULL) {
        if (!cJSON_IsObject(it)) {
            return type_error(err, "stream_options", "an object");
        }
        if (!r->stream) {
            return api_error_set(err, 400, invalid_request, "invalid_value", "stream_options",
                                 "stream_options is only allowed with stream: true");
        }
        const cJSON *iu = field(it, "include_usage");
        if (iu != NULL && read_bool(iu, "stream_options", &r->include_usage, err) != 0) {
            return -1;
        }
    }

    double cap = lim->max_tokens_cap > 0 ? lim->max_tokens_cap
                 : lim->n_ctx > 0        ? lim->n_ctx
                                         : 2147483647.0;
    r->max_tokens = 16;
    /* Chat: max_completion_tokens is OpenAI's current name, max_tokens the deprecated one; with
     * neither, the answer may use the rest of the context (as OpenAI and vLLM do), decided
     * once the prompt is tokenized. */
    const char *max_name = "max_tokens";
    if (is_chat && field(root, "max_completion_tokens") != NULL) {
        max_name = "max_completion_tokens";
        /* The other one is still checked: a bad value is a bad request either way. */
        if ((it = field(root, "max_tokens")) != NULL &&
            read_int(it, "max_tokens", 1, cap, &iv, err) != 0) {
            return -1;
        }
    }
    if ((it = field(root, max_name)) != NULL) {
        if (read_int(it, max_name, r->echo ? 0 : 1, cap, &iv, err) != 0) {
            return -1;
        }
        r->max_tokens = (int32_t)iv;
    } else if (is_chat) {
        r->max_tokens_auto = true;
        r->max_tokens = (int32_t)cap;
    } else if (r->max_tokens > cap) {
        r->max_tokens = (int32_t)cap;
    }
    sp->max_tokens = r->max_tokens > 0 ? r->max_tokens : 1;
    if ((it = field(root, "min_tokens")) != NULL) {
        if (read_int(it, "min_tokens", 0, r->max_tokens, &iv, err) != 0) {
            return -1;
        }
        sp->min_tokens = (int32_t)iv;
    }
    if ((it = field(root, "temperature")) != NULL) {
        if (read_number(it, "temperature", 0, false, 2, false, &dv, err) != 0) {
            return -1;
        }
        sp->temperature = (float)dv;
    }
    if ((it = field(root, "top_p")) != NULL) {
        if (read_number(it, "top_p", 0, true, 1, false, &dv, err) != 0) {
            return -1;
        }
        sp->top_p = (float)dv;
    }
    if ((it = field(root, "top_k")) != NULL) {
        if (read_int(it, "top_k", -1, 2147483647.0, &iv, err) != 0) {
            return -1;
        }
        sp->top_k = iv < 0 ? 0 : (int32_t)iv;
    }
    if ((it = field(root, "min_p")) != NULL) {
        if (read_number(it, "min_p", 0, false, 1, true, &dv, err) != 0) {
            return -1;
        }
        sp->min_p = (float)dv;
    }
    if ((it = field(root, "repetition_penalty")) != NULL) {
        if (read_number(it, "repetition_penalty", 0, true, 10, false, &dv, err) != 0) {
            return -1;
        }
        sp->repetition_penalty = (float)dv;
    }
    if ((it = field(root, "presence_penalty")) != NULL) {
        if (read_number(it, "presence_penalty", -2, false, 2, false, &dv, err) != 0) {
            return -1;
        }
        sp->presence_penalty = (float)dv;
    }
    if ((it = field(root, "frequency_penalty")) != NULL) {
        if (read_number(it, "frequency_penalty", -2, false, 2, false, &dv, err) != 0) {
            return -1;
        }
        sp->frequency_penalty = (float)dv;
    }
    r->n = 1;
    if ((it = field(root, "n")) != NULL) {
        if (read_int(it, "n", 1, lim->max_n, &iv, err) != 0) {
            return -1;
        }
        r->n = (int32_t)iv;
    }
    r->best_of = r->n;
    if ((it = field(root, "best_of")) != NULL) {
        if (read_int(it, "best_of", 1, lim->max_n, &iv, err) != 0) {
            return -1;
        }
        if (iv < r->n) {
            return api_error_set(err, 400, invalid_request, "invalid_value", "best_of",
                                 "best_of must be >= n (%d), got %lld", r->n, (long long)iv);
        }
        r->best_of = (int32_t)iv;
    }
    if (r->stream && r->best_of > r->n) {
        return api_error_set(err, 400, invalid_request, "invalid_value", "best_of",
                             "best_of > n cannot be streamed");
    }
    if ((it = field(root, "use_beam_search")) != NULL &&
        read_bool(it, "use_beam_search", &r->use_beam_search, err) != 0) {
        return -1;
    }
    r->length_penalty = 1.0f;
    if ((it = field(root, "length_penalty")) != NULL) {
        if (read_number(it, "length_penalty", -1e6, false, 1e6, false, &dv, err) != 0) {
            return -1;
        }
        r->length_penalty = (float)dv;
    }
    if (is_chat) {
        /* Chat: logprobs is a flag and top_logprobs the number of alternatives. */
        bool want = false;
        if ((it = field(root, "logprobs")) != NULL && read_bool(it, "logprobs", &want, err) != 0) {
            return -1;
        }
        if ((it = field(root, "top_logprobs")) != NULL) {
            if (read_int(it, "top_logprobs", 0, SAMPLING_MAX_LOGPROBS, &iv, err) != 0) {
                return -1;
            }
            if (!want && iv > 0) {
                return api_error_set(err, 400, invalid_request, "invalid_value", "top_logprobs",
                                     "top_logprobs needs logprobs: true");
            }
        } else {
            iv = 0;
        }
        sp->logprobs = want ? (int32_t)iv : -1;
    } else if ((it = field(root, "logprobs")) != NULL) {
        if (read_int(it, "logprobs", 0, SAMPLING_MAX_LOGPROBS, &iv, err) != 0) {
            return -1;
        }
        sp->logprobs = (int32_t)iv;
    }
    if ((it = field(root, "candidates")) != NULL) {
        if (read_int(it, "candidates", 0, SAMPLING_MAX_CANDIDATES, &iv, err) != 0) {
            return -1;
        }
        sp->candidates = (int32_t)iv;
    }
    if (parse_stop(root, sp, err) != 0 || parse_logit_bias(root, lim, sp, err) != 0 ||
        parse_stop_token_ids(root, lim, sp, err) != 0) {
        return -1;
    }
    if ((it = field(root, "seed")) != NULL) {
        /* -1 means "random", as in vLLM and llama.cpp; otherwise [0, 2^63). */
        if (!cJSON_IsNumber(it) || !isfinite(it->valuedouble) ||
            floor(it->valuedouble) != it->valuedouble) {
            return type_error(err, "seed", "an integer");
        }
        double x = it->valuedouble;
        if (x != -1 && !(x >= 0 && x < 9223372036854775808.0)) {
            return api_error_set(err, 400, invalid_request, "invalid_value", "seed",
                                 "seed must be -1 or in [0, 2^63 - 1], got %.6g", x);
        }
        if (x >= 0) {
            sp->has_seed = true;
            sp->seed = (uint64_t)x;
        }
    }
    /* A chat answer is text for people: the template's markers (<|im_start|>, ...) a model
     * may emit before its end token are not shown, as vLLM does. Completions keep every token's
     * text by default (`gptd generate` and the raw-text tools compare it byte for byte). */
    r->skip_special_tokens = is_chat;
    if ((it = field(root, "skip_special_tokens")) != NULL &&
        read_bool(it, "skip_special_tokens", &r->skip_special_tokens, err) != 0) {
        return -1;
    }
    if ((it = field(root, "ignore_eos")) != NULL) {
        if (read_bool(it, "ignore_eos", &bv, err) != 0) {
            return -1;
        }
        sp->ignore_eos = bv;
    }
    return 0;
}

/* The defaults sampling.h documents, written here so parsing needs no sampling object code. */
static void sampling_defaults(struct sampling_params *p) {
    memset(p, 0, sizeof(*p));
    p->temperature = 1.0f;
    p->top_p = 1.0f;
    p->repetition_penalty = 1.0f;
    p->max_tokens = 16;
    p->logprobs = -1;
}

static int parse_request(const char *body, size_t len, const struct request_limits *lim,
                         const char *served_model, bool is_chat, struct completion_request *out,
                         struct api_error *err);

int server_request_parse_completion(const char *body, size_t len, const struct request_limits *lim,
                                    const char *served_model, struct completion_request *out,
                                    struct api_error *err) {
    return parse_request(body, len, lim, served_model, false, out, err);
}

/* ---- /v1/chat/completions ---- */

static const char *const chat_roles[] = {"system", "developer", "user", "assistant", "tool"};

/* Content part types of OpenAI's API that a text model cannot take: named in the error. Any
 * other type is "unknown" (request bytes are never echoed). */
static const char *const media_part_types[] = {"image_url",   "input_audio", "file",
                                               "image",       "audio_url",   "video_url",
                                               "input_image", "refusal"};

static int message_error(struct api_error *err, const char *code, int i, const char *what) {
    return api_error_set(err, 400, invalid_request, code, "messages", "messages[%d]%s", i, what);
}

static int parse_content_parts(const cJSON *content, int i, struct api_error *err) {
    int k = 0;
    for (const cJSON *part = content->child; part != NULL; part = part->next, k++) {
        const cJSON *type =
            cJSON_IsObject(part) ? cJSON_GetObjectItemCaseSensitive(part, "type") : NULL;
        if (!cJSON_IsString(type)) {
            return api_error_set(err, 400, invalid_request, "invalid_type", "messages",
                                 "messages[%d].content[%d] must be an object with a \"type\"", i,
                                 k);
        }
        if (strcmp(type->valuestring, "text") == 0) {
            if (!cJSON_IsString(cJSON_GetObjectItemCaseSensitive(part, "text"))) {
                return api_error_set(err, 400, invalid_request, "invalid_type", "messages",
                                     "messages[%d].content[%d].text must be a string", i, k);
            }
            continue;
        }
        for (size_t t = 0; t < sizeof(media_part_types) / sizeof(media_part_types[0]); t++) {
            if (strcmp(type->valuestring, media_part_types[t]) == 0) {
                return api_error_set(err, 400, invalid_request, "unsupported_content_type",
                                     "messages",
                                     "messages[%d].content[%d] is of type \"%s\": this model "
                                     "takes text only (type \"text\")",
                                     i, k, media_part_types[t]);
            }
        }
        return api_error_set(err, 400, invalid_request, "unsupported_content_type", "messages",
                             "messages[%d].content[%d] has an unknown type: this model takes "
                             "text only (type \"text\")",
                             i, k);
    }
    return 0;
}

static int parse_messages(const cJSON *root, struct api_error *err) {
    const cJSON *msgs = field(root, "messages");
    if (msgs == NULL) {
        return api_error_set(err, 400, invalid_request, "missing_parameter", "messages",
                             "messages is required");
    }
    if (!cJSON_IsArray(msgs)) {
        return type_error(err, "messages", "a list of messages");
    }
    if (msgs->child == NULL) {
        return api_error_set(err, 400, invalid_request, "invalid_value", "messages",
                             "messages must not be empty");
    }
    int i = 0;
    for (const cJSON *m = msgs->child; m != NULL; m = m->next, i++) {
        if (!cJSON_IsObject(m)) {
            return message_error(err, "invalid_type", i, " must be an object");
        }
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
        if (!cJSON_IsString(role)) {
            return message_error(err, "invalid_type", i, ".role must be a string");
        }
        size_t r = 0;
        while (r < sizeof(chat_roles) / sizeof(chat_roles[0]) &&
               strcmp(role->valuestring, chat_roles[r]) != 0) {
            r++;
        }
        if (r == sizeof(chat_roles) / sizeof(chat_roles[0])) {
            return message_error(err, "invalid_value", i,
                                 ".role is unknown (valid roles: system, developer, user, "
                                 "assistant, tool)");
        }
        bool is_assistant = strcmp(role->valuestring, "assistant") == 0;
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(m, "content");
        if (content == NULL || cJSON_IsNull(content)) {
            /* An assistant turn that only called tools has no content. */
            if (!is_assistant) {
                return message_error(err, "missing_parameter", i, ".content is required");
            }
        } else if (cJSON_IsArray(content)) {
            if (parse_content_parts(content, i, err) != 0) {
                return -1;
            }
        } else if (!cJSON_IsString(content)) {
            return message_error(err, "invalid_type", i,
                                 ".content must be a string, null or a list of content parts");
        }
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(m, "name");
        if (name != NULL && !cJSON_IsNull(name) && !cJSON_IsString(name)) {
            return message_error(err, "invalid_type", i, ".name must be a string");
        }
        const cJSON *calls = cJSON_GetObjectItemCaseSensitive(m, "tool_calls");
        if (calls != NULL && !cJSON_IsNull(calls)) {
            if (!is_assistant || !cJSON_IsArray(calls)) {
                return message_error(err, "invalid_type", i,
                                     ".tool_calls must be a list, on an assistant message");
            }
            for (const cJSON *c = calls->child; c != NULL; c = c->next) {
                const cJSON *fn =
                    cJSON_IsObject(c) ? cJSON_GetObjectItemCaseSensitive(c, "function") : NULL;
                const cJSON *args = cJSON_GetObjectItemCaseSensitive(fn, "arguments");
                if (!cJSON_IsObject(fn) ||
                    !cJSON_IsString(cJSON_GetObjectItemCaseSensitive(fn, "name")) ||
                    (args != NULL && !cJSON_IsString(args) && !cJSON_IsObject(args))) {
                    return message_error(err, "invalid_type", i,
                                         ".tool_calls[] must be {\"function\": {\"name\": "
                                         "string, \"arguments\": JSON string}}");
                }
            }
        }
    }
    return 0;
}

static int parse_chat_fields(const cJSON *root, struct completion_request *r,
                             struct api_error *err) {
    const cJSON *it;
    if ((it = field(root, "tools")) != NULL) {
        if (!cJSON_IsArray(it)) {
            return type_error(err, "tools", "a list of tools");
        }
        for (const cJSON *t = it->child; t != NULL; t = t->next) {
            const cJSON *fn =
                cJSON_IsObject(t) ? cJSON_GetObjectItemCaseSensitive(t, "function") : NULL;
            if (!cJSON_IsObject(fn) ||
                !cJSON_IsString(cJSON_GetObjectItemCaseSensitive(fn, "name"))) {
                return type_error(err, "tools",
                                  "a list of {\"type\": \"function\", \"function\": {\"name\", "
                                  "...}}");
            }
        }
    }
    if ((it = field(root, "tool_choice")) != NULL) {
        if (cJSON_IsString(it) &&
            (strcmp(it->valuestring, "none") == 0 || strcmp(it->valuestring, "auto") == 0)) {
            /* the model may answer in text: what gptd does */
        } else if ((cJSON_IsString(it) && strcmp(it->valuestring, "required") == 0) ||
                   cJSON_IsObject(it)) {
            return api_error_set(err, 400, invalid_request, "unsupported_parameter", "tool_choice",
                                 "tool_choice \"required\" or a named function is not "
                                 "supported: gptd does not parse tool calls yet (use \"auto\" "
                                 "or \"none\")");
        } else {
            return type_error(err, "tool_choice", "\"none\", \"auto\", \"required\" or an object");
        }
    }
    if ((it = field(root, "response_format")) != NULL) {
        const cJSON *type =
            cJSON_IsObject(it) ? cJSON_GetObjectItemCaseSensitive(it, "type") : NULL;
        if (!cJSON_IsString(type)) {
            return type_error(err, "response_format", "an object with a \"type\"");
        }
        if (strcmp(type->valuestring, "text") != 0) {
            return api_error_set(err, 400, invalid_request, "unsupported_parameter",
                                 "response_format",
                                 "response_format: only {\"type\": \"text\"} is supported");
        }
    }
    if ((it = field(root, "chat_template_kwargs")) != NULL && !cJSON_IsObject(it)) {
        return type_error(err, "chat_template_kwargs", "an object");
    }
    r->add_generation_prompt = true;
    if ((it = field(root, "add_generation_prompt")) != NULL &&
        read_bool(it, "add_generation_prompt", &r->add_generation_prompt, err) != 0) {
        return -1;
    }
    if ((it = field(root, "continue_final_message")) != NULL &&
        read_bool(it, "continue_final_message", &r->continue_final_message, err) != 0) {
        return -1;
    }
    if (r->add_generation_prompt && r->continue_final_message) {
        return api_error_set(err, 400, invalid_request, "invalid_value", "continue_final_message",
                             "continue_final_message needs add_generation_prompt: false");
    }
    return parse_messages(root, err);
}

/* What both endpoints share: the strict JSON checks, the sampling fields (checked again as the
 * sampler stores them), then the endpoint's own fields -- the prompt last, so that most bad
 * requests are refused before a large prompt is copied. */
static int parse_request(const char *body, size_t len, const struct request_limits *lim,
                         const char *served_model, bool is_chat, struct completion_request *out,
                         struct api_error *err) {
    server_request_init(out);
    sampling_defaults(&out->sampling);
    out->is_chat = is_chat;
    cJSON *root = server_request_parse_json(body, len, err);
    if (root == NULL) {
        return -1;
    }
    int rc = parse_fields(root, lim, served_model, is_chat, out, err);
    if (rc == 0) {
        /* The checks above run on doubles; the sampler keeps floats, and rounding can move a
         * value out of range (top_p 1e-50 becomes 0). The sampler's own validation on the
         * stored values catches that here, as a 400, not later as an engine error. */
        const char *param = NULL;
        char msg[200];
        if (sampling_params_validate(&out->sampling, lim->n_vocab > 0 ? lim->n_vocab : INT32_MAX,
                                     &param, msg, sizeof(msg)) != 0) {
            rc = api_error_set(err, 400, invalid_request, "invalid_value", param, "%s", msg);
        }
    }
    if (rc == 0) {
        rc = is_chat ? parse_chat_fields(root, out, err) : parse_prompt(root, lim, out, err);
    }
    if (rc == 0 && is_chat) {
        /* One prompt, its text rendered later by the chat template. */
        out->prompts = calloc(1, sizeof(*out->prompts));
        if (out->prompts == NULL) {
            rc = oom(err);
        } else {
            out->n_prompts = 1;
        }
    }
    cJSON_Delete(root);
    if (rc != 0) {
        server_request_finish(out);
        return -1;
    }
    return 0;
}

int server_request_parse_chat(const char *body, size_t len, const struct request_limits *lim,
                              const char *served_model, struct completion_request *out,
                              struct api_error *err) {
    return parse_request(body, len, lim, served_model, true, out, err);
}

static int context_error(struct api_error *err, const char *param, int32_t n_ctx,
                         unsigned long long n_prompt, int32_t max_tokens, bool at_least) {
    return api_error_set(err, 400, invalid_request, "context_length_exceeded", param,
                         "This model's maximum context length is %d tokens. However, you "
                         "requested %s%llu tokens (%s%llu in the prompt, %d for the completion).",
                         n_ctx, at_least ? "at least " : "",
                         n_prompt + (unsigned long long)max_tokens, at_least ? "at least " : "",
                         n_prompt, max_tokens);
}

int server_request_tokenize(struct completion_request *r, struct tokenizer *tok,
                            const struct request_limits *lim, struct api_error *err) {
    /* With max_tokens_auto the answer takes what is left, but needs at least one token. */
    int32_t least_new = r->max_tokens_auto ? 1 : r->max_tokens;
    const char *prompt_param = r->is_chat ? "messages" : "prompt";
    for (size_t i = 0; i < r->n_prompts; i++) {
        struct prompt *p = &r->prompts[i];
        if (p->ids == NULL) {
            /* No token stands for more than max_token_bytes of text, so a text this long
             * cannot fit: refuse it before running BPE over (possibly) a megabyte. */
            if (lim->n_ctx > 0 && lim->max_token_bytes > 0) {
                size_t at_least = (p->text_len + lim->max_token_bytes - 1) / lim->max_token_bytes;
                if (at_least + (size_t)least_new > (size_t)lim->n_ctx) {
                    return context_error(
                        err, at_least >= (size_t)lim->n_ctx ? prompt_param : "max_tokens",
                        lim->n_ctx, at_least, least_new, true);
                }
            }
            char msg[128];
            /* add_special_tokens=True, vLLM's default: Llama's BOS; GPT-2 adds nothing. */
            if (tokenizer_encode(tok, p->text, p->text_len,
                                 TOKENIZER_PARSE_SPECIAL | TOKENIZER_ADD_SPECIAL, &p->ids,
                                 &p->n_ids, msg, sizeof(msg)) != 0) {
                return api_error_set(err, 400, invalid_request, "invalid_value",
                                     r->is_chat ? "messages" : "prompt",
                                     "the prompt could not be tokenized");
            }
            /* A chat template that writes {{ bos_token }} itself (Llama 3, Gemma): the
             * tokenizer's BOS would make it two, which the model never saw in training. */
            int32_t bos = tokenizer_bos_id(tok);
            if (r->is_chat && bos >= 0 && p->n_ids >= 2 && p->ids[0] == bos && p->ids[1] == bos) {
                memmove(p->ids, p->ids + 1, (p->n_ids - 1) * sizeof(*p->ids));
                p->n_ids--;
            }
            if (p->n_ids == 0) {
                return api_error_set(err, 400, invalid_request, "empty_prompt", prompt_param,
                                     "the prompt has no tokens");
            }
        }
        if (r->max_tokens_auto && lim->n_ctx > 0 && p->n_ids < (size_t)lim->n_ctx &&
            p->n_ids + (size_t)r->max_tokens > (size_t)lim->n_ctx) {
            r->max_tokens = lim->n_ctx - (int32_t)p->n_ids;
            r->sampling.max_tokens = r->max_tokens;
            if (r->sampling.min_tokens > r->max_tokens) {
                r->sampling.min_tokens = r->max_tokens;
            }
        }
        if (lim->n_ctx > 0 && p->n_ids + (size_t)r->max_tokens > (size_t)lim->n_ctx) {
            return context_error(err, p->n_ids >= (size_t)lim->n_ctx ? prompt_param : "max_tokens",
                                 lim->n_ctx, p->n_ids,
                                 r->max_tokens_auto ? least_new : r->max_tokens, false);
        }
    }
    return 0;
}

int server_request_parse_tokenize(const char *body, size_t len, char **text, size_t *text_len,
                                  bool *add_special, struct api_error *err) {
    *text = NULL;
    *text_len = 0;
    *add_special = true;
    cJSON *root = server_request_parse_json(body, len, err);
    if (root == NULL) {
        return -1;
    }
    int rc = -1;
    const cJSON *p = field(root, "prompt");
    const cJSON *ast = field(root, "add_special_tokens");
    if (p == NULL) {
        api_error_set(err, 400, invalid_request, "missing_parameter", "prompt",
                      "prompt is required");
    } else if (!cJSON_IsString(p)) {
        type_error(err, "prompt", "a string");
    } else if (ast != NULL && !cJSON_IsBool(ast)) {
        type_error(err, "add_special_tokens", "a boolean");
    } else if ((*text = strdup(p->valuestring)) == NULL) {
        oom(err);
    } else {
        *text_len = strlen(*text);
        *add_special = ast == NULL || cJSON_IsTrue(ast);
        rc = 0;
    }
    cJSON_Delete(root);
    return rc;
}

int server_request_parse_detokenize(const char *body, size_t len, const struct request_limits *lim,
                                    int32_t **ids, size_t *n_ids, struct api_error *err) {
    *ids = NULL;
    *n_ids = 0;
    cJSON *root = server_request_parse_json(body, len, err);
    if (root == NULL) {
        return -1;
    }
    int rc = -1;
    const cJSON *t = field(root, "tokens");
    if (t == NULL) {
        api_error_set(err, 400, invalid_request, "missing_parameter", "tokens",
                      "tokens is required");
    } else if (!cJSON_IsArray(t)) {
        type_error(err, "tokens", "a list of token ids");
    } else if (cJSON_GetArraySize(t) == 0) {
        *ids = malloc(sizeof(int32_t));
        rc = *ids == NULL ? oom(err) : 0;
    } else {
        rc = read_id_list(t, "tokens", lim, ids, n_ids, err);
    }
    cJSON_Delete(root);
    return rc;
}
