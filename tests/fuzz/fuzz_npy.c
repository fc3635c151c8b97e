/*
 * fuzz_npy: libFuzzer harness for the .npy header parser and size check
 * (cm_npy_parse_header, cm_npy_check_size) on arbitrary bytes.  Every input
 * must either parse into a header that is consistent with itself (data
 * offset inside the input, shape product times item size equal to
 * data_bytes) or fail with a sentence; never crash or read out of bounds.
 */
#include "cm_npy.h"

#include <assert.h>
#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    cm_npy_header_t header;
    if (cm_npy_parse_header(data, size, "fuzz.npy", &header) != CM_OK) return 0;
    assert(header.data_offset <= size);
    assert(header.rank >= 0 && header.rank <= CM_NPY_MAX_RANK);
    uint64_t elements = 1;
    for (int axis = 0; axis < header.rank; axis++) elements *= (uint64_t)header.shape[axis];
    assert(elements == header.elements);
    assert(header.data_bytes == elements * cm_npy_dtype_size(header.dtype));
    (void)cm_npy_check_size(&header, size, "fuzz.npy");
    /* What the writer produces for this header must parse back to the same header. */
    uint8_t again[512];
    size_t length = 0;
    if (cm_npy_format_header(header.dtype, header.rank, header.shape, again, sizeof again,
                             &length) == CM_OK) {
        cm_npy_header_t round_trip;
        cm_status_t status = cm_npy_parse_header(again, length, "again.npy", &round_trip);
        assert(status == CM_OK);
        assert(round_trip.elements == header.elements && round_trip.dtype == header.dtype);
        (void)status;
    }
    return 0;
}
