/*
 * test_util: see test_util.h.
 */
#include "test_util.h"

#include "cm_safetensors.h"

#include <arpa/inet.h>
#include <check.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
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

int test_util_http_get(int port, const char *path, char *body, size_t size, int timeout_ms) {
    if (body && size) body[0] = '\0';
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    struct timeval timeout = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout);
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    char request[512];
    int request_length =
        snprintf(request, sizeof request, "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", path);
    if (connect(fd, (struct sockaddr *)&address, sizeof address) != 0 ||
        send(fd, request, (size_t)request_length, MSG_NOSIGNAL) != request_length) {
        close(fd);
        return -1;
    }
    /* The server closes after one answer: read to the end (or the timeout). */
    size_t capacity = 1 << 16, length = 0;
    char *answer = malloc(capacity + 1);
    for (;;) {
        if (!answer) break;
        if (length == capacity) {
            char *grown = realloc(answer, 2 * capacity + 1);
            if (!grown) break;
            answer = grown;
            capacity *= 2;
        }
        ssize_t got = recv(fd, answer + length, capacity - length, 0);
        if (got <= 0) break;
        length += (size_t)got;
    }
    close(fd);
    if (!answer) return -1;
    answer[length] = '\0';
    int status = -1;
    const char *header_end = strstr(answer, "\r\n\r\n");
    if (header_end && sscanf(answer, "HTTP/1.1 %d", &status) == 1 && body && size)
        snprintf(body, size, "%s", header_end + 4);
    if (!header_end) status = -1;
    free(answer);
    return status;
}

int test_util_free_tcp_port(void) {
    int listener = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in address = {
        .sin_family = AF_INET, .sin_port = 0, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t size = sizeof address;
    ck_assert_int_ge(listener, 0);
    ck_assert_int_eq(bind(listener, (struct sockaddr *)&address, sizeof address), 0);
    ck_assert_int_eq(getsockname(listener, (struct sockaddr *)&address, &size), 0);
    close(listener);
    return ntohs(address.sin_port);
}

static int metadata_differs(const cm_safetensors_t *a, const cm_safetensors_t *b,
                            const char *a_name, char *why, size_t size) {
    static const char *keys[4096];
    int count = cm_safetensors_metadata_keys(a, keys, 4096);
    for (int index = 0; index < count && index < 4096; index++) {
        if (!strcmp(keys[index], "config") || !strcmp(keys[index], "crc32:__metadata__")) continue;
        const char *other = cm_safetensors_metadata(b, keys[index]);
        if (!other || strcmp(other, cm_safetensors_metadata(a, keys[index]))) {
            snprintf(why, size, "metadata \"%s\" differs (or is missing) from %s", keys[index],
                     a_name);
            return 1;
        }
    }
    return 0;
}

int test_util_same_checkpoints(const char *left, const char *right, char *why, size_t size) {
    cm_safetensors_t *a = NULL, *b = NULL;
    int same = 0;
    if (cm_safetensors_read(&a, left) != CM_OK || cm_safetensors_read(&b, right) != CM_OK) {
        snprintf(why, size, "%s", cm_last_error());
        goto done;
    }
    if (cm_safetensors_count(a) != cm_safetensors_count(b)) {
        snprintf(why, size, "%s has %d tensors, %s %d", left, cm_safetensors_count(a), right,
                 cm_safetensors_count(b));
        goto done;
    }
    for (int index = 0; index < cm_safetensors_count(a); index++) {
        const cm_tensor_t *x = cm_safetensors_tensor(a, index);
        const cm_tensor_t *y = cm_safetensors_find(b, x->name);
        size_t bytes = cm_dtype_size(x->dtype);
        for (int dim = 0; dim < x->ndim; dim++) bytes *= (size_t)x->shape[dim];
        if (!y || y->dtype != x->dtype || y->ndim != x->ndim ||
            memcmp(x->shape, y->shape, sizeof x->shape) || memcmp(x->data, y->data, bytes)) {
            snprintf(why, size, "tensor %s differs between %s and %s", x->name, left, right);
            goto done;
        }
    }
    if (metadata_differs(a, b, left, why, size) || metadata_differs(b, a, right, why, size))
        goto done;
    same = 1;
done:
    cm_safetensors_free(&a);
    cm_safetensors_free(&b);
    return same;
}
