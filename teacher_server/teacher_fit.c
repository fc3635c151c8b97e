/*
 * teacher_fit: `teacher-server fit` trains a model from scratch on one view
 * of a dataset and writes a safetensors checkpoint that names its model
 * spec, view, dataset and dataset fingerprint, so `teacher-server serve`
 * and the trainer can check what they are given.
 *
 * Training is plain minibatch AdamW on cross-entropy (classification) or
 * mean squared error (regression) with a seeded shuffle per epoch; the
 * learning rate follows a cm_schedule (by default it warms up linearly and
 * then follows a cosine down to 10%; --schedule constant or onecycle,
 * --warmup-steps).  Training mode is on for the optimizer steps (batch norm
 * uses and updates batch statistics); evaluation runs in eval mode, and the
 * checkpoint holds the running statistics.  Everything is determined by
 * --seed: the same command gives the same checkpoint.  --save-initial and
 * --log-steps (the seeded model before the first step; one JSON line per
 * step with its rate, mean loss and rows) let bench/parity replay the fit.
 */
#include "teacher_fit.h"

#include "cm_alloc.h"
#include "cm_blas.h"
#include "cm_cli.h"
#include "cm_dataset.h"
#include "cm_log.h"
#include "cm_loss.h"
#include "cm_model.h"
#include "cm_progress.h"
#include "cm_rng.h"
#include "cm_schedule.h"
#include "cm_score.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct {
    const char *data;
    const char *data_dir;
    const char *view;
    const char *model;
    const char *out;
    const char *schedule;
    const char *log_level;
    const char *save_initial; /* --save-initial: the model before the first step */
    const char *log_steps;    /* --log-steps: one JSON line per optimizer step */
    int epochs;
    int batch;
    float lr;
    float weight_decay;
    long seed;
    int threads;
    int max_train;
    int max_test;
    int shift;
    long warmup_steps; /* < 0: the schedule's default */
    char *config;      /* every option after precedence, JSON (cm_cli_effective_json) */
} fit_options_t;

/*
 * Copies one training image into `out`, shifted by (dy, dx) pixels with the background value
 * filling what moves in: a cheap augmentation that keeps a small transformer from memorizing
 * pixel positions.  height x width floats.
 */
static void shifted_copy(float *out, const float *image, int height, int width, int dy, int dx,
                         float background) {
    for (int y = 0; y < height; y++)
        for (int x = 0; x < width; x++) {
            int source_y = y - dy, source_x = x - dx;
            int inside = source_y >= 0 && source_y < height && source_x >= 0 && source_x < width;
            out[y * width + x] = inside ? image[source_y * width + source_x] : background;
        }
}

/* Checks that the model consumes exactly what the view produces. */
static cm_status_t check_model_fits_view(const cm_model_spec_t *spec, const cm_dataset_t *dataset,
                                         const char *spec_text) {
    if (spec->classes != dataset->classes)
        return cm_fail(CM_ERR_SHAPE, "model '%s' has %d outputs but %s has %d %s", spec_text,
                       spec->classes, dataset->name, dataset->classes,
                       dataset->task == CM_TASK_REGRESSION ? "targets" : "classes");
    if (spec->kind == CM_MODEL_VIT &&
        (spec->image_height != dataset->height || spec->image_width != dataset->width))
        return cm_fail(CM_ERR_SHAPE, "model '%s' expects %dx%d images but view '%s' gives %dx%d",
                       spec_text, spec->image_height, spec->image_width, dataset->view,
                       dataset->height, dataset->width);
    if (cm_model_spec_inputs(spec) != dataset->features)
        return cm_fail(CM_ERR_SHAPE,
                       "model '%s' expects %d input features but view '%s' gives %d (%dx%d)",
                       spec_text, cm_model_spec_inputs(spec), dataset->view, dataset->features,
                       dataset->height, dataset->width);
    return CM_OK;
}

