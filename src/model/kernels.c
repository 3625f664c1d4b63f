/*
 * kernels.c: matmul, attention helpers and GELU for the forward pass (see kernels.h for the
 * contract, the packed layout and the one-accumulator-per-element rule that keeps batches
 * bit-identical).
 *
 * Three implementations of each kernel: AVX-512F, AVX2+FMA and portable C, picked at run time
 * with __builtin_cpu_supports (the build has no -march flag, so each fast function carries a
 * target attribute). All three follow the same per-element order, so AVX-512 and AVX2 agree
 * with kernel_matmul_ref exactly for STORE and ADD; the exp/GELU approximations differ from
 * libm's in the last bits, which is fine because one process only ever uses one ISA.
 *
 * Packed weights may be float32, IEEE half or bfloat16 (enum kernel_wtype). Half and bfloat16
 * are widened to float32 in registers right after the load (exact), so a 16-bit weight gives the
 * same bytes as its float32 value would, at half the memory traffic. 8-bit weights go through
 * kernel_matmul_q8 (AVX2 and portable C) with activations quantized per row: integer sums per
 * group of 32 k, then one float32 accumulator per element as above.
 */
#include "kernels.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "half.h"

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#define HAVE_X86 1
#else
#define HAVE_X86 0
#endif

#if HAVE_X86
static int has_f16c(void) {
    unsigned int eax, ebx, ecx, edx;
    return __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & bit_F16C) != 0;
}
#endif

/* Row tile heights: registers hold the accumulators (AVX-512: 6 x 4 zmm = 24 of 32; AVX2: 6 x 2
 * ymm = 12 of 16). */
#define MR_512    6
#define MR_256    6
#define MR_Q8_256 4

const char *kernel_isa_name(enum kernel_isa isa) {
    switch (isa) {
    case KERNEL_ISA_AVX512:
        return "avx512";
    case KERNEL_ISA_AVX2:
        return "avx2";
    case KERNEL_ISA_SCALAR:
        break;
    }
    return "scalar";
}

int kernel_isa_supported(enum kernel_isa isa) {
#if HAVE_X86
    __builtin_cpu_init();
    switch (isa) {
    case KERNEL_ISA_AVX512:
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma");
    case KERNEL_ISA_AVX2:
        /* F16C (half -> float) came with Ivy Bridge, so every AVX2 CPU has it, but ask anyway
         * (CPUID directly: clang's __builtin_cpu_supports does not know "f16c"). */
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && has_f16c();
    case KERNEL_ISA_SCALAR:
        return 1;
    }
    return 0;
#else
    return isa == KERNEL_ISA_SCALAR;
#endif
}

enum kernel_isa kernel_isa_best(void) {
    enum kernel_isa best = KERNEL_ISA_SCALAR;
    if (kernel_isa_supported(KERNEL_ISA_AVX512)) {
        best = KERNEL_ISA_AVX512;
    } else if (kernel_isa_supported(KERNEL_ISA_AVX2)) {
        best = KERNEL_ISA_AVX2;
    }
    const char *want = getenv("GPTD_KERNEL");
    if (want != NULL) {
        if (strcmp(want, "scalar") == 0) {
            best = KERNEL_ISA_SCALAR;
        } else if (strcmp(want, "avx2") == 0 && best >= KERNEL_ISA_AVX2) {
            best = KERNEL_ISA_AVX2;
        }
    }
    return best;
}

float kernel_gelu_tanh_ref(float x) {
    float u = 0.7978845608028654f * (x + 0.044715f * x * x * x);
    float e = expf(fminf(fmaxf(-2.0f * u, -87.0f), 87.0f));
    return x / (1.0f + e);
}

float kernel_silu_ref(float x) {
    float e = expf(fminf(fmaxf(-x, -87.0f), 87.0f));
    return x / (1.0f + e);
}

static float apply_epilogue_ref(float acc, float b, float *dst, enum kernel_epilogue epilogue) {
    float t = acc + b;
    switch (epilogue) {
    case KERNEL_EPILOGUE_ADD:
        return *dst + t;
    case KERNEL_EPILOGUE_GELU_TANH:
        return kernel_gelu_tanh_ref(t);
    case KERNEL_EPILOGUE_STORE:
    case KERNEL_EPILOGUE_SWIGLU: /* handled by the callers */
        break;
    }
    return t;
}

void kernel_matmul_ref(const float *x, size_t ldx, const float *w, const float *bias, float *out,
                       size_t ldo, int32_t m, int32_t k, int32_t n, enum kernel_epilogue epilogue) {
    if (epilogue == KERNEL_EPILOGUE_SWIGLU) {
        for (int32_t i = 0; i < m; i++) {
            for (int32_t j = 0; j < n; j++) {
                float g = 0.0f;
                float u = 0.0f;
                for (int32_t kk = 0; kk < k; kk++) {
                    g = fmaf(x[(size_t)i * ldx + kk], w[(size_t)kk * 2 * n + j], g);
                    u = fmaf(x[(size_t)i * ldx + kk], w[(size_t)kk * 2 * n + n + j], u);
                }
                g += bias != NULL ? bias[j] : 0.0f;
                u += bias != NULL ? bias[n + j] : 0.0f;
                out[(size_t)i * ldo + j] = kernel_silu_ref(g) * u;
            }
        }
        return;
    }
    for (int32_t i = 0; i < m; i++) {
        for (int32_t j = 0; j < n; j++) {
            float acc = 0.0f;
            for (int32_t kk = 0; kk < k; kk++) {
                acc = fmaf(x[(size_t)i * ldx + kk], w[(size_t)kk * n + j], acc);
            }
            float *dst = &out[(size_t)i * ldo + j];
            *dst = apply_epilogue_ref(acc, bias != NULL ? bias[j] : 0.0f, dst, epilogue);
        }
    }
}

/* Byte offset of W[kk][j] inside a Q8 panel (kernels.h: groups of 8 quads, then scales). */
static size_t q8_offset(int32_t kk, int32_t j) {
    size_t g = (size_t)kk / KERNEL_Q8_GROUP;
    size_t t = (size_t)(kk % KERNEL_Q8_GROUP) / 4;
    return g * KERNEL_Q8_GROUP_BYTES + (t * KERNEL_NR + (size_t)j) * 4 + (size_t)(kk % 4);
}

/* The scales of group g of a Q8 panel. */
static const float *q8_scales(const char *panel, size_t g) {
    return (const float *)(const void *)(panel + g * KERNEL_Q8_GROUP_BYTES +
                                         KERNEL_Q8_GROUP * KERNEL_NR);
}

void kernel_q8_weight_at(const void *w_packed, int32_t k_dim, int32_t kk, int32_t n, int8_t *q,
                         float *scale) {
    const char *panel =
        (const char *)w_packed + (size_t)(n / KERNEL_NR) * kernel_panel_bytes(KERNEL_W_Q8, k_dim);
    *q = (int8_t)panel[q8_offset(kk, n % KERNEL_NR)];
    *scale = q8_scales(panel, (size_t)kk / KERNEL_Q8_GROUP)[n % KERNEL_NR];
}

float kernel_packed_get(enum kernel_wtype wt, const void *w_packed, int32_t k_dim, size_t i) {
    switch (wt) {
    case KERNEL_W_F16:
        return half_f16_to_f32(((const uint16_t *)w_packed)[i]);
    case KERNEL_W_BF16:
        return half_bf16_to_f32(((const uint16_t *)w_packed)[i]);
    case KERNEL_W_Q8: {
        size_t panel = (size_t)k_dim * KERNEL_NR;
        int32_t kk = (int32_t)(i % panel / KERNEL_NR);
        int32_t n = (int32_t)(i / panel * KERNEL_NR + i % KERNEL_NR);
        int8_t q;
        float scale;
        kernel_q8_weight_at(w_packed, k_dim, kk, n, &q, &scale);
        return (float)q * scale;
    }
    case KERNEL_W_F32:
        break;
    }
    return ((const float *)w_packed)[i];
}

/* One group of n values at stride apart: scale = amax / 127 and q = round(v / scale) clamped
 * to -127 .. 127 (a NaN fails the first compare and becomes 127, as fminf would make it).
 * Shared by weights and activations. */
static float quantize_group(const float *v, size_t stride, int32_t n, int8_t *q, size_t q_stride) {
    float amax = 0.0f;
    for (int32_t i = 0; i < n; i++) {
        float a = fabsf(v[(size_t)i * stride]);
        amax = a > amax ? a : amax;
    }
    float scale = amax / 127.0f;
    for (int32_t i = 0; i < n; i++) {
        float r = scale > 0.0f ? rintf(v[(size_t)i * stride] / scale) : 0.0f;
        r = r < 127.0f ? r : 127.0f;
        q[(size_t)i * q_stride] = (int8_t)(r > -127.0f ? r : -127.0f);
    }
    return scale;
}

int kernel_pack_q8(const float *packed, int32_t k, int32_t n_panels, void *dst) {
    size_t panel = (size_t)k * KERNEL_NR;
    for (size_t i = 0; i < panel * (size_t)n_panels; i++) {
        if (!isfinite(packed[i])) {
            return -1;
        }
    }
    size_t n_groups = kernel_q8_n_groups(k);
    for (int32_t p = 0; p < n_panels; p++) {
        const float *w = packed + (size_t)p * panel;
        char *base = (char *)dst + (size_t)p * kernel_panel_bytes(KERNEL_W_Q8, k);
        memset(base, 0, kernel_panel_bytes(KERNEL_W_Q8, k));
        for (size_t g = 0; g < n_groups; g++) {
            int32_t k0 = (int32_t)g * KERNEL_Q8_GROUP;
            int32_t len = k - k0 < KERNEL_Q8_GROUP ? k - k0 : KERNEL_Q8_GROUP;
            float *scales =
                (float *)(void *)(base + g * KERNEL_Q8_GROUP_BYTES + KERNEL_Q8_GROUP * KERNEL_NR);
            for (int32_t j = 0; j < KERNEL_NR; j++) {
                int8_t q[KERNEL_Q8_GROUP];
                scales[j] =
                    quantize_group(w + (size_t)k0 * KERNEL_NR + (size_t)j, KERNEL_NR, len, q, 1);
                for (int32_t i = 0; i < len; i++) {
                    base[q8_offset(k0 + i, j)] = (char)q[i];
                }
            }
        }
    }
    return 0;
}

