/*
 * test_process: see test_process.h.  Commands run through `exec` in a shell
 * so the pid is the program's own and signals reach it directly.
 */
#include "test_process.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

void test_process_sleep_ms(int milliseconds) {
    struct timespec pause = {milliseconds / 1000, (milliseconds % 1000) * 1000000L};
    while (nanosleep(&pause, &pause) != 0 && errno == EINTR) {
    }
}

pid_t test_process_start(const char *command, const char *log_path) {
    pid_t pid = fork();
    if (pid != 0) return pid;
    int log = open(log_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (log >= 0) {
        dup2(log, STDOUT_FILENO);
        dup2(log, STDERR_FILENO);
        close(log);
    }
    size_t length = strlen(command) + 8;
    char *full = malloc(length);
    if (!full) _exit(127);
    snprintf(full, length, "exec %s", command);
    execl("/bin/sh", "sh", "-c", full, (char *)NULL);
    _exit(127);
}

int test_process_wait(pid_t pid, int timeout_ms) {
    for (int waited = 0; waited <= timeout_ms; waited += 10) {
        int status = 0;
        pid_t done = waitpid(pid, &status, WNOHANG);
        if (done == pid) {
            if (WIFEXITED(status)) return WEXITSTATUS(status);
            if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
            return -1;
        }
        if (done < 0) return -1;
        test_process_sleep_ms(10);
    }
    return -1;
}

int test_process_stop(pid_t pid, int signal_number, int timeout_ms) {
    if (pid <= 0) return -1;
    kill(pid, signal_number);
    int status = test_process_wait(pid, timeout_ms);
    if (status == -1) {
        kill(pid, SIGKILL);
        status = test_process_wait(pid, 2000);
        if (status >= 0) status = 128 + SIGKILL;
    }
    return status;
}

/* Whether the file at `path` holds `text` (all of it is read: a log can be long). */
static int file_holds(const char *path, const char *text) {
    FILE *file = fopen(path, "r");
    if (!file) return 0;
    int found = 0;
    long size = fseek(file, 0, SEEK_END) == 0 ? ftell(file) : -1;
    char *buffer = size >= 0 ? malloc((size_t)size + 1) : NULL;
    if (buffer) {
        rewind(file);
        size_t got = fread(buffer, 1, (size_t)size, file);
        buffer[got] = '\0';
        found = strstr(buffer, text) != NULL;
        free(buffer);
    }
    fclose(file);
    return found;
}

int test_process_await_text(const char *path, const char *text, int timeout_ms) {
    for (int waited = 0; waited <= timeout_ms; waited += 20) {
        if (file_holds(path, text)) return 1;
        test_process_sleep_ms(20);
    }
    return 0;
}