/*
 * --log-steps: the line of optimizer step `step` (1-based): epoch, learning rate, the batch's
 * mean loss and its training rows in batch order (bench/parity replays them).
 */
static cm_status_t log_step(FILE *file, const char *path, long step, int epoch, float lr,
                            double loss, const int32_t *rows, int count) {
    fprintf(file, "{\"step\":%ld,\"epoch\":%d,\"lr\":%.9g,\"loss\":%.17g,\"ids\":[", step, epoch,
            (double)lr, loss);
    for (int row = 0; row < count; row++) fprintf(file, row ? ",%d" : "%d", (int)rows[row]);
    fprintf(file, "]}\n");
    if (ferror(file))
        return cm_fail(CM_ERR_IO, "cannot write the per-step log to %s: %s", path,
                       strerror(errno ? errno : EIO));
    return CM_OK;
}

static cm_status_t fit(const fit_options_t *options) {
    cm_model_spec_t spec;
    cm_status_t status = cm_model_spec_parse(options->model, &spec);
    if (status != CM_OK) return status;
    cm_dataset_options_t data_options = {
        .directory = options->data_dir,
        .max_train = options->max_train,
        .max_test = options->max_test,
    };
    cm_dataset_t *dataset = NULL;
    cm_model_t *model = NULL;
    float *moment1 = NULL, *moment2 = NULL, *batch_inputs = NULL, *probs = NULL, *d_logits = NULL;
    float *one_row = NULL, *batch_targets = NULL;
    int32_t *order = NULL, *batch_labels = NULL, *batch_rows = NULL;
    FILE *step_log = NULL;

    status = cm_dataset_load(&dataset, options->data, options->view, &data_options);
    if (status != CM_OK) goto done;
    status = check_model_fits_view(&spec, dataset, options->model);
    if (status != CM_OK) goto done;
    status = cm_model_new(&spec, options->batch, &model);
    if (status != CM_OK) goto done;
    cm_model_init(model, (uint64_t)options->seed);
    if (options->save_initial) {
        const char *metadata[] = {CM_DATASET_METADATA(dataset), "epochs", "0", "format",
                                  "committee-checkpoint-1"};
        status = cm_model_save(model, options->save_initial, metadata,
                               (int)(sizeof metadata / sizeof metadata[0]) / 2);
        if (status != CM_OK) goto done;
    }
    if (options->log_steps && !(step_log = fopen(options->log_steps, "w"))) {
        status = cm_fail(CM_ERR_IO, "cannot write the per-step log to %s: %s", options->log_steps,
                         strerror(errno));
        goto done;
    }

    const cm_split_data_t *train = &dataset->splits[CM_SPLIT_TRAIN];
    const cm_split_data_t *test = &dataset->splits[CM_SPLIT_TEST];
    int features = dataset->features, classes = spec.classes;
    size_t param_count = cm_model_param_count(model);
    moment1 = cm_alloc_floats(param_count);
    moment2 = cm_alloc_floats(param_count);
    batch_inputs = cm_alloc_floats((size_t)options->batch * (size_t)features);
    probs = cm_alloc_floats((size_t)options->batch * (size_t)classes);
    d_logits = cm_alloc_floats((size_t)options->batch * (size_t)classes);
    order = malloc(sizeof *order * (size_t)train->count);
    batch_labels = malloc(sizeof *batch_labels * (size_t)options->batch);
    batch_rows = malloc(sizeof *batch_rows * (size_t)options->batch);
    one_row = cm_alloc_floats((size_t)features);
    batch_targets = cm_alloc_floats((size_t)options->batch * (size_t)classes);
    int regression = dataset->task == CM_TASK_REGRESSION;
    if (!moment1 || !moment2 || !batch_inputs || !probs || !d_logits || !order || !batch_labels ||
        !batch_rows || !one_row || !batch_targets) {
        status = cm_fail(CM_ERR_NOMEM, "out of memory allocating training buffers");
        goto done;
    }
    char spec_text[CM_MODEL_SPEC_MAX];
    cm_model_spec_format(&spec, spec_text, sizeof spec_text);
    cm_log_info("fit %s on %s/%s: %d train, %d test examples, %zu parameters, batch %d, "
                "%d epochs, lr %g, seed %ld, %d BLAS thread(s)",
                spec_text, dataset->name, dataset->view, train->count, test->count, param_count,
                options->batch, options->epochs, (double)options->lr, options->seed,
                cm_blas_threads());

    cm_schedule_kind_t schedule_kind = CM_SCHEDULE_COSINE;
    status = cm_schedule_parse_kind(options->schedule, &schedule_kind);
    if (status != CM_OK) goto done;
    cm_schedule_t schedule = cm_schedule_defaults(schedule_kind, options->lr);
    schedule.warmup_steps = options->warmup_steps;
    cm_adamw_config_t adamw = cm_adamw_defaults();
    adamw.weight_decay = options->weight_decay;
    cm_rng_t rng;
    cm_rng_seed(&rng, (uint64_t)options->seed ^ 0x5eedf17ull);
    for (int index = 0; index < train->count; index++) order[index] = index;
    long batches_per_epoch = (train->count + options->batch - 1) / options->batch;
    long total_steps = batches_per_epoch * options->epochs, step = 0;
    cm_log_info("schedule %s, peak lr %g, %ld warm-up steps", cm_schedule_kind_name(schedule_kind),
                (double)options->lr, cm_schedule_warmup(&schedule, total_steps));
    /* Training mode for the steps; scoring switches to eval mode and back. */
    cm_model_set_training(model, 1);
    double train_seconds = 0.0;
    cm_score_t test_score = {0};

    for (int epoch = 1; epoch <= options->epochs; epoch++) {
        cm_rng_shuffle(&rng, order, (size_t)train->count);
        char label[64];
        snprintf(label, sizeof label, "epoch %d/%d", epoch, options->epochs);
        cm_progress_t progress;
        /* A bar on a terminal only: fit logs one line per epoch elsewhere. */
        cm_progress_start(&progress, isatty(STDERR_FILENO) ? CM_PROGRESS_BAR : CM_PROGRESS_OFF,
                          label, "examples", train->count, 0, 0.0);
        double epoch_start = cm_progress_now(), loss_sum = 0.0;
        long labelled_total = 0;
        for (int start = 0; start < train->count; start += options->batch) {
            int batch =
                train->count - start < options->batch ? train->count - start : options->batch;
            for (int row = 0; row < batch; row++) batch_rows[row] = order[start + row];
            if (options->shift > 0) {
                for (int row = 0; row < batch; row++) {
                    int span = 2 * options->shift + 1;
                    int dy = (int)cm_rng_below(&rng, (uint32_t)span) - options->shift;
                    int dx = (int)cm_rng_below(&rng, (uint32_t)span) - options->shift;
                    cm_dataset_gather(dataset, CM_SPLIT_TRAIN, &batch_rows[row], 1, one_row);
                    shifted_copy(batch_inputs + (size_t)row * (size_t)features, one_row,
                                 dataset->height, dataset->width, dy, dx,
                                 cm_dataset_background(dataset));
                }
            } else {
                cm_dataset_gather(dataset, CM_SPLIT_TRAIN, batch_rows, batch, batch_inputs);
            }
            cm_model_zero_grads(model);
            const float *logits = cm_model_forward(model, batch_inputs, batch);
            memset(d_logits, 0, sizeof(float) * (size_t)batch * (size_t)classes);
            double step_loss = 0.0; /* the batch's mean loss */
            if (regression) {
                for (int row = 0; row < batch; row++)
                    memcpy(batch_targets + (size_t)row * (size_t)classes,
                           train->targets + (size_t)batch_rows[row] * (size_t)classes,
                           sizeof(float) * (size_t)classes);
                int values = batch * classes;
                step_loss = cm_loss_mse_forward(logits, batch_targets, values) / classes;
                loss_sum += step_loss;
                step_loss /= batch;
                labelled_total += batch;
                cm_loss_mse_backward(d_logits, logits, batch_targets, values, 1.0f / (float)values);
            } else {
                for (int row = 0; row < batch; row++)
                    batch_labels[row] = train->labels[batch_rows[row]];
                int labelled = 0;
                step_loss = cm_loss_cross_entropy_forward(probs, logits, batch_labels, batch,
                                                          classes, &labelled);
                loss_sum += step_loss;
                step_loss /= labelled ? labelled : 1;
                labelled_total += labelled;
                cm_loss_cross_entropy_backward(d_logits, probs, batch_labels, batch, classes,
                                               1.0f / (float)(labelled ? labelled : 1));
            }
            cm_model_backward(model, d_logits, NULL, batch);
            adamw.learning_rate = cm_schedule_lr(&schedule, step, total_steps);
            cm_model_adamw_step(model, moment1, moment2, &adamw, ++step);
            if (step_log &&
                (status = log_step(step_log, options->log_steps, step, epoch, adamw.learning_rate,
                                   step_loss, batch_rows, batch)) != CM_OK)
                goto done;
            char loss_text[48];
            snprintf(loss_text, sizeof loss_text, "loss %.4f",
                     loss_sum / (double)(labelled_total ? labelled_total : 1));
            cm_progress_update(&progress, start + batch, -1.0, loss_text);
        }
        cm_progress_finish(&progress);
        double epoch_seconds = cm_progress_now() - epoch_start;
        train_seconds += epoch_seconds;
        if ((status = cm_score_split(model, dataset, CM_SPLIT_TEST, &test_score)) != CM_OK)
            goto done;
        double train_loss = loss_sum / (double)(labelled_total ? labelled_total : 1);
        if (!isfinite(train_loss)) {
            status =
                cm_fail(CM_ERR_INTERNAL,
                        "training diverged in epoch %d (loss is not finite); lower --lr", epoch);
            goto done;
        }
        if (regression)
            cm_log_info("epoch %d/%d  train mse %.4f  test rmse %.4f  test mae %.4f  "
                        "%.0f examples/s  %.1f s",
                        epoch, options->epochs, train_loss, test_score.rmse, test_score.mae,
                        (double)train->count / epoch_seconds, epoch_seconds);
        else
            cm_log_info("epoch %d/%d  train loss %.4f  test acc %.4f  test loss %.4f  "
                        "%.0f examples/s  %.1f s",
                        epoch, options->epochs, train_loss, test_score.accuracy, test_score.loss,
                        (double)train->count / epoch_seconds, epoch_seconds);
    }

    char epochs_text[16], seed_text[24], accuracy_text[32], examples_text[24];
    snprintf(epochs_text, sizeof epochs_text, "%d", options->epochs);
    snprintf(seed_text, sizeof seed_text, "%ld", options->seed);
    snprintf(accuracy_text, sizeof accuracy_text, "%.4f",
             regression ? test_score.rmse : test_score.accuracy);
    snprintf(examples_text, sizeof examples_text, "%d", train->count);
    /* The dataset's name, not its path: a checkpoint fitted from a folder equals one fitted
     * from the built-in it was exported from. */
    const char *metadata[] = {CM_DATASET_METADATA(dataset),
                              "epochs",
                              epochs_text,
                              "seed",
                              seed_text,
                              regression ? "test_rmse" : "test_accuracy",
                              accuracy_text,
                              "train_examples",
                              examples_text,
                              "format",
                              "committee-checkpoint-1",
                              "config",
                              options->config};
    status = cm_model_save(model, options->out, metadata,
                           (int)(sizeof metadata / sizeof metadata[0]) / 2);
    if (status != CM_OK) goto done;
    if (step_log) {
        int closed = fclose(step_log);
        step_log = NULL;
        if (closed != 0) {
            status = cm_fail(CM_ERR_IO, "cannot write the per-step log to %s: %s",
                             options->log_steps, strerror(errno));
            goto done;
        }
    }
    if (regression) {
        cm_log_info("wrote %s (test rmse %.4f, mae %.4f, %.1f s training)", options->out,
                    test_score.rmse, test_score.mae, train_seconds);
        printf("test_rmse=%.4f test_mae=%.4f checkpoint=%s\n", test_score.rmse, test_score.mae,
               options->out);
    } else {
        cm_log_info("wrote %s (test accuracy %.4f, %.1f s training)", options->out,
                    test_score.accuracy, train_seconds);
        printf("test_accuracy=%.4f checkpoint=%s\n", test_score.accuracy, options->out);
    }

done:
    if (step_log) fclose(step_log);
    cm_free_aligned(moment1);
    cm_free_aligned(moment2);
    cm_free_aligned(batch_inputs);
    cm_free_aligned(probs);
    cm_free_aligned(d_logits);
    cm_free_aligned(one_row);
    cm_free_aligned(batch_targets);
    free(order);
    free(batch_labels);
    free(batch_rows);
    cm_model_free(&model);
    cm_dataset_free(&dataset);
    return status;
}

