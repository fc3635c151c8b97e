/*
 * teacher_inspect: see teacher_inspect.h.  Everything is read through
 * cm_safetensors_read, which verifies every checksum, so what this prints is
 * exactly what the trainer or the server would load; a file that would not
 * load is refused here with the same sentence.
 */
#include "teacher_inspect.h"

#include "cm_cli.h"
#include "cm_log.h"
#include "cm_safetensors.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

enum { MAX_METADATA_KEYS = 4096 };

static void usage(FILE *out) {
    fprintf(out,
            "usage: teacher-server inspect FILE [--print-config]\n"
            "\n"
            "Prints what a committee file holds: its kind (teacher or student checkpoint,\n"
            "trainer state, teacher-output cache or record), its metadata, and every tensor's\n"
            "name, dtype, shape, bytes and checksum status. A damaged file is named with the\n"
            "tensor that is damaged (exit 1).\n"
            "\n"
            "options:\n"
            "  --print-config             print only the configuration a fit or train run\n"
            "                             saved in the checkpoint, as YAML for --config\n"
            "  -h, --help                 show this help and exit\n"
            "\n"
            "examples:\n"
            "  teacher-server inspect fm.safetensors\n"
            "  teacher-server inspect student.safetensors.state.cache\n"
            "  teacher-server inspect --print-config student.safetensors > again.yaml\n"
            "  student-trainer train --config again.yaml      (the same run once more)\n");
}

/* What the file is, from its "kind" or "format" metadata and its name. */
static const char *describe_kind(const cm_safetensors_t *file, const char *path) {
    const char *kind = cm_safetensors_metadata(file, "kind");
    const char *format = cm_safetensors_metadata(file, "format");
    size_t length = strlen(path);
    if (kind && !strcmp(kind, "committee-trainer-state-1"))
        return "trainer state (resumes a student-trainer run)";
    if (kind && !strcmp(kind, "committee-teacher-cache-1")) {
        if (length > 12 && !strcmp(path + length - 12, ".state.cache"))
            return "teacher-output cache of a trainer state";
        return "teacher outputs (a --cache FILE or a --record FILE for replay)";
    }
    if (format && !strcmp(format, "committee-checkpoint-1"))
        return cm_safetensors_metadata(file, "method") ? "student checkpoint (student-trainer)"
                                                       : "teacher checkpoint (teacher-server fit)";
    return "safetensors file not written by committee";
}

/* One YAML scalar for a JSON value: strings double-quoted (JSON escapes are YAML's). */
static void print_yaml_scalar(FILE *out, const json_t *value) {
    if (json_is_null(value)) {
        fputs("~", out);
        return;
    }
    char *text = json_dumps(value, JSON_ENCODE_ANY | JSON_REAL_PRECISION(9));
    fputs(text ? text : "~", out);
    free(text);
}

/* The saved configuration as a YAML mapping; CM_ERR_FORMAT when it is not a JSON object. */
static cm_status_t print_config(FILE *out, const char *path, const char *config) {
    json_error_t error;
    json_t *object = json_loads(config, 0, &error);
    if (!json_is_object(object)) {
        json_decref(object);
        return cm_fail(CM_ERR_FORMAT, "%s: its saved configuration is not a JSON object", path);
    }
    fprintf(out, "# the configuration saved in %s (teacher-server inspect --print-config)\n", path);
    const char *key;
    json_t *value;
    json_object_foreach(object, key, value) {
        fprintf(out, "%s:", key);
        if (json_is_array(value)) {
            if (json_array_size(value) == 0) fputs(" []", out);
            size_t index;
            json_t *item;
            json_array_foreach(value, index, item) {
                fputs("\n  - ", out);
                print_yaml_scalar(out, item);
            }
        } else {
            fputc(' ', out);
            print_yaml_scalar(out, value);
        }
        fputc('\n', out);
    }
    json_decref(object);
    return CM_OK;
}

/* A metadata value: JSON objects and arrays pretty-printed under the key, others on its line. */
static void print_metadata_value(FILE *out, const char *text) {
    json_t *parsed = (text[0] == '{' || text[0] == '[') ? json_loads(text, 0, NULL) : NULL;
    if (parsed && (json_is_object(parsed) || json_is_array(parsed))) {
        char *pretty =
            json_dumps(parsed, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(9));
        fputc('\n', out);
        for (const char *line = pretty; line && *line;) {
            const char *end = strchr(line, '\n');
            int length = end ? (int)(end - line) : (int)strlen(line);
            fprintf(out, "      %.*s\n", length, line);
            line = end ? end + 1 : line + length;
        }
        free(pretty);
    } else {
        fprintf(out, " %s\n", text);
    }
    json_decref(parsed);
}

