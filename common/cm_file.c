/*
 * cm_file: whole-file reads and crash-safe whole-file writes.
 *
 * An atomic write goes to "<path>.tmp.XXXXXX" in the same directory (rename
 * only replaces atomically within one file system), is fsync'ed, renamed over
 * the target, and then the directory is fsync'ed so the rename itself
 * survives a power cut.  Until the rename, readers keep seeing the old file;
 * any failure before it removes the temp file.  Writes and reads retry on
 * EINTR and loop over short transfers.  Assumes POSIX (Linux) semantics.
 */
#include "cm_file.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Largest single write()/read() request; Linux caps one call near 2 GiB. */
enum { MAX_TRANSFER = 1 << 30 };

/* The mode of a new file: rw-r--r--, since mkstemp's 0600 would hide a
 * checkpoint from other users, and reading the umask is not thread-safe. */
enum { NEW_FILE_MODE = 0644, PRIVATE_FILE_MODE = 0600 };

static cm_status_t write_all(int fd, const void *data, size_t size, const char *path) {
    const char *cursor = data;
    while (size > 0) {
        size_t request = size < MAX_TRANSFER ? size : MAX_TRANSFER;
        ssize_t written = write(fd, cursor, request);
        if (written < 0) {
            if (errno == EINTR) continue;
            return cm_fail(CM_ERR_IO, "cannot write %s: %s", path, strerror(errno));
        }
        cursor += written;
        size -= (size_t)written;
    }
    return CM_OK;
}

static int fsync_retrying(int fd) {
    int result;
    do result = fsync(fd);
    while (result != 0 && errno == EINTR);
    return result;
}

/* The directory part of `path` ("." when there is none), malloc'd. */
static char *directory_of(const char *path) {
    const char *slash = strrchr(path, '/');
    if (!slash) return strdup(".");
    if (slash == path) return strdup("/");
    return strndup(path, (size_t)(slash - path));
}

/* Makes the rename durable.  File systems that cannot fsync a directory say
 * EINVAL; that is not an error worth failing a checkpoint for. */
static cm_status_t sync_directory(const char *path) {
    char *directory = directory_of(path);
    if (!directory) return cm_fail(CM_ERR_NOMEM, "out of memory syncing the directory of %s", path);
    cm_status_t status = CM_OK;
    int fd = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
        status = cm_fail(CM_ERR_IO, "%s was replaced but its directory %s cannot be opened: %s",
                         path, directory, strerror(errno));
    } else {
        if (fsync_retrying(fd) != 0 && errno != EINVAL)
            status = cm_fail(CM_ERR_IO, "%s was replaced but its directory %s cannot be synced: %s",
                             path, directory, strerror(errno));
        close(fd);
    }
    free(directory);
    return status;
}

