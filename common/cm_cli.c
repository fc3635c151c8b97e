/*
 * cm_cli: see cm_cli.h.  Values are parsed strictly (the whole string must
 * be a number in range), because a typo in `--lr 1e-3x` should stop a
 * 20-minute run before it starts, not silently become 1e-3.
 */
#include "cm_cli.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Copies of comma-separated environment lists, alive until exit (list values point into them). */
static char *env_copies[64];
static int env_copy_count;

static void free_env_copies(void) {
    for (int index = 0; index < env_copy_count; index++) free(env_copies[index]);
    env_copy_count = 0;
}

static char *keep_env_copy(const char *text) {
    if (env_copy_count == (int)(sizeof env_copies / sizeof env_copies[0])) return NULL;
    char *copy = strdup(text);
    if (!copy) return NULL;
    if (env_copy_count == 0) atexit(free_env_copies);
    env_copies[env_copy_count++] = copy;
    return copy;
}

static void env_name(const char *option_name, char *out, size_t size) {
    size_t used = (size_t)snprintf(out, size, "COMMITTEE_");
    for (const char *c = option_name; *c && used + 1 < size; c++)
        out[used++] = *c == '-' ? '_' : (char)toupper((unsigned char)*c);
    out[used] = '\0';
}

static cm_status_t store_value(const cm_cli_option_t *option, const char *text,
                               const char *source) {
    char *end = NULL;
    errno = 0;
    switch (option->kind) {
    case CM_CLI_STRING:
        *(const char **)option->value = text;
        return CM_OK;
    case CM_CLI_LIST: {
        cm_cli_list_t *list = option->value;
        if (list->count >= CM_CLI_LIST_MAX)
            return cm_fail(CM_ERR_INVALID_ARG, "%s: at most %d values are allowed", source,
                           CM_CLI_LIST_MAX);
        list->values[list->count++] = text;
        return CM_OK;
    }
    case CM_CLI_INT:
    case CM_CLI_LONG: {
        long number = strtol(text, &end, 10);
        if (errno || end == text || *end != '\0' ||
            (option->kind == CM_CLI_INT && (number < INT_MIN || number > INT_MAX)))
            return cm_fail(CM_ERR_INVALID_ARG, "%s expects an integer, got '%s'", source, text);
        if (option->kind == CM_CLI_INT)
            *(int *)option->value = (int)number;
        else
            *(long *)option->value = number;
        return CM_OK;
    }
    case CM_CLI_FLOAT: {
        float number = strtof(text, &end);
        if (errno || end == text || *end != '\0' || !isfinite(number))
            return cm_fail(CM_ERR_INVALID_ARG, "%s expects a number, got '%s'", source, text);
        *(float *)option->value = number;
        return CM_OK;
    }
    case CM_CLI_FLAG:
        if (strcmp(text, "1") == 0 || strcmp(text, "true") == 0 || strcmp(text, "yes") == 0)
            *(int *)option->value = 1;
        else if (strcmp(text, "0") == 0 || strcmp(text, "false") == 0 || strcmp(text, "no") == 0)
            *(int *)option->value = 0;
        else
            return cm_fail(CM_ERR_INVALID_ARG, "%s expects 1/0, true/false or yes/no, got '%s'",
                           source, text);
        return CM_OK;
    }
    return cm_fail(CM_ERR_INTERNAL, "%s: unknown option kind", source);
}

