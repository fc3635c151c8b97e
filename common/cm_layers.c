/*
 * cm_layers: the forward/backward kernels behind every committee model.
 *
 * Matrix products go through the BLAS seam (cm_blas_sgemm, row-major with
 * leading dimensions), so attention can address one head of the packed
 * qkv[tokens][3*dim] rows in place, without copying heads out.  Everything
 * else is a plain loop over contiguous rows.  The kernels assume the shapes
 * were validated when the model was built; they never allocate, log or fail,
 * and every backward pass adds into its gradient buffers (NULL means "not
 * needed").
 */
#include "cm_layers.h"

#include "cm_blas.h"
#include "cm_vec.h"

#include <math.h>
#include <stddef.h>
#include <string.h>

static const float layernorm_epsilon = 1e-5f;

/* GELU tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). */
static const float gelu_scale = 0.7978845608028654f; /* sqrt(2 / pi) */
static const float gelu_cubic = 0.044715f;

/* Sums of one row go to eight float lanes (LANES): no single chain of dependent additions
 * (the latency of one add per element), and each lane adds at most a row / 8 values. */
enum { LANES = 8 };

/* tanh(u) as a rational function, odd degree 13 over even degree 6 (the coefficients of
 * Eigen's float tanh), for |u| < 7.9053 and exactly +-1 beyond: no libm call, no branch.
 * Largest absolute error against tanh in double over a dense grid of [-20, 20]: 3.3e-7
 * (tests/check_layers.c gelu_accuracy holds GELU and its derivative to stated bounds). */
static inline vec4_t tanh_rational(vec4_t u) {
    const float clamp = 7.90531110763549805f;
    vec4_t high = vec_splat(clamp), low = vec_splat(-clamp);
    mask4_t above = u >= high, below = u <= low;
    vec4_t x = vec_select(above, high, vec_select(below, low, u));
    vec4_t x2 = x * x;
    vec4_t p = vec_splat(-2.76076847742355e-16f);
    p = p * x2 + 2.00018790482477e-13f;
    p = p * x2 + -8.60467152213735e-11f;
    p = p * x2 + 5.12229709037114e-08f;
    p = p * x2 + 1.48572235717979e-05f;
    p = p * x2 + 6.37261928875436e-04f;
    p = p * x2 + 4.89352455891786e-03f;
    vec4_t q = vec_splat(1.19825839466702e-06f);
    q = q * x2 + 1.18534705686654e-04f;
    q = q * x2 + 2.26843463243900e-03f;
    q = q * x2 + 4.89352518554385e-03f;
    vec4_t t = p * x / q;
    return vec_select(above, vec_splat(1.0f), vec_select(below, vec_splat(-1.0f), t));
}

static inline vec4_t gelu_value(vec4_t x) {
    return 0.5f * x * (1.0f + tanh_rational(gelu_scale * (x + gelu_cubic * x * x * x)));
}

static inline vec4_t gelu_derivative(vec4_t x) {
    vec4_t tanh_value = tanh_rational(gelu_scale * (x + gelu_cubic * x * x * x));
    vec4_t inner_derivative = gelu_scale * (1.0f + 3.0f * gelu_cubic * x * x);
    return 0.5f * (1.0f + tanh_value) +
           0.5f * x * (1.0f - tanh_value * tanh_value) * inner_derivative;
}

void cm_layers_dense_forward(float *out, const float *in, const float *weight, const float *bias,
                             int rows, int in_dim, int out_dim) {
    float beta = 0.0f;
    if (bias) {
        for (int row = 0; row < rows; row++)
            memcpy(out + (size_t)row * out_dim, bias, sizeof(float) * (size_t)out_dim);
        beta = 1.0f;
    }
    cm_blas_sgemm(false, true, rows, out_dim, in_dim, 1.0f, in, in_dim, weight, in_dim, beta, out,
                  out_dim);
}

void cm_layers_dense_forward_residual(float *out, const float *in, const float *weight,
                                      const float *bias, const float *residual, int rows,
                                      int in_dim, int out_dim) {
    int body = out_dim - out_dim % VEC;
    for (int row = 0; row < rows; row++) {
        float *out_row = out + (size_t)row * out_dim;
        const float *residual_row = residual + (size_t)row * out_dim;
        if (!bias) {
            memcpy(out_row, residual_row, sizeof(float) * (size_t)out_dim);
            continue;
        }
        for (int col = 0; col < body; col += VEC)
            vec_store(out_row + col, vec_load(residual_row + col) + vec_load(bias + col));
        for (int col = body; col < out_dim; col++) out_row[col] = residual_row[col] + bias[col];
    }
    cm_blas_sgemm(false, true, rows, out_dim, in_dim, 1.0f, in, in_dim, weight, in_dim, 1.0f, out,
                  out_dim);
}

void cm_layers_dense_backward(float *d_in, float *d_weight, float *d_bias, const float *d_out,
                              const float *in, const float *weight, int rows, int in_dim,
                              int out_dim) {
    if (d_in)
        cm_blas_sgemm(false, false, rows, in_dim, out_dim, 1.0f, d_out, out_dim, weight, in_dim,
                      1.0f, d_in, in_dim);
    if (d_weight)
        cm_blas_sgemm(true, false, out_dim, in_dim, rows, 1.0f, d_out, out_dim, in, in_dim, 1.0f,
                      d_weight, in_dim);
    if (d_bias) {
        int body = out_dim - out_dim % VEC;
        for (int row = 0; row < rows; row++) {
            const float *d_out_row = d_out + (size_t)row * out_dim;
            for (int col = 0; col < body; col += VEC)
                vec_store(d_bias + col, vec_load(d_bias + col) + vec_load(d_out_row + col));
            for (int col = body; col < out_dim; col++) d_bias[col] += d_out_row[col];
        }
    }
}

