/*
 * test_kernels.c: src/model/kernels.c's fast kernels against their naive references, on every
 * ISA this CPU runs (scalar, AVX2, AVX-512): the weight matmul with float32, float16 and
 * bfloat16 weights (the same bytes, a row at a time or all rows at once), the SWIGLU epilogue
 * of the Llama MLP, float32 <-> float16
 * conversion, the vector helpers (dot, exp-shift-sum, axpy, GELU) and attention over a paged
 * float32 or float16 KV cache.
 *
 * Includes src/model's private kernels.h by relative path; the float16 / bfloat16 references the
 * kernels are checked against are model_common.h's own.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>

#include <gptd/util.h>

#include "../src/model/kernels.h"
#include "model_common.h"

/* w (n_el,) rounded to wt's precision, and the same values as wt's bit patterns. */
static void round_weights(enum kernel_wtype wt, float *w, uint16_t *bits, size_t n_el) {
    for (size_t i = 0; i < n_el; i++) {
        if (wt == KERNEL_W_F16) {
            bits[i] = to_f16(w[i]);
            w[i] = from_f16(bits[i]);
        } else if (wt == KERNEL_W_BF16) {
            bits[i] = to_bf16(w[i]);
            w[i] = tt_round_bf16(w[i]);
        }
    }
}

/* Packs w (k rows of nw columns, row-major; column c goes to packed column col[c] of n_packed)
 * as wt (F32, F16 or BF16) into a fresh 64-byte aligned buffer, and rewrites w with the values
 * the kernels compute with (rounded to 16 bits). */
static void *pack_weights(enum kernel_wtype wt, float *w, int32_t k, int32_t nw, const int32_t *col,
                          int32_t n_packed) {
    size_t bytes = (kernel_packed_bytes(wt, k, n_packed) + 63) / 64 * 64;
    unsigned char *wp = aligned_alloc(64, bytes);
    memset(wp, 0, bytes);
    size_t n_el = (size_t)k * (size_t)nw;
    uint16_t *bits = malloc(n_el * sizeof(uint16_t));
    round_weights(wt, w, bits, n_el);
    for (size_t i = 0; i < n_el; i++) {
        size_t at = kernel_packed_index(k, (int32_t)(i / nw), col[i % nw]);
        if (wt == KERNEL_W_F32) {
            ((float *)(void *)wp)[at] = w[i];
        } else {
            ((uint16_t *)(void *)wp)[at] = bits[i];
        }
    }
    free(bits);
    int exact = 1; /* 16-bit values widen exactly (asserted once: Check logs every assertion) */
    for (size_t i = 0; i < n_el; i++) {
        exact &= kernel_packed_get(wt, wp, k,
                                   kernel_packed_index(k, (int32_t)(i / nw), col[i % nw])) == w[i];
    }
    ck_assert(exact);
    return wp;
}

/* Q8 weights for kernel_matmul_q8 and its reference: w (k rows of nw columns, column c at
 * packed column col[c]) quantized by kernel_pack_q8 into a fresh buffer, and the same values
 * unpacked into w_q (k, nw) and w_scale (n_groups, nw), read back through kernel_q8_weight_at.
 * Every dequantized weight is within half a step of w. */
static void *pack_weights_q8(const float *w, int32_t k, int32_t nw, const int32_t *col,
                             int32_t n_packed, int8_t *w_q, float *w_scale) {
    size_t bytes = kernel_packed_bytes(KERNEL_W_Q8, k, n_packed);
    unsigned char *wp = aligned_alloc(64, bytes);
    float *f = calloc(kernel_packed_floats(k, n_packed), sizeof(float));
    for (size_t i = 0; i < (size_t)k * (size_t)nw; i++) {
        f[kernel_packed_index(k, (int32_t)(i / nw), col[i % nw])] = w[i];
    }
    ck_assert_int_eq(kernel_pack_q8(f, k, kernel_n_panels(n_packed), wp), 0);
    free(f);
    /* Checked in the loop, asserted once after it: Check writes down every passing assertion. */
    int one_scale_per_group = 1;
    int within_half_step = 1;
    for (int32_t kk = 0; kk < k; kk++) {
        for (int32_t c = 0; c < nw; c++) {
            size_t g = (size_t)kk / KERNEL_Q8_GROUP;
            size_t at = (size_t)kk * nw + (size_t)c;
            float scale;
            kernel_q8_weight_at(wp, k, kk, col[c], &w_q[at], &scale);
            if (kk % KERNEL_Q8_GROUP != 0) {
                one_scale_per_group &= scale == w_scale[g * nw + c];
            }
            w_scale[g * nw + c] = scale;
            within_half_step &= fabsf((float)w_q[at] * scale - w[at]) <= scale * 0.5001f;
        }
    }
    ck_assert(one_scale_per_group);
    ck_assert(within_half_step);
    return wp;
}

