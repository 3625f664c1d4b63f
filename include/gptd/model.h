/*
 * model.h: a decoder-only transformer loaded from a Hugging Face directory, its paged KV cache,
 * and the batched forward pass. Architectures: GPT-2 (model_type gpt2) and the Llama family
 * (llama, mistral, qwen2: RMSNorm, rotary positions, SiLU-gated MLP, grouped-query attention).
 *
 * Threads: model_load and kv_cache_create run at start-up on the main thread. After that the
 * engine thread alone calls model_forward and every kv_* function (no locks inside). The loaded
 * weights are read-only and may be read by any thread.
 *
 * Shapes use llm.c's letters: B sequences in a batch, T positions, C = n_embd, NH = n_head,
 * HS = head_dim, KVH = n_kv_head, L = n_layer, V = vocab size, N = rows (tokens) in a ragged
 * batch.
 */
#ifndef GPTD_MODEL_H
#define GPTD_MODEL_H

#include <stddef.h>
#include <stdint.h>

enum model_arch {
    MODEL_ARCH_GPT2 = 0,  /* LayerNorm, learned positions, GELU MLP, fused Conv1D qkv */
    MODEL_ARCH_LLAMA = 1, /* RMSNorm, RoPE (rotate-half), SiLU-gated MLP, GQA: llama, mistral,
                             qwen2 */
};

enum model_activation {
    MODEL_ACT_GELU_TANH = 0,  /* "gelu_new", "gelu_pytorch_tanh" */
    MODEL_ACT_GELU_EXACT = 1, /* "gelu" (erf) */
    MODEL_ACT_SILU = 2,       /* "silu": the Llama family's gate */
};

/* Ids that end a sequence: config.json's eos_token_id (an int or a list) and
 * generation_config.json's, merged. */
#define MODEL_MAX_EOS 8

struct model_config {
    enum model_arch arch;
    char model_type[16]; /* config.json's model_type: "gpt2", "llama", "mistral", "qwen2" */
    int32_t n_layer;
    int32_t n_head;
    int32_t n_kv_head; /* KV heads (GQA; = n_head without it, 1 for MQA) */
    int32_t head_dim;  /* HS: n_embd / n_head unless config.json gives head_dim */
    int32_t n_embd;
    int32_t n_inner; /* MLP width; 4 * n_embd when a GPT-2 config.json says null */
    int32_t n_ctx;   /* the longest sequence served (n_positions / max_position_embeddings) */
    int32_t n_vocab;
    float layer_norm_eps; /* of LayerNorm (GPT-2) or RMSNorm (Llama) */
    enum model_activation activation;
    int32_t bos_token_id; /* -1 when absent */
    int32_t eos_token_id; /* -1 when absent; the first of eos_token_ids */
    int32_t n_eos;
    int32_t eos_token_ids[MODEL_MAX_EOS];
    int is_scale_attn_weights;
    int is_tied;      /* the output head is the token embedding (tie_word_embeddings) */
    float rope_theta; /* Llama: RoPE base */
};

struct model;

/* How the matmul weights (four per layer and the lm_head) are held in memory. Decode at small
 * batches is bound by reading them, so 16-bit weights run up to twice as fast, 8-bit ones up to
 * 3.5 times. */
enum model_weights {
    MODEL_WEIGHTS_AUTO = 0, /* as stored: 16-bit when every matmul weight is F16 (or every one
                               BF16), else float32. Exact: the same logits as widening. */
    MODEL_WEIGHTS_F32 = 1,  /* float32 */
    MODEL_WEIGHTS_F16 = 2,  /* IEEE half; other dtypes are rounded (lossy, opt-in) */
    MODEL_WEIGHTS_BF16 = 3, /* bfloat16; other dtypes are rounded (lossy, opt-in) */
    MODEL_WEIGHTS_Q8 = 4,   /* int8 in groups of 32 along K with a float32 scale each, quantized
                               at load from any dtype (lossy, opt-in) */
};

/* "auto", "f32", "f16", "bf16", "q8". */
const char *model_weights_name(enum model_weights weights);
/* Parses one of those names; -1 when text is none of them. */
int model_weights_parse(const char *text, enum model_weights *out);

/*
 * Loads config.json and model.safetensors (or its shards) from dir. The safetensors files are
 * mmap'd and every header is validated before any tensor is used. Returns NULL on failure and
 * writes a message naming the file, the tensor and the problem into err (err_size bytes).
 * model_load is model_load_with(dir, MODEL_WEIGHTS_AUTO, ...).
 */
struct model *model_load(const char *dir, char *err, size_t err_size);
struct model *model_load_with(const char *dir, enum model_weights weights, char *err,
                              size_t err_size);

/* Frees everything model_load made. NULL is a no-op. */
void model_destroy(struct model *model);

/* Borrowed: valid until model_destroy. */
const struct model_config *model_get_config(const struct model *model);

/* Parameter count and bytes of weights as used by the forward pass (after any conversion). */
size_t model_n_params(const struct model *model);
size_t model_weight_bytes(const struct model *model);
/* How the matmul weights ended up: F32, F16 or BF16 (never AUTO). */
enum model_weights model_get_weights(const struct model *model);

/*
 * KV cache: a pool of fixed-size blocks (KV_BLOCK_SIZE positions each, all layers), allocated once
 * for a byte budget. A sequence holds a table of block ids; blocks are reference-counted so that
 * sequences of one group (n > 1, beam search) can share a prompt's blocks; writing into a shared
 * block copies it first (copy-on-write).
 */
#define KV_BLOCK_SIZE 16

enum kv_status {
    KV_OK = 0,
    KV_ERR_NO_BLOCKS = -1, /* the pool has too few free blocks; nothing was changed */
    KV_ERR_TOO_LONG = -2,  /* the sequence would exceed the model's context */
};

