/*
 * config.c: reads and validates a Hugging Face config.json (GPT-2 or the Llama family: llama,
 * mistral, qwen2) into struct model_config, and merges generation_config.json's end tokens.
 * Called by model_load on the main thread. Options gptd does not implement are refused with a
 * message naming the file, the field and the value, so a model is never computed wrongly.
 */
#include "config.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

/* config.json is a few KB; anything this large is not one. */
#define CONFIG_MAX_BYTES (1024 * 1024)

/* Reads an integer field in [lo, hi]. Returns 1 if present and valid, 0 if absent (or null),
 * -1 if present but invalid (and writes err). */
static int get_int(const cJSON *root, const char *key, int64_t lo, int64_t hi, int32_t *out,
                   const char *path, char *err, size_t err_size) {
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(root, key);
    if (item == NULL || cJSON_IsNull(item)) {
        return 0;
    }
    double d = cJSON_IsNumber(item) ? item->valuedouble : NAN;
    if (!(d >= (double)lo && d <= (double)hi) || d != floor(d)) {
        snprintf(err, err_size, "%s: '%s' must be an integer in [%lld, %lld]", path, key,
                 (long long)lo, (long long)hi);
        return -1;
    }
    *out = (int32_t)d;
    return 1;
}

/* Reads a number field in (lo, hi). Same returns as get_int. */
static int get_float(const cJSON *root, const char *key, double lo, double hi, float *out,
                     const char *path, char *err, size_t err_size) {
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(root, key);
    if (item == NULL || cJSON_IsNull(item)) {
        return 0;
    }
    double d = cJSON_IsNumber(item) ? item->valuedouble : NAN;
    if (!(d > lo && d < hi)) {
        snprintf(err, err_size, "%s: '%s' must be a number in (%g, %g)", path, key, lo, hi);
        return -1;
    }
    *out = (float)d;
    return 1;
}

static int get_bool(const cJSON *root, const char *key, int fallback) {
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(root, key);
    if (cJSON_IsBool(item)) {
        return cJSON_IsTrue(item) ? 1 : 0;
    }
    return fallback;
}

/* Reads every integer field in the table; a missing one is an error. */
struct int_field {
    const char *key;
    int64_t lo, hi;
    int32_t *dst;
};

static int get_required_ints(const cJSON *root, const struct int_field *fields, size_t n,
                             const char *path, char *err, size_t err_size) {
    for (size_t i = 0; i < n; i++) {
        int got = get_int(root, fields[i].key, fields[i].lo, fields[i].hi, fields[i].dst, path, err,
                          err_size);
        if (got < 0) {
            return -1;
        }
        if (got == 0) {
            snprintf(err, err_size, "%s: '%s' is missing", path, fields[i].key);
            return -1;
        }
    }
    return 0;
}

/* Appends id to the end tokens unless already there. */
static void add_eos(struct model_config *c, int32_t id) {
    for (int32_t i = 0; i < c->n_eos; i++) {
        if (c->eos_token_ids[i] == id) {
            return;
        }
    }
    if (c->n_eos < MODEL_MAX_EOS) {
        c->eos_token_ids[c->n_eos++] = id;
    }
    c->eos_token_id = c->eos_token_ids[0];
}

/* bos_token_id / eos_token_id: an int, a list of ints, null or absent. Every listed EOS ends a
 * sequence; the BOS is the first listed. Returns 0, or -1 with a message. */
static int get_token_ids(const cJSON *root, const char *key, struct model_config *c, int is_eos,
                         const char *path, char *err, size_t err_size) {
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(root, key);
    if (item == NULL || cJSON_IsNull(item)) {
        return 0;
    }
    const cJSON *one = item;
    int n = cJSON_IsArray(item) ? cJSON_GetArraySize(item) : 1;
    if (n > MODEL_MAX_EOS) {
        snprintf(err, err_size, "%s: '%s' lists %d tokens (at most %d)", path, key, n,
                 MODEL_MAX_EOS);
        return -1;
    }
    for (int i = 0; i < n; i++) {
        if (cJSON_IsArray(item)) {
            one = cJSON_GetArrayItem(item, i);
        }
        if (!cJSON_IsNumber(one) || one->valuedouble < 0 || one->valuedouble >= c->n_vocab ||
            one->valuedouble != floor(one->valuedouble)) {
            snprintf(err, err_size, "%s: '%s' must be token ids below %d", path, key, c->n_vocab);
            return -1;
        }
        int32_t id = (int32_t)one->valuedouble;
        if (is_eos) {
            add_eos(c, id);
        } else if (i == 0) {
            c->bos_token_id = id;
        }
    }
    return 0;
}

