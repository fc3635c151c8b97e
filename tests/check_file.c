/*
 * cm_file: atomic writes replace files whole or not at all (a failure at
 * mkstemp, in the middle of writing, or at rename leaves the old content and
 * no temp file behind), and cm_file_read_all returns exactly what is on
 * disk, including files whose size stat() does not know.  Private writes
 * (keys) are mode 0600 whatever file they replace.
 */
#include "cm_file.h"
#include "cm_rng.h"

#include <check.h>
#include <dirent.h>
#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

static char temp_dir[64];

static void make_temp_dir(void) {
    strcpy(temp_dir, "/tmp/cm_file_XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(temp_dir));
}

static int remove_entry(const char *path, const struct stat *info, int type, struct FTW *walk) {
    return remove(path);
}

static void remove_temp_dir(void) { nftw(temp_dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS); }

static void path_in_temp(char *path, size_t capacity, const char *name) {
    int length = snprintf(path, capacity, "%s/%s", temp_dir, name);
    ck_assert(length > 0 && (size_t)length < capacity);
}

/* Number of leftover "*.tmp.*" files directly in `directory`. */
static int count_temp_files(const char *directory) {
    DIR *listing = opendir(directory);
    ck_assert_ptr_nonnull(listing);
    int leftovers = 0;
    for (struct dirent *entry; (entry = readdir(listing));)
        if (strstr(entry->d_name, ".tmp.")) leftovers++;
    closedir(listing);
    return leftovers;
}

static void write_text(const char *path, const char *text) {
    cm_file_chunk_t chunk = {text, strlen(text)};
    cm_status_t status = cm_file_write_atomic(path, &chunk, 1);
    ck_assert_msg(status == CM_OK, "writing %s: %s", path, cm_last_error());
}

/* Asserts that `path` holds exactly `text`. */
static void assert_content(const char *path, const char *text) {
    void *data;
    size_t size;
    cm_status_t status = cm_file_read_all(path, &data, &size);
    ck_assert_msg(status == CM_OK, "reading %s: %s", path, cm_last_error());
    ck_assert_uint_eq(size, strlen(text));
    ck_assert(memcmp(data, text, size) == 0);
    free(data);
}

START_TEST(test_chunks_written_in_order) {
    char path[128];
    path_in_temp(path, sizeof path, "chunks.bin");
    cm_file_chunk_t chunks[] = {{"alpha-", 6}, {NULL, 0}, {"beta-", 5}, {"gamma", 5}};
    ck_assert_int_eq(cm_file_write_atomic(path, chunks, 4), CM_OK);
    assert_content(path, "alpha-beta-gamma");
    struct stat info;
    ck_assert_int_eq(stat(path, &info), 0);
    ck_assert_int_eq(info.st_mode & 0777, 0644);
    ck_assert_int_eq(count_temp_files(temp_dir), 0);
}
END_TEST

START_TEST(test_zero_chunks_make_empty_file) {
    char path[128];
    path_in_temp(path, sizeof path, "empty.bin");
    ck_assert_int_eq(cm_file_write_atomic(path, NULL, 0), CM_OK);
    void *data;
    size_t size = 99;
    ck_assert_int_eq(cm_file_read_all(path, &data, &size), CM_OK);
    ck_assert_uint_eq(size, 0);
    ck_assert_ptr_nonnull(data);
    free(data);
}
END_TEST

START_TEST(test_replaces_existing_file_and_keeps_mode) {
    char path[128];
    path_in_temp(path, sizeof path, "replace.txt");
    write_text(path, "the old content, which is longer than the new one");
    ck_assert_int_eq(chmod(path, 0600), 0);
    write_text(path, "new");
    assert_content(path, "new");
    struct stat info;
    ck_assert_int_eq(stat(path, &info), 0);
    ck_assert_int_eq(info.st_mode & 0777, 0600);
    ck_assert_int_eq(count_temp_files(temp_dir), 0);
}
END_TEST

START_TEST(test_private_write_is_0600_even_over_a_public_file) {
    char path[128];
    path_in_temp(path, sizeof path, "secret.key");
    write_text(path, "a public file first");
    ck_assert_int_eq(chmod(path, 0644), 0);
    cm_file_chunk_t chunk = {"secret", 6};
    ck_assert_int_eq(cm_file_write_atomic_private(path, &chunk, 1), CM_OK);
    assert_content(path, "secret");
    struct stat info;
    ck_assert_int_eq(stat(path, &info), 0);
    ck_assert_int_eq(info.st_mode & 0777, 0600);
    ck_assert_int_eq(count_temp_files(temp_dir), 0);
}
END_TEST

START_TEST(test_relative_path_without_directory) {
    char previous[4096];
    ck_assert_ptr_nonnull(getcwd(previous, sizeof previous));
    ck_assert_int_eq(chdir(temp_dir), 0);
    write_text("plain-name.txt", "here");
    assert_content("plain-name.txt", "here");
    ck_assert_int_eq(chdir(previous), 0);
}
END_TEST

START_TEST(test_missing_directory_fails_cleanly) {
    char path[128];
    path_in_temp(path, sizeof path, "no-such-dir/file.bin");
    cm_file_chunk_t chunk = {"x", 1};
    ck_assert_int_eq(cm_file_write_atomic(path, &chunk, 1), CM_ERR_IO);
    ck_assert_msg(strstr(cm_last_error(), path), "message names the path: %s", cm_last_error());
    ck_assert_msg(strstr(cm_last_error(), "No such file"), "strerror: %s", cm_last_error());
    ck_assert_int_eq(count_temp_files(temp_dir), 0);
}
END_TEST

START_TEST(test_parent_is_regular_file) {
    char parent[128], path[160];
    path_in_temp(parent, sizeof parent, "regular");
    write_text(parent, "I am a file");
    snprintf(path, sizeof path, "%s/child.bin", parent);
    cm_file_chunk_t chunk = {"x", 1};
    ck_assert_int_eq(cm_file_write_atomic(path, &chunk, 1), CM_ERR_IO);
    ck_assert_msg(strstr(cm_last_error(), path), "message names the path: %s", cm_last_error());
    ck_assert_msg(strstr(cm_last_error(), "Not a directory"), "strerror: %s", cm_last_error());
    assert_content(parent, "I am a file");
    ck_assert_int_eq(count_temp_files(temp_dir), 0);
}
END_TEST

/* The temp file is complete and synced, then rename() fails (EISDIR): it must go. */
START_TEST(test_failed_rename_removes_temp_file) {
    char path[128], inside[160];
    path_in_temp(path, sizeof path, "occupied");
    ck_assert_int_eq(mkdir(path, 0755), 0);
    snprintf(inside, sizeof inside, "%s/keep.txt", path);
    write_text(inside, "kept");
    cm_file_chunk_t chunk = {"replacement", 11};
    ck_assert_int_eq(cm_file_write_atomic(path, &chunk, 1), CM_ERR_IO);
    ck_assert_msg(strstr(cm_last_error(), "rename"), "message: %s", cm_last_error());
    assert_content(inside, "kept");
    ck_assert_int_eq(count_temp_files(temp_dir), 0);
}
END_TEST

/*
 * A write that fails half way (the file size limit stops it after a short
 * write, then EFBIG) must leave the previous content.  Limits and the signal
 * disposition are restored so the test also runs without fork.
 */
START_TEST(test_failed_write_keeps_previous_content) {
    char path[128];
    path_in_temp(path, sizeof path, "limited.bin");
    write_text(path, "previous content");

    enum { LIMIT = 4096, PAYLOAD = 3 * LIMIT };
    char *payload = malloc(PAYLOAD);
    ck_assert_ptr_nonnull(payload);
    memset(payload, 'z', PAYLOAD);
    struct rlimit saved, limited;
    ck_assert_int_eq(getrlimit(RLIMIT_FSIZE, &saved), 0);
    limited = saved;
    limited.rlim_cur = LIMIT;
    void (*saved_handler)(int) = signal(SIGXFSZ, SIG_IGN);
    ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &limited), 0);

    cm_file_chunk_t chunk = {payload, PAYLOAD};
    cm_status_t status = cm_file_write_atomic(path, &chunk, 1);

    ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &saved), 0);
    signal(SIGXFSZ, saved_handler);
    free(payload);
    ck_assert_int_eq(status, CM_ERR_IO);
    ck_assert_msg(strstr(cm_last_error(), path), "message names the path: %s", cm_last_error());
    ck_assert_msg(strstr(cm_last_error(), "too large"), "strerror: %s", cm_last_error());
    assert_content(path, "previous content");
    ck_assert_int_eq(count_temp_files(temp_dir), 0);
}
END_TEST

