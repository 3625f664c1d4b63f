/*
 * kernels.h: the forward pass's numeric kernels, private to src/model (and its tests).
 *
 * Weight matmuls use our own kernels, not cblas_sgemm: measured on the target machine, OpenBLAS
 * 0.3.21's sgemm runs at ~13 GFLOPS for one row (decode at batch 1) and its per-row results
 * are not guaranteed to be independent of how many rows share the call. These kernels keep
 * one rule that makes a ragged batch bit-identical to each sequence run alone: every output
 * element is ONE accumulator, fused-multiply-added over k = 0 .. K-1 in order, then + bias.
 * No path (tile height, thread split, ISA tail) changes that order, so a row's result does not
 * depend on the other rows in the call. kernel_matmul_ref is the same arithmetic written
 * naively (fmaf in a loop) and the tests compare the fast kernels with it byte for byte.
 *
 * Weights are packed once at load into panels of KERNEL_NR columns: for panel p, the (K, NR)
 * block W[:, p*NR .. p*NR+NR) row-major, zero-padded past N (Q8 panels interleave k in fours,
 * below). A panel is one contiguous stream, which is what a bandwidth-bound decode step wants.
 * 8-bit weights follow the same rule with integer arithmetic inside each group of 32 k
 * (kernel_matmul_q8).
 *
 * Any thread may call these; they touch only their arguments.
 */
#ifndef GPTD_MODEL_KERNELS_H
#define GPTD_MODEL_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#define KERNEL_NR 64

enum kernel_isa {
    KERNEL_ISA_SCALAR = 0,
    KERNEL_ISA_AVX2 = 1,   /* AVX2 + FMA */
    KERNEL_ISA_AVX512 = 2, /* AVX-512F */
};

/* How packed weights are stored. 16-bit weights are widened to float32 in registers (exact),
 * so the arithmetic, and every byte of the result, is that of their float32 values. 8-bit
 * weights are multiplied with 8-bit activations (kernel_matmul_q8, below). */
enum kernel_wtype {
    KERNEL_W_F32 = 0,
    KERNEL_W_F16 = 1,  /* IEEE 754 binary16 */
    KERNEL_W_BF16 = 2, /* bfloat16: the top half of a float32 */
    KERNEL_W_Q8 = 3,   /* int8, symmetric, one float32 scale per KERNEL_Q8_GROUP k of a column */
};

/* Bytes of one element (Q8: of its int8 value; the scales come on top, kernel_panel_bytes). */
static inline size_t kernel_wtype_size(enum kernel_wtype wt) {
    return wt == KERNEL_W_F32 ? 4 : (wt == KERNEL_W_Q8 ? 1 : 2);
}

/*
 * Q8: KERNEL_Q8_GROUP consecutive k of one column share a float32 scale, amax / 127, and hold
 * round(w / scale) in -127 .. 127 (never -128). K is padded with zeros to whole groups.
 *
 * A Q8 panel (64 columns) is its groups one after the other, each KERNEL_Q8_GROUP_BYTES: the
 * group's 32 x 64 int8 values as 8 quads of 4 consecutive k -- quad t holds, for column j, the
 * bytes of k = 4t .. 4t + 3 at (t * 64 + j) * 4 -- then the group's 64 float32 scales. Four
 * consecutive k of a column in one 32-bit lane is what integer dot-product instructions read
 * (vpmaddubsw / vpdpbusd), and one group's values and scales arrive in one stream.
 */
#define KERNEL_Q8_GROUP       32
#define KERNEL_Q8_GROUP_BYTES (KERNEL_Q8_GROUP * KERNEL_NR + KERNEL_NR * (int)sizeof(float))
static inline size_t kernel_q8_n_groups(int32_t k) {
    return (size_t)(k + KERNEL_Q8_GROUP - 1) / KERNEL_Q8_GROUP;
}

/*
 * Q8 activations: a row of K floats quantized the same way along k (kernel_quantize_rows):
 * per group of 32, scale = amax / 127 and q = round(x / scale), so each row depends only on
 * itself and a batch stays bit-identical to its rows run alone. A quantized row is its
 * n_groups * 32 int8 values (zero past K), then its n_groups float32 scales, padded to 64
 * bytes: kernel_q8_row_bytes(K) apart.
 */
static inline size_t kernel_q8_row_bytes(int32_t k) {
    size_t g = kernel_q8_n_groups(k);
    return (g * KERNEL_Q8_GROUP + g * sizeof(float) + 63) / 64 * 64;
}

enum kernel_epilogue {
    KERNEL_EPILOGUE_STORE = 0,     /* out = acc + bias */
    KERNEL_EPILOGUE_ADD = 1,       /* out = out + (acc + bias): the residual add */
    KERNEL_EPILOGUE_GELU_TANH = 2, /* out = gelu_tanh(acc + bias) */
    KERNEL_EPILOGUE_SWIGLU = 3,    /* out[f] = silu(gate_f + b) * (up_f + b): the Llama MLP's
                                      gate and up projections in one pass over a SWIGLU-packed
                                      weight (below); n is the output width F */
};