/* m rows of k random floats in [-0.5, 0.5), a few of them zero, huge or tiny. */
static void random_rows(float *x, int32_t m, int32_t k, uint32_t seed) {
    for (int32_t i = 0; i < m * k; i++) {
        seed = seed * 1664525u + 1013904223u;
        x[i] = (float)(seed >> 8) / 16777216.0f - 0.5f;
    }
    x[0] = 0.0f;
    x[(m * k) / 3] = 40.0f;
    x[(m * k) / 2] = 1e-30f;
}

START_TEST(test_matmul_kernels_match_reference_bytes) {
    static const int32_t shapes[][3] = {{1, 8, 8},    {1, 64, 64},    {7, 64, 192}, {13, 33, 71},
                                        {6, 100, 64}, {32, 128, 130}, {5, 1, 1},    {12, 256, 64}};
    for (int isa = KERNEL_ISA_SCALAR; isa <= KERNEL_ISA_AVX512; isa++) {
        if (!kernel_isa_supported((enum kernel_isa)isa)) {
            continue;
        }
        for (int wt = KERNEL_W_F32; wt < KERNEL_W_Q8; wt++) {
            for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++) {
                int32_t m = shapes[s][0], k = shapes[s][1], n = shapes[s][2];
                float *x = malloc((size_t)m * k * sizeof(float));
                float *w = malloc((size_t)k * n * sizeof(float));
                int32_t *col = malloc((size_t)n * sizeof(int32_t));
                float *bias = malloc((size_t)n * sizeof(float));
                float *got = malloc((size_t)m * n * sizeof(float));
                float *want = malloc((size_t)m * n * sizeof(float));
                uint32_t r = 12345u + (uint32_t)s;
                for (int32_t i = 0; i < m * k; i++) {
                    r = r * 1664525u + 1013904223u;
                    x[i] = (float)(r >> 8) / 16777216.0f - 0.5f;
                }
                for (int32_t i = 0; i < k * n; i++) {
                    r = r * 1664525u + 1013904223u;
                    w[i] = (float)(r >> 8) / 16777216.0f - 0.5f;
                }
                /* A few half subnormals, which the F16 path must widen exactly too. */
                w[0] = 3e-6f;
                w[(k * n) / 2] = -1e-7f;
                for (int32_t c = 0; c < n; c++) {
                    col[c] = c;
                }
                void *wp = pack_weights((enum kernel_wtype)wt, w, k, n, col, n);
                for (int32_t i = 0; i < n; i++) {
                    bias[i] = (float)i * 0.01f;
                }
                for (int ep = 0; ep < 3; ep++) {
                    for (int32_t i = 0; i < m * n; i++) {
                        got[i] = want[i] = (float)i;
                    }
                    kernel_matmul_ref(x, (size_t)k, w, bias, want, (size_t)n, m, k, n,
                                      (enum kernel_epilogue)ep);
                    /* Rows one at a time, then all at once: the same bytes either way. */
                    for (int32_t i = 0; i < m; i++) {
                        kernel_matmul((enum kernel_isa)isa, x + (size_t)i * k, (size_t)k, wp,
                                      (enum kernel_wtype)wt, bias, got + (size_t)i * n, (size_t)n,
                                      1, k, n, 0, kernel_n_panels(n), (enum kernel_epilogue)ep);
                    }
                    if (ep == KERNEL_EPILOGUE_GELU_TANH) {
                        ck_assert_float_le(max_abs_diff(got, want, (size_t)m * n), 1e-5f);
                    } else {
                        ck_assert_msg(memcmp(got, want, (size_t)m * n * sizeof(float)) == 0,
                                      "%s weights %d m=%d k=%d n=%d epilogue %d: max diff %g",
                                      kernel_isa_name((enum kernel_isa)isa), wt, m, k, n, ep,
                                      (double)max_abs_diff(got, want, (size_t)m * n));
                    }
                    float *all = malloc((size_t)m * n * sizeof(float));
                    for (int32_t i = 0; i < m * n; i++) {
                        all[i] = (float)i;
                    }
                    kernel_matmul((enum kernel_isa)isa, x, (size_t)k, wp, (enum kernel_wtype)wt,
                                  bias, all, (size_t)n, m, k, n, 0, kernel_n_panels(n),
                                  (enum kernel_epilogue)ep);
                    ck_assert_int_eq(memcmp(all, got, (size_t)m * n * sizeof(float)), 0);
                    free(all);
                }
                free(x);
                free(w);
                free(col);
                free(wp);
                free(bias);
                free(got);
                free(want);
            }
        }
    }
}
END_TEST

