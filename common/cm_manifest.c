/*
 * cm_manifest: see cm_manifest.h.  jansson parses the text (rejecting
 * duplicate keys), then every field is checked against the format; the
 * canonical text is produced by one small serializer here rather than by
 * jansson, whose number formatting is not a rule a peer in another
 * language could follow.
 */
#include "cm_manifest.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *cm_view_kind_name(cm_view_kind_t kind) {
    return kind == CM_VIEW_DENSE ? "dense" : kind == CM_VIEW_CATEGORICAL ? "categorical" : "tokens";
}

const char *cm_task_name(cm_task_t task) {
    return task == CM_TASK_CLASSIFICATION ? "classification" : "regression";
}

/* ---- Canonical JSON ---- */

typedef struct {
    char *text;
    size_t length, capacity;
    int failed;
} text_t;

static void put(text_t *out, const char *bytes, size_t count) {
    if (out->failed) return;
    if (out->length + count + 1 > out->capacity) {
        size_t capacity = (out->capacity ? out->capacity * 2 : 256) + count;
        char *grown = realloc(out->text, capacity);
        if (!grown) {
            out->failed = 1;
            return;
        }
        out->text = grown;
        out->capacity = capacity;
    }
    memcpy(out->text + out->length, bytes, count);
    out->length += count;
    out->text[out->length] = '\0';
}

static void put_string(text_t *out, const char *bytes, size_t count) {
    put(out, "\"", 1);
    for (size_t i = 0; i < count; i++) {
        unsigned char c = (unsigned char)bytes[i];
        if (c == '"' || c == '\\') {
            char escaped[2] = {'\\', (char)c};
            put(out, escaped, 2);
        } else if (c < 0x20) {
            char escaped[8];
            snprintf(escaped, sizeof escaped, "\\u%04x", c);
            put(out, escaped, 6);
        } else {
            put(out, (const char *)&c, 1);
        }
    }
    put(out, "\"", 1);
}

static int compare_keys(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static void put_value(text_t *out, const json_t *value) {
    char number[40];
    switch (json_typeof(value)) {
    case JSON_OBJECT: {
        size_t count = json_object_size(value), index = 0;
        const char **keys = malloc(sizeof *keys * (count ? count : 1));
        if (!keys) {
            out->failed = 1;
            return;
        }
        const char *key;
        json_t *member;
        json_object_foreach((json_t *)value, key, member) keys[index++] = key;
        qsort(keys, count, sizeof *keys, compare_keys);
        put(out, "{", 1);
        for (index = 0; index < count; index++) {
            if (index) put(out, ",", 1);
            put_string(out, keys[index], strlen(keys[index]));
            put(out, ":", 1);
            put_value(out, json_object_get(value, keys[index]));
        }
        put(out, "}", 1);
        free(keys);
        return;
    }
    case JSON_ARRAY:
        put(out, "[", 1);
        for (size_t index = 0; index < json_array_size(value); index++) {
            if (index) put(out, ",", 1);
            put_value(out, json_array_get(value, index));
        }
        put(out, "]", 1);
        return;
    case JSON_STRING:
        put_string(out, json_string_value(value), json_string_length(value));
        return;
    case JSON_INTEGER:
        snprintf(number, sizeof number, "%lld", (long long)json_integer_value(value));
        put(out, number, strlen(number));
        return;
    case JSON_REAL:
        /* -0.0 would print "-0", which reads back as the integer 0: write it as 0, so the
         * canonical text of a canonical text is itself. */
        snprintf(number, sizeof number, "%.17g",
                 json_real_value(value) == 0.0 ? 0.0 : json_real_value(value));
        put(out, number, strlen(number));
        return;
    case JSON_TRUE:
        put(out, "true", 4);
        return;
    case JSON_FALSE:
        put(out, "false", 5);
        return;
    case JSON_NULL:
        put(out, "null", 4);
        return;
    }
}

char *cm_manifest_canonical(const void *json) {
    text_t out = {0};
    put_value(&out, json);
    if (out.failed) {
        free(out.text);
        return NULL;
    }
    return out.text;
}

/* ---- Checking ---- */

static const char *const split_names[4] = {"train", "test", "valid", "transfer"};

/* Fails if `object` holds a key that is not in the NULL-terminated `allowed`. */
static cm_status_t only_keys(const json_t *object, const char *const *allowed, const char *source,
                             const char *where) {
    const char *key;
    json_t *member;
    json_object_foreach((json_t *)object, key, member) {
        int known = 0;
        for (int i = 0; allowed[i]; i++) known |= strcmp(key, allowed[i]) == 0;
        if (!known)
            return cm_fail(CM_ERR_FORMAT, "%s: %s has an unknown key \"%s\"", source, where, key);
    }
    return CM_OK;
}

static cm_status_t positive_integer(const json_t *value, const char *source, const char *what,
                                    int64_t most, int64_t *out) {
    if (!json_is_integer(value) || json_integer_value(value) < 1 ||
        json_integer_value(value) > most)
        return cm_fail(CM_ERR_FORMAT, "%s: %s must be an integer from 1 to %lld", source, what,
                       (long long)most);
    *out = json_integer_value(value);
    return CM_OK;
}

static cm_status_t check_name(const char *name, const char *source, const char *what) {
    size_t length = strlen(name);
    if (length == 0 || length >= CM_MANIFEST_NAME_MAX)
        return cm_fail(CM_ERR_FORMAT, "%s: %s \"%s\" must have 1 to %d characters", source, what,
                       name, CM_MANIFEST_NAME_MAX - 1);
    for (size_t i = 0; i < length; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-' || c == '.') ||
            (i == 0 && c == '.'))
            return cm_fail(CM_ERR_FORMAT,
                           "%s: %s \"%s\" may hold only letters, digits, '_', '-' and '.'", source,
                           what, name);
    }
    return CM_OK;
}