cm_status_t cm_cli_parse(const cm_cli_option_t *options, int count, int argc, char **argv,
                         int first, int *help_requested) {
    int given[64] = {0};
    if (count > 64) return cm_fail(CM_ERR_INTERNAL, "too many options in one command");
    *help_requested = 0;
    for (int index = first; index < argc; index++) {
        const char *argument = argv[index];
        if (strcmp(argument, "--help") == 0 || strcmp(argument, "-h") == 0) {
            *help_requested = 1;
            return CM_OK;
        }
    }
    for (int index = first; index < argc; index++) {
        const char *argument = argv[index];
        if (strncmp(argument, "--", 2) != 0)
            return cm_fail(CM_ERR_INVALID_ARG, "unexpected argument '%s'", argument);
        const char *name = argument + 2;
        const char *equals = strchr(name, '=');
        size_t name_length = equals ? (size_t)(equals - name) : strlen(name);
        int found = -1;
        for (int option = 0; option < count; option++)
            if (strlen(options[option].name) == name_length &&
                strncmp(options[option].name, name, name_length) == 0)
                found = option;
        if (found < 0)
            return cm_fail(CM_ERR_INVALID_ARG, "unknown option '--%.*s' (see --help)",
                           (int)name_length, name);
        const cm_cli_option_t *option = &options[found];
        char source[96];
        snprintf(source, sizeof source, "--%s", option->name);
        const char *text;
        if (option->kind == CM_CLI_FLAG && !equals) {
            text = "1";
        } else if (equals) {
            text = equals + 1;
        } else {
            if (index + 1 >= argc)
                return cm_fail(CM_ERR_INVALID_ARG, "--%s needs a value (%s)", option->name,
                               option->metavar ? option->metavar : "VALUE");
            text = argv[++index];
        }
        cm_status_t status = store_value(option, text, source);
        if (status != CM_OK) return status;
        given[found] = 1;
    }
    for (int option = 0; option < count; option++) {
        if (given[option]) continue;
        char variable[96];
        env_name(options[option].name, variable, sizeof variable);
        const char *text = getenv(variable);
        if (text && *text) {
            if (options[option].kind == CM_CLI_LIST) {
                /* Comma-separated: split a copy that lives until exit. */
                char *copy = keep_env_copy(text);
                if (!copy) return cm_fail(CM_ERR_NOMEM, "out of memory reading %s", variable);
                char *save = NULL;
                for (char *piece = strtok_r(copy, ",", &save); piece;
                     piece = strtok_r(NULL, ",", &save)) {
                    cm_status_t status = store_value(&options[option], piece, variable);
                    if (status != CM_OK) return status;
                }
            } else {
                cm_status_t status = store_value(&options[option], text, variable);
                if (status != CM_OK) return status;
            }
            given[option] = 1;
        }
        if (options[option].required && !given[option])
            return cm_fail(CM_ERR_INVALID_ARG, "--%s is required (or set %s)", options[option].name,
                           variable);
    }
    return CM_OK;
}

void cm_cli_usage(FILE *out, const char *usage_line, const char *description,
                  const cm_cli_option_t *options, int count) {
    fprintf(out, "usage: %s\n\n%s\n\noptions:\n", usage_line, description);
    for (int index = 0; index < count; index++) {
        const cm_cli_option_t *option = &options[index];
        char left[64];
        if (option->kind == CM_CLI_FLAG)
            snprintf(left, sizeof left, "--%s", option->name);
        else
            snprintf(left, sizeof left, "--%s %s", option->name,
                     option->metavar ? option->metavar : "VALUE");
        char variable[96];
        env_name(option->name, variable, sizeof variable);
        char fallback[64] = "";
        switch (option->kind) {
        case CM_CLI_STRING:
            if (*(const char **)option->value)
                snprintf(fallback, sizeof fallback, " [default: %s]",
                         *(const char **)option->value);
            break;
        case CM_CLI_INT:
            snprintf(fallback, sizeof fallback, " [default: %d]", *(int *)option->value);
            break;
        case CM_CLI_LONG:
            snprintf(fallback, sizeof fallback, " [default: %ld]", *(long *)option->value);
            break;
        case CM_CLI_FLOAT:
            snprintf(fallback, sizeof fallback, " [default: %g]", (double)*(float *)option->value);
            break;
        case CM_CLI_FLAG:
        case CM_CLI_LIST:
            break;
        }
        fprintf(out, "  %-26s %s%s%s\n  %-26s (env %s)\n", left, option->help, fallback,
                option->required ? " (required)" : "", "", variable);
    }
    fprintf(out, "  %-26s show this help and exit\n", "-h, --help");
}
