/*
 * cm_alloc: zeroed, 64-byte aligned allocations for tensors (cache lines and
 * AVX-512 loads), with overflow-checked size arithmetic.
 */
#ifndef CM_ALLOC_H
#define CM_ALLOC_H

#include <stddef.h>

/* Zeroed block of count*size bytes aligned to 64; NULL on overflow or OOM. */
void *cm_alloc_aligned(size_t count, size_t size);

/* Frees a block from cm_alloc_aligned; NULL is fine. */
void cm_free_aligned(void *block);

/* Zeroed array of `count` floats, 64-byte aligned. */
float *cm_alloc_floats(size_t count);

#endif
