/*
 * The command line shared by both binaries, end to end through them:
 * --version, --config FILE (YAML) with its errors and its precedence
 * (flag > COMMITTEE_* > file > default), the effective configuration saved
 * in checkpoints and as the metrics file's first line, the examples/ files
 * (fit, serve and train run from them), `teacher-server inspect` on every
 * kind of file and on a damaged one, the repeat of a run from the
 * configuration its checkpoint holds, the usage sentences of train, and
 * keygen making the folders of its --out.
 * Runs on 1000-example subsets of Fashion-MNIST; hang guards only.
 */
#include "cm_cli.h"
#include "cm_safetensors.h"
#include "serve_fixture.h"
#include "test_util.h"

#include <check.h>
#include <jansson.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char output[65536];

static void write_text(const char *path, const char *text) {
    FILE *file = fopen(path, "w");
    ck_assert_msg(file != NULL, "cannot write %s", path);
    fputs(text, file);
    ck_assert_int_eq(fclose(file), 0);
}

/* The absolute path of examples/NAME (the suites run from the repository root). */
static void example_path(const char *name, char *path, size_t size) {
    char relative[300], absolute[PATH_MAX];
    snprintf(relative, sizeof relative, "examples/%s", name);
    ck_assert_msg(realpath(relative, absolute) != NULL, "no %s (run from the repository root)",
                  relative);
    ck_assert_msg((size_t)snprintf(path, size, "%s", absolute) < size, "%s is too long", absolute);
}

/* The absolute path of a built binary, for commands that change directory. */
static void absolute_bin(const char *name, char *path, size_t size) {
    char absolute[PATH_MAX];
    ck_assert_msg(realpath(test_util_bin(name), absolute) != NULL, "no %s", test_util_bin(name));
    ck_assert_msg((size_t)snprintf(path, size, "%s", absolute) < size, "%s is too long", absolute);
}

/* The "config" object saved in a checkpoint's metadata (caller json_decref). */
static json_t *saved_config(const char *checkpoint) {
    cm_safetensors_t *file = NULL;
    ck_assert_msg(cm_safetensors_read(&file, checkpoint) == CM_OK, "%s", cm_last_error());
    const char *text = cm_safetensors_metadata(file, "config");
    ck_assert_msg(text != NULL, "%s has no config metadata", checkpoint);
    json_t *config = json_loads(text, 0, NULL);
    ck_assert_msg(json_is_object(config), "config of %s is not an object: %s", checkpoint, text);
    cm_safetensors_free(&file);
    return config;
}

START_TEST(test_version) {
    const char *programs[] = {"teacher-server", "student-trainer"};
    for (int index = 0; index < 2; index++) {
        char command[600], expected[200];
        snprintf(command, sizeof command, "%s --version", test_util_bin(programs[index]));
        ck_assert_int_eq(test_util_run(command, output, sizeof output), 0);
        snprintf(expected, sizeof expected, "%s %s (protocol %d.%d)\n", programs[index], CM_VERSION,
                 CM_WIRE_VERSION_MAJOR, CM_WIRE_VERSION_MINOR);
        ck_assert_str_eq(output, expected);
    }
}
END_TEST

/* README's `keygen --out keys/fm` in a fresh checkout: the missing folders are made, 0700. */
START_TEST(test_keygen_makes_folders) {
    char directory[256], command[800], path[400];
    test_util_temp_dir(directory, sizeof directory);
    snprintf(command, sizeof command, "%s keygen --out %s/keys/teachers/fm",
             test_util_bin("teacher-server"), directory);
    ck_assert_msg(test_util_run(command, output, sizeof output) == 0, "%s", output);
    snprintf(path, sizeof path, "%s/keys/teachers/fm.pub", directory);
    ck_assert_msg(access(path, R_OK) == 0, "no %s: %s", path, output);
    struct stat info;
    snprintf(path, sizeof path, "%s/keys", directory);
    ck_assert_int_eq(stat(path, &info), 0);
    ck_assert_int_eq(info.st_mode & 0777, 0700);
    test_util_remove_tree(directory);
}
END_TEST

