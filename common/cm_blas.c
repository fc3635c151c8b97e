/*
 * cm_blas: thin wrapper over cblas_sgemm (OpenBLAS) plus a reference twin.
 */
#include "cm_blas.h"

#include <cblas.h>
#include <time.h>

static bool timer_on;
static double timer_seconds;

/* The monotonic clock: read in user space (vDSO), some 20 ns, where a thread's CPU clock is a
 * system call that costs as much as a small sgemm; a benchmark compares it with the wall
 * time of the whole step, which shares whatever preemption the machine adds. */
static double timer_now(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)now.tv_sec + 1e-9 * (double)now.tv_nsec;
}

void cm_blas_timer(bool on) {
    timer_on = on;
    timer_seconds = 0.0;
}

double cm_blas_timer_seconds(void) { return timer_seconds; }

void cm_blas_sgemm(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float *a,
                   int lda, const float *b, int ldb, float beta, float *c, int ldc) {
    if (m == 0 || n == 0) return;
    double started = timer_on ? timer_now() : 0.0;
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                trans_b ? CblasTrans : CblasNoTrans, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    if (timer_on) timer_seconds += timer_now() - started;
}

void cm_blas_sgemm_ref(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float *a,
                       int lda, const float *b, int ldb, float beta, float *c, int ldc) {
    for (int row = 0; row < m; row++) {
        for (int col = 0; col < n; col++) {
            double sum = 0.0;
            for (int inner = 0; inner < k; inner++) {
                double left = trans_a ? a[inner * lda + row] : a[row * lda + inner];
                double right = trans_b ? b[col * ldb + inner] : b[inner * ldb + col];
                sum += left * right;
            }
            float *out = &c[row * ldc + col];
            /* beta == 0 must ignore C entirely (it may hold NaN), as BLAS does. */
            *out = (float)(alpha * sum + (beta == 0.0f ? 0.0 : (double)beta * *out));
        }
    }
}

void cm_blas_set_threads(int threads) { openblas_set_num_threads(threads < 1 ? 1 : threads); }

int cm_blas_threads(void) { return openblas_get_num_threads(); }
