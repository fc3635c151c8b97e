/*
 * Dataset folders end to end, through the real binaries: `teacher-server
 * data check` on a good and a broken folder; a synthetic classification
 * folder (with ids.npy) fitted, served and distilled into a student with
 * kd on a subset (--max-train) while the teacher serves the whole dataset,
 * then evaluated; a synthetic regression folder fitted and evaluated (RMSE,
 * MAE), served and distilled with kd and diversedistill (MSE losses), the students
 * evaluated, an interrupted diversedistill run resumed bit for bit; and, when
 * Fashion-MNIST is installed, a teacher and a student fitted from the
 * exported folder byte-identical to ones fitted from the built-in name.
 */
#include "test_folder.h"
#include "test_process.h"
#include "test_util.h"

#include <check.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char directory[256], cache[320];
static char output[65536];

static void setup(void) {
    test_util_temp_dir(directory, sizeof directory);
    ck_assert(directory[0]);
    snprintf(cache, sizeof cache, "%s/cache", directory);
    setenv("COMMITTEE_CACHE_DIR", cache, 1); /* the children inherit it */
}

static void teardown(void) {
    if (directory[0]) test_util_remove_tree(directory);
    unsetenv("COMMITTEE_CACHE_DIR");
}

static int run(const char *command) {
    int status = test_util_run(command, output, sizeof output);
    return status;
}

static void write_folder(const char *name, int regression, int train_rows, char *path,
                         size_t size) {
    snprintf(path, size, "%s/%s", directory, name);
    test_folder_options_t options = {.regression = regression,
                                     .train_rows = train_rows,
                                     .test_rows = 300,
                                     .with_ids = !regression,
                                     .seed = 17};
    test_folder_write(path, &options);
}

/* The number after `key` in the output (e.g. "accuracy="), or -1. */
static double value_after(const char *key) {
    const char *at = strstr(output, key);
    return at ? atof(at + strlen(key)) : -1.0;
}

START_TEST(test_data_check_command) {
    char folder[400], command[1200];
    write_folder("check", 0, 600, folder, sizeof folder);
    snprintf(command, sizeof command, "%s data check %s", test_util_bin("teacher-server"), folder);
    ck_assert_msg(run(command) == 0, "%s", output);
    ck_assert_msg(strstr(output, "classification, 3 classes") &&
                      strstr(output, "train    600 examples, ids.npy") &&
                      strstr(output, "test     300 examples") &&
                      strstr(output, "grid     dense float32 [8x8], normalized") &&
                      strstr(output, "pool     dense float32 [4x4], from grid by avgpool:2") &&
                      strstr(output, "cat      categorical int64 [2], 2 columns") &&
                      strstr(output, "text     tokens int32 [6], vocab 50, pad 0") &&
                      strstr(output, "fingerprint  ") && strstr(output, "ok: "),
                  "unexpected check output:\n%s", output);

    /* A token beyond the vocabulary in a view no other command would read. */
    char path[500];
    snprintf(path, sizeof path, "%s/test/text.npy", folder);
    int32_t tokens[300 * 6] = {0};
    tokens[77 * 6 + 1] = 64;
    test_folder_write_npy(path, 1, "<i4", 0, "(300, 6)", tokens, sizeof tokens);
    ck_assert_int_eq(run(command), 1);
    ck_assert_msg(strstr(output, "test/text.npy: row 77 holds token 64 at position 1") &&
                      strchr(output, '\n') == strrchr(output, '\n'),
                  "not one sentence naming the file:\n%s", output);

    snprintf(command, sizeof command, "%s data check %s/nothing-here",
             test_util_bin("teacher-server"), directory);
    ck_assert_int_eq(run(command), 1);
    ck_assert_msg(strstr(output, "nothing-here") != NULL, "%s", output);
    snprintf(command, sizeof command, "%s data check", test_util_bin("teacher-server"));
    ck_assert_int_eq(run(command), 2);
}
END_TEST

