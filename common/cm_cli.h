/*
 * cm_cli: table-driven command-line options shared by both binaries.
 *
 * A command declares its options once (long name, value kind, where to
 * store it, help text); cm_cli_parse then accepts `--name value`,
 * `--name=value` and bare flags, falls back to the environment variable
 * COMMITTEE_<NAME> (upper case, '-' becomes '_') for every option not given
 * on the command line, validates numbers, and cm_cli_usage prints the help
 * text with defaults and variable names.  Storage is owned by the caller and
 * pre-filled with the defaults; string values point into argv or environ, or
 * into copies kept until exit.
 *
 * Every command also takes `--config FILE` (or COMMITTEE_CONFIG): a YAML
 * mapping (read with libyaml) whose keys are the long option names, e.g.
 *     model: mlp:49-64-64-10
 *     teacher: [fm=tcp://127.0.0.1:5555, comp=tcp://127.0.0.1:5556]
 *     resume: true
 * A list option takes a sequence (or one scalar), a flag a boolean, and a
 * null value (`~`, or nothing after the colon) leaves the default.
 * Precedence: command line > COMMITTEE_* environment > config file > default
 * (a list given on the command line replaces the file's, it does not append).
 * Unknown keys, duplicate keys, values of the wrong type and malformed YAML
 * are usage errors whose sentence names the file, the line and the key;
 * every key is checked, also those the command line overrides.
 */
#ifndef CM_CLI_H
#define CM_CLI_H

#include "cm_status.h"

#include <stdio.h>

/* The one version of both binaries (also what `make install` and the man pages say). */
#define CM_VERSION "0.9.0"

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

/*
 * The effective configuration after cm_cli_parse: a compact JSON object of every option by
 * long name (strings or null, numbers, booleans for flags, arrays for lists), in table order;
 * floats are printed with the fewest digits that read back as the same float.  The caller
 * frees it with free(); NULL when out of memory.  It is itself a valid --config file.
 */
char *cm_cli_effective_json(const cm_cli_option_t *options, int count);

/* Prints "PROGRAM VERSION (protocol MAJOR.MINOR)\n" to `out`, for `--version`. */
void cm_cli_print_version(FILE *out, const char *program);

/* Prints "usage: <usage_line>\n\n<description>\n\noptions:\n..." to `out`. */
void cm_cli_usage(FILE *out, const char *usage_line, const char *description,
                  const cm_cli_option_t *options, int count);

#endif
