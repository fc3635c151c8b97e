/*
 * cm_metrics: a small thread-safe Prometheus registry.
 *
 * A registry holds metric families (counters, gauges, histograms), each
 * created by name and help text and optionally split by one label
 * (errors_total{code="BUSY"}).  Registering returns a handle that stays valid
 * until the registry is freed; updating through a handle is one relaxed C11
 * atomic operation (a compare-and-swap loop for floating-point values), takes
 * no lock and never allocates, so it is cheap enough for the request hot path
 * and safe from any thread.  Registration and rendering take the registry's
 * mutex; do them at start-up and on scrape, not per request.
 *
 * Rendering produces the Prometheus text exposition format 0.0.4: for every
 * family, in registration order, a "# HELP" and a "# TYPE" line followed by
 * one sample per line, with help text and label values escaped.  Values are
 * read without stopping writers, so a scrape taken during updates may see a
 * histogram's sum a few observations behind its buckets; counts are always
 * consistent with the buckets because the count is their total.
 *
 * The registry owns every family, series and handle; callers own nothing
 * but the registry itself (and the strings that cm_metrics_render_alloc
 * returns).
 */
#ifndef CM_METRICS_H
#define CM_METRICS_H

#include "cm_status.h"

#include <stddef.h>
#include <stdint.h>

/* The Content-Type of the rendered text, for an HTTP /metrics answer. */
#define CM_METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

enum { CM_METRICS_MAX_BUCKETS = 32 };

typedef struct cm_metrics cm_metrics_t;
typedef struct cm_metrics_counter cm_metrics_counter_t;
typedef struct cm_metrics_gauge cm_metrics_gauge_t;
typedef struct cm_metrics_histogram cm_metrics_histogram_t;

/* One label of a series; both strings are copied at registration. */
typedef struct {
    const char *name;  /* [a-zA-Z_][a-zA-Z0-9_]*, not starting with "__" */
    const char *value; /* any UTF-8 text; escaped when rendered */
} cm_metrics_label_t;

/*
 * Creates an empty registry in *out.  Fails only with CM_ERR_NOMEM.
 */
cm_status_t cm_metrics_new(cm_metrics_t **out);

/*
 * Frees a registry with every handle it gave out and sets *metrics to NULL;
 * NULL-safe.  No thread may update a handle of it any more.
 */
void cm_metrics_free(cm_metrics_t **metrics);

/*
 * Registers a counter series: `name` ([a-zA-Z_:][a-zA-Z0-9_:]*, by
 * convention ending in "_total"), `help` (one sentence), and `label` (NULL
 * for an unlabelled series, else one name/value pair).  Every series of one
 * family must agree on type, help text and label name; registering a series
 * that already exists returns the same handle, so call sites may register
 * lazily.  The handle in *out is owned by the registry.  Fails with
 * CM_ERR_INVALID_ARG (bad name or label), CM_ERR_MISMATCH (disagrees with
 * the family registered earlier under that name) or CM_ERR_NOMEM.
 */
cm_status_t cm_metrics_register_counter(cm_metrics_t *metrics, const char *name, const char *help,
                                        const cm_metrics_label_t *label,
                                        cm_metrics_counter_t **out);

/* Registers a gauge series; arguments and failures as for counters. */
cm_status_t cm_metrics_register_gauge(cm_metrics_t *metrics, const char *name, const char *help,
                                      const cm_metrics_label_t *label, cm_metrics_gauge_t **out);

/*
 * Registers a histogram series (for durations: observe seconds).  `bounds`
 * holds `bound_count` finite, strictly increasing bucket upper bounds (at
 * most CM_METRICS_MAX_BUCKETS; the +Inf bucket is implicit); bounds == NULL
 * selects default duration buckets from 100 microseconds to 10 seconds.  All
 * series of a family share the same bounds.  Other arguments and failures as
 * for counters; the label name "le" is reserved for buckets.
 */
cm_status_t cm_metrics_register_histogram(cm_metrics_t *metrics, const char *name, const char *help,
                                          const cm_metrics_label_t *label, const double *bounds,
                                          int bound_count, cm_metrics_histogram_t **out);

/*
 * Registers a counter of a real quantity (seconds waited, say): rendered as a Prometheus
 * counter, updated with cm_metrics_gauge_add and non-negative deltas through the gauge handle
 * in *out.  Arguments and failures as for counters.
 */
cm_status_t cm_metrics_register_float_counter(cm_metrics_t *metrics, const char *name,
                                              const char *help, const cm_metrics_label_t *label,
                                              cm_metrics_gauge_t **out);

/*
 * Registers one series of an info metric (by convention named "..._info"): a gauge fixed at
 * 1 whose `label_count` labels (at least one, distinct names) describe something, e.g.
 * committee_teacher_info{name="fm",role="foundation",model="...",view="full"} 1.  Series
 * differ by their label values; registering the same values again changes nothing.  Fails
 * as the other registrations do.
 */
cm_status_t cm_metrics_register_info(cm_metrics_t *metrics, const char *name, const char *help,
                                     const cm_metrics_label_t *labels, int label_count);

/* Adds `amount` to a counter.  Any thread; lock-free; a NULL counter is ignored. */
void cm_metrics_counter_add(cm_metrics_counter_t *counter, uint64_t amount);

/* Current value of a counter (0 for NULL). */
uint64_t cm_metrics_counter_value(const cm_metrics_counter_t *counter);

/* Sets a gauge.  Any thread; lock-free; a NULL gauge is ignored. */
void cm_metrics_gauge_set(cm_metrics_gauge_t *gauge, double value);

/* Adds `delta` (negative to decrease) to a gauge.  Any thread; NULL is ignored. */
void cm_metrics_gauge_add(cm_metrics_gauge_t *gauge, double delta);

/* Current value of a gauge (0 for NULL). */
double cm_metrics_gauge_value(const cm_metrics_gauge_t *gauge);

/*
 * Records one observation (a duration in seconds, say) in a histogram: the
 * first bucket whose bound is >= value, the sum and the count.  Any thread;
 * lock-free; a NULL histogram is ignored.
 */
void cm_metrics_histogram_observe(cm_metrics_histogram_t *histogram, double value);

/* Number of observations so far (0 for NULL). */
uint64_t cm_metrics_histogram_count(const cm_metrics_histogram_t *histogram);

/* Sum of the observations so far (0 for NULL). */
double cm_metrics_histogram_sum(const cm_metrics_histogram_t *histogram);

/*
 * Renders the registry as Prometheus text into `buffer` (`capacity` bytes,
 * always NUL-terminated when capacity > 0) and sets *length to the length of
 * the whole text without the NUL.  If the text does not fit, returns
 * CM_ERR_TOO_LARGE, the buffer holds a truncated prefix and *length tells
 * the size needed (capacity must be at least *length + 1).
 */
cm_status_t cm_metrics_render(cm_metrics_t *metrics, char *buffer, size_t capacity, size_t *length);

/*
 * Renders the registry into a new NUL-terminated string in *text (the
 * caller frees it with free()) of *length bytes (length may be NULL).
 * Fails only with CM_ERR_NOMEM, leaving *text NULL.
 */
cm_status_t cm_metrics_render_alloc(cm_metrics_t *metrics, char **text, size_t *length);

#endif
