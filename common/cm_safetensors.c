/*
 * cm_safetensors: reading and writing safetensors checkpoints with jansson.
 *
 * Writing follows the reference implementation byte for byte where it
 * matters to other readers: compact JSON with "__metadata__" first and the
 * tensors in data order, padded with spaces so the data area starts 8-byte
 * aligned, and tensor bytes packed back to back.  Tensors are written in the
 * caller's order (the reference sorts them by dtype and name; readers do not
 * care).
 *
 * Reading never trusts the file: the header JSON is parsed with duplicate
 * keys rejected, every entry is checked, and the tensors sorted by offset
 * must tile the data area exactly (no overlap, no hole, nothing left over),
 * as the format requires.  The data is copied out of the file buffer into
 * one arena in which every tensor starts 64-byte aligned, because offsets in
 * the file only promise byte alignment.  Tensors are listed in data order,
 * which is the order they were written in; JSON key order is never relied on.
 * Keys of an entry other than dtype, shape and data_offsets are ignored, as
 * the reference reader does.
 *
 * Checksums (see the header for the keys): one CRC-32 per tensor, so a
 * damaged file names the tensor that is damaged, plus one over the metadata
 * pairs, so a flipped digit in "epoch" or "fingerprint" is caught too.  The
 * metadata checksum covers every pair except the "crc32:" ones, in byte
 * order of their keys (key, NUL, value, NUL each), so it does not depend on
 * the JSON key order another writer might choose.  What no checksum covers
 * is the rest of the header (names, dtypes, shapes, offsets); a flip there
 * almost always breaks the JSON or the size and tiling checks instead.
 * CRC-32 is an error-detecting code, not a signature: it catches bit rot and
 * torn copies, not someone who edits the file on purpose.  zlib computes it
 * at over 1 GB/s, a small cost next to reading the file.
 *
 * Tensor bytes are stored little-endian, and this module copies them as they
 * are, so it assumes a little-endian host.
 */
#include "cm_safetensors.h"

#include "cm_alloc.h"
#include "cm_file.h"
#include "cm_log.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
               "safetensors data is little-endian and is copied without byte swapping");

/* The reference implementation refuses headers above 100 MB; so do we. */
#define MAX_HEADER_BYTES UINT64_C(100000000)

enum { HEADER_LENGTH_BYTES = 8, HEADER_ALIGNMENT = 8, ARENA_ALIGNMENT = 64 };

/* "crc32:" + a tensor name (or "__metadata__") + NUL. */
enum { CHECKSUM_KEY_CAPACITY = 8 + CM_TENSOR_MAX_NAME, CHECKSUM_TEXT_DIGITS = 8 };

static const char metadata_key[] = "__metadata__";
static const char checksum_prefix[] = "crc32:";
enum { CHECKSUM_PREFIX_LENGTH = sizeof checksum_prefix - 1 };

struct cm_safetensors {
    int count;
    cm_tensor_t *tensors; /* `count` entries in data order */
    unsigned char *arena; /* owns every tensor's data (cm_alloc_aligned) */
    json_t *metadata;     /* the __metadata__ object, or NULL */
    bool verified;        /* every checksum was present and matched */
    /* Opened for streaming (cm_safetensors_open): no arena, the data stays in the file. */
    int fd;              /* -1 otherwise */
    char *path;          /* for messages */
    uint64_t data_start; /* file offset of the data area */
    uint64_t *begins;    /* [count] offsets of the tensors in the data area */
};

/* A tensor from the header, before its bytes are copied out of the file. */
typedef struct {
    cm_tensor_t tensor;
    uint64_t begin, end; /* byte offsets in the data area */
} header_entry_t;

static const char *json_kind(const json_t *value) {
    switch (json_typeof(value)) {
    case JSON_OBJECT:
        return "an object";
    case JSON_ARRAY:
        return "an array";
    case JSON_STRING:
        return "a string";
    case JSON_INTEGER:
        return "an integer";
    case JSON_REAL:
        return "a real number";
    case JSON_TRUE:
    case JSON_FALSE:
        return "a boolean";
    case JSON_NULL:
        return "null";
    }
    return "an unknown JSON value";
}

static uint64_t round_up(uint64_t value, uint64_t multiple) {
    return (value + multiple - 1) / multiple * multiple;
}

/*
 * Bytes of a tensor of `dtype` with `shape[0..ndim)`, in *bytes; false when
 * the product does not fit in 63 bits (so int64 element counts stay exact).
 */
static bool checked_tensor_bytes(cm_dtype_t dtype, int ndim, const int64_t *shape,
                                 uint64_t *bytes) {
    uint64_t product = cm_dtype_size(dtype);
    for (int dim = 0; dim < ndim; dim++) {
        uint64_t extent = (uint64_t)shape[dim];
        if (extent != 0 && product > (uint64_t)INT64_MAX / extent) return false;
        product *= extent;
    }
    *bytes = product;
    return true;
}

/* Formats a shape as "[2, 3]" into `text` for error messages. */
static const char *shape_text(char *text, size_t capacity, int ndim, const int64_t *shape) {
    size_t used = (size_t)snprintf(text, capacity, "[");
    for (int dim = 0; dim < ndim && used < capacity; dim++)
        used += (size_t)snprintf(text + used, capacity - used, "%s%" PRId64, dim ? ", " : "",
                                 shape[dim]);
    if (used < capacity) snprintf(text + used, capacity - used, "]");
    return text;
}

