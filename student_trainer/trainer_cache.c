/*
 * trainer_cache: see trainer_cache.h.  File layout (safetensors):
 *   "<teacher>/<output>"      F32 [examples][width]
 *   "<teacher>/<output>.has"  U8  [examples]
 * metadata: "kind" = "committee-teacher-cache-1", "fingerprint", "teachers" (count),
 *   "teacher.<i>.name", "teacher.<i>.sha256".
 */
#include "trainer_cache.h"

#include "cm_alloc.h"
#include "cm_safetensors.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { MAX_CACHE_TEACHERS = 8 };

static const char *const output_names[TRAINER_OUTPUT_COUNT] = {"logits", "hidden", "tokens"};

typedef struct {
    char name[64];
    char sha256[65];
    int tokens; /* rows of "tokens" */
    int width[TRAINER_OUTPUT_COUNT];
    float *values[TRAINER_OUTPUT_COUNT]; /* [examples][width] */
    uint8_t *has[TRAINER_OUTPUT_COUNT];  /* [examples] */
} cache_teacher_t;

struct trainer_cache {
    int teachers;
    int examples;
    cache_teacher_t teacher[MAX_CACHE_TEACHERS];
};

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
    *out = cache;
    return CM_OK;
}

void trainer_cache_free(trainer_cache_t **cache_pointer) {
    trainer_cache_t *cache = *cache_pointer;
    if (!cache) return;
    for (int teacher = 0; teacher < cache->teachers; teacher++)
        for (int output = 0; output < TRAINER_OUTPUT_COUNT; output++) {
            cm_free_aligned(cache->teacher[teacher].values[output]);
            free(cache->teacher[teacher].has[output]);
        }
    free(cache);
    *cache_pointer = NULL;
}

void trainer_cache_set_teacher(trainer_cache_t *cache, int teacher, const char *name,
                               const char *model_sha256) {
    snprintf(cache->teacher[teacher].name, sizeof cache->teacher[teacher].name, "%s", name);
    snprintf(cache->teacher[teacher].sha256, sizeof cache->teacher[teacher].sha256, "%s",
             model_sha256 ? model_sha256 : "");
}

cm_status_t trainer_cache_add_output(trainer_cache_t *cache, int teacher, int output, int width) {
    cache_teacher_t *entry = &cache->teacher[teacher];
    if (entry->values[output]) {
        if (entry->width[output] != width)
            return cm_fail(CM_ERR_SHAPE,
                           "teacher '%s' output '%s' has width %d, the cache holds %d", entry->name,
                           output_names[output], width, entry->width[output]);
        return CM_OK;
    }
    entry->values[output] = cm_alloc_floats((size_t)cache->examples * (size_t)width);
    entry->has[output] = calloc((size_t)cache->examples ? (size_t)cache->examples : 1, 1);
    if (!entry->values[output] || !entry->has[output])
        return cm_fail(CM_ERR_NOMEM, "out of memory caching '%s' of teacher '%s' (%d x %d floats)",
                       output_names[output], entry->name, cache->examples, width);
    entry->width[output] = width;
    return CM_OK;
}

void trainer_cache_set_tokens(trainer_cache_t *cache, int teacher, int tokens) {
    cache->teacher[teacher].tokens = tokens;
}

int trainer_cache_tokens(const trainer_cache_t *cache, int teacher) {
    return cache->teacher[teacher].tokens > 0 ? cache->teacher[teacher].tokens : 1;
}

int trainer_cache_width(const trainer_cache_t *cache, int teacher, int output) {
    return cache->teacher[teacher].width[output];
}

float *trainer_cache_row(trainer_cache_t *cache, int teacher, int output, int id) {
    cache_teacher_t *entry = &cache->teacher[teacher];
    if (!entry->values[output]) return NULL;
    return entry->values[output] + (size_t)id * (size_t)entry->width[output];
}

int trainer_cache_has(const trainer_cache_t *cache, int teacher, int output, int id) {
    const cache_teacher_t *entry = &cache->teacher[teacher];
    return entry->has[output] ? entry->has[output][id] : 0;
}

void trainer_cache_set_has(trainer_cache_t *cache, int teacher, int output, int id, int has) {
    cache_teacher_t *entry = &cache->teacher[teacher];
    if (entry->has[output]) entry->has[output][id] = (uint8_t)(has != 0);
}

long trainer_cache_present(const trainer_cache_t *cache, int teacher, int output) {
    const cache_teacher_t *entry = &cache->teacher[teacher];
    long present = 0;
    if (entry->has[output])
        for (int id = 0; id < cache->examples; id++) present += entry->has[output][id];
    return present;
}