static void quantize_rows_scalar(const float *x, size_t ldx, int32_t m, int32_t k, void *dst) {
    size_t n_groups = kernel_q8_n_groups(k);
    for (int32_t i = 0; i < m; i++) {
        int8_t *q = (int8_t *)dst + (size_t)i * kernel_q8_row_bytes(k);
        float *scales = (float *)(void *)(q + n_groups * KERNEL_Q8_GROUP);
        memset(q, 0, kernel_q8_row_bytes(k)); /* the padding past K and past the scales too */
        for (size_t g = 0; g < n_groups; g++) {
            int32_t k0 = (int32_t)g * KERNEL_Q8_GROUP;
            int32_t len = k - k0 < KERNEL_Q8_GROUP ? k - k0 : KERNEL_Q8_GROUP;
            scales[g] = quantize_group(x + (size_t)i * ldx + (size_t)k0, 1, len, q + k0, 1);
        }
    }
}

/* One Q8 output element of the reference: over the groups, the exact integer sum of the
 * group's products, then acc = fmaf(sum, x_scale * w_scale, acc). w_q / w_scale are read at
 * column j of rows ld apart. */
static float q8_dot_ref(const int8_t *xq, const float *xs, const int8_t *w_q, const float *w_scale,
                        size_t ld, int32_t k, size_t j) {
    float acc = 0.0f;
    for (size_t g = 0; g < kernel_q8_n_groups(k); g++) {
        int32_t sum = 0;
        for (int32_t kk = (int32_t)g * KERNEL_Q8_GROUP;
             kk < k && kk < (int32_t)(g + 1) * KERNEL_Q8_GROUP; kk++) {
            sum += (int32_t)xq[kk] * (int32_t)w_q[(size_t)kk * ld + j];
        }
        acc = fmaf((float)sum, xs[g] * w_scale[g * ld + j], acc);
    }
    return acc;
}

void kernel_matmul_q8_ref(const void *x_q, const int8_t *w_q, const float *w_scale,
                          const float *bias, float *out, size_t ldo, int32_t m, int32_t k,
                          int32_t n, enum kernel_epilogue epilogue) {
    size_t n_groups = kernel_q8_n_groups(k);
    int is_swiglu = epilogue == KERNEL_EPILOGUE_SWIGLU;
    size_t ld = (size_t)n * (is_swiglu ? 2 : 1);
    for (int32_t i = 0; i < m; i++) {
        const int8_t *xq = (const int8_t *)x_q + (size_t)i * kernel_q8_row_bytes(k);
        const float *xs = (const float *)(const void *)(xq + n_groups * KERNEL_Q8_GROUP);
        for (int32_t j = 0; j < n; j++) {
            float acc = q8_dot_ref(xq, xs, w_q, w_scale, ld, k, (size_t)j);
            float *dst = &out[(size_t)i * ldo + j];
            if (is_swiglu) {
                float u = q8_dot_ref(xq, xs, w_q, w_scale, ld, k, (size_t)(n + j));
                float g = acc + (bias != NULL ? bias[j] : 0.0f);
                u += bias != NULL ? bias[n + j] : 0.0f;
                *dst = kernel_silu_ref(g) * u;
            } else {
                *dst = apply_epilogue_ref(acc, bias != NULL ? bias[j] : 0.0f, dst, epilogue);
            }
        }
    }
}

/* Portable Q8 path: the reference arithmetic over the packed layout. */
static float q8_dot_packed(const int8_t *xq, const float *xs, const char *panel, int32_t k,
                           int32_t j) {
    float acc = 0.0f;
    for (size_t g = 0; g < kernel_q8_n_groups(k); g++) {
        int32_t sum = 0;
        for (int32_t kk = (int32_t)g * KERNEL_Q8_GROUP; kk < (int32_t)(g + 1) * KERNEL_Q8_GROUP;
             kk++) { /* the padding past K is zero on both sides */
            sum += (int32_t)xq[kk] * (int32_t)(int8_t)panel[q8_offset(kk, j)];
        }
        acc = fmaf((float)sum, xs[g] * q8_scales(panel, g)[j], acc);
    }
    return acc;
}

static void matmul_q8_scalar(const void *x_q, const void *w_packed, const float *bias, float *out,
                             size_t ldo, int32_t m, int32_t k, int32_t n, int32_t p_begin,
                             int32_t p_end, enum kernel_epilogue epilogue) {
    size_t n_groups = kernel_q8_n_groups(k);
    int is_swiglu = epilogue == KERNEL_EPILOGUE_SWIGLU;
    int32_t width = is_swiglu ? KERNEL_SWIGLU_HALF : KERNEL_NR;
    for (int32_t p = p_begin; p < p_end; p++) {
        const char *panel = (const char *)w_packed + (size_t)p * kernel_panel_bytes(KERNEL_W_Q8, k);
        int32_t c0 = p * width;
        int32_t n_cols = n - c0 < width ? n - c0 : width;
        const float *b = bias != NULL ? bias + (size_t)p * KERNEL_NR : NULL;
        for (int32_t i = 0; i < m; i++) {
            const int8_t *xq = (const int8_t *)x_q + (size_t)i * kernel_q8_row_bytes(k);
            const float *xs = (const float *)(const void *)(xq + n_groups * KERNEL_Q8_GROUP);
            for (int32_t j = 0; j < n_cols; j++) {
                float acc = q8_dot_packed(xq, xs, panel, k, j);
                float *dst = &out[(size_t)i * ldo + (size_t)(c0 + j)];
                if (is_swiglu) {
                    float u = q8_dot_packed(xq, xs, panel, k, j + KERNEL_SWIGLU_HALF);
                    float g = acc + (b != NULL ? b[j] : 0.0f);
                    u += b != NULL ? b[KERNEL_SWIGLU_HALF + j] : 0.0f;
                    *dst = kernel_silu_ref(g) * u;
                } else {
                    *dst = apply_epilogue_ref(acc, b != NULL ? b[j] : 0.0f, dst, epilogue);
                }
            }
        }
    }
}

/* Portable path: the reference arithmetic over the packed layout. */
static void matmul_scalar(const float *x, size_t ldx, const void *w_packed, enum kernel_wtype wt,
                          const float *bias, float *out, size_t ldo, int32_t m, int32_t k,
                          int32_t n, int32_t p_begin, int32_t p_end,
                          enum kernel_epilogue epilogue) {
    if (epilogue == KERNEL_EPILOGUE_SWIGLU) {
        for (int32_t p = p_begin; p < p_end; p++) {
            size_t wp = (size_t)p * (size_t)k * KERNEL_NR;
            int32_t c0 = p * KERNEL_SWIGLU_HALF;
            int32_t n_cols = n - c0 < KERNEL_SWIGLU_HALF ? n - c0 : KERNEL_SWIGLU_HALF;
            for (int32_t i = 0; i < m; i++) {
                for (int32_t j = 0; j < n_cols; j++) {
                    float g = 0.0f;
                    float u = 0.0f;
                    for (int32_t kk = 0; kk < k; kk++) {
                        size_t at = wp + (size_t)kk * KERNEL_NR + (size_t)j;
                        float xv = x[(size_t)i * ldx + kk];
                        g = fmaf(xv, kernel_packed_get(wt, w_packed, k, at), g);
                        u = fmaf(xv, kernel_packed_get(wt, w_packed, k, at + KERNEL_SWIGLU_HALF),
                                 u);
                    }
                    g += bias != NULL ? bias[(size_t)p * KERNEL_NR + (size_t)j] : 0.0f;
                    u += bias != NULL ? bias[(size_t)p * KERNEL_NR + KERNEL_SWIGLU_HALF + (size_t)j]
                                      : 0.0f;
                    out[(size_t)i * ldo + (size_t)(c0 + j)] = kernel_silu_ref(g) * u;
                }
            }
        }
        return;
    }
    for (int32_t p = p_begin; p < p_end; p++) {
        size_t wp = (size_t)p * (size_t)k * KERNEL_NR;
        int32_t n_cols = n - p * KERNEL_NR < KERNEL_NR ? n - p * KERNEL_NR : KERNEL_NR;
        for (int32_t i = 0; i < m; i++) {
            for (int32_t j = 0; j < n_cols; j++) {
                float acc = 0.0f;
                for (int32_t kk = 0; kk < k; kk++) {
                    float wv = kernel_packed_get(wt, w_packed, k, wp + (size_t)kk * KERNEL_NR + j);
                    acc = fmaf(x[(size_t)i * ldx + kk], wv, acc);
                }
                int32_t col = p * KERNEL_NR + j;
                float *dst = &out[(size_t)i * ldo + col];
                *dst = apply_epilogue_ref(acc, bias != NULL ? bias[col] : 0.0f, dst, epilogue);
            }
        }
    }
}

#if HAVE_X86

#define T512   __attribute__((target("avx512f,fma")))
#define T256   __attribute__((target("avx2,fma,f16c")))
#define INLINE static inline __attribute__((always_inline))

/* exp(x) for x in float range: Cephes-style range reduction and degree-6 polynomial, ~1 ulp. */
INLINE T512 __m512 exp512(__m512 x) {
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0f)), _mm512_set1_ps(87.0f));
    __m512 nf = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(nf, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(nf, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, nf);
}

INLINE T512 __m512 silu512(__m512 x) {
    __m512 e = exp512(_mm512_sub_ps(_mm512_setzero_ps(), x));
    return _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
}

INLINE T512 __m512 gelu512(__m512 x) {
    __m512 x3 = _mm512_mul_ps(_mm512_mul_ps(x, x), x);
    __m512 u = _mm512_mul_ps(_mm512_set1_ps(0.7978845608028654f),
                             _mm512_fmadd_ps(_mm512_set1_ps(0.044715f), x3, x));
    __m512 e = exp512(_mm512_mul_ps(_mm512_set1_ps(-2.0f), u));
    return _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
}

