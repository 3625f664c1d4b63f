/*
 * test_model.c: the model module against Hugging Face transformers' golden outputs for
 * gpt2-tiny-random (logits, greedy tokens), batch invariance of the ragged forward pass
 * (bit-identical), F16/BF16/sharded/renamed checkpoints, a table of malformed files and
 * configs, and the fast kernels against their naive references.
 *
 * The model tests include src/model's private headers (kernels.h) by relative path. Test
 * helpers that write safetensors files into /tmp directories come first.
 */
#include <dirent.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <check.h>
#include <cjson/cJSON.h>

#include <gptd/model.h>
#include <gptd/util.h>

#include "../src/model/kernels.h"
#include "common.h"

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

static char *tt_read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        return NULL;
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    if (buf != NULL && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf != NULL) {
        buf[n] = '\0';
        if (len != NULL) {
            *len = (size_t)n;
        }
    }
    return buf;
}

static int tt_read(const char *path, struct tt_model *m) {
    size_t len = 0;
    char *buf = tt_read_file(path, &len);
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

static uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static uint16_t to_bf16(float f) {
    uint32_t u = f32_bits(f);
    u += 0x7fff + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

static uint16_t to_f16(float f) {
    uint32_t u = f32_bits(f);
    uint32_t sign = (u >> 16) & 0x8000;
    int32_t exp = (int32_t)((u >> 23) & 0xff) - 127 + 15;
    uint32_t mant = u & 0x7fffff;
    if (exp >= 31) {
        return (uint16_t)(sign | 0x7c00);
    }
    if (exp <= 0) {
        if (exp < -10) {
            return (uint16_t)sign;
        }
        mant |= 0x800000;
        uint32_t shift = (uint32_t)(14 - exp);
        uint32_t half = mant >> shift;
        uint32_t rem = mant & ((1u << shift) - 1);
        uint32_t mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half & 1))) {
            half++;
        }
        return (uint16_t)(sign | half);
    }
    uint32_t half = ((uint32_t)exp << 10) | (mant >> 13);
    uint32_t rem = mant & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (half & 1))) {
        half++; /* may carry into the exponent, which is still right */
    }
    return (uint16_t)(sign | half);
}

static float from_f16(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t mant = h & 0x3ff;
    float f;
    if (exp == 0) {
        f = (float)mant * (1.0f / 16777216.0f);
        uint32_t b = f32_bits(f) | sign;
        memcpy(&f, &b, 4);
        return f;
    }
    uint32_t b = exp == 31 ? (sign | 0x7f800000u | (mant << 13))
                           : (sign | ((exp + 112) << 23) | (mant << 13));
    memcpy(&f, &b, 4);
    return f;
}

static float tt_round_f16(float f) {
    return from_f16(to_f16(f));
}