static void print_file(FILE *out, const cm_safetensors_t *file, const char *path,
                       long long file_bytes) {
    int verified = cm_safetensors_verified(file);
    fprintf(out, "file:      %s (%lld bytes)\n", path, file_bytes);
    fprintf(out, "kind:      %s\n", describe_kind(file, path));
    fprintf(out, "checksums: %s\n",
            verified ? "every tensor and the metadata verified (CRC-32)"
                     : "none stored (written by another program): contents not verified");
    static const char *keys[MAX_METADATA_KEYS];
    int total = cm_safetensors_metadata_keys(file, keys, MAX_METADATA_KEYS);
    if (total > MAX_METADATA_KEYS) total = MAX_METADATA_KEYS;
    int shown = 0;
    for (int index = 0; index < total; index++) shown += strncmp(keys[index], "crc32:", 6) != 0;
    fprintf(out, "metadata:  %d entries%s\n", shown, shown ? "" : " (none)");
    for (int index = 0; index < total; index++) {
        if (!strncmp(keys[index], "crc32:", 6)) continue; /* shown per tensor below */
        fprintf(out, "    %s:", keys[index]);
        print_metadata_value(out, cm_safetensors_metadata(file, keys[index]));
    }
    int count = cm_safetensors_count(file);
    uint64_t total_bytes = 0;
    for (int index = 0; index < count; index++) {
        const cm_tensor_t *tensor = cm_safetensors_tensor(file, index);
        uint64_t elements = 1;
        for (int dim = 0; dim < tensor->ndim; dim++) elements *= (uint64_t)tensor->shape[dim];
        total_bytes += elements * cm_dtype_size(tensor->dtype);
    }
    fprintf(out, "tensors:   %d, %" PRIu64 " bytes\n", count, total_bytes);
    if (count)
        fprintf(out, "    %-36s %-5s %-18s %12s  %s\n", "name", "dtype", "shape", "bytes",
                "checksum");
    for (int index = 0; index < count; index++) {
        const cm_tensor_t *tensor = cm_safetensors_tensor(file, index);
        char shape[96] = "[";
        size_t used = 1;
        uint64_t elements = 1;
        for (int dim = 0; dim < tensor->ndim; dim++) {
            used += (size_t)snprintf(shape + used, sizeof shape - used, "%s%" PRId64,
                                     dim ? ", " : "", tensor->shape[dim]);
            if (used >= sizeof shape) used = sizeof shape - 1;
            elements *= (uint64_t)tensor->shape[dim];
        }
        snprintf(shape + used, sizeof shape - used, "]");
        char key[CM_TENSOR_MAX_NAME + 8];
        snprintf(key, sizeof key, "crc32:%s", tensor->name);
        const char *crc = cm_safetensors_metadata(file, key);
        char status[32];
        snprintf(status, sizeof status, verified && crc ? "ok %s" : "unverified", crc ? crc : "");
        fprintf(out, "    %-36s %-5s %-18s %12" PRIu64 "  %s\n", tensor->name,
                cm_dtype_name(tensor->dtype), shape, elements * cm_dtype_size(tensor->dtype),
                status);
    }
}

int teacher_inspect_main(int argc, char **argv, int first) {
    const char *path = NULL;
    int print_config_only = 0, help = 0;
    const cm_cli_option_t table[] = {
        {"print-config", CM_CLI_FLAG, &print_config_only, NULL,
         "print only the saved configuration, as YAML for --config", 0},
    };
    /* FILE may come before or after the options. */
    char *rest[64];
    int rest_count = 0;
    for (int index = first; index < argc; index++) {
        if (strncmp(argv[index], "-", 1) != 0 && !path) {
            path = argv[index];
            continue;
        }
        if (rest_count == (int)(sizeof rest / sizeof rest[0])) break;
        rest[rest_count++] = argv[index];
    }
    cm_status_t status = cm_cli_parse(table, 1, rest_count, rest, 0, &help);
    if (help) {
        usage(stdout);
        return 0;
    }
    if (status == CM_OK && !path)
        status =
            cm_fail(CM_ERR_INVALID_ARG, "give the file to inspect: teacher-server inspect FILE");
    if (status != CM_OK) {
        fprintf(stderr, "teacher-server inspect: %s\n", cm_last_error());
        return 2;
    }
    cm_log_init("teacher-server", CM_LOG_WARN);
    struct stat info;
    if (stat(path, &info) != 0) {
        fprintf(stderr, "teacher-server inspect: cannot read %s: %s\n", path, strerror(errno));
        return 1;
    }
    cm_safetensors_t *file = NULL;
    status = cm_safetensors_read(&file, path);
    if (status != CM_OK) {
        fprintf(stderr, "teacher-server inspect: %s\n", cm_last_error());
        return 1;
    }
    if (print_config_only) {
        const char *config = cm_safetensors_metadata(file, "config");
        status = config ? print_config(stdout, path, config)
                        : cm_fail(CM_ERR_NOT_FOUND,
                                  "%s holds no saved configuration (only checkpoints of "
                                  "`teacher-server fit` and `student-trainer train` do)",
                                  path);
    } else {
        print_file(stdout, file, path, (long long)info.st_size);
    }
    cm_safetensors_free(&file);
    if (status == CM_OK && (fflush(stdout) != 0 || ferror(stdout)))
        status = cm_fail(CM_ERR_IO, "cannot write to standard output");
    if (status != CM_OK) {
        fprintf(stderr, "teacher-server inspect: %s\n", cm_last_error());
        return 1;
    }
    return 0;
}
