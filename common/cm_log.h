/*
 * cm_log: one-line log messages on stderr.
 *
 * Every line carries a UTC timestamp, the level and the program name set by
 * cm_log_init().  Messages below the configured level are dropped.  Logging
 * is thread-safe (one write per line, under a lock) and never fails loudly.
 *
 * A status line (a progress bar) may sit below the log: cm_log_status()
 * draws it in place with "\r", and every log line first erases it, then is
 * written, then redraws it, so log lines never run into a bar.
 */
#ifndef CM_LOG_H
#define CM_LOG_H

#include "cm_status.h"

typedef enum { CM_LOG_DEBUG, CM_LOG_INFO, CM_LOG_WARN, CM_LOG_ERROR } cm_log_level_t;

/* Sets the program name shown on every line and the minimum level. */
void cm_log_init(const char *program, cm_log_level_t level);

/* Parses the --log-level value "debug", "info", "warn" or "error" into *level;
 * CM_ERR_INVALID_ARG with a sentence for anything else. */
cm_status_t cm_log_level_parse(const char *text, cm_log_level_t *level);

void cm_log(cm_log_level_t level, const char *format, ...) __attribute__((format(printf, 2, 3)));

/* Shows `text` as the status line on stderr (redrawn in place, "\r" and erase to the end of
 * the line); NULL or "" erases it, leaving the cursor at the start of a clean line, and
 * writes nothing when no status line is shown.  For a terminal only: the caller decides
 * (cm_progress does). */
void cm_log_status(const char *text);

#define cm_log_debug(...) cm_log(CM_LOG_DEBUG, __VA_ARGS__)
#define cm_log_info(...)  cm_log(CM_LOG_INFO, __VA_ARGS__)
#define cm_log_warn(...)  cm_log(CM_LOG_WARN, __VA_ARGS__)
#define cm_log_error(...) cm_log(CM_LOG_ERROR, __VA_ARGS__)

#endif
