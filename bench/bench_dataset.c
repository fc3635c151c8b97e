/*
 * bench_dataset: what opening a large dataset folder costs, in one run.
 *
 * Writes a 1,000,000-example folder into a temp dir (a dense float32 view
 * "x" [1M,49] and int64 labels, 204 MB, test split 10,000 rows), then
 * times cm_dataset_load(view "x") twice with a private, empty hash cache:
 *
 *  - first start: every file is hashed and the view's values checked (the
 *    files were evicted from the page cache with posix_fadvise first, so
 *    this is a cold read from disk unless the kernel ignored the hint);
 *  - cached start: (path, size, mtime) match the cache, nothing is read
 *    but the headers and the labels.
 *
 * and reports the resident memory the open and one pass of
 * cm_dataset_gather over 20,000 random rows add, split into heap (RssAnon:
 * what the process really needs) and mapped file pages (RssFile: the page
 * cache, shared and reclaimable), next to the folder's size.  The view is
 * memory-mapped, so the heap stays a small fraction of the folder.
 * The temp dir is removed at the end.
 */
#include "cm_dataset.h"
#include "cm_npy.h"
#include "cm_progress.h"
#include "cm_rng.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

enum {
    TRAIN_ROWS = 1000000,
    TEST_ROWS = 10000,
    FEATURES = 49,
    CHUNK_ROWS = 10000,
    GATHER_ROWS = 20000,
};

/* Resident memory of this process in bytes: anonymous (heap) and file-backed (mapped pages). */
typedef struct {
    long anon, file;
} resident_t;

static resident_t resident(void) {
    resident_t now = {0, 0};
    FILE *status = fopen("/proc/self/status", "r");
    if (!status) return now;
    char line[256];
    long kilobytes = 0;
    while (fgets(line, sizeof line, status)) {
        if (sscanf(line, "RssAnon: %ld kB", &kilobytes) == 1) now.anon = kilobytes * 1024;
        if (sscanf(line, "RssFile: %ld kB", &kilobytes) == 1) now.file = kilobytes * 1024;
    }
    fclose(status);
    return now;
}

static resident_t minus(resident_t a, resident_t b) {
    return (resident_t){a.anon - b.anon, a.file - b.file};
}

/* Streams an array of `rows` rows to `path`: header, then rows from fill() a chunk at a time. */
static int write_streamed(const char *path, cm_npy_dtype_t dtype, int rank, const int64_t *shape,
                          size_t row_bytes, void (*fill)(void *chunk, int first, int rows)) {
    uint8_t header[512];
    size_t length = 0;
    if (cm_npy_format_header(dtype, rank, shape, header, sizeof header, &length) != CM_OK)
        return -1;
    FILE *file = fopen(path, "wb");
    void *chunk = malloc(row_bytes * CHUNK_ROWS);
    int ok = file && chunk && fwrite(header, 1, length, file) == length;
    for (int first = 0; ok && first < shape[0]; first += CHUNK_ROWS) {
        int rows = shape[0] - first < CHUNK_ROWS ? (int)(shape[0] - first) : CHUNK_ROWS;
        fill(chunk, first, rows);
        ok = fwrite(chunk, row_bytes, (size_t)rows, file) == (size_t)rows;
    }
    free(chunk);
    if (file && fclose(file) != 0) ok = 0;
    return ok ? 0 : -1;
}

static void fill_features(void *chunk, int first, int rows) {
    float *values = chunk;
    for (size_t i = 0; i < (size_t)rows * FEATURES; i++)
        values[i] = (float)((((size_t)first * FEATURES + i) * 2654435761u) % 1000) / 1000.0f;
}

static void fill_labels(void *chunk, int first, int rows) {
    int64_t *labels = chunk;
    for (int i = 0; i < rows; i++) labels[i] = (first + i) % 10;
}

static void evict(const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return;
    fdatasync(fd);
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    close(fd);
}

static int write_folder(const char *root, long *bytes) {
    char path[600];
    static const char manifest[] =
        "{\"format\": \"committee-dataset/1\", \"name\": \"bench-1m\",\n"
        " \"task\": {\"type\": \"classification\", \"classes\": 10},\n"
        " \"splits\": [\"train\", \"test\"],\n"
        " \"views\": {\"x\": {\"kind\": \"dense\", \"normalize\": {\"mean\": [0.5], \"std\": "
        "[0.29]}}}}\n";
    snprintf(path, sizeof path, "%s/dataset.json", root);
    FILE *file = fopen(path, "w");
    if (!file) return -1;
    fputs(manifest, file);
    fclose(file);
    *bytes = (long)strlen(manifest);
    const char *splits[2] = {"train", "test"};
    const int rows[2] = {TRAIN_ROWS, TEST_ROWS};
    for (int split = 0; split < 2; split++) {
        snprintf(path, sizeof path, "%s/%s", root, splits[split]);
        mkdir(path, 0700);
        int64_t shape[2] = {rows[split], FEATURES};
        snprintf(path, sizeof path, "%s/%s/x.npy", root, splits[split]);
        if (write_streamed(path, CM_NPY_F32, 2, shape, sizeof(float) * FEATURES, fill_features))
            return -1;
        struct stat info;
        stat(path, &info);
        *bytes += (long)info.st_size;
        evict(path);
        snprintf(path, sizeof path, "%s/%s/labels.npy", root, splits[split]);
        if (write_streamed(path, CM_NPY_I64, 1, shape, sizeof(int64_t), fill_labels)) return -1;
        stat(path, &info);
        *bytes += (long)info.st_size;
        evict(path);
    }
    return 0;
}

