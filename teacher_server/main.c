/*
 * teacher-server: trains teacher checkpoints (`fit`) and, later, serves a
 * frozen teacher to student trainers over ZeroMQ (`serve`) and asks one
 * what it answers (`query`); `keygen` makes the CURVE key pair of a teacher.
 * Exit codes: 0 success, 1 runtime failure, 2 usage error.
 */
#include "cm_cli.h"
#include "cm_curve.h"
#include "teacher_data.h"
#include "teacher_fit.h"
#include "teacher_inspect.h"
#include "teacher_query.h"
#include "teacher_serve.h"

#include <stdio.h>
#include <string.h>

static void usage(FILE *out) {
    fprintf(out, "usage: teacher-server COMMAND [options]\n"
                 "\n"
                 "Trains and serves the frozen teachers of a committee.\n"
                 "\n"
                 "commands:\n"
                 "  fit      train a teacher checkpoint on a dataset view\n"
                 "  serve    serve a frozen teacher to trainers over ZeroMQ\n"
                 "  query    ask a running teacher for its outputs on some examples\n"
                 "  data     check a dataset folder, or export a built-in dataset as one\n"
                 "  keygen   make a CURVE key pair (serve --curve-secret-key encrypts links)\n"
                 "  inspect  what a checkpoint, state, cache or record file holds\n"
                 "\n"
                 "examples:\n"
                 "  teacher-server fit --config examples/fit.yaml\n"
                 "  teacher-server serve --model fm.safetensors --bind tcp://127.0.0.1:5555\n"
                 "  teacher-server inspect fm.safetensors\n"
                 "\n"
                 "Run 'teacher-server COMMAND --help' for the options of a command.\n"
                 "Every option can also be set from the environment as COMMITTEE_<OPTION>\n"
                 "(upper case, '-' as '_'), e.g. COMMITTEE_EPOCHS=5, or in a YAML file given by\n"
                 "--config FILE (command line > environment > file > default).\n"
                 "--version prints the version and the wire protocol version.\n");
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *command = argv[1];
    if (strcmp(command, "--help") == 0 || strcmp(command, "-h") == 0 ||
        strcmp(command, "help") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(command, "--version") == 0 || strcmp(command, "version") == 0) {
        cm_cli_print_version(stdout, "teacher-server");
        return 0;
    }
    if (strcmp(command, "fit") == 0) return teacher_fit_main(argc, argv, 2);
    if (strcmp(command, "serve") == 0) return teacher_serve_main(argc, argv, 2);
    if (strcmp(command, "query") == 0) return teacher_query_main(argc, argv, 2);
    if (strcmp(command, "data") == 0) return teacher_data_main(argc, argv, 2);
    if (strcmp(command, "inspect") == 0) return teacher_inspect_main(argc, argv, 2);
    if (strcmp(command, "keygen") == 0)
        return cm_curve_keygen_command("teacher-server", argc, argv, 2);
    fprintf(stderr, "teacher-server: unknown command '%s' (try --help)\n", command);
    return 2;
}
