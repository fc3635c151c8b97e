/*
 * student-trainer end to end: real teacher-server processes on ipc://
 * endpoints in a temp dir, the real student-trainer binary, a 2000-example
 * subset of Fashion-MNIST so every run takes a second or two.  Covers
 * learning from two teachers, exactly-once training while a teacher is
 * killed and restarted (wait), training on without a teacher (skip), the
 * fingerprint check, bit-exact resume and replay, and clear errors for
 * corrupt state and record files.
 *
 * Hostile teachers (fake_teacher, in a thread of the test) and hostile
 * disks: a teacher answering BUSY forever costs one deadline per request,
 * then the policy applies (skip trains on, fail stops with a sentence); a
 * signal ends every wait (handshake with a mute teacher, a teacher nobody
 * runs, a teacher gone silent mid-run under wait with a 600 s deadline):
 * exit 130, the state saved and resumable exactly once; malformed replies
 * are asked again at once (the deadline is 600 s, so waiting it out would
 * hang) and counted, three in a row mark the teacher bad; NaN/Inf in a
 * teacher's outputs follow the policy and name the teacher; a metrics file
 * or standard output on a full disk (/dev/full) fails the run (exit 1) with
 * the state saved.  Hang guards are generous (30-60 s); no test measures
 * time.
 */
#include "cm_dataset.h"
#include "cm_model.h"
#include "fake_teacher.h"
#include "test_process.h"
#include "test_util.h"

#include "cm_npy.h"
#include "cm_safetensors.h"
#include "test_folder.h"

#include <arpa/inet.h>
#include <check.h>
#include <jansson.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <math.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#define SUBSET "--max-train 2000 --max-test 500"

static char directory[256];
static char fm_path[320], comp_path[320];
static int have_data;
static char output[65536];
static char fingerprint[65]; /* of Fashion-MNIST, for the fake teachers */

/* The temp directory and the dataset fingerprint (for the fake teachers); have_data says if
 * Fashion-MNIST is there. */
static void prepare_directory(void) {
    have_data = test_util_have_fashion_mnist();
    if (!have_data) return;
    test_util_temp_dir(directory, sizeof directory);
    cm_dataset_t *dataset = NULL;
    cm_dataset_options_t options = {.max_train = 2000, .max_test = 500};
    if (cm_dataset_load(&dataset, "fashion-mnist", "pool7", &options) == CM_OK)
        snprintf(fingerprint, sizeof fingerprint, "%s", dataset->fingerprint);
    else
        have_data = 0;
    cm_dataset_free(&dataset);
}

static void fit_teachers(void) {
    prepare_directory();
    if (!have_data) return;
    snprintf(fm_path, sizeof fm_path, "%s/fm.safetensors", directory);
    snprintf(comp_path, sizeof comp_path, "%s/comp.safetensors", directory);
    char command[2048];
    snprintf(command, sizeof command,
             "%s fit --view full --model mlp:784-64-10 --epochs 2 --lr 3e-3 " SUBSET " --out %s && "
             "%s fit --view pool7 --model mlp:49-128-10 --epochs 3 --lr 3e-3 " SUBSET " --out %s",
             test_util_bin("teacher-server"), fm_path, test_util_bin("teacher-server"), comp_path);
    if (test_util_run(command, output, sizeof output) != 0) {
        fprintf(stderr, "fitting the test teachers failed:\n%s\n", output);
        have_data = 0;
    }
}

static void remove_teachers(void) {
    if (directory[0]) test_util_remove_tree(directory);
}

typedef struct {
    pid_t pid;
    char endpoint[400];
    char log[400];
    char command[2048];
} teacher_process_t;

static void start_teacher(teacher_process_t *teacher, const char *name, const char *checkpoint,
                          const char *extra) {
    snprintf(teacher->endpoint, sizeof teacher->endpoint, "ipc://%s/%s.sock", directory, name);
    snprintf(teacher->log, sizeof teacher->log, "%s/%s.log", directory, name);
    snprintf(teacher->command, sizeof teacher->command,
             "%s serve --model %s --name %s --bind %s --http off " SUBSET " %s",
             test_util_bin("teacher-server"), checkpoint, name, teacher->endpoint, extra);
    teacher->pid = test_process_start(teacher->command, teacher->log);
    ck_assert_int_gt(teacher->pid, 0);
    ck_assert_msg(test_process_await_text(teacher->log, "serving", 10000),
                  "teacher %s did not start", name);
}

static void restart_teacher(teacher_process_t *teacher) {
    teacher->pid = test_process_start(teacher->command, teacher->log);
    ck_assert_msg(test_process_await_text(teacher->log, "serving", 10000),
                  "teacher did not restart");
}

static void stop_teacher(teacher_process_t *teacher) {
    if (teacher->pid > 0) test_process_stop(teacher->pid, SIGTERM, 5000);
    teacher->pid = 0;
}

/* Parses the JSON-lines metrics file into an array of its epoch lines (caller json_decref); the
 * configuration line each run writes first (key "config") is checked and left out. */
static json_t *read_metrics(const char *path) {
    json_t *lines = json_array();
    FILE *file = fopen(path, "r");
    ck_assert_msg(file != NULL, "no metrics at %s", path);
    char line[8192];
    while (fgets(line, sizeof line, file)) {
        json_error_t error;
        json_t *value = json_loads(line, 0, &error);
        ck_assert_msg(value != NULL, "bad metrics line: %s (%s)", line, error.text);
        if (json_object_get(value, "config")) {
            ck_assert_msg(json_is_object(json_object_get(value, "config")) &&
                              !json_object_get(value, "epoch"),
                          "bad config line: %s", line);
            json_decref(value);
            continue;
        }
        json_array_append_new(lines, value);
    }
    fclose(file);
    return lines;
}

static double metric(json_t *line, const char *key) {
    return json_number_value(json_object_get(line, key));
}

static double teacher_metric(json_t *line, const char *teacher, const char *key) {
    return json_number_value(
        json_object_get(json_object_get(json_object_get(line, "teachers"), teacher), key));
}

#define REQUIRE_DATA()                                                                             \
    do {                                                                                           \
        if (!have_data) {                                                                          \
            fprintf(stderr, "skipping %s: Fashion-MNIST is not installed (make deps)\n",           \
                    __func__);                                                                     \
            return;                                                                                \
        }                                                                                          \
    } while (0)

START_TEST(test_two_teachers_learn) {
    REQUIRE_DATA();
    teacher_process_t fm, comp;
    start_teacher(&fm, "fm-learn", fm_path, "");
    start_teacher(&comp, "comp-learn", comp_path, "");
    char command[4096], metrics[400], out[400];
    snprintf(metrics, sizeof metrics, "%s/learn.jsonl", directory);
    snprintf(out, sizeof out, "%s/learn.safetensors", directory);
    snprintf(command, sizeof command,
             "%s train --view pool7 --model mlp:49-32-10 --teacher fm=%s --teacher comp=%s "
             "--method avg-kd --epochs 3 --batch 64 --lr 3e-3 --seed 3 " SUBSET
             " --out %s --metrics %s",
             test_util_bin("student-trainer"), fm.endpoint, comp.endpoint, out, metrics);
    int status = test_util_run(command, output, sizeof output);
    stop_teacher(&fm);
    stop_teacher(&comp);
    ck_assert_msg(status == 0, "train failed: %s", output);
    json_t *lines = read_metrics(metrics);
    ck_assert_int_eq((int)json_array_size(lines), 3);
    double first = metric(json_array_get(lines, 0), "loss"),
           last = metric(json_array_get(lines, 2), "loss");
    double accuracy = metric(json_array_get(lines, 2), "test_accuracy");
    ck_assert_msg(last < 0.8 * first, "loss did not fall: %.4f -> %.4f", first, last);
    ck_assert_msg(accuracy > 0.55, "accuracy %.3f is not far above chance (0.1)", accuracy);
    /* Epochs after the first are served from the cache: no more teacher traffic. */
    ck_assert_int_eq((int)teacher_metric(json_array_get(lines, 0), "fm", "examples_received"),
                     2000);
    ck_assert_int_eq((int)teacher_metric(json_array_get(lines, 2), "fm", "examples_received"),
                     2000);
    json_decref(lines);
    snprintf(command, sizeof command, "%s eval --model %s " SUBSET,
             test_util_bin("student-trainer"), out);
    ck_assert_int_eq(test_util_run(command, output, sizeof output), 0);
    ck_assert_ptr_nonnull(strstr(output, "accuracy="));
}
END_TEST

START_TEST(test_exactly_once_with_restart) {
    REQUIRE_DATA();
    teacher_process_t fm, comp;
    start_teacher(&fm, "fm-once", fm_path, "--compute-delay-ms 15");
    start_teacher(&comp, "comp-once", comp_path, "--compute-delay-ms 15");
    char command[4096], metrics[400], out[400], log[400];
    snprintf(metrics, sizeof metrics, "%s/once.jsonl", directory);
    snprintf(out, sizeof out, "%s/once.safetensors", directory);
    snprintf(log, sizeof log, "%s/once.log", directory);
    snprintf(command, sizeof command,
             "%s train --view pool7 --model mlp:49-32-10 --teacher fm=%s --teacher comp=%s "
             "--method avg-kd --epochs 3 --batch 50 --cache off --on-teacher-failure wait "
             "--teacher-timeout-ms 400 " SUBSET " --out %s --metrics %s",
             test_util_bin("student-trainer"), fm.endpoint, comp.endpoint, out, metrics);
    pid_t trainer = test_process_start(command, log);
    ck_assert_msg(test_process_await_text(log, "epoch 1/3", 20000),
                  "the trainer did not finish epoch 1");
    kill(comp.pid, SIGKILL);
    test_process_wait(comp.pid, 2000);
    test_process_sleep_ms(800);
    restart_teacher(&comp);
    int status = test_process_wait(trainer, 60000);
    stop_teacher(&fm);
    stop_teacher(&comp);
    if (status != 0) test_process_stop(trainer, SIGKILL, 1000);
    ck_assert_msg(status == 0, "trainer exited %d; see %s", status, log);
    json_t *lines = read_metrics(metrics);
    ck_assert_int_eq((int)json_array_size(lines), 3);
    double down = 0;
    for (size_t epoch = 0; epoch < 3; epoch++) {
        json_t *line = json_array_get(lines, epoch);
        ck_assert_int_eq((int)metric(line, "train_examples"), 2000);
        ck_assert_int_eq((int)metric(line, "distinct_examples"), 2000);
        ck_assert_int_eq((int)metric(line, "duplicates"), 0);
        ck_assert_int_eq((int)teacher_metric(line, "comp", "missing_rows"), 0);
        down = teacher_metric(line, "comp", "down_events");
    }
    ck_assert_msg(down >= 1, "the trainer never noticed the teacher was gone");
    /* --cache off: the feed forgets every batch once trained, so each epoch asks again. */
    double received = teacher_metric(json_array_get(lines, 2), "fm", "examples_received");
    ck_assert_msg(received >= 3 * 2000, "with --cache off fm sent %.0f outputs in 3 epochs",
                  received);
    json_decref(lines);
}
END_TEST

START_TEST(test_skip_without_teacher) {
    REQUIRE_DATA();
    teacher_process_t fm, comp;
    start_teacher(&fm, "fm-skip", fm_path, "--compute-delay-ms 10");
    start_teacher(&comp, "comp-skip", comp_path, "--compute-delay-ms 10");
    char command[4096], metrics[400], out[400], log[400];
    snprintf(metrics, sizeof metrics, "%s/skip.jsonl", directory);
    snprintf(out, sizeof out, "%s/skip.safetensors", directory);
    snprintf(log, sizeof log, "%s/skip.log", directory);
    snprintf(command, sizeof command,
             "%s train --view pool7 --model mlp:49-32-10 --teacher fm=%s --teacher comp=%s "
             "--method ca-mkd --epochs 2 --batch 50 --cache off --on-teacher-failure skip "
             "--teacher-timeout-ms 300 " SUBSET " --out %s --metrics %s",
             test_util_bin("student-trainer"), fm.endpoint, comp.endpoint, out, metrics);
    pid_t trainer = test_process_start(command, log);
    ck_assert_msg(test_process_await_text(log, "train mlp:", 20000), "the trainer did not start");
    test_process_sleep_ms(150); /* mid-way through epoch 1 */
    kill(comp.pid, SIGKILL);
    test_process_wait(comp.pid, 2000);
    int status = test_process_wait(trainer, 60000);
    stop_teacher(&fm);
    if (status != 0) test_process_stop(trainer, SIGKILL, 1000);
    ck_assert_msg(status == 0, "trainer exited %d; see %s", status, log);
    json_t *lines = read_metrics(metrics);
    json_t *last = json_array_get(lines, json_array_size(lines) - 1);
    ck_assert_int_eq((int)json_array_size(lines), 2);
    ck_assert_msg(teacher_metric(last, "comp", "skipped_batches") > 0,
                  "no batch went without comp");
    ck_assert_int_eq((int)metric(last, "distinct_examples"), 2000);
    ck_assert_msg(metric(last, "test_accuracy") > 0.3, "the student learned nothing without comp");
    ck_assert(test_process_await_text(log, "was missing from", 0));
    json_decref(lines);
}
END_TEST

