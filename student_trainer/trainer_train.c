/*
 * trainer_train: the training loop of student-trainer.
 *
 * The step reads: the feed (trainer_feed) hands out the next batch once
 * its teacher outputs are present or given up (it owns the epoch plan, the
 * look-ahead window of requests, the filtering decisions and the ledger of
 * tickets, and decides what the cache keeps); the loop gathers the batch,
 * runs the student forward, zeroes the gradients, runs the method's loss
 * and backward, steps AdamW on the student and on the method's own
 * parameters, tells the feed the batch is trained and checkpoints.  The
 * learning rate of both AdamW steps follows a cm_schedule (--schedule,
 * --warmup-steps; constant by default) over epochs x batches-per-epoch
 * steps: a pure function of the step, so a resumed run keeps its rates; the
 * state records the schedule and a resume with another one is refused.
 *
 * Every example is trained exactly once per epoch; the loop counts it (a
 * bitmap per epoch) and reports duplicates and misses in the metrics.
 *
 * --transfer-split NAME (transfer or valid): the split's examples join every
 * epoch as unlabelled rows (row train_count + r is row r of NAME; the cache,
 * the record and the plan are indexed so), shuffled in with the training rows
 * by the feed.  Their label is -1 for every method (the few-label mechanism
 * of --label-fraction: the label-dependent terms skip them), teachers are
 * asked for them with split NAME, and the state records NAME so a resume with
 * another plan is refused; ce is refused (it has nothing to learn from them).
 *
 * State: the student checkpoint (--out, safetensors, loadable by
 * teacher-server serve) and beside it the resumable state (--out + ".state":
 * student weights, AdamW moments, method parameters, step, epoch and batch
 * cursor, seed, and the committee manifest: teacher names, model hashes and
 * the dataset fingerprint), both written atomically at the end of every
 * epoch, every --checkpoint-every steps and on SIGINT/SIGTERM.  --resume
 * continues exactly; resuming against another committee is refused unless
 * --force-resume.
 *
 * Interruptions: SIGINT/SIGTERM set a flag that the step loop reads after
 * every batch and the committee client reads in every wait (at least every
 * 100 ms), so a signal is honoured within a second even while a teacher is
 * down or the handshake waits: the state reached so far (the cursor stays at
 * the batch that was being waited for) is saved and the run exits 130.
 * --stop-after is an interruption too (exit 130).  A signal before training
 * starts (during the handshake) saves nothing and exits 130.
 *
 * Writes the user asked for are checked: a metrics line that cannot be
 * written (flushed or closed), a --log-steps line, a record, a cache or the
 * summary on standard output fails the run with one sentence naming the
 * file (exit 1), after the state is saved.
 *
 * Replaying a run elsewhere (bench/parity, PyTorch): --save-initial writes
 * the seeded student before the first step, --log-steps one JSON line per
 * step (its rate, loss and terms, and the batch's rows in order).
 */
#include "trainer_train.h"

#include "cm_alloc.h"
#include "cm_blas.h"
#include "cm_cli.h"
#include "cm_curve.h"
#include "cm_dataset.h"
#include "cm_score.h"
#include "cm_log.h"
#include "cm_metrics.h"
#include "cm_model.h"
#include "cm_progress.h"
#include "cm_rng.h"
#include "cm_safetensors.h"
#include "cm_schedule.h"
#include "trainer_cache.h"
#include "trainer_committee.h"
#include "trainer_dd.h"
#include "trainer_feed.h"
#include "trainer_http.h"
#include "trainer_method.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct {
    const char *data;
    const char *data_dir;
    const char *view;
    const char *model;
    const char *out;
    const char *metrics;
    const char *method;
    const char *kd_teacher;
    const char *fitnet_teacher;
    const char *failure_policy;
    const char *cache;
    const char *cache_spill; /* DIR or ask-again; NULL: refuse what does not fit */
    const char *cache_dtype;
    const char *cache_spill_reads; /* pread or map */
    float cache_memory;            /* MB; 0: no bound */
    const char *record;
    const char *encoding;
    const char *log_level;
    const char *schedule;
    const char *http;
    const char *progress;    /* --progress auto, bar, lines or off */
    float progress_interval; /* --progress-interval: least seconds between two progress lines */
    cm_progress_mode_t progress_mode;
    const char *dd_router;
    const char *dd_feature;
    const char *transfer_split; /* NULL: none */
    const char *save_initial;   /* --save-initial: the student before the first step */
    const char *log_steps;      /* --log-steps: one JSON line per optimizer step */
    cm_cli_list_t teachers;
    const char *curve_secret_key; /* NULL: plaintext */
    cm_cli_list_t teacher_keys;   /* NAME=FILE */
    int epochs;
    int batch;
    float lr;
    long warmup_steps; /* < 0: the schedule's default */
    float weight_decay;
    long seed;
    float temperature;
    float kd_weight;
    float fitnet_weight;
    float label_fraction;
    long label_seed;
    int window;
    int teacher_timeout_ms;
    int resolve_ms;
    int threads;
    int max_train;
    int max_test;
    int checkpoint_every;
    long stop_after;
    int resume;
    int force_resume;
    float dd_answer_weight;
    float dd_router_weight;
    float dd_tau;
    float dd_align_weight;
    int dd_interactive;
    float dd_probe_match_weight;
    float dd_probe_answer_weight;
    float dd_filter;
    float dd_explore;
    int dd_filter_warmup;
    int holdout;
} train_options_t;

static volatile sig_atomic_t interrupted;

static void on_interrupt(int signal_number) {
    (void)signal_number;
    interrupted = 1;
}

/* Everything one run holds. */
typedef struct {
    train_options_t options;
    int replay;
    char *config; /* every option after precedence, JSON (cm_cli_effective_json) */
    cm_dataset_t *dataset;
    cm_model_t *student;
    trainer_method_t *method;      /* --method, whichever it is */
    int filtering;                 /* this epoch asks only the kept pairs */
    int forwarded_batch;           /* batch whose forward pass filtering already ran, or -1 */
    const float *forwarded_logits; /* its logits (the model's, valid until the next forward) */
    cm_score_t test_score;         /* of the last finished epoch, on the test split */
    cm_score_t valid_score;        /* on the --holdout examples, after the last epoch */
    trainer_committee_t *committee;
    trainer_cache_t *cache;
    trainer_feed_t *feed; /* the batches, and the teacher outputs they need */
    int teacher_count;
    char teacher_names[TRAINER_MAX_TEACHERS][64];
    char teacher_sha256[TRAINER_MAX_TEACHERS][65];
    unsigned needs[TRAINER_MAX_TEACHERS]; /* output bit sets per teacher */
    /* Rows: 0 .. train-1 are the training split's, train .. train+transfer_count-1 the
     * --transfer-split's (unlabelled: only teachers annotate them); the cache is indexed so. */
    cm_split_t transfer_split;
    int transfer_count;   /* 0: no --transfer-split */
    int32_t *labels;      /* [rows] the labels the student may see (-1: hidden, always for transfer
                             rows); for regression 0 marks a visible row, whose targets are the
                             split's */
    uint8_t *trained;     /* [rows] trained this epoch */
    int32_t *gather_rows; /* [batch] scratch: rows of one split */
    float *moment1, *moment2;
    float *batch_inputs, *d_logits, *d_hidden;
    int32_t *batch_labels;
    float *batch_targets;    /* regression: [batch][targets] */
    uint8_t *batch_labelled; /* regression: [batch] 1 = the row's targets are visible */
    float *teacher_logits[TRAINER_MAX_TEACHERS], *teacher_hidden[TRAINER_MAX_TEACHERS];
    float *teacher_feature[TRAINER_MAX_TEACHERS]; /* DiverseDistill: [batch][L_i * d_i] */
    uint8_t *teacher_present[TRAINER_MAX_TEACHERS];
    long step;
    cm_schedule_t schedule; /* --schedule: the learning rate of each step */
    long total_steps;       /* epochs x batches per epoch, the schedule's length */
    int epoch;              /* 1-based epoch in progress */
    int next_batch;         /* cursor inside the epoch (the feed's, as saved in the state) */
    FILE *metrics;
    FILE *log_steps; /* --log-steps */
    char state_path[1024];
    /* Prometheus metrics served on --http */
    cm_metrics_t *registry;
    trainer_http_t *http;
    cm_metrics_counter_t *steps_total, *examples_total;
    cm_metrics_gauge_t *epoch_gauge;
    cm_metrics_gauge_t *wait_counter; /* committee_trainer_wait_seconds_total (a float counter) */
    double wait_reported;             /* seconds of waiting it counts so far */
    cm_metrics_counter_t *teacher_bytes[TRAINER_MAX_TEACHERS],
        *teacher_examples[TRAINER_MAX_TEACHERS];
    cm_metrics_counter_t *teacher_skipped[TRAINER_MAX_TEACHERS];
    cm_metrics_counter_t *teacher_busy_timeouts[TRAINER_MAX_TEACHERS],
        *teacher_protocol_errors[TRAINER_MAX_TEACHERS], *teacher_nonfinite[TRAINER_MAX_TEACHERS],
        *teacher_timeouts[TRAINER_MAX_TEACHERS];
    cm_metrics_counter_t *teacher_down[TRAINER_MAX_TEACHERS];
    trainer_teacher_stats_t reported[TRAINER_MAX_TEACHERS]; /* what the counters hold so far */
    double waited_total;
    char *teacher_texts[CM_CLI_LIST_MAX]; /* --teacher values, parsed in place; endpoints point here
                                           */
    cm_curve_keypair_t curve_keys;        /* with --curve-secret-key; the committee borrows them */
    /* per-epoch counters */
    double loss_sum, term_sums[TRAINER_MAX_TERMS], wait_seconds; /* sums of loss·rows */
    double weight_sums[TRAINER_MAX_TEACHERS]; /* sums of router weight·rows (weighted methods) */
    long weighted_rows;                       /* rows those sums cover; -1: not weighted */
    long epoch_examples, epoch_duplicates, epoch_steps, epoch_transfer;
    long skipped_batches[TRAINER_MAX_TEACHERS], missing_rows[TRAINER_MAX_TEACHERS];
} run_t;

/* ---------------------------------------------------------------- set-up */

static cm_status_t find_teacher(const run_t *run, const char *name, const char *option,
                                int *index) {
    for (int teacher = 0; teacher < run->teacher_count; teacher++)
        if (strcmp(run->teacher_names[teacher], name) == 0) {
            *index = teacher;
            return CM_OK;
        }
    return cm_fail(CM_ERR_INVALID_ARG, "%s names teacher '%s', which is not in the committee",
                   option, name);
}

static cm_status_t build_labels(run_t *run) {
    const cm_split_data_t *train = &run->dataset->splits[CM_SPLIT_TRAIN];
    run->labels = malloc(sizeof(int32_t) * ((size_t)train->count + (size_t)run->transfer_count));
    if (!run->labels) return cm_fail(CM_ERR_NOMEM, "out of memory for labels");
    for (int id = 0; id < train->count; id++)
        run->labels[id] = train->labels ? train->labels[id] : 0;
    for (int row = 0; row < run->transfer_count; row++) /* never read: the split may have none */
        run->labels[train->count + row] = -1;
    float fraction = run->options.label_fraction;
    if (fraction >= 1.0f) return CM_OK;
    /* A fixed, seeded subset keeps its labels: the same for every method and training seed. */
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)train->count);
    if (!ids) return cm_fail(CM_ERR_NOMEM, "out of memory for labels");
    for (int id = 0; id < train->count; id++) ids[id] = id;
    cm_rng_t rng;
    cm_rng_seed(&rng, (uint64_t)run->options.label_seed ^ 0x1abe1ull);
    cm_rng_shuffle(&rng, ids, (size_t)train->count);
    int keep = (int)lround((double)fraction * train->count);
    for (int index = keep; index < train->count; index++) run->labels[ids[index]] = -1;
    free(ids);
    cm_log_info("few-label regime: %d of %d training labels visible (--label-fraction %g)", keep,
                train->count, (double)fraction);
    return CM_OK;
}

static cm_status_t allocate_buffers(run_t *run) {
    const cm_model_spec_t *spec = cm_model_spec(run->student);
    int batch = run->options.batch,
        train = run->dataset->splits[CM_SPLIT_TRAIN].count + run->transfer_count;
    int hidden = 0;
    cm_model_feature(run->student, "hidden", &hidden, NULL);
    size_t params = cm_model_param_count(run->student);
    run->moment1 = cm_alloc_floats(params);
    run->moment2 = cm_alloc_floats(params);
    run->batch_inputs = cm_alloc_floats((size_t)batch * (size_t)run->dataset->features);
    run->d_logits = cm_alloc_floats((size_t)batch * (size_t)spec->classes);
    run->d_hidden = cm_alloc_floats((size_t)batch * (size_t)hidden);
    run->batch_labels = malloc(sizeof(int32_t) * (size_t)batch);
    run->batch_targets = cm_alloc_floats((size_t)batch * (size_t)(run->dataset->targets + 1));
    run->batch_labelled = malloc((size_t)batch);
    run->trained = calloc((size_t)train, 1);
    run->gather_rows = malloc(sizeof(int32_t) * (size_t)batch);
    int ok = run->moment1 && run->moment2 && run->batch_inputs && run->d_logits && run->d_hidden &&
             run->batch_labels && run->batch_targets && run->batch_labelled && run->trained &&
             run->gather_rows;
    for (int teacher = 0; teacher < run->teacher_count; teacher++) {
        int teacher_hidden = trainer_cache_width(run->cache, teacher, TRAINER_OUTPUT_HIDDEN);
        run->teacher_logits[teacher] = cm_alloc_floats((size_t)batch * (size_t)spec->classes);
        run->teacher_hidden[teacher] =
            cm_alloc_floats((size_t)batch * (size_t)(teacher_hidden ? teacher_hidden : 1));
        run->teacher_present[teacher] = calloc((size_t)batch, 1);
        int feature_width = trainer_cache_width(run->cache, teacher, TRAINER_OUTPUT_TOKENS);
        run->teacher_feature[teacher] =
            cm_alloc_floats((size_t)batch * (size_t)(feature_width ? feature_width : 1));
        ok = ok && run->teacher_feature[teacher];
        ok = ok && run->teacher_logits[teacher] && run->teacher_hidden[teacher] &&
             run->teacher_present[teacher];
    }
    return ok ? CM_OK : cm_fail(CM_ERR_NOMEM, "out of memory for training buffers");
}

