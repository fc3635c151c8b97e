/*
 * bench_cnn: training throughput of a CNN teacher on one OpenBLAS thread and
 * the convolutions' share of the BLAS bound, all measured in the same run.
 *
 *   bench_cnn [SPEC [BATCH]]   (default: the README's Fashion-MNIST teacher,
 *                               cnn:conv=32-64,pool=1-1,head=flatten,fc=256, batch 128)
 *
 * Three numbers frame the result:
 *  - sgemm peak: a 512x512x512 sgemm, the best this core does (best of five);
 *  - the conv GEMMs alone, at the model's exact per-example shapes (forward
 *    [out][patch]x[patch][positions], weight gradient, input gradient except
 *    for the first stage), and the conv kernels as the model runs them
 *    (im2col/col2im included), in GF/s and as a fraction of the peak (the
 *    best of five batches);
 *  - the measured training step (forward, loss, backward, AdamW), as
 *    examples/s, with the share of its time spent in the conv kernels.
 * Synthetic inputs: the data loader is not part of the step.  Compare
 * with bench/bench_cnn_torch.py (the same network in PyTorch, one thread).
 *
 * Every rate is measured on the process's CPU clock (what the core did for
 * us; on a shared machine the wall clock also counts the time other
 * processes had the core); the step is also reported by the wall clock,
 * with the load average, so a shared machine shows as such.
 */
#include "cm_alloc.h"
#include "cm_blas.h"
#include "cm_layers.h"
#include "cm_loss.h"
#include "cm_model.h"
#include "cm_progress.h"
#include "cm_rng.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Seconds of CPU time this process has used. */
static double cpu_now(void) {
    struct timespec now;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &now);
    return (double)now.tv_sec + 1e-9 * (double)now.tv_nsec;
}

static float *random_block(cm_rng_t *rng, size_t count) {
    float *values = cm_alloc_floats(count);
    if (!values) {
        fprintf(stderr, "bench_cnn: out of memory\n");
        exit(1);
    }
    for (size_t index = 0; index < count; index++) values[index] = cm_rng_uniform(rng) - 0.5f;
    return values;
}

/* GF/s of a 512^3 sgemm, the best of five trials (a shared core's caches and clock make single
 * trials noisy; the peak is what the core can do). */
static double sgemm_peak(cm_rng_t *rng) {
    enum { SIDE = 512, REPEATS = 12, TRIALS = 5 };
    float *a = random_block(rng, SIDE * SIDE), *b = random_block(rng, SIDE * SIDE),
          *c = random_block(rng, SIDE * SIDE);
    cm_blas_sgemm(false, false, SIDE, SIDE, SIDE, 1.0f, a, SIDE, b, SIDE, 0.0f, c, SIDE);
    double seconds = 0.0;
    for (int trial = 0; trial < TRIALS; trial++) {
        double started = cpu_now();
        for (int repeat = 0; repeat < REPEATS; repeat++)
            cm_blas_sgemm(false, false, SIDE, SIDE, SIDE, 1.0f, a, SIDE, b, SIDE, 0.0f, c, SIDE);
        double elapsed = cpu_now() - started;
        if (trial == 0 || elapsed < seconds) seconds = elapsed;
    }
    cm_free_aligned(a);
    cm_free_aligned(b);
    cm_free_aligned(c);
    return 2.0 * SIDE * SIDE * SIDE * REPEATS / seconds / 1e9;
}

typedef struct {
    int in_channels, height, width, out_channels;
} stage_shape_t;

/* The stages' input maps and widths, as cm_model builds them. */
static int stage_shapes(const cm_model_spec_t *spec, stage_shape_t *shapes) {
    int channels = spec->channels, height = spec->image_height, width = spec->image_width;
    for (int stage = 0; stage < spec->stages; stage++) {
        shapes[stage] = (stage_shape_t){channels, height, width, spec->conv_channels[stage]};
        channels = spec->conv_channels[stage];
        if (spec->pool[stage]) height /= 2, width /= 2;
    }
    return spec->stages;
}