/* A dataset folder that is not Fashion-MNIST but has its shape: 10 classes, u8 [N,28,28]. */
static void write_other_folder(const char *folder) {
    char path[600];
    mkdir(folder, 0755);
    snprintf(path, sizeof path, "%s/dataset.json", folder);
    FILE *file = fopen(path, "w");
    ck_assert_ptr_nonnull(file);
    fputs("{\"format\": \"committee-dataset/1\", \"name\": \"other\", \"task\": {\"type\": "
          "\"classification\", \"classes\": 10}, \"splits\": [\"train\", \"test\"], "
          "\"views\": {\"full\": {\"kind\": \"dense\"}}}",
          file);
    fclose(file);
    static uint8_t pixels[2000 * 784];
    static int64_t labels[2000];
    for (int i = 0; i < 2000; i++) labels[i] = i % 10;
    for (int i = 0; i < 2000 * 784; i++) pixels[i] = (uint8_t)(i * 31);
    const char *splits[2] = {"train", "test"};
    for (int split = 0; split < 2; split++) {
        snprintf(path, sizeof path, "%s/%s", folder, splits[split]);
        mkdir(path, 0755);
        int64_t shape[3] = {split ? 500 : 2000, 28, 28};
        snprintf(path, sizeof path, "%s/%s/full.npy", folder, splits[split]);
        ck_assert_int_eq(cm_npy_write(path, CM_NPY_U8, 3, shape, pixels), CM_OK);
        snprintf(path, sizeof path, "%s/%s/labels.npy", folder, splits[split]);
        ck_assert_int_eq(cm_npy_write(path, CM_NPY_I64, 1, shape, labels), CM_OK);
    }
}

/* Issue 11 item 12: a mistyped --teacher endpoint is refused before ZeroMQ sees it, as a
 * usage error (exit 2, issue 15) before anything loads. */
START_TEST(test_refuses_bad_teacher_endpoints) {
    static const char *const cases[][2] = {
        {"fm=tcp://127.0.0.1:99999", "port 99999 is not in 1..65535"},
        {"fm=tcp://127.0.0.1", "--teacher fm"},
        {"fm=udp://127.0.0.1:5555", "--teacher fm"},
    };
    for (size_t index = 0; index < sizeof cases / sizeof cases[0]; index++) {
        char command[1024];
        snprintf(command, sizeof command,
                 "%s train --view pool7 --model mlp:49-32-10 --teacher %s --method kd "
                 "--epochs 1 --out %s/bad-endpoint.safetensors",
                 test_util_bin("student-trainer"), cases[index][0], directory);
        ck_assert_int_eq(test_util_run(command, output, sizeof output), 2);
        ck_assert_msg(strstr(output, cases[index][1]), "%s: unclear refusal: %s", cases[index][0],
                      output);
    }
}
END_TEST

START_TEST(test_refuses_other_dataset) {
    REQUIRE_DATA();
    /* Subsets no longer make another dataset (the fingerprint is the whole dataset's): the
     * teacher serves a different folder. */
    char other[400];
    snprintf(other, sizeof other, "%s/other-data", directory);
    write_other_folder(other);
    teacher_process_t fm;
    snprintf(fm.endpoint, sizeof fm.endpoint, "ipc://%s/fm-other.sock", directory);
    snprintf(fm.log, sizeof fm.log, "%s/fm-other.log", directory);
    snprintf(fm.command, sizeof fm.command,
             "%s serve --model %s --name fm --bind %s --http off --data %s",
             test_util_bin("teacher-server"), fm_path, fm.endpoint, other);
    fm.pid = test_process_start(fm.command, fm.log);
    ck_assert(test_process_await_text(fm.log, "serving", 10000));
    char command[4096];
    snprintf(
        command, sizeof command,
        "%s train --view pool7 --model mlp:49-32-10 --teacher fm=%s --method kd --epochs 1 " SUBSET
        " --out %s/other.safetensors",
        test_util_bin("student-trainer"), fm.endpoint, directory);
    int status = test_util_run(command, output, sizeof output);
    stop_teacher(&fm);
    ck_assert_int_eq(status, 1);
    ck_assert_msg(strstr(output, "teacher 'fm'") && strstr(output, "holds dataset") &&
                      strstr(output, "but the student trains on"),
                  "unclear refusal: %s", output);
}
END_TEST

START_TEST(test_resume_and_replay_are_exact) {
    REQUIRE_DATA();
    teacher_process_t comp;
    start_teacher(&comp, "comp-resume", comp_path, "");
    char command[4096], straight[400], resumed[400], replayed[400], record[400];
    snprintf(straight, sizeof straight, "%s/straight.safetensors", directory);
    snprintf(resumed, sizeof resumed, "%s/resumed.safetensors", directory);
    snprintf(replayed, sizeof replayed, "%s/replayed.safetensors", directory);
    snprintf(record, sizeof record, "%s/record.safetensors", directory);
    const char *common = "--view pool7 --model mlp:49-32-10 --method kd --epochs 2 --batch 64 "
                         "--seed 5 --label-fraction 0.5 " SUBSET;
    snprintf(command, sizeof command, "%s train %s --teacher comp=%s --out %s --record %s",
             test_util_bin("student-trainer"), common, comp.endpoint, straight, record);
    ck_assert_msg(test_util_run(command, output, sizeof output) == 0, "train: %s", output);
    snprintf(command, sizeof command, "%s train %s --teacher comp=%s --out %s --stop-after 40",
             test_util_bin("student-trainer"), common, comp.endpoint, resumed);
    /* --stop-after is an interruption: state saved, exit 130 (as the README says). */
    ck_assert_msg(test_util_run(command, output, sizeof output) == 130, "stop-after: %s", output);
    ck_assert_ptr_nonnull(strstr(output, "continue with --resume"));
    snprintf(command, sizeof command, "%s train %s --teacher comp=%s --out %s --resume",
             test_util_bin("student-trainer"), common, comp.endpoint, resumed);
    ck_assert_msg(test_util_run(command, output, sizeof output) == 0, "resume: %s", output);
    stop_teacher(&comp);
    ck_assert_msg(test_util_same_checkpoints(straight, resumed, output, sizeof output),
                  "interrupted + resumed run differs from the straight run: %s", output);
    /* Replay from the record, no teacher running: the same weights again. */
    snprintf(command, sizeof command, "%s replay %s --record %s --out %s",
             test_util_bin("student-trainer"), common, record, replayed);
    ck_assert_msg(test_util_run(command, output, sizeof output) == 0, "replay: %s", output);
    ck_assert_msg(test_util_same_checkpoints(straight, replayed, output, sizeof output),
                  "replay differs: %s", output);
    /* A record of a run without --dd-interactive lacks what that variant trains through. */
    snprintf(command, sizeof command,
             "%s replay %s --record %s --out %s --method diversedistill --dd-interactive",
             test_util_bin("student-trainer"), common, record, replayed);
    ck_assert_int_eq(test_util_run(command, output, sizeof output), 1);
    ck_assert_msg(strstr(output, "teacher 'comp' offers no 'hidden' feature"),
                  "replay with --dd-interactive: %s", output);

    /* Corrupt files give one clear sentence naming them. */
    char state[420];
    snprintf(state, sizeof state, "%s.state", resumed);
    ck_assert_int_eq(truncate(state, 100), 0);
    snprintf(command, sizeof command,
             "%s train %s --teacher comp=ipc://%s/nobody.sock --out %s --resume",
             test_util_bin("student-trainer"), common, directory, resumed);
    snprintf(command, sizeof command, "%s replay %s --record %s --out %s --resume",
             test_util_bin("student-trainer"), common, record, resumed);
    ck_assert_int_eq(test_util_run(command, output, sizeof output), 1);
    ck_assert_msg(strstr(output, state), "error does not name the state file: %s", output);
    ck_assert_int_eq(truncate(record, 1000), 0);
    snprintf(command, sizeof command, "%s replay %s --record %s --out %s",
             test_util_bin("student-trainer"), common, record, replayed);
    ck_assert_int_eq(test_util_run(command, output, sizeof output), 1);
    ck_assert_msg(strstr(output, record), "error does not name the record: %s", output);
}
END_TEST

/*
 * --save-initial and --log-steps (bench/parity replays runs from them): the initial checkpoint
 * is the seeded initialization; the log has one line per step, its rows are every training
 * example once per epoch, its terms add up to the step's loss, and its losses weighted by rows
 * give the epoch's mean loss and its last rate the epoch's rate in --metrics.  An unwritable
 * log fails the run naming it; neither option goes with --resume.
 */
START_TEST(test_save_initial_and_log_steps) {
    REQUIRE_DATA();
    teacher_process_t comp;
    start_teacher(&comp, "comp-steps", comp_path, "");
    char command[4096], out[400], initial[400], steps_path[400], metrics_path[400];
    snprintf(out, sizeof out, "%s/steps.safetensors", directory);
    snprintf(initial, sizeof initial, "%s/steps-initial.safetensors", directory);
    snprintf(steps_path, sizeof steps_path, "%s/steps.jsonl", directory);
    snprintf(metrics_path, sizeof metrics_path, "%s/steps-metrics.jsonl", directory);
    const char *common = "--view pool7 --model mlp:49-32-10 --method kd --epochs 2 --batch 64 "
                         "--seed 9 --schedule cosine --lr 3e-3 --http off " SUBSET;
    snprintf(command, sizeof command,
             "%s train %s --teacher comp=%s --out %s --save-initial %s --log-steps %s "
             "--metrics %s",
             test_util_bin("student-trainer"), common, comp.endpoint, out, initial, steps_path,
             metrics_path);
    ck_assert_msg(test_util_run(command, output, sizeof output) == 0, "train: %s", output);

    cm_model_t *saved = NULL, *fresh = NULL;
    ck_assert_int_eq(cm_model_load(initial, 64, &saved, NULL), CM_OK);
    ck_assert_int_eq(cm_model_new(cm_model_spec(saved), 64, &fresh), CM_OK);
    cm_model_init(fresh, 9);
    ck_assert_int_eq(memcmp(cm_model_params(saved), cm_model_params(fresh),
                            sizeof(float) * cm_model_param_count(fresh)),
                     0);
    cm_model_free(&saved);
    cm_model_free(&fresh);

    json_t *steps = read_metrics(steps_path), *metrics = read_metrics(metrics_path);
    int per_epoch = (2000 + 63) / 64;
    ck_assert_int_eq((int)json_array_size(steps), 2 * per_epoch);
    static int seen[2][2000];
    memset(seen, 0, sizeof seen);
    double weighted[2] = {0.0, 0.0};
    long rows_total[2] = {0, 0};
    for (size_t index = 0; index < json_array_size(steps); index++) {
        json_t *line = json_array_get(steps, index);
        int epoch = (int)json_integer_value(json_object_get(line, "epoch"));
        ck_assert_int_eq((int)json_integer_value(json_object_get(line, "step")), (int)index + 1);
        ck_assert_int_eq(epoch, (int)index / per_epoch + 1);
        ck_assert_int_eq((int)json_integer_value(json_object_get(line, "batch")),
                         (int)index % per_epoch);
        double loss = metric(line, "loss");
        ck_assert_msg(isfinite(loss) && loss > 0, "step %zu: loss %g", index + 1, loss);
        ck_assert_double_eq_tol(metric(line, "ce") + metric(line, "kd"), loss, 1e-12);
        json_t *ids = json_object_get(line, "ids");
        for (size_t row = 0; row < json_array_size(ids); row++) {
            int id = (int)json_integer_value(json_array_get(ids, row));
            ck_assert_msg(id >= 0 && id < 2000, "step %zu: id %d", index + 1, id);
            seen[epoch - 1][id]++;
        }
        weighted[epoch - 1] += loss * (double)json_array_size(ids);
        rows_total[epoch - 1] += (long)json_array_size(ids);
    }
    for (int epoch = 0; epoch < 2; epoch++) {
        for (int id = 0; id < 2000; id++) ck_assert_int_eq(seen[epoch][id], 1);
        json_t *line = json_array_get(metrics, (size_t)epoch);
        ck_assert_double_eq_tol(weighted[epoch] / (double)rows_total[epoch], metric(line, "loss"),
                                2e-6); /* the metrics print 6 decimals */
        json_t *last = json_array_get(steps, (size_t)(epoch + 1) * (size_t)per_epoch - 1);
        ck_assert_double_eq_tol(metric(last, "lr"), metric(line, "lr"), 1e-12);
    }
    /* The rate warms up: the first step's is below the peak. */
    ck_assert(metric(json_array_get(steps, 0), "lr") < 3e-3 * 0.5);
    json_decref(steps);
    json_decref(metrics);

    snprintf(command, sizeof command,
             "%s train %s --teacher comp=%s --out %s --log-steps /dev/full",
             test_util_bin("student-trainer"), common, comp.endpoint, out);
    ck_assert_int_eq(test_util_run(command, output, sizeof output), 1);
    ck_assert_msg(strstr(output, "cannot write the per-step log to /dev/full"), "%s", output);
    snprintf(command, sizeof command,
             "%s train %s --teacher comp=%s --out %s --save-initial %s/no/such/dir/x",
             test_util_bin("student-trainer"), common, comp.endpoint, out, directory);
    ck_assert_int_eq(test_util_run(command, output, sizeof output), 1);
    ck_assert_msg(strstr(output, "no/such/dir/x"), "error does not name the file: %s", output);
    stop_teacher(&comp);
    snprintf(command, sizeof command,
             "%s train %s --teacher comp=%s --out %s --log-steps %s --resume",
             test_util_bin("student-trainer"), common, comp.endpoint, out, steps_path);
    ck_assert_int_eq(test_util_run(command, output, sizeof output), 2);
    ck_assert_msg(strstr(output, "cannot be combined with --resume"), "%s", output);
}
END_TEST

