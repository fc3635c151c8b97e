/*
 * check_gradcheck: the finite-difference gradient checker shared by the
 * kernel suites (check_layers, check_loss).  Header-only, tests only.
 *
 * A test describes a layer by two callbacks over its own context struct:
 * `loss` runs the forward pass and returns a scalar in double (usually
 * sum(d_out ⊙ out) for a random d_out, so every output element matters with
 * its own weight), and `backward` runs the backward kernels with that d_out.
 * gradcheck_run() then
 *   1. fills every gradient buffer with random values and runs backward
 *      twice, asserting that the second call added exactly as much as the
 *      first (backward kernels ADD, they never overwrite);
 *   2. perturbs each input/parameter element by ±step and compares the
 *      central difference (L(x+h) - L(x-h)) / (x+h - x-h) with what the
 *      first backward call added.  The denominator uses the perturbed float
 *      values actually stored, not 2h, so rounding x±h to float costs nothing.
 *
 * Choice of step: the kernels compute in float, so L carries a rounding error
 * of roughly 1e-7 * sqrt(outputs); the central difference divides it by 2h
 * and adds a truncation error of about h^2 * L''' / 6.  h = 1e-2 keeps both
 * near 1e-5..1e-4 for the O(1) values used here, far below a tolerance of
 * 1e-3 absolute + 1e-2 relative, while a real bug (a missing factor, a
 * transposed index, a dropped term) moves gradients by O(0.1..1).
 */
#ifndef CHECK_GRADCHECK_H
#define CHECK_GRADCHECK_H

#include "cm_rng.h"

#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* The scalar test loss: runs the forward pass over the context, returns L in double. */
typedef double (*gradcheck_loss_fn)(void *context);
/* Runs the backward kernels over the context, adding into its gradient buffers. */
typedef void (*gradcheck_backward_fn)(void *context);

typedef struct {
    const char *name; /* shown in failure messages, e.g. "dense weight" */
    float *values;    /* [count] input or parameter; perturbed in place, then restored */
    float *grad;      /* [count] the gradient buffer backward adds into */
    int count;
} gradcheck_param_t;

typedef struct {
    double step;     /* finite-difference step h */
    double relative; /* allowed error relative to max(|analytic|, |numeric|) */
    double absolute; /* allowed error on top of the relative part */
} gradcheck_tolerance_t;

/* The default tolerance (see the file comment for why these values). */
static inline gradcheck_tolerance_t gradcheck_default_tolerance(void) {
    return (gradcheck_tolerance_t){.step = 1e-2, .relative = 1e-2, .absolute = 1e-3};
}

/* values[count] = uniform in [low, high). */
static inline void gradcheck_fill(cm_rng_t *rng, float *values, int count, float low, float high) {
    for (int i = 0; i < count; i++) values[i] = low + (high - low) * cm_rng_uniform(rng);
}

/* sum(a ⊙ b) over count elements, accumulated in double. */
static inline double gradcheck_dot(const float *a, const float *b, int count) {
    double sum = 0.0;
    for (int i = 0; i < count; i++) sum += (double)a[i] * b[i];
    return sum;
}

/* Asserts that backward adds (twice - base == 2 (once - base)) for one parameter. */
static inline void gradcheck_assert_adds(const gradcheck_param_t *param, const float *base,
                                         const float *once) {
    for (int i = 0; i < param->count; i++) {
        double first = (double)once[i] - base[i], second = (double)param->grad[i] - base[i];
        ck_assert_msg(fabs(second - 2.0 * first) <= 1e-5 * (1.0 + fabs(second)),
                      "%s gradient [%d]: a second backward call added %g, the first %g "
                      "(backward must add, not overwrite)",
                      param->name, i, second - first, first);
    }
}

/* Compares the analytic gradient of one parameter with central differences of loss. */
static inline void gradcheck_assert_matches(const gradcheck_param_t *param, const float *analytic,
                                            gradcheck_loss_fn loss, void *context,
                                            gradcheck_tolerance_t tolerance) {
    for (int i = 0; i < param->count; i++) {
        float original = param->values[i];
        param->values[i] = (float)(original + tolerance.step);
        double plus_value = param->values[i], plus_loss = loss(context);
        param->values[i] = (float)(original - tolerance.step);
        double minus_value = param->values[i], minus_loss = loss(context);
        param->values[i] = original;
        double numeric = (plus_loss - minus_loss) / (plus_value - minus_value);
        double error = fabs(analytic[i] - numeric);
        double allowed =
            tolerance.absolute + tolerance.relative * fmax(fabs(analytic[i]), fabs(numeric));
        ck_assert_msg(error <= allowed, "%s gradient [%d]: analytic %.7g, numeric %.7g",
                      param->name, i, (double)analytic[i], numeric);
    }
    loss(context); /* leave the forward state of the unperturbed values behind */
}

/* The whole check for every parameter of a layer (see the file comment). */
static inline void gradcheck_run(cm_rng_t *rng, const gradcheck_param_t *params, int param_count,
                                 gradcheck_loss_fn loss, gradcheck_backward_fn backward,
                                 void *context, gradcheck_tolerance_t tolerance) {
    float **bases = calloc((size_t)param_count, sizeof *bases);
    float **onces = calloc((size_t)param_count, sizeof *onces);
    ck_assert_ptr_nonnull(bases);
    ck_assert_ptr_nonnull(onces);
    for (int param = 0; param < param_count; param++) {
        size_t bytes = sizeof(float) * (size_t)params[param].count;
        bases[param] = malloc(bytes);
        onces[param] = malloc(bytes);
        ck_assert_ptr_nonnull(bases[param]);
        ck_assert_ptr_nonnull(onces[param]);
        gradcheck_fill(rng, params[param].grad, params[param].count, -1.0f, 1.0f);
        memcpy(bases[param], params[param].grad, bytes);
    }
    loss(context); /* the forward pass saves what backward reads */
    backward(context);
    for (int param = 0; param < param_count; param++)
        memcpy(onces[param], params[param].grad, sizeof(float) * (size_t)params[param].count);
    backward(context);
    for (int param = 0; param < param_count; param++) {
        gradcheck_assert_adds(&params[param], bases[param], onces[param]);
        for (int i = 0; i < params[param].count; i++) onces[param][i] -= bases[param][i];
        gradcheck_assert_matches(&params[param], onces[param], loss, context, tolerance);
        free(bases[param]);
        free(onces[param]);
    }
    free(bases);
    free(onces);
}

#endif
