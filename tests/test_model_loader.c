/*
 * test_model_loader.c: loading GPT-2 checkpoints (src/model's safetensors and config.json
 * reader). F16 and BF16 files, float32 files narrowed at load (--weights f16 / bf16), matmul
 * weights that mix dtypes, shards with an index, and Hugging Face's name variants all give the
 * logits of the equivalent float32 file, byte for byte; a weight beyond float16's range is
 * refused when narrowing. A small valid model loads with the config it was given, and a table
 * of malformed files and configs is refused with an error naming the file at fault.
 *
 * The checkpoints are written by the test helpers below into /tmp directories; the golden
 * fixture and run_alone are model_common.h's.
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <check.h>
#include <cjson/cJSON.h>

#include <gptd/model.h>
#include <gptd/util.h>

#include "model_common.h"

/* ---- test helpers: safetensors files in temp directories ---- */

struct tt_tensor {
    char name[96];
    char dtype[8]; /* "F32", "F16", "BF16", or anything for malformed files */
    int n_dims;
    int64_t shape[4];
    float *values; /* (n_elements,) owned; converted to dtype when written */
    int64_t begin; /* data_offsets as written; -1 = computed by the writer */
    int64_t end;
};
struct tt_model {
    struct tt_tensor *tensors;
    int n_tensors;
};

static int tt_read(const char *path, struct tt_model *m) {
    size_t len = 0;
    char *buf = read_file(path, &len);
    if (buf == NULL) {
        return -1;
    }
    uint64_t hlen = 0;
    memcpy(&hlen, buf, 8);
    cJSON *root = cJSON_ParseWithLength(buf + 8, hlen);
    const char *data = buf + 8 + hlen;
    m->n_tensors = 0;
    m->tensors = calloc((size_t)cJSON_GetArraySize(root), sizeof(*m->tensors));
    const cJSON *e;
    cJSON_ArrayForEach(e, root) {
        if (strcmp(e->string, "__metadata__") == 0) {
            continue;
        }
        struct tt_tensor *t = &m->tensors[m->n_tensors++];
        snprintf(t->name, sizeof(t->name), "%s", e->string);
        snprintf(t->dtype, sizeof(t->dtype), "F32");
        const cJSON *shape = cJSON_GetObjectItem(e, "shape");
        t->n_dims = cJSON_GetArraySize(shape);
        size_t n = 1;
        for (int i = 0; i < t->n_dims; i++) {
            t->shape[i] = (int64_t)cJSON_GetArrayItem(shape, i)->valuedouble;
            n *= (size_t)t->shape[i];
        }
        const cJSON *off = cJSON_GetObjectItem(e, "data_offsets");
        size_t begin = (size_t)cJSON_GetArrayItem(off, 0)->valuedouble;
        t->values = malloc(n * sizeof(float) + 1);
        memcpy(t->values, data + begin, n * sizeof(float));
        t->begin = -1;
        t->end = -1;
    }
    cJSON_Delete(root);
    free(buf);
    return 0;
}

static size_t n_elements(const struct tt_tensor *t) {
    size_t n = 1;
    for (int i = 0; i < t->n_dims; i++) {
        n *= (size_t)t->shape[i];
    }
    return n;
}

static void tt_free(struct tt_model *m) {
    for (int i = 0; i < m->n_tensors; i++) {
        free(m->tensors[i].values);
    }
    free(m->tensors);
    m->tensors = NULL;
    m->n_tensors = 0;
}

static void tt_copy(struct tt_model *dst, const struct tt_model *src) {
    dst->n_tensors = src->n_tensors;
    dst->tensors = calloc((size_t)src->n_tensors + 8, sizeof(*dst->tensors));
    for (int i = 0; i < src->n_tensors; i++) {
        dst->tensors[i] = src->tensors[i];
        size_t n = n_elements(&src->tensors[i]);
        dst->tensors[i].values = malloc(n * sizeof(float) + 1);
        memcpy(dst->tensors[i].values, src->tensors[i].values, n * sizeof(float));
    }
}

static size_t dtype_size(const char *dtype) {
    return (strcmp(dtype, "F16") == 0 || strcmp(dtype, "BF16") == 0) ? 2 : 4;
}