/* 16 packed weights at element i of wp, widened to float32. wt is a constant after inlining. */
INLINE T512 __m512 wload512(enum kernel_wtype wt, const void *wp, size_t i) {
    if (wt == KERNEL_W_F32) {
        return _mm512_load_ps((const float *)wp + i);
    }
    __m256i h = _mm256_loadu_si256((const __m256i *)((const uint16_t *)wp + i));
    if (wt == KERNEL_W_F16) {
        return _mm512_cvtph_ps(h);
    }
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/* One MR x 64 tile: out[0..mr) x [0..n_cols) of the panel at wp. mr and wt are constants after
 * inlining, so the accumulators live in registers. */
INLINE T512 void tile512(const int mr, enum kernel_wtype wt, const float *x, size_t ldx,
                         const void *wp, int32_t k, const float *bias, float *out, size_t ldo,
                         int32_t n_cols, enum kernel_epilogue epilogue) {
    __m512 acc[MR_512][4];
    for (int i = 0; i < mr; i++) {
        for (int j = 0; j < 4; j++) {
            acc[i][j] = _mm512_setzero_ps();
        }
    }
    for (int32_t kk = 0; kk < k; kk++) {
        size_t wk = (size_t)kk * KERNEL_NR;
        __m512 w0 = wload512(wt, wp, wk);
        __m512 w1 = wload512(wt, wp, wk + 16);
        __m512 w2 = wload512(wt, wp, wk + 32);
        __m512 w3 = wload512(wt, wp, wk + 48);
        for (int i = 0; i < mr; i++) {
            __m512 xv = _mm512_set1_ps(x[(size_t)i * ldx + kk]);
            acc[i][0] = _mm512_fmadd_ps(xv, w0, acc[i][0]);
            acc[i][1] = _mm512_fmadd_ps(xv, w1, acc[i][1]);
            acc[i][2] = _mm512_fmadd_ps(xv, w2, acc[i][2]);
            acc[i][3] = _mm512_fmadd_ps(xv, w3, acc[i][3]);
        }
    }
    if (epilogue == KERNEL_EPILOGUE_SWIGLU) {
        /* Registers 0-1: gate columns [0, 32); 2-3: the same up columns. n_cols <= 32. */
        for (int j = 0; j < 2; j++) {
            int32_t c0 = j * 16;
            if (c0 >= n_cols) {
                break;
            }
            __mmask16 mask = n_cols - c0 >= 16 ? (__mmask16)0xffff
                                               : (__mmask16)((1u << (unsigned)(n_cols - c0)) - 1u);
            __m512 bg = bias != NULL ? _mm512_loadu_ps(bias + c0) : _mm512_setzero_ps();
            __m512 bu = bias != NULL ? _mm512_loadu_ps(bias + 32 + c0) : _mm512_setzero_ps();
            for (int i = 0; i < mr; i++) {
                __m512 g = silu512(_mm512_add_ps(acc[i][j], bg));
                __m512 u = _mm512_add_ps(acc[i][j + 2], bu);
                _mm512_mask_storeu_ps(out + (size_t)i * ldo + c0, mask, _mm512_mul_ps(g, u));
            }
        }
        return;
    }
    for (int j = 0; j < 4; j++) {
        int32_t c0 = j * 16;
        if (c0 >= n_cols) {
            break;
        }
        __mmask16 mask = n_cols - c0 >= 16 ? (__mmask16)0xffff
                                           : (__mmask16)((1u << (unsigned)(n_cols - c0)) - 1u);
        __m512 b = bias != NULL ? _mm512_maskz_loadu_ps(mask, bias + c0) : _mm512_setzero_ps();
        for (int i = 0; i < mr; i++) {
            float *dst = out + (size_t)i * ldo + c0;
            __m512 v = _mm512_add_ps(acc[i][j], b);
            if (epilogue == KERNEL_EPILOGUE_ADD) {
                v = _mm512_add_ps(_mm512_maskz_loadu_ps(mask, dst), v);
            } else if (epilogue == KERNEL_EPILOGUE_GELU_TANH) {
                v = gelu512(v);
            }
            _mm512_mask_storeu_ps(dst, mask, v);
        }
    }
}

/* The panels [p_begin, p_end) for one weight type (a constant after inlining). */
INLINE T512 void matmul512_wt(enum kernel_wtype wt, const float *x, size_t ldx,
                              const void *w_packed, const float *bias, float *out, size_t ldo,
                              int32_t m, int32_t k, int32_t n, int32_t p_begin, int32_t p_end,
                              enum kernel_epilogue epilogue) {
    size_t w_size = wt == KERNEL_W_F32 ? sizeof(float) : sizeof(uint16_t);
    int is_swiglu = epilogue == KERNEL_EPILOGUE_SWIGLU;
    for (int32_t p = p_begin; p < p_end; p++) {
        const void *wp = (const char *)w_packed + (size_t)p * (size_t)k * KERNEL_NR * w_size;
        /* SWIGLU: a panel makes 32 output columns; its bias is the panel's 64 in packed order. */
        int32_t width = is_swiglu ? KERNEL_SWIGLU_HALF : KERNEL_NR;
        int32_t c0 = p * width;
        int32_t n_cols = n - c0 < width ? n - c0 : width;
        const float *b = bias != NULL ? bias + (size_t)p * KERNEL_NR : NULL;
        for (int32_t i = 0; i < m; i += MR_512) {
            const float *xi = x + (size_t)i * ldx;
            float *oi = out + (size_t)i * ldo + c0;
            switch (m - i >= MR_512 ? MR_512 : m - i) {
            case 6:
                tile512(6, wt, xi, ldx, wp, k, b, oi, ldo, n_cols, epilogue);
                break;
            case 5:
                tile512(5, wt, xi, ldx, wp, k, b, oi, ldo, n_cols, epilogue);
                break;
            case 4:
                tile512(4, wt, xi, ldx, wp, k, b, oi, ldo, n_cols, epilogue);
                break;
            case 3:
                tile512(3, wt, xi, ldx, wp, k, b, oi, ldo, n_cols, epilogue);
                break;
            case 2:
                tile512(2, wt, xi, ldx, wp, k, b, oi, ldo, n_cols, epilogue);
                break;
            default:
                tile512(1, wt, xi, ldx, wp, k, b, oi, ldo, n_cols, epilogue);
                break;
            }
        }
    }
}

static T512 void matmul512(const float *x, size_t ldx, const void *w_packed, enum kernel_wtype wt,
                           const float *bias, float *out, size_t ldo, int32_t m, int32_t k,
                           int32_t n, int32_t p_begin, int32_t p_end,
                           enum kernel_epilogue epilogue) {
    switch (wt) {
    case KERNEL_W_F16:
        matmul512_wt(KERNEL_W_F16, x, ldx, w_packed, bias, out, ldo, m, k, n, p_begin, p_end,
                     epilogue);
        break;
    case KERNEL_W_BF16:
        matmul512_wt(KERNEL_W_BF16, x, ldx, w_packed, bias, out, ldo, m, k, n, p_begin, p_end,
                     epilogue);
        break;
    case KERNEL_W_F32:
        matmul512_wt(KERNEL_W_F32, x, ldx, w_packed, bias, out, ldo, m, k, n, p_begin, p_end,
                     epilogue);
        break;
    case KERNEL_W_Q8:
        break; /* kernel_matmul runs Q8 on the AVX2 kernels (every AVX-512 CPU has AVX2) */
    }
}

static T512 float dot512(const float *a, const float *b, int32_t n) {
    __m512 acc = _mm512_setzero_ps();
    int32_t i = 0;
    for (; i + 16 <= n; i += 16) {
        acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc);
    }
    if (i < n) {
        __mmask16 mask = (__mmask16)((1u << (unsigned)(n - i)) - 1u);
        acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, a + i),
                              _mm512_maskz_loadu_ps(mask, b + i), acc);
    }
    return _mm512_reduce_add_ps(acc);
}

static T512 void axpy512(float alpha, const float *x, float *y, int32_t n) {
    __m512 a = _mm512_set1_ps(alpha);
    int32_t i = 0;
    for (; i + 16 <= n; i += 16) {
        _mm512_storeu_ps(y + i, _mm512_fmadd_ps(a, _mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i)));
    }
    if (i < n) {
        __mmask16 mask = (__mmask16)((1u << (unsigned)(n - i)) - 1u);
        __m512 v = _mm512_fmadd_ps(a, _mm512_maskz_loadu_ps(mask, x + i),
                                   _mm512_maskz_loadu_ps(mask, y + i));
        _mm512_mask_storeu_ps(y + i, mask, v);
    }
}

static T512 float exp_shift_sum512(float *x, int32_t n, float shift) {
    __m512 s = _mm512_set1_ps(shift);
    __m512 sum = _mm512_setzero_ps();
    int32_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 v = exp512(_mm512_sub_ps(_mm512_loadu_ps(x + i), s));
        _mm512_storeu_ps(x + i, v);
        sum = _mm512_add_ps(sum, v);
    }
    if (i < n) {
        __mmask16 mask = (__mmask16)((1u << (unsigned)(n - i)) - 1u);
        __m512 v = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(mask, x + i), s));
        _mm512_mask_storeu_ps(x + i, mask, v);
        sum = _mm512_mask_add_ps(sum, mask, sum, v);
    }
    return _mm512_reduce_add_ps(sum);
}

static T512 void gelu_inplace512(float *x, size_t n) {
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        _mm512_storeu_ps(x + i, gelu512(_mm512_loadu_ps(x + i)));
    }
    if (i < n) {
        __mmask16 mask = (__mmask16)((1u << (unsigned)(n - i)) - 1u);
        _mm512_mask_storeu_ps(x + i, mask, gelu512(_mm512_maskz_loadu_ps(mask, x + i)));
    }
}

