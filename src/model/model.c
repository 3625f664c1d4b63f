/*
 * model.c: loads a Hugging Face GPT-2 directory (config.json + safetensors, single file or
 * shards) into packed weights, and runs the batched forward pass over a ragged batch with a
 * paged KV cache (contract in include/gptd/model.h).
 *
 * DESIGN
 * - Load: every safetensors file is mmap'd and validated (safetensors.c) before any tensor is
 *   bound; each tensor is then matched by name (with or without "transformer.") and shape
 *   against the config and copied into one 64-byte-aligned allocation. The four matmul weights
 *   per layer and the lm_head are packed into KERNEL_NR-column panels (kernels.h) of one element
 *   type for the whole model: by default the checkpoint's own when every matmul weight is F16
 *   (or every one BF16) -- the kernels widen them in registers, exactly, at half the memory
 *   traffic of float32 -- and float32 otherwise; model_load_with can force float32 or narrow to
 *   F16/BF16. Everything else (LayerNorms, biases, wpe, an untied wte) is float32. The mappings
 *   are closed once packing is done. With tied embeddings the only copy of wte is the packed
 *   lm_head, and the embedding lookup gathers a row from it.
 * - Forward (engine thread): rows of all sequences are stacked into one (N, C) residual
 *   stream. Each weight matmul is ONE kernel call over all N rows, split across the pool by
 *   column panels; attention runs per (sequence, head) over that sequence's KV blocks; the
 *   final LayerNorm and the lm_head run only on the rows whose logits were asked for. Every
 *   row's arithmetic depends only on that row (and its own sequence's cache), never on the
 *   batch around it, which is what makes a batch bit-identical to its sequences run alone.
 * - No allocation in model_forward: struct model_scratch holds every buffer.
 */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cblas.h>
#include <cjson/cJSON.h>

#include <gptd/model.h>
#include <gptd/util.h>

#include "config.h"
#include "half.h"
#include "kernels.h"
#include "kv_cache_internal.h"
#include "pool.h"
#include "safetensors.h"

#define MODEL_MAX_SHARDS 256

struct layer_weights {
    const float *ln1_w;      /* (C,) */
    const float *ln1_b;      /* (C,) */
    const void *w_qkv;       /* packed (C, 3C): Conv1D (in, out); q, k, v side by side */
    const float *b_qkv;      /* (3C,) */
    const void *w_attn_out;  /* packed (C, C) */
    const float *b_attn_out; /* (C,) */
    const float *ln2_w;      /* (C,) */
    const float *ln2_b;      /* (C,) */
    const void *w_fc;        /* packed (C, F), F = n_inner */
    const float *b_fc;       /* (F,) */
    const void *w_mlp_out;   /* packed (F, C) */
    const float *b_mlp_out;  /* (C,) */
};

struct model {
    struct model_config config;
    void *weights; /* the one allocation every pointer below points into */
    size_t weight_bytes;
    enum kernel_wtype wtype; /* of every packed weight */
    size_t n_params;
    const float *wte;             /* (V, C) when lm_head is untied; NULL when tied (use lm_head) */
    const float *wpe;             /* (n_ctx, C) */
    const void *lm_head;          /* packed (C, V): lm_head.weight, or wte when tied */
    const float *lnf_w;           /* (C,) */
    const float *lnf_b;           /* (C,) */
    struct layer_weights *layers; /* (L,) */
    enum kernel_isa isa;
    bool holds_pool; /* counted in g_pool_users (see pool_acquire); passes use cur_pool() */
};

/* ---- the process-wide thread pool ----
 * One pool per process, shared by every loaded model (usually one), so there is never more
 * than one set of compute threads. model_set_threads replaces it; a model therefore never keeps
 * a pointer to it but reads the current one at each pass (cur_pool), or a model loaded before
 * `--threads` took effect would run on a freed pool. */
static pthread_mutex_t g_pool_mutex = PTHREAD_MUTEX_INITIALIZER;
static _Atomic(struct pool *) g_pool;
static int g_pool_users;
static int g_n_threads; /* 0: one per online CPU */

static int threads_wanted(void) {
    if (g_n_threads > 0) {
        return g_n_threads;
    }
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : (n > POOL_MAX_THREADS ? POOL_MAX_THREADS : (int)n);
}

static struct pool *cur_pool(void) {
    return atomic_load_explicit(&g_pool, memory_order_acquire);
}

static bool pool_acquire(void) {
    pthread_mutex_lock(&g_pool_mutex);
    if (cur_pool() == NULL) {
        atomic_store_explicit(&g_pool, pool_create(threads_wanted()), memory_order_release);
    }
    bool ok = cur_pool() != NULL;
    if (ok) {
        g_pool_users++;
    }
    pthread_mutex_unlock(&g_pool_mutex);
    return ok;
}

static void pool_release(void) {
    pthread_mutex_lock(&g_pool_mutex);
    if (--g_pool_users == 0) {
        pool_destroy(cur_pool());
        atomic_store_explicit(&g_pool, NULL, memory_order_release);
    }
    pthread_mutex_unlock(&g_pool_mutex);
}

void model_set_threads(int n_threads) {
    pthread_mutex_lock(&g_pool_mutex);
    g_n_threads = n_threads < 1 ? 0 : n_threads;
    struct pool *old = cur_pool();
    if (old != NULL && pool_n_threads(old) != threads_wanted()) {
        /* Called between forward passes only (contract), so no run is in flight; loaded models
         * pick the new pool up at their next pass. */
        struct pool *fresh = pool_create(threads_wanted());
        if (fresh != NULL) {
            atomic_store_explicit(&g_pool, fresh, memory_order_release);
            pool_destroy(old);
        }
    }
    pthread_mutex_unlock(&g_pool_mutex);
    /* The model's matmuls do not use OpenBLAS, but anyone else in the process (benchmarks) who
     * does should get the same thread count rather than oversubscribe. */
    openblas_set_num_threads(threads_wanted());
}

