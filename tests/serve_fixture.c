/*
 * serve_fixture: see serve_fixture.h.
 *
 * Between fork() and execv() the child calls only async-signal-safe
 * functions (the test process may already have ZeroMQ or worker threads):
 * everything it needs, argv included, is prepared before the fork.
 */
#include "serve_fixture.h"

#include "cm_model.h"
#include "cm_progress.h"
#include "test_util.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

enum { POLL_INTERVAL_US = 5000 };

cm_status_t serve_fixture_write_checkpoint(const char *path, const char *spec_text,
                                           const cm_dataset_t *dataset, uint64_t seed) {
    cm_model_spec_t spec;
    cm_status_t status = cm_model_spec_parse(spec_text, &spec);
    if (status != CM_OK) return status;
    cm_model_t *model = NULL;
    status = cm_model_new(&spec, 1, &model);
    if (status != CM_OK) return status;
    cm_model_init(model, seed);
    const char *const metadata[] = {"view",        dataset->view, "dataset",
                                    dataset->name, "fingerprint", dataset->fingerprint};
    status = cm_model_save(model, path, metadata, 3);
    cm_model_free(&model);
    return status;
}

void serve_fixture_log(const serve_fixture_t *server, char *text, size_t size) {
    text[0] = '\0';
    FILE *file = fopen(server->log_path, "r");
    if (!file) return;
    size_t got = fread(text, 1, size - 1, file);
    text[got] = '\0';
    fclose(file);
}

/* Reads the endpoint and HTTP port from the "serving ..." line; 1 once it is there. */
static int parse_serving_line(serve_fixture_t *server) {
    char log[8192];
    serve_fixture_log(server, log, sizeof log);
    const char *line = strstr(log, " serving '");
    const char *line_end = line ? strchr(line, '\n') : NULL;
    if (!line_end) return 0; /* not (completely) written yet */
    const char *endpoint = strstr(line, ") on ");
    const char *endpoint_end = endpoint ? strstr(endpoint, ", view ") : NULL;
    const char *http = strstr(line, ", HTTP ");
    if (!endpoint_end || !http || http > line_end) return 0;
    endpoint += strlen(") on ");
    snprintf(server->endpoint, sizeof server->endpoint, "%.*s", (int)(endpoint_end - endpoint),
             endpoint);
    const char *port_colon = strchr(http + strlen(", HTTP "), ':');
    server->http_port = port_colon && port_colon < line_end ? atoi(port_colon + 1) : 0;
    return 1;
}

/*
 * Waits up to timeout_ms for the child to exit: 1 when it did (its wait
 * status in *wait_status), 0 on timeout, -1 when it is not our child.
 */
static int wait_exit(pid_t pid, int timeout_ms, int *wait_status) {
    double deadline = cm_progress_now() + timeout_ms / 1000.0;
    for (;;) {
        pid_t done = waitpid(pid, wait_status, WNOHANG);
        if (done == pid) return 1;
        if (done < 0 && errno != EINTR) return -1;
        if (cm_progress_now() > deadline) return 0;
        usleep(POLL_INTERVAL_US);
    }
}