static cm_status_t parse_task(cm_manifest_t *manifest, const json_t *task, const char *source) {
    static const char *const keys[] = {"type", "classes", "class_names", "targets", NULL};
    if (!json_is_object(task))
        return cm_fail(CM_ERR_FORMAT, "%s: \"task\" must be an object", source);
    cm_status_t status = only_keys(task, keys, source, "\"task\"");
    if (status != CM_OK) return status;
    const char *type = json_string_value(json_object_get(task, "type"));
    int64_t value = 0;
    if (type && strcmp(type, "classification") == 0) {
        manifest->task = CM_TASK_CLASSIFICATION;
        if ((status = positive_integer(json_object_get(task, "classes"), source, "task.classes",
                                       1 << 20, &value)) != CM_OK)
            return status;
        manifest->classes = (int)value;
        const json_t *names = json_object_get(task, "class_names");
        if (json_object_get(task, "targets"))
            return cm_fail(CM_ERR_FORMAT, "%s: a classification task has no \"targets\"", source);
        if (names) {
            if (!json_is_array(names) || json_array_size(names) != (size_t)manifest->classes)
                return cm_fail(CM_ERR_FORMAT,
                               "%s: task.class_names must be a list of %d strings (one per class)",
                               source, manifest->classes);
            manifest->class_names = calloc((size_t)manifest->classes, sizeof(char *));
            if (!manifest->class_names) return cm_fail(CM_ERR_NOMEM, "%s: out of memory", source);
            for (int index = 0; index < manifest->classes; index++) {
                const char *name = json_string_value(json_array_get(names, (size_t)index));
                if (!name)
                    return cm_fail(CM_ERR_FORMAT, "%s: task.class_names[%d] is not a string",
                                   source, index);
                if (!(manifest->class_names[index] = strdup(name)))
                    return cm_fail(CM_ERR_NOMEM, "%s: out of memory", source);
            }
        }
    } else if (type && strcmp(type, "regression") == 0) {
        manifest->task = CM_TASK_REGRESSION;
        if (json_object_get(task, "classes") || json_object_get(task, "class_names"))
            return cm_fail(CM_ERR_FORMAT, "%s: a regression task has \"targets\", not classes",
                           source);
        const json_t *targets = json_object_get(task, "targets");
        value = 1;
        if (targets &&
            (status = positive_integer(targets, source, "task.targets", 4096, &value)) != CM_OK)
            return status;
        manifest->targets = (int)value;
        manifest->classes = manifest->targets;
    } else {
        return cm_fail(CM_ERR_FORMAT, "%s: task.type must be \"classification\" or \"regression\"",
                       source);
    }
    return CM_OK;
}