/* The SWIGLU epilogue (the Llama MLP: silu(gate) * up in one pass over a SWIGLU-packed weight)
 * against the reference on every ISA and weight type, widths that are not a multiple of 32
 * included: within float rounding of the reference (the silu's exp differs in the last bits),
 * and rows one at a time give the same bytes as all rows at once. */
START_TEST(test_swiglu_matmul_matches_reference) {
    static const int32_t shapes[][3] = {{1, 8, 8},    {3, 64, 32},  {7, 33, 45},
                                        {6, 100, 96}, {13, 64, 70}, {2, 17, 1}};
    for (int isa = KERNEL_ISA_SCALAR; isa <= KERNEL_ISA_AVX512; isa++) {
        if (!kernel_isa_supported((enum kernel_isa)isa)) {
            continue;
        }
        for (int wt = KERNEL_W_F32; wt < KERNEL_W_Q8; wt++) {
            for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++) {
                int32_t m = shapes[s][0], k = shapes[s][1], f = shapes[s][2];
                int32_t np = kernel_swiglu_packed_n(f);
                float *x = malloc((size_t)m * k * sizeof(float));
                float *w = malloc((size_t)k * 2 * f * sizeof(float)); /* (K, 2F): gate | up */
                int32_t *col = malloc((size_t)2 * f * sizeof(int32_t));
                float *bias = malloc((size_t)2 * f * sizeof(float));
                float *bias_packed = calloc((size_t)np, sizeof(float));
                float *got = malloc((size_t)m * f * sizeof(float));
                float *all = malloc((size_t)m * f * sizeof(float));
                float *want = malloc((size_t)m * f * sizeof(float));
                uint32_t r = 777u + (uint32_t)s;
                for (int32_t i = 0; i < m * k; i++) {
                    r = r * 1664525u + 1013904223u;
                    x[i] = (float)(r >> 8) / 16777216.0f - 0.5f;
                }
                for (int32_t i = 0; i < k * 2 * f; i++) {
                    r = r * 1664525u + 1013904223u;
                    w[i] = ((float)(r >> 8) / 16777216.0f - 0.5f) * 2.0f;
                }
                for (int32_t c = 0; c < 2 * f; c++) {
                    col[c] = kernel_swiglu_column(c % f, c >= f);
                }
                void *wp = pack_weights((enum kernel_wtype)wt, w, k, 2 * f, col, np);
                for (int32_t c = 0; c < 2 * f; c++) {
                    bias[c] = (float)(c % 7) * 0.1f - 0.3f;
                    bias_packed[kernel_swiglu_column(c % f, c >= f)] = bias[c];
                }
                kernel_matmul_ref(x, (size_t)k, w, bias, want, (size_t)f, m, k, f,
                                  KERNEL_EPILOGUE_SWIGLU);
                int32_t n_panels = kernel_matmul_n_panels(f, KERNEL_EPILOGUE_SWIGLU);
                for (int32_t i = 0; i < m; i++) {
                    kernel_matmul((enum kernel_isa)isa, x + (size_t)i * k, (size_t)k, wp,
                                  (enum kernel_wtype)wt, bias_packed, got + (size_t)i * f,
                                  (size_t)f, 1, k, f, 0, n_panels, KERNEL_EPILOGUE_SWIGLU);
                }
                kernel_matmul((enum kernel_isa)isa, x, (size_t)k, wp, (enum kernel_wtype)wt,
                              bias_packed, all, (size_t)f, m, k, f, 0, n_panels,
                              KERNEL_EPILOGUE_SWIGLU);
                for (int32_t i = 0; i < m * f; i++) {
                    float tol = 1e-5f + 1e-5f * fabsf(want[i]);
                    ck_assert_msg(fabsf(got[i] - want[i]) <= tol,
                                  "%s weights %d m=%d k=%d f=%d [%d]: %.8g vs %.8g",
                                  kernel_isa_name((enum kernel_isa)isa), wt, m, k, f, i,
                                  (double)got[i], (double)want[i]);
                }
                ck_assert_int_eq(memcmp(all, got, (size_t)m * f * sizeof(float)), 0);
                free(x);
                free(w);
                free(col);
                free(wp);
                free(bias);
                free(bias_packed);
                free(got);
                free(all);
                free(want);
            }
        }
    }
}
END_TEST

/*
 * The 8-bit matmul (kernel_matmul_q8) against kernel_matmul_q8_ref on every ISA: the same bytes
 * for STORE and ADD (GELU within float rounding: its exp differs in the last bits), SWIGLU
 * within rounding, shapes with K not a multiple of 32 and N not of 64; rows one at a time give
 * the same bytes as all rows at once (the batch invariance the engine relies on), and the
 * rows quantized on this ISA are the scalar code's bytes.
 */