static int tt_write(const char *path, const struct tt_model *m, uint64_t header_len_override,
                    const char *header_override, int64_t data_bytes_delta) {
    /* Offsets first, then the header text, then the data. */
    int64_t *begins = calloc((size_t)m->n_tensors + 1, sizeof(int64_t));
    int64_t *ends = calloc((size_t)m->n_tensors + 1, sizeof(int64_t));
    int64_t cursor = 0;
    int64_t data_bytes = 0;
    for (int i = 0; i < m->n_tensors; i++) {
        const struct tt_tensor *t = &m->tensors[i];
        int64_t bytes = (int64_t)(n_elements(t) * dtype_size(t->dtype));
        begins[i] = t->begin >= 0 || t->end >= 0 ? t->begin : cursor;
        ends[i] = t->begin >= 0 || t->end >= 0 ? t->end : cursor + bytes;
        if (t->begin < 0 && t->end < 0) {
            cursor += bytes;
        }
        /* Explicit offsets do not grow the data area: that is how a case points outside it. */
        if (cursor > data_bytes) {
            data_bytes = cursor;
        }
    }
    data_bytes += data_bytes_delta;
    size_t cap = 1024 + (size_t)m->n_tensors * 256;
    char *header = malloc(cap);
    size_t used = (size_t)snprintf(header, cap, "{\"__metadata__\":{\"format\":\"pt\"}");
    for (int i = 0; i < m->n_tensors; i++) {
        const struct tt_tensor *t = &m->tensors[i];
        used += (size_t)snprintf(header + used, cap - used, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[",
                                 t->name, t->dtype);
        for (int d = 0; d < t->n_dims; d++) {
            used += (size_t)snprintf(header + used, cap - used, "%s%lld", d > 0 ? "," : "",
                                     (long long)t->shape[d]);
        }
        used += (size_t)snprintf(header + used, cap - used, "],\"data_offsets\":[%lld,%lld]}",
                                 (long long)begins[i], (long long)ends[i]);
    }
    used += (size_t)snprintf(header + used, cap - used, "}");
    const char *text = header_override != NULL ? header_override : header;
    uint64_t hlen = strlen(text);
    uint64_t written_len = header_len_override != 0 ? header_len_override : hlen;
    uint8_t *data = calloc((size_t)(data_bytes > 0 ? data_bytes : 1), 1);
    for (int i = 0; i < m->n_tensors; i++) {
        const struct tt_tensor *t = &m->tensors[i];
        size_t n = n_elements(t);
        size_t es = dtype_size(t->dtype);
        if (begins[i] < 0 || ends[i] > data_bytes || begins[i] + (int64_t)(n * es) > data_bytes) {
            continue; /* a malformed entry: leave its bytes alone */
        }
        for (size_t j = 0; j < n; j++) {
            uint8_t *dst = data + begins[i] + (int64_t)(j * es);
            if (strcmp(t->dtype, "F16") == 0) {
                uint16_t h = to_f16(t->values[j]);
                memcpy(dst, &h, 2);
            } else if (strcmp(t->dtype, "BF16") == 0) {
                uint16_t h = to_bf16(t->values[j]);
                memcpy(dst, &h, 2);
            } else {
                memcpy(dst, &t->values[j], 4);
            }
        }
    }
    FILE *f = fopen(path, "wb");
    int rc = -1;
    if (f != NULL) {
        uint8_t len_bytes[8];
        for (int i = 0; i < 8; i++) {
            len_bytes[i] = (uint8_t)(written_len >> (8 * i));
        }
        fwrite(len_bytes, 1, 8, f);
        fwrite(text, 1, hlen, f);
        if (data_bytes > 0) {
            fwrite(data, 1, (size_t)data_bytes, f);
        }
        rc = fclose(f) == 0 ? 0 : -1;
    }
    free(data);
    free(header);
    free(begins);
    free(ends);
    return rc;
}

static int tt_write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    if (f == NULL) {
        return -1;
    }
    fputs(text, f);
    return fclose(f);
}

static int tt_copy_file(const char *from, const char *to) {
    size_t len = 0;
    char *buf = read_file(from, &len);
    if (buf == NULL) {
        return -1;
    }
    FILE *f = fopen(to, "wb");
    int rc = -1;
    if (f != NULL) {
        fwrite(buf, 1, len, f);
        rc = fclose(f);
    }
    free(buf);
    return rc;
}

static void tt_mkdtemp(char *out, size_t out_size) {
    snprintf(out, out_size, "/tmp/gptd_model_test_XXXXXX");
    if (mkdtemp(out) == NULL) {
        out[0] = '\0';
    }
}

static void tt_rmdir(const char *dir) {
    DIR *d = opendir(dir);
    if (d == NULL) {
        return;
    }
    struct dirent *e;
    char path[1024];
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) {
            continue;
        }
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        unlink(path);
    }
    closedir(d);
    rmdir(dir);
}

/* ---- other encodings of the same weights ---- */

/* Loads dir (matmul weights as asked) and returns the logits of prompt 1 plus two decode steps
 * (3 rows). When got is not NULL, it receives how the model holds its matmul weights. */
static float *logits_of_dir_with(const char *dir, enum model_weights weights,
                                 enum model_weights *got) {
    char err[512] = "";
    struct model *m = model_load_with(dir, weights, err, sizeof(err));
    ck_assert_msg(m != NULL, "model_load(%s): %s", dir, err);
    if (got != NULL) {
        *got = model_get_weights(m);
    }
    float *logits = malloc(3 * (size_t)g_vocab * sizeof(float));
    int32_t ids[3];
    run_alone(m, g_prompts[1].ids, g_prompts[1].n_ids, 3, logits, ids);
    model_destroy(m);
    return logits;
}

static float *logits_of_dir(const char *dir) {
    return logits_of_dir_with(dir, MODEL_WEIGHTS_AUTO, NULL);
}

static void write_dir(const char *dir, const struct tt_model *m) {
    char from[1024];
    char to[1024];
    snprintf(from, sizeof(from), "%s/config.json", g_model_dir);
    snprintf(to, sizeof(to), "%s/config.json", dir);
    ck_assert_int_eq(tt_copy_file(from, to), 0);
    snprintf(to, sizeof(to), "%s/model.safetensors", dir);
    ck_assert_int_eq(tt_write(to, m, 0, NULL, 0), 0);
}

