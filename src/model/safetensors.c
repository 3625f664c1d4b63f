/*
 * safetensors.c: mmap a safetensors file and validate its header (see safetensors.h).
 *
 * Layout: 8 bytes little-endian header length N, N bytes of JSON, then the data area. Each JSON
 * entry but "__metadata__" is {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}
 * with offsets relative to the data area. A hostile file must never make us read outside the
 * mapping, so every number is checked (with overflow checks) before it becomes a pointer.
 * Called from model_load on the main thread.
 */
#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "half.h"

/* A header larger than this is not a model we can serve; refusing it early keeps a hostile
 * length from making cJSON walk gigabytes. */
#define ST_MAX_HEADER_BYTES ((uint64_t)100 * 1024 * 1024)

static void set_err(char *err, size_t err_size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t err_size, const char *fmt, ...) {
    if (err == NULL || err_size == 0) {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, err_size, fmt, ap);
    va_end(ap);
}

struct dtype_info {
    const char *name;
    enum st_dtype dtype;
    size_t size;
};

static const struct dtype_info dtypes[] = {
    {"F32", ST_DTYPE_F32, 4},    {"F16", ST_DTYPE_F16, 2},   {"BF16", ST_DTYPE_BF16, 2},
    {"F64", ST_DTYPE_OTHER, 8},  {"I64", ST_DTYPE_OTHER, 8}, {"I32", ST_DTYPE_OTHER, 4},
    {"I16", ST_DTYPE_OTHER, 2},  {"I8", ST_DTYPE_OTHER, 1},  {"U8", ST_DTYPE_OTHER, 1},
    {"BOOL", ST_DTYPE_OTHER, 1},
};

/* A JSON number that is a non-negative integer exactly representable (< 2^53). */
static int json_to_u64(const cJSON *item, uint64_t *out) {
    if (!cJSON_IsNumber(item)) {
        return -1;
    }
    double d = item->valuedouble;
    if (!(d >= 0.0) || d > 9007199254740992.0 || d != (double)(uint64_t)d) {
        return -1;
    }
    *out = (uint64_t)d;
    return 0;
}

static int cmp_by_offset(const void *a, const void *b) {
    const struct st_tensor *ta = a;
    const struct st_tensor *tb = b;
    if (ta->data != tb->data) {
        return ta->data < tb->data ? -1 : 1;
    }
    return ta->n_bytes < tb->n_bytes ? -1 : (ta->n_bytes > tb->n_bytes ? 1 : 0);
}

