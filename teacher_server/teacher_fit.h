/*
 * teacher_fit: `teacher-server fit`, training a teacher checkpoint on one
 * dataset view with AdamW and cross-entropy.
 */
#ifndef TEACHER_FIT_H
#define TEACHER_FIT_H

/* Runs the fit command on argv[first..argc); returns the process exit code
 * (0 success, 1 failure, 2 usage error). */
int teacher_fit_main(int argc, char **argv, int first);

#endif
