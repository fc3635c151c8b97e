/*
 * cm_metrics: the exact Prometheus text of a small registry (HELP/TYPE lines,
 * labels, cumulative buckets, number spellings), escaping of help text and
 * label values, name validation and family agreement, rendering into a
 * buffer that is too small, and lock-free updates from two threads that
 * must add up exactly.
 */
#include "cm_metrics.h"
#include "cm_rng.h"

#include <check.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static cm_metrics_t *new_registry(void) {
    cm_metrics_t *metrics = NULL;
    ck_assert_int_eq(cm_metrics_new(&metrics), CM_OK);
    ck_assert_ptr_nonnull(metrics);
    return metrics;
}

static char *render(cm_metrics_t *metrics) {
    char *text = NULL;
    size_t length = 0;
    ck_assert_int_eq(cm_metrics_render_alloc(metrics, &text, &length), CM_OK);
    ck_assert_uint_eq(length, strlen(text));
    return text;
}

START_TEST(test_render_exact_text) {
    cm_metrics_t *metrics = new_registry();
    cm_metrics_counter_t *requests, *busy, *version;
    cm_metrics_gauge_t *ready, *queue;
    cm_metrics_histogram_t *compute;
    ck_assert_int_eq(
        cm_metrics_register_counter(metrics, "requests_total", "Batch requests.", NULL, &requests),
        CM_OK);
    ck_assert_int_eq(cm_metrics_register_counter(metrics, "errors_total", "Errors by code.",
                                                 &(cm_metrics_label_t){"code", "BUSY"}, &busy),
                     CM_OK);
    ck_assert_int_eq(cm_metrics_register_gauge(metrics, "ready", "1 when serving.", NULL, &ready),
                     CM_OK);
    ck_assert_int_eq(cm_metrics_register_counter(metrics, "errors_total", "Errors by code.",
                                                 &(cm_metrics_label_t){"code", "VERSION"},
                                                 &version),
                     CM_OK);
    ck_assert_int_eq(
        cm_metrics_register_gauge(metrics, "queue_depth", "Queued requests.", NULL, &queue), CM_OK);
    const double bounds[] = {0.1, 1.0};
    ck_assert_int_eq(cm_metrics_register_histogram(metrics, "compute_seconds", "Forward pass time.",
                                                   NULL, bounds, 2, &compute),
                     CM_OK);

    cm_metrics_counter_add(requests, 3);
    cm_metrics_counter_add(busy, 2);
    cm_metrics_gauge_set(ready, 1.0);
    cm_metrics_gauge_add(queue, 2.5);
    cm_metrics_gauge_add(queue, -0.25);
    cm_metrics_histogram_observe(compute, 0.0625);
    cm_metrics_histogram_observe(compute, 0.1); /* on a bound: counts in that bucket (le) */
    cm_metrics_histogram_observe(compute, 0.5);
    cm_metrics_histogram_observe(compute, 2.0);

    const char *expected = "# HELP requests_total Batch requests.\n"
                           "# TYPE requests_total counter\n"
                           "requests_total 3\n"
                           "# HELP errors_total Errors by code.\n"
                           "# TYPE errors_total counter\n"
                           "errors_total{code=\"BUSY\"} 2\n"
                           "errors_total{code=\"VERSION\"} 0\n"
                           "# HELP ready 1 when serving.\n"
                           "# TYPE ready gauge\n"
                           "ready 1\n"
                           "# HELP queue_depth Queued requests.\n"
                           "# TYPE queue_depth gauge\n"
                           "queue_depth 2.25\n"
                           "# HELP compute_seconds Forward pass time.\n"
                           "# TYPE compute_seconds histogram\n"
                           "compute_seconds_bucket{le=\"0.1\"} 2\n"
                           "compute_seconds_bucket{le=\"1\"} 3\n"
                           "compute_seconds_bucket{le=\"+Inf\"} 4\n"
                           "compute_seconds_sum 2.6625\n"
                           "compute_seconds_count 4\n";
    char *text = render(metrics);
    ck_assert_str_eq(text, expected);
    free(text);

    ck_assert_uint_eq(cm_metrics_counter_value(busy), 2);
    ck_assert_uint_eq(cm_metrics_histogram_count(compute), 4);
    ck_assert_double_eq(cm_metrics_histogram_sum(compute), 2.6625);
    cm_metrics_free(&metrics);
    ck_assert_ptr_null(metrics);
}
END_TEST

