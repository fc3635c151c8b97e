/*
 * teacher-server fit, end to end through the real binary: it trains on a
 * subset of the real Fashion-MNIST, writes a checkpoint that loads and says
 * what it is, and turns bad options and bad data into one-line errors with
 * the documented exit codes.
 */
#include "cm_model.h"
#include "cm_safetensors.h"
#include "test_util.h"

#include <check.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char output[16384];

START_TEST(test_help) {
    char command[600];
    snprintf(command, sizeof command, "%s --help", test_util_bin("teacher-server"));
    ck_assert_int_eq(test_util_run(command, output, sizeof output), 0);
    ck_assert_ptr_nonnull(strstr(output, "fit"));
    snprintf(command, sizeof command, "%s fit --help", test_util_bin("teacher-server"));
    ck_assert_int_eq(test_util_run(command, output, sizeof output), 0);
    const char *documented[] = {"--model",     "--view",          "--epochs", "--batch",
                                "--lr",        "--seed",          "--out",    "--save-initial",
                                "--log-steps", "COMMITTEE_EPOCHS"};
    for (size_t index = 0; index < sizeof documented / sizeof documented[0]; index++)
        ck_assert_msg(strstr(output, documented[index]), "fit --help lacks %s", documented[index]);
}
END_TEST

START_TEST(test_bad_options_exit_2) {
    const char *cases[][2] = {
        {"fit --model mlp:49-64-10", "--out is required"},
        {"fit --model mlp:49-64-10 --out x --epochs zero", "--epochs expects an integer"},
        {"fit --model mlp:49-64-10 --out x --bogus 1", "unknown option '--bogus'"},
        {"fit --model mlp:49-64-10 --out x --lr", "--lr needs a value"},
        {"frobnicate", "unknown command 'frobnicate'"},
        {"fit --model mlp:49-64-10 --out x --shift 9", "--shift must be 0..8 pixels"},
    };
    for (size_t index = 0; index < sizeof cases / sizeof cases[0]; index++) {
        char command[600];
        snprintf(command, sizeof command, "%s %s", test_util_bin("teacher-server"),
                 cases[index][0]);
        ck_assert_int_eq(test_util_run(command, output, sizeof output), 2);
        ck_assert_msg(strstr(output, cases[index][1]), "'%s' printed: %s", cases[index][0], output);
        ck_assert_msg(strchr(output, '\n') == output + strlen(output) - 1,
                      "error for '%s' is not one line: %s", cases[index][0], output);
    }
}
END_TEST

START_TEST(test_bad_data_exit_1) {
    char directory[256], command[1024];
    test_util_temp_dir(directory, sizeof directory);
    snprintf(command, sizeof command,
             "%s fit --model mlp:49-16-10 --view pool7 --data-dir %s --out %s/m.safetensors",
             test_util_bin("teacher-server"), directory, directory);
    ck_assert_int_eq(test_util_run(command, output, sizeof output), 1);
    ck_assert_msg(strstr(output, directory), "error does not name the directory: %s", output);
    /* A model that does not fit the view is refused before training. */
    snprintf(command, sizeof command,
             "%s fit --model mlp:784-16-10 --view pool7 --max-train 100 --max-test 100 --out "
             "%s/m.safetensors",
             test_util_bin("teacher-server"), directory);
    if (test_util_have_fashion_mnist()) {
        ck_assert_int_eq(test_util_run(command, output, sizeof output), 1);
        ck_assert_msg(strstr(output, "expects 784 input features but view 'pool7' gives 49"), "%s",
                      output);
    }
    test_util_remove_tree(directory);
}
END_TEST

START_TEST(test_fit_small_subset) {
    if (!test_util_have_fashion_mnist()) {
        fprintf(stderr, "skipping: Fashion-MNIST is not installed (make deps)\n");
        return;
    }
    char directory[256], command[2048], path[300];
    test_util_temp_dir(directory, sizeof directory);
    snprintf(path, sizeof path, "%s/teacher.safetensors", directory);
    snprintf(command, sizeof command,
             "COMMITTEE_EPOCHS=3 %s fit --model mlp:49-64-10 --view pool7 --max-train 3000 "
             "--max-test 1000 --batch 64 --lr 3e-3 --seed 7 --out %s",
             test_util_bin("teacher-server"), path);
    ck_assert_msg(test_util_run(command, output, sizeof output) == 0, "fit failed: %s", output);
    ck_assert_ptr_nonnull(strstr(output, "epoch 3/3"));
    ck_assert_ptr_nonnull(strstr(output, "examples/s"));
    cm_model_t *model = NULL;
    cm_safetensors_t *file = NULL;
    ck_assert_int_eq(cm_model_load(path, 64, &model, &file), CM_OK);
    ck_assert_str_eq(cm_safetensors_metadata(file, "view"), "pool7");
    ck_assert_str_eq(cm_safetensors_metadata(file, "dataset"), "fashion-mnist");
    ck_assert_str_eq(cm_safetensors_metadata(file, "model"), "mlp:49-64-10");
    ck_assert_int_eq((int)strlen(cm_safetensors_metadata(file, "fingerprint")), 64);
    double accuracy = atof(cm_safetensors_metadata(file, "test_accuracy"));
    ck_assert_msg(accuracy > 0.65, "3 epochs on 3000 examples reached only %.3f", accuracy);
    cm_safetensors_free(&file);
    cm_model_free(&model);

    /* Same seed, same command: the same checkpoint, byte for byte but for the saved config
     * (--out differs, and COMMITTEE_EPOCHS became --epochs). */
    char again[300];
    snprintf(again, sizeof again, "%s/again.safetensors", directory);
    snprintf(command, sizeof command,
             "%s fit --model mlp:49-64-10 --view pool7 --max-train 3000 --max-test 1000 "
             "--batch 64 --lr 3e-3 --seed 7 --epochs 3 --out %s",
             test_util_bin("teacher-server"), again);
    ck_assert_msg(test_util_run(command, output, sizeof output) == 0, "%s", output);
    ck_assert_msg(test_util_same_checkpoints(path, again, output, sizeof output),
                  "not reproducible: %s", output);
    test_util_remove_tree(directory);
}
END_TEST