/* ---- loading ---- */

enum spec_kind {
    SPEC_PLAIN = 0,      /* copied as is */
    SPEC_PACK_IN_OUT,    /* Conv1D weight (K, N) -> packed */
    SPEC_PACK_TRANSPOSE, /* (N, K) (wte, lm_head) -> packed (K, N) */
};

struct spec {
    char name[64]; /* without "transformer." */
    int32_t n_dims;
    int64_t shape[2];
    enum spec_kind kind;
    int is_optional;
    size_t n_elements; /* in the allocation: packed ones include the padding; 0 = not stored */
    size_t offset;     /* bytes into model->weights */
    const struct st_tensor *tensor; /* bound while loading */
    const char *file;               /* the file it was found in */
};

static size_t round_up16(size_t n) {
    return (n + 15) / 16 * 16;
}

static size_t round_up64(size_t n) {
    return (n + 63) / 64 * 64;
}

/* Appends a spec (its place in the weight allocation comes once the element type is known). */
static struct spec *add_spec(struct spec *specs, int32_t *n_specs, const char *name, int64_t d0,
                             int64_t d1, enum spec_kind kind) {
    struct spec *s = &specs[(*n_specs)++];
    memset(s, 0, sizeof(*s));
    snprintf(s->name, sizeof(s->name), "%s", name);
    s->n_dims = d1 > 0 ? 2 : 1;
    s->shape[0] = d0;
    s->shape[1] = d1;
    s->kind = kind;
    if (kind == SPEC_PACK_IN_OUT) {
        s->n_elements = kernel_packed_floats((int32_t)d0, (int32_t)d1);
    } else if (kind == SPEC_PACK_TRANSPOSE) {
        s->n_elements = kernel_packed_floats((int32_t)d1, (int32_t)d0);
    } else {
        s->n_elements = (size_t)d0 * (size_t)(d1 > 0 ? d1 : 1);
    }
    return s;
}

static const char *strip_prefix(const char *name) {
    const char *prefix = "transformer.";
    size_t n = strlen(prefix);
    return strncmp(name, prefix, n) == 0 ? name + n : name;
}

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s);
    size_t m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

static void shape_string(const int64_t *shape, int32_t n_dims, char *out, size_t out_size) {
    size_t used = (size_t)snprintf(out, out_size, "[");
    for (int32_t i = 0; i < n_dims && used < out_size; i++) {
        used += (size_t)snprintf(out + used, out_size - used, "%s%lld", i > 0 ? ", " : "",
                                 (long long)shape[i]);
    }
    if (used < out_size) {
        snprintf(out + used, out_size - used, "]");
    }
}

/* Binds every tensor of file to its spec, checking dtype and shape. */
static int bind_file(const struct st_file *file, struct spec *specs, int32_t n_specs, char *err,
                     size_t err_size) {
    for (int32_t i = 0; i < file->n_tensors; i++) {
        const struct st_tensor *t = &file->tensors[i];
        const char *name = strip_prefix(t->name);
        if (ends_with(name, ".attn.bias") || ends_with(name, ".attn.masked_bias")) {
            continue; /* causal-mask buffers of older files: not parameters */
        }
        struct spec *s = NULL;
        for (int32_t j = 0; j < n_specs; j++) {
            if (strcmp(specs[j].name, name) == 0) {
                s = &specs[j];
                break;
            }
        }
        if (s == NULL) {
            snprintf(err, err_size, "%s: tensor '%s' is not part of a GPT-2 model", file->path,
                     t->name);
            return -1;
        }
        if (s->tensor != NULL) {
            snprintf(err, err_size, "%s: tensor '%s' is given twice (also in %s)", file->path,
                     t->name, s->file);
            return -1;
        }
        if (t->dtype == ST_DTYPE_OTHER) {
            snprintf(err, err_size, "%s: tensor '%s' has dtype %s (F32, F16 or BF16 expected)",
                     file->path, t->name, t->dtype_name);
            return -1;
        }
        if (t->n_dims != s->n_dims || t->shape[0] != s->shape[0] ||
            (s->n_dims == 2 && t->shape[1] != s->shape[1])) {
            char got[64];
            char want[64];
            shape_string(t->shape, t->n_dims, got, sizeof(got));
            shape_string(s->shape, s->n_dims, want, sizeof(want));
            snprintf(err, err_size, "%s: tensor '%s' has shape %s, config.json implies %s",
                     file->path, t->name, got, want);
            return -1;
        }
        s->tensor = t;
        s->file = file->path;
    }
    return 0;
}

/* Element i of the tensor as a packed weight of type wt: a raw copy when the dtypes agree,
 * else converted (widening is exact; narrowing rounds to nearest even). */
static void put_packed(const struct st_tensor *t, size_t i, enum kernel_wtype wt, void *dst,
                       size_t j) {
    if (wt == KERNEL_W_F32) {
        ((float *)dst)[j] = st_tensor_get(t, i);
        return;
    }
    uint16_t h;
    if ((wt == KERNEL_W_F16 && t->dtype == ST_DTYPE_F16) ||
        (wt == KERNEL_W_BF16 && t->dtype == ST_DTYPE_BF16)) {
        memcpy(&h, t->data + i * 2, 2); /* the data area has no alignment guarantee */
    } else {
        float v = st_tensor_get(t, i);
        h = wt == KERNEL_W_F16 ? half_f32_to_f16(v) : half_f32_to_bf16(v);
    }
    ((uint16_t *)dst)[j] = h;
}