/* Every mistake in a config file: exit 2 and one sentence naming the file, line and key. */
START_TEST(test_config_errors) {
    char directory[256], path[300], command[1200];
    test_util_temp_dir(directory, sizeof directory);
    snprintf(path, sizeof path, "%s/run.yaml", directory);
    const char *cases[][3] = {
        {"fit", "model: mlp:49-8-10\nout: x\nepoch: 3\n", ":3: unknown key 'epoch'"},
        {"fit", "model: mlp:49-8-10\nepochs: three\n", ":2: key 'epochs' expects an integer"},
        {"fit", "lr: 1e-3\nmodel: a\nlr: 2e-3\n", ":3: key 'lr' appears twice (first on line 1)"},
        {"fit", "model: [mlp\n", ":2: malformed YAML"},
        {"fit", "model: [a, b]\n", ":1: key 'model' expects a single value, not a list"},
        {"fit", "model:\n  name: a\n", ":1: key 'model' expects a single value, not a mapping"},
        {"fit", "- model\n", ":1: a config file is a mapping"},
        {"fit", "lr: fast\nmodel: a\nout: x\n", ":1: key 'lr' expects a number, got 'fast'"},
        {"train", "model: a\nout: x\nresume: maybe\n", ":3: key 'resume' expects 1/0, true/false"},
        {"train", "model: a\nout: x\nteacher:\n  - {fm: 1}\n", ":3: key 'teacher' expects a list"},
        {"serve", "model: a\nbogus: 1\n", ":2: unknown key 'bogus'"},
        {"replay", "model: a\nout: x\nrecord: r\nteacher: [fm=ipc://x]\n",
         ":4: unknown key 'teacher'"},
    };
    for (size_t index = 0; index < sizeof cases / sizeof cases[0]; index++) {
        write_text(path, cases[index][1]);
        int trainer = !strcmp(cases[index][0], "train") || !strcmp(cases[index][0], "replay");
        snprintf(command, sizeof command, "%s %s --config %s",
                 test_util_bin(trainer ? "student-trainer" : "teacher-server"), cases[index][0],
                 path);
        ck_assert_int_eq(test_util_run(command, output, sizeof output), 2);
        char expected[400];
        snprintf(expected, sizeof expected, "%s%s", path, cases[index][2]);
        ck_assert_msg(strstr(output, expected), "case %zu: wanted '%s', got: %s", index, expected,
                      output);
        ck_assert_msg(strchr(output, '\n') == output + strlen(output) - 1,
                      "case %zu: not one line: %s", index, output);
    }
    /* A key the command line overrides is still checked. */
    write_text(path, "model: mlp:49-8-10\nepochs: three\n");
    snprintf(command, sizeof command, "%s fit --config %s --epochs 1 --out x",
             test_util_bin("teacher-server"), path);
    ck_assert_int_eq(test_util_run(command, output, sizeof output), 2);
    ck_assert_msg(strstr(output, "key 'epochs' expects an integer"), "%s", output);
    /* A missing file, through COMMITTEE_CONFIG. */
    snprintf(command, sizeof command, "COMMITTEE_CONFIG=%s/none.yaml %s fit", directory,
             test_util_bin("teacher-server"));
    ck_assert_int_eq(test_util_run(command, output, sizeof output), 2);
    ck_assert_msg(strstr(output, "cannot read the config file") && strstr(output, "none.yaml"),
                  "%s", output);
    test_util_remove_tree(directory);
}
END_TEST

