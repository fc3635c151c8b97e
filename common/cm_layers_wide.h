/*
 * cm_layers_wide.h: the vector kernels of cm_layers (GELU, the attention's softmax, layer
 * norm, bias rows) for one vector width, included by cm_layers.c once per width with WIDE_VEC
 * (a GCC vector of floats), WIDE_MASK (int32 lanes of the same size) and WIDE_NAME(name) (name
 * with the width's suffix: _4, _8, _16) defined; it undefines them at the end.  Its kernels
 * are always inline, for CM_VEC_DISPATCH to compile into the code of each instruction set.
 * Every width gives the same bits: each kernel runs the same IEEE operations in the same
 * order, lane by lane (GELU, bias rows), down columns with the columns as lanes (softmax), or
 * into sixteen partial sums whatever the width (layer norm).  A tail shorter than a vector
 * runs in a zero-padded vector, or as a full vector that overlaps the one before.
 */
#define WIDE_LANES ((int)(sizeof(WIDE_VEC) / sizeof(float)))

CM_VEC_INLINE WIDE_VEC WIDE_NAME(splat)(float value) { return (WIDE_VEC){0} + value; }

CM_VEC_INLINE WIDE_VEC WIDE_NAME(select)(WIDE_MASK mask, WIDE_VEC a, WIDE_VEC b) {
    return (WIDE_VEC)((mask & (WIDE_MASK)a) | (~mask & (WIDE_MASK)b));
}

CM_VEC_INLINE WIDE_VEC WIDE_NAME(load)(const float *source) {
    WIDE_VEC value;
    memcpy(&value, source, sizeof value);
    return value;
}

CM_VEC_INLINE void WIDE_NAME(store)(float *target, WIDE_VEC value) {
    memcpy(target, &value, sizeof value);
}

/* The first `count` (< lanes) floats of source, zeros after. */
CM_VEC_INLINE WIDE_VEC WIDE_NAME(load_tail)(const float *source, int count) {
    WIDE_VEC value = WIDE_NAME(splat)(0.0f);
    memcpy(&value, source, sizeof(float) * (size_t)count);
    return value;
}

CM_VEC_INLINE void WIDE_NAME(store_tail)(float *target, WIDE_VEC value, int count) {
    memcpy(target, &value, sizeof(float) * (size_t)count);
}

/* tanh(u) as a rational function, odd degree 13 over even degree 6 (the coefficients of
 * Eigen's float tanh), for |u| < 7.9053 and exactly +-1 beyond: no libm call, no branch.
 * Largest absolute error against tanh in double over a dense grid of [-20, 20]: 3.3e-7
 * (tests/check_layers.c gelu_accuracy holds GELU and its derivative to stated bounds). */
CM_VEC_INLINE WIDE_VEC WIDE_NAME(tanh_rational)(WIDE_VEC u) {
    const float clamp = 7.90531110763549805f;
    WIDE_MASK above = u >= clamp, below = u <= -clamp;
    WIDE_VEC x = WIDE_NAME(select)(above, WIDE_NAME(splat)(clamp),
                                   WIDE_NAME(select)(below, WIDE_NAME(splat)(-clamp), u));
    WIDE_VEC x2 = x * x;
    WIDE_VEC p = WIDE_NAME(splat)(-2.76076847742355e-16f);
    p = p * x2 + 2.00018790482477e-13f;
    p = p * x2 + -8.60467152213735e-11f;
    p = p * x2 + 5.12229709037114e-08f;
    p = p * x2 + 1.48572235717979e-05f;
    p = p * x2 + 6.37261928875436e-04f;
    p = p * x2 + 4.89352455891786e-03f;
    WIDE_VEC q = WIDE_NAME(splat)(1.19825839466702e-06f);
    q = q * x2 + 1.18534705686654e-04f;
    q = q * x2 + 2.26843463243900e-03f;
    q = q * x2 + 4.89352518554385e-03f;
    WIDE_VEC t = p * x / q;
    return WIDE_NAME(select)(above, WIDE_NAME(splat)(1.0f),
                             WIDE_NAME(select)(below, WIDE_NAME(splat)(-1.0f), t));
}

