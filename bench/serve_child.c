/*
 * serve_child: see serve_child.h.
 */
#include "serve_child.h"

#include "cm_progress.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zmq.h>

enum { MAX_ARGUMENTS = 64 };

void serve_child_print_log(const serve_child_t *child) {
    FILE *file = fopen(child->log_path, "r");
    if (!file) return;
    char line[1024];
    while (fgets(line, sizeof line, file)) fputs(line, stderr);
    fclose(file);
}

/* Copies the endpoint from the "serving ... on ENDPOINT, view ..." log line; 1 once it is there. */
static int read_endpoint(serve_child_t *child) {
    char log[8192];
    FILE *file = fopen(child->log_path, "r");
    if (!file) return 0;
    size_t got = fread(log, 1, sizeof log - 1, file);
    fclose(file);
    log[got] = '\0';
    const char *line = strstr(log, " serving '");
    const char *start = line ? strstr(line, ") on ") : NULL;
    const char *end = start ? strstr(start, ", view ") : NULL;
    if (!end || !strchr(end, '\n')) return 0;
    start += strlen(") on ");
    snprintf(child->endpoint, sizeof child->endpoint, "%.*s", (int)(end - start), start);
    return 1;
}

int serve_child_stop(serve_child_t *child, int signal_number, int timeout_ms) {
    if (child->pid <= 0) return -1;
    if (signal_number) kill(child->pid, signal_number);
    double deadline = cm_progress_now() + timeout_ms / 1000.0;
    int wait_status = 0, result = -1;
    for (;;) {
        pid_t done = waitpid(child->pid, &wait_status, WNOHANG);
        if (done == child->pid) {
            result =
                WIFEXITED(wait_status) ? WEXITSTATUS(wait_status) : 256 + WTERMSIG(wait_status);
            break;
        }
        if ((done < 0 && errno != EINTR) || cm_progress_now() > deadline) {
            kill(child->pid, SIGKILL);
            waitpid(child->pid, &wait_status, 0);
            break;
        }
        usleep(5000);
    }
    child->pid = 0;
    return result;
}

int serve_child_start(serve_child_t *child, const char *checkpoint, int max_train, int max_test,
                      char *const *extra, const char *log_path, int timeout_ms) {
    const char *bin_dir = getenv("COMMITTEE_BIN_DIR");
    char binary[512], train_text[16], test_text[16];
    snprintf(binary, sizeof binary, "%s/teacher-server",
             bin_dir && *bin_dir ? bin_dir : "build/bin");
    snprintf(train_text, sizeof train_text, "%d", max_train);
    snprintf(test_text, sizeof test_text, "%d", max_test);
    snprintf(child->log_path, sizeof child->log_path, "%s", log_path);
    char *argv[MAX_ARGUMENTS] = {binary,        "serve",
                                 "--model",     (char *)checkpoint,
                                 "--bind",      "tcp://127.0.0.1:*",
                                 "--http",      "off",
                                 "--threads",   "1",
                                 "--max-train", train_text,
                                 "--max-test",  test_text};
    int count = 14;
    for (int index = 0; extra && extra[index] && count < MAX_ARGUMENTS - 1; index++)
        argv[count++] = extra[index];
    argv[count] = NULL;
    pid_t parent = getpid();
    child->pid = fork();
    if (child->pid < 0) {
        child->pid = 0;
        fprintf(stderr, "serve_child: fork: %s\n", strerror(errno));
        return -1;
    }
    if (child->pid == 0) { /* async-signal-safe calls only until execv */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(127);
        int log = open(child->log_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (log < 0) _exit(127);
        dup2(log, 1);
        dup2(log, 2);
        execv(binary, argv);
        _exit(127);
    }
    double deadline = cm_progress_now() + timeout_ms / 1000.0;
    while (!read_endpoint(child)) {
        int wait_status;
        int exited = waitpid(child->pid, &wait_status, WNOHANG) == child->pid;
        if (exited || cm_progress_now() > deadline) {
            if (exited)
                child->pid = 0;
            else
                serve_child_stop(child, SIGKILL, timeout_ms);
            fprintf(stderr, "serve_child: %s did not start serving; its log:\n", binary);
            serve_child_print_log(child);
            return -1;
        }
        usleep(5000);
    }
    return 0;
}

void *serve_child_dealer(void *context, const char *endpoint, int timeout_ms,
                         const cm_curve_keypair_t *keys, const char *server_key) {
    void *socket = zmq_socket(context, ZMQ_DEALER);
    if (!socket) return NULL;
    int linger_ms = 0;
    zmq_setsockopt(socket, ZMQ_RCVTIMEO, &timeout_ms, sizeof timeout_ms);
    zmq_setsockopt(socket, ZMQ_SNDTIMEO, &timeout_ms, sizeof timeout_ms);
    zmq_setsockopt(socket, ZMQ_LINGER, &linger_ms, sizeof linger_ms);
    if ((keys && cm_curve_make_client(socket, keys, server_key) != CM_OK) ||
        zmq_connect(socket, endpoint) != 0) {
        zmq_close(socket);
        return NULL;
    }
    return socket;
}
