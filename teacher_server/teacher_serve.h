/*
 * teacher_serve: `teacher-server serve`, a frozen teacher answering
 * BatchRequests over ZeroMQ, with /healthz, /readyz and /metrics over HTTP.
 */
#ifndef TEACHER_SERVE_H
#define TEACHER_SERVE_H

/* Runs the serve command on argv[first..argc); returns the process exit code
 * (0 after a graceful stop, 1 failure, 2 usage error). */
int teacher_serve_main(int argc, char **argv, int first);

#endif