static int parse_gpt2(const cJSON *root, const char *path, struct model_config_ext *out, char *err,
                      size_t err_size) {
    struct model_config *c = &out->config;
    c->arch = MODEL_ARCH_GPT2;
    const struct int_field ints[] = {
        {"n_layer", 1, 1024, &c->n_layer},
        {"n_head", 1, 1024, &c->n_head},
        {"n_embd", 1, 65536, &c->n_embd},
        {"vocab_size", 1, 1 << 24, &c->n_vocab},
    };
    if (get_required_ints(root, ints, sizeof(ints) / sizeof(ints[0]), path, err, err_size) != 0) {
        return -1;
    }
    int got = get_int(root, "n_positions", 1, 1 << 20, &c->n_ctx, path, err, err_size);
    if (got == 0) {
        got = get_int(root, "n_ctx", 1, 1 << 20, &c->n_ctx, path, err, err_size);
    }
    if (got <= 0) {
        if (got == 0) {
            snprintf(err, err_size, "%s: 'n_positions' is missing", path);
        }
        return -1;
    }
    if (c->n_embd % c->n_head != 0) {
        snprintf(err, err_size, "%s: n_embd %d is not a multiple of n_head %d", path, c->n_embd,
                 c->n_head);
        return -1;
    }
    c->n_kv_head = c->n_head;
    c->head_dim = c->n_embd / c->n_head;
    c->n_inner = 4 * c->n_embd;
    if (get_int(root, "n_inner", 1, 1 << 18, &c->n_inner, path, err, err_size) < 0) {
        return -1;
    }
    c->layer_norm_eps = 1e-5f;
    if (get_float(root, "layer_norm_epsilon", 0.0, 1.0, &c->layer_norm_eps, path, err, err_size) <
        0) {
        return -1;
    }
    c->activation = MODEL_ACT_GELU_TANH;
    const cJSON *act = cJSON_GetObjectItemCaseSensitive(root, "activation_function");
    if (act != NULL) {
        const char *a = cJSON_IsString(act) ? act->valuestring : "";
        if (strcmp(a, "gelu_new") == 0 || strcmp(a, "gelu_pytorch_tanh") == 0 ||
            strcmp(a, "gelu_fast") == 0) {
            c->activation = MODEL_ACT_GELU_TANH;
        } else if (strcmp(a, "gelu") == 0) {
            c->activation = MODEL_ACT_GELU_EXACT;
        } else {
            snprintf(err, err_size, "%s: activation_function \"%.40s\" is not supported", path, a);
            return -1;
        }
    }
    c->is_scale_attn_weights = get_bool(root, "scale_attn_weights", 1);
    const char *refused[] = {"scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn",
                             "add_cross_attention"};
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
        if (get_bool(root, refused[i], 0)) {
            snprintf(err, err_size, "%s: '%s: true' is not supported", path, refused[i]);
            return -1;
        }
    }
    c->is_tied = get_bool(root, "tie_word_embeddings", 1);
    return 0;
}

/* rope_scaling: null, or {"rope_type" (or "type"): "default" | "linear" | "llama3", ...}. */
static int parse_rope_scaling(const cJSON *root, const char *path, struct model_config_ext *out,
                              char *err, size_t err_size) {
    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(root, "rope_scaling");
    out->rope_scaling = ROPE_SCALING_NONE;
    if (rs == NULL || cJSON_IsNull(rs)) {
        return 0;
    }
    if (!cJSON_IsObject(rs)) {
        snprintf(err, err_size, "%s: 'rope_scaling' must be an object or null", path);
        return -1;
    }
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(rs, "rope_type");
    if (type == NULL) {
        type = cJSON_GetObjectItemCaseSensitive(rs, "type");
    }
    const char *t = cJSON_IsString(type) ? type->valuestring : "";
    if (strcmp(t, "default") == 0) {
        return 0;
    }
    if (strcmp(t, "linear") == 0) {
        out->rope_scaling = ROPE_SCALING_LINEAR;
    } else if (strcmp(t, "llama3") == 0) {
        out->rope_scaling = ROPE_SCALING_LLAMA3;
    } else {
        snprintf(err, err_size,
                 "%s: rope_scaling type \"%.40s\" is not supported (none, linear or llama3)", path,
                 type == NULL ? "missing" : t);
        return -1;
    }
    if (get_float(rs, "factor", 0.0, 1e6, &out->rope_factor, path, err, err_size) <= 0) {
        if (err[0] == '\0') {
            snprintf(err, err_size, "%s: rope_scaling.factor is missing", path);
        }
        return -1;
    }
    if (out->rope_scaling == ROPE_SCALING_LLAMA3) {
        const struct {
            const char *key;
            float *dst;
        } need[] = {{"low_freq_factor", &out->rope_low_freq_factor},
                    {"high_freq_factor", &out->rope_high_freq_factor}};
        for (size_t i = 0; i < sizeof(need) / sizeof(need[0]); i++) {
            if (get_float(rs, need[i].key, 0.0, 1e6, need[i].dst, path, err, err_size) <= 0) {
                if (err[0] == '\0') {
                    snprintf(err, err_size, "%s: rope_scaling.%s is missing", path, need[i].key);
                }
                return -1;
            }
        }
        if (!(out->rope_high_freq_factor > out->rope_low_freq_factor)) {
            snprintf(err, err_size,
                     "%s: rope_scaling.high_freq_factor must be above low_freq_factor", path);
            return -1;
        }
        if (get_int(rs, "original_max_position_embeddings", 1, 1 << 24, &out->rope_original_ctx,
                    path, err, err_size) <= 0) {
            if (err[0] == '\0') {
                snprintf(err, err_size,
                         "%s: rope_scaling.original_max_position_embeddings is missing", path);
            }
            return -1;
        }
    }
    return 0;
}

