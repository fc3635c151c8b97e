/*
 * bench_train: training throughput of MLP 784-256-256-10 at batch 256 on one
 * OpenBLAS thread, next to the estimate from sgemm's GF/s measured on the
 * same shapes in the same run.
 *
 * The estimate: one training step runs, per dense layer, one forward GEMM
 * (batch x in x out), one weight-gradient GEMM and (except for the first
 * layer) one input-gradient GEMM, each 2*batch*in*out flops.  Timing exactly
 * those GEMMs alone gives the best a step could do; the measured step time
 * shows what the rest (activations, loss, AdamW, copies) costs on top.
 * Synthetic inputs: the data loader is not part of the step.
 */
#include "cm_alloc.h"
#include "cm_blas.h"
#include "cm_loss.h"
#include "cm_model.h"
#include "cm_progress.h"
#include "cm_rng.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { BATCH = 256, CLASSES = 10 };

static double time_gemms(const int *widths, int layers, int repeats, double *flops_per_step) {
    size_t biggest = 0;
    for (int layer = 0; layer < layers; layer++) {
        size_t size = (size_t)widths[layer] * (size_t)widths[layer + 1];
        if (size > biggest) biggest = size;
        if ((size_t)BATCH * (size_t)widths[layer] > biggest)
            biggest = (size_t)BATCH * (size_t)widths[layer];
    }
    float *a = cm_alloc_floats(biggest), *b = cm_alloc_floats(biggest),
          *c = cm_alloc_floats(biggest);
    cm_rng_t rng;
    cm_rng_seed(&rng, 1);
    for (size_t index = 0; index < biggest; index++) {
        a[index] = cm_rng_uniform(&rng);
        b[index] = cm_rng_uniform(&rng);
    }
    double flops = 0.0;
    double started = cm_progress_now();
    for (int repeat = 0; repeat < repeats; repeat++) {
        flops = 0.0;
        for (int layer = 0; layer < layers; layer++) {
            int in = widths[layer], out = widths[layer + 1];
            /* forward: [B][in] x [out][in]^T */
            cm_blas_sgemm(false, true, BATCH, out, in, 1.0f, a, in, b, in, 0.0f, c, out);
            /* weight gradient: [B][out]^T x [B][in] */
            cm_blas_sgemm(true, false, out, in, BATCH, 1.0f, a, out, b, in, 1.0f, c, in);
            flops += 4.0 * BATCH * in * out;
            if (layer > 0) { /* input gradient: [B][out] x [out][in] */
                cm_blas_sgemm(false, false, BATCH, in, out, 1.0f, a, out, b, in, 1.0f, c, in);
                flops += 2.0 * BATCH * in * out;
            }
        }
    }
    double seconds = (cm_progress_now() - started) / repeats;
    *flops_per_step = flops;
    cm_free_aligned(a);
    cm_free_aligned(b);
    cm_free_aligned(c);
    return seconds;
}

int main(void) {
    cm_blas_set_threads(1);
    const int widths[] = {784, 256, 256, 10};
    const int layers = 3;
    double flops_per_step = 0.0;
    time_gemms(widths, layers, 20, &flops_per_step); /* warm-up */
    double gemm_seconds = time_gemms(widths, layers, 200, &flops_per_step);
    double gflops = flops_per_step / gemm_seconds / 1e9;

    cm_model_spec_t spec;
    cm_model_t *model = NULL;
    if (cm_model_spec_parse("mlp:784-256-256-10", &spec) != CM_OK ||
        cm_model_new(&spec, BATCH, &model) != CM_OK) {
        fprintf(stderr, "bench_train: %s\n", cm_last_error());
        return 1;
    }
    cm_model_init(model, 1);
    size_t count = cm_model_param_count(model);
    float *m = cm_alloc_floats(count), *v = cm_alloc_floats(count);
    float *inputs = cm_alloc_floats((size_t)BATCH * 784);
    float *probs = cm_alloc_floats(BATCH * CLASSES), *d_logits = cm_alloc_floats(BATCH * CLASSES);
    int32_t labels[BATCH];
    cm_rng_t rng;
    cm_rng_seed(&rng, 2);
    for (int index = 0; index < BATCH * 784; index++) inputs[index] = cm_rng_normal(&rng);
    for (int row = 0; row < BATCH; row++) labels[row] = (int32_t)cm_rng_below(&rng, CLASSES);
    cm_adamw_config_t config = cm_adamw_defaults();
    const int steps = 300;
    double started = 0.0;
    for (int step = 1; step <= steps + 20; step++) {
        if (step == 21) started = cm_progress_now(); /* the first 20 steps warm up */
        cm_model_zero_grads(model);
        const float *logits = cm_model_forward(model, inputs, BATCH);
        cm_loss_cross_entropy_forward(probs, logits, labels, BATCH, CLASSES, NULL);
        memset(d_logits, 0, sizeof(float) * BATCH * CLASSES);
        cm_loss_cross_entropy_backward(d_logits, probs, labels, BATCH, CLASSES, 1.0f / BATCH);
        cm_model_backward(model, d_logits, NULL, BATCH);
        cm_model_adamw_step(model, m, v, &config, step);
    }
    double step_seconds = (cm_progress_now() - started) / steps;
    double measured = BATCH / step_seconds, estimate = BATCH / (flops_per_step / (gflops * 1e9));

    printf("| what (MLP 784-256-256-10, batch 256, 1 BLAS thread) | value |\n");
    printf("|---|---|\n");
    printf("| sgemm on the step's shapes | %.1f GF/s |\n", gflops);
    printf("| GEMM flops per step | %.1f MFLOP |\n", flops_per_step / 1e6);
    printf("| estimate from sgemm alone | %.0f examples/s |\n", estimate);
    printf("| measured training step (forward, loss, backward, AdamW) | %.0f examples/s |\n",
           measured);
    printf("| measured / estimate | %.2f |\n", measured / estimate);
    cm_free_aligned(m);
    cm_free_aligned(v);
    cm_free_aligned(inputs);
    cm_free_aligned(probs);
    cm_free_aligned(d_logits);
    cm_model_free(&model);
    return 0;
}