START_TEST(test_labelled_histogram_and_special_values) {
    cm_metrics_t *metrics = new_registry();
    cm_metrics_histogram_t *fast;
    cm_metrics_gauge_t *loss, *up, *down;
    const double bounds[] = {0.25};
    ck_assert_int_eq(cm_metrics_register_histogram(metrics, "queue_seconds", "Time in queue.",
                                                   &(cm_metrics_label_t){"teacher", "vit"}, bounds,
                                                   1, &fast),
                     CM_OK);
    ck_assert_int_eq(cm_metrics_register_gauge(metrics, "loss", "Loss.",
                                               &(cm_metrics_label_t){"kind", "nan"}, &loss),
                     CM_OK);
    ck_assert_int_eq(cm_metrics_register_gauge(metrics, "loss", "Loss.",
                                               &(cm_metrics_label_t){"kind", "up"}, &up),
                     CM_OK);
    ck_assert_int_eq(cm_metrics_register_gauge(metrics, "loss", "Loss.",
                                               &(cm_metrics_label_t){"kind", "down"}, &down),
                     CM_OK);
    cm_metrics_histogram_observe(fast, 0.125);
    cm_metrics_histogram_observe(fast, NAN); /* goes to +Inf only, poisons the sum */
    cm_metrics_gauge_set(loss, NAN);
    cm_metrics_gauge_set(up, INFINITY);
    cm_metrics_gauge_set(down, 0.1);
    const char *expected = "# HELP queue_seconds Time in queue.\n"
                           "# TYPE queue_seconds histogram\n"
                           "queue_seconds_bucket{teacher=\"vit\",le=\"0.25\"} 1\n"
                           "queue_seconds_bucket{teacher=\"vit\",le=\"+Inf\"} 2\n"
                           "queue_seconds_sum{teacher=\"vit\"} NaN\n"
                           "queue_seconds_count{teacher=\"vit\"} 2\n"
                           "# HELP loss Loss.\n"
                           "# TYPE loss gauge\n"
                           "loss{kind=\"nan\"} NaN\n"
                           "loss{kind=\"up\"} +Inf\n"
                           "loss{kind=\"down\"} 0.1\n";
    char *text = render(metrics);
    ck_assert_str_eq(text, expected);
    free(text);
    cm_metrics_free(&metrics);
}
END_TEST

START_TEST(test_default_buckets) {
    cm_metrics_t *metrics = new_registry();
    cm_metrics_histogram_t *latency;
    ck_assert_int_eq(cm_metrics_register_histogram(metrics, "rtt_seconds", "Round trips.", NULL,
                                                   NULL, 0, &latency),
                     CM_OK);
    cm_metrics_histogram_observe(latency, 0.00016);
    char *text = render(metrics);
    ck_assert_ptr_nonnull(strstr(text, "rtt_seconds_bucket{le=\"0.0001\"} 0\n"
                                       "rtt_seconds_bucket{le=\"0.00025\"} 1\n"));
    ck_assert_ptr_nonnull(strstr(text, "rtt_seconds_bucket{le=\"10\"} 1\n"
                                       "rtt_seconds_bucket{le=\"+Inf\"} 1\n"
                                       "rtt_seconds_sum 0.00016\n"
                                       "rtt_seconds_count 1\n"));
    free(text);
    cm_metrics_free(&metrics);
}
END_TEST

