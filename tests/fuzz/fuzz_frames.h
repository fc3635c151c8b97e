/*
 * fuzz_frames: how the wire harness and the corpus generator agree on
 * turning one fuzzer input into a multipart message.  The input is a list
 * of frames, each a 2-byte little-endian length followed by that many bytes;
 * a final frame whose length runs past the end takes what is left.  Up to
 * FUZZ_FRAMES_MAX frames are read (one more than a message may have, so the
 * frame-count check is reachable); the rest of the input is ignored.
 */
#ifndef FUZZ_FRAMES_H
#define FUZZ_FRAMES_H

#include "cm_wire.h"

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum { FUZZ_FRAMES_MAX = CM_WIRE_MAX_FRAMES + 1, FUZZ_FRAME_MAX_BYTES = 0xffff };

/*
 * Splits data[0..size) into frames[0..FUZZ_FRAMES_MAX), each copied into its own malloc'd
 * buffer of exactly its length (so AddressSanitizer sees any read past a frame); returns the
 * count.  Free with fuzz_frames_free.
 */
static inline int fuzz_frames_split(const uint8_t *data, size_t size, cm_wire_frame_t *frames) {
    int count = 0;
    size_t at = 0;
    while (at + 2 <= size && count < FUZZ_FRAMES_MAX) {
        size_t length = (size_t)data[at] | (size_t)data[at + 1] << 8;
        at += 2;
        if (length > size - at) length = size - at;
        void *copy = malloc(length ? length : 1);
        if (!copy) abort();
        memcpy(copy, data + at, length);
        frames[count++] = (cm_wire_frame_t){copy, length};
        at += length;
    }
    return count;
}

static inline void fuzz_frames_free(cm_wire_frame_t *frames, int count) {
    for (int index = 0; index < count; index++) free((void *)frames[index].data);
}

#endif