static cm_status_t parse_offset(const char *path, const char *name, const json_t *offsets,
                                size_t index, uint64_t *offset) {
    const json_t *value = json_array_get(offsets, index);
    if (!json_is_integer(value) || json_integer_value(value) < 0)
        return cm_fail(CM_ERR_FORMAT,
                       "%s: tensor \"%s\" has data_offsets[%zu] that is not a non-negative "
                       "integer",
                       path, name, index);
    *offset = (uint64_t)json_integer_value(value);
    return CM_OK;
}

/* Checks one header entry against the data area of `data_bytes` bytes. */
static cm_status_t parse_entry(const char *path, const char *name, const json_t *entry,
                               uint64_t data_bytes, header_entry_t *out) {
    cm_tensor_t *tensor = &out->tensor;
    memset(out, 0, sizeof *out);
    if (strlen(name) >= CM_TENSOR_MAX_NAME)
        return cm_fail(CM_ERR_FORMAT, "%s: tensor name \"%.40s...\" is %zu bytes, longer than %d",
                       path, name, strlen(name), CM_TENSOR_MAX_NAME - 1);
    strcpy(tensor->name, name);
    if (!json_is_object(entry))
        return cm_fail(CM_ERR_FORMAT, "%s: tensor \"%s\" is %s, not an object", path, name,
                       json_kind(entry));

    const json_t *dtype = json_object_get(entry, "dtype");
    if (!json_is_string(dtype))
        return cm_fail(CM_ERR_FORMAT, "%s: tensor \"%s\" has no dtype string", path, name);
    tensor->dtype = cm_dtype_parse(json_string_value(dtype));
    if (tensor->dtype == CM_DTYPE_COUNT)
        return cm_fail(CM_ERR_FORMAT, "%s: tensor \"%s\" has unknown dtype \"%s\"", path, name,
                       json_string_value(dtype));

    const json_t *shape = json_object_get(entry, "shape");
    if (!json_is_array(shape))
        return cm_fail(CM_ERR_FORMAT, "%s: tensor \"%s\" has no shape array", path, name);
    if (json_array_size(shape) > CM_TENSOR_MAX_DIMS)
        return cm_fail(CM_ERR_FORMAT, "%s: tensor \"%s\" has %zu dimensions, more than %d", path,
                       name, json_array_size(shape), CM_TENSOR_MAX_DIMS);
    tensor->ndim = (int)json_array_size(shape);
    for (int dim = 0; dim < tensor->ndim; dim++) {
        const json_t *extent = json_array_get(shape, (size_t)dim);
        if (!json_is_integer(extent) || json_integer_value(extent) < 0)
            return cm_fail(CM_ERR_FORMAT,
                           "%s: tensor \"%s\" has shape[%d] that is not a non-negative integer",
                           path, name, dim);
        tensor->shape[dim] = json_integer_value(extent);
    }
    uint64_t expected_bytes;
    if (!checked_tensor_bytes(tensor->dtype, tensor->ndim, tensor->shape, &expected_bytes))
        return cm_fail(CM_ERR_FORMAT, "%s: tensor \"%s\" has a shape whose size overflows", path,
                       name);

    const json_t *offsets = json_object_get(entry, "data_offsets");
    if (!json_is_array(offsets) || json_array_size(offsets) != 2)
        return cm_fail(CM_ERR_FORMAT, "%s: tensor \"%s\" has no data_offsets array of two integers",
                       path, name);
    cm_status_t status = parse_offset(path, name, offsets, 0, &out->begin);
    if (status == CM_OK) status = parse_offset(path, name, offsets, 1, &out->end);
    if (status != CM_OK) return status;
    if (out->begin > out->end)
        return cm_fail(CM_ERR_FORMAT,
                       "%s: tensor \"%s\" has data_offsets [%" PRIu64 ", %" PRIu64
                       "] that begin after they end",
                       path, name, out->begin, out->end);
    if (out->end > data_bytes)
        return cm_fail(CM_ERR_FORMAT,
                       "%s: tensor \"%s\" ends at byte %" PRIu64 ", beyond the %" PRIu64
                       "-byte data area",
                       path, name, out->end, data_bytes);
    if (out->end - out->begin != expected_bytes) {
        char shape_buffer[256];
        return cm_fail(CM_ERR_FORMAT,
                       "%s: tensor \"%s\" has %" PRIu64
                       " bytes in data_offsets but %s %s needs %" PRIu64,
                       path, name, out->end - out->begin, cm_dtype_name(tensor->dtype),
                       shape_text(shape_buffer, sizeof shape_buffer, tensor->ndim, tensor->shape),
                       expected_bytes);
    }
    return CM_OK;
}

static cm_status_t check_metadata(const char *path, json_t *metadata) {
    if (!json_is_object(metadata))
        return cm_fail(CM_ERR_FORMAT, "%s: __metadata__ is %s, not an object", path,
                       json_kind(metadata));
    const char *key;
    const json_t *value;
    json_object_foreach(metadata, key, value) if (!json_is_string(value)) return cm_fail(
        CM_ERR_FORMAT, "%s: __metadata__ value of \"%s\" is %s, not a string", path, key,
        json_kind(value));
    return CM_OK;
}

