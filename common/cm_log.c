/*
 * cm_log: timestamped lines on stderr.  The whole line is formatted into a
 * local buffer first and written under one lock, so lines from different
 * threads do not interleave, and a status line (see cm_log_status) is erased
 * before and redrawn after each of them.
 */
#include "cm_log.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static const char *log_program = "committee";
static cm_log_level_t log_min_level = CM_LOG_INFO;
static const char *const level_names[] = {"debug", "info", "warn", "error"};
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static char status_text[512]; /* the status line shown, "" when none */

void cm_log_init(const char *program, cm_log_level_t level) {
    log_program = program;
    log_min_level = level;
}

cm_status_t cm_log_level_parse(const char *text, cm_log_level_t *level) {
    for (int candidate = CM_LOG_DEBUG; candidate <= CM_LOG_ERROR; candidate++)
        if (strcmp(text, level_names[candidate]) == 0) {
            *level = (cm_log_level_t)candidate;
            return CM_OK;
        }
    return cm_fail(CM_ERR_INVALID_ARG, "--log-level must be debug, info, warn or error");
}

void cm_log(cm_log_level_t level, const char *format, ...) {
    if (level < log_min_level) return;
    char line[2048];
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    struct tm utc;
    gmtime_r(&now.tv_sec, &utc);
    int used = (int)strftime(line, sizeof line, "%Y-%m-%dT%H:%M:%S", &utc);
    used += snprintf(line + used, sizeof line - (size_t)used,
                     ".%03ldZ %s %s: ", now.tv_nsec / 1000000, log_program, level_names[level]);
    va_list args;
    va_start(args, format);
    if (used < (int)sizeof line) vsnprintf(line + used, sizeof line - (size_t)used, format, args);
    va_end(args);
    size_t length = strlen(line);
    if (length + 2 > sizeof line) length = sizeof line - 2;
    line[length] = '\n';
    line[length + 1] = '\0';
    pthread_mutex_lock(&log_lock);
    if (status_text[0]) fputs("\r\033[K", stderr);
    fputs(line, stderr);
    if (status_text[0]) fprintf(stderr, "\r%s\033[K", status_text);
    fflush(stderr);
    pthread_mutex_unlock(&log_lock);
}

void cm_log_status(const char *text) {
    pthread_mutex_lock(&log_lock);
    int shown = status_text[0] != '\0';
    snprintf(status_text, sizeof status_text, "%s", text ? text : "");
    if (status_text[0])
        fprintf(stderr, "\r%s\033[K", status_text);
    else if (shown) /* erasing nothing writes nothing: safe to call when no line is shown */
        fputs("\r\033[K", stderr);
    fflush(stderr);
    pthread_mutex_unlock(&log_lock);
}