/* The best ISA this CPU supports; GPTD_KERNEL=scalar|avx2|avx512 in the environment lowers it
 * (tests and benchmarks use that to exercise every path). */
enum kernel_isa kernel_isa_best(void);
/* Whether this CPU can run isa. */
int kernel_isa_supported(enum kernel_isa isa);
const char *kernel_isa_name(enum kernel_isa isa);

static inline int32_t kernel_n_panels(int32_t n) {
    return (n + KERNEL_NR - 1) / KERNEL_NR;
}
/* Elements of a packed (K, N) weight (times kernel_wtype_size for its bytes). */
static inline size_t kernel_packed_floats(int32_t k, int32_t n) {
    return (size_t)kernel_n_panels(n) * (size_t)k * KERNEL_NR;
}
/* Where W[k][n] lives in the packed layout (its element index). */
static inline size_t kernel_packed_index(int32_t k_dim, int32_t k, int32_t n) {
    return ((size_t)(n / KERNEL_NR) * (size_t)k_dim + (size_t)k) * KERNEL_NR +
           (size_t)(n % KERNEL_NR);
}
/* Bytes of one packed panel of K rows (a multiple of 64: panels stay 64-byte aligned). */
static inline size_t kernel_panel_bytes(enum kernel_wtype wt, int32_t k) {
    if (wt == KERNEL_W_Q8) {
        return kernel_q8_n_groups(k) * KERNEL_Q8_GROUP_BYTES;
    }
    return (size_t)k * KERNEL_NR * kernel_wtype_size(wt);
}
/* Bytes of a packed (K, N) weight. */
static inline size_t kernel_packed_bytes(enum kernel_wtype wt, int32_t k, int32_t n) {
    return (size_t)kernel_n_panels(n) * kernel_panel_bytes(wt, k);
}
/* Quantizes float32 weights in the packed layout (n_panels panels of K rows) to Q8 at dst
 * (kernel_packed_bytes): per group and column, scale = amax / 127 and q = round(w / scale).
 * Returns -1 (dst undefined) when a weight is NaN or infinite. */
int kernel_pack_q8(const float *packed, int32_t k, int32_t n_panels, void *dst);
/* W[kk][n] of a Q8 weight with k_dim rows: its int8 value and its group's scale. */
void kernel_q8_weight_at(const void *w_packed, int32_t k_dim, int32_t kk, int32_t n, int8_t *q,
                         float *scale);
/* Quantizes m rows of x (ldx floats apart, k used) to Q8 activation rows at dst
 * (kernel_q8_row_bytes(k) apart). A NaN gives +127 and an infinity a NaN-producing scale:
 * defined bytes, garbage that stays garbage, never undefined behaviour. */
void kernel_quantize_rows(enum kernel_isa isa, const float *x, size_t ldx, int32_t m, int32_t k,
                          void *dst);

/*
 * SWIGLU packing: gate (K, F) and up (K, F) share panels, so one pass over a panel computes both
 * halves of 32 output columns: panel p holds gate columns [32p, 32p + 32) in its first 32
 * columns and the same up columns in its last 32. As a plain packed matrix it is (K,
 * kernel_swiglu_packed_n(F)); output column f of gate or up sits at kernel_swiglu_column(f, ..).
 */
#define KERNEL_SWIGLU_HALF (KERNEL_NR / 2)
static inline int32_t kernel_swiglu_packed_n(int32_t f) {
    return (f + KERNEL_SWIGLU_HALF - 1) / KERNEL_SWIGLU_HALF * KERNEL_NR;
}
static inline int32_t kernel_swiglu_column(int32_t f, int is_up) {
    return f / KERNEL_SWIGLU_HALF * KERNEL_NR + (is_up ? KERNEL_SWIGLU_HALF : 0) +
           f % KERNEL_SWIGLU_HALF;
}
/* How many panels a matmul of n output columns walks (the range p_begin..p_end splits). */
static inline int32_t kernel_matmul_n_panels(int32_t n, enum kernel_epilogue epilogue) {
    return epilogue == KERNEL_EPILOGUE_SWIGLU ? (n + KERNEL_SWIGLU_HALF - 1) / KERNEL_SWIGLU_HALF
                                              : kernel_n_panels(n);
}

/*
 * out (M, N) [epilogue] x (M, K) @ W (K, N) + bias (N,), for output columns of panels
 * [p_begin, p_end) only (callers split panels across threads; kernel_matmul_n_panels). w_packed
 * holds elements of type wt (F32, F16 or BF16: Q8 goes through kernel_matmul_q8) and is
 * 64-byte aligned; bias may be NULL (zero). Rows of x and out
 * are ldx / ldo floats apart. With KERNEL_EPILOGUE_SWIGLU, W and bias are SWIGLU-packed and N
 * is the output width.
 */