START_TEST(test_large_file_round_trip) {
    char path[128];
    path_in_temp(path, sizeof path, "large.bin");
    enum { SIZE = 3 * 1024 * 1024 + 17 };
    unsigned char *expected = malloc(SIZE);
    ck_assert_ptr_nonnull(expected);
    cm_rng_t rng;
    cm_rng_seed(&rng, 42);
    for (size_t index = 0; index < SIZE; index++) expected[index] = (unsigned char)cm_rng_u32(&rng);
    cm_file_chunk_t chunks[] = {{expected, 1000}, {expected + 1000, SIZE - 1000}};
    ck_assert_int_eq(cm_file_write_atomic(path, chunks, 2), CM_OK);
    void *data;
    size_t size;
    ck_assert_int_eq(cm_file_read_all(path, &data, &size), CM_OK);
    ck_assert_uint_eq(size, SIZE);
    ck_assert(memcmp(data, expected, SIZE) == 0);
    free(data);
    free(expected);
}
END_TEST

/* /proc files report size 0; the reader must grow its buffer until EOF. */
START_TEST(test_read_file_of_unknown_size) {
    void *data;
    size_t size;
    ck_assert_int_eq(cm_file_read_all("/proc/self/status", &data, &size), CM_OK);
    ck_assert_uint_gt(size, 0);
    ck_assert_ptr_nonnull(memmem(data, size, "Pid:", 4));
    free(data);
}
END_TEST

