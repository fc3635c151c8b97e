/*
 * test_folder: see test_folder.h.  Classification: class c of a row lifts
 * one 4x4 quadrant of its grid by 1.5 over Gaussian-ish noise, so the pooled
 * view separates the classes too.  Regression: the two targets are the
 * means of the grid's top half and of its left half minus its right half.
 */
#include "test_folder.h"

#include "cm_npy.h"
#include "cm_rng.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int32_t test_folder_id(int row) { return (int32_t)(((int64_t)row + 1) * 1000003 % 2147483647); }

void test_folder_write_text(const char *path, const char *text) {
    FILE *file = fopen(path, "w");
    ck_assert_msg(file != NULL, "cannot write %s", path);
    fputs(text, file);
    ck_assert_int_eq(fclose(file), 0);
}

void test_folder_write_npy(const char *path, int major, const char *descr, int fortran,
                           const char *shape, const void *data, size_t bytes) {
    char dict[256];
    int length = snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': %s, 'shape': %s, }",
                          descr, fortran ? "True" : "False", shape);
    size_t prefix = major == 1 ? 10 : 12;
    size_t header = ((size_t)length + prefix + 1 + 63) / 64 * 64;
    uint8_t *out = malloc(header + bytes + 1);
    ck_assert_ptr_nonnull(out);
    memcpy(out, "\x93NUMPY", 6);
    out[6] = (uint8_t)major;
    out[7] = 0;
    size_t dict_length = header - prefix;
    out[8] = (uint8_t)(dict_length & 0xff);
    out[9] = (uint8_t)(dict_length >> 8);
    if (major != 1) out[10] = out[11] = 0;
    memcpy(out + prefix, dict, (size_t)length);
    memset(out + prefix + length, ' ', header - prefix - (size_t)length - 1);
    out[header - 1] = '\n';
    if (bytes) memcpy(out + header, data, bytes);
    FILE *file = fopen(path, "wb");
    ck_assert_msg(file != NULL, "cannot write %s", path);
    ck_assert_uint_eq(fwrite(out, 1, header + bytes, file), header + bytes);
    ck_assert_int_eq(fclose(file), 0);
    free(out);
}

static float noise(cm_rng_t *rng) {
    float sum = 0;
    for (int i = 0; i < 4; i++) sum += (float)cm_rng_u32(rng) / 4294967296.0f - 0.5f;
    return sum * 0.5f;
}

static void write_split(const char *directory, const char *split, int rows,
                        const test_folder_options_t *options, int labelled, cm_rng_t *rng) {
    char path[600];
    snprintf(path, sizeof path, "%s/%s", directory, split);
    mkdir(path, 0755);
    float *grid = malloc(sizeof(float) * (size_t)rows * 64 + 1);
    int64_t *classes = malloc(sizeof(int64_t) * (size_t)rows + 1);
    float *targets = malloc(sizeof(float) * (size_t)rows * 2 + 1);
    int64_t *categories = malloc(sizeof(int64_t) * (size_t)rows * 2 + 1);
    int32_t *tokens = malloc(sizeof(int32_t) * (size_t)rows * 6 + 1);
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)rows + 1);
    ck_assert(grid && classes && targets && categories && tokens && ids);
    for (int row = 0; row < rows; row++) {
        int label = (int)cm_rng_below(rng, 3);
        classes[row] = label;
        float *cells = grid + (size_t)row * 64;
        for (int cell = 0; cell < 64; cell++) {
            cells[cell] = noise(rng);
            int y = cell / 8, x = cell % 8;
            int quadrant = (y >= 4) * 2 + (x >= 4);
            if (!options->regression && quadrant == label) cells[cell] += 1.5f;
            if (options->regression) cells[cell] += (float)cm_rng_below(rng, 3) * 0.5f;
        }
        double top = 0, left_minus_right = 0;
        for (int cell = 0; cell < 64; cell++) {
            if (cell / 8 < 4) top += cells[cell] / 32.0;
            left_minus_right += (cell % 8 < 4 ? 1 : -1) * cells[cell] / 32.0;
        }
        targets[2 * row] = (float)top;
        targets[2 * row + 1] = (float)left_minus_right;
        categories[2 * row] = label + (int64_t)cm_rng_below(rng, 3);
        categories[2 * row + 1] = (int64_t)cm_rng_below(rng, 7);
        for (int position = 0; position < 6; position++)
            tokens[row * 6 + position] =
                position < 4 ? 1 + (int32_t)cm_rng_below(rng, 49) : 0; /* padded */
        ids[row] = test_folder_id(row);
    }
    int64_t shape[3] = {rows, 8, 8};
    snprintf(path, sizeof path, "%s/%s/grid.npy", directory, split);
    ck_assert_int_eq(cm_npy_write(path, CM_NPY_F32, 3, shape, grid), CM_OK);
    shape[1] = 2;
    snprintf(path, sizeof path, "%s/%s/cat.npy", directory, split);
    ck_assert_int_eq(cm_npy_write(path, CM_NPY_I64, 2, shape, categories), CM_OK);
    shape[1] = 6;
    snprintf(path, sizeof path, "%s/%s/text.npy", directory, split);
    ck_assert_int_eq(cm_npy_write(path, CM_NPY_I32, 2, shape, tokens), CM_OK);
    if (labelled) {
        snprintf(path, sizeof path, "%s/%s/labels.npy", directory, split);
        shape[1] = 2;
        ck_assert_int_eq(options->regression ? cm_npy_write(path, CM_NPY_F32, 2, shape, targets)
                                             : cm_npy_write(path, CM_NPY_I64, 1, shape, classes),
                         CM_OK);
    }
    if (options->with_ids) {
        snprintf(path, sizeof path, "%s/%s/ids.npy", directory, split);
        ck_assert_int_eq(cm_npy_write(path, CM_NPY_I32, 1, shape, ids), CM_OK);
    }
    free(grid);
    free(classes);
    free(targets);
    free(categories);
    free(tokens);
    free(ids);
}

void test_folder_write(const char *directory, const test_folder_options_t *options) {
    mkdir(directory, 0755);
    char path[600], manifest[2048];
    snprintf(
        manifest, sizeof manifest,
        "{\"format\": \"committee-dataset/1\", \"name\": \"synthetic-%s\",\n"
        " \"task\": %s,\n"
        " \"splits\": [\"train\", \"test\"%s],\n"
        " \"views\": {\n"
        "   \"grid\": {\"kind\": \"dense\", \"normalize\": {\"mean\": [0.25], \"std\": [0.5]}},\n"
        "   \"pool\": {\"from\": \"grid\", \"transform\": \"avgpool:2\"},\n"
        "   \"cat\": {\"kind\": \"categorical\", \"cardinality\": [5, 7]},\n"
        "   \"text\": {\"kind\": \"tokens\", \"vocab\": 50, \"pad\": 0}}}\n",
        options->regression ? "regression" : "classification",
        options->regression
            ? "{\"type\": \"regression\", \"targets\": 2}"
            : "{\"type\": \"classification\", \"classes\": 3, \"class_names\": [\"a\", \"b\", "
              "\"c\"]}",
        options->transfer_rows > 0 ? ", \"transfer\"" : "");
    snprintf(path, sizeof path, "%s/dataset.json", directory);
    test_folder_write_text(path, manifest);
    cm_rng_t rng;
    cm_rng_seed(&rng, options->seed);
    write_split(directory, "train", options->train_rows, options, 1, &rng);
    write_split(directory, "test", options->test_rows, options, 1, &rng);
    if (options->transfer_rows > 0)
        write_split(directory, "transfer", options->transfer_rows, options, 0, &rng);
}
