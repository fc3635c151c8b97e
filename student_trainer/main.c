/*
 * student-trainer: trains a small student from a committee of teacher
 * servers (`train`), from recorded teacher outputs (`replay`), and
 * evaluates checkpoints (`eval`); `keygen` makes the CURVE key pair of a
 * trainer.
 * Exit codes: 0 success, 1 failure, 2 usage error, 130 interrupted by a signal or
 * --stop-after (state saved).
 */
#include "cm_cli.h"
#include "cm_curve.h"
#include "trainer_eval.h"
#include "trainer_train.h"

#include <stdio.h>
#include <string.h>

static void usage(FILE *out) {
    fprintf(out, "usage: student-trainer COMMAND [options]\n"
                 "\n"
                 "Distills a committee of teachers into a small student.\n"
                 "\n"
                 "commands:\n"
                 "  train    train a student from running teacher servers\n"
                 "  replay   train a student from recorded teacher outputs (no teachers needed)\n"
                 "  eval     accuracy and loss of a checkpoint on a split\n"
                 "  keygen   make a CURVE key pair (train --curve-secret-key encrypts links)\n"
                 "\n"
                 "examples:\n"
                 "  student-trainer train --config examples/train.yaml\n"
                 "  student-trainer eval --model student.safetensors\n"
                 "  teacher-server inspect student.safetensors   (prints its config, too)\n"
                 "\n"
                 "Run 'student-trainer COMMAND --help' for the options of a command.\n"
                 "Every option can also be set from the environment as COMMITTEE_<OPTION>\n"
                 "(upper case, '-' as '_'), e.g. COMMITTEE_TEACHER=fm=tcp://host:5555,comp=...,\n"
                 "or in a YAML file given by --config FILE (command line > environment > file >\n"
                 "default). --version prints the version and the wire protocol version.\n");
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *command = argv[1];
    if (!strcmp(command, "--help") || !strcmp(command, "-h") || !strcmp(command, "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(command, "--version") || !strcmp(command, "version")) {
        cm_cli_print_version(stdout, "student-trainer");
        return 0;
    }
    if (!strcmp(command, "train")) return trainer_train_main(argc, argv, 2, 0);
    if (!strcmp(command, "replay")) return trainer_train_main(argc, argv, 2, 1);
    if (!strcmp(command, "eval")) return trainer_eval_main(argc, argv, 2);
    if (!strcmp(command, "keygen"))
        return cm_curve_keygen_command("student-trainer", argc, argv, 2);
    fprintf(stderr, "student-trainer: unknown command '%s' (try --help)\n", command);
    return 2;
}
