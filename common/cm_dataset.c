/*
 * cm_dataset: loading datasets.  See cm_dataset.h for the model (folders,
 * built-ins, views, the fingerprint, validation).
 *
 * Every dataset, built-in or folder, becomes the same thing: a parsed
 * manifest and a table of data files (cm_npy_t, mapped from disk or wrapped
 * around arrays in memory), each with its size and SHA-256.  After that one
 * path checks headers and counts, hashes and validates values (through the
 * cache for files on disk), reads labels, targets and ids, and plans the
 * view's gather.
 *
 * Fashion-MNIST comes as four gzip-compressed IDX files.  Each is read whole
 * into memory once and inflated from memory with zlib; its pixels become the
 * uint8 [N,28,28] array of view "full" and its labels an int64 [N] array,
 * exactly what `data export` writes.  Every file is read to the end and
 * checked (gzip CRC, trailing bytes, every label).
 */
#define ZLIB_CONST
#include "cm_dataset.h"
#include "cm_alloc.h"
#include "cm_file.h"
#include "cm_sha256.h"
#include "cm_wire.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

/* ---- Splits ---- */

static const char *const split_names[CM_SPLIT_COUNT] = {"train", "test", "valid", "transfer"};

const char *cm_split_name(cm_split_t split) {
    return (unsigned)split < CM_SPLIT_COUNT ? split_names[split] : "unknown";
}

cm_status_t cm_split_parse(const char *text, cm_split_t *split) {
    for (int candidate = 0; candidate < CM_SPLIT_COUNT; candidate++)
        if (text && strcmp(text, split_names[candidate]) == 0) {
            *split = (cm_split_t)candidate;
            return CM_OK;
        }
    return cm_fail(CM_ERR_INVALID_ARG,
                   "split \"%s\" is unknown; valid splits: train, test, valid, transfer",
                   text ? text : "(null)");
}

/* ---- Whole files and gzip streams in memory ---- */

/* Reads the file at `path` into a fresh buffer (*bytes, freed by the caller). */
static cm_status_t read_whole_file(const char *path, uint8_t **bytes, size_t *size) {
    *bytes = NULL;
    *size = 0;
    FILE *file = fopen(path, "rb");
    if (!file)
        return cm_fail(errno == ENOENT ? CM_ERR_NOT_FOUND : CM_ERR_IO, "%s: cannot open: %s", path,
                       strerror(errno));
    cm_status_t status = CM_OK;
    struct stat info;
    if (fstat(fileno(file), &info) != 0) {
        status = cm_fail(CM_ERR_IO, "%s: cannot stat: %s", path, strerror(errno));
        goto done;
    }
    if (!S_ISREG(info.st_mode)) {
        status = cm_fail(CM_ERR_IO, "%s: not a regular file", path);
        goto done;
    }
    size_t file_size = (size_t)info.st_size;
    *bytes = malloc(file_size > 0 ? file_size : 1);
    if (!*bytes) {
        status = cm_fail(CM_ERR_NOMEM, "%s: cannot allocate %zu bytes to read it", path, file_size);
        goto done;
    }
    size_t got = fread(*bytes, 1, file_size, file);
    if (got != file_size) {
        status = ferror(file) ? cm_fail(CM_ERR_IO, "%s: read error: %s", path, strerror(errno))
                              : cm_fail(CM_ERR_IO, "%s: short read: expected %zu bytes, got %zu",
                                        path, file_size, got);
        free(*bytes);
        *bytes = NULL;
        goto done;
    }
    *size = file_size;
done:
    fclose(file);
    return status;
}

/* A gzip stream inflated from a buffer in memory. */
typedef struct {
    const char *path;
    z_stream stream;
    bool initialized;
    bool ended;     /* the last gzip member ended cleanly (CRC and length checked) */
    bool truncated; /* the compressed bytes ran out in the middle of a member */
} gzip_reader_t;

static void gzip_reader_close(gzip_reader_t *reader) {
    if (reader->initialized) inflateEnd(&reader->stream);
    reader->initialized = false;
}

/* Starts inflating `bytes` (borrowed; must outlive the reader). */
static cm_status_t gzip_reader_open(gzip_reader_t *reader, const char *path, const uint8_t *bytes,
                                    size_t size) {
    memset(reader, 0, sizeof *reader);
    reader->path = path;
    if (size < 2 || bytes[0] != 0x1f || bytes[1] != 0x8b)
        return cm_fail(CM_ERR_FORMAT, "%s: not a gzip file (it does not start with 1f 8b)", path);
    if (size > UINT_MAX)
        return cm_fail(CM_ERR_TOO_LARGE, "%s: %zu bytes is more than zlib takes at once", path,
                       size);
    reader->stream.next_in = bytes;
    reader->stream.avail_in = (uInt)size;
    int rc = inflateInit2(&reader->stream, 16 + MAX_WBITS); /* 16: gzip wrapper only */
    if (rc != Z_OK)
        return cm_fail(rc == Z_MEM_ERROR ? CM_ERR_NOMEM : CM_ERR_INTERNAL,
                       "%s: cannot start inflating: zlib error %d", reader->path, rc);
    reader->initialized = true;
    return CM_OK;
}

/*
 * Inflates up to `size` bytes into `out`; *got says how many came.  Fewer than
 * `size` means the data ended (reader->ended) or the file was cut short
 * (reader->truncated); the caller words the error, since it knows what the
 * header promised.  Corrupt compressed data is an error here.
 */
static cm_status_t gzip_reader_read(gzip_reader_t *reader, uint8_t *out, size_t size, size_t *got) {
    *got = 0;
    while (*got < size && !reader->ended && !reader->truncated) {
        size_t want = size - *got < UINT_MAX ? size - *got : UINT_MAX;
        reader->stream.next_out = out + *got;
        reader->stream.avail_out = (uInt)want;
        int rc = inflate(&reader->stream, Z_NO_FLUSH);
        *got += want - reader->stream.avail_out;
        if (rc == Z_OK) continue;
        if (rc == Z_STREAM_END) {
            /* A gzip file may hold several members back to back (gzip's own rule). */
            const uint8_t *rest = reader->stream.next_in;
            if (reader->stream.avail_in >= 2 && rest[0] == 0x1f && rest[1] == 0x8b)
                inflateReset(&reader->stream);
            else
                reader->ended = true;
        } else if (rc == Z_BUF_ERROR) {
            reader->truncated = true; /* no progress possible: the input is used up */
        } else if (rc == Z_MEM_ERROR) {
            return cm_fail(CM_ERR_NOMEM, "%s: out of memory while inflating", reader->path);
        } else {
            return cm_fail(CM_ERR_FORMAT, "%s: corrupt gzip data (%s)", reader->path,
                           reader->stream.msg ? reader->stream.msg : "zlib error");
        }
    }
    return CM_OK;
}

/* Checks that the stream ends right here: no more data, a complete trailer, no garbage. */
static cm_status_t gzip_reader_finish(gzip_reader_t *reader, uint32_t promised_count,
                                      const char *kind) {
    uint8_t extra;
    size_t got;
    cm_status_t status = gzip_reader_read(reader, &extra, 1, &got);
    if (status != CM_OK) return status;
    if (got > 0)
        return cm_fail(CM_ERR_FORMAT, "%s: holds more data than the %u %s its header promises",
                       reader->path, promised_count, kind);
    if (reader->truncated)
        return cm_fail(CM_ERR_FORMAT, "%s: truncated: the gzip stream ends before its trailer",
                       reader->path);
    if (reader->stream.avail_in > 0)
        return cm_fail(CM_ERR_FORMAT, "%s: %u bytes of trailing garbage after the gzip data",
                       reader->path, reader->stream.avail_in);
    return CM_OK;
}

/* ---- IDX headers ---- */

enum {
    IDX_LABELS_MAGIC = 0x00000801, /* unsigned bytes, one dimension */
    IDX_IMAGES_MAGIC = 0x00000803, /* unsigned bytes, three dimensions */
    IDX_LABELS_HEADER_BYTES = 8,
    IDX_IMAGES_HEADER_BYTES = 16,
    /* zlib's documented bound on inflated size over deflated size. */
    DEFLATE_MAX_RATIO = 1032,
};

static uint32_t load_big_endian(const uint8_t *bytes) {
    return (uint32_t)bytes[0] << 24 | (uint32_t)bytes[1] << 16 | (uint32_t)bytes[2] << 8 |
           (uint32_t)bytes[3];
}

/*
 * Reads an IDX header of `header_bytes` bytes and checks its magic number.
 * Then checks that the body the header promises (`item_bytes` per item,
 * item count in the header's first dimension) could fit in the compressed
 * file at all, so a corrupt count fails before a huge allocation.
 */
