/*
 * half.h: IEEE 754 binary16 ("half", F16) and bfloat16 (BF16) to and from float32, private to
 * src/model. Widening is exact; narrowing rounds to nearest, ties to even, as PyTorch's
 * .half() / .bfloat16() do. Used by the safetensors reader, the kernels' portable path and the
 * loader's optional narrowing of float32 weights (model_load_with).
 */
#ifndef GPTD_MODEL_HALF_H
#define GPTD_MODEL_HALF_H

#include <stdint.h>
#include <string.h>

static inline float half_bits_to_f32(uint32_t bits) {
    float f;
    memcpy(&f, &bits, sizeof(f));
    return f;
}

static inline float half_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    if (exp == 0x1fu) {
        return half_bits_to_f32(sign | 0x7f800000u | (mant << 13)); /* inf, nan */
    }
    if (exp != 0) {
        return half_bits_to_f32(sign | ((exp + 127u - 15u) << 23) | (mant << 13));
    }
    if (mant == 0) {
        return half_bits_to_f32(sign);
    }
    /* Subnormal half: normalise into a float. */
    uint32_t e = 0;
    while ((mant & 0x400u) == 0) {
        mant <<= 1;
        e++;
    }
    return half_bits_to_f32(sign | ((127u - 15u + 1u - e) << 23) | ((mant & 0x3ffu) << 13));
}

static inline float half_bf16_to_f32(uint16_t h) {
    return half_bits_to_f32((uint32_t)h << 16);
}

/* Nearest half, ties to even; beyond the largest half (65504) is infinity. */
static inline uint16_t half_f32_to_f16(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof(u));
    uint32_t sign = (u >> 16) & 0x8000u;
    uint32_t abs = u & 0x7fffffffu;
    if (abs >= 0x7f800000u) { /* inf stays inf; nan stays a (quiet) nan */
        return (uint16_t)(sign | 0x7c00u | (abs > 0x7f800000u ? 0x200u : 0u));
    }
    int32_t exp = (int32_t)(abs >> 23) - 127 + 15;
    uint32_t mant = abs & 0x7fffffu;
    if (exp >= 31) {
        return (uint16_t)(sign | 0x7c00u);
    }
    uint32_t shift;
    uint32_t base;
    if (exp <= 0) { /* subnormal half, or zero */
        if (exp < -10) {
            return (uint16_t)sign;
        }
        mant |= 0x800000u;
        shift = (uint32_t)(14 - exp);
        base = 0;
    } else {
        shift = 13;
        base = (uint32_t)exp << 10;
    }
    uint32_t h = base + (mant >> shift);
    uint32_t rem = mant & ((1u << shift) - 1u);
    uint32_t mid = 1u << (shift - 1u);
    if (rem > mid || (rem == mid && (h & 1u))) {
        h++; /* may carry into the exponent, which is still right (up to infinity) */
    }
    return (uint16_t)(sign | h);
}

/* Nearest bfloat16, ties to even. */
static inline uint16_t half_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof(u));
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        return (uint16_t)((u >> 16) | 0x40u); /* nan stays a (quiet) nan */
    }
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

#endif