/* Writes atomically; `private_mode` forces mode 0600 (secrets), else the mode is kept or 0644. */
static cm_status_t write_atomic(const char *path, const cm_file_chunk_t *chunks, int count,
                                int private_mode) {
    if (!path || !*path) return cm_fail(CM_ERR_INVALID_ARG, "cm_file_write_atomic needs a path");
    if (count < 0 || (count > 0 && !chunks))
        return cm_fail(CM_ERR_INVALID_ARG, "cm_file_write_atomic(%s) got %d chunks", path, count);

    static const char suffix[] = ".tmp.XXXXXX";
    size_t path_length = strlen(path);
    char *temp_path = malloc(path_length + sizeof suffix);
    if (!temp_path) return cm_fail(CM_ERR_NOMEM, "out of memory writing %s", path);
    memcpy(temp_path, path, path_length);
    memcpy(temp_path + path_length, suffix, sizeof suffix);

    cm_status_t status = CM_OK;
    int fd = mkostemp(temp_path, O_CLOEXEC);
    if (fd < 0) {
        status =
            cm_fail(CM_ERR_IO, "cannot create a temp file next to %s: %s", path, strerror(errno));
        free(temp_path);
        return status;
    }

    /* Keep the mode of the file being replaced; a new file gets NEW_FILE_MODE.  A secret
     * stays at mkostemp's 0600 from the first byte on. */
    struct stat previous;
    mode_t mode = private_mode                 ? PRIVATE_FILE_MODE
                  : stat(path, &previous) == 0 ? (previous.st_mode & 07777)
                                               : NEW_FILE_MODE;
    if (fchmod(fd, mode) != 0) {
        status = cm_fail(CM_ERR_IO, "cannot set the mode of %s: %s", temp_path, strerror(errno));
        goto fail;
    }
    for (int index = 0; index < count; index++) {
        if (chunks[index].size > 0 && !chunks[index].data) {
            status = cm_fail(CM_ERR_INVALID_ARG, "chunk %d of %s has %zu bytes but no data", index,
                             path, chunks[index].size);
            goto fail;
        }
        status = write_all(fd, chunks[index].data, chunks[index].size, path);
        if (status != CM_OK) goto fail;
    }
    if (fsync_retrying(fd) != 0) {
        status = cm_fail(CM_ERR_IO, "cannot sync %s: %s", temp_path, strerror(errno));
        goto fail;
    }
    int close_result = close(fd);
    fd = -1;
    if (close_result != 0) {
        status = cm_fail(CM_ERR_IO, "cannot close %s: %s", temp_path, strerror(errno));
        goto fail;
    }
    if (rename(temp_path, path) != 0) {
        status = cm_fail(CM_ERR_IO, "cannot rename %s to %s: %s", temp_path, path, strerror(errno));
        goto fail;
    }
    free(temp_path);
    return sync_directory(path);

fail:
    if (fd >= 0) close(fd);
    unlink(temp_path);
    free(temp_path);
    return status;
}

cm_status_t cm_file_write_atomic(const char *path, const cm_file_chunk_t *chunks, int count) {
    return write_atomic(path, chunks, count, 0);
}

cm_status_t cm_file_write_atomic_private(const char *path, const cm_file_chunk_t *chunks,
                                         int count) {
    return write_atomic(path, chunks, count, 1);
}

cm_status_t cm_file_read_all(const char *path, void **data, size_t *size) {
    *data = NULL;
    *size = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        cm_status_t code = errno == ENOENT ? CM_ERR_NOT_FOUND : CM_ERR_IO;
        return cm_fail(code, "cannot open %s: %s", path, strerror(errno));
    }
    struct stat info;
    if (fstat(fd, &info) != 0) {
        cm_status_t status = cm_fail(CM_ERR_IO, "cannot stat %s: %s", path, strerror(errno));
        close(fd);
        return status;
    }
    if (S_ISDIR(info.st_mode)) {
        close(fd);
        return cm_fail(CM_ERR_IO, "cannot read %s: it is a directory", path);
    }

    /* st_size is only a hint (files in /proc say 0, files may grow), so read
     * until end of file, growing the buffer when it fills.  One spare byte
     * lets the first read past st_size see end of file without a regrow. */
    size_t capacity = info.st_size > 0 ? (size_t)info.st_size + 1 : 4096;
    size_t used = 0;
    char *buffer = malloc(capacity);
    cm_status_t status = CM_OK;
    if (!buffer) {
        status = cm_fail(CM_ERR_NOMEM, "out of memory reading %s (%zu bytes)", path, capacity);
        goto done;
    }
    for (;;) {
        if (used == capacity) {
            if (capacity > SIZE_MAX / 2) {
                status = cm_fail(CM_ERR_TOO_LARGE, "%s is too large to read into memory", path);
                goto done;
            }
            char *grown = realloc(buffer, capacity * 2);
            if (!grown) {
                status = cm_fail(CM_ERR_NOMEM, "out of memory reading %s (%zu bytes)", path,
                                 capacity * 2);
                goto done;
            }
            buffer = grown;
            capacity *= 2;
        }
        size_t request = capacity - used < MAX_TRANSFER ? capacity - used : MAX_TRANSFER;
        ssize_t got = read(fd, buffer + used, request);
        if (got < 0) {
            if (errno == EINTR) continue;
            status = cm_fail(CM_ERR_IO, "cannot read %s: %s", path, strerror(errno));
            goto done;
        }
        if (got == 0) break;
        used += (size_t)got;
    }

done:
    close(fd);
    if (status != CM_OK) {
        free(buffer);
        return status;
    }
    *data = buffer;
    *size = used;
    return CM_OK;
}
