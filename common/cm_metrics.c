/*
 * cm_metrics: the registry is a list of families, each a list of series, all
 * behind one mutex that only registration and rendering take.  The values a
 * hot path touches live in separately allocated, cache-line aligned handles
 * (so two counters bumped by two threads do not share a line) and are C11
 * atomics: counters and bucket counts are uint64_t fetch-adds, gauges and
 * sums keep a double's bits in a uint64_t updated by compare-and-swap,
 * because C11 has no atomic floating-point add.  All atomics use relaxed
 * order: a value is a tally, it publishes nothing else.
 */
#include "cm_metrics.h"

#include "cm_alloc.h"

#include <assert.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A float counter keeps a double (a gauge's handle) but is a counter to Prometheus; an info
 * metric is a gauge fixed at 1 whose series carry several labels, kept rendered. */
typedef enum {
    METRIC_COUNTER,
    METRIC_GAUGE,
    METRIC_HISTOGRAM,
    METRIC_FLOAT_COUNTER,
    METRIC_INFO
} metric_type_t;

static const char *const type_names[] = {"counter", "gauge", "histogram", "counter", "gauge"};

static const double default_duration_bounds[] = {
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
    0.05,   0.1,     0.25,   0.5,   1.0,    2.5,   5.0,  10.0,
};

struct cm_metrics_counter {
    _Atomic uint64_t value;
};

struct cm_metrics_gauge {
    _Atomic uint64_t bits; /* of a double */
};

/* Each histogram keeps its own copy of the family's bounds so observing needs no lock. */
struct cm_metrics_histogram {
    int bound_count;
    double bounds[CM_METRICS_MAX_BUCKETS];
    _Atomic uint64_t sum_bits;                                  /* of a double */
    _Atomic uint64_t bucket_counts[CM_METRICS_MAX_BUCKETS + 1]; /* not cumulative; last: +Inf */
};

typedef struct metric_series {
    struct metric_series *next;
    char *label_value; /* NULL when the family has no label; info: the rendered labels */
    union {
        cm_metrics_counter_t *counter;
        cm_metrics_gauge_t *gauge;
        cm_metrics_histogram_t *histogram;
    } handle;
} metric_series_t;

typedef struct metric_family {
    struct metric_family *next;
    metric_type_t type;
    char *name;
    char *help;
    char *label_name; /* NULL when unlabelled */
    int bound_count;  /* histograms only */
    double bounds[CM_METRICS_MAX_BUCKETS];
    metric_series_t *series_head;
    metric_series_t **series_tail;
} metric_family_t;

struct cm_metrics {
    pthread_mutex_t mutex;
    metric_family_t *family_head;
    metric_family_t **family_tail;
};

static uint64_t double_bits(double value) {
    uint64_t bits;
    memcpy(&bits, &value, sizeof bits);
    return bits;
}

static double bits_double(uint64_t bits) {
    double value;
    memcpy(&value, &bits, sizeof value);
    return value;
}

static void atomic_add_double(_Atomic uint64_t *target, double delta) {
    uint64_t expected = atomic_load_explicit(target, memory_order_relaxed);
    while (!atomic_compare_exchange_weak_explicit(target, &expected,
                                                  double_bits(bits_double(expected) + delta),
                                                  memory_order_relaxed, memory_order_relaxed)) {
    }
}

/* ---- registration ---------------------------------------------------------------------- */