static void free_run(run_t *run) {
    trainer_http_stop(&run->http);
    cm_metrics_free(&run->registry);
    trainer_feed_free(&run->feed);
    trainer_committee_free(&run->committee);
    for (int index = 0; index < CM_CLI_LIST_MAX; index++) free(run->teacher_texts[index]);
    trainer_cache_free(&run->cache);
    trainer_method_free(&run->method);
    cm_model_free(&run->student);
    cm_dataset_free(&run->dataset);
    cm_free_aligned(run->moment1);
    cm_free_aligned(run->moment2);
    cm_free_aligned(run->batch_inputs);
    cm_free_aligned(run->d_logits);
    cm_free_aligned(run->d_hidden);
    free(run->batch_labels);
    cm_free_aligned(run->batch_targets);
    free(run->batch_labelled);
    free(run->labels);
    free(run->trained);
    free(run->gather_rows);
    for (int teacher = 0; teacher < TRAINER_MAX_TEACHERS; teacher++) {
        cm_free_aligned(run->teacher_logits[teacher]);
        cm_free_aligned(run->teacher_hidden[teacher]);
        cm_free_aligned(run->teacher_feature[teacher]);
        free(run->teacher_present[teacher]);
    }
    if (run->metrics) fclose(run->metrics); /* after a failure; train() closes it checked */
    free(run->config);
    if (run->log_steps) fclose(run->log_steps);
}

/* ---------------------------------------------------------------- state */

static void manifest_text(const run_t *run, char *text, size_t size) {
    size_t used = 0;
    text[0] = '\0';
    for (int teacher = 0; teacher < run->teacher_count && used < size; teacher++)
        used += (size_t)snprintf(text + used, size - used, "%s%s=%s", teacher ? "," : "",
                                 run->teacher_names[teacher], run->teacher_sha256[teacher]);
}

enum { STATE_BLOCKS = 6 };

/* The float blocks of the resumable state with their tensor names, in file order: the
 * student's parameters and AdamW moments, then the method's. */
static void state_blocks(run_t *run, const char *names[STATE_BLOCKS], float *blocks[STATE_BLOCKS]) {
    static const char *const block_names[STATE_BLOCKS] = {
        "student.params", "student.m", "student.v", "method.params", "method.m", "method.v"};
    float *const block_data[STATE_BLOCKS] = {cm_model_params(run->student),
                                             run->moment1,
                                             run->moment2,
                                             trainer_method_params(run->method),
                                             trainer_method_moment1(run->method),
                                             trainer_method_moment2(run->method)};
    for (int index = 0; index < STATE_BLOCKS; index++) {
        names[index] = block_names[index];
        blocks[index] = block_data[index];
    }
}

static cm_status_t save_state(run_t *run) {
    char epoch_text[16], batch_text[16], step_text[32], seed_text[32], warmup_text[32],
        manifest[1024], spec_text[CM_MODEL_SPEC_MAX];
    snprintf(epoch_text, sizeof epoch_text, "%d", run->epoch);
    snprintf(warmup_text, sizeof warmup_text, "%ld", run->options.warmup_steps);
    snprintf(batch_text, sizeof batch_text, "%d", run->next_batch);
    snprintf(step_text, sizeof step_text, "%ld", run->step);
    snprintf(seed_text, sizeof seed_text, "%ld", run->options.seed);
    manifest_text(run, manifest, sizeof manifest);
    cm_model_spec_format(cm_model_spec(run->student), spec_text, sizeof spec_text);
    size_t params = cm_model_param_count(run->student);
    size_t method_params = trainer_method_param_count(run->method);
    cm_tensor_t tensors[STATE_BLOCKS];
    const char *names[STATE_BLOCKS];
    float *blocks[STATE_BLOCKS];
    state_blocks(run, names, blocks);
    int count = 0;
    for (int index = 0; index < STATE_BLOCKS; index++) {
        size_t elements = index < 3 ? params : method_params;
        if (!elements) continue;
        memset(&tensors[count], 0, sizeof tensors[count]);
        snprintf(tensors[count].name, sizeof tensors[count].name, "%s", names[index]);
        tensors[count].dtype = CM_DTYPE_F32;
        tensors[count].ndim = 1;
        tensors[count].shape[0] = (int64_t)elements;
        tensors[count].data = blocks[index];
        count++;
    }
    const char *transfer = run->transfer_count ? cm_split_name(run->transfer_split) : "none";
    const char *metadata[] = {"kind",           "committee-trainer-state-1",
                              "transfer_split", transfer,
                              "model",          spec_text,
                              "method",         run->options.method,
                              "epoch",          epoch_text,
                              "batch",          batch_text,
                              "step",           step_text,
                              "seed",           seed_text,
                              "schedule",       run->options.schedule,
                              "warmup_steps",   warmup_text,
                              "fingerprint",    run->dataset->fingerprint,
                              "committee",      manifest};
    return cm_safetensors_write(run->state_path, tensors, count, metadata,
                                (int)(sizeof metadata / sizeof metadata[0]) / 2);
}

/* `test_metric` is the test accuracy (classification) or RMSE (regression). */
static cm_status_t save_student(run_t *run, double test_metric) {
    char accuracy_text[32], manifest[1024], epochs_text[16];
    snprintf(accuracy_text, sizeof accuracy_text, "%.4f", test_metric);
    snprintf(epochs_text, sizeof epochs_text, "%d", run->options.epochs);
    manifest_text(run, manifest, sizeof manifest);
    const char *metadata[] = {CM_DATASET_METADATA(run->dataset),
                              "method",
                              run->options.method,
                              "committee",
                              manifest,
                              "epochs",
                              epochs_text,
                              run->dataset->task == CM_TASK_REGRESSION ? "test_rmse"
                                                                       : "test_accuracy",
                              accuracy_text,
                              "format",
                              "committee-checkpoint-1",
                              "config",
                              run->config};
    return cm_model_save(run->student, run->options.out, metadata,
                         (int)(sizeof metadata / sizeof metadata[0]) / 2);
}

static cm_status_t load_state(run_t *run) {
    cm_safetensors_t *file = NULL;
    cm_status_t status = cm_safetensors_read(&file, run->state_path);
    if (status != CM_OK) return status;
    const char *kind = cm_safetensors_metadata(file, "kind");
    const char *model = cm_safetensors_metadata(file, "model");
    const char *method = cm_safetensors_metadata(file, "method");
    const char *fingerprint = cm_safetensors_metadata(file, "fingerprint");
    const char *committee = cm_safetensors_metadata(file, "committee");
    const char *epoch = cm_safetensors_metadata(file, "epoch");
    const char *batch = cm_safetensors_metadata(file, "batch");
    const char *step = cm_safetensors_metadata(file, "step");
    const char *seed = cm_safetensors_metadata(file, "seed");
    /* States written before --schedule existed trained with a constant rate. */
    const char *schedule = cm_safetensors_metadata(file, "schedule");
    const char *warmup = cm_safetensors_metadata(file, "warmup_steps");
    if (!schedule) schedule = "constant";
    if (!warmup) warmup = "-1";
    const char *transfer = cm_safetensors_metadata(file, "transfer_split"); /* since transfer */
    const char *wanted = run->transfer_count ? cm_split_name(run->transfer_split) : "none";
    if (!transfer) transfer = "none";
    char spec_text[CM_MODEL_SPEC_MAX], manifest[1024];
    cm_model_spec_format(cm_model_spec(run->student), spec_text, sizeof spec_text);
    manifest_text(run, manifest, sizeof manifest);
    if (!kind || strcmp(kind, "committee-trainer-state-1") || !model || !method || !fingerprint ||
        !committee || !epoch || !batch || !step || !seed) {
        status = cm_fail(CM_ERR_FORMAT, "%s is not a committee trainer state", run->state_path);
    } else if (strcmp(model, spec_text) || strcmp(method, run->options.method) ||
               atol(seed) != run->options.seed) {
        status = cm_fail(CM_ERR_MISMATCH,
                         "%s is a state of model %s, method %s, seed %s; this run is %s, %s, %ld",
                         run->state_path, model, method, seed, spec_text, run->options.method,
                         run->options.seed);
    } else if (strcmp(schedule, run->options.schedule) ||
               atol(warmup) != run->options.warmup_steps) {
        status = cm_fail(CM_ERR_MISMATCH,
                         "%s was trained with --schedule %s and --warmup-steps %s; this run asks "
                         "for --schedule %s and --warmup-steps %ld (-1: the schedule's default), "
                         "and a resumed run must keep its schedule",
                         run->state_path, schedule, warmup, run->options.schedule,
                         run->options.warmup_steps);
    } else if (strcmp(transfer, wanted)) {
        status = cm_fail(CM_ERR_MISMATCH,
                         "%s was trained with --transfer-split %s; this run asks for %s, and a "
                         "resumed run must keep its epoch plan",
                         run->state_path, transfer, wanted);
    } else if (strcmp(fingerprint, run->dataset->fingerprint)) {
        status = cm_fail(CM_ERR_MISMATCH, "%s was trained on dataset %s, this run uses %s",
                         run->state_path, fingerprint, run->dataset->fingerprint);
    } else if (strcmp(committee, manifest) && !run->options.force_resume) {
        status = cm_fail(CM_ERR_MISMATCH,
                         "%s was trained with committee [%s], not [%s]; pass --force-resume to "
                         "continue anyway",
                         run->state_path, committee, manifest);
    }
    const char *names[STATE_BLOCKS];
    float *blocks[STATE_BLOCKS];
    state_blocks(run, names, blocks);
    size_t params = cm_model_param_count(run->student);
    size_t method_params = trainer_method_param_count(run->method);
    for (int index = 0; status == CM_OK && index < STATE_BLOCKS; index++) {
        size_t elements = index < 3 ? params : method_params;
        if (!elements) continue;
        const cm_tensor_t *tensor = cm_safetensors_find(file, names[index]);
        if (!tensor || tensor->dtype != CM_DTYPE_F32 ||
            cm_tensor_elements(tensor) != (int64_t)elements)
            status = cm_fail(CM_ERR_FORMAT, "%s: '%s' is missing or has the wrong size",
                             run->state_path, names[index]);
        else
            memcpy(blocks[index], tensor->data, sizeof(float) * elements);
    }
    if (status == CM_OK) {
        run->epoch = atoi(epoch);
        run->next_batch = atoi(batch);
        run->step = atol(step);
        cm_log_info("resuming from %s: epoch %d, batch %d, step %ld", run->state_path, run->epoch,
                    run->next_batch, run->step);
    }
    cm_safetensors_free(&file);
    return status;
}

/* ---------------------------------------------------------------- teacher traffic */

/* Training ids are 0 .. trainable-1; the last --holdout ids are kept for validation. */
static int trainable_count(const run_t *run) {
    return run->dataset->splits[CM_SPLIT_TRAIN].count - run->options.holdout;
}

/*
 * The student of the last forward pass, whose outputs are `outputs`, as the method sees it:
 * its "hidden" feature and its head found by name, the gradients the method writes.
 */
static trainer_student_t student_view(run_t *run, const float *outputs) {
    cm_tensor_t head_weight, head_bias;
    cm_model_head(run->student, &head_weight, &head_bias);
    float *params = cm_model_params(run->student), *grads = cm_model_grads(run->student);
    int hidden = 0;
    return (trainer_student_t){
        .outputs = outputs,
        .hidden = cm_model_feature(run->student, "hidden", &hidden, NULL),
        .head_weight = head_weight.data,
        .head_bias = head_bias.data,
        .d_outputs = run->d_logits,
        .d_hidden = run->d_hidden,
        .d_head_weight = grads + ((const float *)head_weight.data - params),
        .d_head_bias = grads + ((const float *)head_bias.data - params),
    };
}

/*
 * inputs[rows][features] <- the student's view of plan rows ids[rows]: training rows, and
 * transfer rows (>= the training split's count), gathered one run of same-split rows at a time.
 */
static void gather_plan_rows(run_t *run, const int32_t *ids, int rows, float *inputs) {
    int base = run->dataset->splits[CM_SPLIT_TRAIN].count;
    size_t features = (size_t)run->dataset->features;
    for (int start = 0; start < rows;) {
        int transfer = ids[start] >= base, end = start;
        while (end < rows && (ids[end] >= base) == transfer) {
            run->gather_rows[end - start] = ids[end] - (transfer ? base : 0);
            end++;
        }
        cm_dataset_gather(run->dataset, transfer ? run->transfer_split : CM_SPLIT_TRAIN,
                          run->gather_rows, end - start, inputs + (size_t)start * features);
        start = end;
    }
}

