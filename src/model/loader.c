/*
 * loader.c: the generic model loader. Reads config.json (and generation_config.json's end
 * tokens), picks the architecture, opens and validates every safetensors file (one, or the
 * shards an index names), binds each tensor BY NAME to the architecture's weight specs
 * (checking dtype and shape), and copies the weights into one 64-byte-aligned allocation:
 * matrices packed into the kernels' column panels, vectors as float32 (model.h has the
 * contract; model_internal.h the spec layouts).
 *
 * Matrices are packed in one element type for the whole model: by default the checkpoint's own
 * when every packed tensor is F16 (or every one BF16) -- the kernels widen them in registers,
 * exactly, at half the memory traffic of float32 -- else float32; model_load_with can force
 * float32 or narrow to F16/BF16. The mappings are closed once packing is done.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include <gptd/model.h>
#include <gptd/util.h>

#include "half.h"
#include "model_internal.h"

#define MODEL_MAX_SHARDS 256

/* ---- specs ---------------------------------------------------------------------------- */

struct spec *spec_add(struct spec_list *list, enum spec_layout layout, const char *name, int64_t d0,
                      int64_t d1) {
    if (list->n == list->cap) {
        int32_t cap = list->cap > 0 ? list->cap * 2 : 64;
        struct spec *specs = realloc(list->specs, (size_t)cap * sizeof(*specs));
        if (specs == NULL) {
            return NULL;
        }
        list->specs = specs;
        list->cap = cap;
    }
    struct spec *s = &list->specs[list->n++];
    memset(s, 0, sizeof(*s));
    s->layout = layout;
    spec_add_part(s, name, d0, d1);
    return s;
}

void spec_add_part(struct spec *s, const char *name, int64_t d0, int64_t d1) {
    struct spec_part *p = &s->part[s->n_parts++];
    snprintf(p->name, sizeof(p->name), "%s", name);
    p->n_dims = d1 > 0 ? 2 : 1;
    p->shape[0] = d0;
    p->shape[1] = d1;
}