/*
 * --save-initial and --log-steps: the initial checkpoint is the seeded initialization, the
 * log one line per step whose rows are every training example once per epoch, with the
 * cosine rate warming up; an unwritable log fails the fit naming it.
 */
START_TEST(test_fit_save_initial_and_log_steps) {
    if (!test_util_have_fashion_mnist()) {
        fprintf(stderr, "skipping: Fashion-MNIST is not installed (make deps)\n");
        return;
    }
    char directory[256], command[2048], path[300], initial[300], steps_path[300];
    test_util_temp_dir(directory, sizeof directory);
    snprintf(path, sizeof path, "%s/teacher.safetensors", directory);
    snprintf(initial, sizeof initial, "%s/initial.safetensors", directory);
    snprintf(steps_path, sizeof steps_path, "%s/steps.jsonl", directory);
    const char *common = "--model mlp:49-16-10 --view pool7 --max-train 1000 --max-test 200 "
                         "--batch 100 --epochs 2 --lr 3e-3 --seed 4";
    snprintf(command, sizeof command, "%s fit %s --out %s --save-initial %s --log-steps %s",
             test_util_bin("teacher-server"), common, path, initial, steps_path);
    ck_assert_msg(test_util_run(command, output, sizeof output) == 0, "fit failed: %s", output);
    cm_model_t *saved = NULL, *fresh = NULL;
    ck_assert_int_eq(cm_model_load(initial, 100, &saved, NULL), CM_OK);
    ck_assert_int_eq(cm_model_new(cm_model_spec(saved), 100, &fresh), CM_OK);
    cm_model_init(fresh, 4);
    ck_assert_int_eq(memcmp(cm_model_params(saved), cm_model_params(fresh),
                            sizeof(float) * cm_model_param_count(fresh)),
                     0);
    cm_model_free(&saved);
    cm_model_free(&fresh);

    FILE *file = fopen(steps_path, "r");
    ck_assert_ptr_nonnull(file);
    static int seen[2][1000];
    memset(seen, 0, sizeof seen);
    char line[8192];
    int lines = 0;
    double first_lr = 0.0, first_loss = 0.0, last_loss = 0.0;
    while (fgets(line, sizeof line, file)) {
        json_error_t error;
        json_t *value = json_loads(line, 0, &error);
        ck_assert_msg(value != NULL, "bad step line: %s (%s)", line, error.text);
        lines++;
        ck_assert_int_eq((int)json_integer_value(json_object_get(value, "step")), lines);
        int epoch = (int)json_integer_value(json_object_get(value, "epoch"));
        ck_assert_int_eq(epoch, (lines - 1) / 10 + 1);
        double loss = json_number_value(json_object_get(value, "loss"));
        ck_assert_msg(isfinite(loss) && loss > 0, "step %d: loss %g", lines, loss);
        if (lines == 1) {
            first_lr = json_number_value(json_object_get(value, "lr"));
            first_loss = loss;
        }
        last_loss = loss;
        json_t *ids = json_object_get(value, "ids");
        ck_assert_int_eq((int)json_array_size(ids), 100);
        for (size_t row = 0; row < json_array_size(ids); row++) {
            int id = (int)json_integer_value(json_array_get(ids, row));
            ck_assert_msg(id >= 0 && id < 1000, "step %d: id %d", lines, id);
            seen[epoch - 1][id]++;
        }
        json_decref(value);
    }
    fclose(file);
    ck_assert_int_eq(lines, 20);
    for (int epoch = 0; epoch < 2; epoch++)
        for (int id = 0; id < 1000; id++) ck_assert_int_eq(seen[epoch][id], 1);
    ck_assert_msg(first_lr > 0 && first_lr <= 3e-3 + 1e-9, "first lr %g", first_lr);
    ck_assert_msg(last_loss < first_loss, "loss went from %g to %g", first_loss, last_loss);

    snprintf(command, sizeof command, "%s fit %s --out %s --log-steps /dev/full",
             test_util_bin("teacher-server"), common, path);
    ck_assert_int_eq(test_util_run(command, output, sizeof output), 1);
    ck_assert_msg(strstr(output, "cannot write the per-step log to /dev/full"), "%s", output);
    test_util_remove_tree(directory);
}
END_TEST

Suite *check_teacher_fit_suite(void);
Suite *check_teacher_fit_suite(void) {
    Suite *suite = suite_create("teacher_fit");
    TCase *tcase = tcase_create("cli");
    tcase_set_timeout(tcase, 60);
    tcase_add_test(tcase, test_help);
    tcase_add_test(tcase, test_bad_options_exit_2);
    tcase_add_test(tcase, test_bad_data_exit_1);
    tcase_add_test(tcase, test_fit_small_subset);
    tcase_add_test(tcase, test_fit_save_initial_and_log_steps);
    suite_add_tcase(suite, tcase);
    return suite;
}