/* 16 K or V elements at element i of base, widened to float32 (wt constant after inlining). */
INLINE T512 __m512 kvload512(enum kernel_wtype wt, const void *base, size_t i) {
    if (wt == KERNEL_W_F32) {
        return _mm512_loadu_ps((const float *)base + i);
    }
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)base + i)));
}

/* Attention for head size 16 * NC (NC = 4: 64, NC = 8: 128): q and the output accumulators live
 * in NC registers each. NC and wt are constants after inlining. */
INLINE T512 void attention512_wt(const int nc, enum kernel_wtype wt, const float *q,
                                 const void *k_base, const void *v_base, const int32_t *blocks,
                                 size_t block_stride, size_t row_stride, int32_t n, float scale,
                                 float *scores, float *out) {
    __m512 qv[8];
    for (int c = 0; c < nc; c++) {
        qv[c] = _mm512_loadu_ps(q + 16 * c);
    }
    float max = -INFINITY;
    for (int32_t t = 0; t < n; t++) {
        size_t k = (size_t)blocks[t / 16] * block_stride + (size_t)(t % 16) * row_stride;
        __m512 acc = _mm512_mul_ps(qv[0], kvload512(wt, k_base, k));
        for (int c = 1; c < nc; c++) {
            acc = _mm512_fmadd_ps(qv[c], kvload512(wt, k_base, k + 16 * (size_t)c), acc);
        }
        float s = _mm512_reduce_add_ps(acc) * scale;
        scores[t] = s;
        max = s > max ? s : max;
    }
    float inv = 1.0f / exp_shift_sum512(scores, n, max);
    __m512 o[8];
    for (int c = 0; c < nc; c++) {
        o[c] = _mm512_setzero_ps();
    }
    for (int32_t t = 0; t < n; t++) {
        size_t v = (size_t)blocks[t / 16] * block_stride + (size_t)(t % 16) * row_stride;
        __m512 p = _mm512_set1_ps(scores[t] * inv);
        for (int c = 0; c < nc; c++) {
            o[c] = _mm512_fmadd_ps(p, kvload512(wt, v_base, v + 16 * (size_t)c), o[c]);
        }
    }
    for (int c = 0; c < nc; c++) {
        _mm512_storeu_ps(out + 16 * c, o[c]);
    }
}

/* Head sizes 64 and 128, float32 or f16 K/V. */
static T512 void attention512(int32_t hs, enum kernel_wtype wt, const float *q, const void *k_base,
                              const void *v_base, const int32_t *blocks, size_t block_stride,
                              size_t row_stride, int32_t n, float scale, float *scores,
                              float *out) {
    if (hs == 64 && wt == KERNEL_W_F16) {
        attention512_wt(4, KERNEL_W_F16, q, k_base, v_base, blocks, block_stride, row_stride, n,
                        scale, scores, out);
    } else if (hs == 64) {
        attention512_wt(4, KERNEL_W_F32, q, k_base, v_base, blocks, block_stride, row_stride, n,
                        scale, scores, out);
    } else if (wt == KERNEL_W_F16) {
        attention512_wt(8, KERNEL_W_F16, q, k_base, v_base, blocks, block_stride, row_stride, n,
                        scale, scores, out);
    } else {
        attention512_wt(8, KERNEL_W_F32, q, k_base, v_base, blocks, block_stride, row_stride, n,
                        scale, scores, out);
    }
}

static T512 void f16_to_f32_512(const uint16_t *src, float *dst, size_t n) {
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(src + i))));
    }
    for (; i < n; i++) {
        dst[i] = half_f16_to_f32(src[i]);
    }
}

static T512 void f32_to_f16_512(const float *src, uint16_t *dst, size_t n) {
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256i h = _mm512_cvtps_ph(_mm512_loadu_ps(src + i),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        _mm256_storeu_si256((__m256i *)(dst + i), h);
    }
    for (; i < n; i++) {
        dst[i] = half_f32_to_f16(src[i]);
    }
}

/* ---- AVX2 + FMA ---- */

INLINE T256 __m256 exp256(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0f)), _mm256_set1_ps(87.0f));
    __m256 nf = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(nf, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(nf, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    /* 2^n by building the exponent bits; n is in [-126, 126] after the clamp. */
    __m256i e =
        _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(nf), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

INLINE T256 __m256 silu256(__m256 x) {
    __m256 e = exp256(_mm256_sub_ps(_mm256_setzero_ps(), x));
    return _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0f), e));
}

INLINE T256 __m256 gelu256(__m256 x) {
    __m256 x3 = _mm256_mul_ps(_mm256_mul_ps(x, x), x);
    __m256 u = _mm256_mul_ps(_mm256_set1_ps(0.7978845608028654f),
                             _mm256_fmadd_ps(_mm256_set1_ps(0.044715f), x3, x));
    __m256 e = exp256(_mm256_mul_ps(_mm256_set1_ps(-2.0f), u));
    return _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0f), e));
}

/* 8 packed weights at element i of wp, widened to float32. wt is a constant after inlining. */
INLINE T256 __m256 wload256(enum kernel_wtype wt, const void *wp, size_t i) {
    if (wt == KERNEL_W_F32) {
        return _mm256_load_ps((const float *)wp + i);
    }
    __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)wp + i));
    if (wt == KERNEL_W_F16) {
        return _mm256_cvtph_ps(h);
    }
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

/* The accumulation of one MR x 16 tile: acc[i] and acc[MR_256 + i] are row i's two vectors.
 * Kept out of line from the stores (one function per weight type): inlined into the tile, GCC
 * hoisted epilogue constants into ymm registers across the k loop and spilled two accumulators
 * to the stack, a store-forwarding chain every k (seen in objdump). */
INLINE T256 void tile256_acc(const int mr, enum kernel_wtype wt, const float *x, size_t ldx,
                             const void *wp, int32_t k, size_t off1, __m256 *acc) {
    __m256 a0[MR_256], a1[MR_256];
#pragma GCC unroll 8
    for (int i = 0; i < mr; i++) {
        a0[i] = _mm256_setzero_ps();
        a1[i] = _mm256_setzero_ps();
    }
    for (int32_t kk = 0; kk < k; kk++) {
        size_t wk = (size_t)kk * KERNEL_NR;
        __m256 w0 = wload256(wt, wp, wk);
        __m256 w1 = wload256(wt, wp, wk + off1);
#pragma GCC unroll 8
        for (int i = 0; i < mr; i++) {
            __m256 xv = _mm256_broadcast_ss(x + (size_t)i * ldx + kk);
            a0[i] = _mm256_fmadd_ps(xv, w0, a0[i]);
            a1[i] = _mm256_fmadd_ps(xv, w1, a1[i]);
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < mr; i++) {
        acc[i] = a0[i];
        acc[MR_256 + i] = a1[i];
    }
}

/* tile256_acc for 1..MR_256 rows, one out-of-line copy per weight type. */
#define TILE256_ACC_FN(name, wt)                                                                   \
    static T256 __attribute__((noinline)) void name(                                               \
        int mr, const float *x, size_t ldx, const void *wp, int32_t k, size_t off1, __m256 *acc) { \
        switch (mr) {                                                                              \
        case 6:                                                                                    \
            tile256_acc(6, wt, x, ldx, wp, k, off1, acc);                                          \
            break;                                                                                 \
        case 5:                                                                                    \
            tile256_acc(5, wt, x, ldx, wp, k, off1, acc);                                          \
            break;                                                                                 \
        case 4:                                                                                    \
            tile256_acc(4, wt, x, ldx, wp, k, off1, acc);                                          \
            break;                                                                                 \
        case 3:                                                                                    \
            tile256_acc(3, wt, x, ldx, wp, k, off1, acc);                                          \
            break;                                                                                 \
        case 2:                                                                                    \
            tile256_acc(2, wt, x, ldx, wp, k, off1, acc);                                          \
            break;                                                                                 \
        default:                                                                                   \
            tile256_acc(1, wt, x, ldx, wp, k, off1, acc);                                          \
            break;                                                                                 \
        }                                                                                          \
    }
TILE256_ACC_FN(tile256_acc_f32, KERNEL_W_F32)
TILE256_ACC_FN(tile256_acc_f16, KERNEL_W_F16)
TILE256_ACC_FN(tile256_acc_bf16, KERNEL_W_BF16)
#undef TILE256_ACC_FN

/*
 * The Q8 accumulation of one MR x 16 tile (acc as tile256_acc's; x_q rows ldq bytes apart, wp
 * the panel offset by the tile's first column, off1 the second vector's column offset). Per
 * group, each 32-bit lane of an int32 accumulator gathers one column's products four k at a
 * time: vpmaddubsw multiplies |w| (unsigned) by x with w's sign moved onto it (vpsignb), so
 * each 16-bit pair sum is at most 2 * 127 * 127 and never saturates, and vpmaddwd by ones adds
 * the pairs to 32 bits: the exact integer sum. Then one fmadd per group, as the reference.
 */
INLINE T256 void tile256_q8_acc(const int mr, const char *x_q, size_t ldq, const char *wp,
                                size_t n_groups, size_t off1, __m256 *acc) {
    const __m256i ones = _mm256_set1_epi16(1);
    /* The float accumulators stay in acc (memory, touched once per group): the registers are
     * for the integer sums, which change every 4 k. */
#pragma GCC unroll 4
    for (int i = 0; i < mr; i++) {
        acc[i] = _mm256_setzero_ps();
        acc[MR_256 + i] = _mm256_setzero_ps();
    }
    const float *xs = (const float *)(const void *)(x_q + n_groups * KERNEL_Q8_GROUP);
    for (size_t g = 0; g < n_groups; g++) {
        const char *gb = wp + g * KERNEL_Q8_GROUP_BYTES;
        __m256i s0[MR_Q8_256], s1[MR_Q8_256];
#pragma GCC unroll 4
        for (int i = 0; i < mr; i++) {
            s0[i] = _mm256_setzero_si256();
            s1[i] = _mm256_setzero_si256();
        }
#pragma GCC unroll 4
        for (int t = 0; t < KERNEL_Q8_GROUP / 4; t++) {
            __m256i w0 = _mm256_loadu_si256((const __m256i *)(const void *)(gb + t * 256));
            __m256i w1 =
                _mm256_loadu_si256((const __m256i *)(const void *)(gb + t * 256 + off1 * 4));
            __m256i u0 = _mm256_abs_epi8(w0);
            __m256i u1 = _mm256_abs_epi8(w1);
#pragma GCC unroll 4
            for (int i = 0; i < mr; i++) {
                int32_t quad;
                memcpy(&quad, x_q + (size_t)i * ldq + g * KERNEL_Q8_GROUP + (size_t)t * 4, 4);
                __m256i xb = _mm256_set1_epi32(quad);
                __m256i p0 = _mm256_maddubs_epi16(u0, _mm256_sign_epi8(xb, w0));
                __m256i p1 = _mm256_maddubs_epi16(u1, _mm256_sign_epi8(xb, w1));
                s0[i] = _mm256_add_epi32(s0[i], _mm256_madd_epi16(p0, ones));
                s1[i] = _mm256_add_epi32(s1[i], _mm256_madd_epi16(p1, ones));
            }
        }
        const float *ws = (const float *)(const void *)(gb + KERNEL_Q8_GROUP * KERNEL_NR);
        __m256 ws0 = _mm256_loadu_ps(ws);
        __m256 ws1 = _mm256_loadu_ps(ws + off1);
#pragma GCC unroll 4
        for (int i = 0; i < mr; i++) {
            const float *xsi = (const float *)(const void *)((const char *)xs + (size_t)i * ldq);
            __m256 xsv = _mm256_broadcast_ss(xsi + g);
            acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s0[i]), _mm256_mul_ps(xsv, ws0), acc[i]);
            acc[MR_256 + i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s1[i]), _mm256_mul_ps(xsv, ws1),
                                              acc[MR_256 + i]);
        }
    }
}