START_TEST(test_f16_and_bf16_match_f32_of_rounded_weights) {
    char path[1024];
    snprintf(path, sizeof(path), "%s/model.safetensors", g_model_dir);
    struct tt_model orig;
    ck_assert_int_eq(tt_read(path, &orig), 0);
    const char *dtypes[2] = {"F16", "BF16"};
    for (int k = 0; k < 2; k++) {
        char dir_half[256];
        char dir_f32[256];
        tt_mkdtemp(dir_half, sizeof(dir_half));
        tt_mkdtemp(dir_f32, sizeof(dir_f32));
        struct tt_model half;
        struct tt_model rounded;
        tt_copy(&half, &orig);
        tt_copy(&rounded, &orig);
        for (int i = 0; i < orig.n_tensors; i++) {
            snprintf(half.tensors[i].dtype, sizeof(half.tensors[i].dtype), "%s", dtypes[k]);
            size_t n = 1;
            for (int d = 0; d < orig.tensors[i].n_dims; d++) {
                n *= (size_t)orig.tensors[i].shape[d];
            }
            for (size_t j = 0; j < n; j++) {
                float v = orig.tensors[i].values[j];
                rounded.tensors[i].values[j] = k == 0 ? tt_round_f16(v) : tt_round_bf16(v);
            }
        }
        write_dir(dir_half, &half);
        write_dir(dir_f32, &rounded);
        enum model_weights held;
        float *a = logits_of_dir_with(dir_half, MODEL_WEIGHTS_AUTO, &held);
        /* By default the matmul weights stay 16-bit; the kernels widen them in registers. */
        ck_assert_int_eq(held, k == 0 ? MODEL_WEIGHTS_F16 : MODEL_WEIGHTS_BF16);
        float *b = logits_of_dir_with(dir_f32, MODEL_WEIGHTS_AUTO, &held);
        ck_assert_int_eq(held, MODEL_WEIGHTS_F32);
        /* Widening is exact, so the two runs compute on identical floats. */
        ck_assert_msg(memcmp(a, b, 3 * (size_t)g_vocab * sizeof(float)) == 0,
                      "%s differs from F32 on rounded weights by %g", dtypes[k],
                      (double)max_abs_diff(a, b, 3 * (size_t)g_vocab));
        /* The same with everything widened to float32 at load. */
        float *c = logits_of_dir_with(dir_half, MODEL_WEIGHTS_F32, &held);
        ck_assert_int_eq(held, MODEL_WEIGHTS_F32);
        ck_assert_int_eq(memcmp(a, c, 3 * (size_t)g_vocab * sizeof(float)), 0);
        free(a);
        free(b);
        free(c);
        tt_free(&half);
        tt_free(&rounded);
        tt_rmdir(dir_half);
        tt_rmdir(dir_f32);
    }
    tt_free(&orig);
}
END_TEST

/* Whether a tensor is one the loader packs for the matmuls (wte is: the model is tied). */
static int is_matmul_weight(const struct tt_tensor *t) {
    return t->n_dims == 2 && strstr(t->name, "wpe") == NULL;
}

/* --weights f16 / bf16 on a float32 checkpoint rounds exactly the matmul weights (and the tied
 * wte): the logits equal those of a float32 file whose matmul weights were rounded beforehand,
 * byte for byte. They stay close to the float32 run, and the weights take about half the
 * memory. */
START_TEST(test_narrowed_weights_equal_prerounded_file) {
    char path[1024];
    snprintf(path, sizeof(path), "%s/model.safetensors", g_model_dir);
    struct tt_model orig;
    ck_assert_int_eq(tt_read(path, &orig), 0);
    float *full = logits_of_dir(g_model_dir);
    char err[512];
    struct model *m32 = model_load_with(g_model_dir, MODEL_WEIGHTS_F32, err, sizeof(err));
    ck_assert_msg(m32 != NULL, "%s", err);
    size_t bytes32 = model_weight_bytes(m32);
    model_destroy(m32);
    for (int k = 0; k < 2; k++) {
        enum model_weights want = k == 0 ? MODEL_WEIGHTS_F16 : MODEL_WEIGHTS_BF16;
        char dir[256];
        tt_mkdtemp(dir, sizeof(dir));
        struct tt_model rounded;
        tt_copy(&rounded, &orig);
        for (int i = 0; i < orig.n_tensors; i++) {
            if (!is_matmul_weight(&orig.tensors[i])) {
                continue;
            }
            for (size_t j = 0; j < n_elements(&orig.tensors[i]); j++) {
                float v = orig.tensors[i].values[j];
                rounded.tensors[i].values[j] = k == 0 ? tt_round_f16(v) : tt_round_bf16(v);
            }
        }
        write_dir(dir, &rounded);
        enum model_weights held;
        float *narrowed = logits_of_dir_with(g_model_dir, want, &held);
        ck_assert_int_eq(held, want);
        float *pre = logits_of_dir_with(dir, MODEL_WEIGHTS_AUTO, &held);
        ck_assert_int_eq(held, MODEL_WEIGHTS_F32);
        ck_assert_msg(memcmp(narrowed, pre, 3 * (size_t)g_vocab * sizeof(float)) == 0,
                      "%s: narrowed at load differs from pre-rounded by %g",
                      model_weights_name(want),
                      (double)max_abs_diff(narrowed, pre, 3 * (size_t)g_vocab));
        float drift = max_abs_diff(narrowed, full, 3 * (size_t)g_vocab);
        ck_assert_msg(drift > 0.0f && drift < (k == 0 ? 1e-2f : 1e-1f),
                      "%s: logits moved by %g from float32", model_weights_name(want),
                      (double)drift);
        struct model *m16 = model_load_with(g_model_dir, want, err, sizeof(err));
        ck_assert_msg(m16 != NULL, "%s", err);
        /* The model is mostly matmul weights: well under 3/4 of float32's bytes. */
        ck_assert_uint_lt(model_weight_bytes(m16) * 4, bytes32 * 3);
        model_destroy(m16);
        free(narrowed);
        free(pre);
        tt_free(&rounded);
        tt_rmdir(dir);
    }
    free(full);
    tt_free(&orig);
}
END_TEST