void cm_layers_relu_forward(float *out, const float *in, int count) {
    int i = 0;
    for (; i + VEC <= count; i += VEC) {
        vec4_t value = vec_load(in + i);
        vec_store(out + i, vec_select(value > 0.0f, value, vec_splat(0.0f)));
    }
    for (; i < count; i++) out[i] = in[i] > 0.0f ? in[i] : 0.0f;
}

/* d_in + (in > 0 ? d_out : 0): adding +0 where the ReLU is off leaves d_in's bits as they were
 * (d_in + 0 = d_in, and -0 + +0 = +0 is the one change, a sign of zero no later use sees). */
void cm_layers_relu_backward(float *d_in, const float *d_out, const float *in, int count) {
    int i = 0;
    for (; i + VEC <= count; i += VEC) {
        vec4_t gradient = vec_select(vec_load(in + i) > 0.0f, vec_load(d_out + i), vec_splat(0.0f));
        vec_store(d_in + i, vec_load(d_in + i) + gradient);
    }
    for (; i < count; i++)
        if (in[i] > 0.0f) d_in[i] += d_out[i];
}

void cm_layers_gelu_forward(float *out, const float *in, int count) {
    int index = 0;
    for (; index + VEC <= count; index += VEC)
        vec_store(out + index, gelu_value(vec_load(in + index)));
    if (index < count)
        vec_store_tail(out + index, gelu_value(vec_load_tail(in + index, count - index)),
                       count - index);
}

void cm_layers_gelu_backward(float *d_in, const float *d_out, const float *in, int count) {
    int index = 0;
    for (; index + VEC <= count; index += VEC)
        vec_store(d_in + index, vec_load(d_in + index) + vec_load(d_out + index) *
                                                             gelu_derivative(vec_load(in + index)));
    int tail = count - index;
    if (tail > 0)
        vec_store_tail(d_in + index,
                       vec_load_tail(d_in + index, tail) +
                           vec_load_tail(d_out + index, tail) *
                               gelu_derivative(vec_load_tail(in + index, tail)),
                       tail);
}

void cm_layers_layernorm_forward(float *out, float *mean, float *rstd, const float *in,
                                 const float *gamma, const float *beta, int rows, int dim) {
    int body = dim - dim % VEC; /* the vector part of a row; the rest runs one by one */
    for (int row = 0; row < rows; row++) {
        const float *in_row = in + (size_t)row * dim;
        float *out_row = out + (size_t)row * dim;
        /* Two passes over the row (in cache): the variance of centred values loses nothing to
         * cancellation, which a one-pass sum of squares would for rows far from zero mean. */
        vec4_t sums = vec_splat(0.0f);
        for (int i = 0; i < body; i += VEC) sums += vec_load(in_row + i);
        float sum = vec_total(sums);
        for (int i = body; i < dim; i++) sum += in_row[i];
        float row_mean = sum / (float)dim;
        vec4_t squares = vec_splat(0.0f);
        for (int i = 0; i < body; i += VEC) {
            vec4_t centred = vec_load(in_row + i) - row_mean;
            squares += centred * centred;
        }
        float square_sum = vec_total(squares);
        for (int i = body; i < dim; i++)
            square_sum += (in_row[i] - row_mean) * (in_row[i] - row_mean);
        float row_rstd = 1.0f / sqrtf(square_sum / (float)dim + layernorm_epsilon);
        for (int i = 0; i < body; i += VEC)
            vec_store(out_row + i,
                      (vec_load(in_row + i) - row_mean) * row_rstd * vec_load(gamma + i) +
                          vec_load(beta + i));
        for (int i = body; i < dim; i++)
            out_row[i] = (in_row[i] - row_mean) * row_rstd * gamma[i] + beta[i];
        mean[row] = row_mean;
        rstd[row] = row_rstd;
    }
}

void cm_layers_layernorm_backward(float *d_in, float *d_gamma, float *d_beta, const float *d_out,
                                  const float *in, const float *gamma, const float *mean,
                                  const float *rstd, int rows, int dim) {
    /* The vector loop needs both parameter gradients (the model always passes both); a call
     * with one of them NULL runs the plain loop over the whole row. */
    int body = d_gamma && d_beta ? dim - dim % VEC : 0;
    for (int row = 0; row < rows; row++) {
        const float *in_row = in + (size_t)row * dim;
        const float *d_out_row = d_out + (size_t)row * dim;
        float row_mean = mean[row], row_rstd = rstd[row];
        /* With n = normalised input and g = gamma * d_out:
         * d_in = rstd * (g - mean(g) - n * mean(g * n)). */
        vec4_t sums = vec_splat(0.0f), dots = vec_splat(0.0f);
        for (int i = 0; i < body; i += VEC) {
            vec4_t gradient = vec_load(d_out_row + i);
            vec4_t norm = (vec_load(in_row + i) - row_mean) * row_rstd;
            vec4_t d_norm = vec_load(gamma + i) * gradient;
            sums += d_norm;
            dots += d_norm * norm;
            vec_store(d_gamma + i, vec_load(d_gamma + i) + norm * gradient);
            vec_store(d_beta + i, vec_load(d_beta + i) + gradient);
        }
        float d_norm_sum = vec_total(sums), d_norm_dot_norm = vec_total(dots);
        for (int i = body; i < dim; i++) {
            float norm = (in_row[i] - row_mean) * row_rstd;
            float d_norm = gamma[i] * d_out_row[i];
            d_norm_sum += d_norm;
            d_norm_dot_norm += d_norm * norm;
            if (d_gamma) d_gamma[i] += norm * d_out_row[i];
            if (d_beta) d_beta[i] += d_out_row[i];
        }
        if (!d_in) continue;
        float d_norm_mean = d_norm_sum / (float)dim;
        float d_norm_dot_norm_mean = d_norm_dot_norm / (float)dim;
        float *d_in_row = d_in + (size_t)row * dim;
        int d_in_body = dim - dim % VEC;
        for (int i = 0; i < d_in_body; i += VEC) {
            vec4_t norm = (vec_load(in_row + i) - row_mean) * row_rstd;
            vec4_t d_norm = vec_load(gamma + i) * vec_load(d_out_row + i);
            vec_store(d_in_row + i,
                      vec_load(d_in_row + i) +
                          (d_norm - d_norm_mean - norm * d_norm_dot_norm_mean) * row_rstd);
        }
        for (int i = d_in_body; i < dim; i++) {
            float norm = (in_row[i] - row_mean) * row_rstd;
            float d_norm = gamma[i] * d_out_row[i];
            d_in_row[i] += (d_norm - d_norm_mean - norm * d_norm_dot_norm_mean) * row_rstd;
        }
    }
}