static cm_status_t parse_reals(const json_t *array, const char *source, const char *what,
                               double **out, int *count) {
    if (!json_is_array(array) || json_array_size(array) == 0 || json_array_size(array) > 1 << 20)
        return cm_fail(CM_ERR_FORMAT, "%s: %s must be a non-empty list of numbers", source, what);
    *count = (int)json_array_size(array);
    *out = malloc(sizeof(double) * (size_t)*count);
    if (!*out) return cm_fail(CM_ERR_NOMEM, "%s: out of memory", source);
    for (int index = 0; index < *count; index++) {
        const json_t *value = json_array_get(array, (size_t)index);
        if (!json_is_number(value) || !isfinite(json_number_value(value)))
            return cm_fail(CM_ERR_FORMAT, "%s: %s[%d] is not a finite number", source, what, index);
        (*out)[index] = json_number_value(value);
    }
    return CM_OK;
}

static cm_status_t parse_view(cm_manifest_view_t *view, const json_t *object, const char *source) {
    static const char *const keys[] = {"kind",        "normalize", "from", "transform",
                                       "cardinality", "vocab",     "pad",  NULL};
    char where[CM_MANIFEST_NAME_MAX + 16];
    snprintf(where, sizeof where, "view \"%s\"", view->name);
    if (!json_is_object(object))
        return cm_fail(CM_ERR_FORMAT, "%s: %s must be an object", source, where);
    cm_status_t status = only_keys(object, keys, source, where);
    if (status != CM_OK) return status;
    view->divide = 1.0;
    const json_t *from = json_object_get(object, "from");
    if (from) {
        const char *transform = json_string_value(json_object_get(object, "transform"));
        if (!json_is_string(from) || !transform)
            return cm_fail(CM_ERR_FORMAT, "%s: derived %s needs \"from\" and \"transform\" strings",
                           source, where);
        snprintf(view->from, sizeof view->from, "%s", json_string_value(from));
        int pool = 0, consumed = 0;
        if (strcmp(transform, "standardize") == 0) {
            pool = 1;
            view->standardize = 1;
        } else if (sscanf(transform, "avgpool:%d%n", &pool, &consumed) != 1 ||
                   consumed != (int)strlen(transform) || pool < 1 || pool > 64)
            return cm_fail(CM_ERR_FORMAT,
                           "%s: %s has transform \"%s\"; known transforms: avgpool:K (K 1..64), "
                           "standardize",
                           source, where, transform);
        view->pool = pool;
        for (const char *const *key = keys; *key; key++)
            if (strcmp(*key, "from") && strcmp(*key, "transform") && json_object_get(object, *key))
                return cm_fail(CM_ERR_FORMAT,
                               "%s: derived %s takes only \"from\" and \"transform\" (its source "
                               "says the rest), not \"%s\"",
                               source, where, *key);
        return CM_OK;
    }
    if (json_object_get(object, "transform"))
        return cm_fail(CM_ERR_FORMAT, "%s: %s has a \"transform\" but no \"from\"", source, where);
    const char *kind = json_string_value(json_object_get(object, "kind"));
    if (kind && strcmp(kind, "dense") == 0) {
        view->kind = CM_VIEW_DENSE;
        const json_t *normalize = json_object_get(object, "normalize");
        if (json_object_get(object, "cardinality") || json_object_get(object, "vocab") ||
            json_object_get(object, "pad"))
            return cm_fail(CM_ERR_FORMAT,
                           "%s: dense %s takes \"normalize\", not cardinality, vocab or pad",
                           source, where);
        if (normalize) {
            static const char *const normalize_keys[] = {"divide", "mean", "std", NULL};
            if (!json_is_object(normalize))
                return cm_fail(CM_ERR_FORMAT, "%s: %s: \"normalize\" must be an object", source,
                               where);
            if ((status = only_keys(normalize, normalize_keys, source, "\"normalize\"")) != CM_OK)
                return status;
            const json_t *divide = json_object_get(normalize, "divide");
            if (divide) {
                if (!json_is_number(divide) || !(json_number_value(divide) > 0) ||
                    !isfinite(json_number_value(divide)))
                    return cm_fail(CM_ERR_FORMAT, "%s: %s: normalize.divide must be positive",
                                   source, where);
                view->divide = json_number_value(divide);
            }
            int mean_count = 0, std_count = 0;
            if ((status = parse_reals(json_object_get(normalize, "mean"), source, "normalize.mean",
                                      &view->mean, &mean_count)) != CM_OK ||
                (status = parse_reals(json_object_get(normalize, "std"), source, "normalize.std",
                                      &view->std, &std_count)) != CM_OK)
                return status;
            if (mean_count != std_count)
                return cm_fail(CM_ERR_FORMAT,
                               "%s: %s: normalize.mean has %d entries but normalize.std %d", source,
                               where, mean_count, std_count);
            for (int index = 0; index < std_count; index++)
                if (!(view->std[index] > 0))
                    return cm_fail(CM_ERR_FORMAT, "%s: %s: normalize.std[%d] must be positive",
                                   source, where, index);
            view->normalize_count = mean_count;
        }
    } else if (kind && strcmp(kind, "categorical") == 0) {
        view->kind = CM_VIEW_CATEGORICAL;
        const json_t *cardinality = json_object_get(object, "cardinality");
        if (json_object_get(object, "normalize") || json_object_get(object, "vocab") ||
            json_object_get(object, "pad"))
            return cm_fail(CM_ERR_FORMAT, "%s: categorical %s takes only \"cardinality\"", source,
                           where);
        if (!json_is_array(cardinality) || json_array_size(cardinality) == 0 ||
            json_array_size(cardinality) > CM_MANIFEST_MAX_COLUMNS)
            return cm_fail(CM_ERR_FORMAT,
                           "%s: categorical %s needs \"cardinality\": a list of 1 to %d integers "
                           "(one per column)",
                           source, where, CM_MANIFEST_MAX_COLUMNS);
        view->columns = (int)json_array_size(cardinality);
        view->cardinality = malloc(sizeof(int64_t) * (size_t)view->columns);
        if (!view->cardinality) return cm_fail(CM_ERR_NOMEM, "%s: out of memory", source);
        for (int column = 0; column < view->columns; column++) {
            char what[CM_MANIFEST_NAME_MAX + 64];
            snprintf(what, sizeof what, "%s cardinality[%d]", where, column);
            /* Values travel as floats: exact below 2^24. */
            if ((status = positive_integer(json_array_get(cardinality, (size_t)column), source,
                                           what, 1 << 24, &view->cardinality[column])) != CM_OK)
                return status;
        }
    } else if (kind && strcmp(kind, "tokens") == 0) {
        view->kind = CM_VIEW_TOKENS;
        if (json_object_get(object, "normalize") || json_object_get(object, "cardinality"))
            return cm_fail(CM_ERR_FORMAT, "%s: tokens %s takes only \"vocab\" and \"pad\"", source,
                           where);
        char what[CM_MANIFEST_NAME_MAX + 64];
        snprintf(what, sizeof what, "%s vocab", where);
        if ((status = positive_integer(json_object_get(object, "vocab"), source, what, 1 << 24,
                                       &view->vocab)) != CM_OK)
            return status;
        const json_t *pad = json_object_get(object, "pad");
        if (!json_is_integer(pad) || json_integer_value(pad) < 0 ||
            json_integer_value(pad) >= view->vocab)
            return cm_fail(CM_ERR_FORMAT,
                           "%s: tokens %s needs \"pad\", an integer below vocab %lld", source,
                           where, (long long)view->vocab);
        view->pad = json_integer_value(pad);
    } else {
        return cm_fail(CM_ERR_FORMAT,
                       "%s: %s needs \"kind\": dense, categorical or tokens (or \"from\" and "
                       "\"transform\")",
                       source, where);
    }
    return CM_OK;
}

