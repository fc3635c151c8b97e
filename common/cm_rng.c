/*
 * cm_rng: xoshiro128** (Blackman and Vigna), seeded with splitmix64 so that
 * nearby seeds give unrelated streams.
 */
#include "cm_rng.h"

#include <math.h>

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static uint32_t rotl(uint32_t x, int k) { return (x << k) | (x >> (32 - k)); }

void cm_rng_seed(cm_rng_t *rng, uint64_t seed) {
    uint64_t x = seed;
    uint64_t a = splitmix64(&x), b = splitmix64(&x);
    rng->state[0] = (uint32_t)a;
    rng->state[1] = (uint32_t)(a >> 32);
    rng->state[2] = (uint32_t)b;
    rng->state[3] = (uint32_t)(b >> 32);
    if (!(rng->state[0] | rng->state[1] | rng->state[2] | rng->state[3])) rng->state[0] = 1;
}

uint32_t cm_rng_u32(cm_rng_t *rng) {
    uint32_t *s = rng->state;
    uint32_t result = rotl(s[1] * 5, 7) * 9;
    uint32_t t = s[1] << 9;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 11);
    return result;
}

float cm_rng_uniform(cm_rng_t *rng) { return (float)(cm_rng_u32(rng) >> 8) * (1.0f / 16777216.0f); }

uint32_t cm_rng_below(cm_rng_t *rng, uint32_t bound) {
    /* Lemire's multiply-shift with rejection of the biased low zone. */
    uint64_t product = (uint64_t)cm_rng_u32(rng) * bound;
    uint32_t low = (uint32_t)product;
    if (low < bound) {
        uint32_t threshold = (uint32_t)(-bound) % bound;
        while (low < threshold) {
            product = (uint64_t)cm_rng_u32(rng) * bound;
            low = (uint32_t)product;
        }
    }
    return (uint32_t)(product >> 32);
}

float cm_rng_normal(cm_rng_t *rng) {
    float u1 = cm_rng_uniform(rng);
    float u2 = cm_rng_uniform(rng);
    if (u1 < 1e-12f) u1 = 1e-12f;
    return sqrtf(-2.0f * logf(u1)) * cosf(6.2831853071795864f * u2);
}

void cm_rng_shuffle(cm_rng_t *rng, int32_t *values, size_t count) {
    for (size_t i = count; i > 1; i--) {
        size_t j = cm_rng_below(rng, (uint32_t)i);
        int32_t swap = values[i - 1];
        values[i - 1] = values[j];
        values[j] = swap;
    }
}