static cm_status_t read_idx_header(gzip_reader_t *reader, uint8_t *header, size_t header_bytes,
                                   uint32_t magic, const char *kind, size_t compressed_size,
                                   size_t item_bytes) {
    size_t got;
    cm_status_t status = gzip_reader_read(reader, header, header_bytes, &got);
    if (status != CM_OK) return status;
    if (got < header_bytes)
        return cm_fail(CM_ERR_FORMAT,
                       "%s: truncated: the IDX header needs %zu bytes, file holds %zu",
                       reader->path, header_bytes, got);
    uint32_t found = load_big_endian(header);
    if (found != magic)
        return cm_fail(CM_ERR_FORMAT,
                       "%s: bad magic number 0x%08x (an IDX %s file starts with 0x%08x)",
                       reader->path, found, kind, magic);
    uint64_t count = load_big_endian(header + 4);
    uint64_t most_items = (uint64_t)compressed_size * DEFLATE_MAX_RATIO / item_bytes;
    if (count > most_items)
        return cm_fail(CM_ERR_FORMAT,
                       "%s: truncated: header promises %llu %s, a %zu-byte gzip file holds at "
                       "most %llu",
                       reader->path, (unsigned long long)count, kind, compressed_size,
                       (unsigned long long)most_items);
    return CM_OK;
}

/* ---- Fashion-MNIST ---- */

#define FASHION_MNIST_DEFAULT_DIRECTORY "/usr/share/datasets/fashion-mnist"
#define FASHION_MNIST_VIEWS             "full,pool14,pool7"

enum {
    FASHION_MNIST_CLASSES = 10,
    FASHION_MNIST_SIDE = 28,
    FASHION_MNIST_PIXELS = FASHION_MNIST_SIDE * FASHION_MNIST_SIDE,
};

/*
 * The manifest the built-in has and its export writes.  The pixel mean and
 * standard deviation are the training set's, pixels scaled to [0, 1].
 */
static const char fashion_manifest[] =
    "{\"format\": \"committee-dataset/1\", \"name\": \"fashion-mnist\",\n"
    " \"task\": {\"type\": \"classification\", \"classes\": 10, \"class_names\": [\"T-shirt/top\", "
    "\"Trouser\", \"Pullover\", \"Dress\", \"Coat\", \"Sandal\", \"Shirt\", \"Sneaker\", \"Bag\", "
    "\"Ankle boot\"]},\n"
    " \"splits\": [\"train\", \"test\"],\n"
    " \"views\": {\"full\": {\"kind\": \"dense\", \"normalize\": {\"divide\": 255, \"mean\": "
    "[0.286], \"std\": [0.353]}},\n"
    "           \"pool14\": {\"from\": \"full\", \"transform\": \"avgpool:2\"},\n"
    "           \"pool7\": {\"from\": \"full\", \"transform\": \"avgpool:4\"}}}\n";

/* The source files of each split (images, then labels). */
static const char *const fashion_image_files[2] = {"train-images-idx3-ubyte.gz",
                                                   "t10k-images-idx3-ubyte.gz"};
static const char *const fashion_label_files[2] = {"train-labels-idx1-ubyte.gz",
                                                   "t10k-labels-idx1-ubyte.gz"};

static cm_status_t fashion_path(char *path, size_t size, const char *directory, const char *file) {
    int length = snprintf(path, size, "%s/%s", directory, file);
    if (length < 0 || (size_t)length >= size)
        return cm_fail(CM_ERR_INVALID_ARG, "data directory \"%s\" is too long for a path",
                       directory);
    return CM_OK;
}

/* Reads the labels body into labels[count] (int64), checking each. */
static cm_status_t fashion_read_labels(gzip_reader_t *reader, uint32_t count, int64_t *labels) {
    uint8_t chunk[4096];
    for (uint32_t index = 0; index < count;) {
        size_t want = count - index < sizeof chunk ? count - index : sizeof chunk, got;
        cm_status_t status = gzip_reader_read(reader, chunk, want, &got);
        if (status != CM_OK) return status;
        for (size_t i = 0; i < got; i++, index++) {
            if (chunk[i] >= FASHION_MNIST_CLASSES)
                return cm_fail(CM_ERR_OUT_OF_RANGE, "%s: label %u of example %u is outside [0, %d)",
                               reader->path, chunk[i], index, FASHION_MNIST_CLASSES);
            labels[index] = chunk[i];
        }
        if (got < want)
            return cm_fail(CM_ERR_FORMAT, "%s: truncated: header promises %u labels, file holds %u",
                           reader->path, count, index);
    }
    return gzip_reader_finish(reader, count, "labels");
}

/* Reads the images body into pixels[count][28][28]. */
static cm_status_t fashion_read_images(gzip_reader_t *reader, uint32_t count, uint8_t *pixels) {
    size_t want = (size_t)count * FASHION_MNIST_PIXELS, got;
    cm_status_t status = gzip_reader_read(reader, pixels, want, &got);
    if (status != CM_OK) return status;
    if (got < want)
        return cm_fail(CM_ERR_FORMAT, "%s: truncated: header promises %u images, file holds %zu",
                       reader->path, count, got / FASHION_MNIST_PIXELS);
    return gzip_reader_finish(reader, count, "images");
}

cm_status_t cm_dataset_parse_fashion(const char *images_path, const uint8_t *images_raw,
                                     size_t images_size, const char *labels_path,
                                     const uint8_t *labels_raw, size_t labels_size,
                                     const char *split_name, cm_npy_t **pixels_out,
                                     cm_npy_t **labels_out) {
    *pixels_out = NULL;
    *labels_out = NULL;
    uint8_t *pixels = NULL;
    int64_t *labels = NULL;
    gzip_reader_t images = {0}, label_reader = {0};
    uint8_t images_header[IDX_IMAGES_HEADER_BYTES], labels_header[IDX_LABELS_HEADER_BYTES];

    cm_status_t status = gzip_reader_open(&label_reader, labels_path, labels_raw, labels_size);
    if (status == CM_OK)
        status = read_idx_header(&label_reader, labels_header, sizeof labels_header,
                                 IDX_LABELS_MAGIC, "labels", labels_size, 1);
    if (status == CM_OK) status = gzip_reader_open(&images, images_path, images_raw, images_size);
    if (status == CM_OK)
        status = read_idx_header(&images, images_header, sizeof images_header, IDX_IMAGES_MAGIC,
                                 "images", images_size, FASHION_MNIST_PIXELS);
    if (status != CM_OK) goto done;

    uint32_t image_count = load_big_endian(images_header + 4);
    uint32_t rows = load_big_endian(images_header + 8), cols = load_big_endian(images_header + 12);
    uint32_t label_count = load_big_endian(labels_header + 4);
    if (rows != FASHION_MNIST_SIDE || cols != FASHION_MNIST_SIDE) {
        status = cm_fail(CM_ERR_SHAPE, "%s: images are %ux%u, Fashion-MNIST images are %dx%d",
                         images_path, rows, cols, FASHION_MNIST_SIDE, FASHION_MNIST_SIDE);
        goto done;
    }
    if (image_count != label_count) {
        status = cm_fail(CM_ERR_MISMATCH, "%s holds %u images but %s holds %u labels", images_path,
                         image_count, labels_path, label_count);
        goto done;
    }
    if (image_count == 0 || image_count > INT_MAX) {
        status = cm_fail(image_count == 0 ? CM_ERR_FORMAT : CM_ERR_TOO_LARGE,
                         "%s: header promises %u images; a split needs 1 to %d", images_path,
                         image_count, INT_MAX);
        goto done;
    }
    labels = malloc(sizeof(int64_t) * label_count);
    pixels = malloc((size_t)image_count * FASHION_MNIST_PIXELS);
    if (!labels || !pixels) {
        status = cm_fail(CM_ERR_NOMEM, "%s: cannot allocate %u images", images_path, image_count);
        goto done;
    }
    status = fashion_read_labels(&label_reader, label_count, labels);
    if (status == CM_OK) status = fashion_read_images(&images, image_count, pixels);
    if (status != CM_OK) goto done;
    char name[64];
    int64_t pixel_shape[3] = {image_count, FASHION_MNIST_SIDE, FASHION_MNIST_SIDE};
    int64_t label_shape[1] = {label_count};
    snprintf(name, sizeof name, "fashion-mnist %s/full.npy", split_name);
    status = cm_npy_wrap(name, CM_NPY_U8, 3, pixel_shape, pixels, pixels_out);
    pixels = NULL;
    if (status != CM_OK) goto done;
    snprintf(name, sizeof name, "fashion-mnist %s/labels.npy", split_name);
    status = cm_npy_wrap(name, CM_NPY_I64, 1, label_shape, labels, labels_out);
    labels = NULL;
    if (status != CM_OK) cm_npy_free(pixels_out);
done:
    gzip_reader_close(&images);
    gzip_reader_close(&label_reader);
    free(pixels);
    free(labels);
    return status;
}

/*
 * Reads one split's two files into a uint8 [N,28,28] pixel array and an
 * int64 [N] label array (wrapped as cm_npy_t in *pixels_out, *labels_out).
 */
static cm_status_t fashion_load_split(const char *directory, int which, cm_npy_t **pixels_out,
                                      cm_npy_t **labels_out) {
    char images_path[PATH_MAX], labels_path[PATH_MAX];
    uint8_t *images_raw = NULL, *labels_raw = NULL;
    size_t images_size = 0, labels_size = 0;
    cm_status_t status =
        fashion_path(images_path, sizeof images_path, directory, fashion_image_files[which]);
    if (status == CM_OK)
        status =
            fashion_path(labels_path, sizeof labels_path, directory, fashion_label_files[which]);
    if (status == CM_OK) status = read_whole_file(images_path, &images_raw, &images_size);
    if (status == CM_OK) status = read_whole_file(labels_path, &labels_raw, &labels_size);
    if (status == CM_OK)
        status =
            cm_dataset_parse_fashion(images_path, images_raw, images_size, labels_path, labels_raw,
                                     labels_size, split_names[which], pixels_out, labels_out);
    free(images_raw);
    free(labels_raw);
    return status;
}