static bool is_checksum_key(const char *key) {
    return strncmp(key, checksum_prefix, CHECKSUM_PREFIX_LENGTH) == 0;
}

/* "crc32:<name>" into key[CHECKSUM_KEY_CAPACITY]; names are shorter than CM_TENSOR_MAX_NAME. */
static const char *checksum_key(char *key, const char *name) {
    snprintf(key, CHECKSUM_KEY_CAPACITY, "%s%s", checksum_prefix, name);
    return key;
}

static uint32_t bytes_crc32(const void *data, uint64_t bytes) {
    uLong crc = crc32_z(0L, Z_NULL, 0);
    if (bytes > 0) crc = crc32_z(crc, data, (z_size_t)bytes);
    return (uint32_t)crc;
}

/* Parses exactly 8 lowercase hex digits; false for anything else. */
static bool parse_checksum(const char *text, uint32_t *value) {
    uint32_t result = 0;
    for (int digit = 0; digit < CHECKSUM_TEXT_DIGITS; digit++) {
        char c = text[digit];
        if (c >= '0' && c <= '9')
            result = result << 4 | (uint32_t)(c - '0');
        else if (c >= 'a' && c <= 'f')
            result = result << 4 | (uint32_t)(c - 'a' + 10);
        else
            return false;
    }
    *value = result;
    return text[CHECKSUM_TEXT_DIGITS] == '\0';
}

static int compare_keys(const void *left, const void *right) {
    return strcmp(*(const char *const *)left, *(const char *const *)right);
}

/*
 * The CRC-32 of the metadata pairs other than the checksums, in byte order of their keys
 * (key, NUL, value, NUL each); 0 pairs give the CRC of nothing.  `metadata` may be NULL.
 */
static cm_status_t metadata_crc32(const char *path, const json_t *metadata, uint32_t *out) {
    size_t count = 0, capacity = metadata ? json_object_size(metadata) : 0;
    const char **keys = calloc(capacity ? capacity : 1, sizeof *keys);
    if (!keys) return cm_fail(CM_ERR_NOMEM, "out of memory checking the metadata of %s", path);
    const char *key;
    const json_t *value;
    if (metadata) {
        json_object_foreach((json_t *)metadata, key, value) {
            if (!is_checksum_key(key)) keys[count++] = key;
        }
    }
    qsort(keys, count, sizeof *keys, compare_keys);
    uLong crc = crc32_z(0L, Z_NULL, 0);
    for (size_t index = 0; index < count; index++) {
        const char *text = json_string_value(json_object_get(metadata, keys[index]));
        crc = crc32_z(crc, (const Bytef *)keys[index], strlen(keys[index]) + 1);
        crc = crc32_z(crc, (const Bytef *)text, strlen(text) + 1);
    }
    free(keys);
    *out = (uint32_t)crc;
    return CM_OK;
}

/* The checksum stored under `key` into *stored; *present is false when there is none. */
static cm_status_t stored_checksum(const char *path, const json_t *metadata, const char *key,
                                   bool *present, uint32_t *stored) {
    const char *text = metadata ? json_string_value(json_object_get(metadata, key)) : NULL;
    *present = text != NULL;
    if (text && !parse_checksum(text, stored))
        return cm_fail(CM_ERR_FORMAT,
                       "%s: __metadata__ value of \"%s\" is \"%.20s\", not 8 lowercase hex digits",
                       path, key, text);
    return CM_OK;
}

/*
 * Decides whether the file's checksums can be verified: none at all (unverified, fine), or
 * one for the metadata and one per tensor, each naming something the file holds (anything
 * in between is a damaged header).  Checks the metadata checksum; the tensors' are checked
 * as their bytes are copied.
 */
static cm_status_t check_checksum_set(cm_safetensors_t *file, const char *path, const json_t *root,
                                      const header_entry_t *entries, int count) {
    size_t checksums = 0;
    const char *key;
    const json_t *value;
    if (file->metadata) {
        json_object_foreach(file->metadata, key, value) {
            if (!is_checksum_key(key)) continue;
            const char *name = key + CHECKSUM_PREFIX_LENGTH;
            if (strcmp(name, metadata_key) != 0 && !json_object_get(root, name))
                return cm_fail(CM_ERR_FORMAT,
                               "%s: __metadata__ holds a checksum of tensor \"%s\", which the "
                               "file does not have (its header is damaged)",
                               path, name);
            checksums++;
        }
    }
    if (checksums == 0) {
        file->verified = count == 0 && !file->metadata;
        return CM_OK;
    }
    char checksum_name[CHECKSUM_KEY_CAPACITY];
    bool present;
    uint32_t stored = 0, computed;
    cm_status_t status = stored_checksum(
        path, file->metadata, checksum_key(checksum_name, metadata_key), &present, &stored);
    if (status != CM_OK) return status;
    if (!present)
        return cm_fail(CM_ERR_FORMAT,
                       "%s: __metadata__ holds checksums of tensors but none of itself (its "
                       "header is damaged)",
                       path);
    if ((status = metadata_crc32(path, file->metadata, &computed)) != CM_OK) return status;
    if (computed != stored)
        return cm_fail(CM_ERR_FORMAT,
                       "%s: the __metadata__ values are corrupt: their CRC-32 is %08" PRIx32
                       " but the file records %08" PRIx32
                       " (the file was damaged after it was written)",
                       path, computed, stored);
    for (int index = 0; index < count; index++) {
        status = stored_checksum(path, file->metadata,
                                 checksum_key(checksum_name, entries[index].tensor.name), &present,
                                 &stored);
        if (status != CM_OK) return status;
        if (!present)
            return cm_fail(CM_ERR_FORMAT,
                           "%s: tensor \"%s\" has no checksum although the file has checksums "
                           "(its header is damaged)",
                           path, entries[index].tensor.name);
    }
    file->verified = true;
    return CM_OK;
}