/*
 * Filtering, the feed's choose hook (a method that chooses, e.g. diversedistill with
 * --dd-filter): runs the current student on the batch and lets the method decide, per (row,
 * teacher), whether the teacher is asked, with a seed of its own per batch.  Rows already in
 * the cache are free and always used.
 */
static void choose_pairs(void *context, int batch_index, const int32_t *ids, int rows,
                         uint8_t *const *kept) {
    run_t *run = context;
    gather_plan_rows(run, ids, rows, run->batch_inputs);
    /* Filtering asks one batch ahead, right after the previous step: no update comes between
     * this forward pass and the training step on this batch, which reuses it. */
    run->forwarded_logits = cm_model_forward(run->student, run->batch_inputs, rows);
    run->forwarded_batch = batch_index;
    trainer_student_t student = student_view(run, run->forwarded_logits);
    uint64_t seed = ((uint64_t)run->options.seed * 1000003ull + (uint64_t)run->epoch) * 65537ull +
                    (uint64_t)batch_index;
    trainer_method_choose(run->method, &student, rows, seed, kept);
}

static void update_metrics(run_t *run);

/* The feed's waiting hook: /metrics shows BUSY, timeouts and bad replies while it waits. */
static void show_waiting(void *context) { update_metrics(context); }

/* ---------------------------------------------------------------- one step */

/*
 * --log-steps: one JSON line per optimizer step (1-based), with the epoch, the batch within
 * it, the learning rate the step used, the loss and its terms as the method computed them,
 * and the training rows in batch order, so another implementation can replay the same run
 * (bench/parity).  CM_ERR_IO naming the file when the line cannot be written.
 */
static cm_status_t log_step(run_t *run, const trainer_feed_batch_t *batch, float lr,
                            const trainer_loss_t *loss) {
    FILE *file = run->log_steps;
    fprintf(file, "{\"step\":%ld,\"epoch\":%d,\"batch\":%d,\"lr\":%.9g,\"loss\":%.17g,", run->step,
            run->epoch, batch->index, (double)lr, loss->total);
    for (int term = 0; term < trainer_method_term_count(run->method); term++)
        fprintf(file, "\"%s\":%.17g,", trainer_method_term_name(run->method, term),
                loss->term[term]);
    fprintf(file, "\"ids\":[");
    for (int row = 0; row < batch->rows; row++)
        fprintf(file, row ? ",%d" : "%d", (int)batch->ids[row]);
    fprintf(file, "]}\n");
    if (ferror(file))
        return cm_fail(CM_ERR_IO, "cannot write the per-step log to %s: %s", run->options.log_steps,
                       strerror(errno ? errno : EIO));
    return CM_OK;
}

/*
 * One step: next batch (inputs, labels, the teachers' outputs the method asked for, from the
 * cache), forward, zero_grad, the method's loss and its backward into d_logits / d_hidden,
 * the student's backward, AdamW on the student and the method's own update.  Whatever
 * --method is, it is only trainer_method_* calls here.
 */
static cm_status_t train_batch(run_t *run, const trainer_feed_batch_t *next) {
    int rows = next->rows, batch_index = next->index;
    const int32_t *ids = next->ids;
    trainer_batch_t batch = {.rows = rows, .labels = run->batch_labels};
    gather_plan_rows(run, ids, rows, run->batch_inputs);
    int train_count = run->dataset->splits[CM_SPLIT_TRAIN].count;
    for (int row = 0; row < rows; row++) {
        int id = ids[row];
        run->batch_labels[row] = run->labels[id];
        if (run->trained[id]) run->epoch_duplicates++;
        run->trained[id] = 1;
        run->epoch_transfer += id >= train_count;
    }
    if (run->dataset->task == CM_TASK_REGRESSION) { /* the rows' targets, and which are visible */
        size_t targets = (size_t)run->dataset->targets;
        for (int row = 0; row < rows; row++) {
            run->batch_labelled[row] = run->labels[ids[row]] >= 0;
            if (ids[row] >= train_count) /* a transfer row: no targets, never read */
                memset(run->batch_targets + (size_t)row * targets, 0, sizeof(float) * targets);
            else
                memcpy(run->batch_targets + (size_t)row * targets,
                       run->dataset->splits[CM_SPLIT_TRAIN].targets + (size_t)ids[row] * targets,
                       sizeof(float) * targets);
        }
        batch = (trainer_batch_t){
            .rows = rows, .targets = run->batch_targets, .labelled = run->batch_labelled};
    }
    for (int teacher = 0; teacher < run->teacher_count; teacher++) {
        if (!run->needs[teacher]) continue;
        float *destination[TRAINER_OUTPUT_COUNT] = {run->teacher_logits[teacher],
                                                    run->teacher_hidden[teacher],
                                                    run->teacher_feature[teacher]};
        int missing = 0, unrecorded = 0;
        for (int row = 0; row < rows; row++) {
            int id = ids[row], present = 1;
            for (int output = 0; output < TRAINER_OUTPUT_COUNT; output++)
                if ((run->needs[teacher] >> output) & 1)
                    present &= trainer_cache_has(run->cache, teacher, output, id);
            unrecorded += !present;
            if (next->kept[teacher] && !next->kept[teacher][row]) present = 0; /* filtered out */
            run->teacher_present[teacher][row] = (uint8_t)present;
            missing += !present;
            if (!present) continue;
            for (int output = 0; output < TRAINER_OUTPUT_COUNT; output++) {
                if (!((run->needs[teacher] >> output) & 1)) continue;
                int width = trainer_cache_width(run->cache, teacher, output);
                cm_status_t status = trainer_cache_get(run->cache, teacher, output, id,
                                                       destination[output] + (size_t)row * width);
                if (status != CM_OK) return status;
            }
        }
        if (unrecorded && !run->committee)
            return cm_fail(CM_ERR_NOT_FOUND,
                           "the record lacks outputs of teacher '%s' for %d examples of this batch "
                           "(e.g. example %d)",
                           run->teacher_names[teacher], unrecorded, ids[0]);
        if (missing && !run->filtering) {
            cm_metrics_counter_add(run->teacher_skipped[teacher], 1);
            run->skipped_batches[teacher]++;
            run->missing_rows[teacher] += missing;
        }
        batch.teacher_present[teacher] = run->teacher_present[teacher];
        batch.teacher_logits[teacher] = destination[TRAINER_OUTPUT_LOGITS];
        if ((run->needs[teacher] >> TRAINER_OUTPUT_HIDDEN) & 1)
            batch.teacher_hidden[teacher] = destination[TRAINER_OUTPUT_HIDDEN];
        if ((run->needs[teacher] >> TRAINER_OUTPUT_TOKENS) & 1)
            batch.teacher_tokens[teacher] = destination[TRAINER_OUTPUT_TOKENS];
    }
    cm_model_zero_grads(run->student);
    trainer_method_zero_grad(run->method);
    const float *logits = run->forwarded_batch == batch_index
                              ? run->forwarded_logits
                              : cm_model_forward(run->student, run->batch_inputs, rows);
    run->forwarded_batch = -1;
    trainer_student_t student = student_view(run, logits);
    trainer_loss_t loss;
    trainer_method_loss(run->method, &batch, &student, &loss);
    if (!isfinite(loss.total))
        return cm_fail(CM_ERR_INTERNAL, "the loss is not finite at step %ld; lower --lr",
                       run->step + 1);
    cm_model_backward(run->student, run->d_logits, run->d_hidden, rows);
    cm_adamw_config_t adamw = cm_adamw_defaults();
    /* A pure function of the step (0-based here): a resumed run gets the same rates. */
    adamw.learning_rate = cm_schedule_lr(&run->schedule, run->step, run->total_steps);
    adamw.weight_decay = run->options.weight_decay;
    run->step++;
    cm_model_adamw_step(run->student, run->moment1, run->moment2, &adamw, run->step);
    trainer_method_update(run->method, &adamw, run->step);
    if (run->log_steps) {
        cm_status_t status = log_step(run, next, adamw.learning_rate, &loss);
        if (status != CM_OK) return status;
    }
    run->loss_sum += loss.total * rows;
    for (int term = 0; term < TRAINER_MAX_TERMS; term++)
        run->term_sums[term] += loss.term[term] * rows;
    if (loss.weighted) {
        if (run->weighted_rows < 0) run->weighted_rows = 0;
        run->weighted_rows += loss.weighted_rows;
        for (int teacher = 0; teacher < run->teacher_count; teacher++)
            run->weight_sums[teacher] += loss.teacher_weight[teacher] * loss.weighted_rows;
    }
    run->epoch_examples += rows;
    run->epoch_steps++;
    cm_metrics_counter_add(run->steps_total, 1);
    cm_metrics_counter_add(run->examples_total, (uint64_t)rows);
    return CM_OK;
}

/* ---------------------------------------------------------------- epochs */

/* One JSON line for the finished `epoch`; `distinct` examples were trained in it; the scores
 * are run->test_score and run->valid_score (accuracy and loss, or RMSE and MAE for regression).
 * CM_ERR_IO naming --metrics when the line could not be written and flushed. */
static cm_status_t write_metrics(run_t *run, int epoch, long distinct, double seconds) {
    if (!run->metrics) return CM_OK;
    double examples = run->epoch_examples ? (double)run->epoch_examples : 1.0;
    fprintf(run->metrics, "{\"epoch\":%d,\"steps\":%ld,\"lr\":%.9g,\"loss\":%.6f,", epoch,
            run->step, (double)cm_schedule_lr(&run->schedule, run->step - 1, run->total_steps),
            run->loss_sum / examples);
    for (int term = 0; term < trainer_method_term_count(run->method); term++)
        fprintf(run->metrics, "\"%s\":%.6f,", trainer_method_term_name(run->method, term),
                run->term_sums[term] / examples);
    fprintf(run->metrics,
            "\"train_examples\":%ld,\"transfer_examples\":%ld,\"distinct_examples\":%ld,"
            "\"duplicates\":%ld,",
            run->epoch_examples, run->epoch_transfer, distinct, run->epoch_duplicates);
    /* valid_* only with --holdout: without it there is nothing they were measured on. */
    if (run->dataset->task == CM_TASK_REGRESSION) {
        if (run->options.holdout > 0)
            fprintf(run->metrics, "\"valid_rmse\":%.6f,\"valid_mae\":%.6f,", run->valid_score.rmse,
                    run->valid_score.mae);
        fprintf(run->metrics, "\"test_rmse\":%.6f,\"test_mae\":%.6f,\"test_loss\":%.6f,",
                run->test_score.rmse, run->test_score.mae, run->test_score.loss);
    } else {
        if (run->options.holdout > 0)
            fprintf(run->metrics, "\"valid_accuracy\":%.6f,", run->valid_score.accuracy);
        fprintf(run->metrics, "\"test_accuracy\":%.6f,\"test_loss\":%.6f,",
                run->test_score.accuracy, run->test_score.loss);
    }
    fprintf(run->metrics, "\"seconds\":%.3f,\"examples_per_second\":%.1f,\"wait_seconds\":%.3f,",
            seconds, seconds > 0 ? (double)run->epoch_examples / seconds : 0.0, run->wait_seconds);
    /* The teacher cache's anonymous memory: now, and at most (loading a saved cache too). */
    fprintf(run->metrics,
            "\"cache\":{\"memory_bytes\":%zu,\"peak_memory_bytes\":%zu,\"spilled_bytes\":%zu},"
            "\"teachers\":{",
            trainer_cache_resident_bytes(run->cache), trainer_cache_peak_bytes(run->cache),
            trainer_cache_spilled_bytes(run->cache));
    for (int teacher = 0; teacher < run->teacher_count; teacher++) {
        trainer_teacher_stats_t none = {0};
        const trainer_teacher_stats_t *stats =
            run->committee ? trainer_committee_stats(run->committee, teacher) : &none;
        fprintf(
            run->metrics,
            "%s\"%s\":{\"requests\":%ld,\"replies\":%ld,\"examples_received\":%ld,\"bytes\":%llu,"
            "\"busy\":%ld,\"timeouts\":%ld,\"down_events\":%ld,\"failed_requests\":%ld,"
            "\"skipped_batches\":%ld,\"missing_rows\":%ld,\"filter_needed\":%ld,\"filter_skipped\":"
            "%ld,\"busy_timeouts\":%ld,\"protocol_errors\":%ld,\"nonfinite_replies\":%ld",
            teacher ? "," : "", run->teacher_names[teacher], stats->requests, stats->replies,
            stats->examples, (unsigned long long)stats->bytes, stats->busy, stats->timeouts,
            stats->down_events, stats->failed_tickets, run->skipped_batches[teacher],
            run->missing_rows[teacher], trainer_feed_filter_needed(run->feed, teacher),
            trainer_feed_filter_skipped(run->feed, teacher), stats->busy_timeouts,
            stats->protocol_errors, stats->nonfinite_replies);
        if (run->weighted_rows >= 0) /* the router's mean weight, over the rows with a teacher */
            fprintf(run->metrics, ",\"router_weight\":%.6f",
                    run->weighted_rows ? run->weight_sums[teacher] / (double)run->weighted_rows
                                       : 0.0);
        if (run->committee) { /* the replies of each replica address, live or gone */
            trainer_endpoint_stats_t seen[TRAINER_MAX_SEEN];
            int count =
                trainer_committee_endpoints(run->committee, teacher, seen, TRAINER_MAX_SEEN);
            fprintf(run->metrics, ",\"endpoints\":{");
            for (int index = 0; index < count; index++)
                fprintf(run->metrics, "%s\"%s\":{\"replies\":%ld,\"examples\":%ld,\"live\":%s}",
                        index ? "," : "", seen[index].address, seen[index].replies,
                        seen[index].examples, seen[index].live ? "true" : "false");
            fprintf(run->metrics, "}");
        }
        fprintf(run->metrics, "}");
    }
    fprintf(run->metrics, "}}\n");
    /* A full disk shows at the flush (or already in the stream's error flag). */
    if (fflush(run->metrics) != 0 || ferror(run->metrics))
        return cm_fail(CM_ERR_IO, "cannot write metrics to %s: %s", run->options.metrics,
                       strerror(errno ? errno : EIO));
    return CM_OK;
}