/* ---- The data files of a dataset ---- */

typedef enum { FILE_LABELS, FILE_IDS, FILE_VIEW } file_role_t;

typedef struct {
    cm_split_t split;
    file_role_t role;
    const cm_manifest_view_t *view;           /* FILE_VIEW */
    char relative[CM_MANIFEST_NAME_MAX + 16]; /* "train/full.npy" */
    char path[PATH_MAX];                      /* on disk; "" for an array in memory */
    cm_npy_t *npy;
    uint64_t size; /* bytes of the file (or of its export) */
    int64_t mtime_ns;
    char sha256[65];
} data_file_t;

typedef struct {
    data_file_t *files;
    int count, capacity;
} file_table_t;

static data_file_t *add_file(file_table_t *table) {
    if (table->count == table->capacity) {
        int capacity = table->capacity ? table->capacity * 2 : 16;
        data_file_t *grown = realloc(table->files, sizeof *grown * (size_t)capacity);
        if (!grown) return NULL;
        table->files = grown;
        table->capacity = capacity;
    }
    data_file_t *file = &table->files[table->count++];
    memset(file, 0, sizeof *file);
    return file;
}

static void free_files(data_file_t *files, int count) {
    for (int index = 0; index < count; index++) cm_npy_free(&files[index].npy);
    free(files);
}

/* ---- The per-file hash cache ---- */

int cm_dataset_cache_dir(char *out, size_t size) {
    const char *explicit_dir = getenv("COMMITTEE_CACHE_DIR");
    const char *xdg = getenv("XDG_CACHE_HOME");
    const char *home = getenv("HOME");
    int length;
    if (explicit_dir && explicit_dir[0])
        length = snprintf(out, size, "%s", explicit_dir);
    else if (xdg && xdg[0])
        length = snprintf(out, size, "%s/committee", xdg);
    else if (home && home[0])
        length = snprintf(out, size, "%s/.cache/committee", home);
    else
        return 0;
    return length > 0 && (size_t)length < size;
}

/* The cache entry's path for a data file, or 0 without a cache. */
static int cache_entry_path(const char *path, char *out, size_t size) {
    char directory[PATH_MAX];
    if (!cm_dataset_cache_dir(directory, sizeof directory)) return 0;
    cm_sha256_t hash;
    uint8_t digest[32];
    char hex[65];
    cm_sha256_init(&hash);
    cm_sha256_update(&hash, path, strlen(path));
    cm_sha256_final(&hash, digest);
    cm_sha256_hex(digest, hex);
    int length = snprintf(out, size, "%s/files/%s", directory, hex);
    return length > 0 && (size_t)length < size;
}

#define CACHE_MAGIC "committee-file-cache/1"

/*
 * Reads the entry of `file` (matching path, size and mtime): its hash into
 * file->sha256 and the checks it passed into checks[size] (one per line).
 * 0 when there is no usable entry.
 */
static int cache_read(data_file_t *file, char *checks, size_t checks_size) {
    char entry_path[PATH_MAX + 80];
    checks[0] = '\0';
    if (!cache_entry_path(file->path, entry_path, sizeof entry_path)) return 0;
    void *data = NULL;
    size_t size = 0;
    if (cm_file_read_all(entry_path, &data, &size) != CM_OK) {
        cm_clear_error();
        return 0;
    }
    char *text = realloc(data, size + 1);
    if (!text) {
        free(data);
        return 0;
    }
    text[size] = '\0';
    int ok = 0;
    unsigned long long stored_size = 0;
    long long stored_mtime = 0;
    char stored_hash[65] = "";
    int consumed = 0;
    if (sscanf(text, CACHE_MAGIC "\nsize %llu\nmtime_ns %lld\nsha256 %64[0-9a-f]\n%n", &stored_size,
               &stored_mtime, stored_hash, &consumed) == 3 &&
        consumed > 0 && strlen(stored_hash) == 64 && stored_size == file->size &&
        stored_mtime == file->mtime_ns) {
        const char *rest = text + consumed;
        size_t path_length = strlen(file->path);
        if (strncmp(rest, "path ", 5) == 0 && strncmp(rest + 5, file->path, path_length) == 0 &&
            rest[5 + path_length] == '\n') {
            rest += 5 + path_length + 1;
            memcpy(file->sha256, stored_hash, 65);
            snprintf(checks, checks_size, "%s", rest);
            ok = 1;
        }
    }
    free(text);
    return ok;
}

/* Creates `path` and its parents (mode 0700 for what it creates); 0 on failure. */
static int make_directories(char *path) {
    for (char *slash = path + 1; *slash; slash++) {
        if (*slash != '/') continue;
        *slash = '\0';
        int ok = mkdir(path, 0700) == 0 || errno == EEXIST;
        *slash = '/';
        if (!ok) return 0;
    }
    return mkdir(path, 0700) == 0 || errno == EEXIST;
}

/* Writes the entry of `file` with `checks`; any failure is ignored (the cache is optional). */
static void cache_write(const data_file_t *file, const char *checks) {
    char entry_path[PATH_MAX + 80];
    if (!cache_entry_path(file->path, entry_path, sizeof entry_path)) return;
    char *slash = strrchr(entry_path, '/');
    *slash = '\0';
    int made = make_directories(entry_path);
    *slash = '/';
    if (!made) return;
    size_t length = strlen(file->path) + strlen(checks) + 256;
    char *text = malloc(length);
    if (!text) return;
    int used =
        snprintf(text, length, CACHE_MAGIC "\nsize %llu\nmtime_ns %lld\nsha256 %s\npath %s\n%s",
                 (unsigned long long)file->size, (long long)file->mtime_ns, file->sha256,
                 file->path, checks);
    cm_file_chunk_t chunk = {text, (size_t)used};
    if (cm_file_write_atomic(entry_path, &chunk, 1) != CM_OK) cm_clear_error();
    free(text);
}

static int has_check(const char *checks, const char *check) {
    size_t length = strlen(check);
    for (const char *line = checks; line && *line;) {
        const char *end = strchr(line, '\n');
        size_t line_length = end ? (size_t)(end - line) : strlen(line);
        if (line_length == length && strncmp(line, check, length) == 0) return 1;
        line = end ? end + 1 : NULL;
    }
    return 0;
}

/* ---- Values ---- */

/* Element `index` of an integer or float array, as a double. */
static double element_value(cm_npy_dtype_t dtype, const uint8_t *data, uint64_t index) {
    const uint8_t *at = data + index * cm_npy_dtype_size(dtype);
    switch (dtype) {
    case CM_NPY_BOOL:
    case CM_NPY_U8:
        return *at;
    case CM_NPY_I8:
        return (int8_t)*at;
    case CM_NPY_U16: {
        uint16_t v;
        memcpy(&v, at, 2);
        return v;
    }
    case CM_NPY_I16: {
        int16_t v;
        memcpy(&v, at, 2);
        return v;
    }
    case CM_NPY_U32: {
        uint32_t v;
        memcpy(&v, at, 4);
        return v;
    }
    case CM_NPY_I32: {
        int32_t v;
        memcpy(&v, at, 4);
        return v;
    }
    case CM_NPY_U64: {
        uint64_t v;
        memcpy(&v, at, 8);
        return (double)v;
    }
    case CM_NPY_I64: {
        int64_t v;
        memcpy(&v, at, 8);
        return (double)v;
    }
    case CM_NPY_F16: {
        float v;
        cm_wire_f16_to_f32(&v, at, 1);
        return v;
    }
    case CM_NPY_F32: {
        float v;
        memcpy(&v, at, 4);
        return v;
    }
    case CM_NPY_F64: {
        double v;
        memcpy(&v, at, 8);
        return v;
    }
    default:
        return 0.0;
    }
}

/* Element `index` of an integer array exactly. */
static int64_t element_integer(cm_npy_dtype_t dtype, const uint8_t *data, uint64_t index) {
    const uint8_t *at = data + index * cm_npy_dtype_size(dtype);
    if (dtype == CM_NPY_I64) {
        int64_t v;
        memcpy(&v, at, 8);
        return v;
    }
    if (dtype == CM_NPY_U64) {
        uint64_t v;
        memcpy(&v, at, 8);
        return v > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)v;
    }
    return (int64_t)element_value(dtype, data, index);
}

static int is_integer_dtype(cm_npy_dtype_t dtype) {
    return dtype != CM_NPY_F16 && dtype != CM_NPY_F32 && dtype != CM_NPY_F64 &&
           dtype != CM_NPY_BOOL;
}