static int compare_by_offsets(const void *left, const void *right) {
    const header_entry_t *a = left, *b = right;
    if (a->begin != b->begin) return a->begin < b->begin ? -1 : 1;
    if (a->end != b->end) return a->end < b->end ? -1 : 1;
    return 0;
}

/* Sorted by offsets, the tensors must cover [0, data_bytes) exactly once. */
static cm_status_t check_tiling(const char *path, const header_entry_t *entries, int count,
                                uint64_t data_bytes) {
    uint64_t covered = 0;
    for (int index = 0; index < count; index++) {
        const header_entry_t *entry = &entries[index];
        if (entry->begin < covered)
            return cm_fail(CM_ERR_FORMAT,
                           "%s: tensors \"%s\" and \"%s\" overlap at bytes %" PRIu64 "..%" PRIu64,
                           path, entries[index - 1].tensor.name, entry->tensor.name, entry->begin,
                           covered);
        if (entry->begin > covered)
            return cm_fail(CM_ERR_FORMAT,
                           "%s: bytes %" PRIu64 "..%" PRIu64
                           " of the data area belong to no tensor (a hole before \"%s\")",
                           path, covered, entry->begin, entry->tensor.name);
        covered = entry->end;
    }
    if (covered != data_bytes)
        return cm_fail(CM_ERR_FORMAT,
                       "%s: bytes %" PRIu64 "..%" PRIu64
                       " at the end of the data area belong to no tensor",
                       path, covered, data_bytes);
    return CM_OK;
}

/*
 * Checks the 8-byte header length `header_bytes` of a file of `size` bytes (the data area is
 * what follows the header).
 */
static cm_status_t check_header_length(const char *path, uint64_t header_bytes, uint64_t size) {
    if (size < HEADER_LENGTH_BYTES)
        return cm_fail(CM_ERR_FORMAT,
                       "%s is %" PRIu64 " bytes, shorter than the 8-byte header length of a "
                       "safetensors file",
                       path, size);
    if (header_bytes > MAX_HEADER_BYTES)
        return cm_fail(CM_ERR_FORMAT, "%s: header length %" PRIu64 " is absurd (limit %" PRIu64 ")",
                       path, header_bytes, MAX_HEADER_BYTES);
    if (header_bytes > size - HEADER_LENGTH_BYTES)
        return cm_fail(CM_ERR_FORMAT,
                       "%s: header length %" PRIu64 " is larger than the %" PRIu64
                       " bytes after it",
                       path, header_bytes, size - HEADER_LENGTH_BYTES);
    return CM_OK;
}

static uint64_t header_length(const unsigned char *bytes) {
    uint64_t header_bytes = 0;
    for (int byte = HEADER_LENGTH_BYTES - 1; byte >= 0; byte--)
        header_bytes = header_bytes << 8 | bytes[byte];
    return header_bytes;
}

/*
 * Parses and checks the header JSON `json[0..header_bytes)` of a file whose data area has
 * `data_bytes` bytes: every entry, the tiling, the checksum set and the metadata checksum
 * (the tensors' checksums are checked as their bytes are read).  Sets file->metadata and
 * file->verified; *entries (sorted by offset, the caller frees it) and *count.
 */