START_TEST(test_classification_folder_end_to_end) {
    char folder[400], teacher[500], student[500], command[3000], endpoint[500], log[500];
    write_folder("cls", 0, 1200, folder, sizeof folder);
    snprintf(teacher, sizeof teacher, "%s/teacher.safetensors", directory);
    snprintf(student, sizeof student, "%s/student.safetensors", directory);
    snprintf(command, sizeof command,
             "%s fit --data %s --view grid --model mlp:64-32-3 --epochs 4 --lr 3e-3 --out %s",
             test_util_bin("teacher-server"), folder, teacher);
    ck_assert_msg(run(command) == 0, "%s", output);
    ck_assert_msg(value_after("test_accuracy=") > 0.8, "the teacher learned little:\n%s", output);

    /* The teacher serves the whole dataset; the student trains on its first 1000 rows. */
    snprintf(endpoint, sizeof endpoint, "ipc://%s/cls.sock", directory);
    snprintf(log, sizeof log, "%s/cls-teacher.log", directory);
    snprintf(command, sizeof command,
             "%s serve --model %s --name grid --bind %s --http off --data %s",
             test_util_bin("teacher-server"), teacher, endpoint, folder);
    pid_t server = test_process_start(command, log);
    ck_assert_int_gt(server, 0);
    ck_assert_msg(test_process_await_text(log, "serving", 20000), "the teacher did not start");
    snprintf(command, sizeof command,
             "%s train --data %s --view pool --model mlp:16-16-3 --teacher grid=%s --method kd "
             "--epochs 3 --lr 3e-3 --max-train 1000 --batch 50 --out %s",
             test_util_bin("student-trainer"), folder, endpoint, student);
    int status = run(command);
    test_process_stop(server, SIGTERM, 5000);
    ck_assert_msg(status == 0, "%s", output);
    ck_assert_msg(value_after("test_accuracy=") > 0.6, "the student learned little:\n%s", output);

    snprintf(command, sizeof command, "%s eval --model %s --data %s",
             test_util_bin("student-trainer"), student, folder);
    ck_assert_msg(run(command) == 0, "%s", output);
    ck_assert_msg(value_after("accuracy=") > 0.6 && strstr(output, "loss=") &&
                      strstr(output, "examples=300"),
                  "%s", output);
    /* The checkpoint says how to feed it. */
    snprintf(command, sizeof command, "tail -c +9 %s | head -c 4000", student);
    run(command);
    ck_assert_msg(strstr(output, "avgpool:2") && strstr(output, "\"classes\\\":3") &&
                      strstr(output, "manifest_sha256"),
                  "metadata lacks the preprocessing or task: %.2000s", output);
}
END_TEST

