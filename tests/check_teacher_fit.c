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
    const char *documented[] = {"--model", "--view", "--epochs", "--batch",
                                "--lr",    "--seed", "--out",    "COMMITTEE_EPOCHS"};
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

Suite *check_teacher_fit_suite(void);
Suite *check_teacher_fit_suite(void) {
    Suite *suite = suite_create("teacher_fit");
    TCase *tcase = tcase_create("cli");
    tcase_set_timeout(tcase, 60);
    tcase_add_test(tcase, test_help);
    tcase_add_test(tcase, test_bad_options_exit_2);
    tcase_add_test(tcase, test_bad_data_exit_1);
    tcase_add_test(tcase, test_fit_small_subset);
    suite_add_tcase(suite, tcase);
    return suite;
}
