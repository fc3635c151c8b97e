/*
 * trainer_cache: see trainer_cache.h.  File layout (safetensors):
 *   "<teacher>/<output>"      F32, F16 or BF16 [examples][width] (the storage dtype)
 *   "<teacher>/<output>.has"  U8  [examples]
 * metadata: "kind" = "committee-teacher-cache-1", "fingerprint", "teachers" (count),
 *   "teacher.<i>.name", "teacher.<i>.sha256".
 *
 * Storage of one output: an address range of examples x row bytes, mapped anonymous
 * (MAP_NORESERVE: untouched pages cost nothing).  Its first hot_bytes are the rows in memory.
 * With a spill file the rest of the range is the file's slots, mapped read-only over the
 * anonymous tail (MAP_FIXED), so the whole array stays one contiguous block for the save path;
 * rows are written there with pwrite and read with pread, never through the mapping (a write
 * fault on a full disk would be SIGBUS; the blocks are reserved anyway).  A row may straddle
 * hot_bytes (kept page-aligned for the mapping): each side goes its own way.  Ask-again keeps
 * the rows beyond hot_bytes in a pool: an open-addressing table (linear probing, deletion by
 * backward shift) from example id to a slot of pool_values.
 */
#include "trainer_cache.h"

#include "cm_safetensors.h"
#include "cm_wire.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

enum { MAX_CACHE_TEACHERS = 8 };

static const char *const output_names[TRAINER_OUTPUT_COUNT] = {"logits", "hidden", "tokens"};

typedef struct {
    int width;          /* floats per row; 0: not cached */
    cm_dtype_t dtype;   /* storage */
    size_t row_bytes;   /* width x dtype size */
    uint8_t *base;      /* [examples][row_bytes], map_bytes mapped */
    size_t map_bytes;   /* the region rounded up to pages */
    size_t hot_bytes;   /* [0, hot_bytes) in anonymous memory */
    off_t file_offset;  /* spilled: the file offset of base + hot_bytes */
    int spilled;        /* the rest is in the spill file */
    uint8_t *has;       /* [examples] */
    int pool_rows;      /* ask-again: capacity of the pool (0: no pool) */
    int pool_table;     /* slots of the table, a power of two >= 2 x pool_rows */
    int32_t *pool_keys; /* [pool_table] example id, -1: empty */
    int32_t *pool_slot; /* [pool_table] row of pool_values */
    int32_t *pool_free; /* [pool_rows] stack of free rows */
    int pool_free_count;
    uint8_t *pool_values; /* [pool_rows][row_bytes] */
} cache_output_t;

typedef struct {
    char name[64];
    char sha256[65];
    int tokens; /* rows of "tokens" */
    cache_output_t output[TRAINER_OUTPUT_COUNT];
    /* The head it lent for the interactive probes (weight NULL: none): saved with the
     * outputs, so a record replays --dd-interactive. */
    float *head_weight; /* [head_classes][head_inputs] */
    float *head_bias;   /* [head_classes] */
    int head_classes, head_inputs;
} cache_teacher_t;

struct trainer_cache {
    int teachers;
    int examples;
    trainer_cache_config_t config;
    char spill_dir[1024];
    size_t budget_left; /* of config.memory_bytes (SIZE_MAX: unbounded) */
    int spill_fd;       /* -1: no spill file yet */
    off_t spill_size;   /* bytes reserved in it */
    uint8_t *scratch;   /* a row in the storage dtype (conversions) */
    size_t scratch_bytes;
    size_t load_peak;    /* the largest buffers a load of a saved cache held at once */
    size_t load_reserve; /* of the bound, kept for those buffers (a row of any output) */
    cache_teacher_t teacher[MAX_CACHE_TEACHERS];
};

static size_t page_size(void) {
    long size = sysconf(_SC_PAGESIZE);
    return size > 0 ? (size_t)size : 4096;
}

static size_t round_up(size_t value, size_t unit) { return (value + unit - 1) / unit * unit; }

const char *trainer_cache_output_name(int output) {
    return output >= 0 && output < TRAINER_OUTPUT_COUNT ? output_names[output] : "?";
}

cm_status_t trainer_cache_new(int teachers, int examples, trainer_cache_t **out) {
    *out = NULL;
    if (teachers < 0 || teachers > MAX_CACHE_TEACHERS || examples < 0)
        return cm_fail(CM_ERR_INVALID_ARG, "a cache holds at most %d teachers", MAX_CACHE_TEACHERS);
    trainer_cache_t *cache = calloc(1, sizeof *cache);
    if (!cache) return cm_fail(CM_ERR_NOMEM, "out of memory for the teacher cache");
    cache->teachers = teachers;
    cache->examples = examples;
    cache->config.dtype = CM_DTYPE_F32;
    cache->budget_left = SIZE_MAX;
    cache->spill_fd = -1;
    *out = cache;
    return CM_OK;
}

cm_status_t trainer_cache_configure(trainer_cache_t *cache, const trainer_cache_config_t *config) {
    if (config->dtype != CM_DTYPE_F32 && config->dtype != CM_DTYPE_F16 &&
        config->dtype != CM_DTYPE_BF16)
        return cm_fail(CM_ERR_INVALID_ARG, "the teacher cache stores F32, F16 or BF16, not %s",
                       cm_dtype_name(config->dtype));
    if (config->spill == TRAINER_SPILL_FILE && (!config->spill_dir || !config->spill_dir[0]))
        return cm_fail(CM_ERR_INVALID_ARG, "spilling the teacher cache needs a directory");
    cache->config = *config;
    if (config->spill_dir)
        snprintf(cache->spill_dir, sizeof cache->spill_dir, "%s", config->spill_dir);
    cache->config.spill_dir = cache->spill_dir;
    cache->budget_left = config->memory_bytes ? config->memory_bytes : SIZE_MAX;
    cache->load_reserve = 0;
    return CM_OK;
}

