/*
 * config.h: config.json (and generation_config.json) parsing for model_load, private to
 * src/model (and its tests).
 * Main thread, start-up only.
 */
#ifndef GPTD_MODEL_CONFIG_H
#define GPTD_MODEL_CONFIG_H

#include <stddef.h>

#include <gptd/model.h>

enum rope_scaling {
    ROPE_SCALING_NONE = 0,
    ROPE_SCALING_LINEAR = 1, /* positions divided by factor */
    ROPE_SCALING_LLAMA3 = 2, /* Llama 3.1's per-frequency blend (factor, low/high freq factor) */
};

/* The public config plus what only the loader needs. */
struct model_config_ext {
    struct model_config config;
    int has_qkv_bias;   /* Llama family: q/k/v projections carry biases (qwen2; attention_bias) */
    int has_o_bias;     /* ... and the output projection (attention_bias) */
    int has_mlp_bias;   /* gate/up/down carry biases (mlp_bias) */
    int32_t n_ctx_file; /* the context config.json states, before a sliding window capped it */
    enum rope_scaling rope_scaling;
    float rope_factor;
    float rope_low_freq_factor;
    float rope_high_freq_factor;
    int32_t rope_original_ctx; /* original_max_position_embeddings (llama3) */
};

/* Parses json_text (json_bytes, not NUL-terminated). Returns 0, or -1 with a message naming
 * path and the field in err. */
int config_parse(const char *json_text, size_t json_bytes, const char *path,
                 struct model_config_ext *out, char *err, size_t err_size);
/* Reads path and parses it. */
int config_load(const char *path, struct model_config_ext *out, char *err, size_t err_size);

/* Merges generation_config.json's eos_token_id (an int or a list) into out's end tokens, if
 * path exists. Returns 0 (also when it does not exist), or -1 with a message. */
int config_load_generation(const char *path, struct model_config_ext *out, char *err,
                           size_t err_size);

#endif
