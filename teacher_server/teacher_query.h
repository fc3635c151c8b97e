/*
 * teacher_query: `teacher-server query`, a user's first debugging tool:
 * connect to a teacher, show its Hello, ask for some examples and print
 * what comes back.
 */
#ifndef TEACHER_QUERY_H
#define TEACHER_QUERY_H

/* Runs the query command on argv[first..argc); returns the exit code
 * (0 success, 1 failure, 2 usage error). */
int teacher_query_main(int argc, char **argv, int first);

#endif