/* flag > COMMITTEE_* > file > default, read back from the checkpoint's saved config. */
START_TEST(test_config_precedence) {
    if (!test_util_have_fashion_mnist()) {
        fprintf(stderr, "skipping: Fashion-MNIST is not installed (make deps)\n");
        return;
    }
    char directory[256], path[300], command[1500], checkpoint[300];
    test_util_temp_dir(directory, sizeof directory);
    snprintf(path, sizeof path, "%s/fit.yaml", directory);
    snprintf(checkpoint, sizeof checkpoint, "%s/m.safetensors", directory);
    char text[800];
    snprintf(text, sizeof text,
             "# a comment\nview: pool7\nmodel: mlp:49-8-10\nepochs: 1\nseed: 5\nbatch: 64\n"
             "max-train: 300\nmax-test: 100\ndata-dir: ~\nout: %s\n",
             checkpoint);
    write_text(path, text);
    struct {
        const char *environment, *flags;
        long seed;
        int batch;
    } cases[] = {
        {"", "", 5, 64},
        {"COMMITTEE_SEED=7", "", 7, 64},
        {"COMMITTEE_SEED=7 COMMITTEE_BATCH=32", "--seed 9", 9, 32},
    };
    for (size_t index = 0; index < sizeof cases / sizeof cases[0]; index++) {
        snprintf(command, sizeof command, "%s %s fit --config %s %s", cases[index].environment,
                 test_util_bin("teacher-server"), path, cases[index].flags);
        ck_assert_msg(test_util_run(command, output, sizeof output) == 0, "%s: %s", command,
                      output);
        json_t *config = saved_config(checkpoint);
        ck_assert_int_eq(json_integer_value(json_object_get(config, "seed")), cases[index].seed);
        ck_assert_int_eq(json_integer_value(json_object_get(config, "batch")), cases[index].batch);
        ck_assert_int_eq(json_integer_value(json_object_get(config, "epochs")), 1);
        ck_assert_str_eq(json_string_value(json_object_get(config, "view")), "pool7");
        ck_assert(json_is_null(json_object_get(config, "data-dir")));
        ck_assert_int_eq(json_integer_value(json_object_get(config, "shift")), 0); /* default */
        json_decref(config);
    }
    test_util_remove_tree(directory);
}
END_TEST

/* Reads a safetensors file's tensors as one JSON-free fingerprint: their bytes concatenated. */
static int same_tensors(const char *left_path, const char *right_path) {
    cm_safetensors_t *left = NULL, *right = NULL;
    ck_assert_msg(cm_safetensors_read(&left, left_path) == CM_OK, "%s", cm_last_error());
    ck_assert_msg(cm_safetensors_read(&right, right_path) == CM_OK, "%s", cm_last_error());
    int same = cm_safetensors_count(left) == cm_safetensors_count(right);
    for (int index = 0; same && index < cm_safetensors_count(left); index++) {
        const cm_tensor_t *a = cm_safetensors_tensor(left, index);
        const cm_tensor_t *b = cm_safetensors_find(right, a->name);
        size_t bytes = cm_dtype_size(a->dtype);
        for (int dim = 0; dim < a->ndim; dim++) bytes *= (size_t)a->shape[dim];
        same = b && b->dtype == a->dtype && b->ndim == a->ndim &&
               memcmp(a->shape, b->shape, sizeof a->shape) == 0 &&
               memcmp(a->data, b->data, bytes) == 0;
    }
    cm_safetensors_free(&left);
    cm_safetensors_free(&right);
    return same;
}

/*
 * examples/fit.yaml, serve.yaml and train.yaml as a user runs them (in a fresh directory, the
 * subset and the addresses given as flags), then inspect on each file the run made, and the run
 * repeated from the configuration its checkpoint holds: the same student, tensor for tensor.
 */