START_TEST(test_regression_folder_end_to_end) {
    char folder[400], model[500], command[3000];
    write_folder("reg", 1, 600, folder, sizeof folder);
    snprintf(model, sizeof model, "%s/reg.safetensors", directory);
    snprintf(command, sizeof command,
             "%s fit --data %s --view pool --model mlp:16-32-2 --epochs 20 --lr 3e-3 --batch 32 "
             "--out %s",
             test_util_bin("teacher-server"), folder, model);
    ck_assert_msg(run(command) == 0, "%s", output);
    double rmse = value_after("test_rmse=");
    ck_assert_msg(rmse >= 0 && rmse < 0.15 && strstr(output, "test_mae="),
                  "regression did not fit:\n%s", output);
    snprintf(command, sizeof command, "%s eval --model %s --data %s",
             test_util_bin("student-trainer"), model, folder);
    ck_assert_msg(run(command) == 0, "%s", output);
    ck_assert_msg(value_after("rmse=") >= 0 && value_after("rmse=") < 0.15 &&
                      strstr(output, "mae=") && !strstr(output, "accuracy"),
                  "%s", output);
    snprintf(command, sizeof command, "%s eval --model %s --data %s --split valid",
             test_util_bin("student-trainer"), model, folder);
    ck_assert_int_eq(run(command), 1);
    ck_assert_msg(strstr(output, "has no split 'valid'") != NULL, "%s", output);

    /* Distilled: the teacher serves, the student learns with kd, ca-mkd, fitnet and
     * diversedistill (every loss an MSE, the router's targets squared errors: trainer_dd.h),
     * then eval scores it. */
    char endpoint[500], log[500], student[500], metrics[500];
    snprintf(endpoint, sizeof endpoint, "ipc://%s/reg.sock", directory);
    snprintf(log, sizeof log, "%s/reg-teacher.log", directory);
    snprintf(command, sizeof command,
             "%s serve --model %s --name reg --bind %s --http off --data %s",
             test_util_bin("teacher-server"), model, endpoint, folder);
    pid_t server = test_process_start(command, log);
    ck_assert_int_gt(server, 0);
    ck_assert_msg(test_process_await_text(log, "serving", 20000), "the teacher did not start");
    static const char *const methods[] = {"kd", "ca-mkd", "fitnet", "diversedistill"};
    /* ca-mkd sees half the targets (its weights need them; the other rows get uniform ones) */
    static const char *const extra[] = {"", "--label-fraction 0.5", "", ""};
    static const char *const terms[][2] = {{"\"mse\":", "\"kd\":"},
                                           {"\"mse\":", "\"kd\":"},
                                           {"\"kd\":", "\"fitnet\":"},
                                           {"\"kd\":", "\"dd_answer\":"}};
    for (int m = 0; m < 4; m++) {
        snprintf(student, sizeof student, "%s/%s.safetensors", directory, methods[m]);
        snprintf(metrics, sizeof metrics, "%s/%s.jsonl", directory, methods[m]);
        snprintf(command, sizeof command,
                 "%s train --data %s --view pool --model mlp:16-16-2 --teacher reg=%s "
                 "--method %s %s --epochs 8 --lr 3e-3 --batch 32 --http off --metrics %s --out %s",
                 test_util_bin("student-trainer"), folder, endpoint, methods[m], extra[m], metrics,
                 student);
        int status = run(command);
        if (status != 0) test_process_stop(server, SIGTERM, 5000);
        ck_assert_msg(status == 0, "--method %s on regression:\n%s", methods[m], output);
        ck_assert_msg(m != 1 || strstr(output, "300 of 600 training labels visible"), "%s", output);
        double train_rmse = value_after("test_rmse=");
        ck_assert_msg(train_rmse >= 0 && train_rmse < 0.2, "--method %s: %s", methods[m], output);
        snprintf(command, sizeof command, "tail -n 1 %s", metrics);
        run(command);
        for (int t = 0; t < 2; t++)
            ck_assert_msg(value_after(terms[m][t]) > 0.0, "--method %s: no %s term in %s",
                          methods[m], terms[m][t], output);
        ck_assert_msg(strstr(output, "\"ce\":") == NULL, "a CE term on regression: %s", output);
        double logged_rmse = value_after("\"test_rmse\":");
        ck_assert_msg(
            logged_rmse > 0.0 && fabs(logged_rmse - train_rmse) < 1e-3 &&
                strstr(output, "\"test_mae\":") && strstr(output, "\"test_accuracy\"") == NULL,
            "--method %s: the metrics line lacks the regression scores: %s", methods[m], output);
        snprintf(command, sizeof command, "%s eval --model %s --data %s",
                 test_util_bin("student-trainer"), student, folder);
        ck_assert_msg(run(command) == 0, "%s", output);
        double student_rmse = value_after("rmse=");
        ck_assert_msg(student_rmse >= 0 && student_rmse < 0.2 && strstr(output, "mae="),
                      "--method %s: the student learned little:\n%s", methods[m], output);
    }

    /* A recommender-style student on the categorical view distils by diversedistill too; a
     * token-model student cannot (its head does not read a ReLU vector). */
    snprintf(command, sizeof command,
             "%s train --data %s --view cat --model emb:cards=5x7,dim=4,mlp=8,out=2 "
             "--teacher reg=%s --method diversedistill --epochs 2 --batch 32 --http off "
             "--out %s/emb.safetensors",
             test_util_bin("student-trainer"), folder, endpoint, directory);
    int status = run(command);
    if (status != 0) test_process_stop(server, SIGTERM, 5000);
    ck_assert_msg(status == 0 && value_after("test_rmse=") >= 0, "emb student:\n%s", output);
    snprintf(
        command, sizeof command,
        "%s train --data %s --view text --model tok:len=6,vocab=50,dim=8,depth=1,heads=2,out=2 "
        "--teacher reg=%s --method diversedistill --epochs 1 --http off "
        "--out %s/tok.safetensors",
        test_util_bin("student-trainer"), folder, endpoint, directory);
    status = run(command);
    if (status != 1) test_process_stop(server, SIGTERM, 5000);
    ck_assert_msg(status == 1 && strstr(output, "needs an mlp or emb student") &&
                      strstr(output, "tok:len=6"),
                  "tok student: %d\n%s", status, output);

    /* Interrupted and resumed, diversedistill on regression continues bit for bit. */
    char resumed[500];
    snprintf(resumed, sizeof resumed, "%s/resumed.safetensors", directory);
    const char *again[2] = {"--stop-after 30", "--resume"};
    for (int part = 0; part < 2; part++) {
        snprintf(command, sizeof command,
                 "%s train --data %s --view pool --model mlp:16-16-2 --teacher reg=%s "
                 "--method diversedistill --epochs 8 --lr 3e-3 --batch 32 --http off %s --out %s",
                 test_util_bin("student-trainer"), folder, endpoint, again[part], resumed);
        status = run(command);
        int expected = part == 0 ? 130 : 0; /* --stop-after is an interruption */
        if (status != expected) test_process_stop(server, SIGTERM, 5000);
        ck_assert_msg(status == expected, "%s: exit %d\n%s", again[part], status, output);
    }
    test_process_stop(server, SIGTERM, 5000);
    char straight[500];
    snprintf(straight, sizeof straight, "%s/diversedistill.safetensors", directory);
    ck_assert_msg(test_util_same_checkpoints(straight, resumed, output, sizeof output),
                  "the resumed student differs: %s", output);
}
END_TEST