/* Opens the folder; seconds and the RSS it added. */
static int timed_open(const char *root, cm_dataset_t **dataset, double *seconds,
                      resident_t *added) {
    resident_t before = resident();
    double started = cm_progress_now();
    if (cm_dataset_load(dataset, root, "x", NULL) != CM_OK) {
        fprintf(stderr, "bench_dataset: %s\n", cm_last_error());
        return -1;
    }
    *seconds = cm_progress_now() - started;
    *added = minus(resident(), before);
    return 0;
}

int main(void) {
    char root[] = "/tmp/bench_dataset.XXXXXX", cache[64], command[128];
    if (!mkdtemp(root)) {
        perror("bench_dataset: mkdtemp");
        return 1;
    }
    snprintf(cache, sizeof cache, "%s/cache", root);
    setenv("COMMITTEE_CACHE_DIR", cache, 1);
    char data[64];
    snprintf(data, sizeof data, "%s/data", root);
    mkdir(data, 0700);
    long folder_bytes = 0;
    int status = 0;
    printf("bench_dataset: writing a %d-example folder (dense float32 [%d,%d] + labels) ...\n",
           TRAIN_ROWS, TRAIN_ROWS, FEATURES);
    fflush(stdout);
    if (write_folder(data, &folder_bytes) != 0) {
        fprintf(stderr, "bench_dataset: cannot write the folder in %s\n", root);
        status = 1;
        goto done;
    }
    cm_dataset_t *dataset = NULL;
    double first_seconds = 0, cached_seconds = 0;
    resident_t first_rss = {0, 0}, cached_rss = {0, 0};
    if (timed_open(data, &dataset, &first_seconds, &first_rss) != 0) {
        status = 1;
        goto done;
    }
    char fingerprint[65];
    memcpy(fingerprint, dataset->fingerprint, sizeof fingerprint);
    cm_dataset_free(&dataset);
    if (timed_open(data, &dataset, &cached_seconds, &cached_rss) != 0) {
        status = 1;
        goto done;
    }
    if (strcmp(fingerprint, dataset->fingerprint) != 0) {
        fprintf(stderr, "bench_dataset: the cached start gave another fingerprint\n");
        status = 1;
    }
    resident_t before_gather = resident();
    int32_t *rows = malloc(sizeof(int32_t) * GATHER_ROWS);
    float *features = malloc(sizeof(float) * FEATURES * 256);
    cm_rng_t rng;
    cm_rng_seed(&rng, 7);
    for (int i = 0; i < GATHER_ROWS; i++) rows[i] = (int32_t)cm_rng_below(&rng, TRAIN_ROWS);
    double gather_started = cm_progress_now();
    for (int first = 0; first < GATHER_ROWS; first += 256) {
        int count = GATHER_ROWS - first < 256 ? GATHER_ROWS - first : 256;
        cm_dataset_gather(dataset, CM_SPLIT_TRAIN, rows + first, count, features);
    }
    double gather_seconds = cm_progress_now() - gather_started;
    resident_t gather_rss = minus(resident(), before_gather);
    free(rows);
    free(features);
    cm_dataset_free(&dataset);

    double megabytes = folder_bytes / 1e6;
    printf("\n%-46s %9s %14s %14s\n", "1M-example folder", "seconds", "heap RSS (MB)",
           "mapped RSS (MB)");
    printf("%-46s %9.3f %14.1f %14.1f\n", "open + fingerprint, first start (cold)", first_seconds,
           first_rss.anon / 1e6, first_rss.file / 1e6);
    printf("%-46s %9.3f %14.1f %14.1f\n", "open + fingerprint, cached start", cached_seconds,
           cached_rss.anon / 1e6, cached_rss.file / 1e6);
    printf("%-46s %9.3f %14.1f %14.1f\n", "then gather 20,000 random rows (49 floats)",
           gather_seconds, gather_rss.anon / 1e6, gather_rss.file / 1e6);
    printf("\nfolder %.1f MB; first start / cached start = %.0fx; heap RSS added by a cached open "
           "= %.3f of the folder (the labels as int32: %.1f MB).  Mapped pages are the kernel's "
           "page cache (shared, reclaimable): a random pass maps most of a file it already "
           "caches, but needs none of it in the heap.\n",
           megabytes, cached_seconds > 0 ? first_seconds / cached_seconds : 0.0,
           (double)cached_rss.anon / folder_bytes, (TRAIN_ROWS + TEST_ROWS) * 4 / 1e6);
done:
    snprintf(command, sizeof command, "rm -rf %s", root);
    if (system(command) != 0) fprintf(stderr, "bench_dataset: could not remove %s\n", root);
    return status;
}
