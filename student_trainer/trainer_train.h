/*
 * trainer_train: `student-trainer train` (students distilled from a live
 * committee) and `student-trainer replay` (from recorded teacher outputs),
 * which share one training loop.
 */
#ifndef TRAINER_TRAIN_H
#define TRAINER_TRAIN_H

/* `train` (replay = 0) or `replay` (replay = 1) on argv[first..argc); returns the exit code
 * (0 success, 1 failure, 2 usage error, 130 interrupted after saving a resumable state). */
int trainer_train_main(int argc, char **argv, int first, int replay);

#endif