/* Seconds per batch of (a) the conv GEMMs alone (gemm_only) or (b) the conv kernels. */
static double time_convs(const cm_model_spec_t *spec, int batch, int gemm_only, int repeats,
                         double *flops_per_batch, cm_rng_t *rng) {
    stage_shape_t shapes[CM_MODEL_MAX_STAGES];
    int stages = stage_shapes(spec, shapes), kernel = spec->kernel;
    size_t largest_map = 0, largest_cols = 0, largest_weight = 0;
    for (int stage = 0; stage < stages; stage++) {
        size_t plane = (size_t)shapes[stage].height * shapes[stage].width;
        size_t in_map = (size_t)batch * shapes[stage].in_channels * plane;
        size_t out_map = (size_t)batch * shapes[stage].out_channels * plane;
        size_t cols = (size_t)shapes[stage].in_channels * kernel * kernel * plane;
        size_t weight =
            (size_t)shapes[stage].out_channels * shapes[stage].in_channels * kernel * kernel;
        if (in_map > largest_map) largest_map = in_map;
        if (out_map > largest_map) largest_map = out_map;
        if (cols > largest_cols) largest_cols = cols;
        if (weight > largest_weight) largest_weight = weight;
    }
    float *in = random_block(rng, largest_map), *out = random_block(rng, largest_map);
    float *d_in = random_block(rng, largest_map), *cols = random_block(rng, largest_cols);
    float *weight = random_block(rng, largest_weight),
          *d_weight = random_block(rng, largest_weight);
    double flops = 0.0, best = 0.0;
    for (int repeat = -1; repeat < repeats; repeat++) { /* repeat -1 warms up */
        double started = cpu_now();
        flops = 0.0;
        for (int stage = 0; stage < stages; stage++) {
            const stage_shape_t *shape = &shapes[stage];
            int positions = shape->height * shape->width;
            int patch = shape->in_channels * kernel * kernel;
            double gemm_flops = 2.0 * shape->out_channels * positions * patch;
            flops += batch * gemm_flops * (stage > 0 ? 3.0 : 2.0);
            if (!gemm_only) {
                cm_layers_conv2d_forward(out, cols, in, weight, NULL, batch, shape->in_channels,
                                         shape->height, shape->width, shape->out_channels, kernel,
                                         1, kernel / 2);
                cm_layers_conv2d_backward(stage > 0 ? d_in : NULL, d_weight, NULL, cols, out, in,
                                          weight, batch, shape->in_channels, shape->height,
                                          shape->width, shape->out_channels, kernel, 1, kernel / 2);
            } else {
                for (int example = 0; example < batch; example++) {
                    float *out_example = out + (size_t)example * shape->out_channels * positions;
                    cm_blas_sgemm(false, false, shape->out_channels, positions, patch, 1.0f, weight,
                                  patch, cols, positions, 0.0f, out_example, positions);
                    cm_blas_sgemm(false, true, shape->out_channels, patch, positions, 1.0f,
                                  out_example, positions, cols, positions, 1.0f, d_weight, patch);
                    if (stage > 0)
                        cm_blas_sgemm(true, false, patch, positions, shape->out_channels, 1.0f,
                                      weight, patch, out_example, positions, 0.0f, cols, positions);
                }
            }
        }
        double elapsed = cpu_now() - started;
        if (repeat == 0 || (repeat > 0 && elapsed < best)) best = elapsed;
    }
    *flops_per_batch = flops;
    float *blocks[] = {in, out, d_in, cols, weight, d_weight};
    for (size_t index = 0; index < sizeof blocks / sizeof blocks[0]; index++)
        cm_free_aligned(blocks[index]);
    return best;
}