static cm_status_t parse_header(cm_safetensors_t *file, const char *path, const unsigned char *json,
                                uint64_t header_bytes, uint64_t data_bytes,
                                header_entry_t **entries_out, int *count_out) {
    *entries_out = NULL;
    *count_out = 0;
    json_error_t error;
    json_t *root =
        json_loadb((const char *)json, (size_t)header_bytes, JSON_REJECT_DUPLICATES, &error);
    if (!root)
        return cm_fail(CM_ERR_FORMAT, "%s: header JSON is invalid at line %d, column %d: %s", path,
                       error.line, error.column, error.text);

    cm_status_t status = CM_OK;
    header_entry_t *entries = NULL;
    int count = 0;
    if (!json_is_object(root)) {
        status =
            cm_fail(CM_ERR_FORMAT, "%s: header is %s, not a JSON object", path, json_kind(root));
        goto done;
    }
    json_t *metadata = json_object_get(root, metadata_key);
    if (metadata) {
        status = check_metadata(path, metadata);
        if (status != CM_OK) goto done;
        file->metadata = json_incref(metadata);
    }

    size_t entry_count = json_object_size(root) - (metadata ? 1 : 0);
    if (entry_count > INT32_MAX) {
        status = cm_fail(CM_ERR_FORMAT, "%s: %zu tensors are too many", path, entry_count);
        goto done;
    }
    entries = calloc(entry_count ? entry_count : 1, sizeof *entries);
    if (!entries) {
        status = cm_fail(CM_ERR_NOMEM, "out of memory reading %s (%zu tensors)", path, entry_count);
        goto done;
    }
    const char *name;
    json_t *entry;
    json_object_foreach(root, name, entry) {
        if (strcmp(name, metadata_key) == 0) continue;
        status = parse_entry(path, name, entry, data_bytes, &entries[count]);
        if (status != CM_OK) goto done;
        count++;
    }
    qsort(entries, (size_t)count, sizeof *entries, compare_by_offsets);
    status = check_tiling(path, entries, count, data_bytes);
    if (status != CM_OK) goto done;
    status = check_checksum_set(file, path, root, entries, count);

done:
    json_decref(root);
    if (status != CM_OK) {
        free(entries);
        return status;
    }
    *entries_out = entries;
    *count_out = count;
    return CM_OK;
}

/* The CRC-32 the (verified) file records for tensor `name`. */
static uint32_t recorded_crc32(const cm_safetensors_t *file, const char *name) {
    char key[CHECKSUM_KEY_CAPACITY];
    uint32_t stored = 0;
    parse_checksum(json_string_value(json_object_get(file->metadata, checksum_key(key, name))),
                   &stored); /* present and well-formed: check_checksum_set said so */
    return stored;
}

static cm_status_t corrupt_tensor(const char *path, const char *name, uint32_t computed,
                                  uint32_t stored) {
    return cm_fail(CM_ERR_FORMAT,
                   "%s: the data of tensor \"%s\" is corrupt: its CRC-32 is %08" PRIx32
                   " but the file records %08" PRIx32
                   " (the file was damaged after it was written)",
                   path, name, computed, stored);
}

/* Parses, checks and verifies the whole file image `contents[0..size)` into `file`. */
static cm_status_t parse_file(cm_safetensors_t *file, const char *path,
                              const unsigned char *contents, size_t size) {
    uint64_t header_bytes = size >= HEADER_LENGTH_BYTES ? header_length(contents) : 0;
    cm_status_t status = check_header_length(path, header_bytes, size);
    if (status != CM_OK) return status;
    const unsigned char *data_area = contents + HEADER_LENGTH_BYTES + header_bytes;
    uint64_t data_bytes = size - HEADER_LENGTH_BYTES - header_bytes;
    header_entry_t *entries = NULL;
    int count = 0;
    status = parse_header(file, path, contents + HEADER_LENGTH_BYTES, header_bytes, data_bytes,
                          &entries, &count);
    if (status != CM_OK) return status;

    /* Each tensor gets its own 64-byte aligned slot in one arena. */
    uint64_t arena_bytes = 0;
    for (int index = 0; index < count; index++)
        arena_bytes += round_up(entries[index].end - entries[index].begin, ARENA_ALIGNMENT);
    file->tensors = calloc(count ? (size_t)count : 1, sizeof *file->tensors);
    file->arena = cm_alloc_aligned((size_t)arena_bytes, 1);
    if (!file->tensors || !file->arena) {
        status = cm_fail(CM_ERR_NOMEM, "out of memory reading %s (%" PRIu64 " bytes of tensors)",
                         path, arena_bytes);
        goto done;
    }
    uint64_t slot = 0;
    for (int index = 0; index < count; index++) {
        uint64_t bytes = entries[index].end - entries[index].begin;
        file->tensors[index] = entries[index].tensor;
        file->tensors[index].data = file->arena + slot;
        memcpy(file->arena + slot, data_area + entries[index].begin, (size_t)bytes);
        if (file->verified) {
            uint32_t computed = bytes_crc32(file->arena + slot, bytes),
                     stored = recorded_crc32(file, entries[index].tensor.name);
            if (computed != stored) {
                status = corrupt_tensor(path, entries[index].tensor.name, computed, stored);
                goto done;
            }
        }
        slot += round_up(bytes, ARENA_ALIGNMENT);
    }
    file->count = count;

done:
    free(entries);
    return status;
}

cm_status_t cm_safetensors_parse(cm_safetensors_t **out, const uint8_t *contents, size_t size,
                                 const char *name) {
    *out = NULL;
    cm_safetensors_t *file = calloc(1, sizeof *file);
    if (!file) return cm_fail(CM_ERR_NOMEM, "out of memory reading %s", name);
    file->fd = -1;
    cm_status_t status = parse_file(file, name, contents, size);
    if (status != CM_OK) {
        cm_safetensors_free(&file);
        return status;
    }
    *out = file;
    return CM_OK;
}

cm_status_t cm_safetensors_read(cm_safetensors_t **out, const char *path) {
    *out = NULL;
    void *contents;
    size_t size;
    cm_status_t status = cm_file_read_all(path, &contents, &size);
    if (status != CM_OK) return status;
    status = cm_safetensors_parse(out, contents, size, path);
    free(contents);
    if (status == CM_OK && !(*out)->verified)
        cm_log_warn("%s carries no checksums (another program or an older committee wrote it), "
                    "so its data is loaded without being verified",
                    path);
    return status;
}