/* The check a view file's values must pass, as the cache records it. */
static void value_check_name(const cm_manifest_view_t *view, char *out, size_t size) {
    if (view->kind == CM_VIEW_DENSE) {
        snprintf(out, size, "values dense finite");
    } else if (view->kind == CM_VIEW_TOKENS) {
        snprintf(out, size, "values tokens below %lld", (long long)view->vocab);
    } else {
        int used = snprintf(out, size, "values categorical below");
        for (int column = 0; column < view->columns && used > 0 && (size_t)used < size; column++)
            used += snprintf(out + used, size - (size_t)used, " %lld",
                             (long long)view->cardinality[column]);
    }
}

/*
 * Checks elements [first, first + count) of a view file (data points at
 * element `first`).  The row and column of the first bad value go into the
 * sentence.
 */
static cm_status_t check_values(const data_file_t *file, const uint8_t *data, uint64_t first,
                                uint64_t count) {
    const cm_npy_header_t *header = cm_npy_header(file->npy);
    const cm_manifest_view_t *view = file->view;
    uint64_t per_row = header->shape[0] ? header->elements / (uint64_t)header->shape[0] : 1;
    if (per_row == 0) per_row = 1;
    const char *name = file->path[0] ? file->path : cm_npy_path(file->npy);
    for (uint64_t i = 0; i < count; i++) {
        uint64_t element = first + i;
        if (view->kind == CM_VIEW_DENSE) {
            if (header->dtype == CM_NPY_U8) return CM_OK;
            double value = element_value(header->dtype, data, i);
            if (!isfinite(value))
                return cm_fail(CM_ERR_OUT_OF_RANGE,
                               "%s: row %llu holds %s at element %llu; a dense view must be finite",
                               name, (unsigned long long)(element / per_row),
                               isnan(value) ? "NaN" : "Inf",
                               (unsigned long long)(element % per_row));
        } else if (view->kind == CM_VIEW_TOKENS) {
            int64_t token = element_integer(header->dtype, data, i);
            if (token < 0 || token >= view->vocab)
                return cm_fail(CM_ERR_OUT_OF_RANGE,
                               "%s: row %llu holds token %lld at position %llu, outside the "
                               "vocabulary [0, %lld)",
                               name, (unsigned long long)(element / per_row), (long long)token,
                               (unsigned long long)(element % per_row), (long long)view->vocab);
        } else {
            int column = (int)(element % per_row);
            int64_t category = element_integer(header->dtype, data, i);
            if (category < 0 || category >= view->cardinality[column])
                return cm_fail(CM_ERR_OUT_OF_RANGE,
                               "%s: row %llu holds category %lld in column %d, outside its "
                               "cardinality [0, %lld)",
                               name, (unsigned long long)(element / per_row), (long long)category,
                               column, (long long)view->cardinality[column]);
        }
    }
    return CM_OK;
}

enum { HASH_CHUNK_BYTES = 1 << 20 };

/*
 * Hashes a file (and, with `validate`, checks its values in the same pass).
 * On disk it is read with pread in 1 MB chunks, not through the mapping, so
 * a first start does not make the process hold the file's pages.
 */
static cm_status_t hash_and_check(data_file_t *file, int validate) {
    const cm_npy_header_t *header = cm_npy_header(file->npy);
    size_t item = cm_npy_dtype_size(header->dtype);
    cm_sha256_t hash;
    cm_sha256_init(&hash);
    cm_sha256_update(&hash, cm_npy_prefix(file->npy), header->data_offset);
    cm_status_t status = CM_OK;
    if (!file->path[0]) { /* in memory */
        const uint8_t *data = cm_npy_data(file->npy);
        cm_sha256_update(&hash, data, header->data_bytes);
        if (validate) status = check_values(file, data, 0, header->elements);
    } else {
        int fd = open(file->path, O_RDONLY | O_CLOEXEC);
        uint8_t *chunk = malloc(HASH_CHUNK_BYTES);
        if (fd < 0 || !chunk) {
            status = cm_fail(fd < 0 ? CM_ERR_IO : CM_ERR_NOMEM, "%s: cannot read: %s", file->path,
                             fd < 0 ? strerror(errno) : "out of memory");
        } else {
            uint64_t done = 0;
            while (done < header->data_bytes && status == CM_OK) {
                uint64_t want = header->data_bytes - done, got = 0;
                if (want > HASH_CHUNK_BYTES) want = HASH_CHUNK_BYTES;
                while (got < want) { /* a chunk is whole elements: fill it completely */
                    ssize_t read_now = pread(fd, chunk + got, (size_t)(want - got),
                                             (off_t)(header->data_offset + done + got));
                    if (read_now < 0 && errno == EINTR) continue;
                    if (read_now <= 0) break;
                    got += (uint64_t)read_now;
                }
                if (got < want) {
                    status = cm_fail(CM_ERR_IO, "%s: read failed or the file shrank while hashing",
                                     file->path);
                    break;
                }
                cm_sha256_update(&hash, chunk, (size_t)got);
                if (validate) status = check_values(file, chunk, done / item, got / item);
                done += got;
            }
        }
        if (fd >= 0) close(fd);
        free(chunk);
    }
    if (status != CM_OK) return status;
    uint8_t digest[32];
    cm_sha256_final(&hash, digest);
    cm_sha256_hex(digest, file->sha256);
    return CM_OK;
}

/* Hashes (or finds in the cache) and, when `validate`, checks the values of one file. */
static cm_status_t file_digest(data_file_t *file, int validate, int force) {
    char check[512] = "";
    if (validate && file->role == FILE_VIEW) value_check_name(file->view, check, sizeof check);
    validate = validate && file->role == FILE_VIEW;
    if (!file->path[0]) return hash_and_check(file, validate);
    char checks[4096];
    int cached = !force && cache_read(file, checks, sizeof checks);
    if (cached && (!validate || has_check(checks, check))) return CM_OK;
    cm_status_t status = hash_and_check(file, validate);
    if (status != CM_OK) return status;
    if (!cached) checks[0] = '\0';
    if (validate && !has_check(checks, check) && strlen(checks) + strlen(check) + 2 < sizeof checks)
        strcat(strcat(checks, check), "\n");
    cache_write(file, checks);
    return CM_OK;
}

/* ---- Headers against the manifest ---- */

static const char *file_name(const data_file_t *file) {
    return file->path[0] ? file->path : cm_npy_path(file->npy);
}

/* Checks one file's dtype and shape against what the manifest declares. */
static cm_status_t check_header(const cm_manifest_t *manifest, const data_file_t *file) {
    const cm_npy_header_t *header = cm_npy_header(file->npy);
    const char *name = file_name(file), *dtype = cm_npy_dtype_name(header->dtype);
    if (header->rank < 1)
        return cm_fail(CM_ERR_SHAPE, "%s: holds a scalar; a data file has one row per example",
                       name);
    if (header->shape[0] > INT_MAX)
        return cm_fail(CM_ERR_TOO_LARGE, "%s: %lld rows is more than %d", name,
                       (long long)header->shape[0], INT_MAX);
    if (file->role == FILE_LABELS && manifest->task == CM_TASK_CLASSIFICATION) {
        if (!is_integer_dtype(header->dtype))
            return cm_fail(CM_ERR_FORMAT,
                           "%s: dtype %s; classification labels are integers (int64, int32 or "
                           "uint8)",
                           name, dtype);
        if (header->rank != 1)
            return cm_fail(CM_ERR_SHAPE, "%s: has %d dimensions; classification labels are [N]",
                           name, header->rank);
    } else if (file->role == FILE_LABELS) {
        if (header->dtype != CM_NPY_F32)
            return cm_fail(CM_ERR_FORMAT, "%s: dtype %s; regression targets are float32", name,
                           dtype);
        int64_t k = header->rank == 1 ? 1 : header->shape[1];
        if (header->rank > 2 || k != manifest->targets)
            return cm_fail(CM_ERR_SHAPE,
                           "%s: shape does not match the task's %d target%s ([N] or [N,%d])", name,
                           manifest->targets, manifest->targets == 1 ? "" : "s", manifest->targets);
    } else if (file->role == FILE_IDS) {
        if (header->dtype != CM_NPY_I32 && header->dtype != CM_NPY_I64)
            return cm_fail(CM_ERR_FORMAT, "%s: dtype %s; ids are int32 or int64", name, dtype);
        if (header->rank != 1)
            return cm_fail(CM_ERR_SHAPE, "%s: has %d dimensions; ids are [N]", name, header->rank);
    } else {
        const cm_manifest_view_t *view = file->view;
        if (view->kind == CM_VIEW_DENSE) {
            if (header->dtype != CM_NPY_F32 && header->dtype != CM_NPY_F16 &&
                header->dtype != CM_NPY_U8)
                return cm_fail(CM_ERR_FORMAT,
                               "%s: dtype %s; a dense view is float32, float16 or uint8", name,
                               dtype);
            uint64_t features =
                header->elements / (header->shape[0] ? (uint64_t)header->shape[0] : 1);
            if (header->shape[0] == 0) {
                features = 1;
                for (int axis = 1; axis < header->rank; axis++)
                    features *= (uint64_t)header->shape[axis];
            }
            if (features == 0 || features > (1u << 26))
                return cm_fail(CM_ERR_SHAPE, "%s: %llu features per example is not usable", name,
                               (unsigned long long)features);
            if (view->normalize_count > 1 && (uint64_t)view->normalize_count != features &&
                (header->rank < 2 || header->shape[1] != view->normalize_count))
                return cm_fail(CM_ERR_SHAPE,
                               "%s: view \"%s\" normalizes with %d means, but its examples have "
                               "%llu features (give 1, one per first axis, or one per feature)",
                               name, view->name, view->normalize_count,
                               (unsigned long long)features);
        } else if (view->kind == CM_VIEW_CATEGORICAL) {
            if (header->dtype != CM_NPY_I32 && header->dtype != CM_NPY_I64)
                return cm_fail(CM_ERR_FORMAT, "%s: dtype %s; a categorical view is int32 or int64",
                               name, dtype);
            int64_t columns = header->rank == 1 ? 1 : header->shape[1];
            if (header->rank > 2 || columns != view->columns)
                return cm_fail(CM_ERR_SHAPE,
                               "%s: shape does not match view \"%s\": %d columns ([N,%d]) declared",
                               name, view->name, view->columns, view->columns);
        } else {
            if (header->dtype != CM_NPY_I32)
                return cm_fail(CM_ERR_FORMAT, "%s: dtype %s; a tokens view is int32", name, dtype);
            if (header->rank != 2 || header->shape[1] < 1)
                return cm_fail(CM_ERR_SHAPE, "%s: a tokens view is [N,L] (L tokens per example)",
                               name);
        }
    }
    return CM_OK;
}

