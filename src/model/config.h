/*
 * config.h: config.json parsing for model_load, private to src/model (and its tests).
 * Main thread, start-up only.
 */
#ifndef GPTD_MODEL_CONFIG_H
#define GPTD_MODEL_CONFIG_H

#include <stddef.h>

#include <gptd/model.h>

/* The public config plus what only the loader needs. */
struct model_config_ext {
    struct model_config config;
    int is_tied; /* tie_word_embeddings: lm_head is wte */
};

/* Parses json_text (json_bytes, not NUL-terminated). Returns 0, or -1 with a message naming
 * path and the field in err. */
int config_parse(const char *json_text, size_t json_bytes, const char *path,
                 struct model_config_ext *out, char *err, size_t err_size);
/* Reads path and parses it. */
int config_load(const char *path, struct model_config_ext *out, char *err, size_t err_size);

#endif
