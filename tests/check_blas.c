/*
 * cm_blas: OpenBLAS through the seam must agree with the plain-C reference on
 * awkward shapes (1, primes, non-multiples of 8), every transpose
 * combination, padded leading dimensions, and alpha/beta.
 */
#include "cm_blas.h"
#include "cm_rng.h"

#include <check.h>
#include <math.h>
#include <stdlib.h>

static void fill(cm_rng_t *rng, float *values, int count) {
    for (int i = 0; i < count; i++) values[i] = cm_rng_uniform(rng) * 2.0f - 1.0f;
}

START_TEST(test_sgemm_matches_reference) {
    static const int sizes[] = {1, 2, 3, 7, 8, 13, 17, 31, 64, 67};
    const int count = (int)(sizeof sizes / sizeof sizes[0]);
    cm_rng_t rng;
    cm_rng_seed(&rng, 7);
    for (int trans = 0; trans < 4; trans++) {
        bool trans_a = trans & 1, trans_b = trans & 2;
        for (int im = 0; im < count; im += 2)
            for (int in = 1; in < count; in += 3)
                for (int ik = 0; ik < count; ik += 2) {
                    int m = sizes[im], n = sizes[in], k = sizes[ik];
                    int pad = 3; /* leading dimensions wider than the matrix */
                    int lda = (trans_a ? m : k) + pad, ldb = (trans_b ? k : n) + pad, ldc = n + pad;
                    int rows_a = trans_a ? k : m, rows_b = trans_b ? n : k;
                    float *a = malloc(sizeof(float) * (size_t)(rows_a * lda));
                    float *b = malloc(sizeof(float) * (size_t)(rows_b * ldb));
                    float *c = malloc(sizeof(float) * (size_t)(m * ldc));
                    float *c_ref = malloc(sizeof(float) * (size_t)(m * ldc));
                    fill(&rng, a, rows_a * lda);
                    fill(&rng, b, rows_b * ldb);
                    fill(&rng, c, m * ldc);
                    for (int i = 0; i < m * ldc; i++) c_ref[i] = c[i];
                    cm_blas_sgemm(trans_a, trans_b, m, n, k, 0.5f, a, lda, b, ldb, 0.25f, c, ldc);
                    cm_blas_sgemm_ref(trans_a, trans_b, m, n, k, 0.5f, a, lda, b, ldb, 0.25f, c_ref,
                                      ldc);
                    for (int row = 0; row < m; row++)
                        for (int col = 0; col < ldc; col++) {
                            float got = c[row * ldc + col], want = c_ref[row * ldc + col];
                            ck_assert_msg(fabsf(got - want) <= 1e-4f * (float)k + 1e-5f,
                                          "sgemm %c%c m=%d n=%d k=%d at (%d,%d): %g vs %g",
                                          trans_a ? 'T' : 'N', trans_b ? 'T' : 'N', m, n, k, row,
                                          col, got, want);
                        }
                    free(a);
                    free(b);
                    free(c);
                    free(c_ref);
                }
    }
}
END_TEST

START_TEST(test_beta_zero_ignores_nan) {
    float a[2] = {1, 2}, b[2] = {3, 4}, c[1] = {NAN}, c_ref[1] = {NAN};
    cm_blas_sgemm(false, false, 1, 1, 2, 1.0f, a, 2, b, 1, 0.0f, c, 1);
    cm_blas_sgemm_ref(false, false, 1, 1, 2, 1.0f, a, 2, b, 1, 0.0f, c_ref, 1);
    ck_assert_float_eq(c[0], 11.0f);
    ck_assert_float_eq(c_ref[0], 11.0f);
}
END_TEST

START_TEST(test_thread_count) {
    cm_blas_set_threads(1);
    ck_assert_int_eq(cm_blas_threads(), 1);
}
END_TEST

Suite *check_blas_suite(void);
Suite *check_blas_suite(void) {
    Suite *suite = suite_create("blas");
    TCase *tcase = tcase_create("sgemm");
    tcase_add_test(tcase, test_sgemm_matches_reference);
    tcase_add_test(tcase, test_beta_zero_ignores_nan);
    tcase_add_test(tcase, test_thread_count);
    suite_add_tcase(suite, tcase);
    return suite;
}
