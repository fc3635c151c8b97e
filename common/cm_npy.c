/*
 * cm_npy: see cm_npy.h.  The header dict is parsed by a small recursive
 * reader that accepts exactly the Python literals NumPy writes (quoted
 * strings, True/False, tuples of non-negative integers), in any key order
 * and with any spacing, and rejects everything else.
 */
#include "cm_npy.h"
#include "cm_file.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static const struct {
    const char *name;
    const char *descr;
    size_t size;
} dtypes[CM_NPY_DTYPE_COUNT] = {
    [CM_NPY_BOOL] = {"bool", "|b1", 1},   [CM_NPY_U8] = {"uint8", "|u1", 1},
    [CM_NPY_I8] = {"int8", "|i1", 1},     [CM_NPY_U16] = {"uint16", "<u2", 2},
    [CM_NPY_I16] = {"int16", "<i2", 2},   [CM_NPY_U32] = {"uint32", "<u4", 4},
    [CM_NPY_I32] = {"int32", "<i4", 4},   [CM_NPY_U64] = {"uint64", "<u8", 8},
    [CM_NPY_I64] = {"int64", "<i8", 8},   [CM_NPY_F16] = {"float16", "<f2", 2},
    [CM_NPY_F32] = {"float32", "<f4", 4}, [CM_NPY_F64] = {"float64", "<f8", 8},
};

const char *cm_npy_dtype_name(cm_npy_dtype_t dtype) {
    return (unsigned)dtype < CM_NPY_DTYPE_COUNT ? dtypes[dtype].name : "unknown";
}

const char *cm_npy_dtype_descr(cm_npy_dtype_t dtype) {
    return (unsigned)dtype < CM_NPY_DTYPE_COUNT ? dtypes[dtype].descr : "?";
}

size_t cm_npy_dtype_size(cm_npy_dtype_t dtype) {
    return (unsigned)dtype < CM_NPY_DTYPE_COUNT ? dtypes[dtype].size : 0;
}

/* ---- The header dict ---- */

typedef struct {
    const char *text;
    size_t length, at;
    const char *name;
} dict_reader_t;

static void skip_space(dict_reader_t *reader) {
    while (reader->at < reader->length &&
           (reader->text[reader->at] == ' ' || reader->text[reader->at] == '\t' ||
            reader->text[reader->at] == '\n' || reader->text[reader->at] == '\r'))
        reader->at++;
}

static int peek(dict_reader_t *reader) {
    skip_space(reader);
    return reader->at < reader->length ? (unsigned char)reader->text[reader->at] : -1;
}

static cm_status_t bad_header(const dict_reader_t *reader, const char *what) {
    return cm_fail(CM_ERR_FORMAT, "%s: bad .npy header: %s at byte %zu of the header dict",
                   reader->name, what, reader->at);
}

/* A quoted string ('...' or "...") without escapes into out[size]. */
static cm_status_t read_string(dict_reader_t *reader, char *out, size_t size) {
    int quote = peek(reader);
    if (quote != '\'' && quote != '"') return bad_header(reader, "expected a quoted string");
    reader->at++;
    size_t used = 0;
    while (reader->at < reader->length && reader->text[reader->at] != quote) {
        char c = reader->text[reader->at++];
        if (c == '\\' || c == '\n') return bad_header(reader, "unsupported character in a string");
        if (used + 1 >= size) return bad_header(reader, "string too long");
        out[used++] = c;
    }
    if (reader->at >= reader->length) return bad_header(reader, "unterminated string");
    reader->at++;
    out[used] = '\0';
    return CM_OK;
}

static int take(dict_reader_t *reader, const char *word) {
    skip_space(reader);
    size_t n = strlen(word);
    if (reader->length - reader->at >= n && memcmp(reader->text + reader->at, word, n) == 0) {
        reader->at += n;
        return 1;
    }
    return 0;
}

static cm_status_t read_shape(dict_reader_t *reader, cm_npy_header_t *header) {
    if (!take(reader, "(")) return bad_header(reader, "shape is not a tuple");
    header->rank = 0;
    for (;;) {
        int c = peek(reader);
        if (c == ')') {
            reader->at++;
            return CM_OK;
        }
        if (c < '0' || c > '9') return bad_header(reader, "shape holds something not an integer");
        uint64_t value = 0;
        while (reader->at < reader->length && reader->text[reader->at] >= '0' &&
               reader->text[reader->at] <= '9') {
            value = value * 10 + (uint64_t)(reader->text[reader->at++] - '0');
            if (value > (uint64_t)INT64_MAX / 16) return bad_header(reader, "dimension too large");
        }
        if (reader->at < reader->length && reader->text[reader->at] == 'L') reader->at++;
        if (header->rank >= CM_NPY_MAX_RANK)
            return cm_fail(CM_ERR_FORMAT, "%s: the array has more than %d dimensions", reader->name,
                           CM_NPY_MAX_RANK);
        header->shape[header->rank++] = (int64_t)value;
        c = peek(reader);
        if (c == ',') {
            reader->at++;
            continue;
        }
        if (c != ')') return bad_header(reader, "expected ',' or ')' in the shape");
    }
}