/* Creates the Prometheus registry and starts --http (a failure to listen is only a warning)
 * before the teachers are asked: /readyz tells what the trainer waits for. */
static cm_status_t start_http(run_t *run) {
    cm_status_t status = cm_metrics_new(&run->registry);
    if (status != CM_OK) return status;
    if (strcmp(run->options.http, "off") != 0 &&
        trainer_http_start(run->options.http, run->registry, &run->http) != CM_OK)
        cm_log_warn("no /metrics: %s", cm_last_error());
    trainer_http_set_ready(run->http, run->replay ? "loading the recorded teacher outputs"
                                                  : "waiting for every teacher's Hello");
    return CM_OK;
}

/* Registers the Prometheus metrics known once the teachers said Hello: counters and error
 * counters from 0, and committee_teacher_info per teacher.  Gauges without a value yet (the
 * loss, the test accuracy) are registered when they get one. */
static void register_metrics(run_t *run) {
    cm_metrics_register_counter(run->registry, "committee_trainer_steps_total",
                                "Optimizer steps taken.", NULL, &run->steps_total);
    cm_metrics_register_counter(run->registry, "committee_trainer_examples_total",
                                "Training examples processed.", NULL, &run->examples_total);
    cm_metrics_register_gauge(run->registry, "committee_trainer_epoch", "Epoch in progress.", NULL,
                              &run->epoch_gauge);
    cm_metrics_gauge_set(run->epoch_gauge, run->epoch);
    cm_metrics_register_float_counter(run->registry, "committee_trainer_wait_seconds_total",
                                      "Seconds the training loop waited for teachers.", NULL,
                                      &run->wait_counter);
    for (int teacher = 0; teacher < run->teacher_count; teacher++) {
        cm_metrics_label_t label = {"teacher", run->teacher_names[teacher]};
        if (run->committee) {
            const trainer_teacher_info_t *info = trainer_committee_info(run->committee, teacher);
            cm_metrics_label_t labels[4] = {
                {"name", info->name},
                {"role", info->role == CM_WIRE_ROLE_FOUNDATION ? "foundation" : "complementary"},
                {"model", info->model_id},
                {"view", info->view}};
            cm_metrics_register_info(run->registry, "committee_teacher_info",
                                     "A teacher of the committee, as its Hello describes it.",
                                     labels, 4);
        }
        cm_metrics_register_counter(run->registry, "committee_trainer_teacher_bytes_total",
                                    "Bytes received from a teacher.", &label,
                                    &run->teacher_bytes[teacher]);
        cm_metrics_register_counter(run->registry, "committee_trainer_teacher_examples_total",
                                    "Example outputs received from a teacher.", &label,
                                    &run->teacher_examples[teacher]);
        cm_metrics_register_counter(run->registry, "committee_trainer_skipped_batches_total",
                                    "Batches trained without (some rows of) a teacher.", &label,
                                    &run->teacher_skipped[teacher]);
        cm_metrics_register_counter(run->registry, "committee_trainer_teacher_down_events_total",
                                    "Times a teacher was found down.", &label,
                                    &run->teacher_down[teacher]);
        cm_metrics_register_counter(run->registry, "committee_trainer_teacher_timeouts_total",
                                    "Requests a teacher did not answer within the deadline.",
                                    &label, &run->teacher_timeouts[teacher]);
        cm_metrics_register_counter(run->registry, "committee_trainer_teacher_busy_timeouts_total",
                                    "Requests a teacher answered BUSY for a whole deadline.",
                                    &label, &run->teacher_busy_timeouts[teacher]);
        cm_metrics_register_counter(
            run->registry, "committee_trainer_teacher_protocol_errors_total",
            "Replies of a teacher this trainer could not use (asked again).", &label,
            &run->teacher_protocol_errors[teacher]);
        cm_metrics_register_counter(run->registry,
                                    "committee_trainer_teacher_nonfinite_replies_total",
                                    "Replies of a teacher holding NaN or Inf (not used).", &label,
                                    &run->teacher_nonfinite[teacher]);
    }
}

/* Sets a gauge first known now (registered on first use, so no scrape sees a made-up 0). */
static void set_known_gauge(run_t *run, const char *name, const char *help, double value) {
    cm_metrics_gauge_t *gauge = NULL;
    if (cm_metrics_register_gauge(run->registry, name, help, NULL, &gauge) == CM_OK)
        cm_metrics_gauge_set(gauge, value);
}

/* Brings the counters up to date with the committee's statistics. */
static void update_metrics(run_t *run) {
    cm_metrics_gauge_set(run->epoch_gauge, run->epoch);
    double waited = run->waited_total + run->wait_seconds;
    cm_metrics_gauge_add(run->wait_counter, waited - run->wait_reported);
    run->wait_reported = waited;
    if (!run->committee) return;
    for (int teacher = 0; teacher < run->teacher_count; teacher++) {
        const trainer_teacher_stats_t *stats = trainer_committee_stats(run->committee, teacher);
        trainer_teacher_stats_t *reported = &run->reported[teacher];
        cm_metrics_counter_add(run->teacher_bytes[teacher], stats->bytes - reported->bytes);
        cm_metrics_counter_add(run->teacher_examples[teacher],
                               (uint64_t)(stats->examples - reported->examples));
        cm_metrics_counter_add(run->teacher_down[teacher],
                               (uint64_t)(stats->down_events - reported->down_events));
        cm_metrics_counter_add(run->teacher_timeouts[teacher],
                               (uint64_t)(stats->timeouts - reported->timeouts));
        cm_metrics_counter_add(run->teacher_busy_timeouts[teacher],
                               (uint64_t)(stats->busy_timeouts - reported->busy_timeouts));
        cm_metrics_counter_add(run->teacher_protocol_errors[teacher],
                               (uint64_t)(stats->protocol_errors - reported->protocol_errors));
        cm_metrics_counter_add(run->teacher_nonfinite[teacher],
                               (uint64_t)(stats->nonfinite_replies - reported->nonfinite_replies));
        *reported = *stats;
    }
}

static cm_status_t save_all(run_t *run, double accuracy) {
    cm_status_t status = save_student(run, accuracy);
    if (status == CM_OK) status = save_state(run);
    return status;
}

/*
 * Stops the run where it is (a signal or --stop-after): saves the student and the state at the
 * cursor (the batches before run->next_batch are trained), and the teacher outputs fetched so
 * far beside the state, so --resume continues bit for bit.  Sets *was_interrupted.
 */
static cm_status_t stop_here(run_t *run, double accuracy, int *was_interrupted) {
    cm_status_t status = save_all(run, accuracy);
    if (status != CM_OK) return status;
    if (run->committee && strcmp(run->options.cache, "off")) {
        char cache_path[1100];
        snprintf(cache_path, sizeof cache_path, "%s.cache", run->state_path);
        if ((status = trainer_cache_save(run->cache, cache_path, run->dataset->fingerprint)))
            return status;
    }
    cm_log_info("stopped at epoch %d, batch %d (step %ld)%s; state saved to %s; continue with "
                "--resume",
                run->epoch, run->next_batch, run->step, interrupted ? " by a signal" : "",
                run->state_path);
    *was_interrupted = 1;
    return CM_OK;
}

static cm_status_t run_epochs(run_t *run, int *was_interrupted) {
    const cm_split_data_t *train = &run->dataset->splits[CM_SPLIT_TRAIN];
    int trainable = trainable_count(run);
    int planned = trainer_feed_rows(run->feed); /* trainable + the transfer rows */
    double accuracy = 0.0;                      /* the test accuracy, or RMSE for regression */
    cm_status_t status = CM_OK;
    for (; run->epoch <= run->options.epochs; run->epoch++, run->next_batch = 0) {
        memset(run->trained, 0, (size_t)train->count + (size_t)run->transfer_count);
        run->loss_sum = run->wait_seconds = 0.0;
        memset(run->term_sums, 0, sizeof run->term_sums);
        memset(run->weight_sums, 0, sizeof run->weight_sums);
        run->weighted_rows = -1;
        run->forwarded_batch = -1;
        /* Filtering decides per batch with the current student (the feed asks one batch ahead). */
        run->filtering =
            trainer_method_chooses(run->method) && run->epoch > run->options.dd_filter_warmup;
        run->epoch_examples = run->epoch_duplicates = run->epoch_steps = run->epoch_transfer = 0;
        memset(run->skipped_batches, 0, sizeof run->skipped_batches);
        memset(run->missing_rows, 0, sizeof run->missing_rows);
        trainer_feed_start_epoch(run->feed, run->epoch, run->next_batch, run->filtering);
        /* A resumed epoch: the rows before the cursor were trained before the interruption. */
        const int32_t *order = trainer_feed_order(run->feed);
        for (int index = 0; index < run->next_batch * run->options.batch && index < planned;
             index++) {
            run->trained[order[index]] = 1;
            run->epoch_transfer += order[index] >= train->count;
        }
        char label[64];
        snprintf(label, sizeof label, "epoch %d/%d", run->epoch, run->options.epochs);
        cm_progress_t progress;
        long already = (long)run->next_batch * run->options.batch;
        cm_progress_start(&progress, run->options.progress_mode, label, "examples", planned,
                          already < planned ? already : planned,
                          (double)run->options.progress_interval);
        double started = cm_progress_now();
        while (trainer_feed_cursor(run->feed) < trainer_feed_batches(run->feed)) {
            trainer_feed_batch_t batch;
            if ((status = trainer_feed_next(run->feed, &batch)) != CM_OK) {
                if (status != CM_ERR_CANCELLED || !interrupted) return status;
                cm_progress_finish(&progress); /* a signal while it waited for teachers */
                return stop_here(run, accuracy, was_interrupted);
            }
            run->wait_seconds += batch.waited;
            if ((status = train_batch(run, &batch)) != CM_OK) return status;
            trainer_feed_done(run->feed, &batch);
            run->next_batch = trainer_feed_cursor(run->feed);
            update_metrics(run);
            char text[64];
            snprintf(text, sizeof text, "loss %.4f", run->loss_sum / (double)run->epoch_examples);
            cm_progress_update(&progress, (long)run->next_batch * run->options.batch,
                               run->committee ? run->wait_seconds : -1.0, text);
            int stop_now = interrupted ||
                           (run->options.stop_after > 0 && run->step >= run->options.stop_after);
            if (!stop_now && run->options.checkpoint_every > 0 &&
                run->step % run->options.checkpoint_every == 0) {
                if ((status = save_all(run, accuracy)) != CM_OK) return status;
            }
            if (stop_now) {
                cm_progress_finish(&progress);
                return stop_here(run, accuracy, was_interrupted);
            }
        }
        cm_progress_finish(&progress);
        double seconds = cm_progress_now() - started;
        int regression = run->dataset->task == CM_TASK_REGRESSION;
        memset(&run->valid_score, 0, sizeof run->valid_score);
        if ((status = cm_score_split(run->student, run->dataset, CM_SPLIT_TEST, &run->test_score)))
            return status;
        accuracy = regression ? run->test_score.rmse : run->test_score.accuracy;
        if (run->options.holdout > 0 && /* the held-out tail of the training split */
            (status = cm_score_rows(run->student, run->dataset, CM_SPLIT_TRAIN, trainable,
                                    run->options.holdout, &run->valid_score)))
            return status;
        long distinct = 0;
        for (int id = 0; id < trainable; id++) distinct += run->trained[id];
        for (int row = 0; row < run->transfer_count; row++)
            distinct += run->trained[train->count + row];
        char terms[256];
        size_t used = 0;
        terms[0] = '\0';
        for (int term = 0; term < trainer_method_term_count(run->method) && used < sizeof terms;
             term++)
            used += (size_t)snprintf(terms + used, sizeof terms - used, "%s%s %.4f",
                                     term ? " " : "", trainer_method_term_name(run->method, term),
                                     run->term_sums[term] /
                                         (double)(run->epoch_examples ? run->epoch_examples : 1));
        char transfer_text[96] = "";
        if (run->transfer_count)
            snprintf(transfer_text, sizeof transfer_text, " (%ld of them unlabelled %s examples)",
                     run->epoch_transfer, cm_split_name(run->transfer_split));
        cm_log_info("epoch %d/%d  loss %.4f (%s)  test %s %.4f  %.0f examples/s  "
                    "waited %.2f s  %ld/%d examples once%s%s",
                    run->epoch, run->options.epochs,
                    run->loss_sum / (double)(run->epoch_examples ? run->epoch_examples : 1), terms,
                    regression ? "rmse" : "acc", accuracy,
                    seconds > 0 ? run->epoch_examples / seconds : 0.0, run->wait_seconds, distinct,
                    planned, transfer_text, run->epoch_duplicates ? " (DUPLICATES!)" : "");
        for (int teacher = 0; teacher < run->teacher_count; teacher++)
            if (run->skipped_batches[teacher])
                cm_log_warn("teacher '%s' was missing from %ld batches (%ld rows) this epoch",
                            run->teacher_names[teacher], run->skipped_batches[teacher],
                            run->missing_rows[teacher]);
        set_known_gauge(run, "committee_trainer_loss", "Mean training loss of the last epoch.",
                        run->loss_sum / (double)(run->epoch_examples ? run->epoch_examples : 1));
        if (regression)
            set_known_gauge(run, "committee_trainer_test_rmse", "Test RMSE after the last epoch.",
                            accuracy);
        else
            set_known_gauge(run, "committee_trainer_test_accuracy",
                            "Test accuracy after the last epoch.", accuracy);
        run->waited_total += run->wait_seconds;
        /* From here on the state says "continue with the next epoch", also when a write below
         * fails and train() saves the state once more. */
        int finished_epoch = run->epoch;
        run->epoch = finished_epoch + 1;
        run->next_batch = 0;
        status = save_all(run, accuracy);
        if (status == CM_OK) status = write_metrics(run, finished_epoch, distinct, seconds);
        if (status == CM_OK && strcmp(run->options.cache, "memory") &&
            strcmp(run->options.cache, "off") && run->committee)
            status = trainer_cache_save(run->cache, run->options.cache, run->dataset->fingerprint);
        if (status != CM_OK) return status;
        run->epoch = finished_epoch;
    }
    int written = run->dataset->task == CM_TASK_REGRESSION
                      ? printf("test_rmse=%.4f test_mae=%.4f checkpoint=%s\n", run->test_score.rmse,
                               run->test_score.mae, run->options.out)
                      : printf("test_accuracy=%.4f checkpoint=%s\n", accuracy, run->options.out);
    if (written < 0 || fflush(stdout) != 0)
        return cm_fail(CM_ERR_IO, "cannot write the summary to standard output: %s",
                       strerror(errno ? errno : EIO));
    return CM_OK;
}