/* ---- Building the file table ---- */

static cm_status_t open_folder_file(file_table_t *table, const char *root, cm_split_t split,
                                    file_role_t role, const cm_manifest_view_t *view,
                                    const char *file, int optional) {
    data_file_t *entry = add_file(table);
    if (!entry) return cm_fail(CM_ERR_NOMEM, "out of memory for the file table");
    entry->split = split;
    entry->role = role;
    entry->view = view;
    snprintf(entry->relative, sizeof entry->relative, "%s/%s", split_names[split], file);
    int length = snprintf(entry->path, sizeof entry->path, "%s/%s", root, entry->relative);
    if (length < 0 || (size_t)length >= sizeof entry->path)
        return cm_fail(CM_ERR_INVALID_ARG, "%s: the path is too long", root);
    struct stat info;
    if (stat(entry->path, &info) != 0) {
        if (optional && errno == ENOENT) {
            table->count--;
            return CM_OK;
        }
        return cm_fail(errno == ENOENT ? CM_ERR_NOT_FOUND : CM_ERR_IO, "%s: cannot open: %s",
                       entry->path, strerror(errno));
    }
    entry->size = (uint64_t)info.st_size;
    entry->mtime_ns = (int64_t)info.st_mtim.tv_sec * 1000000000 + info.st_mtim.tv_nsec;
    return cm_npy_open(entry->path, &entry->npy);
}

/* Every file of a folder in fingerprint order (see cm_dataset.h). */
static cm_status_t open_folder(const char *root, const cm_manifest_t *manifest,
                               file_table_t *table) {
    cm_status_t status = CM_OK;
    for (int split = 0; split < CM_SPLIT_COUNT && status == CM_OK; split++) {
        if (!manifest->has_split[split]) continue;
        status = open_folder_file(table, root, (cm_split_t)split, FILE_LABELS, NULL, "labels.npy",
                                  split == CM_SPLIT_TRANSFER);
        if (status == CM_OK)
            status = open_folder_file(table, root, (cm_split_t)split, FILE_IDS, NULL, "ids.npy", 1);
        for (int index = 0; index < manifest->view_count && status == CM_OK; index++) {
            const cm_manifest_view_t *view = &manifest->views[index];
            if (view->from[0]) continue;
            char file[CM_MANIFEST_NAME_MAX + 8];
            snprintf(file, sizeof file, "%s.npy", view->name);
            status = open_folder_file(table, root, (cm_split_t)split, FILE_VIEW, view, file, 0);
        }
    }
    return status;
}

static cm_status_t read_manifest(const char *root, cm_manifest_t **manifest) {
    char path[PATH_MAX];
    int length = snprintf(path, sizeof path, "%s/dataset.json", root);
    if (length < 0 || (size_t)length >= sizeof path)
        return cm_fail(CM_ERR_INVALID_ARG, "%s: the path is too long", root);
    struct stat info;
    if (stat(root, &info) != 0 || !S_ISDIR(info.st_mode))
        return cm_fail(CM_ERR_NOT_FOUND,
                       "dataset \"%s\" is neither a built-in dataset (fashion-mnist) nor a "
                       "folder; give a dataset folder with --data",
                       root);
    void *text = NULL;
    size_t size = 0;
    cm_status_t status = cm_file_read_all(path, &text, &size);
    if (status == CM_ERR_NOT_FOUND)
        return cm_fail(CM_ERR_NOT_FOUND, "%s: missing: a dataset folder needs its manifest", path);
    if (status != CM_OK) return status;
    status = cm_manifest_parse(text, size, path, manifest);
    free(text);
    return status;
}

/* The built-in Fashion-MNIST as the same table a folder gives. */
static cm_status_t open_fashion(const cm_dataset_options_t *options, cm_manifest_t **manifest,
                                file_table_t *table) {
    const char *environment = getenv("COMMITTEE_DATA_DIR"), *directory;
    if (options->directory && options->directory[0])
        directory = options->directory;
    else if (environment && environment[0])
        directory = environment;
    else
        directory = FASHION_MNIST_DEFAULT_DIRECTORY;
    cm_status_t status =
        cm_manifest_parse(fashion_manifest, strlen(fashion_manifest), "fashion-mnist", manifest);
    for (int split = 0; split < 2 && status == CM_OK; split++) {
        data_file_t *labels = add_file(table);
        data_file_t *pixels = labels ? add_file(table) : NULL;
        if (!pixels) return cm_fail(CM_ERR_NOMEM, "out of memory for the file table");
        labels = &table->files[table->count - 2]; /* add_file may have moved the table */
        *labels = (data_file_t){.split = (cm_split_t)split, .role = FILE_LABELS};
        *pixels = (data_file_t){.split = (cm_split_t)split,
                                .role = FILE_VIEW,
                                .view = cm_manifest_view(*manifest, "full")};
        snprintf(labels->relative, sizeof labels->relative, "%s/labels.npy", split_names[split]);
        snprintf(pixels->relative, sizeof pixels->relative, "%s/full.npy", split_names[split]);
        status = fashion_load_split(directory, split, &pixels->npy, &labels->npy);
        for (int index = 0; index < 2 && status == CM_OK; index++) {
            data_file_t *file = index ? pixels : labels;
            file->size =
                cm_npy_header(file->npy)->data_offset + cm_npy_header(file->npy)->data_bytes;
        }
    }
    return status;
}

/* ---- Labels, targets, ids ---- */

static cm_status_t read_labels(cm_dataset_t *dataset, cm_split_data_t *split,
                               const data_file_t *file) {
    const cm_npy_header_t *header = cm_npy_header(file->npy);
    const uint8_t *data = cm_npy_data(file->npy);
    int rows = split->stored;
    if (dataset->task == CM_TASK_CLASSIFICATION) {
        split->labels_owned = malloc(sizeof(int32_t) * (size_t)(rows ? rows : 1));
        if (!split->labels_owned)
            return cm_fail(CM_ERR_NOMEM, "%s: out of memory", file_name(file));
        for (int row = 0; row < rows; row++) {
            int64_t label = element_integer(header->dtype, data, (uint64_t)row);
            if (label < 0 || label >= dataset->classes)
                return cm_fail(CM_ERR_OUT_OF_RANGE, "%s: label %lld of row %d is outside [0, %d)",
                               file_name(file), (long long)label, row, dataset->classes);
            split->labels_owned[row] = (int32_t)label;
        }
        split->labels = split->labels_owned;
    } else {
        size_t count = (size_t)rows * (size_t)dataset->targets;
        split->targets_owned = cm_alloc_floats(count ? count : 1);
        if (!split->targets_owned)
            return cm_fail(CM_ERR_NOMEM, "%s: out of memory", file_name(file));
        memcpy(split->targets_owned, data, sizeof(float) * count);
        for (size_t index = 0; index < count; index++)
            if (!isfinite(split->targets_owned[index]))
                return cm_fail(CM_ERR_OUT_OF_RANGE, "%s: target %zu of row %zu is not finite",
                               file_name(file), index % (size_t)dataset->targets,
                               index / (size_t)dataset->targets);
        split->targets = split->targets_owned;
    }
    return CM_OK;
}

static int compare_pairs(const void *a, const void *b) {
    const int32_t *x = a, *y = b;
    return x[0] < y[0] ? -1 : x[0] > y[0];
}

