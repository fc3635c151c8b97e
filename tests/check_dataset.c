/*
 * cm_dataset: Fashion-MNIST loading against small gzip IDX files written at
 * test time into a mkdtemp directory (20 training and 10 test images of
 * seeded random pixels, plus a ramp, an all-white and an all-black image
 * whose pooled values are worked out by hand).  Covers the three views
 * (shapes and every value against an independent computation), labels and id
 * order, subsets, the data directory rules, the fingerprint (its exact
 * definition, equal across views, different when a file or the subset
 * changes), and every error a broken file can cause, each checked by status
 * code and by the sentence naming the file and the problem.  If Debian's
 * dataset-fashion-mnist is installed, the real "pool7" view is loaded too.
 */
#include "cm_dataset.h"
#include "cm_npy.h"
#include "cm_rng.h"
#include "cm_sha256.h"
#include "test_folder.h"
#include "test_util.h"

#include <check.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

enum {
    SIDE = 28,
    PIXELS = SIDE * SIDE,
    TRAIN_COUNT = 20,
    TEST_COUNT = 10,
    TRAIN_IMAGE_SEED = 11,
    TEST_IMAGE_SEED = 12,
};

#define TRAIN_IMAGES "train-images-idx3-ubyte.gz"
#define TRAIN_LABELS "train-labels-idx1-ubyte.gz"
#define TEST_IMAGES  "t10k-images-idx3-ubyte.gz"
#define TEST_LABELS  "t10k-labels-idx1-ubyte.gz"
#define DEBIAN_DIR   "/usr/share/datasets/fashion-mnist"

static const char *const source_files[] = {TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS};

static const double pixel_mean = 0.2860, pixel_std = 0.3530;

/* ---- Writing test files ---- */

/*
 * The pixels of a split: seeded random bytes, except that the training split
 * starts with a ramp (pixel = row * 28 + col, capped at 255), an all-white
 * and an all-black image.
 */
static uint8_t *make_pixels(int count, uint64_t seed, bool special_images) {
    uint8_t *pixels = malloc((size_t)count * PIXELS);
    ck_assert_ptr_nonnull(pixels);
    cm_rng_t rng;
    cm_rng_seed(&rng, seed);
    for (int i = 0; i < count * PIXELS; i++) pixels[i] = (uint8_t)cm_rng_u32(&rng);
    if (special_images) {
        for (int i = 0; i < PIXELS; i++) pixels[i] = (uint8_t)(i < 255 ? i : 255);
        memset(pixels + PIXELS, 255, PIXELS);
        memset(pixels + 2 * PIXELS, 0, PIXELS);
    }
    return pixels;
}

/* Labels in a pattern that is not the identity, so id order shows. */
static uint8_t expected_label(int id) { return (uint8_t)((id * 7 + 3) % 10); }

static void store_big_endian(uint8_t *bytes, uint32_t word) {
    bytes[0] = (uint8_t)(word >> 24);
    bytes[1] = (uint8_t)(word >> 16);
    bytes[2] = (uint8_t)(word >> 8);
    bytes[3] = (uint8_t)word;
}

static void join_path(char *path, size_t size, const char *directory, const char *file) {
    int length = snprintf(path, size, "%s/%s", directory, file);
    ck_assert(length > 0 && (size_t)length < size);
}

/* Writes an IDX file (header from magic and dims, then body), gzip-compressed or not. */
static void write_idx(const char *directory, const char *file, uint32_t magic, const uint32_t *dims,
                      int dim_count, const uint8_t *body, size_t body_size, bool compress) {
    char path[512];
    join_path(path, sizeof path, directory, file);
    uint8_t header[16];
    store_big_endian(header, magic);
    for (int d = 0; d < dim_count; d++) store_big_endian(header + 4 + 4 * d, dims[d]);
    size_t header_size = 4 + 4 * (size_t)dim_count;
    if (compress) {
        gzFile gz = gzopen(path, "wb");
        ck_assert_ptr_nonnull(gz);
        ck_assert_int_eq(gzwrite(gz, header, (unsigned)header_size), (int)header_size);
        if (body_size > 0) ck_assert_int_eq(gzwrite(gz, body, (unsigned)body_size), (int)body_size);
        ck_assert_int_eq(gzclose(gz), Z_OK);
    } else {
        FILE *plain = fopen(path, "wb");
        ck_assert_ptr_nonnull(plain);
        ck_assert_uint_eq(fwrite(header, 1, header_size, plain), header_size);
        ck_assert_uint_eq(fwrite(body, 1, body_size, plain), body_size);
        ck_assert_int_eq(fclose(plain), 0);
    }
}

/* Images file with `count` images of rows x cols taken from `pixels`. */
static void write_images(const char *directory, const char *file, uint32_t magic, int count,
                         uint32_t rows, uint32_t cols, const uint8_t *pixels, bool compress) {
    uint32_t dims[3] = {(uint32_t)count, rows, cols};
    write_idx(directory, file, magic, dims, 3, pixels, (size_t)count * rows * cols, compress);
}

/* Labels file of `count` labels in the expected pattern, with `bad_label` at id 5 if >= 0. */
static void write_labels(const char *directory, const char *file, int count, int bad_label,
                         bool compress) {
    uint8_t labels[64];
    ck_assert_int_le(count, (int)sizeof labels);
    for (int id = 0; id < count; id++) labels[id] = expected_label(id);
    if (bad_label >= 0) labels[5] = (uint8_t)bad_label;
    uint32_t dims[1] = {(uint32_t)count};
    write_idx(directory, file, 0x00000801, dims, 1, labels, (size_t)count, compress);
}

/* A directory holding four valid files: 20 training and 10 test examples. */
typedef struct {
    char directory[64];
    uint8_t *train_pixels; /* [TRAIN_COUNT][28][28] */
    uint8_t *test_pixels;  /* [TEST_COUNT][28][28] */
} fixture_t;