/* ---------------------------------------------------------------- the command */

/* Loads the trainer's keys and gives every teacher address its --teacher-key NAME=FILE. */
static cm_status_t load_curve_keys(run_t *run, trainer_teacher_address_t *addresses, int count) {
    const train_options_t *options = &run->options;
    cm_status_t status = cm_curve_load_keypair(options->curve_secret_key, &run->curve_keys);
    for (int index = 0; status == CM_OK && index < options->teacher_keys.count; index++) {
        const char *text = options->teacher_keys.values[index];
        const char *equals = strchr(text, '=');
        int teacher = -1;
        for (int other = 0; equals && other < count; other++)
            if (strlen(addresses[other].name) == (size_t)(equals - text) &&
                strncmp(addresses[other].name, text, (size_t)(equals - text)) == 0)
                teacher = other;
        if (!equals || equals == text || !equals[1])
            status =
                cm_fail(CM_ERR_INVALID_ARG,
                        "--teacher-key expects NAME=FILE (e.g. fm=keys/fm.pub), got '%s'", text);
        else if (teacher < 0)
            status = cm_fail(CM_ERR_INVALID_ARG,
                             "--teacher-key %s names a teacher that no --teacher gives", text);
        else
            status = cm_curve_load_public(equals + 1, addresses[teacher].server_key);
    }
    return status;
}

/* --cache-memory, --cache-spill and --cache-dtype (checked when parsed). */
static trainer_cache_config_t cache_config(const run_t *run) {
    const train_options_t *options = &run->options;
    const char *spill = options->cache_spill;
    return (trainer_cache_config_t){
        .memory_bytes = (size_t)((double)options->cache_memory * 1048576.0),
        .spill = !spill                        ? TRAINER_SPILL_NONE
                 : !strcmp(spill, "ask-again") ? TRAINER_SPILL_ASK_AGAIN
                                               : TRAINER_SPILL_FILE,
        .spill_dir = spill,
        .dtype = cm_dtype_parse(options->cache_dtype),
        .in_flight = (options->window + 1) * options->batch,
        .map_reads = !strcmp(options->cache_spill_reads, "map"),
        .no_teachers = run->replay,
    };
}

static cm_status_t configure_cache(run_t *run) {
    trainer_cache_config_t config = cache_config(run);
    return trainer_cache_configure(run->cache, &config);
}

/* The cache's bound and where it stands, once it is set up (and loaded). */
static void log_cache(const run_t *run, const char *loaded) {
    const train_options_t *options = &run->options;
    if (!(options->cache_memory > 0) || !run->cache) return;
    cm_log_info("teacher cache%s: %.2f MB in memory (--cache-memory %g; at most %.2f MB held), "
                "%.2f MB in a spill file in %s",
                loaded, (double)trainer_cache_resident_bytes(run->cache) / 1048576.0,
                (double)options->cache_memory,
                (double)trainer_cache_peak_bytes(run->cache) / 1048576.0,
                (double)trainer_cache_spilled_bytes(run->cache) / 1048576.0,
                options->cache_spill && strcmp(options->cache_spill, "ask-again")
                    ? options->cache_spill
                    : "no directory (what does not fit is asked again)");
}

static cm_status_t set_up_teachers(run_t *run) {
    train_options_t *options = &run->options;
    int train_count = run->dataset->splits[CM_SPLIT_TRAIN].count;
    int rows = train_count + run->transfer_count; /* the cache's rows */
    cm_status_t status;
    if (run->replay) {
        if (!options->record) return cm_fail(CM_ERR_INVALID_ARG, "replay needs --record FILE");
        /* Bounded as training is: the rows stream from the record into memory up to
         * --cache-memory and into the spill file beyond it. */
        trainer_cache_config_t config = cache_config(run);
        status =
            trainer_cache_load(options->record, run->dataset->fingerprint, &config, &run->cache);
        if (status != CM_OK) return status;
        if (trainer_cache_examples(run->cache) != rows)
            return cm_fail(CM_ERR_MISMATCH,
                           "%s covers %d examples, the data has %d training examples and %d of "
                           "--transfer-split (a record of a run with --transfer-split covers "
                           "both; replay it with the same --transfer-split)",
                           options->record, trainer_cache_examples(run->cache), train_count,
                           run->transfer_count);
        run->teacher_count = trainer_cache_teachers(run->cache);
        for (int teacher = 0; teacher < run->teacher_count; teacher++) {
            snprintf(run->teacher_names[teacher], sizeof run->teacher_names[teacher], "%s",
                     trainer_cache_teacher_name(run->cache, teacher));
            snprintf(run->teacher_sha256[teacher], sizeof run->teacher_sha256[teacher], "%s",
                     trainer_cache_teacher_sha256(run->cache, teacher));
        }
        return CM_OK;
    }
    trainer_teacher_address_t addresses[TRAINER_COMMITTEE_MAX];
    int count = 0;
    for (int index = 0; index < options->teachers.count; index++) {
        trainer_teacher_address_t address;
        char *text = run->teacher_texts[index] = strdup(options->teachers.values[index]);
        if (!text) return cm_fail(CM_ERR_NOMEM, "out of memory");
        if ((status = trainer_committee_parse_teacher(text, &address)) != CM_OK) return status;
        int merged = 0;
        for (int other = 0; other < count && !merged; other++)
            if (strcmp(addresses[other].name, address.name) == 0) { /* replicas of one teacher */
                for (int endpoint = 0; endpoint < address.endpoint_count; endpoint++) {
                    if (addresses[other].endpoint_count == TRAINER_MAX_ENDPOINTS)
                        return cm_fail(CM_ERR_INVALID_ARG,
                                       "teacher '%s' has more than %d endpoints", address.name,
                                       TRAINER_MAX_ENDPOINTS);
                    addresses[other].endpoints[addresses[other].endpoint_count++] =
                        address.endpoints[endpoint];
                }
                merged = 1;
            }
        if (merged) continue;
        if (count == TRAINER_COMMITTEE_MAX)
            return cm_fail(CM_ERR_INVALID_ARG, "at most %d teachers", TRAINER_COMMITTEE_MAX);
        addresses[count++] = address;
    }
    run->teacher_count = count;
    if (count == 0) return CM_OK;
    if (options->curve_secret_key && (status = load_curve_keys(run, addresses, count)) != CM_OK)
        return status;
    status = trainer_cache_new(count, rows, &run->cache);
    if (status != CM_OK) return status;
    if ((status = configure_cache(run)) != CM_OK) return status;
    cm_dtype_t encoding = cm_dtype_parse(options->encoding);
    if (encoding != CM_DTYPE_F32 && encoding != CM_DTYPE_F16 && encoding != CM_DTYPE_BF16)
        return cm_fail(CM_ERR_INVALID_ARG, "--encoding must be F32, F16 or BF16");
    trainer_committee_config_t config = {
        .window = options->window,
        .deadline_ms = options->teacher_timeout_ms,
        .handshake_ms = options->teacher_timeout_ms,
        .heartbeat_ms = 1000,
        .encoding = encoding,
        .max_examples = 4096,
        .fingerprint = run->dataset->fingerprint,
        .classes = run->dataset->classes,
        .train_examples = train_count,
        .example_ids = run->dataset->splits[CM_SPLIT_TRAIN].ids,
        .transfer_split = run->transfer_split,
        .transfer_base = train_count,
        .transfer_examples = run->transfer_count,
        .transfer_ids = run->transfer_count ? run->dataset->splits[run->transfer_split].ids : NULL,
        .curve_keys = options->curve_secret_key ? &run->curve_keys : NULL,
        .interrupted = &interrupted,
        .resolve_ms = options->resolve_ms,
    };
    config.policy = strcmp(options->failure_policy, "wait") == 0   ? TRAINER_POLICY_WAIT
                    : strcmp(options->failure_policy, "skip") == 0 ? TRAINER_POLICY_SKIP
                                                                   : TRAINER_POLICY_FAIL;
    status = trainer_committee_new(addresses, count, &config, &run->committee);
    if (status != CM_OK) return status;
    for (int teacher = 0; teacher < count; teacher++) {
        const trainer_teacher_info_t *info = trainer_committee_info(run->committee, teacher);
        trainer_cache_set_teacher(run->cache, teacher, info->name, info->model_sha256);
        snprintf(run->teacher_names[teacher], sizeof run->teacher_names[teacher], "%s", info->name);
        snprintf(run->teacher_sha256[teacher], sizeof run->teacher_sha256[teacher], "%s",
                 info->model_sha256);
    }
    return CM_OK;
}

/* Width (floats per example) and token count of a teacher output, from its Hello or the record. */
static int teacher_width(const run_t *run, int teacher, int output, int *tokens) {
    if (run->committee) {
        const trainer_teacher_info_t *info = trainer_committee_info(run->committee, teacher);
        if (tokens) *tokens = output == TRAINER_OUTPUT_TOKENS ? info->tokens : 1;
        return info->width[output];
    }
    if (tokens)
        *tokens = output == TRAINER_OUTPUT_TOKENS ? trainer_cache_tokens(run->cache, teacher) : 1;
    return trainer_cache_width(run->cache, teacher, output);
}

/* The head of `teacher` into the cache: fetched from the teacher (trainer_committee_fetch_head
 * checks its shape against the Hello), or checked as the record holds it. */
static cm_status_t keep_head(run_t *run, int teacher) {
    const char *name = run->teacher_names[teacher];
    if (run->committee) {
        trainer_head_t head = {0};
        cm_status_t status = trainer_committee_fetch_head(run->committee, teacher, "hidden", &head);
        if (status == CM_OK)
            status = trainer_cache_set_head(run->cache, teacher, head.weight, head.bias,
                                            head.classes, head.inputs);
        trainer_head_free(&head);
        return status;
    }
    const float *weight, *bias;
    int classes, inputs;
    if (!trainer_cache_head(run->cache, teacher, &weight, &bias, &classes, &inputs))
        return cm_fail(CM_ERR_NOT_FOUND,
                       "the record %s holds no head of teacher '%s', which --dd-interactive "
                       "needs: record it with --method diversedistill --dd-interactive "
                       "(teachers started with --lend-head on)",
                       run->options.record, name);
    int hidden = teacher_width(run, teacher, TRAINER_OUTPUT_HIDDEN, NULL);
    if (hidden == 0)
        return cm_fail(CM_ERR_NOT_FOUND,
                       "the record %s holds no hidden vectors of teacher '%s', which the "
                       "interactive probes need as targets",
                       run->options.record, name);
    if (classes != run->dataset->classes || inputs != hidden)
        return cm_fail(CM_ERR_MISMATCH,
                       "the head of teacher '%s' in %s maps %d inputs to %d classes, but the "
                       "teacher's hidden vector has %d and the data %d classes",
                       name, run->options.record, inputs, classes, hidden, run->dataset->classes);
    return CM_OK;
}

/*
 * --dd-interactive: every teacher's frozen head (the dense layer over its "hidden" vector),
 * fetched from the teacher (and kept in the cache, so a --record holds it) or, in a replay,
 * read from the record; handed to the module.  The probes' targets are the teachers' hidden
 * vectors, so the method asks for them too.
 */
static cm_status_t borrow_heads(run_t *run, trainer_dd_config_t *config) {
    config->interactive = 1;
    config->probe_match_weight = run->options.dd_probe_match_weight;
    config->probe_answer_weight = run->options.dd_probe_answer_weight;
    for (int teacher = 0; teacher < run->teacher_count; teacher++) {
        cm_status_t status = keep_head(run, teacher);
        if (status != CM_OK) return status;
        const float *weight, *bias;
        int classes, inputs;
        trainer_cache_head(run->cache, teacher, &weight, &bias, &classes, &inputs);
        config->head_inputs[teacher] = inputs;
        config->head_weight[teacher] = weight;
        config->head_bias[teacher] = bias;
        cm_log_info("teacher '%s' %s its head (%d x %d) for the interactive probes",
                    run->teacher_names[teacher], run->committee ? "lends" : "recorded", classes,
                    inputs);
    }
    return CM_OK;
}

