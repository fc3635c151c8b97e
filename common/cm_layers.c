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

/* The element-wise kernels at four, eight and sixteen lanes (cm_layers_wide.h), run at the
 * widest the CPU has (CM_VEC_DISPATCH). */
#define WIDE_VEC        vec4_t
#define WIDE_MASK       mask4_t
#define WIDE_NAME(name) name##_4
#include "cm_layers_wide.h"
#define WIDE_VEC        vec8_t
#define WIDE_MASK       mask8_t
#define WIDE_NAME(name) name##_8
#include "cm_layers_wide.h"
#define WIDE_VEC        vec16_t
#define WIDE_MASK       mask16_t
#define WIDE_NAME(name) name##_16
#include "cm_layers_wide.h"
CM_VEC_DISPATCH(gelu_forward, (float *out, const float *in, int count), (out, in, count))
CM_VEC_DISPATCH(gelu_backward, (float *d_in, const float *d_out, const float *in, int count),
                (d_in, d_out, in, count))
CM_VEC_DISPATCH(softmax_columns, (float *scores, const unsigned char *valid, int rows, int cols),
                (scores, valid, rows, cols))
CM_VEC_DISPATCH(layernorm_forward,
                (float *out, float *mean, float *rstd, const float *in, const float *gamma,
                 const float *beta, int rows, int dim),
                (out, mean, rstd, in, gamma, beta, rows, dim))
CM_VEC_DISPATCH(layernorm_backward,
                (float *d_in, float *d_gamma, float *d_beta, const float *d_out, const float *in,
                 const float *gamma, const float *mean, const float *rstd, int rows, int dim),
                (d_in, d_gamma, d_beta, d_out, in, gamma, mean, rstd, rows, dim))
CM_VEC_DISPATCH(bias_rows,
                (float *out, const float *residual, const float *bias, int rows, int cols),
                (out, residual, bias, rows, cols))
CM_VEC_DISPATCH(batchnorm_channel_moment,
                (const float *in, int batch, size_t stride, int spatial, float centre, int squares,
                 double *total),
                (in, batch, stride, spatial, centre, squares, total))
CM_VEC_DISPATCH(batchnorm_channel_affine,
                (float *out, const float *in, int batch, size_t stride, int spatial, float scale,
                 float shift, int relu),
                (out, in, batch, stride, spatial, scale, shift, relu))
CM_VEC_DISPATCH(batchnorm_channel_sums,
                (const float *d_out, const float *relu_out, const float *in, int batch,
                 size_t stride, int spatial, float mean, float rstd, double *d_sum, double *d_dot),
                (d_out, relu_out, in, batch, stride, spatial, mean, rstd, d_sum, d_dot))
CM_VEC_DISPATCH(batchnorm_channel_d_in,
                (float *d_in, const float *d_out, const float *relu_out, const float *in, int batch,
                 size_t stride, int spatial, float scale, float slope, float intercept),
                (d_in, d_out, relu_out, in, batch, stride, spatial, scale, slope, intercept))
CM_VEC_DISPATCH(softmax_columns_backward, (float *d, const float *probs, int rows, int cols),
                (d, probs, rows, cols))

int cm_vec_lanes_limit = 16;
const int32_t cm_vec_lane_index[16] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};

void cm_layers_dense_forward(float *out, const float *in, const float *weight, const float *bias,
                             int rows, int in_dim, int out_dim) {
    float beta = 0.0f;
    if (bias) {
        bias_rows(out, NULL, bias, rows, out_dim);
        beta = 1.0f;
    }
    cm_blas_sgemm(false, true, rows, out_dim, in_dim, 1.0f, in, in_dim, weight, in_dim, beta, out,
                  out_dim);
}

void cm_layers_dense_forward_residual(float *out, const float *in, const float *weight,
                                      const float *bias, const float *residual, int rows,
                                      int in_dim, int out_dim) {
    if (bias)
        bias_rows(out, residual, bias, rows, out_dim);
    else
        memcpy(out, residual, sizeof(float) * (size_t)rows * (size_t)out_dim);
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
    gelu_forward(out, in, count);
}

void cm_layers_gelu_backward(float *d_in, const float *d_out, const float *in, int count) {
    gelu_backward(d_in, d_out, in, count);
}

void cm_layers_layernorm_forward(float *out, float *mean, float *rstd, const float *in,
                                 const float *gamma, const float *beta, int rows, int dim) {
    layernorm_forward(out, mean, rstd, in, gamma, beta, rows, dim);
}