static void free_output(cache_output_t *entry) {
    if (entry->base) munmap(entry->base, entry->map_bytes);
    free(entry->has);
    free(entry->pool_keys);
    free(entry->pool_slot);
    free(entry->pool_free);
    free(entry->pool_values);
    memset(entry, 0, sizeof *entry);
}

void trainer_cache_free(trainer_cache_t **cache_pointer) {
    trainer_cache_t *cache = *cache_pointer;
    if (!cache) return;
    for (int teacher = 0; teacher < cache->teachers; teacher++) {
        for (int output = 0; output < TRAINER_OUTPUT_COUNT; output++)
            free_output(&cache->teacher[teacher].output[output]);
        free(cache->teacher[teacher].head_weight);
        free(cache->teacher[teacher].head_bias);
    }
    if (cache->spill_fd >= 0) close(cache->spill_fd); /* unlinked at creation: gone now */
    free(cache->scratch);
    free(cache);
    *cache_pointer = NULL;
}

void trainer_cache_set_teacher(trainer_cache_t *cache, int teacher, const char *name,
                               const char *model_sha256) {
    snprintf(cache->teacher[teacher].name, sizeof cache->teacher[teacher].name, "%s", name);
    snprintf(cache->teacher[teacher].sha256, sizeof cache->teacher[teacher].sha256, "%s",
             model_sha256 ? model_sha256 : "");
}

/* Buffers for a head of `classes` x `inputs` (both NULL and a sentence when out of memory). */
static cm_status_t alloc_head(const cache_teacher_t *owner, int classes, int inputs, float **weight,
                              float **bias) {
    *weight = malloc(sizeof(float) * (size_t)classes * (size_t)inputs);
    *bias = malloc(sizeof(float) * (size_t)classes);
    if (*weight && *bias) return CM_OK;
    free(*weight);
    free(*bias);
    *weight = *bias = NULL;
    return cm_fail(CM_ERR_NOMEM, "out of memory keeping the head of teacher '%s'", owner->name);
}

/* Makes the head buffers (from alloc_head) the teacher's, replacing any it had. */
static void adopt_head(cache_teacher_t *owner, float *weight, float *bias, int classes,
                       int inputs) {
    free(owner->head_weight);
    free(owner->head_bias);
    owner->head_weight = weight;
    owner->head_bias = bias;
    owner->head_classes = classes;
    owner->head_inputs = inputs;
}

cm_status_t trainer_cache_set_head(trainer_cache_t *cache, int teacher, const float *weight,
                                   const float *bias, int classes, int inputs) {
    cache_teacher_t *owner = &cache->teacher[teacher];
    float *kept_weight, *kept_bias;
    cm_status_t status = alloc_head(owner, classes, inputs, &kept_weight, &kept_bias);
    if (status != CM_OK) return status;
    memcpy(kept_weight, weight, sizeof(float) * (size_t)classes * (size_t)inputs);
    memcpy(kept_bias, bias, sizeof(float) * (size_t)classes);
    adopt_head(owner, kept_weight, kept_bias, classes, inputs);
    return CM_OK;
}

int trainer_cache_head(const trainer_cache_t *cache, int teacher, const float **weight,
                       const float **bias, int *classes, int *inputs) {
    const cache_teacher_t *owner = &cache->teacher[teacher];
    if (!owner->head_weight) return 0;
    *weight = owner->head_weight;
    *bias = owner->head_bias;
    *classes = owner->head_classes;
    *inputs = owner->head_inputs;
    return 1;
}

/* ---------------------------------------------------------------- the spill file */

static cm_status_t open_spill_file(trainer_cache_t *cache) {
    if (cache->spill_fd >= 0) return CM_OK;
    char path[1100];
    snprintf(path, sizeof path, "%s/committee-cache-XXXXXX", cache->spill_dir);
    int fd = mkstemp(path);
    if (fd < 0)
        return cm_fail(CM_ERR_IO, "cannot create the teacher-cache spill file in %s: %s",
                       cache->spill_dir, strerror(errno));
    unlink(path); /* the open descriptor keeps it; it vanishes with the process */
    cache->spill_fd = fd;
    cache->spill_size = 0;
    return CM_OK;
}

/* Reserves `bytes` more of the spill file for `entry` (its file_offset is set). */
static cm_status_t grow_spill_file(trainer_cache_t *cache, cache_output_t *entry, size_t bytes) {
    cm_status_t status = open_spill_file(cache);
    if (status != CM_OK) return status;
    int error = posix_fallocate(cache->spill_fd, cache->spill_size, (off_t)bytes);
    if (error)
        return cm_fail(CM_ERR_IO,
                       "cannot reserve %.2f MB for the teacher-cache spill file in %s: %s",
                       (double)bytes / 1048576.0, cache->spill_dir, strerror(error));
    entry->file_offset = cache->spill_size;
    cache->spill_size += (off_t)bytes;
    void *mapped = mmap(entry->base + entry->hot_bytes, bytes, PROT_READ, MAP_SHARED | MAP_FIXED,
                        cache->spill_fd, entry->file_offset);
    if (mapped == MAP_FAILED)
        return cm_fail(CM_ERR_IO, "cannot map the teacher-cache spill file in %s: %s",
                       cache->spill_dir, strerror(errno));
    entry->spilled = 1;
    return CM_OK;
}

static cm_status_t spill_write(const trainer_cache_t *cache, const uint8_t *bytes, size_t size,
                               off_t offset) {
    while (size > 0) {
        ssize_t wrote = pwrite(cache->spill_fd, bytes, size, offset);
        if (wrote < 0 && errno == EINTR) continue;
        if (wrote <= 0)
            return cm_fail(CM_ERR_IO, "cannot write the teacher-cache spill file in %s: %s",
                           cache->spill_dir, wrote < 0 ? strerror(errno) : "short write");
        bytes += wrote;
        size -= (size_t)wrote;
        offset += wrote;
    }
    return CM_OK;
}

