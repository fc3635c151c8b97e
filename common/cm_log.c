/*
 * cm_log: timestamped lines on stderr.  The whole line is formatted into a
 * local buffer first and written with one fputs, so lines from different
 * threads do not interleave.
 */
#include "cm_log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static const char *log_program = "committee";
static cm_log_level_t log_min_level = CM_LOG_INFO;
static const char *const level_names[] = {"debug", "info", "warn", "error"};

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
    fputs(line, stderr);
}
