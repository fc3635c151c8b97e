/*
 * cm_layers: every backward kernel against central finite differences (via
 * check_gradcheck.h, which also checks that backward adds), every forward
 * kernel against a plain double-precision reference or a known value, the
 * invariants (attention rows sum to 1, masked keys get exactly 0 and an
 * all-masked example no NaN, masked pooling ignores padding, layer-norm rows
 * have mean 0 and variance 1), and a tiny MLP built from the kernels that overfits one batch
 * with AdamW.  Sizes are small and awkward (primes, non-multiples of 8) so
 * index mistakes cannot hide; all data comes from seeded cm_rng streams.
 */
#include "cm_adamw.h"
#include "cm_layers.h"
#include "cm_loss.h"
#include "cm_rng.h"
#include "cm_vec.h"

#include "check_gradcheck.h"

#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static float *floats(int count) {
    float *values = calloc((size_t)count, sizeof(float));
    ck_assert_ptr_nonnull(values);
    return values;
}

static float *random_floats(cm_rng_t *rng, int count, float low, float high) {
    float *values = floats(count);
    gradcheck_fill(rng, values, count, low, high);
    return values;
}

/* ---- dense ---------------------------------------------------------------------------- */

typedef struct {
    int rows, in_dim, out_dim;
    float *in, *weight, *bias, *out, *d_out;
    float *d_in, *d_weight, *d_bias;
} dense_case_t;

static void dense_case_init(dense_case_t *test, cm_rng_t *rng, int rows, int in_dim, int out_dim) {
    test->rows = rows;
    test->in_dim = in_dim;
    test->out_dim = out_dim;
    test->in = random_floats(rng, rows * in_dim, -1.0f, 1.0f);
    test->weight = random_floats(rng, out_dim * in_dim, -1.0f, 1.0f);
    test->bias = random_floats(rng, out_dim, -1.0f, 1.0f);
    test->out = floats(rows * out_dim);
    test->d_out = random_floats(rng, rows * out_dim, -1.0f, 1.0f);
    test->d_in = floats(rows * in_dim);
    test->d_weight = floats(out_dim * in_dim);
    test->d_bias = floats(out_dim);
}

static void dense_case_deinit(dense_case_t *test) {
    free(test->in);
    free(test->weight);
    free(test->bias);
    free(test->out);
    free(test->d_out);
    free(test->d_in);
    free(test->d_weight);
    free(test->d_bias);
}

static double dense_loss(void *context) {
    dense_case_t *test = context;
    cm_layers_dense_forward(test->out, test->in, test->weight, test->bias, test->rows, test->in_dim,
                            test->out_dim);
    return gradcheck_dot(test->d_out, test->out, test->rows * test->out_dim);
}

static void dense_backward(void *context) {
    dense_case_t *test = context;
    cm_layers_dense_backward(test->d_in, test->d_weight, test->d_bias, test->d_out, test->in,
                             test->weight, test->rows, test->in_dim, test->out_dim);
}

START_TEST(test_dense_gradients) {
    static const int shapes[][3] = {{3, 5, 7}, {1, 1, 1}, {13, 17, 9}};
    cm_rng_t rng;
    cm_rng_seed(&rng, 101);
    for (size_t shape = 0; shape < sizeof shapes / sizeof shapes[0]; shape++) {
        dense_case_t test;
        dense_case_init(&test, &rng, shapes[shape][0], shapes[shape][1], shapes[shape][2]);
        gradcheck_param_t params[] = {
            {"dense in", test.in, test.d_in, test.rows * test.in_dim},
            {"dense weight", test.weight, test.d_weight, test.out_dim * test.in_dim},
            {"dense bias", test.bias, test.d_bias, test.out_dim},
        };
        gradcheck_run(&rng, params, 3, dense_loss, dense_backward, &test,
                      gradcheck_default_tolerance());
        dense_case_deinit(&test);
    }
}
END_TEST

/* Naive out = in · weight^T + bias in double, compared on awkward and on MLP-sized shapes. */
START_TEST(test_dense_forward_matches_reference) {
    static const int shapes[][3] = {{3, 5, 7}, {1, 1, 1}, {13, 17, 9}, {64, 784, 256}};
    cm_rng_t rng;
    cm_rng_seed(&rng, 102);
    for (size_t shape = 0; shape < sizeof shapes / sizeof shapes[0]; shape++) {
        for (int with_bias = 0; with_bias < 2; with_bias++) {
            dense_case_t test;
            dense_case_init(&test, &rng, shapes[shape][0], shapes[shape][1], shapes[shape][2]);
            const float *bias = with_bias ? test.bias : NULL;
            /* Without a bias the output must be overwritten, whatever it held. */
            for (int i = 0; i < test.rows * test.out_dim; i++) test.out[i] = NAN;
            cm_layers_dense_forward(test.out, test.in, test.weight, bias, test.rows, test.in_dim,
                                    test.out_dim);
            for (int row = 0; row < test.rows; row++)
                for (int col = 0; col < test.out_dim; col++) {
                    double want = bias ? bias[col] : 0.0;
                    for (int k = 0; k < test.in_dim; k++)
                        want += (double)test.in[row * test.in_dim + k] *
                                test.weight[col * test.in_dim + k];
                    double got = test.out[row * test.out_dim + col];
                    ck_assert_msg(fabs(got - want) <= 1e-5 * test.in_dim,
                                  "dense %dx%d->%d bias=%d at (%d,%d): %g vs %g", test.rows,
                                  test.in_dim, test.out_dim, with_bias, row, col, got, want);
                }
            dense_case_deinit(&test);
        }
    }
}
END_TEST

/* The fused dense + residual equals the dense layer then the residual add, within a float
 * rounding of each sum (the bias meets the residual before the product instead of after). */
START_TEST(test_dense_forward_residual_matches_composition) {
    static const int shapes[][3] = {{3, 5, 7}, {13, 17, 9}, {34, 24, 96}};
    cm_rng_t rng;
    cm_rng_seed(&rng, 103);
    for (size_t shape = 0; shape < sizeof shapes / sizeof shapes[0]; shape++)
        for (int with_bias = 0; with_bias < 2; with_bias++) {
            dense_case_t test;
            dense_case_init(&test, &rng, shapes[shape][0], shapes[shape][1], shapes[shape][2]);
            const float *bias = with_bias ? test.bias : NULL;
            int count = test.rows * test.out_dim;
            float *residual = random_floats(&rng, count, -2.0f, 2.0f), *fused = floats(count);
            for (int i = 0; i < count; i++) fused[i] = NAN; /* overwritten, whatever it held */
            cm_layers_dense_forward_residual(fused, test.in, test.weight, bias, residual, test.rows,
                                             test.in_dim, test.out_dim);
            cm_layers_dense_forward(test.out, test.in, test.weight, bias, test.rows, test.in_dim,
                                    test.out_dim);
            cm_layers_add_forward(test.out, test.out, residual, count);
            for (int i = 0; i < count; i++)
                ck_assert_msg(fabsf(fused[i] - test.out[i]) <= 1e-5f * (1.0f + fabsf(test.out[i])),
                              "dense+residual %d: %g vs %g", i, (double)fused[i],
                              (double)test.out[i]);
            free(residual);
            free(fused);
            dense_case_deinit(&test);
        }
}
END_TEST

/* NULL gradient pointers are skipped and do not change the gradients that are computed. */
START_TEST(test_dense_backward_null_gradients) {
    cm_rng_t rng;
    cm_rng_seed(&rng, 103);
    dense_case_t test;
    dense_case_init(&test, &rng, 3, 5, 7);
    float *d_weight_alone = floats(7 * 5);
    cm_layers_dense_backward(test.d_in, test.d_weight, test.d_bias, test.d_out, test.in,
                             test.weight, 3, 5, 7);
    cm_layers_dense_backward(NULL, d_weight_alone, NULL, test.d_out, test.in, test.weight, 3, 5, 7);
    for (int i = 0; i < 7 * 5; i++) ck_assert_float_eq(d_weight_alone[i], test.d_weight[i]);
    cm_layers_dense_backward(NULL, NULL, NULL, test.d_out, test.in, test.weight, 3, 5, 7);
    free(d_weight_alone);
    dense_case_deinit(&test);
}
END_TEST

/* ---- elementwise activations ---------------------------------------------------------- */

typedef struct {
    int count;
    float *in, *out, *d_out, *d_in;
    void (*forward)(float *out, const float *in, int count);
    void (*backward)(float *d_in, const float *d_out, const float *in, int count);
} activation_case_t;

static double activation_loss(void *context) {
    activation_case_t *test = context;
    test->forward(test->out, test->in, test->count);
    return gradcheck_dot(test->d_out, test->out, test->count);
}

static void activation_backward(void *context) {
    activation_case_t *test = context;
    test->backward(test->d_in, test->d_out, test->in, test->count);
}

static void check_activation_gradient(const char *name, activation_case_t *test, cm_rng_t *rng) {
    test->out = floats(test->count);
    test->d_out = random_floats(rng, test->count, -1.0f, 1.0f);
    test->d_in = floats(test->count);
    gradcheck_param_t param = {name, test->in, test->d_in, test->count};
    gradcheck_run(rng, &param, 1, activation_loss, activation_backward, test,
                  gradcheck_default_tolerance());
    free(test->in);
    free(test->out);
    free(test->d_out);
    free(test->d_in);
}

START_TEST(test_relu_gradient) {
    cm_rng_t rng;
    cm_rng_seed(&rng, 111);
    activation_case_t test = {
        .count = 37, .forward = cm_layers_relu_forward, .backward = cm_layers_relu_backward};
    test.in = floats(test.count);
    /* Keep inputs at least 0.1 (ten steps) away from the kink at 0. */
    for (int i = 0; i < test.count; i++) {
        float magnitude = 0.1f + 2.0f * cm_rng_uniform(&rng);
        test.in[i] = (i % 2 ? magnitude : -magnitude);
    }
    check_activation_gradient("relu in", &test, &rng);
}
END_TEST

START_TEST(test_relu_forward_in_place) {
    float values[5] = {-2.0f, -0.0f, 0.5f, 3.0f, -1e-30f};
    const float want[5] = {0.0f, 0.0f, 0.5f, 3.0f, 0.0f};
    cm_layers_relu_forward(values, values, 5);
    for (int i = 0; i < 5; i++) ck_assert_float_eq(values[i], want[i]);
}
END_TEST

/* The finite-difference check stays away from the kink; at and near 0 the contract is
 * d_in += d_out * (in > 0): exactly 0 and negative inputs pass nothing. */
START_TEST(test_relu_backward_at_kink) {
    const float in[4] = {0.0f, -0.0f, -1e-6f, 1e-6f}, d_out[4] = {1.0f, 1.0f, 1.0f, 1.0f};
    float d_in[4] = {0.5f, 0.5f, 0.5f, 0.5f};
    cm_layers_relu_backward(d_in, d_out, in, 4);
    ck_assert_float_eq(d_in[0], 0.5f);
    ck_assert_float_eq(d_in[1], 0.5f);
    ck_assert_float_eq(d_in[2], 0.5f);
    ck_assert_float_eq(d_in[3], 1.5f);
}
END_TEST

