/*
 * cm_vec: four-float vectors for the element-wise kernels (cm_layers, cm_adamw), in GCC's
 * vector extension (also clang's): one SSE register on x86-64, NEON on arm64, so -O2 emits
 * vector code for them whatever its auto-vectorizer (at -O2 the "very cheap" cost model,
 * which refuses loops that need a scalar remainder or a run-time alias check) decides.
 * Loads and stores go through memcpy (any alignment).  A row's tail of fewer than four
 * floats can be copied into a zero-padded vector and back, so the tail runs the very same
 * arithmetic.  The operations are IEEE single precision lane by lane, exactly as the scalar
 * code they replace (no reassociation, no contraction: -std=c11 turns FMA contraction off).
 * Eight- and sixteen-float vectors serve the kernels compiled once per instruction set and
 * chosen at run time (CM_VEC_DISPATCH, cm_layers_wide.h).
 */
#ifndef CM_VEC_H
#define CM_VEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#if defined(__SSE__)
#include <xmmintrin.h>
#endif

typedef float vec4_t __attribute__((vector_size(16)));
typedef int32_t mask4_t __attribute__((vector_size(16)));
enum { VEC = 4 };

static inline vec4_t vec_splat(float value) { return (vec4_t){value, value, value, value}; }

static inline vec4_t vec_load(const float *source) {
    vec4_t value;
    memcpy(&value, source, sizeof value);
    return value;
}

static inline void vec_store(float *target, vec4_t value) { memcpy(target, &value, sizeof value); }

/* The first `count` (< VEC) floats of source, zeros after. */
static inline vec4_t vec_load_tail(const float *source, int count) {
    vec4_t value = vec_splat(0.0f);
    memcpy(&value, source, sizeof(float) * (size_t)count);
    return value;
}

static inline void vec_store_tail(float *target, vec4_t value, int count) {
    memcpy(target, &value, sizeof(float) * (size_t)count);
}

/* mask ? a : b, lane by lane (mask lanes all ones or all zeros, as comparisons give). */
static inline vec4_t vec_select(mask4_t mask, vec4_t a, vec4_t b) {
    return (vec4_t)((mask & (mask4_t)a) | (~mask & (mask4_t)b));
}

/* The four lanes summed in a fixed order. */
static inline float vec_total(vec4_t value) {
    return (value[0] + value[1]) + (value[2] + value[3]);
}

/* Correctly rounded square root of each lane (as sqrtf). */
static inline vec4_t vec_sqrt(vec4_t value) {
#if defined(__SSE__)
    return (vec4_t)_mm_sqrt_ps((__m128)value);
#else
    return (vec4_t){__builtin_sqrtf(value[0]), __builtin_sqrtf(value[1]), __builtin_sqrtf(value[2]),
                    __builtin_sqrtf(value[3])};
#endif
}

/* y[i] += a * x[i] for i < count: a multiply then an add per element, as the scalar loop. */
static inline void vec_axpy(float *y, float a, const float *x, int count) {
    vec4_t scale = vec_splat(a);
    int body = count - count % VEC;
    for (int i = 0; i < body; i += VEC) vec_store(y + i, vec_load(y + i) + scale * vec_load(x + i));
    for (int i = body; i < count; i++) y[i] += a * x[i];
}

/* Wider vectors for the kernels compiled once per instruction set (CM_VEC_DISPATCH): eight
 * floats, one AVX2 register; sixteen, one AVX-512 register.  A kernel is written once for a
 * vector type (see cm_layers_wide.h) and instantiated at each width. */
#if defined(__GNUC__) || defined(__clang__)
/* Every function taking or returning a wide vector is CM_VEC_INLINE, always inlined into its
 * kernel: no call passes one by value, so no ABI is at stake (GCC warns that one would change
 * with AVX).  A helper left out of line would be compiled for the baseline and called from an
 * AVX-512 kernel with registers it does not expect. */
#pragma GCC diagnostic ignored "-Wpsabi"
#endif
#define CM_VEC_INLINE static inline __attribute__((always_inline))
typedef float vec8_t __attribute__((vector_size(32)));
typedef int32_t mask8_t __attribute__((vector_size(32)));
typedef float vec16_t __attribute__((vector_size(64)));
typedef int32_t mask16_t __attribute__((vector_size(64)));

extern const int32_t cm_vec_lane_index[16]; /* 0, 1, ..., 15 */
/* The widest kernels CM_VEC_DISPATCH may run: 16 (the default), 8 or 4 lanes (tests compare
 * the paths on one machine). */
extern int cm_vec_lanes_limit;

/* CM_VEC_DISPATCH(name, params, args): defines `static void name(params)` that runs the
 * kernel of the running CPU's widest vectors: name##_16 (compiled for AVX-512) or name##_8
 * (AVX2) on x86-64, else name##_4, the baseline (SSE, NEON), which the caller defined before,
 * always inline (the check is a load of a flag the C library set at start-up).  Kernels that
 * sum only lane by lane, in an order that does not depend on the width, give the same bits at
 * every width, as -std=c11 contracts no multiply-add into an FMA. */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define CM_VEC_DISPATCH(name, params, args)                                                        \
    __attribute__((target("avx512f"))) static void name##_avx512 params { name##_16 args; }        \
    __attribute__((target("avx2"))) static void name##_avx2 params { name##_8 args; }              \
    static void name params {                                                                      \
        if (cm_vec_lanes_limit >= 16 && __builtin_cpu_supports("avx512f"))                         \
            name##_avx512 args;                                                                    \
        else if (cm_vec_lanes_limit >= 8 && __builtin_cpu_supports("avx2"))                        \
            name##_avx2 args;                                                                      \
        else                                                                                       \
            name##_4 args;                                                                         \
    }
#else
#define CM_VEC_DISPATCH(name, params, args)                                                        \
    static void name params { name##_4 args; }
#endif

#endif