/* Copies (and packs) one tensor. Fails only when narrowing to F16 turns a finite weight into
 * an infinity (|w| > 65504), which would compute garbage. */
static int convert_spec(const struct spec *s, enum kernel_wtype wt, void *dst, char *err,
                        size_t err_size) {
    const struct st_tensor *t = s->tensor;
    if (s->kind == SPEC_PLAIN) {
        float *out = dst;
        if (t->dtype == ST_DTYPE_F32) {
            memcpy(out, t->data, t->n_elements * sizeof(float));
        } else {
            for (size_t i = 0; i < t->n_elements; i++) {
                out[i] = st_tensor_get(t, i);
            }
        }
        return 0;
    }
    memset(dst, 0, s->n_elements * kernel_wtype_size(wt)); /* zero padding past N */
    if (s->kind == SPEC_PACK_IN_OUT) {
        int32_t k_dim = (int32_t)s->shape[0];
        int32_t n_dim = (int32_t)s->shape[1];
        for (int32_t k = 0; k < k_dim; k++) {
            for (int32_t n = 0; n < n_dim; n++) {
                put_packed(t, (size_t)k * n_dim + n, wt, dst, kernel_packed_index(k_dim, k, n));
            }
        }
    } else {
        int32_t n_dim = (int32_t)s->shape[0];
        int32_t k_dim = (int32_t)s->shape[1];
        for (int32_t n = 0; n < n_dim; n++) {
            for (int32_t k = 0; k < k_dim; k++) {
                put_packed(t, (size_t)n * k_dim + k, wt, dst, kernel_packed_index(k_dim, k, n));
            }
        }
    }
    if (wt == KERNEL_W_F16 && t->dtype != ST_DTYPE_F16) {
        for (size_t i = 0; i < s->n_elements; i++) {
            if (isinf(kernel_packed_get(wt, dst, i))) {
                snprintf(err, err_size,
                         "%s: tensor '%s' has weights beyond float16's range (65504); "
                         "load it as f32 or bf16",
                         s->file, s->tensor->name);
                return -1;
            }
        }
    }
    return 0;
}

/* The packed element type: asked for, or (AUTO) the checkpoint's when every packed tensor is
 * F16, or every one BF16 (keeping them 16-bit is exact), else float32. */
static enum kernel_wtype choose_wtype(const struct spec *specs, int32_t n_specs,
                                      enum model_weights want) {
    switch (want) {
    case MODEL_WEIGHTS_F32:
        return KERNEL_W_F32;
    case MODEL_WEIGHTS_F16:
        return KERNEL_W_F16;
    case MODEL_WEIGHTS_BF16:
        return KERNEL_W_BF16;
    case MODEL_WEIGHTS_AUTO:
        break;
    }
    int n_f16 = 0, n_bf16 = 0, n_packed = 0;
    for (int32_t i = 0; i < n_specs; i++) {
        if (specs[i].kind == SPEC_PLAIN || specs[i].n_elements == 0) {
            continue;
        }
        n_packed++;
        n_f16 += specs[i].tensor->dtype == ST_DTYPE_F16;
        n_bf16 += specs[i].tensor->dtype == ST_DTYPE_BF16;
    }
    if (n_packed > 0 && n_f16 == n_packed) {
        return KERNEL_W_F16;
    }
    if (n_packed > 0 && n_bf16 == n_packed) {
        return KERNEL_W_BF16;
    }
    return KERNEL_W_F32;
}

/* Reads model.safetensors.index.json: the distinct shard file names, in first-seen order. Also
 * returns the parsed weight_map so that each tensor can be checked to be in its named file. */
static int read_index(const char *dir, const char *index_path, char (*files)[512], int32_t *n_files,
                      cJSON **weight_map_root, char *err, size_t err_size) {
    FILE *f = fopen(index_path, "rb");
    if (f == NULL) {
        snprintf(err, err_size, "%s: cannot open", index_path);
        return -1;
    }
    size_t cap = 16 * 1024 * 1024;
    char *buf = malloc(cap);
    size_t n = buf != NULL ? fread(buf, 1, cap, f) : 0;
    fclose(f);
    if (buf == NULL || n == cap) {
        snprintf(err, err_size, "%s: %s", index_path, buf == NULL ? "out of memory" : "too large");
        free(buf);
        return -1;
    }
    cJSON *root = cJSON_ParseWithLength(buf, n);
    free(buf);
    const cJSON *map = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    if (!cJSON_IsObject(map)) {
        snprintf(err, err_size, "%s: no \"weight_map\" object", index_path);
        cJSON_Delete(root);
        return -1;
    }
    *n_files = 0;
    const cJSON *entry;
    cJSON_ArrayForEach(entry, map) {
        const char *file = cJSON_IsString(entry) ? entry->valuestring : NULL;
        /* A shard name is a plain file name inside the model directory. */
        if (file == NULL || file[0] == '\0' || file[0] == '.' || strchr(file, '/') != NULL ||
            strlen(file) + strlen(dir) + 2 > 512) {
            snprintf(err, err_size, "%s: tensor '%s' maps to a bad file name", index_path,
                     entry->string);
            cJSON_Delete(root);
            return -1;
        }
        char path[512];
        if (snprintf(path, sizeof(path), "%s/%s", dir, file) >= (int)sizeof(path)) {
            snprintf(err, err_size, "%s: path too long", index_path);
            cJSON_Delete(root);
            return -1;
        }
        int32_t found = 0;
        for (int32_t i = 0; i < *n_files && !found; i++) {
            found = strcmp(files[i], path) == 0;
        }
        if (!found) {
            if (*n_files == MODEL_MAX_SHARDS) {
                snprintf(err, err_size, "%s: more than %d shards", index_path, MODEL_MAX_SHARDS);
                cJSON_Delete(root);
                return -1;
            }
            snprintf(files[(*n_files)++], 512, "%s", path);
        }
    }
    *weight_map_root = root;
    return 0;
}