/*
 * --schedule through the real binary: the metrics line carries the rate of the epoch's last
 * step, which stays at --lr under the constant default and decays under cosine; a cosine run
 * interrupted with --stop-after and resumed writes the same bytes as a straight run (the rate
 * is a function of the step); a resume with another schedule is refused with a sentence.
 */
START_TEST(test_schedule_decays_and_resumes_exactly) {
    REQUIRE_DATA();
    char command[4096], metrics[400], straight[400], resumed[400], flat[400];
    snprintf(metrics, sizeof metrics, "%s/schedule.jsonl", directory);
    snprintf(straight, sizeof straight, "%s/cosine.safetensors", directory);
    snprintf(resumed, sizeof resumed, "%s/cosine-resumed.safetensors", directory);
    snprintf(flat, sizeof flat, "%s/constant.safetensors", directory);
    const char *common = "--view pool7 --model mlp:49-32-10 --method ce --epochs 3 --batch 100 "
                         "--lr 2e-3 --seed 3 --http off " SUBSET;
    snprintf(command, sizeof command, "%s train %s --schedule cosine --out %s --metrics %s",
             test_util_bin("student-trainer"), common, straight, metrics);
    ck_assert_msg(test_util_run(command, output, sizeof output) == 0, "cosine: %s", output);
    json_t *lines = read_metrics(metrics);
    ck_assert_int_eq((int)json_array_size(lines), 3);
    double lr[3];
    for (int epoch = 0; epoch < 3; epoch++) lr[epoch] = metric(json_array_get(lines, epoch), "lr");
    json_decref(lines);
    ck_assert_msg(lr[0] < 2e-3 && lr[1] < lr[0] && lr[2] < lr[1] && lr[2] >= 2e-4 * 0.999,
                  "cosine rates %g %g %g", lr[0], lr[1], lr[2]);
    snprintf(command, sizeof command, "%s train %s --out %s --metrics %s",
             test_util_bin("student-trainer"), common, flat, metrics);
    ck_assert_msg(test_util_run(command, output, sizeof output) == 0, "constant: %s", output);
    lines = read_metrics(metrics);
    for (int epoch = 0; epoch < 3; epoch++)
        ck_assert_msg(fabs(metric(json_array_get(lines, epoch), "lr") - 2e-3) < 1e-9,
                      "constant rate of epoch %d is %g", epoch + 1,
                      metric(json_array_get(lines, epoch), "lr"));
    json_decref(lines);

    snprintf(command, sizeof command, "%s train %s --schedule cosine --out %s --stop-after 25",
             test_util_bin("student-trainer"), common, resumed);
    ck_assert_msg(test_util_run(command, output, sizeof output) == 130, "stop-after: %s", output);
    snprintf(command, sizeof command, "%s train %s --schedule onecycle --out %s --resume",
             test_util_bin("student-trainer"), common, resumed);
    ck_assert_int_eq(test_util_run(command, output, sizeof output), 1);
    ck_assert_msg(strstr(output, "was trained with --schedule cosine") &&
                      strstr(output, "must keep its schedule"),
                  "resume with another schedule: %s", output);
    snprintf(command, sizeof command, "%s train %s --schedule cosine --out %s --resume",
             test_util_bin("student-trainer"), common, resumed);
    ck_assert_msg(test_util_run(command, output, sizeof output) == 0, "resume: %s", output);
    ck_assert_msg(test_util_same_checkpoints(straight, resumed, output, sizeof output),
                  "interrupted + resumed cosine run differs from the straight run: %s", output);
    snprintf(command, sizeof command, "%s train %s --schedule linear --out %s",
             test_util_bin("student-trainer"), common, flat);
    ck_assert_int_eq(test_util_run(command, output, sizeof output), 2);
    ck_assert_msg(strstr(output, "--schedule must be constant, cosine or onecycle"),
                  "unknown schedule: %s", output);
}
END_TEST

/*
 * A dataset folder's "standardize" view through the real binary: the student trains on it
 * and its checkpoint's preprocessing carries the train statistics it was fed with.
 */
START_TEST(test_standardized_view_reaches_the_checkpoint) {
    char data[400], manifest[450], out[400], command[4096];
    snprintf(data, sizeof data, "%s/standardized", directory);
    snprintf(manifest, sizeof manifest, "%s/dataset.json", data);
    snprintf(out, sizeof out, "%s/standardized.safetensors", directory);
    test_folder_write(data, &(test_folder_options_t){.train_rows = 60, .test_rows = 20, .seed = 2});
    test_folder_write_text(manifest,
                           "{\"format\": \"committee-dataset/1\", \"name\": \"standardized\",\n"
                           " \"task\": {\"type\": \"classification\", \"classes\": 3},\n"
                           " \"splits\": [\"train\", \"test\"],\n"
                           " \"views\": {\"grid\": {\"kind\": \"dense\"},\n"
                           "   \"std\": {\"from\": \"grid\", \"transform\": \"standardize\"}}}\n");
    snprintf(command, sizeof command,
             "%s train --data %s --view std --model mlp:64-16-3 --method ce --epochs 2 --batch 20 "
             "--http off --out %s",
             test_util_bin("student-trainer"), data, out);
    ck_assert_msg(test_util_run(command, output, sizeof output) == 0, "train: %s", output);
    cm_safetensors_t *file = NULL;
    ck_assert_int_eq(cm_safetensors_read(&file, out), CM_OK);
    const char *preprocessing = cm_safetensors_metadata(file, "preprocessing");
    ck_assert_msg(preprocessing && strstr(preprocessing, "\"transform\":\"standardize\"") &&
                      strstr(preprocessing, "\"standardize\":{\"mean\":["),
                  "preprocessing %s", preprocessing ? preprocessing : "(none)");
    cm_safetensors_free(&file);
}
END_TEST

/*
 * A CNN student trains in training mode: its batch norm updates the running statistics the
 * checkpoint carries (a student stuck in eval mode keeps them at 0 and 1, and is scored on
 * statistics it never learned), and eval of the checkpoint agrees with the trainer's own score.
 */
START_TEST(test_cnn_student_trains_its_batch_norm) {
    REQUIRE_DATA();
    char out[400], command[4096];
    snprintf(out, sizeof out, "%s/cnn-student.safetensors", directory);
    snprintf(command, sizeof command,
             "%s train --view full --model cnn:conv=4,pool=1,fc=16 --method ce --epochs 3 "
             "--batch 64 --lr 1e-2 --http off --max-train 1024 --max-test 200 --out %s",
             test_util_bin("student-trainer"), out);
    ck_assert_msg(test_util_run(command, output, sizeof output) == 0, "train: %s", output);
    const char *said = strstr(output, "test_accuracy=");
    ck_assert_msg(said, "no test_accuracy in %s", output);
    double trained = atof(said + strlen("test_accuracy="));
    cm_safetensors_t *file = NULL;
    ck_assert_int_eq(cm_safetensors_read(&file, out), CM_OK);
    const cm_tensor_t *mean = cm_safetensors_find(file, "stages.0.bn.running_mean");
    const cm_tensor_t *var = cm_safetensors_find(file, "stages.0.bn.running_var");
    ck_assert_msg(mean && var && mean->shape[0] == 4 && var->shape[0] == 4,
                  "no running statistics in the student checkpoint");
    int moved = 0;
    for (int channel = 0; channel < 4; channel++)
        moved += ((const float *)mean->data)[channel] != 0.0f &&
                 ((const float *)var->data)[channel] != 1.0f;
    cm_safetensors_free(&file);
    ck_assert_msg(moved == 4, "%d of 4 channels have running statistics that moved", moved);
    snprintf(command, sizeof command, "%s eval --model %s --max-test 200",
             test_util_bin("student-trainer"), out);
    ck_assert_msg(test_util_run(command, output, sizeof output) == 0, "eval: %s", output);
    said = strstr(output, "accuracy=");
    ck_assert_msg(said && fabs(atof(said + strlen("accuracy=")) - trained) < 1e-4,
                  "eval says %s, the trainer said %.4f", output, trained);
    ck_assert_msg(trained > 0.2, "a CNN student reached only %.4f (chance: 0.1)", trained);
}
END_TEST

/* The HTTP port a teacher started with --http 127.0.0.1:0 logged. */
static int teacher_http_port(const teacher_process_t *teacher) {
    char text[8192] = "";
    FILE *file = fopen(teacher->log, "r");
    if (!file) return -1;
    size_t got = fread(text, 1, sizeof text - 1, file);
    text[got] = '\0';
    fclose(file);
    const char *found = strstr(text, "HTTP 127.0.0.1:");
    return found ? atoi(found + strlen("HTTP 127.0.0.1:")) : -1;
}

/* committee_teacher_examples_total of a running teacher. */
static long teacher_examples_computed(const teacher_process_t *teacher) {
    char body[65536];
    int port = teacher_http_port(teacher);
    ck_assert_msg(port > 0, "no HTTP port in %s", teacher->log);
    ck_assert_int_eq(test_util_http_get(port, "/metrics", body, sizeof body, 5000), 200);
    const char *line = strstr(body, "\ncommittee_teacher_examples_total ");
    ck_assert_ptr_nonnull(line);
    return atol(line + strlen("\ncommittee_teacher_examples_total "));
}

/*
 * --transfer-split through the real binaries: a folder with train (60), test (20) and an
 * unlabelled transfer split (40 rows, no labels.npy at all), a teacher fitted on it and
 * serving it.  kd trains on 100 rows an epoch, 40 of them transfer rows the teacher annotates
 * (with --cache off the teacher computes 100 outputs per epoch); an interrupted + resumed run
 * and a replay of the record (which holds the transfer rows) give the same bytes as a straight
 * run; bad uses are refused with a sentence.
 */
