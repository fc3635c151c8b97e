/*
 * cm_progress: see cm_progress.h.
 */
#include "cm_progress.h"

#include <stdio.h>
#include <time.h>
#include <unistd.h>

double cm_progress_now(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)now.tv_sec + (double)now.tv_nsec * 1e-9;
}

void cm_progress_start(cm_progress_t *progress, const char *label, long total) {
    progress->enabled = isatty(STDERR_FILENO);
    progress->total = total > 0 ? total : 1;
    progress->started = cm_progress_now();
    progress->last_drawn = 0.0;
    snprintf(progress->label, sizeof progress->label, "%s", label);
}

void cm_progress_update(cm_progress_t *progress, long done, const char *status) {
    if (!progress->enabled) return;
    double now = cm_progress_now();
    if (now - progress->last_drawn < 0.1 && done < progress->total) return;
    progress->last_drawn = now;
    enum { WIDTH = 30 };
    int filled = (int)(WIDTH * done / progress->total);
    char bar[WIDTH + 1];
    for (int cell = 0; cell < WIDTH; cell++) bar[cell] = cell < filled ? '#' : '.';
    bar[WIDTH] = '\0';
    double elapsed = now - progress->started;
    double rate = elapsed > 0 ? (double)done / elapsed : 0.0;
    fprintf(stderr, "\r%s [%s] %3d%%  %.0f/s  %s\033[K", progress->label, bar,
            (int)(100 * done / progress->total), rate, status ? status : "");
    fflush(stderr);
}

void cm_progress_finish(cm_progress_t *progress) {
    if (!progress->enabled) return;
    fprintf(stderr, "\r\033[K");
    fflush(stderr);
}
