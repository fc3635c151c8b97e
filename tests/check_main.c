/*
 * The one test runner: every tests/check_<module>.c defines
 * `Suite *check_<module>_suite(void)`; the Makefile lists them in
 * check_suites.h.  Exit status is non-zero if any test fails.
 * CK_RUN_SUITE / CK_RUN_CASE (Check's own variables) select a subset.
 */
#include <check.h>
#include <stdlib.h>

#define CHECK_SUITE(name) Suite *check_##name##_suite(void);
#include "check_suites.h"
#undef CHECK_SUITE

int main(void) {
    SRunner *runner = srunner_create(NULL);
#define CHECK_SUITE(name) srunner_add_suite(runner, check_##name##_suite());
#include "check_suites.h"
#undef CHECK_SUITE
    srunner_run_all(runner, CK_NORMAL);
    int failed = srunner_ntests_failed(runner);
    srunner_free(runner);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