static int parse_llama(const cJSON *root, const char *type, const char *path,
                       struct model_config_ext *out, char *err, size_t err_size) {
    struct model_config *c = &out->config;
    c->arch = MODEL_ARCH_LLAMA;
    const struct int_field ints[] = {
        {"num_hidden_layers", 1, 1024, &c->n_layer},
        {"num_attention_heads", 1, 1024, &c->n_head},
        {"hidden_size", 1, 65536, &c->n_embd},
        {"intermediate_size", 1, 1 << 20, &c->n_inner},
        {"vocab_size", 1, 1 << 24, &c->n_vocab},
        {"max_position_embeddings", 1, 1 << 24, &c->n_ctx},
    };
    if (get_required_ints(root, ints, sizeof(ints) / sizeof(ints[0]), path, err, err_size) != 0) {
        return -1;
    }
    c->n_kv_head = c->n_head;
    if (get_int(root, "num_key_value_heads", 1, 1024, &c->n_kv_head, path, err, err_size) < 0) {
        return -1;
    }
    if (c->n_head % c->n_kv_head != 0) {
        snprintf(err, err_size,
                 "%s: num_attention_heads %d is not a multiple of num_key_value_heads %d", path,
                 c->n_head, c->n_kv_head);
        return -1;
    }
    if (get_int(root, "head_dim", 1, 4096, &c->head_dim, path, err, err_size) < 0) {
        return -1;
    }
    if (c->head_dim == 0) {
        if (c->n_embd % c->n_head != 0) {
            snprintf(err, err_size,
                     "%s: hidden_size %d is not a multiple of num_attention_heads %d", path,
                     c->n_embd, c->n_head);
            return -1;
        }
        c->head_dim = c->n_embd / c->n_head;
    }
    if (c->head_dim % 2 != 0) {
        snprintf(err, err_size, "%s: head_dim %d is odd (rotary embeddings rotate pairs)", path,
                 c->head_dim);
        return -1;
    }
    const cJSON *act = cJSON_GetObjectItemCaseSensitive(root, "hidden_act");
    const char *a = cJSON_IsString(act) ? act->valuestring : (act == NULL ? "silu" : "");
    if (strcmp(a, "silu") != 0) {
        snprintf(err, err_size, "%s: hidden_act \"%.40s\" is not supported (only \"silu\")", path,
                 a);
        return -1;
    }
    c->activation = MODEL_ACT_SILU;
    c->layer_norm_eps = 1e-6f;
    if (get_float(root, "rms_norm_eps", 0.0, 1.0, &c->layer_norm_eps, path, err, err_size) < 0) {
        return -1;
    }
    c->rope_theta = 10000.0f;
    if (get_float(root, "rope_theta", 0.0, 1e12, &c->rope_theta, path, err, err_size) < 0) {
        return -1;
    }
    if (parse_rope_scaling(root, path, out, err, err_size) != 0) {
        return -1;
    }
    c->is_scale_attn_weights = 1;
    c->is_tied = get_bool(root, "tie_word_embeddings", 0);
    int is_qwen2 = strcmp(type, "qwen2") == 0;
    /* Qwen2 always has q/k/v biases and none on o_proj; Llama and Mistral say attention_bias. */
    out->has_qkv_bias = is_qwen2 ? 1 : get_bool(root, "attention_bias", 0);
    out->has_o_bias = is_qwen2 ? 0 : out->has_qkv_bias;
    out->has_mlp_bias = get_bool(root, "mlp_bias", 0);
    out->n_ctx_file = c->n_ctx;
    /* A sliding window shorter than the context changes attention past it: serve at most that
     * many positions, where full attention is what the model computes. Qwen2 only slides when
     * use_sliding_window is true, which gptd refuses. */
    if (is_qwen2 && get_bool(root, "use_sliding_window", 0)) {
        snprintf(err, err_size, "%s: 'use_sliding_window: true' is not supported", path);
        return -1;
    }
    if (strcmp(type, "mistral") == 0) {
        int32_t window = 0;
        if (get_int(root, "sliding_window", 1, 1 << 24, &window, path, err, err_size) < 0) {
            return -1;
        }
        if (window > 0 && window < c->n_ctx) {
            c->n_ctx = window;
        }
    }
    const char *refused[] = {"attention_sink"};
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
        if (cJSON_GetObjectItemCaseSensitive(root, refused[i]) != NULL) {
            snprintf(err, err_size, "%s: '%s' is not supported", path, refused[i]);
            return -1;
        }
    }
    return 0;
}