START_TEST(test_q8_matmul_matches_reference_bytes) {
    static const int32_t shapes[][3] = {{1, 32, 64},  {1, 768, 130}, {7, 64, 192}, {13, 33, 71},
                                        {6, 100, 64}, {9, 128, 130}, {5, 1, 1},    {4, 256, 40}};
    for (int isa = KERNEL_ISA_SCALAR; isa <= KERNEL_ISA_AVX512; isa++) {
        if (!kernel_isa_supported((enum kernel_isa)isa)) {
            continue;
        }
        for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++) {
            for (int ep = 0; ep <= KERNEL_EPILOGUE_SWIGLU; ep++) {
                int is_swiglu = ep == KERNEL_EPILOGUE_SWIGLU;
                int32_t m = shapes[s][0], k = shapes[s][1], n = shapes[s][2];
                int32_t nw = is_swiglu ? 2 * n : n; /* SWIGLU: (K, 2N), gate | up */
                int32_t np = is_swiglu ? kernel_swiglu_packed_n(n) : n;
                size_t n_groups = kernel_q8_n_groups(k);
                size_t row_bytes = kernel_q8_row_bytes(k);
                float *x = malloc((size_t)m * k * sizeof(float));
                float *w = malloc((size_t)k * nw * sizeof(float));
                int8_t *w_q = malloc((size_t)k * nw);
                float *w_scale = malloc(n_groups * (size_t)nw * sizeof(float));
                int32_t *col = malloc((size_t)nw * sizeof(int32_t));
                float *bias = malloc((size_t)nw * sizeof(float));
                float *bias_packed = calloc((size_t)kernel_n_panels(np) * KERNEL_NR, sizeof(float));
                float *got = malloc((size_t)m * n * sizeof(float));
                float *all = malloc((size_t)m * n * sizeof(float));
                float *want = malloc((size_t)m * n * sizeof(float));
                void *x_q = aligned_alloc(64, (size_t)m * row_bytes);
                void *x_q_ref = aligned_alloc(64, (size_t)m * row_bytes);
                random_rows(x, m, k, 12345u + (uint32_t)s);
                random_rows(w, k, nw, 999u + (uint32_t)s);
                for (int32_t c = 0; c < nw; c++) {
                    col[c] = is_swiglu ? kernel_swiglu_column(c % n, c >= n) : c;
                    bias[c] = (float)(c % 7) * 0.1f - 0.3f;
                    bias_packed[col[c]] = bias[c];
                }
                void *wp = pack_weights_q8(w, k, nw, col, np, w_q, w_scale);
                kernel_quantize_rows((enum kernel_isa)isa, x, (size_t)k, m, k, x_q);
                kernel_quantize_rows(KERNEL_ISA_SCALAR, x, (size_t)k, m, k, x_q_ref);
                ck_assert_int_eq(memcmp(x_q, x_q_ref, (size_t)m * row_bytes), 0);
                for (int32_t i = 0; i < m * n; i++) {
                    got[i] = all[i] = want[i] = (float)i;
                }
                kernel_matmul_q8_ref(x_q, w_q, w_scale, bias, want, (size_t)n, m, k, n,
                                     (enum kernel_epilogue)ep);
                int32_t n_panels = kernel_matmul_n_panels(n, (enum kernel_epilogue)ep);
                for (int32_t i = 0; i < m; i++) {
                    kernel_matmul_q8((enum kernel_isa)isa,
                                     (const char *)x_q + (size_t)i * row_bytes, wp, bias_packed,
                                     got + (size_t)i * n, (size_t)n, 1, k, n, 0, n_panels,
                                     (enum kernel_epilogue)ep);
                }
                kernel_matmul_q8((enum kernel_isa)isa, x_q, wp, bias_packed, all, (size_t)n, m, k,
                                 n, 0, n_panels, (enum kernel_epilogue)ep);
                ck_assert_int_eq(memcmp(all, got, (size_t)m * n * sizeof(float)), 0);
                if (ep == KERNEL_EPILOGUE_STORE || ep == KERNEL_EPILOGUE_ADD ||
                    isa == KERNEL_ISA_SCALAR) {
                    ck_assert_msg(memcmp(got, want, (size_t)m * n * sizeof(float)) == 0,
                                  "%s m=%d k=%d n=%d epilogue %d: max diff %g",
                                  kernel_isa_name((enum kernel_isa)isa), m, k, n, ep,
                                  (double)max_abs_diff(got, want, (size_t)m * n));
                }
                int32_t bad = -1;
                for (int32_t i = 0; i < m * n && bad < 0; i++) {
                    bad = fabsf(got[i] - want[i]) <= 1e-5f + 1e-5f * fabsf(want[i]) ? -1 : i;
                }
                ck_assert_msg(bad < 0, "%s m=%d k=%d n=%d epilogue %d [%d]: %.8g vs %.8g",
                              kernel_isa_name((enum kernel_isa)isa), m, k, n, ep, bad,
                              (double)got[bad < 0 ? 0 : bad], (double)want[bad < 0 ? 0 : bad]);
                free(x);
                free(w);
                free(w_q);
                free(w_scale);
                free(col);
                free(bias);
                free(bias_packed);
                free(got);
                free(all);
                free(want);
                free(x_q);
                free(x_q_ref);
                free(wp);
            }
        }
    }
}
END_TEST