/* Reads exactly `size` bytes at `offset` of the open file (CM_ERR_IO / CM_ERR_FORMAT). */
static cm_status_t read_at(int fd, const char *path, void *buffer, size_t size, uint64_t offset) {
    unsigned char *bytes = buffer;
    while (size > 0) {
        ssize_t got = pread(fd, bytes, size, (off_t)offset);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) return cm_fail(CM_ERR_IO, "cannot read %s: %s", path, strerror(errno));
        if (got == 0)
            return cm_fail(CM_ERR_FORMAT,
                           "%s ended at byte %" PRIu64 " (it shrank while it was read)", path,
                           offset);
        bytes += got;
        size -= (size_t)got;
        offset += (uint64_t)got;
    }
    return CM_OK;
}

cm_status_t cm_safetensors_open(cm_safetensors_t **out, const char *path) {
    *out = NULL;
    cm_safetensors_t *file = calloc(1, sizeof *file);
    if (!file) return cm_fail(CM_ERR_NOMEM, "out of memory reading %s", path);
    file->fd = -1;
    unsigned char *json = NULL;
    header_entry_t *entries = NULL;
    int count = 0;
    cm_status_t status = CM_OK;
    struct stat info;
    if (!(file->path = strdup(path))) {
        status = cm_fail(CM_ERR_NOMEM, "out of memory reading %s", path);
        goto done;
    }
    if ((file->fd = open(path, O_RDONLY | O_CLOEXEC)) < 0 || fstat(file->fd, &info) != 0) {
        status = cm_fail(errno == ENOENT ? CM_ERR_NOT_FOUND : CM_ERR_IO, "cannot read %s: %s", path,
                         strerror(errno));
        goto done;
    }
    uint64_t size = (uint64_t)info.st_size;
    unsigned char length[HEADER_LENGTH_BYTES] = {0};
    if (size >= HEADER_LENGTH_BYTES &&
        (status = read_at(file->fd, path, length, sizeof length, 0)) != CM_OK)
        goto done;
    uint64_t header_bytes = header_length(length);
    if ((status = check_header_length(path, header_bytes, size)) != CM_OK) goto done;
    if (!(json = malloc(header_bytes ? (size_t)header_bytes : 1))) {
        status = cm_fail(CM_ERR_NOMEM, "out of memory reading the header of %s", path);
        goto done;
    }
    if ((status = read_at(file->fd, path, json, (size_t)header_bytes, HEADER_LENGTH_BYTES)))
        goto done;
    file->data_start = HEADER_LENGTH_BYTES + header_bytes;
    status =
        parse_header(file, path, json, header_bytes, size - file->data_start, &entries, &count);
    if (status != CM_OK) goto done;
    file->tensors = calloc(count ? (size_t)count : 1, sizeof *file->tensors);
    file->begins = calloc(count ? (size_t)count : 1, sizeof *file->begins);
    if (!file->tensors || !file->begins) {
        status = cm_fail(CM_ERR_NOMEM, "out of memory reading %s", path);
        goto done;
    }
    for (int index = 0; index < count; index++) {
        file->tensors[index] = entries[index].tensor; /* data stays NULL */
        file->begins[index] = entries[index].begin;
    }
    file->count = count;
    /* One pass from start to end, mostly: tell the kernel to read ahead. */
    posix_fadvise(file->fd, 0, 0, POSIX_FADV_SEQUENTIAL);
done:
    free(json);
    free(entries);
    if (status != CM_OK) {
        cm_safetensors_free(&file);
        return status;
    }
    if (!file->verified)
        cm_log_warn("%s carries no checksums (another program or an older committee wrote it), "
                    "so its data is loaded without being verified",
                    path);
    *out = file;
    return CM_OK;
}

void cm_safetensors_reader_start(const cm_safetensors_t *file, const cm_tensor_t *tensor,
                                 cm_safetensors_reader_t *reader) {
    memset(reader, 0, sizeof *reader);
    reader->file = file;
    reader->index = (int)(tensor - file->tensors);
    reader->total = cm_tensor_bytes(tensor);
    reader->crc = (uint32_t)crc32_z(0L, Z_NULL, 0);
}

cm_status_t cm_safetensors_reader_read(cm_safetensors_reader_t *reader, void *buffer,
                                       size_t bytes) {
    const cm_safetensors_t *file = reader->file;
    const cm_tensor_t *tensor = &file->tensors[reader->index];
    if (file->fd < 0 || bytes > reader->total - reader->done)
        return cm_fail(CM_ERR_INVALID_ARG,
                       "%s: reading %zu bytes of tensor \"%s\" at byte %zu of its %zu", file->path,
                       bytes, tensor->name, reader->done, reader->total);
    cm_status_t status =
        read_at(file->fd, file->path, buffer, bytes,
                file->data_start + file->begins[reader->index] + (uint64_t)reader->done);
    if (status != CM_OK) return status;
    if (bytes > 0) reader->crc = (uint32_t)crc32_z(reader->crc, buffer, (z_size_t)bytes);
    reader->done += bytes;
    if (reader->done == reader->total && file->verified) {
        uint32_t stored = recorded_crc32(file, tensor->name);
        if (reader->crc != stored)
            return corrupt_tensor(file->path, tensor->name, reader->crc, stored);
    }
    return CM_OK;
}