/* Narrowing to F16 refuses a weight beyond half's range (it would compute infinities), naming
 * the tensor; the same file loads as it is, and as bf16. A checkpoint whose matmul weights mix
 * F16 and F32 is held as float32 by default. */
START_TEST(test_weights_out_of_f16_range_or_mixed) {
    char path[1024];
    snprintf(path, sizeof(path), "%s/model.safetensors", g_model_dir);
    struct tt_model big;
    ck_assert_int_eq(tt_read(path, &big), 0);
    int i_fc = -1;
    for (int i = 0; i < big.n_tensors; i++) {
        if (strstr(big.tensors[i].name, "h.2.mlp.c_fc.weight") != NULL) {
            i_fc = i;
        }
    }
    ck_assert_int_ge(i_fc, 0);
    big.tensors[i_fc].values[5] = 70000.0f;
    char dir[256];
    tt_mkdtemp(dir, sizeof(dir));
    write_dir(dir, &big);
    char err[512] = "";
    struct model *m = model_load_with(dir, MODEL_WEIGHTS_F16, err, sizeof(err));
    ck_assert_msg(m == NULL, "a weight of 70000 was narrowed to float16");
    ck_assert_msg(strstr(err, "h.2.mlp.c_fc.weight") != NULL && strstr(err, "65504") != NULL,
                  "error '%s'", err);
    const enum model_weights fine[] = {MODEL_WEIGHTS_AUTO, MODEL_WEIGHTS_BF16};
    for (int i = 0; i < 2; i++) {
        m = model_load_with(dir, fine[i], err, sizeof(err));
        ck_assert_msg(m != NULL, "%s: %s", model_weights_name(fine[i]), err);
        model_destroy(m);
    }
    tt_rmdir(dir);

    struct tt_model mixed;
    ck_assert_int_eq(tt_read(path, &mixed), 0);
    snprintf(mixed.tensors[i_fc].dtype, sizeof(mixed.tensors[i_fc].dtype), "F16");
    tt_mkdtemp(dir, sizeof(dir));
    write_dir(dir, &mixed);
    enum model_weights held;
    free(logits_of_dir_with(dir, MODEL_WEIGHTS_AUTO, &held));
    ck_assert_int_eq(held, MODEL_WEIGHTS_F32);
    tt_rmdir(dir);
    tt_free(&mixed);
    tt_free(&big);

    enum model_weights w;
    ck_assert_int_eq(model_weights_parse("bf16", &w), 0);
    ck_assert_int_eq(w, MODEL_WEIGHTS_BF16);
    ck_assert_int_eq(model_weights_parse("q8", &w), 0);
    ck_assert_int_eq(w, MODEL_WEIGHTS_Q8);
    ck_assert_int_eq(model_weights_parse("fp16", &w), -1);
    ck_assert_int_eq(model_weights_parse("", &w), -1);
}
END_TEST

/* --weights q8 quantizes the matmul weights (and the tied head) at load, from float32 or 16-bit
 * files: the logits stay near float32's, the weights take under 35 % of float32's bytes, and
 * /v1/models' name for it is "q8". A NaN or an infinite weight cannot be quantized: refused,
 * naming the tensor. */
START_TEST(test_q8_weights_close_and_non_finite_refused) {
    float *full = logits_of_dir(g_model_dir);
    enum model_weights held;
    float *q8 = logits_of_dir_with(g_model_dir, MODEL_WEIGHTS_Q8, &held);
    ck_assert_int_eq(held, MODEL_WEIGHTS_Q8);
    ck_assert_str_eq(model_weights_name(held), "q8");
    float drift = max_abs_diff(q8, full, 3 * (size_t)g_vocab);
    ck_assert_msg(drift > 0.0f && drift < 0.2f, "q8: logits moved by %g from float32",
                  (double)drift);
    char err[512] = "";
    struct model *m32 = model_load_with(g_model_dir, MODEL_WEIGHTS_F32, err, sizeof(err));
    struct model *m8 = model_load_with(g_model_dir, MODEL_WEIGHTS_Q8, err, sizeof(err));
    ck_assert_msg(m32 != NULL && m8 != NULL, "%s", err);
    ck_assert_uint_lt(model_weight_bytes(m8) * 100, model_weight_bytes(m32) * 35);
    model_destroy(m32);
    model_destroy(m8);

    char path[1024];
    snprintf(path, sizeof(path), "%s/model.safetensors", g_model_dir);
    struct tt_model bad;
    ck_assert_int_eq(tt_read(path, &bad), 0);
    const float non_finite[] = {NAN, INFINITY};
    for (int v = 0; v < 2; v++) {
        for (int i = 0; i < bad.n_tensors; i++) {
            if (strstr(bad.tensors[i].name, "h.1.attn.c_proj.weight") != NULL) {
                bad.tensors[i].values[3] = non_finite[v];
            }
        }
        char dir[256];
        tt_mkdtemp(dir, sizeof(dir));
        write_dir(dir, &bad);
        struct model *m = model_load_with(dir, MODEL_WEIGHTS_Q8, err, sizeof(err));
        ck_assert_msg(m == NULL, "a non-finite weight was quantized");
        ck_assert_msg(strstr(err, "h.1.attn.c_proj.weight") != NULL, "error '%s'", err);
        tt_rmdir(dir);
    }
    tt_free(&bad);
    free(q8);
    free(full);
}
END_TEST

/* Shards with an index, names without "transformer.", old mask buffers and an explicit
 * lm_head copy all load to the same logits as the original file. */
