/*
 * test_process: background processes for end-to-end tests (teacher
 * servers): start one with its output in a log file, signal it, and reap
 * it within a bounded time.
 */
#ifndef TEST_PROCESS_H
#define TEST_PROCESS_H

#include <sys/types.h>

/* Starts `command` with /bin/sh in the background, stdout+stderr to log_path; returns the pid
 * (of the shell's exec'd command) or -1. */
pid_t test_process_start(const char *command, const char *log_path);

/* Sends `signal_number`, waits up to timeout_ms, then SIGKILLs; returns the exit status
 * (128 + signal if killed by a signal, -1 if it could not be reaped). */
int test_process_stop(pid_t pid, int signal_number, int timeout_ms);

/* Waits up to timeout_ms for the process to exit by itself; returns its exit status or -1. */
int test_process_wait(pid_t pid, int timeout_ms);

/* Polls until `path` contains `text` (e.g. a log line), up to timeout_ms; 1 if it did. */
int test_process_await_text(const char *path, const char *text, int timeout_ms);

/* Sleeps for milliseconds. */
void test_process_sleep_ms(int milliseconds);

#endif