static int file_has_tensor(const struct st_file *file, const char *name) {
    for (int32_t i = 0; i < file->n_tensors; i++) {
        if (strcmp(file->tensors[i].name, name) == 0) {
            return 1;
        }
    }
    return 0;
}

const char *model_weights_name(enum model_weights weights) {
    switch (weights) {
    case MODEL_WEIGHTS_F32:
        return "f32";
    case MODEL_WEIGHTS_F16:
        return "f16";
    case MODEL_WEIGHTS_BF16:
        return "bf16";
    case MODEL_WEIGHTS_AUTO:
        break;
    }
    return "auto";
}

int model_weights_parse(const char *text, enum model_weights *out) {
    static const enum model_weights all[] = {MODEL_WEIGHTS_AUTO, MODEL_WEIGHTS_F32,
                                             MODEL_WEIGHTS_F16, MODEL_WEIGHTS_BF16};
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) {
        if (strcmp(text, model_weights_name(all[i])) == 0) {
            *out = all[i];
            return 0;
        }
    }
    return -1;
}

struct model *model_load(const char *dir, char *err, size_t err_size) {
    return model_load_with(dir, MODEL_WEIGHTS_AUTO, err, err_size);
}

struct model *model_load_with(const char *dir, enum model_weights weights, char *err,
                              size_t err_size) {
    struct model *model = NULL;
    struct st_file *files[MODEL_MAX_SHARDS] = {0};
    int32_t n_files = 0;
    char(*paths)[512] = calloc(MODEL_MAX_SHARDS, 512);
    struct spec *specs = NULL;
    cJSON *index_root = NULL;
    char path[1024];
    struct model_config_ext ext;

    if (paths == NULL) {
        snprintf(err, err_size, "out of memory");
        goto fail;
    }
    snprintf(path, sizeof(path), "%s/config.json", dir);
    if (config_load(path, &ext, err, err_size) != 0) {
        goto fail;
    }
    const struct model_config *cfg = &ext.config;
    int64_t C = cfg->n_embd;
    int64_t F = cfg->n_inner;
    int64_t V = cfg->n_vocab;
    int32_t L = cfg->n_layer;

    /* The specs: every tensor a GPT-2 has, in the order of the weight allocation. */
    specs = calloc((size_t)L * 12 + 8, sizeof(*specs));
    model = calloc(1, sizeof(*model));
    if (specs == NULL || model == NULL) {
        snprintf(err, err_size, "out of memory");
        goto fail;
    }
    model->layers = calloc((size_t)L, sizeof(*model->layers));
    if (model->layers == NULL) {
        snprintf(err, err_size, "out of memory");
        goto fail;
    }
    int32_t n_specs = 0;
    struct spec *s_wte = add_spec(specs, &n_specs, "wte.weight", V, C,
                                  ext.is_tied ? SPEC_PACK_TRANSPOSE : SPEC_PLAIN);
    add_spec(specs, &n_specs, "wpe.weight", cfg->n_ctx, C, SPEC_PLAIN);
    for (int32_t l = 0; l < L; l++) {
        char name[64];
        const struct {
            const char *suffix;
            int64_t d0, d1;
            enum spec_kind kind;
        } per_layer[] = {
            {"ln_1.weight", C, 0, SPEC_PLAIN},
            {"ln_1.bias", C, 0, SPEC_PLAIN},
            {"attn.c_attn.weight", C, 3 * C, SPEC_PACK_IN_OUT},
            {"attn.c_attn.bias", 3 * C, 0, SPEC_PLAIN},
            {"attn.c_proj.weight", C, C, SPEC_PACK_IN_OUT},
            {"attn.c_proj.bias", C, 0, SPEC_PLAIN},
            {"ln_2.weight", C, 0, SPEC_PLAIN},
            {"ln_2.bias", C, 0, SPEC_PLAIN},
            {"mlp.c_fc.weight", C, F, SPEC_PACK_IN_OUT},
            {"mlp.c_fc.bias", F, 0, SPEC_PLAIN},
            {"mlp.c_proj.weight", F, C, SPEC_PACK_IN_OUT},
            {"mlp.c_proj.bias", C, 0, SPEC_PLAIN},
        };
        for (size_t i = 0; i < sizeof(per_layer) / sizeof(per_layer[0]); i++) {
            snprintf(name, sizeof(name), "h.%d.%s", l, per_layer[i].suffix);
            add_spec(specs, &n_specs, name, per_layer[i].d0, per_layer[i].d1, per_layer[i].kind);
        }
    }
    add_spec(specs, &n_specs, "ln_f.weight", C, 0, SPEC_PLAIN);
    add_spec(specs, &n_specs, "ln_f.bias", C, 0, SPEC_PLAIN);
    struct spec *s_lm = NULL;
    if (!ext.is_tied) {
        s_lm = add_spec(specs, &n_specs, "lm_head.weight", V, C, SPEC_PACK_TRANSPOSE);
    } else {
        /* Tied: a file may still carry lm_head.weight (a copy of wte); accept and ignore it. */
        struct spec *s = add_spec(specs, &n_specs, "lm_head.weight", V, C, SPEC_PLAIN);
        s->n_elements = 0;
        s->is_optional = 1;
    }

    /* Open and validate every file before binding any tensor. */
    snprintf(path, sizeof(path), "%s/model.safetensors.index.json", dir);
    if (access(path, F_OK) == 0) {
        if (read_index(dir, path, paths, &n_files, &index_root, err, err_size) != 0) {
            n_files = 0;
            goto fail;
        }
    } else {
        if (snprintf(paths[0], 512, "%s/model.safetensors", dir) >= 512) {
            snprintf(err, err_size, "%s: path too long", dir);
            goto fail;
        }
        n_files = 1;
    }
    for (int32_t i = 0; i < n_files; i++) {
        files[i] = st_file_open(paths[i], err, err_size);
        if (files[i] == NULL) {
            goto fail;
        }
        if (bind_file(files[i], specs, n_specs, err, err_size) != 0) {
            goto fail;
        }
    }
    if (index_root != NULL) {
        const cJSON *entry;
        cJSON_ArrayForEach(entry, cJSON_GetObjectItemCaseSensitive(index_root, "weight_map")) {
            if (snprintf(path, sizeof(path), "%s/%s", dir, entry->valuestring) >=
                (int)sizeof(path)) {
                continue; /* cannot match a shard path: those were length-checked */
            }
            for (int32_t i = 0; i < n_files; i++) {
                if (strcmp(paths[i], path) == 0 && !file_has_tensor(files[i], entry->string)) {
                    snprintf(err, err_size, "%s: tensor '%s' listed in the index is missing", path,
                             entry->string);
                    goto fail;
                }
            }
        }
    }
    for (int32_t i = 0; i < n_specs; i++) {
        if (specs[i].tensor == NULL && !specs[i].is_optional) {
            snprintf(err, err_size, "%s: tensor '%s' is missing%s", dir, specs[i].name,
                     strcmp(specs[i].name, "lm_head.weight") == 0
                         ? " (config.json says tie_word_embeddings: false)"
                         : "");
            goto fail;
        }
    }

    model->config = *cfg;
    model->wtype = choose_wtype(specs, n_specs, weights);
    size_t total = 0;
    for (int32_t i = 0; i < n_specs; i++) {
        size_t size = specs[i].kind == SPEC_PLAIN ? sizeof(float) : kernel_wtype_size(model->wtype);
        specs[i].offset = total;
        total += round_up64(specs[i].n_elements * size);
    }
    model->weight_bytes = total;
    model->weights = aligned_alloc(64, model->weight_bytes);
    if (model->weights == NULL) {
        snprintf(err, err_size, "out of memory for %zu bytes of weights", model->weight_bytes);
        goto fail;
    }
    unsigned char *w = model->weights;
    for (int32_t i = 0; i < n_specs; i++) {
        if (specs[i].n_elements > 0) {
            if (convert_spec(&specs[i], model->wtype, w + specs[i].offset, err, err_size) != 0) {
                goto fail;
            }
            model->n_params += specs[i].tensor->n_elements;
        }
    }
#define WEIGHT_AT(spec) ((const void *)(w + (spec).offset))
    model->wte = ext.is_tied ? NULL : WEIGHT_AT(*s_wte);
    model->lm_head = WEIGHT_AT(ext.is_tied ? *s_wte : *s_lm);
    model->wpe = WEIGHT_AT(specs[1]);
    for (int32_t l = 0; l < L; l++) {
        const struct spec *s = &specs[2 + 12 * l];
        struct layer_weights *lw = &model->layers[l];
        lw->ln1_w = WEIGHT_AT(s[0]);
        lw->ln1_b = WEIGHT_AT(s[1]);
        lw->w_qkv = WEIGHT_AT(s[2]);
        lw->b_qkv = WEIGHT_AT(s[3]);
        lw->w_attn_out = WEIGHT_AT(s[4]);
        lw->b_attn_out = WEIGHT_AT(s[5]);
        lw->ln2_w = WEIGHT_AT(s[6]);
        lw->ln2_b = WEIGHT_AT(s[7]);
        lw->w_fc = WEIGHT_AT(s[8]);
        lw->b_fc = WEIGHT_AT(s[9]);
        lw->w_mlp_out = WEIGHT_AT(s[10]);
        lw->b_mlp_out = WEIGHT_AT(s[11]);
    }
    model->lnf_w = WEIGHT_AT(specs[2 + 12 * L]);
    model->lnf_b = WEIGHT_AT(specs[3 + 12 * L]);
#undef WEIGHT_AT
    model->isa = kernel_isa_best();
    model->holds_pool = pool_acquire();
    if (!model->holds_pool) {
        snprintf(err, err_size, "cannot start the compute threads");
        goto fail;
    }
    log_info("model %s: %d layers, %d heads, n_embd %d, n_inner %d, context %d, vocab %d, "
             "%s; %.2fM parameters (%s, %d file%s), %.1f MiB of weights (matmuls in %s); %s "
             "kernels, %d threads",
             dir, cfg->n_layer, cfg->n_head, cfg->n_embd, cfg->n_inner, cfg->n_ctx, cfg->n_vocab,
             cfg->activation == MODEL_ACT_GELU_TANH ? "gelu_new" : "gelu",
             (double)model->n_params / 1e6, s_wte->tensor->dtype_name, n_files,
             n_files == 1 ? "" : "s", (double)model->weight_bytes / (1024.0 * 1024.0),
             model_weights_name(model_get_weights(model)), kernel_isa_name(model->isa),
             pool_n_threads(cur_pool()));
    for (int32_t i = 0; i < n_files; i++) {
        st_file_close(files[i]);
    }
    cJSON_Delete(index_root);
    free(specs);
    free(paths);
    return model;

fail:
    for (int32_t i = 0; i < n_files; i++) {
        st_file_close(files[i]);
    }
    cJSON_Delete(index_root);
    free(specs);
    free(paths);
    model_destroy(model);
    return NULL;
}