int cm_safetensors_verified(const cm_safetensors_t *file) { return file->verified; }

void cm_safetensors_free(cm_safetensors_t **file) {
    if (!file || !*file) return;
    free((*file)->tensors);
    cm_free_aligned((*file)->arena);
    if ((*file)->fd >= 0) close((*file)->fd);
    free((*file)->path);
    free((*file)->begins);
    json_decref((*file)->metadata);
    free(*file);
    *file = NULL;
}

int cm_safetensors_count(const cm_safetensors_t *file) { return file->count; }

const cm_tensor_t *cm_safetensors_tensor(const cm_safetensors_t *file, int index) {
    assert(index >= 0 && index < file->count);
    return &file->tensors[index];
}

/* A linear scan: checkpoints hold tens of tensors, looked up once at load. */
const cm_tensor_t *cm_safetensors_find(const cm_safetensors_t *file, const char *name) {
    for (int index = 0; index < file->count; index++)
        if (strcmp(file->tensors[index].name, name) == 0) return &file->tensors[index];
    return NULL;
}

const char *cm_safetensors_metadata(const cm_safetensors_t *file, const char *key) {
    return file->metadata ? json_string_value(json_object_get(file->metadata, key)) : NULL;
}

int cm_safetensors_metadata_keys(const cm_safetensors_t *file, const char **keys, int capacity) {
    int total = file->metadata ? (int)json_object_size(file->metadata) : 0, stored = 0;
    const char *key;
    json_t *value;
    if (file->metadata) {
        json_object_foreach(file->metadata, key, value) {
            if (stored < capacity) keys[stored++] = key;
        }
    }
    qsort(keys, (size_t)stored, sizeof keys[0], compare_keys);
    return total;
}

/* Checks one tensor the caller wants written; *bytes is its data size. */
static cm_status_t check_tensor_to_write(const char *path, const cm_tensor_t *tensor, int index,
                                         uint64_t *bytes) {
    if (!memchr(tensor->name, '\0', sizeof tensor->name))
        return cm_fail(CM_ERR_INVALID_ARG, "tensor %d for %s has an unterminated name", index,
                       path);
    if (strcmp(tensor->name, metadata_key) == 0)
        return cm_fail(CM_ERR_INVALID_ARG, "tensor %d for %s is named %s, which is reserved", index,
                       path, metadata_key);
    if ((unsigned)tensor->dtype >= CM_DTYPE_COUNT)
        return cm_fail(CM_ERR_INVALID_ARG, "tensor \"%s\" for %s has invalid dtype %d",
                       tensor->name, path, (int)tensor->dtype);
    if (tensor->ndim < 0 || tensor->ndim > CM_TENSOR_MAX_DIMS)
        return cm_fail(CM_ERR_INVALID_ARG, "tensor \"%s\" for %s has %d dimensions (0..%d allowed)",
                       tensor->name, path, tensor->ndim, CM_TENSOR_MAX_DIMS);
    for (int dim = 0; dim < tensor->ndim; dim++)
        if (tensor->shape[dim] < 0)
            return cm_fail(CM_ERR_INVALID_ARG, "tensor \"%s\" for %s has negative shape[%d]",
                           tensor->name, path, dim);
    if (!checked_tensor_bytes(tensor->dtype, tensor->ndim, tensor->shape, bytes))
        return cm_fail(CM_ERR_INVALID_ARG, "tensor \"%s\" for %s has a shape whose size overflows",
                       tensor->name, path);
    if (*bytes > 0 && !tensor->data)
        return cm_fail(CM_ERR_INVALID_ARG, "tensor \"%s\" for %s has no data", tensor->name, path);
    return CM_OK;
}

/* The header entry {"dtype", "shape", "data_offsets"} of one tensor, or NULL. */
static json_t *entry_json(const cm_tensor_t *tensor, uint64_t begin, uint64_t end) {
    json_t *entry = json_object(), *shape = json_array(), *offsets = json_array();
    bool ok = entry && shape && offsets;
    for (int dim = 0; ok && dim < tensor->ndim; dim++)
        ok = json_array_append_new(shape, json_integer(tensor->shape[dim])) == 0;
    ok = ok && json_array_append_new(offsets, json_integer((json_int_t)begin)) == 0;
    ok = ok && json_array_append_new(offsets, json_integer((json_int_t)end)) == 0;
    ok = ok && json_object_set_new(entry, "dtype", json_string(cm_dtype_name(tensor->dtype))) == 0;
    ok = ok && json_object_set(entry, "shape", shape) == 0;
    ok = ok && json_object_set(entry, "data_offsets", offsets) == 0;
    json_decref(shape);
    json_decref(offsets);
    if (!ok) {
        json_decref(entry);
        return NULL;
    }
    return entry;
}

/* Sets metadata[key] to `crc` as 8 lowercase hex digits. */
static cm_status_t set_checksum(json_t *metadata, const char *path, const char *key, uint32_t crc) {
    char text[CHECKSUM_TEXT_DIGITS + 1];
    snprintf(text, sizeof text, "%08" PRIx32, crc);
    if (json_object_set_new(metadata, key, json_string(text)) != 0)
        return cm_fail(CM_ERR_NOMEM, "out of memory building the header of %s", path);
    return CM_OK;
}