/* GELU, the tanh form: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). */
CM_VEC_INLINE WIDE_VEC WIDE_NAME(gelu_value)(WIDE_VEC x) {
    return 0.5f * x * (1.0f + WIDE_NAME(tanh_rational)(gelu_scale * (x + gelu_cubic * x * x * x)));
}

CM_VEC_INLINE WIDE_VEC WIDE_NAME(gelu_derivative)(WIDE_VEC x) {
    WIDE_VEC tanh_value = WIDE_NAME(tanh_rational)(gelu_scale * (x + gelu_cubic * x * x * x));
    WIDE_VEC inner_derivative = gelu_scale * (1.0f + 3.0f * gelu_cubic * x * x);
    return 0.5f * (1.0f + tanh_value) +
           0.5f * x * (1.0f - tanh_value * tanh_value) * inner_derivative;
}

CM_VEC_INLINE void WIDE_NAME(gelu_forward)(float *out, const float *in, int count) {
    int index = 0;
    for (; index + WIDE_LANES <= count; index += WIDE_LANES)
        WIDE_NAME(store)(out + index, WIDE_NAME(gelu_value)(WIDE_NAME(load)(in + index)));
    int tail = count - index;
    if (tail > 0) WIDE_NAME(store_tail)
    (out + index, WIDE_NAME(gelu_value)(WIDE_NAME(load_tail)(in + index, tail)), tail);
}

/* d_in += d_out * GELU'(in) */
CM_VEC_INLINE void WIDE_NAME(gelu_backward)(float *d_in, const float *d_out, const float *in,
                                            int count) {
    int index = 0;
    for (; index + WIDE_LANES <= count; index += WIDE_LANES) WIDE_NAME(store)
    (d_in + index,
     WIDE_NAME(load)(d_in + index) +
         WIDE_NAME(load)(d_out + index) * WIDE_NAME(gelu_derivative)(WIDE_NAME(load)(in + index)));
    int tail = count - index;
    if (tail > 0) WIDE_NAME(store_tail)
    (d_in + index,
     WIDE_NAME(load_tail)(d_in + index, tail) +
         WIDE_NAME(load_tail)(d_out + index, tail) *
             WIDE_NAME(gelu_derivative)(WIDE_NAME(load_tail)(in + index, tail)),
     tail);
}

/* exp(x) per lane, Cephes' single-precision method: x = n ln2 + r with |r| <= ln2 / 2 (ln2 in
 * two parts), exp(r) by a degree-7 polynomial, 2^n put into the exponent bits.  Within 2 ulp
 * of expf over [-87, 88] (the softmax's arguments are <= 0); below -87 it returns 0. */
