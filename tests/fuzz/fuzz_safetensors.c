/*
 * fuzz_safetensors: libFuzzer harness for the safetensors reader, through
 * cm_safetensors_parse (the in-memory entry point cm_safetensors_read also
 * uses, so this is the code that loads checkpoints, .state and cache files).
 * The input is a whole file image.  A file that loads must hold what the
 * reader promises: every tensor's bytes readable at a 64-byte aligned
 * address, exactly dtype size times its shape, names NUL-terminated and
 * found again by name, and metadata values readable.
 */
#include "cm_safetensors.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    /* A copy of exactly `size` bytes, so ASan sees a read past the end of the file. */
    uint8_t *image = malloc(size ? size : 1);
    if (!image) abort();
    memcpy(image, data, size);
    cm_safetensors_t *file = NULL;
    if (cm_safetensors_parse(&file, image, size, "fuzz.safetensors") == CM_OK) {
        volatile unsigned sum = 0;
        for (int index = 0; index < cm_safetensors_count(file); index++) {
            const cm_tensor_t *tensor = cm_safetensors_tensor(file, index);
            if (!memchr(tensor->name, '\0', sizeof tensor->name)) abort();
            if (cm_safetensors_find(file, tensor->name) != tensor) abort();
            if ((uintptr_t)tensor->data % 64 != 0) abort();
            size_t bytes = cm_tensor_bytes(tensor);
            for (size_t byte = 0; byte < bytes; byte++)
                sum += ((const uint8_t *)tensor->data)[byte];
            const char *checksum = cm_safetensors_metadata(file, "crc32:__metadata__");
            if (checksum) sum += (unsigned)strlen(checksum);
        }
        (void)sum;
        (void)cm_safetensors_verified(file);
        cm_safetensors_free(&file);
    } else if (file != NULL) {
        abort();
    }
    free(image);
    return 0;
}
