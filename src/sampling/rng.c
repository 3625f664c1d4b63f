/*
 * rng.c: the per-sequence random generator (xoshiro256**) and the process-wide seed source for
 * requests without a seed.
 *
 * xoshiro256** is small (32 bytes of state), fast and passes BigCrush; splitmix64 expands a
 * 64-bit seed into its state, as its authors recommend, so that seeds 1, 2, 3 ... give unrelated
 * streams (n > 1 choices use seed + index). The generator is per sequence: no locks. Only
 * sampling_seed_random() is shared, through an atomic counter, and may run on any thread.
 */
#include <stdatomic.h>

#include <gptd/sampling.h>
#include <gptd/util.h>

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k) {
    return (x << k) | (x >> (64 - k));
}

void rng_seed(struct rng *r, uint64_t seed) {
    uint64_t x = seed;
    for (int i = 0; i < 4; i++) {
        r->s[i] = splitmix64(&x);
    }
    /* splitmix64 is a bijection of its counter, so four outputs are never all zero (the one
     * state xoshiro cannot leave); no check needed. */
}

uint64_t rng_next_u64(struct rng *r) {
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double rng_next_double(struct rng *r) {
    /* The top 53 bits: every double in [0, 1) on the 2^-53 grid, equally likely. */
    return (double)(rng_next_u64(r) >> 11) * 0x1.0p-53;
}

static atomic_uint_fast64_t seed_counter;

uint64_t sampling_seed_random(void) {
    /* The clock separates processes and restarts; the counter separates calls within one
     * process even when the clock has not moved. splitmix64 mixes both into a full-width
     * seed. */
    uint64_t n = atomic_fetch_add(&seed_counter, 1);
    uint64_t x = (uint64_t)time_now_us() * 0x2545f4914f6cdd1dULL ^ (uint64_t)time_wall_s() ^
                 (n * 0x9e3779b97f4a7c15ULL);
    return splitmix64(&x);
}