START_TEST(test_shards_and_name_variants_match_original) {
    char path[1024];
    snprintf(path, sizeof(path), "%s/model.safetensors", g_model_dir);
    struct tt_model orig;
    ck_assert_int_eq(tt_read(path, &orig), 0);
    float *want = logits_of_dir(g_model_dir);

    /* 1: two shards + model.safetensors.index.json. */
    char dir[256];
    tt_mkdtemp(dir, sizeof(dir));
    struct tt_model part[2] = {{0}, {0}};
    part[0].tensors = calloc((size_t)orig.n_tensors, sizeof(struct tt_tensor));
    part[1].tensors = calloc((size_t)orig.n_tensors, sizeof(struct tt_tensor));
    char index[16384];
    size_t used = (size_t)snprintf(index, sizeof(index), "{\"metadata\":{},\"weight_map\":{");
    for (int i = 0; i < orig.n_tensors; i++) {
        int which = i % 2;
        part[which].tensors[part[which].n_tensors++] = orig.tensors[i];
        used += (size_t)snprintf(index + used, sizeof(index) - used,
                                 "%s\"%s\":\"model-0000%d-of-00002.safetensors\"", i > 0 ? "," : "",
                                 orig.tensors[i].name, which + 1);
    }
    snprintf(index + used, sizeof(index) - used, "}}");
    for (int k = 0; k < 2; k++) {
        snprintf(path, sizeof(path), "%s/model-0000%d-of-00002.safetensors", dir, k + 1);
        ck_assert_int_eq(tt_write(path, &part[k], 0, NULL, 0), 0);
        free(part[k].tensors); /* the values belong to orig */
    }
    snprintf(path, sizeof(path), "%s/model.safetensors.index.json", dir);
    ck_assert_int_eq(tt_write_text(path, index), 0);
    char from[1024];
    snprintf(from, sizeof(from), "%s/config.json", g_model_dir);
    snprintf(path, sizeof(path), "%s/config.json", dir);
    ck_assert_int_eq(tt_copy_file(from, path), 0);
    float *got = logits_of_dir(dir);
    ck_assert_int_eq(memcmp(got, want, 3 * (size_t)g_vocab * sizeof(float)), 0);
    free(got);
    tt_rmdir(dir);

    /* 2: openai-community/gpt2 style names, mask buffers and an explicit lm_head. */
    tt_mkdtemp(dir, sizeof(dir));
    struct tt_model hub;
    tt_copy(&hub, &orig);
    int n = hub.n_tensors;
    for (int i = 0; i < n; i++) {
        char name[96];
        snprintf(name, sizeof(name), "%s", hub.tensors[i].name + strlen("transformer."));
        snprintf(hub.tensors[i].name, sizeof(hub.tensors[i].name), "%s", name);
        if (strcmp(name, "wte.weight") == 0) {
            struct tt_tensor *lm = &hub.tensors[hub.n_tensors++];
            *lm = hub.tensors[i];
            snprintf(lm->name, sizeof(lm->name), "lm_head.weight");
            size_t bytes = (size_t)lm->shape[0] * (size_t)lm->shape[1] * sizeof(float);
            lm->values = malloc(bytes);
            memcpy(lm->values, hub.tensors[i].values, bytes);
        }
    }
    struct tt_tensor *mask = &hub.tensors[hub.n_tensors++];
    memset(mask, 0, sizeof(*mask));
    snprintf(mask->name, sizeof(mask->name), "h.0.attn.bias");
    snprintf(mask->dtype, sizeof(mask->dtype), "F32");
    mask->n_dims = 4;
    mask->shape[0] = 1;
    mask->shape[1] = 1;
    mask->shape[2] = 4;
    mask->shape[3] = 4;
    mask->values = calloc(16, sizeof(float));
    mask->begin = mask->end = -1;
    struct tt_tensor *masked = &hub.tensors[hub.n_tensors++];
    *masked = *mask;
    snprintf(masked->name, sizeof(masked->name), "h.0.attn.masked_bias");
    masked->n_dims = 0;
    masked->values = calloc(1, sizeof(float));
    write_dir(dir, &hub);
    got = logits_of_dir(dir);
    ck_assert_int_eq(memcmp(got, want, 3 * (size_t)g_vocab * sizeof(float)), 0);
    free(got);
    tt_free(&hub);
    tt_rmdir(dir);
    free(want);
    tt_free(&orig);
}
END_TEST

/* ---- malformed files and configs ---- */

/* A minimal valid GPT-2: 1 layer, 8 wide, 2 heads, context 16, vocab 32. */
static const char *small_config =
    "{\"model_type\": \"gpt2\", \"n_layer\": 1, \"n_head\": 2, \"n_embd\": 8, "
    "\"n_positions\": 16, \"vocab_size\": 32, \"n_inner\": null, \"layer_norm_epsilon\": 1e-5, "
    "\"activation_function\": \"gelu_new\", \"eos_token_id\": 31, \"bos_token_id\": 31}";

static void add_tensor(struct tt_model *m, const char *name, int64_t d0, int64_t d1) {
    struct tt_tensor *t = &m->tensors[m->n_tensors++];
    memset(t, 0, sizeof(*t));
    snprintf(t->name, sizeof(t->name), "transformer.%s", name);
    snprintf(t->dtype, sizeof(t->dtype), "F32");
    t->n_dims = d1 > 0 ? 2 : 1;
    t->shape[0] = d0;
    t->shape[1] = d1;
    size_t n = (size_t)d0 * (size_t)(d1 > 0 ? d1 : 1);
    t->values = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) {
        t->values[i] = (float)((i * 7919u) % 101) / 101.0f - 0.5f;
    }
    t->begin = t->end = -1;
}