static void fixture_setup(fixture_t *fixture) {
    snprintf(fixture->directory, sizeof fixture->directory, "/tmp/check_dataset.XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(fixture->directory));
    fixture->train_pixels = make_pixels(TRAIN_COUNT, TRAIN_IMAGE_SEED, true);
    fixture->test_pixels = make_pixels(TEST_COUNT, TEST_IMAGE_SEED, false);
    write_images(fixture->directory, TRAIN_IMAGES, 0x00000803, TRAIN_COUNT, SIDE, SIDE,
                 fixture->train_pixels, true);
    write_labels(fixture->directory, TRAIN_LABELS, TRAIN_COUNT, -1, true);
    write_images(fixture->directory, TEST_IMAGES, 0x00000803, TEST_COUNT, SIDE, SIDE,
                 fixture->test_pixels, true);
    write_labels(fixture->directory, TEST_LABELS, TEST_COUNT, -1, true);
}

static void fixture_teardown(fixture_t *fixture) {
    for (size_t i = 0; i < sizeof source_files / sizeof source_files[0]; i++) {
        char path[512];
        join_path(path, sizeof path, fixture->directory, source_files[i]);
        unlink(path);
    }
    ck_assert_int_eq(rmdir(fixture->directory), 0);
    free(fixture->train_pixels);
    free(fixture->test_pixels);
}

static cm_status_t load_from(fixture_t *fixture, const char *view, int max_train, int max_test,
                             cm_dataset_t **dataset) {
    cm_dataset_options_t options = {
        .directory = fixture->directory, .max_train = max_train, .max_test = max_test};
    return cm_dataset_load(dataset, "fashion-mnist", view, &options);
}

/* Loading must fail with `expected`, a NULL dataset, and a sentence holding both fragments. */
static void assert_load_fails(fixture_t *fixture, const char *view, int max_train,
                              cm_status_t expected, const char *fragment, const char *fragment2) {
    static cm_dataset_t sentinel; /* the load must overwrite the pointer with NULL */
    cm_dataset_t *dataset = &sentinel;
    cm_clear_error();
    cm_status_t status = load_from(fixture, view, max_train, 0, &dataset);
    const char *error = cm_last_error();
    ck_assert_msg(status == expected, "status %s, want %s (%s)", cm_status_name(status),
                  cm_status_name(expected), error);
    ck_assert_ptr_null(dataset);
    ck_assert_msg(strstr(error, fragment) != NULL, "error \"%s\" lacks \"%s\"", error, fragment);
    if (fragment2)
        ck_assert_msg(strstr(error, fragment2) != NULL, "error \"%s\" lacks \"%s\"", error,
                      fragment2);
}

/* ---- Views, values, labels, ids ---- */

/* The normalized average of a pool x pool block, computed independently of the loader. */
static double expected_feature(const uint8_t *image, int pool, int row, int col) {
    double sum = 0;
    for (int y = row * pool; y < (row + 1) * pool; y++)
        for (int x = col * pool; x < (col + 1) * pool; x++) sum += image[y * SIDE + x] / 255.0;
    return (sum / (pool * pool) - pixel_mean) / pixel_std;
}

/* The features of every row of a split, gathered (caller frees). */
static float *gather_all(const cm_dataset_t *dataset, cm_split_t split) {
    int count = dataset->splits[split].count;
    float *features = malloc(sizeof(float) * (size_t)count * (size_t)dataset->features + 1);
    ck_assert_ptr_nonnull(features);
    cm_dataset_gather_range(dataset, split, 0, count, features);
    return features;
}

static void check_split_values(const cm_dataset_t *dataset, cm_split_t which, const uint8_t *pixels,
                               int count, int pool) {
    const cm_split_data_t *split = &dataset->splits[which];
    int side = SIDE / pool, features = side * side;
    ck_assert_int_eq(split->count, count);
    float *inputs = gather_all(dataset, which);
    for (int id = 0; id < count; id++) {
        ck_assert_int_eq(split->labels[id], expected_label(id));
        for (int row = 0; row < side; row++)
            for (int col = 0; col < side; col++) {
                double want = expected_feature(pixels + (size_t)id * PIXELS, pool, row, col);
                float got = inputs[(size_t)id * features + row * side + col];
                ck_assert_msg(fabs(got - want) < 1e-5, "pool %d id %d (%d,%d): %g, want %g", pool,
                              id, row, col, got, want);
            }
    }
    free(inputs);
}

START_TEST(test_all_views_shapes_values_labels) {
    static const struct {
        const char *view;
        int pool;
    } views[] = {{"full", 1}, {"pool14", 2}, {"pool7", 4}};
    fixture_t fixture;
    fixture_setup(&fixture);
    for (size_t v = 0; v < sizeof views / sizeof views[0]; v++) {
        cm_dataset_t *dataset = NULL;
        ck_assert_int_eq(load_from(&fixture, views[v].view, 0, 0, &dataset), CM_OK);
        int side = SIDE / views[v].pool;
        ck_assert_str_eq(dataset->name, "fashion-mnist");
        ck_assert_str_eq(dataset->view, views[v].view);
        ck_assert_int_eq(dataset->classes, 10);
        ck_assert_int_eq(dataset->height, side);
        ck_assert_int_eq(dataset->width, side);
        ck_assert_int_eq(dataset->features, side * side);
        ck_assert_int_eq(dataset->task, CM_TASK_CLASSIFICATION);
        ck_assert_int_eq(dataset->view_kind, CM_VIEW_DENSE);
        ck_assert_int_eq(dataset->view_dtype, CM_NPY_U8);
        ck_assert_ptr_null(dataset->splits[CM_SPLIT_TRAIN].ids);
        check_split_values(dataset, CM_SPLIT_TRAIN, fixture.train_pixels, TRAIN_COUNT,
                           views[v].pool);
        check_split_values(dataset, CM_SPLIT_TEST, fixture.test_pixels, TEST_COUNT, views[v].pool);
        cm_dataset_free(&dataset);
        ck_assert_ptr_null(dataset);
    }
    fixture_teardown(&fixture);
}
END_TEST

/*
 * Values worked out by hand.  The ramp's top-left 4x4 block holds
 * 28r + c for r, c in 0..3: sum 4*28*6 + 4*6 = 696, average 43.5, so the
 * feature is (43.5/255 - 0.2860) / 0.3530 = -0.326946...  White is
 * (1 - 0.2860) / 0.3530 = 2.022663, black -0.2860 / 0.3530 = -0.810198.
 */
START_TEST(test_pool7_hand_computed) {
    fixture_t fixture;
    fixture_setup(&fixture);
    cm_dataset_t *dataset = NULL;
    ck_assert_int_eq(load_from(&fixture, "pool7", 0, 0, &dataset), CM_OK);
    float *inputs = gather_all(dataset, CM_SPLIT_TRAIN);
    const float *ramp = inputs;
    const float *white = ramp + 49, *black = ramp + 2 * 49;
    ck_assert_float_eq_tol(ramp[0], -0.326946f, 1e-5f);
    /* Block (0,1): 28r + c for c in 4..7: sum 672 + 4*22 = 760, average 47.5. */
    ck_assert_float_eq_tol(ramp[1], (float)((47.5 / 255 - 0.2860) / 0.3530), 1e-6f);
    for (int feature = 0; feature < 49; feature++) {
        ck_assert_float_eq_tol(white[feature], 2.022663f, 1e-5f);
        ck_assert_float_eq_tol(black[feature], -0.810198f, 1e-5f);
    }
    ck_assert_float_eq_tol(cm_dataset_background(dataset), -0.810198f, 1e-5f);
    free(inputs);
    cm_dataset_free(&dataset);
    fixture_teardown(&fixture);
}
END_TEST

START_TEST(test_subset_is_prefix) {
    fixture_t fixture;
    fixture_setup(&fixture);
    cm_dataset_t *whole = NULL, *subset = NULL;
    ck_assert_int_eq(load_from(&fixture, "pool14", 0, 0, &whole), CM_OK);
    ck_assert_int_eq(load_from(&fixture, "pool14", 7, 3, &subset), CM_OK);
    ck_assert_int_eq(subset->splits[CM_SPLIT_TRAIN].count, 7);
    ck_assert_int_eq(subset->splits[CM_SPLIT_TEST].count, 3);
    ck_assert_str_eq(subset->fingerprint, whole->fingerprint);
    for (int split = 0; split < 2; split++) {
        const cm_split_data_t *part = &subset->splits[split], *all = &whole->splits[split];
        float *part_inputs = gather_all(subset, (cm_split_t)split);
        float *all_inputs = gather_all(whole, (cm_split_t)split);
        ck_assert_mem_eq(part_inputs, all_inputs, sizeof(float) * (size_t)(part->count * 196));
        ck_assert_mem_eq(part->labels, all->labels, sizeof(int32_t) * (size_t)part->count);
        free(part_inputs);
        free(all_inputs);
    }
    /* The rows beyond the subset are not served: their ids are unknown. */
    ck_assert_int_eq(cm_dataset_row(subset, CM_SPLIT_TRAIN, 6), 6);
    ck_assert_int_eq(cm_dataset_row(subset, CM_SPLIT_TRAIN, 7), -1);
    ck_assert_int_eq(cm_dataset_row(whole, CM_SPLIT_TRAIN, 7), 7);
    cm_dataset_free(&whole);
    cm_dataset_free(&subset);
    cm_dataset_free(&subset); /* NULL-safe, twice */
    cm_dataset_free(NULL);
    fixture_teardown(&fixture);
}
END_TEST

START_TEST(test_directory_rules) {
    fixture_t fixture;
    fixture_setup(&fixture);
    cm_dataset_t *dataset = NULL;

    /* No options: the environment variable names the directory. */
    ck_assert_int_eq(setenv("COMMITTEE_DATA_DIR", fixture.directory, 1), 0);
    ck_assert_int_eq(cm_dataset_load(&dataset, "fashion-mnist", "pool7", NULL), CM_OK);
    ck_assert_int_eq(dataset->splits[CM_SPLIT_TRAIN].count, TRAIN_COUNT);
    cm_dataset_free(&dataset);

    /* The option wins over the environment. */
    ck_assert_int_eq(setenv("COMMITTEE_DATA_DIR", "/nonexistent/committee", 1), 0);
    ck_assert_int_eq(load_from(&fixture, "pool7", 0, 0, &dataset), CM_OK);
    cm_dataset_free(&dataset);
    ck_assert_int_eq(cm_dataset_load(&dataset, "fashion-mnist", "pool7", NULL), CM_ERR_NOT_FOUND);
    ck_assert_ptr_nonnull(strstr(cm_last_error(), "/nonexistent/committee/" TRAIN_IMAGES));
    ck_assert_int_eq(unsetenv("COMMITTEE_DATA_DIR"), 0);
    fixture_teardown(&fixture);
}
END_TEST

/* ---- Fingerprint ---- */

static void fingerprint_of(fixture_t *fixture, const char *view, int max_train, int max_test,
                           char fingerprint[65]) {
    cm_dataset_t *dataset = NULL;
    ck_assert_int_eq(load_from(fixture, view, max_train, max_test, &dataset), CM_OK);
    memcpy(fingerprint, dataset->fingerprint, 65);
    cm_dataset_free(&dataset);
}

/* The canonical manifest of the built-in, written out by hand (cm_manifest.h's rule). */
static const char fashion_canonical[] =
    "{\"format\":\"committee-dataset/"
    "1\",\"name\":\"fashion-mnist\",\"splits\":[\"train\",\"test\"],"
    "\"task\":{\"class_names\":[\"T-shirt/top\",\"Trouser\",\"Pullover\",\"Dress\",\"Coat\","
    "\"Sandal\",\"Shirt\",\"Sneaker\",\"Bag\",\"Ankle boot\"],\"classes\":10,\"type\":"
    "\"classification\"},\"views\":{\"full\":{\"kind\":\"dense\",\"normalize\":{\"divide\":255,"
    "\"mean\":[0.28599999999999998],\"std\":[0.35299999999999998]}},\"pool14\":{\"from\":\"full\","
    "\"transform\":\"avgpool:2\"},\"pool7\":{\"from\":\"full\",\"transform\":\"avgpool:4\"}}}";

/* The SHA-256 of bytes, in hex. */
static void hex_sha256(const void *bytes, size_t size, char hex[65]) {
    cm_sha256_t hash;
    uint8_t digest[32];
    cm_sha256_init(&hash);
    cm_sha256_update(&hash, bytes, size);
    cm_sha256_final(&hash, digest);
    cm_sha256_hex(digest, hex);
}

/* The bytes of a version 1.0 .npy file, built here from NumPy's rule (caller frees). */
static uint8_t *npy_bytes(const char *descr, const char *shape, const void *data, size_t bytes,
                          size_t *size) {
    char dict[256];
    int length = snprintf(dict, sizeof dict,
                          "{'descr': '%s', 'fortran_order': False, 'shape': %s, }", descr, shape);
    size_t header = ((size_t)length + 11 + 63) / 64 * 64;
    uint8_t *out = malloc(header + bytes);
    ck_assert_ptr_nonnull(out);
    memcpy(out, "\x93NUMPY\x01\x00", 8);
    out[8] = (uint8_t)((header - 10) & 0xff);
    out[9] = (uint8_t)((header - 10) >> 8);
    memcpy(out + 10, dict, (size_t)length);
    memset(out + 10 + length, ' ', header - 10 - (size_t)length - 1);
    out[header - 1] = '\n';
    memcpy(out + header, data, bytes);
    *size = header + bytes;
    return out;
}

/* One line of the fingerprint text for a file's bytes. */
static void fingerprint_line(cm_sha256_t *hash, const char *relative, const uint8_t *bytes,
                             size_t size) {
    char hex[65], line[256];
    hex_sha256(bytes, size, hex);
    int length = snprintf(line, sizeof line, "%s %zu %s\n", relative, size, hex);
    cm_sha256_update(hash, line, (size_t)length);
}

START_TEST(test_fingerprint_definition) {
    fixture_t fixture;
    fixture_setup(&fixture);
    /* The rule of cm_dataset.h, computed independently: the preamble, the canonical manifest,
     * then per split labels.npy and full.npy as the export writes them. */
    cm_sha256_t hash;
    cm_sha256_init(&hash);
    static const char preamble[] = "committee-dataset-fingerprint/1\n";
    cm_sha256_update(&hash, preamble, strlen(preamble));
    cm_sha256_update(&hash, fashion_canonical, strlen(fashion_canonical));
    cm_sha256_update(&hash, "\n", 1);
    const struct {
        const char *split;
        int count;
        const uint8_t *pixels;
    } splits[] = {{"train", TRAIN_COUNT, fixture.train_pixels},
                  {"test", TEST_COUNT, fixture.test_pixels}};
    for (int split = 0; split < 2; split++) {
        int64_t labels[TRAIN_COUNT];
        for (int id = 0; id < splits[split].count; id++) labels[id] = expected_label(id);
        char shape[64], relative[64];
        size_t size;
        snprintf(shape, sizeof shape, "(%d,)", splits[split].count);
        uint8_t *bytes =
            npy_bytes("<i8", shape, labels, sizeof(int64_t) * (size_t)splits[split].count, &size);
        snprintf(relative, sizeof relative, "%s/labels.npy", splits[split].split);
        fingerprint_line(&hash, relative, bytes, size);
        free(bytes);
        snprintf(shape, sizeof shape, "(%d, 28, 28)", splits[split].count);
        bytes = npy_bytes("|u1", shape, splits[split].pixels, (size_t)splits[split].count * PIXELS,
                          &size);
        snprintf(relative, sizeof relative, "%s/full.npy", splits[split].split);
        fingerprint_line(&hash, relative, bytes, size);
        free(bytes);
    }
    uint8_t digest[32];
    char want[65], got[65];
    cm_sha256_final(&hash, digest);
    cm_sha256_hex(digest, want);
    fingerprint_of(&fixture, "full", 0, 0, got);
    ck_assert_str_eq(got, want);
    cm_dataset_t *dataset = NULL;
    ck_assert_int_eq(load_from(&fixture, "pool7", 0, 0, &dataset), CM_OK);
    ck_assert_str_eq(dataset->manifest->canonical, fashion_canonical);
    char manifest_hash[65];
    hex_sha256(fashion_canonical, strlen(fashion_canonical), manifest_hash);
    ck_assert_str_eq(dataset->manifest_sha256, manifest_hash);
    cm_dataset_free(&dataset);
    fixture_teardown(&fixture);
}
END_TEST

START_TEST(test_fingerprint_across_views_and_changes) {
    fixture_t fixture;
    fixture_setup(&fixture);
    char full[65], pool14[65], pool7[65], explicit_all[65], subset[65], changed[65];
    fingerprint_of(&fixture, "full", 0, 0, full);
    fingerprint_of(&fixture, "pool14", 0, 0, pool14);
    fingerprint_of(&fixture, "pool7", 0, 0, pool7);
    ck_assert_str_eq(full, pool14);
    ck_assert_str_eq(full, pool7);
    ck_assert_uint_eq(strspn(full, "0123456789abcdef"), 64);

    /* Asking for every example explicitly is the same split. */
    fingerprint_of(&fixture, "pool7", TRAIN_COUNT, TEST_COUNT, explicit_all);
    ck_assert_str_eq(full, explicit_all);

    /* Subsets are the trainer's choice: the dataset is the same. */
    fingerprint_of(&fixture, "pool7", 10, 0, subset);
    ck_assert_str_eq(full, subset);
    char test_subset[65];
    fingerprint_of(&fixture, "pool7", 0, 5, test_subset);
    ck_assert_str_eq(full, test_subset);

    /* One pixel of one test image changed. */
    fixture.test_pixels[3 * PIXELS + 100] ^= 1;
    write_images(fixture.directory, TEST_IMAGES, 0x00000803, TEST_COUNT, SIDE, SIDE,
                 fixture.test_pixels, true);
    fingerprint_of(&fixture, "pool7", 0, 0, changed);
    ck_assert_str_ne(full, changed);
    fixture_teardown(&fixture);
}
END_TEST

/* ---- Errors ---- */

START_TEST(test_missing_file) {
    fixture_t fixture;
    fixture_setup(&fixture);
    char path[512];
    join_path(path, sizeof path, fixture.directory, TRAIN_LABELS);
    ck_assert_int_eq(unlink(path), 0);
    assert_load_fails(&fixture, "full", 0, CM_ERR_NOT_FOUND, path, "No such file");
    fixture_teardown(&fixture);
}
END_TEST

START_TEST(test_bad_magic) {
    fixture_t fixture;
    fixture_setup(&fixture);
    write_images(fixture.directory, TEST_IMAGES, 0x00000804, TEST_COUNT, SIDE, SIDE,
                 fixture.test_pixels, true);
    assert_load_fails(&fixture, "full", 0, CM_ERR_FORMAT, TEST_IMAGES,
                      "bad magic number 0x00000804");
    /* A labels file where an images file belongs. */
    write_labels(fixture.directory, TRAIN_IMAGES, TRAIN_COUNT, -1, true);
    assert_load_fails(&fixture, "full", 0, CM_ERR_FORMAT, TRAIN_IMAGES, "magic");
    fixture_teardown(&fixture);
}
END_TEST

START_TEST(test_wrong_dimensions) {
    fixture_t fixture;
    fixture_setup(&fixture);
    write_images(fixture.directory, TRAIN_IMAGES, 0x00000803, TRAIN_COUNT, 27, 28,
                 fixture.train_pixels, true);
    assert_load_fails(&fixture, "pool7", 0, CM_ERR_SHAPE, TRAIN_IMAGES, "27x28");
    fixture_teardown(&fixture);
}
END_TEST

START_TEST(test_count_mismatch) {
    fixture_t fixture;
    fixture_setup(&fixture);
    write_labels(fixture.directory, TEST_LABELS, TEST_COUNT - 1, -1, true);
    assert_load_fails(&fixture, "pool7", 0, CM_ERR_MISMATCH, TEST_LABELS, "9 labels");
    ck_assert_ptr_nonnull(strstr(cm_last_error(), TEST_IMAGES));
    fixture_teardown(&fixture);
}
END_TEST

static void truncate_file(fixture_t *fixture, const char *file, long remove_bytes) {
    char path[512];
    join_path(path, sizeof path, fixture->directory, file);
    FILE *handle = fopen(path, "rb");
    ck_assert_ptr_nonnull(handle);
    ck_assert_int_eq(fseek(handle, 0, SEEK_END), 0);
    long size = ftell(handle);
    fclose(handle);
    ck_assert_int_eq(truncate(path, size - remove_bytes), 0);
}

START_TEST(test_truncated_gzip) {
    fixture_t fixture;
    fixture_setup(&fixture);
    /* Cut in the middle of the compressed images. */
    truncate_file(&fixture, TRAIN_IMAGES, 6000);
    assert_load_fails(&fixture, "full", 0, CM_ERR_FORMAT, TRAIN_IMAGES,
                      "truncated: header promises 20 images, file holds");
    fixture_teardown(&fixture);
}
END_TEST

START_TEST(test_truncated_gzip_trailer) {
    fixture_t fixture;
    fixture_setup(&fixture);
    /* All the data is there but the CRC and length trailer is cut. */
    truncate_file(&fixture, TEST_LABELS, 4);
    assert_load_fails(&fixture, "full", 0, CM_ERR_FORMAT, TEST_LABELS, "truncated");
    fixture_teardown(&fixture);
}
END_TEST

START_TEST(test_header_promises_more_than_body) {
    fixture_t fixture;
    fixture_setup(&fixture);
    /* A complete gzip stream whose IDX body holds 15 of the 20 promised images. */
    uint32_t dims[3] = {TRAIN_COUNT, SIDE, SIDE};
    write_idx(fixture.directory, TRAIN_IMAGES, 0x00000803, dims, 3, fixture.train_pixels,
              15 * PIXELS, true);
    assert_load_fails(&fixture, "pool7", 0, CM_ERR_FORMAT, TRAIN_IMAGES,
                      "truncated: header promises 20 images, file holds 15");
    /* Labels: promises 10, holds 4. */
    uint8_t labels[4] = {1, 2, 3, 4};
    uint32_t label_dims[1] = {TEST_COUNT};
    write_idx(fixture.directory, TEST_LABELS, 0x00000801, label_dims, 1, labels, 4, true);
    write_images(fixture.directory, TRAIN_IMAGES, 0x00000803, TRAIN_COUNT, SIDE, SIDE,
                 fixture.train_pixels, true);
    assert_load_fails(&fixture, "pool7", 0, CM_ERR_FORMAT, TEST_LABELS,
                      "truncated: header promises 10 labels, file holds 4");
    fixture_teardown(&fixture);
}
END_TEST

START_TEST(test_more_data_than_promised) {
    fixture_t fixture;
    fixture_setup(&fixture);
    uint32_t dims[3] = {TRAIN_COUNT - 1, SIDE, SIDE};
    write_idx(fixture.directory, TRAIN_IMAGES, 0x00000803, dims, 3, fixture.train_pixels,
              TRAIN_COUNT * PIXELS, true);
    write_labels(fixture.directory, TRAIN_LABELS, TRAIN_COUNT - 1, -1, true);
    assert_load_fails(&fixture, "pool7", 0, CM_ERR_FORMAT, TRAIN_IMAGES,
                      "more data than the 19 images");
    fixture_teardown(&fixture);
}
END_TEST

START_TEST(test_absurd_count_fails_before_allocating) {
    fixture_t fixture;
    fixture_setup(&fixture);
    uint8_t labels[TRAIN_COUNT];
    for (int id = 0; id < TRAIN_COUNT; id++) labels[id] = expected_label(id);
    uint32_t dims[1] = {0x7fffffff};
    write_idx(fixture.directory, TRAIN_LABELS, 0x00000801, dims, 1, labels, TRAIN_COUNT, true);
    assert_load_fails(&fixture, "pool7", 0, CM_ERR_FORMAT, TRAIN_LABELS,
                      "header promises 2147483647 labels");
    fixture_teardown(&fixture);
}
END_TEST

START_TEST(test_corrupt_crc) {
    fixture_t fixture;
    fixture_setup(&fixture);
    char path[512];
    join_path(path, sizeof path, fixture.directory, TEST_IMAGES);
    FILE *file = fopen(path, "r+b");
    ck_assert_ptr_nonnull(file);
    ck_assert_int_eq(fseek(file, -8, SEEK_END), 0); /* the CRC-32 of the trailer */
    int byte = fgetc(file);
    ck_assert_int_eq(fseek(file, -8, SEEK_END), 0);
    fputc(byte ^ 0xff, file);
    fclose(file);
    assert_load_fails(&fixture, "pool7", 0, CM_ERR_FORMAT, TEST_IMAGES, "corrupt gzip data");
    fixture_teardown(&fixture);
}
END_TEST

START_TEST(test_label_out_of_range) {
    fixture_t fixture;
    fixture_setup(&fixture);
    write_labels(fixture.directory, TRAIN_LABELS, TRAIN_COUNT, 12, true);
    assert_load_fails(&fixture, "pool7", 0, CM_ERR_OUT_OF_RANGE, TRAIN_LABELS,
                      "label 12 of example 5");
    /* Labels beyond the subset are checked too: the fingerprint covers them. */
    assert_load_fails(&fixture, "pool7", 3, CM_ERR_OUT_OF_RANGE, TRAIN_LABELS, "label 12");
    fixture_teardown(&fixture);
}
END_TEST

START_TEST(test_not_gzip) {
    fixture_t fixture;
    fixture_setup(&fixture);
    write_labels(fixture.directory, TEST_LABELS, TEST_COUNT, -1, false);
    assert_load_fails(&fixture, "pool7", 0, CM_ERR_FORMAT, TEST_LABELS, "not a gzip file");
    fixture_teardown(&fixture);
}
END_TEST

START_TEST(test_trailing_garbage) {
    fixture_t fixture;
    fixture_setup(&fixture);
    char path[512];
    join_path(path, sizeof path, fixture.directory, TEST_LABELS);
    FILE *file = fopen(path, "ab");
    ck_assert_ptr_nonnull(file);
    fputs("junk", file);
    fclose(file);
    assert_load_fails(&fixture, "pool7", 0, CM_ERR_FORMAT, TEST_LABELS, "trailing garbage");
    fixture_teardown(&fixture);
}
END_TEST

START_TEST(test_unknown_names_and_bad_options) {
    fixture_t fixture;
    fixture_setup(&fixture);
    assert_load_fails(&fixture, "pool5", 0, CM_ERR_INVALID_ARG, "pool5", "full,pool14,pool7");

    cm_dataset_t *dataset = NULL;
    ck_assert_int_eq(cm_dataset_load(&dataset, "mnist", "full", NULL), CM_ERR_NOT_FOUND);
    ck_assert_ptr_null(dataset);
    ck_assert_ptr_nonnull(strstr(cm_last_error(), "\"mnist\""));
    ck_assert_ptr_nonnull(strstr(cm_last_error(), "fashion-mnist"));

    assert_load_fails(&fixture, "pool7", TRAIN_COUNT + 1, CM_ERR_INVALID_ARG, "max_train is 21",
                      "only 20 examples");
    assert_load_fails(&fixture, "pool7", -1, CM_ERR_INVALID_ARG, "max_train (-1)", NULL);
    cm_dataset_options_t options = {.directory = fixture.directory, .max_test = TEST_COUNT + 5};
    ck_assert_int_eq(cm_dataset_load(&dataset, "fashion-mnist", "full", &options),
                     CM_ERR_INVALID_ARG);
    ck_assert_ptr_nonnull(strstr(cm_last_error(), "max_test is 15"));
    fixture_teardown(&fixture);
}
END_TEST

START_TEST(test_split_names_and_views) {
    cm_split_t split = CM_SPLIT_COUNT;
    ck_assert_int_eq(cm_split_parse("train", &split), CM_OK);
    ck_assert_int_eq(split, CM_SPLIT_TRAIN);
    ck_assert_int_eq(cm_split_parse("test", &split), CM_OK);
    ck_assert_int_eq(split, CM_SPLIT_TEST);
    ck_assert_str_eq(cm_split_name(CM_SPLIT_TRAIN), "train");
    ck_assert_str_eq(cm_split_name(CM_SPLIT_TEST), "test");
    ck_assert_int_eq(cm_split_parse("valid", &split), CM_OK);
    ck_assert_int_eq(split, CM_SPLIT_VALID);
    ck_assert_int_eq(cm_split_parse("transfer", &split), CM_OK);
    ck_assert_int_eq(split, CM_SPLIT_TRANSFER);
    ck_assert_int_eq(cm_split_parse("dev", &split), CM_ERR_INVALID_ARG);
    ck_assert_ptr_nonnull(strstr(cm_last_error(), "\"dev\""));
    ck_assert_ptr_nonnull(strstr(cm_last_error(), "train, test, valid, transfer"));
    ck_assert_int_eq(split, CM_SPLIT_TRANSFER);

    ck_assert_str_eq(cm_dataset_views("fashion-mnist"), "full,pool14,pool7");
    ck_assert_ptr_null(cm_dataset_views("movielens-nope"));
}
END_TEST

/* ---- The real files, when installed ---- */

START_TEST(test_real_fashion_mnist_pool7) {
    if (access(DEBIAN_DIR "/" TRAIN_IMAGES, R_OK) != 0) {
        fprintf(stderr, "check_dataset: %s not installed, skipping the real-data test\n",
                DEBIAN_DIR);
        return;
    }
    cm_dataset_options_t options = {.directory = DEBIAN_DIR};
    cm_dataset_t *dataset = NULL;
    cm_status_t status = cm_dataset_load(&dataset, "fashion-mnist", "pool7", &options);
    ck_assert_msg(status == CM_OK, "%s", cm_last_error());
    ck_assert_int_eq(dataset->features, 49);
    ck_assert_int_eq(dataset->splits[CM_SPLIT_TRAIN].count, 60000);
    ck_assert_int_eq(dataset->splits[CM_SPLIT_TEST].count, 10000);
    for (int split = 0; split < 2; split++) {
        const cm_split_data_t *data = &dataset->splits[split];
        int per_class[10] = {0};
        for (int id = 0; id < data->count; id++) {
            ck_assert_int_ge(data->labels[id], 0);
            ck_assert_int_lt(data->labels[id], 10);
            per_class[data->labels[id]]++;
        }
        for (int label = 0; label < 10; label++)
            ck_assert_msg(per_class[label] > 0, "%s split has no label %d",
                          cm_split_name((cm_split_t)split), label);
    }
    /* Pooling keeps the mean, and the constants are the training set's pixel statistics. */
    const cm_split_data_t *train = &dataset->splits[CM_SPLIT_TRAIN];
    float *inputs = gather_all(dataset, CM_SPLIT_TRAIN);
    double sum = 0;
    for (size_t i = 0; i < (size_t)train->count * 49; i++) sum += inputs[i];
    free(inputs);
    double mean = sum / ((double)train->count * 49);
    ck_assert_msg(fabs(mean) < 0.01, "normalized training mean %g is not near 0", mean);
    cm_dataset_free(&dataset);
}
END_TEST

/* ---- Dataset folders ---- */

/* A fresh temp dir with a synthetic folder in DIR/data, and a private hash cache in DIR/cache. */
typedef struct {
    char root[256];
    char data[320];
    char cache[320];
} folder_t;

static void folder_setup(folder_t *folder, const test_folder_options_t *options) {
    test_util_temp_dir(folder->root, sizeof folder->root);
    ck_assert(folder->root[0]);
    snprintf(folder->data, sizeof folder->data, "%s/data", folder->root);
    snprintf(folder->cache, sizeof folder->cache, "%s/cache", folder->root);
    ck_assert_int_eq(setenv("COMMITTEE_CACHE_DIR", folder->cache, 1), 0);
    test_folder_write(folder->data, options);
}

static void folder_teardown(folder_t *folder) {
    test_util_remove_tree(folder->root);
    unsetenv("COMMITTEE_CACHE_DIR"); /* CK_FORK=no runs the next test in this process */
}

static const test_folder_options_t small_classification = {
    .train_rows = 40, .test_rows = 12, .seed = 5};

static void folder_path(const folder_t *folder, const char *file, char *path, size_t size) {
    int length = snprintf(path, size, "%s/%s", folder->data, file);
    ck_assert(length > 0 && (size_t)length < size);
}

/* Loading the folder must fail with `expected`, no dataset, and both fragments in the sentence. */
static void assert_folder_fails(const folder_t *folder, const char *view, cm_status_t expected,
                                const char *fragment, const char *fragment2) {
    static cm_dataset_t sentinel;
    cm_dataset_t *dataset = &sentinel;
    cm_clear_error();
    cm_status_t status = cm_dataset_load(&dataset, folder->data, view, NULL);
    const char *error = cm_last_error();
    ck_assert_msg(status == expected, "status %s, want %s (%s)", cm_status_name(status),
                  cm_status_name(expected), error);
    ck_assert_ptr_null(dataset);
    ck_assert_msg(strstr(error, fragment) != NULL, "error \"%s\" lacks \"%s\"", error, fragment);
    if (fragment2)
        ck_assert_msg(strstr(error, fragment2) != NULL, "error \"%s\" lacks \"%s\"", error,
                      fragment2);
    ck_assert_msg(strchr(error, '\n') == NULL, "error \"%s\" is more than one line", error);
}

/* Reads a float32 array back from a folder file (the data after the 128-byte header). */
static float *read_floats(const folder_t *folder, const char *file, size_t count) {
    char path[512];
    folder_path(folder, file, path, sizeof path);
    FILE *handle = fopen(path, "rb");
    ck_assert_ptr_nonnull(handle);
    float *values = malloc(sizeof(float) * count);
    ck_assert_int_eq(fseek(handle, 128, SEEK_SET), 0);
    ck_assert_uint_eq(fread(values, sizeof(float), count, handle), count);
    fclose(handle);
    return values;
}

START_TEST(test_folder_views_values) {
    folder_t folder;
    folder_setup(&folder, &small_classification);
    float *grid = read_floats(&folder, "train/grid.npy", 40 * 64);
    cm_dataset_t *dataset = NULL;
    /* The stored view: (x - 0.25) / 0.5. */
    ck_assert_msg(cm_dataset_load(&dataset, folder.data, "grid", NULL) == CM_OK, "%s",
                  cm_last_error());
    ck_assert_str_eq(dataset->name, "synthetic-classification");
    ck_assert_int_eq(dataset->task, CM_TASK_CLASSIFICATION);
    ck_assert_int_eq(dataset->classes, 3);
    ck_assert_int_eq(dataset->features, 64);
    ck_assert_int_eq(dataset->height, 8);
    ck_assert_int_eq(dataset->width, 8);
    ck_assert_int_eq(dataset->splits[CM_SPLIT_TRAIN].count, 40);
    ck_assert_int_eq(dataset->splits[CM_SPLIT_TEST].count, 12);
    ck_assert_int_eq(dataset->splits[CM_SPLIT_VALID].count, 0);
    float *features = gather_all(dataset, CM_SPLIT_TRAIN);
    for (int i = 0; i < 40 * 64; i++)
        ck_assert_float_eq_tol(features[i], (grid[i] - 0.25f) / 0.5f, 1e-6f);
    int32_t rows[3] = {7, 0, 39};
    float picked[3 * 64];
    cm_dataset_gather(dataset, CM_SPLIT_TRAIN, rows, 3, picked);
    ck_assert_mem_eq(picked, features + 7 * 64, sizeof(float) * 64);
    ck_assert_mem_eq(picked + 128, features + 39 * 64, sizeof(float) * 64);
    ck_assert_ptr_nonnull(strstr(dataset->view_json, "\"normalize\""));
    ck_assert_ptr_nonnull(strstr(dataset->task_json, "\"classes\":3"));
    free(features);
    char fingerprint[65];
    memcpy(fingerprint, dataset->fingerprint, 65);
    cm_dataset_free(&dataset);

    /* The derived view: 2x2 averages of the normalized grid; same fingerprint. */
    ck_assert_int_eq(cm_dataset_load(&dataset, folder.data, "pool", NULL), CM_OK);
    ck_assert_str_eq(dataset->fingerprint, fingerprint);
    ck_assert_int_eq(dataset->features, 16);
    ck_assert_int_eq(dataset->height, 4);
    features = gather_all(dataset, CM_SPLIT_TRAIN);
    for (int row = 0; row < 40; row++)
        for (int y = 0; y < 4; y++)
            for (int x = 0; x < 4; x++) {
                const float *cells = grid + row * 64;
                double sum = cells[(2 * y) * 8 + 2 * x] + cells[(2 * y) * 8 + 2 * x + 1] +
                             cells[(2 * y + 1) * 8 + 2 * x] + cells[(2 * y + 1) * 8 + 2 * x + 1];
                ck_assert_float_eq_tol(features[row * 16 + y * 4 + x], (sum / 4 - 0.25) / 0.5,
                                       1e-5);
            }
    free(features);
    ck_assert_ptr_nonnull(strstr(dataset->view_json, "avgpool:2"));
    cm_dataset_free(&dataset);

    /* Categorical and tokens: the integers as floats. */
    ck_assert_int_eq(cm_dataset_load(&dataset, folder.data, "cat", NULL), CM_OK);
    ck_assert_int_eq(dataset->view_kind, CM_VIEW_CATEGORICAL);
    ck_assert_int_eq(dataset->features, 2);
    features = gather_all(dataset, CM_SPLIT_TEST);
    for (int i = 0; i < 12; i++) {
        ck_assert(features[2 * i] >= 0 && features[2 * i] < 5);
        ck_assert(features[2 * i + 1] >= 0 && features[2 * i + 1] < 7);
        ck_assert_float_eq(features[2 * i], floorf(features[2 * i]));
    }
    free(features);
    cm_dataset_free(&dataset);
    ck_assert_int_eq(cm_dataset_load(&dataset, folder.data, "text", NULL), CM_OK);
    ck_assert_int_eq(dataset->view_kind, CM_VIEW_TOKENS);
    ck_assert_int_eq(dataset->features, 6);
    features = gather_all(dataset, CM_SPLIT_TRAIN);
    ck_assert_float_eq(features[4], 0.0f); /* padding */
    ck_assert(features[0] >= 1 && features[0] < 50);
    free(features);
    cm_dataset_free(&dataset);
    free(grid);
    folder_teardown(&folder);
}
END_TEST

START_TEST(test_folder_ids_and_subsets) {
    folder_t folder;
    test_folder_options_t options = small_classification;
    options.with_ids = 1;
    options.transfer_rows = 9;
    folder_setup(&folder, &options);
    cm_dataset_t *whole = NULL, *subset = NULL;
    ck_assert_msg(cm_dataset_load(&whole, folder.data, "grid", NULL) == CM_OK, "%s",
                  cm_last_error());
    cm_dataset_options_t limits = {.max_train = 10, .max_test = 4};
    ck_assert_int_eq(cm_dataset_load(&subset, folder.data, "grid", &limits), CM_OK);
    ck_assert_str_eq(whole->fingerprint, subset->fingerprint);
    ck_assert_int_eq(subset->splits[CM_SPLIT_TRAIN].count, 10);
    ck_assert_int_eq(subset->splits[CM_SPLIT_TRAIN].stored, 40);
    /* Ids are the dataset's: rows resolve through the map, beyond the subset they are unknown. */
    for (int row = 0; row < 40; row++) {
        ck_assert_int_eq(cm_dataset_id(whole, CM_SPLIT_TRAIN, row), test_folder_id(row));
        ck_assert_int_eq(cm_dataset_row(whole, CM_SPLIT_TRAIN, test_folder_id(row)), row);
        ck_assert_int_eq(cm_dataset_row(subset, CM_SPLIT_TRAIN, test_folder_id(row)),
                         row < 10 ? row : -1);
    }
    ck_assert_int_eq(cm_dataset_row(whole, CM_SPLIT_TRAIN, 5), -1);
    int32_t ids[2] = {test_folder_id(3), test_folder_id(20)}, rows[2];
    ck_assert_int_eq(cm_dataset_rows(whole, CM_SPLIT_TRAIN, ids, 2, rows), CM_OK);
    ck_assert_int_eq(rows[1], 20);
    ck_assert_int_eq(cm_dataset_rows(subset, CM_SPLIT_TRAIN, ids, 2, rows), CM_ERR_OUT_OF_RANGE);
    ck_assert_ptr_nonnull(strstr(cm_last_error(), "position 1"));
    /* The unlabelled transfer split. */
    ck_assert_int_eq(whole->splits[CM_SPLIT_TRANSFER].count, 9);
    ck_assert_ptr_null(whole->splits[CM_SPLIT_TRANSFER].labels);
    cm_dataset_free(&whole);
    cm_dataset_free(&subset);
    limits.max_train = 41;
    ck_assert_int_eq(cm_dataset_load(&subset, folder.data, "grid", &limits), CM_ERR_INVALID_ARG);
    ck_assert_ptr_nonnull(strstr(cm_last_error(), "only 40 examples"));
    folder_teardown(&folder);
}
END_TEST

START_TEST(test_folder_regression) {
    folder_t folder;
    test_folder_options_t options = small_classification;
    options.regression = 1;
    folder_setup(&folder, &options);
    cm_dataset_t *dataset = NULL;
    ck_assert_msg(cm_dataset_load(&dataset, folder.data, "pool", NULL) == CM_OK, "%s",
                  cm_last_error());
    ck_assert_int_eq(dataset->task, CM_TASK_REGRESSION);
    ck_assert_int_eq(dataset->targets, 2);
    ck_assert_int_eq(dataset->classes, 2); /* the output width */
    ck_assert_ptr_null(dataset->splits[CM_SPLIT_TRAIN].labels);
    ck_assert_ptr_nonnull(dataset->splits[CM_SPLIT_TRAIN].targets);
    float *targets = read_floats(&folder, "train/labels.npy", 80);
    ck_assert_mem_eq(dataset->splits[CM_SPLIT_TRAIN].targets, targets, sizeof(float) * 80);
    ck_assert_ptr_nonnull(strstr(dataset->task_json, "\"targets\":2"));
    free(targets);
    cm_dataset_free(&dataset);
    folder_teardown(&folder);
}
END_TEST

/* The built-in and its export: the same fingerprint and the same features. */
START_TEST(test_fashion_export_equals_builtin) {
    fixture_t fixture;
    fixture_setup(&fixture);
    folder_t folder;
    test_util_temp_dir(folder.root, sizeof folder.root);
    snprintf(folder.data, sizeof folder.data, "%s/fm", folder.root);
    snprintf(folder.cache, sizeof folder.cache, "%s/cache", folder.root);
    setenv("COMMITTEE_CACHE_DIR", folder.cache, 1);
    cm_dataset_t *builtin = NULL, *exported = NULL;
    ck_assert_int_eq(load_from(&fixture, "pool7", 0, 0, &builtin), CM_OK);
    ck_assert_int_eq(cm_dataset_export(builtin, folder.data), CM_OK);
    ck_assert_int_eq(cm_dataset_export(builtin, folder.data),
                     CM_ERR_INVALID_ARG); /* no overwrite */
    ck_assert_msg(cm_dataset_load(&exported, folder.data, "pool7", NULL) == CM_OK, "%s",
                  cm_last_error());
    ck_assert_str_eq(exported->fingerprint, builtin->fingerprint);
    ck_assert_str_eq(exported->name, "fashion-mnist");
    ck_assert_str_eq(exported->view_json, builtin->view_json);
    ck_assert_str_eq(exported->task_json, builtin->task_json);
    for (int split = 0; split < 2; split++) {
        float *a = gather_all(builtin, (cm_split_t)split),
              *b = gather_all(exported, (cm_split_t)split);
        ck_assert_mem_eq(a, b, sizeof(float) * 49 * (size_t)builtin->splits[split].count);
        ck_assert_mem_eq(builtin->splits[split].labels, exported->splits[split].labels,
                         sizeof(int32_t) * (size_t)builtin->splits[split].count);
        free(a);
        free(b);
    }
    cm_dataset_free(&builtin);
    cm_dataset_free(&exported);
    folder_teardown(&folder);
    fixture_teardown(&fixture);
}
END_TEST

/* The cache: a second open trusts (path, size, mtime); a broken entry is ignored. */
START_TEST(test_hash_cache) {
    folder_t folder;
    folder_setup(&folder, &small_classification);
    cm_dataset_t *dataset = NULL;
    ck_assert_int_eq(cm_dataset_load(&dataset, folder.data, "grid", NULL), CM_OK);
    char first[65];
    memcpy(first, dataset->fingerprint, 65);
    cm_dataset_free(&dataset);
    char entries[400];
    snprintf(entries, sizeof entries, "%s/files", folder.cache);
    struct stat info;
    ck_assert_int_eq(stat(entries, &info), 0);

    /* Change a byte of the test grid but keep its size and mtime: the cache still answers. */
    char path[512];
    folder_path(&folder, "test/grid.npy", path, sizeof path);
    ck_assert_int_eq(stat(path, &info), 0);
    FILE *file = fopen(path, "r+b");
    ck_assert_int_eq(fseek(file, 200, SEEK_SET), 0);
    fputc(0x3f, file);
    fclose(file);
    struct timespec times[2] = {info.st_atim, info.st_mtim};
    ck_assert_int_eq(utimensat(AT_FDCWD, path, times, 0), 0);
    ck_assert_int_eq(cm_dataset_load(&dataset, folder.data, "grid", NULL), CM_OK);
    ck_assert_str_eq(dataset->fingerprint, first);
    cm_dataset_free(&dataset);

    /* Corrupt every entry: ignored, the files are hashed again and the change shows. */
    char command[900], output[256];
    snprintf(command, sizeof command, "for f in %s/*; do echo garbage > $f; done", entries);
    ck_assert_int_eq(test_util_run(command, output, sizeof output), 0);
    ck_assert_int_eq(cm_dataset_load(&dataset, folder.data, "grid", NULL), CM_OK);
    ck_assert_str_ne(dataset->fingerprint, first);
    char second[65];
    memcpy(second, dataset->fingerprint, 65);
    cm_dataset_free(&dataset);

    /* A cache that cannot be written is skipped silently. */
    setenv("COMMITTEE_CACHE_DIR", "/proc/committee-no-cache", 1);
    ck_assert_int_eq(cm_dataset_load(&dataset, folder.data, "grid", NULL), CM_OK);
    ck_assert_str_eq(dataset->fingerprint, second);
    cm_dataset_free(&dataset);
    folder_teardown(&folder);
}
END_TEST

/* ---- Bad folders: one test per case, each one sentence naming the file ---- */

static void write_npy_into(const folder_t *folder, const char *file, int major, const char *descr,
                           int fortran, const char *shape, const void *data, size_t bytes) {
    char path[512];
    folder_path(folder, file, path, sizeof path);
    test_folder_write_npy(path, major, descr, fortran, shape, data, bytes);
}

static void write_manifest(const folder_t *folder, const char *text) {
    char path[512];
    folder_path(folder, "dataset.json", path, sizeof path);
    test_folder_write_text(path, text);
}

/*
 * The "standardize" transform: per-feature mean 0 and std 1 on the train split, the test split
 * fed with the train statistics (not its own), a constant feature finite (std 1), and the
 * statistics recorded in the view's preprocessing JSON.
 */
START_TEST(test_folder_standardize) {
    folder_t folder;
    folder_setup(&folder, &small_classification);
    write_manifest(&folder,
                   "{\"format\": \"committee-dataset/1\", \"name\": \"standardized\",\n"
                   " \"task\": {\"type\": \"classification\", \"classes\": 3},\n"
                   " \"splits\": [\"train\", \"test\"],\n"
                   " \"views\": {\"grid\": {\"kind\": \"dense\", \"normalize\": {\"mean\": "
                   "[0.25], \"std\": [0.5]}},\n"
                   "   \"std\": {\"from\": \"grid\", \"transform\": \"standardize\"}}}\n");
    /* Feature f of row r: an offset and a scale of its own, so no two features agree; feature
     * 0 is constant. */
    const int rows[2] = {40, 12};
    const char *const files[2] = {"train/grid.npy", "test/grid.npy"};
    for (int split = 0; split < 2; split++) {
        float *grid = malloc(sizeof(float) * (size_t)rows[split] * 64);
        for (int row = 0; row < rows[split]; row++)
            for (int feature = 0; feature < 64; feature++)
                grid[row * 64 + feature] =
                    feature == 0 ? 7.0f
                                 : (float)(feature * 3 - 50) +
                                       (float)(feature + 1) * (float)((row * 13 + feature) % 17) /
                                           (split ? 5.0f : 4.0f);
        char path[512];
        folder_path(&folder, files[split], path, sizeof path);
        int64_t shape[3] = {rows[split], 8, 8};
        ck_assert_int_eq(cm_npy_write(path, CM_NPY_F32, 3, shape, grid), CM_OK);
        free(grid);
    }
    cm_dataset_t *plain = NULL, *standard = NULL;
    ck_assert_msg(cm_dataset_load(&plain, folder.data, "grid", NULL) == CM_OK, "%s",
                  cm_last_error());
    ck_assert_msg(cm_dataset_load(&standard, folder.data, "std", NULL) == CM_OK, "%s",
                  cm_last_error());
    ck_assert_int_eq(standard->features, 64);
    ck_assert_str_eq(standard->fingerprint, plain->fingerprint); /* the same folder */
    float *train = gather_all(standard, CM_SPLIT_TRAIN), *raw = gather_all(plain, CM_SPLIT_TRAIN);
    float *test = gather_all(standard, CM_SPLIT_TEST), *raw_test = gather_all(plain, CM_SPLIT_TEST);
    for (int feature = 0; feature < 64; feature++) {
        double sum = 0, square = 0, raw_sum = 0, raw_square = 0;
        for (int row = 0; row < 40; row++) {
            double value = train[row * 64 + feature], source = raw[row * 64 + feature];
            ck_assert(isfinite(value));
            sum += value;
            square += value * value;
            raw_sum += source;
            raw_square += source * source;
        }
        double mean = sum / 40, std = sqrt(square / 40 - mean * mean);
        ck_assert_msg(fabs(mean) < 1e-4, "feature %d: train mean %g", feature, mean);
        if (feature == 0) {
            ck_assert_msg(fabs(std) < 1e-6, "constant feature: std %g", std);
        } else {
            ck_assert_msg(fabs(std - 1) < 1e-3, "feature %d: train std %g", feature, std);
        }
        /* The test split uses the train statistics. */
        double raw_mean = raw_sum / 40, raw_std = sqrt(raw_square / 40 - raw_mean * raw_mean);
        if (feature == 0) raw_std = 1;
        for (int row = 0; row < 12; row++) {
            double want = (raw_test[row * 64 + feature] - raw_mean) / raw_std;
            ck_assert_msg(fabs(test[row * 64 + feature] - want) < 1e-3 * (1 + fabs(want)),
                          "test row %d feature %d: %g, want %g", row, feature,
                          test[row * 64 + feature], want);
        }
    }
    ck_assert_msg(strstr(standard->view_json, "\"transform\":\"standardize\"") &&
                      strstr(standard->view_json, "\"standardize\":{\"mean\":["),
                  "preprocessing %s", standard->view_json);
    free(train);
    free(raw);
    free(test);
    free(raw_test);
    cm_dataset_free(&plain);
    cm_dataset_free(&standard);
    folder_teardown(&folder);
}
END_TEST

#define FOLDER_CASE(name)                                                                          \
    START_TEST(name) {                                                                             \
        folder_t folder;                                                                           \
        folder_setup(&folder, &small_classification);                                              \
        char path[512];                                                                            \
        (void)path;

#define FOLDER_CASE_END                                                                            \
    folder_teardown(&folder);                                                                      \
    }                                                                                              \
    END_TEST

static float floats40x64[40 * 64];
static int64_t longs40[80];

FOLDER_CASE(test_bad_missing_manifest)
folder_path(&folder, "dataset.json", path, sizeof path);
unlink(path);
assert_folder_fails(&folder, "grid", CM_ERR_NOT_FOUND, "dataset.json", "missing");
FOLDER_CASE_END

FOLDER_CASE(test_bad_missing_file)
folder_path(&folder, "test/cat.npy", path, sizeof path);
unlink(path);
assert_folder_fails(&folder, "grid", CM_ERR_NOT_FOUND, "test/cat.npy", "No such file");
FOLDER_CASE_END

FOLDER_CASE(test_bad_manifest_format)
write_manifest(&folder, "{\"format\": \"committee-dataset/9\", \"name\": \"x\"}");
assert_folder_fails(&folder, "grid", CM_ERR_VERSION, "dataset.json", "committee-dataset/9");
write_manifest(&folder, "{\"format\": \"committee-dataset/1\", \"name\": ");
assert_folder_fails(&folder, "grid", CM_ERR_FORMAT, "dataset.json", "not valid JSON");
FOLDER_CASE_END

FOLDER_CASE(test_bad_npy_version)
write_npy_into(&folder, "train/grid.npy", 4, "<f4", 0, "(40, 8, 8)", floats40x64,
               sizeof floats40x64);
assert_folder_fails(&folder, "grid", CM_ERR_VERSION, "train/grid.npy", "version 4.0");
FOLDER_CASE_END

FOLDER_CASE(test_npy_versions_2_and_3_read)
write_npy_into(&folder, "train/grid.npy", 2, "<f4", 0, "(40, 8, 8)", floats40x64,
               sizeof floats40x64);
write_npy_into(&folder, "test/grid.npy", 3, "<f4", 0, "(12, 8, 8)", floats40x64,
               sizeof(float) * 12 * 64);
cm_dataset_t *dataset = NULL;
ck_assert_msg(cm_dataset_load(&dataset, folder.data, "grid", NULL) == CM_OK, "%s", cm_last_error());
cm_dataset_free(&dataset);
FOLDER_CASE_END

FOLDER_CASE(test_bad_npy_magic)
folder_path(&folder, "train/labels.npy", path, sizeof path);
test_folder_write_text(path, "PK\x03\x04 this is a zip file, not an array");
assert_folder_fails(&folder, "grid", CM_ERR_FORMAT, "train/labels.npy", "not a .npy file");
FOLDER_CASE_END

FOLDER_CASE(test_bad_npy_header)
write_npy_into(&folder, "train/grid.npy", 1, "<f4', 'extra': (1", 0, "(40, 8, 8)", floats40x64,
               sizeof floats40x64);
assert_folder_fails(&folder, "grid", CM_ERR_FORMAT, "train/grid.npy", "bad .npy header");
FOLDER_CASE_END

FOLDER_CASE(test_bad_fortran_order)
write_npy_into(&folder, "train/grid.npy", 1, "<f4", 1, "(40, 8, 8)", floats40x64,
               sizeof floats40x64);
assert_folder_fails(&folder, "grid", CM_ERR_FORMAT, "train/grid.npy", "Fortran order");
FOLDER_CASE_END

FOLDER_CASE(test_bad_big_endian)
write_npy_into(&folder, "test/grid.npy", 1, ">f4", 0, "(12, 8, 8)", floats40x64,
               sizeof(float) * 12 * 64);
assert_folder_fails(&folder, "grid", CM_ERR_FORMAT, "test/grid.npy", "big-endian");
FOLDER_CASE_END

FOLDER_CASE(test_bad_dtype)
write_npy_into(&folder, "train/grid.npy", 1, "<f8", 0, "(40, 4, 8)", floats40x64,
               sizeof floats40x64);
assert_folder_fails(&folder, "grid", CM_ERR_FORMAT, "train/grid.npy", "float64");
FOLDER_CASE_END

FOLDER_CASE(test_bad_shape)
write_npy_into(&folder, "train/cat.npy", 1, "<i8", 0, "(40, 3)", floats40x64, 40 * 3 * 8);
assert_folder_fails(&folder, "grid", CM_ERR_SHAPE, "train/cat.npy", "2 columns");
FOLDER_CASE_END

FOLDER_CASE(test_bad_count_across_views)
write_npy_into(&folder, "train/grid.npy", 1, "<f4", 0, "(39, 8, 8)", floats40x64,
               sizeof(float) * 39 * 64);
assert_folder_fails(&folder, "grid", CM_ERR_MISMATCH, "train/grid.npy", "39 rows");
FOLDER_CASE_END

FOLDER_CASE(test_bad_count_ids)
int32_t ids[41] = {0};
for (int i = 0; i < 41; i++) ids[i] = i;
write_npy_into(&folder, "train/ids.npy", 1, "<i4", 0, "(41,)", ids, sizeof ids);
assert_folder_fails(&folder, "grid", CM_ERR_MISMATCH, "train/ids.npy", "41 rows");
FOLDER_CASE_END

FOLDER_CASE(test_bad_duplicate_ids)
int32_t ids[40];
for (int i = 0; i < 40; i++) ids[i] = 100 + i;
ids[31] = 107;
write_npy_into(&folder, "train/ids.npy", 1, "<i4", 0, "(40,)", ids, sizeof ids);
assert_folder_fails(&folder, "grid", CM_ERR_MISMATCH, "train/ids.npy",
                    "id 107 appears twice (rows 7 and 31)");
for (int i = 0; i < 40; i++) ids[i] = 1000000 * i; /* sparse: the sorted map */
ids[39] = 0;
write_npy_into(&folder, "train/ids.npy", 1, "<i4", 0, "(40,)", ids, sizeof ids);
assert_folder_fails(&folder, "grid", CM_ERR_MISMATCH, "train/ids.npy",
                    "id 0 appears twice (rows 0 and 39)");
FOLDER_CASE_END

FOLDER_CASE(test_bad_label_out_of_range)
for (int i = 0; i < 40; i++) longs40[i] = i % 3;
longs40[17] = 3;
write_npy_into(&folder, "train/labels.npy", 1, "<i8", 0, "(40,)", longs40, 40 * 8);
assert_folder_fails(&folder, "grid", CM_ERR_OUT_OF_RANGE, "train/labels.npy",
                    "label 3 of row 17 is outside [0, 3)");
FOLDER_CASE_END

FOLDER_CASE(test_bad_nan_in_dense)
float grid[12 * 64] = {0};
grid[5 * 64 + 9] = NAN;
write_npy_into(&folder, "test/grid.npy", 1, "<f4", 0, "(12, 8, 8)", grid, sizeof grid);
assert_folder_fails(&folder, "pool", CM_ERR_OUT_OF_RANGE, "test/grid.npy",
                    "row 5 holds NaN at element 9");
grid[5 * 64 + 9] = INFINITY;
write_npy_into(&folder, "test/grid.npy", 1, "<f4", 0, "(12, 8, 8)", grid, sizeof grid);
assert_folder_fails(&folder, "grid", CM_ERR_OUT_OF_RANGE, "test/grid.npy", "Inf");
/* A view this load does not read is checked by data check (validate_all), not here. */
cm_dataset_t *dataset = NULL;
ck_assert_int_eq(cm_dataset_load(&dataset, folder.data, "cat", NULL), CM_OK);
cm_dataset_free(&dataset);
cm_dataset_options_t all = {.validate_all = 1};
ck_assert_int_eq(cm_dataset_load(&dataset, folder.data, "cat", &all), CM_ERR_OUT_OF_RANGE);
FOLDER_CASE_END

FOLDER_CASE(test_bad_token_beyond_vocabulary)
int32_t tokens[40 * 6] = {0};
tokens[3 * 6 + 2] = 50;
write_npy_into(&folder, "train/text.npy", 1, "<i4", 0, "(40, 6)", tokens, sizeof tokens);
assert_folder_fails(&folder, "text", CM_ERR_OUT_OF_RANGE, "train/text.npy",
                    "row 3 holds token 50 at position 2, outside the vocabulary [0, 50)");
FOLDER_CASE_END

FOLDER_CASE(test_bad_category_beyond_cardinality)
int64_t categories[12 * 2] = {0};
categories[4 * 2 + 1] = 7;
write_npy_into(&folder, "test/cat.npy", 1, "<i8", 0, "(12, 2)", categories, sizeof categories);
assert_folder_fails(&folder, "cat", CM_ERR_OUT_OF_RANGE, "test/cat.npy",
                    "row 4 holds category 7 in column 1, outside its cardinality [0, 7)");
FOLDER_CASE_END

FOLDER_CASE(test_bad_truncated_file)
folder_path(&folder, "train/grid.npy", path, sizeof path);
ck_assert_int_eq(truncate(path, 128 + 40 * 64 * 4 - 10), 0);
assert_folder_fails(&folder, "grid", CM_ERR_FORMAT, "train/grid.npy", "truncated");
ck_assert_int_eq(truncate(path, 60), 0); /* inside the header */
assert_folder_fails(&folder, "grid", CM_ERR_FORMAT, "train/grid.npy", "truncated");
write_npy_into(&folder, "train/grid.npy", 1, "<f4", 0, "(40, 8, 8)", floats40x64,
               sizeof floats40x64);
FILE *file = fopen(path, "ab");
fputs("xyz", file);
fclose(file);
assert_folder_fails(&folder, "grid", CM_ERR_FORMAT, "train/grid.npy", "trailing");
FOLDER_CASE_END

FOLDER_CASE(test_bad_manifest_fields)
static const struct {
    const char *manifest, *fragment;
} cases[] = {
    {"{\"format\": \"committee-dataset/1\", \"name\": \"x\", \"task\": {\"type\": \"ranking\"}, "
     "\"splits\": [\"train\", \"test\"], \"views\": {\"grid\": {\"kind\": \"dense\"}}}",
     "task.type"},
    {"{\"format\": \"committee-dataset/1\", \"name\": \"x\", \"task\": {\"type\": "
     "\"classification\", \"classes\": 3}, \"splits\": [\"train\"], \"views\": {\"grid\": "
     "{\"kind\": \"dense\"}}}",
     "\"train\" and \"test\""},
    {"{\"format\": \"committee-dataset/1\", \"name\": \"x\", \"task\": {\"type\": "
     "\"classification\", \"classes\": 3}, \"splits\": [\"train\", \"test\"], \"views\": "
     "{\"grid\": {\"kind\": \"dense\", \"normalise\": {}}}}",
     "unknown key \"normalise\""},
    {"{\"format\": \"committee-dataset/1\", \"name\": \"x\", \"task\": {\"type\": "
     "\"classification\", \"classes\": 3}, \"splits\": [\"train\", \"test\"], \"views\": "
     "{\"p\": {\"from\": \"nothing\", \"transform\": \"avgpool:2\"}}}",
     "not a view"},
    {"{\"format\": \"committee-dataset/1\", \"name\": \"x\", \"task\": {\"type\": "
     "\"classification\", \"classes\": 3}, \"splits\": [\"train\", \"test\"], \"views\": "
     "{\"grid\": {\"kind\": \"dense\"}, \"p\": {\"from\": \"grid\", \"transform\": "
     "\"maxpool:2\"}}}",
     "known transforms"},
};
for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    write_manifest(&folder, cases[i].manifest);
    assert_folder_fails(&folder, "grid", cases[i].manifest[0] ? CM_ERR_FORMAT : CM_OK,
                        "dataset.json", cases[i].fragment);
}
FOLDER_CASE_END

