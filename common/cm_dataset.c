/*
 * cm_dataset: loading datasets into memory.  See cm_dataset.h for the model
 * (datasets, splits, views, fingerprints).
 *
 * Fashion-MNIST comes as four gzip-compressed IDX files.  Each file is read
 * whole into memory once: its raw bytes feed the fingerprint and are then
 * inflated from memory with zlib, so nothing is read from disk twice.  The
 * labels of a split are read first (they are small), then the images are
 * inflated a chunk at a time and turned into the view's features on the fly,
 * so the 47 MB of decompressed training pixels never sit in memory at once.
 * Every file is read to the end and checked (gzip CRC, trailing bytes, every
 * label) even when only the first max_train examples are kept: the
 * fingerprint covers the whole files, so the whole files must be sound.
 */
#define ZLIB_CONST
#include "cm_dataset.h"
#include "cm_alloc.h"
#include "cm_sha256.h"

#include <assert.h>
#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

/* ---- Splits ---- */

const char *cm_split_name(cm_split_t split) {
    switch (split) {
    case CM_SPLIT_TRAIN:
        return "train";
    case CM_SPLIT_TEST:
        return "test";
    default:
        return "unknown";
    }
}

cm_status_t cm_split_parse(const char *text, cm_split_t *split) {
    for (int candidate = 0; candidate < CM_SPLIT_COUNT; candidate++)
        if (text && strcmp(text, cm_split_name((cm_split_t)candidate)) == 0) {
            *split = (cm_split_t)candidate;
            return CM_OK;
        }
    return cm_fail(CM_ERR_INVALID_ARG, "split \"%s\" is unknown; valid splits: train, test",
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
    FASHION_MNIST_LARGEST_POOL = 4,
    IMAGES_PER_CHUNK = 256, /* 200 KB of pixels inflated at a time */
};

/* Pixel mean and standard deviation of the training set (pixels scaled to [0, 1]). */
static const double fashion_mnist_pixel_mean = 0.2860, fashion_mnist_pixel_std = 0.3530;

typedef struct {
    const char *name;
    int pool; /* side of the square averaged into one feature */
} fashion_view_t;

static const fashion_view_t fashion_views[] = {{"full", 1}, {"pool14", 2}, {"pool7", 4}};

/* The source files of each split, in fingerprint order (images, then labels). */
static const char *const fashion_image_files[CM_SPLIT_COUNT] = {"train-images-idx3-ubyte.gz",
                                                                "t10k-images-idx3-ubyte.gz"};
static const char *const fashion_label_files[CM_SPLIT_COUNT] = {"train-labels-idx1-ubyte.gz",
                                                                "t10k-labels-idx1-ubyte.gz"};

/*
 * features [28/pool][28/pool] <- pixels [28][28]: each feature is the sum of
 * a pool x pool block of pixels, mapped through normalized_by_sum[sum]
 * (the block's normalized average, precomputed for every possible sum).
 */
static void fashion_pool_image(float *features, const uint8_t *pixels, int pool,
                               const float *normalized_by_sum) {
    if (pool == 1) {
        for (int pixel = 0; pixel < FASHION_MNIST_PIXELS; pixel++)
            features[pixel] = normalized_by_sum[pixels[pixel]];
        return;
    }
    int side = FASHION_MNIST_SIDE / pool;
    for (int row = 0; row < side; row++)
        for (int col = 0; col < side; col++) {
            int sum = 0;
            for (int dy = 0; dy < pool; dy++) {
                const uint8_t *line = pixels + (row * pool + dy) * FASHION_MNIST_SIDE + col * pool;
                for (int dx = 0; dx < pool; dx++) sum += line[dx];
            }
            features[row * side + col] = normalized_by_sum[sum];
        }
}

typedef struct {
    const char *directory;
    const fashion_view_t *view;
    float normalized_by_sum[FASHION_MNIST_LARGEST_POOL * FASHION_MNIST_LARGEST_POOL * 255 + 1];
    cm_sha256_t fingerprint; /* over the raw files, in order */
} fashion_load_t;

static cm_status_t fashion_path(char *path, size_t size, const char *directory, const char *file) {
    int length = snprintf(path, size, "%s/%s", directory, file);
    if (length < 0 || (size_t)length >= size)
        return cm_fail(CM_ERR_INVALID_ARG, "data directory \"%s\" is too long for a path",
                       directory);
    return CM_OK;
}

/* Reads the labels body: checks each label, keeps the first `kept` in split->labels. */
static cm_status_t fashion_read_labels(gzip_reader_t *reader, uint32_t count,
                                       cm_split_data_t *split, int kept) {
    split->labels = cm_alloc_aligned((size_t)kept, sizeof(int32_t));
    if (!split->labels)
        return cm_fail(CM_ERR_NOMEM, "%s: cannot allocate %d labels", reader->path, kept);
    uint8_t chunk[4096];
    for (uint32_t index = 0; index < count;) {
        size_t want = count - index < sizeof chunk ? count - index : sizeof chunk, got;
        cm_status_t status = gzip_reader_read(reader, chunk, want, &got);
        if (status != CM_OK) return status;
        for (size_t i = 0; i < got; i++, index++) {
            if (chunk[i] >= FASHION_MNIST_CLASSES)
                return cm_fail(CM_ERR_OUT_OF_RANGE, "%s: label %u of example %u is outside [0, %d)",
                               reader->path, chunk[i], index, FASHION_MNIST_CLASSES);
            if (index < (uint32_t)kept) split->labels[index] = chunk[i];
        }
        if (got < want)
            return cm_fail(CM_ERR_FORMAT, "%s: truncated: header promises %u labels, file holds %u",
                           reader->path, count, index);
    }
    return gzip_reader_finish(reader, count, "labels");
}

/* Reads the images body and turns the first `kept` images into the view's features. */
static cm_status_t fashion_read_images(gzip_reader_t *reader, uint32_t count,
                                       cm_split_data_t *split, int kept, int features,
                                       const fashion_load_t *load) {
    split->inputs = cm_alloc_floats((size_t)kept * (size_t)features);
    uint8_t *chunk = malloc((size_t)IMAGES_PER_CHUNK * FASHION_MNIST_PIXELS);
    cm_status_t status = CM_OK;
    if (!split->inputs || !chunk) {
        status = cm_fail(CM_ERR_NOMEM, "%s: cannot allocate the features of %d images",
                         reader->path, kept);
        goto done;
    }
    for (uint32_t index = 0; index < count;) {
        uint32_t images = count - index < IMAGES_PER_CHUNK ? count - index : IMAGES_PER_CHUNK;
        size_t want = (size_t)images * FASHION_MNIST_PIXELS, got;
        status = gzip_reader_read(reader, chunk, want, &got);
        if (status != CM_OK) goto done;
        size_t complete = got / FASHION_MNIST_PIXELS;
        for (size_t image = 0; image < complete; image++, index++)
            if (index < (uint32_t)kept)
                fashion_pool_image(split->inputs + (size_t)index * (size_t)features,
                                   chunk + image * FASHION_MNIST_PIXELS, load->view->pool,
                                   load->normalized_by_sum);
        if (got < want) {
            status =
                cm_fail(CM_ERR_FORMAT, "%s: truncated: header promises %u images, file holds %u",
                        reader->path, count, index);
            goto done;
        }
    }
    status = gzip_reader_finish(reader, count, "images");
done:
    free(chunk);
    return status;
}

/*
 * Loads one split: both files are read and hashed (images, then labels),
 * their headers checked against each other, then the labels and images read.
 * `max_examples` is 0 for the whole split.  On failure, whatever was
 * allocated in `split` is left for cm_dataset_free.
 */
static cm_status_t fashion_load_split(fashion_load_t *load, cm_split_t which, int max_examples,
                                      const char *option_name, cm_split_data_t *split,
                                      int features) {
    char images_path[PATH_MAX], labels_path[PATH_MAX];
    uint8_t *images_raw = NULL, *labels_raw = NULL;
    size_t images_size = 0, labels_size = 0;
    gzip_reader_t images = {0}, labels = {0};
    uint8_t images_header[IDX_IMAGES_HEADER_BYTES], labels_header[IDX_LABELS_HEADER_BYTES];

    cm_status_t status =
        fashion_path(images_path, sizeof images_path, load->directory, fashion_image_files[which]);
    if (status == CM_OK)
        status = fashion_path(labels_path, sizeof labels_path, load->directory,
                              fashion_label_files[which]);
    if (status == CM_OK) status = read_whole_file(images_path, &images_raw, &images_size);
    if (status == CM_OK) status = read_whole_file(labels_path, &labels_raw, &labels_size);
    if (status != CM_OK) goto done;
    cm_sha256_update(&load->fingerprint, images_raw, images_size);
    cm_sha256_update(&load->fingerprint, labels_raw, labels_size);

    status = gzip_reader_open(&labels, labels_path, labels_raw, labels_size);
    if (status == CM_OK)
        status = read_idx_header(&labels, labels_header, sizeof labels_header, IDX_LABELS_MAGIC,
                                 "labels", labels_size, 1);
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
    if (max_examples > (int)image_count) {
        status = cm_fail(CM_ERR_INVALID_ARG,
                         "%s is %d but the %s split of fashion-mnist has only %u examples (%s)",
                         option_name, max_examples, cm_split_name(which), image_count, images_path);
        goto done;
    }
    int kept = max_examples > 0 ? max_examples : (int)image_count;

    status = fashion_read_labels(&labels, label_count, split, kept);
    if (status == CM_OK)
        status = fashion_read_images(&images, image_count, split, kept, features, load);
    if (status == CM_OK) split->count = kept;
done:
    gzip_reader_close(&images);
    gzip_reader_close(&labels);
    free(images_raw);
    free(labels_raw);
    return status;
}

static cm_status_t fashion_mnist_load(cm_dataset_t *dataset, const char *view,
                                      const cm_dataset_options_t *options) {
    fashion_load_t *load = calloc(1, sizeof *load);
    if (!load) return cm_fail(CM_ERR_NOMEM, "cannot allocate the fashion-mnist loader");
    cm_status_t status = CM_OK;
    for (size_t i = 0; i < sizeof fashion_views / sizeof fashion_views[0]; i++)
        if (strcmp(view, fashion_views[i].name) == 0) load->view = &fashion_views[i];
    if (!load->view) {
        status = cm_fail(CM_ERR_INVALID_ARG,
                         "view \"%s\" is unknown for dataset fashion-mnist; valid views: %s", view,
                         FASHION_MNIST_VIEWS);
        goto done;
    }

    const char *environment = getenv("COMMITTEE_DATA_DIR");
    if (options->directory && options->directory[0])
        load->directory = options->directory;
    else if (environment && environment[0])
        load->directory = environment;
    else
        load->directory = FASHION_MNIST_DEFAULT_DIRECTORY;

    int pool = load->view->pool, block = pool * pool;
    for (int sum = 0; sum <= block * 255; sum++) {
        double average = (double)sum / (255.0 * block);
        load->normalized_by_sum[sum] =
            (float)((average - fashion_mnist_pixel_mean) / fashion_mnist_pixel_std);
    }
    dataset->classes = FASHION_MNIST_CLASSES;
    dataset->height = dataset->width = FASHION_MNIST_SIDE / pool;
    dataset->features = dataset->height * dataset->width;
    snprintf(dataset->view, sizeof dataset->view, "%s", load->view->name);

    cm_sha256_init(&load->fingerprint);
    status = fashion_load_split(load, CM_SPLIT_TRAIN, options->max_train, "max_train",
                                &dataset->splits[CM_SPLIT_TRAIN], dataset->features);
    if (status == CM_OK)
        status = fashion_load_split(load, CM_SPLIT_TEST, options->max_test, "max_test",
                                    &dataset->splits[CM_SPLIT_TEST], dataset->features);
    if (status != CM_OK) goto done;

    char split_definition[96];
    int length =
        snprintf(split_definition, sizeof split_definition, "fashion-mnist;train=%d;test=%d",
                 dataset->splits[CM_SPLIT_TRAIN].count, dataset->splits[CM_SPLIT_TEST].count);
    cm_sha256_update(&load->fingerprint, split_definition, (size_t)length);
    uint8_t digest[32];
    cm_sha256_final(&load->fingerprint, digest);
    cm_sha256_hex(digest, dataset->fingerprint);
done:
    free(load);
    return status;
}

/* ---- The dataset table ---- */

typedef struct {
    const char *name;
    const char *views; /* comma-separated */
    cm_status_t (*load)(cm_dataset_t *dataset, const char *view,
                        const cm_dataset_options_t *options);
} dataset_source_t;

static const dataset_source_t dataset_sources[] = {
    {"fashion-mnist", FASHION_MNIST_VIEWS, fashion_mnist_load},
};
#define DATASET_SOURCE_COUNT (sizeof dataset_sources / sizeof dataset_sources[0])
#define DATASET_NAMES        "fashion-mnist"

static const dataset_source_t *find_source(const char *name) {
    for (size_t i = 0; name && i < DATASET_SOURCE_COUNT; i++)
        if (strcmp(name, dataset_sources[i].name) == 0) return &dataset_sources[i];
    return NULL;
}

const char *cm_dataset_views(const char *name) {
    const dataset_source_t *source = find_source(name);
    return source ? source->views : NULL;
}

cm_status_t cm_dataset_load(cm_dataset_t **out, const char *name, const char *view,
                            const cm_dataset_options_t *options) {
    assert(out != NULL);
    *out = NULL;
    static const cm_dataset_options_t defaults = {0};
    if (!options) options = &defaults;
    const dataset_source_t *source = find_source(name);
    if (!source)
        return cm_fail(CM_ERR_INVALID_ARG, "dataset \"%s\" is unknown; valid datasets: %s",
                       name ? name : "(null)", DATASET_NAMES);
    if (!view)
        return cm_fail(CM_ERR_INVALID_ARG, "no view given for dataset %s; valid views: %s",
                       source->name, source->views);
    if (options->max_train < 0 || options->max_test < 0)
        return cm_fail(CM_ERR_INVALID_ARG,
                       "max_train (%d) and max_test (%d) must be 0 (everything) or positive",
                       options->max_train, options->max_test);

    cm_dataset_t *dataset = calloc(1, sizeof *dataset);
    if (!dataset) return cm_fail(CM_ERR_NOMEM, "cannot allocate dataset %s", source->name);
    snprintf(dataset->name, sizeof dataset->name, "%s", source->name);
    cm_status_t status = source->load(dataset, view, options);
    if (status != CM_OK) {
        cm_dataset_free(&dataset);
        return status;
    }
    *out = dataset;
    return CM_OK;
}

float cm_dataset_background(const cm_dataset_t *dataset) {
    (void)dataset; /* one normalization for every view of the one dataset there is */
    return (float)((0.0 - fashion_mnist_pixel_mean) / fashion_mnist_pixel_std);
}

void cm_dataset_free(cm_dataset_t **dataset) {
    if (!dataset || !*dataset) return;
    for (int split = 0; split < CM_SPLIT_COUNT; split++) {
        cm_free_aligned((*dataset)->splits[split].inputs);
        cm_free_aligned((*dataset)->splits[split].labels);
    }
    free(*dataset);
    *dataset = NULL;
}
