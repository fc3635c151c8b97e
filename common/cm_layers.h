/*
 * cm_layers: forward/backward kernels of the neural-network core.
 *
 * Conventions (after llm.c):
 *  - every buffer is a flat row-major float32 array; the comment of each
 *    kernel gives every buffer's shape;
 *  - arguments: outputs first, then inputs, then sizes;
 *  - backward kernels ADD into every gradient buffer (d_in, d_weight, ...);
 *    the caller zeroes them.  A gradient pointer may be NULL when that
 *    gradient is not needed (e.g. d_in of the first layer);
 *  - kernels are pure: no allocation, no logging, no failure.  Shapes are
 *    validated once, when a model is built.  Scratch memory is passed in.
 *  - dense weights use PyTorch's layout [out_dim][in_dim], so checkpoints
 *    interoperate with torch.nn.Linear.
 */
#ifndef CM_LAYERS_H
#define CM_LAYERS_H

#include <stdint.h>

/* out[rows][out_dim] = in[rows][in_dim] · weight[out_dim][in_dim]^T + bias[out_dim]
 * (bias may be NULL). */
void cm_layers_dense_forward(float *out, const float *in, const float *weight, const float *bias,
                             int rows, int in_dim, int out_dim);
/* out[rows][out_dim] = residual[rows][out_dim] + bias[out_dim] + in · weight^T, the dense layer
 * and a residual connection in one pass over out (bias may be NULL; out may not alias
 * residual or in). */
void cm_layers_dense_forward_residual(float *out, const float *in, const float *weight,
                                      const float *bias, const float *residual, int rows,
                                      int in_dim, int out_dim);
/* d_in[rows][in_dim] += d_out · weight; d_weight[out_dim][in_dim] += d_out^T · in;
 * d_bias[out_dim] += column sums of d_out.  Any of d_in, d_weight, d_bias may be NULL. */
void cm_layers_dense_backward(float *d_in, float *d_weight, float *d_bias, const float *d_out,
                              const float *in, const float *weight, int rows, int in_dim,
                              int out_dim);

/* out[count] = max(in, 0).  out may equal in. */
void cm_layers_relu_forward(float *out, const float *in, int count);
/* d_in[count] += d_out * (in > 0); `in` is the pre-activation. */
void cm_layers_relu_backward(float *d_in, const float *d_out, const float *in, int count);

/* out[count] = GELU(in), tanh approximation (as GPT-2 / PyTorch approximate="tanh"), the
 * tanh itself by a rational function (no libm call; cm_layers.c): within 8e-7 (1 + |GELU|)
 * of the exact tanh form, the derivative within 5e-6 (tests/check_layers.c).  out may equal
 * in. */
void cm_layers_gelu_forward(float *out, const float *in, int count);
/* d_in[count] += d_out * GELU'(in); `in` is the pre-activation. */
void cm_layers_gelu_backward(float *d_in, const float *d_out, const float *in, int count);

/* Layer norm over the last dimension, eps = 1e-5:
 * out[rows][dim] = (in - mean) * rstd * gamma[dim] + beta[dim];
 * saves mean[rows] and rstd[rows] for the backward pass. */
void cm_layers_layernorm_forward(float *out, float *mean, float *rstd, const float *in,
                                 const float *gamma, const float *beta, int rows, int dim);
/* d_in[rows][dim], d_gamma[dim], d_beta[dim] += gradients. */
void cm_layers_layernorm_backward(float *d_in, float *d_gamma, float *d_beta, const float *d_out,
                                  const float *in, const float *gamma, const float *mean,
                                  const float *rstd, int rows, int dim);

/* Embedding lookup, strided so one column of a [rows][columns] id matrix can fill its slice of
 * a concatenated [rows][columns*dim] output: for i < count, the dim floats at
 * out + i*out_stride = table[ids[i*id_stride]][dim]; ids are in [0, vocab) (checked by the
 * caller, once, at the model's boundary).  Plain lookup: out_stride = dim, id_stride = 1. */
void cm_layers_embedding_forward(float *out, int out_stride, const int32_t *ids, int id_stride,
                                 const float *table, int count, int dim);