static T256 __attribute__((noinline)) void tile256_q8_acc_n(int mr, const char *x_q, size_t ldq,
                                                            const char *wp, size_t n_groups,
                                                            size_t off1, __m256 *acc) {
    switch (mr) {
    case 4:
        tile256_q8_acc(4, x_q, ldq, wp, n_groups, off1, acc);
        break;
    case 3:
        tile256_q8_acc(3, x_q, ldq, wp, n_groups, off1, acc);
        break;
    case 2:
        tile256_q8_acc(2, x_q, ldq, wp, n_groups, off1, acc);
        break;
    default:
        tile256_q8_acc(1, x_q, ldq, wp, n_groups, off1, acc);
        break;
    }
}

/* The epilogue of one MR x 16 tile (a quarter of a panel; with SWIGLU 8 gate and 8 up columns,
 * making 8 output columns): acc as tile256_acc leaves it. */
INLINE T256 void tile256_store(const int mr, const __m256 *acc, const float *bias, float *out,
                               size_t ldo, int32_t n_cols, enum kernel_epilogue epilogue) {
    const __m256 *a0 = acc;
    const __m256 *a1 = acc + MR_256;
    if (epilogue == KERNEL_EPILOGUE_SWIGLU) {
        int32_t n_valid = n_cols >= 8 ? 8 : n_cols;
        __m256 bg = bias != NULL ? _mm256_loadu_ps(bias) : _mm256_setzero_ps();
        __m256 bu = bias != NULL ? _mm256_loadu_ps(bias + KERNEL_SWIGLU_HALF) : _mm256_setzero_ps();
#pragma GCC unroll 8
        for (int i = 0; i < mr; i++) {
            __m256 v = _mm256_mul_ps(silu256(_mm256_add_ps(a0[i], bg)), _mm256_add_ps(a1[i], bu));
            float *dst = out + (size_t)i * ldo;
            if (n_valid == 8) {
                _mm256_storeu_ps(dst, v);
            } else {
                float o_buf[8];
                _mm256_storeu_ps(o_buf, v);
                memcpy(dst, o_buf, (size_t)n_valid * sizeof(float));
            }
        }
        return;
    }
#pragma GCC unroll 2
    for (int j = 0; j < 2; j++) {
        int32_t c0 = j * 8;
        if (c0 >= n_cols) {
            break;
        }
        int32_t n_valid = n_cols - c0 >= 8 ? 8 : n_cols - c0;
        /* A partial chunk goes through 8-float buffers so its arithmetic stays vector. */
        float b_buf[8] = {0};
        if (bias != NULL) {
            memcpy(b_buf, bias + c0, (size_t)n_valid * sizeof(float));
        }
        __m256 b = _mm256_loadu_ps(b_buf);
#pragma GCC unroll 8
        for (int i = 0; i < mr; i++) {
            float *dst = out + (size_t)i * ldo + c0;
            float o_buf[8] = {0};
            memcpy(o_buf, dst,
                   epilogue == KERNEL_EPILOGUE_ADD ? (size_t)n_valid * sizeof(float) : 0);
            __m256 v = _mm256_add_ps(j == 0 ? a0[i] : a1[i], b);
            if (epilogue == KERNEL_EPILOGUE_ADD) {
                v = _mm256_add_ps(_mm256_loadu_ps(o_buf), v);
            } else if (epilogue == KERNEL_EPILOGUE_GELU_TANH) {
                v = gelu256(v);
            }
            if (n_valid == 8) {
                _mm256_storeu_ps(dst, v);
            } else {
                _mm256_storeu_ps(o_buf, v);
                memcpy(dst, o_buf, (size_t)n_valid * sizeof(float));
            }
        }
    }
}

/* One MR x 16 tile (a quarter of a panel; wp already offset to it, rows still 64 apart): two
 * accumulators per row, so 6 rows use 12 of the 16 ymm registers and the two weight vectors and
 * the broadcast fit beside them (a wider tile spills accumulators to the stack every k). With
 * SWIGLU the two are 8 gate columns and the same 8 up columns 32 further on. */
INLINE T256 void tile256(const int mr, enum kernel_wtype wt, const float *x, size_t ldx,
                         const void *wp, int32_t k, const float *bias, float *out, size_t ldo,
                         int32_t n_cols, enum kernel_epilogue epilogue) {
    __m256 acc[2 * MR_256];
    const size_t off1 = epilogue == KERNEL_EPILOGUE_SWIGLU ? KERNEL_SWIGLU_HALF : 8;
    if (wt == KERNEL_W_F32) {
        tile256_acc_f32(mr, x, ldx, wp, k, off1, acc);
    } else if (wt == KERNEL_W_F16) {
        tile256_acc_f16(mr, x, ldx, wp, k, off1, acc);
    } else {
        tile256_acc_bf16(mr, x, ldx, wp, k, off1, acc);
    }
    tile256_store(mr, acc, bias, out, ldo, n_cols, epilogue);
}

/* The accumulation of row256: a[j] holds columns 8j .. 8j + 7 of the panel. Out of line (one
 * copy per weight type) for the reason tile256_acc is: inlined beside the stores, GCC kept all
 * eight accumulators on the stack (seen in objdump). */
INLINE T256 void row256_acc(enum kernel_wtype wt, const float *x, const void *wp, int32_t k,
                            __m256 *acc) {
    __m256 a[8];
#pragma GCC unroll 8
    for (int j = 0; j < 8; j++) {
        a[j] = _mm256_setzero_ps();
    }
    for (int32_t kk = 0; kk < k; kk++) {
        size_t wk = (size_t)kk * KERNEL_NR;
        __m256 xv = _mm256_broadcast_ss(x + kk);
#pragma GCC unroll 8
        for (int j = 0; j < 8; j++) {
            a[j] = _mm256_fmadd_ps(xv, wload256(wt, wp, wk + 8 * (size_t)j), a[j]);
        }
    }
#pragma GCC unroll 8
    for (int j = 0; j < 8; j++) {
        acc[j] = a[j];
    }
}

#define ROW256_ACC_FN(name, wt)                                                                    \
    static T256 __attribute__((noinline)) void name(const float *x, const void *wp, int32_t k,     \
                                                    __m256 *acc) {                                 \
        row256_acc(wt, x, wp, k, acc);                                                             \
    }
ROW256_ACC_FN(row256_acc_f32, KERNEL_W_F32)
ROW256_ACC_FN(row256_acc_f16, KERNEL_W_F16)
ROW256_ACC_FN(row256_acc_bf16, KERNEL_W_BF16)
#undef ROW256_ACC_FN

/* row256_acc for Q8: one quantized row across a whole panel, the integer sums of each group
 * as tile256_q8_acc's, eight int32 accumulators. */
static T256 __attribute__((noinline)) void row256_q8_acc(const char *x_q, const char *wp,
                                                         size_t n_groups, __m256 *acc) {
    const __m256i ones = _mm256_set1_epi16(1);
    /* As in tile256_q8_acc, the float accumulators live in acc and the registers hold the
     * eight integer sums (unrolling the quads as well made GCC spill them). */
    for (int j = 0; j < 8; j++) {
        acc[j] = _mm256_setzero_ps();
    }
    const float *xs = (const float *)(const void *)(x_q + n_groups * KERNEL_Q8_GROUP);
    for (size_t g = 0; g < n_groups; g++) {
        const char *gb = wp + g * KERNEL_Q8_GROUP_BYTES;
        __m256i s[8];
        /* Two halves of four columns vectors: eight sums plus the temporaries do not fit. */
#pragma GCC unroll 2
        for (int h = 0; h < 8; h += 4) {
#pragma GCC unroll 4
            for (int j = 0; j < 4; j++) {
                s[h + j] = _mm256_setzero_si256();
            }
#pragma GCC unroll 4
            for (int t = 0; t < KERNEL_Q8_GROUP / 4; t++) {
                int32_t quad;
                memcpy(&quad, x_q + g * KERNEL_Q8_GROUP + (size_t)t * 4, 4);
                __m256i xb = _mm256_set1_epi32(quad);
#pragma GCC unroll 4
                for (int j = 0; j < 4; j++) {
                    __m256i w = _mm256_loadu_si256(
                        (const __m256i *)(const void *)(gb + t * 256 + (h + j) * 32));
                    __m256i p = _mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(xb, w));
                    s[h + j] = _mm256_add_epi32(s[h + j], _mm256_madd_epi16(p, ones));
                }
            }
        }
        const float *ws = (const float *)(const void *)(gb + KERNEL_Q8_GROUP * KERNEL_NR);
        __m256 xsv = _mm256_broadcast_ss(xs + g);
#pragma GCC unroll 8
        for (int j = 0; j < 8; j++) {
            acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s[j]),
                                     _mm256_mul_ps(xsv, _mm256_loadu_ps(ws + 8 * j)), acc[j]);
        }
    }
}