START_TEST(test_transfer_split_trains_unlabelled_rows) {
    char data[400], teacher_path[400], command[4096], metrics[400], straight[400], resumed[400],
        replayed[400], record[400], log[400];
    snprintf(data, sizeof data, "%s/with-transfer", directory);
    snprintf(teacher_path, sizeof teacher_path, "%s/transfer-teacher.safetensors", directory);
    snprintf(metrics, sizeof metrics, "%s/transfer.jsonl", directory);
    snprintf(straight, sizeof straight, "%s/transfer-straight.safetensors", directory);
    snprintf(resumed, sizeof resumed, "%s/transfer-resumed.safetensors", directory);
    snprintf(replayed, sizeof replayed, "%s/transfer-replayed.safetensors", directory);
    snprintf(record, sizeof record, "%s/transfer-record.safetensors", directory);
    test_folder_write(data, &(test_folder_options_t){
                                .train_rows = 60, .test_rows = 20, .transfer_rows = 40, .seed = 7});
    char labels[460];
    snprintf(labels, sizeof labels, "%s/transfer/labels.npy", data);
    ck_assert_msg(access(labels, F_OK) != 0, "the transfer split must have no labels");
    snprintf(command, sizeof command,
             "%s fit --data %s --view grid --model mlp:64-32-3 --epochs 3 --batch 20 --out %s",
             test_util_bin("teacher-server"), data, teacher_path);
    ck_assert_msg(test_util_run(command, output, sizeof output) == 0, "fit: %s", output);
    teacher_process_t teacher = {0};
    snprintf(teacher.endpoint, sizeof teacher.endpoint, "ipc://%s/transfer.sock", directory);
    snprintf(teacher.log, sizeof teacher.log, "%s/transfer-teacher.log", directory);
    snprintf(teacher.command, sizeof teacher.command,
             "%s serve --model %s --data %s --name t --bind %s --http 127.0.0.1:0",
             test_util_bin("teacher-server"), teacher_path, data, teacher.endpoint);
    teacher.pid = test_process_start(teacher.command, teacher.log);
    ck_assert_msg(test_process_await_text(teacher.log, "serving", 10000), "teacher did not start");

    char common[1024];
    snprintf(common, sizeof common,
             "--data %s --view grid --model mlp:64-16-3 --method kd --epochs 2 --batch 16 "
             "--seed 4 --http off --transfer-split transfer",
             data);
    snprintf(log, sizeof log, "%s/transfer-train.log", directory);
    snprintf(command, sizeof command,
             "%s train %s --teacher t=%s --cache off --out %s --metrics %s 2>&1",
             test_util_bin("student-trainer"), common, teacher.endpoint, straight, metrics);
    long before = teacher_examples_computed(&teacher);
    ck_assert_msg(test_util_run(command, output, sizeof output) == 0, "train: %s", output);
    ck_assert_msg(strstr(output, "40 unlabelled examples join the 60 training examples"),
                  "no log of the transfer rows: %s", output);
    long served = teacher_examples_computed(&teacher) - before;
    ck_assert_msg(served == 2 * (60 + 40), "the teacher computed %ld outputs in 2 epochs", served);
    json_t *lines = read_metrics(metrics);
    ck_assert_int_eq((int)json_array_size(lines), 2);
    for (int epoch = 0; epoch < 2; epoch++) {
        json_t *line = json_array_get(lines, epoch);
        ck_assert_int_eq((int)metric(line, "train_examples"), 100);
        ck_assert_int_eq((int)metric(line, "transfer_examples"), 40);
        ck_assert_int_eq((int)metric(line, "distinct_examples"), 100);
        ck_assert_int_eq((int)metric(line, "duplicates"), 0);
        ck_assert_int_eq((int)teacher_metric(line, "t", "missing_rows"), 0);
    }
    json_decref(lines);

    /* Straight (with a record), interrupted + resumed, replayed: the same student (tensors and
     * metadata but the saved config). */
    snprintf(command, sizeof command, "%s train %s --teacher t=%s --out %s --record %s",
             test_util_bin("student-trainer"), common, teacher.endpoint, straight, record);
    ck_assert_msg(test_util_run(command, output, sizeof output) == 0, "train: %s", output);
    snprintf(command, sizeof command, "%s train %s --teacher t=%s --out %s --stop-after 5",
             test_util_bin("student-trainer"), common, teacher.endpoint, resumed);
    ck_assert_msg(test_util_run(command, output, sizeof output) == 130, "stop-after: %s", output);
    snprintf(command, sizeof command, "%s train %s --teacher t=%s --out %s --resume",
             test_util_bin("student-trainer"), common, teacher.endpoint, resumed);
    ck_assert_msg(test_util_run(command, output, sizeof output) == 0, "resume: %s", output);
    ck_assert_msg(test_util_same_checkpoints(straight, resumed, output, sizeof output),
                  "interrupted + resumed run differs from the straight run: %s", output);
    snprintf(command, sizeof command, "%s replay %s --record %s --out %s",
             test_util_bin("student-trainer"), common, record, replayed);
    ck_assert_msg(test_util_run(command, output, sizeof output) == 0, "replay: %s", output);
    ck_assert_msg(test_util_same_checkpoints(straight, replayed, output, sizeof output),
                  "replay differs: %s", output);
    /* Without the transfer rows the record, and the state, do not fit the run. */
    snprintf(command, sizeof command,
             "%s replay --data %s --view grid --model mlp:64-16-3 --method kd --epochs 2 "
             "--batch 16 --seed 4 --http off --record %s --out %s",
             test_util_bin("student-trainer"), data, record, replayed);
    ck_assert_int_eq(test_util_run(command, output, sizeof output), 1);
    ck_assert_msg(strstr(output, "replay it with the same --transfer-split"), "replay: %s", output);
    snprintf(command, sizeof command,
             "%s train --data %s --view grid --model mlp:64-16-3 --method kd --epochs 2 "
             "--batch 16 --seed 4 --http off --teacher t=%s --out %s --resume",
             test_util_bin("student-trainer"), data, teacher.endpoint, resumed);
    ck_assert_int_eq(test_util_run(command, output, sizeof output), 1);
    ck_assert_msg(strstr(output, "was trained with --transfer-split transfer"), "resume: %s",
                  output);

    /* Refusals: an unknown split, train or test, ce, a split the folder lacks. */
    const char *refused[][3] = {
        {"--method kd --transfer-split bogus", "2", "--transfer-split: split \"bogus\" is unknown"},
        {"--method kd --transfer-split test", "2", "must name the transfer or valid split"},
        {"--method ce --transfer-split transfer", "2", "cannot use unlabelled examples"},
        {"--method kd --transfer-split valid", "1", "has no 'valid' split"},
    };
    for (size_t index = 0; index < sizeof refused / sizeof refused[0]; index++) {
        snprintf(command, sizeof command,
                 "%s train --data %s --view grid --model mlp:64-16-3 --http off --teacher t=%s "
                 "--out %s %s",
                 test_util_bin("student-trainer"), data, teacher.endpoint, replayed,
                 refused[index][0]);
        ck_assert_int_eq(test_util_run(command, output, sizeof output), atoi(refused[index][1]));
        ck_assert_msg(strstr(output, refused[index][2]), "'%s' printed: %s", refused[index][0],
                      output);
    }
    /* Every method that learns from teachers trains on the unlabelled rows (their labels do not
     * exist: only the label-free terms can use them). */
    const char *methods[] = {"avg-kd", "ca-mkd", "fitnet", "diversedistill",
                             "diversedistill --dd-router reliability --dd-filter 0.4"};
    for (size_t index = 0; index < sizeof methods / sizeof methods[0]; index++) {
        snprintf(command, sizeof command,
                 "%s train --data %s --view grid --model mlp:64-16-3 --epochs 2 --batch 16 "
                 "--http off --teacher t=%s --transfer-split transfer --method %s --out %s "
                 "--metrics %s",
                 test_util_bin("student-trainer"), data, teacher.endpoint, methods[index], replayed,
                 metrics);
        ck_assert_msg(test_util_run(command, output, sizeof output) == 0, "%s: %s", methods[index],
                      output);
        lines = read_metrics(metrics);
        ck_assert_int_eq((int)json_array_size(lines), 2);
        json_t *last = json_array_get(lines, 1);
        ck_assert_int_eq((int)metric(last, "transfer_examples"), 40);
        ck_assert_int_eq((int)metric(last, "distinct_examples"), 100);
        ck_assert_msg(isfinite(metric(last, "loss")), "%s: loss %g", methods[index],
                      metric(last, "loss"));
        json_decref(lines);
    }
    stop_teacher(&teacher);
}
END_TEST

/* Regression with --transfer-split: the transfer rows have no targets, kd trains on them. */
START_TEST(test_transfer_split_regression) {
    char data[400], teacher_path[400], command[4096], metrics[400], out[400];
    snprintf(data, sizeof data, "%s/regression-transfer", directory);
    snprintf(teacher_path, sizeof teacher_path, "%s/regression-teacher.safetensors", directory);
    snprintf(metrics, sizeof metrics, "%s/regression-transfer.jsonl", directory);
    snprintf(out, sizeof out, "%s/regression-student.safetensors", directory);
    test_folder_write(
        data,
        &(test_folder_options_t){
            .regression = 1, .train_rows = 60, .test_rows = 20, .transfer_rows = 30, .seed = 9});
    snprintf(command, sizeof command,
             "%s fit --data %s --view grid --model mlp:64-32-2 --epochs 3 --batch 20 --out %s",
             test_util_bin("teacher-server"), data, teacher_path);
    ck_assert_msg(test_util_run(command, output, sizeof output) == 0, "fit: %s", output);
    teacher_process_t teacher = {0};
    snprintf(teacher.endpoint, sizeof teacher.endpoint, "ipc://%s/regression.sock", directory);
    snprintf(teacher.log, sizeof teacher.log, "%s/regression-teacher.log", directory);
    snprintf(teacher.command, sizeof teacher.command,
             "%s serve --model %s --data %s --name r --bind %s --http off",
             test_util_bin("teacher-server"), teacher_path, data, teacher.endpoint);
    teacher.pid = test_process_start(teacher.command, teacher.log);
    ck_assert_msg(test_process_await_text(teacher.log, "serving", 10000), "teacher did not start");
    const char *methods[] = {"kd", "ca-mkd", "diversedistill"};
    for (size_t index = 0; index < sizeof methods / sizeof methods[0]; index++) {
        snprintf(command, sizeof command,
                 "%s train --data %s --view grid --model mlp:64-16-2 --epochs 2 --batch 16 "
                 "--http off --teacher r=%s --transfer-split transfer --method %s --out %s "
                 "--metrics %s",
                 test_util_bin("student-trainer"), data, teacher.endpoint, methods[index], out,
                 metrics);
        ck_assert_msg(test_util_run(command, output, sizeof output) == 0, "%s: %s", methods[index],
                      output);
        json_t *lines = read_metrics(metrics);
        json_t *last = json_array_get(lines, 1);
        ck_assert_int_eq((int)metric(last, "transfer_examples"), 30);
        ck_assert_int_eq((int)metric(last, "train_examples"), 90);
        ck_assert_msg(isfinite(metric(last, "test_rmse")), "%s: rmse %g", methods[index],
                      metric(last, "test_rmse"));
        json_decref(lines);
    }
    stop_teacher(&teacher);
}
END_TEST

START_TEST(test_diversedistill_filtering_saves_real_work) {
    REQUIRE_DATA();
    teacher_process_t fm, comp;
    start_teacher(&fm, "fm-dd", fm_path, "--http 127.0.0.1:0");
    start_teacher(&comp, "comp-dd", comp_path, "--http 127.0.0.1:0");
    char command[4096], metrics[400], out[400], record[400];
    snprintf(metrics, sizeof metrics, "%s/dd.jsonl", directory);
    snprintf(out, sizeof out, "%s/dd.safetensors", directory);
    snprintf(record, sizeof record, "%s/dd.record", directory);
    const char *common =
        "--view pool7 --model mlp:49-32-10 --method diversedistill --dd-filter 0.5 "
        "--epochs 3 --batch 64 --lr 3e-3 --http off " SUBSET;
    snprintf(command, sizeof command,
             "%s train %s --teacher fm=%s --teacher comp=%s --cache off --out %s --metrics %s",
             test_util_bin("student-trainer"), common, fm.endpoint, comp.endpoint, out, metrics);
    int status = test_util_run(command, output, sizeof output);
    long fm_computed = teacher_examples_computed(&fm),
         comp_computed = teacher_examples_computed(&comp);
    /* A one-epoch run records every output of both teachers, for the replay below. */
    char prefill[4096];
    snprintf(prefill, sizeof prefill,
             "%s train --view pool7 --model mlp:49-32-10 --method diversedistill --epochs 1 "
             "--http off " SUBSET " --teacher fm=%s --teacher comp=%s --out %s/dd-prefill.st "
             "--record %s",
             test_util_bin("student-trainer"), fm.endpoint, comp.endpoint, directory, record);
    static char prefill_output[16384];
    int prefill_status = test_util_run(prefill, prefill_output, sizeof prefill_output);
    stop_teacher(&fm);
    stop_teacher(&comp);
    ck_assert_msg(status == 0, "train failed: %s", output);
    ck_assert_msg(prefill_status == 0, "the recording run failed: %s", prefill_output);
    json_t *lines = read_metrics(metrics);
    json_t *first = json_array_get(lines, 0), *last = json_array_get(lines, 2);
    ck_assert_msg(metric(last, "test_accuracy") > 0.5, "accuracy %.3f",
                  metric(last, "test_accuracy"));
    /* Epoch 1 is the unfiltered warm-up; epochs 2 and 3 skip pairs. */
    ck_assert_int_eq((int)teacher_metric(first, "fm", "filter_skipped"), 0);
    long skipped = 0, needed = 0;
    for (size_t epoch = 1; epoch < 3; epoch++)
        for (int teacher = 0; teacher < 2; teacher++) {
            const char *name = teacher ? "comp" : "fm";
            skipped += (long)teacher_metric(json_array_get(lines, epoch), name, "filter_skipped");
            needed += (long)teacher_metric(json_array_get(lines, epoch), name, "filter_needed");
        }
    ck_assert_int_eq(needed, 2 * 2 * 2000);
    ck_assert_msg(skipped > needed / 5, "filtering skipped only %ld of %ld pairs", skipped, needed);
    /* The savings are real: the teachers computed exactly what the trainer received. */
    long fm_received = (long)teacher_metric(last, "fm", "examples_received");
    long comp_received = (long)teacher_metric(last, "comp", "examples_received");
    ck_assert_int_eq(fm_computed, fm_received);
    ck_assert_int_eq(comp_computed, comp_received);
    ck_assert_int_eq(fm_received + comp_received, 3 * 2 * 2000 - skipped);
    /* A replay of the record filters too: every pair counts as asked for, the pairs the router
     * drops stay out. Not bit-exact with the live run: live, the teachers computed only the kept
     * rows, in smaller batches, and a teacher's output moves by an ulp with its batch's shape. So
     * the replay must skip about as many pairs as the live run and train as good a student. */
    char replayed[400], replay_metrics[400];
    snprintf(replayed, sizeof replayed, "%s/dd-replayed.safetensors", directory);
    snprintf(replay_metrics, sizeof replay_metrics, "%s/dd-replayed.jsonl", directory);
    snprintf(command, sizeof command, "%s replay %s --record %s --out %s --metrics %s",
             test_util_bin("student-trainer"), common, record, replayed, replay_metrics);
    ck_assert_msg(test_util_run(command, output, sizeof output) == 0, "replay: %s", output);
    json_t *replay_lines = read_metrics(replay_metrics);
    long replay_skipped = 0;
    for (size_t epoch = 0; epoch < 3; epoch++)
        for (int teacher = 0; teacher < 2; teacher++) {
            const char *name = teacher ? "comp" : "fm";
            json_t *line = json_array_get(replay_lines, epoch);
            ck_assert_int_eq((long)teacher_metric(line, name, "filter_needed"), epoch ? 2000 : 0);
            replay_skipped += (long)teacher_metric(line, name, "filter_skipped");
        }
    ck_assert_msg(labs(replay_skipped - skipped) <= needed / 20,
                  "the replay skipped %ld pairs, the live run %ld (of %ld)", replay_skipped,
                  skipped, needed);
    double live_accuracy = metric(last, "test_accuracy"),
           replay_accuracy = metric(json_array_get(replay_lines, 2), "test_accuracy");
    ck_assert_msg(fabs(live_accuracy - replay_accuracy) <= 0.03,
                  "test accuracy %.4f replayed, %.4f live", replay_accuracy, live_accuracy);
    json_decref(replay_lines);
    json_decref(lines);
}
END_TEST