static cm_status_t parse_dict(dict_reader_t *reader, cm_npy_header_t *header) {
    int seen_descr = 0, seen_order = 0, seen_shape = 0;
    char descr[32] = "";
    if (!take(reader, "{")) return bad_header(reader, "the header is not a dict");
    for (;;) {
        int c = peek(reader);
        if (c == '}') {
            reader->at++;
            break;
        }
        char key[32];
        cm_status_t status = read_string(reader, key, sizeof key);
        if (status != CM_OK) return status;
        if (!take(reader, ":")) return bad_header(reader, "expected ':'");
        if (strcmp(key, "descr") == 0 && !seen_descr) {
            if (peek(reader) == '[')
                return cm_fail(CM_ERR_FORMAT, "%s: structured (record) arrays are not supported",
                               reader->name);
            if ((status = read_string(reader, descr, sizeof descr)) != CM_OK) return status;
            seen_descr = 1;
        } else if (strcmp(key, "fortran_order") == 0 && !seen_order) {
            if (take(reader, "True"))
                return cm_fail(CM_ERR_FORMAT,
                               "%s: the array is in Fortran order; save it in C order "
                               "(numpy.ascontiguousarray)",
                               reader->name);
            if (!take(reader, "False")) return bad_header(reader, "fortran_order is not a bool");
            seen_order = 1;
        } else if (strcmp(key, "shape") == 0 && !seen_shape) {
            if ((status = read_shape(reader, header)) != CM_OK) return status;
            seen_shape = 1;
        } else {
            return bad_header(reader, "unknown or repeated key");
        }
        c = peek(reader);
        if (c == ',') {
            reader->at++;
            continue;
        }
        if (c != '}') return bad_header(reader, "expected ',' or '}'");
    }
    skip_space(reader);
    if (reader->at != reader->length) return bad_header(reader, "trailing characters");
    if (!seen_descr || !seen_order || !seen_shape)
        return cm_fail(CM_ERR_FORMAT, "%s: bad .npy header: it lacks %s", reader->name,
                       !seen_descr   ? "'descr'"
                       : !seen_order ? "'fortran_order'"
                                     : "'shape'");
    if (descr[0] == '>' && descr[1] && strcmp(descr + 1, "u1") && strcmp(descr + 1, "i1") &&
        strcmp(descr + 1, "b1"))
        return cm_fail(CM_ERR_FORMAT,
                       "%s: the array is big-endian (%s); save it little-endian "
                       "(array.astype(array.dtype.newbyteorder('<')))",
                       reader->name, descr);
    /* '=' is native (little-endian on every machine this runs on); one-byte types take any. */
    char normalized[32];
    snprintf(normalized, sizeof normalized, "%s", descr);
    if (normalized[0] == '=') normalized[0] = '<';
    if ((normalized[0] == '<' || normalized[0] == '>' || normalized[0] == '=') &&
        (normalized[2] == '1' && normalized[3] == '\0'))
        normalized[0] = '|';
    for (int dtype = 0; dtype < CM_NPY_DTYPE_COUNT; dtype++)
        if (strcmp(normalized, dtypes[dtype].descr) == 0) {
            header->dtype = (cm_npy_dtype_t)dtype;
            return CM_OK;
        }
    return cm_fail(CM_ERR_FORMAT,
                   "%s: dtype '%s' is not supported (use float32, float16, uint8, "
                   "int32 or int64)",
                   reader->name, descr);
}

