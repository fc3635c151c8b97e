/*
 * cm_tensor: dtype table and size arithmetic for cm_tensor_t.
 */
#include "cm_tensor.h"

#include <string.h>

static const struct {
    const char *name;
    size_t size;
} dtype_table[CM_DTYPE_COUNT] = {
    [CM_DTYPE_F32] = {"F32", 4}, [CM_DTYPE_F16] = {"F16", 2}, [CM_DTYPE_BF16] = {"BF16", 2},
    [CM_DTYPE_I32] = {"I32", 4}, [CM_DTYPE_I64] = {"I64", 8}, [CM_DTYPE_U8] = {"U8", 1},
};

size_t cm_dtype_size(cm_dtype_t dtype) {
    return dtype < CM_DTYPE_COUNT ? dtype_table[dtype].size : 0;
}

const char *cm_dtype_name(cm_dtype_t dtype) {
    return dtype < CM_DTYPE_COUNT ? dtype_table[dtype].name : "?";
}

cm_dtype_t cm_dtype_parse(const char *name) {
    for (int dtype = 0; dtype < CM_DTYPE_COUNT; dtype++)
        if (strcmp(dtype_table[dtype].name, name) == 0) return (cm_dtype_t)dtype;
    return CM_DTYPE_COUNT;
}

int64_t cm_tensor_elements(const cm_tensor_t *tensor) {
    int64_t elements = 1;
    for (int dim = 0; dim < tensor->ndim; dim++) elements *= tensor->shape[dim];
    return elements;
}

size_t cm_tensor_bytes(const cm_tensor_t *tensor) {
    return (size_t)cm_tensor_elements(tensor) * cm_dtype_size(tensor->dtype);
}
