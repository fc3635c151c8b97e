/*
 * cm_rng: a small, seeded, reproducible random number generator
 * (xoshiro128** seeded through splitmix64).  The whole state is four
 * 32-bit words, so it can be saved in a checkpoint and restored exactly.
 * Not for cryptography.
 */
#ifndef CM_RNG_H
#define CM_RNG_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint32_t state[4];
} cm_rng_t;

/* Seeds the generator; the same seed always gives the same sequence. */
void cm_rng_seed(cm_rng_t *rng, uint64_t seed);

/* Next 32 random bits. */
uint32_t cm_rng_u32(cm_rng_t *rng);

/* Uniform float in [0, 1). */
float cm_rng_uniform(cm_rng_t *rng);

/* Uniform integer in [0, bound), bound > 0, without modulo bias. */
uint32_t cm_rng_below(cm_rng_t *rng, uint32_t bound);

/* Standard normal sample (Box-Muller). */
float cm_rng_normal(cm_rng_t *rng);

/* Fisher-Yates shuffle of `count` int32 values in place. */
void cm_rng_shuffle(cm_rng_t *rng, int32_t *values, size_t count);

#endif
