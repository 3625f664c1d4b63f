/*
 * safetensors.h: read-only access to Hugging Face safetensors files, private to src/model.
 *
 * model_load (main thread, start-up) opens each file with st_file_open, which mmaps it and
 * validates the whole header before any tensor is looked at: the header length lies inside the
 * file, the JSON parses, every dtype is known, every data_offsets pair lies inside the data area,
 * spans exactly product(shape) * dtype size, and no two tensors overlap. After that a tensor's
 * bytes can be read without bounds checks. Shapes are checked against the config by the caller.
 */
#ifndef GPTD_MODEL_SAFETENSORS_H
#define GPTD_MODEL_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#define ST_MAX_DIMS 4

enum st_dtype {
    ST_DTYPE_F32 = 0,
    ST_DTYPE_F16 = 1,
    ST_DTYPE_BF16 = 2,
    ST_DTYPE_OTHER = 3, /* a known dtype gptd does not compute with (BOOL, U8, I64, F64, ...) */
};

struct st_tensor {
    char *name; /* as written in the file (owned) */
    enum st_dtype dtype;
    char dtype_name[8];
    int32_t n_dims;
    int64_t shape[ST_MAX_DIMS];
    size_t n_elements;
    const uint8_t *data; /* borrowed: points into the mapping */
    size_t n_bytes;
};

struct st_file {
    char *path; /* owned */
    void *map;  /* the whole file, PROT_READ */
    size_t map_bytes;
    struct st_tensor *tensors; /* (n_tensors,) owned */
    int32_t n_tensors;
};

/* Maps and validates path. Returns NULL and writes a message naming the file (and the tensor,
 * when one is at fault) into err on any problem. */
struct st_file *st_file_open(const char *path, char *err, size_t err_size);
/* Unmaps and frees. NULL is a no-op. */
void st_file_close(struct st_file *file);

/* Converts tensor element i to float (F32, F16 or BF16 only). */
float st_tensor_get(const struct st_tensor *tensor, size_t i);

#endif
