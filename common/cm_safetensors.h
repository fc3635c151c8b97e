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
 */
#ifndef CM_SAFETENSORS_H
#define CM_SAFETENSORS_H

#include "cm_status.h"
#include "cm_tensor.h"

typedef struct cm_safetensors cm_safetensors_t;

/* Reads and validates a whole file.  On success *out owns the tensors' data. */
cm_status_t cm_safetensors_read(cm_safetensors_t **out, const char *path);

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
 * Writes `count` tensors and the metadata pairs metadata[0..2*pairs) (key, value,
 * key, value, ...) atomically to `path`.  Tensor data is borrowed for the call.
 */
cm_status_t cm_safetensors_write(const char *path, const cm_tensor_t *tensors, int count,
                                 const char *const *metadata, int pairs);

#endif
