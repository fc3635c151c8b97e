/*
 * cm_cli: table-driven command-line options shared by both binaries.
 *
 * A command declares its options once (long name, value kind, where to
 * store it, help text); cm_cli_parse then accepts `--name value`,
 * `--name=value` and bare flags, falls back to the environment variable
 * COMMITTEE_<NAME> (upper case, '-' becomes '_') for every option not given
 * on the command line, validates numbers, and cm_cli_usage prints the help
 * text with defaults and variable names.  Storage is owned by the caller and
 * pre-filled with the defaults; string values point into argv or environ.
 */
#ifndef CM_CLI_H
#define CM_CLI_H

#include "cm_status.h"

#include <stdio.h>

typedef enum {
    CM_CLI_STRING, /* const char ** */
    CM_CLI_INT,    /* int * */
    CM_CLI_LONG,   /* long * */
    CM_CLI_FLOAT,  /* float * */
    CM_CLI_FLAG,   /* int *, set to 1 when present (env: 1/true/yes) */
    CM_CLI_LIST    /* cm_cli_list_t *, repeatable; env value is comma-separated */
} cm_cli_kind_t;

enum { CM_CLI_LIST_MAX = 16 };

typedef struct {
    int count;
    const char *values[CM_CLI_LIST_MAX];
} cm_cli_list_t;

typedef struct {
    const char *name;    /* long name without dashes: "epochs" */
    cm_cli_kind_t kind;  /* how to parse the value */
    void *value;         /* where to store it (type per kind) */
    const char *metavar; /* "N", "FILE", ...; NULL for flags */
    const char *help;    /* one line; mention units and ranges */
    int required;        /* 1: missing is a usage error */
} cm_cli_option_t;

/*
 * Parses argv[first..argc) against options[0..count).  Returns CM_OK;
 * CM_ERR_INVALID_ARG with a one-line sentence (cm_last_error) for unknown
 * options, missing values, bad numbers or missing required options; sets
 * *help_requested when --help/-h is given (then nothing else is checked).
 */
cm_status_t cm_cli_parse(const cm_cli_option_t *options, int count, int argc, char **argv,
                         int first, int *help_requested);

/* Prints "usage: <usage_line>\n\n<description>\n\noptions:\n..." to `out`. */
void cm_cli_usage(FILE *out, const char *usage_line, const char *description,
                  const cm_cli_option_t *options, int count);

#endif