void model_destroy(struct model *model) {
    if (model == NULL) {
        return;
    }
    if (model->holds_pool) {
        pool_release();
    }
    free(model->weights);
    free(model->layers);
    free(model);
}

const struct model_config *model_get_config(const struct model *model) {
    return &model->config;
}

size_t model_n_params(const struct model *model) {
    return model->n_params;
}

size_t model_weight_bytes(const struct model *model) {
    return model->weight_bytes;
}

enum model_weights model_get_weights(const struct model *model) {
    switch (model->wtype) {
    case KERNEL_W_F16:
        return MODEL_WEIGHTS_F16;
    case KERNEL_W_BF16:
        return MODEL_WEIGHTS_BF16;
    case KERNEL_W_F32:
        break;
    }
    return MODEL_WEIGHTS_F32;
}

/* ---- scratch ---- */

struct model_scratch {
    int32_t max_tokens;
    int32_t max_logits;
    int32_t n_ctx;
    float *x;      /* (N, C) residual stream */
    float *h;      /* (N, C) LayerNorm output */
    float *qkv;    /* (N, 3C) */
    float *att;    /* (N, C) attention output, heads side by side */
    float *fc;     /* (N, F) MLP hidden */
    float *lnf;    /* (R, C) final LayerNorm of the logit rows */
    float *scores; /* (POOL_MAX_THREADS, n_ctx) attention weights, one row per thread */
    int32_t *row0; /* (N,) first row of each sequence in the batch */
    void *block;   /* the one allocation */
};