static cm_status_t spill_read(const trainer_cache_t *cache, uint8_t *bytes, size_t size,
                              off_t offset) {
    while (size > 0) {
        ssize_t got = pread(cache->spill_fd, bytes, size, offset);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0)
            return cm_fail(CM_ERR_IO, "cannot read the teacher-cache spill file in %s: %s",
                           cache->spill_dir, got < 0 ? strerror(errno) : "end of file");
        bytes += got;
        size -= (size_t)got;
        offset += got;
    }
    return CM_OK;
}

/* ---------------------------------------------------------------- the ask-again pool */

static int pool_home(const cache_output_t *entry, int32_t id) {
    return (int)(((uint32_t)id * 2654435761u) & (uint32_t)(entry->pool_table - 1));
}

/* The table index holding `id`, or -1. */
static int pool_find(const cache_output_t *entry, int32_t id) {
    for (int index = pool_home(entry, id);; index = (index + 1) & (entry->pool_table - 1)) {
        if (entry->pool_keys[index] == id) return index;
        if (entry->pool_keys[index] < 0) return -1;
    }
}

static void pool_remove(cache_output_t *entry, int32_t id) {
    int hole = pool_find(entry, id), mask = entry->pool_table - 1;
    if (hole < 0) return;
    entry->pool_free[entry->pool_free_count++] = entry->pool_slot[hole];
    entry->pool_keys[hole] = -1;
    for (int index = (hole + 1) & mask; entry->pool_keys[index] >= 0; index = (index + 1) & mask) {
        int home = pool_home(entry, entry->pool_keys[index]);
        /* The entry may move into the hole unless its home lies cyclically in (hole, index]. */
        int stays = hole <= index ? (home > hole && home <= index) : (home > hole || home <= index);
        if (stays) continue;
        entry->pool_keys[hole] = entry->pool_keys[index];
        entry->pool_slot[hole] = entry->pool_slot[index];
        entry->pool_keys[index] = -1;
        hole = index;
    }
}

/* The pool row for `id`, taking a free one if it has none; NULL when the pool is full. */
static uint8_t *pool_take(cache_output_t *entry, int32_t id) {
    int index = pool_find(entry, id);
    if (index < 0) {
        if (entry->pool_free_count == 0) return NULL;
        index = pool_home(entry, id);
        while (entry->pool_keys[index] >= 0) index = (index + 1) & (entry->pool_table - 1);
        entry->pool_keys[index] = id;
        entry->pool_slot[index] = entry->pool_free[--entry->pool_free_count];
    }
    return entry->pool_values + (size_t)entry->pool_slot[index] * entry->row_bytes;
}

static cm_status_t make_pool(cache_output_t *entry, int rows) {
    entry->pool_rows = rows;
    entry->pool_table = 2;
    while (entry->pool_table < 2 * rows) entry->pool_table *= 2;
    entry->pool_keys = malloc(sizeof(int32_t) * (size_t)entry->pool_table);
    entry->pool_slot = malloc(sizeof(int32_t) * (size_t)entry->pool_table);
    entry->pool_free = malloc(sizeof(int32_t) * (size_t)rows);
    entry->pool_values = malloc(entry->row_bytes * (size_t)rows);
    if (!entry->pool_keys || !entry->pool_slot || !entry->pool_free || !entry->pool_values)
        return cm_fail(CM_ERR_NOMEM, "out of memory for the teacher cache's rows in flight");
    for (int index = 0; index < entry->pool_table; index++) entry->pool_keys[index] = -1;
    for (int row = 0; row < rows; row++) entry->pool_free[row] = rows - 1 - row;
    entry->pool_free_count = rows;
    return CM_OK;
}

/* ---------------------------------------------------------------- outputs */

static size_t pool_bytes(const cache_output_t *entry) {
    return entry->pool_rows
               ? entry->row_bytes * (size_t)entry->pool_rows +
                     sizeof(int32_t) * (2 * (size_t)entry->pool_table + (size_t)entry->pool_rows)
               : 0;
}

