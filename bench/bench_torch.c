/*
 * bench_torch: the committee side of `make bench-torch` (bench/bench_torch.py drives it and
 * runs the same models in PyTorch in between, so both share the machine's state).
 *
 *   bench_torch [--batch B]            committee alone: a table of every case (make bench)
 *   bench_torch --serve [--batch B]    then, on stdin, one command per line:
 *     CASE STEPS [timer]         run STEPS steps of CASE; prints one line
 *                                "cpu_seconds wall_seconds sgemm_seconds" for all of them
 *                                (sgemm_seconds: wall time inside cm_blas_sgemm when the word
 *                                `timer` is given, else 0: the timer costs two clock reads a
 *                                call, so the timed runs leave it off; compare it with
 *                                wall_seconds)
 *     list                       prints the cases, "NAME SPEC MODE" per line, then "end"
 *
 * Cases (every model built once, at max batch B, default 128; synthetic inputs, the data
 * loader is not part of a step):
 *   vit_infer   the project's ViT (README's Fashion-MNIST teacher), evaluation-mode forward
 *   vit_train   the same ViT: forward, cross-entropy, backward, AdamW
 *   mlp784      student MLP 784-256-256-10: forward, distillation loss (KL to soft targets,
 *               T = 4), backward, AdamW
 *   mlp49       student MLP 49-64-64-10, the same step
 *   cnn_train   the README's CNN teacher: forward, cross-entropy, backward, AdamW
 * Times are the process's CPU clock (and the wall clock), as bench_cnn.
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
#include <time.h>

typedef enum { MODE_INFER, MODE_LABELS, MODE_DISTIL } mode_t_;

typedef struct {
    const char *name, *spec;
    mode_t_ mode;
    cm_model_t *model;
    float *m, *v, *inputs, *targets, *probs, *d_logits;
    int32_t *labels;
    long step;
} bench_case_t;

static const float distil_temperature = 4.0f;
static cm_adamw_config_t adamw_config;

static bench_case_t cases[] = {
    {.name = "vit_infer",
     .spec = "vit:image=28x28,patch=7,dim=96,depth=3,heads=4,mlp=192",
     .mode = MODE_INFER},
    {.name = "vit_train",
     .spec = "vit:image=28x28,patch=7,dim=96,depth=3,heads=4,mlp=192",
     .mode = MODE_LABELS},
    {.name = "mlp784", .spec = "mlp:784-256-256-10", .mode = MODE_DISTIL},
    {.name = "mlp49", .spec = "mlp:49-64-64-10", .mode = MODE_DISTIL},
    {.name = "cnn_train",
     .spec = "cnn:conv=32-64,pool=1-1,head=flatten,fc=256",
     .mode = MODE_LABELS},
};
enum { CASES = sizeof cases / sizeof cases[0] };

static double cpu_now(void) {
    struct timespec now;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &now);
    return (double)now.tv_sec + 1e-9 * (double)now.tv_nsec;
}

static float *floats_or_die(size_t count) {
    float *values = cm_alloc_floats(count);
    if (!values) {
        fprintf(stderr, "bench_torch: out of memory\n");
        exit(1);
    }
    return values;
}

static void build(bench_case_t *bench, int batch, cm_rng_t *rng) {
    cm_model_spec_t spec;
    if (cm_model_spec_parse(bench->spec, &spec) != CM_OK ||
        cm_model_new(&spec, batch, &bench->model) != CM_OK) {
        fprintf(stderr, "bench_torch: %s: %s\n", bench->spec, cm_last_error());
        exit(1);
    }
    cm_model_init(bench->model, 1);
    cm_model_set_training(bench->model, bench->mode != MODE_INFER);
    int inputs = cm_model_spec_inputs(&spec), classes = spec.classes;
    size_t count = cm_model_param_count(bench->model);
    bench->m = floats_or_die(count);
    bench->v = floats_or_die(count);
    bench->inputs = floats_or_die((size_t)batch * inputs);
    bench->targets = floats_or_die((size_t)batch * classes);
    bench->probs = floats_or_die((size_t)batch * classes);
    bench->d_logits = floats_or_die((size_t)batch * classes);
    bench->labels = malloc(sizeof(int32_t) * (size_t)batch);
    if (!bench->labels) exit(1);
    for (size_t index = 0; index < (size_t)batch * inputs; index++)
        bench->inputs[index] = cm_rng_uniform(rng) - 0.5f;
    for (int row = 0; row < batch; row++) {
        bench->labels[row] = (int32_t)cm_rng_below(rng, classes);
        float sum = 0.0f, *target = bench->targets + (size_t)row * classes;
        for (int col = 0; col < classes; col++) sum += target[col] = cm_rng_uniform(rng) + 0.01f;
        for (int col = 0; col < classes; col++) target[col] /= sum;
    }
}

static void release(bench_case_t *bench) {
    float *blocks[] = {bench->m,       bench->v,     bench->inputs,
                       bench->targets, bench->probs, bench->d_logits};
    for (size_t index = 0; index < sizeof blocks / sizeof blocks[0]; index++)
        cm_free_aligned(blocks[index]);
    free(bench->labels);
    cm_model_free(&bench->model);
}

static void run_step(bench_case_t *bench, int batch) {
    cm_model_t *model = bench->model;
    int classes = cm_model_spec(model)->classes;
    if (bench->mode == MODE_INFER) {
        cm_model_forward(model, bench->inputs, batch);
        return;
    }
    cm_model_zero_grads(model);
    const float *logits = cm_model_forward(model, bench->inputs, batch);
    memset(bench->d_logits, 0, sizeof(float) * (size_t)batch * classes);
    if (bench->mode == MODE_LABELS) {
        cm_loss_cross_entropy_forward(bench->probs, logits, bench->labels, batch, classes, NULL);
        cm_loss_cross_entropy_backward(bench->d_logits, bench->probs, bench->labels, batch, classes,
                                       1.0f / batch);
    } else {
        cm_loss_kl_forward(bench->probs, logits, bench->targets, NULL, distil_temperature, batch,
                           classes);
        cm_loss_kl_backward(bench->d_logits, bench->probs, bench->targets, NULL, distil_temperature,
                            batch, classes, 1.0f / batch);
    }
    cm_model_backward(model, bench->d_logits, NULL, batch);
    cm_model_adamw_step(model, bench->m, bench->v, &adamw_config, ++bench->step);
}

/* Runs STEPS steps of one case: CPU and wall seconds, and sgemm's CPU seconds when timed. */
static void measure(bench_case_t *bench, int batch, int steps, int timed, double *cpu, double *wall,
                    double *sgemm) {
    cm_blas_timer(timed);
    double cpu_started = cpu_now(), wall_started = cm_progress_now();
    for (int step = 0; step < steps; step++) run_step(bench, batch);
    *cpu = cpu_now() - cpu_started;
    *wall = cm_progress_now() - wall_started;
    *sgemm = timed ? cm_blas_timer_seconds() : 0.0;
    cm_blas_timer(false);
}