START_TEST(test_examples_run_and_repeat) {
    if (!test_util_have_fashion_mnist()) {
        fprintf(stderr, "skipping: Fashion-MNIST is not installed (make deps)\n");
        return;
    }
    char directory[256], command[8192], fit_yaml[1024], serve_yaml[1024], train_yaml[1024],
        teacher_bin[1024], trainer_bin[1024];
    test_util_temp_dir(directory, sizeof directory);
    example_path("fit.yaml", fit_yaml, sizeof fit_yaml);
    example_path("serve.yaml", serve_yaml, sizeof serve_yaml);
    example_path("train.yaml", train_yaml, sizeof train_yaml);
    absolute_bin("teacher-server", teacher_bin, sizeof teacher_bin); /* the commands cd */
    absolute_bin("student-trainer", trainer_bin, sizeof trainer_bin);
    const char *subset = "--max-train 1000 --max-test 300";
    snprintf(command, sizeof command, "cd %s && %s fit --config %s --epochs 1 %s", directory,
             teacher_bin, fit_yaml, subset);
    ck_assert_msg(test_util_run(command, output, sizeof output) == 0, "fit: %s", output);
    ck_assert_msg(strstr(output, "mlp:784-128-10 on fashion-mnist/full"), "%s", output);

    char teacher[400];
    snprintf(teacher, sizeof teacher, "%s/fm.safetensors", directory);
    const char *extra[] = {"--config", serve_yaml, NULL};
    serve_fixture_t server;
    char why[4096];
    ck_assert_msg(serve_fixture_start(&server, directory, teacher, extra, why, sizeof why) == 0,
                  "serve --config: %s", why);

    snprintf(command, sizeof command,
             "cd %s && %s train --config %s --teacher fm=%s --epochs 2 %s --record record.cache",
             directory, trainer_bin, train_yaml, server.endpoint, subset);
    int status = test_util_run(command, output, sizeof output);
    if (status != 0) serve_fixture_stop(&server, SIGTERM, 10000);
    ck_assert_msg(status == 0, "train: %s", output);

    /* The metrics file: the configuration first, then one line per epoch, no valid_* */
    char path[600];
    snprintf(path, sizeof path, "%s/student.jsonl", directory);
    FILE *file = fopen(path, "r");
    ck_assert_msg(file != NULL, "no %s", path);
    char line[16384];
    int lines = 0;
    while (fgets(line, sizeof line, file)) {
        json_t *value = json_loads(line, 0, NULL);
        ck_assert_msg(value != NULL, "bad line %d: %s", lines + 1, line);
        if (lines == 0) {
            json_t *config = json_object_get(value, "config");
            ck_assert_msg(json_is_object(config) && !json_object_get(value, "epoch"), "%s", line);
            ck_assert_str_eq(json_string_value(json_object_get(config, "method")), "kd");
            ck_assert_int_eq(json_integer_value(json_object_get(config, "epochs")), 2);
            json_t *teachers = json_object_get(config, "teacher");
            ck_assert_int_eq(json_array_size(teachers), 1); /* the flag replaced the file's */
            ck_assert(strstr(json_string_value(json_array_get(teachers, 0)), server.endpoint));
            ck_assert_str_eq(json_string_value(json_object_get(value, "program")),
                             "student-trainer train");
        } else {
            ck_assert_int_eq(json_integer_value(json_object_get(value, "epoch")), lines);
            ck_assert_msg(!json_object_get(value, "valid_accuracy"),
                          "valid_accuracy without --holdout: %s", line);
            ck_assert(json_object_get(value, "test_accuracy"));
        }
        json_decref(value);
        lines++;
    }
    fclose(file);
    ck_assert_int_eq(lines, 3);

    /* inspect: the student checkpoint, the teacher, the state, the record */
    struct {
        const char *file, *kind;
    } files[] = {
        {"student.safetensors", "kind:      student checkpoint"},
        {"fm.safetensors", "kind:      teacher checkpoint"},
        {"student.safetensors.state", "kind:      trainer state"},
        {"record.cache", "kind:      teacher outputs"},
    };
    for (size_t index = 0; index < sizeof files / sizeof files[0]; index++) {
        snprintf(command, sizeof command, "%s inspect %s/%s", teacher_bin, directory,
                 files[index].file);
        status = test_util_run(command, output, sizeof output);
        if (status != 0) serve_fixture_stop(&server, SIGTERM, 10000);
        ck_assert_msg(status == 0, "inspect %s: %s", files[index].file, output);
        ck_assert_msg(strstr(output, files[index].kind), "inspect %s: %s", files[index].file,
                      output);
        ck_assert_msg(strstr(output, "checksums: every tensor and the metadata verified"), "%s",
                      output);
        ck_assert_msg(!strstr(output, "unverified"), "%s", output);
    }
    snprintf(command, sizeof command, "%s inspect %s/student.safetensors", teacher_bin, directory);
    test_util_run(command, output, sizeof output);
    ck_assert_msg(strstr(output, "fc0.weight") && strstr(output, "[64, 49]") &&
                      strstr(output, "12544  ok "),
                  "no tensor row for fc0.weight: %s", output);
    ck_assert_msg(strstr(output, "\"method\": \"kd\""), "config not pretty-printed: %s", output);

    /* The same run again from what the checkpoint saved (the teacher still runs). */
    snprintf(command, sizeof command,
             "cd %s && %s inspect --print-config student.safetensors > again.yaml && "
             "%s train --config again.yaml --out again.safetensors --metrics again.jsonl",
             directory, teacher_bin, trainer_bin);
    status = test_util_run(command, output, sizeof output);
    serve_fixture_stop(&server, SIGTERM, 10000);
    ck_assert_msg(status == 0, "the repeated run: %s", output);
    char first[600], again[600];
    snprintf(first, sizeof first, "%s/student.safetensors", directory);
    snprintf(again, sizeof again, "%s/again.safetensors", directory);
    ck_assert_msg(same_tensors(first, again), "the repeated run trained another student");
    test_util_remove_tree(directory);
}
END_TEST