/* The epilogue of row256: a[j] holds columns 8j .. 8j + 7 of the panel (SWIGLU: a[0..3] gate,
 * a[4..7] up, making 32 output columns). */
INLINE T256 void row256_store(const __m256 *a, const float *bias, float *out, int32_t n_cols,
                              enum kernel_epilogue epilogue) {
    float buf[KERNEL_NR];
    if (epilogue == KERNEL_EPILOGUE_SWIGLU) {
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) {
            __m256 bg = bias != NULL ? _mm256_loadu_ps(bias + 8 * j) : _mm256_setzero_ps();
            __m256 bu = bias != NULL ? _mm256_loadu_ps(bias + KERNEL_SWIGLU_HALF + 8 * j)
                                     : _mm256_setzero_ps();
            _mm256_storeu_ps(buf + 8 * j, _mm256_mul_ps(silu256(_mm256_add_ps(a[j], bg)),
                                                        _mm256_add_ps(a[j + 4], bu)));
        }
        memcpy(out, buf, (size_t)n_cols * sizeof(float));
        return;
    }
    float b_buf[KERNEL_NR] = {0};
    float o_buf[KERNEL_NR] = {0};
    if (bias != NULL) {
        memcpy(b_buf, bias, (size_t)n_cols * sizeof(float));
    }
    if (epilogue == KERNEL_EPILOGUE_ADD) {
        memcpy(o_buf, out, (size_t)n_cols * sizeof(float));
    }
#pragma GCC unroll 8
    for (int j = 0; j < 8; j++) {
        __m256 v = _mm256_add_ps(a[j], _mm256_loadu_ps(b_buf + 8 * j));
        if (epilogue == KERNEL_EPILOGUE_ADD) {
            v = _mm256_add_ps(_mm256_loadu_ps(o_buf + 8 * j), v);
        } else if (epilogue == KERNEL_EPILOGUE_GELU_TANH) {
            v = gelu256(v);
        }
        _mm256_storeu_ps(buf + 8 * j, v);
    }
    memcpy(out, buf, (size_t)n_cols * sizeof(float));
}

/* One row across a whole panel (64 columns, 8 accumulators; SWIGLU: 32 gate and 32 up columns,
 * making 32 output columns): the decode-at-batch-1 case, bound by streaming the weights, where
 * reading each panel front to back once beats four strided passes. The same one accumulator per
 * output element, in the same k order, as the tiles. */
INLINE T256 void row256(enum kernel_wtype wt, const float *x, const void *wp, int32_t k,
                        const float *bias, float *out, int32_t n_cols,
                        enum kernel_epilogue epilogue) {
    __m256 a[8];
    if (wt == KERNEL_W_F32) {
        row256_acc_f32(x, wp, k, a);
    } else if (wt == KERNEL_W_F16) {
        row256_acc_f16(x, wp, k, a);
    } else {
        row256_acc_bf16(x, wp, k, a);
    }
    row256_store(a, bias, out, n_cols, epilogue);
}

/* Where panel p's output columns start, and its bias (SWIGLU: a panel makes 32 output columns;
 * its bias is the panel's 64 in packed order). */
static inline int32_t panel_first_column(int32_t p, enum kernel_epilogue epilogue) {
    return p * (epilogue == KERNEL_EPILOGUE_SWIGLU ? KERNEL_SWIGLU_HALF : KERNEL_NR);
}

INLINE T256 void matmul256_wt(enum kernel_wtype wt, const float *x, size_t ldx,
                              const void *w_packed, const float *bias, float *out, size_t ldo,
                              int32_t m, int32_t k, int32_t n, int32_t p_begin, int32_t p_end,
                              enum kernel_epilogue epilogue) {
    size_t w_size = kernel_wtype_size(wt);
    size_t panel_bytes = kernel_panel_bytes(wt, k);
    /* A panel is walked in four quarters of 16 columns (SWIGLU: 8 gate + 8 up columns, making 8
     * output columns each). */
    int is_swiglu = epilogue == KERNEL_EPILOGUE_SWIGLU;
    int32_t step = is_swiglu ? 8 : 16;
    int32_t width = is_swiglu ? KERNEL_SWIGLU_HALF : KERNEL_NR;
    if (m == 1) {
        for (int32_t p = p_begin; p < p_end; p++) {
            int32_t c0 = panel_first_column(p, epilogue);
            const char *wp = (const char *)w_packed + (size_t)p * panel_bytes;
            const float *b = bias == NULL ? NULL
                             : is_swiglu  ? bias + (size_t)p * KERNEL_NR
                                          : bias + c0;
            row256(wt, x, wp, k, b, out + c0, n - c0 < width ? n - c0 : width, epilogue);
        }
        return;
    }
    for (int32_t p = p_begin; p < p_end; p++) {
        for (int32_t q = 0; q < 4; q++) {
            int32_t c0 = panel_first_column(p, epilogue) + q * step;
            if (c0 >= n) {
                break;
            }
            const void *wp =
                (const char *)w_packed + (size_t)p * panel_bytes + (size_t)q * step * w_size;
            int32_t n_cols = n - c0 < step ? n - c0 : step;
            const float *b = bias == NULL ? NULL
                             : is_swiglu  ? bias + (size_t)p * KERNEL_NR + (size_t)q * step
                                          : bias + c0;
            for (int32_t i = 0; i < m; i += MR_256) {
                const float *xi = x + (size_t)i * ldx;
                float *oi = out + (size_t)i * ldo + c0;
                switch (m - i >= MR_256 ? MR_256 : m - i) {
                case 6:
                    tile256(6, wt, xi, ldx, wp, k, b, oi, ldo, n_cols, epilogue);
                    break;
                case 5:
                    tile256(5, wt, xi, ldx, wp, k, b, oi, ldo, n_cols, epilogue);
                    break;
                case 4:
                    tile256(4, wt, xi, ldx, wp, k, b, oi, ldo, n_cols, epilogue);
                    break;
                case 3:
                    tile256(3, wt, xi, ldx, wp, k, b, oi, ldo, n_cols, epilogue);
                    break;
                case 2:
                    tile256(2, wt, xi, ldx, wp, k, b, oi, ldo, n_cols, epilogue);
                    break;
                default:
                    tile256(1, wt, xi, ldx, wp, k, b, oi, ldo, n_cols, epilogue);
                    break;
                }
            }
        }
    }
}

static T256 void matmul256(const float *x, size_t ldx, const void *w_packed, enum kernel_wtype wt,
                           const float *bias, float *out, size_t ldo, int32_t m, int32_t k,
                           int32_t n, int32_t p_begin, int32_t p_end,
                           enum kernel_epilogue epilogue) {
    switch (wt) {
    case KERNEL_W_F16:
        matmul256_wt(KERNEL_W_F16, x, ldx, w_packed, bias, out, ldo, m, k, n, p_begin, p_end,
                     epilogue);
        break;
    case KERNEL_W_BF16:
        matmul256_wt(KERNEL_W_BF16, x, ldx, w_packed, bias, out, ldo, m, k, n, p_begin, p_end,
                     epilogue);
        break;
    case KERNEL_W_F32:
        matmul256_wt(KERNEL_W_F32, x, ldx, w_packed, bias, out, ldo, m, k, n, p_begin, p_end,
                     epilogue);
        break;
    case KERNEL_W_Q8:
        break; /* kernel_matmul_q8's */
    }
}

/* kernel_matmul_q8 on AVX2: panels as matmul256_wt walks them, MR_Q8_256 rows per tile (with the
 * int32 sums beside the float accumulators, taller tiles spill). */
static T256 void matmul256_q8(const void *x_q, const void *w_packed, const float *bias, float *out,
                              size_t ldo, int32_t m, int32_t k, int32_t n, int32_t p_begin,
                              int32_t p_end, enum kernel_epilogue epilogue) {
    size_t n_groups = kernel_q8_n_groups(k);
    size_t panel_bytes = kernel_panel_bytes(KERNEL_W_Q8, k);
    size_t ldq = kernel_q8_row_bytes(k);
    int is_swiglu = epilogue == KERNEL_EPILOGUE_SWIGLU;
    int32_t step = is_swiglu ? 8 : 16;
    int32_t width = is_swiglu ? KERNEL_SWIGLU_HALF : KERNEL_NR;
    const size_t off1 = is_swiglu ? KERNEL_SWIGLU_HALF : 8;
    if (m == 1) {
        for (int32_t p = p_begin; p < p_end; p++) {
            int32_t c0 = panel_first_column(p, epilogue);
            const float *b = bias == NULL ? NULL
                             : is_swiglu  ? bias + (size_t)p * KERNEL_NR
                                          : bias + c0;
            __m256 a[8];
            row256_q8_acc(x_q, (const char *)w_packed + (size_t)p * panel_bytes, n_groups, a);
            row256_store(a, b, out + c0, n - c0 < width ? n - c0 : width, epilogue);
        }
        return;
    }
    for (int32_t p = p_begin; p < p_end; p++) {
        for (int32_t q = 0; q < 4; q++) {
            int32_t c0 = panel_first_column(p, epilogue) + q * step;
            if (c0 >= n) {
                break;
            }
            const char *wp =
                (const char *)w_packed + (size_t)p * panel_bytes + (size_t)q * step * 4;
            int32_t n_cols = n - c0 < step ? n - c0 : step;
            const float *b = bias == NULL ? NULL
                             : is_swiglu  ? bias + (size_t)p * KERNEL_NR + (size_t)q * step
                                          : bias + c0;
            for (int32_t i = 0; i < m; i += MR_Q8_256) {
                int mr = m - i >= MR_Q8_256 ? MR_Q8_256 : m - i;
                __m256 acc[2 * MR_256];
                tile256_q8_acc_n(mr, (const char *)x_q + (size_t)i * ldq, ldq, wp, n_groups, off1,
                                 acc);
                float *oi = out + (size_t)i * ldo + c0;
                switch (mr) {
                case 4:
                    tile256_store(4, acc, b, oi, ldo, n_cols, epilogue);
                    break;
                case 3:
                    tile256_store(3, acc, b, oi, ldo, n_cols, epilogue);
                    break;
                case 2:
                    tile256_store(2, acc, b, oi, ldo, n_cols, epilogue);
                    break;
                default:
                    tile256_store(1, acc, b, oi, ldo, n_cols, epilogue);
                    break;
                }
            }
        }
    }
}