struct model_scratch *model_scratch_create(const struct model *model, int32_t max_tokens,
                                           int32_t max_logits) {
    if (max_tokens < 1 || max_logits < 0 || max_logits > max_tokens) {
        return NULL;
    }
    const struct model_config *c = &model->config;
    size_t n = (size_t)max_tokens;
    size_t sizes[] = {
        n * (size_t)c->n_embd,
        n * (size_t)c->n_embd,
        n * 3 * (size_t)c->n_embd,
        n * (size_t)c->n_embd,
        n * (size_t)c->n_inner,
        (size_t)(max_logits > 0 ? max_logits : 1) * c->n_embd,
        (size_t)POOL_MAX_THREADS * (size_t)c->n_ctx,
        n,
    };
    size_t total = 0;
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        total += round_up16(sizes[i]);
    }
    struct model_scratch *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        return NULL;
    }
    s->block = aligned_alloc(64, total * sizeof(float));
    if (s->block == NULL) {
        free(s);
        return NULL;
    }
    memset(s->block, 0, total * sizeof(float));
    float *p = s->block;
    float **dst[] = {&s->x, &s->h, &s->qkv, &s->att, &s->fc, &s->lnf, &s->scores};
    for (size_t i = 0; i < sizeof(dst) / sizeof(dst[0]); i++) {
        *dst[i] = p;
        p += round_up16(sizes[i]);
    }
    s->row0 = (int32_t *)p;
    s->max_tokens = max_tokens;
    s->max_logits = max_logits;
    s->n_ctx = c->n_ctx;
    return s;
}

void model_scratch_destroy(struct model_scratch *scratch) {
    if (scratch == NULL) {
        return;
    }
    free(scratch->block);
    free(scratch);
}

/* ---- forward ---- */

struct fwd {
    const struct model *model;
    struct kv_cache *kv;
    struct model_scratch *s;
    const struct model_batch_seq *seqs;
    int32_t n_seqs;
    int32_t n_rows;
    int32_t layer;
    /* the matmul being split across the pool */
    const float *mm_x;
    const void *mm_w;
    const float *mm_b;
    float *mm_out;
    size_t mm_ldo;
    int32_t mm_m, mm_k, mm_n, mm_n_tasks;
    enum kernel_epilogue mm_epilogue;
    /* the LayerNorm being split across the pool */
    const float *ln_in;
    float *ln_out;
    const float *ln_w;
    const float *ln_b;
    int32_t ln_rows, ln_n_tasks;
};

static void matmul_task(void *ctx, int32_t i_task, int32_t i_thread) {
    (void)i_thread;
    struct fwd *f = ctx;
    int32_t n_panels = kernel_n_panels(f->mm_n);
    int32_t p0 = (int32_t)((int64_t)n_panels * i_task / f->mm_n_tasks);
    int32_t p1 = (int32_t)((int64_t)n_panels * (i_task + 1) / f->mm_n_tasks);
    kernel_matmul(f->model->isa, f->mm_x, (size_t)f->mm_k, f->mm_w, f->model->wtype, f->mm_b,
                  f->mm_out, f->mm_ldo, f->mm_m, f->mm_k, f->mm_n, p0, p1, f->mm_epilogue);
}

/* out (m, n) [epilogue] x (m, k) @ W + b over the pool, split by column panels. */
static void matmul(struct fwd *f, const float *x, const void *w, const float *b, float *out,
                   size_t ldo, int32_t m, int32_t k, int32_t n, enum kernel_epilogue epilogue) {
    f->mm_x = x;
    f->mm_w = w;
    f->mm_b = b;
    f->mm_out = out;
    f->mm_ldo = ldo;
    f->mm_m = m;
    f->mm_k = k;
    f->mm_n = n;
    f->mm_epilogue = epilogue;
    int32_t n_panels = kernel_n_panels(n);
    int32_t n_threads = pool_n_threads(cur_pool());
    /* Small matmuls are not worth waking a thread; big ones get a few tasks per thread so a
     * core slowed by a neighbour does not hold the other back. */
    double flops = 2.0 * m * (double)k * n;
    int32_t n_tasks = flops < 2e5 ? 1 : n_threads * 4;
    if (n_tasks > n_panels) {
        n_tasks = n_panels;
    }
    f->mm_n_tasks = n_tasks;
    pool_run(cur_pool(), matmul_task, f, n_tasks);
}