static cm_status_t add_output(trainer_cache_t *cache, int teacher, int output, int width,
                              cm_dtype_t dtype) {
    cache_teacher_t *owner = &cache->teacher[teacher];
    cache_output_t *entry = &owner->output[output];
    if (entry->width) {
        if (entry->width != width)
            return cm_fail(CM_ERR_SHAPE,
                           "teacher '%s' output '%s' has width %d, the cache holds %d", owner->name,
                           output_names[output], width, entry->width);
        return CM_OK;
    }
    if (width <= 0)
        return cm_fail(CM_ERR_SHAPE, "teacher '%s' output '%s' has width %d", owner->name,
                       output_names[output], width);
    size_t examples = (size_t)cache->examples, page = page_size();
    entry->dtype = dtype;
    entry->row_bytes = (size_t)width * cm_dtype_size(dtype);
    size_t region = examples * entry->row_bytes;
    entry->map_bytes = round_up(region ? region : 1, page);
    size_t mask = examples ? examples : 1;
    /* A load of a saved cache streams through buffers of at least one row (in the file's
     * dtype, F32 at most, plus its mask byte and a row of floats to convert it): under a bound,
     * that much of it stays free for them. */
    size_t reserve = 2 * sizeof(float) * (size_t)width + 1;
    if (cache->budget_left != SIZE_MAX && reserve > cache->load_reserve) {
        size_t taken = reserve - cache->load_reserve;
        if (taken > cache->budget_left) taken = cache->budget_left;
        cache->budget_left -= taken;
        cache->load_reserve += taken;
    }
    size_t available = cache->budget_left > mask ? cache->budget_left - mask : 0;
    entry->hot_bytes = region;
    int pool_rows = 0;
    if (region > available) {
        const char *type = cm_dtype_name(dtype);
        switch (cache->config.spill) {
        case TRAINER_SPILL_FILE:
            entry->hot_bytes = available / page * page;
            break;
        case TRAINER_SPILL_ASK_AGAIN: {
            pool_rows = cache->config.in_flight > 0 ? cache->config.in_flight : 1;
            size_t table = 2;
            while (table < 2 * (size_t)pool_rows) table *= 2;
            size_t pool = (entry->row_bytes + sizeof(int32_t)) * (size_t)pool_rows +
                          2 * sizeof(int32_t) * table; /* as pool_bytes counts it */
            size_t left = available > pool ? available - pool : 0;
            entry->hot_bytes = left / entry->row_bytes * entry->row_bytes;
            break;
        }
        default:
            if (cache->config.no_teachers)
                return cm_fail(CM_ERR_NOMEM,
                               "the teacher cache needs %.2f MB for '%s' of teacher '%s' (%d x %d "
                               "%s) and has %.2f MB of --cache-memory left; give --cache-spill "
                               "DIR to spill the rest to a file in DIR",
                               (double)(region + mask) / 1048576.0, output_names[output],
                               owner->name, cache->examples, width, type,
                               (double)(cache->budget_left) / 1048576.0);
            return cm_fail(CM_ERR_NOMEM,
                           "the teacher cache needs %.2f MB for '%s' of teacher '%s' (%d x %d %s) "
                           "and has %.2f MB of --cache-memory left; give --cache-spill DIR to "
                           "spill the rest to a file in DIR, or --cache-spill ask-again to ask "
                           "the teachers again for what does not fit",
                           (double)(region + mask) / 1048576.0, output_names[output], owner->name,
                           cache->examples, width, type, (double)(cache->budget_left) / 1048576.0);
        }
    }
    entry->base = mmap(NULL, entry->map_bytes, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    entry->has = calloc(mask, 1);
    if (entry->base == MAP_FAILED || !entry->has) {
        if (entry->base == MAP_FAILED) entry->base = NULL;
        free_output(entry);
        return cm_fail(CM_ERR_NOMEM, "out of memory caching '%s' of teacher '%s' (%d x %d %s)",
                       output_names[output], owner->name, cache->examples, width,
                       cm_dtype_name(dtype));
    }
    cm_status_t status = CM_OK;
    if (entry->hot_bytes < region && cache->config.spill == TRAINER_SPILL_FILE)
        status = grow_spill_file(cache, entry, entry->map_bytes - entry->hot_bytes);
    else if (pool_rows)
        status = make_pool(entry, pool_rows);
    if (status == CM_OK && cache->scratch_bytes < entry->row_bytes) {
        uint8_t *grown = realloc(cache->scratch, entry->row_bytes);
        if (!grown)
            status = cm_fail(CM_ERR_NOMEM, "out of memory for the teacher cache");
        else {
            cache->scratch = grown;
            cache->scratch_bytes = entry->row_bytes;
        }
    }
    if (status != CM_OK) {
        free_output(entry);
        return status;
    }
    entry->width = width;
    size_t used = entry->hot_bytes + mask + pool_bytes(entry);
    if (cache->budget_left != SIZE_MAX)
        cache->budget_left = cache->budget_left > used ? cache->budget_left - used : 0;
    return CM_OK;
}

cm_status_t trainer_cache_add_output(trainer_cache_t *cache, int teacher, int output, int width) {
    return add_output(cache, teacher, output, width, cache->config.dtype);
}

void trainer_cache_set_tokens(trainer_cache_t *cache, int teacher, int tokens) {
    cache->teacher[teacher].tokens = tokens;
}

int trainer_cache_tokens(const trainer_cache_t *cache, int teacher) {
    return cache->teacher[teacher].tokens > 0 ? cache->teacher[teacher].tokens : 1;
}

int trainer_cache_width(const trainer_cache_t *cache, int teacher, int output) {
    return cache->teacher[teacher].output[output].width;
}

static int is_transient(const cache_output_t *entry, int id) {
    return entry->pool_rows && ((size_t)id + 1) * entry->row_bytes > entry->hot_bytes;
}

int trainer_cache_transient(const trainer_cache_t *cache, int teacher, int output, int id) {
    return is_transient(&cache->teacher[teacher].output[output], id);
}

float *trainer_cache_row(trainer_cache_t *cache, int teacher, int output, int id) {
    cache_output_t *entry = &cache->teacher[teacher].output[output];
    size_t region = (size_t)cache->examples * entry->row_bytes;
    if (!entry->width || entry->dtype != CM_DTYPE_F32 || entry->hot_bytes < region) return NULL;
    return (float *)(void *)(entry->base + (size_t)id * entry->row_bytes);
}

/* Stores the `rows` rows from `id` on (none of them transient), already in the storage dtype:
 * what lies below hot_bytes by memcpy, the rest with one pwrite. */
static cm_status_t put_range(trainer_cache_t *cache, cache_output_t *entry, int id, int rows,
                             const uint8_t *bytes) {
    size_t offset = (size_t)id * entry->row_bytes, size = (size_t)rows * entry->row_bytes;
    size_t in_memory = offset < entry->hot_bytes ? entry->hot_bytes - offset : 0;
    if (in_memory > size) in_memory = size;
    memcpy(entry->base + offset, bytes, in_memory);
    if (in_memory < size) {
        cm_status_t status =
            spill_write(cache, bytes + in_memory, size - in_memory,
                        entry->file_offset + (off_t)(offset + in_memory - entry->hot_bytes));
        if (status != CM_OK) return status;
    }
    memset(entry->has + id, 1, (size_t)rows);
    return CM_OK;
}

/* Stores a row already in the storage dtype. */
static cm_status_t put_bytes(trainer_cache_t *cache, cache_output_t *entry, int id,
                             const uint8_t *bytes) {
    if (!is_transient(entry, id)) return put_range(cache, entry, id, 1, bytes);
    uint8_t *row = pool_take(entry, id);
    if (!row)
        return cm_fail(CM_ERR_INTERNAL, "the teacher cache's %d rows in flight are all taken",
                       entry->pool_rows);
    memcpy(row, bytes, entry->row_bytes);
    entry->has[id] = 1;
    return CM_OK;
}

/* Copies a row in the storage dtype into bytes[row_bytes]. */
static cm_status_t get_bytes(const trainer_cache_t *cache, const cache_output_t *entry, int id,
                             uint8_t *bytes) {
    size_t offset = (size_t)id * entry->row_bytes, size = entry->row_bytes;
    if (is_transient(entry, id)) {
        int index = pool_find(entry, id);
        if (index < 0) {
            memset(bytes, 0, size);
            return CM_OK;
        }
        memcpy(bytes, entry->pool_values + (size_t)entry->pool_slot[index] * size, size);
        return CM_OK;
    }
    size_t in_memory = offset < entry->hot_bytes ? entry->hot_bytes - offset : 0;
    if (in_memory > size || cache->config.map_reads) in_memory = size; /* the mapping covers it */
    memcpy(bytes, entry->base + offset, in_memory);
    if (in_memory == size) return CM_OK;
    return spill_read(cache, bytes + in_memory, size - in_memory,
                      entry->file_offset + (off_t)(offset + in_memory - entry->hot_bytes));
}

cm_status_t trainer_cache_put(trainer_cache_t *cache, int teacher, int output, int id,
                              const float *values) {
    cache_output_t *entry = &cache->teacher[teacher].output[output];
    if (!entry->width) return CM_OK;
    if (entry->dtype == CM_DTYPE_F32) return put_bytes(cache, entry, id, (const uint8_t *)values);
    if (entry->dtype == CM_DTYPE_F16)
        cm_wire_f32_to_f16(cache->scratch, values, (size_t)entry->width);
    else
        cm_wire_f32_to_bf16(cache->scratch, values, (size_t)entry->width);
    return put_bytes(cache, entry, id, cache->scratch);
}

/* One row of F32, F16 or BF16 bytes (a saved file's or the cache's storage), widened to floats. */
static void widen_row(float *values, const uint8_t *bytes, cm_dtype_t dtype, int width) {
    if (dtype == CM_DTYPE_F32)
        memcpy(values, bytes, sizeof(float) * (size_t)width);
    else if (dtype == CM_DTYPE_F16)
        cm_wire_f16_to_f32(values, bytes, (size_t)width);
    else
        cm_wire_bf16_to_f32(values, bytes, (size_t)width);
}

cm_status_t trainer_cache_get(const trainer_cache_t *cache, int teacher, int output, int id,
                              float *values) {
    const cache_output_t *entry = &cache->teacher[teacher].output[output];
    if (!entry->width) return CM_OK;
    if (entry->dtype == CM_DTYPE_F32) return get_bytes(cache, entry, id, (uint8_t *)values);
    cm_status_t status = get_bytes(cache, entry, id, cache->scratch);
    if (status == CM_OK) widen_row(values, cache->scratch, entry->dtype, entry->width);
    return status;
}

int trainer_cache_has(const trainer_cache_t *cache, int teacher, int output, int id) {
    const cache_output_t *entry = &cache->teacher[teacher].output[output];
    return entry->has ? entry->has[id] : 0;
}

void trainer_cache_set_has(trainer_cache_t *cache, int teacher, int output, int id, int has) {
    cache_output_t *entry = &cache->teacher[teacher].output[output];
    if (!entry->has) return;
    if (is_transient(entry, id)) {
        if (!has) pool_remove(entry, id);
        has = has && pool_find(entry, id) >= 0; /* present only with its values */
    }
    entry->has[id] = (uint8_t)(has != 0);
}

long trainer_cache_present(const trainer_cache_t *cache, int teacher, int output) {
    const cache_output_t *entry = &cache->teacher[teacher].output[output];
    long present = 0;
    if (entry->has)
        for (int id = 0; id < cache->examples; id++) present += entry->has[id];
    return present;
}

size_t trainer_cache_resident_bytes(const trainer_cache_t *cache) {
    size_t bytes = 0;
    for (int teacher = 0; teacher < cache->teachers; teacher++)
        for (int output = 0; output < TRAINER_OUTPUT_COUNT; output++) {
            const cache_output_t *entry = &cache->teacher[teacher].output[output];
            if (entry->width)
                bytes += entry->hot_bytes + (size_t)cache->examples + pool_bytes(entry);
        }
    return bytes;
}

size_t trainer_cache_spilled_bytes(const trainer_cache_t *cache) {
    return (size_t)cache->spill_size;
}

size_t trainer_cache_peak_bytes(const trainer_cache_t *cache) {
    return trainer_cache_resident_bytes(cache) + cache->load_peak;
}

cm_status_t trainer_cache_merge(trainer_cache_t *cache, const trainer_cache_t *source) {
    float *row = NULL;
    size_t row_floats = 0;
    cm_status_t status = CM_OK;
    for (int teacher = 0; teacher < cache->teachers && teacher < source->teachers; teacher++)
        for (int output = 0; output < TRAINER_OUTPUT_COUNT && status == CM_OK; output++) {
            const cache_output_t *target = &cache->teacher[teacher].output[output];
            const cache_output_t *from = &source->teacher[teacher].output[output];
            if (!target->width || target->width != from->width) continue;
            if (row_floats < (size_t)target->width) {
                free(row);
                row_floats = (size_t)target->width;
                if (!(row = malloc(sizeof(float) * row_floats)))
                    return cm_fail(CM_ERR_NOMEM, "out of memory merging teacher outputs");
            }
            for (int id = 0; id < cache->examples && id < source->examples; id++) {
                if (!from->has[id] || is_transient(target, id)) continue;
                status = trainer_cache_get(source, teacher, output, id, row);
                if (status == CM_OK) status = trainer_cache_put(cache, teacher, output, id, row);
                if (status != CM_OK) break;
            }
        }
    free(row);
    return status;
}

int trainer_cache_teachers(const trainer_cache_t *cache) { return cache->teachers; }
int trainer_cache_examples(const trainer_cache_t *cache) { return cache->examples; }
const char *trainer_cache_teacher_name(const trainer_cache_t *cache, int teacher) {
    return cache->teacher[teacher].name;
}
const char *trainer_cache_teacher_sha256(const trainer_cache_t *cache, int teacher) {
    return cache->teacher[teacher].sha256;
}

cm_status_t trainer_cache_save(const trainer_cache_t *cache, const char *path,
                               const char *fingerprint) {
    enum { MAX_ENTRIES = 2 * MAX_CACHE_TEACHERS * (TRAINER_OUTPUT_COUNT + 1) };
    cm_tensor_t tensors[MAX_ENTRIES];
    uint8_t *masks[MAX_ENTRIES] = {0}; /* ask-again: the masks without the rows in flight */
    int count = 0;
    cm_status_t status = CM_OK;
    for (int teacher = 0; teacher < cache->teachers; teacher++)
        for (int output = 0; output < TRAINER_OUTPUT_COUNT; output++) {
            const cache_teacher_t *owner = &cache->teacher[teacher];
            const cache_output_t *entry = &owner->output[output];
            if (!entry->width) continue;
            cm_tensor_t *values = &tensors[count++];
            memset(values, 0, sizeof *values);
            snprintf(values->name, sizeof values->name, "%s/%s", owner->name, output_names[output]);
            values->dtype = entry->dtype;
            values->ndim = 2;
            values->shape[0] = cache->examples;
            values->shape[1] = entry->width;
            values->data = entry->base; /* the spilled rows are read through the mapping */
            uint8_t *mask = entry->has;
            if (entry->pool_rows) {
                if (!(mask = masks[count] = malloc((size_t)cache->examples + 1))) {
                    status = cm_fail(CM_ERR_NOMEM, "out of memory saving the teacher cache");
                    goto done;
                }
                for (int id = 0; id < cache->examples; id++)
                    mask[id] = is_transient(entry, id) ? 0 : entry->has[id];
            }
            cm_tensor_t *has = &tensors[count++];
            memset(has, 0, sizeof *has);
            snprintf(has->name, sizeof has->name, "%s/%s.has", owner->name, output_names[output]);
            has->dtype = CM_DTYPE_U8;
            has->ndim = 1;
            has->shape[0] = cache->examples;
            has->data = mask;
        }
    for (int teacher = 0; teacher < cache->teachers; teacher++) {
        const cache_teacher_t *owner = &cache->teacher[teacher];
        if (!owner->head_weight) continue;
        for (int part = 0; part < 2; part++) {
            cm_tensor_t *tensor = &tensors[count++];
            memset(tensor, 0, sizeof *tensor);
            snprintf(tensor->name, sizeof tensor->name, "%s/%s", owner->name,
                     part ? "head.bias" : "head.weight");
            tensor->dtype = CM_DTYPE_F32;
            tensor->ndim = part ? 1 : 2;
            tensor->shape[0] = owner->head_classes;
            tensor->shape[1] = part ? 0 : owner->head_inputs;
            tensor->data = part ? owner->head_bias : owner->head_weight;
        }
    }
    char keys[3 * MAX_CACHE_TEACHERS][32], teachers_text[16], tokens_text[MAX_CACHE_TEACHERS][16];
    const char *metadata[2 * (3 + 3 * MAX_CACHE_TEACHERS)];
    int pairs = 0;
    metadata[2 * pairs] = "kind";
    metadata[2 * pairs++ + 1] = "committee-teacher-cache-1";
    metadata[2 * pairs] = "fingerprint";
    metadata[2 * pairs++ + 1] = fingerprint;
    snprintf(teachers_text, sizeof teachers_text, "%d", cache->teachers);
    metadata[2 * pairs] = "teachers";
    metadata[2 * pairs++ + 1] = teachers_text;
    for (int teacher = 0; teacher < cache->teachers; teacher++) {
        snprintf(keys[3 * teacher], sizeof keys[0], "teacher.%d.name", teacher);
        snprintf(keys[3 * teacher + 1], sizeof keys[0], "teacher.%d.sha256", teacher);
        snprintf(keys[3 * teacher + 2], sizeof keys[0], "teacher.%d.tokens", teacher);
        snprintf(tokens_text[teacher], sizeof tokens_text[0], "%d",
                 trainer_cache_tokens(cache, teacher));
        metadata[2 * pairs] = keys[3 * teacher];
        metadata[2 * pairs++ + 1] = cache->teacher[teacher].name;
        metadata[2 * pairs] = keys[3 * teacher + 1];
        metadata[2 * pairs++ + 1] = cache->teacher[teacher].sha256;
        metadata[2 * pairs] = keys[3 * teacher + 2];
        metadata[2 * pairs++ + 1] = tokens_text[teacher];
    }
    status = cm_safetensors_write(path, tensors, count, metadata, pairs);
done:
    for (int index = 0; index < MAX_ENTRIES; index++) free(masks[index]);
    /* The save read the spilled rows through the mapping: give those pages back. */
    for (int teacher = 0; teacher < cache->teachers; teacher++)
        for (int output = 0; output < TRAINER_OUTPUT_COUNT; output++) {
            const cache_output_t *entry = &cache->teacher[teacher].output[output];
            if (entry->spilled && !cache->config.map_reads)
                madvise(entry->base + entry->hot_bytes, entry->map_bytes - entry->hot_bytes,
                        MADV_DONTNEED);
        }
    return status;
}

/* ---------------------------------------------------------------- loading a saved cache */

/* Whether a saved tensor is a lent head's weight or bias ("NAME/head.weight", ".bias"). */
static int is_head_tensor(const char *name) {
    const char *slash = strrchr(name, '/');
    return slash && (!strcmp(slash, "/head.weight") || !strcmp(slash, "/head.bias"));
}

/* Opens a saved cache (its header only) and checks its kind, fingerprint and shapes. */
static cm_status_t open_saved(const char *path, const char *fingerprint, cm_safetensors_t **out,
                              int *teachers_out, int *examples_out) {
    cm_safetensors_t *file = NULL;
    cm_status_t status = cm_safetensors_open(&file, path);
    if (status != CM_OK) return status;
    const char *kind = cm_safetensors_metadata(file, "kind");
    const char *stored_fingerprint = cm_safetensors_metadata(file, "fingerprint");
    const char *teachers_text = cm_safetensors_metadata(file, "teachers");
    int teachers = teachers_text ? atoi(teachers_text) : -1;
    if (!kind || strcmp(kind, "committee-teacher-cache-1") != 0 || !stored_fingerprint ||
        teachers < 0 || teachers > MAX_CACHE_TEACHERS) {
        status = cm_fail(CM_ERR_FORMAT, "%s is not a committee teacher-output record", path);
        goto fail;
    }
    if (fingerprint && strcmp(fingerprint, stored_fingerprint) != 0) {
        status = cm_fail(CM_ERR_MISMATCH,
                         "%s was recorded on dataset %s, but the training data has fingerprint %s",
                         path, stored_fingerprint, fingerprint);
        goto fail;
    }
    int examples = -1;
    for (int index = 0; index < cm_safetensors_count(file); index++) {
        const cm_tensor_t *tensor = cm_safetensors_tensor(file, index);
        if (is_head_tensor(tensor->name)) continue; /* [classes][inputs], not per example */
        if (examples < 0) examples = (int)tensor->shape[0];
        if (tensor->ndim < 1 || tensor->shape[0] != examples || tensor->shape[0] > INT32_MAX) {
            status = cm_fail(CM_ERR_FORMAT, "%s: tensor '%s' does not cover %d examples", path,
                             tensor->name, examples);
            goto fail;
        }
    }
    for (int teacher = 0; teacher < teachers; teacher++) {
        char key[32];
        snprintf(key, sizeof key, "teacher.%d.name", teacher);
        if (!cm_safetensors_metadata(file, key)) {
            status =
                cm_fail(CM_ERR_FORMAT, "%s: metadata lacks the name of teacher %d", path, teacher);
            goto fail;
        }
    }
    *out = file;
    *teachers_out = teachers;
    *examples_out = examples < 0 ? 0 : examples;
    return CM_OK;
fail:
    cm_safetensors_free(&file);
    return status;
}

static const char *saved_teacher(const cm_safetensors_t *file, int teacher, const char *what) {
    char key[32];
    snprintf(key, sizeof key, "teacher.%d.%s", teacher, what);
    return cm_safetensors_metadata(file, key);
}

/* The values and mask of `output` of teacher `name` in the file (both NULL: not saved). */
static cm_status_t find_output(const cm_safetensors_t *file, const char *path, const char *name,
                               int output, const cm_tensor_t **values_out,
                               const cm_tensor_t **has_out) {
    char tensor_name[160];
    snprintf(tensor_name, sizeof tensor_name, "%s/%s", name, output_names[output]);
    const cm_tensor_t *values = cm_safetensors_find(file, tensor_name);
    snprintf(tensor_name, sizeof tensor_name, "%s/%s.has", name, output_names[output]);
    const cm_tensor_t *has = cm_safetensors_find(file, tensor_name);
    *values_out = *has_out = NULL;
    if (!values && !has) return CM_OK;
    if (!values || !has ||
        (values->dtype != CM_DTYPE_F32 && values->dtype != CM_DTYPE_F16 &&
         values->dtype != CM_DTYPE_BF16) ||
        values->ndim != 2 || values->shape[1] < 1 || values->shape[1] > INT32_MAX ||
        has->dtype != CM_DTYPE_U8 || has->ndim != 1)
        return cm_fail(CM_ERR_FORMAT, "%s: output '%s' of teacher '%s' is malformed", path,
                       output_names[output], name);
    *values_out = values;
    *has_out = has;
    return CM_OK;
}

enum { LOAD_CHUNK_MAX = 1 << 20 };

/*
 * Streams the rows the file holds for `output` of `teacher` (values and mask, same width)
 * into the cache, a chunk of rows at a time: the buffers take what the bound leaves (at least
 * one row, at most LOAD_CHUNK_MAX), so at no time is more of the file in anonymous memory.
 * Rows the file lacks are left as they are; transient rows (ask-again beyond the bound) are
 * skipped, so the teachers are asked for them again.  Rows in the storage dtype go in runs
 * (one memcpy / pwrite per run of present rows); others are converted row by row.
 */
static cm_status_t stream_rows(trainer_cache_t *cache, int teacher, int output,
                               const cm_safetensors_t *file, const cm_tensor_t *values,
                               const cm_tensor_t *has) {
    cache_output_t *entry = &cache->teacher[teacher].output[output];
    int width = entry->width, examples = cache->examples;
    cm_dtype_t source = values->dtype;
    int same = source == entry->dtype;
    size_t source_row = (size_t)width * cm_dtype_size(source);
    size_t extra = same ? 0 : sizeof(float) * (size_t)width;
    size_t budget =
        cache->budget_left == SIZE_MAX ? LOAD_CHUNK_MAX : cache->budget_left + cache->load_reserve;
    if (budget > LOAD_CHUNK_MAX) budget = LOAD_CHUNK_MAX;
    size_t rows = budget > extra ? (budget - extra) / (source_row + 1) : 0;
    if (rows < 1) rows = 1;
    if (rows > (size_t)examples) rows = examples ? (size_t)examples : 1;
    uint8_t *mask = malloc(rows), *bytes = malloc(rows * source_row);
    float *floats = same ? NULL : malloc(extra);
    cm_status_t status = CM_OK;
    if (!mask || !bytes || (!same && !floats)) {
        status = cm_fail(CM_ERR_NOMEM, "out of memory loading the teacher cache");
        goto done;
    }
    size_t held = rows * (source_row + 1) + extra;
    if (held > cache->load_peak) cache->load_peak = held;
    cm_safetensors_reader_t value_reader, mask_reader;
    cm_safetensors_reader_start(file, values, &value_reader);
    cm_safetensors_reader_start(file, has, &mask_reader);
    for (int first = 0; first < examples && status == CM_OK;) {
        int count = examples - first < (int)rows ? examples - first : (int)rows;
        if ((status = cm_safetensors_reader_read(&mask_reader, mask, (size_t)count)) != CM_OK ||
            (status = cm_safetensors_reader_read(&value_reader, bytes,
                                                 (size_t)count * source_row)) != CM_OK)
            break;
        for (int row = 0; row < count && status == CM_OK;) {
            int id = first + row;
            if (!mask[row] || is_transient(entry, id)) {
                row++;
                continue;
            }
            if (!same) {
                widen_row(floats, bytes + (size_t)row * source_row, source, width);
                status = trainer_cache_put(cache, teacher, output, id, floats);
                row++;
                continue;
            }
            int run = 1;
            while (row + run < count && mask[row + run] && !is_transient(entry, id + run)) run++;
            status = put_range(cache, entry, id, run, bytes + (size_t)row * source_row);
            row += run;
        }
        first += count;
    }
done:
    free(mask);
    free(bytes);
    free(floats);
    return status;
}

/* The head teacher `teacher` lent, if the file holds one: checked and read into the cache. */
static cm_status_t load_head(trainer_cache_t *cache, int teacher, const cm_safetensors_t *file,
                             const char *path) {
    const char *name = cache->teacher[teacher].name;
    char tensor_name[160];
    snprintf(tensor_name, sizeof tensor_name, "%s/head.weight", name);
    const cm_tensor_t *weight = cm_safetensors_find(file, tensor_name);
    snprintf(tensor_name, sizeof tensor_name, "%s/head.bias", name);
    const cm_tensor_t *bias = cm_safetensors_find(file, tensor_name);
    if (!weight && !bias) return CM_OK;
    if (!weight || !bias || weight->dtype != CM_DTYPE_F32 || bias->dtype != CM_DTYPE_F32 ||
        weight->ndim != 2 || bias->ndim != 1 || weight->shape[0] != bias->shape[0] ||
        weight->shape[0] < 1 || weight->shape[0] > 1 << 20 || weight->shape[1] < 1 ||
        weight->shape[1] > 1 << 20)
        return cm_fail(CM_ERR_FORMAT, "%s: the head of teacher '%s' is malformed", path, name);
    int classes = (int)weight->shape[0], inputs = (int)weight->shape[1];
    float *weight_data, *bias_data;
    cm_status_t status =
        alloc_head(&cache->teacher[teacher], classes, inputs, &weight_data, &bias_data);
    if (status != CM_OK) return status;
    cm_safetensors_reader_t reader;
    cm_safetensors_reader_start(file, weight, &reader);
    status = cm_safetensors_reader_read(&reader, weight_data,
                                        sizeof(float) * (size_t)classes * (size_t)inputs);
    if (status == CM_OK) {
        cm_safetensors_reader_start(file, bias, &reader);
        status = cm_safetensors_reader_read(&reader, bias_data, sizeof(float) * (size_t)classes);
    }
    if (status != CM_OK) {
        free(weight_data);
        free(bias_data);
        return status;
    }
    adopt_head(&cache->teacher[teacher], weight_data, bias_data, classes, inputs);
    return CM_OK;
}

cm_status_t trainer_cache_load(const char *path, const char *fingerprint,
                               const trainer_cache_config_t *config, trainer_cache_t **out) {
    *out = NULL;
    cm_safetensors_t *file = NULL;
    trainer_cache_t *cache = NULL;
    int teachers = 0, examples = 0;
    cm_status_t status = open_saved(path, fingerprint, &file, &teachers, &examples);
    if (status != CM_OK) return status;
    if ((status = trainer_cache_new(teachers, examples, &cache)) != CM_OK) goto fail;
    if (config && (status = trainer_cache_configure(cache, config)) != CM_OK) goto fail;
    /* Every output takes its place under the bound first, then the rows stream in. */
    for (int pass = 0; pass < 2; pass++)
        for (int teacher = 0; teacher < teachers; teacher++) {
            const char *name = saved_teacher(file, teacher, "name");
            if (pass == 0) {
                trainer_cache_set_teacher(cache, teacher, name,
                                          saved_teacher(file, teacher, "sha256"));
                const char *tokens = saved_teacher(file, teacher, "tokens");
                trainer_cache_set_tokens(cache, teacher, tokens ? atoi(tokens) : 1);
                if ((status = load_head(cache, teacher, file, path)) != CM_OK) goto fail;
            }
            for (int output = 0; output < TRAINER_OUTPUT_COUNT; output++) {
                const cm_tensor_t *values, *has;
                if ((status = find_output(file, path, name, output, &values, &has)) != CM_OK)
                    goto fail;
                if (!values) continue;
                status = pass == 0 ? add_output(cache, teacher, output, (int)values->shape[1],
                                                values->dtype)
                                   : stream_rows(cache, teacher, output, file, values, has);
                if (status != CM_OK) goto fail;
            }
        }
    cm_safetensors_free(&file);
    *out = cache;
    return CM_OK;
fail:
    trainer_cache_free(&cache);
    cm_safetensors_free(&file);
    return status;
}

cm_status_t trainer_cache_merge_file(trainer_cache_t *cache, const char *path,
                                     const char *fingerprint, int *same) {
    *same = 0;
    cm_safetensors_t *file = NULL;
    int teachers = 0, examples = 0;
    cm_status_t status = open_saved(path, fingerprint, &file, &teachers, &examples);
    if (status != CM_OK) return status;
    int matches = teachers == cache->teachers && examples == cache->examples;
    for (int teacher = 0; matches && teacher < teachers; teacher++) {
        const char *sha256 = saved_teacher(file, teacher, "sha256");
        matches = !strcmp(saved_teacher(file, teacher, "name"), cache->teacher[teacher].name) &&
                  !strcmp(sha256 ? sha256 : "", cache->teacher[teacher].sha256);
    }
    for (int teacher = 0; matches && teacher < teachers && status == CM_OK; teacher++)
        for (int output = 0; output < TRAINER_OUTPUT_COUNT && status == CM_OK; output++) {
            const cm_tensor_t *values, *has;
            status = find_output(file, path, cache->teacher[teacher].name, output, &values, &has);
            int width = cache->teacher[teacher].output[output].width;
            if (status == CM_OK && values && width && width == values->shape[1])
                status = stream_rows(cache, teacher, output, file, values, has);
        }
    cm_safetensors_free(&file);
    *same = matches;
    return status;
}
