/*
 * cm_schedule: the learning rate at known points of every kind (warm-up ramp, peak, the
 * cosine's midpoint and floor, one-cycle's start, peak and end), continuity (no step changes
 * the rate by more than a small bound, except the warm-up's first step), monotone phases,
 * defaults that reproduce the rule `teacher-server fit` always used, clamping past the end,
 * and the kind names.
 */
#include "cm_schedule.h"

#include <check.h>
#include <math.h>
#include <string.h>

static void assert_close(double got, double want, const char *what) {
    ck_assert_msg(fabs(got - want) <= 1e-6 * (1.0 + fabs(want)), "%s: %.9g, want %.9g", what, got,
                  want);
}

START_TEST(test_constant) {
    cm_schedule_t schedule = cm_schedule_defaults(CM_SCHEDULE_CONSTANT, 0.01f);
    ck_assert_int_eq(cm_schedule_warmup(&schedule, 1000), 0);
    for (long step = 0; step < 1000; step += 37)
        assert_close(cm_schedule_lr(&schedule, step, 1000), 0.01f, "constant");
    schedule.warmup_steps = 10;
    assert_close(cm_schedule_lr(&schedule, 0, 1000), 0.001f, "constant warm-up step 0");
    assert_close(cm_schedule_lr(&schedule, 4, 1000), 0.005f, "constant warm-up step 4");
    assert_close(cm_schedule_lr(&schedule, 10, 1000), 0.01f, "constant after warm-up");
}
END_TEST

/* The default cosine is the rule fit used before cm_schedule existed, value for value. */
static double old_fit_rule(double lr, long step, long total_steps) {
    long warmup = total_steps / 20 < 200 ? total_steps / 20 : 200;
    if (step < warmup) return lr * (double)(step + 1) / (double)warmup;
    double progress =
        (double)(step - warmup) / (double)(total_steps - warmup > 0 ? total_steps - warmup : 1);
    return lr * (0.1 + 0.9 * 0.5 * (1.0 + cos(3.14159265358979 * progress)));
}

START_TEST(test_cosine) {
    cm_schedule_t schedule = cm_schedule_defaults(CM_SCHEDULE_COSINE, 2e-3f);
    const long totals[] = {1, 7, 100, 4690, 100000};
    for (size_t index = 0; index < sizeof totals / sizeof totals[0]; index++)
        for (long step = 0; step < totals[index]; step += 1 + totals[index] / 97)
            ck_assert_msg(fabs(cm_schedule_lr(&schedule, step, totals[index]) -
                               old_fit_rule(2e-3, step, totals[index])) <= 1e-9,
                          "total %ld step %ld", totals[index], step);
    /* 1100 steps: 55 warm-up steps, then 1045 of cosine */
    ck_assert_int_eq(cm_schedule_warmup(&schedule, 1100), 55);
    ck_assert_int_eq(cm_schedule_warmup(&schedule, 100000), 200);
    assert_close(cm_schedule_lr(&schedule, 0, 1100), 2e-3 / 55, "first warm-up step");
    assert_close(cm_schedule_lr(&schedule, 54, 1100), 2e-3, "end of warm-up");
    assert_close(cm_schedule_lr(&schedule, 55, 1100), 2e-3, "peak");
    /* the midpoint of the cosine is halfway between peak and floor */
    schedule.warmup_steps = 100;
    schedule.final_fraction = 0.0f;
    assert_close(cm_schedule_lr(&schedule, 600, 1100), 1e-3, "cosine midpoint");
    assert_close(cm_schedule_lr(&schedule, 1100, 1100), 0.0, "cosine end");
    assert_close(cm_schedule_lr(&schedule, 5000, 1100), 0.0, "past the end");
    /* warm-up rises, cosine falls, and no step jumps by more than peak * pi / decay steps */
    double previous = cm_schedule_lr(&schedule, 0, 1100);
    for (long step = 1; step < 1100; step++) {
        double rate = cm_schedule_lr(&schedule, step, 1100);
        if (step < 100)
            ck_assert(rate > previous);
        else if (step > 100)
            ck_assert(rate < previous);
        ck_assert_msg(fabs(rate - previous) <= 2e-3 * 3.1416 / 1000.0 + 2e-3 / 100.0 + 1e-9,
                      "jump at step %ld: %g -> %g", step, previous, rate);
        previous = rate;
    }
}
END_TEST

START_TEST(test_onecycle) {
    cm_schedule_t schedule = cm_schedule_defaults(CM_SCHEDULE_ONECYCLE, 0.1f);
    ck_assert_int_eq(cm_schedule_warmup(&schedule, 1000), 300);
    assert_close(cm_schedule_lr(&schedule, 0, 1000), 0.1 / 25, "start (div_factor 25)");
    assert_close(cm_schedule_lr(&schedule, 150, 1000), (0.1 + 0.1 / 25) / 2, "rise midpoint");
    assert_close(cm_schedule_lr(&schedule, 300, 1000), 0.1, "peak at the end of the rise");
    assert_close(cm_schedule_lr(&schedule, 999, 1000), 0.1 / 25 / 1e4, "last step");
    assert_close(cm_schedule_lr(&schedule, 2000, 1000), 0.1 / 25 / 1e4, "past the end");
    double previous = cm_schedule_lr(&schedule, 0, 1000), largest_jump = 0.0;
    for (long step = 1; step < 1000; step++) {
        double rate = cm_schedule_lr(&schedule, step, 1000);
        ck_assert(step <= 300 ? rate > previous : rate < previous);
        if (fabs(rate - previous) > largest_jump) largest_jump = fabs(rate - previous);
        previous = rate;
    }
    /* a cosine over 300 steps moves at most (peak - start) * pi / 600 per step */
    ck_assert_msg(largest_jump <= 0.1 * 3.1416 / 600.0, "largest jump %g", largest_jump);
    /* an explicit rise, and degenerate runs */
    schedule.warmup_steps = 10;
    assert_close(cm_schedule_lr(&schedule, 10, 100), 0.1, "explicit rise");
    ck_assert(cm_schedule_lr(&schedule, 0, 1) > 0.0f);
    ck_assert(isfinite(cm_schedule_lr(&schedule, 0, 2)));
    ck_assert_int_eq(cm_schedule_warmup(&schedule, 5), 5);
}
END_TEST

START_TEST(test_kind_names) {
    cm_schedule_kind_t kind;
    const char *names[] = {"constant", "cosine", "onecycle"};
    for (int index = 0; index < 3; index++) {
        ck_assert_int_eq(cm_schedule_parse_kind(names[index], &kind), CM_OK);
        ck_assert_str_eq(cm_schedule_kind_name(kind), names[index]);
    }
    ck_assert_int_eq(cm_schedule_parse_kind("Cosine", &kind), CM_ERR_INVALID_ARG);
    ck_assert_ptr_nonnull(strstr(cm_last_error(), "'Cosine'"));
    ck_assert_ptr_nonnull(strstr(cm_last_error(), "constant, cosine, onecycle"));
}
END_TEST

Suite *check_schedule_suite(void);
Suite *check_schedule_suite(void) {
    Suite *suite = suite_create("schedule");
    TCase *tcase = tcase_create("schedule");
    tcase_add_test(tcase, test_constant);
    tcase_add_test(tcase, test_cosine);
    tcase_add_test(tcase, test_onecycle);
    tcase_add_test(tcase, test_kind_names);
    suite_add_tcase(suite, tcase);
    return suite;
}
