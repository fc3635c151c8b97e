/*
 * teacher_data: `teacher-server data check DIR` (validate a dataset folder
 * and print what it holds) and `teacher-server data export NAME DIR` (write
 * a built-in dataset as a folder).
 */
#ifndef TEACHER_DATA_H
#define TEACHER_DATA_H

/* Runs `data ...` on argv[first..argc); returns the exit code (0, 1 failure, 2 usage). */
int teacher_data_main(int argc, char **argv, int first);

#endif
