/*
 * cm_npy: NumPy .npy files, memory-mapped.
 *
 * A .npy file is a 6-byte magic ("\x93NUMPY"), a version (major 1, 2 or 3,
 * minor 0), a little-endian header length (2 bytes in version 1, 4 in 2 and
 * 3), a header that is a Python dict literal
 * ({'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }) padded with
 * spaces and a newline, then the raw array.  This module reads only what the
 * committee's datasets need: little-endian (or one-byte) integer and float
 * dtypes, C order, rank 0 to CM_NPY_MAX_RANK.  Big-endian data, Fortran
 * order, object arrays, a header that does not parse, and a file whose size
 * is not exactly header + shape x item size (truncated or with trailing
 * bytes) are CM_ERR_FORMAT with a sentence naming the file and the problem.
 *
 * cm_npy_open maps the file read-only (mmap) and never copies it: rows are
 * read through cm_npy_data and the kernel pages them in on demand, so a
 * 10-million-row file needs almost none of its size in memory.  A cm_npy_t
 * can also wrap an array in memory (cm_npy_wrap), so a built-in dataset is
 * the same structure as a folder on disk.
 *
 * cm_npy_parse_header works on bytes in memory, for tests and fuzzing.
 */
#ifndef CM_NPY_H
#define CM_NPY_H

#include "cm_status.h"

#include <stddef.h>
#include <stdint.h>

enum { CM_NPY_MAX_RANK = 8 };

typedef enum {
    CM_NPY_BOOL, /* |b1 */
    CM_NPY_U8,   /* |u1 */
    CM_NPY_I8,   /* |i1 */
    CM_NPY_U16,  /* <u2 */
    CM_NPY_I16,  /* <i2 */
    CM_NPY_U32,  /* <u4 */
    CM_NPY_I32,  /* <i4 */
    CM_NPY_U64,  /* <u8 */
    CM_NPY_I64,  /* <i8 */
    CM_NPY_F16,  /* <f2 */
    CM_NPY_F32,  /* <f4 */
    CM_NPY_F64,  /* <f8 */
    CM_NPY_DTYPE_COUNT
} cm_npy_dtype_t;

/* The short name people know ("float32", "uint8"). */
const char *cm_npy_dtype_name(cm_npy_dtype_t dtype);
/* The .npy descr string ("<f4", "|u1"). */
const char *cm_npy_dtype_descr(cm_npy_dtype_t dtype);
/* Bytes per element. */
size_t cm_npy_dtype_size(cm_npy_dtype_t dtype);

typedef struct {
    int major, minor;     /* format version */
    cm_npy_dtype_t dtype; /* little-endian (or one byte) */
    int rank;             /* 0 .. CM_NPY_MAX_RANK */
    int64_t shape[CM_NPY_MAX_RANK];
    uint64_t elements;   /* product of shape (1 for rank 0) */
    size_t data_offset;  /* bytes before the array: magic, version, length, header */
    uint64_t data_bytes; /* elements * item size */
} cm_npy_header_t;

/*
 * Parses the header at the start of bytes[size] (the whole file or at least
 * its header) into *header.  `name` (a path) goes into error sentences.
 * Checks everything the header itself says, not the file size (see
 * cm_npy_check_size).  Never reads past bytes[size].
 */
cm_status_t cm_npy_parse_header(const uint8_t *bytes, size_t size, const char *name,
                                cm_npy_header_t *header);

/* CM_OK if a file of `file_size` bytes holds exactly what `header` promises; else a sentence. */
cm_status_t cm_npy_check_size(const cm_npy_header_t *header, uint64_t file_size, const char *name);

/*
 * Formats the version 1.0 header NumPy itself writes for an array of this
 * dtype and shape (the dict, padded with spaces to a multiple of 64 bytes
 * including the newline) into out[size]; *length receives its length.
 * CM_ERR_TOO_LARGE if it does not fit.
 */
cm_status_t cm_npy_format_header(cm_npy_dtype_t dtype, int rank, const int64_t *shape, uint8_t *out,
                                 size_t size, size_t *length);

typedef struct cm_npy cm_npy_t;

/*
 * Opens and maps `path` read-only and checks its header and size.  On
 * failure *out is NULL and nothing stays mapped or open.
 */
cm_status_t cm_npy_open(const char *path, cm_npy_t **out);

/*
 * Wraps an array in memory: `data` (data_bytes of the dtype and shape, in C
 * order) is taken over and freed with free() by cm_npy_free.  `name` is what
 * error sentences call it.
 */
cm_status_t cm_npy_wrap(const char *name, cm_npy_dtype_t dtype, int rank, const int64_t *shape,
                        void *data, cm_npy_t **out);

/* Unmaps (or frees) and sets *npy to NULL; NULL-safe. */
void cm_npy_free(cm_npy_t **npy);

/* The parsed header; borrowed, valid while npy lives. */
const cm_npy_header_t *cm_npy_header(const cm_npy_t *npy);
/* The array's first byte (mapped or in memory); borrowed, valid while npy lives. */
const uint8_t *cm_npy_data(const cm_npy_t *npy);
/*
 * The bytes before the array (header.data_offset of them): the file's own
 * for a mapped file, the version 1.0 header cm_npy_format_header gives for a
 * wrapped array; so prefix + data are the bytes of the file (or its export).
 */
const uint8_t *cm_npy_prefix(const cm_npy_t *npy);
/* The path or name it was opened with. */
const char *cm_npy_path(const cm_npy_t *npy);
/* Bytes per row: the product of shape[1..] times the item size (item size for rank <= 1). */
size_t cm_npy_row_bytes(const cm_npy_t *npy);

/*
 * Writes an array as a version 1.0 .npy file (header from
 * cm_npy_format_header, then data_bytes of `data`), atomically.
 */
cm_status_t cm_npy_write(const char *path, cm_npy_dtype_t dtype, int rank, const int64_t *shape,
                         const void *data);

#endif