START_TEST(test_inspect_errors) {
    if (!test_util_have_fashion_mnist()) {
        fprintf(stderr, "skipping: Fashion-MNIST is not installed (make deps)\n");
        return;
    }
    char directory[256], command[1500], path[300];
    test_util_temp_dir(directory, sizeof directory);
    snprintf(path, sizeof path, "%s/m.safetensors", directory);
    snprintf(command, sizeof command,
             "%s fit --view pool7 --model mlp:49-8-10 --epochs 1 --max-train 200 --max-test 100 "
             "--out %s",
             test_util_bin("teacher-server"), path);
    ck_assert_msg(test_util_run(command, output, sizeof output) == 0, "%s", output);
    /* One byte of the last tensor (fc1.bias, the file's last 40 bytes) flipped. */
    FILE *file = fopen(path, "r+b");
    ck_assert_ptr_nonnull(file);
    ck_assert_int_eq(fseek(file, -10, SEEK_END), 0);
    int byte = fgetc(file);
    ck_assert_int_eq(fseek(file, -10, SEEK_END), 0);
    fputc(byte ^ 0x5a, file);
    ck_assert_int_eq(fclose(file), 0);
    snprintf(command, sizeof command, "%s inspect %s", test_util_bin("teacher-server"), path);
    ck_assert_int_eq(test_util_run(command, output, sizeof output), 1);
    ck_assert_msg(strstr(output, "tensor \"fc1.bias\" is corrupt") && strstr(output, path),
                  "damage not named: %s", output);
    ck_assert_msg(strchr(output, '\n') == output + strlen(output) - 1, "not one line: %s", output);
    const char *usage_cases[][2] = {
        {"inspect", "give the file to inspect"},
        {"inspect a b", "unexpected argument 'b'"},
        {"inspect a --frob", "unknown option '--frob'"},
    };
    for (size_t index = 0; index < sizeof usage_cases / sizeof usage_cases[0]; index++) {
        snprintf(command, sizeof command, "%s %s", test_util_bin("teacher-server"),
                 usage_cases[index][0]);
        ck_assert_int_eq(test_util_run(command, output, sizeof output), 2);
        ck_assert_msg(strstr(output, usage_cases[index][1]), "%s: %s", usage_cases[index][0],
                      output);
    }
    snprintf(command, sizeof command, "%s inspect %s/none", test_util_bin("teacher-server"),
             directory);
    ck_assert_int_eq(test_util_run(command, output, sizeof output), 1);
    ck_assert_msg(strstr(output, "none"), "%s", output);
    test_util_remove_tree(directory);
}
END_TEST