START_TEST(test_diversedistill_survives_a_lost_teacher) {
    REQUIRE_DATA();
    teacher_process_t fm, comp;
    start_teacher(&fm, "fm-ddskip", fm_path, "--compute-delay-ms 10");
    start_teacher(&comp, "comp-ddskip", comp_path, "--compute-delay-ms 10");
    char command[4096], metrics[400], out[400], log[400];
    snprintf(metrics, sizeof metrics, "%s/ddskip.jsonl", directory);
    snprintf(out, sizeof out, "%s/ddskip.safetensors", directory);
    snprintf(log, sizeof log, "%s/ddskip.log", directory);
    snprintf(command, sizeof command,
             "%s train --view pool7 --model mlp:49-32-10 --teacher fm=%s --teacher comp=%s "
             "--method diversedistill --epochs 2 --batch 50 --lr 3e-3 --cache off "
             "--on-teacher-failure skip --teacher-timeout-ms 300 --http off " SUBSET
             " --out %s --metrics %s",
             test_util_bin("student-trainer"), fm.endpoint, comp.endpoint, out, metrics);
    pid_t trainer = test_process_start(command, log);
    ck_assert_msg(test_process_await_text(log, "train mlp:", 20000), "the trainer did not start");
    test_process_sleep_ms(150);
    kill(comp.pid, SIGKILL);
    test_process_wait(comp.pid, 2000);
    int status = test_process_wait(trainer, 60000);
    stop_teacher(&fm);
    if (status != 0) test_process_stop(trainer, SIGKILL, 1000);
    ck_assert_msg(status == 0, "trainer exited %d; see %s", status, log);
    json_t *lines = read_metrics(metrics);
    json_t *last = json_array_get(lines, 1);
    ck_assert_msg(teacher_metric(last, "comp", "skipped_batches") > 0, "comp was never missing");
    ck_assert_msg(metric(last, "test_accuracy") > 0.4, "accuracy %.3f",
                  metric(last, "test_accuracy"));
    json_decref(lines);
}
END_TEST

/*
 * --dd-interactive through the real binaries: each teacher lends its frozen head (the trainer
 * says so), the probes learn to make that head answer like the teacher (the probe KL falls),
 * the student learns, and an interrupted run resumes to the same bytes (the probe weights
 * travel in the resumable state, the heads are fetched again), and its --record (which keeps
 * the heads) replays to the same bytes with no teacher.  A teacher started with --lend-head off
 * is refused with a sentence naming it.
 */
START_TEST(test_diversedistill_interactive) {
    REQUIRE_DATA();
    teacher_process_t fm, comp;
    start_teacher(&fm, "fm-interactive", fm_path, "");
    start_teacher(&comp, "comp-interactive", comp_path, "");
    char command[4096], metrics[400], straight[400], resumed[400], common[2000], record[400];
    char replayed[400], settings[600];
    snprintf(metrics, sizeof metrics, "%s/interactive.jsonl", directory);
    snprintf(record, sizeof record, "%s/interactive.record", directory);
    snprintf(replayed, sizeof replayed, "%s/interactive-replayed.safetensors", directory);
    snprintf(straight, sizeof straight, "%s/interactive.safetensors", directory);
    snprintf(resumed, sizeof resumed, "%s/interactive-resumed.safetensors", directory);
    snprintf(settings, sizeof settings,
             "--view pool7 --model mlp:49-32-10 --method diversedistill --dd-interactive "
             "--epochs 3 --batch 64 --lr 3e-3 --seed 4 --http off " SUBSET);
    snprintf(common, sizeof common, "%s --teacher fm=%s --teacher comp=%s", settings, fm.endpoint,
             comp.endpoint);
    snprintf(command, sizeof command, "%s train %s --out %s --metrics %s --record %s",
             test_util_bin("student-trainer"), common, straight, metrics, record);
    int status = test_util_run(command, output, sizeof output);
    ck_assert_msg(status == 0, "train failed: %s", output);
    ck_assert_msg(strstr(output, "teacher 'fm' lends its head (10 x 64)") &&
                      strstr(output, "teacher 'comp' lends its head (10 x 128)"),
                  "the heads were not announced: %s", output);
    json_t *lines = read_metrics(metrics);
    json_t *first = json_array_get(lines, 0), *last = json_array_get(lines, 2);
    ck_assert_msg(metric(last, "dd_probe_answer") < 0.7 * metric(first, "dd_probe_answer"),
                  "the probes did not learn: probe KL %.4f -> %.4f",
                  metric(first, "dd_probe_answer"), metric(last, "dd_probe_answer"));
    ck_assert_msg(metric(last, "dd_probe_match") > 0.0, "no probe match term");
    ck_assert_msg(metric(last, "test_accuracy") > 0.5, "accuracy %.3f",
                  metric(last, "test_accuracy"));
    json_decref(lines);

    snprintf(command, sizeof command, "%s train %s --out %s --stop-after 50",
             test_util_bin("student-trainer"), common, resumed);
    ck_assert_msg(test_util_run(command, output, sizeof output) == 130, "stop-after: %s", output);
    snprintf(command, sizeof command, "%s train %s --out %s --resume",
             test_util_bin("student-trainer"), common, resumed);
    ck_assert_msg(test_util_run(command, output, sizeof output) == 0, "resume: %s", output);
    ck_assert_msg(test_util_same_checkpoints(straight, resumed, output, sizeof output),
                  "interrupted + resumed interactive run differs from the straight run: %s",
                  output);
    snprintf(command, sizeof command, "%s replay %s --record %s --out %s",
             test_util_bin("student-trainer"), settings, record, replayed);
    ck_assert_msg(test_util_run(command, output, sizeof output) == 0, "replay: %s", output);
    ck_assert_msg(strstr(output, "teacher 'fm' recorded its head (10 x 64)"),
                  "the recorded heads were not announced: %s", output);
    ck_assert_msg(test_util_same_checkpoints(straight, replayed, output, sizeof output),
                  "the interactive replay differs from the live run: %s", output);

    /* A teacher that keeps its head to itself. */
    stop_teacher(&comp);
    start_teacher(&comp, "comp-interactive", comp_path, "--lend-head off");
    snprintf(command, sizeof command, "%s train %s --out %s", test_util_bin("student-trainer"),
             common, straight);
    status = test_util_run(command, output, sizeof output);
    stop_teacher(&fm);
    stop_teacher(&comp);
    ck_assert_int_eq(status, 1);
    ck_assert_msg(strstr(output, "'comp'") && strstr(output, "--lend-head"),
                  "the refusal does not name the teacher and the remedy: %s", output);
}
END_TEST

/* ---------------------------------------------------------------- hostile teachers and disks */

/* Starts a fake teacher `name` in `mode` at ipc://DIRECTORY/NAME.sock, its endpoint into
 * endpoint[400]. */
static fake_teacher_t *start_fake(const char *name, fake_teacher_mode_t mode, int normal,
                                  char *endpoint) {
    snprintf(endpoint, 400, "ipc://%s/%s.sock", directory, name);
    fake_teacher_t *teacher = fake_teacher_start(endpoint, name, fingerprint, mode, normal);
    ck_assert_msg(teacher != NULL, "cannot start the fake teacher at %s", endpoint);
    return teacher;
}

/* Waits up to timeout_ms until count(teacher) >= at_least; 1 if it got there. */
static int await_count(int (*count)(fake_teacher_t *), fake_teacher_t *teacher, int at_least,
                       int timeout_ms) {
    for (int waited = 0; waited <= timeout_ms; waited += 20) {
        if (count(teacher) >= at_least) return 1;
        test_process_sleep_ms(20);
    }
    return 0;
}

/* Runs the trainer in the background with `arguments` (after "train"), logging to `log`, and
 * waits up to 60 s for it; a trainer still running then is killed and the test fails. */
static int run_trainer(const char *arguments, const char *log) {
    char command[4096];
    snprintf(command, sizeof command, "%s train %s", test_util_bin("student-trainer"), arguments);
    unlink(log); /* an old log could satisfy the waits below */
    pid_t trainer = test_process_start(command, log);
    ck_assert_int_gt(trainer, 0);
    int status = test_process_wait(trainer, 60000);
    if (status < 0) test_process_stop(trainer, SIGKILL, 2000);
    ck_assert_msg(status >= 0, "the trainer hung (killed after 60 s); see %s", log);
    return status;
}

#define FAKE_RUN "--view pool7 --model mlp:49-32-10 --method kd --epochs 1 --batch 100 --http off "

/* Sends SIGTERM once `ready` holds and expects exit 130 well before the 600 s deadline. */
static void interrupt_trainer(pid_t trainer, const char *log, int ready) {
    ck_assert_msg(ready, "the trainer never got to the wait; see %s", log);
    test_process_sleep_ms(300); /* well inside the wait */
    kill(trainer, SIGTERM);
    int status = test_process_wait(trainer, 30000);
    if (status < 0) test_process_stop(trainer, SIGKILL, 2000);
    ck_assert_msg(status == 130,
                  "SIGTERM while waiting: exit %d (-1: still waiting after 30 s); "
                  "see %s",
                  status, log);
}

START_TEST(test_busy_teacher_has_a_deadline) {
    REQUIRE_DATA();
    char endpoint[400], arguments[2048], log[400], metrics[400];
    fake_teacher_t *teacher = start_fake("busy", FAKE_TEACHER_BUSY, 0, endpoint);
    snprintf(log, sizeof log, "%s/busy.log", directory);
    snprintf(metrics, sizeof metrics, "%s/busy.jsonl", directory);
    /* skip: every request costs at most its deadline of BUSY answers, then trains without it. */
    snprintf(arguments, sizeof arguments,
             FAKE_RUN "--teacher fm=%s --on-teacher-failure skip --teacher-timeout-ms 300 " SUBSET
                      " --out %s/busy.safetensors --metrics %s",
             endpoint, directory, metrics);
    int status = run_trainer(arguments, log);
    ck_assert_msg(status == 0, "skip: the trainer exited %d; see %s", status, log);
    json_t *lines = read_metrics(metrics);
    json_t *line = json_array_get(lines, 0);
    ck_assert_msg(teacher_metric(line, "fm", "busy_timeouts") >= 1, "no BUSY timeout counted");
    ck_assert_msg(teacher_metric(line, "fm", "busy") >= 2, "BUSY answers were not retried");
    ck_assert_int_eq((int)teacher_metric(line, "fm", "missing_rows"), 2000);
    ck_assert_int_eq((int)metric(line, "distinct_examples"), 2000);
    json_decref(lines);
    ck_assert(test_process_await_text(log, "answered BUSY to every retry for 300 ms", 0));
    /* fail: one sentence naming the teacher and what it did. */
    snprintf(arguments, sizeof arguments,
             FAKE_RUN "--teacher fm=%s --on-teacher-failure fail --teacher-timeout-ms 300 " SUBSET
                      " --out %s/busy-fail.safetensors",
             endpoint, directory);
    status = run_trainer(arguments, log);
    ck_assert_msg(status == 1, "fail: the trainer exited %d; see %s", status, log);
    char sentence[600];
    snprintf(sentence, sizeof sentence,
             "teacher 'fm' at %s answered BUSY to every retry for 300 ms and "
             "--on-teacher-failure is fail",
             endpoint);
    ck_assert_msg(test_process_await_text(log, sentence, 0),
                  "no sentence naming the BUSY teacher; see %s", log);
    /* wait: it keeps asking (that is the policy), /metrics counts it while it waits, and a
     * signal still ends the run. */
    char command[4096];
    int port = test_util_free_tcp_port();
    snprintf(command, sizeof command,
             "%s train " FAKE_RUN "--teacher fm=%s --on-teacher-failure wait "
             "--teacher-timeout-ms 300 --http 127.0.0.1:%d " SUBSET
             " --out %s/busy-wait.safetensors",
             test_util_bin("student-trainer"), endpoint, port, directory);
    unlink(log); /* an old log could satisfy the waits below */
    pid_t trainer = test_process_start(command, log);
    int waiting = test_process_await_text(log, "answered BUSY to every retry", 30000);
    char body[65536] = "";
    int counted = 0;
    for (int attempt = 0; attempt < 100 && !counted; attempt++) { /* up to ~10 s */
        if (test_util_http_get(port, "/metrics", body, sizeof body, 2000) == 200)
            counted =
                strstr(body, "committee_trainer_teacher_busy_timeouts_total{teacher=\"fm\"} ") &&
                !strstr(body, "committee_trainer_teacher_busy_timeouts_total{teacher=\"fm\"} 0\n");
        if (!counted) test_process_sleep_ms(100);
    }
    interrupt_trainer(trainer, log, waiting);
    ck_assert_msg(counted, "/metrics does not count the BUSY timeouts: %s", body);
    fake_teacher_stop(&teacher);
    ck_assert(test_process_await_text(log, "; asking again", 0));
    ck_assert(test_process_await_text(log, "state saved to", 0));
}
END_TEST