struct kv_cache;

/* A sequence's block table. Owned by the caller (the engine); its blocks belong to the pool. */
struct kv_seq {
    int32_t *blocks;  /* (max_blocks,) block ids; allocated by kv_seq_init */
    int32_t n_blocks; /* blocks in use */
    int32_t n_pos;    /* positions whose K/V are stored */
    int32_t max_blocks;
    int32_t n_keyed; /* leading full blocks kv_seq_commit_prefix has keyed (prefix cache) */
};

/* How K and V are stored. F16 holds twice the positions per byte and reads half the bytes in
 * attention; the stored K/V are rounded (to nearest even), so logits move slightly (opt-in). */
enum kv_dtype {
    KV_DTYPE_F32 = 0,
    KV_DTYPE_F16 = 1,
};
/* "f32", "f16". */
const char *kv_dtype_name(enum kv_dtype dtype);
/* Parses one of those names; -1 when text is neither. */
int kv_dtype_parse(const char *text, enum kv_dtype *out);

/* kv_cache_create is kv_cache_create_with(..., KV_DTYPE_F32, ...). */
struct kv_cache *kv_cache_create(const struct model *model, size_t budget_bytes, char *err,
                                 size_t err_size);
struct kv_cache *kv_cache_create_with(const struct model *model, size_t budget_bytes,
                                      enum kv_dtype dtype, char *err, size_t err_size);
enum kv_dtype kv_cache_dtype(const struct kv_cache *kv);
void kv_cache_destroy(struct kv_cache *kv);
int32_t kv_cache_n_blocks_total(const struct kv_cache *kv);
int32_t kv_cache_n_blocks_free(const struct kv_cache *kv);
size_t kv_cache_bytes_per_block(const struct kv_cache *kv);

/* Sets up an empty table sized for the model's context. Returns 0, or -1 when out of memory. */
int kv_seq_init(struct kv_seq *seq, const struct kv_cache *kv);
/* Returns the sequence's blocks to the pool and frees the table. Safe on a zeroed struct. */
void kv_seq_finish(struct kv_cache *kv, struct kv_seq *seq);
/* Ensures blocks exist (and are not shared) for positions [n_pos, n_pos + n_new). All or nothing.
 */
enum kv_status kv_seq_reserve(struct kv_cache *kv, struct kv_seq *seq, int32_t n_new);
/* Makes dst (initialised, empty) share src's blocks and positions. */
void kv_seq_fork(struct kv_cache *kv, struct kv_seq *dst, const struct kv_seq *src);
/* Drops positions >= n_pos (frees whole blocks past the end). */
void kv_seq_truncate(struct kv_cache *kv, struct kv_seq *seq, int32_t n_pos);

/*
 * Prefix caching. A full block (KV_BLOCK_SIZE positions) is identified by a chain key: a hash
 * of its parent block's key (the first block's parent is the cache's own root: the KV layout
 * and dtype) and its token ids, kept with the ids themselves so that a hash collision can
 * never hand out another text's K/V. kv_seq_commit_prefix keys the full blocks a sequence has
 * computed; when their last holder lets go they stay cached, counted as free, in LRU order, and
 * are evicted only when the free stack runs out. Blocks in use are never evicted. A keyed block
 * that is about to be written (after kv_seq_truncate) loses its key first.
 *
 * kv_seq_match_prefix: seq must be empty. Appends the longest run of cached blocks whose keys
 * chain over tokens[0 .. n_tokens) (whole blocks only) to seq's table, sharing them by
 * reference, and returns the positions matched (a multiple of KV_BLOCK_SIZE, <= n_tokens).
 * Pass n_tokens = prompt length - 1 to keep at least the last token for prefill (its logits).
 */
int32_t kv_seq_match_prefix(struct kv_cache *kv, struct kv_seq *seq, const int32_t *tokens,
                            int32_t n_tokens);
/* Keys the full blocks of seq[0 .. n_pos) not keyed yet; tokens are seq's ids by position. */
void kv_seq_commit_prefix(struct kv_cache *kv, struct kv_seq *seq, const int32_t *tokens);
/* Blocks that hold a cached prefix (in use or evictable), and those of them no sequence holds
 * (counted in kv_cache_n_blocks_free). */
int32_t kv_cache_n_blocks_cached(const struct kv_cache *kv);
int32_t kv_cache_n_blocks_evictable(const struct kv_cache *kv);

/* One sequence's part of a ragged batch. */
struct model_batch_seq {
    struct kv_seq *kv;     /* borrowed; K/V for the new positions are appended to it */
    const int32_t *tokens; /* (n_tokens,) new tokens at positions kv->n_pos .. */
    int32_t n_tokens;
    int32_t n_logits; /* logits wanted for the last n_logits of these rows (0..n_tokens) */
};

/* Scratch for one forward call of up to max_tokens rows and max_logits logit rows. */
struct model_scratch;
struct model_scratch *model_scratch_create(const struct model *model, int32_t max_tokens,
                                           int32_t max_logits);
void model_scratch_destroy(struct model_scratch *scratch);

/*
 * Runs one forward pass over a ragged batch of n_seqs sequences. The caller has reserved KV
 * blocks for every new position (kv_seq_reserve). Writes sum(n_logits) rows of V floats into
 * logits, in batch order. Allocates nothing. Returns 0, or -1 when the batch exceeds the
 * scratch's sizes or the context.
 */
int model_forward(struct model *model, struct kv_cache *kv, struct model_scratch *scratch,
                  const struct model_batch_seq *seqs, int32_t n_seqs, float *logits);

/* Sets the threads used for GEMM (OpenBLAS) and for attention / element-wise work. */
void model_set_threads(int n_threads);

#endif
