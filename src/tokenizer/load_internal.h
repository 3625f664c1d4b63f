/*
 * load_internal.h: what the loading files of src/tokenizer/ pass between them (never used after
 * tokenizer_load returns): the three lists a vocabulary file reduces to, and the functions that
 * read tokenizer.json's pipeline sections and build the tables.
 *
 * tokenizer_load.c reads the files into a struct raw_vocab; pipeline_load.c reads the
 * normalizer, pre-tokenizer and decoder (before the tables: they decide the alphabet and each
 * token's text) and the post-processor and tokenizer_config.json (after: they name tokens);
 * vocab_build.c turns the lists into the tables.
 */
#ifndef GPTD_TOKENIZER_LOAD_INTERNAL_H
#define GPTD_TOKENIZER_LOAD_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "tokenizer_internal.h"

/* A vocabulary entry as the file spells it. Borrowed strings. */
struct vocab_entry {
    const char *str;
    size_t len;
    int32_t id;
};

/* One merge as the file spells it: two strings. Borrowed. */
struct merge_entry {
    const char *a;
    size_t n_a;
    const char *b;
    size_t n_b;
};

struct added_entry {
    const char *str;
    size_t len;
    int32_t id;
    int is_special;
    int lstrip;
    int rstrip;
    int normalized;
};

/* The three lists both loaders produce. Arrays owned; strings borrowed from the parsed file. */
struct raw_vocab {
    struct vocab_entry *vocab;
    size_t n_vocab;
    struct merge_entry *merges;
    size_t n_merges;
    struct added_entry *added;
    size_t n_added;
};

/* Turns the lists into the tokenizer's tables (tok->alphabet and tok->dec must be set). file
 * names the file the lists came from, merges_file the one the merges came from. */
int vocab_build(struct tokenizer *tok, const struct raw_vocab *raw, const char *file,
                const char *merges_file, char *err, size_t err_size);

/* tokenizer.json's "model" options besides vocab and merges (type, byte_fallback, unk_token,
 * fuse_unk, ignore_merges, dropout, prefixes and suffixes). */
int pipeline_load_model_options(struct tokenizer *tok, const cJSON *root, const char *file,
                                char *err, size_t err_size);

/* "normalizer", "pre_tokenizer" and "decoder": set the alphabet, the normalizer steps, the
 * split, the Metaspace settings and the decoder steps. Anything gptd does not implement is
 * refused naming the file, the field and the value. */
int pipeline_load_text_steps(struct tokenizer *tok, const cJSON *root, const char *file, char *err,
                             size_t err_size);

/* GPT-2's own pre-tokenizer (a ByteLevel with use_regex): the split of vocab.json + merges.txt. */
int pipeline_use_gpt2_split(struct tokenizer *tok, char *err, size_t err_size);

/* "post_processor" (root may be NULL for vocab.json + merges.txt), then dir/tokenizer_config.json
 * when it exists (add_bos_token / add_eos_token override the post-processor; bos_token and
 * eos_token name the BOS and EOS ids). Needs the tables. */
int pipeline_load_specials(struct tokenizer *tok, const cJSON *root, const char *file,
                           const char *dir, char *err, size_t err_size);

/* Decides whether (and before what) encoding may cut a SentencePiece-style word into parts:
 * sets tok->cut_sep and tok->cut_unsafe from the normalizer, the pre-tokenizer and the
 * vocabulary (needs the tables). */
void pipeline_plan_word_cut(struct tokenizer *tok);

/* Applies tok->dec (the decoder's per-token steps) to a token's string: writes the text to out
 * (room for out_cap bytes) and returns its length, or SIZE_MAX when out_cap is too small. */
size_t pipeline_decode_piece(const struct tokenizer *tok, const char *s, size_t n, char *out,
                             size_t out_cap);

#endif