static int compare_views(const void *a, const void *b) {
    return strcmp(((const cm_manifest_view_t *)a)->name, ((const cm_manifest_view_t *)b)->name);
}

static cm_status_t parse_root(cm_manifest_t *manifest, const json_t *root, const char *source) {
    static const char *const keys[] = {"format", "name", "task", "splits", "views", NULL};
    if (!json_is_object(root))
        return cm_fail(CM_ERR_FORMAT, "%s: the manifest must be a JSON object", source);
    const char *format = json_string_value(json_object_get(root, "format"));
    if (!format)
        return cm_fail(CM_ERR_FORMAT, "%s: \"format\" is missing (expected \"%s\")", source,
                       CM_MANIFEST_FORMAT);
    if (strcmp(format, CM_MANIFEST_FORMAT) != 0)
        return cm_fail(CM_ERR_VERSION, "%s: format \"%s\" is unknown (this build reads \"%s\")",
                       source, format, CM_MANIFEST_FORMAT);
    cm_status_t status = only_keys(root, keys, source, "the manifest");
    if (status != CM_OK) return status;
    const char *name = json_string_value(json_object_get(root, "name"));
    if (!name) return cm_fail(CM_ERR_FORMAT, "%s: \"name\" must be a string", source);
    if ((status = check_name(name, source, "name")) != CM_OK) return status;
    snprintf(manifest->name, sizeof manifest->name, "%s", name);
    if ((status = parse_task(manifest, json_object_get(root, "task"), source)) != CM_OK)
        return status;

    const json_t *splits = json_object_get(root, "splits");
    if (!json_is_array(splits))
        return cm_fail(CM_ERR_FORMAT, "%s: \"splits\" must be a list such as [\"train\", \"test\"]",
                       source);
    for (size_t index = 0; index < json_array_size(splits); index++) {
        const char *split = json_string_value(json_array_get(splits, index));
        int found = -1;
        for (int known = 0; split && known < 4; known++)
            if (strcmp(split, split_names[known]) == 0) found = known;
        if (found < 0)
            return cm_fail(CM_ERR_FORMAT,
                           "%s: split %s%s%s is unknown; splits are train, test, valid, transfer",
                           source, split ? "\"" : "", split ? split : "(not a string)",
                           split ? "\"" : "");
        if (manifest->has_split[found])
            return cm_fail(CM_ERR_FORMAT, "%s: split \"%s\" is listed twice", source, split);
        manifest->has_split[found] = 1;
    }
    if (!manifest->has_split[0] || !manifest->has_split[1])
        return cm_fail(CM_ERR_FORMAT, "%s: \"splits\" must list \"train\" and \"test\"", source);

    const json_t *views = json_object_get(root, "views");
    if (!json_is_object(views) || json_object_size(views) == 0)
        return cm_fail(CM_ERR_FORMAT, "%s: \"views\" must be an object with at least one view",
                       source);
    if (json_object_size(views) > CM_MANIFEST_MAX_VIEWS)
        return cm_fail(CM_ERR_TOO_LARGE, "%s: more than %d views", source, CM_MANIFEST_MAX_VIEWS);
    const char *view_name;
    json_t *object;
    json_object_foreach((json_t *)views, view_name, object) {
        if ((status = check_name(view_name, source, "view name")) != CM_OK) return status;
        if (strcmp(view_name, "labels") == 0 || strcmp(view_name, "ids") == 0)
            return cm_fail(CM_ERR_FORMAT,
                           "%s: a view may not be called \"%s\" (the split's %s.npy is taken)",
                           source, view_name, view_name);
        cm_manifest_view_t *view = &manifest->views[manifest->view_count++];
        snprintf(view->name, sizeof view->name, "%s", view_name);
        if ((status = parse_view(view, object, source)) != CM_OK) return status;
    }
    qsort(manifest->views, (size_t)manifest->view_count, sizeof manifest->views[0], compare_views);
    for (int index = 0; index < manifest->view_count; index++) {
        cm_manifest_view_t *view = &manifest->views[index];
        if (!view->from[0]) continue;
        const cm_manifest_view_t *source_view = cm_manifest_view(manifest, view->from);
        if (!source_view)
            return cm_fail(CM_ERR_FORMAT,
                           "%s: view \"%s\" is derived from \"%s\", which is not a view", source,
                           view->name, view->from);
        if (source_view->from[0] || source_view->kind != CM_VIEW_DENSE)
            return cm_fail(CM_ERR_FORMAT,
                           "%s: view \"%s\" is derived from \"%s\"; a transform reads a stored "
                           "dense view",
                           source, view->name, view->from);
        view->kind = CM_VIEW_DENSE;
    }
    return CM_OK;
}