/* The Distillation Module's own settings (trainer_method_new fills in the shared ones). */
static cm_status_t diversedistill_settings(run_t *run, trainer_dd_config_t *config) {
    train_options_t *options = &run->options;
    /* The answer runs head(ReLU(k)) through the student's own head (cm_model_head), which
     * reads a ReLU vector only in the dense-stack families. */
    cm_model_kind_t family = cm_model_spec(run->student)->kind;
    if (family != CM_MODEL_MLP && family != CM_MODEL_EMB)
        return cm_fail(CM_ERR_INVALID_ARG,
                       "--method diversedistill needs an mlp or emb student, whose head reads a "
                       "ReLU hidden vector (the committee's answer goes through that head); "
                       "model '%s' is not one",
                       options->model);
    *config = trainer_dd_defaults();
    cm_status_t status = trainer_dd_router_parse(options->dd_router, &config->router);
    if (status != CM_OK) return status;
    config->answer_weight = options->dd_answer_weight;
    config->router_weight = options->dd_router_weight;
    config->router_tau = options->dd_tau;
    config->align_weight = options->dd_align_weight;
    config->filter_threshold = options->dd_filter;
    config->filter_explore = options->dd_explore;
    for (int teacher = 0; teacher < run->teacher_count; teacher++) {
        int tokens = 1,
            has_tokens = teacher_width(run, teacher, TRAINER_OUTPUT_TOKENS, &tokens) > 0;
        int output = TRAINER_OUTPUT_HIDDEN;
        if (!strcmp(options->dd_feature, "tokens") ||
            (!strcmp(options->dd_feature, "auto") && has_tokens))
            output = TRAINER_OUTPUT_TOKENS;
        int width = teacher_width(run, teacher, output, &tokens);
        if (width <= 0)
            return cm_fail(CM_ERR_NOT_FOUND,
                           "teacher '%s' offers no '%s' feature for DiverseDistill",
                           run->teacher_names[teacher], trainer_cache_output_name(output));
        config->feature_output[teacher] = output;
        config->teacher_tokens[teacher] = tokens;
        config->teacher_dim[teacher] = width / tokens;
        cm_log_info("DiverseDistill listens to teacher '%s' through its %s (%d x %d)",
                    run->teacher_names[teacher], trainer_cache_output_name(output), tokens,
                    width / tokens);
    }
    if (options->dd_interactive && (status = borrow_heads(run, config)) != CM_OK) return status;
    return CM_OK;
}

/* Builds --method and records what it needs of every teacher. */
static cm_status_t set_up_method(run_t *run) {
    train_options_t *options = &run->options;
    trainer_method_config_t config = {0};
    cm_status_t status = trainer_method_parse(options->method, &config.kind);
    if (status != CM_OK) return status;
    config.task = run->dataset->task == CM_TASK_REGRESSION ? TRAINER_TASK_REGRESSION
                                                           : TRAINER_TASK_CLASSIFICATION;
    config.outputs = run->dataset->classes; /* the classes, or the regression targets */
    config.temperature = options->temperature;
    config.kd_weight = options->kd_weight;
    config.fitnet_weight = options->fitnet_weight;
    config.teacher_count = run->teacher_count;
    config.max_batch = options->batch;
    cm_model_feature(run->student, "hidden", &config.student_hidden, NULL);
    if (config.kind != TRAINER_METHOD_CE && run->teacher_count == 0)
        return cm_fail(CM_ERR_INVALID_ARG, "--method %s needs at least one --teacher",
                       options->method);
    if (config.kind == TRAINER_METHOD_KD || config.kind == TRAINER_METHOD_FITNET) {
        if (!options->kd_teacher && run->teacher_count > 1)
            return cm_fail(CM_ERR_INVALID_ARG,
                           "--method %s with %d teachers needs --kd-teacher NAME", options->method,
                           run->teacher_count);
        if (options->kd_teacher &&
            (status = find_teacher(run, options->kd_teacher, "--kd-teacher", &config.kd_teacher)))
            return status;
    }
    if (config.kind == TRAINER_METHOD_FITNET) {
        const char *name = options->fitnet_teacher ? options->fitnet_teacher
                                                   : run->teacher_names[config.kd_teacher];
        if ((status = find_teacher(run, name, "--fitnet-teacher", &config.fitnet_teacher)))
            return status;
    }
    for (int teacher = 0; teacher < run->teacher_count; teacher++)
        config.teacher_hidden[teacher] = teacher_width(run, teacher, TRAINER_OUTPUT_HIDDEN, NULL);
    trainer_dd_config_t dd;
    if (config.kind == TRAINER_METHOD_DIVERSEDISTILL) {
        if ((status = diversedistill_settings(run, &dd)) != CM_OK) return status;
        config.dd = &dd;
    }
    status = trainer_method_new(&config, (uint64_t)options->seed, &run->method);
    if (status != CM_OK) return status;
    for (int teacher = 0; teacher < run->teacher_count; teacher++)
        run->needs[teacher] = trainer_method_needs(run->method, teacher);
    return CM_OK;
}

/* Makes room in the cache for every output the method needs, or says what is missing. */
static cm_status_t prepare_outputs(run_t *run) {
    train_options_t *options = &run->options;
    cm_status_t status;
    for (int teacher = 0; teacher < run->teacher_count; teacher++) {
        if (!run->committee) {
            for (int output = 0; output < TRAINER_OUTPUT_COUNT; output++)
                if ((run->needs[teacher] & (1u << output)) &&
                    !trainer_cache_width(run->cache, teacher, output))
                    return cm_fail(
                        CM_ERR_NOT_FOUND,
                        "the record has no '%s' of teacher '%s', which --method %s needs",
                        trainer_cache_output_name(output), run->teacher_names[teacher],
                        options->method);
            continue;
        }
        const trainer_teacher_info_t *info = trainer_committee_info(run->committee, teacher);
        trainer_cache_set_tokens(run->cache, teacher, info->tokens);
        for (int output = 0; output < TRAINER_OUTPUT_COUNT; output++) {
            if (!(run->needs[teacher] & (1u << output))) continue;
            if (!info->width[output])
                return cm_fail(CM_ERR_NOT_FOUND,
                               "teacher '%s' does not offer '%s', which --method %s needs",
                               info->name, trainer_cache_output_name(output), options->method);
            if ((status = trainer_cache_add_output(run->cache, teacher, output,
                                                   info->width[output])) != CM_OK)
                return status;
        }
    }
    return CM_OK;
}

/* Reuses the teacher outputs a previous run saved at `path`, if it used this committee. */
static cm_status_t load_cache_file(run_t *run, const char *path) {
    if (!strcmp(path, "memory") || !strcmp(path, "off") || !run->committee ||
        access(path, F_OK) != 0)
        return CM_OK;
    /* Streamed into the run's cache, so its bound holds while loading: rows beyond
     * --cache-memory go to the spill file, or are asked again. */
    int same = 0;
    cm_status_t status =
        trainer_cache_merge_file(run->cache, path, run->dataset->fingerprint, &same);
    if (status != CM_OK) return status;
    if (same) cm_log_info("reusing cached teacher outputs from %s", path);
    if (!same)
        return cm_fail(CM_ERR_MISMATCH,
                       "cache %s was recorded with another committee or data; "
                       "remove it or pass another --cache",
                       path);
    return CM_OK;
}

/* The feed over the trainable rows, asking the committee for what the method needs. */
static cm_status_t set_up_feed(run_t *run) {
    trainer_feed_config_t config = {
        .trainable = trainable_count(run),
        .transfer = run->transfer_count,
        .transfer_base = run->dataset->splits[CM_SPLIT_TRAIN].count,
        .batch = run->options.batch,
        .window = run->options.window,
        .seed = run->options.seed,
        .teacher_count = run->teacher_count,
        .forget = strcmp(run->options.cache, "off") == 0,
        .choose = trainer_method_chooses(run->method) ? choose_pairs : NULL, /* --dd-filter */
        .choose_context = run,
        .waiting = show_waiting,
        .waiting_context = run,
    };
    for (int teacher = 0; teacher < run->teacher_count; teacher++)
        config.needs[teacher] = run->needs[teacher];
    return trainer_feed_new(&config, run->committee, run->cache, &run->feed);
}

static cm_status_t train(run_t *run, int *was_interrupted) {
    train_options_t *options = &run->options;
    cm_model_spec_t spec;
    cm_status_t status = cm_model_spec_parse(options->model, &spec);
    if (status != CM_OK) return status;
    cm_dataset_options_t data_options = {
        .directory = options->data_dir,
        .max_train = options->max_train,
        .max_test = options->max_test,
    };
    if ((status = cm_dataset_load(&run->dataset, options->data, options->view, &data_options)) !=
        CM_OK)
        return status;
    if (cm_model_spec_inputs(&spec) != run->dataset->features ||
        spec.classes != run->dataset->classes)
        return cm_fail(CM_ERR_SHAPE,
                       "model '%s' takes %d inputs and %d classes; view '%s' gives %d and %d",
                       options->model, cm_model_spec_inputs(&spec), spec.classes,
                       run->dataset->view, run->dataset->features, run->dataset->classes);
    if (options->holdout < 0 || options->holdout >= run->dataset->splits[CM_SPLIT_TRAIN].count)
        return cm_fail(CM_ERR_INVALID_ARG,
                       "--holdout %d must leave training examples (the split has %d)",
                       options->holdout, run->dataset->splits[CM_SPLIT_TRAIN].count);
    if (options->transfer_split) { /* the name was checked with the options */
        if ((status = cm_split_parse(options->transfer_split, &run->transfer_split))) return status;
        if (!run->dataset->manifest->has_split[run->transfer_split])
            return cm_fail(CM_ERR_NOT_FOUND,
                           "--transfer-split %s: dataset %s has no '%s' split (its manifest "
                           "lists the splits a folder holds)",
                           options->transfer_split, run->dataset->name, options->transfer_split);
        run->transfer_count = run->dataset->splits[run->transfer_split].count;
        if (run->transfer_count < 1)
            return cm_fail(CM_ERR_INVALID_ARG, "--transfer-split %s: the split is empty",
                           options->transfer_split);
        cm_log_info("--transfer-split %s: %d unlabelled examples join the %d training examples "
                    "of every epoch (only teachers annotate them)",
                    options->transfer_split, run->transfer_count, trainable_count(run));
    }
    if ((status = cm_model_new(&spec, options->batch, &run->student)) != CM_OK) return status;
    cm_model_init(run->student, (uint64_t)options->seed);
    /* Training mode for the steps (batch norm's batch statistics and running averages);
     * scoring switches to eval mode and back. */
    cm_model_set_training(run->student, 1);
    if (options->save_initial) {
        const char *metadata[] = {CM_DATASET_METADATA(run->dataset), "epochs", "0", "format",
                                  "committee-checkpoint-1"};
        if ((status = cm_model_save(run->student, options->save_initial, metadata,
                                    (int)(sizeof metadata / sizeof metadata[0]) / 2)) != CM_OK)
            return status;
    }
    if ((status = build_labels(run)) != CM_OK) return status;
    if ((status = start_http(run)) != CM_OK) return status;
    if ((status = set_up_teachers(run)) != CM_OK) return status;
    trainer_http_set_ready(run->http, "preparing the run");
    if (!run->cache &&
        (status = trainer_cache_new(
             0, run->dataset->splits[CM_SPLIT_TRAIN].count + run->transfer_count, &run->cache)))
        return status;
    if ((status = set_up_method(run)) != CM_OK) return status;
    if ((status = prepare_outputs(run)) != CM_OK) return status;
    if (run->committee || run->replay) log_cache(run, "");
    if ((status = load_cache_file(run, options->cache)) != CM_OK) return status;
    if ((status = allocate_buffers(run)) != CM_OK) return status;
    if ((status = set_up_feed(run)) != CM_OK) return status;
    cm_schedule_kind_t schedule_kind = CM_SCHEDULE_CONSTANT;
    if ((status = cm_schedule_parse_kind(options->schedule, &schedule_kind)) != CM_OK)
        return status;
    run->schedule = cm_schedule_defaults(schedule_kind, options->lr);
    run->schedule.warmup_steps = options->warmup_steps;
    run->total_steps = (long)options->epochs * trainer_feed_batches(run->feed);
    if (run->total_steps < 1) run->total_steps = 1;
    snprintf(run->state_path, sizeof run->state_path, "%s.state", options->out);
    run->epoch = 1;
    if (options->resume) {
        if (access(run->state_path, F_OK) != 0)
            return cm_fail(CM_ERR_NOT_FOUND, "--resume: there is no state at %s", run->state_path);
        if ((status = load_state(run)) != CM_OK) return status;
        /* The outputs fetched before the interruption: with them the run continues bit for bit
         * (a teacher's float results may differ in the last bits between batch compositions). */
        char cache_path[1100];
        snprintf(cache_path, sizeof cache_path, "%s.cache", run->state_path);
        if ((status = load_cache_file(run, cache_path)) != CM_OK) return status;
    }
    if (run->committee &&
        (options->resume || (strcmp(options->cache, "memory") && strcmp(options->cache, "off") &&
                             access(options->cache, F_OK) == 0)))
        log_cache(run, " after loading");
    register_metrics(run);
    if (options->metrics) {
        run->metrics = fopen(options->metrics, options->resume ? "a" : "w");
        if (!run->metrics)
            return cm_fail(CM_ERR_IO, "cannot write metrics to %s", options->metrics);
        /* The first line of each run (a resumed one appends its own): its configuration, under
         * a key no epoch line has, so readers take the lines that have "epoch". */
        fprintf(run->metrics,
                "{\"config\":%s,\"program\":\"student-trainer %s\",\"version\":\"%s\"}\n",
                run->config, run->replay ? "replay" : "train", CM_VERSION);
        /* Not checked here: a full disk shows at the first epoch's line (write_metrics checks
         * the flush and the stream's error flag), with the state saved, as before. */
    }
    if (options->log_steps && !(run->log_steps = fopen(options->log_steps, "w")))
        return cm_fail(CM_ERR_IO, "cannot write the per-step log to %s: %s", options->log_steps,
                       strerror(errno));
    char spec_text[CM_MODEL_SPEC_MAX];
    cm_model_spec_format(&spec, spec_text, sizeof spec_text);
    cm_log_info("train %s on %s/%s with %s: %d train / %d test examples, %d teacher(s), batch %d, "
                "%d epochs, lr %g, seed %ld",
                spec_text, run->dataset->name, run->dataset->view, options->method,
                run->dataset->splits[CM_SPLIT_TRAIN].count,
                run->dataset->splits[CM_SPLIT_TEST].count, run->teacher_count, options->batch,
                options->epochs, (double)options->lr, options->seed);
    cm_log_info("schedule %s, peak lr %g, %ld warm-up steps of %ld", options->schedule,
                (double)options->lr, cm_schedule_warmup(&run->schedule, run->total_steps),
                run->total_steps);
    trainer_http_set_ready(run->http, NULL);
    status = run_epochs(run, was_interrupted);
    cm_log_status(NULL); /* the bar of an epoch that failed half-way: the error starts clean */
    trainer_http_set_ready(run->http, status == CM_OK && !*was_interrupted ? "training finished"
                                                                           : "training stopped");
    if (status != CM_OK && run->step > 0) { /* keep what was learned */
        cm_status_t saved = save_all(run, 0.0);
        if (saved == CM_OK) cm_log_info("saved the state reached so far to %s", run->state_path);
    }
    if (status == CM_OK && options->record && run->committee) {
        status = trainer_cache_save(run->cache, options->record, run->dataset->fingerprint);
        if (status == CM_OK) cm_log_info("recorded teacher outputs to %s", options->record);
    }
    if (run->metrics) { /* the last buffered bytes land now: a failure here loses them */
        int closed = fclose(run->metrics);
        run->metrics = NULL;
        if (closed != 0 && status == CM_OK)
            status = cm_fail(CM_ERR_IO, "cannot write metrics to %s: %s", options->metrics,
                             strerror(errno));
    }
    if (run->log_steps) {
        int closed = fclose(run->log_steps);
        run->log_steps = NULL;
        if (closed != 0 && status == CM_OK)
            status = cm_fail(CM_ERR_IO, "cannot write the per-step log to %s: %s",
                             options->log_steps, strerror(errno));
    }
    return status;
}