START_TEST(test_escaping) {
    cm_metrics_t *metrics = new_registry();
    cm_metrics_counter_t *odd;
    ck_assert_int_eq(
        cm_metrics_register_counter(metrics, "odd_total",
                                    "Help with a \\ backslash,\na newline and \"quotes\".",
                                    &(cm_metrics_label_t){"path", "C:\\dir\n\"x\""}, &odd),
        CM_OK);
    cm_metrics_counter_add(odd, 1);
    /* help escapes \ and newline only; label values also escape the double quote */
    const char *expected =
        "# HELP odd_total Help with a \\\\ backslash,\\na newline and \"quotes\".\n"
        "# TYPE odd_total counter\n"
        "odd_total{path=\"C:\\\\dir\\n\\\"x\\\"\"} 1\n";
    char *text = render(metrics);
    ck_assert_str_eq(text, expected);
    free(text);
    cm_metrics_free(&metrics);
}
END_TEST

START_TEST(test_registration_rules) {
    cm_metrics_t *metrics = new_registry();
    cm_metrics_counter_t *first, *again, *other;
    cm_metrics_gauge_t *gauge;
    cm_metrics_histogram_t *histogram;

    ck_assert_int_eq(cm_metrics_register_counter(metrics, "bytes_total", "Bytes sent.",
                                                 &(cm_metrics_label_t){"peer", "a"}, &first),
                     CM_OK);
    ck_assert_int_eq(cm_metrics_register_counter(metrics, "bytes_total", "Bytes sent.",
                                                 &(cm_metrics_label_t){"peer", "a"}, &again),
                     CM_OK);
    ck_assert_ptr_eq(first, again);
    ck_assert_int_eq(cm_metrics_register_counter(metrics, "bytes_total", "Bytes sent.",
                                                 &(cm_metrics_label_t){"peer", "b"}, &other),
                     CM_OK);
    ck_assert_ptr_ne(first, other);

    /* a family agrees on type, help and label name */
    ck_assert_int_eq(cm_metrics_register_gauge(metrics, "bytes_total", "Bytes sent.", NULL, &gauge),
                     CM_ERR_MISMATCH);
    ck_assert_ptr_null(gauge);
    ck_assert_ptr_nonnull(strstr(cm_last_error(), "bytes_total"));
    ck_assert_int_eq(cm_metrics_register_counter(metrics, "bytes_total", "Other help.",
                                                 &(cm_metrics_label_t){"peer", "a"}, &other),
                     CM_ERR_MISMATCH);
    ck_assert_int_eq(cm_metrics_register_counter(metrics, "bytes_total", "Bytes sent.",
                                                 &(cm_metrics_label_t){"host", "a"}, &other),
                     CM_ERR_MISMATCH);
    ck_assert_int_eq(
        cm_metrics_register_counter(metrics, "bytes_total", "Bytes sent.", NULL, &other),
        CM_ERR_MISMATCH);

    /* names and labels */
    ck_assert_int_eq(cm_metrics_register_counter(metrics, "9lives", "x", NULL, &other),
                     CM_ERR_INVALID_ARG);
    ck_assert_ptr_nonnull(strstr(cm_last_error(), "9lives"));
    ck_assert_int_eq(cm_metrics_register_counter(metrics, "has space", "x", NULL, &other),
                     CM_ERR_INVALID_ARG);
    ck_assert_int_eq(cm_metrics_register_counter(metrics, "", "x", NULL, &other),
                     CM_ERR_INVALID_ARG);
    ck_assert_int_eq(cm_metrics_register_counter(metrics, "ok_total", NULL, NULL, &other),
                     CM_ERR_INVALID_ARG);
    ck_assert_int_eq(cm_metrics_register_counter(metrics, "ok_total", "x",
                                                 &(cm_metrics_label_t){"__reserved", "v"}, &other),
                     CM_ERR_INVALID_ARG);
    ck_assert_int_eq(cm_metrics_register_counter(metrics, "ok_total", "x",
                                                 &(cm_metrics_label_t){"code-name", "v"}, &other),
                     CM_ERR_INVALID_ARG);
    ck_assert_int_eq(cm_metrics_register_counter(metrics, "ok_total", "x",
                                                 &(cm_metrics_label_t){"code", NULL}, &other),
                     CM_ERR_INVALID_ARG);
    ck_assert_int_eq(cm_metrics_register_counter(metrics, "name:space_total", "x", NULL, &other),
                     CM_OK);

    /* histogram bounds and the reserved "le" */
    const double decreasing[] = {1.0, 0.5};
    const double infinite[] = {1.0, INFINITY};
    ck_assert_int_eq(
        cm_metrics_register_histogram(metrics, "h_seconds", "x", NULL, decreasing, 2, &histogram),
        CM_ERR_INVALID_ARG);
    ck_assert_int_eq(
        cm_metrics_register_histogram(metrics, "h_seconds", "x", NULL, infinite, 2, &histogram),
        CM_ERR_INVALID_ARG);
    ck_assert_int_eq(
        cm_metrics_register_histogram(metrics, "h_seconds", "x", NULL, decreasing, 0, &histogram),
        CM_ERR_INVALID_ARG);
    ck_assert_int_eq(cm_metrics_register_histogram(metrics, "h_seconds", "x",
                                                   &(cm_metrics_label_t){"le", "1"}, NULL, 0,
                                                   &histogram),
                     CM_ERR_INVALID_ARG);
    ck_assert_int_eq(
        cm_metrics_register_histogram(metrics, "h_seconds", "x", NULL, decreasing, 1, &histogram),
        CM_OK);
    ck_assert_int_eq(
        cm_metrics_register_histogram(metrics, "h_seconds", "x", NULL, infinite, 1, &histogram),
        CM_OK); /* same single bound {1.0} */
    ck_assert_int_eq(
        cm_metrics_register_histogram(metrics, "h_seconds", "x", NULL, NULL, 0, &histogram),
        CM_ERR_MISMATCH);

    /* NULL handles are ignored, so optional metrics need no checks at call sites */
    cm_metrics_counter_add(NULL, 1);
    cm_metrics_gauge_set(NULL, 1.0);
    cm_metrics_gauge_add(NULL, 1.0);
    cm_metrics_histogram_observe(NULL, 1.0);
    ck_assert_uint_eq(cm_metrics_counter_value(NULL), 0);
    cm_metrics_free(&metrics);
    cm_metrics_free(&metrics); /* NULL-safe */
}
END_TEST

