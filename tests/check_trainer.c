/*
 * student-trainer end to end: real teacher-server processes on ipc://
 * endpoints in a temp dir, the real student-trainer binary, a 2000-example
 * subset of Fashion-MNIST so every run takes a second or two.  Covers
 * learning from two teachers, exactly-once training while a teacher is
 * killed and restarted (wait), training on without a teacher (skip), the
 * fingerprint check, bit-exact resume and replay, and clear errors for
 * corrupt state and record files.
 */
#include "test_process.h"
#include "test_util.h"

#include "cm_npy.h"

#include <check.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define SUBSET "--max-train 2000 --max-test 500"

static char directory[256];
static char fm_path[320], comp_path[320];
static int have_data;
static char output[65536];

static void fit_teachers(void) {
    have_data = test_util_have_fashion_mnist();
    if (!have_data) return;
    test_util_temp_dir(directory, sizeof directory);
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

/* Parses the JSON-lines metrics file into an array (caller json_decref). */
static json_t *read_metrics(const char *path) {
    json_t *lines = json_array();
    FILE *file = fopen(path, "r");
    ck_assert_msg(file != NULL, "no metrics at %s", path);
    char line[8192];
    while (fgets(line, sizeof line, file)) {
        json_error_t error;
        json_t *value = json_loads(line, 0, &error);
        ck_assert_msg(value != NULL, "bad metrics line: %s (%s)", line, error.text);
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
    ck_assert_msg(test_util_run(command, output, sizeof output) == 0, "stop-after: %s", output);
    ck_assert_ptr_nonnull(strstr(output, "continue with --resume"));
    snprintf(command, sizeof command, "%s train %s --teacher comp=%s --out %s --resume",
             test_util_bin("student-trainer"), common, comp.endpoint, resumed);
    ck_assert_msg(test_util_run(command, output, sizeof output) == 0, "resume: %s", output);
    stop_teacher(&comp);
    snprintf(command, sizeof command, "cmp %s %s", straight, resumed);
    ck_assert_msg(test_util_run(command, output, sizeof output) == 0,
                  "interrupted + resumed run differs from the straight run: %s", output);
    /* Replay from the record, no teacher running: the same weights again. */
    snprintf(command, sizeof command, "%s replay %s --record %s --out %s",
             test_util_bin("student-trainer"), common, record, replayed);
    ck_assert_msg(test_util_run(command, output, sizeof output) == 0, "replay: %s", output);
    snprintf(command, sizeof command, "cmp %s %s", straight, replayed);
    ck_assert_msg(test_util_run(command, output, sizeof output) == 0, "replay differs: %s", output);
    /* A record holds outputs, not the heads the interactive variant trains through. */
    snprintf(command, sizeof command,
             "%s replay %s --record %s --out %s --method diversedistill --dd-interactive",
             test_util_bin("student-trainer"), common, record, replayed);
    ck_assert_int_eq(test_util_run(command, output, sizeof output), 1);
    ck_assert_msg(strstr(output, "--dd-interactive needs the live teachers"),
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

START_TEST(test_diversedistill_filtering_saves_real_work) {
    REQUIRE_DATA();
    teacher_process_t fm, comp;
    start_teacher(&fm, "fm-dd", fm_path, "--http 127.0.0.1:0");
    start_teacher(&comp, "comp-dd", comp_path, "--http 127.0.0.1:0");
    char command[4096], metrics[400], out[400];
    snprintf(metrics, sizeof metrics, "%s/dd.jsonl", directory);
    snprintf(out, sizeof out, "%s/dd.safetensors", directory);
    snprintf(command, sizeof command,
             "%s train --view pool7 --model mlp:49-32-10 --teacher fm=%s --teacher comp=%s "
             "--method diversedistill --dd-filter 0.5 --epochs 3 --batch 64 --lr 3e-3 --cache off "
             "--http off " SUBSET " --out %s --metrics %s",
             test_util_bin("student-trainer"), fm.endpoint, comp.endpoint, out, metrics);
    int status = test_util_run(command, output, sizeof output);
    long fm_computed = teacher_examples_computed(&fm),
         comp_computed = teacher_examples_computed(&comp);
    stop_teacher(&fm);
    stop_teacher(&comp);
    ck_assert_msg(status == 0, "train failed: %s", output);
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
 * travel in the resumable state, the heads are fetched again).  A teacher started with
 * --lend-head off is refused with a sentence naming it.
 */
START_TEST(test_diversedistill_interactive) {
    REQUIRE_DATA();
    teacher_process_t fm, comp;
    start_teacher(&fm, "fm-interactive", fm_path, "");
    start_teacher(&comp, "comp-interactive", comp_path, "");
    char command[4096], metrics[400], straight[400], resumed[400], common[1200];
    snprintf(metrics, sizeof metrics, "%s/interactive.jsonl", directory);
    snprintf(straight, sizeof straight, "%s/interactive.safetensors", directory);
    snprintf(resumed, sizeof resumed, "%s/interactive-resumed.safetensors", directory);
    snprintf(common, sizeof common,
             "--view pool7 --model mlp:49-32-10 --teacher fm=%s --teacher comp=%s "
             "--method diversedistill --dd-interactive --epochs 3 --batch 64 --lr 3e-3 --seed 4 "
             "--http off " SUBSET,
             fm.endpoint, comp.endpoint);
    snprintf(command, sizeof command, "%s train %s --out %s --metrics %s",
             test_util_bin("student-trainer"), common, straight, metrics);
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
    ck_assert_msg(test_util_run(command, output, sizeof output) == 0, "stop-after: %s", output);
    snprintf(command, sizeof command, "%s train %s --out %s --resume",
             test_util_bin("student-trainer"), common, resumed);
    ck_assert_msg(test_util_run(command, output, sizeof output) == 0, "resume: %s", output);
    snprintf(command, sizeof command, "cmp %s %s", straight, resumed);
    ck_assert_msg(test_util_run(command, output, sizeof output) == 0,
                  "interrupted + resumed interactive run differs from the straight run: %s",
                  output);

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
    ck_assert_ptr_nonnull(strstr(output, "COMMITTEE_TEACHER"));
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
    tcase_add_test(tcase, test_resume_and_replay_are_exact);
    tcase_add_test(tcase, test_diversedistill_filtering_saves_real_work);
    tcase_add_test(tcase, test_diversedistill_survives_a_lost_teacher);
    tcase_add_test(tcase, test_diversedistill_interactive);
    suite_add_tcase(suite, tcase);
    return suite;
}