/* Usage errors of --cache-memory, --cache-spill and --cache-dtype. */
static cm_status_t check_cache_options(train_options_t *options, int replay) {
    struct stat info;
    const char *spill = options->cache_spill;
    if (!(options->cache_memory >= 0) || options->cache_memory > 1e9f)
        return cm_fail(CM_ERR_INVALID_ARG, "--cache-memory %g must be 0 (no bound) to 1e9 MB",
                       (double)options->cache_memory);
    const char *dtypes[][2] = {{"f32", "F32"}, {"f16", "F16"}, {"bf16", "BF16"}};
    int known = 0;
    for (int index = 0; index < 3; index++)
        if (!strcmp(options->cache_dtype, dtypes[index][0]) ||
            !strcmp(options->cache_dtype, dtypes[index][1])) {
            options->cache_dtype = dtypes[index][1];
            known = 1;
        }
    if (!known)
        return cm_fail(CM_ERR_INVALID_ARG, "--cache-dtype must be f32, f16 or bf16, not '%s'",
                       options->cache_dtype);
    if (strcmp(options->cache_spill_reads, "pread") && strcmp(options->cache_spill_reads, "map"))
        return cm_fail(CM_ERR_INVALID_ARG, "--cache-spill-reads must be pread or map, not '%s'",
                       options->cache_spill_reads);
    if (spill && !spill[0]) options->cache_spill = spill = NULL; /* an empty environment value */
    if (replay && spill && !strcmp(spill, "ask-again"))
        return cm_fail(CM_ERR_INVALID_ARG,
                       "replay has no teachers to ask again: give --cache-spill DIR for the "
                       "recorded outputs that do not fit in --cache-memory");
    if (!spill || !strcmp(spill, "ask-again")) return CM_OK;
    if (stat(spill, &info) != 0)
        return cm_fail(CM_ERR_INVALID_ARG,
                       "--cache-spill %s: %s (give an existing directory, or ask-again)", spill,
                       strerror(errno));
    if (!S_ISDIR(info.st_mode))
        return cm_fail(CM_ERR_INVALID_ARG,
                       "--cache-spill %s is not a directory (give a directory for the spill file, "
                       "or ask-again)",
                       spill);
    return CM_OK;
}

