/*
 * cm_progress: see cm_progress.h.
 */
#include "cm_progress.h"

#include "cm_log.h"

#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

double cm_progress_now(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)now.tv_sec + (double)now.tv_nsec * 1e-9;
}

cm_status_t cm_progress_mode_parse(const char *text, const char *option, cm_progress_mode_t *mode) {
    static const char *const names[] = {"auto", "bar", "lines", "off"};
    for (int candidate = 0; candidate < 4; candidate++)
        if (strcmp(text, names[candidate]) == 0) {
            *mode = (cm_progress_mode_t)candidate;
            return CM_OK;
        }
    return cm_fail(CM_ERR_INVALID_ARG, "%s must be auto, bar, lines or off, not '%s'", option,
                   text);
}

void cm_progress_start(cm_progress_t *progress, cm_progress_mode_t mode, const char *label,
                       const char *unit, long total, long done, double interval) {
    if (mode == CM_PROGRESS_AUTO)
        mode = isatty(STDERR_FILENO) ? CM_PROGRESS_BAR : CM_PROGRESS_LINES;
    progress->mode = mode;
    progress->total = total > 0 ? total : 1;
    progress->start_done = progress->line_done = done;
    progress->interval = interval;
    progress->started = cm_progress_now();
    progress->last_drawn = progress->started;
    progress->shown = 0;
    snprintf(progress->label, sizeof progress->label, "%s", label);
    snprintf(progress->unit, sizeof progress->unit, "%s", unit);
}

/* "1:05" or "1:02:05" for a number of seconds (ETAs); "?" when unknown. */
static void format_duration(char *text, size_t size, double seconds) {
    if (!(seconds >= 0) || seconds > 360000) {
        snprintf(text, size, "?");
        return;
    }
    long whole = (long)(seconds + 0.5);
    if (whole >= 3600)
        snprintf(text, size, "%ld:%02ld:%02ld", whole / 3600, whole / 60 % 60, whole % 60);
    else
        snprintf(text, size, "%ld:%02ld", whole / 60, whole % 60);
}

void cm_progress_update(cm_progress_t *progress, long done, double waited, const char *status) {
    if (progress->mode == CM_PROGRESS_OFF) return;
    double now = cm_progress_now();
    if (done > progress->total) done = progress->total;
    if (progress->mode == CM_PROGRESS_BAR) {
        if (progress->shown && now - progress->last_drawn < 0.1 && done < progress->total) return;
    } else if (now - progress->last_drawn < progress->interval ||
               (done - progress->line_done) * 10 < progress->total) {
        return;
    }
    progress->last_drawn = now;
    double elapsed = now - progress->started;
    long fresh = done - progress->start_done; /* done since the start, the rate's work */
    double rate = elapsed > 0 ? (double)fresh / elapsed : 0.0;
    char eta[24];
    format_duration(eta, sizeof eta, rate > 0 ? (double)(progress->total - done) / rate : -1.0);
    int percent = (int)(100 * done / progress->total);
    char wait[32] = ""; /* the share of the time spent waiting, when the loop waits at all */
    if (waited >= 0) {
        int wait_percent = elapsed > 0 ? (int)(100.0 * waited / elapsed + 0.5) : 0;
        snprintf(wait, sizeof wait, "teacher wait %d%%  ", wait_percent > 100 ? 100 : wait_percent);
    }
    if (progress->mode == CM_PROGRESS_LINES) {
        progress->line_done = done;
        cm_log_info("%s: %3d%% (%ld/%ld %s)  %.0f %s/s  ETA %s  %s%s", progress->label, percent,
                    done, progress->total, progress->unit, rate, progress->unit, eta, wait,
                    status ? status : "");
        return;
    }
    enum { WIDTH = 24 };
    int filled = (int)(WIDTH * done / progress->total);
    char bar[WIDTH + 1];
    for (int cell = 0; cell < WIDTH; cell++) bar[cell] = cell < filled ? '#' : '.';
    bar[WIDTH] = '\0';
    char line[256];
    snprintf(line, sizeof line, "%s [%s] %3d%%  %.0f %s/s  ETA %s  %s%s", progress->label, bar,
             percent, rate, progress->unit, eta, wait, status ? status : "");
    cm_log_status(line);
    progress->shown = 1;
}

void cm_progress_finish(cm_progress_t *progress) {
    if (progress->mode != CM_PROGRESS_BAR || !progress->shown) return;
    cm_log_status(NULL);
    progress->shown = 0;
}