void cm_layers_embedding_forward(float *out, int out_stride, const int32_t *ids, int id_stride,
                                 const float *table, int count, int dim) {
    for (int i = 0; i < count; i++)
        memcpy(out + (size_t)i * out_stride, table + (size_t)ids[(size_t)i * id_stride] * dim,
               sizeof(float) * (size_t)dim);
}

void cm_layers_embedding_backward(float *d_table, const float *d_out, int out_stride,
                                  const int32_t *ids, int id_stride, int count, int dim) {
    for (int i = 0; i < count; i++) {
        float *d_row = d_table + (size_t)ids[(size_t)i * id_stride] * dim;
        const float *d_out_row = d_out + (size_t)i * out_stride;
        for (int j = 0; j < dim; j++) d_row[j] += d_out_row[j];
    }
}

/* exp(x) per lane, Cephes' single-precision method: x = n ln2 + r with |r| <= ln2 / 2 (ln2 in
 * two parts), exp(r) by a degree-7 polynomial, 2^n put into the exponent bits.  Within 2 ulp
 * of expf over [-87, 88] (the softmax's arguments are <= 0); below -87 it returns 0. */
static inline vec4_t vec_exp(vec4_t x) {
    vec4_t low = vec_splat(-87.0f), high = vec_splat(88.0f);
    mask4_t underflow = x < low;
    x = vec_select(x > high, high, vec_select(underflow, low, x));
    vec4_t scaled = x * 1.44269504088896341f;
    mask4_t n = __builtin_convertvector(
        scaled + vec_select(scaled >= 0.0f, vec_splat(0.5f), vec_splat(-0.5f)), mask4_t);
    vec4_t whole = __builtin_convertvector(n, vec4_t);
    vec4_t r = x - whole * 0.693359375f - whole * -2.12194440e-4f;
    vec4_t p = vec_splat(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    vec4_t power = (vec4_t)((n + 127) << 23);
    return vec_select(underflow, vec_splat(0.0f), p * power);
}

/* Stable in-place softmax of each row of scores[rows][cols] over the columns whose valid byte
 * is nonzero (valid NULL: all).  Masked columns, the -inf scores, become exactly 0; a row with
 * no valid column becomes all zeros instead of 0/0.  Four columns at a time (the row's tail
 * in a zero-padded vector whose extra lanes count as masked). */
static void softmax_rows(float *scores, const unsigned char *valid, int rows, int cols) {
    int body = cols - cols % VEC, tail = cols - body;
    mask4_t tail_lanes = {0 < tail ? -1 : 0, 1 < tail ? -1 : 0, 2 < tail ? -1 : 0, 0};
    for (int row = 0; row < rows; row++) {
        float *values = scores + (size_t)row * cols;
        float max_value = -INFINITY;
        if (!valid) {
            vec4_t maxima = vec_splat(-INFINITY);
            for (int col = 0; col < body; col += VEC) {
                vec4_t x = vec_load(values + col);
                maxima = vec_select(x > maxima, x, maxima);
            }
            for (int lane = 0; lane < VEC; lane++)
                if (maxima[lane] > max_value) max_value = maxima[lane];
            for (int col = body; col < cols; col++)
                if (values[col] > max_value) max_value = values[col];
        } else {
            for (int col = 0; col < cols; col++)
                if (valid[col] && values[col] > max_value) max_value = values[col];
        }
        if (max_value == -INFINITY) {
            memset(values, 0, sizeof(float) * (size_t)cols);
            continue;
        }
        vec4_t sums = vec_splat(0.0f);
        for (int col = 0; col < cols; col += VEC) {
            int width = col < body ? VEC : tail;
            mask4_t keep = width == VEC ? (mask4_t){-1, -1, -1, -1} : tail_lanes;
            if (valid)
                for (int lane = 0; lane < width; lane++)
                    if (!valid[col + lane]) keep[lane] = 0;
            vec4_t x = width == VEC ? vec_load(values + col) : vec_load_tail(values + col, width);
            vec4_t e = vec_select(keep, vec_exp(vec_select(keep, x - max_value, vec_splat(0.0f))),
                                  vec_splat(0.0f));
            sums += e;
            if (width == VEC)
                vec_store(values + col, e);
            else
                vec_store_tail(values + col, e, width);
        }
        float inverse = 1.0f / vec_total(sums);
        for (int col = 0; col < body; col += VEC)
            vec_store(values + col, vec_load(values + col) * inverse);
        for (int col = body; col < cols; col++) values[col] *= inverse;
    }
}

void cm_layers_attention_forward(float *out, float *att, const float *qkv,
                                 const unsigned char *valid, int batch, int tokens, int dim,
                                 int heads) {
    int head_dim = dim / heads, qkv_stride = 3 * dim;
    float scale = 1.0f / sqrtf((float)head_dim);
    for (int example = 0; example < batch; example++) {
        const float *qkv_batch = qkv + (size_t)example * tokens * qkv_stride;
        const unsigned char *valid_keys = valid ? valid + (size_t)example * tokens : NULL;
        float *out_batch = out + (size_t)example * tokens * dim;
        for (int head = 0; head < heads; head++) {
            const float *query = qkv_batch + head * head_dim;
            const float *key = query + dim;
            const float *value = query + 2 * dim;
            float *probs = att + ((size_t)example * heads + head) * tokens * tokens;
            /* probs[tokens][tokens] = softmax(scale * Q_h K_h^T), masked keys -> 0 */
            cm_blas_sgemm(false, true, tokens, tokens, head_dim, scale, query, qkv_stride, key,
                          qkv_stride, 0.0f, probs, tokens);
            softmax_rows(probs, valid_keys, tokens, tokens);
            /* out_h[tokens][head_dim] = probs · V_h */
            cm_blas_sgemm(false, false, tokens, head_dim, tokens, 1.0f, probs, tokens, value,
                          qkv_stride, 0.0f, out_batch + head * head_dim, dim);
        }
    }
}

void cm_layers_attention_backward(float *d_qkv, float *scratch, const float *d_out,
                                  const float *qkv, const float *att, int batch, int tokens,
                                  int dim, int heads) {
    if (!d_qkv) return;
    int head_dim = dim / heads, qkv_stride = 3 * dim;
    float scale = 1.0f / sqrtf((float)head_dim);
    for (int example = 0; example < batch; example++) {
        size_t qkv_offset = (size_t)example * tokens * qkv_stride;
        const float *d_out_batch = d_out + (size_t)example * tokens * dim;
        for (int head = 0; head < heads; head++) {
            const float *query = qkv + qkv_offset + head * head_dim;
            const float *key = query + dim;
            const float *value = query + 2 * dim;
            float *d_query = d_qkv + qkv_offset + head * head_dim;
            float *d_key = d_query + dim;
            float *d_value = d_query + 2 * dim;
            const float *probs = att + ((size_t)example * heads + head) * tokens * tokens;
            const float *d_out_head = d_out_batch + head * head_dim;
            /* d_probs[tokens][tokens] = d_out_h · V_h^T, into scratch */
            cm_blas_sgemm(false, true, tokens, tokens, head_dim, 1.0f, d_out_head, dim, value,
                          qkv_stride, 0.0f, scratch, tokens);
            /* d_V_h[tokens][head_dim] += probs^T · d_out_h */
            cm_blas_sgemm(true, false, tokens, head_dim, tokens, 1.0f, probs, tokens, d_out_head,
                          dim, 1.0f, d_value, qkv_stride);
            /* Softmax backward in place: d_scores = probs * (d_probs - <d_probs, probs>_row). */
            for (int row = 0; row < tokens; row++) {
                float *d_row = scratch + (size_t)row * tokens;
                const float *probs_row = probs + (size_t)row * tokens;
                float dot = 0.0f;
                for (int col = 0; col < tokens; col++) dot += d_row[col] * probs_row[col];
                for (int col = 0; col < tokens; col++)
                    d_row[col] = probs_row[col] * (d_row[col] - dot);
            }
            /* d_Q_h += scale * d_scores · K_h;  d_K_h += scale * d_scores^T · Q_h */
            cm_blas_sgemm(false, false, tokens, head_dim, tokens, scale, scratch, tokens, key,
                          qkv_stride, 1.0f, d_query, qkv_stride);
            cm_blas_sgemm(true, false, tokens, head_dim, tokens, scale, scratch, tokens, query,
                          qkv_stride, 1.0f, d_key, qkv_stride);
        }
    }
}

void cm_layers_patch_embed_forward(float *out, float *patches, const float *images,
                                   const float *weight, const float *bias, const float *cls,
                                   const float *pos, int batch, int height, int width, int patch,
                                   int dim) {
    int patch_rows = height / patch, patch_cols = width / patch;
    int num_patches = patch_rows * patch_cols, patch_area = patch * patch;
    int out_tokens = 1 + num_patches;
    for (int example = 0; example < batch; example++) {
        const float *image = images + (size_t)example * height * width;
        float *patches_batch = patches + (size_t)example * num_patches * patch_area;
        for (int patch_row = 0; patch_row < patch_rows; patch_row++)
            for (int patch_col = 0; patch_col < patch_cols; patch_col++) {
                float *destination =
                    patches_batch + (size_t)(patch_row * patch_cols + patch_col) * patch_area;
                for (int y = 0; y < patch; y++)
                    memcpy(destination + y * patch,
                           image + (size_t)(patch_row * patch + y) * width + patch_col * patch,
                           sizeof(float) * (size_t)patch);
            }
        float *out_batch = out + (size_t)example * out_tokens * dim;
        for (int i = 0; i < dim; i++) out_batch[i] = cls[i] + pos[i];
        for (int token = 1; token < out_tokens; token++) {
            float *out_row = out_batch + (size_t)token * dim;
            const float *pos_row = pos + (size_t)token * dim;
            for (int i = 0; i < dim; i++) out_row[i] = bias[i] + pos_row[i];
        }
        /* out rows 1.. [num_patches][dim] += patches · weight^T */
        cm_blas_sgemm(false, true, num_patches, dim, patch_area, 1.0f, patches_batch, patch_area,
                      weight, patch_area, 1.0f, out_batch + dim, dim);
    }
}

void cm_layers_patch_embed_backward(float *d_weight, float *d_bias, float *d_cls, float *d_pos,
                                    const float *d_out, const float *patches, int batch,
                                    int num_patches, int patch, int dim) {
    int patch_area = patch * patch, out_tokens = 1 + num_patches;
    for (int example = 0; example < batch; example++) {
        const float *d_out_batch = d_out + (size_t)example * out_tokens * dim;
        if (d_cls)
            for (int i = 0; i < dim; i++) d_cls[i] += d_out_batch[i];
        if (d_pos)
            for (size_t i = 0; i < (size_t)out_tokens * dim; i++) d_pos[i] += d_out_batch[i];
        if (d_bias)
            for (int token = 1; token < out_tokens; token++) {
                const float *d_out_row = d_out_batch + (size_t)token * dim;
                for (int i = 0; i < dim; i++) d_bias[i] += d_out_row[i];
            }
        /* d_weight[dim][patch_area] += d_out rows 1..^T · patches */
        if (d_weight)
            cm_blas_sgemm(true, false, dim, patch_area, num_patches, 1.0f, d_out_batch + dim, dim,
                          patches + (size_t)example * num_patches * patch_area, patch_area, 1.0f,
                          d_weight, patch_area);
    }
}

/* Number of valid tokens of one example (all of them without a mask). */
static int valid_tokens(const unsigned char *valid, int tokens) {
    if (!valid) return tokens;
    int count = 0;
    for (int token = 0; token < tokens; token++) count += valid[token] != 0;
    return count;
}

void cm_layers_mean_pool_forward(float *out, const float *in, const unsigned char *valid, int batch,
                                 int tokens, int dim) {
    for (int example = 0; example < batch; example++) {
        float *out_row = out + (size_t)example * dim;
        const float *in_batch = in + (size_t)example * tokens * dim;
        const unsigned char *valid_row = valid ? valid + (size_t)example * tokens : NULL;
        memset(out_row, 0, sizeof(float) * (size_t)dim);
        int count = valid_tokens(valid_row, tokens);
        if (count == 0) continue;
        for (int token = 0; token < tokens; token++) {
            if (valid_row && !valid_row[token]) continue;
            const float *in_row = in_batch + (size_t)token * dim;
            for (int i = 0; i < dim; i++) out_row[i] += in_row[i];
        }
        float inverse = 1.0f / (float)count;
        for (int i = 0; i < dim; i++) out_row[i] *= inverse;
    }
}

void cm_layers_mean_pool_backward(float *d_in, const float *d_out, const unsigned char *valid,
                                  int batch, int tokens, int dim) {
    for (int example = 0; example < batch; example++) {
        const float *d_out_row = d_out + (size_t)example * dim;
        float *d_in_batch = d_in + (size_t)example * tokens * dim;
        const unsigned char *valid_row = valid ? valid + (size_t)example * tokens : NULL;
        int count = valid_tokens(valid_row, tokens);
        if (count == 0) continue;
        float inverse = 1.0f / (float)count;
        for (int token = 0; token < tokens; token++) {
            if (valid_row && !valid_row[token]) continue;
            float *d_in_row = d_in_batch + (size_t)token * dim;
            for (int i = 0; i < dim; i++) d_in_row[i] += d_out_row[i] * inverse;
        }
    }
}

void cm_layers_add_forward(float *out, const float *a, const float *b, int count) {
    int i = 0;
    for (; i + VEC <= count; i += VEC) vec_store(out + i, vec_load(a + i) + vec_load(b + i));
    for (; i < count; i++) out[i] = a[i] + b[i];
}

/* ---------------------------------------------------------------- convolutional layers */

static const float batchnorm_epsilon = 1e-5f;

int cm_layers_conv2d_out_side(int side, int kernel, int stride, int padding) {
    return (side + 2 * padding - kernel) / stride + 1;
}

/* The range [*first, *last) of output columns ox whose input column ox*stride + offset lies in
 * [0, width). */
static void valid_range(int offset, int stride, int width, int out_width, int *first, int *last) {
    int start = offset >= 0 ? 0 : (-offset + stride - 1) / stride;
    int stop = width - offset <= 0 ? 0 : (width - offset + stride - 1) / stride;
    if (stop > out_width) stop = out_width;
    if (start > stop) start = stop;
    *first = start;
    *last = stop;
}

/* cols[channels*kernel*kernel][out_h*out_w]: row (c, ky, kx), column (oy, ox) holds
 * image[c][oy*stride - padding + ky][ox*stride - padding + kx], 0 outside the image. */
static void im2col(float *cols, const float *image, int channels, int height, int width, int kernel,
                   int stride, int padding, int out_height, int out_width) {
    size_t positions = (size_t)out_height * (size_t)out_width;
    for (int channel = 0; channel < channels; channel++)
        for (int ky = 0; ky < kernel; ky++)
            for (int kx = 0; kx < kernel; kx++) {
                float *row = cols + ((size_t)(channel * kernel + ky) * kernel + kx) * positions;
                int first, last;
                valid_range(kx - padding, stride, width, out_width, &first, &last);
                for (int oy = 0; oy < out_height; oy++) {
                    float *out_row = row + (size_t)oy * out_width;
                    int iy = oy * stride - padding + ky;
                    if (iy < 0 || iy >= height) {
                        memset(out_row, 0, sizeof(float) * (size_t)out_width);
                        continue;
                    }
                    const float *in_row =
                        image + ((size_t)channel * height + (size_t)iy) * (size_t)width;
                    for (int ox = 0; ox < first; ox++) out_row[ox] = 0.0f;
                    if (stride == 1)
                        memcpy(out_row + first, in_row + first + kx - padding,
                               sizeof(float) * (size_t)(last - first));
                    else
                        for (int ox = first; ox < last; ox++)
                            out_row[ox] = in_row[ox * stride - padding + kx];
                    for (int ox = last; ox < out_width; ox++) out_row[ox] = 0.0f;
                }
            }
}

/* The adjoint of im2col: d_image[channels][height][width] += every column entry at its pixel. */
static void col2im_add(float *d_image, const float *cols, int channels, int height, int width,
                       int kernel, int stride, int padding, int out_height, int out_width) {
    size_t positions = (size_t)out_height * (size_t)out_width;
    for (int channel = 0; channel < channels; channel++)
        for (int ky = 0; ky < kernel; ky++)
            for (int kx = 0; kx < kernel; kx++) {
                const float *row =
                    cols + ((size_t)(channel * kernel + ky) * kernel + kx) * positions;
                int first, last;
                valid_range(kx - padding, stride, width, out_width, &first, &last);
                for (int oy = 0; oy < out_height; oy++) {
                    int iy = oy * stride - padding + ky;
                    if (iy < 0 || iy >= height) continue;
                    const float *col_row = row + (size_t)oy * out_width;
                    float *d_row =
                        d_image + ((size_t)channel * height + (size_t)iy) * (size_t)width;
                    for (int ox = first; ox < last; ox++)
                        d_row[ox * stride - padding + kx] += col_row[ox];
                }
            }
}

/* A 1x1 convolution with stride 1 and no padding needs no columns: the image is its own. */
static int is_pointwise(int kernel, int stride, int padding) {
    return kernel == 1 && stride == 1 && padding == 0;
}

void cm_layers_conv2d_forward(float *out, float *cols, const float *in, const float *weight,
                              const float *bias, int batch, int in_channels, int height, int width,
                              int out_channels, int kernel, int stride, int padding) {
    int out_height = cm_layers_conv2d_out_side(height, kernel, stride, padding);
    int out_width = cm_layers_conv2d_out_side(width, kernel, stride, padding);
    int positions = out_height * out_width, patch = in_channels * kernel * kernel;
    for (int example = 0; example < batch; example++) {
        const float *image = in + (size_t)example * in_channels * height * width;
        float *out_example = out + (size_t)example * out_channels * positions;
        const float *columns = image;
        if (!is_pointwise(kernel, stride, padding)) {
            im2col(cols, image, in_channels, height, width, kernel, stride, padding, out_height,
                   out_width);
            columns = cols;
        }
        float beta = 0.0f;
        if (bias) {
            for (int channel = 0; channel < out_channels; channel++)
                for (int position = 0; position < positions; position++)
                    out_example[(size_t)channel * positions + position] = bias[channel];
            beta = 1.0f;
        }
        /* out_e[out_channels][positions] = weight[out_channels][patch] · cols[patch][positions] */
        cm_blas_sgemm(false, false, out_channels, positions, patch, 1.0f, weight, patch, columns,
                      positions, beta, out_example, positions);
    }
}

void cm_layers_conv2d_backward(float *d_in, float *d_weight, float *d_bias, float *cols,
                               const float *d_out, const float *in, const float *weight, int batch,
                               int in_channels, int height, int width, int out_channels, int kernel,
                               int stride, int padding) {
    int out_height = cm_layers_conv2d_out_side(height, kernel, stride, padding);
    int out_width = cm_layers_conv2d_out_side(width, kernel, stride, padding);
    int positions = out_height * out_width, patch = in_channels * kernel * kernel;
    int pointwise = is_pointwise(kernel, stride, padding);
    for (int example = 0; example < batch; example++) {
        size_t image_offset = (size_t)example * in_channels * height * width;
        const float *d_out_example = d_out + (size_t)example * out_channels * positions;
        if (d_bias)
            for (int channel = 0; channel < out_channels; channel++) {
                const float *d_row = d_out_example + (size_t)channel * positions;
                float sum = 0.0f;
                for (int position = 0; position < positions; position++) sum += d_row[position];
                d_bias[channel] += sum;
            }
        if (d_weight) {
            const float *columns = in + image_offset;
            if (!pointwise) {
                im2col(cols, in + image_offset, in_channels, height, width, kernel, stride, padding,
                       out_height, out_width);
                columns = cols;
            }
            /* d_weight[out_channels][patch] += d_out_e · cols^T */
            cm_blas_sgemm(false, true, out_channels, patch, positions, 1.0f, d_out_example,
                          positions, columns, positions, 1.0f, d_weight, patch);
        }
        if (d_in) {
            /* d_cols[patch][positions] = weight^T · d_out_e, then scattered back to pixels. */
            if (pointwise) {
                cm_blas_sgemm(true, false, patch, positions, out_channels, 1.0f, weight, patch,
                              d_out_example, positions, 1.0f, d_in + image_offset, positions);
                continue;
            }
            cm_blas_sgemm(true, false, patch, positions, out_channels, 1.0f, weight, patch,
                          d_out_example, positions, 0.0f, cols, positions);
            col2im_add(d_in + image_offset, cols, in_channels, height, width, kernel, stride,
                       padding, out_height, out_width);
        }
    }
}

void cm_layers_maxpool2x2_forward(float *out, int32_t *argmax, const float *in, int planes,
                                  int height, int width) {
    int out_height = height / 2, out_width = width / 2;
    for (int plane = 0; plane < planes; plane++) {
        const float *in_plane = in + (size_t)plane * height * width;
        size_t out_offset = (size_t)plane * out_height * out_width;
        for (int oy = 0; oy < out_height; oy++)
            for (int ox = 0; ox < out_width; ox++) {
                int best = 2 * oy * width + 2 * ox;
                const int candidates[3] = {best + 1, best + width, best + width + 1};
                for (int index = 0; index < 3; index++)
                    if (in_plane[candidates[index]] > in_plane[best]) best = candidates[index];
                size_t at = out_offset + (size_t)oy * out_width + ox;
                out[at] = in_plane[best];
                argmax[at] = best;
            }
    }
}

void cm_layers_maxpool2x2_backward(float *d_in, const float *d_out, const int32_t *argmax,
                                   int planes, int height, int width) {
    int outputs = (height / 2) * (width / 2);
    for (int plane = 0; plane < planes; plane++) {
        float *d_plane = d_in + (size_t)plane * height * width;
        const float *d_out_plane = d_out + (size_t)plane * outputs;
        const int32_t *argmax_plane = argmax + (size_t)plane * outputs;
        for (int index = 0; index < outputs; index++)
            d_plane[argmax_plane[index]] += d_out_plane[index];
    }
}

/* Sums of one row in eight float lanes: no single chain of dependent additions (the
 * latency of one add per element), and each lane adds at most a row / 8 values. */

static double row_sum(const float *row, int count) {
    float lanes[LANES] = {0};
    int index = 0;
    for (; index + LANES <= count; index += LANES)
        for (int lane = 0; lane < LANES; lane++) lanes[lane] += row[index + lane];
    double sum = 0.0;
    for (; index < count; index++) sum += row[index];
    for (int lane = 0; lane < LANES; lane++) sum += lanes[lane];
    return sum;
}

static double row_centred_squares(const float *row, int count, float mean) {
    float lanes[LANES] = {0};
    int index = 0;
    for (; index + LANES <= count; index += LANES)
        for (int lane = 0; lane < LANES; lane++) {
            float centred = row[index + lane] - mean;
            lanes[lane] += centred * centred;
        }
    double sum = 0.0;
    for (; index < count; index++) sum += (double)(row[index] - mean) * (row[index] - mean);
    for (int lane = 0; lane < LANES; lane++) sum += lanes[lane];
    return sum;
}

/* d_sum += sum(g), d_dot += sum(g * (x - mean) * rstd) over one row, where g = d_out, gated by
 * relu_out > 0 when relu_out is not NULL (the fused ReLU's backward). */
static void row_gradient_sums(const float *d_out, const float *relu_out, const float *in, int count,
                              float mean, float rstd, double *d_sum, double *d_dot) {
    float sum_lanes[LANES] = {0}, dot_lanes[LANES] = {0};
    int index = 0;
    for (; index + LANES <= count; index += LANES)
        for (int lane = 0; lane < LANES; lane++) {
            int at = index + lane;
            float gradient = !relu_out || relu_out[at] > 0.0f ? d_out[at] : 0.0f;
            sum_lanes[lane] += gradient;
            dot_lanes[lane] += gradient * (in[at] - mean) * rstd;
        }
    for (; index < count; index++) {
        float gradient = !relu_out || relu_out[index] > 0.0f ? d_out[index] : 0.0f;
        *d_sum += gradient;
        *d_dot += (double)gradient * (in[index] - mean) * rstd;
    }
    for (int lane = 0; lane < LANES; lane++) {
        *d_sum += sum_lanes[lane];
        *d_dot += dot_lanes[lane];
    }
}

/* out[count] = in * scale + shift, then max(., 0) when relu. */
static void affine_row(float *out, const float *in, int count, float scale, float shift, int relu) {
    /* In blocks of eight (a fixed inner loop the compiler turns into vector instructions at
     * -O2), the ReLU as a mask rather than a branch: signs are random, branches mispredict. */
    float floor = relu ? 0.0f : -INFINITY;
    int index = 0;
    for (; index + LANES <= count; index += LANES)
        for (int lane = 0; lane < LANES; lane++) {
            float value = in[index + lane] * scale + shift;
            out[index + lane] = value > floor ? value : floor;
        }
    for (; index < count; index++) {
        float value = in[index] * scale + shift;
        out[index] = value > floor ? value : floor;
    }
}

/* Per-channel statistics: float lanes per row (at most one map, 784 values for 28x28), rows
 * summed in double (a channel has batch*spatial values, 100 000 at batch 128). */
void cm_layers_batchnorm_train_forward(float *out, float *mean, float *rstd, float *running_mean,
                                       float *running_var, const float *in, const float *gamma,
                                       const float *beta, int batch, int channels, int spatial,
                                       float momentum, int relu) {
    size_t values = (size_t)batch * (size_t)spatial;
    for (int channel = 0; channel < channels; channel++) {
        double sum = 0.0;
        for (int example = 0; example < batch; example++)
            sum += row_sum(in + ((size_t)example * channels + channel) * spatial, spatial);
        float mean_float = (float)(sum / (double)values);
        double squares = 0.0;
        for (int example = 0; example < batch; example++)
            squares += row_centred_squares(in + ((size_t)example * channels + channel) * spatial,
                                           spatial, mean_float);
        double variance = squares / (double)values;
        float channel_rstd = (float)(1.0 / sqrt(variance + batchnorm_epsilon));
        float scale = channel_rstd * gamma[channel];
        float shift = beta[channel] - mean_float * scale;
        for (int example = 0; example < batch; example++) {
            size_t offset = ((size_t)example * channels + channel) * spatial;
            affine_row(out + offset, in + offset, spatial, scale, shift, relu);
        }
        mean[channel] = mean_float;
        rstd[channel] = channel_rstd;
        if (running_mean && running_var) {
            double unbiased = values > 1 ? squares / (double)(values - 1) : variance;
            running_mean[channel] =
                (1.0f - momentum) * running_mean[channel] + momentum * mean_float;
            running_var[channel] =
                (1.0f - momentum) * running_var[channel] + momentum * (float)unbiased;
        }
    }
}

void cm_layers_batchnorm_train_backward(float *d_in, float *d_gamma, float *d_beta,
                                        const float *d_out, const float *relu_out, const float *in,
                                        const float *gamma, const float *mean, const float *rstd,
                                        int batch, int channels, int spatial) {
    double values = (double)batch * (double)spatial;
    for (int channel = 0; channel < channels; channel++) {
        float channel_mean = mean[channel], channel_rstd = rstd[channel];
        /* With n = normalised input and g = d_out (gated by the ReLU): d_in = gamma * rstd *
         * (g - mean(g) - n * mean(g * n)), the layer-norm formula over the channel's values. */
        double d_sum = 0.0, d_dot_norm = 0.0;
        for (int example = 0; example < batch; example++) {
            size_t offset = ((size_t)example * channels + channel) * spatial;
            row_gradient_sums(d_out + offset, relu_out ? relu_out + offset : NULL, in + offset,
                              spatial, channel_mean, channel_rstd, &d_sum, &d_dot_norm);
        }
        if (d_gamma) d_gamma[channel] += (float)d_dot_norm;
        if (d_beta) d_beta[channel] += (float)d_sum;
        if (!d_in) continue;
        float d_mean = (float)(d_sum / values), d_dot_norm_mean = (float)(d_dot_norm / values);
        float scale = gamma[channel] * channel_rstd;
        for (int example = 0; example < batch; example++) {
            size_t offset = ((size_t)example * channels + channel) * spatial;
            const float *d_row = d_out + offset, *in_row = in + offset;
            const float *relu_row = relu_out ? relu_out + offset : NULL;
            float *d_in_row = d_in + offset;
            /* d_in = scale * (g - d_mean - (in - mean) * rstd * d_dot_norm_mean), as
             * d_in += g * scale + (in * slope + intercept), in blocks of eight (see affine_row) */
            float slope = -scale * channel_rstd * d_dot_norm_mean;
            float intercept = -scale * d_mean - slope * channel_mean;
            int index = 0;
            if (relu_row)
                for (; index + LANES <= spatial; index += LANES)
                    for (int lane = 0; lane < LANES; lane++) {
                        int at = index + lane;
                        float gradient = relu_row[at] > 0.0f ? d_row[at] : 0.0f;
                        d_in_row[at] += gradient * scale + (in_row[at] * slope + intercept);
                    }
            else
                for (; index + LANES <= spatial; index += LANES)
                    for (int lane = 0; lane < LANES; lane++) {
                        int at = index + lane;
                        d_in_row[at] += d_row[at] * scale + (in_row[at] * slope + intercept);
                    }
            for (; index < spatial; index++) {
                float gradient = !relu_row || relu_row[index] > 0.0f ? d_row[index] : 0.0f;
                d_in_row[index] += gradient * scale + (in_row[index] * slope + intercept);
            }
        }
    }
}

void cm_layers_batchnorm_eval_forward(float *out, const float *in, const float *gamma,
                                      const float *beta, const float *running_mean,
                                      const float *running_var, int batch, int channels,
                                      int spatial, int relu) {
    for (int channel = 0; channel < channels; channel++) {
        float scale = gamma[channel] / sqrtf(running_var[channel] + batchnorm_epsilon);
        float shift = beta[channel] - running_mean[channel] * scale;
        for (int example = 0; example < batch; example++) {
            size_t offset = ((size_t)example * channels + channel) * spatial;
            affine_row(out + offset, in + offset, spatial, scale, shift, relu);
        }
    }
}

void cm_layers_batchnorm_eval_backward(float *d_in, float *d_gamma, float *d_beta,
                                       const float *d_out, const float *relu_out, const float *in,
                                       const float *gamma, const float *running_mean,
                                       const float *running_var, int batch, int channels,
                                       int spatial) {
    for (int channel = 0; channel < channels; channel++) {
        float channel_rstd = 1.0f / sqrtf(running_var[channel] + batchnorm_epsilon);
        float scale = gamma[channel] * channel_rstd;
        double d_sum = 0.0, d_dot_norm = 0.0;
        for (int example = 0; example < batch; example++) {
            size_t offset = ((size_t)example * channels + channel) * spatial;
            const float *relu_row = relu_out ? relu_out + offset : NULL;
            row_gradient_sums(d_out + offset, relu_row, in + offset, spatial, running_mean[channel],
                              channel_rstd, &d_sum, &d_dot_norm);
            if (!d_in) continue;
            for (int index = 0; index < spatial; index++) {
                float gradient = !relu_row || relu_row[index] > 0.0f ? d_out[offset + index] : 0.0f;
                d_in[offset + index] += gradient * scale;
            }
        }
        if (d_gamma) d_gamma[channel] += (float)d_dot_norm;
        if (d_beta) d_beta[channel] += (float)d_sum;
    }
}

void cm_layers_global_avg_pool_forward(float *out, const float *in, int batch, int channels,
                                       int spatial) {
    for (size_t plane = 0; plane < (size_t)batch * channels; plane++) {
        const float *row = in + plane * spatial;
        float sum = 0.0f;
        for (int index = 0; index < spatial; index++) sum += row[index];
        out[plane] = sum / (float)spatial;
    }
}

void cm_layers_global_avg_pool_backward(float *d_in, const float *d_out, int batch, int channels,
                                        int spatial) {
    for (size_t plane = 0; plane < (size_t)batch * channels; plane++) {
        float share = d_out[plane] / (float)spatial;
        float *row = d_in + plane * spatial;
        for (int index = 0; index < spatial; index++) row[index] += share;
    }
}