START_TEST(test_fashion_folder_is_byte_identical) {
    if (!test_util_have_fashion_mnist()) {
        fprintf(stderr, "skipping %s: Fashion-MNIST is not installed\n", __func__);
        return;
    }
    char folder[400], command[3000], a[500], b[500];
    snprintf(folder, sizeof folder, "%s/fm", directory);
    snprintf(command, sizeof command, "%s data export fashion-mnist %s",
             test_util_bin("teacher-server"), folder);
    ck_assert_msg(run(command) == 0, "%s", output);
    static const char subset[] = "--max-train 600 --max-test 200 --epochs 1";
    const char *sources[2] = {"fashion-mnist", folder};
    const char *outputs[2] = {a, b};
    snprintf(a, sizeof a, "%s/teacher-builtin.safetensors", directory);
    snprintf(b, sizeof b, "%s/teacher-folder.safetensors", directory);
    for (int i = 0; i < 2; i++) {
        snprintf(command, sizeof command,
                 "%s fit --data %s --view pool14 --model mlp:196-16-10 --shift 1 %s --out %s",
                 test_util_bin("teacher-server"), sources[i], subset, outputs[i]);
        ck_assert_msg(run(command) == 0, "%s", output);
    }
    ck_assert_msg(test_util_same_checkpoints(a, b, output, sizeof output), "teachers differ: %s",
                  output);

    snprintf(a, sizeof a, "%s/student-builtin.safetensors", directory);
    snprintf(b, sizeof b, "%s/student-folder.safetensors", directory);
    for (int i = 0; i < 2; i++) {
        snprintf(command, sizeof command,
                 "%s train --data %s --view pool7 --model mlp:49-16-10 --method ce %s --out %s",
                 test_util_bin("student-trainer"), sources[i], subset, outputs[i]);
        ck_assert_msg(run(command) == 0, "%s", output);
    }
    ck_assert_msg(test_util_same_checkpoints(a, b, output, sizeof output), "students differ: %s",
                  output);
}
END_TEST

Suite *check_dataset_folder_suite(void);
Suite *check_dataset_folder_suite(void) {
    Suite *suite = suite_create("dataset_folder");
    TCase *binaries = tcase_create("binaries");
    tcase_add_checked_fixture(binaries, setup, teardown);
    tcase_set_timeout(binaries, 300);
    tcase_add_test(binaries, test_data_check_command);
    tcase_add_test(binaries, test_classification_folder_end_to_end);
    tcase_add_test(binaries, test_regression_folder_end_to_end);
    tcase_add_test(binaries, test_fashion_folder_is_byte_identical);
    suite_add_tcase(suite, binaries);
    return suite;
}