static float tt_round_bf16(float f) {
    uint32_t b = (uint32_t)to_bf16(f) << 16;
    float out;
    memcpy(&out, &b, 4);
    return out;
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
    char *buf = tt_read_file(from, &len);
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

/* ---- the tiny golden model ---- */

#define N_PROMPTS  7
#define N_GREEDY   48
#define MAX_PROMPT 512

struct golden_prompt {
    int32_t ids[MAX_PROMPT];
    int32_t n_ids;
    int32_t greedy[N_GREEDY];
    char last_logits_file[256];
};

static char g_model_dir[512];
static struct golden_prompt g_prompts[N_PROMPTS];
static struct model *g_model;
static int32_t g_vocab;
static int g_n_greedy = N_GREEDY;
static enum kv_dtype g_kv_dtype = KV_DTYPE_F32; /* of the caches run_alone and the batch use */

static int under_valgrind(void) {
    const char *v = getenv("GPTD_UNDER_VALGRIND");
    return v != NULL && v[0] == '1';
}

static void read_golden(void) {
    tiny_model_dir(g_model_dir, sizeof(g_model_dir));
    char path[1024];
    snprintf(path, sizeof(path), "%s/golden/forward.json", g_model_dir);
    char *text = tt_read_file(path, NULL);
    ck_assert_msg(text != NULL, "cannot read %s", path);
    cJSON *root = cJSON_Parse(text);
    free(text);
    const cJSON *prompts = cJSON_GetObjectItem(root, "prompts");
    ck_assert_int_eq(cJSON_GetArraySize(prompts), N_PROMPTS);
    for (int i = 0; i < N_PROMPTS; i++) {
        const cJSON *p = cJSON_GetArrayItem(prompts, i);
        struct golden_prompt *g = &g_prompts[i];
        const cJSON *ids = cJSON_GetObjectItem(p, "prompt_ids");
        g->n_ids = cJSON_GetArraySize(ids);
        ck_assert_int_le(g->n_ids, MAX_PROMPT);
        for (int j = 0; j < g->n_ids; j++) {
            g->ids[j] = (int32_t)cJSON_GetArrayItem(ids, j)->valuedouble;
        }
        const cJSON *greedy = cJSON_GetObjectItem(p, "greedy_ids");
        ck_assert_int_eq(cJSON_GetArraySize(greedy), N_GREEDY);
        for (int j = 0; j < N_GREEDY; j++) {
            g->greedy[j] = (int32_t)cJSON_GetArrayItem(greedy, j)->valuedouble;
        }
        snprintf(g->last_logits_file, sizeof(g->last_logits_file), "%s",
                 cJSON_GetObjectItem(p, "last_logits_file")->valuestring);
    }
    cJSON_Delete(root);
}

static void fixture_setup(void) {
    read_golden();
    char err[512] = "";
    g_model = model_load(g_model_dir, err, sizeof(err));
    ck_assert_msg(g_model != NULL, "model_load: %s", err);
    g_vocab = model_get_config(g_model)->n_vocab;
    /* valgrind runs ~50x slower: fewer greedy steps, the same assertions on each. */
    g_n_greedy = under_valgrind() ? 6 : N_GREEDY;
}

static void fixture_teardown(void) {
    model_destroy(g_model);
    g_model = NULL;
}

static float *read_f32(const char *rel, size_t n) {
    char path[1024];
    snprintf(path, sizeof(path), "%s/%s", g_model_dir, rel);
    size_t len = 0;
    char *buf = tt_read_file(path, &len);
    ck_assert_msg(buf != NULL, "cannot read %s", path);
    ck_assert_uint_eq(len, n * sizeof(float));
    return (float *)(void *)buf;
}

static int32_t argmax(const float *x, int32_t n) {
    int32_t best = 0;
    for (int32_t i = 1; i < n; i++) {
        if (x[i] > x[best]) {
            best = i;
        }
    }
    return best;
}

static float max_abs_diff(const float *a, const float *b, size_t n) {
    float m = 0.0f;
    for (size_t i = 0; i < n; i++) {
        float d = fabsf(a[i] - b[i]);
        m = d > m ? d : m;
    }
    return m;
}

/*
 * Runs one prompt alone: prefill in one call, then n_steps greedy decode steps. Writes
 * (1 + n_steps) logit rows (prefill's last row first) into logits and the greedy ids into ids.
 */
static void run_alone(struct model *model, const int32_t *prompt, int32_t n_prompt, int32_t n_steps,
                      float *logits, int32_t *ids) {
    const struct model_config *cfg = model_get_config(model);
    char err[256];
    struct kv_cache *kv = kv_cache_create_with(model, 4u << 20, g_kv_dtype, err, sizeof(err));
    ck_assert_msg(kv != NULL, "%s", err);
    struct model_scratch *scratch = model_scratch_create(model, MAX_PROMPT, 1);
    ck_assert_ptr_nonnull(scratch);
    struct kv_seq seq;
    ck_assert_int_eq(kv_seq_init(&seq, kv), 0);
    ck_assert_int_eq(kv_seq_reserve(kv, &seq, n_prompt), KV_OK);
    struct model_batch_seq b = {.kv = &seq, .tokens = prompt, .n_tokens = n_prompt, .n_logits = 1};
    ck_assert_int_eq(model_forward(model, kv, scratch, &b, 1, logits), 0);
    for (int32_t s = 0; s < n_steps; s++) {
        int32_t next = argmax(logits + (size_t)s * cfg->n_vocab, cfg->n_vocab);
        ids[s] = next;
        if (s + 1 == n_steps) {
            break;
        }
        ck_assert_int_eq(kv_seq_reserve(kv, &seq, 1), KV_OK);
        struct model_batch_seq d = {.kv = &seq, .tokens = &ids[s], .n_tokens = 1, .n_logits = 1};
        ck_assert_int_eq(
            model_forward(model, kv, scratch, &d, 1, logits + (size_t)(s + 1) * cfg->n_vocab), 0);
    }
    kv_seq_finish(kv, &seq);
    ck_assert_int_eq(kv_cache_n_blocks_free(kv), kv_cache_n_blocks_total(kv));
    model_scratch_destroy(scratch);
    kv_cache_destroy(kv);
}

START_TEST(test_forward_last_logits_match_golden) {
    const struct golden_prompt *g = &g_prompts[_i];
    float *want = read_f32(g->last_logits_file, (size_t)g_vocab);
    float *got = malloc((size_t)g_vocab * sizeof(float));
    int32_t id;
    run_alone(g_model, g->ids, g->n_ids, 1, got, &id);
    float diff = max_abs_diff(got, want, (size_t)g_vocab);
    ck_assert_msg(diff <= 1e-4f, "prompt %d: max |logit - golden| = %g", _i, (double)diff);
    free(got);
    free(want);
}
END_TEST

START_TEST(test_forward_all_positions_match_golden) {
    const struct golden_prompt *g = &g_prompts[0];
    float *want = read_f32("golden/p0_all_logits.f32", (size_t)g->n_ids * g_vocab);
    float *got = malloc((size_t)g->n_ids * g_vocab * sizeof(float));
    char err[256];
    struct kv_cache *kv = kv_cache_create(g_model, 8u << 20, err, sizeof(err));
    struct model_scratch *scratch = model_scratch_create(g_model, 64, 64);
    struct kv_seq seq;
    ck_assert_int_eq(kv_seq_init(&seq, kv), 0);
    ck_assert_int_eq(kv_seq_reserve(kv, &seq, g->n_ids), KV_OK);
    struct model_batch_seq b = {
        .kv = &seq, .tokens = g->ids, .n_tokens = g->n_ids, .n_logits = g->n_ids};
    ck_assert_int_eq(model_forward(g_model, kv, scratch, &b, 1, got), 0);
    ck_assert_int_eq(seq.n_pos, g->n_ids);
    for (int32_t p = 0; p < g->n_ids; p++) {
        float diff =
            max_abs_diff(got + (size_t)p * g_vocab, want + (size_t)p * g_vocab, (size_t)g_vocab);
        ck_assert_msg(diff <= 1e-4f, "position %d: max diff %g", p, (double)diff);
    }
    kv_seq_finish(kv, &seq);
    model_scratch_destroy(scratch);
    kv_cache_destroy(kv);
    free(got);
    free(want);
}
END_TEST

START_TEST(test_greedy_tokens_match_golden) {
    const struct golden_prompt *g = &g_prompts[_i];
    float *logits = malloc((size_t)g_n_greedy * g_vocab * sizeof(float));
    int32_t ids[N_GREEDY];
    run_alone(g_model, g->ids, g->n_ids, g_n_greedy, logits, ids);
    for (int s = 0; s < g_n_greedy; s++) {
        ck_assert_msg(ids[s] == g->greedy[s], "prompt %d step %d: got %d, golden %d", _i, s, ids[s],
                      g->greedy[s]);
    }
    free(logits);
}
END_TEST

/*
 * The 7 prompts together: staggered starts, prefill in chunks of 1, 3 or 64 tokens mixed with
 * the others' decode steps in the same forward calls. Every logit row must be bit-identical
 * to the same sequence run alone.
 */
/* Loop index 0: float32 KV cache; 1: the f16 one (rounded K/V, same invariance). */
START_TEST(test_ragged_batch_is_bit_identical_to_alone) {
    static const int32_t chunk_of[N_PROMPTS] = {1, 3, 64, 3, 1, 1, 64};
    g_kv_dtype = _i == 0 ? KV_DTYPE_F32 : KV_DTYPE_F16;
    size_t row_floats = (size_t)g_vocab;
    int32_t n_steps = g_n_greedy;
    float *alone[N_PROMPTS];
    int32_t alone_ids[N_PROMPTS][N_GREEDY];
    for (int i = 0; i < N_PROMPTS; i++) {
        alone[i] = malloc((size_t)n_steps * row_floats * sizeof(float));
        run_alone(g_model, g_prompts[i].ids, g_prompts[i].n_ids, n_steps, alone[i], alone_ids[i]);
    }
    char err[256];
    struct kv_cache *kv = kv_cache_create_with(g_model, 16u << 20, g_kv_dtype, err, sizeof(err));
    ck_assert_int_eq(kv_cache_dtype(kv), g_kv_dtype);
    struct model_scratch *scratch = model_scratch_create(g_model, 512, N_PROMPTS);
    float *logits = malloc(N_PROMPTS * row_floats * sizeof(float));
    struct kv_seq seqs[N_PROMPTS];
    int32_t n_prefilled[N_PROMPTS] = {0};
    int32_t n_done[N_PROMPTS] = {0}; /* logit rows produced */
    int32_t last_id[N_PROMPTS] = {0};
    for (int i = 0; i < N_PROMPTS; i++) {
        ck_assert_int_eq(kv_seq_init(&seqs[i], kv), 0);
    }
    int n_bit_identical = 0;
    int n_rows_total = 0;
    for (int step = 0;; step++) {
        struct model_batch_seq batch[N_PROMPTS];
        int which[N_PROMPTS];
        int n = 0;
        /* Decode tokens first (as the scheduler will), then prompt chunks. */
        for (int pass = 0; pass < 2; pass++) {
            for (int i = 0; i < N_PROMPTS; i++) {
                const struct golden_prompt *g = &g_prompts[i];
                int is_prefill = n_prefilled[i] < g->n_ids;
                if (step < 2 * i || n_done[i] >= n_steps || is_prefill != (pass == 1)) {
                    continue;
                }
                struct model_batch_seq *b = &batch[n];
                b->kv = &seqs[i];
                if (is_prefill) {
                    int32_t len = g->n_ids - n_prefilled[i];
                    b->n_tokens = len < chunk_of[i] ? len : chunk_of[i];
                    b->tokens = g->ids + n_prefilled[i];
                    b->n_logits = n_prefilled[i] + b->n_tokens == g->n_ids ? 1 : 0;
                    n_prefilled[i] += b->n_tokens;
                } else {
                    b->n_tokens = 1;
                    b->tokens = &last_id[i];
                    b->n_logits = 1;
                }
                ck_assert_int_eq(kv_seq_reserve(kv, &seqs[i], b->n_tokens), KV_OK);
                which[n++] = i;
            }
        }
        if (n == 0) {
            int all_done = 1;
            for (int i = 0; i < N_PROMPTS; i++) {
                all_done = all_done && n_done[i] >= n_steps;
            }
            if (all_done) {
                break;
            }
            continue;
        }
        ck_assert_int_eq(model_forward(g_model, kv, scratch, batch, n, logits), 0);
        int r = 0;
        for (int j = 0; j < n; j++) {
            int i = which[j];
            if (batch[j].n_logits == 0) {
                continue;
            }
            const float *got = logits + (size_t)r++ * row_floats;
            const float *want = alone[i] + (size_t)n_done[i] * row_floats;
            float diff = max_abs_diff(got, want, row_floats);
            ck_assert_msg(diff <= 1e-5f, "prompt %d row %d differs by %g", i, n_done[i],
                          (double)diff);
            n_bit_identical += memcmp(got, want, row_floats * sizeof(float)) == 0;
            n_rows_total++;
            last_id[i] = argmax(got, g_vocab);
            ck_assert_int_eq(last_id[i], alone_ids[i][n_done[i]]);
            n_done[i]++;
        }
    }
    /* The kernels promise more than the 1e-5 the issue asks: the same bytes. */
    ck_assert_int_eq(n_bit_identical, n_rows_total);
    ck_assert_int_eq(n_rows_total, N_PROMPTS * n_steps);
    for (int i = 0; i < N_PROMPTS; i++) {
        kv_seq_finish(kv, &seqs[i]);
        free(alone[i]);
    }
    ck_assert_int_eq(kv_cache_n_blocks_free(kv), kv_cache_n_blocks_total(kv));
    free(logits);
    model_scratch_destroy(scratch);
    kv_cache_destroy(kv);
    g_kv_dtype = KV_DTYPE_F32;
}
END_TEST

/* An f16 KV cache holds twice the blocks of a float32 one in the same budget, and its logits
 * stay close to transformers' (the stored K/V are rounded, so not within 1e-4). */
START_TEST(test_f16_kv_cache_close_to_golden) {
    char err[256];
    struct kv_cache *k32 = kv_cache_create_with(g_model, 8u << 20, KV_DTYPE_F32, err, sizeof(err));
    struct kv_cache *k16 = kv_cache_create_with(g_model, 8u << 20, KV_DTYPE_F16, err, sizeof(err));
    ck_assert_ptr_nonnull(k32);
    ck_assert_ptr_nonnull(k16);
    ck_assert_uint_eq(kv_cache_bytes_per_block(k16) * 2, kv_cache_bytes_per_block(k32));
    ck_assert_int_ge(kv_cache_n_blocks_total(k16), 2 * kv_cache_n_blocks_total(k32) - 1);
    kv_cache_destroy(k32);
    kv_cache_destroy(k16);
    g_kv_dtype = KV_DTYPE_F16;
    float worst = 0.0f;
    for (int i = 0; i < N_PROMPTS; i++) {
        const struct golden_prompt *g = &g_prompts[i];
        float *want = read_f32(g->last_logits_file, (size_t)g_vocab);
        float *got = malloc((size_t)g_vocab * sizeof(float));
        int32_t id;
        run_alone(g_model, g->ids, g->n_ids, 1, got, &id);
        float diff = max_abs_diff(got, want, (size_t)g_vocab);
        worst = diff > worst ? diff : worst;
        free(got);
        free(want);
    }
    g_kv_dtype = KV_DTYPE_F32;
    ck_assert_msg(worst > 0.0f && worst < 1e-2f, "f16 KV: max |logit - golden| = %g",
                  (double)worst);
    enum kv_dtype d;
    ck_assert_int_eq(kv_dtype_parse("f16", &d), 0);
    ck_assert_int_eq(d, KV_DTYPE_F16);
    ck_assert_int_eq(kv_dtype_parse("fp8", &d), -1);
}
END_TEST

/* A forked sequence continues from the shared prompt exactly like a fresh run of the same
 * tokens, and writing into the shared last block does not disturb the original. */
START_TEST(test_forked_sequence_matches_fresh_run) {
    const struct golden_prompt *g = &g_prompts[1]; /* 13 tokens: the last block is partial */
    char err[256];
    struct kv_cache *kv = kv_cache_create(g_model, 8u << 20, err, sizeof(err));
    struct model_scratch *scratch = model_scratch_create(g_model, 64, 2);
    float *a = malloc(2 * (size_t)g_vocab * sizeof(float));
    float *b = malloc(2 * (size_t)g_vocab * sizeof(float));
    struct kv_seq src, dst;
    ck_assert_int_eq(kv_seq_init(&src, kv), 0);
    ck_assert_int_eq(kv_seq_init(&dst, kv), 0);
    ck_assert_int_eq(kv_seq_reserve(kv, &src, g->n_ids), KV_OK);
    struct model_batch_seq p = {.kv = &src, .tokens = g->ids, .n_tokens = g->n_ids, .n_logits = 1};
    ck_assert_int_eq(model_forward(g_model, kv, scratch, &p, 1, a), 0);
    kv_seq_fork(kv, &dst, &src);
    int32_t t_src = 100;
    int32_t t_dst = 200;
    ck_assert_int_eq(kv_seq_reserve(kv, &src, 1), KV_OK);
    ck_assert_int_eq(kv_seq_reserve(kv, &dst, 1), KV_OK);
    struct model_batch_seq both[2] = {
        {.kv = &src, .tokens = &t_src, .n_tokens = 1, .n_logits = 1},
        {.kv = &dst, .tokens = &t_dst, .n_tokens = 1, .n_logits = 1},
    };
    ck_assert_int_eq(model_forward(g_model, kv, scratch, both, 2, a), 0);
    /* Fresh runs of prompt + 100 and prompt + 200. */
    int32_t ids[MAX_PROMPT];
    memcpy(ids, g->ids, (size_t)g->n_ids * sizeof(int32_t));
    for (int k = 0; k < 2; k++) {
        ids[g->n_ids] = k == 0 ? t_src : t_dst;
        struct kv_seq fresh;
        ck_assert_int_eq(kv_seq_init(&fresh, kv), 0);
        ck_assert_int_eq(kv_seq_reserve(kv, &fresh, g->n_ids + 1), KV_OK);
        struct model_batch_seq f = {
            .kv = &fresh, .tokens = ids, .n_tokens = g->n_ids + 1, .n_logits = 1};
        ck_assert_int_eq(model_forward(g_model, kv, scratch, &f, 1, b + (size_t)k * g_vocab), 0);
        kv_seq_finish(kv, &fresh);
    }
    ck_assert_float_le(max_abs_diff(a, b, 2 * (size_t)g_vocab), 1e-5f);
    ck_assert_int_eq(memcmp(a, b, 2 * (size_t)g_vocab * sizeof(float)), 0);
    kv_seq_finish(kv, &src);
    kv_seq_finish(kv, &dst);
    ck_assert_int_eq(kv_cache_n_blocks_free(kv), kv_cache_n_blocks_total(kv));
    free(a);
    free(b);
    model_scratch_destroy(scratch);
    kv_cache_destroy(kv);
}
END_TEST

START_TEST(test_forward_refuses_bad_batches) {
    char err[256];
    struct kv_cache *kv = kv_cache_create(g_model, 8u << 20, err, sizeof(err));
    struct model_scratch *scratch = model_scratch_create(g_model, 8, 1);
    float *logits = malloc((size_t)g_vocab * sizeof(float));
    struct kv_seq seq;
    ck_assert_int_eq(kv_seq_init(&seq, kv), 0);
    int32_t toks[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
    /* Not reserved. */
    struct model_batch_seq b = {.kv = &seq, .tokens = toks, .n_tokens = 2, .n_logits = 1};
    ck_assert_int_eq(model_forward(g_model, kv, scratch, &b, 1, logits), -1);
    ck_assert_int_eq(kv_seq_reserve(kv, &seq, 16), KV_OK);
    /* More rows than the scratch holds. */
    b.n_tokens = 9;
    ck_assert_int_eq(model_forward(g_model, kv, scratch, &b, 1, logits), -1);
    /* Token out of the vocabulary. */
    toks[0] = g_vocab;
    b.n_tokens = 2;
    ck_assert_int_eq(model_forward(g_model, kv, scratch, &b, 1, logits), -1);
    toks[0] = 1;
    /* The same sequence twice in one batch. */
    struct model_batch_seq twice[2] = {b, b};
    twice[0].n_tokens = twice[1].n_tokens = 1;
    twice[0].n_logits = twice[1].n_logits = 0; /* within the scratch: only the duplicate is wrong */
    ck_assert_int_eq(model_forward(g_model, kv, scratch, twice, 2, logits), -1);
    twice[1].n_tokens = 0; /* the same batch without the duplicate row is fine... */
    twice[1].kv = NULL;
    ck_assert_int_eq(model_forward(g_model, kv, scratch, twice, 1, logits), 0);
    kv_seq_truncate(kv, &seq, 0); /* ...and is undone for the checks below */
    ck_assert_int_eq(seq.n_pos, 0);
    ck_assert_int_eq(kv_seq_reserve(kv, &seq, 16), KV_OK);
    /* n_logits > n_tokens. */
    b.n_logits = 3;
    ck_assert_int_eq(model_forward(g_model, kv, scratch, &b, 1, logits), -1);
    ck_assert_int_eq(seq.n_pos, 0);
    b.n_logits = 1;
    ck_assert_int_eq(model_forward(g_model, kv, scratch, &b, 1, logits), 0);
    ck_assert_int_eq(seq.n_pos, 2);
    kv_seq_finish(kv, &seq);
    free(logits);
    model_scratch_destroy(scratch);
    kv_cache_destroy(kv);
}
END_TEST

/* model_set_threads after a model is loaded (what `gptd serve --threads N` does) replaces the
 * process-wide pool: the loaded model must run on the new pool and still match golden. A model
 * that kept a pointer to the old pool ran on freed memory and produced constant logits. */
START_TEST(test_set_threads_after_load_keeps_logits) {
    const struct golden_prompt *g = &g_prompts[0];
    float *want = read_f32(g->last_logits_file, (size_t)g_vocab);
    float *got = malloc((size_t)g_vocab * sizeof(float));
    int32_t id;
    for (int n = 1; n <= 3; n++) {
        model_set_threads(n);
        run_alone(g_model, g->ids, g->n_ids, 1, got, &id);
        float diff = max_abs_diff(got, want, (size_t)g_vocab);
        ck_assert_msg(diff <= 1e-4f, "%d threads set after load: max |logit - golden| = %g", n,
                      (double)diff);
        ck_assert_int_eq(id, g->greedy[0]);
    }
    model_set_threads(0);
    free(got);
    free(want);
}
END_TEST

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
    ck_assert_int_eq(model_weights_parse("fp16", &w), -1);
    ck_assert_int_eq(model_weights_parse("", &w), -1);
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
     .config_json = "{\"model_type\": \"llama\", \"n_layer\": 1, \"n_head\": 2, \"n_embd\": 8, "
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

/* ---- kernels ---- */

/* w (n_el,) rounded to wt's precision, and the same values as wt's bit patterns. */
static void round_weights(enum kernel_wtype wt, float *w, uint16_t *bits, size_t n_el) {
    for (size_t i = 0; i < n_el; i++) {
        if (wt == KERNEL_W_F16) {
            bits[i] = to_f16(w[i]);
            w[i] = from_f16(bits[i]);
        } else if (wt == KERNEL_W_BF16) {
            bits[i] = to_bf16(w[i]);
            w[i] = tt_round_bf16(w[i]);
        }
    }
}

START_TEST(test_matmul_kernels_match_reference_bytes) {
    static const int32_t shapes[][3] = {{1, 8, 8},    {1, 64, 64},    {7, 64, 192}, {13, 33, 71},
                                        {6, 100, 64}, {32, 128, 130}, {5, 1, 1},    {12, 256, 64}};
    for (int isa = KERNEL_ISA_SCALAR; isa <= KERNEL_ISA_AVX512; isa++) {
        if (!kernel_isa_supported((enum kernel_isa)isa)) {
            continue;
        }
        for (int wt = KERNEL_W_F32; wt <= KERNEL_W_BF16; wt++) {
            for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++) {
                int32_t m = shapes[s][0], k = shapes[s][1], n = shapes[s][2];
                size_t w_size = kernel_wtype_size((enum kernel_wtype)wt);
                float *x = malloc((size_t)m * k * sizeof(float));
                float *w = malloc((size_t)k * n * sizeof(float));
                uint16_t *bits = malloc((size_t)k * n * sizeof(uint16_t));
                unsigned char *wp =
                    aligned_alloc(64, (kernel_packed_floats(k, n) * w_size + 63) / 64 * 64);
                float *bias = malloc((size_t)n * sizeof(float));
                float *got = malloc((size_t)m * n * sizeof(float));
                float *want = malloc((size_t)m * n * sizeof(float));
                uint32_t r = 12345u + (uint32_t)s;
                for (int32_t i = 0; i < m * k; i++) {
                    r = r * 1664525u + 1013904223u;
                    x[i] = (float)(r >> 8) / 16777216.0f - 0.5f;
                }
                for (int32_t i = 0; i < k * n; i++) {
                    r = r * 1664525u + 1013904223u;
                    w[i] = (float)(r >> 8) / 16777216.0f - 0.5f;
                }
                /* A few half subnormals, which the F16 path must widen exactly too. */
                w[0] = 3e-6f;
                w[(k * n) / 2] = -1e-7f;
                round_weights((enum kernel_wtype)wt, w, bits, (size_t)k * n);
                memset(wp, 0, kernel_packed_floats(k, n) * w_size);
                for (int32_t i = 0; i < k * n; i++) {
                    size_t at = kernel_packed_index(k, i / n, i % n);
                    if (wt == KERNEL_W_F32) {
                        ((float *)(void *)wp)[at] = w[i];
                    } else {
                        ((uint16_t *)(void *)wp)[at] = bits[i];
                    }
                    ck_assert(kernel_packed_get((enum kernel_wtype)wt, wp, at) == w[i]);
                }
                for (int32_t i = 0; i < n; i++) {
                    bias[i] = (float)i * 0.01f;
                }
                for (int ep = 0; ep < 3; ep++) {
                    for (int32_t i = 0; i < m * n; i++) {
                        got[i] = want[i] = (float)i;
                    }
                    kernel_matmul_ref(x, (size_t)k, w, bias, want, (size_t)n, m, k, n,
                                      (enum kernel_epilogue)ep);
                    /* Rows one at a time, then all at once: the same bytes either way. */
                    for (int32_t i = 0; i < m; i++) {
                        kernel_matmul((enum kernel_isa)isa, x + (size_t)i * k, (size_t)k, wp,
                                      (enum kernel_wtype)wt, bias, got + (size_t)i * n, (size_t)n,
                                      1, k, n, 0, kernel_n_panels(n), (enum kernel_epilogue)ep);
                    }
                    if (ep == KERNEL_EPILOGUE_GELU_TANH) {
                        ck_assert_float_le(max_abs_diff(got, want, (size_t)m * n), 1e-5f);
                    } else {
                        ck_assert_msg(memcmp(got, want, (size_t)m * n * sizeof(float)) == 0,
                                      "%s weights %d m=%d k=%d n=%d epilogue %d: max diff %g",
                                      kernel_isa_name((enum kernel_isa)isa), wt, m, k, n, ep,
                                      (double)max_abs_diff(got, want, (size_t)m * n));
                    }
                    float *all = malloc((size_t)m * n * sizeof(float));
                    for (int32_t i = 0; i < m * n; i++) {
                        all[i] = (float)i;
                    }
                    kernel_matmul((enum kernel_isa)isa, x, (size_t)k, wp, (enum kernel_wtype)wt,
                                  bias, all, (size_t)n, m, k, n, 0, kernel_n_panels(n),
                                  (enum kernel_epilogue)ep);
                    ck_assert_int_eq(memcmp(all, got, (size_t)m * n * sizeof(float)), 0);
                    free(all);
                }
                free(x);
                free(w);
                free(bits);
                free(wp);
                free(bias);
                free(got);
                free(want);
            }
        }
    }
}
END_TEST

/* kernel_f32_to_f16 rounds to nearest even on every ISA exactly as the test's own converter
 * does (normal, subnormal, tie, overflow and signed-zero inputs), and widening undoes it. */
START_TEST(test_half_conversions_match_reference) {
    enum { N = 4099 };
    float *x = malloc(N * sizeof(float));
    float *back = malloc(N * sizeof(float));
    uint16_t *h = malloc(N * sizeof(uint16_t));
    uint32_t r = 777u;
    for (int i = 0; i < N; i++) {
        r = r * 1664525u + 1013904223u;
        float mag = ldexpf((float)(r >> 8) / 16777216.0f, (int)(r % 44) - 28); /* 2^-28 .. 2^16 */
        x[i] = (r & 1u) ? -mag : mag;
    }
    const float special[] = {0.0f,
                             -0.0f,
                             65504.0f,
                             65520.0f,
                             1e9f,
                             -1e9f,
                             5.9604645e-8f,
                             2.9802322e-8f,
                             1.0f + 1.0f / 2048.0f,
                             1.0f + 3.0f / 2048.0f};
    memcpy(x, special, sizeof(special));
    for (int isa = KERNEL_ISA_SCALAR; isa <= KERNEL_ISA_AVX512; isa++) {
        if (!kernel_isa_supported((enum kernel_isa)isa)) {
            continue;
        }
        kernel_f32_to_f16((enum kernel_isa)isa, x, h, N);
        for (int i = 0; i < N; i++) {
            ck_assert_msg(h[i] == to_f16(x[i]), "%s: %a -> 0x%04x, want 0x%04x",
                          kernel_isa_name((enum kernel_isa)isa), (double)x[i], h[i], to_f16(x[i]));
        }
        kernel_f16_to_f32((enum kernel_isa)isa, h, back, N);
        for (int i = 0; i < N; i++) {
            float want = from_f16(h[i]);
            ck_assert_int_eq(memcmp(&back[i], &want, sizeof(float)), 0);
        }
    }
    free(x);
    free(back);
    free(h);
}
END_TEST

START_TEST(test_vector_helpers_match_scalar) {
    float a[100], b[100], y1[100], y2[100];
    for (int i = 0; i < 100; i++) {
        a[i] = sinf((float)i);
        b[i] = cosf((float)i * 0.7f);
    }
    for (int isa = KERNEL_ISA_AVX2; isa <= KERNEL_ISA_AVX512; isa++) {
        if (!kernel_isa_supported((enum kernel_isa)isa)) {
            continue;
        }
        for (int32_t n = 1; n <= 100; n += 7) {
            float d0 = kernel_dot(KERNEL_ISA_SCALAR, a, b, n);
            float d1 = kernel_dot((enum kernel_isa)isa, a, b, n);
            ck_assert_float_le(fabsf(d0 - d1), 1e-5f);
            memcpy(y1, a, sizeof(a));
            memcpy(y2, a, sizeof(a));
            float s0 = kernel_exp_shift_sum(KERNEL_ISA_SCALAR, y1, n, 0.5f);
            float s1 = kernel_exp_shift_sum((enum kernel_isa)isa, y2, n, 0.5f);
            ck_assert_float_le(fabsf(s0 - s1), 1e-5f * s0);
            ck_assert_float_le(max_abs_diff(y1, y2, (size_t)n), 1e-6f);
            memcpy(y1, b, sizeof(b));
            memcpy(y2, b, sizeof(b));
            kernel_axpy(KERNEL_ISA_SCALAR, 0.3f, a, y1, n);
            kernel_axpy((enum kernel_isa)isa, 0.3f, a, y2, n);
            ck_assert_float_le(max_abs_diff(y1, y2, (size_t)n), 1e-6f);
            for (int i = 0; i < n; i++) {
                y1[i] = y2[i] = (a[i] - 0.2f) * 12.0f;
            }
            kernel_gelu_tanh(KERNEL_ISA_SCALAR, y1, (size_t)n);
            kernel_gelu_tanh((enum kernel_isa)isa, y2, (size_t)n);
            ck_assert_float_le(max_abs_diff(y1, y2, (size_t)n), 2e-6f);
        }
    }
    /* Attention over a paged layout (3 blocks of 16 rows, scattered), every ISA vs scalar. */
    enum { HS = 64, ROW = 80, BLOCK = 16 * ROW, N_POS = 40 };
    float *cache_k = malloc(5 * BLOCK * sizeof(float));
    float *cache_v = malloc(5 * BLOCK * sizeof(float));
    for (int i = 0; i < 5 * BLOCK; i++) {
        cache_k[i] = sinf((float)i * 0.37f);
        cache_v[i] = cosf((float)i * 0.11f);
    }
    const int32_t blocks[3] = {4, 0, 2};
    float q[HS], want[HS], got[HS], scores[N_POS];
    for (int i = 0; i < HS; i++) {
        q[i] = 0.05f * (float)(i % 13) - 0.3f;
    }
    for (int32_t n = 1; n <= N_POS; n += 13) {
        kernel_attention(KERNEL_ISA_SCALAR, q, cache_k + 3, cache_v + 3, KERNEL_W_F32, blocks,
                         BLOCK, ROW, n, HS, 0.125f, scores, want);
        float sum = 0.0f;
        for (int i = 0; i < HS; i++) {
            sum += want[i];
        }
        ck_assert(isfinite(sum));
        for (int isa = KERNEL_ISA_AVX2; isa <= KERNEL_ISA_AVX512; isa++) {
            if (kernel_isa_supported((enum kernel_isa)isa)) {
                kernel_attention((enum kernel_isa)isa, q, cache_k + 3, cache_v + 3, KERNEL_W_F32,
                                 blocks, BLOCK, ROW, n, HS, 0.125f, scores, got);
                ck_assert_float_le(max_abs_diff(got, want, HS), 1e-5f);
            }
        }
    }
    /* One position: the output is that position's V row. */
    kernel_attention(KERNEL_ISA_SCALAR, q, cache_k, cache_v, KERNEL_W_F32, blocks, BLOCK, ROW, 1,
                     HS, 0.125f, scores, got);
    ck_assert_float_le(max_abs_diff(got, cache_v + 4 * BLOCK, HS), 1e-6f);
    /* A half cache gives, on every ISA, the bytes of a float32 cache holding the same (rounded)
     * values: head size 64 (AVX-512's own path) and 40 (the generic one). */
    uint16_t *half_k = malloc(5 * BLOCK * sizeof(uint16_t));
    uint16_t *half_v = malloc(5 * BLOCK * sizeof(uint16_t));
    for (int i = 0; i < 5 * BLOCK; i++) {
        half_k[i] = to_f16(cache_k[i]);
        half_v[i] = to_f16(cache_v[i]);
        cache_k[i] = from_f16(half_k[i]);
        cache_v[i] = from_f16(half_v[i]);
    }
    for (int isa = KERNEL_ISA_SCALAR; isa <= KERNEL_ISA_AVX512; isa++) {
        if (!kernel_isa_supported((enum kernel_isa)isa)) {
            continue;
        }
        for (int hs = 40; hs <= 64; hs += 24) {
            for (int32_t n = 1; n <= N_POS; n += 13) {
                kernel_attention((enum kernel_isa)isa, q, cache_k + 3, cache_v + 3, KERNEL_W_F32,
                                 blocks, BLOCK, ROW, n, hs, 0.125f, scores, want);
                kernel_attention((enum kernel_isa)isa, q, half_k + 3, half_v + 3, KERNEL_W_F16,
                                 blocks, BLOCK, ROW, n, hs, 0.125f, scores, got);
                ck_assert_msg(memcmp(got, want, (size_t)hs * sizeof(float)) == 0,
                              "%s hs %d n %d: f16 cache differs by %g",
                              kernel_isa_name((enum kernel_isa)isa), hs, n,
                              (double)max_abs_diff(got, want, (size_t)hs));
            }
        }
    }
    free(half_k);
    free(half_v);
    free(cache_k);
    free(cache_v);
    /* The GELU form used is the tanh one. */
    ck_assert_float_le(fabsf(kernel_gelu_tanh_ref(1.0f) -
                             0.5f * (1.0f + tanhf(0.7978845608f * (1.0f + 0.044715f)))),
                       1e-6f);
}
END_TEST

static Suite *model_suite(void) {
    Suite *s = suite_create("model");
    TCase *golden = tcase_create("golden");
    /* Checked: each test loads the model in its own (forked) process, so the compute threads
     * are that process's own. */
    tcase_add_checked_fixture(golden, fixture_setup, fixture_teardown);
    tcase_set_timeout(golden, 600);
    tcase_add_loop_test(golden, test_forward_last_logits_match_golden, 0, N_PROMPTS);
    tcase_add_test(golden, test_forward_all_positions_match_golden);
    tcase_add_loop_test(golden, test_greedy_tokens_match_golden, 0, N_PROMPTS);
    tcase_add_loop_test(golden, test_ragged_batch_is_bit_identical_to_alone, 0, 2);
    tcase_add_test(golden, test_f16_kv_cache_close_to_golden);
    tcase_add_test(golden, test_forked_sequence_matches_fresh_run);
    tcase_add_test(golden, test_forward_refuses_bad_batches);
    tcase_add_test(golden, test_set_threads_after_load_keeps_logits);
    tcase_add_test(golden, test_f16_and_bf16_match_f32_of_rounded_weights);
    tcase_add_test(golden, test_narrowed_weights_equal_prerounded_file);
    tcase_add_test(golden, test_weights_out_of_f16_range_or_mixed);
    tcase_add_test(golden, test_shards_and_name_variants_match_original);
    suite_add_tcase(s, golden);
    TCase *load = tcase_create("load");
    tcase_add_test(load, test_small_valid_model_loads);
    tcase_add_loop_test(load, test_malformed_file_or_config_is_refused, 0,
                        (int)(sizeof(bad_cases) / sizeof(bad_cases[0])));
    suite_add_tcase(s, load);
    TCase *kernels = tcase_create("kernels");
    tcase_set_timeout(kernels, 120);
    tcase_add_test(kernels, test_matmul_kernels_match_reference_bytes);
    tcase_add_test(kernels, test_vector_helpers_match_scalar);
    tcase_add_test(kernels, test_half_conversions_match_reference);
    suite_add_tcase(s, kernels);
    return s;
}

int main(void) {
    log_set_level(LOG_LEVEL_WARN);
    SRunner *sr = srunner_create(model_suite());
    srunner_run_all(sr, CK_NORMAL);
    int n_failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return n_failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