START_TEST(test_gelu_gradient) {
    cm_rng_t rng;
    cm_rng_seed(&rng, 112);
    activation_case_t test = {
        .count = 41, .forward = cm_layers_gelu_forward, .backward = cm_layers_gelu_backward};
    test.in = random_floats(&rng, test.count, -4.0f, 4.0f);
    check_activation_gradient("gelu in", &test, &rng);
}
END_TEST

/* The tanh approximation, evaluated in double, at a few points including the tails. */
START_TEST(test_gelu_forward_values) {
    const float in[7] = {-10.0f, -3.0f, -1.0f, 0.0f, 0.5f, 1.0f, 10.0f};
    float out[7];
    cm_layers_gelu_forward(out, in, 7);
    for (int i = 0; i < 7; i++) {
        double x = in[i];
        double want = 0.5 * x * (1.0 + tanh(sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
        ck_assert_msg(fabs(out[i] - want) <= 1e-6 * (1.0 + fabs(want)), "gelu(%g) = %g, want %g", x,
                      (double)out[i], want);
    }
    ck_assert_float_eq_tol(out[5], 0.841192f, 1e-5f); /* GELU_tanh(1) */
}
END_TEST

/* ---- layer norm ----------------------------------------------------------------------- */

typedef struct {
    int rows, dim;
    float *in, *gamma, *beta, *out, *mean, *rstd, *d_out;
    float *d_in, *d_gamma, *d_beta;
} layernorm_case_t;

static double layernorm_loss(void *context) {
    layernorm_case_t *test = context;
    cm_layers_layernorm_forward(test->out, test->mean, test->rstd, test->in, test->gamma,
                                test->beta, test->rows, test->dim);
    return gradcheck_dot(test->d_out, test->out, test->rows * test->dim);
}

static void layernorm_backward(void *context) {
    layernorm_case_t *test = context;
    cm_layers_layernorm_backward(test->d_in, test->d_gamma, test->d_beta, test->d_out, test->in,
                                 test->gamma, test->mean, test->rstd, test->rows, test->dim);
}

START_TEST(test_layernorm_gradients) {
    cm_rng_t rng;
    cm_rng_seed(&rng, 121);
    layernorm_case_t test = {.rows = 3, .dim = 7};
    int size = test.rows * test.dim;
    test.in = random_floats(&rng, size, -2.0f, 2.0f);
    test.gamma = random_floats(&rng, test.dim, 0.5f, 1.5f);
    test.beta = random_floats(&rng, test.dim, -0.5f, 0.5f);
    test.out = floats(size);
    test.mean = floats(test.rows);
    test.rstd = floats(test.rows);
    test.d_out = random_floats(&rng, size, -1.0f, 1.0f);
    test.d_in = floats(size);
    test.d_gamma = floats(test.dim);
    test.d_beta = floats(test.dim);
    gradcheck_param_t params[] = {
        {"layernorm in", test.in, test.d_in, size},
        {"layernorm gamma", test.gamma, test.d_gamma, test.dim},
        {"layernorm beta", test.beta, test.d_beta, test.dim},
    };
    gradcheck_run(&rng, params, 3, layernorm_loss, layernorm_backward, &test,
                  gradcheck_default_tolerance());
    /* With d_in == NULL the parameter gradients still arrive. */
    memset(test.d_gamma, 0, sizeof(float) * (size_t)test.dim);
    cm_layers_layernorm_backward(NULL, test.d_gamma, NULL, test.d_out, test.in, test.gamma,
                                 test.mean, test.rstd, test.rows, test.dim);
    for (int i = 0; i < test.dim; i++) {
        double want = 0.0;
        for (int row = 0; row < test.rows; row++) {
            int at = row * test.dim + i;
            want += (double)test.d_out[at] * (test.in[at] - test.mean[row]) * test.rstd[row];
        }
        ck_assert_double_eq_tol(test.d_gamma[i], want, 1e-5);
    }
    free(test.in);
    free(test.gamma);
    free(test.beta);
    free(test.out);
    free(test.mean);
    free(test.rstd);
    free(test.d_out);
    free(test.d_in);
    free(test.d_gamma);
    free(test.d_beta);
}
END_TEST

/* gamma = 1, beta = 0: every row comes out with mean 0 and (biased) variance 1, even when
 * the input rows sit far from 0 (the two-pass variance does not cancel). */
START_TEST(test_layernorm_normalises_rows) {
    enum { rows = 4, dim = 19 };
    cm_rng_t rng;
    cm_rng_seed(&rng, 122);
    float in[rows * dim], out[rows * dim], gamma[dim], beta[dim], mean[rows], rstd[rows];
    for (int i = 0; i < dim; i++) gamma[i] = 1.0f, beta[i] = 0.0f;
    for (int row = 0; row < rows; row++)
        for (int i = 0; i < dim; i++)
            in[row * dim + i] = 100.0f * (float)row + (float)(row + 1) * cm_rng_normal(&rng);
    cm_layers_layernorm_forward(out, mean, rstd, in, gamma, beta, rows, dim);
    for (int row = 0; row < rows; row++) {
        double sum = 0.0, squares = 0.0, input_mean = 0.0;
        for (int i = 0; i < dim; i++) input_mean += in[row * dim + i] / (double)dim;
        for (int i = 0; i < dim; i++) {
            sum += out[row * dim + i];
            squares += (double)out[row * dim + i] * out[row * dim + i];
        }
        ck_assert_double_eq_tol(mean[row], input_mean, 1e-4 * (1.0 + fabs(input_mean)));
        ck_assert_double_eq_tol(sum / dim, 0.0, 1e-5);
        ck_assert_double_eq_tol(squares / dim, 1.0, 1e-4);
    }
}
END_TEST

/* ---- embedding ------------------------------------------------------------------------ */

enum { embedding_vocab = 6, embedding_dim = 4, embedding_count = 9 };
static const int32_t embedding_ids[embedding_count] = {0, 3, 3, 5, 1, 3, 0, 5, 2};

typedef struct {
    float *table, *out, *d_out, *d_table;
} embedding_case_t;

static double embedding_loss(void *context) {
    embedding_case_t *test = context;
    cm_layers_embedding_forward(test->out, embedding_dim, embedding_ids, 1, test->table,
                                embedding_count, embedding_dim);
    return gradcheck_dot(test->d_out, test->out, embedding_count * embedding_dim);
}

static void embedding_backward(void *context) {
    embedding_case_t *test = context;
    cm_layers_embedding_backward(test->d_table, test->d_out, embedding_dim, embedding_ids, 1,
                                 embedding_count, embedding_dim);
}

/* Repeated ids must accumulate; the unused row 4 must get nothing. */
START_TEST(test_embedding_gradient) {
    cm_rng_t rng;
    cm_rng_seed(&rng, 131);
    embedding_case_t test;
    test.table = random_floats(&rng, embedding_vocab * embedding_dim, -1.0f, 1.0f);
    test.out = floats(embedding_count * embedding_dim);
    test.d_out = random_floats(&rng, embedding_count * embedding_dim, -1.0f, 1.0f);
    test.d_table = floats(embedding_vocab * embedding_dim);
    embedding_loss(&test);
    for (int i = 0; i < embedding_count; i++)
        for (int j = 0; j < embedding_dim; j++)
            ck_assert_float_eq(test.out[i * embedding_dim + j],
                               test.table[embedding_ids[i] * embedding_dim + j]);
    gradcheck_param_t param = {"embedding table", test.table, test.d_table,
                               embedding_vocab * embedding_dim};
    gradcheck_run(&rng, &param, 1, embedding_loss, embedding_backward, &test,
                  gradcheck_default_tolerance());
    free(test.table);
    free(test.out);
    free(test.d_out);
    free(test.d_table);
}
END_TEST

/*
 * The strided form the emb model uses: ids[rows][columns] (three columns, each with its own
 * table), column c's rows landing in the slice [c*dim, (c+1)*dim) of out[rows][columns*dim].
 */
enum { strided_rows = 5, strided_columns = 3, strided_dim = 3 };
static const int strided_vocab[strided_columns] = {4, 2, 7};
static const int32_t strided_ids[strided_rows * strided_columns] = {3, 0, 6, 1, 1, 0, 3, 1,
                                                                    6, 0, 0, 2, 3, 1, 5};

typedef struct {
    float *tables[strided_columns], *d_tables[strided_columns], *out, *d_out;
} strided_case_t;

static double strided_loss(void *context) {
    strided_case_t *test = context;
    for (int column = 0; column < strided_columns; column++)
        cm_layers_embedding_forward(test->out + column * strided_dim, strided_columns * strided_dim,
                                    strided_ids + column, strided_columns, test->tables[column],
                                    strided_rows, strided_dim);
    return gradcheck_dot(test->d_out, test->out, strided_rows * strided_columns * strided_dim);
}

static void strided_backward(void *context) {
    strided_case_t *test = context;
    for (int column = 0; column < strided_columns; column++)
        cm_layers_embedding_backward(test->d_tables[column], test->d_out + column * strided_dim,
                                     strided_columns * strided_dim, strided_ids + column,
                                     strided_columns, strided_rows, strided_dim);
}

START_TEST(test_embedding_strided_gradient) {
    cm_rng_t rng;
    cm_rng_seed(&rng, 132);
    strided_case_t test;
    gradcheck_param_t params[strided_columns];
    const char *names[] = {"table 0", "table 1", "table 2"};
    for (int column = 0; column < strided_columns; column++) {
        int count = strided_vocab[column] * strided_dim;
        test.tables[column] = random_floats(&rng, count, -1.0f, 1.0f);
        test.d_tables[column] = floats(count);
        params[column] =
            (gradcheck_param_t){names[column], test.tables[column], test.d_tables[column], count};
    }
    test.out = floats(strided_rows * strided_columns * strided_dim);
    test.d_out = random_floats(&rng, strided_rows * strided_columns * strided_dim, -1.0f, 1.0f);
    strided_loss(&test);
    for (int row = 0; row < strided_rows; row++)
        for (int column = 0; column < strided_columns; column++)
            for (int j = 0; j < strided_dim; j++)
                ck_assert_float_eq(
                    test.out[(row * strided_columns + column) * strided_dim + j],
                    test.tables[column]
                               [strided_ids[row * strided_columns + column] * strided_dim + j]);
    gradcheck_run(&rng, params, strided_columns, strided_loss, strided_backward, &test,
                  gradcheck_default_tolerance());
    for (int column = 0; column < strided_columns; column++) {
        free(test.tables[column]);
        free(test.d_tables[column]);
    }
    free(test.out);
    free(test.d_out);
}
END_TEST

/* ---- attention ------------------------------------------------------------------------ */

/* Probability of `key` for `query` in head block `block` (example * heads + head) of the
 * attention's saved att[batch][heads][keys][queries] (key-major). */
static float att_prob(const float *att, int tokens, int block, int query, int key) {
    return att[((size_t)block * tokens + key) * tokens + query];
}

typedef struct {
    int batch, tokens, dim, heads;
    float *qkv, *out, *att, *d_out, *d_qkv, *scratch;
    const unsigned char *valid; /* [batch][tokens] key mask, NULL: none */
} attention_case_t;

static void attention_case_init(attention_case_t *test, cm_rng_t *rng, int batch, int tokens,
                                int dim, int heads) {
    *test = (attention_case_t){.batch = batch, .tokens = tokens, .dim = dim, .heads = heads};
    test->qkv = random_floats(rng, batch * tokens * 3 * dim, -1.5f, 1.5f);
    test->out = floats(batch * tokens * dim);
    test->att = floats(batch * heads * tokens * tokens);
    test->d_out = random_floats(rng, batch * tokens * dim, -1.0f, 1.0f);
    test->d_qkv = floats(batch * tokens * 3 * dim);
    test->scratch = floats(tokens * tokens);
}

static void attention_case_deinit(attention_case_t *test) {
    free(test->qkv);
    free(test->out);
    free(test->att);
    free(test->d_out);
    free(test->d_qkv);
    free(test->scratch);
}

static double attention_loss(void *context) {
    attention_case_t *test = context;
    cm_layers_attention_forward(test->out, test->att, test->qkv, test->valid, test->batch,
                                test->tokens, test->dim, test->heads);
    return gradcheck_dot(test->d_out, test->out, test->batch * test->tokens * test->dim);
}

static void attention_backward(void *context) {
    attention_case_t *test = context;
    cm_layers_attention_backward(test->d_qkv, test->scratch, test->d_out, test->qkv, test->att,
                                 test->batch, test->tokens, test->dim, test->heads);
}

START_TEST(test_attention_gradient) {
    static const int head_counts[] = {2, 1, 4};
    cm_rng_t rng;
    cm_rng_seed(&rng, 141);
    for (size_t choice = 0; choice < sizeof head_counts / sizeof head_counts[0]; choice++) {
        attention_case_t test;
        attention_case_init(&test, &rng, 2, 5, 8, head_counts[choice]);
        gradcheck_param_t param = {"attention qkv", test.qkv, test.d_qkv, 2 * 5 * 3 * 8};
        gradcheck_run(&rng, &param, 1, attention_loss, attention_backward, &test,
                      gradcheck_default_tolerance());
        attention_case_deinit(&test);
    }
}
END_TEST

/* Against a naive double-precision attention; attention rows are distributions. */
START_TEST(test_attention_forward_matches_reference) {
    enum { batch = 2, tokens = 7, dim = 12, heads = 3, head_dim = dim / heads };
    cm_rng_t rng;
    cm_rng_seed(&rng, 142);
    attention_case_t test;
    attention_case_init(&test, &rng, batch, tokens, dim, heads);
    attention_loss(&test);
    for (int example = 0; example < batch; example++)
        for (int head = 0; head < heads; head++)
            for (int query = 0; query < tokens; query++) {
                const float *qkv = test.qkv + example * tokens * 3 * dim;
                double scores[tokens], max_score = -INFINITY, sum = 0.0, att_sum = 0.0;
                for (int key = 0; key < tokens; key++) {
                    double dot = 0.0;
                    for (int i = 0; i < head_dim; i++)
                        dot += (double)qkv[query * 3 * dim + head * head_dim + i] *
                               qkv[key * 3 * dim + dim + head * head_dim + i];
                    scores[key] = dot / sqrt((double)head_dim);
                    max_score = fmax(max_score, scores[key]);
                }
                for (int key = 0; key < tokens; key++) {
                    scores[key] = exp(scores[key] - max_score);
                    sum += scores[key];
                }
                for (int key = 0; key < tokens; key++) {
                    float prob = att_prob(test.att, tokens, example * heads + head, query, key);
                    ck_assert_double_eq_tol(prob, scores[key] / sum, 1e-6);
                    att_sum += prob;
                }
                ck_assert_double_eq_tol(att_sum, 1.0, 1e-6);
                for (int i = 0; i < head_dim; i++) {
                    double want = 0.0;
                    for (int key = 0; key < tokens; key++)
                        want +=
                            scores[key] / sum * qkv[key * 3 * dim + 2 * dim + head * head_dim + i];
                    ck_assert_double_eq_tol(
                        test.out[(example * tokens + query) * dim + head * head_dim + i], want,
                        1e-5);
                }
            }
    attention_case_deinit(&test);
}
END_TEST

/* Large scores (|q·k| in the hundreds) must still give finite probabilities summing to 1. */
START_TEST(test_attention_stable_for_large_scores) {
    cm_rng_t rng;
    cm_rng_seed(&rng, 143);
    attention_case_t test;
    attention_case_init(&test, &rng, 1, 6, 8, 2);
    for (int i = 0; i < 6 * 3 * 8; i++) test.qkv[i] *= 40.0f;
    attention_loss(&test);
    for (int row = 0; row < 2 * 6; row++) {
        double sum = 0.0;
        for (int col = 0; col < 6; col++) {
            float prob = att_prob(test.att, 6, row / 6, row % 6, col);
            ck_assert(isfinite(prob));
            sum += prob;
        }
        ck_assert_double_eq_tol(sum, 1.0, 1e-6);
    }
    for (int i = 0; i < 6 * 8; i++) ck_assert(isfinite(test.out[i]));
    attention_case_deinit(&test);
}
END_TEST

/*
 * Padding mask: example 0 has keys 1 and 4 masked, example 1 only key 2 valid, example 2 no
 * valid key at all.  The gradient check covers every case (masked attention has the same
 * backward, fed by the zero probabilities); masked keys get probability exactly 0, the other
 * rows still sum to 1, an all-masked example yields zeros (not NaN), and masked values and
 * keys cannot change the output.
 */
enum { masked_batch = 3, masked_tokens = 5, masked_dim = 8 };
static const unsigned char masked_valid[masked_batch * masked_tokens] = {1, 0, 1, 1, 0, 0, 0, 1,
                                                                         0, 0, 0, 0, 0, 0, 0};

START_TEST(test_attention_masked_gradient) {
    static const int head_counts[] = {2, 1};
    cm_rng_t rng;
    cm_rng_seed(&rng, 144);
    for (size_t choice = 0; choice < sizeof head_counts / sizeof head_counts[0]; choice++) {
        attention_case_t test;
        attention_case_init(&test, &rng, masked_batch, masked_tokens, masked_dim,
                            head_counts[choice]);
        test.valid = masked_valid;
        gradcheck_param_t param = {"masked attention qkv", test.qkv, test.d_qkv,
                                   masked_batch * masked_tokens * 3 * masked_dim};
        gradcheck_run(&rng, &param, 1, attention_loss, attention_backward, &test,
                      gradcheck_default_tolerance());
        attention_case_deinit(&test);
    }
}
END_TEST

START_TEST(test_attention_masked_keys_get_no_weight) {
    enum { heads = 2, rows = masked_batch * masked_tokens };
    cm_rng_t rng;
    cm_rng_seed(&rng, 145);
    attention_case_t test;
    attention_case_init(&test, &rng, masked_batch, masked_tokens, masked_dim, heads);
    test.valid = masked_valid;
    attention_loss(&test);
    for (int example = 0; example < masked_batch; example++)
        for (int row = 0; row < heads * masked_tokens; row++) {
            int block = example * heads + row / masked_tokens, query = row % masked_tokens;
            double sum = 0.0;
            int any_valid = 0;
            for (int key = 0; key < masked_tokens; key++) {
                int valid = masked_valid[example * masked_tokens + key];
                float prob = att_prob(test.att, masked_tokens, block, query, key);
                any_valid |= valid;
                if (!valid) ck_assert_msg(prob == 0.0f, "masked key got %g", prob);
                sum += prob;
            }
            ck_assert_double_eq_tol(sum, any_valid ? 1.0 : 0.0, 1e-6);
        }
    for (int index = 0; index < rows * masked_dim; index++) ck_assert(isfinite(test.out[index]));
    for (int index = 2 * masked_tokens * masked_dim; index < rows * masked_dim; index++)
        ck_assert_float_eq(test.out[index], 0.0f);
    /* Whatever the masked keys and values hold, the output stays the same, bit for bit. */
    float *before = floats(rows * masked_dim);
    memcpy(before, test.out, sizeof(float) * rows * masked_dim);
    for (int token = 0; token < rows; token++)
        if (!masked_valid[token])
            for (int i = masked_dim; i < 3 * masked_dim; i++)
                test.qkv[token * 3 * masked_dim + i] = 1e3f * cm_rng_normal(&rng);
    attention_loss(&test);
    ck_assert_int_eq(memcmp(before, test.out, sizeof(float) * rows * masked_dim), 0);
    /* Without a mask the all-masked example attends normally again. */
    test.valid = NULL;
    attention_loss(&test);
    for (int row = 2 * heads * masked_tokens; row < masked_batch * heads * masked_tokens; row++) {
        double sum = 0.0;
        for (int key = 0; key < masked_tokens; key++)
            sum += att_prob(test.att, masked_tokens, row / masked_tokens, row % masked_tokens, key);
        ck_assert_double_eq_tol(sum, 1.0, 1e-6);
    }
    free(before);
    attention_case_deinit(&test);
}
END_TEST

/* ---- patch embedding ------------------------------------------------------------------ */

typedef struct {
    int batch, height, width, patch, dim, num_patches;
    float *images, *weight, *bias, *cls, *pos, *out, *patches, *d_out;
    float *d_weight, *d_bias, *d_cls, *d_pos;
} patch_case_t;

static void patch_case_init(patch_case_t *test, cm_rng_t *rng, int batch, int height, int width,
                            int patch, int dim) {
    int num_patches = (height / patch) * (width / patch), area = patch * patch;
    *test = (patch_case_t){.batch = batch,
                           .height = height,
                           .width = width,
                           .patch = patch,
                           .dim = dim,
                           .num_patches = num_patches};
    test->images = random_floats(rng, batch * height * width, 0.0f, 1.0f);
    test->weight = random_floats(rng, dim * area, -0.5f, 0.5f);
    test->bias = random_floats(rng, dim, -0.5f, 0.5f);
    test->cls = random_floats(rng, dim, -0.5f, 0.5f);
    test->pos = random_floats(rng, (1 + num_patches) * dim, -0.5f, 0.5f);
    test->out = floats(batch * (1 + num_patches) * dim);
    test->patches = floats(batch * num_patches * area);
    test->d_out = random_floats(rng, batch * (1 + num_patches) * dim, -1.0f, 1.0f);
    test->d_weight = floats(dim * area);
    test->d_bias = floats(dim);
    test->d_cls = floats(dim);
    test->d_pos = floats((1 + num_patches) * dim);
}

static void patch_case_deinit(patch_case_t *test) {
    float *buffers[] = {test->images,   test->weight, test->bias,    test->cls,
                        test->pos,      test->out,    test->patches, test->d_out,
                        test->d_weight, test->d_bias, test->d_cls,   test->d_pos};
    for (size_t i = 0; i < sizeof buffers / sizeof buffers[0]; i++) free(buffers[i]);
}

static double patch_loss(void *context) {
    patch_case_t *test = context;
    cm_layers_patch_embed_forward(test->out, test->patches, test->images, test->weight, test->bias,
                                  test->cls, test->pos, test->batch, test->height, test->width,
                                  test->patch, test->dim);
    return gradcheck_dot(test->d_out, test->out, test->batch * (1 + test->num_patches) * test->dim);
}

static void patch_backward(void *context) {
    patch_case_t *test = context;
    cm_layers_patch_embed_backward(test->d_weight, test->d_bias, test->d_cls, test->d_pos,
                                   test->d_out, test->patches, test->batch, test->num_patches,
                                   test->patch, test->dim);
}

START_TEST(test_patch_embed_gradients) {
    cm_rng_t rng;
    cm_rng_seed(&rng, 151);
    patch_case_t test;
    patch_case_init(&test, &rng, 2, 8, 8, 4, 6);
    gradcheck_param_t params[] = {
        {"patch weight", test.weight, test.d_weight, test.dim * test.patch * test.patch},
        {"patch bias", test.bias, test.d_bias, test.dim},
        {"patch cls", test.cls, test.d_cls, test.dim},
        {"patch pos", test.pos, test.d_pos, (1 + test.num_patches) * test.dim},
    };
    gradcheck_run(&rng, params, 4, patch_loss, patch_backward, &test,
                  gradcheck_default_tolerance());
    patch_case_deinit(&test);
}
END_TEST

/* A non-square image (2 x 3 patches) against a naive per-pixel reference, so patch order
 * (row-major) and pixel order inside a patch are both pinned down. */
START_TEST(test_patch_embed_forward_matches_reference) {
    cm_rng_t rng;
    cm_rng_seed(&rng, 152);
    patch_case_t test;
    patch_case_init(&test, &rng, 2, 8, 12, 4, 5);
    ck_assert_int_eq(test.num_patches, 6);
    patch_loss(&test);
    int patch_cols = test.width / test.patch, tokens = 1 + test.num_patches;
    for (int example = 0; example < test.batch; example++) {
        const float *image = test.images + example * test.height * test.width;
        const float *out = test.out + example * tokens * test.dim;
        for (int feature = 0; feature < test.dim; feature++)
            ck_assert_float_eq_tol(out[feature], test.cls[feature] + test.pos[feature], 1e-6f);
        for (int patch_index = 0; patch_index < test.num_patches; patch_index++) {
            int top = (patch_index / patch_cols) * test.patch,
                left = (patch_index % patch_cols) * test.patch;
            for (int feature = 0; feature < test.dim; feature++) {
                double want =
                    (double)test.bias[feature] + test.pos[(1 + patch_index) * test.dim + feature];
                for (int y = 0; y < test.patch; y++)
                    for (int x = 0; x < test.patch; x++)
                        want += (double)image[(top + y) * test.width + left + x] *
                                test.weight[feature * test.patch * test.patch + y * test.patch + x];
                ck_assert_double_eq_tol(out[(1 + patch_index) * test.dim + feature], want, 1e-5);
            }
        }
    }
    patch_case_deinit(&test);
}
END_TEST

/* ---- mean pool and add ---------------------------------------------------------------- */

enum { pool_batch = 2, pool_tokens = 5, pool_dim = 3 };

typedef struct {
    float *in, *out, *d_out, *d_in;
    const unsigned char *valid; /* [pool_batch][pool_tokens], NULL: every token */
} pool_case_t;

static double pool_loss(void *context) {
    pool_case_t *test = context;
    cm_layers_mean_pool_forward(test->out, test->in, test->valid, pool_batch, pool_tokens,
                                pool_dim);
    return gradcheck_dot(test->d_out, test->out, pool_batch * pool_dim);
}

static void pool_backward(void *context) {
    pool_case_t *test = context;
    cm_layers_mean_pool_backward(test->d_in, test->d_out, test->valid, pool_batch, pool_tokens,
                                 pool_dim);
}

START_TEST(test_mean_pool) {
    cm_rng_t rng;
    cm_rng_seed(&rng, 161);
    pool_case_t test = {.valid = NULL};
    test.in = random_floats(&rng, pool_batch * pool_tokens * pool_dim, -1.0f, 1.0f);
    test.out = floats(pool_batch * pool_dim);
    test.d_out = random_floats(&rng, pool_batch * pool_dim, -1.0f, 1.0f);
    test.d_in = floats(pool_batch * pool_tokens * pool_dim);
    pool_loss(&test);
    for (int example = 0; example < pool_batch; example++)
        for (int feature = 0; feature < pool_dim; feature++) {
            double want = 0.0;
            for (int token = 0; token < pool_tokens; token++)
                want += test.in[(example * pool_tokens + token) * pool_dim + feature] /
                        (double)pool_tokens;
            ck_assert_double_eq_tol(test.out[example * pool_dim + feature], want, 1e-6);
        }
    gradcheck_param_t param = {"mean pool in", test.in, test.d_in,
                               pool_batch * pool_tokens * pool_dim};
    gradcheck_run(&rng, &param, 1, pool_loss, pool_backward, &test, gradcheck_default_tolerance());
    free(test.in);
    free(test.out);
    free(test.d_out);
    free(test.d_in);
}
END_TEST

/* Masked mean pooling: example 0 averages tokens 0, 2 and 3, example 1 has none (zeros, and
 * no gradient); masked tokens never get gradient. */
START_TEST(test_mean_pool_masked) {
    static const unsigned char valid[pool_batch * pool_tokens] = {1, 0, 1, 1, 0, 0, 0, 0, 0, 0};
    cm_rng_t rng;
    cm_rng_seed(&rng, 162);
    pool_case_t test = {.valid = valid};
    test.in = random_floats(&rng, pool_batch * pool_tokens * pool_dim, -1.0f, 1.0f);
    test.out = floats(pool_batch * pool_dim);
    test.d_out = random_floats(&rng, pool_batch * pool_dim, -1.0f, 1.0f);
    test.d_in = floats(pool_batch * pool_tokens * pool_dim);
    pool_loss(&test);
    for (int feature = 0; feature < pool_dim; feature++) {
        double want = 0.0;
        for (int token = 0; token < pool_tokens; token++)
            if (valid[token]) want += test.in[token * pool_dim + feature] / 3.0;
        ck_assert_double_eq_tol(test.out[feature], want, 1e-6);
        ck_assert_float_eq(test.out[pool_dim + feature], 0.0f);
    }
    gradcheck_param_t param = {"masked mean pool in", test.in, test.d_in,
                               pool_batch * pool_tokens * pool_dim};
    gradcheck_run(&rng, &param, 1, pool_loss, pool_backward, &test, gradcheck_default_tolerance());
    memset(test.d_in, 0, sizeof(float) * pool_batch * pool_tokens * pool_dim);
    pool_backward(&test);
    for (int token = 0; token < pool_batch * pool_tokens; token++)
        for (int feature = 0; feature < pool_dim; feature++)
            if (!valid[token]) ck_assert_float_eq(test.d_in[token * pool_dim + feature], 0.0f);
    free(test.in);
    free(test.out);
    free(test.d_out);
    free(test.d_in);
}
END_TEST

START_TEST(test_add_aliases) {
    float a[3] = {1.0f, 2.0f, 3.0f}, b[3] = {0.5f, -2.0f, 4.0f}, out[3];
    cm_layers_add_forward(out, a, b, 3);
    for (int i = 0; i < 3; i++) ck_assert_float_eq(out[i], a[i] + b[i]);
    cm_layers_add_forward(a, a, b, 3);
    for (int i = 0; i < 3; i++) ck_assert_float_eq(a[i], out[i]);
    cm_layers_add_forward(b, a, b, 3);
    ck_assert_float_eq(b[0], 2.0f);
    ck_assert_float_eq(b[1], -2.0f);
    ck_assert_float_eq(b[2], 11.0f);
}
END_TEST

/* ---- convolution, pooling, batch norm ------------------------------------------------- */

typedef struct {
    int batch, in_channels, height, width, out_channels, kernel, stride, padding;
    int out_height, out_width;
    float *in, *weight, *bias, *out, *d_out, *cols, *d_in, *d_weight, *d_bias;
} conv_case_t;

static void conv_case_init(conv_case_t *test, cm_rng_t *rng, const int shape[8]) {
    test->batch = shape[0];
    test->in_channels = shape[1];
    test->height = shape[2];
    test->width = shape[3];
    test->out_channels = shape[4];
    test->kernel = shape[5];
    test->stride = shape[6];
    test->padding = shape[7];
    test->out_height =
        cm_layers_conv2d_out_side(test->height, test->kernel, test->stride, test->padding);
    test->out_width =
        cm_layers_conv2d_out_side(test->width, test->kernel, test->stride, test->padding);
    int in_count = test->batch * test->in_channels * test->height * test->width;
    int patch = test->in_channels * test->kernel * test->kernel;
    int out_count = test->batch * test->out_channels * test->out_height * test->out_width;
    test->in = random_floats(rng, in_count, -1.0f, 1.0f);
    test->weight = random_floats(rng, test->out_channels * patch, -1.0f, 1.0f);
    test->bias = random_floats(rng, test->out_channels, -1.0f, 1.0f);
    test->out = floats(out_count);
    test->d_out = random_floats(rng, out_count, -1.0f, 1.0f);
    test->cols = floats(patch * test->out_height * test->out_width);
    test->d_in = floats(in_count);
    test->d_weight = floats(test->out_channels * patch);
    test->d_bias = floats(test->out_channels);
}

static void conv_case_deinit(conv_case_t *test) {
    float *buffers[] = {test->in,   test->weight, test->bias,     test->out,   test->d_out,
                        test->cols, test->d_in,   test->d_weight, test->d_bias};
    for (size_t index = 0; index < sizeof buffers / sizeof buffers[0]; index++)
        free(buffers[index]);
}

static int conv_out_count(const conv_case_t *test) {
    return test->batch * test->out_channels * test->out_height * test->out_width;
}

static double conv_loss(void *context) {
    conv_case_t *test = context;
    cm_layers_conv2d_forward(test->out, test->cols, test->in, test->weight, test->bias, test->batch,
                             test->in_channels, test->height, test->width, test->out_channels,
                             test->kernel, test->stride, test->padding);
    return gradcheck_dot(test->d_out, test->out, conv_out_count(test));
}

static void conv_backward(void *context) {
    conv_case_t *test = context;
    cm_layers_conv2d_backward(test->d_in, test->d_weight, test->d_bias, test->cols, test->d_out,
                              test->in, test->weight, test->batch, test->in_channels, test->height,
                              test->width, test->out_channels, test->kernel, test->stride,
                              test->padding);
}

/* batch, in_channels, height, width, out_channels, kernel, stride, padding: "same" 3x3,
 * strided without padding, a 5x5 kernel with padding 2 and stride 2 on odd sides, 1x1. */
static const int conv_shapes[][8] = {{2, 3, 5, 6, 4, 3, 1, 1},
                                     {3, 2, 7, 5, 3, 3, 2, 0},
                                     {1, 2, 9, 7, 3, 5, 2, 2},
                                     {2, 5, 3, 4, 3, 1, 1, 0},
                                     {1, 1, 4, 4, 2, 3, 1, 2}};

START_TEST(test_conv2d_gradients) {
    cm_rng_t rng;
    cm_rng_seed(&rng, 301);
    for (size_t shape = 0; shape < sizeof conv_shapes / sizeof conv_shapes[0]; shape++) {
        conv_case_t test;
        conv_case_init(&test, &rng, conv_shapes[shape]);
        int patch = test.in_channels * test.kernel * test.kernel;
        gradcheck_param_t params[] = {
            {"conv in", test.in, test.d_in,
             test.batch * test.in_channels * test.height * test.width},
            {"conv weight", test.weight, test.d_weight, test.out_channels * patch},
            {"conv bias", test.bias, test.d_bias, test.out_channels},
        };
        gradcheck_run(&rng, params, 3, conv_loss, conv_backward, &test,
                      gradcheck_default_tolerance());
        conv_case_deinit(&test);
    }
}
END_TEST

/* im2col + GEMM against the textbook six-loop convolution in double, on every shape; and a
 * 1x1 convolution (the pointwise path that skips im2col) equals a dense layer applied to every
 * pixel's channel vector. */
START_TEST(test_conv2d_forward_matches_reference) {
    cm_rng_t rng;
    cm_rng_seed(&rng, 302);
    for (size_t shape = 0; shape < sizeof conv_shapes / sizeof conv_shapes[0]; shape++) {
        conv_case_t test;
        conv_case_init(&test, &rng, conv_shapes[shape]);
        for (int index = 0; index < conv_out_count(&test); index++) test.out[index] = NAN;
        conv_loss(&test);
        int k = test.kernel;
        for (int example = 0; example < test.batch; example++)
            for (int out_channel = 0; out_channel < test.out_channels; out_channel++)
                for (int oy = 0; oy < test.out_height; oy++)
                    for (int ox = 0; ox < test.out_width; ox++) {
                        double want = test.bias[out_channel];
                        for (int channel = 0; channel < test.in_channels; channel++)
                            for (int ky = 0; ky < k; ky++)
                                for (int kx = 0; kx < k; kx++) {
                                    int iy = oy * test.stride - test.padding + ky;
                                    int ix = ox * test.stride - test.padding + kx;
                                    if (iy < 0 || iy >= test.height || ix < 0 || ix >= test.width)
                                        continue;
                                    want +=
                                        (double)test.weight
                                            [((out_channel * test.in_channels + channel) * k + ky) *
                                                 k +
                                             kx] *
                                        test.in[((example * test.in_channels + channel) *
                                                     test.height +
                                                 iy) *
                                                    test.width +
                                                ix];
                                }
                        double got = test.out[((example * test.out_channels + out_channel) *
                                                   test.out_height +
                                               oy) *
                                                  test.out_width +
                                              ox];
                        ck_assert_msg(fabs(got - want) <= 1e-5 * (1.0 + fabs(want)),
                                      "conv shape %zu out[%d][%d][%d][%d] %.7g, reference %.7g",
                                      shape, example, out_channel, oy, ox, got, want);
                    }
        conv_case_deinit(&test);
    }

    /* pointwise == dense over channels, pixel by pixel */
    enum { batch = 2, channels = 5, pixels = 12, outs = 3 };
    float in[batch * channels * pixels], weight[outs * channels], bias[outs];
    float out[batch * outs * pixels], pixel_in[channels], pixel_out[outs];
    gradcheck_fill(&rng, in, batch * channels * pixels, -1.0f, 1.0f);
    gradcheck_fill(&rng, weight, outs * channels, -1.0f, 1.0f);
    gradcheck_fill(&rng, bias, outs, -1.0f, 1.0f);
    cm_layers_conv2d_forward(out, NULL, in, weight, bias, batch, channels, 3, 4, outs, 1, 1, 0);
    for (int example = 0; example < batch; example++)
        for (int pixel = 0; pixel < pixels; pixel++) {
            for (int channel = 0; channel < channels; channel++)
                pixel_in[channel] = in[(example * channels + channel) * pixels + pixel];
            cm_layers_dense_forward(pixel_out, pixel_in, weight, bias, 1, channels, outs);
            for (int channel = 0; channel < outs; channel++)
                ck_assert_float_eq_tol(out[(example * outs + channel) * pixels + pixel],
                                       pixel_out[channel], 1e-5f);
        }
}
END_TEST

typedef struct {
    int planes, height, width;
    float *in, *out, *d_out, *d_in;
    int32_t *argmax;
} maxpool_case_t;

static double maxpool_loss(void *context) {
    maxpool_case_t *test = context;
    cm_layers_maxpool2x2_forward(test->out, test->argmax, test->in, test->planes, test->height,
                                 test->width);
    return gradcheck_dot(test->d_out, test->out,
                         test->planes * (test->height / 2) * (test->width / 2));
}

static void maxpool_backward(void *context) {
    maxpool_case_t *test = context;
    cm_layers_maxpool2x2_backward(test->d_in, test->d_out, test->argmax, test->planes, test->height,
                                  test->width);
}

/* Inputs are a shuffled ladder with steps of 0.1, so a perturbation of 1e-2 never changes
 * which element of a window is the maximum (the kink of max is out of reach); odd sides drop
 * their last row/column, which must get no gradient. */
START_TEST(test_maxpool_gradient) {
    static const int shapes[][3] = {{3, 4, 6}, {2, 5, 7}, {1, 2, 2}};
    cm_rng_t rng;
    cm_rng_seed(&rng, 303);
    for (size_t shape = 0; shape < sizeof shapes / sizeof shapes[0]; shape++) {
        maxpool_case_t test = {
            .planes = shapes[shape][0], .height = shapes[shape][1], .width = shapes[shape][2]};
        int count = test.planes * test.height * test.width;
        int outputs = test.planes * (test.height / 2) * (test.width / 2);
        int32_t *order = malloc(sizeof(int32_t) * (size_t)count);
        ck_assert_ptr_nonnull(order);
        for (int index = 0; index < count; index++) order[index] = index;
        cm_rng_shuffle(&rng, order, (size_t)count);
        test.in = floats(count);
        for (int index = 0; index < count; index++)
            test.in[index] = 0.1f * (float)order[index] - 1.0f;
        test.out = floats(outputs);
        test.d_out = random_floats(&rng, outputs, -1.0f, 1.0f);
        test.d_in = floats(count);
        test.argmax = malloc(sizeof(int32_t) * (size_t)outputs);
        ck_assert_ptr_nonnull(test.argmax);
        gradcheck_param_t params[] = {{"maxpool in", test.in, test.d_in, count}};
        gradcheck_run(&rng, params, 1, maxpool_loss, maxpool_backward, &test,
                      gradcheck_default_tolerance());
        /* each window's output is its maximum, found at the saved index */
        for (int plane = 0; plane < test.planes; plane++)
            for (int oy = 0; oy < test.height / 2; oy++)
                for (int ox = 0; ox < test.width / 2; ox++) {
                    const float *window = test.in + (plane * test.height + 2 * oy) * test.width;
                    float best =
                        fmaxf(fmaxf(window[2 * ox], window[2 * ox + 1]),
                              fmaxf(window[test.width + 2 * ox], window[test.width + 2 * ox + 1]));
                    int at = (plane * (test.height / 2) + oy) * (test.width / 2) + ox;
                    ck_assert_float_eq(test.out[at], best);
                    ck_assert_float_eq(test.in[plane * test.height * test.width + test.argmax[at]],
                                       best);
                }
        free(order);
        free(test.in);
        free(test.out);
        free(test.d_out);
        free(test.d_in);
        free(test.argmax);
    }
}
END_TEST

typedef struct {
    int batch, channels, spatial, eval, relu; /* relu: the fused ReLU */
    float *in, *gamma, *beta, *out, *d_out, *mean, *rstd, *running_mean, *running_var;
    float *d_in, *d_gamma, *d_beta;
} bn_case_t;

static void bn_case_init(bn_case_t *test, cm_rng_t *rng, int batch, int channels, int spatial,
                         int eval) {
    int count = batch * channels * spatial;
    *test = (bn_case_t){.batch = batch, .channels = channels, .spatial = spatial, .eval = eval};
    test->in = random_floats(rng, count, -2.0f, 3.0f);
    test->gamma = random_floats(rng, channels, 0.5f, 1.5f);
    test->beta = random_floats(rng, channels, -1.0f, 1.0f);
    test->out = floats(count);
    test->d_out = random_floats(rng, count, -1.0f, 1.0f);
    test->mean = floats(channels);
    test->rstd = floats(channels);
    test->running_mean = random_floats(rng, channels, -0.5f, 0.5f);
    test->running_var = random_floats(rng, channels, 0.5f, 2.0f);
    test->d_in = floats(count);
    test->d_gamma = floats(channels);
    test->d_beta = floats(channels);
}

static void bn_case_deinit(bn_case_t *test) {
    float *buffers[] = {test->in,          test->gamma, test->beta,    test->out,
                        test->d_out,       test->mean,  test->rstd,    test->running_mean,
                        test->running_var, test->d_in,  test->d_gamma, test->d_beta};
    for (size_t index = 0; index < sizeof buffers / sizeof buffers[0]; index++)
        free(buffers[index]);
}

static double bn_loss(void *context) {
    bn_case_t *test = context;
    if (test->eval)
        cm_layers_batchnorm_eval_forward(test->out, test->in, test->gamma, test->beta,
                                         test->running_mean, test->running_var, test->batch,
                                         test->channels, test->spatial, test->relu);
    else /* no running update: the loss is called many times */
        cm_layers_batchnorm_train_forward(test->out, test->mean, test->rstd, NULL, NULL, test->in,
                                          test->gamma, test->beta, test->batch, test->channels,
                                          test->spatial, 0.1f, test->relu);
    return gradcheck_dot(test->d_out, test->out, test->batch * test->channels * test->spatial);
}

static void bn_backward(void *context) {
    bn_case_t *test = context;
    const float *relu_out = test->relu ? test->out : NULL;
    if (test->eval)
        cm_layers_batchnorm_eval_backward(
            test->d_in, test->d_gamma, test->d_beta, test->d_out, relu_out, test->in, test->gamma,
            test->running_mean, test->running_var, test->batch, test->channels, test->spatial);
    else
        cm_layers_batchnorm_train_backward(test->d_in, test->d_gamma, test->d_beta, test->d_out,
                                           relu_out, test->in, test->gamma, test->mean, test->rstd,
                                           test->batch, test->channels, test->spatial);
}

/* Train and eval mode, without and with the fused ReLU (a smaller step there: the ReLU's kink
 * must stay out of reach of the perturbation for these seeds). Rows of 9 and 17 values also
 * cover the eight-lane sums' tails. */
START_TEST(test_batchnorm_gradients) {
    static const int shapes[][3] = {{3, 2, 5}, {4, 3, 1}, {2, 1, 7}, {2, 2, 9}, {1, 2, 17}};
    cm_rng_t rng;
    cm_rng_seed(&rng, 304);
    for (int variant = 0; variant < 4; variant++)
        for (size_t shape = 0; shape < sizeof shapes / sizeof shapes[0]; shape++) {
            int eval = variant & 1, relu = variant >> 1;
            bn_case_t test;
            bn_case_init(&test, &rng, shapes[shape][0], shapes[shape][1], shapes[shape][2], eval);
            test.relu = relu;
            gradcheck_tolerance_t tolerance = gradcheck_default_tolerance();
            if (relu) tolerance.step = 1e-3;
            gradcheck_param_t params[] = {
                {eval ? "bn eval in" : "bn train in", test.in, test.d_in,
                 test.batch * test.channels * test.spatial},
                {"bn gamma", test.gamma, test.d_gamma, test.channels},
                {"bn beta", test.beta, test.d_beta, test.channels},
            };
            gradcheck_run(&rng, params, 3, bn_loss, bn_backward, &test, tolerance);
            bn_case_deinit(&test);
        }
}
END_TEST

/* The fused path equals the composition: bn+relu forward == bn then cm_layers_relu_forward,
 * and its backward == cm_layers_relu_backward then the plain bn backward, in both modes. */
START_TEST(test_batchnorm_relu_fused_equals_composition) {
    enum { batch = 5, channels = 3, spatial = 13, count = batch * channels * spatial };
    cm_rng_t rng;
    cm_rng_seed(&rng, 307);
    for (int eval = 0; eval < 2; eval++) {
        bn_case_t fused, plain;
        bn_case_init(&fused, &rng, batch, channels, spatial, eval);
        bn_case_init(&plain, &rng, batch, channels, spatial, eval);
        float *arrays_from[] = {fused.in,    fused.gamma,        fused.beta,
                                fused.d_out, fused.running_mean, fused.running_var};
        float *arrays_to[] = {plain.in,    plain.gamma,        plain.beta,
                              plain.d_out, plain.running_mean, plain.running_var};
        int sizes[] = {count, channels, channels, count, channels, channels};
        for (int index = 0; index < 6; index++)
            memcpy(arrays_to[index], arrays_from[index], sizeof(float) * (size_t)sizes[index]);
        fused.relu = 1;
        bn_loss(&fused);
        bn_backward(&fused);
        bn_loss(&plain); /* plain.out: bn without relu */
        float *relu_out = floats(count), *d_bn = floats(count);
        cm_layers_relu_forward(relu_out, plain.out, count);
        cm_layers_relu_backward(d_bn, plain.d_out, plain.out, count);
        memcpy(plain.d_out, d_bn, sizeof(float) * count);
        bn_backward(&plain);
        for (int index = 0; index < count; index++) {
            ck_assert_float_eq(fused.out[index], relu_out[index]);
            ck_assert_float_eq_tol(fused.d_in[index], plain.d_in[index], 1e-5);
        }
        for (int channel = 0; channel < channels; channel++) {
            ck_assert_float_eq_tol(fused.d_gamma[channel], plain.d_gamma[channel], 1e-5);
            ck_assert_float_eq_tol(fused.d_beta[channel], plain.d_beta[channel], 1e-5);
        }
        free(relu_out);
        free(d_bn);
        bn_case_deinit(&fused);
        bn_case_deinit(&plain);
    }
}
END_TEST

/*
 * Training mode: with gamma 1 and beta 0 every channel of the output has mean 0 and variance
 * 1 over batch and positions; the running statistics move by `momentum` towards the batch mean
 * and the unbiased batch variance.  Evaluation mode uses the running statistics only: repeated
 * training passes over one batch drive them to that batch's statistics, after which the eval
 * output matches the train output (up to the biased/unbiased variance factor, which is why
 * the batch is large).
 */
START_TEST(test_batchnorm_statistics) {
    enum { batch = 50, channels = 3, spatial = 20, count = batch * channels * spatial };
    cm_rng_t rng;
    cm_rng_seed(&rng, 305);
    bn_case_t test;
    bn_case_init(&test, &rng, batch, channels, spatial, 0);
    for (int channel = 0; channel < channels; channel++) {
        test.gamma[channel] = 1.0f;
        test.beta[channel] = 0.0f;
        test.running_mean[channel] = 0.0f;
        test.running_var[channel] = 1.0f;
    }
    for (int index = 0; index < count; index++) test.in[index] = 3.0f * test.in[index] + 2.0f;
    cm_layers_batchnorm_train_forward(test.out, test.mean, test.rstd, test.running_mean,
                                      test.running_var, test.in, test.gamma, test.beta, batch,
                                      channels, spatial, 0.1f, 0);
    for (int channel = 0; channel < channels; channel++) {
        double sum = 0.0, squares = 0.0, in_sum = 0.0, in_squares = 0.0;
        for (int example = 0; example < batch; example++)
            for (int index = 0; index < spatial; index++) {
                int at = (example * channels + channel) * spatial + index;
                sum += test.out[at];
                squares += (double)test.out[at] * test.out[at];
                in_sum += test.in[at];
                in_squares += (double)test.in[at] * test.in[at];
            }
        double n = batch * spatial, mean = sum / n, variance = squares / n - mean * mean;
        ck_assert_msg(fabs(mean) < 1e-5, "channel %d output mean %g", channel, mean);
        ck_assert_msg(fabs(variance - 1.0) < 1e-3, "channel %d output variance %g", channel,
                      variance);
        double in_mean = in_sum / n;
        double unbiased = (in_squares - n * in_mean * in_mean) / (n - 1);
        ck_assert_float_eq_tol(test.running_mean[channel], 0.1 * in_mean, 1e-5);
        ck_assert_float_eq_tol(test.running_var[channel], 0.9 + 0.1 * unbiased, 1e-4);
    }
    for (int pass = 0; pass < 200; pass++)
        cm_layers_batchnorm_train_forward(test.out, test.mean, test.rstd, test.running_mean,
                                          test.running_var, test.in, test.gamma, test.beta, batch,
                                          channels, spatial, 0.1f, 0);
    float *eval_out = floats(count);
    cm_layers_batchnorm_eval_forward(eval_out, test.in, test.gamma, test.beta, test.running_mean,
                                     test.running_var, batch, channels, spatial, 0);
    for (int index = 0; index < count; index++)
        ck_assert_float_eq_tol(eval_out[index], test.out[index], 5e-3);
    /* ... and only the running statistics: changing them changes the eval output */
    test.running_mean[1] += 1.0f;
    cm_layers_batchnorm_eval_forward(eval_out, test.in, test.gamma, test.beta, test.running_mean,
                                     test.running_var, batch, channels, spatial, 0);
    ck_assert_float_eq_tol(eval_out[spatial], test.out[spatial] - test.rstd[1], 1e-2);
    free(eval_out);
    bn_case_deinit(&test);
}
END_TEST

typedef struct {
    int batch, channels, spatial;
    float *in, *out, *d_out, *d_in;
} gap_case_t;

static double gap_loss(void *context) {
    gap_case_t *test = context;
    cm_layers_global_avg_pool_forward(test->out, test->in, test->batch, test->channels,
                                      test->spatial);
    return gradcheck_dot(test->d_out, test->out, test->batch * test->channels);
}

static void gap_backward(void *context) {
    gap_case_t *test = context;
    cm_layers_global_avg_pool_backward(test->d_in, test->d_out, test->batch, test->channels,
                                       test->spatial);
}

START_TEST(test_global_avg_pool_gradient) {
    cm_rng_t rng;
    cm_rng_seed(&rng, 306);
    gap_case_t test = {.batch = 3, .channels = 4, .spatial = 5};
    test.in = random_floats(&rng, 60, -1.0f, 1.0f);
    test.out = floats(12);
    test.d_out = random_floats(&rng, 12, -1.0f, 1.0f);
    test.d_in = floats(60);
    gradcheck_param_t params[] = {{"global average pool in", test.in, test.d_in, 60}};
    gradcheck_run(&rng, params, 1, gap_loss, gap_backward, &test, gradcheck_default_tolerance());
    double sum = 0.0;
    for (int index = 0; index < 5; index++) sum += test.in[5 * 7 + index];
    ck_assert_float_eq_tol(test.out[7], sum / 5.0, 1e-6);
    free(test.in);
    free(test.out);
    free(test.d_out);
    free(test.d_in);
}
END_TEST

/* ---- a tiny model --------------------------------------------------------------------- */

/* An 8-16-4 ReLU MLP, built straight from the kernels, must memorise 16 random examples with
 * random labels: the smallest end-to-end proof that forward, backward, loss and optimiser
 * fit together. */
START_TEST(test_tiny_mlp_overfits_one_batch) {
    enum { examples = 16, inputs = 8, hidden = 16, classes = 4, max_steps = 400 };
    enum { w1_at = 0, b1_at = w1_at + hidden * inputs, w2_at = b1_at + hidden };
    enum { b2_at = w2_at + classes * hidden, param_count = b2_at + classes };
    cm_rng_t rng;
    cm_rng_seed(&rng, 171);
    float features[examples * inputs], hidden_pre[examples * hidden], hidden_out[examples * hidden];
    float logits[examples * classes], probs[examples * classes];
    float d_logits[examples * classes];
    float d_hidden_out[examples * hidden], d_hidden_pre[examples * hidden];
    float params[param_count], grads[param_count];
    float moment1[param_count] = {0}, moment2[param_count] = {0};
    int32_t labels[examples];
    for (int i = 0; i < examples * inputs; i++) features[i] = cm_rng_normal(&rng);
    for (int i = 0; i < examples; i++) labels[i] = (int32_t)cm_rng_below(&rng, classes);
    gradcheck_fill(&rng, params + w1_at, hidden * inputs, -0.35f, 0.35f);  /* ~1/sqrt(8) */
    gradcheck_fill(&rng, params + w2_at, classes * hidden, -0.25f, 0.25f); /* 1/sqrt(16) */
    memset(params + b1_at, 0, sizeof(float) * hidden);
    memset(params + b2_at, 0, sizeof(float) * classes);
    cm_adamw_config_t config = cm_adamw_defaults();
    config.learning_rate = 1e-2f;
    double first_loss = 0.0, loss = 0.0;
    int step = 1;
    for (; step <= max_steps; step++) {
        cm_layers_dense_forward(hidden_pre, features, params + w1_at, params + b1_at, examples,
                                inputs, hidden);
        cm_layers_relu_forward(hidden_out, hidden_pre, examples * hidden);
        cm_layers_dense_forward(logits, hidden_out, params + w2_at, params + b2_at, examples,
                                hidden, classes);
        loss = cm_loss_cross_entropy_forward(probs, logits, labels, examples, classes, NULL) /
               examples;
        if (step == 1) first_loss = loss;
        if (loss < 0.05) break;
        memset(grads, 0, sizeof grads);
        memset(d_logits, 0, sizeof d_logits);
        memset(d_hidden_out, 0, sizeof d_hidden_out);
        memset(d_hidden_pre, 0, sizeof d_hidden_pre);
        cm_loss_cross_entropy_backward(d_logits, probs, labels, examples, classes, 1.0f / examples);
        cm_layers_dense_backward(d_hidden_out, grads + w2_at, grads + b2_at, d_logits, hidden_out,
                                 params + w2_at, examples, hidden, classes);
        cm_layers_relu_backward(d_hidden_pre, d_hidden_out, hidden_pre, examples * hidden);
        cm_layers_dense_backward(NULL, grads + w1_at, grads + b1_at, d_hidden_pre, features,
                                 params + w1_at, examples, inputs, hidden);
        cm_adamw_update(params + w1_at, grads + w1_at, moment1 + w1_at, moment2 + w1_at,
                        hidden * inputs, &config, step, 1);
        cm_adamw_update(params + b1_at, grads + b1_at, moment1 + b1_at, moment2 + b1_at, hidden,
                        &config, step, 0);
        cm_adamw_update(params + w2_at, grads + w2_at, moment1 + w2_at, moment2 + w2_at,
                        classes * hidden, &config, step, 1);
        cm_adamw_update(params + b2_at, grads + b2_at, moment1 + b2_at, moment2 + b2_at, classes,
                        &config, step, 0);
    }
    ck_assert_msg(first_loss > 0.5, "the initial loss %g is suspiciously low", first_loss);
    ck_assert_msg(loss < 0.05, "loss %g after %d steps (started at %g)", loss, max_steps,
                  first_loss);
}
END_TEST

/* GELU and its derivative are computed with a rational tanh (no libm call): over a dense grid
 * of [-20, 20] (every 1e-4, 400 001 points) they stay within the bounds cm_layers.c states
 * against the exact tanh form in double: |error| <= 8e-7 (1 + |GELU|) (measured 7.1e-7;
 * rounding the exact value to float alone costs up to 2.4e-7) and 5e-6 for the derivative
 * (measured 4.3e-6).  Odd counts exercise the vector kernels' tails. */
START_TEST(test_gelu_accuracy_dense_grid) {
    enum { POINTS = 400001 };
    float *in = floats(POINTS), *out = floats(POINTS), *d_in = floats(POINTS);
    float *ones = floats(POINTS);
    for (int i = 0; i < POINTS; i++) {
        in[i] = -20.0f + 40.0f * (float)i / (float)(POINTS - 1);
        ones[i] = 1.0f;
    }
    cm_layers_gelu_forward(out, in, POINTS);
    cm_layers_gelu_backward(d_in, ones, in, POINTS);
    const double scale = sqrt(2.0 / M_PI), cubic = 0.044715;
    /* the worst point of each, asserted once (an assertion per point is slow under Check) */
    double worst_value = 0.0, worst_derivative = 0.0;
    int worst_value_at = 0, worst_derivative_at = 0;
    for (int i = 0; i < POINTS; i++) {
        double x = in[i], u = scale * (x + cubic * x * x * x), t = tanh(u);
        double value = 0.5 * x * (1.0 + t);
        double derivative =
            0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * scale * (1.0 + 3.0 * cubic * x * x);
        double value_error = fabs(out[i] - value) / (1.0 + fabs(value));
        double derivative_error = fabs(d_in[i] - derivative);
        if (value_error > worst_value) worst_value = value_error, worst_value_at = i;
        if (derivative_error > worst_derivative)
            worst_derivative = derivative_error, worst_derivative_at = i;
    }
    ck_assert_msg(worst_value <= 8e-7, "gelu(%.7g) = %.9g: error %.3g (1 + |gelu|)",
                  (double)in[worst_value_at], (double)out[worst_value_at], worst_value);
    ck_assert_msg(worst_derivative <= 5e-6, "gelu'(%.7g) = %.9g: error %.3g",
                  (double)in[worst_derivative_at], (double)d_in[worst_derivative_at],
                  worst_derivative);
    ck_assert(worst_value > 0.0 && worst_derivative > 0.0); /* the grid did run */
    /* a tail of 1 to 15 values gives what the same values give inside a full vector */
    for (int count = 1; count <= 15; count++) {
        float tail[15];
        cm_layers_gelu_forward(tail, in + 1000, count);
        for (int i = 0; i < count; i++) ck_assert_float_eq(tail[i], out[1000 + i]);
    }
    free(in);
    free(out);
    free(d_in);
    free(ones);
}
END_TEST

/* GELU runs at the CPU's widest vectors (AVX-512, AVX2 or the four-lane baseline): every
 * path gives the baseline's bits, forward and backward, for every tail length. */
static void gelu_widths(int lanes) {
    enum { MOST = 70 };
    float in[MOST], d_out[MOST], wide[2][MOST], narrow[2][MOST];
    cm_rng_t rng;
    cm_rng_seed(&rng, 11);
    for (int i = 0; i < MOST; i++) {
        in[i] = 12.0f * (cm_rng_uniform(&rng) - 0.5f);
        d_out[i] = cm_rng_uniform(&rng) - 0.5f;
    }
    in[3] = 0.0f, in[5] = 9.0f, in[7] = -9.0f; /* zero and both clamps */
    for (int count = 0; count <= MOST; count++) {
        for (int path = 0; path < 2; path++) {
            float(*out)[MOST] = path ? narrow : wide;
            cm_vec_lanes_limit = path == 1 ? 4 : lanes;
            memset(out, 0, sizeof wide);
            cm_layers_gelu_forward(out[0], in, count);
            for (int i = 0; i < count; i++) out[1][i] = 0.25f;
            cm_layers_gelu_backward(out[1], d_out, in, count);
        }
        cm_vec_lanes_limit = 16;
        ck_assert_msg(memcmp(wide, narrow, sizeof wide) == 0,
                      "count %d, %d lanes: the paths differ", count, lanes);
    }
}

START_TEST(test_gelu_widths_give_the_same_bits) {
    gelu_widths(16); /* AVX-512 where the CPU has it, else the next */
    gelu_widths(8);  /* AVX2 where the CPU has it */
}
END_TEST

/* The attention's softmax runs at the CPU's widest vectors too, lane by lane: forward and
 * backward give the baseline's bits, with and without a padding mask, for query counts that
 * leave tails at every width. */
static void attention_widths(int lanes) {
    enum { BATCH = 2, DIM = 8, HEADS = 2, MOST = 21 };
    static float qkv[BATCH * MOST * 3 * DIM], d_out[BATCH * MOST * DIM];
    static float out[2][BATCH * MOST * DIM], att[2][BATCH * HEADS * MOST * MOST];
    static float d_qkv[2][BATCH * MOST * 3 * DIM], scratch[MOST * MOST];
    unsigned char valid[BATCH * MOST];
    cm_rng_t rng;
    cm_rng_seed(&rng, 12);
    for (size_t i = 0; i < sizeof qkv / sizeof *qkv; i++) qkv[i] = 3.0f * cm_rng_normal(&rng);
    for (size_t i = 0; i < sizeof d_out / sizeof *d_out; i++) d_out[i] = cm_rng_normal(&rng);
    for (int tokens = 1; tokens <= MOST; tokens++) {
        for (int i = 0; i < BATCH * tokens; i++) valid[i] = i % 3 != 1; /* masks some keys */
        for (int masked = 0; masked < 2; masked++) {
            for (int path = 0; path < 2; path++) {
                cm_vec_lanes_limit = path == 1 ? 4 : lanes;
                memset(d_qkv[path], 0, sizeof d_qkv[path]);
                cm_layers_attention_forward(out[path], att[path], qkv, masked ? valid : NULL, BATCH,
                                            tokens, DIM, HEADS);
                cm_layers_attention_backward(d_qkv[path], scratch, d_out, qkv, att[path], BATCH,
                                             tokens, DIM, HEADS);
            }
            cm_vec_lanes_limit = 16;
            size_t rows = (size_t)BATCH * tokens;
            ck_assert_msg(memcmp(out[0], out[1], sizeof(float) * rows * DIM) == 0 &&
                              memcmp(att[0], att[1], sizeof(float) * rows * HEADS * tokens) == 0 &&
                              memcmp(d_qkv[0], d_qkv[1], sizeof(float) * rows * 3 * DIM) == 0,
                          "%d tokens%s, %d lanes: the paths differ", tokens,
                          masked ? ", masked" : "", lanes);
        }
    }
}

START_TEST(test_attention_widths_give_the_same_bits) {
    attention_widths(16); /* AVX-512 where the CPU has it, else the next */
    attention_widths(8);  /* AVX2 where the CPU has it */
}
END_TEST

/* Layer norm sums in sixteen partial sums at every width: forward and backward give the
 * baseline's bits for every row length (tails of every size), with and without the
 * parameter gradients. */
static void layernorm_widths(int lanes) {
    enum { ROWS = 3, MOST = 40 };
    float in[ROWS * MOST], gamma[MOST], beta[MOST], d_out[ROWS * MOST];
    float out[2][ROWS * MOST], stats[2][2][ROWS], grads[2][3][ROWS * MOST];
    cm_rng_t rng;
    cm_rng_seed(&rng, 13);
    for (int i = 0; i < ROWS * MOST; i++) {
        in[i] = 5.0f + 2.0f * cm_rng_normal(&rng); /* far from zero mean */
        d_out[i] = cm_rng_normal(&rng);
    }
    for (int i = 0; i < MOST; i++) gamma[i] = 1.0f + 0.1f * cm_rng_normal(&rng), beta[i] = 0.1f * i;
    for (int dim = 1; dim <= MOST; dim++)
        for (int with_params = 0; with_params < 2; with_params++) {
            for (int path = 0; path < 2; path++) {
                cm_vec_lanes_limit = path == 1 ? 4 : lanes;
                memset(out[path], 0, sizeof out[path]);
                memset(grads[path], 0, sizeof grads[path]);
                cm_layers_layernorm_forward(out[path], stats[path][0], stats[path][1], in, gamma,
                                            beta, ROWS, dim);
                cm_layers_layernorm_backward(grads[path][0], with_params ? grads[path][1] : NULL,
                                             with_params ? grads[path][2] : NULL, d_out, in, gamma,
                                             stats[path][0], stats[path][1], ROWS, dim);
            }
            cm_vec_lanes_limit = 16;
            ck_assert_msg(memcmp(out[0], out[1], sizeof out[0]) == 0 &&
                              memcmp(stats[0], stats[1], sizeof stats[0]) == 0 &&
                              memcmp(grads[0], grads[1], sizeof grads[0]) == 0,
                          "dim %d, %d lanes: the paths differ", dim, lanes);
        }
}

START_TEST(test_layernorm_widths_give_the_same_bits) {
    layernorm_widths(16); /* AVX-512 where the CPU has it, else the next */
    layernorm_widths(8);  /* AVX2 where the CPU has it */
}
END_TEST

/* Batch norm sums a row in sixteen partial sums at every width: train and eval, forward and
 * backward, with and without the fused ReLU, give the baseline's bits for maps with tails. */
static void batchnorm_widths(int lanes) {
    enum { BATCH = 3, CHANNELS = 2, MOST = 37 };
    float in[BATCH * CHANNELS * MOST], d_out[BATCH * CHANNELS * MOST];
    float relu_out[BATCH * CHANNELS * MOST], grads[2][BATCH * CHANNELS * MOST + 4];
    float outs[2][BATCH * CHANNELS * MOST + 8];
    float gamma[CHANNELS] = {1.5f, -0.5f}, mean[CHANNELS] = {0.3f, -0.2f};
    float rstd[CHANNELS] = {1.2f, 0.8f}, variance[CHANNELS] = {0.7f, 1.6f};
    cm_rng_t rng;
    cm_rng_seed(&rng, 14);
    for (int i = 0; i < BATCH * CHANNELS * MOST; i++) {
        in[i] = cm_rng_normal(&rng);
        d_out[i] = cm_rng_normal(&rng);
        relu_out[i] = cm_rng_normal(&rng);
    }
    for (int spatial = 1; spatial <= MOST; spatial += 3)
        for (int variant = 0; variant < 4; variant++) {
            const float *relu = variant & 1 ? relu_out : NULL;
            for (int path = 0; path < 2; path++) {
                float *d_in = grads[path], *d_gamma = d_in + BATCH * CHANNELS * MOST;
                cm_vec_lanes_limit = path == 1 ? 4 : lanes;
                memset(grads[path], 0, sizeof grads[path]);
                memset(outs[path], 0, sizeof outs[path]);
                float *stats = outs[path] + BATCH * CHANNELS * MOST;
                stats[4] = stats[5] = 0.5f; /* running mean and variance */
                if (variant & 2)
                    cm_layers_batchnorm_eval_forward(outs[path], in, gamma, rstd, mean, variance,
                                                     BATCH, CHANNELS, spatial, variant & 1);
                else
                    cm_layers_batchnorm_train_forward(outs[path], stats, stats + 2, stats + 4,
                                                      stats + 6, in, gamma, rstd, BATCH, CHANNELS,
                                                      spatial, 0.1f, variant & 1);
                if (variant & 2)
                    cm_layers_batchnorm_eval_backward(d_in, d_gamma, d_gamma + 2, d_out, relu, in,
                                                      gamma, mean, variance, BATCH, CHANNELS,
                                                      spatial);
                else
                    cm_layers_batchnorm_train_backward(d_in, d_gamma, d_gamma + 2, d_out, relu, in,
                                                       gamma, mean, rstd, BATCH, CHANNELS, spatial);
            }
            cm_vec_lanes_limit = 16;
            ck_assert_msg(memcmp(grads[0], grads[1], sizeof grads[0]) == 0 &&
                              memcmp(outs[0], outs[1], sizeof outs[0]) == 0,
                          "spatial %d, variant %d, %d lanes: the paths differ", spatial, variant,
                          lanes);
        }
}

START_TEST(test_batchnorm_widths_give_the_same_bits) {
    batchnorm_widths(16); /* AVX-512 where the CPU has it, else the next */
    batchnorm_widths(8);  /* AVX2 where the CPU has it */
}
END_TEST

/* The attention softmax's vector exp: probabilities of rows whose scores span [-80, 0] after
 * the max is subtracted (one query, 19 keys: a full vector tail of 3) within 4e-7 (1 + p) of
 * the softmax in double, and every row sums to 1 within 1e-6. */
START_TEST(test_attention_softmax_accuracy) {
    enum { TOKENS = 19, DIM = 1 };
    float qkv[TOKENS * 3 * DIM], out[TOKENS * DIM], att[TOKENS * TOKENS];
    for (int token = 0; token < TOKENS; token++) {
        qkv[token * 3] = 1.0f;                                     /* query */
        qkv[token * 3 + 1] = -80.0f * (float)token / (TOKENS - 1); /* key: scores 0 .. -80 */
        qkv[token * 3 + 2] = (float)token;                         /* value */
    }
    cm_layers_attention_forward(out, att, qkv, NULL, 1, TOKENS, DIM, 1);
    for (int row = 0; row < TOKENS; row++) {
        double normaliser = 0.0, sum = 0.0;
        for (int col = 0; col < TOKENS; col++) normaliser += exp((double)qkv[col * 3 + 1]);
        for (int col = 0; col < TOKENS; col++) {
            double want = exp((double)qkv[col * 3 + 1]) / normaliser;
            float got = att_prob(att, TOKENS, 0, row, col);
            ck_assert_msg(fabs(got - want) <= 4e-7 * (1.0 + want), "p[%d][%d] = %.9g, want %.9g",
                          row, col, (double)got, want);
            sum += got;
        }
        ck_assert_double_eq_tol(sum, 1.0, 1e-6);
    }
}
END_TEST

/* vec_axpy gives exactly the scalar loop's floats, for every tail length. */
START_TEST(test_vec_axpy_equals_scalar_loop) {
    enum { MAX = 11 };
    for (int count = 0; count <= MAX; count++) {
        float x[MAX], y[MAX], vector[MAX], scalar[MAX];
        for (int i = 0; i < count; i++) {
            x[i] = 0.37f * (float)i - 1.3f;
            y[i] = 1.0f / (float)(i + 3);
        }
        memcpy(vector, y, sizeof y);
        vec_axpy(vector, 0.731f, x, count);
        for (int i = 0; i < count; i++) scalar[i] = y[i] + 0.731f * x[i];
        ck_assert_mem_eq(vector, scalar, sizeof(float) * (size_t)count);
    }
}
END_TEST

/* AdamW's vector loop computes each parameter exactly as its scalar tail does: the same
 * values updated as one range of 11 and one parameter at a time give the same bits. */
START_TEST(test_adamw_vector_equals_scalar) {
    enum { COUNT = 11 };
    cm_rng_t rng;
    cm_rng_seed(&rng, 77);
    float *params = random_floats(&rng, COUNT, -1.0f, 1.0f),
          *grads = random_floats(&rng, COUNT, -1.0f, 1.0f);
    float *m = random_floats(&rng, COUNT, -0.1f, 0.1f), *v = random_floats(&rng, COUNT, 0.0f, 0.1f);
    float one_params[COUNT], one_m[COUNT], one_v[COUNT];
    memcpy(one_params, params, sizeof one_params);
    memcpy(one_m, m, sizeof one_m);
    memcpy(one_v, v, sizeof one_v);
    cm_adamw_config_t config = cm_adamw_defaults();
    for (long step = 1; step <= 3; step++) {
        cm_adamw_update(params, grads, m, v, COUNT, &config, step, 1);
        for (int i = 0; i < COUNT; i++)
            cm_adamw_update(one_params + i, grads + i, one_m + i, one_v + i, 1, &config, step, 1);
    }
    ck_assert_mem_eq(params, one_params, sizeof one_params);
    ck_assert_mem_eq(m, one_m, sizeof one_m);
    ck_assert_mem_eq(v, one_v, sizeof one_v);
    free(params);
    free(grads);
    free(m);
    free(v);
}
END_TEST

Suite *check_layers_suite(void);
Suite *check_layers_suite(void) {
    Suite *suite = suite_create("layers");
    TCase *gradients = tcase_create("gradients");
    tcase_add_test(gradients, test_dense_gradients);
    tcase_add_test(gradients, test_dense_backward_null_gradients);
    tcase_add_test(gradients, test_relu_gradient);
    tcase_add_test(gradients, test_relu_backward_at_kink);
    tcase_add_test(gradients, test_gelu_gradient);
    tcase_add_test(gradients, test_layernorm_gradients);
    tcase_add_test(gradients, test_embedding_gradient);
    tcase_add_test(gradients, test_embedding_strided_gradient);
    tcase_add_test(gradients, test_attention_gradient);
    tcase_add_test(gradients, test_attention_masked_gradient);
    tcase_add_test(gradients, test_patch_embed_gradients);
    tcase_add_test(gradients, test_mean_pool);
    tcase_add_test(gradients, test_mean_pool_masked);
    tcase_add_test(gradients, test_conv2d_gradients);
    tcase_add_test(gradients, test_maxpool_gradient);
    tcase_add_test(gradients, test_batchnorm_gradients);
    tcase_add_test(gradients, test_global_avg_pool_gradient);
    suite_add_tcase(suite, gradients);
    TCase *forward = tcase_create("forward");
    tcase_add_test(forward, test_dense_forward_matches_reference);
    tcase_add_test(forward, test_dense_forward_residual_matches_composition);
    tcase_add_test(forward, test_relu_forward_in_place);
    tcase_add_test(forward, test_gelu_forward_values);
    tcase_add_test(forward, test_gelu_accuracy_dense_grid);
    tcase_add_test(forward, test_attention_softmax_accuracy);
    tcase_add_test(forward, test_adamw_vector_equals_scalar);
    tcase_add_test(forward, test_vec_axpy_equals_scalar_loop);
    tcase_add_test(forward, test_layernorm_normalises_rows);
    tcase_add_test(forward, test_attention_forward_matches_reference);
    tcase_add_test(forward, test_attention_stable_for_large_scores);
    tcase_add_test(forward, test_attention_masked_keys_get_no_weight);
    tcase_add_test(forward, test_patch_embed_forward_matches_reference);
    tcase_add_test(forward, test_add_aliases);
    tcase_add_test(forward, test_conv2d_forward_matches_reference);
    tcase_add_test(forward, test_batchnorm_statistics);
    tcase_add_test(forward, test_batchnorm_relu_fused_equals_composition);
    tcase_add_test(forward, test_gelu_widths_give_the_same_bits);
    tcase_add_test(forward, test_attention_widths_give_the_same_bits);
    tcase_add_test(forward, test_layernorm_widths_give_the_same_bits);
    tcase_add_test(forward, test_batchnorm_widths_give_the_same_bits);
    suite_add_tcase(suite, forward);
    TCase *model = tcase_create("model");
    tcase_add_test(model, test_tiny_mlp_overfits_one_batch);
    suite_add_tcase(suite, model);
    return suite;
}
