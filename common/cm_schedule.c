/*
 * cm_schedule: constant, cosine with linear warm-up, and one-cycle learning
 * rates as pure functions of (step, total_steps).  See cm_schedule.h.
 *
 * Arithmetic is in double and rounded once to float, so the same step gives
 * the same rate on every call, which resume relies on.
 */
#include "cm_schedule.h"

#include <math.h>
#include <string.h>

static const double pi = 3.14159265358979323846;

cm_schedule_t cm_schedule_defaults(cm_schedule_kind_t kind, float peak_lr) {
    cm_schedule_t schedule = {.kind = kind, .peak_lr = peak_lr, .warmup_steps = -1};
    switch (kind) {
    case CM_SCHEDULE_CONSTANT:
        schedule.final_fraction = 1.0f;
        schedule.start_fraction = 1.0f;
        break;
    case CM_SCHEDULE_COSINE:
        schedule.final_fraction = 0.1f;
        schedule.start_fraction = 0.0f;
        break;
    case CM_SCHEDULE_ONECYCLE:
        schedule.start_fraction = 1.0f / 25.0f;
        schedule.final_fraction = 1.0f / 25.0f / 1e4f;
        break;
    }
    return schedule;
}

cm_status_t cm_schedule_parse_kind(const char *name, cm_schedule_kind_t *kind) {
    static const cm_schedule_kind_t kinds[] = {CM_SCHEDULE_CONSTANT, CM_SCHEDULE_COSINE,
                                               CM_SCHEDULE_ONECYCLE};
    for (size_t index = 0; index < sizeof kinds / sizeof kinds[0]; index++)
        if (strcmp(name, cm_schedule_kind_name(kinds[index])) == 0) {
            *kind = kinds[index];
            return CM_OK;
        }
    return cm_fail(CM_ERR_INVALID_ARG,
                   "unknown learning-rate schedule '%s' (known: constant, cosine, onecycle)", name);
}

const char *cm_schedule_kind_name(cm_schedule_kind_t kind) {
    switch (kind) {
    case CM_SCHEDULE_CONSTANT:
        return "constant";
    case CM_SCHEDULE_COSINE:
        return "cosine";
    case CM_SCHEDULE_ONECYCLE:
        return "onecycle";
    }
    return "?";
}

long cm_schedule_warmup(const cm_schedule_t *schedule, long total_steps) {
    long warmup = schedule->warmup_steps;
    if (warmup < 0) switch (schedule->kind) {
        case CM_SCHEDULE_CONSTANT:
            warmup = 0;
            break;
        case CM_SCHEDULE_COSINE:
            warmup = total_steps / 20 < 200 ? total_steps / 20 : 200;
            break;
        case CM_SCHEDULE_ONECYCLE:
            warmup = (long)(0.3 * (double)total_steps);
            break;
        }
    return warmup < total_steps ? warmup : total_steps;
}

/* Cosine interpolation from `from` (progress 0) to `to` (progress 1), progress clamped. */
static double cosine_between(double from, double to, double progress) {
    if (progress < 0.0) progress = 0.0;
    if (progress > 1.0) progress = 1.0;
    return to + (from - to) * 0.5 * (1.0 + cos(pi * progress));
}

float cm_schedule_lr(const cm_schedule_t *schedule, long step, long total_steps) {
    double peak = schedule->peak_lr;
    long warmup = cm_schedule_warmup(schedule, total_steps);
    if (step < 0) step = 0;
    switch (schedule->kind) {
    case CM_SCHEDULE_CONSTANT:
    case CM_SCHEDULE_COSINE: {
        if (step < warmup) return (float)(peak * (double)(step + 1) / (double)warmup);
        if (schedule->kind == CM_SCHEDULE_CONSTANT) return (float)peak;
        long decay_steps = total_steps - warmup > 0 ? total_steps - warmup : 1;
        return (float)cosine_between(peak, peak * schedule->final_fraction,
                                     (double)(step - warmup) / (double)decay_steps);
    }
    case CM_SCHEDULE_ONECYCLE: {
        double start = peak * schedule->start_fraction, final = peak * schedule->final_fraction;
        if (step < warmup) return (float)cosine_between(start, peak, (double)step / (double)warmup);
        /* the fall ends exactly at the last step, total_steps - 1 */
        long fall_steps = total_steps - 1 - warmup;
        if (fall_steps <= 0) return (float)peak; /* the rise took the whole run */
        return (float)cosine_between(peak, final, (double)(step - warmup) / (double)fall_steps);
    }
    }
    return (float)peak;
}
