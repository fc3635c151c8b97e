/*
 * cm_file: whole-file helpers that never leave a half-written file behind.
 */
#ifndef CM_FILE_H
#define CM_FILE_H

#include "cm_status.h"

#include <stddef.h>

/* One piece of a file to write: `size` bytes at `data` (borrowed). */
typedef struct {
    const void *data;
    size_t size;
} cm_file_chunk_t;

/*
 * Writes the chunks in order to `path` atomically: a temp file in the same
 * directory, fsync, rename over `path`, fsync of the directory.  On failure
 * the old file (if any) is untouched and the temp file removed.
 */
cm_status_t cm_file_write_atomic(const char *path, const cm_file_chunk_t *chunks, int count);

/*
 * The same for secrets (keys): the file is created with mode 0600 and keeps
 * it even when it replaces a file with a looser mode, so no other user can
 * read the contents at any moment.
 */
cm_status_t cm_file_write_atomic_private(const char *path, const cm_file_chunk_t *chunks,
                                         int count);

/* Reads a whole file into a malloc'd buffer (*data, *size); caller frees. */
cm_status_t cm_file_read_all(const char *path, void **data, size_t *size);

#endif