int config_parse(const char *json_text, size_t json_bytes, const char *path,
                 struct model_config_ext *out, char *err, size_t err_size) {
    memset(out, 0, sizeof(*out));
    if (err_size > 0) {
        err[0] = '\0';
    }
    cJSON *root = cJSON_ParseWithLength(json_text, json_bytes);
    int rc = -1;
    if (root == NULL || !cJSON_IsObject(root)) {
        snprintf(err, err_size, "%s: not a JSON object", path);
        goto done;
    }
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(root, "model_type");
    const char *t = cJSON_IsString(type) ? type->valuestring : NULL;
    struct model_config *c = &out->config;
    c->bos_token_id = -1;
    c->eos_token_id = -1;
    if (t != NULL && strcmp(t, "gpt2") == 0) {
        rc = parse_gpt2(root, path, out, err, err_size);
    } else if (t != NULL &&
               (strcmp(t, "llama") == 0 || strcmp(t, "mistral") == 0 || strcmp(t, "qwen2") == 0)) {
        rc = parse_llama(root, t, path, out, err, err_size);
    } else {
        snprintf(err, err_size,
                 "%s: model_type %s%.40s%s is not supported (gpt2, llama, mistral or qwen2)", path,
                 t != NULL ? "\"" : "", t != NULL ? t : "missing", t != NULL ? "\"" : "");
        goto done;
    }
    if (rc != 0) {
        goto done;
    }
    rc = -1;
    snprintf(c->model_type, sizeof(c->model_type), "%s", t);
    if (out->n_ctx_file == 0) {
        out->n_ctx_file = c->n_ctx;
    }
    if (get_token_ids(root, "bos_token_id", c, 0, path, err, err_size) != 0 ||
        get_token_ids(root, "eos_token_id", c, 1, path, err, err_size) != 0) {
        goto done;
    }
    rc = 0;
done:
    cJSON_Delete(root);
    return rc;
}

/* Reads a whole small JSON file. Returns the buffer (caller frees) or NULL with a message;
 * *missing is set when the file does not exist. */
static char *read_small(const char *path, size_t *n, int *missing, char *err, size_t err_size) {
    *missing = 0;
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        *missing = errno == ENOENT;
        snprintf(err, err_size, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    char *buf = malloc(CONFIG_MAX_BYTES);
    *n = buf != NULL ? fread(buf, 1, CONFIG_MAX_BYTES, f) : 0;
    int is_too_big = *n == CONFIG_MAX_BYTES;
    int is_read_error = ferror(f);
    fclose(f);
    if (buf == NULL) {
        snprintf(err, err_size, "%s: out of memory", path);
    } else if (is_too_big || is_read_error) {
        snprintf(err, err_size, "%s: %s", path, is_too_big ? "larger than 1 MiB" : "read error");
        free(buf);
        buf = NULL;
    }
    return buf;
}

int config_load(const char *path, struct model_config_ext *out, char *err, size_t err_size) {
    size_t n = 0;
    int missing = 0;
    char *buf = read_small(path, &n, &missing, err, err_size);
    if (buf == NULL) {
        return -1;
    }
    int rc = config_parse(buf, n, path, out, err, err_size);
    free(buf);
    return rc;
}

int config_load_generation(const char *path, struct model_config_ext *out, char *err,
                           size_t err_size) {
    size_t n = 0;
    int missing = 0;
    char *buf = read_small(path, &n, &missing, err, err_size);
    if (buf == NULL) {
        return missing ? 0 : -1;
    }
    cJSON *root = cJSON_ParseWithLength(buf, n);
    free(buf);
    int rc = -1;
    if (root == NULL || !cJSON_IsObject(root)) {
        snprintf(err, err_size, "%s: not a JSON object", path);
    } else {
        rc = get_token_ids(root, "eos_token_id", &out->config, 1, path, err, err_size);
    }
    cJSON_Delete(root);
    return rc;
}
