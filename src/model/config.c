/*
 * config.c: reads and validates a Hugging Face GPT-2 config.json into struct model_config.
 * Called by model_load on the main thread. Options gptd does not implement are refused with a
 * message naming them, so a model is never computed wrongly.
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

static int get_bool(const cJSON *root, const char *key, int fallback) {
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(root, key);
    if (cJSON_IsBool(item)) {
        return cJSON_IsTrue(item) ? 1 : 0;
    }
    return fallback;
}

static int get_token_id(const cJSON *root, const char *key, int32_t n_vocab, int32_t *out) {
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(root, key);
    /* Some configs list several end tokens; the first is the one GPT-2 uses. */
    if (cJSON_IsArray(item)) {
        item = cJSON_GetArrayItem(item, 0);
    }
    *out = -1;
    if (item == NULL || cJSON_IsNull(item)) {
        return 0;
    }
    if (!cJSON_IsNumber(item) || item->valuedouble < 0 || item->valuedouble >= n_vocab ||
        item->valuedouble != floor(item->valuedouble)) {
        return -1;
    }
    *out = (int32_t)item->valuedouble;
    return 0;
}

int config_parse(const char *json_text, size_t json_bytes, const char *path,
                 struct model_config_ext *out, char *err, size_t err_size) {
    memset(out, 0, sizeof(*out));
    cJSON *root = cJSON_ParseWithLength(json_text, json_bytes);
    int rc = -1;
    if (root == NULL || !cJSON_IsObject(root)) {
        snprintf(err, err_size, "%s: not a JSON object", path);
        goto done;
    }
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(root, "model_type");
    if (!cJSON_IsString(type) || strcmp(type->valuestring, "gpt2") != 0) {
        snprintf(err, err_size, "%s: model_type %s%.40s%s is not supported (only \"gpt2\")", path,
                 cJSON_IsString(type) ? "\"" : "",
                 cJSON_IsString(type) ? type->valuestring : "missing",
                 cJSON_IsString(type) ? "\"" : "");
        goto done;
    }
    struct model_config *c = &out->config;
    struct {
        const char *key;
        int64_t lo, hi;
        int32_t *dst;
    } ints[] = {
        {"n_layer", 1, 1024, &c->n_layer},
        {"n_head", 1, 1024, &c->n_head},
        {"n_embd", 1, 65536, &c->n_embd},
        {"vocab_size", 1, 1 << 24, &c->n_vocab},
    };
    for (size_t i = 0; i < sizeof(ints) / sizeof(ints[0]); i++) {
        int got =
            get_int(root, ints[i].key, ints[i].lo, ints[i].hi, ints[i].dst, path, err, err_size);
        if (got < 0) {
            goto done;
        }
        if (got == 0) {
            snprintf(err, err_size, "%s: '%s' is missing", path, ints[i].key);
            goto done;
        }
    }
    int got = get_int(root, "n_positions", 1, 1 << 20, &c->n_ctx, path, err, err_size);
    if (got == 0) {
        got = get_int(root, "n_ctx", 1, 1 << 20, &c->n_ctx, path, err, err_size);
    }
    if (got <= 0) {
        if (got == 0) {
            snprintf(err, err_size, "%s: 'n_positions' is missing", path);
        }
        goto done;
    }
    if (c->n_embd % c->n_head != 0) {
        snprintf(err, err_size, "%s: n_embd %d is not a multiple of n_head %d", path, c->n_embd,
                 c->n_head);
        goto done;
    }
    c->n_inner = 4 * c->n_embd;
    if (get_int(root, "n_inner", 1, 1 << 18, &c->n_inner, path, err, err_size) < 0) {
        goto done;
    }
    c->layer_norm_eps = 1e-5f;
    const cJSON *eps = cJSON_GetObjectItemCaseSensitive(root, "layer_norm_epsilon");
    if (eps != NULL) {
        if (!cJSON_IsNumber(eps) || !(eps->valuedouble > 0.0 && eps->valuedouble < 1.0)) {
            snprintf(err, err_size, "%s: 'layer_norm_epsilon' must be a number in (0, 1)", path);
            goto done;
        }
        c->layer_norm_eps = (float)eps->valuedouble;
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
            goto done;
        }
    }
    if (get_token_id(root, "bos_token_id", c->n_vocab, &c->bos_token_id) != 0 ||
        get_token_id(root, "eos_token_id", c->n_vocab, &c->eos_token_id) != 0) {
        snprintf(err, err_size, "%s: bos_token_id / eos_token_id must be a token id below %d", path,
                 c->n_vocab);
        goto done;
    }
    c->is_scale_attn_weights = get_bool(root, "scale_attn_weights", 1);
    const char *refused[] = {"scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn",
                             "add_cross_attention"};
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
        if (get_bool(root, refused[i], 0)) {
            snprintf(err, err_size, "%s: '%s: true' is not supported", path, refused[i]);
            goto done;
        }
    }
    out->is_tied = get_bool(root, "tie_word_embeddings", 1);
    rc = 0;
done:
    cJSON_Delete(root);
    return rc;
}

int config_load(const char *path, struct model_config_ext *out, char *err, size_t err_size) {
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        snprintf(err, err_size, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    char *buf = malloc(CONFIG_MAX_BYTES);
    size_t n = buf != NULL ? fread(buf, 1, CONFIG_MAX_BYTES, f) : 0;
    int is_too_big = n == CONFIG_MAX_BYTES;
    int is_read_error = ferror(f);
    fclose(f);
    int rc = -1;
    if (buf == NULL) {
        snprintf(err, err_size, "%s: out of memory", path);
    } else if (is_too_big || is_read_error) {
        snprintf(err, err_size, "%s: %s", path, is_too_big ? "larger than 1 MiB" : "read error");
    } else {
        rc = config_parse(buf, n, path, out, err, err_size);
    }
    free(buf);
    return rc;
}
