/*
 * teacher_data: the dataset commands.  `check` loads the folder with every
 * view's values validated (not trusting the hash cache's record of earlier
 * checks), then prints splits, counts, views and the fingerprint; it is the
 * first command to run on new data.  `export` loads a dataset (a built-in
 * name, or a folder) and writes it as a folder with the same fingerprint.
 */
#include "teacher_data.h"

#include "cm_cli.h"
#include "cm_dataset.h"

#include <stdio.h>
#include <string.h>

static void usage(FILE *out) {
    fprintf(out, "usage: teacher-server data check DIR\n"
                 "       teacher-server data export NAME DIR [--data-dir SOURCES]\n"
                 "\n"
                 "check   validates a dataset folder (dataset.json and its .npy files: headers,\n"
                 "        counts, labels, ids and every value of every view) and prints its\n"
                 "        splits, counts, views (kind, dtype, shape), task and fingerprint.\n"
                 "export  writes dataset NAME (fashion-mnist, or a folder) as the folder DIR;\n"
                 "        the folder has the same fingerprint, so checkpoints agree.\n");
}

/* The positional arguments before the first option: argv[first .. *options_at). */
static int positionals(int argc, char **argv, int first, int *options_at) {
    int index = first;
    while (index < argc && strncmp(argv[index], "--", 2) != 0 && strcmp(argv[index], "-h") != 0)
        index++;
    *options_at = index;
    return index - first;
}

int teacher_data_main(int argc, char **argv, int first) {
    if (first >= argc) {
        usage(stderr);
        return 2;
    }
    const char *command = argv[first];
    if (!strcmp(command, "--help") || !strcmp(command, "-h") || !strcmp(command, "help")) {
        usage(stdout);
        return 0;
    }
    const char *data_dir = NULL;
    const cm_cli_option_t table[] = {
        {"data-dir", CM_CLI_STRING, &data_dir, "DIR",
         "files of a built-in dataset [default: /usr/share/datasets/fashion-mnist]", 0},
    };
    int options_at = 0, count = positionals(argc, argv, first + 1, &options_at), help = 0;
    int is_check = strcmp(command, "check") == 0, is_export = strcmp(command, "export") == 0;
    if (!is_check && !is_export) {
        fprintf(stderr, "teacher-server data: unknown command '%s' (check or export)\n", command);
        return 2;
    }
    cm_status_t status = cm_cli_parse(table, 1, argc, argv, options_at, &help);
    if (help) {
        usage(stdout);
        return 0;
    }
    if (status != CM_OK || count != (is_check ? 1 : 2)) {
        fprintf(stderr, "teacher-server data %s: %s\n", command,
                status != CM_OK ? cm_last_error()
                : is_check      ? "give one folder: teacher-server data check DIR"
                           : "give a dataset and a folder: teacher-server data export NAME DIR");
        return 2;
    }
    cm_dataset_options_t options = {.directory = data_dir, .validate_all = is_check};
    cm_dataset_t *dataset = NULL;
    status = cm_dataset_load(&dataset, argv[first + 1], NULL, &options);
    if (status == CM_OK && is_check) {
        cm_dataset_describe(dataset, stdout);
        printf("ok: %s is a valid dataset folder\n", argv[first + 1]);
    }
    if (status == CM_OK && is_export) {
        status = cm_dataset_export(dataset, argv[first + 2]);
        if (status == CM_OK)
            printf("wrote %s (dataset %s, fingerprint %s)\n", argv[first + 2], dataset->name,
                   dataset->fingerprint);
    }
    cm_dataset_free(&dataset);
    if (status != CM_OK) {
        fprintf(stderr, "teacher-server data %s: %s\n", command, cm_last_error());
        return 1;
    }
    return 0;
}
