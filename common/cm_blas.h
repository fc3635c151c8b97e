/*
 * cm_blas: the one seam between committee and BLAS.
 *
 * All matrices are row-major float32.  cm_blas_sgemm computes
 *     C[m][n] = alpha * op(A)[m][k] · op(B)[k][n] + beta * C[m][n]
 * where op(X) is X or its transpose.  With trans_a, A is stored as [k][lda];
 * without, as [m][lda] (likewise for B).  cm_blas_sgemm_ref is a plain-C
 * twin that tests compare against; it is slow and exact in its order of
 * summation (double accumulator).
 *
 * OpenBLAS threads are process-wide: cm_blas_set_threads() is called once by
 * each binary (default 1; see DESIGN.md §5 on why).
 */
#ifndef CM_BLAS_H
#define CM_BLAS_H

#include <stdbool.h>

void cm_blas_sgemm(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float *a,
                   int lda, const float *b, int ldb, float beta, float *c, int ldc);

void cm_blas_sgemm_ref(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float *a,
                       int lda, const float *b, int ldb, float beta, float *c, int ldc);

/* Sets the number of OpenBLAS threads for the whole process (>= 1). */
void cm_blas_set_threads(int threads);

/* The number of threads OpenBLAS currently uses. */
int cm_blas_threads(void);

/* Benchmarks' timer around the seam: while on, every cm_blas_sgemm call adds its duration
 * (the monotonic clock) to a process-wide total.  Off by default (then a call costs one
 * branch more); not meant for threads calling sgemm at once.  cm_blas_timer(true) resets it. */
void cm_blas_timer(bool on);
/* Seconds spent in cm_blas_sgemm since the timer was switched on. */
double cm_blas_timer_seconds(void);

#endif