static void layernorm_rows(const float *in, float *out, const float *w, const float *b, int32_t r0,
                           int32_t r1, int32_t c, float eps) {
    for (int32_t r = r0; r < r1; r++) {
        const float *x = in + (size_t)r * c;
        float *y = out + (size_t)r * c;
        float sum = 0.0f;
        for (int32_t i = 0; i < c; i++) {
            sum += x[i];
        }
        float mean = sum / (float)c;
        float var = 0.0f;
        for (int32_t i = 0; i < c; i++) {
            float d = x[i] - mean;
            var += d * d;
        }
        float rstd = 1.0f / sqrtf(var / (float)c + eps);
        for (int32_t i = 0; i < c; i++) {
            y[i] = (x[i] - mean) * rstd * w[i] + b[i];
        }
    }
}

static void layernorm_task(void *ctx, int32_t i_task, int32_t i_thread) {
    (void)i_thread;
    struct fwd *f = ctx;
    int32_t r0 = (int32_t)((int64_t)f->ln_rows * i_task / f->ln_n_tasks);
    int32_t r1 = (int32_t)((int64_t)f->ln_rows * (i_task + 1) / f->ln_n_tasks);
    layernorm_rows(f->ln_in, f->ln_out, f->ln_w, f->ln_b, r0, r1, f->model->config.n_embd,
                   f->model->config.layer_norm_eps);
}

static void layernorm(struct fwd *f, const float *in, float *out, const float *w, const float *b,
                      int32_t rows) {
    f->ln_in = in;
    f->ln_out = out;
    f->ln_w = w;
    f->ln_b = b;
    f->ln_rows = rows;
    int32_t n_tasks =
        (size_t)rows * (size_t)f->model->config.n_embd < 32768 ? 1 : pool_n_threads(cur_pool());
    f->ln_n_tasks = n_tasks > rows ? rows : n_tasks;
    pool_run(cur_pool(), layernorm_task, f, f->ln_n_tasks);
}

/* Attention of one (sequence, head): each new row attends causally to positions 0..its own. */
static void attention_task(void *ctx, int32_t i_task, int32_t i_thread) {
    struct fwd *f = ctx;
    const struct model_config *c = &f->model->config;
    int32_t i_seq = i_task / c->n_head;
    int32_t h = i_task % c->n_head;
    const struct model_batch_seq *bs = &f->seqs[i_seq];
    int32_t hs = c->n_embd / c->n_head;
    int32_t c3 = 3 * c->n_embd;
    float scale = c->is_scale_attn_weights ? 1.0f / sqrtf((float)hs) : 1.0f;
    float *scores = f->s->scores + (size_t)i_thread * (size_t)f->s->n_ctx;
    enum kernel_isa isa = f->model->isa;
    /* The head's K and V of position 0 of block 0; kernel_attention walks the block table. */
    size_t esize = kernel_wtype_size(f->kv->etype);
    size_t layer_off = (size_t)f->layer * 2 * KV_BLOCK_SIZE * (size_t)c->n_embd + (size_t)h * hs;
    const char *k_base = (const char *)f->kv->data + layer_off * esize;
    const char *v_base = k_base + (size_t)KV_BLOCK_SIZE * (size_t)c->n_embd * esize;
    for (int32_t i = 0; i < bs->n_tokens; i++) {
        int32_t row = f->s->row0[i_seq] + i;
        int32_t pos = bs->kv->n_pos + i;
        const float *q = f->s->qkv + (size_t)row * c3 + (size_t)h * hs;
        float *out = f->s->att + (size_t)row * c->n_embd + (size_t)h * hs;
        kernel_attention(isa, q, k_base, v_base, f->kv->etype, bs->kv->blocks, f->kv->block_elems,
                         (size_t)c->n_embd, pos + 1, hs, scale, scores, out);
    }
}

static void gelu_exact(float *x, size_t n) {
    for (size_t i = 0; i < n; i++) {
        x[i] = 0.5f * x[i] * (1.0f + erff(x[i] * 0.70710678118654752f));
    }
}

/* Checks the batch against the scratch, the context and the reserved blocks. */
static int batch_is_valid(const struct model *model, const struct kv_cache *kv,
                          const struct model_scratch *s, const struct model_batch_seq *seqs,
                          int32_t n_seqs, int32_t *n_rows, int32_t *n_logits) {
    const struct model_config *c = &model->config;
    int64_t rows = 0;
    int64_t logits = 0;
    if (n_seqs < 0 || n_seqs > s->max_tokens) {
        return 0;
    }
    for (int32_t i = 0; i < n_seqs; i++) {
        const struct model_batch_seq *b = &seqs[i];
        if (b->kv == NULL || b->n_tokens < 0 || b->n_logits < 0 || b->n_logits > b->n_tokens ||
            (b->n_tokens > 0 && b->tokens == NULL)) {
            return 0;
        }
        if ((int64_t)b->kv->n_pos + b->n_tokens > c->n_ctx) {
            return 0;
        }
        if (b->n_tokens > 0) {
            int32_t first = b->kv->n_pos / KV_BLOCK_SIZE;
            int32_t last = (b->kv->n_pos + b->n_tokens - 1) / KV_BLOCK_SIZE;
            if (last >= b->kv->n_blocks) {
                return 0; /* not reserved */
            }
            for (int32_t j = first; j <= last; j++) {
                if (kv->refcount[b->kv->blocks[j]] != 1) {
                    return 0; /* shared: kv_seq_reserve would have copied it */
                }
            }
        }
        for (int32_t j = 0; j < b->n_tokens; j++) {
            if (b->tokens[j] < 0 || b->tokens[j] >= c->n_vocab) {
                return 0;
            }
        }
        /* A sequence twice in one batch would write the same positions twice. */
        for (int32_t j = 0; j < i; j++) {
            if (seqs[j].kv == b->kv) {
                return 0;
            }
        }
        rows += b->n_tokens;
        logits += b->n_logits;
    }
    if (rows > s->max_tokens || logits > s->max_logits) {
        return 0;
    }
    *n_rows = (int32_t)rows;
    *n_logits = (int32_t)logits;
    return 1;
}