static cm_status_t read_ids(cm_split_data_t *split, const data_file_t *file) {
    const cm_npy_header_t *header = cm_npy_header(file->npy);
    const uint8_t *data = cm_npy_data(file->npy);
    int rows = split->stored;
    split->ids_owned = malloc(sizeof(int32_t) * (size_t)(rows ? rows : 1));
    if (!split->ids_owned) return cm_fail(CM_ERR_NOMEM, "%s: out of memory", file_name(file));
    int32_t lowest = INT32_MAX, highest = 0;
    for (int row = 0; row < rows; row++) {
        int64_t id = element_integer(header->dtype, data, (uint64_t)row);
        if (id < 0 || id > INT32_MAX)
            return cm_fail(CM_ERR_OUT_OF_RANGE, "%s: id %lld of row %d is outside [0, %d]",
                           file_name(file), (long long)id, row, INT32_MAX);
        split->ids_owned[row] = (int32_t)id;
        if (id < lowest) lowest = (int32_t)id;
        if (id > highest) highest = (int32_t)id;
    }
    split->ids = split->ids_owned;
    if (rows == 0) return CM_OK;
    int64_t span = (int64_t)highest - lowest + 1;
    if (span <= 2 * (int64_t)rows + 1024) { /* dense enough for a direct map */
        split->row_of_id = malloc(sizeof(int32_t) * (size_t)span);
        if (!split->row_of_id) return cm_fail(CM_ERR_NOMEM, "%s: out of memory", file_name(file));
        for (int64_t index = 0; index < span; index++) split->row_of_id[index] = -1;
        split->id_base = lowest;
        split->id_span = span;
        for (int row = 0; row < rows; row++) {
            int32_t *slot = &split->row_of_id[split->ids_owned[row] - lowest];
            if (*slot >= 0)
                return cm_fail(CM_ERR_MISMATCH, "%s: id %d appears twice (rows %d and %d)",
                               file_name(file), split->ids_owned[row], *slot, row);
            *slot = row;
        }
        return CM_OK;
    }
    split->sorted_ids = malloc(sizeof(int32_t) * 2 * (size_t)rows);
    if (!split->sorted_ids) return cm_fail(CM_ERR_NOMEM, "%s: out of memory", file_name(file));
    for (int row = 0; row < rows; row++) {
        split->sorted_ids[2 * row] = split->ids_owned[row];
        split->sorted_ids[2 * row + 1] = row;
    }
    qsort(split->sorted_ids, (size_t)rows, 2 * sizeof(int32_t), compare_pairs);
    for (int index = 1; index < rows; index++)
        if (split->sorted_ids[2 * index] == split->sorted_ids[2 * index - 2]) {
            int first = split->sorted_ids[2 * index - 1], second = split->sorted_ids[2 * index + 1];
            return cm_fail(CM_ERR_MISMATCH, "%s: id %d appears twice (rows %d and %d)",
                           file_name(file), split->sorted_ids[2 * index],
                           first < second ? first : second, first < second ? second : first);
        }
    return CM_OK;
}

int32_t cm_dataset_id(const cm_dataset_t *dataset, cm_split_t split, int row) {
    const cm_split_data_t *data = &dataset->splits[split];
    return data->ids ? data->ids[row] : (int32_t)row;
}

int cm_dataset_row(const cm_dataset_t *dataset, cm_split_t split, int32_t id) {
    const cm_split_data_t *data = &dataset->splits[split];
    int row = -1;
    if (!data->ids) {
        row = id;
    } else if (data->row_of_id) {
        int64_t offset = (int64_t)id - data->id_base;
        if (offset >= 0 && offset < data->id_span) row = data->row_of_id[offset];
    } else if (data->sorted_ids) {
        int32_t key[2] = {id, 0};
        const int32_t *found = bsearch(key, data->sorted_ids, (size_t)data->stored,
                                       2 * sizeof(int32_t), compare_pairs);
        if (found) row = found[1];
    }
    return row >= 0 && row < data->count ? row : -1;
}

cm_status_t cm_dataset_rows(const cm_dataset_t *dataset, cm_split_t split, const int32_t *ids,
                            int count, int32_t *rows) {
    for (int index = 0; index < count; index++) {
        int32_t id = ids[index];
        int row = cm_dataset_row(dataset, split, id);
        if (row < 0)
            return cm_fail(CM_ERR_OUT_OF_RANGE,
                           "example id %d (position %d) is not among the %d examples of split %s",
                           id, index, dataset->splits[split].count, split_names[split]);
        rows[index] = row;
    }
    return CM_OK;
}

/* ---- The view ---- */

static cm_status_t plan_view(cm_dataset_t *dataset, const char *view_name) {
    const cm_manifest_t *manifest = dataset->manifest;
    const cm_manifest_view_t *view = cm_manifest_view(manifest, view_name);
    if (!view) {
        char names[512];
        cm_manifest_view_names(manifest, names, sizeof names);
        return cm_fail(CM_ERR_INVALID_ARG, "view \"%s\" is unknown for dataset %s; valid views: %s",
                       view_name, dataset->name, names);
    }
    const cm_manifest_view_t *stored =
        view->from[0] ? cm_manifest_view(manifest, view->from) : view;
    dataset->view_spec = view;
    dataset->stored_spec = stored;
    snprintf(dataset->view, sizeof dataset->view, "%s", view->name);
    dataset->view_kind = view->kind;
    const data_file_t *files = dataset->files;
    const cm_npy_header_t *header = NULL;
    for (int index = 0; index < dataset->file_count; index++)
        if (files[index].role == FILE_VIEW && files[index].view == stored) {
            dataset->splits[files[index].split].view_data = files[index].npy;
            header = cm_npy_header(files[index].npy);
        }
    assert(header != NULL);
    dataset->view_dtype = header->dtype;
    dataset->rank = header->rank - 1;
    for (int axis = 1; axis < header->rank; axis++) dataset->shape[axis - 1] = header->shape[axis];
    int pool = view->from[0] ? view->pool : 1;
    dataset->pool = pool;
    if (pool > 1) {
        if (dataset->rank < 2)
            return cm_fail(CM_ERR_SHAPE,
                           "view \"%s\" pools the last two axes of \"%s\", whose examples have "
                           "%d",
                           view->name, stored->name, dataset->rank);
        int64_t *height = &dataset->shape[dataset->rank - 2],
                *width = &dataset->shape[dataset->rank - 1];
        if (*height % pool || *width % pool)
            return cm_fail(CM_ERR_SHAPE, "view \"%s\": avgpool:%d does not divide %lldx%lld",
                           view->name, pool, (long long)*height, (long long)*width);
        if (stored->normalize_count > 1 &&
            (dataset->rank < 3 || dataset->shape[0] != stored->normalize_count))
            return cm_fail(CM_ERR_SHAPE,
                           "view \"%s\" pools \"%s\", whose normalization must then be one mean "
                           "or one per channel (first axis)",
                           view->name, stored->name);
        *height /= pool;
        *width /= pool;
    }
    int64_t features = 1;
    for (int axis = 0; axis < dataset->rank; axis++) features *= dataset->shape[axis];
    dataset->features = (int)features;
    dataset->height = dataset->rank >= 2 ? (int)dataset->shape[dataset->rank - 2] : 1;
    dataset->width = dataset->rank >= 1 ? (int)dataset->shape[dataset->rank - 1] : 1;
    int64_t stored_features = features * pool * pool;
    dataset->channel_span =
        stored->normalize_count > 1 ? (int)(stored_features / stored->normalize_count) : 1;
    if (stored->kind == CM_VIEW_DENSE && header->dtype == CM_NPY_U8 &&
        stored->normalize_count <= 1) {
        int block = pool * pool;
        dataset->lookup = malloc(sizeof(float) * (size_t)(255 * block + 1));
        if (!dataset->lookup) return cm_fail(CM_ERR_NOMEM, "out of memory for the view");
        double mean = stored->normalize_count ? stored->mean[0] : 0.0;
        double std = stored->normalize_count ? stored->std[0] : 1.0;
        for (int sum = 0; sum <= 255 * block; sum++)
            dataset->lookup[sum] = (float)(((double)sum / (stored->divide * block) - mean) / std);
    }
    return CM_OK;
}

static double normalize(const cm_dataset_t *dataset, double raw, int64_t stored_element) {
    const cm_manifest_view_t *stored = dataset->stored_spec;
    double value = raw / stored->divide;
    if (!stored->normalize_count) return value;
    int channel = stored->normalize_count == 1 ? 0 : (int)(stored_element / dataset->channel_span);
    return (value - stored->mean[channel]) / stored->std[channel];
}

/* One example's features before "standardize": out[features] <- row `row` of the stored array. */
static void gather_source_row(const cm_dataset_t *dataset, const uint8_t *row, float *out) {
    cm_npy_dtype_t dtype = dataset->view_dtype;
    int features = dataset->features, pool = dataset->pool;
    if (dataset->view_kind != CM_VIEW_DENSE) {
        for (int feature = 0; feature < features; feature++)
            out[feature] = (float)element_integer(dtype, row, (uint64_t)feature);
        return;
    }
    if (pool <= 1) {
        if (dataset->lookup) {
            for (int feature = 0; feature < features; feature++)
                out[feature] = dataset->lookup[row[feature]];
        } else {
            for (int feature = 0; feature < features; feature++)
                out[feature] = (float)normalize(
                    dataset, element_value(dtype, row, (uint64_t)feature), feature);
        }
        return;
    }
    int height = dataset->height, width = dataset->width, source_width = width * pool;
    int planes = features / (height * width);
    int64_t plane_size = (int64_t)height * width * pool * pool;
    for (int plane = 0; plane < planes; plane++)
        for (int y = 0; y < height; y++)
            for (int x = 0; x < width; x++) {
                int64_t first = plane * plane_size + (int64_t)y * pool * source_width + x * pool;
                float *target = &out[(plane * height + y) * width + x];
                if (dataset->lookup) {
                    int sum = 0;
                    for (int dy = 0; dy < pool; dy++) {
                        const uint8_t *line = row + first + (int64_t)dy * source_width;
                        for (int dx = 0; dx < pool; dx++) sum += line[dx];
                    }
                    *target = dataset->lookup[sum];
                    continue;
                }
                double sum = 0;
                for (int dy = 0; dy < pool; dy++)
                    for (int dx = 0; dx < pool; dx++)
                        sum += element_value(dtype, row,
                                             (uint64_t)(first + (int64_t)dy * source_width + dx));
                *target = (float)normalize(dataset, sum / (pool * pool), first);
            }
}