static void small_model(struct tt_model *m) {
    m->n_tensors = 0;
    m->tensors = calloc(32, sizeof(struct tt_tensor));
    add_tensor(m, "wte.weight", 32, 8); /* index 0 */
    add_tensor(m, "wpe.weight", 16, 8);
    add_tensor(m, "h.0.ln_1.weight", 8, 0);
    add_tensor(m, "h.0.ln_1.bias", 8, 0);
    add_tensor(m, "h.0.attn.c_attn.weight", 8, 24);
    add_tensor(m, "h.0.attn.c_attn.bias", 24, 0);
    add_tensor(m, "h.0.attn.c_proj.weight", 8, 8);
    add_tensor(m, "h.0.attn.c_proj.bias", 8, 0);
    add_tensor(m, "h.0.ln_2.weight", 8, 0);
    add_tensor(m, "h.0.ln_2.bias", 8, 0);
    add_tensor(m, "h.0.mlp.c_fc.weight", 8, 32);
    add_tensor(m, "h.0.mlp.c_fc.bias", 32, 0);
    add_tensor(m, "h.0.mlp.c_proj.weight", 32, 8);
    add_tensor(m, "h.0.mlp.c_proj.bias", 8, 0);
    add_tensor(m, "ln_f.weight", 8, 0);
    add_tensor(m, "ln_f.bias", 8, 16 * 0); /* index 15: last */
}

struct bad_case {
    const char *what;
    const char *want_in_error;
    /* one of: */
    const char *config_json;     /* replaces the config (NULL: small_config) */
    int tensor;                  /* index of the tensor to change, -1 none */
    const char *dtype;           /* new dtype */
    int64_t shape1;              /* new second dimension (0: keep) */
    int64_t begin, end;          /* new offsets (-2: keep) */
    const char *rename;          /* new name */
    int drop;                    /* remove the tensor */
    const char *header_override; /* replaces the header JSON */
    uint64_t header_len;         /* replaces the 8-byte length */
    int64_t data_delta;          /* grows / shrinks the data area */
    long truncate_to;            /* cuts the file (0: no) */
    int no_config;
};

#define KEEP -2

