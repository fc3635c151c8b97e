/*
 * test_folder: synthetic dataset folders written from C for tests (no
 * Python needed): a learnable classification or regression task with a
 * dense float32 view "grid" [N,8,8], a derived view "pool" (avgpool:2 of
 * grid, [4,4]), a categorical view "cat" (int64 [N,2], cardinalities 5 and
 * 7) and a tokens view "text" (int32 [N,6], vocab 50, pad 0), and raw .npy
 * writing for the broken-file cases.
 */
#ifndef TEST_FOLDER_H
#define TEST_FOLDER_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    int regression; /* 0: classification, 3 classes; 1: regression, 2 targets */
    int train_rows, test_rows;
    int with_ids;      /* write ids.npy: id = 1000003 * (row + 1) % 2^31 (sparse, unique) */
    int transfer_rows; /* > 0: an unlabelled "transfer" split too */
    uint64_t seed;
} test_folder_options_t;

/* Writes the folder at `directory` (created). */
void test_folder_write(const char *directory, const test_folder_options_t *options);

/* The id row `row` gets with with_ids. */
int32_t test_folder_id(int row);

/* Writes text to `path` (replacing it). */
void test_folder_write_text(const char *path, const char *text);

/*
 * Writes a .npy file by hand: format version major.0, the dict built from
 * `descr`, `fortran` and `shape` (a Python tuple such as "(3, 4)"), then
 * `bytes` of `data`.
 */
void test_folder_write_npy(const char *path, int major, const char *descr, int fortran,
                           const char *shape, const void *data, size_t bytes);

#endif