/* One example's features: the source's, then standardized when the view says so. */
static void gather_row(const cm_dataset_t *dataset, const uint8_t *row, float *out) {
    gather_source_row(dataset, row, out);
    if (!dataset->standard_mean) return;
    for (int feature = 0; feature < dataset->features; feature++)
        out[feature] =
            (out[feature] - dataset->standard_mean[feature]) / dataset->standard_std[feature];
}

/*
 * "standardize": each feature's mean and population std over every stored train row (one
 * streaming pass, Welford's update in double), recorded in view_json.  A feature whose std
 * is 0 (or not finite) gets std 1, so it stays finite (its value becomes 0 on train).
 */
static cm_status_t standardize_view(cm_dataset_t *dataset) {
    const cm_split_data_t *train = &dataset->splits[CM_SPLIT_TRAIN];
    if (!train->view_data || train->stored < 1)
        return cm_fail(CM_ERR_INVALID_ARG,
                       "view \"%s\" standardizes with train statistics, but %s has no "
                       "training examples",
                       dataset->view, dataset->name);
    int features = dataset->features;
    double *mean = calloc((size_t)features, sizeof *mean);
    double *square = calloc((size_t)features, sizeof *square);
    float *row = malloc(sizeof(float) * (size_t)features);
    dataset->standard_mean = malloc(sizeof(float) * (size_t)features);
    dataset->standard_std = malloc(sizeof(float) * (size_t)features);
    json_t *object = NULL, *means = json_array(), *stds = json_array();
    cm_status_t status = CM_OK;
    if (!mean || !square || !row || !dataset->standard_mean || !dataset->standard_std || !means ||
        !stds) {
        status = cm_fail(CM_ERR_NOMEM, "out of memory");
        goto done;
    }
    const uint8_t *base = cm_npy_data(train->view_data);
    size_t row_bytes = cm_npy_row_bytes(train->view_data);
    for (int index = 0; index < train->stored; index++) {
        gather_source_row(dataset, base + (size_t)index * row_bytes, row);
        for (int feature = 0; feature < features; feature++) {
            double delta = row[feature] - mean[feature];
            mean[feature] += delta / (index + 1);
            square[feature] += delta * (row[feature] - mean[feature]);
        }
    }
    for (int feature = 0; feature < features; feature++) {
        double std = sqrt(square[feature] / train->stored);
        if (!(std > 1e-12) || !isfinite(std)) std = 1.0;
        dataset->standard_mean[feature] = (float)mean[feature];
        dataset->standard_std[feature] = (float)std;
        json_array_append_new(means, json_real(dataset->standard_mean[feature]));
        json_array_append_new(stds, json_real(dataset->standard_std[feature]));
    }
    object = json_loads(dataset->view_json, 0, NULL);
    if (!object) {
        status = cm_fail(CM_ERR_NOMEM, "out of memory");
        goto done;
    }
    json_t *statistics = json_object();
    json_object_set_new(statistics, "mean", means);
    json_object_set_new(statistics, "std", stds);
    means = stds = NULL;
    json_object_set_new(object, "standardize", statistics);
    char *text = cm_manifest_canonical(object);
    if (!text) {
        status = cm_fail(CM_ERR_NOMEM, "out of memory");
        goto done;
    }
    free(dataset->view_json);
    dataset->view_json = text;
done:
    json_decref(object);
    json_decref(means);
    json_decref(stds);
    free(mean);
    free(square);
    free(row);
    return status;
}

void cm_dataset_gather(const cm_dataset_t *dataset, cm_split_t split, const int32_t *rows,
                       int count, float *out) {
    const cm_split_data_t *data = &dataset->splits[split];
    assert(data->view_data != NULL);
    const uint8_t *base = cm_npy_data(data->view_data);
    size_t row_bytes = cm_npy_row_bytes(data->view_data);
    for (int index = 0; index < count; index++) {
        assert(rows[index] >= 0 && rows[index] < data->count);
        gather_row(dataset, base + (size_t)rows[index] * row_bytes,
                   out + (size_t)index * (size_t)dataset->features);
    }
}

void cm_dataset_gather_range(const cm_dataset_t *dataset, cm_split_t split, int first, int count,
                             float *out) {
    const cm_split_data_t *data = &dataset->splits[split];
    assert(data->view_data != NULL && first >= 0 && first + count <= data->count);
    const uint8_t *base = cm_npy_data(data->view_data);
    size_t row_bytes = cm_npy_row_bytes(data->view_data);
    for (int index = 0; index < count; index++)
        gather_row(dataset, base + (size_t)(first + index) * row_bytes,
                   out + (size_t)index * (size_t)dataset->features);
}

float cm_dataset_background(const cm_dataset_t *dataset) {
    if (!dataset->stored_spec || dataset->view_kind != CM_VIEW_DENSE) return 0.0f;
    return (float)normalize(dataset, 0.0, 0);
}

const char *cm_dataset_views(const char *name) {
    return name && strcmp(name, "fashion-mnist") == 0 ? FASHION_MNIST_VIEWS : NULL;
}

/* ---- Loading ---- */

static cm_status_t assemble(cm_dataset_t *dataset, const char *view_name,
                            const cm_dataset_options_t *options) {
    const cm_manifest_t *manifest = dataset->manifest;
    data_file_t *files = dataset->files;
    snprintf(dataset->name, sizeof dataset->name, "%s", manifest->name);
    dataset->task = manifest->task;
    dataset->classes = manifest->classes;
    dataset->targets = manifest->task == CM_TASK_REGRESSION ? manifest->targets : 0;
    cm_status_t status = CM_OK;
    const cm_manifest_view_t *wanted = NULL;
    if (view_name) {
        wanted = cm_manifest_view(manifest, view_name);
        if (!wanted) return plan_view(dataset, view_name); /* the unknown-view sentence */
        if (wanted->from[0]) wanted = cm_manifest_view(manifest, wanted->from);
    }
    /* Headers and counts. */
    int rows[CM_SPLIT_COUNT];
    const data_file_t *first_of[CM_SPLIT_COUNT] = {0};
    for (int index = 0; index < dataset->file_count; index++) {
        data_file_t *file = &files[index];
        if ((status = check_header(manifest, file)) != CM_OK) return status;
        int count = (int)cm_npy_header(file->npy)->shape[0];
        const data_file_t *first = first_of[file->split];
        if (!first) {
            first_of[file->split] = file;
            rows[file->split] = count;
        } else if (count != rows[file->split]) {
            return cm_fail(CM_ERR_MISMATCH, "%s holds %d rows but %s holds %d", file_name(file),
                           count, file_name(first), rows[file->split]);
        }
    }
    /* Hashes (cached) and value checks, then the fingerprint. */
    cm_sha256_t fingerprint;
    cm_sha256_init(&fingerprint);
    static const char preamble[] = "committee-dataset-fingerprint/1\n";
    cm_sha256_update(&fingerprint, preamble, strlen(preamble));
    cm_sha256_update(&fingerprint, manifest->canonical, strlen(manifest->canonical));
    cm_sha256_update(&fingerprint, "\n", 1);
    for (int index = 0; index < dataset->file_count; index++) {
        data_file_t *file = &files[index];
        int validate = options->validate_all || (wanted && file->view == wanted);
        if ((status = file_digest(file, validate, options->validate_all)) != CM_OK) return status;
        char line[CM_MANIFEST_NAME_MAX + 128];
        int length = snprintf(line, sizeof line, "%s %llu %s\n", file->relative,
                              (unsigned long long)file->size, file->sha256);
        cm_sha256_update(&fingerprint, line, (size_t)length);
    }
    uint8_t digest[32];
    cm_sha256_final(&fingerprint, digest);
    cm_sha256_hex(digest, dataset->fingerprint);
    cm_sha256_t manifest_hash;
    cm_sha256_init(&manifest_hash);
    cm_sha256_update(&manifest_hash, manifest->canonical, strlen(manifest->canonical));
    cm_sha256_final(&manifest_hash, digest);
    cm_sha256_hex(digest, dataset->manifest_sha256);

    /* Labels, targets, ids; subsets. */
    for (int split = 0; split < CM_SPLIT_COUNT; split++) {
        if (!first_of[split]) continue;
        dataset->splits[split].stored = dataset->splits[split].count = rows[split];
    }
    for (int index = 0; index < dataset->file_count && status == CM_OK; index++) {
        const data_file_t *file = &files[index];
        cm_split_data_t *split = &dataset->splits[file->split];
        if (file->role == FILE_LABELS) status = read_labels(dataset, split, file);
        if (file->role == FILE_IDS) status = read_ids(split, file);
    }
    if (status != CM_OK) return status;
    const int limits[2] = {options->max_train, options->max_test};
    for (int split = 0; split < 2; split++) {
        if (limits[split] > dataset->splits[split].stored)
            return cm_fail(CM_ERR_INVALID_ARG,
                           "%s is %d but the %s split of %s has only %d examples",
                           split ? "max_test" : "max_train", limits[split], split_names[split],
                           dataset->name, dataset->splits[split].stored);
        if (limits[split] > 0) dataset->splits[split].count = limits[split];
    }
    if (!(dataset->task_json = cm_manifest_task_json(manifest)))
        return cm_fail(CM_ERR_NOMEM, "out of memory");
    if (view_name) {
        if ((status = plan_view(dataset, view_name)) != CM_OK) return status;
        dataset->view_json = cm_manifest_view_json(manifest, dataset->view_spec);
    } else {
        dataset->view_json = strdup("");
    }
    if (!dataset->view_json) return cm_fail(CM_ERR_NOMEM, "out of memory");
    if (view_name && dataset->view_spec->standardize) return standardize_view(dataset);
    return CM_OK;
}