/* The 8-bit result is close to the float32 matmul it stands for. Rounding both sides to 8 bits
 * per group of 32 adds to each product an error of about 0.29 * 0.0011 * sqrt(2) (|x| rms times
 * a step's rms, for x and for w): over 768 terms a standard deviation of ~0.6 % of the sum's
 * typical size, so the largest of 192 outputs stays under 3 %. */
START_TEST(test_q8_matmul_close_to_f32) {
    enum { M = 3, K = 768, N = 64 };
    float *x = malloc((size_t)M * K * sizeof(float));
    float *w = malloc((size_t)K * N * sizeof(float));
    int8_t *w_q = malloc((size_t)K * N);
    float *w_scale = malloc(kernel_q8_n_groups(K) * N * sizeof(float));
    int32_t col[N];
    float got[M * N], want[M * N];
    random_rows(x, M, K, 4242u);
    random_rows(w, K, N, 2424u);
    x[(M * K) / 3] = 0.3f; /* random_rows' outlier would dominate every dot product */
    w[(K * N) / 3] = 0.3f;
    for (int32_t c = 0; c < N; c++) {
        col[c] = c;
    }
    void *wp = pack_weights_q8(w, K, N, col, N, w_q, w_scale);
    void *x_q = aligned_alloc(64, (size_t)M * kernel_q8_row_bytes(K));
    kernel_quantize_rows(kernel_isa_best(), x, K, M, K, x_q);
    kernel_matmul_q8(kernel_isa_best(), x_q, wp, NULL, got, N, M, K, N, 0, 1,
                     KERNEL_EPILOGUE_STORE);
    kernel_matmul_ref(x, K, w, NULL, want, N, M, K, N, KERNEL_EPILOGUE_STORE);
    /* The scale of a sum of 768 products of uniform [-0.5, 0.5) values: sqrt(768) / 12. */
    float typical = sqrtf((float)K) / 12.0f;
    float worst = 0.0f;
    for (int32_t i = 0; i < M * N; i++) {
        worst = fmaxf(worst, fabsf(got[i] - want[i]));
    }
    ck_assert_msg(worst < 0.03f * typical, "max |q8 - f32| %g vs typical %g", (double)worst,
                  (double)typical);
    ck_assert(worst > 0.0f); /* it is quantized */
    free(x);
    free(w);
    free(w_q);
    free(w_scale);
    free(wp);
    free(x_q);
}
END_TEST

/* Q8 quantization of weights: per group of 32 k and column, the largest |w| becomes +-127 and
 * its scale amax / 127; every weight is within half a step; a group of zeros stays zero; a
 * partial last group (K = 40) has its own scale; a NaN or an infinity is refused. And of
 * activation rows: the same rule along each row, zero past K, every ISA the same bytes, a
 * NaN or an infinity giving defined bytes. */