int teacher_fit_main(int argc, char **argv, int first) {
    fit_options_t options = {
        .data = "fashion-mnist",
        .data_dir = NULL,
        .view = "full",
        .model = NULL,
        .out = NULL,
        .schedule = "cosine",
        .log_level = "info",
        .epochs = 10,
        .batch = 128,
        .lr = 1e-3f,
        .weight_decay = 0.01f,
        .seed = 1,
        .threads = 1,
        .max_train = 0,
        .max_test = 0,
        .warmup_steps = -1,
    };
    const cm_cli_option_t table[] = {
        {"data", CM_CLI_STRING, &options.data, "DATA",
         "dataset: a dataset folder (dataset.json + .npy files) or fashion-mnist", 0},
        {"data-dir", CM_CLI_STRING, &options.data_dir, "DIR",
         "files of a built-in dataset [default: /usr/share/datasets/fashion-mnist]", 0},
        {"view", CM_CLI_STRING, &options.view, "VIEW",
         "input view (fashion-mnist: full, pool14, pool7)", 0},
        {"model", CM_CLI_STRING, &options.model, "SPEC",
         "model spec, e.g. mlp:784-256-256-10 or vit:image=28x28,patch=7,dim=64,depth=2,heads=4",
         1},
        {"epochs", CM_CLI_INT, &options.epochs, "N", "passes over the training split", 0},
        {"batch", CM_CLI_INT, &options.batch, "B", "examples per optimizer step", 0},
        {"lr", CM_CLI_FLOAT, &options.lr, "X", "peak AdamW learning rate", 0},
        {"weight-decay", CM_CLI_FLOAT, &options.weight_decay, "X", "AdamW decoupled weight decay",
         0},
        {"schedule", CM_CLI_STRING, &options.schedule, "NAME",
         "learning rate schedule: cosine (warm-up, cosine to 10%), onecycle or constant", 0},
        {"warmup-steps", CM_CLI_LONG, &options.warmup_steps, "N",
         "warm-up steps [default: cosine 5% capped at 200, onecycle 30%, constant 0]", 0},
        {"seed", CM_CLI_LONG, &options.seed, "S", "seed for initialization and shuffling", 0},
        {"shift", CM_CLI_INT, &options.shift, "PIXELS",
         "augment: shift each training image by up to PIXELS in x and y (0: off)", 0},
        {"threads", CM_CLI_INT, &options.threads, "N", "OpenBLAS threads", 0},
        {"max-train", CM_CLI_INT, &options.max_train, "N",
         "use only the first N training examples (0: all)", 0},
        {"max-test", CM_CLI_INT, &options.max_test, "N",
         "use only the first N test examples (0: all)", 0},
        {"out", CM_CLI_STRING, &options.out, "FILE", "checkpoint to write (.safetensors)", 1},
        {"save-initial", CM_CLI_STRING, &options.save_initial, "FILE",
         "also write the initialized model (before the first step) as a checkpoint", 0},
        {"log-steps", CM_CLI_STRING, &options.log_steps, "FILE",
         "JSON-lines log, one line per optimizer step: step, epoch, lr, the batch's mean loss "
         "and its training rows (not the --shift offsets)",
         0},
        {"log-level", CM_CLI_STRING, &options.log_level, "LEVEL", "debug, info, warn or error", 0},
    };
    const int count = (int)(sizeof table / sizeof table[0]);
    const char *usage = "teacher-server fit --model SPEC --out FILE [options]";
    const char *description =
        "Trains a teacher (or any model) on one view of a dataset with AdamW and writes a\n"
        "safetensors checkpoint naming its model spec, view and dataset fingerprint.\n"
        "Prints per-epoch train loss, test accuracy and examples/s on stderr. The checkpoint\n"
        "keeps the effective options (`teacher-server inspect --print-config FILE`).\n"
        "\n"
        "examples:\n"
        "  teacher-server fit --view pool7 --model mlp:49-512-512-10 --epochs 10 --out "
        "comp.safetensors\n"
        "  teacher-server fit --config examples/fit.yaml --epochs 1      (a flag beats the file)";
    int help = 0;
    cm_status_t status = cm_cli_parse(table, count, argc, argv, first, &help);
    if (help) {
        cm_cli_usage(stdout, usage, description, table, count);
        return 0;
    }
    cm_log_level_t level = CM_LOG_INFO;
    if (status == CM_OK) status = cm_log_level_parse(options.log_level, &level);
    if (status == CM_OK && (options.epochs < 1 || options.batch < 1 || options.threads < 1))
        status = cm_fail(CM_ERR_INVALID_ARG, "--epochs, --batch and --threads must be at least 1");
    if (status == CM_OK && !(options.lr > 0.0f))
        status = cm_fail(CM_ERR_INVALID_ARG, "--lr must be positive");
    if (status == CM_OK && options.weight_decay < 0.0f)
        status = cm_fail(CM_ERR_INVALID_ARG, "--weight-decay must not be negative");
    if (status == CM_OK && (options.shift < 0 || options.shift > 8))
        status = cm_fail(CM_ERR_INVALID_ARG, "--shift must be 0..8 pixels");
    if (status == CM_OK && (options.max_train < 0 || options.max_test < 0))
        status = cm_fail(CM_ERR_INVALID_ARG, "--max-train and --max-test must not be negative");
    cm_schedule_kind_t schedule_kind;
    if (status == CM_OK && cm_schedule_parse_kind(options.schedule, &schedule_kind) != CM_OK)
        status =
            cm_fail(CM_ERR_INVALID_ARG, "--schedule must be cosine, onecycle or constant, not '%s'",
                    options.schedule);
    if (status == CM_OK && options.warmup_steps < -1)
        status = cm_fail(CM_ERR_INVALID_ARG, "--warmup-steps must not be negative");
    if (status != CM_OK) {
        fprintf(stderr, "teacher-server fit: %s\n", cm_last_error());
        return 2;
    }
    options.config = cm_cli_effective_json(table, count);
    if (!options.config) {
        fprintf(stderr, "teacher-server fit: out of memory\n");
        return 1;
    }
    cm_log_init("teacher-server", level);
    cm_blas_set_threads(options.threads);
    status = fit(&options);
    free(options.config);
    if (status != CM_OK) {
        cm_log_error("fit failed: %s", cm_last_error());
        return 1;
    }
    return 0;
}