cm_status_t cm_dataset_load(cm_dataset_t **out, const char *data, const char *view,
                            const cm_dataset_options_t *options) {
    assert(out != NULL);
    *out = NULL;
    static const cm_dataset_options_t defaults = {0};
    if (!options) options = &defaults;
    if (!data || !data[0])
        return cm_fail(CM_ERR_INVALID_ARG, "no dataset given (a folder or fashion-mnist)");
    if (options->max_train < 0 || options->max_test < 0)
        return cm_fail(CM_ERR_INVALID_ARG,
                       "max_train (%d) and max_test (%d) must be 0 (everything) or positive",
                       options->max_train, options->max_test);
    cm_dataset_t *dataset = calloc(1, sizeof *dataset);
    if (!dataset) return cm_fail(CM_ERR_NOMEM, "cannot allocate dataset %s", data);
    file_table_t table = {0};
    cm_status_t status;
    int builtin = strcmp(data, "fashion-mnist") == 0;
    if (builtin) {
        status = open_fashion(options, &dataset->manifest, &table);
        snprintf(dataset->source, sizeof dataset->source, "%s", data);
    } else {
        char root[PATH_MAX];
        if (!realpath(data, root)) snprintf(root, sizeof root, "%s", data);
        snprintf(dataset->source, sizeof dataset->source, "%s", root);
        status = read_manifest(root, &dataset->manifest);
        if (status == CM_OK) status = open_folder(root, dataset->manifest, &table);
    }
    dataset->files = table.files;
    dataset->file_count = table.count;
    if (status == CM_OK) status = assemble(dataset, view, options);
    if (status != CM_OK) {
        cm_dataset_free(&dataset);
        return status;
    }
    *out = dataset;
    return CM_OK;
}

void cm_dataset_free(cm_dataset_t **dataset) {
    if (!dataset || !*dataset) return;
    cm_dataset_t *d = *dataset;
    for (int split = 0; split < CM_SPLIT_COUNT; split++) {
        cm_split_data_t *data = &d->splits[split];
        free(data->labels_owned);
        free(data->ids_owned);
        free(data->row_of_id);
        free(data->sorted_ids);
        cm_free_aligned(data->targets_owned);
    }
    free_files(d->files, d->file_count);
    cm_manifest_free(&d->manifest);
    free(d->lookup);
    free(d->standard_mean);
    free(d->standard_std);
    free(d->task_json);
    free(d->view_json);
    free(d);
    *dataset = NULL;
}

/* ---- Describing and exporting ---- */

void cm_dataset_describe(const cm_dataset_t *dataset, FILE *out) {
    const cm_manifest_t *manifest = dataset->manifest;
    const data_file_t *files = dataset->files;
    fprintf(out, "dataset      %s (%s)\n", dataset->name, dataset->source);
    if (dataset->task == CM_TASK_CLASSIFICATION)
        fprintf(out, "task         classification, %d classes%s\n", dataset->classes,
                manifest->class_names ? " (named)" : "");
    else
        fprintf(out, "task         regression, %d target%s\n", dataset->targets,
                dataset->targets == 1 ? "" : "s");
    for (int split = 0; split < CM_SPLIT_COUNT; split++) {
        if (!manifest->has_split[split]) continue;
        const cm_split_data_t *data = &dataset->splits[split];
        fprintf(out, "split        %-8s %d examples%s%s\n", split_names[split], data->stored,
                data->ids ? ", ids.npy" : "", data->labels || data->targets ? "" : ", no labels");
    }
    for (int index = 0; index < manifest->view_count; index++) {
        const cm_manifest_view_t *view = &manifest->views[index];
        const cm_manifest_view_t *stored =
            view->from[0] ? cm_manifest_view(manifest, view->from) : view;
        const cm_npy_header_t *header = NULL;
        for (int file = 0; file < dataset->file_count && !header; file++)
            if (files[file].role == FILE_VIEW && files[file].view == stored)
                header = cm_npy_header(files[file].npy);
        if (!header) continue;
        char shape[128] = "";
        int used = 0;
        for (int axis = 1; axis < header->rank; axis++) {
            int64_t dim = header->shape[axis];
            if (view->from[0] && axis >= header->rank - 2) dim /= view->pool;
            used += snprintf(shape + used, sizeof shape - (size_t)used, "%s%lld",
                             axis > 1 ? "x" : "", (long long)dim);
        }
        if (header->rank == 1) snprintf(shape, sizeof shape, "1");
        char detail[160] = "";
        if (view->from[0] && view->standardize)
            snprintf(detail, sizeof detail, ", from %s standardized", view->from);
        else if (view->from[0])
            snprintf(detail, sizeof detail, ", from %s by avgpool:%d", view->from, view->pool);
        else if (view->kind == CM_VIEW_DENSE && view->normalize_count)
            snprintf(detail, sizeof detail, ", normalized (%d mean%s)", view->normalize_count,
                     view->normalize_count == 1 ? "" : "s");
        else if (view->kind == CM_VIEW_CATEGORICAL)
            snprintf(detail, sizeof detail, ", %d column%s", view->columns,
                     view->columns == 1 ? "" : "s");
        else if (view->kind == CM_VIEW_TOKENS)
            snprintf(detail, sizeof detail, ", vocab %lld, pad %lld", (long long)view->vocab,
                     (long long)view->pad);
        fprintf(out, "view         %-8s %s %s [%s]%s\n", view->name, cm_view_kind_name(view->kind),
                cm_npy_dtype_name(header->dtype), shape, detail);
    }
    fprintf(out, "fingerprint  %s\n", dataset->fingerprint);
}

static cm_status_t write_file_bytes(const char *path, const cm_npy_t *npy) {
    const cm_npy_header_t *header = cm_npy_header(npy);
    cm_file_chunk_t chunks[2] = {{cm_npy_prefix(npy), header->data_offset},
                                 {cm_npy_data(npy), (size_t)header->data_bytes}};
    return cm_file_write_atomic(path, chunks, 2);
}

cm_status_t cm_dataset_export(const cm_dataset_t *dataset, const char *directory) {
    char path[PATH_MAX];
    if (mkdir(directory, 0755) != 0 && errno != EEXIST)
        return cm_fail(CM_ERR_IO, "%s: cannot create: %s", directory, strerror(errno));
    snprintf(path, sizeof path, "%s/dataset.json", directory);
    if (access(path, F_OK) == 0)
        return cm_fail(CM_ERR_INVALID_ARG, "%s already exists; export into a new folder", path);
    const data_file_t *files = dataset->files;
    cm_status_t status = CM_OK;
    for (int split = 0; split < CM_SPLIT_COUNT && status == CM_OK; split++) {
        if (!dataset->manifest->has_split[split]) continue;
        snprintf(path, sizeof path, "%s/%s", directory, split_names[split]);
        if (mkdir(path, 0755) != 0 && errno != EEXIST)
            status = cm_fail(CM_ERR_IO, "%s: cannot create: %s", path, strerror(errno));
    }
    for (int index = 0; index < dataset->file_count && status == CM_OK; index++) {
        int length = snprintf(path, sizeof path, "%s/%s", directory, files[index].relative);
        if (length < 0 || (size_t)length >= sizeof path)
            return cm_fail(CM_ERR_INVALID_ARG, "%s: the path is too long", directory);
        status = write_file_bytes(path, files[index].npy);
    }
    if (status != CM_OK) return status;
    /* The manifest last (as it was written): a folder without one is visibly unfinished. */
    snprintf(path, sizeof path, "%s/dataset.json", directory);
    cm_file_chunk_t chunk = {dataset->manifest->text, strlen(dataset->manifest->text)};
    return cm_file_write_atomic(path, &chunk, 1);
}