/*
 * Builds the header object: "__metadata__" first (the caller's pairs, then a checksum per
 * tensor, then the metadata checksum), then the tensors in order.
 */
static cm_status_t build_header(json_t *root, const char *path, const cm_tensor_t *tensors,
                                int count, const char *const *metadata, int pairs) {
    json_t *object = json_object();
    if (!object || json_object_set_new(root, metadata_key, object) != 0)
        return cm_fail(CM_ERR_NOMEM, "out of memory building the header of %s", path);
    for (int pair = 0; pair < pairs; pair++) {
        const char *key = metadata[2 * pair], *value = metadata[2 * pair + 1];
        if (!key || !value)
            return cm_fail(CM_ERR_INVALID_ARG, "metadata pair %d for %s has a NULL %s", pair, path,
                           key ? "value" : "key");
        if (is_checksum_key(key))
            return cm_fail(CM_ERR_INVALID_ARG,
                           "metadata key \"%s\" for %s begins with \"%s\", which is reserved for "
                           "checksums",
                           key, path, checksum_prefix);
        if (json_object_get(object, key))
            return cm_fail(CM_ERR_INVALID_ARG, "metadata key \"%s\" for %s appears twice", key,
                           path);
        json_t *string = json_string(value);
        if (!string || json_object_set_new(object, key, string) != 0)
            return cm_fail(CM_ERR_INVALID_ARG, "metadata pair \"%s\" for %s is not valid UTF-8",
                           key, path);
    }
    uint32_t crc;
    cm_status_t status = metadata_crc32(path, object, &crc);
    if (status != CM_OK) return status;
    uint64_t offset = 0;
    char key[CHECKSUM_KEY_CAPACITY];
    for (int index = 0; index < count; index++) {
        const cm_tensor_t *tensor = &tensors[index];
        uint64_t bytes = 0;
        status = check_tensor_to_write(path, tensor, index, &bytes);
        if (status != CM_OK) return status;
        if (json_object_get(root, tensor->name))
            return cm_fail(CM_ERR_INVALID_ARG, "tensor name \"%s\" for %s appears twice",
                           tensor->name, path);
        json_t *entry = entry_json(tensor, offset, offset + bytes);
        if (!entry) return cm_fail(CM_ERR_NOMEM, "out of memory building the header of %s", path);
        if (json_object_set_new(root, tensor->name, entry) != 0)
            return cm_fail(CM_ERR_INVALID_ARG, "tensor name \"%s\" for %s is not valid UTF-8",
                           tensor->name, path);
        status = set_checksum(object, path, checksum_key(key, tensor->name),
                              bytes_crc32(tensor->data, bytes));
        if (status != CM_OK) return status;
        offset += bytes;
    }
    return set_checksum(object, path, checksum_key(key, metadata_key), crc);
}

cm_status_t cm_safetensors_write(const char *path, const cm_tensor_t *tensors, int count,
                                 const char *const *metadata, int pairs) {
    if (count < 0 || pairs < 0 || (count > 0 && !tensors) || (pairs > 0 && !metadata))
        return cm_fail(CM_ERR_INVALID_ARG, "cm_safetensors_write(%s) got %d tensors, %d pairs",
                       path, count, pairs);
    cm_status_t status;
    char *json_text = NULL;
    unsigned char *header = NULL;
    cm_file_chunk_t *chunks = NULL;
    json_t *root = json_object();
    if (!root) return cm_fail(CM_ERR_NOMEM, "out of memory building the header of %s", path);
    status = build_header(root, path, tensors, count, metadata, pairs);
    if (status != CM_OK) goto done;

    json_text = json_dumps(root, JSON_COMPACT);
    chunks = calloc((size_t)count + 1, sizeof *chunks);
    size_t text_bytes = json_text ? strlen(json_text) : 0;
    size_t header_bytes = (size_t)round_up(text_bytes, HEADER_ALIGNMENT);
    header = json_text ? malloc(HEADER_LENGTH_BYTES + header_bytes) : NULL;
    if (!chunks || !header) {
        status = cm_fail(CM_ERR_NOMEM, "out of memory building the header of %s", path);
        goto done;
    }
    for (int byte = 0; byte < HEADER_LENGTH_BYTES; byte++)
        header[byte] = (unsigned char)((uint64_t)header_bytes >> (8 * byte));
    memcpy(header + HEADER_LENGTH_BYTES, json_text, text_bytes);
    memset(header + HEADER_LENGTH_BYTES + text_bytes, ' ', header_bytes - text_bytes);

    chunks[0] = (cm_file_chunk_t){header, HEADER_LENGTH_BYTES + header_bytes};
    for (int index = 0; index < count; index++)
        chunks[index + 1] =
            (cm_file_chunk_t){tensors[index].data, cm_tensor_bytes(&tensors[index])};
    status = cm_file_write_atomic(path, chunks, count + 1);

done:
    free(chunks);
    free(header);
    free(json_text);
    json_decref(root);
    return status;
}