START_TEST(test_q8_quantization) {
    enum { K = 40, N = 64 };
    float *w = calloc((size_t)K * N, sizeof(float));
    for (int32_t kk = 0; kk < K; kk++) {
        for (int32_t j = 1; j < N; j++) { /* column 0 stays all zeros */
            w[(size_t)kk * N + (size_t)j] = sinf((float)(kk * N + j) * 0.7f) * (float)(1 + j % 5);
        }
    }
    w[(size_t)35 * N + 7] = 100.0f; /* the partial group of column 7: scale 100 / 127 */
    unsigned char *q = aligned_alloc(64, kernel_packed_bytes(KERNEL_W_Q8, K, N));
    ck_assert_int_eq(kernel_pack_q8(w, K, 1, q), 0);
    int8_t v;
    float scale;
    kernel_q8_weight_at(q, K, 35, 7, &v, &scale);
    ck_assert(scale == 100.0f / 127.0f && v == 127);
    ck_assert(kernel_packed_get(KERNEL_W_Q8, q, K, (size_t)35 * N + 7) ==
              127.0f * (100.0f / 127.0f));
    for (int32_t g = 0; g < 2; g++) {
        for (int32_t j = 0; j < N; j++) {
            float amax = 0.0f;
            int seen_127 = 0;
            for (int32_t kk = g * 32; kk < K && kk < g * 32 + 32; kk++) {
                size_t at = (size_t)kk * N + (size_t)j;
                amax = fabsf(w[at]) > amax ? fabsf(w[at]) : amax;
                kernel_q8_weight_at(q, K, kk, j, &v, &scale);
                ck_assert(v != -128); /* symmetric: -127 .. 127 */
                seen_127 |= v == 127 || v == -127;
            }
            ck_assert(scale == amax / 127.0f);
            ck_assert(j == 0 ? !seen_127 : seen_127);
            for (int32_t kk = g * 32; kk < K && kk < g * 32 + 32; kk++) {
                size_t at = (size_t)kk * N + (size_t)j;
                float back = kernel_packed_get(KERNEL_W_Q8, q, K, at);
                ck_assert_float_le(fabsf(back - w[at]), amax / 254.0f * 1.0001f);
                if (j == 0) {
                    ck_assert(back == 0.0f);
                }
            }
        }
    }
    w[(size_t)3 * N + 9] = NAN;
    ck_assert_int_eq(kernel_pack_q8(w, K, 1, q), -1);
    w[(size_t)3 * N + 9] = INFINITY;
    ck_assert_int_eq(kernel_pack_q8(w, K, 1, q), -1);
    free(q);
    free(w);

    /* Activation rows: K = 70 (two whole groups and a partial one), row 1 all zeros, row 2 with
     * a NaN and row 3 with an infinity. */
    enum { M = 4, KA = 70 };
    float x[M * KA];
    random_rows(x, M, KA, 31u);
    memset(x + KA, 0, KA * sizeof(float));
    x[2 * KA + 5] = NAN;
    x[3 * KA + 40] = INFINITY;
    size_t row_bytes = kernel_q8_row_bytes(KA);
    ck_assert_uint_eq(row_bytes % 64, 0);
    unsigned char *xq = aligned_alloc(64, M * row_bytes);
    unsigned char *xq_isa = aligned_alloc(64, M * row_bytes);
    memset(xq, 0xa5, M * row_bytes);
    kernel_quantize_rows(KERNEL_ISA_SCALAR, x, KA, M, KA, xq);
    const float *s0 = (const float *)(void *)(xq + 3 * KERNEL_Q8_GROUP);
    for (int32_t g = 0; g < 3; g++) {
        float amax = 0.0f;
        for (int32_t kk = g * 32; kk < KA && kk < g * 32 + 32; kk++) {
            amax = fmaxf(amax, fabsf(x[kk]));
        }
        ck_assert(s0[g] == amax / 127.0f);
        for (int32_t kk = g * 32; kk < g * 32 + 32; kk++) {
            int8_t qv = (int8_t)xq[kk];
            if (kk >= KA) {
                ck_assert_int_eq(qv, 0); /* the padding */
            } else {
                ck_assert(qv != -128);
                ck_assert_float_le(fabsf((float)qv * s0[g] - x[kk]), s0[g] * 0.5001f);
            }
        }
    }
    for (int32_t kk = 0; kk < 3 * KERNEL_Q8_GROUP; kk++) {
        ck_assert_int_eq(xq[row_bytes + (size_t)kk], 0); /* the zero row */
    }
    ck_assert_int_eq((int8_t)xq[2 * row_bytes + 5], 127); /* NaN: fminf's 127 */
    for (int isa = KERNEL_ISA_AVX2; isa <= KERNEL_ISA_AVX512; isa++) {
        if (kernel_isa_supported((enum kernel_isa)isa)) {
            memset(xq_isa, 0xa5, M * row_bytes);
            kernel_quantize_rows((enum kernel_isa)isa, x, KA, M, KA, xq_isa);
            for (int32_t i = 0; i < M; i++) { /* the bytes that are written (not the padding) */
                size_t used = 3 * KERNEL_Q8_GROUP + 3 * sizeof(float);
                ck_assert_int_eq(memcmp(xq + i * row_bytes, xq_isa + i * row_bytes, used), 0);
            }
        }
    }
    free(xq);
    free(xq_isa);
}
END_TEST

/* kernel_f32_to_f16 rounds to nearest even on every ISA exactly as the test's own converter
 * does (normal, subnormal, tie, overflow and signed-zero inputs), and widening undoes it. */