/* Parses one tensor entry into t; on failure writes why into err. */
static int parse_entry(const cJSON *entry, const uint8_t *data_area, uint64_t data_bytes,
                       struct st_tensor *t, const char *path, char *err, size_t err_size) {
    const char *name = entry->string;
    if (!cJSON_IsObject(entry)) {
        set_err(err, err_size, "%s: tensor '%s': entry is not an object", path, name);
        return -1;
    }
    const cJSON *dtype = cJSON_GetObjectItemCaseSensitive(entry, "dtype");
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(entry, "shape");
    const cJSON *offsets = cJSON_GetObjectItemCaseSensitive(entry, "data_offsets");
    if (!cJSON_IsString(dtype) || !cJSON_IsArray(shape) || !cJSON_IsArray(offsets)) {
        set_err(err, err_size, "%s: tensor '%s': needs string dtype, array shape and data_offsets",
                path, name);
        return -1;
    }
    const struct dtype_info *info = NULL;
    for (size_t i = 0; i < sizeof(dtypes) / sizeof(dtypes[0]); i++) {
        if (strcmp(dtype->valuestring, dtypes[i].name) == 0) {
            info = &dtypes[i];
        }
    }
    if (info == NULL) {
        set_err(err, err_size, "%s: tensor '%s': unknown dtype '%.16s'", path, name,
                dtype->valuestring);
        return -1;
    }
    int n_dims = cJSON_GetArraySize(shape);
    if (n_dims > ST_MAX_DIMS) {
        set_err(err, err_size, "%s: tensor '%s': %d dimensions (at most %d)", path, name, n_dims,
                ST_MAX_DIMS);
        return -1;
    }
    uint64_t n_elements = 1;
    int i_dim = 0;
    const cJSON *dim;
    cJSON_ArrayForEach(dim, shape) {
        uint64_t v;
        if (json_to_u64(dim, &v) != 0 || v > ((uint64_t)1 << 40)) {
            set_err(err, err_size, "%s: tensor '%s': bad shape dimension %d", path, name, i_dim);
            return -1;
        }
        if (v != 0 && n_elements > UINT64_MAX / v) {
            set_err(err, err_size, "%s: tensor '%s': shape overflows", path, name);
            return -1;
        }
        n_elements *= v;
        t->shape[i_dim++] = (int64_t)v;
    }
    uint64_t begin, end;
    if (cJSON_GetArraySize(offsets) != 2 ||
        json_to_u64(cJSON_GetArrayItem(offsets, 0), &begin) != 0 ||
        json_to_u64(cJSON_GetArrayItem(offsets, 1), &end) != 0 || begin > end) {
        set_err(err, err_size, "%s: tensor '%s': data_offsets must be [begin, end], begin <= end",
                path, name);
        return -1;
    }
    if (end > data_bytes) {
        set_err(err, err_size,
                "%s: tensor '%s': data_offsets [%llu, %llu] outside the data area (%llu bytes)",
                path, name, (unsigned long long)begin, (unsigned long long)end,
                (unsigned long long)data_bytes);
        return -1;
    }
    if (n_elements > UINT64_MAX / info->size || end - begin != n_elements * info->size) {
        set_err(err, err_size,
                "%s: tensor '%s': data_offsets span %llu bytes but shape x %s needs %llu", path,
                name, (unsigned long long)(end - begin), info->name,
                (unsigned long long)(n_elements * info->size));
        return -1;
    }
    t->name = strdup(name);
    if (t->name == NULL) {
        set_err(err, err_size, "%s: out of memory", path);
        return -1;
    }
    t->dtype = info->dtype;
    snprintf(t->dtype_name, sizeof(t->dtype_name), "%s", info->name);
    t->n_dims = n_dims;
    t->n_elements = (size_t)n_elements;
    t->data = data_area + begin;
    t->n_bytes = (size_t)(end - begin);
    return 0;
}

