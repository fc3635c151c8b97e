/*
 * cm_log: one-line log messages on stderr.
 *
 * Every line carries a UTC timestamp, the level and the program name set by
 * cm_log_init().  Messages below the configured level are dropped.  Logging
 * is thread-safe (one fprintf per line) and never fails loudly.
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

#define cm_log_debug(...) cm_log(CM_LOG_DEBUG, __VA_ARGS__)
#define cm_log_info(...)  cm_log(CM_LOG_INFO, __VA_ARGS__)
#define cm_log_warn(...)  cm_log(CM_LOG_WARN, __VA_ARGS__)
#define cm_log_error(...) cm_log(CM_LOG_ERROR, __VA_ARGS__)

#endif