START_TEST(test_float_counter_and_info) {
    cm_metrics_t *metrics = new_registry();
    cm_metrics_gauge_t *waited;
    ck_assert_int_eq(cm_metrics_register_float_counter(metrics, "wait_seconds_total",
                                                       "Seconds waited.", NULL, &waited),
                     CM_OK);
    cm_metrics_gauge_add(waited, 0.25);
    cm_metrics_gauge_add(waited, 1.5);
    cm_metrics_label_t fm[2] = {{"name", "fm"}, {"model", "vit:\"x\"\\y"}};
    cm_metrics_label_t comp[2] = {{"name", "comp"}, {"model", "mlp:49-10"}};
    ck_assert_int_eq(cm_metrics_register_info(metrics, "teacher_info", "A teacher.", fm, 2), CM_OK);
    ck_assert_int_eq(cm_metrics_register_info(metrics, "teacher_info", "A teacher.", comp, 2),
                     CM_OK);
    ck_assert_int_eq(cm_metrics_register_info(metrics, "teacher_info", "A teacher.", fm, 2), CM_OK);
    char *text = render(metrics);
    ck_assert_str_eq(text, "# HELP wait_seconds_total Seconds waited.\n"
                           "# TYPE wait_seconds_total counter\n"
                           "wait_seconds_total 1.75\n"
                           "# HELP teacher_info A teacher.\n"
                           "# TYPE teacher_info gauge\n"
                           "teacher_info{name=\"fm\",model=\"vit:\\\"x\\\"\\\\y\"} 1\n"
                           "teacher_info{name=\"comp\",model=\"mlp:49-10\"} 1\n");
    free(text);
    /* No labels, a label twice, a bad label name, and a counter under the info's name fail. */
    ck_assert_int_eq(cm_metrics_register_info(metrics, "other_info", "x.", fm, 0),
                     CM_ERR_INVALID_ARG);
    cm_metrics_label_t twice[2] = {{"name", "a"}, {"name", "b"}};
    ck_assert_int_eq(cm_metrics_register_info(metrics, "other_info", "x.", twice, 2),
                     CM_ERR_INVALID_ARG);
    cm_metrics_label_t bad[1] = {{"__name", "a"}};
    ck_assert_int_eq(cm_metrics_register_info(metrics, "other_info", "x.", bad, 1),
                     CM_ERR_INVALID_ARG);
    cm_metrics_counter_t *counter;
    ck_assert_int_eq(
        cm_metrics_register_counter(metrics, "teacher_info", "A teacher.", NULL, &counter),
        CM_ERR_MISMATCH);
    cm_metrics_free(&metrics);
}
END_TEST