/* d_table[vocab][dim]: row ids[i*id_stride] += the dim floats at d_out + i*out_stride. */
void cm_layers_embedding_backward(float *d_table, const float *d_out, int out_stride,
                                  const int32_t *ids, int id_stride, int count, int dim);

/* Non-causal multi-head self-attention core (the projections are dense layers around it).
 * qkv[batch][tokens][3*dim] holds Q, K, V side by side, each split into `heads` heads of
 * dim/heads.  out[batch][tokens][dim] = concat_h softmax(Q_h K_h^T / sqrt(dim/heads)) V_h;
 * att[batch][heads][keys][queries] saves the attention probabilities (key-major: column q
 * is query q's distribution over the keys).
 * valid[batch][tokens] (NULL: every token) is the padding mask: a key whose valid byte is 0
 * gets probability exactly 0; a query that sees no valid key gets an all-zero
 * attention row and output (never NaN).  Queries are never masked. */
void cm_layers_attention_forward(float *out, float *att, const float *qkv,
                                 const unsigned char *valid, int batch, int tokens, int dim,
                                 int heads);
/* d_qkv[batch][tokens][3*dim] += gradient; scratch holds tokens*tokens floats.  The same call
 * serves masked attention: masked probabilities are exactly 0 in att, so they pass no gradient
 * (and an all-zero row passes none at all, the derivative of its constant output). */
void cm_layers_attention_backward(float *d_qkv, float *scratch, const float *d_out,
                                  const float *qkv, const float *att, int batch, int tokens,
                                  int dim, int heads);

/* Patch embedding of single-channel images[batch][height][width] into tokens:
 * patches[batch][num_patches][patch*patch] (saved for backward) are the non-overlapping
 * patch x patch squares in row-major order, num_patches = (height/patch)*(width/patch);
 * out[batch][1 + num_patches][dim]: row 0 is cls[dim] + pos[0], row 1 + p is
 * patches[p] · weight[dim][patch*patch]^T + bias[dim] + pos[1 + p]. */
void cm_layers_patch_embed_forward(float *out, float *patches, const float *images,
                                   const float *weight, const float *bias, const float *cls,
                                   const float *pos, int batch, int height, int width, int patch,
                                   int dim);
/* d_weight, d_bias, d_cls[dim], d_pos[1 + num_patches][dim] += gradients (images get none). */
void cm_layers_patch_embed_backward(float *d_weight, float *d_bias, float *d_cls, float *d_pos,
                                    const float *d_out, const float *patches, int batch,
                                    int num_patches, int patch, int dim);

/* out[batch][dim] = mean over the valid tokens of in[batch][tokens][dim]; valid[batch][tokens]
 * (NULL: every token) marks them with a nonzero byte.  An example without a valid token pools
 * to zeros. */
void cm_layers_mean_pool_forward(float *out, const float *in, const unsigned char *valid, int batch,
                                 int tokens, int dim);
/* d_in[batch][tokens][dim] += d_out[batch][dim] / (valid tokens of the example), valid tokens
 * only. */
void cm_layers_mean_pool_backward(float *d_in, const float *d_out, const unsigned char *valid,
                                  int batch, int tokens, int dim);

/* out[count] = a[count] + b[count] (residual connections); out may alias a or b. */
void cm_layers_add_forward(float *out, const float *a, const float *b, int count);

/* ---- convolutional layers: images are NCHW, [batch][channels][height][width], as PyTorch. */

/* Output side of a convolution over `side` pixels: (side + 2*padding - kernel) / stride + 1. */
int cm_layers_conv2d_out_side(int side, int kernel, int stride, int padding);

/* 2-D convolution by im2col and one GEMM per example (zero padding, square kernel):
 * out[batch][out_channels][out_h][out_w] = weight[out_channels][in_channels*kernel*kernel]
 * (PyTorch's [out][in][kh][kw], flattened) applied to in[batch][in_channels][height][width],
 * plus bias[out_channels] (may be NULL); out_h, out_w from cm_layers_conv2d_out_side.
 * cols is scratch of in_channels*kernel*kernel*out_h*out_w floats (one example's columns). */
