/*
 * cm_alloc: aligned_alloc needs a size that is a multiple of the alignment,
 * so sizes are rounded up; zeroing keeps fresh gradient buffers ready for
 * backward passes that add.
 */
#include "cm_alloc.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum { ALIGNMENT = 64 };

void *cm_alloc_aligned(size_t count, size_t size) {
    if (size != 0 && count > SIZE_MAX / size) return NULL;
    size_t bytes = count * size;
    if (bytes == 0) bytes = ALIGNMENT;
    if (bytes > SIZE_MAX - ALIGNMENT) return NULL;
    bytes = (bytes + ALIGNMENT - 1) / ALIGNMENT * ALIGNMENT;
    void *block = aligned_alloc(ALIGNMENT, bytes);
    if (block) memset(block, 0, bytes);
    return block;
}

void cm_free_aligned(void *block) { free(block); }

float *cm_alloc_floats(size_t count) { return cm_alloc_aligned(count, sizeof(float)); }