/* kernel_quantize_rows on AVX2, byte-equal to quantize_group: the group's max |x| (max_ps keeps
 * the running max when x is NaN, as the scalar compare does; max is exact in any order), the
 * same division and round-to-nearest-even, and min_ps(r, 127) gives 127 for a NaN as fminf
 * does. A partial last group goes through the scalar code. */
static T256 void quantize_rows256(const float *x, size_t ldx, int32_t m, int32_t k, void *dst) {
    size_t n_groups = kernel_q8_n_groups(k);
    const __m256 sign_off = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    for (int32_t i = 0; i < m; i++) {
        int8_t *q = (int8_t *)dst + (size_t)i * kernel_q8_row_bytes(k);
        float *scales = (float *)(void *)(q + n_groups * KERNEL_Q8_GROUP);
        const float *xi = x + (size_t)i * ldx;
        size_t used = n_groups * (KERNEL_Q8_GROUP + sizeof(float));
        memset((char *)q + used, 0, kernel_q8_row_bytes(k) - used);
        for (size_t g = 0; g < n_groups; g++) {
            int32_t k0 = (int32_t)g * KERNEL_Q8_GROUP;
            if (k - k0 < KERNEL_Q8_GROUP) {
                memset(q + k0, 0, KERNEL_Q8_GROUP);
                scales[g] = quantize_group(xi + k0, 1, k - k0, q + k0, 1);
                continue;
            }
            __m256 v[4];
            __m256 mx = _mm256_setzero_ps();
            for (int j = 0; j < 4; j++) {
                v[j] = _mm256_loadu_ps(xi + k0 + 8 * j);
                mx = _mm256_max_ps(_mm256_and_ps(v[j], sign_off), mx);
            }
            __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
            m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
            m4 = _mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1));
            float scale = _mm_cvtss_f32(m4) / 127.0f;
            scales[g] = scale;
            if (!(scale > 0.0f)) {
                memset(q + k0, 0, KERNEL_Q8_GROUP);
                continue;
            }
            __m256 sv = _mm256_set1_ps(scale);
            __m256i r[4];
            for (int j = 0; j < 4; j++) {
                __m256 t = _mm256_round_ps(_mm256_div_ps(v[j], sv),
                                           _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
                t = _mm256_max_ps(_mm256_min_ps(t, _mm256_set1_ps(127.0f)),
                                  _mm256_set1_ps(-127.0f));
                r[j] = _mm256_cvtps_epi32(t);
            }
            /* packs work within 128-bit lanes: 32 -> 16 -> 8 bits, then put the dwords back in
             * order. */
            __m256i h01 = _mm256_packs_epi32(r[0], r[1]);
            __m256i h23 = _mm256_packs_epi32(r[2], r[3]);
            __m256i b = _mm256_packs_epi16(h01, h23);
            b = _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            _mm256_storeu_si256((__m256i *)(void *)(q + k0), b);
        }
    }
}

INLINE T256 float hsum256(__m256 v) {
    __m128 lo = _mm256_castps256_ps128(v);
    __m128 hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_shuffle_ps(lo, lo, 1));
    return _mm_cvtss_f32(lo);
}

static T256 float dot256(const float *a, const float *b, int32_t n) {
    __m256 acc = _mm256_setzero_ps();
    int32_t i = 0;
    for (; i + 8 <= n; i += 8) {
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
    }
    float sum = hsum256(acc);
    for (; i < n; i++) {
        sum = fmaf(a[i], b[i], sum);
    }
    return sum;
}

static T256 void axpy256(float alpha, const float *x, float *y, int32_t n) {
    __m256 a = _mm256_set1_ps(alpha);
    int32_t i = 0;
    for (; i + 8 <= n; i += 8) {
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(a, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    }
    for (; i < n; i++) {
        y[i] = fmaf(alpha, x[i], y[i]);
    }
}

static T256 float exp_shift_sum256(float *x, int32_t n, float shift) {
    __m256 s = _mm256_set1_ps(shift);
    __m256 sum = _mm256_setzero_ps();
    int32_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = exp256(_mm256_sub_ps(_mm256_loadu_ps(x + i), s));
        _mm256_storeu_ps(x + i, v);
        sum = _mm256_add_ps(sum, v);
    }
    float total = hsum256(sum);
    if (i < n) {
        float buf[8] = {0};
        memcpy(buf, x + i, (size_t)(n - i) * sizeof(float));
        __m256 v = exp256(_mm256_sub_ps(_mm256_loadu_ps(buf), s));
        _mm256_storeu_ps(buf, v);
        memcpy(x + i, buf, (size_t)(n - i) * sizeof(float));
        for (int32_t j = 0; j < n - i; j++) {
            total += buf[j];
        }
    }
    return total;
}

static T256 void gelu_inplace256(float *x, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        _mm256_storeu_ps(x + i, gelu256(_mm256_loadu_ps(x + i)));
    }
    if (i < n) {
        float buf[8] = {0};
        memcpy(buf, x + i, (n - i) * sizeof(float));
        _mm256_storeu_ps(buf, gelu256(_mm256_loadu_ps(buf)));
        memcpy(x + i, buf, (n - i) * sizeof(float));
    }
}

static T256 void f16_to_f32_256(const uint16_t *src, float *dst, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
    }
    for (; i < n; i++) {
        dst[i] = half_f16_to_f32(src[i]);
    }
}

static T256 void f32_to_f16_256(const float *src, uint16_t *dst, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT);
        _mm_storeu_si128((__m128i *)(dst + i), h);
    }
    for (; i < n; i++) {
        dst[i] = half_f32_to_f16(src[i]);
    }
}

/* 8 K or V elements at element i of base, widened to float32 (wt constant after inlining). */
INLINE T256 __m256 kvload256(enum kernel_wtype wt, const void *base, size_t i) {
    if (wt == KERNEL_W_F32) {
        return _mm256_loadu_ps((const float *)base + i);
    }
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)base + i)));
}

/* The 8 horizontal sums of a[0..7], in one vector (lane j: the sum of a[j]). */
INLINE T256 __m256 hsum8x256(const __m256 *a) {
    __m256 h0 = _mm256_hadd_ps(a[0], a[1]);
    __m256 h1 = _mm256_hadd_ps(a[2], a[3]);
    __m256 h2 = _mm256_hadd_ps(a[4], a[5]);
    __m256 h3 = _mm256_hadd_ps(a[6], a[7]);
    __m256 g0 = _mm256_hadd_ps(h0, h1); /* a0..a3: low half of each, then high half */
    __m256 g1 = _mm256_hadd_ps(h2, h3);
    return _mm256_add_ps(_mm256_permute2f128_ps(g0, g1, 0x20),
                         _mm256_permute2f128_ps(g0, g1, 0x31));
}

/* Attention for head size 8 * NC (NC = 8: 64, NC = 16: 128). Scores of 8 positions at a time
 * (8 independent accumulator chains, one in-register reduction; a group of 8 never crosses a
 * 16-row block), then the weighted V rows into 8 output registers (two passes for 128). The
 * generic path called a dot and an axpy per position: one dependent FMA chain and a horizontal
 * sum per score, and the output loaded and stored per position. Every row's result depends on
 * its own sequence only. NC and wt are constants after inlining. */
INLINE T256 void attention256_wt(const int nc, enum kernel_wtype wt, const float *q,
                                 const void *k_base, const void *v_base, const int32_t *blocks,
                                 size_t block_stride, size_t row_stride, int32_t n, float scale,
                                 float *scores, float *out) {
    __m256 vscale = _mm256_set1_ps(scale);
    __m256 vmax = _mm256_set1_ps(-INFINITY);
    int32_t t = 0;
    for (; t + 8 <= n; t += 8) {
        size_t k0 = (size_t)blocks[t / 16] * block_stride + (size_t)(t % 16) * row_stride;
        __m256 acc[8];
        __m256 q0 = _mm256_loadu_ps(q);
#pragma GCC unroll 8
        for (int j = 0; j < 8; j++) {
            acc[j] = _mm256_mul_ps(q0, kvload256(wt, k_base, k0 + (size_t)j * row_stride));
        }
#pragma GCC unroll 16
        for (int c = 1; c < nc; c++) {
            __m256 qc = _mm256_loadu_ps(q + 8 * c);
#pragma GCC unroll 8
            for (int j = 0; j < 8; j++) {
                acc[j] = _mm256_fmadd_ps(
                    qc, kvload256(wt, k_base, k0 + (size_t)j * row_stride + 8 * (size_t)c), acc[j]);
            }
        }
        __m256 s = _mm256_mul_ps(hsum8x256(acc), vscale);
        _mm256_storeu_ps(scores + t, s);
        vmax = _mm256_max_ps(vmax, s);
    }
    float lanes[8];
    _mm256_storeu_ps(lanes, vmax);
    float max = -INFINITY;
    for (int j = 0; j < 8; j++) {
        max = lanes[j] > max ? lanes[j] : max;
    }
    for (; t < n; t++) {
        size_t k = (size_t)blocks[t / 16] * block_stride + (size_t)(t % 16) * row_stride;
        __m256 acc = _mm256_mul_ps(_mm256_loadu_ps(q), kvload256(wt, k_base, k));
#pragma GCC unroll 16
        for (int c = 1; c < nc; c++) {
            acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + 8 * c),
                                  kvload256(wt, k_base, k + 8 * (size_t)c), acc);
        }
        float sc = hsum256(acc) * scale;
        scores[t] = sc;
        max = sc > max ? sc : max;
    }
    float inv = 1.0f / exp_shift_sum256(scores, n, max);