void cm_layers_conv2d_forward(float *out, float *cols, const float *in, const float *weight,
                              const float *bias, int batch, int in_channels, int height, int width,
                              int out_channels, int kernel, int stride, int padding);
/* d_in[batch][in_channels][height][width], d_weight[out_channels][in_channels*kernel*kernel],
 * d_bias[out_channels] += gradients for d_out[batch][out_channels][out_h][out_w]; any may be
 * NULL.  cols: the forward's scratch size (the columns are rebuilt, not saved). */
void cm_layers_conv2d_backward(float *d_in, float *d_weight, float *d_bias, float *cols,
                               const float *d_out, const float *in, const float *weight, int batch,
                               int in_channels, int height, int width, int out_channels, int kernel,
                               int stride, int padding);

/* 2x2 max pooling, stride 2, over planes[planes][height][width] (planes = batch*channels):
 * out[planes][height/2][width/2] (an odd last row or column is dropped, as PyTorch's floor
 * mode); argmax[planes][height/2][width/2] saves the index inside its plane (y*width + x) of
 * the maximum (the first one on ties). */
void cm_layers_maxpool2x2_forward(float *out, int32_t *argmax, const float *in, int planes,
                                  int height, int width);
/* d_in[planes][height][width] += d_out routed to the saved argmax of each window. */
void cm_layers_maxpool2x2_backward(float *d_in, const float *d_out, const int32_t *argmax,
                                   int planes, int height, int width);

/* Batch norm over in[batch][channels][spatial] (spatial = h*w; 1 for a dense layer), eps 1e-5,
 * training mode: per channel the batch mean and biased variance over batch*spatial values,
 * out = (in - mean) * rstd * gamma[channels] + beta[channels], followed by a fused ReLU
 * (out = max(out, 0)) when relu is 1; saves mean[channels] and rstd[channels] for backward,
 * and updates running_mean[channels] and running_var[channels] (the unbiased variance, as
 * PyTorch) as running = (1 - momentum) running + momentum batch.  running_mean and running_var
 * may be NULL (no update).  out may not alias in. */
void cm_layers_batchnorm_train_forward(float *out, float *mean, float *rstd, float *running_mean,
                                       float *running_var, const float *in, const float *gamma,
                                       const float *beta, int batch, int channels, int spatial,
                                       float momentum, int relu);
/* Backward of the training-mode forward (the batch statistics depend on in):
 * d_in[batch][channels][spatial], d_gamma[channels], d_beta[channels] += gradients for d_out.
 * relu_out: the forward's output when it fused the ReLU (d_out then passes only where
 * relu_out > 0), NULL without. */
void cm_layers_batchnorm_train_backward(float *d_in, float *d_gamma, float *d_beta,
                                        const float *d_out, const float *relu_out, const float *in,
                                        const float *gamma, const float *mean, const float *rstd,
                                        int batch, int channels, int spatial);
/* Evaluation mode: out = (in - running_mean) / sqrt(running_var + eps) * gamma + beta, then
 * the fused ReLU when relu is 1. */
void cm_layers_batchnorm_eval_forward(float *out, const float *in, const float *gamma,
                                      const float *beta, const float *running_mean,
                                      const float *running_var, int batch, int channels,
                                      int spatial, int relu);
/* Backward of the evaluation-mode forward (a fixed affine map per channel); relu_out as for
 * the training-mode backward. */
void cm_layers_batchnorm_eval_backward(float *d_in, float *d_gamma, float *d_beta,
                                       const float *d_out, const float *relu_out, const float *in,
                                       const float *gamma, const float *running_mean,
                                       const float *running_var, int batch, int channels,
                                       int spatial);

/* Global average pooling: out[batch][channels] = mean of in[batch][channels][spatial]. */
void cm_layers_global_avg_pool_forward(float *out, const float *in, int batch, int channels,
                                       int spatial);
/* d_in[batch][channels][spatial] += d_out[batch][channels] / spatial. */
void cm_layers_global_avg_pool_backward(float *d_in, const float *d_out, int batch, int channels,
                                        int spatial);

#endif