static const struct bad_case bad_cases[] = {
    {"file too short", "too short", .tensor = -1, .begin = KEEP, .truncate_to = 5},
    {"header length past the end", "does not fit", .tensor = -1, .begin = KEEP,
     .header_len = 1ull << 40},
    {"header length of 2^64-1", "does not fit", .tensor = -1, .begin = KEEP, .header_len = ~0ull},
    {"header not JSON", "not a JSON object", .tensor = -1, .begin = KEEP,
     .header_override = "{\"wte.weight\": [1, 2"},
    {"header a JSON array", "not a JSON object", .tensor = -1, .begin = KEEP,
     .header_override = "[1, 2, 3]"},
    {"entry not an object", "not an object", .tensor = -1, .begin = KEEP,
     .header_override = "{\"wte.weight\": 3}"},
    {"dtype I32", "dtype I32", .tensor = 2, .dtype = "I32", .begin = KEEP},
    {"unknown dtype", "unknown dtype", .tensor = 2, .dtype = "Q4_0", .begin = KEEP},
    {"shape does not match the config", "has shape", .tensor = 4, .shape1 = 25, .begin = KEEP},
    {"offsets outside the data area", "outside the data area", .tensor = 15, .begin = 8000,
     .end = 8032},
    {"offsets overlap", "overlap", .tensor = 1, .begin = 0, .end = 512},
    {"span does not match the shape", "span", .tensor = 2, .begin = 0, .end = 28},
    {"begin after end", "data_offsets", .tensor = 2, .begin = 40, .end = 8},
    {"negative offset", "data_offsets", .tensor = 2, .begin = -8, .end = 24},
    {"missing tensor", "missing", .tensor = 13, .drop = 1, .begin = KEEP},
    {"tensor given twice, with and without the prefix", "twice", .tensor = 3,
     .rename = "h.0.ln_1.weight", .begin = KEEP},
    {"tensor that is not GPT-2", "not part of", .tensor = 3, .rename = "h.0.attn.q_proj.weight",
     .begin = KEEP},
    {"data area shorter than the offsets", "outside the data area", .tensor = -1, .begin = KEEP,
     .data_delta = -4},
    {"config: another model_type", "model_type", .tensor = -1, .begin = KEEP,
     .config_json = "{\"model_type\": \"gpt_neox\", \"n_layer\": 1, \"n_head\": 2, \"n_embd\": 8, "
                    "\"n_positions\": 16, \"vocab_size\": 32}"},
    {"config: scale_attn_by_inverse_layer_idx", "scale_attn_by_inverse_layer_idx", .tensor = -1,
     .begin = KEEP,
     .config_json = "{\"model_type\": \"gpt2\", \"n_layer\": 1, \"n_head\": 2, \"n_embd\": 8, "
                    "\"n_positions\": 16, \"vocab_size\": 32, "
                    "\"scale_attn_by_inverse_layer_idx\": true}"},
    {"config: reorder_and_upcast_attn", "reorder_and_upcast_attn", .tensor = -1, .begin = KEEP,
     .config_json = "{\"model_type\": \"gpt2\", \"n_layer\": 1, \"n_head\": 2, \"n_embd\": 8, "
                    "\"n_positions\": 16, \"vocab_size\": 32, \"reorder_and_upcast_attn\": true}"},
    {"config: n_embd not a multiple of n_head", "multiple", .tensor = -1, .begin = KEEP,
     .config_json = "{\"model_type\": \"gpt2\", \"n_layer\": 1, \"n_head\": 3, \"n_embd\": 8, "
                    "\"n_positions\": 16, \"vocab_size\": 32}"},
    {"config: unknown activation", "activation_function", .tensor = -1, .begin = KEEP,
     .config_json = "{\"model_type\": \"gpt2\", \"n_layer\": 1, \"n_head\": 2, \"n_embd\": 8, "
                    "\"n_positions\": 16, \"vocab_size\": 32, \"activation_function\": \"relu\"}"},
    {"config: n_layer missing", "n_layer", .tensor = -1, .begin = KEEP,
     .config_json = "{\"model_type\": \"gpt2\", \"n_head\": 2, \"n_embd\": 8, "
                    "\"n_positions\": 16, \"vocab_size\": 32}"},
    {"config: negative n_layer", "n_layer", .tensor = -1, .begin = KEEP,
     .config_json = "{\"model_type\": \"gpt2\", \"n_layer\": -1, \"n_head\": 2, \"n_embd\": 8, "
                    "\"n_positions\": 16, \"vocab_size\": 32}"},
    {"config: fractional n_embd", "n_embd", .tensor = -1, .begin = KEEP,
     .config_json = "{\"model_type\": \"gpt2\", \"n_layer\": 1, \"n_head\": 2, \"n_embd\": 8.5, "
                    "\"n_positions\": 16, \"vocab_size\": 32}"},
    {"config: not JSON", "not a JSON object", .tensor = -1, .begin = KEEP,
     .config_json = "{\"model_type\": \"gpt2\", "},
    {"config: untied without lm_head", "lm_head.weight", .tensor = -1, .begin = KEEP,
     .config_json = "{\"model_type\": \"gpt2\", \"n_layer\": 1, \"n_head\": 2, \"n_embd\": 8, "
                    "\"n_positions\": 16, \"vocab_size\": 32, \"tie_word_embeddings\": false}"},
    {"config: eos id outside the vocabulary", "eos_token_id", .tensor = -1, .begin = KEEP,
     .config_json = "{\"model_type\": \"gpt2\", \"n_layer\": 1, \"n_head\": 2, \"n_embd\": 8, "
                    "\"n_positions\": 16, \"vocab_size\": 32, \"eos_token_id\": 32}"},
    {"no config.json", "config.json", .tensor = -1, .begin = KEEP, .no_config = 1},
    {"llama config: rope_scaling yarn", "yarn", .tensor = -1, .begin = KEEP,
     .config_json = "{\"model_type\": \"llama\", \"num_hidden_layers\": 1, "
                    "\"num_attention_heads\": 2, \"hidden_size\": 8, "
                    "\"intermediate_size\": 16, \"vocab_size\": 32, \"max_position_embeddings\": "
                    "16, \"rope_scaling\": {\"rope_type\": \"yarn\", \"factor\": 4.0}}"},
    {"llama config: hidden_act gelu", "hidden_act", .tensor = -1, .begin = KEEP,
     .config_json = "{\"model_type\": \"llama\", \"num_hidden_layers\": 1, "
                    "\"num_attention_heads\": 2, \"hidden_size\": 8, "
                    "\"intermediate_size\": 16, \"vocab_size\": 32, \"max_position_embeddings\": "
                    "16, \"hidden_act\": \"gelu\"}"},
    {"llama config: heads not a multiple of KV heads", "num_key_value_heads", .tensor = -1,
     .begin = KEEP,
     .config_json = "{\"model_type\": \"llama\", \"num_hidden_layers\": 1, "
                    "\"num_attention_heads\": 2, \"hidden_size\": 8, "
                    "\"intermediate_size\": 16, \"vocab_size\": 32, \"max_position_embeddings\": "
                    "16, \"num_key_value_heads\": 3}"},
    {"llama config: odd head_dim", "head_dim", .tensor = -1, .begin = KEEP,
     .config_json = "{\"model_type\": \"llama\", \"num_hidden_layers\": 1, "
                    "\"num_attention_heads\": 2, \"hidden_size\": 8, "
                    "\"intermediate_size\": 16, \"vocab_size\": 32, \"max_position_embeddings\": "
                    "16, \"head_dim\": 5}"},
    {"llama config: llama3 scaling without low_freq_factor", "low_freq_factor", .tensor = -1,
     .begin = KEEP,
     .config_json = "{\"model_type\": \"llama\", \"num_hidden_layers\": 1, "
                    "\"num_attention_heads\": 2, \"hidden_size\": 8, "
                    "\"intermediate_size\": 16, \"vocab_size\": 32, \"max_position_embeddings\": "
                    "16, \"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8.0, "
                    "\"high_freq_factor\": 4.0, \"original_max_position_embeddings\": 8}}"},
    {"llama config: linear scaling without factor", "factor", .tensor = -1, .begin = KEEP,
     .config_json = "{\"model_type\": \"llama\", \"num_hidden_layers\": 1, "
                    "\"num_attention_heads\": 2, \"hidden_size\": 8, "
                    "\"intermediate_size\": 16, \"vocab_size\": 32, \"max_position_embeddings\": "
                    "16, \"rope_scaling\": {\"type\": \"linear\"}}"},
    {"llama config: an end token outside the vocabulary", "eos_token_id", .tensor = -1,
     .begin = KEEP,
     .config_json = "{\"model_type\": \"llama\", \"num_hidden_layers\": 1, "
                    "\"num_attention_heads\": 2, \"hidden_size\": 8, "
                    "\"intermediate_size\": 16, \"vocab_size\": 32, \"max_position_embeddings\": "
                    "16, \"eos_token_id\": [2, 40]}"},
    {"llama config: GPT-2 tensors", "not part of a Llama model", .tensor = -1, .begin = KEEP,
     .config_json =
         "{\"model_type\": \"llama\", \"num_hidden_layers\": 1, \"num_attention_heads\": 2, "
         "\"hidden_size\": 8, "
         "\"intermediate_size\": 16, \"vocab_size\": 32, \"max_position_embeddings\": 16}"},
    {"qwen2 config: use_sliding_window", "use_sliding_window", .tensor = -1, .begin = KEEP,
     .config_json = "{\"model_type\": \"qwen2\", \"num_hidden_layers\": 1, "
                    "\"num_attention_heads\": 2, \"hidden_size\": 8, "
                    "\"intermediate_size\": 16, \"vocab_size\": 32, \"max_position_embeddings\": "
                    "16, \"use_sliding_window\": true}"},
};

