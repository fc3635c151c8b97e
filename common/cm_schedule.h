/*
 * cm_schedule: learning-rate schedules as pure functions of the step.
 *
 * A schedule is a small value (no allocation, no state): cm_schedule_lr(s,
 * step, total_steps) gives the learning rate of optimizer step `step`
 * (0-based, 0 .. total_steps-1), so a resumed run gets the same rates from
 * its saved step alone.  Three kinds:
 *
 *  - constant: peak_lr, after an optional linear warm-up (warmup_steps > 0).
 *  - cosine: a linear warm-up from peak_lr/warmup to peak_lr over
 *    warmup_steps, then a cosine from peak_lr down to final_fraction*peak_lr
 *    at total_steps.  The default warm-up is 5% of the run capped at 200
 *    steps and the default floor 10%: the recipe `teacher-server fit` always
 *    used.
 *  - onecycle (Smith's one-cycle, like torch.optim.lr_scheduler.OneCycleLR with
 *    cosine annealing): a cosine rise from start_fraction*peak_lr to peak_lr
 *    over warmup_steps (default 30% of the run), then a cosine fall to
 *    final_fraction*peak_lr at the last step (defaults 1/25 and 1/25e4, as
 *    PyTorch's div_factor 25 and final_div_factor 1e4).
 *
 * Steps past total_steps keep the last rate.  The learning rate is always
 * positive for a positive peak_lr (except a onecycle with start_fraction 0 at
 * step 0).
 */
#ifndef CM_SCHEDULE_H
#define CM_SCHEDULE_H

#include "cm_status.h"

typedef enum { CM_SCHEDULE_CONSTANT, CM_SCHEDULE_COSINE, CM_SCHEDULE_ONECYCLE } cm_schedule_kind_t;

typedef struct {
    cm_schedule_kind_t kind;
    float peak_lr;        /* the largest learning rate (constant: the rate) */
    long warmup_steps;    /* rising phase in steps; < 0: the kind's default (see above) */
    float start_fraction; /* onecycle: first rate / peak_lr */
    float final_fraction; /* cosine, onecycle: last rate / peak_lr */
} cm_schedule_t;

/* The schedule `kind` with peak_lr and the kind's defaults (see the file comment). */
cm_schedule_t cm_schedule_defaults(cm_schedule_kind_t kind, float peak_lr);

/* Parses "constant", "cosine" or "onecycle"; CM_ERR_INVALID_ARG with a sentence otherwise. */
cm_status_t cm_schedule_parse_kind(const char *name, cm_schedule_kind_t *kind);

/* "constant", "cosine" or "onecycle". */
const char *cm_schedule_kind_name(cm_schedule_kind_t kind);

/* The warm-up length the schedule uses in a run of total_steps (resolves the default, never
 * more than total_steps). */
long cm_schedule_warmup(const cm_schedule_t *schedule, long total_steps);

/* The learning rate of step `step` (0-based) of a run of total_steps >= 1 steps. */
float cm_schedule_lr(const cm_schedule_t *schedule, long step, long total_steps);

#endif