cm_status_t cm_npy_parse_header(const uint8_t *bytes, size_t size, const char *name,
                                cm_npy_header_t *header) {
    static const uint8_t magic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};
    memset(header, 0, sizeof *header);
    if (!name) name = "(array)";
    if (size < 10 || memcmp(bytes, magic, sizeof magic) != 0)
        return cm_fail(CM_ERR_FORMAT, "%s: not a .npy file (it does not start with \\x93NUMPY)",
                       name);
    header->major = bytes[6];
    header->minor = bytes[7];
    if (header->major < 1 || header->major > 3 || header->minor != 0)
        return cm_fail(CM_ERR_VERSION,
                       "%s: .npy format version %d.%d is unknown (1.0, 2.0, 3.0 are "
                       "read)",
                       name, header->major, header->minor);
    size_t prefix = header->major == 1 ? 10 : 12;
    if (size < prefix)
        return cm_fail(CM_ERR_FORMAT, "%s: truncated: the .npy header is cut short", name);
    uint64_t dict_length = header->major == 1
                               ? (uint64_t)bytes[8] | (uint64_t)bytes[9] << 8
                               : (uint64_t)bytes[8] | (uint64_t)bytes[9] << 8 |
                                     (uint64_t)bytes[10] << 16 | (uint64_t)bytes[11] << 24;
    if (dict_length > size - prefix)
        return cm_fail(CM_ERR_FORMAT,
                       "%s: truncated: the .npy header promises %llu bytes, the file holds %zu",
                       name, (unsigned long long)dict_length, size - prefix);
    dict_reader_t reader = {(const char *)bytes + prefix, (size_t)dict_length, 0, name};
    /* Version 1 and 2 headers are latin-1, 3 is UTF-8; the dict itself is plain ASCII. */
    for (size_t i = 0; i < reader.length; i++)
        if (reader.text[i] == '\0' || (unsigned char)reader.text[i] >= 0x80)
            return cm_fail(CM_ERR_FORMAT, "%s: bad .npy header: byte %zu is not ASCII", name, i);
    cm_status_t status = parse_dict(&reader, header);
    if (status != CM_OK) return status;
    header->data_offset = prefix + (size_t)dict_length;
    uint64_t elements = 1, item = dtypes[header->dtype].size;
    for (int axis = 0; axis < header->rank; axis++) {
        uint64_t dim = (uint64_t)header->shape[axis];
        if (dim != 0 && elements > UINT64_MAX / 16 / item / dim)
            return cm_fail(CM_ERR_TOO_LARGE, "%s: the array's shape is too large", name);
        elements *= dim;
    }
    header->elements = elements;
    header->data_bytes = elements * item;
    return CM_OK;
}

cm_status_t cm_npy_check_size(const cm_npy_header_t *header, uint64_t file_size, const char *name) {
    uint64_t want = (uint64_t)header->data_offset + header->data_bytes;
    if (file_size < want)
        return cm_fail(CM_ERR_FORMAT,
                       "%s: truncated: its header promises %llu bytes of data, the file holds %llu",
                       name, (unsigned long long)header->data_bytes,
                       (unsigned long long)(file_size > header->data_offset
                                                ? file_size - header->data_offset
                                                : 0));
    if (file_size > want)
        return cm_fail(CM_ERR_FORMAT,
                       "%s: %llu bytes of trailing data after the array its header describes", name,
                       (unsigned long long)(file_size - want));
    return CM_OK;
}

cm_status_t cm_npy_format_header(cm_npy_dtype_t dtype, int rank, const int64_t *shape, uint8_t *out,
                                 size_t size, size_t *length) {
    assert((unsigned)dtype < CM_NPY_DTYPE_COUNT && rank >= 0 && rank <= CM_NPY_MAX_RANK);
    char dict[512];
    int used = snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, 'shape': (",
                        dtypes[dtype].descr);
    for (int axis = 0; axis < rank; axis++)
        used += snprintf(dict + used, sizeof dict - (size_t)used, "%s%lld", axis ? ", " : "",
                         (long long)shape[axis]);
    used += snprintf(dict + used, sizeof dict - (size_t)used, "%s), }", rank == 1 ? "," : "");
    size_t total = 10 + (size_t)used + 1; /* prefix, dict, newline */
    size_t padded = (total + 63) / 64 * 64;
    if (padded > size || padded - 10 > 65535)
        return cm_fail(CM_ERR_TOO_LARGE, "a .npy header of %zu bytes does not fit", padded);
    static const uint8_t magic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};
    memcpy(out, magic, 6);
    out[6] = 1;
    out[7] = 0;
    out[8] = (uint8_t)((padded - 10) & 0xff);
    out[9] = (uint8_t)((padded - 10) >> 8);
    memcpy(out + 10, dict, (size_t)used);
    memset(out + 10 + used, ' ', padded - 10 - (size_t)used - 1);
    out[padded - 1] = '\n';
    *length = padded;
    return CM_OK;
}

/* ---- Mapped and wrapped arrays ---- */

struct cm_npy {
    char *path;
    cm_npy_header_t header;
    void *map;       /* mmap of the whole file, or NULL */
    size_t map_size; /* bytes mapped */
    void *owned;     /* cm_npy_wrap's buffer, or NULL */
    uint8_t *prefix; /* cm_npy_wrap's formatted header */
    const uint8_t *data;
};

static cm_npy_t *npy_alloc(const char *path) {
    cm_npy_t *npy = calloc(1, sizeof *npy);
    if (npy) npy->path = strdup(path);
    if (npy && !npy->path) {
        free(npy);
        npy = NULL;
    }
    return npy;
}