cm_status_t cm_manifest_parse(const char *text, size_t length, const char *source,
                              cm_manifest_t **out) {
    *out = NULL;
    if (!source) source = "dataset.json";
    json_error_t error;
    json_t *root = json_loadb(text, length, JSON_REJECT_DUPLICATES, &error);
    if (!root)
        return cm_fail(CM_ERR_FORMAT, "%s: not valid JSON (line %d: %s)", source, error.line,
                       error.text);
    cm_manifest_t *manifest = calloc(1, sizeof *manifest);
    cm_status_t status = manifest ? parse_root(manifest, root, source)
                                  : cm_fail(CM_ERR_NOMEM, "%s: out of memory", source);
    if (status == CM_OK && !(manifest->canonical = cm_manifest_canonical(root)))
        status = cm_fail(CM_ERR_NOMEM, "%s: out of memory", source);
    if (status == CM_OK && !(manifest->text = strndup(text, length)))
        status = cm_fail(CM_ERR_NOMEM, "%s: out of memory", source);
    json_decref(root);
    if (status != CM_OK) {
        cm_manifest_free(&manifest);
        return status;
    }
    *out = manifest;
    return CM_OK;
}

void cm_manifest_free(cm_manifest_t **manifest) {
    if (!manifest || !*manifest) return;
    cm_manifest_t *m = *manifest;
    if (m->class_names)
        for (int index = 0; index < m->classes; index++) free(m->class_names[index]);
    free(m->class_names);
    for (int index = 0; index < CM_MANIFEST_MAX_VIEWS; index++) {
        free(m->views[index].mean);
        free(m->views[index].std);
        free(m->views[index].cardinality);
    }
    free(m->canonical);
    free(m->text);
    free(m);
    *manifest = NULL;
}