CM_VEC_INLINE WIDE_VEC WIDE_NAME(exp)(WIDE_VEC x) {
    WIDE_MASK underflow = x < -87.0f;
    x = WIDE_NAME(select)(x > 88.0f, WIDE_NAME(splat)(88.0f),
                          WIDE_NAME(select)(underflow, WIDE_NAME(splat)(-87.0f), x));
    WIDE_VEC scaled = x * 1.44269504088896341f;
    WIDE_MASK n = __builtin_convertvector(
        scaled + WIDE_NAME(select)(scaled >= 0.0f, WIDE_NAME(splat)(0.5f), WIDE_NAME(splat)(-0.5f)),
        WIDE_MASK);
    WIDE_VEC whole = __builtin_convertvector(n, WIDE_VEC);
    WIDE_VEC r = x - whole * 0.693359375f - whole * -2.12194440e-4f;
    WIDE_VEC p = WIDE_NAME(splat)(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    WIDE_VEC power = (WIDE_VEC)((n + 127) << 23);
    return WIDE_NAME(select)(underflow, WIDE_NAME(splat)(0.0f), p * power);
}

/* `width` (<= lanes) floats of source, zeros after. */
CM_VEC_INLINE WIDE_VEC WIDE_NAME(load_part)(const float *source, int width) {
    return width == WIDE_LANES ? WIDE_NAME(load)(source) : WIDE_NAME(load_tail)(source, width);
}

CM_VEC_INLINE void WIDE_NAME(store_part)(float *target, WIDE_VEC value, int width) {
    if (width == WIDE_LANES)
        WIDE_NAME(store)(target, value);
    else
        WIDE_NAME(store_tail)(target, value, width);
}

/* Lanes [0, count) of a vector set. */
CM_VEC_INLINE WIDE_MASK WIDE_NAME(first_lanes)(int count) {
    WIDE_MASK index;
    memcpy(&index, cm_vec_lane_index, sizeof index);
    return index < count;
}

/* Softmax of the columns [col, col + width) of scores[rows][cols] (see softmax_columns),
 * stored in the lanes of `keep` (the others are written back as they were: the last block of
 * a row overlaps the block before it rather than run a tail). */
CM_VEC_INLINE void WIDE_NAME(softmax_block)(float *scores, const unsigned char *valid, int rows,
                                            int cols, int col, int width, WIDE_MASK keep) {
    WIDE_VEC maxima = WIDE_NAME(splat)(-INFINITY), zero = WIDE_NAME(splat)(0.0f);
    for (int row = 0; row < rows; row++) {
        if (valid && !valid[row]) continue;
        WIDE_VEC x = WIDE_NAME(load_part)(scores + (size_t)row * cols + col, width);
        maxima = WIDE_NAME(select)(x > maxima, x, maxima);
    }
    WIDE_VEC sums = zero;
    for (int row = 0; row < rows; row++) {
        float *at = scores + (size_t)row * cols + col;
        WIDE_VEC x = WIDE_NAME(load_part)(at, width), e = zero;
        if (!valid || valid[row]) {
            e = WIDE_NAME(exp)(x - maxima);
            sums += e;
        }
        WIDE_NAME(store_part)(at, WIDE_NAME(select)(keep, e, x), width);
    }
    WIDE_VEC inverse = 1.0f / sums;
    for (int row = 0; row < rows; row++) {
        if (valid && !valid[row]) continue;
        float *at = scores + (size_t)row * cols + col;
        WIDE_VEC x = WIDE_NAME(load_part)(at, width);
        WIDE_NAME(store_part)(at, WIDE_NAME(select)(keep, x * inverse, x), width);
    }
}

/* Stable in-place softmax down each column of scores[rows][cols]: column c becomes the softmax
 * of its entries over the rows whose valid byte is nonzero (valid NULL: all); the other rows
 * become exactly 0; with no valid row at all, every entry becomes 0 (not 0/0).  The columns
 * are the lanes and the rows go by in order, so the maximum, the exponentials and the sum of
 * a column are those of the plain loop over its rows, whichever block and width it falls in. */
CM_VEC_INLINE void WIDE_NAME(softmax_columns)(float *scores, const unsigned char *valid, int rows,
                                              int cols) {
    int valid_rows = 0;
    for (int row = 0; row < rows; row++) valid_rows += !valid || valid[row];
    if (valid_rows == 0) {
        memset(scores, 0, sizeof(float) * (size_t)rows * (size_t)cols);
        return;
    }
    WIDE_MASK all = WIDE_NAME(first_lanes)(WIDE_LANES);
    int col = 0;
    for (; col + WIDE_LANES <= cols; col += WIDE_LANES)
        WIDE_NAME(softmax_block)(scores, valid, rows, cols, col, WIDE_LANES, all);
    if (col == cols) return;
    if (cols >= WIDE_LANES) /* the last lanes' worth, its first lanes done already */
        WIDE_NAME(softmax_block)
    (scores, valid, rows, cols, cols - WIDE_LANES, WIDE_LANES,
     ~WIDE_NAME(first_lanes)(WIDE_LANES - (cols - col)));
    else /* a row shorter than a vector: zero-padded loads */
        WIDE_NAME(softmax_block)(scores, valid, rows, cols, 0, cols, all);
}

/* Softmax backward of the columns [col, col + width), stored in the lanes of keep. */
CM_VEC_INLINE void WIDE_NAME(softmax_backward_block)(float *d, const float *probs, int rows,
                                                     int cols, int col, int width, WIDE_MASK keep) {
    WIDE_VEC dots = WIDE_NAME(splat)(0.0f);
    for (int row = 0; row < rows; row++) {
        size_t at = (size_t)row * cols + col;
        dots += WIDE_NAME(load_part)(d + at, width) * WIDE_NAME(load_part)(probs + at, width);
    }
    for (int row = 0; row < rows; row++) {
        size_t at = (size_t)row * cols + col;
        WIDE_VEC p = WIDE_NAME(load_part)(probs + at, width),
                 g = WIDE_NAME(load_part)(d + at, width);
        WIDE_NAME(store_part)(d + at, WIDE_NAME(select)(keep, p * (g - dots), g), width);
    }
}

/* Softmax backward down the columns, in place: d[rows][cols] (the gradient of the
 * probabilities probs[rows][cols], each column a softmax) becomes the gradient of the scores,
 * probs * (d - <d, probs>_column).  Lane by lane, the rows in order, as softmax_columns. */
CM_VEC_INLINE void WIDE_NAME(softmax_columns_backward)(float *d, const float *probs, int rows,
                                                       int cols) {
    WIDE_MASK all = WIDE_NAME(first_lanes)(WIDE_LANES);
    int col = 0;
    for (; col + WIDE_LANES <= cols; col += WIDE_LANES)
        WIDE_NAME(softmax_backward_block)(d, probs, rows, cols, col, WIDE_LANES, all);
    if (col == cols) return;
    if (cols >= WIDE_LANES) WIDE_NAME(softmax_backward_block)
    (d, probs, rows, cols, cols - WIDE_LANES, WIDE_LANES,
     ~WIDE_NAME(first_lanes)(WIDE_LANES - (cols - col)));
    else WIDE_NAME(softmax_backward_block)(d, probs, rows, cols, 0, cols, all);
}

/* Layer norm sums a row in sixteen partial sums whatever the width (element i into partial
 * i % 16, in row order; 16 / lanes vectors of partials), added pairwise in a fixed order at the
 * end, so its sums, and so its outputs, have the same bits at every width.  A row's last group
 * of sixteen runs zero-padded. */
#define WIDE_GROUPS (16 / WIDE_LANES)

CM_VEC_INLINE float WIDE_NAME(partials_total)(const WIDE_VEC *partials) {
    float l[16];
    memcpy(l, partials, sizeof l);
    float a0 = l[0] + l[8], a1 = l[1] + l[9], a2 = l[2] + l[10], a3 = l[3] + l[11];
    float a4 = l[4] + l[12], a5 = l[5] + l[13], a6 = l[6] + l[14], a7 = l[7] + l[15];
    float b0 = a0 + a4, b1 = a1 + a5, b2 = a2 + a6, b3 = a3 + a7;
    return (b0 + b2) + (b1 + b3);
}

/* out = (in - mean) * rstd * gamma + beta per row of in[rows][dim]; saves each row's mean and
 * rstd = 1 / sqrt(variance + epsilon).  Two passes over the row (in cache): the variance of
 * centred values loses nothing to cancellation, which a one-pass sum of squares would for rows
 * far from zero mean. */
CM_VEC_INLINE void WIDE_NAME(layernorm_forward)(float *out, float *mean, float *rstd,
                                                const float *in, const float *gamma,
                                                const float *beta, int rows, int dim) {
    for (int row = 0; row < rows; row++) {
        const float *in_row = in + (size_t)row * dim;
        float *out_row = out + (size_t)row * dim;
        WIDE_VEC sums[WIDE_GROUPS], squares[WIDE_GROUPS];
        for (int group = 0; group < WIDE_GROUPS; group++)
            sums[group] = squares[group] = WIDE_NAME(splat)(0.0f);
        for (int first = 0; first < dim; first += 16)
            for (int group = 0; group < WIDE_GROUPS; group++) {
                int at = first + group * WIDE_LANES, width = dim - at;
                if (width <= 0) break;
                width = width < WIDE_LANES ? width : WIDE_LANES;
                sums[group] += WIDE_NAME(load_part)(in_row + at, width);
            }
        float row_mean = WIDE_NAME(partials_total)(sums) / (float)dim;
        for (int first = 0; first < dim; first += 16)
            for (int group = 0; group < WIDE_GROUPS; group++) {
                int at = first + group * WIDE_LANES, width = dim - at;
                if (width <= 0) break;
                width = width < WIDE_LANES ? width : WIDE_LANES;
                WIDE_VEC centred = WIDE_NAME(load_part)(in_row + at, width) - row_mean;
                if (width < WIDE_LANES) /* the padding: no square */
                    centred = WIDE_NAME(select)(WIDE_NAME(first_lanes)(width), centred,
                                                WIDE_NAME(splat)(0.0f));
                squares[group] += centred * centred;
            }
        float row_rstd =
            1.0f / sqrtf(WIDE_NAME(partials_total)(squares) / (float)dim + layernorm_epsilon);
        for (int at = 0; at < dim; at += WIDE_LANES) {
            int width = dim - at < WIDE_LANES ? dim - at : WIDE_LANES;
            WIDE_VEC x = WIDE_NAME(load_part)(in_row + at, width);
            WIDE_NAME(store_part)
            (out_row + at,
             (x - row_mean) * row_rstd * WIDE_NAME(load_part)(gamma + at, width) +
                 WIDE_NAME(load_part)(beta + at, width),
             width);
        }
        mean[row] = row_mean;
        rstd[row] = row_rstd;
    }
}

/* Layer norm backward: d_gamma += n * d_out, d_beta += d_out (each if not NULL) and, with
 * n = the normalised input and g = gamma * d_out, d_in += rstd * (g - mean(g) - n * mean(g * n))
 * (if d_in is not NULL). */
CM_VEC_INLINE void WIDE_NAME(layernorm_backward)(float *d_in, float *d_gamma, float *d_beta,
                                                 const float *d_out, const float *in,
                                                 const float *gamma, const float *mean,
                                                 const float *rstd, int rows, int dim) {
    for (int row = 0; row < rows; row++) {
        const float *in_row = in + (size_t)row * dim;
        const float *d_out_row = d_out + (size_t)row * dim;
        float row_mean = mean[row], row_rstd = rstd[row];
        WIDE_VEC sums[WIDE_GROUPS], dots[WIDE_GROUPS];
        for (int group = 0; group < WIDE_GROUPS; group++)
            sums[group] = dots[group] = WIDE_NAME(splat)(0.0f);
        for (int first = 0; first < dim; first += 16)
            for (int group = 0; group < WIDE_GROUPS; group++) {
                int at = first + group * WIDE_LANES, width = dim - at;
                if (width <= 0) break;
                width = width < WIDE_LANES ? width : WIDE_LANES;
                /* the padding: a zero gradient, so d_norm is 0 there */
                WIDE_VEC gradient = WIDE_NAME(load_part)(d_out_row + at, width);
                WIDE_VEC norm = (WIDE_NAME(load_part)(in_row + at, width) - row_mean) * row_rstd;
                WIDE_VEC d_norm = WIDE_NAME(load_part)(gamma + at, width) * gradient;
                sums[group] += d_norm;
                dots[group] += d_norm * norm;
                if (d_gamma) WIDE_NAME(store_part)
                (d_gamma + at, WIDE_NAME(load_part)(d_gamma + at, width) + norm * gradient, width);
                if (d_beta) WIDE_NAME(store_part)
                (d_beta + at, WIDE_NAME(load_part)(d_beta + at, width) + gradient, width);
            }
        if (!d_in) continue;
        float d_norm_mean = WIDE_NAME(partials_total)(sums) / (float)dim;
        float d_norm_dot_norm_mean = WIDE_NAME(partials_total)(dots) / (float)dim;
        float *d_in_row = d_in + (size_t)row * dim;
        for (int at = 0; at < dim; at += WIDE_LANES) {
            int width = dim - at < WIDE_LANES ? dim - at : WIDE_LANES;
            WIDE_VEC norm = (WIDE_NAME(load_part)(in_row + at, width) - row_mean) * row_rstd;
            WIDE_VEC d_norm = WIDE_NAME(load_part)(gamma + at, width) *
                              WIDE_NAME(load_part)(d_out_row + at, width);
            WIDE_NAME(store_part)
            (d_in_row + at,
             WIDE_NAME(load_part)(d_in_row + at, width) +
                 (d_norm - d_norm_mean - norm * d_norm_dot_norm_mean) * row_rstd,
             width);
        }
    }
}

/* out[rows][cols] = residual[rows][cols] (NULL: none) + bias[cols] per row.  A row longer than
 * a vector ends in a full vector that overlaps the one before (both write the same values). */
CM_VEC_INLINE void WIDE_NAME(bias_rows)(float *out, const float *residual, const float *bias,
                                        int rows, int cols) {
    for (int row = 0; row < rows; row++) {
        float *out_row = out + (size_t)row * cols;
        const float *residual_row = residual ? residual + (size_t)row * cols : NULL;
        for (int col = 0; col < cols; col += WIDE_LANES) {
            int at = col, width = WIDE_LANES;
            if (cols - col < WIDE_LANES) {
                if (cols >= WIDE_LANES)
                    at = cols - WIDE_LANES;
                else
                    width = cols;
            }
            WIDE_VEC value = WIDE_NAME(load_part)(bias + at, width);
            if (residual_row) value = WIDE_NAME(load_part)(residual_row + at, width) + value;
            WIDE_NAME(store_part)(out_row + at, value, width);
        }
    }
}

/* Batch norm forward, the sum over one channel's rows (one map of `spatial` values per example,
 * at a stride of channels * spatial) of x, or with squares of (x - centre)^2: each row in
 * sixteen partial sums whatever the width, added into *total in lane order. */
CM_VEC_INLINE void WIDE_NAME(batchnorm_channel_moment)(const float *in, int batch, size_t stride,
                                                       int spatial, float centre, int squares,
                                                       double *total) {
    for (int example = 0; example < batch; example++) {
        const float *row = in + (size_t)example * stride;
        WIDE_VEC sums[WIDE_GROUPS];
        for (int group = 0; group < WIDE_GROUPS; group++) sums[group] = WIDE_NAME(splat)(0.0f);
        for (int first = 0; first < spatial; first += 16)
            for (int group = 0; group < WIDE_GROUPS; group++) {
                int at = first + group * WIDE_LANES, width = spatial - at;
                if (width <= 0) break;
                width = width < WIDE_LANES ? width : WIDE_LANES;
                WIDE_VEC x = WIDE_NAME(load_part)(row + at, width);
                if (squares) {
                    x = x - centre;
                    if (width < WIDE_LANES) /* the padding: no square */
                        x = WIDE_NAME(select)(WIDE_NAME(first_lanes)(width), x,
                                              WIDE_NAME(splat)(0.0f));
                    x = x * x;
                }
                sums[group] += x;
            }
        float lanes[16];
        memcpy(lanes, sums, sizeof lanes);
        for (int lane = 0; lane < 16; lane++) *total += lanes[lane];
    }
}

/* Batch norm forward, out = in * scale + shift over one channel's rows, then max(., 0) when
 * relu (a select, not a branch: signs are random). */
CM_VEC_INLINE void WIDE_NAME(batchnorm_channel_affine)(float *out, const float *in, int batch,
                                                       size_t stride, int spatial, float scale,
                                                       float shift, int relu) {
    WIDE_VEC floor = WIDE_NAME(splat)(relu ? 0.0f : -INFINITY);
    for (int example = 0; example < batch; example++) {
        size_t offset = (size_t)example * stride;
        for (int at = 0; at < spatial; at += WIDE_LANES) {
            int width = spatial - at < WIDE_LANES ? spatial - at : WIDE_LANES;
            WIDE_VEC value = WIDE_NAME(load_part)(in + offset + at, width) * scale + shift;
            WIDE_NAME(store_part)
            (out + offset + at, WIDE_NAME(select)(value > floor, value, floor), width);
        }
    }
}

/* Batch norm backward, the sums of one channel over its rows (one map of `spatial` values per
 * example, the channel's rows at a stride of channels * spatial): d_sum += sum(g), d_dot +=
 * sum(g * (x - mean) * rstd), where g = d_out gated by relu_out > 0 when relu_out is not NULL
 * (the fused ReLU's backward).  Each row in sixteen partial sums whatever the width, added into
 * the doubles in lane order. */
CM_VEC_INLINE void WIDE_NAME(batchnorm_channel_sums)(const float *d_out, const float *relu_out,
                                                     const float *in, int batch, size_t stride,
                                                     int spatial, float mean, float rstd,
                                                     double *d_sum, double *d_dot) {
    WIDE_VEC zero = WIDE_NAME(splat)(0.0f);
    for (int example = 0; example < batch; example++) {
        size_t offset = (size_t)example * stride;
        const float *d_row = d_out + offset, *in_row = in + offset;
        const float *relu_row = relu_out ? relu_out + offset : NULL;
        WIDE_VEC sums[WIDE_GROUPS], dots[WIDE_GROUPS];
        for (int group = 0; group < WIDE_GROUPS; group++) sums[group] = dots[group] = zero;
        for (int first = 0; first < spatial; first += 16)
            for (int group = 0; group < WIDE_GROUPS; group++) {
                int at = first + group * WIDE_LANES, width = spatial - at;
                if (width <= 0) break;
                width = width < WIDE_LANES ? width : WIDE_LANES;
                /* the padding: a zero gradient */
                WIDE_VEC gradient = WIDE_NAME(load_part)(d_row + at, width);
                if (relu_row)
                    gradient = WIDE_NAME(select)(WIDE_NAME(load_part)(relu_row + at, width) > 0.0f,
                                                 gradient, zero);
                sums[group] += gradient;
                dots[group] += gradient * (WIDE_NAME(load_part)(in_row + at, width) - mean) * rstd;
            }
        float sum_lanes[16], dot_lanes[16];
        memcpy(sum_lanes, sums, sizeof sum_lanes);
        memcpy(dot_lanes, dots, sizeof dot_lanes);
        for (int lane = 0; lane < 16; lane++) {
            *d_sum += sum_lanes[lane];
            *d_dot += dot_lanes[lane];
        }
    }
}

/* Batch norm backward, d_in of one channel: d_in += g * scale + (in * slope + intercept) over
 * its rows, g gated by relu_out > 0 when relu_out is not NULL. */
CM_VEC_INLINE void WIDE_NAME(batchnorm_channel_d_in)(float *d_in, const float *d_out,
                                                     const float *relu_out, const float *in,
                                                     int batch, size_t stride, int spatial,
                                                     float scale, float slope, float intercept) {
    WIDE_VEC zero = WIDE_NAME(splat)(0.0f);
    for (int example = 0; example < batch; example++) {
        size_t offset = (size_t)example * stride;
        const float *d_row = d_out + offset, *in_row = in + offset;
        const float *relu_row = relu_out ? relu_out + offset : NULL;
        float *d_in_row = d_in + offset;
        for (int at = 0; at < spatial; at += WIDE_LANES) {
            int width = spatial - at < WIDE_LANES ? spatial - at : WIDE_LANES;
            WIDE_VEC gradient = WIDE_NAME(load_part)(d_row + at, width);
            if (relu_row)
                gradient = WIDE_NAME(select)(WIDE_NAME(load_part)(relu_row + at, width) > 0.0f,
                                             gradient, zero);
            WIDE_VEC x = WIDE_NAME(load_part)(in_row + at, width);
            WIDE_NAME(store_part)
            (d_in_row + at,
             WIDE_NAME(load_part)(d_in_row + at, width) +
                 (gradient * scale + (x * slope + intercept)),
             width);
        }
    }
}

#undef WIDE_GROUPS
#undef WIDE_LANES
#undef WIDE_VEC
#undef WIDE_MASK
#undef WIDE_NAME
