/*
 * cm_cli: see cm_cli.h.  Values are parsed strictly (the whole string must
 * be a number in range), because a typo in `--lr 1e-3x` should stop a
 * 20-minute run before it starts, not silently become 1e-3.
 */
#include "cm_cli.h"

#include "cm_wire.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <jansson.h>
#include <yaml.h>

/* Copies of environment lists and config-file values, alive until exit (values point into
 * them). */
static char **kept_copies;
static int kept_count, kept_capacity;

static void free_kept_copies(void) {
    for (int index = 0; index < kept_count; index++) free(kept_copies[index]);
    free(kept_copies);
    kept_copies = NULL;
    kept_count = kept_capacity = 0;
}

static char *keep_copy(const char *text) {
    if (kept_count == kept_capacity) {
        int capacity = kept_capacity ? 2 * kept_capacity : 32;
        char **grown = realloc(kept_copies, (size_t)capacity * sizeof *grown);
        if (!grown) return NULL;
        if (!kept_copies) atexit(free_kept_copies);
        kept_copies = grown;
        kept_capacity = capacity;
    }
    char *copy = strdup(text);
    if (!copy) return NULL;
    kept_copies[kept_count++] = copy;
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
        /* YAML 1.1's booleans too (True, on, ...), for config files. */
        if (strcmp(text, "1") == 0 || strcasecmp(text, "true") == 0 ||
            strcasecmp(text, "yes") == 0 || strcasecmp(text, "on") == 0)
            *(int *)option->value = 1;
        else if (strcmp(text, "0") == 0 || strcasecmp(text, "false") == 0 ||
                 strcasecmp(text, "no") == 0 || strcasecmp(text, "off") == 0)
            *(int *)option->value = 0;
        else
            return cm_fail(CM_ERR_INVALID_ARG, "%s expects 1/0, true/false or yes/no, got '%s'",
                           source, text);
        return CM_OK;
    }
    return cm_fail(CM_ERR_INTERNAL, "%s: unknown option kind", source);
}

enum { MAX_OPTIONS = 128 };

/* Scratch storage of any kind, to check a config value the command line overrides. */
typedef union {
    const char *text;
    int integer;
    long number;
    float real;
    cm_cli_list_t list;
} scratch_t;

static int find_option(const cm_cli_option_t *options, int count, const char *name,
                       size_t name_length) {
    for (int option = 0; option < count; option++)
        if (strlen(options[option].name) == name_length &&
            strncmp(options[option].name, name, name_length) == 0)
            return option;
    return -1;
}

