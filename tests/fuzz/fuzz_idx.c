/*
 * fuzz_idx: libFuzzer harness for the built-in Fashion-MNIST reader
 * (cm_dataset_parse_fashion: gzip streams, IDX headers, counts, labels) on
 * arbitrary bytes.  The input is split in two by fuzz_frames: the first
 * frame is the images file, the second the labels file.  Every input must
 * either parse into arrays whose shapes agree with each other or fail with a
 * sentence; never crash or read out of bounds.
 */
#include "cm_dataset.h"
#include "fuzz_frames.h"

#include <assert.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    cm_wire_frame_t frames[FUZZ_FRAMES_MAX];
    int count = fuzz_frames_split(data, size, frames);
    if (count >= 2) {
        cm_npy_t *pixels = NULL, *labels = NULL;
        cm_status_t status = cm_dataset_parse_fashion(
            "images.gz", frames[0].data, frames[0].bytes, "labels.gz", frames[1].data,
            frames[1].bytes, "train", &pixels, &labels);
        if (status == CM_OK) {
            const cm_npy_header_t *image_header = cm_npy_header(pixels);
            const cm_npy_header_t *label_header = cm_npy_header(labels);
            assert(image_header->rank == 3 && label_header->rank == 1);
            assert(image_header->shape[0] == label_header->shape[0]);
            const int64_t *values = (const int64_t *)cm_npy_data(labels);
            for (int64_t row = 0; row < label_header->shape[0]; row++)
                assert(values[row] >= 0 && values[row] < 10);
        } else {
            assert(!pixels && !labels);
        }
        cm_npy_free(&pixels);
        cm_npy_free(&labels);
    }
    fuzz_frames_free(frames, count);
    return 0;
}