START_TEST(test_half_conversions_match_reference) {
    enum { N = 4099 };
    float *x = malloc(N * sizeof(float));
    float *back = malloc(N * sizeof(float));
    uint16_t *h = malloc(N * sizeof(uint16_t));
    uint32_t r = 777u;
    for (int i = 0; i < N; i++) {
        r = r * 1664525u + 1013904223u;
        float mag = ldexpf((float)(r >> 8) / 16777216.0f, (int)(r % 44) - 28); /* 2^-28 .. 2^16 */
        x[i] = (r & 1u) ? -mag : mag;
    }
    const float special[] = {0.0f,
                             -0.0f,
                             65504.0f,
                             65520.0f,
                             1e9f,
                             -1e9f,
                             5.9604645e-8f,
                             2.9802322e-8f,
                             1.0f + 1.0f / 2048.0f,
                             1.0f + 3.0f / 2048.0f};
    memcpy(x, special, sizeof(special));
    for (int isa = KERNEL_ISA_SCALAR; isa <= KERNEL_ISA_AVX512; isa++) {
        if (!kernel_isa_supported((enum kernel_isa)isa)) {
            continue;
        }
        /* The first mismatch, asserted once: Check logs every passing assertion. */
        kernel_f32_to_f16((enum kernel_isa)isa, x, h, N);
        int bad = -1;
        for (int i = 0; i < N && bad < 0; i++) {
            bad = h[i] == to_f16(x[i]) ? -1 : i;
        }
        ck_assert_msg(bad < 0, "%s: %a -> 0x%04x, want 0x%04x",
                      kernel_isa_name((enum kernel_isa)isa), (double)x[bad < 0 ? 0 : bad],
                      h[bad < 0 ? 0 : bad], to_f16(x[bad < 0 ? 0 : bad]));
        kernel_f16_to_f32((enum kernel_isa)isa, h, back, N);
        for (int i = 0; i < N && bad < 0; i++) {
            float want = from_f16(h[i]);
            bad = memcmp(&back[i], &want, sizeof(float)) == 0 ? -1 : i;
        }
        ck_assert_msg(bad < 0, "%s: 0x%04x widened wrongly", kernel_isa_name((enum kernel_isa)isa),
                      h[bad < 0 ? 0 : bad]);
    }
    free(x);
    free(back);
    free(h);
}
END_TEST