cm_status_t cm_npy_open(const char *path, cm_npy_t **out) {
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return cm_fail(errno == ENOENT ? CM_ERR_NOT_FOUND : CM_ERR_IO, "%s: cannot open: %s", path,
                       strerror(errno));
    struct stat info;
    cm_status_t status = CM_OK;
    cm_npy_t *npy = NULL;
    if (fstat(fd, &info) != 0 || !S_ISREG(info.st_mode)) {
        status = cm_fail(CM_ERR_IO, "%s: not a regular file", path);
        goto done;
    }
    if (!(npy = npy_alloc(path))) {
        status = cm_fail(CM_ERR_NOMEM, "%s: out of memory", path);
        goto done;
    }
    npy->map_size = (size_t)info.st_size;
    if (npy->map_size > 0) {
        npy->map = mmap(NULL, npy->map_size, PROT_READ, MAP_SHARED, fd, 0);
        if (npy->map == MAP_FAILED) {
            npy->map = NULL;
            status = cm_fail(CM_ERR_IO, "%s: cannot map: %s", path, strerror(errno));
            goto done;
        }
    }
    status = cm_npy_parse_header(npy->map ? npy->map : (const uint8_t *)"", npy->map_size, path,
                                 &npy->header);
    if (status == CM_OK) status = cm_npy_check_size(&npy->header, npy->map_size, path);
    if (status != CM_OK) goto done;
    npy->data = (const uint8_t *)npy->map + npy->header.data_offset;
    /* Rows are read in a random order (shuffled batches). */
    madvise(npy->map, npy->map_size, MADV_RANDOM);
done:
    close(fd);
    if (status != CM_OK)
        cm_npy_free(&npy);
    else
        *out = npy;
    return status;
}

cm_status_t cm_npy_wrap(const char *name, cm_npy_dtype_t dtype, int rank, const int64_t *shape,
                        void *data, cm_npy_t **out) {
    *out = NULL;
    cm_npy_t *npy = npy_alloc(name);
    if (!npy) {
        free(data);
        return cm_fail(CM_ERR_NOMEM, "%s: out of memory", name);
    }
    npy->owned = data;
    npy->data = data;
    npy->header.major = 1;
    npy->header.dtype = dtype;
    npy->header.rank = rank;
    uint64_t elements = 1;
    for (int axis = 0; axis < rank; axis++) {
        npy->header.shape[axis] = shape[axis];
        elements *= (uint64_t)shape[axis];
    }
    npy->header.elements = elements;
    npy->header.data_bytes = elements * dtypes[dtype].size;
    npy->prefix = malloc(512);
    cm_status_t status = npy->prefix ? cm_npy_format_header(dtype, rank, shape, npy->prefix, 512,
                                                            &npy->header.data_offset)
                                     : cm_fail(CM_ERR_NOMEM, "%s: out of memory", name);
    if (status != CM_OK) {
        cm_npy_free(&npy);
        return status;
    }
    *out = npy;
    return CM_OK;
}

void cm_npy_free(cm_npy_t **npy) {
    if (!npy || !*npy) return;
    if ((*npy)->map) munmap((*npy)->map, (*npy)->map_size);
    free((*npy)->owned);
    free((*npy)->prefix);
    free((*npy)->path);
    free(*npy);
    *npy = NULL;
}

const cm_npy_header_t *cm_npy_header(const cm_npy_t *npy) { return &npy->header; }
const uint8_t *cm_npy_data(const cm_npy_t *npy) { return npy->data; }
const char *cm_npy_path(const cm_npy_t *npy) { return npy->path; }

const uint8_t *cm_npy_prefix(const cm_npy_t *npy) {
    return npy->map ? (const uint8_t *)npy->map : npy->prefix;
}

size_t cm_npy_row_bytes(const cm_npy_t *npy) {
    size_t bytes = dtypes[npy->header.dtype].size;
    for (int axis = 1; axis < npy->header.rank; axis++) bytes *= (size_t)npy->header.shape[axis];
    return bytes;
}

cm_status_t cm_npy_write(const char *path, cm_npy_dtype_t dtype, int rank, const int64_t *shape,
                         const void *data) {
    uint8_t prefix[512];
    size_t prefix_length = 0;
    cm_status_t status =
        cm_npy_format_header(dtype, rank, shape, prefix, sizeof prefix, &prefix_length);
    if (status != CM_OK) return status;
    size_t bytes = dtypes[dtype].size;
    for (int axis = 0; axis < rank; axis++) bytes *= (size_t)shape[axis];
    cm_file_chunk_t chunks[2] = {{prefix, prefix_length}, {data, bytes}};
    return cm_file_write_atomic(path, chunks, 2);
}
