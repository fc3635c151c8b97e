/*
 * cm_progress: progress inside a long loop (a trainer epoch), in one of two
 * forms.  On a terminal, a one-line bar on stderr redrawn in place (through
 * cm_log_status, so log lines never run into it), at most ten times a
 * second, and erased when the loop ends.  Elsewhere (a log file, CI), plain
 * log lines now and then: one each time both `interval` seconds and a tenth
 * of the work have passed since the last, whichever is rarer.  Both show the
 * units done, the rate, the ETA of the loop, the share of the time spent
 * waiting (for teachers) and a caller's status text (the loss).
 */
#ifndef CM_PROGRESS_H
#define CM_PROGRESS_H

#include "cm_status.h"

typedef enum {
    CM_PROGRESS_AUTO,  /* a bar when stderr is a terminal, else lines */
    CM_PROGRESS_BAR,   /* always the bar */
    CM_PROGRESS_LINES, /* always log lines */
    CM_PROGRESS_OFF,   /* nothing */
} cm_progress_mode_t;

typedef struct {
    cm_progress_mode_t mode; /* BAR, LINES or OFF once started */
    long total;              /* units of work (examples) */
    long start_done;         /* units already done when it started (a resumed epoch) */
    long line_done;          /* units done at the last log line */
    double interval;         /* lines: seconds at least between two lines */
    double started;          /* monotonic seconds */
    double last_drawn;       /* monotonic seconds of the last bar or line */
    int shown;               /* the bar is on the screen */
    char label[64];          /* e.g. "epoch 3/10" */
    char unit[24];           /* e.g. "examples" */
} cm_progress_t;

/* Monotonic clock in seconds. */
double cm_progress_now(void);

/* Parses a --progress value: auto, bar, lines or off; CM_ERR_INVALID_ARG with a sentence
 * naming `option` otherwise. */
cm_status_t cm_progress_mode_parse(const char *text, const char *option, cm_progress_mode_t *mode);

/* Starts progress over `total` units named `unit` ("examples") of which `done` are already
 * done; label and unit are copied; `interval` is the least seconds between two log lines. */
void cm_progress_start(cm_progress_t *progress, cm_progress_mode_t mode, const char *label,
                       const char *unit, long total, long done, double interval);

/* Shows `done` units finished after `waited` seconds of waiting in this loop (negative: the
 * loop never waits, no wait share is shown), with a short status text (e.g. "loss 0.41", may
 * be NULL).  Cheap when nothing is due. */
void cm_progress_update(cm_progress_t *progress, long done, double waited, const char *status);

/* Erases the bar so the next log line starts clean (lines: nothing to do). */
void cm_progress_finish(cm_progress_t *progress);

#endif