/* The usage sentences issue 15 found wrong: each names the one option given, exit 2. */
START_TEST(test_train_usage_sentences) {
    const char *common = "--model mlp:49-8-10 --out x";
    const char *cases[][2] = {
        {"--kd-weight 2", "--kd-weight must be in [0, 1], not 2"},
        {"--epochs 0", "--epochs must be at least 1, not 0"},
        {"--batch 0", "--batch must be 1..4096, not 0"},
        {"--window 0", "--window must be 1..16, not 0"},
        {"--lr -1", "--lr must be positive, not -1"},
        {"--label-fraction 0", "--label-fraction must be in (0, 1], not 0"},
        {"--method kd --teacher fm", "--teacher expects NAME=ENDPOINT"},
        {"--method kd --teacher =ipc://x", "--teacher expects NAME=ENDPOINT"},
        {"--method bogus", "ce, kd, avg-kd, ca-mkd, fitnet, diversedistill"},
    };
    for (size_t index = 0; index < sizeof cases / sizeof cases[0]; index++) {
        char command[800];
        snprintf(command, sizeof command, "%s train %s %s", test_util_bin("student-trainer"),
                 common, cases[index][0]);
        ck_assert_int_eq(test_util_run(command, output, sizeof output), 2);
        ck_assert_msg(strstr(output, cases[index][1]), "'%s' printed: %s", cases[index][0], output);
        ck_assert_msg(strchr(output, '\n') == output + strlen(output) - 1, "not one line: %s",
                      output);
    }
    /* replay neither lists nor takes the options about reaching teachers, nor --cache and
     * --cache-dtype (the record keeps its dtype); the bound on the loaded record it takes. */
    char command[800];
    snprintf(command, sizeof command, "%s replay --help", test_util_bin("student-trainer"));
    ck_assert_int_eq(test_util_run(command, output, sizeof output), 0);
    const char *absent[] = {"--teacher ",           "--teacher-key",        "--curve-secret-key",
                            "--on-teacher-failure", "--teacher-timeout-ms", "--window",
                            "--encoding",           "--cache WHERE",        "--cache-dtype",
                            "--resolve-ms"};
    for (size_t index = 0; index < sizeof absent / sizeof absent[0]; index++)
        ck_assert_msg(!strstr(output, absent[index]), "replay --help lists %s", absent[index]);
    ck_assert_msg(strstr(output, "--record") && strstr(output, "--config FILE"), "%s", output);
    ck_assert_msg(strstr(output, "--cache-memory MB") && strstr(output, "--cache-spill DIR"), "%s",
                  output);
    snprintf(command, sizeof command, "%s replay %s --record r --teacher fm=ipc://x",
             test_util_bin("student-trainer"), common);
    ck_assert_int_eq(test_util_run(command, output, sizeof output), 2);
    ck_assert_msg(strstr(output, "unknown option '--teacher'"), "%s", output);
}
END_TEST

Suite *check_cli_suite(void);
Suite *check_cli_suite(void) {
    Suite *suite = suite_create("cli");
    TCase *tcase = tcase_create("binaries");
    tcase_set_timeout(tcase, 300);
    tcase_add_test(tcase, test_version);
    tcase_add_test(tcase, test_keygen_makes_folders);
    tcase_add_test(tcase, test_config_errors);
    tcase_add_test(tcase, test_config_precedence);
    tcase_add_test(tcase, test_examples_run_and_repeat);
    tcase_add_test(tcase, test_inspect_errors);
    tcase_add_test(tcase, test_train_usage_sentences);
    suite_add_tcase(suite, tcase);
    return suite;
}
