/*
 * trainer_eval: `student-trainer eval`, accuracy and loss of a checkpoint
 * on a split of the dataset view the checkpoint names.
 */
#ifndef TRAINER_EVAL_H
#define TRAINER_EVAL_H

/* Runs eval on argv[first..argc); returns the exit code (0, 1 failure, 2 usage). */
int trainer_eval_main(int argc, char **argv, int first);

#endif