int main(int argc, char **argv) {
    const char *spec_text = argc > 1 ? argv[1] : "cnn:conv=32-64,pool=1-1,head=flatten,fc=256";
    int batch = argc > 2 ? atoi(argv[2]) : 128;
    cm_blas_set_threads(1);
    cm_model_spec_t spec;
    cm_model_t *model = NULL;
    if (cm_model_spec_parse(spec_text, &spec) != CM_OK || spec.kind != CM_MODEL_CNN || batch < 1 ||
        cm_model_new(&spec, batch, &model) != CM_OK) {
        fprintf(stderr, "bench_cnn: %s\nusage: bench_cnn [cnn:SPEC [BATCH]]\n",
                spec.kind != CM_MODEL_CNN ? "the spec must be a cnn" : cm_last_error());
        return 2;
    }
    cm_rng_t rng;
    cm_rng_seed(&rng, 1);
    double peak = sgemm_peak(&rng);
    double conv_flops = 0.0;
    double gemm_seconds = time_convs(&spec, batch, 1, 5, &conv_flops, &rng);
    double kernel_seconds = time_convs(&spec, batch, 0, 5, &conv_flops, &rng);

    cm_model_init(model, 1);
    cm_model_set_training(model, 1);
    int inputs_per_example = cm_model_spec_inputs(&spec), classes = spec.classes;
    size_t count = cm_model_param_count(model);
    float *m = cm_alloc_floats(count), *v = cm_alloc_floats(count);
    float *inputs = random_block(&rng, (size_t)batch * inputs_per_example);
    float *probs = cm_alloc_floats((size_t)batch * classes);
    float *d_logits = cm_alloc_floats((size_t)batch * classes);
    int32_t *labels = malloc(sizeof(int32_t) * (size_t)batch);
    if (!m || !v || !probs || !d_logits || !labels) {
        fprintf(stderr, "bench_cnn: out of memory\n");
        return 1;
    }
    for (int row = 0; row < batch; row++) labels[row] = (int32_t)cm_rng_below(&rng, classes);
    cm_adamw_config_t config = cm_adamw_defaults();
    const int warmup = 3, steps = 20;
    double started = 0.0, wall_started = 0.0;
    for (int step = 1; step <= warmup + steps; step++) {
        if (step == warmup + 1) started = cpu_now(), wall_started = cm_progress_now();
        cm_model_zero_grads(model);
        const float *logits = cm_model_forward(model, inputs, batch);
        cm_loss_cross_entropy_forward(probs, logits, labels, batch, classes, NULL);
        memset(d_logits, 0, sizeof(float) * (size_t)batch * classes);
        cm_loss_cross_entropy_backward(d_logits, probs, labels, batch, classes, 1.0f / batch);
        cm_model_backward(model, d_logits, NULL, batch);
        cm_model_adamw_step(model, m, v, &config, step);
    }
    double step_seconds = (cpu_now() - started) / steps;
    double wall_step_seconds = (cm_progress_now() - wall_started) / steps;
    double load[1] = {0.0};
    if (getloadavg(load, 1) != 1) load[0] = -1.0;
    char canonical[CM_MODEL_SPEC_MAX];
    cm_model_spec_format(&spec, canonical, sizeof canonical);
    double gemm_gflops = conv_flops / gemm_seconds / 1e9;
    double kernel_gflops = conv_flops / kernel_seconds / 1e9;
    printf("| what (%s, batch %d, 1 BLAS thread) | value |\n", canonical, batch);
    printf("|---|---|\n");
    printf("| sgemm peak (512x512x512) | %.1f GF/s |\n", peak);
    printf("| conv GEMM flops per training step | %.1f MFLOP/example |\n",
           conv_flops / batch / 1e6);
    printf("| conv GEMMs alone, the model's shapes | %.1f GF/s (%.0f%% of peak) |\n", gemm_gflops,
           100.0 * gemm_gflops / peak);
    printf("| conv kernels with im2col/col2im | %.1f GF/s (%.0f%% of peak) |\n", kernel_gflops,
           100.0 * kernel_gflops / peak);
    printf("| training step (forward, loss, backward, AdamW), CPU clock | %.0f examples/s |\n",
           batch / step_seconds);
    printf("| the same by the wall clock (load average %.1f on %ld cores) | %.0f examples/s |\n",
           load[0], sysconf(_SC_NPROCESSORS_ONLN), batch / wall_step_seconds);
    printf("| conv kernels' share of the step | %.0f%% |\n", 100.0 * kernel_seconds / step_seconds);
    printf("| bound if the conv GEMMs ran at peak and nothing else cost | %.0f examples/s |\n",
           batch / (conv_flops / (peak * 1e9)));
    cm_free_aligned(m);
    cm_free_aligned(v);
    cm_free_aligned(inputs);
    cm_free_aligned(probs);
    cm_free_aligned(d_logits);
    free(labels);
    cm_model_free(&model);
    return 0;
}