START_TEST(test_signal_ends_every_wait) {
    REQUIRE_DATA();
    char endpoint[400], command[4096], log[400], out[400], state[420], metrics[400];
    snprintf(log, sizeof log, "%s/signal.log", directory);
    snprintf(out, sizeof out, "%s/signal.safetensors", directory);
    snprintf(state, sizeof state, "%s.state", out);
    snprintf(metrics, sizeof metrics, "%s/signal.jsonl", directory);
    const char *trainer_binary = test_util_bin("student-trainer");

    /* The handshake: a teacher that takes the Hello and never answers. */
    fake_teacher_t *teacher = start_fake("mute", FAKE_TEACHER_MUTE, 0, endpoint);
    snprintf(command, sizeof command,
             "%s train " FAKE_RUN "--teacher fm=%s --teacher-timeout-ms 600000 " SUBSET " --out %s",
             trainer_binary, endpoint, out);
    unlink(log); /* an old log could satisfy the waits below */
    pid_t trainer = test_process_start(command, log);
    interrupt_trainer(trainer, log, await_count(fake_teacher_hellos, teacher, 1, 30000));
    ck_assert(test_process_await_text(log, "interrupted by a signal before training started", 0));
    ck_assert_int_ne(access(state, F_OK), 0); /* nothing learned, nothing written */
    fake_teacher_stop(&teacher);

    /* The handshake with nobody there (ZeroMQ keeps reconnecting). */
    snprintf(command, sizeof command,
             "%s train " FAKE_RUN "--teacher fm=ipc://%s/nobody-at-all.sock "
             "--teacher-timeout-ms 600000 " SUBSET " --out %s",
             trainer_binary, directory, out);
    unlink(log); /* an old log could satisfy the waits below */
    trainer = test_process_start(command, log);
    interrupt_trainer(trainer, log, test_process_await_text(log, "greeting teacher 'fm'", 30000));

    /* Mid-run under wait: the teacher answers 5 requests, then nothing; the state is saved at
     * the batch being waited for, and a resume trains every example exactly once. */
    teacher = start_fake("silent", FAKE_TEACHER_SILENT_AFTER, 5, endpoint);
    char common[2048];
    snprintf(common, sizeof common,
             FAKE_RUN "--teacher fm=%s --on-teacher-failure wait --teacher-timeout-ms 600000 "
                      "--window 2 --seed 7 " SUBSET,
             endpoint);
    snprintf(command, sizeof command, "%s train %s --out %s --metrics %s", trainer_binary, common,
             out, metrics);
    unlink(log); /* an old log could satisfy the waits below */
    trainer = test_process_start(command, log);
    interrupt_trainer(trainer, log, await_count(fake_teacher_requests, teacher, 6, 30000));
    fake_teacher_stop(&teacher);
    ck_assert_msg(access(state, F_OK) == 0, "no state at %s after SIGTERM", state);
    ck_assert_msg(test_process_await_text(log, "by a signal; state saved to", 0),
                  "the trainer did not say it saved its state; see %s", log);
    teacher = start_fake("silent", FAKE_TEACHER_NORMAL, 0, endpoint); /* the same model */
    snprintf(command, sizeof command, "%s train %s --out %s --metrics %s --resume", trainer_binary,
             common, out, metrics);
    int status = test_util_run(command, output, sizeof output);
    ck_assert_msg(status == 0, "resume after SIGTERM: %s", output);
    /* ... to the same bytes as a run that was never interrupted. */
    snprintf(command, sizeof command, "%s train %s --out %s/straight-signal.safetensors",
             trainer_binary, common, directory);
    status = test_util_run(command, output, sizeof output);
    fake_teacher_stop(&teacher);
    ck_assert_msg(status == 0, "straight run: %s", output);
    char straight[600];
    snprintf(straight, sizeof straight, "%s/straight-signal.safetensors", directory);
    ck_assert_msg(test_util_same_checkpoints(out, straight, output, sizeof output),
                  "the run interrupted while waiting and resumed differs from a straight run: %s",
                  output);
    json_t *lines = read_metrics(metrics);
    ck_assert_int_eq((int)json_array_size(lines), 1);
    json_t *line = json_array_get(lines, 0);
    ck_assert_int_eq((int)metric(line, "distinct_examples"), 2000);
    ck_assert_int_eq((int)metric(line, "duplicates"), 0);
    ck_assert_int_eq((int)teacher_metric(line, "fm", "missing_rows"), 0);
    json_decref(lines);
}
END_TEST

START_TEST(test_malformed_replies_are_asked_again) {
    REQUIRE_DATA();
    char endpoint[400], arguments[2048], log[400], metrics[400];
    snprintf(log, sizeof log, "%s/malformed.log", directory);
    snprintf(metrics, sizeof metrics, "%s/malformed.jsonl", directory);
    /* One garbage frame, one reply with rows of the wrong width, one answer to an id never
     * sent: each is asked again at once (waiting out the 600 s deadline would trip the hang
     * guard), counted, and the teacher stays up. */
    const fake_teacher_mode_t modes[] = {FAKE_TEACHER_GARBAGE_ONCE, FAKE_TEACHER_SHORT_ROWS_ONCE,
                                         FAKE_TEACHER_UNKNOWN_ID_ONCE};
    const char *says[] = {"it sent a message that does not decode", "expected 1000 dense floats",
                          "which was never sent"};
    for (int index = 0; index < 3; index++) {
        fake_teacher_t *teacher = start_fake("bad-once", modes[index], 0, endpoint);
        snprintf(arguments, sizeof arguments,
                 FAKE_RUN
                 "--teacher fm=%s --on-teacher-failure wait --teacher-timeout-ms 600000 " SUBSET
                 " --out %s/malformed.safetensors --metrics %s",
                 endpoint, directory, metrics);
        unlink(metrics);
        int status = run_trainer(arguments, log);
        fake_teacher_stop(&teacher);
        ck_assert_msg(status == 0, "mode %d: the trainer exited %d; see %s", index, status, log);
        json_t *lines = read_metrics(metrics);
        json_t *line = json_array_get(lines, 0);
        ck_assert_int_eq((int)teacher_metric(line, "fm", "protocol_errors"), 1);
        ck_assert_int_eq((int)teacher_metric(line, "fm", "timeouts"), 0);
        ck_assert_int_eq((int)teacher_metric(line, "fm", "down_events"), 0);
        ck_assert_int_eq((int)teacher_metric(line, "fm", "missing_rows"), 0);
        ck_assert_int_eq((int)metric(line, "distinct_examples"), 2000);
        json_decref(lines);
        ck_assert_msg(test_process_await_text(log, "sent a reply this trainer cannot use", 0) &&
                          test_process_await_text(log, says[index], 0),
                      "mode %d: no warning saying '%s'; see %s", index, says[index], log);
    }

    /* Nothing but garbage: the third in a row marks it bad, and policy fail says so. */
    fake_teacher_t *teacher = start_fake("garbage", FAKE_TEACHER_GARBAGE, 0, endpoint);
    snprintf(arguments, sizeof arguments,
             FAKE_RUN
             "--teacher fm=%s --on-teacher-failure fail --teacher-timeout-ms 600000 " SUBSET
             " --out %s/garbage.safetensors",
             endpoint, directory);
    int status = run_trainer(arguments, log);
    fake_teacher_stop(&teacher);
    ck_assert_msg(status == 1, "the trainer exited %d; see %s", status, log);
    ck_assert_msg(test_process_await_text(log, "sent 3 malformed replies in a row", 0) &&
                      test_process_await_text(log, "and --on-teacher-failure is fail", 0),
                  "no sentence about the malformed replies; see %s", log);
    /* ... and stopped there: the requests put back in the queue went down with the endpoint,
     * it was not greeted and fed them again. */
    ck_assert_msg(!test_process_await_text(log, "is back", 0),
                  "the endpoint marked down came back; see %s", log);
}
END_TEST

START_TEST(test_nonfinite_outputs_follow_the_policy) {
    REQUIRE_DATA();
    char endpoint[400], arguments[2048], log[400], metrics[400];
    snprintf(log, sizeof log, "%s/nan.log", directory);
    snprintf(metrics, sizeof metrics, "%s/nan.jsonl", directory);
    fake_teacher_t *teacher = start_fake("nan", FAKE_TEACHER_NAN, 0, endpoint);
    /* skip: trains without it, says which teacher, never "the loss is not finite". */
    snprintf(arguments, sizeof arguments,
             FAKE_RUN "--teacher fm=%s --on-teacher-failure skip " SUBSET
                      " --out %s/nan.safetensors --metrics %s",
             endpoint, directory, metrics);
    int status = run_trainer(arguments, log);
    ck_assert_msg(status == 0, "skip: the trainer exited %d; see %s", status, log);
    json_t *lines = read_metrics(metrics);
    json_t *line = json_array_get(lines, 0);
    ck_assert_int_eq((int)teacher_metric(line, "fm", "nonfinite_replies"), 20);
    ck_assert_int_eq((int)teacher_metric(line, "fm", "missing_rows"), 2000);
    ck_assert_msg(metric(line, "test_accuracy") > 0.3, "the student learned nothing");
    json_decref(lines);
    ck_assert(test_process_await_text(log, "teacher 'fm' at ipc://", 0));
    ck_assert(
        test_process_await_text(log, "sent a non-finite value (NaN or Inf) in its 'logits'", 0));
    /* fail: one sentence naming the teacher. */
    snprintf(arguments, sizeof arguments,
             FAKE_RUN "--teacher fm=%s --on-teacher-failure fail " SUBSET
                      " --out %s/nan-fail.safetensors",
             endpoint, directory);
    status = run_trainer(arguments, log);
    fake_teacher_stop(&teacher);
    ck_assert_msg(status == 1, "fail: the trainer exited %d; see %s", status, log);
    ck_assert_msg(test_process_await_text(log, "(NaN or Inf) in its 'logits' of example", 0) &&
                      test_process_await_text(log, "and --on-teacher-failure is fail", 0),
                  "no sentence naming the NaN teacher; see %s", log);
    ck_assert_msg(!test_process_await_text(log, "the loss is not finite", 0),
                  "NaN reached the loss; see %s", log);
}
END_TEST

/* Runs `student-trainer train COMMON ARGUMENTS`; its exit status, output in `output`. */
static int train_with(const char *common, const char *arguments) {
    char command[4096];
    snprintf(command, sizeof command, "%s train %s %s", test_util_bin("student-trainer"), common,
             arguments);
    return test_util_run(command, output, sizeof output);
}

/* The same student: tensors and metadata but the saved config (whose cache options differ). */
static int same_file(const char *one, const char *other) {
    char why[1000];
    return test_util_same_checkpoints(one, other, why, sizeof why);
}

/* Entries of a directory other than . and .. */
static int directory_entries(const char *path) {
    char command[600], text[100];
    snprintf(command, sizeof command, "ls -A %s | wc -l", path);
    ck_assert_int_eq(test_util_run(command, text, sizeof text), 0);
    return atoi(text);
}

/*
 * A spilled cache (--cache-memory far below the 2000 x 10 logits, so 40% of the rows live in
 * the spill file, one row straddling the boundary) gives the byte-identical checkpoint of the
 * in-memory cache, straight and interrupted + resumed, and the teacher computes each example
 * once per run (its own counter); F16 on the wire stored as F16 (spilled too) is exact: the
 * same bytes as storing it as F32.  The spill file is gone afterwards.
 */
