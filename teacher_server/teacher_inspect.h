/*
 * teacher_inspect: `teacher-server inspect FILE` prints what a committee file
 * holds: a teacher or student checkpoint, a trainer state (.state), its
 * teacher-output cache (.state.cache), a --cache or --record file, or any
 * safetensors file.  It shows the kind, the metadata (JSON values such as
 * the saved configuration pretty-printed), every tensor (name, dtype, shape,
 * bytes) and whether its CRC-32 was verified.  `--print-config` prints only
 * the configuration a fit or train run saved, as YAML that `--config` reads,
 * so the run can be repeated.  A damaged file is one sentence naming the
 * damaged tensor (or header), exit 1.
 */
#ifndef TEACHER_INSPECT_H
#define TEACHER_INSPECT_H

/* Runs `inspect ...` on argv[first..argc); returns the exit code (0, 1 failure, 2 usage). */
int teacher_inspect_main(int argc, char **argv, int first);

#endif