static const char *mode_name(mode_t_ mode) {
    return mode == MODE_INFER ? "infer" : mode == MODE_LABELS ? "labels" : "distil";
}

/* The commands of --serve, one a line; returns the exit status. */
static int serve(int batch) {
    char line[256];
    while (fgets(line, sizeof line, stdin)) {
        char name[64], word[16] = "";
        int steps = 0;
        if (strncmp(line, "list", 4) == 0) {
            for (int index = 0; index < CASES; index++)
                printf("%s %s %s\n", cases[index].name, cases[index].spec,
                       mode_name(cases[index].mode));
            printf("end\n");
            fflush(stdout);
            continue;
        }
        if (sscanf(line, "%63s %d %15s", name, &steps, word) < 2 || steps < 1) {
            fprintf(stderr, "bench_torch: bad command '%s'\n", line);
            return 2;
        }
        bench_case_t *bench = NULL;
        for (int index = 0; index < CASES; index++)
            if (strcmp(cases[index].name, name) == 0) bench = &cases[index];
        if (!bench) {
            fprintf(stderr, "bench_torch: unknown case '%s'\n", name);
            return 2;
        }
        double cpu, wall, sgemm;
        measure(bench, batch, steps, strcmp(word, "timer") == 0, &cpu, &wall, &sgemm);
        printf("%.9f %.9f %.9f\n", cpu, wall, sgemm);
        fflush(stdout);
    }
    return 0;
}

/* committee alone: per case the best of five runs of ten steps, and sgemm's share. */
static void table(int batch) {
    printf("| case (batch %d, 1 BLAS thread, CPU clock) | ms/step | sgemm share |\n", batch);
    printf("|---|---|---|\n");
    for (int index = 0; index < CASES; index++) {
        bench_case_t *bench = &cases[index];
        double cpu, wall, sgemm, best = 0.0, best_share = 0.0;
        measure(bench, batch, 3, 0, &cpu, &wall, &sgemm);
        for (int trial = 0; trial < 5; trial++) {
            measure(bench, batch, 10, trial % 2, &cpu, &wall, &sgemm);
            if (trial % 2 == 0 && (best == 0.0 || cpu < best)) best = cpu;
            if (trial % 2 == 1 && sgemm / wall > best_share) best_share = sgemm / wall;
        }
        printf("| %s (%s, %s) | %.2f | %.0f%% |\n", bench->name, bench->spec,
               mode_name(bench->mode), 100.0 * best, 100.0 * best_share);
    }
}

int main(int argc, char **argv) {
    int batch = 128, serving = 0, usage = 0;
    for (int index = 1; index < argc; index++) {
        if (strcmp(argv[index], "--serve") == 0)
            serving = 1;
        else if (strcmp(argv[index], "--batch") == 0 && index + 1 < argc)
            batch = atoi(argv[++index]);
        else
            usage = 1;
    }
    if (usage || batch < 1) {
        fprintf(stderr, "usage: bench_torch [--serve] [--batch B]   (see bench/bench_torch.c)\n");
        return 2;
    }
    cm_blas_set_threads(1);
    adamw_config = cm_adamw_defaults();
    cm_rng_t rng;
    cm_rng_seed(&rng, 1);
    for (int index = 0; index < CASES; index++) build(&cases[index], batch, &rng);
    int status = 0;
    if (serving)
        status = serve(batch);
    else
        table(batch);
    for (int index = 0; index < CASES; index++) release(&cases[index]);
    return status;
}