int trainer_train_main(int argc, char **argv, int first, int replay) {
    run_t *run = calloc(1, sizeof *run);
    if (!run) {
        fprintf(stderr, "student-trainer: out of memory\n");
        return 1;
    }
    run->replay = replay;
    train_options_t *options = &run->options;
    *options = (train_options_t){
        .data = "fashion-mnist",
        .view = "pool7",
        .method = "ce",
        .failure_policy = "wait",
        .cache = "memory",
        .cache_dtype = "f32",
        .cache_spill_reads = "pread",
        .encoding = "F32",
        .log_level = "info",
        .http = "127.0.0.1:9101",
        .dd_router = "learnability",
        .dd_feature = "auto",
        .dd_answer_weight = 1.0f,
        .dd_router_weight = 1.0f,
        .dd_tau = 1.0f,
        .dd_probe_match_weight = 1.0f,
        .dd_probe_answer_weight = 1.0f,
        .dd_explore = 0.05f,
        .dd_filter_warmup = 1,
        .epochs = 10,
        .batch = 128,
        .lr = 1e-3f,
        .schedule = "constant",
        .warmup_steps = -1,
        .weight_decay = 0.01f,
        .seed = 1,
        .temperature = 2.0f,
        .kd_weight = 0.5f,
        .fitnet_weight = 1.0f,
        .label_fraction = 1.0f,
        .label_seed = 0,
        .window = 8,
        .teacher_timeout_ms = 10000,
        .resolve_ms = 5000,
        .threads = 1,
        .progress = "auto",
        .progress_interval = 10.0f,
    };
    const cm_cli_option_t table[] = {
        {"data", CM_CLI_STRING, &options->data, "DATA",
         "dataset: a dataset folder (dataset.json + .npy files) or fashion-mnist", 0},
        {"data-dir", CM_CLI_STRING, &options->data_dir, "DIR",
         "dataset files [default: /usr/share/datasets/fashion-mnist]", 0},
        {"view", CM_CLI_STRING, &options->view, "VIEW",
         "the student's view (fashion-mnist: full, pool14, pool7)", 0},
        {"model", CM_CLI_STRING, &options->model, "SPEC",
         "student model spec, e.g. mlp:49-64-64-10", 1},
        {"teacher", CM_CLI_LIST, &options->teachers, "NAME=ENDPOINT",
         "a teacher of the committee (repeatable; NAME=EP1,EP2 or a repeated NAME adds replicas)",
         0},
        {"curve-secret-key", CM_CLI_STRING, &options->curve_secret_key, "FILE",
         "encrypt every teacher link with CURVE using this key pair (from `student-trainer "
         "keygen`)",
         0},
        {"teacher-key", CM_CLI_LIST, &options->teacher_keys, "NAME=FILE",
         "public key file (.pub) of teacher NAME, one per teacher with --curve-secret-key "
         "(repeatable)",
         0},
        {"method", CM_CLI_STRING, &options->method, "NAME",
         "ce, kd, avg-kd, ca-mkd, fitnet or diversedistill", 0},
        {"kd-teacher", CM_CLI_STRING, &options->kd_teacher, "NAME",
         "the teacher kd and fitnet distill from (needed with several teachers)", 0},
        {"fitnet-teacher", CM_CLI_STRING, &options->fitnet_teacher, "NAME",
         "the teacher whose hidden vector fitnet regresses onto [default: --kd-teacher]", 0},
        {"temperature", CM_CLI_FLOAT, &options->temperature, "T",
         "distillation temperature (classification; regression distils by MSE, without T)", 0},
        {"kd-weight", CM_CLI_FLOAT, &options->kd_weight, "W",
         "weight w of the distillation term; CE gets 1-w", 0},
        {"fitnet-weight", CM_CLI_FLOAT, &options->fitnet_weight, "X", "weight of fitnet's MSE term",
         0},
        {"epochs", CM_CLI_INT, &options->epochs, "N", "passes over the training split", 0},
        {"batch", CM_CLI_INT, &options->batch, "B", "examples per optimizer step", 0},
        {"lr", CM_CLI_FLOAT, &options->lr, "X", "peak AdamW learning rate", 0},
        {"schedule", CM_CLI_STRING, &options->schedule, "NAME",
         "learning rate schedule: constant, cosine (warm-up, cosine to 10%) or onecycle", 0},
        {"warmup-steps", CM_CLI_LONG, &options->warmup_steps, "N",
         "warm-up steps [default: cosine 5% capped at 200, onecycle 30%, constant 0]", 0},
        {"weight-decay", CM_CLI_FLOAT, &options->weight_decay, "X", "AdamW decoupled weight decay",
         0},
        {"seed", CM_CLI_LONG, &options->seed, "S", "seed of initialization and batch order", 0},
        {"label-fraction", CM_CLI_FLOAT, &options->label_fraction, "F",
         "fraction of training labels the student sees (few-label regime: 0.1)", 0},
        {"label-seed", CM_CLI_LONG, &options->label_seed, "S",
         "seed choosing which labels stay visible (the same for every method)", 0},
        {"transfer-split", CM_CLI_STRING, &options->transfer_split, "SPLIT",
         "also train on this split's examples (transfer or valid) as unlabelled rows that only "
         "the teachers annotate, shuffled in with the training rows [default: none]",
         0},
        {"on-teacher-failure", CM_CLI_STRING, &options->failure_policy, "POLICY",
         "when a teacher is down or late: wait, skip or fail", 0},
        {"resolve-ms", CM_CLI_INT, &options->resolve_ms, "MS",
         "ask DNS this often for every replica behind a teacher's host name (tcp://tasks.fm:5555 "
         "in Docker Swarm); 0: connect to the name as given",
         0},
        {"teacher-timeout-ms", CM_CLI_INT, &options->teacher_timeout_ms, "MS",
         "deadline of the handshake and of each request (BUSY retries included)", 0},
        {"window", CM_CLI_INT, &options->window, "N", "batches requested ahead from each teacher",
         0},
        {"encoding", CM_CLI_STRING, &options->encoding, "ENC",
         "teacher outputs on the wire: F32 (exact), F16 or BF16 (half the bytes)", 0},
        {"cache", CM_CLI_STRING, &options->cache, "WHERE",
         "teacher outputs: memory, off (ask every epoch) or a FILE kept across runs", 0},
        {"cache-memory", CM_CLI_FLOAT, &options->cache_memory, "MB",
         "bound on the teacher cache in memory (0: none), also while --resume, --cache FILE "
         "or replay load a saved one; beyond it see --cache-spill",
         0},
        {"cache-spill", CM_CLI_STRING, &options->cache_spill, "DIR|ask-again",
         "what does not fit in --cache-memory: slots of a file in DIR (removed at exit), or "
         "ask-again (asked every epoch; not for replay) [default: refuse with a sentence]",
         0},
        {"cache-spill-reads", CM_CLI_STRING, &options->cache_spill_reads, "HOW",
         "spilled rows are read with pread (the trainer's RSS stays bounded) or map (a memcpy "
         "from the mapped file: faster; the pages count as RssFile, page cache)",
         0},
        {"cache-dtype", CM_CLI_STRING, &options->cache_dtype, "TYPE",
         "teacher cache storage: f32, or f16 / bf16 (half the bytes; exact for that --encoding)",
         0},
        {"record", CM_CLI_STRING, &options->record, "FILE",
         replay ? "recorded teacher outputs to train from"
                : "save the teacher outputs for `replay`",
         replay},
        {"out", CM_CLI_STRING, &options->out, "FILE", "student checkpoint (.safetensors)", 1},
        {"metrics", CM_CLI_STRING, &options->metrics, "FILE",
         "JSON-lines metrics, one line per epoch", 0},
        {"save-initial", CM_CLI_STRING, &options->save_initial, "FILE",
         "also write the initialized student (before the first step) as a checkpoint", 0},
        {"log-steps", CM_CLI_STRING, &options->log_steps, "FILE",
         "JSON-lines log, one line per optimizer step: step, epoch, batch, lr, loss, its terms "
         "and the batch's training rows",
         0},
        {"http", CM_CLI_STRING, &options->http, "HOST:PORT",
         "address of /healthz, /readyz and Prometheus /metrics, or 'off'", 0},
        {"progress", CM_CLI_STRING, &options->progress, "MODE",
         "progress inside each epoch: bar (redrawn in place), lines (log lines), off, or auto "
         "(bar on a terminal, else lines) [default: auto]",
         0},
        {"progress-interval", CM_CLI_FLOAT, &options->progress_interval, "SECONDS",
         "lines: a line when SECONDS and a tenth of the epoch passed since the last [default: 10]",
         0},
        {"checkpoint-every", CM_CLI_INT, &options->checkpoint_every, "STEPS",
         "also save the resumable state every STEPS steps (0: each epoch only)", 0},
        {"stop-after", CM_CLI_LONG, &options->stop_after, "STEPS",
         "stop as if interrupted after STEPS optimizer steps: state saved, exit 130 (0: never)", 0},
        {"dd-router", CM_CLI_STRING, &options->dd_router, "MODE",
         "diversedistill router target: learnability, reliability or end-to-end", 0},
        {"dd-feature", CM_CLI_STRING, &options->dd_feature, "WHICH",
         "teacher feature diversedistill attends over: auto (tokens if offered), tokens, hidden",
         0},
        {"dd-answer-weight", CM_CLI_FLOAT, &options->dd_answer_weight, "X",
         "weight of the committee answer's cross-entropy", 0},
        {"dd-router-weight", CM_CLI_FLOAT, &options->dd_router_weight, "X",
         "weight of the router's KL to its target", 0},
        {"dd-tau", CM_CLI_FLOAT, &options->dd_tau, "X", "temperature of the router target", 0},
        {"dd-align-weight", CM_CLI_FLOAT, &options->dd_align_weight, "X",
         "weight of the alignment term (0: off)", 0},
        {"dd-interactive", CM_CLI_FLAG, &options->dd_interactive, NULL,
         "every teacher lends its frozen head: the question is also projected into the "
         "teacher's hidden space and answered by that head",
         0},
        {"dd-probe-match-weight", CM_CLI_FLOAT, &options->dd_probe_match_weight, "X",
         "interactive: weight of ||p_i - hidden_i||^2 / Var(hidden_i)", 0},
        {"dd-probe-answer-weight", CM_CLI_FLOAT, &options->dd_probe_answer_weight, "X",
         "interactive: weight of T^2 KL(teacher || teacher head on the probe)", 0},
        {"dd-filter", CM_CLI_FLOAT, &options->dd_filter, "THETA",
         "ask teacher i for example j only if alpha_ji >= THETA or i is j's top teacher (0: off; "
         "replay uses only those recorded outputs, as a live run with --cache off)",
         0},
        {"dd-explore", CM_CLI_FLOAT, &options->dd_explore, "P",
         "share of filtered-out pairs still asked for, so the router sees them", 0},
        {"dd-filter-warmup", CM_CLI_INT, &options->dd_filter_warmup, "EPOCHS",
         "epochs trained unfiltered before filtering starts", 0},
        {"holdout", CM_CLI_INT, &options->holdout, "N",
         "keep the last N training examples out of training and report valid_accuracy on them "
         "(for choosing hyper-parameters without the test set)",
         0},
        {"resume", CM_CLI_FLAG, &options->resume, NULL, "continue from --out's saved state", 0},
        {"force-resume", CM_CLI_FLAG, &options->force_resume, NULL,
         "resume even if the committee changed", 0},
        {"threads", CM_CLI_INT, &options->threads, "N", "OpenBLAS threads", 0},
        {"max-train", CM_CLI_INT, &options->max_train, "N",
         "use only the first N training examples", 0},
        {"max-test", CM_CLI_INT, &options->max_test, "N", "use only the first N test examples", 0},
        {"log-level", CM_CLI_STRING, &options->log_level, "LEVEL", "debug, info, warn or error", 0},
    };
    /* replay has no teachers to reach: it neither shows nor takes the options about them, nor
     * those about fetching and storing their outputs (--cache, --cache-dtype: the record's
     * dtype is kept); --cache-memory and --cache-spill DIR bound the loaded record. */
    static const char *const replay_unused[] = {
        "teacher", "curve-secret-key", "teacher-key", "on-teacher-failure", "teacher-timeout-ms",
        "window",  "encoding",         "cache",       "cache-dtype",        "resolve-ms"};
    cm_cli_option_t used[sizeof table / sizeof table[0]];
    int count = 0;
    for (size_t index = 0; index < sizeof table / sizeof table[0]; index++) {
        int unused = 0;
        for (size_t name = 0; replay && name < sizeof replay_unused / sizeof replay_unused[0];
             name++)
            unused |= !strcmp(table[index].name, replay_unused[name]);
        if (!unused) used[count++] = table[index];
    }
    const char *usage =
        replay
            ? "student-trainer replay --record FILE --model SPEC --out FILE [options]"
            : "student-trainer train --model SPEC --teacher NAME=ENDPOINT ... --out FILE [options]";
    const char *description =
        replay
            ? "Trains a student from teacher outputs recorded by `train --record`, with no "
              "teacher\n"
              "running. Same methods and training options as train (none about reaching "
              "teachers).\n"
              "\n"
              "example:\n"
              "  student-trainer replay --record run.record --view pool7 --model mlp:49-64-10 \\\n"
              "      --method kd --out replayed.safetensors"
            : "Connects to a committee of teacher servers, checks that they agree with the "
              "student's\n"
              "data, and trains the student with --method, streaming teacher outputs ahead of the\n"
              "training step and caching them. Writes the student checkpoint, its resumable state\n"
              "(FILE.state) and JSON-lines metrics. SIGINT/SIGTERM save the state and stop (exit "
              "130).\n"
              "\n"
              "Encryption: teachers served with --curve-secret-key need --curve-secret-key FILE\n"
              "(this trainer's key pair, from `student-trainer keygen --out BASENAME`; its .pub\n"
              "goes into the teachers' --allow-keys) and --teacher-key NAME=FILE for every\n"
              "teacher (the teacher's .pub). A teacher that refuses our key, or a CURVE/plaintext\n"
              "mismatch, stops the run at once with a sentence saying so (exit 1).\n"
              "\n"
              "examples:\n"
              "  student-trainer train --view pool7 --model mlp:49-64-64-10 --method kd \\\n"
              "      --teacher fm=tcp://127.0.0.1:5555 --epochs 10 --out student.safetensors\n"
              "  student-trainer train --config examples/train.yaml --metrics run.jsonl";
    int help = 0;
    cm_status_t status = cm_cli_parse(used, count, argc, argv, first, &help);
    const char *command = replay ? "replay" : "train";
    if (help) {
        cm_cli_usage(stdout, usage, description, used, count);
        free(run);
        return 0;
    }
    cm_log_level_t level = CM_LOG_INFO;
    trainer_method_kind_t kind;
    if (status == CM_OK) status = cm_log_level_parse(options->log_level, &level);
    if (status == CM_OK) status = trainer_method_parse(options->method, &kind);
    /* One sentence naming the one option that is out of range. */
    if (status == CM_OK && options->epochs < 1)
        status =
            cm_fail(CM_ERR_INVALID_ARG, "--epochs must be at least 1, not %d", options->epochs);
    if (status == CM_OK && (options->batch < 1 || options->batch > TRAINER_FEED_MAX_BATCH))
        status = cm_fail(CM_ERR_INVALID_ARG, "--batch must be 1..%d, not %d",
                         TRAINER_FEED_MAX_BATCH, options->batch);
    if (status == CM_OK && options->threads < 1)
        status =
            cm_fail(CM_ERR_INVALID_ARG, "--threads must be at least 1, not %d", options->threads);
    if (status == CM_OK && (options->window < 1 || options->window > TRAINER_FEED_MAX_WINDOW))
        status = cm_fail(CM_ERR_INVALID_ARG, "--window must be 1..%d, not %d",
                         TRAINER_FEED_MAX_WINDOW, options->window);
    if (status == CM_OK && !(options->lr > 0))
        status = cm_fail(CM_ERR_INVALID_ARG, "--lr must be positive, not %g", (double)options->lr);
    if (status == CM_OK && !(options->temperature > 0))
        status = cm_fail(CM_ERR_INVALID_ARG, "--temperature must be positive, not %g",
                         (double)options->temperature);
    if (status == CM_OK && (options->kd_weight < 0 || options->kd_weight > 1))
        status = cm_fail(CM_ERR_INVALID_ARG, "--kd-weight must be in [0, 1], not %g",
                         (double)options->kd_weight);
    if (status == CM_OK && (!(options->label_fraction > 0) || options->label_fraction > 1))
        status = cm_fail(CM_ERR_INVALID_ARG, "--label-fraction must be in (0, 1], not %g",
                         (double)options->label_fraction);
    if (status == CM_OK && options->weight_decay < 0)
        status = cm_fail(CM_ERR_INVALID_ARG, "--weight-decay must not be negative, not %g",
                         (double)options->weight_decay);
    if (status == CM_OK && options->fitnet_weight < 0)
        status = cm_fail(CM_ERR_INVALID_ARG, "--fitnet-weight must not be negative, not %g",
                         (double)options->fitnet_weight);
    /* --teacher NAME=ENDPOINT is a usage matter, checked before anything connects. */
    for (int index = 0; status == CM_OK && index < options->teachers.count; index++) {
        char *copy = strdup(options->teachers.values[index]);
        trainer_teacher_address_t address;
        status = copy ? trainer_committee_parse_teacher(copy, &address)
                      : cm_fail(CM_ERR_NOMEM, "out of memory");
        free(copy);
    }
    cm_schedule_kind_t schedule_kind;
    if (status == CM_OK && cm_schedule_parse_kind(options->schedule, &schedule_kind) != CM_OK)
        status =
            cm_fail(CM_ERR_INVALID_ARG, "--schedule must be constant, cosine or onecycle, not '%s'",
                    options->schedule);
    if (status == CM_OK)
        status = cm_progress_mode_parse(options->progress, "--progress", &options->progress_mode);
    if (status == CM_OK && !(options->progress_interval >= 0))
        status = cm_fail(CM_ERR_INVALID_ARG, "--progress-interval must not be negative, not %g",
                         (double)options->progress_interval);
    if (status == CM_OK && options->warmup_steps < -1)
        status = cm_fail(CM_ERR_INVALID_ARG, "--warmup-steps must not be negative");
    if (status == CM_OK && strcmp(options->failure_policy, "wait") &&
        strcmp(options->failure_policy, "skip") && strcmp(options->failure_policy, "fail"))
        status = cm_fail(CM_ERR_INVALID_ARG, "--on-teacher-failure must be wait, skip or fail");
    if (status == CM_OK && options->resume && (options->save_initial || options->log_steps))
        status = cm_fail(CM_ERR_INVALID_ARG,
                         "--save-initial and --log-steps describe a run from its start; they "
                         "cannot be combined with --resume");
    if (status == CM_OK) status = check_cache_options(options, replay);
    if (status == CM_OK && options->teacher_timeout_ms < 10)
        status = cm_fail(CM_ERR_INVALID_ARG, "--teacher-timeout-ms must be at least 10");
    if (status == CM_OK && options->resolve_ms < 0)
        status = cm_fail(CM_ERR_INVALID_ARG, "--resolve-ms must not be negative (0: never)");
    if (status == CM_OK && options->teacher_keys.count && !options->curve_secret_key)
        status = cm_fail(CM_ERR_INVALID_ARG,
                         "--teacher-key needs --curve-secret-key (this trainer's own keys)");
    cm_split_t transfer_split;
    if (options->transfer_split && !strcmp(options->transfer_split, "none"))
        options->transfer_split = NULL;
    if (status == CM_OK && options->transfer_split &&
        cm_split_parse(options->transfer_split, &transfer_split) != CM_OK) {
        char reason[256];
        snprintf(reason, sizeof reason, "%s", cm_last_error());
        status = cm_fail(CM_ERR_INVALID_ARG, "--transfer-split: %s", reason);
    } else if (status == CM_OK && options->transfer_split) {
        if (transfer_split == CM_SPLIT_TRAIN || transfer_split == CM_SPLIT_TEST)
            status = cm_fail(CM_ERR_INVALID_ARG,
                             "--transfer-split must name the transfer or valid split, not %s "
                             "(train is trained already, test is never trained on)",
                             options->transfer_split);
        else if (kind == TRAINER_METHOD_CE)
            status = cm_fail(CM_ERR_INVALID_ARG,
                             "--transfer-split needs a method that learns from teachers: ce "
                             "learns from labels alone and cannot use unlabelled examples");
    }
    if (status == CM_OK && !replay && kind != TRAINER_METHOD_CE && options->teachers.count == 0)
        status = cm_fail(CM_ERR_INVALID_ARG,
                         "--method %s needs at least one --teacher NAME=ENDPOINT", options->method);
    if (status != CM_OK) {
        fprintf(stderr, "student-trainer %s: %s\n", command, cm_last_error());
        free(run);
        return 2;
    }
    run->config = cm_cli_effective_json(used, count);
    if (!run->config) {
        fprintf(stderr, "student-trainer %s: out of memory\n", command);
        free(run);
        return 1;
    }
    cm_log_init("student-trainer", level);
    cm_blas_set_threads(options->threads);
    struct sigaction action = {0};
    action.sa_handler = on_interrupt;
    sigaction(SIGINT, &action, NULL);
    sigaction(SIGTERM, &action, NULL);
    int was_interrupted = 0;
    status = train(run, &was_interrupted);
    free_run(run);
    free(run);
    if (status == CM_ERR_CANCELLED && interrupted) { /* a signal while it set up the committee */
        cm_log_info("%s interrupted by a signal before training started; nothing to save", command);
        return 130;
    }
    if (status != CM_OK) {
        cm_log_error("%s failed: %s", command, cm_last_error());
        return 1;
    }
    return was_interrupted ? 130 : 0; /* a signal or --stop-after: the state is saved */
}