FOLDER_CASE(test_bad_unknown_view)
assert_folder_fails(&folder, "pool7", CM_ERR_INVALID_ARG, "view \"pool7\" is unknown",
                    "cat,grid,pool,text");
FOLDER_CASE_END

Suite *check_dataset_suite(void);
Suite *check_dataset_suite(void) {
    Suite *suite = suite_create("dataset");
    TCase *views = tcase_create("views");
    tcase_add_test(views, test_all_views_shapes_values_labels);
    tcase_add_test(views, test_pool7_hand_computed);
    tcase_add_test(views, test_subset_is_prefix);
    tcase_add_test(views, test_directory_rules);
    tcase_add_test(views, test_split_names_and_views);
    suite_add_tcase(suite, views);

    TCase *fingerprint = tcase_create("fingerprint");
    tcase_add_test(fingerprint, test_fingerprint_definition);
    tcase_add_test(fingerprint, test_fingerprint_across_views_and_changes);
    suite_add_tcase(suite, fingerprint);

    TCase *errors = tcase_create("errors");
    tcase_add_test(errors, test_missing_file);
    tcase_add_test(errors, test_bad_magic);
    tcase_add_test(errors, test_wrong_dimensions);
    tcase_add_test(errors, test_count_mismatch);
    tcase_add_test(errors, test_truncated_gzip);
    tcase_add_test(errors, test_truncated_gzip_trailer);
    tcase_add_test(errors, test_header_promises_more_than_body);
    tcase_add_test(errors, test_more_data_than_promised);
    tcase_add_test(errors, test_absurd_count_fails_before_allocating);
    tcase_add_test(errors, test_corrupt_crc);
    tcase_add_test(errors, test_label_out_of_range);
    tcase_add_test(errors, test_not_gzip);
    tcase_add_test(errors, test_trailing_garbage);
    tcase_add_test(errors, test_unknown_names_and_bad_options);
    suite_add_tcase(suite, errors);

    TCase *folders = tcase_create("folders");
    tcase_add_test(folders, test_folder_views_values);
    tcase_add_test(folders, test_folder_standardize);
    tcase_add_test(folders, test_folder_ids_and_subsets);
    tcase_add_test(folders, test_folder_regression);
    tcase_add_test(folders, test_fashion_export_equals_builtin);
    tcase_add_test(folders, test_hash_cache);
    suite_add_tcase(suite, folders);

    TCase *bad = tcase_create("bad_folders");
    tcase_add_test(bad, test_bad_missing_manifest);
    tcase_add_test(bad, test_bad_missing_file);
    tcase_add_test(bad, test_bad_manifest_format);
    tcase_add_test(bad, test_bad_npy_version);
    tcase_add_test(bad, test_npy_versions_2_and_3_read);
    tcase_add_test(bad, test_bad_npy_magic);
    tcase_add_test(bad, test_bad_npy_header);
    tcase_add_test(bad, test_bad_fortran_order);
    tcase_add_test(bad, test_bad_big_endian);
    tcase_add_test(bad, test_bad_dtype);
    tcase_add_test(bad, test_bad_shape);
    tcase_add_test(bad, test_bad_count_across_views);
    tcase_add_test(bad, test_bad_count_ids);
    tcase_add_test(bad, test_bad_duplicate_ids);
    tcase_add_test(bad, test_bad_label_out_of_range);
    tcase_add_test(bad, test_bad_nan_in_dense);
    tcase_add_test(bad, test_bad_token_beyond_vocabulary);
    tcase_add_test(bad, test_bad_category_beyond_cardinality);
    tcase_add_test(bad, test_bad_truncated_file);
    tcase_add_test(bad, test_bad_manifest_fields);
    tcase_add_test(bad, test_bad_unknown_view);
    suite_add_tcase(suite, bad);

    /* The real training set under AddressSanitizer takes a few seconds. */
    TCase *real = tcase_create("real");
    tcase_set_timeout(real, 60);
    tcase_add_test(real, test_real_fashion_mnist_pool7);
    suite_add_tcase(suite, real);
    return suite;
}