/* Sizes a spec once its parts are known: K, N and the elements it takes in the allocation. */
static void spec_size(struct spec *s) {
    const struct spec_part *p0 = &s->part[0];
    int64_t sum0 = 0;
    for (int32_t i = 0; i < s->n_parts; i++) {
        sum0 += s->part[i].shape[0] * (s->part[i].n_dims == 2 ? s->part[i].shape[1] : 1);
    }
    switch (s->layout) {
    case SPEC_PLAIN:
        s->n_elements = (size_t)sum0;
        break;
    case SPEC_PACK_IN_OUT:
        s->k = (int32_t)p0->shape[0];
        s->n = (int32_t)p0->shape[1];
        s->n_elements = kernel_packed_floats(s->k, s->n);
        break;
    case SPEC_PACK_OUT_IN:
        s->k = (int32_t)p0->shape[1];
        s->n = 0;
        for (int32_t i = 0; i < s->n_parts; i++) {
            s->n += (int32_t)s->part[i].shape[0];
        }
        s->n_elements = kernel_packed_floats(s->k, s->n);
        break;
    case SPEC_PACK_SWIGLU:
        s->k = (int32_t)p0->shape[1];
        s->n = (int32_t)p0->shape[0];
        s->n_elements = kernel_packed_floats(s->k, kernel_swiglu_packed_n(s->n));
        break;
    case SPEC_PLAIN_SWIGLU:
        s->n = (int32_t)p0->shape[0];
        s->n_elements = (size_t)kernel_swiglu_packed_n(s->n);
        break;
    case SPEC_IGNORED:
        s->n_elements = 0;
        break;
    }
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

static struct spec_part *find_part(struct spec_list *list, const char *name) {
    for (int32_t j = 0; j < list->n; j++) {
        struct spec *s = &list->specs[j];
        for (int32_t i = 0; i < s->n_parts; i++) {
            if (strcmp(s->part[i].name, name) == 0) {
                return &s->part[i];
            }
        }
    }
    return NULL;
}

/* Binds every tensor of file to its spec part, checking dtype and shape. */
static int bind_file(const struct arch_ops *arch, const struct st_file *file,
                     struct spec_list *list, char *err, size_t err_size) {
    for (int32_t i = 0; i < file->n_tensors; i++) {
        const struct st_tensor *t = &file->tensors[i];
        const char *name = arch->binding_name(t->name);
        if (name == NULL) {
            continue; /* a buffer, not a parameter */
        }
        struct spec_part *p = find_part(list, name);
        if (p == NULL) {
            snprintf(err, err_size, "%s: tensor '%s' is not part of a %s model", file->path,
                     t->name, arch->name);
            return -1;
        }
        if (p->tensor != NULL) {
            snprintf(err, err_size, "%s: tensor '%s' is given twice (also in %s)", file->path,
                     t->name, p->file);
            return -1;
        }
        if (t->dtype == ST_DTYPE_OTHER) {
            snprintf(err, err_size, "%s: tensor '%s' has dtype %s (F32, F16 or BF16 expected)",
                     file->path, t->name, t->dtype_name);
            return -1;
        }
        if (t->n_dims != p->n_dims || t->shape[0] != p->shape[0] ||
            (p->n_dims == 2 && t->shape[1] != p->shape[1])) {
            char got[64];
            char want[64];
            shape_string(t->shape, t->n_dims, got, sizeof(got));
            shape_string(p->shape, p->n_dims, want, sizeof(want));
            snprintf(err, err_size, "%s: tensor '%s' has shape %s, config.json implies %s",
                     file->path, t->name, got, want);
            return -1;
        }
        p->tensor = t;
        p->file = file->path;
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

static bool is_packed(enum spec_layout layout);

/* Bytes of a spec in memory: packed ones in wt's panels, the others float32. */
static size_t spec_bytes(const struct spec *s, enum kernel_wtype wt) {
    if (!is_packed(s->layout)) {
        return s->n_elements * sizeof(float);
    }
    if (wt == KERNEL_W_Q8) {
        return s->n_elements / ((size_t)s->k * KERNEL_NR) * kernel_panel_bytes(wt, s->k);
    }
    return s->n_elements * kernel_wtype_size(wt);
}

static int convert_spec(const struct spec *s, enum kernel_wtype wt, void *dst, char *err,
                        size_t err_size);

/* Packs one spec as float32 into a temporary, then quantizes it panel by panel. A NaN or an
 * infinity has no scale: refused, naming the tensor. */
static int convert_spec_q8(const struct spec *s, void *dst, char *err, size_t err_size) {
    for (int32_t i = 0; i < s->n_parts; i++) {
        const struct st_tensor *t = s->part[i].tensor;
        for (size_t e = 0; e < t->n_elements; e++) {
            if (!isfinite(st_tensor_get(t, e))) {
                snprintf(err, err_size,
                         "%s: tensor '%s' has a NaN or infinite weight; it cannot be quantized",
                         s->part[i].file, t->name);
                return -1;
            }
        }
    }
    float *tmp = malloc(s->n_elements * sizeof(float));
    if (tmp == NULL) {
        snprintf(err, err_size, "out of memory quantizing %s", s->part[0].tensor->name);
        return -1;
    }
    int rc = convert_spec(s, KERNEL_W_F32, tmp, err, err_size);
    if (rc == 0 && kernel_pack_q8(tmp, s->k, (int32_t)(s->n_elements / ((size_t)s->k * KERNEL_NR)),
                                  dst) != 0) {
        snprintf(err, err_size, "%s: a weight is not finite", s->part[0].tensor->name);
        rc = -1;
    }
    free(tmp);
    return rc;
}

/* Copies (and packs) one spec. Fails only when narrowing to F16 would turn a weight into an
 * infinity, or a weight to quantize is not finite, naming the tensor. */
static int convert_spec(const struct spec *s, enum kernel_wtype wt, void *dst, char *err,
                        size_t err_size) {
    if (wt == KERNEL_W_Q8 && is_packed(s->layout)) {
        return convert_spec_q8(s, dst, err, err_size);
    }
    if (s->layout == SPEC_PLAIN || s->layout == SPEC_PLAIN_SWIGLU) {
        float *out = dst;
        memset(out, 0, s->n_elements * sizeof(float));
        size_t at = 0;
        for (int32_t i = 0; i < s->n_parts; i++) {
            const struct st_tensor *t = s->part[i].tensor;
            for (size_t e = 0; e < t->n_elements; e++) {
                size_t j = s->layout == SPEC_PLAIN
                               ? at + e
                               : (size_t)kernel_swiglu_column((int32_t)e, i == 1);
                out[j] = st_tensor_get(t, e);
            }
            at += t->n_elements;
        }
        return 0;
    }
    /* Narrowing to F16 must not turn a weight into an infinity (|w| > 65504): it would compute
     * garbage. A checkpoint's own F16 weights are kept as they are. */
    for (int32_t i = 0; i < s->n_parts && wt == KERNEL_W_F16; i++) {
        const struct st_tensor *t = s->part[i].tensor;
        for (size_t e = 0; e < t->n_elements && t->dtype != ST_DTYPE_F16; e++) {
            if (isinf(half_f16_to_f32(half_f32_to_f16(st_tensor_get(t, e))))) {
                snprintf(err, err_size,
                         "%s: tensor '%s' has weights beyond float16's range (65504); "
                         "load it as f32 or bf16",
                         s->part[i].file, t->name);
                return -1;
            }
        }
    }
    memset(dst, 0, s->n_elements * kernel_wtype_size(wt)); /* zero padding */
    int32_t k_dim = s->k;
    int32_t col0 = 0;
    for (int32_t i = 0; i < s->n_parts; i++) {
        const struct st_tensor *t = s->part[i].tensor;
        if (s->layout == SPEC_PACK_IN_OUT) {
            int32_t n_dim = (int32_t)t->shape[1];
            for (int32_t k = 0; k < k_dim; k++) {
                for (int32_t n = 0; n < n_dim; n++) {
                    put_packed(t, (size_t)k * n_dim + n, wt, dst, kernel_packed_index(k_dim, k, n));
                }
            }
            continue;
        }
        int32_t n_dim = (int32_t)t->shape[0]; /* (out, in) */
        for (int32_t n = 0; n < n_dim; n++) {
            int32_t col =
                s->layout == SPEC_PACK_SWIGLU ? kernel_swiglu_column(n, i == 1) : col0 + n;
            for (int32_t k = 0; k < k_dim; k++) {
                put_packed(t, (size_t)n * k_dim + k, wt, dst, kernel_packed_index(k_dim, k, col));
            }
        }
        col0 += n_dim;
    }
    return 0;
}

static bool is_packed(enum spec_layout layout) {
    return layout == SPEC_PACK_IN_OUT || layout == SPEC_PACK_OUT_IN || layout == SPEC_PACK_SWIGLU;
}

/* The packed element type: asked for, or (AUTO) the checkpoint's when every packed tensor is
 * F16, or every one BF16 (keeping them 16-bit is exact), else float32. */
static enum kernel_wtype choose_wtype(const struct spec_list *list, enum model_weights want) {
    switch (want) {
    case MODEL_WEIGHTS_F32:
        return KERNEL_W_F32;
    case MODEL_WEIGHTS_F16:
        return KERNEL_W_F16;
    case MODEL_WEIGHTS_BF16:
        return KERNEL_W_BF16;
    case MODEL_WEIGHTS_Q8:
        return KERNEL_W_Q8;
    case MODEL_WEIGHTS_AUTO:
        break;
    }
    int n_f16 = 0, n_bf16 = 0, n_packed = 0;
    for (int32_t j = 0; j < list->n; j++) {
        const struct spec *s = &list->specs[j];
        if (!is_packed(s->layout)) {
            continue;
        }
        for (int32_t i = 0; i < s->n_parts; i++) {
            n_packed++;
            n_f16 += s->part[i].tensor->dtype == ST_DTYPE_F16;
            n_bf16 += s->part[i].tensor->dtype == ST_DTYPE_BF16;
        }
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
    case MODEL_WEIGHTS_Q8:
        return "q8";
    case MODEL_WEIGHTS_AUTO:
        break;
    }
    return "auto";
}

int model_weights_parse(const char *text, enum model_weights *out) {
    static const enum model_weights all[] = {MODEL_WEIGHTS_AUTO, MODEL_WEIGHTS_F32,
                                             MODEL_WEIGHTS_F16, MODEL_WEIGHTS_BF16,
                                             MODEL_WEIGHTS_Q8};
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
    struct spec_list list = {0};
    cJSON *index_root = NULL;
    char path[1024];

    model = calloc(1, sizeof(*model));
    if (paths == NULL || model == NULL) {
        snprintf(err, err_size, "out of memory");
        goto fail;
    }
    struct model_config_ext *ext = &model->ext;
    snprintf(path, sizeof(path), "%s/config.json", dir);
    if (config_load(path, ext, err, err_size) != 0) {
        goto fail;
    }
    snprintf(path, sizeof(path), "%s/generation_config.json", dir);
    if (config_load_generation(path, ext, err, err_size) != 0) {
        goto fail;
    }
    model->config = ext->config;
    model->arch = ext->config.arch == MODEL_ARCH_LLAMA ? &arch_llama : &arch_gpt2;
    model->layers = calloc((size_t)ext->config.n_layer, sizeof(*model->layers));
    if (model->layers == NULL) {
        snprintf(err, err_size, "out of memory");
        goto fail;
    }
    if (model->arch->add_specs(ext, &list, err, err_size) != 0) {
        goto fail;
    }
    for (int32_t j = 0; j < list.n; j++) {
        spec_size(&list.specs[j]);
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
        if (bind_file(model->arch, files[i], &list, err, err_size) != 0) {
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
    const char *first_dtype = NULL;
    for (int32_t j = 0; j < list.n; j++) {
        const struct spec *s = &list.specs[j];
        for (int32_t i = 0; i < s->n_parts; i++) {
            if (s->part[i].tensor == NULL && s->layout != SPEC_IGNORED) {
                snprintf(err, err_size, "%s: tensor '%s' is missing%s", dir, s->part[i].name,
                         strstr(s->part[i].name, "lm_head") != NULL
                             ? " (config.json says tie_word_embeddings: false)"
                             : "");
                goto fail;
            }
            if (first_dtype == NULL && s->part[i].tensor != NULL) {
                first_dtype = s->part[i].tensor->dtype_name;
            }
        }
    }

    model->wtype = choose_wtype(&list, weights);
    size_t total = 0;
    for (int32_t j = 0; j < list.n; j++) {
        struct spec *s = &list.specs[j];
        s->offset = total;
        total += (spec_bytes(s, model->wtype) + 63) / 64 * 64;
    }
    model->weight_bytes = total;
    model->weights = mem_alloc_large(total); /* huge pages: every step streams all of it */
    if (model->weights == NULL) {
        snprintf(err, err_size, "out of memory for %zu bytes of weights", model->weight_bytes);
        goto fail;
    }
    unsigned char *w = model->weights;
    for (int32_t j = 0; j < list.n; j++) {
        const struct spec *s = &list.specs[j];
        if (s->layout == SPEC_IGNORED) {
            continue;
        }
        if (convert_spec(s, model->wtype, w + s->offset, err, err_size) != 0) {
            goto fail;
        }
        for (int32_t i = 0; i < s->n_parts; i++) {
            model->n_params += s->part[i].tensor->n_elements;
        }
    }
    model->arch->bind(model, list.specs, w);
    if (model_finish_load(model, dir, n_files, first_dtype != NULL ? first_dtype : "?", err,
                          err_size) != 0) {
        goto fail;
    }
    for (int32_t i = 0; i < n_files; i++) {
        st_file_close(files[i]);
    }
    cJSON_Delete(index_root);
    free(list.specs);
    free(paths);
    return model;

fail:
    for (int32_t i = 0; i < n_files; i++) {
        st_file_close(files[i]);
    }
    cJSON_Delete(index_root);
    free(list.specs);
    free(paths);
    model_destroy(model);
    return NULL;
}