void kernel_matmul(enum kernel_isa isa, const float *x, size_t ldx, const void *w_packed,
                   enum kernel_wtype wt, const float *bias, float *out, size_t ldo, int32_t m,
                   int32_t k, int32_t n, int32_t p_begin, int32_t p_end,
                   enum kernel_epilogue epilogue);

/*
 * The 8-bit matmul: out (M, N) [epilogue] x_q (M, K) @ W_q (K, N) + bias, with x_q quantized
 * rows (kernel_quantize_rows) and W of type KERNEL_W_Q8; arguments otherwise as kernel_matmul.
 * Each output element is one float32 accumulator over the groups g in order:
 *     acc = fmaf((float)isum_g, xscale_g * wscale_g, acc),
 * isum_g the exact int32 sum of the group's 32 int8 products; then the epilogue. Every ISA
 * gives these bytes (kernel_matmul_q8_ref is the same arithmetic written naively).
 */
void kernel_matmul_q8(enum kernel_isa isa, const void *x_q, const void *w_packed, const float *bias,
                      float *out, size_t ldo, int32_t m, int32_t k, int32_t n, int32_t p_begin,
                      int32_t p_end, enum kernel_epilogue epilogue);
/* The reference of kernel_matmul_q8: x_q as there; W unpacked, w_q (K, N) row-major int8 and
 * w_scale (n_groups, N) (SWIGLU: (K, 2N) and (n_groups, 2N), gate then up, as
 * kernel_matmul_ref). */
void kernel_matmul_q8_ref(const void *x_q, const int8_t *w_q, const float *w_scale,
                          const float *bias, float *out, size_t ldo, int32_t m, int32_t k,
                          int32_t n, enum kernel_epilogue epilogue);

/* Element i (kernel_packed_index) of a packed weight of type wt with k_dim rows, as float32:
 * exact for F32/F16/BF16, the dequantized (float)q * scale for Q8. */
float kernel_packed_get(enum kernel_wtype wt, const void *w_packed, int32_t k_dim, size_t i);

/* The reference: W row-major (K, N), unpacked; same arithmetic as kernel_matmul, written
 * naively. GELU uses kernel_gelu_tanh_ref and SWIGLU kernel_silu_ref, so only STORE and ADD
 * are bit-comparable. For SWIGLU, W is (K, 2N) and bias (2N,): gate in columns [0, N), up in
 * [N, 2N). */
void kernel_matmul_ref(const float *x, size_t ldx, const float *w, const float *bias, float *out,
                       size_t ldo, int32_t m, int32_t k, int32_t n, enum kernel_epilogue epilogue);

/* 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), written as x / (1 + exp(-2u)). */
float kernel_gelu_tanh_ref(float x);
/* x * sigmoid(x), written as x / (1 + exp(-x)). */
float kernel_silu_ref(float x);

/* a (n,) . b (n,), in a fixed order that depends only on n. */
float kernel_dot(enum kernel_isa isa, const float *a, const float *b, int32_t n);
/* y (n,) += alpha * x (n,) */
void kernel_axpy(enum kernel_isa isa, float alpha, const float *x, float *y, int32_t n);
/* x (n,) = exp(x - shift) in place; returns the sum, in a fixed order that depends only on n. */
float kernel_exp_shift_sum(enum kernel_isa isa, float *x, int32_t n, float shift);
/* Largest head size kernel_attention handles with a 16-bit cache (it widens a row on the stack).
 */
#define KERNEL_ATTENTION_MAX_HS 1024

/*
 * Attention of one query row q (hs,) over n cached positions: scores[t] = q . K_t * scale,
 * p = softmax(scores), out (hs,) = sum_t p_t V_t, each in a fixed order that depends only on n.
 * K and V are elements of kv_type (F32 or F16; F16 rows are widened exactly, so the result is
 * that of their float32 values). Position t's K row starts blocks[t / 16] * block_stride +
 * (t % 16) * row_stride elements after k_base (V the same from v_base): the paged KV cache's
 * layout, walked without gathering. scores is (n,) scratch. hs <= KERNEL_ATTENTION_MAX_HS for F16.
 */
void kernel_attention(enum kernel_isa isa, const float *q, const void *k_base, const void *v_base,
                      enum kernel_wtype kv_type, const int32_t *blocks, size_t block_stride,
                      size_t row_stride, int32_t n, int32_t hs, float scale, float *scores,
                      float *out);

/* n halves to floats (exact), and n floats to halves rounded to nearest even; every ISA gives
 * the same bits (NaN payloads aside). */
void kernel_f16_to_f32(enum kernel_isa isa, const uint16_t *src, float *dst, size_t n);
void kernel_f32_to_f16(enum kernel_isa isa, const float *src, uint16_t *dst, size_t n);

/* x (n,) = gelu_tanh(x) in place. */
void kernel_gelu_tanh(enum kernel_isa isa, float *x, size_t n);

#endif