START_TEST(test_render_into_buffer) {
    cm_metrics_t *metrics = new_registry();
    char buffer[256];
    size_t length = 99;
    ck_assert_int_eq(cm_metrics_render(metrics, buffer, sizeof buffer, &length), CM_OK);
    ck_assert_uint_eq(length, 0);
    ck_assert_str_eq(buffer, "");
    char *empty = render(metrics);
    ck_assert_str_eq(empty, "");
    free(empty);

    cm_metrics_counter_t *counter;
    ck_assert_int_eq(cm_metrics_register_counter(metrics, "a_total", "A.", NULL, &counter), CM_OK);
    cm_metrics_counter_add(counter, 12345);
    const char *expected = "# HELP a_total A.\n# TYPE a_total counter\na_total 12345\n";
    size_t needed = strlen(expected);

    ck_assert_int_eq(cm_metrics_render(metrics, buffer, needed, &length), CM_ERR_TOO_LARGE);
    ck_assert_uint_eq(length, needed);
    ck_assert_uint_eq(strlen(buffer), needed - 1); /* truncated, still terminated */
    ck_assert_int_eq(strncmp(buffer, expected, needed - 1), 0);
    ck_assert_int_eq(cm_metrics_render(metrics, NULL, 0, &length), CM_ERR_TOO_LARGE);
    ck_assert_uint_eq(length, needed);

    ck_assert_int_eq(cm_metrics_render(metrics, buffer, needed + 1, &length), CM_OK);
    ck_assert_str_eq(buffer, expected);
    cm_metrics_free(&metrics);
}
END_TEST

START_TEST(test_large_registry_grows) {
    cm_metrics_t *metrics = new_registry();
    cm_rng_t rng;
    cm_rng_seed(&rng, 11);
    uint64_t total = 0;
    for (int i = 0; i < 300; i++) {
        char value[16];
        snprintf(value, sizeof value, "c%03d", i);
        cm_metrics_counter_t *counter;
        ck_assert_int_eq(cm_metrics_register_counter(metrics, "many_total", "Many.",
                                                     &(cm_metrics_label_t){"id", value}, &counter),
                         CM_OK);
        uint64_t amount = cm_rng_below(&rng, 1000000);
        cm_metrics_counter_add(counter, amount);
        total += amount;
    }
    char *text = render(metrics);
    ck_assert_uint_gt(strlen(text), 1024 * 8);
    uint64_t rendered = 0;
    int lines = 0;
    for (char *line = strstr(text, "many_total{"); line; line = strstr(line + 1, "many_total{")) {
        rendered += strtoull(strchr(line, ' ') + 1, NULL, 10);
        lines++;
    }
    ck_assert_int_eq(lines, 300);
    ck_assert_uint_eq(rendered, total);
    ck_assert_ptr_nonnull(strstr(text, "many_total{id=\"c299\"}"));
    free(text);
    cm_metrics_free(&metrics);
}
END_TEST

enum { UPDATES_PER_THREAD = 200000 };

typedef struct {
    cm_metrics_counter_t *counter;
    cm_metrics_gauge_t *gauge;
    cm_metrics_histogram_t *histogram;
    cm_metrics_t *metrics;
} shared_handles_t;

/* Runs on two threads at once; returns non-NULL on failure (Check asserts belong to the
 * test's own thread). */