const cm_manifest_view_t *cm_manifest_view(const cm_manifest_t *manifest, const char *name) {
    for (int index = 0; name && index < manifest->view_count; index++)
        if (strcmp(manifest->views[index].name, name) == 0) return &manifest->views[index];
    return NULL;
}

void cm_manifest_view_names(const cm_manifest_t *manifest, char *out, size_t size) {
    size_t used = 0;
    out[0] = '\0';
    for (int index = 0; index < manifest->view_count && used < size; index++) {
        int wrote = snprintf(out + used, size - used, "%s%s", index ? "," : "",
                             manifest->views[index].name);
        if (wrote < 0) break;
        used += (size_t)wrote;
    }
}

static json_t *reals_json(const double *values, int count) {
    json_t *array = json_array();
    for (int index = 0; index < count; index++)
        json_array_append_new(array, json_real(values[index]));
    return array;
}

char *cm_manifest_view_json(const cm_manifest_t *manifest, const cm_manifest_view_t *view) {
    const cm_manifest_view_t *stored =
        view->from[0] ? cm_manifest_view(manifest, view->from) : view;
    json_t *object = json_object();
    json_object_set_new(object, "view", json_string(view->name));
    json_object_set_new(object, "kind", json_string(cm_view_kind_name(view->kind)));
    if (view->from[0]) {
        char transform[32];
        if (view->standardize)
            snprintf(transform, sizeof transform, "standardize");
        else
            snprintf(transform, sizeof transform, "avgpool:%d", view->pool);
        json_object_set_new(object, "from", json_string(view->from));
        json_object_set_new(object, "transform", json_string(transform));
    }
    if (stored->kind == CM_VIEW_DENSE) {
        json_t *normalize = json_object();
        json_object_set_new(normalize, "divide", json_real(stored->divide));
        if (stored->normalize_count) {
            json_object_set_new(normalize, "mean",
                                reals_json(stored->mean, stored->normalize_count));
            json_object_set_new(normalize, "std", reals_json(stored->std, stored->normalize_count));
        }
        json_object_set_new(object, "normalize", normalize);
    } else if (stored->kind == CM_VIEW_CATEGORICAL) {
        json_t *cardinality = json_array();
        for (int column = 0; column < stored->columns; column++)
            json_array_append_new(cardinality, json_integer(stored->cardinality[column]));
        json_object_set_new(object, "cardinality", cardinality);
    } else {
        json_object_set_new(object, "vocab", json_integer(stored->vocab));
        json_object_set_new(object, "pad", json_integer(stored->pad));
    }
    char *text = cm_manifest_canonical(object);
    json_decref(object);
    return text;
}

char *cm_manifest_task_json(const cm_manifest_t *manifest) {
    json_t *object = json_object();
    json_object_set_new(object, "type", json_string(cm_task_name(manifest->task)));
    if (manifest->task == CM_TASK_CLASSIFICATION) {
        json_object_set_new(object, "classes", json_integer(manifest->classes));
        if (manifest->class_names) {
            json_t *names = json_array();
            for (int index = 0; index < manifest->classes; index++)
                json_array_append_new(names, json_string(manifest->class_names[index]));
            json_object_set_new(object, "class_names", names);
        }
    } else {
        json_object_set_new(object, "targets", json_integer(manifest->targets));
    }
    char *text = cm_manifest_canonical(object);
    json_decref(object);
    return text;
}