static bool valid_metric_name(const char *name) {
    if (!name || !name[0]) return false;
    for (const char *c = name; *c; c++) {
        bool letter =
            (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || *c == '_' || *c == ':';
        bool digit = *c >= '0' && *c <= '9';
        if (!letter && !(digit && c != name)) return false;
    }
    return true;
}

static bool valid_label_name(const char *name) {
    if (!name || !name[0] || strncmp(name, "__", 2) == 0) return false;
    for (const char *c = name; *c; c++) {
        bool letter = (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || *c == '_';
        bool digit = *c >= '0' && *c <= '9';
        if (!letter && !(digit && c != name)) return false;
    }
    return true;
}

static bool same_text(const char *a, const char *b) {
    if (!a || !b) return a == b;
    return strcmp(a, b) == 0;
}

static void family_free(metric_family_t *family) {
    metric_series_t *series = family->series_head;
    while (series) {
        metric_series_t *next = series->next;
        cm_free_aligned(series->handle.counter); /* every member is one aligned block */
        free(series->label_value);
        free(series);
        series = next;
    }
    free(family->name);
    free(family->help);
    free(family->label_name);
    free(family);
}

static cm_status_t check_arguments(metric_type_t type, const char *name, const char *help,
                                   const cm_metrics_label_t *label, const double *bounds,
                                   int bound_count) {
    if (!valid_metric_name(name))
        return cm_fail(CM_ERR_INVALID_ARG,
                       "metric name \"%s\" is not a Prometheus name ([a-zA-Z_:][a-zA-Z0-9_:]*)",
                       name ? name : "(null)");
    if (!help) return cm_fail(CM_ERR_INVALID_ARG, "metric %s has no help text", name);
    if (label) {
        if (!valid_label_name(label->name) ||
            (type == METRIC_HISTOGRAM && strcmp(label->name, "le") == 0))
            return cm_fail(CM_ERR_INVALID_ARG,
                           "label name \"%s\" of metric %s is not allowed (need "
                           "[a-zA-Z_][a-zA-Z0-9_]*, no leading \"__\", no \"le\" on histograms)",
                           label->name ? label->name : "(null)", name);
        if (!label->value)
            return cm_fail(CM_ERR_INVALID_ARG, "label %s of metric %s has no value", label->name,
                           name);
    }
    if (type == METRIC_HISTOGRAM && bounds) {
        if (bound_count < 1 || bound_count > CM_METRICS_MAX_BUCKETS)
            return cm_fail(CM_ERR_INVALID_ARG,
                           "histogram %s has %d bucket bounds; it needs 1 to %d", name, bound_count,
                           CM_METRICS_MAX_BUCKETS);
        for (int i = 0; i < bound_count; i++)
            if (!isfinite(bounds[i]) || (i > 0 && !(bounds[i] > bounds[i - 1])))
                return cm_fail(CM_ERR_INVALID_ARG,
                               "bucket bound %d (%g) of histogram %s is not finite and larger "
                               "than the one before",
                               i, bounds[i], name);
    }
    return CM_OK;
}

static metric_family_t *family_create(metric_type_t type, const char *name, const char *help,
                                      const cm_metrics_label_t *label, const double *bounds,
                                      int bound_count) {
    metric_family_t *family = calloc(1, sizeof *family);
    if (!family) return NULL;
    family->type = type;
    family->series_tail = &family->series_head;
    family->name = strdup(name);
    family->help = strdup(help);
    int named = label && type != METRIC_INFO;
    family->label_name = named ? strdup(label->name) : NULL;
    if (!family->name || !family->help || (named && !family->label_name)) goto fail;
    if (type == METRIC_HISTOGRAM) {
        family->bound_count = bound_count;
        memcpy(family->bounds, bounds, sizeof(double) * (size_t)bound_count);
    }
    return family;
fail:
    family_free(family);
    return NULL;
}

static bool family_matches(const metric_family_t *family, metric_type_t type, const char *help,
                           const cm_metrics_label_t *label, const double *bounds, int bound_count) {
    if (family->type != type || strcmp(family->help, help) != 0) return false;
    if (type == METRIC_INFO) return true;
    if (!same_text(family->label_name, label ? label->name : NULL)) return false;
    if (type != METRIC_HISTOGRAM) return true;
    return family->bound_count == bound_count &&
           memcmp(family->bounds, bounds, sizeof(double) * (size_t)bound_count) == 0;
}

static metric_series_t *series_create(const metric_family_t *family,
                                      const cm_metrics_label_t *label) {
    metric_series_t *series = calloc(1, sizeof *series);
    if (!series) return NULL;
    if (label && !(series->label_value = strdup(label->value))) goto fail;
    switch (family->type) {
    case METRIC_COUNTER:
        series->handle.counter = cm_alloc_aligned(1, sizeof(cm_metrics_counter_t));
        break;
    case METRIC_GAUGE:
    case METRIC_FLOAT_COUNTER:
    case METRIC_INFO:
        series->handle.gauge = cm_alloc_aligned(1, sizeof(cm_metrics_gauge_t));
        break;
    case METRIC_HISTOGRAM:
        series->handle.histogram = cm_alloc_aligned(1, sizeof(cm_metrics_histogram_t));
        if (series->handle.histogram) {
            series->handle.histogram->bound_count = family->bound_count;
            memcpy(series->handle.histogram->bounds, family->bounds, sizeof family->bounds);
        }
        break;
    }
    if (!series->handle.counter) goto fail;
    return series; /* zeroed memory is a valid 0 for every atomic, and 0.0 for doubles */
fail:
    free(series->label_value);
    free(series);
    return NULL;
}

/* Finds or creates the series; returns it through *out, under the registry mutex. */
static cm_status_t register_series(cm_metrics_t *metrics, metric_type_t type, const char *name,
                                   const char *help, const cm_metrics_label_t *label,
                                   const double *bounds, int bound_count, metric_series_t **out) {
    *out = NULL;
    if (type == METRIC_HISTOGRAM && !bounds) {
        bounds = default_duration_bounds;
        bound_count = (int)(sizeof default_duration_bounds / sizeof default_duration_bounds[0]);
    }
    cm_status_t status = check_arguments(type, name, help, label, bounds, bound_count);
    if (status != CM_OK) return status;

    pthread_mutex_lock(&metrics->mutex);
    metric_family_t *family = metrics->family_head;
    while (family && strcmp(family->name, name) != 0) family = family->next;
    if (family && !family_matches(family, type, help, label, bounds, bound_count)) {
        status = cm_fail(CM_ERR_MISMATCH,
                         "metric %s was registered before as a %s with other help text, "
                         "label name or buckets",
                         name, type_names[family->type]);
        goto done;
    }
    if (!family) {
        family = family_create(type, name, help, label, bounds, bound_count);
        if (!family) {
            status = cm_fail(CM_ERR_NOMEM, "no memory to register metric %s", name);
            goto done;
        }
        *metrics->family_tail = family;
        metrics->family_tail = &family->next;
    }
    metric_series_t *series = family->series_head;
    while (series && !same_text(series->label_value, label ? label->value : NULL))
        series = series->next;
    if (!series) {
        series = series_create(family, label);
        if (!series) {
            status = cm_fail(CM_ERR_NOMEM, "no memory to register a series of metric %s", name);
            goto done;
        }
        *family->series_tail = series;
        family->series_tail = &series->next;
    }
    *out = series;
done:
    pthread_mutex_unlock(&metrics->mutex);
    return status;
}

cm_status_t cm_metrics_new(cm_metrics_t **out) {
    *out = NULL;
    cm_metrics_t *metrics = calloc(1, sizeof *metrics);
    if (!metrics) return cm_fail(CM_ERR_NOMEM, "no memory for a metrics registry");
    pthread_mutex_init(&metrics->mutex, NULL);
    metrics->family_tail = &metrics->family_head;
    *out = metrics;
    return CM_OK;
}

void cm_metrics_free(cm_metrics_t **metrics) {
    if (!metrics || !*metrics) return;
    metric_family_t *family = (*metrics)->family_head;
    while (family) {
        metric_family_t *next = family->next;
        family_free(family);
        family = next;
    }
    pthread_mutex_destroy(&(*metrics)->mutex);
    free(*metrics);
    *metrics = NULL;
}

cm_status_t cm_metrics_register_counter(cm_metrics_t *metrics, const char *name, const char *help,
                                        const cm_metrics_label_t *label,
                                        cm_metrics_counter_t **out) {
    metric_series_t *series;
    cm_status_t status =
        register_series(metrics, METRIC_COUNTER, name, help, label, NULL, 0, &series);
    *out = status == CM_OK ? series->handle.counter : NULL;
    return status;
}

cm_status_t cm_metrics_register_gauge(cm_metrics_t *metrics, const char *name, const char *help,
                                      const cm_metrics_label_t *label, cm_metrics_gauge_t **out) {
    metric_series_t *series;
    cm_status_t status =
        register_series(metrics, METRIC_GAUGE, name, help, label, NULL, 0, &series);
    *out = status == CM_OK ? series->handle.gauge : NULL;
    return status;
}

cm_status_t cm_metrics_register_histogram(cm_metrics_t *metrics, const char *name, const char *help,
                                          const cm_metrics_label_t *label, const double *bounds,
                                          int bound_count, cm_metrics_histogram_t **out) {
    metric_series_t *series;
    cm_status_t status =
        register_series(metrics, METRIC_HISTOGRAM, name, help, label, bounds, bound_count, &series);
    *out = status == CM_OK ? series->handle.histogram : NULL;
    return status;
}

cm_status_t cm_metrics_register_float_counter(cm_metrics_t *metrics, const char *name,
                                              const char *help, const cm_metrics_label_t *label,
                                              cm_metrics_gauge_t **out) {
    metric_series_t *series;
    cm_status_t status =
        register_series(metrics, METRIC_FLOAT_COUNTER, name, help, label, NULL, 0, &series);
    *out = status == CM_OK ? series->handle.gauge : NULL;
    return status;
}

/* Appends `name="value"` pairs, values escaped, comma-separated (defined with rendering). */
static char *render_labels(const cm_metrics_label_t *labels, int label_count);

cm_status_t cm_metrics_register_info(cm_metrics_t *metrics, const char *name, const char *help,
                                     const cm_metrics_label_t *labels, int label_count) {
    if (label_count < 1 || !labels)
        return cm_fail(CM_ERR_INVALID_ARG, "info metric %s needs at least one label",
                       name ? name : "(null)");
    for (int index = 0; index < label_count; index++) {
        cm_status_t status =
            check_arguments(METRIC_INFO, name, help ? help : "", &labels[index], NULL, 0);
        if (status != CM_OK) return status;
        for (int other = 0; other < index; other++)
            if (strcmp(labels[other].name, labels[index].name) == 0)
                return cm_fail(CM_ERR_INVALID_ARG, "info metric %s has label %s twice", name,
                               labels[index].name);
    }
    char *rendered = render_labels(labels, label_count);
    if (!rendered) return cm_fail(CM_ERR_NOMEM, "no memory to register metric %s", name);
    cm_metrics_label_t whole = {"info", rendered}; /* the family's label name stays NULL */
    metric_series_t *series;
    cm_status_t status =
        register_series(metrics, METRIC_INFO, name, help, &whole, NULL, 0, &series);
    free(rendered);
    if (status == CM_OK) cm_metrics_gauge_set(series->handle.gauge, 1.0);
    return status;
}

/* ---- updates (hot path) ---------------------------------------------------------------- */

void cm_metrics_counter_add(cm_metrics_counter_t *counter, uint64_t amount) {
    if (counter) atomic_fetch_add_explicit(&counter->value, amount, memory_order_relaxed);
}

uint64_t cm_metrics_counter_value(const cm_metrics_counter_t *counter) {
    return counter ? atomic_load_explicit(&counter->value, memory_order_relaxed) : 0;
}

void cm_metrics_gauge_set(cm_metrics_gauge_t *gauge, double value) {
    if (gauge) atomic_store_explicit(&gauge->bits, double_bits(value), memory_order_relaxed);
}

void cm_metrics_gauge_add(cm_metrics_gauge_t *gauge, double delta) {
    if (gauge) atomic_add_double(&gauge->bits, delta);
}

double cm_metrics_gauge_value(const cm_metrics_gauge_t *gauge) {
    return gauge ? bits_double(atomic_load_explicit(&gauge->bits, memory_order_relaxed)) : 0.0;
}

void cm_metrics_histogram_observe(cm_metrics_histogram_t *histogram, double value) {
    if (!histogram) return;
    int bucket = 0; /* NaN fails every comparison and lands in +Inf, as in Prometheus clients */
    while (bucket < histogram->bound_count && !(value <= histogram->bounds[bucket])) bucket++;
    atomic_fetch_add_explicit(&histogram->bucket_counts[bucket], 1, memory_order_relaxed);
    atomic_add_double(&histogram->sum_bits, value);
}

uint64_t cm_metrics_histogram_count(const cm_metrics_histogram_t *histogram) {
    if (!histogram) return 0;
    uint64_t count = 0;
    for (int bucket = 0; bucket <= histogram->bound_count; bucket++)
        count += atomic_load_explicit(&histogram->bucket_counts[bucket], memory_order_relaxed);
    return count;
}

double cm_metrics_histogram_sum(const cm_metrics_histogram_t *histogram) {
    if (!histogram) return 0.0;
    return bits_double(atomic_load_explicit(&histogram->sum_bits, memory_order_relaxed));
}

/* ---- rendering ------------------------------------------------------------------------- */

/*
 * Output text: either a caller's fixed buffer (keeps counting past its end so the
 * caller learns the size needed) or a growing heap string.
 */
typedef struct {
    char *data;
    size_t capacity;
    size_t length; /* of the whole text, even the part that did not fit */
    bool growable;
    bool out_of_memory;
} text_t;

static void text_append(text_t *text, const char *bytes, size_t count) {
    if (text->growable && !text->out_of_memory && text->length + count + 1 > text->capacity) {
        size_t capacity = text->capacity ? text->capacity : 1024;
        while (capacity < text->length + count + 1) capacity *= 2;
        char *grown = realloc(text->data, capacity);
        if (!grown) {
            text->out_of_memory = true;
        } else {
            text->data = grown;
            text->capacity = capacity;
        }
    }
    if (text->length < text->capacity) {
        size_t room = text->capacity - text->length - 1; /* keep one byte for the NUL */
        memcpy(text->data + text->length, bytes, count < room ? count : room);
    }
    text->length += count;
}

static void text_string(text_t *text, const char *string) {
    text_append(text, string, strlen(string));
}

static void text_printf(text_t *text, const char *format, ...)
    __attribute__((format(printf, 2, 3)));
static void text_printf(text_t *text, const char *format, ...) {
    char piece[128];
    va_list args;
    va_start(args, format);
    int count = vsnprintf(piece, sizeof piece, format, args);
    va_end(args);
    assert(count >= 0 && (size_t)count < sizeof piece); /* only numbers go through here */
    text_append(text, piece, (size_t)count);
}

/* Escapes \ and newline (help text), and also '"' (label values, quote_too). */
static void text_escaped(text_t *text, const char *string, bool quote_too) {
    for (const char *c = string; *c; c++) {
        if (*c == '\\')
            text_append(text, "\\\\", 2);
        else if (*c == '\n')
            text_append(text, "\\n", 2);
        else if (*c == '"' && quote_too)
            text_append(text, "\\\"", 2);
        else
            text_append(text, c, 1);
    }
}

/*
 * Formats a double as Prometheus reads it: the shorter of %.15g and %.17g that reads back
 * as the same value, and NaN, +Inf, -Inf for the rest.  `piece` holds 32 bytes.
 */
static const char *format_double(char *piece, double value) {
    if (isnan(value)) return "NaN";
    if (isinf(value)) return value > 0 ? "+Inf" : "-Inf";
    snprintf(piece, 32, "%.15g", value);
    if (strtod(piece, NULL) != value) snprintf(piece, 32, "%.17g", value);
    return piece;
}

static void text_double(text_t *text, double value) {
    char piece[32];
    text_string(text, format_double(piece, value));
}

/* Writes `name{label="value",le="bound"} ` up to and including the space; le may be NULL. */
static void text_series_name(text_t *text, const char *name, const char *suffix,
                             const metric_family_t *family, const metric_series_t *series,
                             const char *le) {
    text_string(text, name);
    text_string(text, suffix);
    if (family->type == METRIC_INFO) {
        text_string(text, "{");
        text_string(text, series->label_value);
        text_string(text, "} ");
        return;
    }
    if (family->label_name || le) {
        text_string(text, "{");
        if (family->label_name) {
            text_string(text, family->label_name);
            text_string(text, "=\"");
            text_escaped(text, series->label_value, true);
            text_string(text, le ? "\"," : "\"");
        }
        if (le) {
            text_string(text, "le=\"");
            text_string(text, le);
            text_string(text, "\"");
        }
        text_string(text, "}");
    }
    text_string(text, " ");
}

static void render_histogram(text_t *text, const metric_family_t *family,
                             const metric_series_t *series) {
    const cm_metrics_histogram_t *histogram = series->handle.histogram;
    uint64_t cumulative = 0;
    for (int bucket = 0; bucket <= histogram->bound_count; bucket++) {
        cumulative += atomic_load_explicit(&histogram->bucket_counts[bucket], memory_order_relaxed);
        char piece[32];
        const char *le = bucket < histogram->bound_count
                             ? format_double(piece, histogram->bounds[bucket])
                             : "+Inf";
        text_series_name(text, family->name, "_bucket", family, series, le);
        text_printf(text, "%llu\n", (unsigned long long)cumulative);
    }
    text_series_name(text, family->name, "_sum", family, series, NULL);
    text_double(text, cm_metrics_histogram_sum(histogram));
    text_string(text, "\n");
    text_series_name(text, family->name, "_count", family, series, NULL);
    text_printf(text, "%llu\n", (unsigned long long)cumulative);
}

static void render_all(cm_metrics_t *metrics, text_t *text) {
    pthread_mutex_lock(&metrics->mutex);
    for (const metric_family_t *family = metrics->family_head; family; family = family->next) {
        text_string(text, "# HELP ");
        text_string(text, family->name);
        text_string(text, " ");
        text_escaped(text, family->help, false);
        text_string(text, "\n# TYPE ");
        text_string(text, family->name);
        text_string(text, " ");
        text_string(text, type_names[family->type]);
        text_string(text, "\n");
        for (const metric_series_t *series = family->series_head; series; series = series->next) {
            switch (family->type) {
            case METRIC_COUNTER:
                text_series_name(text, family->name, "", family, series, NULL);
                text_printf(text, "%llu\n",
                            (unsigned long long)cm_metrics_counter_value(series->handle.counter));
                break;
            case METRIC_GAUGE:
            case METRIC_FLOAT_COUNTER:
            case METRIC_INFO:
                text_series_name(text, family->name, "", family, series, NULL);
                text_double(text, cm_metrics_gauge_value(series->handle.gauge));
                text_string(text, "\n");
                break;
            case METRIC_HISTOGRAM:
                render_histogram(text, family, series);
                break;
            }
        }
    }
    pthread_mutex_unlock(&metrics->mutex);
}

static char *render_labels(const cm_metrics_label_t *labels, int label_count) {
    text_t text = {.growable = true};
    for (int index = 0; index < label_count; index++) {
        if (index) text_string(&text, ",");
        text_string(&text, labels[index].name);
        text_string(&text, "=\"");
        text_escaped(&text, labels[index].value, true);
        text_string(&text, "\"");
    }
    text_append(&text, "", 0);
    if (text.out_of_memory) {
        free(text.data);
        return NULL;
    }
    text.data[text.length] = '\0';
    return text.data;
}

cm_status_t cm_metrics_render(cm_metrics_t *metrics, char *buffer, size_t capacity,
                              size_t *length) {
    text_t text = {.data = buffer, .capacity = capacity};
    render_all(metrics, &text);
    if (capacity > 0) buffer[text.length < capacity ? text.length : capacity - 1] = '\0';
    *length = text.length;
    if (text.length >= capacity)
        return cm_fail(CM_ERR_TOO_LARGE, "metrics text needs %zu bytes but the buffer holds %zu",
                       text.length + 1, capacity);
    return CM_OK;
}

cm_status_t cm_metrics_render_alloc(cm_metrics_t *metrics, char **text_out, size_t *length) {
    text_t text = {.growable = true};
    text_append(&text, "", 0); /* an empty registry still gets its NUL-terminated "" */
    render_all(metrics, &text);
    if (text.out_of_memory) {
        free(text.data);
        *text_out = NULL;
        return cm_fail(CM_ERR_NOMEM, "no memory for %zu bytes of metrics text", text.length + 1);
    }
    text.data[text.length] = '\0';
    *text_out = text.data;
    if (length) *length = text.length;
    return CM_OK;
}
