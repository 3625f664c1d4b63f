/*
 * fuzz_safetensors.c: the safetensors header parser and validator, and model_load on top of
 * it. The input becomes model.safetensors beside a fixed config.json of a tiny GPT-2 (1 layer,
 * 8 wide, 2 heads, vocabulary 16, context 8). Invariants: never a crash, a leak or a read
 * outside the mapping (ASan); every tensor of an accepted file can be read end to end; a file
 * model_load accepts gives a model with the configured shape.
 */
#include <stdio.h>
#include <string.h>

#include <gptd/model.h>

#include "fuzz.h"
#include "safetensors.h"

static const char config_json[] =
    "{\"model_type\":\"gpt2\",\"n_layer\":1,\"n_head\":2,\"n_embd\":8,\"n_positions\":8,"
    "\"vocab_size\":16,\"layer_norm_epsilon\":1e-5,\"activation_function\":\"gelu_new\"}";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_write_temp("config.json", (const uint8_t *)config_json, sizeof(config_json) - 1);
    const char *path = fuzz_write_temp("model.safetensors", data, size);
    char err[512];
    struct st_file *f = st_file_open(path, err, sizeof(err));
    if (f != NULL) {
        for (int32_t i = 0; i < f->n_tensors; i++) {
            const struct st_tensor *t = &f->tensors[i];
            FUZZ_CHECK(t->data >= (const uint8_t *)f->map);
            FUZZ_CHECK(t->data + t->n_bytes <= (const uint8_t *)f->map + f->map_bytes);
            if (t->dtype != ST_DTYPE_OTHER && t->n_elements > 0) {
                volatile float sink = st_tensor_get(t, 0) + st_tensor_get(t, t->n_elements - 1);
                (void)sink;
            }
        }
        st_file_close(f);
    } else {
        FUZZ_CHECK(strlen(err) > 0);
    }
    struct model *m = model_load(fuzz_temp_dir(), err, sizeof(err));
    if (m != NULL) {
        const struct model_config *c = model_get_config(m);
        FUZZ_CHECK(c->n_layer == 1 && c->n_embd == 8 && c->n_vocab == 16);
        model_destroy(m);
    }
    return 0;
}