void cm_layers_layernorm_backward(float *d_in, float *d_gamma, float *d_beta, const float *d_out,
                                  const float *in, const float *gamma, const float *mean,
                                  const float *rstd, int rows, int dim) {
    layernorm_backward(d_in, d_gamma, d_beta, d_out, in, gamma, mean, rstd, rows, dim);
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

/* Attention runs key-major: a head's probabilities are kept as probs[keys][queries], each
 * column a query's softmax over the keys, so the softmax runs lane by lane over the queries
 * (softmax_columns: no sum across lanes, a mask byte per row) and the products are GEMMs with
 * the transposes folded into the BLAS call. */
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
            /* probs[keys][queries] = softmax over the keys of scale * K_h Q_h^T */
            cm_blas_sgemm(false, true, tokens, tokens, head_dim, scale, key, qkv_stride, query,
                          qkv_stride, 0.0f, probs, tokens);
            softmax_columns(probs, valid_keys, tokens, tokens);
            /* out_h[queries][head_dim] = probs^T · V_h */
            cm_blas_sgemm(true, false, tokens, head_dim, tokens, 1.0f, probs, tokens, value,
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
            /* d_probs[keys][queries] = V_h · d_out_h^T, into scratch */
            cm_blas_sgemm(false, true, tokens, tokens, head_dim, 1.0f, value, qkv_stride,
                          d_out_head, dim, 0.0f, scratch, tokens);
            /* d_V_h[keys][head_dim] += probs · d_out_h */
            cm_blas_sgemm(false, false, tokens, head_dim, tokens, 1.0f, probs, tokens, d_out_head,
                          dim, 1.0f, d_value, qkv_stride);
            /* d_scores[keys][queries] = probs * (d_probs - <d_probs, probs>_query), in place */
            softmax_columns_backward(scratch, probs, tokens, tokens);
            /* d_Q_h += scale * d_scores^T · K_h;  d_K_h += scale * d_scores · Q_h */
            cm_blas_sgemm(true, false, tokens, head_dim, tokens, scale, scratch, tokens, key,
                          qkv_stride, 1.0f, d_query, qkv_stride);
            cm_blas_sgemm(false, false, tokens, head_dim, tokens, scale, scratch, tokens, query,
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

/* Per-channel statistics: sixteen float partial sums per row (at most one map, 784 values for
 * 28x28), rows summed in double (a channel has batch*spatial values, 100 000 at batch 128). */
void cm_layers_batchnorm_train_forward(float *out, float *mean, float *rstd, float *running_mean,
                                       float *running_var, const float *in, const float *gamma,
                                       const float *beta, int batch, int channels, int spatial,
                                       float momentum, int relu) {
    size_t values = (size_t)batch * (size_t)spatial;
    size_t stride = (size_t)channels * (size_t)spatial;
    for (int channel = 0; channel < channels; channel++) {
        size_t first = (size_t)channel * (size_t)spatial;
        double sum = 0.0, squares = 0.0;
        batchnorm_channel_moment(in + first, batch, stride, spatial, 0.0f, 0, &sum);
        float mean_float = (float)(sum / (double)values);
        batchnorm_channel_moment(in + first, batch, stride, spatial, mean_float, 1, &squares);
        double variance = squares / (double)values;
        float channel_rstd = (float)(1.0 / sqrt(variance + batchnorm_epsilon));
        float scale = channel_rstd * gamma[channel];
        float shift = beta[channel] - mean_float * scale;
        batchnorm_channel_affine(out + first, in + first, batch, stride, spatial, scale, shift,
                                 relu);
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
    size_t stride = (size_t)channels * (size_t)spatial;
    for (int channel = 0; channel < channels; channel++) {
        float channel_mean = mean[channel], channel_rstd = rstd[channel];
        size_t first = (size_t)channel * (size_t)spatial;
        /* With n = normalised input and g = d_out (gated by the ReLU): d_in = gamma * rstd *
         * (g - mean(g) - n * mean(g * n)), the layer-norm formula over the channel's values. */
        double d_sum = 0.0, d_dot_norm = 0.0;
        batchnorm_channel_sums(d_out + first, relu_out ? relu_out + first : NULL, in + first, batch,
                               stride, spatial, channel_mean, channel_rstd, &d_sum, &d_dot_norm);
        if (d_gamma) d_gamma[channel] += (float)d_dot_norm;
        if (d_beta) d_beta[channel] += (float)d_sum;
        if (!d_in) continue;
        float d_mean = (float)(d_sum / values), d_dot_norm_mean = (float)(d_dot_norm / values);
        float scale = gamma[channel] * channel_rstd;
        /* d_in = scale * (g - d_mean - (in - mean) * rstd * d_dot_norm_mean), as
         * d_in += g * scale + (in * slope + intercept) */
        float slope = -scale * channel_rstd * d_dot_norm_mean;
        float intercept = -scale * d_mean - slope * channel_mean;
        batchnorm_channel_d_in(d_in + first, d_out + first, relu_out ? relu_out + first : NULL,
                               in + first, batch, stride, spatial, scale, slope, intercept);
    }
}

void cm_layers_batchnorm_eval_forward(float *out, const float *in, const float *gamma,
                                      const float *beta, const float *running_mean,
                                      const float *running_var, int batch, int channels,
                                      int spatial, int relu) {
    for (int channel = 0; channel < channels; channel++) {
        float scale = gamma[channel] / sqrtf(running_var[channel] + batchnorm_epsilon);
        float shift = beta[channel] - running_mean[channel] * scale;
        size_t first = (size_t)channel * (size_t)spatial;
        batchnorm_channel_affine(out + first, in + first, batch, (size_t)channels * spatial,
                                 spatial, scale, shift, relu);
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
        size_t first = (size_t)channel * (size_t)spatial, stride = (size_t)channels * spatial;
        const float *relu_first = relu_out ? relu_out + first : NULL;
        double d_sum = 0.0, d_dot_norm = 0.0;
        batchnorm_channel_sums(d_out + first, relu_first, in + first, batch, stride, spatial,
                               running_mean[channel], channel_rstd, &d_sum, &d_dot_norm);
        if (d_in) /* the statistics are constants here: d_in = g * scale */
            batchnorm_channel_d_in(d_in + first, d_out + first, relu_first, in + first, batch,
                                   stride, spatial, scale, 0.0f, 0.0f);
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