START_TEST(test_spilled_cache_is_exact) {
    REQUIRE_DATA();
    teacher_process_t comp;
    start_teacher(&comp, "comp-spill", comp_path, "--http 127.0.0.1:0");
    char common[1024], arguments[2048], memory[400], spilled[400], resumed[400], spill[400];
    snprintf(memory, sizeof memory, "%s/spill-memory.safetensors", directory);
    snprintf(spilled, sizeof spilled, "%s/spill-file.safetensors", directory);
    snprintf(resumed, sizeof resumed, "%s/spill-resumed.safetensors", directory);
    snprintf(spill, sizeof spill, "%s/spill", directory);
    ck_assert_int_eq(mkdir(spill, 0700), 0);
    snprintf(common, sizeof common,
             "--view pool7 --model mlp:49-32-10 --method kd --epochs 2 --batch 64 --seed 5 "
             "--label-fraction 0.5 --http off " SUBSET " --teacher comp=%s",
             comp.endpoint);
    long computed = teacher_examples_computed(&comp);
    snprintf(arguments, sizeof arguments, "--out %s", memory);
    ck_assert_msg(train_with(common, arguments) == 0, "in memory: %s", output);
    ck_assert_int_eq(teacher_examples_computed(&comp) - computed, 2000);

    computed = teacher_examples_computed(&comp);
    snprintf(arguments, sizeof arguments,
             "--out %s --cache-memory 0.05 --cache-spill %s --record %s/spill.record", spilled,
             spill, directory);
    ck_assert_msg(train_with(common, arguments) == 0, "spilled: %s", output);
    ck_assert_msg(strstr(output, "0.03 MB in a spill file"), "nothing spilled: %s", output);
    ck_assert_int_eq(teacher_examples_computed(&comp) - computed, 2000); /* exactly once */
    ck_assert_msg(same_file(memory, spilled), "the spilled cache changed the checkpoint");
    ck_assert_int_eq(directory_entries(spill), 0);
    /* Its record (saved through the spill file's mapping) replays to the same student. */
    char replay[2600];
    snprintf(replay, sizeof replay,
             "%s replay --view pool7 --model mlp:49-32-10 --method kd --epochs 2 --batch 64 "
             "--seed 5 --label-fraction 0.5 --http off " SUBSET
             " --record %s/spill.record --out %s/spill-replayed.safetensors",
             test_util_bin("student-trainer"), directory, directory);
    ck_assert_msg(test_util_run(replay, output, sizeof output) == 0, "replay: %s", output);
    snprintf(replay, sizeof replay, "%s/spill-replayed.safetensors", directory);
    ck_assert_msg(same_file(memory, replay), "the spilled run's record replays to another student");
    snprintf(arguments, sizeof arguments,
             "--out %s --cache-memory 0.05 --cache-spill %s --cache-spill-reads map", spilled,
             spill);
    ck_assert_msg(train_with(common, arguments) == 0, "spilled, mapped reads: %s", output);
    ck_assert_msg(same_file(memory, spilled), "mapped reads changed the checkpoint");

    /* Interrupted with the outputs partly spilled, saved to .state.cache, resumed. */
    computed = teacher_examples_computed(&comp);
    snprintf(arguments, sizeof arguments,
             "--out %s --cache-memory 0.05 --cache-spill %s --stop-after 40", resumed, spill);
    ck_assert_msg(train_with(common, arguments) == 130, "stop-after: %s", output);
    snprintf(arguments, sizeof arguments, "--out %s --cache-memory 0.05 --cache-spill %s --resume",
             resumed, spill);
    ck_assert_msg(train_with(common, arguments) == 0, "resume: %s", output);
    ck_assert_int_eq(teacher_examples_computed(&comp) - computed, 2000);
    ck_assert_msg(same_file(memory, resumed), "the resumed spilled run changed the checkpoint");
    ck_assert_int_eq(directory_entries(spill), 0);

    /* F16 on the wire: storing F16 (half the bytes, spilled) loses nothing. */
    snprintf(arguments, sizeof arguments, "--out %s --encoding F16", memory);
    ck_assert_msg(train_with(common, arguments) == 0, "F16 as F32: %s", output);
    snprintf(arguments, sizeof arguments,
             "--out %s --encoding F16 --cache-dtype f16 --cache-memory 0.03 --cache-spill %s",
             spilled, spill);
    ck_assert_msg(train_with(common, arguments) == 0, "F16 as F16: %s", output);
    ck_assert_msg(strstr(output, "0.01 MB in a spill file"), "nothing spilled: %s", output);
    ck_assert_msg(same_file(memory, spilled), "F16 stored as F16 changed the checkpoint");

    /* ask-again: what does not fit is asked every epoch, nothing is written to disk. */
    computed = teacher_examples_computed(&comp);
    snprintf(arguments, sizeof arguments, "--out %s --cache-memory 0.05 --cache-spill ask-again",
             spilled);
    ck_assert_msg(train_with(common, arguments) == 0, "ask-again: %s", output);
    long asked = teacher_examples_computed(&comp) - computed;
    stop_teacher(&comp);
    ck_assert_msg(asked > 2000 && asked < 4000, "ask-again: the teacher computed %ld", asked);
}
END_TEST

/* Every epoch line of `path` says the cache held at most `bound` bytes in memory (also while
 * it loaded a saved cache), and, with `spilled`, that some of it was in the spill file. */
static void assert_cache_within(const char *path, size_t bound, int spilled) {
    json_t *lines = read_metrics(path);
    ck_assert_int_gt((int)json_array_size(lines), 0);
    for (size_t index = 0; index < json_array_size(lines); index++) {
        json_t *cache = json_object_get(json_array_get(lines, index), "cache");
        double held = metric(cache, "memory_bytes"), peak = metric(cache, "peak_memory_bytes");
        ck_assert_msg(held > 0 && held <= (double)bound && peak >= held && peak <= (double)bound,
                      "%s, line %zu: the cache held %.0f bytes, at most %.0f (bound %zu)", path,
                      index, held, peak, bound);
        if (spilled)
            ck_assert_msg(metric(cache, "spilled_bytes") > 0, "%s: nothing spilled", path);
        else
            ck_assert_msg(metric(cache, "spilled_bytes") == 0, "%s: a spill file", path);
    }
    json_decref(lines);
}

/* Flips one byte of `path` at `offset` (a damaged disk). */
static void flip_byte_at(const char *path, long offset) {
    FILE *file = fopen(path, "r+b");
    ck_assert_ptr_nonnull(file);
    ck_assert_int_eq(fseek(file, offset, SEEK_SET), 0);
    int byte = fgetc(file);
    ck_assert_int_ne(byte, EOF);
    ck_assert_int_eq(fseek(file, offset, SEEK_SET), 0);
    ck_assert_int_ne(fputc(byte ^ 0x40, file), EOF);
    ck_assert_int_eq(fclose(file), 0);
}

/*
 * Loading a saved cache keeps --cache-memory (the rows stream from the file into memory up to
 * the bound, then into the spill file, or are asked again): --resume from .state.cache,
 * --cache FILE across runs and replay of a record each give the checkpoint of the in-memory
 * run, the teacher computes each example once (none again when --cache FILE has them all), and
 * the loading process's cache never held more than the bound in memory (its metrics'
 * peak_memory_bytes, which counts the load's buffers).  ask-again drops the loaded rows beyond
 * the bound (asked again); replay refuses it, and a bound without a spill directory gets the
 * sentence of training; a damaged --cache FILE is refused naming the array.
 */
START_TEST(test_loading_a_saved_cache_keeps_the_bound) {
    REQUIRE_DATA();
    teacher_process_t comp;
    start_teacher(&comp, "comp-load", comp_path, "--http 127.0.0.1:0");
    const size_t bound = (size_t)(0.05 * 1048576.0);
    const char *run = "--view pool7 --model mlp:49-32-10 --method kd --epochs 2 --batch 64 "
                      "--seed 5 --label-fraction 0.5 --http off " SUBSET;
    char common[1024], arguments[2048], memory[400], out[400], spill[400], metrics[400], cache[400],
        record[400], bounded[600], command[4096];
    snprintf(memory, sizeof memory, "%s/load-memory.safetensors", directory);
    snprintf(out, sizeof out, "%s/load-bounded.safetensors", directory);
    snprintf(spill, sizeof spill, "%s/load-spill", directory);
    snprintf(metrics, sizeof metrics, "%s/load.jsonl", directory);
    snprintf(cache, sizeof cache, "%s/load.cache", directory);
    snprintf(record, sizeof record, "%s/load.record", directory);
    ck_assert_int_eq(mkdir(spill, 0700), 0);
    snprintf(common, sizeof common, "%s --teacher comp=%s", run, comp.endpoint);
    snprintf(bounded, sizeof bounded, "--cache-memory 0.05 --cache-spill %s", spill);
    snprintf(arguments, sizeof arguments, "--out %s", memory);
    ck_assert_msg(train_with(common, arguments) == 0, "in memory: %s", output);

    /* --resume: .state.cache (all 2000 rows, 40% beyond the bound) goes to the spill file. */
    long computed = teacher_examples_computed(&comp);
    snprintf(arguments, sizeof arguments, "--out %s %s --stop-after 40", out, bounded);
    ck_assert_msg(train_with(common, arguments) == 130, "stop-after: %s", output);
    snprintf(arguments, sizeof arguments, "--out %s %s --resume --metrics %s", out, bounded,
             metrics);
    ck_assert_msg(train_with(common, arguments) == 0, "resume: %s", output);
    ck_assert_int_eq(teacher_examples_computed(&comp) - computed, 2000);
    ck_assert_msg(same_file(memory, out), "the bounded resume changed the checkpoint");
    ck_assert_msg(strstr(output, "teacher cache after loading: 0.05 MB in memory"), "%s", output);
    assert_cache_within(metrics, bound, 1);
    ck_assert_int_eq(directory_entries(spill), 0);

    /* --resume with ask-again: the saved rows beyond the bound are dropped and asked again. */
    computed = teacher_examples_computed(&comp);
    snprintf(arguments, sizeof arguments,
             "--out %s --cache-memory 0.05 --cache-spill ask-again --stop-after 40", out);
    ck_assert_msg(train_with(common, arguments) == 130, "ask-again, stop-after: %s", output);
    ck_assert_int_eq(unlink(metrics), 0); /* a resumed run appends to its metrics */
    snprintf(arguments, sizeof arguments,
             "--out %s --cache-memory 0.05 --cache-spill ask-again --resume --metrics %s", out,
             metrics);
    ck_assert_msg(train_with(common, arguments) == 0, "ask-again, resume: %s", output);
    long asked = teacher_examples_computed(&comp) - computed;
    ck_assert_msg(asked > 2000 && asked < 4000, "ask-again: the teacher computed %ld", asked);
    assert_cache_within(metrics, bound, 0);

    /* --cache FILE: a second run takes every row from the file, none from the teacher. */
    computed = teacher_examples_computed(&comp);
    snprintf(arguments, sizeof arguments, "--out %s %s --cache %s --record %s", out, bounded, cache,
             record);
    ck_assert_msg(train_with(common, arguments) == 0, "--cache, first: %s", output);
    ck_assert_int_eq(teacher_examples_computed(&comp) - computed, 2000);
    ck_assert_msg(same_file(memory, out), "the bounded --cache run changed the checkpoint");
    computed = teacher_examples_computed(&comp);
    snprintf(arguments, sizeof arguments, "--out %s %s --cache %s --metrics %s", out, bounded,
             cache, metrics);
    ck_assert_msg(train_with(common, arguments) == 0, "--cache, again: %s", output);
    ck_assert_int_eq(teacher_examples_computed(&comp) - computed, 0);
    ck_assert_msg(strstr(output, "reusing cached teacher outputs"), "%s", output);
    ck_assert_msg(same_file(memory, out), "the reloaded --cache changed the checkpoint");
    assert_cache_within(metrics, bound, 1);
    /* The bound without a spill directory: the sentence of training, before any teacher work. */
    snprintf(arguments, sizeof arguments, "--out %s --cache-memory 0.05 --cache %s", out, cache);
    ck_assert_int_eq(train_with(common, arguments), 1);
    ck_assert_msg(strstr(output, "give --cache-spill DIR"), "%s", output);
    /* A damaged copy (a byte of the logits): one sentence naming the array, exit 1. */
    char damaged[420];
    snprintf(damaged, sizeof damaged, "%s.damaged", cache);
    snprintf(command, sizeof command, "cp %s %s", cache, damaged);
    ck_assert_int_eq(test_util_run(command, output, sizeof output), 0);
    struct stat info;
    ck_assert_int_eq(stat(damaged, &info), 0);
    flip_byte_at(damaged, (long)info.st_size - 2000 - 4000); /* before the 2000-byte mask */
    snprintf(arguments, sizeof arguments, "--out %s %s --cache %s", out, bounded, damaged);
    ck_assert_int_eq(train_with(common, arguments), 1);
    ck_assert_msg(strstr(output, "the data of tensor \"comp/logits\" is corrupt"), "%s", output);
    ck_assert_int_eq(directory_entries(spill), 0);

    /* replay: the record streams into memory and the spill file the same way. */
    snprintf(command, sizeof command, "%s replay %s --record %s --out %s %s --metrics %s",
             test_util_bin("student-trainer"), run, record, out, bounded, metrics);
    ck_assert_msg(test_util_run(command, output, sizeof output) == 0, "replay: %s", output);
    ck_assert_msg(same_file(memory, out), "the bounded replay changed the checkpoint");
    ck_assert_msg(strstr(output, "0.03 MB in a spill file"), "nothing spilled: %s", output);
    assert_cache_within(metrics, bound, 1);
    snprintf(command, sizeof command, "%s replay %s --record %s --out %s --cache-memory 0.05",
             test_util_bin("student-trainer"), run, record, out);
    ck_assert_int_eq(test_util_run(command, output, sizeof output), 1);
    ck_assert_msg(strstr(output, "give --cache-spill DIR") && !strstr(output, "ask-again"), "%s",
                  output);
    snprintf(command, sizeof command,
             "%s replay %s --record %s --out %s --cache-memory 0.05 --cache-spill ask-again",
             test_util_bin("student-trainer"), run, record, out);
    ck_assert_int_eq(test_util_run(command, output, sizeof output), 2);
    ck_assert_msg(strstr(output, "replay has no teachers to ask again"), "%s", output);
    ck_assert_int_eq(directory_entries(spill), 0);
    stop_teacher(&comp);
}
END_TEST

