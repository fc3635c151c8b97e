/*
 * cm_status: the status table, its names and messages, and the per-thread
 * detail sentence.  See cm_status.h.
 */
#include "cm_status.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static const char *const status_names[] = {
#define CM_STATUS_NAME(code, name, message) name,
    CM_STATUS_TABLE(CM_STATUS_NAME)
#undef CM_STATUS_NAME
};

static const char *const status_messages[] = {
#define CM_STATUS_MESSAGE(code, name, message) message,
    CM_STATUS_TABLE(CM_STATUS_MESSAGE)
#undef CM_STATUS_MESSAGE
};

static _Thread_local char last_error[1024];

const char *cm_status_name(cm_status_t status) {
    if ((int)status < 0 || status >= CM_STATUS_COUNT) return "UNKNOWN";
    return status_names[status];
}

const char *cm_status_str(cm_status_t status) {
    if ((int)status < 0 || status >= CM_STATUS_COUNT) return "unknown status";
    return status_messages[status];
}

cm_status_t cm_status_from_name(const char *name) {
    for (int code = 0; code < CM_STATUS_COUNT; code++)
        if (strcmp(status_names[code], name) == 0) return (cm_status_t)code;
    return CM_ERR_INTERNAL;
}

cm_status_t cm_fail(cm_status_t status, const char *format, ...) {
    va_list args;
    va_start(args, format);
    vsnprintf(last_error, sizeof last_error, format, args);
    va_end(args);
    return status;
}

const char *cm_last_error(void) { return last_error[0] ? last_error : "no details"; }

void cm_clear_error(void) { last_error[0] = '\0'; }
