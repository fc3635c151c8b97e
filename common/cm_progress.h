/*
 * cm_progress: a one-line progress bar on stderr, drawn only when stderr is
 * a terminal (logs and CI output stay clean).  Redraws are rate-limited to
 * ten per second so the bar costs nothing in a training loop.
 */
#ifndef CM_PROGRESS_H
#define CM_PROGRESS_H

typedef struct {
    int enabled;       /* stderr is a terminal */
    long total;        /* units of work (examples) */
    double started;    /* monotonic seconds */
    double last_drawn; /* monotonic seconds */
    char label[64];    /* e.g. "epoch 3/10" */
} cm_progress_t;

/* Monotonic clock in seconds. */
double cm_progress_now(void);

/* Starts a bar over `total` units; label is copied. */
void cm_progress_start(cm_progress_t *progress, const char *label, long total);

/* Redraws with `done` units finished and a short status text (e.g. "loss 0.41"). */
void cm_progress_update(cm_progress_t *progress, long done, const char *status);

/* Erases the bar so the next log line starts clean. */
void cm_progress_finish(cm_progress_t *progress);

#endif
