/*
 * test_util: see test_util.h.
 */
#include "test_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

const char *test_util_bin(const char *name) {
    static _Thread_local char path[512];
    const char *directory = getenv("COMMITTEE_BIN_DIR");
    snprintf(path, sizeof path, "%s/%s", directory && *directory ? directory : "build/bin", name);
    return path;
}

int test_util_run(const char *command, char *output, size_t size) {
    char capture[] = "/tmp/test_util_output.XXXXXX";
    int descriptor = mkstemp(capture);
    if (descriptor < 0) return -1;
    close(descriptor);
    size_t length = strlen(command) + strlen(capture) + 32;
    char *full = malloc(length);
    if (!full) return -1;
    snprintf(full, length, "( %s ) >%s 2>&1", command, capture);
    int status = system(full);
    free(full);
    if (output && size) {
        output[0] = '\0';
        FILE *file = fopen(capture, "r");
        if (file) {
            size_t got = fread(output, 1, size - 1, file);
            output[got] = '\0';
            fclose(file);
        }
    }
    unlink(capture);
    if (status == -1 || !WIFEXITED(status)) return -1;
    return WEXITSTATUS(status);
}

void test_util_temp_dir(char *path, size_t size) {
    snprintf(path, size, "/tmp/committee_test.XXXXXX");
    if (!mkdtemp(path)) path[0] = '\0';
}

void test_util_remove_tree(const char *path) {
    char command[600];
    snprintf(command, sizeof command, "rm -rf '%s'", path);
    if (system(command) != 0) fprintf(stderr, "could not remove %s\n", path);
}

int test_util_have_fashion_mnist(void) {
    return access("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz", R_OK) == 0;
}