#pragma GCC unroll 2
    for (int half = 0; half < nc / 8; half++) {
        __m256 o[8];
#pragma GCC unroll 8
        for (int c = 0; c < 8; c++) {
            o[c] = _mm256_setzero_ps();
        }
        for (int32_t u = 0; u < n; u++) {
            size_t v = (size_t)blocks[u / 16] * block_stride + (size_t)(u % 16) * row_stride +
                       64 * (size_t)half;
            __m256 pv = _mm256_set1_ps(scores[u] * inv);
#pragma GCC unroll 8
            for (int c = 0; c < 8; c++) {
                o[c] = _mm256_fmadd_ps(pv, kvload256(wt, v_base, v + 8 * (size_t)c), o[c]);
            }
        }
#pragma GCC unroll 8
        for (int c = 0; c < 8; c++) {
            _mm256_storeu_ps(out + 64 * half + 8 * c, o[c]);
        }
    }
}

/* Head sizes 64 and 128, float32 or f16 K/V. */
static T256 void attention256(int32_t hs, enum kernel_wtype wt, const float *q, const void *k_base,
                              const void *v_base, const int32_t *blocks, size_t block_stride,
                              size_t row_stride, int32_t n, float scale, float *scores,
                              float *out) {
    if (hs == 64 && wt == KERNEL_W_F16) {
        attention256_wt(8, KERNEL_W_F16, q, k_base, v_base, blocks, block_stride, row_stride, n,
                        scale, scores, out);
    } else if (hs == 64) {
        attention256_wt(8, KERNEL_W_F32, q, k_base, v_base, blocks, block_stride, row_stride, n,
                        scale, scores, out);
    } else if (wt == KERNEL_W_F16) {
        attention256_wt(16, KERNEL_W_F16, q, k_base, v_base, blocks, block_stride, row_stride, n,
                        scale, scores, out);
    } else {
        attention256_wt(16, KERNEL_W_F32, q, k_base, v_base, blocks, block_stride, row_stride, n,
                        scale, scores, out);
    }
}

#endif /* HAVE_X86 */

void kernel_matmul(enum kernel_isa isa, const float *x, size_t ldx, const void *w_packed,
                   enum kernel_wtype wt, const float *bias, float *out, size_t ldo, int32_t m,
                   int32_t k, int32_t n, int32_t p_begin, int32_t p_end,
                   enum kernel_epilogue epilogue) {
#if HAVE_X86
    if (wt == KERNEL_W_Q8) {
        abort(); /* a caller bug: 8-bit weights multiply quantized rows (kernel_matmul_q8) */
    }
    if (isa == KERNEL_ISA_AVX512) {
        matmul512(x, ldx, w_packed, wt, bias, out, ldo, m, k, n, p_begin, p_end, epilogue);
        return;
    }
    if (isa == KERNEL_ISA_AVX2) {
        matmul256(x, ldx, w_packed, wt, bias, out, ldo, m, k, n, p_begin, p_end, epilogue);
        return;
    }
#endif
    (void)isa;
    matmul_scalar(x, ldx, w_packed, wt, bias, out, ldo, m, k, n, p_begin, p_end, epilogue);
}

void kernel_quantize_rows(enum kernel_isa isa, const float *x, size_t ldx, int32_t m, int32_t k,
                          void *dst) {
#if HAVE_X86
    if (isa == KERNEL_ISA_AVX2 || isa == KERNEL_ISA_AVX512) {
        quantize_rows256(x, ldx, m, k, dst);
        return;
    }
#endif
    (void)isa;
    quantize_rows_scalar(x, ldx, m, k, dst);
}

void kernel_matmul_q8(enum kernel_isa isa, const void *x_q, const void *w_packed, const float *bias,
                      float *out, size_t ldo, int32_t m, int32_t k, int32_t n, int32_t p_begin,
                      int32_t p_end, enum kernel_epilogue epilogue) {
#if HAVE_X86
    /* AVX2 kernels only so far (no AVX-512 VNNI machine to test one on); every AVX-512 CPU runs
     * them. */
    if (isa == KERNEL_ISA_AVX2 || isa == KERNEL_ISA_AVX512) {
        matmul256_q8(x_q, w_packed, bias, out, ldo, m, k, n, p_begin, p_end, epilogue);
        return;
    }
#endif
    (void)isa;
    matmul_q8_scalar(x_q, w_packed, bias, out, ldo, m, k, n, p_begin, p_end, epilogue);
}

float kernel_dot(enum kernel_isa isa, const float *a, const float *b, int32_t n) {
#if HAVE_X86
    if (isa == KERNEL_ISA_AVX512) {
        return dot512(a, b, n);
    }
    if (isa == KERNEL_ISA_AVX2) {
        return dot256(a, b, n);
    }
#endif
    (void)isa;
    float sum = 0.0f;
    for (int32_t i = 0; i < n; i++) {
        sum += a[i] * b[i];
    }
    return sum;
}

void kernel_axpy(enum kernel_isa isa, float alpha, const float *x, float *y, int32_t n) {
#if HAVE_X86
    if (isa == KERNEL_ISA_AVX512) {
        axpy512(alpha, x, y, n);
        return;
    }
    if (isa == KERNEL_ISA_AVX2) {
        axpy256(alpha, x, y, n);
        return;
    }
#endif
    (void)isa;
    for (int32_t i = 0; i < n; i++) {
        y[i] += alpha * x[i];
    }
}

float kernel_exp_shift_sum(enum kernel_isa isa, float *x, int32_t n, float shift) {
#if HAVE_X86
    if (isa == KERNEL_ISA_AVX512) {
        return exp_shift_sum512(x, n, shift);
    }
    if (isa == KERNEL_ISA_AVX2) {
        return exp_shift_sum256(x, n, shift);
    }
#endif
    (void)isa;
    float sum = 0.0f;
    for (int32_t i = 0; i < n; i++) {
        x[i] = expf(x[i] - shift);
        sum += x[i];
    }
    return sum;
}

void kernel_f16_to_f32(enum kernel_isa isa, const uint16_t *src, float *dst, size_t n) {
#if HAVE_X86
    if (isa == KERNEL_ISA_AVX512) {
        f16_to_f32_512(src, dst, n);
        return;
    }
    if (isa == KERNEL_ISA_AVX2) {
        f16_to_f32_256(src, dst, n);
        return;
    }
#endif
    (void)isa;
    for (size_t i = 0; i < n; i++) {
        dst[i] = half_f16_to_f32(src[i]);
    }
}

void kernel_f32_to_f16(enum kernel_isa isa, const float *src, uint16_t *dst, size_t n) {
#if HAVE_X86
    if (isa == KERNEL_ISA_AVX512) {
        f32_to_f16_512(src, dst, n);
        return;
    }
    if (isa == KERNEL_ISA_AVX2) {
        f32_to_f16_256(src, dst, n);
        return;
    }
#endif
    (void)isa;
    for (size_t i = 0; i < n; i++) {
        dst[i] = half_f32_to_f16(src[i]);
    }
}

void kernel_attention(enum kernel_isa isa, const float *q, const void *k_base, const void *v_base,
                      enum kernel_wtype kv_type, const int32_t *blocks, size_t block_stride,
                      size_t row_stride, int32_t n, int32_t hs, float scale, float *scores,
                      float *out) {
#if HAVE_X86
    if (isa == KERNEL_ISA_AVX512 && (hs == 64 || hs == 128)) {
        attention512(hs, kv_type, q, k_base, v_base, blocks, block_stride, row_stride, n, scale,
                     scores, out);
        return;
    }
    if (isa == KERNEL_ISA_AVX2 && (hs == 64 || hs == 128)) {
        attention256(hs, kv_type, q, k_base, v_base, blocks, block_stride, row_stride, n, scale,
                     scores, out);
        return;
    }
#endif
    /* Generic: each 16-bit row is widened into row (exact) and takes the float32 path. hs fits:
     * kv_cache_create_with refuses an f16 cache for larger heads. */
    float row[KERNEL_ATTENTION_MAX_HS];
    int is_f16 = kv_type == KERNEL_W_F16;
    float max = -INFINITY;
    for (int32_t t = 0; t < n; t++) {
        size_t at = (size_t)blocks[t / 16] * block_stride + (size_t)(t % 16) * row_stride;
        const float *k = (const float *)k_base + at;
        if (is_f16) {
            kernel_f16_to_f32(isa, (const uint16_t *)k_base + at, row, (size_t)hs);
            k = row;
        }
        float s = kernel_dot(isa, q, k, hs) * scale;
        scores[t] = s;
        max = s > max ? s : max;
    }
    float inv = 1.0f / kernel_exp_shift_sum(isa, scores, n, max);
    memset(out, 0, (size_t)hs * sizeof(float));
    for (int32_t t = 0; t < n; t++) {
        size_t at = (size_t)blocks[t / 16] * block_stride + (size_t)(t % 16) * row_stride;
        const float *v = (const float *)v_base + at;
        if (is_f16) {
            kernel_f16_to_f32(isa, (const uint16_t *)v_base + at, row, (size_t)hs);
            v = row;
        }
        kernel_axpy(isa, scores[t] * inv, v, out, hs);
    }
}

void kernel_gelu_tanh(enum kernel_isa isa, float *x, size_t n) {
#if HAVE_X86
    if (isa == KERNEL_ISA_AVX512) {
        gelu_inplace512(x, n);
        return;
    }
    if (isa == KERNEL_ISA_AVX2) {
        gelu_inplace256(x, n);
        return;
    }
#endif
    (void)isa;
    for (size_t i = 0; i < n; i++) {
        x[i] = kernel_gelu_tanh_ref(x[i]);
    }
}