int serve_fixture_start(serve_fixture_t *server, const char *directory, const char *checkpoint,
                        const char *const *extra_args, char *why, size_t why_size) {
    static int started; /* makes the socket path unique within this process */
    memset(server, 0, sizeof *server);
    started++;
    snprintf(server->log_path, sizeof server->log_path, "%s/serve-%d-%d.log", directory,
             (int)getpid(), started);
    char bind[300], binary[512];
    snprintf(bind, sizeof bind, "ipc://%s/serve-%d-%d.sock", directory, (int)getpid(), started);
    snprintf(binary, sizeof binary, "%s", test_util_bin("teacher-server"));
    const char *argv[8 + SERVE_FIXTURE_MAX_ARGS + 1] = {
        binary, "serve", "--model", checkpoint, "--bind", bind, "--http", "127.0.0.1:0"};
    int argc = 8;
    for (int index = 0; extra_args && extra_args[index]; index++) {
        if (index == SERVE_FIXTURE_MAX_ARGS) {
            snprintf(why, why_size, "more than %d extra arguments", SERVE_FIXTURE_MAX_ARGS);
            return -1;
        }
        argv[argc++] = extra_args[index];
    }
    argv[argc] = NULL;

    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        snprintf(why, why_size, "fork: %s", strerror(errno));
        return -1;
    }
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(127); /* the parent died before prctl */
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        int log = open(server->log_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int null = open("/dev/null", O_RDONLY);
        if (log < 0 || null < 0) _exit(127);
        dup2(null, 0);
        dup2(log, 1);
        dup2(log, 2);
        close_range(3, ~0u, 0); /* the test's sockets and files are not the server's business */
        execv(binary, (char *const *)argv);
        _exit(127);
    }
    server->pid = pid;
    double deadline = cm_progress_now() + SERVE_FIXTURE_TIMEOUT_MS / 1000.0;
    for (;;) {
        if (parse_serving_line(server)) return 0;
        int wait_status = 0;
        int exited = waitpid(pid, &wait_status, WNOHANG) == pid;
        if (exited || cm_progress_now() > deadline) {
            if (exited) server->pid = 0;
            serve_fixture_stop(server, SIGKILL, SERVE_FIXTURE_TIMEOUT_MS);
            char log[2048];
            serve_fixture_log(server, log, sizeof log);
            snprintf(why, why_size, "%s %s: %s", binary,
                     exited ? "exited before serving" : "did not start serving in time", log);
            return -1;
        }
        usleep(POLL_INTERVAL_US);
    }
}

int serve_fixture_stop(serve_fixture_t *server, int signal_number, int timeout_ms) {
    if (server->pid <= 0) return -1;
    pid_t pid = server->pid;
    server->pid = 0;
    if (signal_number) kill(pid, signal_number);
    int wait_status = 0, exited = wait_exit(pid, timeout_ms, &wait_status);
    if (exited == 0) {
        kill(pid, SIGKILL);
        wait_exit(pid, SERVE_FIXTURE_TIMEOUT_MS, &wait_status);
    }
    if (exited != 1) return -1;
    if (WIFEXITED(wait_status)) return WEXITSTATUS(wait_status);
    if (WIFSIGNALED(wait_status)) return 256 + WTERMSIG(wait_status);
    return -1;
}

void *serve_fixture_connect(void *context, const char *endpoint) {
    void *socket = zmq_socket(context, ZMQ_DEALER);
    if (!socket) return NULL;
    int timeout_ms = SERVE_FIXTURE_TIMEOUT_MS, linger_ms = 0;
    int64_t unlimited = -1;
    zmq_setsockopt(socket, ZMQ_RCVTIMEO, &timeout_ms, sizeof timeout_ms);
    zmq_setsockopt(socket, ZMQ_SNDTIMEO, &timeout_ms, sizeof timeout_ms);
    zmq_setsockopt(socket, ZMQ_LINGER, &linger_ms, sizeof linger_ms);
    zmq_setsockopt(socket, ZMQ_MAXMSGSIZE, &unlimited, sizeof unlimited);
    if (zmq_connect(socket, endpoint) != 0) {
        zmq_close(socket);
        return NULL;
    }
    return socket;
}

int serve_fixture_send_frames(void *socket, const cm_wire_frame_t *frames, int frame_count) {
    for (int index = 0; index < frame_count; index++)
        if (zmq_send(socket, frames[index].data, frames[index].bytes,
                     index + 1 < frame_count ? ZMQ_SNDMORE : 0) < 0)
            return -1;
    return 0;
}

cm_status_t serve_fixture_receive(void *socket, int timeout_ms, cm_zwire_received_t *received,
                                  cm_wire_message_t *message) {
    cm_wire_limits_t limits = {1u << 24, 1ull << 32, 1u << 16};
    int saved_ms = SERVE_FIXTURE_TIMEOUT_MS;
    size_t option_size = sizeof saved_ms;
    if (timeout_ms >= 0) {
        zmq_getsockopt(socket, ZMQ_RCVTIMEO, &saved_ms, &option_size);
        zmq_setsockopt(socket, ZMQ_RCVTIMEO, &timeout_ms, sizeof timeout_ms);
    }
    cm_status_t status = cm_zwire_recv_message(socket, received, message, &limits, 0);
    if (timeout_ms >= 0) zmq_setsockopt(socket, ZMQ_RCVTIMEO, &saved_ms, sizeof saved_ms);
    return status;
}

void serve_fixture_release(cm_zwire_received_t *received, cm_wire_message_t *message) {
    cm_zwire_release(received, message);
}