void trainer_cache_merge(trainer_cache_t *cache, const trainer_cache_t *source) {
    for (int teacher = 0; teacher < cache->teachers && teacher < source->teachers; teacher++)
        for (int output = 0; output < TRAINER_OUTPUT_COUNT; output++) {
            cache_teacher_t *target = &cache->teacher[teacher];
            const cache_teacher_t *from = &source->teacher[teacher];
            if (!target->values[output] || !from->values[output] ||
                target->width[output] != from->width[output])
                continue;
            size_t width = (size_t)target->width[output];
            for (int id = 0; id < cache->examples && id < source->examples; id++)
                if (from->has[output][id]) {
                    memcpy(target->values[output] + (size_t)id * width,
                           from->values[output] + (size_t)id * width, sizeof(float) * width);
                    target->has[output][id] = 1;
                }
        }
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
    enum { MAX_ENTRIES = 2 * MAX_CACHE_TEACHERS * TRAINER_OUTPUT_COUNT };
    cm_tensor_t tensors[MAX_ENTRIES];
    int count = 0;
    for (int teacher = 0; teacher < cache->teachers; teacher++)
        for (int output = 0; output < TRAINER_OUTPUT_COUNT; output++) {
            const cache_teacher_t *entry = &cache->teacher[teacher];
            if (!entry->values[output]) continue;
            cm_tensor_t *values = &tensors[count++];
            memset(values, 0, sizeof *values);
            snprintf(values->name, sizeof values->name, "%s/%s", entry->name, output_names[output]);
            values->dtype = CM_DTYPE_F32;
            values->ndim = 2;
            values->shape[0] = cache->examples;
            values->shape[1] = entry->width[output];
            values->data = entry->values[output];
            cm_tensor_t *has = &tensors[count++];
            memset(has, 0, sizeof *has);
            snprintf(has->name, sizeof has->name, "%s/%s.has", entry->name, output_names[output]);
            has->dtype = CM_DTYPE_U8;
            has->ndim = 1;
            has->shape[0] = cache->examples;
            has->data = entry->has[output];
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
    return cm_safetensors_write(path, tensors, count, metadata, pairs);
}

cm_status_t trainer_cache_load(const char *path, const char *fingerprint, trainer_cache_t **out) {
    *out = NULL;
    cm_safetensors_t *file = NULL;
    trainer_cache_t *cache = NULL;
    cm_status_t status = cm_safetensors_read(&file, path);
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
        if (examples < 0) examples = (int)tensor->shape[0];
        if (tensor->ndim < 1 || tensor->shape[0] != examples) {
            status = cm_fail(CM_ERR_FORMAT, "%s: tensor '%s' does not cover %d examples", path,
                             tensor->name, examples);
            goto fail;
        }
    }
    status = trainer_cache_new(teachers, examples < 0 ? 0 : examples, &cache);
    if (status != CM_OK) goto fail;
    for (int teacher = 0; teacher < teachers; teacher++) {
        char key[32];
        snprintf(key, sizeof key, "teacher.%d.name", teacher);
        const char *name = cm_safetensors_metadata(file, key);
        snprintf(key, sizeof key, "teacher.%d.sha256", teacher);
        const char *sha256 = cm_safetensors_metadata(file, key);
        if (!name) {
            status =
                cm_fail(CM_ERR_FORMAT, "%s: metadata lacks the name of teacher %d", path, teacher);
            goto fail;
        }
        trainer_cache_set_teacher(cache, teacher, name, sha256);
        snprintf(key, sizeof key, "teacher.%d.tokens", teacher);
        const char *tokens = cm_safetensors_metadata(file, key);
        trainer_cache_set_tokens(cache, teacher, tokens ? atoi(tokens) : 1);
        for (int output = 0; output < TRAINER_OUTPUT_COUNT; output++) {
            char tensor_name[160];
            snprintf(tensor_name, sizeof tensor_name, "%s/%s", name, output_names[output]);
            const cm_tensor_t *values = cm_safetensors_find(file, tensor_name);
            snprintf(tensor_name, sizeof tensor_name, "%s/%s.has", name, output_names[output]);
            const cm_tensor_t *has = cm_safetensors_find(file, tensor_name);
            if (!values && !has) continue;
            if (!values || !has || values->dtype != CM_DTYPE_F32 || values->ndim != 2 ||
                has->dtype != CM_DTYPE_U8 || has->ndim != 1) {
                status = cm_fail(CM_ERR_FORMAT, "%s: output '%s' of teacher '%s' is malformed",
                                 path, output_names[output], name);
                goto fail;
            }
            status = trainer_cache_add_output(cache, teacher, output, (int)values->shape[1]);
            if (status != CM_OK) goto fail;
            memcpy(cache->teacher[teacher].values[output], values->data,
                   sizeof(float) * (size_t)cache->examples * (size_t)values->shape[1]);
            memcpy(cache->teacher[teacher].has[output], has->data, (size_t)cache->examples);
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
