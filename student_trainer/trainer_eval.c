/*
 * trainer_eval: loads a checkpoint (student or teacher: the format is the
 * same), the view its metadata names, and prints accuracy and mean
 * cross-entropy (classification) or RMSE and MAE (regression) on one split.
 */
#include "trainer_eval.h"

#include "cm_blas.h"
#include "cm_cli.h"
#include "cm_dataset.h"
#include "cm_log.h"
#include "cm_model.h"
#include "cm_safetensors.h"
#include "cm_score.h"

#include <stdio.h>
#include <string.h>

static cm_status_t evaluate(const char *path, const char *data, const char *data_dir,
                            const char *split_name, int max_train, int max_test) {
    cm_split_t split;
    cm_status_t status = cm_split_parse(split_name, &split);
    if (status != CM_OK) return status;
    cm_model_t *model = NULL;
    cm_safetensors_t *file = NULL;
    cm_dataset_t *dataset = NULL;
    if ((status = cm_model_load(path, 256, &model, &file)) != CM_OK) return status;
    const char *view = cm_safetensors_metadata(file, "view");
    const char *name = data ? data : cm_safetensors_metadata(file, "dataset");
    if (!view || !name) {
        status = cm_fail(CM_ERR_FORMAT, "%s does not say which view and dataset it was trained on",
                         path);
        goto done;
    }
    cm_dataset_options_t options = {
        .directory = data_dir, .max_train = max_train, .max_test = max_test};
    if ((status = cm_dataset_load(&dataset, name, view, &options)) != CM_OK) goto done;
    if (!dataset->manifest->has_split[split]) {
        status =
            cm_fail(CM_ERR_INVALID_ARG, "dataset %s has no split '%s'", dataset->name, split_name);
        goto done;
    }
    const char *trained_on = cm_safetensors_metadata(file, "fingerprint");
    if (trained_on && strcmp(trained_on, dataset->fingerprint) != 0)
        cm_log_warn("%s was trained on dataset %.12s..., evaluating on %.12s... (other data)", path,
                    trained_on, dataset->fingerprint);
    if (cm_model_spec(model)->classes != dataset->classes) {
        status = cm_fail(CM_ERR_SHAPE, "%s has %d outputs but dataset %s has %d %s", path,
                         cm_model_spec(model)->classes, dataset->name, dataset->classes,
                         dataset->task == CM_TASK_REGRESSION ? "targets" : "classes");
        goto done;
    }
    if (cm_model_spec_inputs(cm_model_spec(model)) != dataset->features) {
        status = cm_fail(CM_ERR_SHAPE, "%s expects %d inputs, view '%s' gives %d", path,
                         cm_model_spec_inputs(cm_model_spec(model)), view, dataset->features);
        goto done;
    }
    cm_score_t score;
    if ((status = cm_score_split(model, dataset, split, &score)) != CM_OK) goto done;
    if (dataset->task == CM_TASK_REGRESSION)
        printf("rmse=%.4f mae=%.4f examples=%d split=%s view=%s model=%s\n", score.rmse, score.mae,
               score.examples, split_name, view, cm_safetensors_metadata(file, "model"));
    else
        printf("accuracy=%.4f loss=%.4f examples=%d split=%s view=%s model=%s\n", score.accuracy,
               score.loss, score.examples, split_name, view,
               cm_safetensors_metadata(file, "model"));
done:
    cm_dataset_free(&dataset);
    cm_safetensors_free(&file);
    cm_model_free(&model);
    return status;
}

int trainer_eval_main(int argc, char **argv, int first) {
    const char *model = NULL, *data = NULL, *data_dir = NULL, *split = "test";
    int max_train = 0, max_test = 0;
    const cm_cli_option_t table[] = {
        {"model", CM_CLI_STRING, &model, "FILE", "checkpoint to evaluate (.safetensors)", 1},
        {"data", CM_CLI_STRING, &data, "DATA",
         "dataset folder or built-in name [default: the checkpoint's]", 0},
        {"data-dir", CM_CLI_STRING, &data_dir, "DIR", "files of a built-in dataset", 0},
        {"split", CM_CLI_STRING, &split, "SPLIT", "train, test, valid or transfer", 0},
        {"max-train", CM_CLI_INT, &max_train, "N", "use only the first N training examples", 0},
        {"max-test", CM_CLI_INT, &max_test, "N", "use only the first N test examples", 0},
    };
    const int count = (int)(sizeof table / sizeof table[0]);
    int help = 0;
    cm_status_t status = cm_cli_parse(table, count, argc, argv, first, &help);
    if (help) {
        cm_cli_usage(
            stdout, "student-trainer eval --model FILE [--split test] [options]",
            "Prints the accuracy and mean cross-entropy (classification) or the RMSE and MAE\n"
            "(regression) of a checkpoint on a split of the dataset view its metadata names.\n"
            "\n"
            "example: student-trainer eval --model student.safetensors --split test",
            table, count);
        return 0;
    }
    if (status != CM_OK) {
        fprintf(stderr, "student-trainer eval: %s\n", cm_last_error());
        return 2;
    }
    cm_log_init("student-trainer", CM_LOG_INFO);
    cm_blas_set_threads(1);
    status = evaluate(model, data, data_dir, split, max_train, max_test);
    if (status != CM_OK) {
        fprintf(stderr, "student-trainer eval: %s\n", cm_last_error());
        return 1;
    }
    return 0;
}