struct st_file *st_file_open(const char *path, char *err, size_t err_size) {
    struct st_file *file = calloc(1, sizeof(*file));
    cJSON *root = NULL;
    int fd = -1;
    if (file == NULL || (file->path = strdup(path)) == NULL) {
        set_err(err, err_size, "%s: out of memory", path);
        goto fail;
    }
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        set_err(err, err_size, "%s: cannot open: %s", path, strerror(errno));
        goto fail;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        set_err(err, err_size, "%s: not a regular file", path);
        goto fail;
    }
    if (st.st_size < 8) {
        set_err(err, err_size, "%s: %lld bytes is too short for a safetensors header", path,
                (long long)st.st_size);
        goto fail;
    }
    file->map_bytes = (size_t)st.st_size;
    file->map = mmap(NULL, file->map_bytes, PROT_READ, MAP_PRIVATE, fd, 0);
    if (file->map == MAP_FAILED) {
        file->map = NULL;
        set_err(err, err_size, "%s: mmap failed: %s", path, strerror(errno));
        goto fail;
    }
    close(fd);
    fd = -1;

    const uint8_t *bytes = file->map;
    uint64_t header_bytes = 0;
    for (int i = 7; i >= 0; i--) {
        header_bytes = (header_bytes << 8) | bytes[i];
    }
    if (header_bytes > ST_MAX_HEADER_BYTES || header_bytes > file->map_bytes - 8) {
        set_err(err, err_size, "%s: header length %llu does not fit in the file (%zu bytes)", path,
                (unsigned long long)header_bytes, file->map_bytes);
        goto fail;
    }
    root = cJSON_ParseWithLength((const char *)bytes + 8, (size_t)header_bytes);
    if (root == NULL || !cJSON_IsObject(root)) {
        set_err(err, err_size, "%s: header is not a JSON object", path);
        goto fail;
    }
    const uint8_t *data_area = bytes + 8 + header_bytes;
    uint64_t data_bytes = file->map_bytes - 8 - header_bytes;

    int n_entries = cJSON_GetArraySize(root);
    file->tensors = calloc((size_t)n_entries + 1, sizeof(*file->tensors));
    if (file->tensors == NULL) {
        set_err(err, err_size, "%s: out of memory", path);
        goto fail;
    }
    const cJSON *entry;
    cJSON_ArrayForEach(entry, root) {
        if (entry->string == NULL) {
            set_err(err, err_size, "%s: header entry without a name", path);
            goto fail;
        }
        if (strcmp(entry->string, "__metadata__") == 0) {
            continue;
        }
        for (int32_t i = 0; i < file->n_tensors; i++) {
            if (strcmp(file->tensors[i].name, entry->string) == 0) {
                set_err(err, err_size, "%s: tensor '%s' appears twice", path, entry->string);
                goto fail;
            }
        }
        if (parse_entry(entry, data_area, data_bytes, &file->tensors[file->n_tensors], path, err,
                        err_size) != 0) {
            goto fail;
        }
        file->n_tensors++;
    }
    cJSON_Delete(root);
    root = NULL;

    /* Overlap check on a sorted copy so the file order (used in messages) stays as written. */
    if (file->n_tensors > 1) {
        struct st_tensor *sorted = malloc((size_t)file->n_tensors * sizeof(*sorted));
        if (sorted == NULL) {
            set_err(err, err_size, "%s: out of memory", path);
            goto fail;
        }
        memcpy(sorted, file->tensors, (size_t)file->n_tensors * sizeof(*sorted));
        qsort(sorted, (size_t)file->n_tensors, sizeof(*sorted), cmp_by_offset);
        for (int32_t i = 1; i < file->n_tensors; i++) {
            if (sorted[i].data < sorted[i - 1].data + sorted[i - 1].n_bytes) {
                set_err(err, err_size, "%s: tensors '%s' and '%s' overlap", path,
                        sorted[i - 1].name, sorted[i].name);
                free(sorted);
                goto fail;
            }
        }
        free(sorted);
    }
    return file;

fail:
    cJSON_Delete(root);
    if (fd >= 0) {
        close(fd);
    }
    st_file_close(file);
    return NULL;
}

void st_file_close(struct st_file *file) {
    if (file == NULL) {
        return;
    }
    if (file->tensors != NULL) {
        for (int32_t i = 0; i < file->n_tensors; i++) {
            free(file->tensors[i].name);
        }
        free(file->tensors);
    }
    if (file->map != NULL) {
        munmap(file->map, file->map_bytes);
    }
    free(file->path);
    free(file);
}

float st_tensor_get(const struct st_tensor *tensor, size_t i) {
    /* memcpy, not a cast: the data area has no alignment guarantee. */
    switch (tensor->dtype) {
    case ST_DTYPE_F32: {
        float f;
        memcpy(&f, tensor->data + i * 4, 4);
        return f;
    }
    case ST_DTYPE_F16: {
        uint16_t h;
        memcpy(&h, tensor->data + i * 2, 2);
        return half_f16_to_f32(h);
    }
    case ST_DTYPE_BF16: {
        uint16_t h;
        memcpy(&h, tensor->data + i * 2, 2);
        return half_bf16_to_f32(h);
    }
    case ST_DTYPE_OTHER:
        break;
    }
    return 0.0f;
}