int model_forward(struct model *model, struct kv_cache *kv, struct model_scratch *scratch,
                  const struct model_batch_seq *seqs, int32_t n_seqs, float *logits) {
    const struct model_config *c = &model->config;
    int32_t n_rows = 0;
    int32_t n_logits = 0;
    if (!batch_is_valid(model, kv, scratch, seqs, n_seqs, &n_rows, &n_logits)) {
        return -1;
    }
    if (n_rows == 0) {
        return 0;
    }
    struct fwd f = {
        .model = model, .kv = kv, .s = scratch, .seqs = seqs, .n_seqs = n_seqs, .n_rows = n_rows};
    int32_t C = c->n_embd;
    int32_t F = c->n_inner;

    /* Embeddings: x[row] = wte[token] + wpe[pos]. */
    int32_t row = 0;
    for (int32_t i = 0; i < n_seqs; i++) {
        scratch->row0[i] = row;
        for (int32_t j = 0; j < seqs[i].n_tokens; j++, row++) {
            int32_t tok = seqs[i].tokens[j];
            const float *pe = model->wpe + (size_t)(seqs[i].kv->n_pos + j) * C;
            float *x = scratch->x + (size_t)row * C;
            for (int32_t e = 0; e < C; e++) {
                float te = model->wte != NULL ? model->wte[(size_t)tok * C + e]
                                              : kernel_packed_get(model->wtype, model->lm_head,
                                                                  kernel_packed_index(C, e, tok));
                x[e] = te + pe[e];
            }
        }
    }

    for (int32_t l = 0; l < c->n_layer; l++) {
        const struct layer_weights *w = &model->layers[l];
        f.layer = l;
        layernorm(&f, scratch->x, scratch->h, w->ln1_w, w->ln1_b, n_rows);
        matmul(&f, scratch->h, w->w_qkv, w->b_qkv, scratch->qkv, (size_t)3 * C, n_rows, C, 3 * C,
               KERNEL_EPILOGUE_STORE);
        /* Append this layer's K and V of every new row to its sequence's blocks. */
        row = 0;
        for (int32_t i = 0; i < n_seqs; i++) {
            for (int32_t j = 0; j < seqs[i].n_tokens; j++, row++) {
                int32_t pos = seqs[i].kv->n_pos + j;
                const float *src = scratch->qkv + (size_t)row * 3 * C;
                for (int is_v = 0; is_v < 2; is_v++) {
                    size_t at = kv_cache_row_index(kv, seqs[i].kv, l, is_v, pos);
                    const float *from = src + (size_t)(1 + is_v) * C;
                    if (kv->etype == KERNEL_W_F16) {
                        kernel_f32_to_f16(model->isa, from, (uint16_t *)kv->data + at, (size_t)C);
                    } else {
                        memcpy((float *)kv->data + at, from, (size_t)C * sizeof(float));
                    }
                }
            }
        }
        pool_run(cur_pool(), attention_task, &f, n_seqs * c->n_head);
        matmul(&f, scratch->att, w->w_attn_out, w->b_attn_out, scratch->x, (size_t)C, n_rows, C, C,
               KERNEL_EPILOGUE_ADD);
        layernorm(&f, scratch->x, scratch->h, w->ln2_w, w->ln2_b, n_rows);
        if (c->activation == MODEL_ACT_GELU_TANH) {
            matmul(&f, scratch->h, w->w_fc, w->b_fc, scratch->fc, (size_t)F, n_rows, C, F,
                   KERNEL_EPILOGUE_GELU_TANH);
        } else {
            matmul(&f, scratch->h, w->w_fc, w->b_fc, scratch->fc, (size_t)F, n_rows, C, F,
                   KERNEL_EPILOGUE_STORE);
            gelu_exact(scratch->fc, (size_t)n_rows * F);
        }
        matmul(&f, scratch->fc, w->w_mlp_out, w->b_mlp_out, scratch->x, (size_t)C, n_rows, F, C,
               KERNEL_EPILOGUE_ADD);
    }

    /* Final LayerNorm and lm_head only for the last n_logits rows of each sequence. */
    int32_t r = 0;
    for (int32_t i = 0; i < n_seqs; i++) {
        int32_t first = scratch->row0[i] + seqs[i].n_tokens - seqs[i].n_logits;
        for (int32_t j = 0; j < seqs[i].n_logits; j++, r++) {
            layernorm_rows(scratch->x + (size_t)(first + j) * C, scratch->lnf + (size_t)r * C,
                           model->lnf_w, model->lnf_b, 0, 1, C, c->layer_norm_eps);
        }
    }
    if (n_logits > 0) {
        matmul(&f, scratch->lnf, model->lm_head, NULL, logits, (size_t)c->n_vocab, n_logits, C,
               c->n_vocab, KERNEL_EPILOGUE_STORE);
    }
    for (int32_t i = 0; i < n_seqs; i++) {
        seqs[i].kv->n_pos += seqs[i].n_tokens;
    }
    return 0;
}
