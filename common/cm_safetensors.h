/*
 * cm_safetensors: checkpoints in the safetensors format
 * (https://huggingface.co/docs/safetensors): 8 bytes little-endian header
 * length N, N bytes of JSON {"name": {"dtype", "shape", "data_offsets"},
 * "__metadata__": {string: string}}, then the tensor bytes.  Files written
 * here load in PyTorch (safetensors.torch.load_file) without this project.
 *
 * Reading validates everything: header length against the file size, JSON
 * syntax, dtype names, shapes, offsets inside the data area, sizes equal to
 * dtype*shape, no overlaps; any failure is CM_ERR_FORMAT with a sentence
 * naming the file and the problem.  Writing is atomic (cm_file).
 *
 * Integrity: a file this module writes carries, in __metadata__, the CRC-32
 * (zlib's, as 8 lowercase hex digits) of every tensor's bytes under the key
 * "crc32:<tensor name>" and of the other metadata pairs under
 * "crc32:__metadata__" (see cm_safetensors.c for what it covers).  Metadata
 * values are strings, so other readers (PyTorch's safetensors) still load
 * the file and see a few extra entries.  Reading verifies every checksum; a
 * mismatch is CM_ERR_FORMAT naming the file and the damaged tensor.  A file
 * with no checksum at all (written by another program, or by committee
 * before it wrote them) loads unverified and cm_safetensors_read logs one
 * warning; a file with some checksums but not all is refused, since the
 * writer always stores every one and a partial set means a damaged header.
 */
#ifndef CM_SAFETENSORS_H
#define CM_SAFETENSORS_H

#include "cm_status.h"
#include "cm_tensor.h"

#include <stddef.h>
#include <stdint.h>

typedef struct cm_safetensors cm_safetensors_t;

/*
 * Reads, validates and verifies a whole file (cm_safetensors_parse on its
 * bytes); logs a warning when the file carries no checksums.  On success
 * *out owns the tensors' data; on failure *out is NULL.
 */
cm_status_t cm_safetensors_read(cm_safetensors_t **out, const char *path);

/*
 * The same on a file image in memory, contents[0..size) (borrowed for the
 * call; nothing points into it afterwards); `name` stands for the file in
 * every message (a path, "<stdin>").  Never logs.  This is the code
 * cm_safetensors_read runs, and what tests/fuzz/fuzz_safetensors.c fuzzes.
 */
cm_status_t cm_safetensors_parse(cm_safetensors_t **out, const uint8_t *contents, size_t size,
                                 const char *name);

/*
 * Opens a file for streaming: reads, validates and verifies its header as cm_safetensors_read
 * does (the tiling against the file's size, the metadata checksum), but not its data, which
 * stays in the file: the tensors' `data` is NULL; read them with a reader (below).  Logs the
 * same warning for a file with no checksums.  The file stays open until cm_safetensors_free.
 */
cm_status_t cm_safetensors_open(cm_safetensors_t **out, const char *path);

/*
 * Sequential reads of one tensor of an opened file (a tensor cm_safetensors_find or
 * cm_safetensors_tensor gave), in pieces of any size, with no copy of
 * the whole tensor in memory.  The read that completes the tensor checks its CRC-32: a
 * mismatch is CM_ERR_FORMAT naming the file and the tensor, and the caller must then discard
 * every byte the reader gave it.
 */
typedef struct {
    const cm_safetensors_t *file;
    int index;
    size_t total, done; /* bytes of the tensor, and read so far */
    uint32_t crc;       /* of the bytes read so far */
} cm_safetensors_reader_t;

void cm_safetensors_reader_start(const cm_safetensors_t *file, const cm_tensor_t *tensor,
                                 cm_safetensors_reader_t *reader);
/* The next `bytes` of the tensor (CM_ERR_INVALID_ARG past its end, CM_ERR_IO on a read error). */
cm_status_t cm_safetensors_reader_read(cm_safetensors_reader_t *reader, void *buffer, size_t bytes);

/*
 * 1 when the file carried the checksums of all its tensors and its metadata
 * and they all matched (also for a file of no tensors and no metadata); 0
 * when it had none and its data could not be verified.
 */
int cm_safetensors_verified(const cm_safetensors_t *file);

/* Frees a loaded file and sets *file to NULL; NULL-safe. */
void cm_safetensors_free(cm_safetensors_t **file);

/* Number of tensors, and the index-th one (borrowed, valid until free). */
int cm_safetensors_count(const cm_safetensors_t *file);
const cm_tensor_t *cm_safetensors_tensor(const cm_safetensors_t *file, int index);

/* The tensor called `name`, or NULL (borrowed, valid until free). */
const cm_tensor_t *cm_safetensors_find(const cm_safetensors_t *file, const char *name);

/* The __metadata__ value for `key`, or NULL (borrowed, valid until free). */
const char *cm_safetensors_metadata(const cm_safetensors_t *file, const char *key);

/*
 * The __metadata__ keys in byte order, at most `capacity` of them into keys[] (borrowed,
 * valid until free); returns how many the file has (which may exceed `capacity`).
 */
int cm_safetensors_metadata_keys(const cm_safetensors_t *file, const char **keys, int capacity);

/*
 * Writes `count` tensors and the metadata pairs metadata[0..2*pairs) (key, value,
 * key, value, ...) atomically to `path`, with the checksums described above.
 * Tensor data is borrowed for the call.  Keys beginning with "crc32:" are
 * reserved (CM_ERR_INVALID_ARG).
 */
cm_status_t cm_safetensors_write(const char *path, const cm_tensor_t *tensors, int count,
                                 const char *const *metadata, int pairs);

#endif