/* Where the spill file cannot go: one sentence naming the directory, exit 2 or 1. */
START_TEST(test_cache_spill_errors) {
    REQUIRE_DATA();
    teacher_process_t comp;
    start_teacher(&comp, "comp-spill-bad", comp_path, "");
    char common[1024], arguments[2048], spill[400], file[400];
    snprintf(spill, sizeof spill, "%s/spill-bad", directory);
    snprintf(file, sizeof file, "%s/spill-not-a-dir", directory);
    ck_assert_int_eq(mkdir(spill, 0700), 0);
    FILE *stream = fopen(file, "w");
    ck_assert_ptr_nonnull(stream);
    fclose(stream);
    snprintf(
        common, sizeof common,
        "--view pool7 --model mlp:49-32-10 --method kd --epochs 1 --batch 64 --http off " SUBSET
        " --teacher comp=%s --out %s/spill-bad.safetensors --cache-memory 0.05",
        comp.endpoint, directory);
    /* Usage errors: no such directory, not a directory, a dtype the cache cannot store. */
    snprintf(arguments, sizeof arguments, "--cache-spill %s/missing", directory);
    ck_assert_int_eq(train_with(common, arguments), 2);
    ck_assert_msg(strstr(output, "/missing: No such file or directory"), "%s", output);
    snprintf(arguments, sizeof arguments, "--cache-spill %s", file);
    ck_assert_int_eq(train_with(common, arguments), 2);
    ck_assert_msg(strstr(output, "spill-not-a-dir is not a directory"), "%s", output);
    ck_assert_int_eq(train_with(common, "--cache-dtype f8"), 2);
    ck_assert_msg(strstr(output, "--cache-dtype must be f32, f16 or bf16"), "%s", output);
    ck_assert_int_eq(train_with(common, "--cache-memory -1"), 2);
    ck_assert_int_eq(train_with(common, "--cache-spill-reads mmap"), 2);
    ck_assert_msg(strstr(output, "--cache-spill-reads must be pread or map"), "%s", output);
    /* The bound is too small and nothing says where the rest goes. */
    ck_assert_int_eq(train_with(common, ""), 1);
    ck_assert_msg(strstr(output, "give --cache-spill DIR"), "%s", output);
    /* A directory nobody can create files in (not even root). */
    ck_assert_int_eq(train_with(common, "--cache-spill /proc"), 1);
    ck_assert_msg(strstr(output, "cannot create the teacher-cache spill file in /proc"), "%s",
                  output);
    /* A full disk, as RLIMIT_FSIZE makes it: the space is reserved at start, so it is EFBIG
     * (ENOSPC on a real disk) before any teacher work, never a SIGBUS later. */
    char command[4096];
    snprintf(command, sizeof command,
             "sh -c \"trap '' XFSZ; ulimit -f 8; exec %s train %s --cache-spill %s\"",
             test_util_bin("student-trainer"), common, spill);
    ck_assert_int_eq(test_util_run(command, output, sizeof output), 1);
    ck_assert_msg(strstr(output, "cannot reserve") && strstr(output, "spill-bad: File too large"),
                  "%s", output);
    ck_assert_int_eq(directory_entries(spill), 0);
    stop_teacher(&comp);
}
END_TEST

START_TEST(test_full_disk_fails_the_run) {
    REQUIRE_DATA();
    char command[4096], out[400], state[420];
    snprintf(out, sizeof out, "%s/full.safetensors", directory);
    snprintf(state, sizeof state, "%s.state", out);
    const char *common = "--view pool7 --model mlp:49-32-10 --method ce --epochs 2 --batch 100 "
                         "--http off " SUBSET;
    snprintf(command, sizeof command, "%s train %s --out %s --metrics /dev/full",
             test_util_bin("student-trainer"), common, out);
    ck_assert_int_eq(test_util_run(command, output, sizeof output), 1);
    ck_assert_msg(strstr(output, "cannot write metrics to /dev/full: No space left on device"),
                  "no sentence naming the metrics file: %s", output);
    ck_assert_msg(access(state, F_OK) == 0, "no state saved at %s", state);
    /* The summary line on standard output is a write the user asked for too. */
    snprintf(command, sizeof command, "%s train %s --epochs 1 --out %s >/dev/full",
             test_util_bin("student-trainer"), common, out);
    ck_assert_int_eq(test_util_run(command, output, sizeof output), 1);
    ck_assert_msg(strstr(output, "cannot write the summary to standard output"),
                  "a lost summary went unnoticed: %s", output);
}
END_TEST

START_TEST(test_usage_errors) {
    const char *cases[][2] = {
        {"train --model mlp:49-32-10 --out x --method kd", "needs at least one --teacher"},
        {"train --model mlp:49-32-10 --out x --method magic", "magic"},
        {"train --model mlp:49-32-10 --out x --on-teacher-failure maybe", "wait, skip or fail"},
        {"replay --model mlp:49-32-10 --out x", "--record is required"},
        {"teach", "unknown command 'teach'"},
    };
    for (size_t index = 0; index < sizeof cases / sizeof cases[0]; index++) {
        char command[600];
        snprintf(command, sizeof command, "%s %s", test_util_bin("student-trainer"),
                 cases[index][0]);
        ck_assert_int_eq(test_util_run(command, output, sizeof output), 2);
        ck_assert_msg(strstr(output, cases[index][1]), "'%s' printed: %s", cases[index][0], output);
    }
    char command[600];
    snprintf(command, sizeof command, "%s train --help", test_util_bin("student-trainer"));
    ck_assert_int_eq(test_util_run(command, output, sizeof output), 0);
    ck_assert_ptr_nonnull(strstr(output, "--on-teacher-failure"));
    ck_assert_ptr_nonnull(strstr(output, "--save-initial"));
    ck_assert_ptr_nonnull(strstr(output, "--log-steps"));
    ck_assert_ptr_nonnull(strstr(output, "COMMITTEE_TEACHER"));
}
END_TEST

/*
 * One teacher serving two trainers at once (a sweep against one committee), through the real
 * binaries.  With --max-batch 1 (the default) each gets the replies it would get alone: both
 * checkpoints are byte-identical to the same runs made one at a time.  With --max-batch 1024
 * and a teacher slow enough to queue work, the trainers' requests share forward batches (the
 * teacher's debug log lists them) and both
 * runs still see every example exactly once; their checkpoints are not compared, because a
 * coalesced reply may differ from a lone one in the last bits (see teacher_serve.c).
 */
START_TEST(test_two_trainers_share_one_teacher) {
    REQUIRE_DATA();
    const char *const runs[2][2] = {{"sweep-a", "--lr 3e-3 --seed 1"},
                                    {"sweep-b", "--lr 1e-3 --seed 2"}};
    const char *const settings[3] = {"alone", "together", "coalesced"};
    char outs[3][2][400], logs[2][400], metrics[2][400], command[4096];
    for (int setting = 0; setting < 3; setting++) {
        teacher_process_t teacher;
        char name[64];
        snprintf(name, sizeof name, "fm-%s", settings[setting]);
        start_teacher(&teacher, name, fm_path,
                      setting == 2 ? "--max-batch 1024 --compute-delay-ms 5 --log-level debug"
                                   : "--max-batch 1");
        /* Coalesced: the teacher is stopped (SIGSTOP) until both trainers are greeting it, so
         * their streams start together however slowly a loaded machine starts processes (a
         * lone trainer's requests never share a pass: it would prove nothing). */
        if (setting == 2) ck_assert_int_eq(kill(teacher.pid, SIGSTOP), 0);
        pid_t trainers[2] = {0, 0};
        for (int run = 0; run < 2; run++) {
            snprintf(outs[setting][run], sizeof outs[setting][run], "%s/%s-%s.safetensors",
                     directory, runs[run][0], settings[setting]);
            snprintf(logs[run], sizeof logs[run], "%s/%s-%s.log", directory, runs[run][0],
                     settings[setting]);
            snprintf(metrics[run], sizeof metrics[run], "%s/%s-%s.jsonl", directory, runs[run][0],
                     settings[setting]);
            snprintf(command, sizeof command,
                     "%s train --view pool7 --model mlp:49-32-10 --teacher fm=%s --method kd "
                     "--epochs 2 --batch 50 --http off --teacher-timeout-ms 600000 %s " SUBSET
                     " --out %s --metrics %s",
                     test_util_bin("student-trainer"), teacher.endpoint, runs[run][1],
                     outs[setting][run], metrics[run]);
            trainers[run] = test_process_start(command, logs[run]);
            ck_assert_int_gt(trainers[run], 0);
            if (setting == 2)
                ck_assert_msg(test_process_await_text(logs[run], "greeting teacher", 60000),
                              "trainer %d never greeted the teacher; see %s", run, logs[run]);
            if (setting == 0) { /* one at a time */
                int status = test_process_wait(trainers[run], 60000);
                if (status != 0) test_process_stop(trainers[run], SIGKILL, 1000);
                ck_assert_msg(status == 0, "trainer exited %d; see %s", status, logs[run]);
            }
        }
        if (setting == 2) ck_assert_int_eq(kill(teacher.pid, SIGCONT), 0);
        for (int run = 0; setting > 0 && run < 2; run++) {
            int status = test_process_wait(trainers[run], 60000);
            if (status != 0) test_process_stop(trainers[run], SIGKILL, 1000);
            ck_assert_msg(status == 0, "trainer exited %d; see %s", status, logs[run]);
        }
        stop_teacher(&teacher);
        for (int run = 0; run < 2; run++) {
            json_t *lines = read_metrics(metrics[run]);
            ck_assert_int_eq((int)json_array_size(lines), 2);
            for (size_t epoch = 0; epoch < 2; epoch++) {
                json_t *line = json_array_get(lines, epoch);
                ck_assert_int_eq((int)metric(line, "train_examples"), 2000);
                ck_assert_int_eq((int)metric(line, "distinct_examples"), 2000);
                ck_assert_int_eq((int)metric(line, "duplicates"), 0);
                ck_assert_int_eq((int)teacher_metric(line, "fm", "missing_rows"), 0);
            }
            json_decref(lines);
        }
        if (setting == 2)
            ck_assert_msg(test_process_await_text(teacher.log, "forward batch of", 1000),
                          "the coalescing teacher never ran two requests together; see %s",
                          teacher.log);
    }
    for (int run = 0; run < 2; run++) {
        ck_assert_msg(test_util_same_checkpoints(outs[0][run], outs[1][run], output, sizeof output),
                      "%s trained next to another trainer differs from the same run alone: %s",
                      runs[run][0], output);
    }
}
END_TEST

Suite *check_trainer_suite(void);
Suite *check_trainer_suite(void) {
    Suite *suite = suite_create("trainer");
    TCase *tcase = tcase_create("end_to_end");
    tcase_add_unchecked_fixture(tcase, fit_teachers, remove_teachers);
    tcase_set_timeout(tcase, 120);
    tcase_add_test(tcase, test_usage_errors);
    tcase_add_test(tcase, test_two_teachers_learn);
    tcase_add_test(tcase, test_exactly_once_with_restart);
    tcase_add_test(tcase, test_skip_without_teacher);
    tcase_add_test(tcase, test_refuses_other_dataset);
    tcase_add_test(tcase, test_refuses_bad_teacher_endpoints);
    tcase_add_test(tcase, test_resume_and_replay_are_exact);
    tcase_add_test(tcase, test_schedule_decays_and_resumes_exactly);
    tcase_add_test(tcase, test_save_initial_and_log_steps);
    tcase_add_test(tcase, test_diversedistill_filtering_saves_real_work);
    tcase_add_test(tcase, test_diversedistill_survives_a_lost_teacher);
    tcase_add_test(tcase, test_diversedistill_interactive);
    tcase_add_test(tcase, test_standardized_view_reaches_the_checkpoint);
    tcase_add_test(tcase, test_cnn_student_trains_its_batch_norm);
    tcase_add_test(tcase, test_transfer_split_trains_unlabelled_rows);
    tcase_add_test(tcase, test_transfer_split_regression);
    tcase_add_test(tcase, test_two_trainers_share_one_teacher);
    tcase_add_test(tcase, test_spilled_cache_is_exact);
    tcase_add_test(tcase, test_cache_spill_errors);
    tcase_add_test(tcase, test_loading_a_saved_cache_keeps_the_bound);
    suite_add_tcase(suite, tcase);
    TCase *hostile = tcase_create("hostile");
    tcase_add_unchecked_fixture(hostile, prepare_directory, remove_teachers);
    tcase_set_timeout(hostile, 150);
    tcase_add_test(hostile, test_busy_teacher_has_a_deadline);
    tcase_add_test(hostile, test_signal_ends_every_wait);
    tcase_add_test(hostile, test_malformed_replies_are_asked_again);
    tcase_add_test(hostile, test_nonfinite_outputs_follow_the_policy);
    tcase_add_test(hostile, test_full_disk_fails_the_run);
    suite_add_tcase(suite, hostile);
    return suite;
}