static void *hammer(void *argument) {
    shared_handles_t *handles = argument;
    for (int i = 0; i < UPDATES_PER_THREAD; i++) {
        cm_metrics_counter_add(handles->counter, 1);
        cm_metrics_gauge_add(handles->gauge, 1.0);
        cm_metrics_histogram_observe(handles->histogram, (i & 1) ? 0.5 : 2.0);
        if (i % 20000 == 0) { /* a scrape and a lazy registration during the updates */
            char *text = NULL;
            if (cm_metrics_render_alloc(handles->metrics, &text, NULL) != CM_OK)
                return (void *)"render";
            free(text);
            cm_metrics_counter_t *lazy;
            if (cm_metrics_register_counter(handles->metrics, "lazy_total", "L.", NULL, &lazy) !=
                CM_OK)
                return (void *)"register";
            cm_metrics_counter_add(lazy, 1);
        }
    }
    return NULL;
}

START_TEST(test_concurrent_updates_sum_exactly) {
    cm_metrics_t *metrics = new_registry();
    shared_handles_t handles = {.metrics = metrics};
    const double bounds[] = {1.0};
    ck_assert_int_eq(
        cm_metrics_register_counter(metrics, "hits_total", "Hits.", NULL, &handles.counter), CM_OK);
    ck_assert_int_eq(cm_metrics_register_gauge(metrics, "level", "Level.", NULL, &handles.gauge),
                     CM_OK);
    ck_assert_int_eq(cm_metrics_register_histogram(metrics, "t_seconds", "T.", NULL, bounds, 1,
                                                   &handles.histogram),
                     CM_OK);
    pthread_t threads[2];
    for (int i = 0; i < 2; i++)
        ck_assert_int_eq(pthread_create(&threads[i], NULL, hammer, &handles), 0);
    for (int i = 0; i < 2; i++) {
        void *failure = NULL;
        ck_assert_int_eq(pthread_join(threads[i], &failure), 0);
        ck_assert_msg(failure == NULL, "thread %d failed to %s", i, (const char *)failure);
    }

    const uint64_t total = 2 * UPDATES_PER_THREAD;
    ck_assert_uint_eq(cm_metrics_counter_value(handles.counter), total);
    ck_assert_double_eq(cm_metrics_gauge_value(handles.gauge), (double)total);
    ck_assert_uint_eq(cm_metrics_histogram_count(handles.histogram), total);
    ck_assert_double_eq(cm_metrics_histogram_sum(handles.histogram), 1.25 * (double)total);
    char *text = render(metrics);
    ck_assert_ptr_nonnull(strstr(text, "\nhits_total 400000\n"));
    ck_assert_ptr_nonnull(strstr(text, "\nlevel 400000\n"));
    ck_assert_ptr_nonnull(strstr(text, "\nt_seconds_bucket{le=\"1\"} 200000\n"
                                       "t_seconds_bucket{le=\"+Inf\"} 400000\n"
                                       "t_seconds_sum 500000\n"
                                       "t_seconds_count 400000\n"));
    ck_assert_ptr_nonnull(strstr(text, "\nlazy_total 20\n"));
    free(text);
    cm_metrics_free(&metrics);
}
END_TEST

Suite *check_metrics_suite(void);
Suite *check_metrics_suite(void) {
    Suite *suite = suite_create("metrics");
    TCase *text = tcase_create("text");
    tcase_add_test(text, test_render_exact_text);
    tcase_add_test(text, test_labelled_histogram_and_special_values);
    tcase_add_test(text, test_default_buckets);
    tcase_add_test(text, test_escaping);
    tcase_add_test(text, test_registration_rules);
    tcase_add_test(text, test_float_counter_and_info);
    tcase_add_test(text, test_render_into_buffer);
    tcase_add_test(text, test_large_registry_grows);
    suite_add_tcase(suite, text);
    TCase *threads = tcase_create("threads");
    tcase_set_timeout(threads, 10);
    tcase_add_test(threads, test_concurrent_updates_sum_exactly);
    suite_add_tcase(suite, threads);
    return suite;
}