static void write_small_model(const char *dir, const struct bad_case *c) {
    struct tt_model m;
    small_model(&m);
    if (c != NULL && c->tensor >= 0) {
        struct tt_tensor *t = &m.tensors[c->tensor];
        if (c->dtype != NULL) {
            snprintf(t->dtype, sizeof(t->dtype), "%s", c->dtype);
        }
        if (c->shape1 != 0) {
            t->shape[1] = c->shape1;
            free(t->values);
            t->values = calloc((size_t)(t->shape[0] * t->shape[1]), sizeof(float));
        }
        if (c->begin != KEEP) {
            t->begin = c->begin;
            t->end = c->end;
        }
        if (c->rename != NULL) {
            snprintf(t->name, sizeof(t->name), "%s", c->rename);
        }
        if (c->drop) {
            free(t->values);
            m.tensors[c->tensor] = m.tensors[--m.n_tensors];
        }
    }
    char path[1024];
    snprintf(path, sizeof(path), "%s/model.safetensors", dir);
    ck_assert_int_eq(tt_write(path, &m, c != NULL ? c->header_len : 0,
                              c != NULL ? c->header_override : NULL, c != NULL ? c->data_delta : 0),
                     0);
    if (c != NULL && c->truncate_to > 0) {
        ck_assert_int_eq(truncate(path, c->truncate_to), 0);
    }
    if (c == NULL || !c->no_config) {
        snprintf(path, sizeof(path), "%s/config.json", dir);
        ck_assert_int_eq(tt_write_text(path, c != NULL && c->config_json != NULL ? c->config_json
                                                                                 : small_config),
                         0);
    }
    tt_free(&m);
}

START_TEST(test_small_valid_model_loads) {
    char dir[256];
    tt_mkdtemp(dir, sizeof(dir));
    write_small_model(dir, NULL);
    char err[512] = "";
    struct model *m = model_load(dir, err, sizeof(err));
    ck_assert_msg(m != NULL, "%s", err);
    const struct model_config *c = model_get_config(m);
    ck_assert_int_eq(c->n_layer, 1);
    ck_assert_int_eq(c->n_inner, 32);
    ck_assert_int_eq(c->eos_token_id, 31);
    ck_assert_int_eq(c->activation, MODEL_ACT_GELU_TANH);
    ck_assert_uint_eq(model_n_params(m), 32 * 8 + 16 * 8 + 4 * 8 + 8 * 24 + 24 + 8 * 8 + 8 +
                                             8 * 32 + 32 + 32 * 8 + 8 + 2 * 8);
    model_destroy(m);
    tt_rmdir(dir);
}
END_TEST

START_TEST(test_malformed_file_or_config_is_refused) {
    const struct bad_case *c = &bad_cases[_i];
    char dir[256];
    tt_mkdtemp(dir, sizeof(dir));
    write_small_model(dir, c);
    char err[512] = "";
    struct model *m = model_load(dir, err, sizeof(err));
    ck_assert_msg(m == NULL, "case '%s' loaded", c->what);
    ck_assert_msg(strstr(err, c->want_in_error) != NULL, "case '%s': error '%s' lacks '%s'",
                  c->what, err, c->want_in_error);
    /* The message names the file at fault. */
    ck_assert_msg(strstr(err, dir) != NULL || strstr(err, "config.json") != NULL,
                  "case '%s': error '%s' names no file", c->what, err);
    tt_rmdir(dir);
}
END_TEST

static Suite *model_loader_suite(void) {
    Suite *s = suite_create("model_loader");
    TCase *encodings = tcase_create("encodings");
    /* Checked: each test loads the model in its own (forked) process, so the compute threads
     * are that process's own. */
    tcase_add_checked_fixture(encodings, fixture_setup, fixture_teardown);
    tcase_set_timeout(encodings, 600);
    tcase_add_test(encodings, test_f16_and_bf16_match_f32_of_rounded_weights);
    tcase_add_test(encodings, test_narrowed_weights_equal_prerounded_file);
    tcase_add_test(encodings, test_weights_out_of_f16_range_or_mixed);
    tcase_add_test(encodings, test_q8_weights_close_and_non_finite_refused);
    tcase_add_test(encodings, test_shards_and_name_variants_match_original);
    suite_add_tcase(s, encodings);
    TCase *load = tcase_create("load");
    tcase_add_test(load, test_small_valid_model_loads);
    tcase_add_loop_test(load, test_malformed_file_or_config_is_refused, 0,
                        (int)(sizeof(bad_cases) / sizeof(bad_cases[0])));
    suite_add_tcase(s, load);
    return s;
}

int main(void) {
    log_set_level(LOG_LEVEL_WARN);
    SRunner *sr = srunner_create(model_loader_suite());
    srunner_run_all(sr, CK_NORMAL);
    int n_failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return n_failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