START_TEST(test_read_missing_file) {
    char path[128];
    path_in_temp(path, sizeof path, "absent.bin");
    void *data = (void *)1;
    size_t size = 1;
    ck_assert_int_eq(cm_file_read_all(path, &data, &size), CM_ERR_NOT_FOUND);
    ck_assert_ptr_null(data);
    ck_assert_uint_eq(size, 0);
    ck_assert_msg(strstr(cm_last_error(), path), "message names the path: %s", cm_last_error());
}
END_TEST

START_TEST(test_read_directory_fails) {
    void *data;
    size_t size;
    ck_assert_int_eq(cm_file_read_all(temp_dir, &data, &size), CM_ERR_IO);
    ck_assert_ptr_null(data);
    ck_assert_msg(strstr(cm_last_error(), temp_dir), "message names the path: %s", cm_last_error());
}
END_TEST

Suite *check_file_suite(void);
Suite *check_file_suite(void) {
    Suite *suite = suite_create("file");
    TCase *write_case = tcase_create("write_atomic");
    tcase_add_checked_fixture(write_case, make_temp_dir, remove_temp_dir);
    tcase_add_test(write_case, test_chunks_written_in_order);
    tcase_add_test(write_case, test_zero_chunks_make_empty_file);
    tcase_add_test(write_case, test_replaces_existing_file_and_keeps_mode);
    tcase_add_test(write_case, test_private_write_is_0600_even_over_a_public_file);
    tcase_add_test(write_case, test_relative_path_without_directory);
    tcase_add_test(write_case, test_missing_directory_fails_cleanly);
    tcase_add_test(write_case, test_parent_is_regular_file);
    tcase_add_test(write_case, test_failed_rename_removes_temp_file);
    tcase_add_test(write_case, test_failed_write_keeps_previous_content);
    suite_add_tcase(suite, write_case);

    TCase *read_case = tcase_create("read_all");
    tcase_add_checked_fixture(read_case, make_temp_dir, remove_temp_dir);
    tcase_add_test(read_case, test_large_file_round_trip);
    tcase_add_test(read_case, test_read_file_of_unknown_size);
    tcase_add_test(read_case, test_read_missing_file);
    tcase_add_test(read_case, test_read_directory_fails);
    suite_add_tcase(suite, read_case);
    return suite;
}
