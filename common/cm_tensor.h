/*
 * cm_tensor: a named, typed, shaped view of a block of memory.  It never
 * owns its data; whoever fills `data` says how long it stays valid.  Used by
 * checkpoints (cm_safetensors) and, later, by the wire protocol.
 */
#ifndef CM_TENSOR_H
#define CM_TENSOR_H

#include <stddef.h>
#include <stdint.h>

enum { CM_TENSOR_MAX_DIMS = 8, CM_TENSOR_MAX_NAME = 128 };

typedef enum {
    CM_DTYPE_F32,
    CM_DTYPE_F16,
    CM_DTYPE_BF16,
    CM_DTYPE_I32,
    CM_DTYPE_I64,
    CM_DTYPE_U8,
    CM_DTYPE_COUNT
} cm_dtype_t;

typedef struct {
    char name[CM_TENSOR_MAX_NAME];
    cm_dtype_t dtype;
    int ndim;
    int64_t shape[CM_TENSOR_MAX_DIMS];
    void *data; /* borrowed; ndim == 0 is a scalar */
} cm_tensor_t;

/* Bytes per element of a dtype (4 for F32). */
size_t cm_dtype_size(cm_dtype_t dtype);

/* The safetensors spelling of a dtype ("F32", "BF16", ...). */
const char *cm_dtype_name(cm_dtype_t dtype);

/* Parses a safetensors dtype name; returns CM_DTYPE_COUNT when unknown. */
cm_dtype_t cm_dtype_parse(const char *name);

/* Number of elements (product of the shape; 1 for a scalar). */
int64_t cm_tensor_elements(const cm_tensor_t *tensor);

/* Number of bytes of the tensor's data. */
size_t cm_tensor_bytes(const cm_tensor_t *tensor);

#endif