START_TEST(test_vector_helpers_match_scalar) {
    float a[100], b[100], y1[100], y2[100];
    for (int i = 0; i < 100; i++) {
        a[i] = sinf((float)i);
        b[i] = cosf((float)i * 0.7f);
    }
    for (int isa = KERNEL_ISA_AVX2; isa <= KERNEL_ISA_AVX512; isa++) {
        if (!kernel_isa_supported((enum kernel_isa)isa)) {
            continue;
        }
        for (int32_t n = 1; n <= 100; n += 7) {
            float d0 = kernel_dot(KERNEL_ISA_SCALAR, a, b, n);
            float d1 = kernel_dot((enum kernel_isa)isa, a, b, n);
            ck_assert_float_le(fabsf(d0 - d1), 1e-5f);
            memcpy(y1, a, sizeof(a));
            memcpy(y2, a, sizeof(a));
            float s0 = kernel_exp_shift_sum(KERNEL_ISA_SCALAR, y1, n, 0.5f);
            float s1 = kernel_exp_shift_sum((enum kernel_isa)isa, y2, n, 0.5f);
            ck_assert_float_le(fabsf(s0 - s1), 1e-5f * s0);
            ck_assert_float_le(max_abs_diff(y1, y2, (size_t)n), 1e-6f);
            memcpy(y1, b, sizeof(b));
            memcpy(y2, b, sizeof(b));
            kernel_axpy(KERNEL_ISA_SCALAR, 0.3f, a, y1, n);
            kernel_axpy((enum kernel_isa)isa, 0.3f, a, y2, n);
            ck_assert_float_le(max_abs_diff(y1, y2, (size_t)n), 1e-6f);
            for (int i = 0; i < n; i++) {
                y1[i] = y2[i] = (a[i] - 0.2f) * 12.0f;
            }
            kernel_gelu_tanh(KERNEL_ISA_SCALAR, y1, (size_t)n);
            kernel_gelu_tanh((enum kernel_isa)isa, y2, (size_t)n);
            ck_assert_float_le(max_abs_diff(y1, y2, (size_t)n), 2e-6f);
        }
    }
    /* Attention over a paged layout (3 blocks of 16 rows, scattered), every ISA vs scalar, head
     * sizes 64 and 128 (the AVX-512 and AVX2 paths of their own) and 40 (the generic one). */
    enum { HS = 128, ROW = 144, BLOCK = 16 * ROW, N_POS = 40 };
    float *cache_k = malloc(5 * BLOCK * sizeof(float));
    float *cache_v = malloc(5 * BLOCK * sizeof(float));
    for (int i = 0; i < 5 * BLOCK; i++) {
        cache_k[i] = sinf((float)i * 0.37f);
        cache_v[i] = cosf((float)i * 0.11f);
    }
    const int32_t blocks[3] = {4, 0, 2};
    float q[HS], want[HS], got[HS], scores[N_POS];
    for (int i = 0; i < HS; i++) {
        q[i] = 0.05f * (float)(i % 13) - 0.3f;
    }
    static const int32_t head_sizes[] = {40, 64, 128};
    for (size_t h = 0; h < 3; h++) {
        int32_t hs = head_sizes[h];
        for (int32_t n = 1; n <= N_POS; n += 13) {
            kernel_attention(KERNEL_ISA_SCALAR, q, cache_k + 3, cache_v + 3, KERNEL_W_F32, blocks,
                             BLOCK, ROW, n, hs, 0.125f, scores, want);
            float sum = 0.0f;
            for (int i = 0; i < hs; i++) {
                sum += want[i];
            }
            ck_assert(isfinite(sum));
            for (int isa = KERNEL_ISA_AVX2; isa <= KERNEL_ISA_AVX512; isa++) {
                if (kernel_isa_supported((enum kernel_isa)isa)) {
                    kernel_attention((enum kernel_isa)isa, q, cache_k + 3, cache_v + 3,
                                     KERNEL_W_F32, blocks, BLOCK, ROW, n, hs, 0.125f, scores, got);
                    ck_assert_float_le(max_abs_diff(got, want, (size_t)hs), 1e-5f);
                }
            }
        }
    }
    /* One position: the output is that position's V row. */
    kernel_attention(KERNEL_ISA_SCALAR, q, cache_k, cache_v, KERNEL_W_F32, blocks, BLOCK, ROW, 1,
                     HS, 0.125f, scores, got);
    ck_assert_float_le(max_abs_diff(got, cache_v + 4 * BLOCK, HS), 1e-6f);
    /* A half cache gives, on every ISA, the bytes of a float32 cache holding the same (rounded)
     * values: head sizes 64 and 128 (the AVX-512 and AVX2 paths of their own) and 40 (the generic
     * one). */
    uint16_t *half_k = malloc(5 * BLOCK * sizeof(uint16_t));
    uint16_t *half_v = malloc(5 * BLOCK * sizeof(uint16_t));
    for (int i = 0; i < 5 * BLOCK; i++) {
        half_k[i] = to_f16(cache_k[i]);
        half_v[i] = to_f16(cache_v[i]);
        cache_k[i] = from_f16(half_k[i]);
        cache_v[i] = from_f16(half_v[i]);
    }
    for (int isa = KERNEL_ISA_SCALAR; isa <= KERNEL_ISA_AVX512; isa++) {
        if (!kernel_isa_supported((enum kernel_isa)isa)) {
            continue;
        }
        for (size_t h = 0; h < 3; h++) {
            int32_t hs = head_sizes[h];
            for (int32_t n = 1; n <= N_POS; n += 13) {
                kernel_attention((enum kernel_isa)isa, q, cache_k + 3, cache_v + 3, KERNEL_W_F32,
                                 blocks, BLOCK, ROW, n, hs, 0.125f, scores, want);
                kernel_attention((enum kernel_isa)isa, q, half_k + 3, half_v + 3, KERNEL_W_F16,
                                 blocks, BLOCK, ROW, n, hs, 0.125f, scores, got);
                ck_assert_msg(memcmp(got, want, (size_t)hs * sizeof(float)) == 0,
                              "%s hs %d n %d: f16 cache differs by %g",
                              kernel_isa_name((enum kernel_isa)isa), hs, n,
                              (double)max_abs_diff(got, want, (size_t)hs));
            }
        }
    }
    free(half_k);
    free(half_v);
    free(cache_k);
    free(cache_v);
    /* The GELU form used is the tanh one. */
    ck_assert_float_le(fabsf(kernel_gelu_tanh_ref(1.0f) -
                             0.5f * (1.0f + tanhf(0.7978845608f * (1.0f + 0.044715f)))),
                       1e-6f);
}
END_TEST

static Suite *kernels_suite(void) {
    Suite *s = suite_create("kernels");
    TCase *kernels = tcase_create("kernels");
    tcase_set_timeout(kernels, 120);
    tcase_add_test(kernels, test_matmul_kernels_match_reference_bytes);
    tcase_add_test(kernels, test_swiglu_matmul_matches_reference);
    tcase_add_test(kernels, test_vector_helpers_match_scalar);
    tcase_add_test(kernels, test_half_conversions_match_reference);
    suite_add_tcase(s, kernels);
    TCase *q8 = tcase_create("q8");
    tcase_set_timeout(q8, 120);
    tcase_add_test(q8, test_q8_quantization);
    tcase_add_test(q8, test_q8_matmul_matches_reference_bytes);
    tcase_add_test(q8, test_q8_matmul_close_to_f32);
    suite_add_tcase(s, q8);
    return s;
}

int main(void) {
    log_set_level(LOG_LEVEL_WARN);
    SRunner *sr = srunner_create(kernels_suite());
    srunner_run_all(sr, CK_NORMAL);
    int n_failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return n_failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
