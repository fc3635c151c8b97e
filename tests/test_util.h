/*
 * test_util: helpers for tests that drive the real binaries: where they
 * are, running a shell command with its output captured, temp dirs, and a
 * bounded HTTP GET for the services' health and metrics endpoints.
 */
#ifndef TEST_UTIL_H
#define TEST_UTIL_H

#include <stddef.h>

/* Path of a built binary ("teacher-server") in $COMMITTEE_BIN_DIR (default build/bin). */
const char *test_util_bin(const char *name);

/*
 * Runs `command` with /bin/sh, stdout and stderr captured together into
 * output[size] (truncated, NUL-terminated).  Returns the exit status, or -1
 * if the command could not be run or was killed by a signal.
 */
int test_util_run(const char *command, char *output, size_t size);

/* Creates a fresh temp directory and returns its path (static storage per call site copy). */
void test_util_temp_dir(char *path, size_t size);

/* Removes a directory tree (rm -rf). */
void test_util_remove_tree(const char *path);

/*
 * 1 when two safetensors files hold the same tensors (names, dtypes, shapes, bytes) and the
 * same metadata apart from "config" (the command line a run was given, which names its own
 * --out) and the metadata checksum that covers it: what `cmp` checked before checkpoints
 * carried their configuration.  0 with the first difference in why[size].
 */
int test_util_same_checkpoints(const char *left, const char *right, char *why, size_t size);

/* 1 when the real Fashion-MNIST files are installed. */
int test_util_have_fashion_mnist(void);

/*
 * GET http://127.0.0.1:port/path over a plain socket, every step bounded by
 * timeout_ms.  The body goes into body[size] (truncated, NUL-terminated;
 * body may be NULL).  Returns the HTTP status, or -1 when there was no
 * well-formed answer in time.
 */
/* A TCP port of 127.0.0.1 that was free a moment ago (another process may take it since). */
int test_util_free_tcp_port(void);

int test_util_http_get(int port, const char *path, char *body, size_t size, int timeout_ms);

#endif