/* A plain scalar YAML reads as null: nothing, ~ or null. */
static int is_null(const yaml_node_t *node) {
    if (node->type != YAML_SCALAR_NODE || node->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
        return 0;
    const char *text = (const char *)node->data.scalar.value;
    return !*text || !strcmp(text, "~") || !strcmp(text, "null") || !strcmp(text, "Null") ||
           !strcmp(text, "NULL");
}

/* Stores one scalar of the config file: a copy that lives until exit. */
static cm_status_t store_scalar(const cm_cli_option_t *option, const yaml_node_t *node,
                                const char *source) {
    char *copy = keep_copy((const char *)node->data.scalar.value);
    if (!copy) return cm_fail(CM_ERR_NOMEM, "out of memory reading %s", source);
    return store_value(option, copy, source);
}

/* Stores the value `node` of `option` (into real or scratch storage, as the caller chose). */
static cm_status_t store_node(yaml_document_t *document, const cm_cli_option_t *option,
                              const yaml_node_t *node, const char *source) {
    if (node->type == YAML_MAPPING_NODE)
        return cm_fail(CM_ERR_INVALID_ARG, "%s expects %s, not a mapping", source,
                       option->kind == CM_CLI_LIST ? "a list of values" : "a single value");
    if (node->type == YAML_SEQUENCE_NODE) {
        if (option->kind != CM_CLI_LIST)
            return cm_fail(CM_ERR_INVALID_ARG, "%s expects a single value, not a list", source);
        for (yaml_node_item_t *item = node->data.sequence.items.start;
             item < node->data.sequence.items.top; item++) {
            const yaml_node_t *element = yaml_document_get_node(document, *item);
            if (!element || element->type != YAML_SCALAR_NODE)
                return cm_fail(CM_ERR_INVALID_ARG, "%s expects a list of plain values", source);
            cm_status_t status = store_scalar(option, element, source);
            if (status != CM_OK) return status;
        }
        return CM_OK;
    }
    return store_scalar(option, node, source);
}

/*
 * Reads the config file `path` and stores each key's value into options that given[] does not
 * mark (those set on the command line or in the environment keep theirs, but their values are
 * checked all the same); marks what it stores.
 */
static cm_status_t apply_config(const cm_cli_option_t *options, int count, const char *path,
                                int *given) {
    FILE *file = fopen(path, "rb");
    if (!file)
        return cm_fail(CM_ERR_INVALID_ARG, "cannot read the config file %s: %s", path,
                       strerror(errno));
    yaml_parser_t parser;
    yaml_document_t document;
    if (!yaml_parser_initialize(&parser)) {
        fclose(file);
        return cm_fail(CM_ERR_NOMEM, "out of memory reading %s", path);
    }
    yaml_parser_set_input_file(&parser, file);
    cm_status_t status = CM_OK;
    if (!yaml_parser_load(&parser, &document)) {
        status =
            cm_fail(CM_ERR_INVALID_ARG, "%s:%zu: malformed YAML: %s (column %zu)", path,
                    parser.problem_mark.line + 1, parser.problem ? parser.problem : "unreadable",
                    parser.problem_mark.column + 1);
        yaml_parser_delete(&parser);
        fclose(file);
        return status;
    }
    /* One document only: a second one is most likely a mistake. */
    yaml_document_t extra;
    if (yaml_parser_load(&parser, &extra)) {
        if (yaml_document_get_root_node(&extra))
            status = cm_fail(CM_ERR_INVALID_ARG,
                             "%s:%zu: a config file holds one YAML document, not several", path,
                             extra.start_mark.line + 1);
        yaml_document_delete(&extra);
    } else {
        status =
            cm_fail(CM_ERR_INVALID_ARG, "%s:%zu: malformed YAML: %s (column %zu)", path,
                    parser.problem_mark.line + 1, parser.problem ? parser.problem : "unreadable",
                    parser.problem_mark.column + 1);
    }
    yaml_node_t *root = yaml_document_get_root_node(&document);
    int line_of[MAX_OPTIONS] = {0};
    int from_file[MAX_OPTIONS] = {0};
    if (status == CM_OK && root && root->type != YAML_MAPPING_NODE && !is_null(root))
        status = cm_fail(CM_ERR_INVALID_ARG,
                         "%s:%zu: a config file is a mapping of option names to values", path,
                         root->start_mark.line + 1);
    if (status == CM_OK && root && root->type == YAML_MAPPING_NODE) {
        for (yaml_node_pair_t *pair = root->data.mapping.pairs.start;
             status == CM_OK && pair < root->data.mapping.pairs.top; pair++) {
            yaml_node_t *key = yaml_document_get_node(&document, pair->key);
            yaml_node_t *value = yaml_document_get_node(&document, pair->value);
            size_t line = key->start_mark.line + 1;
            if (key->type != YAML_SCALAR_NODE) {
                status =
                    cm_fail(CM_ERR_INVALID_ARG, "%s:%zu: a key must be an option name", path, line);
                break;
            }
            const char *name = (const char *)key->data.scalar.value;
            int found = find_option(options, count, name, strlen(name));
            if (found < 0) {
                status = cm_fail(CM_ERR_INVALID_ARG,
                                 "%s:%zu: unknown key '%s' (keys are the long option names of "
                                 "--help)",
                                 path, line, name);
                break;
            }
            if (line_of[found]) {
                status =
                    cm_fail(CM_ERR_INVALID_ARG, "%s:%zu: key '%s' appears twice (first on line %d)",
                            path, line, name, line_of[found]);
                break;
            }
            line_of[found] = (int)line;
            if (is_null(value)) continue;
            char source[300];
            snprintf(source, sizeof source, "%s:%zu: key '%s'", path, line, name);
            cm_cli_option_t check = options[found];
            scratch_t scratch;
            memset(&scratch, 0, sizeof scratch);
            check.value = &scratch;
            status = store_node(&document, &check, value, source);
            if (status == CM_OK && !given[found]) {
                if (options[found].kind == CM_CLI_LIST)
                    ((cm_cli_list_t *)options[found].value)->count = 0;
                status = store_node(&document, &options[found], value, source);
                from_file[found] = 1;
            }
        }
    }
    for (int option = 0; option < count; option++)
        if (from_file[option]) given[option] = 1;
    yaml_document_delete(&document);
    yaml_parser_delete(&parser);
    fclose(file);
    return status;
}

cm_status_t cm_cli_parse(const cm_cli_option_t *options, int count, int argc, char **argv,
                         int first, int *help_requested) {
    int given[MAX_OPTIONS] = {0};
    if (count > MAX_OPTIONS) return cm_fail(CM_ERR_INTERNAL, "too many options in one command");
    *help_requested = 0;
    for (int index = first; index < argc; index++) {
        const char *argument = argv[index];
        if (strcmp(argument, "--help") == 0 || strcmp(argument, "-h") == 0) {
            *help_requested = 1;
            return CM_OK;
        }
    }
    const char *config = NULL;
    for (int index = first; index < argc; index++) {
        const char *argument = argv[index];
        if (strncmp(argument, "--", 2) != 0)
            return cm_fail(CM_ERR_INVALID_ARG, "unexpected argument '%s'", argument);
        const char *name = argument + 2;
        const char *equals = strchr(name, '=');
        size_t name_length = equals ? (size_t)(equals - name) : strlen(name);
        if (name_length == 6 && strncmp(name, "config", 6) == 0) {
            if (!equals && index + 1 >= argc)
                return cm_fail(CM_ERR_INVALID_ARG, "--config needs a value (FILE)");
            config = equals ? equals + 1 : argv[++index];
            continue;
        }
        int found = find_option(options, count, name, name_length);
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
                char *copy = keep_copy(text);
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
    }
    if (!config) {
        const char *text = getenv("COMMITTEE_CONFIG");
        if (text && *text) config = text;
    }
    if (config) {
        cm_status_t status = apply_config(options, count, config, given);
        if (status != CM_OK) return status;
    }
    for (int option = 0; option < count; option++) {
        if (!options[option].required || given[option]) continue;
        char variable[96];
        env_name(options[option].name, variable, sizeof variable);
        return cm_fail(CM_ERR_INVALID_ARG, "--%s is required (or set %s, or the key in --config)",
                       options[option].name, variable);
    }
    return CM_OK;
}

/* The shortest decimal text that strtof reads back as `value` (6 to 9 significant digits). */
static double shortest_float(float value) {
    char text[32];
    for (int digits = 6; digits <= 9; digits++) {
        snprintf(text, sizeof text, "%.*g", digits, (double)value);
        if (strtof(text, NULL) == value) break;
    }
    return strtod(text, NULL);
}

char *cm_cli_effective_json(const cm_cli_option_t *options, int count) {
    json_t *object = json_object();
    if (!object) return NULL;
    for (int index = 0; index < count; index++) {
        const cm_cli_option_t *option = &options[index];
        json_t *value = NULL;
        switch (option->kind) {
        case CM_CLI_STRING: {
            const char *text = *(const char **)option->value;
            value = text ? json_string(text) : json_null();
            if (!value) value = json_null(); /* not UTF-8: say nothing rather than wrong */
            break;
        }
        case CM_CLI_INT:
            value = json_integer(*(int *)option->value);
            break;
        case CM_CLI_LONG:
            value = json_integer(*(long *)option->value);
            break;
        case CM_CLI_FLOAT:
            value = json_real(shortest_float(*(float *)option->value));
            break;
        case CM_CLI_FLAG:
            value = json_boolean(*(int *)option->value);
            break;
        case CM_CLI_LIST: {
            const cm_cli_list_t *list = option->value;
            value = json_array();
            for (int item = 0; value && item < list->count; item++) {
                json_t *text = json_string(list->values[item]);
                if (text) json_array_append_new(value, text);
            }
            break;
        }
        }
        if (!value || json_object_set_new(object, option->name, value) != 0) {
            json_decref(object);
            return NULL;
        }
    }
    char *text = json_dumps(object, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(9));
    json_decref(object);
    return text;
}

void cm_cli_print_version(FILE *out, const char *program) {
    fprintf(out, "%s %s (protocol %d.%d)\n", program, CM_VERSION, CM_WIRE_VERSION_MAJOR,
            CM_WIRE_VERSION_MINOR);
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
    fprintf(out,
            "  %-26s read options from a YAML mapping of the long names above to values\n"
            "  %-26s (flags and COMMITTEE_* override it; env COMMITTEE_CONFIG)\n",
            "--config FILE", "");
    fprintf(out, "  %-26s show this help and exit\n", "-h, --help");
}
