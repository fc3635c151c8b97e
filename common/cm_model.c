/*
 * cm_model: MLP, small ViT, embedding and token models on top of cm_layers.  See cm_model.h.
 *
 * Building a model is two-phase: every parameter tensor is first registered
 * (name, shape, weight decay or not, and the address of the pointer that will
 * point at it), then one block is allocated for all parameters and one for
 * all gradients, and the registered pointers are filled in.  Activations are
 * allocated per buffer for max_batch examples and owned by the model.
 *
 * The families share their parts rather than copy them: the emb model is an
 * embedding front end feeding the MLP's dense stack (same forward, same
 * backward, which then also yields the gradient of its input), and the ViT
 * and tok models are two front ends (patch embedding; token embedding plus
 * positions) feeding one transformer trunk (blocks, final LN, optionally
 * masked mean pooling, head) whose backward leaves the gradient of the trunk's
 * input in d_res for the front end.
 */
#include "cm_model.h"

#include "cm_alloc.h"
#include "cm_layers.h"
#include "cm_loss.h"
#include "cm_rng.h"
#include "cm_safetensors.h"

#include <assert.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { MAX_TENSORS = 256, MAX_BUFFERS = 512, MAX_VIT_DEPTH = 24 };

typedef struct {
    char name[CM_TENSOR_MAX_NAME];
    int ndim;
    int64_t shape[4];
    size_t offset;  /* in floats, into params and grads */
    size_t count;   /* floats */
    int decay;      /* 1: AdamW weight decay applies */
    float init_std; /* N(0, init_std); 0 with init_one: filled with 1 */
    int init_one;
    int buffer;   /* 1: a batch-norm running statistic: no gradient, no AdamW update */
    float **slot; /* where the parameter pointer goes once allocated */
} param_entry_t;

typedef struct {
    /* parameters */
    float *ln1_gamma, *ln1_beta, *qkv_weight, *qkv_bias, *proj_weight, *proj_bias;
    float *ln2_gamma, *ln2_beta, *fc1_weight, *fc1_bias, *fc2_weight, *fc2_bias;
    /* activations, [batch*tokens][...] */
    float *ln1_out, *ln1_mean, *ln1_rstd, *qkv, *att, *attn_out, *x_mid;
    float *ln2_out, *ln2_mean, *ln2_rstd, *fc1_pre, *fc1_act, *x_out;
} vit_block_t;

/* One conv-bn-relu(-pool) stage of the CNN; maps are NCHW for the stage's batch. */
typedef struct {
    int in_channels, height, width; /* the stage's input map */
    int out_channels;          /* the conv, bn and relu maps are out_channels x height x width */
    int out_height, out_width; /* after the optional pool */
    /* parameters and buffers */
    float *conv_weight, *bn_gamma, *bn_beta, *running_mean, *running_var;
    /* activations */
    float *conv_out, *relu_out,
        *pooled;        /* relu_out = relu(bn(conv_out)); pooled: NULL without a pool */
    int32_t *argmax;    /* [batch][out_channels][out_h][out_w] */
    float *mean, *rstd; /* [out_channels], training mode */
} cnn_stage_t;

struct cm_model {
    cm_model_spec_t spec;
    int max_batch;
    int training; /* 1: training mode (batch norm uses and updates batch statistics) */
    int tensor_count;
    param_entry_t tensors[MAX_TENSORS];
    size_t param_count;
    float *params, *grads;
    int buffer_count;
    float *buffers[MAX_BUFFERS]; /* every activation/scratch allocation, for freeing */
    const float *last_input;     /* borrowed from the last forward */
    int last_batch;

    /* MLP and emb: the dense stack */
    float *dense_weight[CM_MODEL_MAX_LAYERS], *dense_bias[CM_MODEL_MAX_LAYERS];
    float *pre[CM_MODEL_MAX_LAYERS], *act[CM_MODEL_MAX_LAYERS];
    float *scratch_a, *scratch_b;

    /* emb and tok: the ids of the last forward, [max_batch][inputs] */
    int32_t *ids;
    /* emb */
    float *embedding_table[CM_MODEL_MAX_COLUMNS]; /* [cardinality][dim] per column */
    float *concat, *d_concat;                     /* [batch][columns*dim] */

    /* ViT and tok: the transformer trunk (tokens rows per example) */
    int tokens, num_patches;
    float *patch_weight, *patch_bias, *cls, *pos, *lnf_gamma, *lnf_beta, *head_weight, *head_bias;
    vit_block_t blocks[MAX_VIT_DEPTH];
    float *patches, *x0, *lnf_out, *lnf_mean, *lnf_rstd, *pooled, *logits;
    float *d_pooled, *d_ln, *d_res, *d_attn, *d_qkv, *d_fc_act, *d_fc_pre, *att_scratch;
    /* tok */
    float *token_table;   /* [vocab][dim] */
    unsigned char *valid; /* [batch][len]: 1 for a real token, 0 for pad */

    /* cnn: the stages, then global average pooling into the dense stack */
    cnn_stage_t stages[CM_MODEL_MAX_STAGES];
    float *gap, *d_gap;       /* [batch][last channels] */
    const float *head_input;  /* the dense stack's input: gap, or the last map (flatten) */
    float *cnn_tokens;        /* [batch][positions][last channels], the "tokens" feature */
    float *cols;              /* im2col scratch of the largest stage, one example */
    float *d_map_a, *d_map_b; /* gradient ping-pong buffers, the largest map */
};

/* ---------------------------------------------------------------- spec */

/*
 * The parser walks (pointer, length) slices of the spec text, so nothing is skipped silently
 * (strtok would merge "784--10" into "784-10") and nothing is left over (strtol would read
 * "1O" as 1).  `whole` is the complete spec text, quoted in every error sentence.
 */
typedef struct {
    const char *text;
    size_t length;
} slice_t;

static cm_status_t parse_number(const char *whole, const char *what, slice_t field, int min,
                                int max, int *out) {
    if (field.length == 0)
        return cm_fail(CM_ERR_INVALID_ARG, "model spec '%s' has an empty %s", whole, what);
    long value = 0;
    int digits_only = 1;
    for (size_t index = 0; index < field.length; index++) {
        char digit = field.text[index];
        if (digit < '0' || digit > '9') {
            digits_only = 0;
            break;
        }
        if (value <= max) value = value * 10 + (digit - '0'); /* stops growing past max */
    }
    if (!digits_only || value < min || value > max)
        return cm_fail(CM_ERR_INVALID_ARG,
                       "model spec '%s': %s must be a whole number from %d to %d, not '%.*s'",
                       whole, what, min, max, (int)field.length, field.text);
    *out = (int)value;
    return CM_OK;
}

/* Parses a `separator`-separated list of 1..max_count numbers into values, *count. */
static cm_status_t parse_list(const char *whole, const char *what, slice_t field, char separator,
                              int min, int max, int max_count, int *values, int *count) {
    *count = 0;
    const char *end = field.text + field.length;
    for (const char *start = field.text;; start++) {
        const char *stop = memchr(start, separator, (size_t)(end - start));
        if (!stop) stop = end;
        if (*count == max_count)
            return cm_fail(CM_ERR_INVALID_ARG, "model spec '%s' lists more than %d %ss", whole,
                           max_count, what);
        slice_t piece = {start, (size_t)(stop - start)};
        cm_status_t status = parse_number(whole, what, piece, min, max, &values[*count]);
        if (status != CM_OK) return status;
        (*count)++;
        if (stop == end) return CM_OK;
        start = stop;
    }
}

/* One key of a "key=value,..." family: its name and, once seen, its value. */
typedef struct {
    const char *name;
    int seen;
    slice_t value;
} spec_key_t;

/* Splits body into key=value fields over keys[count]; `known` lists them for the sentence. */
static cm_status_t split_keys(const char *whole, slice_t body, spec_key_t *keys, int count,
                              const char *known) {
    const char *end = body.text + body.length;
    for (const char *start = body.text;; start++) {
        const char *stop = memchr(start, ',', (size_t)(end - start));
        if (!stop) stop = end;
        size_t length = (size_t)(stop - start);
        if (length == 0)
            return cm_fail(CM_ERR_INVALID_ARG,
                           "model spec '%s' has an empty field (a ',' too many or a ':' with "
                           "nothing after it)",
                           whole);
        const char *equals = memchr(start, '=', length);
        if (!equals)
            return cm_fail(CM_ERR_INVALID_ARG, "model spec '%s': '%.*s' is not key=value", whole,
                           (int)length, start);
        size_t key_length = (size_t)(equals - start);
        spec_key_t *key = NULL;
        for (int index = 0; index < count; index++)
            if (strlen(keys[index].name) == key_length &&
                memcmp(keys[index].name, start, key_length) == 0)
                key = &keys[index];
        if (!key)
            return cm_fail(CM_ERR_INVALID_ARG,
                           "model spec '%s' has the unknown key '%.*s' (known: %s)", whole,
                           (int)key_length, start, known);
        if (key->seen)
            return cm_fail(CM_ERR_INVALID_ARG, "model spec '%s' gives '%s' twice", whole,
                           key->name);
        key->seen = 1;
        key->value = (slice_t){equals + 1, (size_t)(stop - equals - 1)};
        if (stop == end) return CM_OK;
        start = stop;
    }
}

/* Parses a key's value as a number into *out when it was given (else *out keeps its default). */
static cm_status_t key_number(const char *whole, const spec_key_t *key, int min, int max,
                              int *out) {
    return key->seen ? parse_number(whole, key->name, key->value, min, max, out) : CM_OK;
}

static cm_status_t require_key(const char *whole, const spec_key_t *key, const char *meaning) {
    if (key->seen) return CM_OK;
    return cm_fail(CM_ERR_INVALID_ARG, "model spec '%s' needs %s=... (%s)", whole, key->name,
                   meaning);
}

enum { MAX_WIDTH = 1 << 16, MAX_DIM = 1 << 14, MAX_IMAGE_SIDE = 4096, MAX_SEQUENCE = 4096 };

static cm_status_t parse_mlp(const char *whole, slice_t body, cm_model_spec_t *spec) {
    int count = 0;
    cm_status_t status = parse_list(whole, "MLP width", body, '-', 1, MAX_WIDTH,
                                    CM_MODEL_MAX_LAYERS + 1, spec->widths, &count);
    if (status != CM_OK) return status;
    if (count < 3)
        return cm_fail(CM_ERR_INVALID_ARG,
                       "model spec '%s' needs the inputs, at least one hidden width and the "
                       "outputs, e.g. mlp:784-256-10",
                       whole);
    spec->kind = CM_MODEL_MLP;
    spec->layers = count - 1;
    spec->classes = spec->widths[count - 1];
    return CM_OK;
}

/* The transformer keys shared by vit and tok: dim, depth, heads, mlp (keys[0..3]). */
static cm_status_t parse_transformer_keys(const char *whole, const spec_key_t *keys,
                                          cm_model_spec_t *spec) {
    cm_status_t status = key_number(whole, &keys[0], 1, MAX_DIM, &spec->dim);
    if (status == CM_OK) status = key_number(whole, &keys[1], 1, MAX_VIT_DEPTH, &spec->depth);
    if (status == CM_OK) status = key_number(whole, &keys[2], 1, 256, &spec->heads);
    if (status == CM_OK) status = key_number(whole, &keys[3], 1, MAX_WIDTH, &spec->mlp_dim);
    if (status != CM_OK) return status;
    if (!keys[3].seen) spec->mlp_dim = 2 * spec->dim;
    if (spec->dim % spec->heads)
        return cm_fail(CM_ERR_INVALID_ARG, "model spec '%s': heads %d does not divide dim %d",
                       whole, spec->heads, spec->dim);
    return CM_OK;
}

/* An image=HxW value into the spec's sides. */
static cm_status_t parse_image(const char *whole, const spec_key_t *key, cm_model_spec_t *spec) {
    if (!key->seen) return CM_OK;
    int sides[2] = {0, 0}, count = 0;
    cm_status_t status =
        parse_list(whole, "image side", key->value, 'x', 1, MAX_IMAGE_SIDE, 2, sides, &count);
    if (status == CM_OK && count != 2)
        status = cm_fail(CM_ERR_INVALID_ARG, "model spec '%s': image must be HxW, not '%.*s'",
                         whole, (int)key->value.length, key->value.text);
    spec->image_height = sides[0];
    spec->image_width = sides[1];
    return status;
}

static cm_status_t parse_vit(const char *whole, slice_t body, cm_model_spec_t *spec) {
    spec->kind = CM_MODEL_VIT;
    spec->image_height = spec->image_width = 28;
    spec->patch = 7;
    spec->dim = 64;
    spec->depth = 2;
    spec->heads = 4;
    spec->classes = 10;
    spec_key_t keys[] = {{.name = "dim"},   {.name = "depth"}, {.name = "heads"},  {.name = "mlp"},
                         {.name = "image"}, {.name = "patch"}, {.name = "classes"}};
    cm_status_t status = CM_OK;
    if (body.text)
        status = split_keys(whole, body, keys, 7, "image, patch, dim, depth, heads, mlp, classes");
    if (status == CM_OK) status = parse_transformer_keys(whole, keys, spec);
    if (status == CM_OK) status = parse_image(whole, &keys[4], spec);
    if (status == CM_OK) status = key_number(whole, &keys[5], 1, MAX_IMAGE_SIDE, &spec->patch);
    if (status == CM_OK) status = key_number(whole, &keys[6], 1, MAX_WIDTH, &spec->classes);
    if (status != CM_OK) return status;
    if (spec->image_height % spec->patch || spec->image_width % spec->patch)
        return cm_fail(CM_ERR_INVALID_ARG,
                       "model spec '%s': patch %d does not divide the %dx%d image", whole,
                       spec->patch, spec->image_height, spec->image_width);
    return CM_OK;
}

static cm_status_t parse_emb(const char *whole, slice_t body, cm_model_spec_t *spec) {
    spec->kind = CM_MODEL_EMB;
    spec->dim = 32;
    spec_key_t keys[] = {{.name = "cards"}, {.name = "dim"}, {.name = "mlp"}, {.name = "out"}};
    cm_status_t status = split_keys(whole, body, keys, 4, "cards, dim, mlp, out");
    if (status == CM_OK)
        status = require_key(whole, &keys[0], "each column's cardinality, e.g. cards=671x9066");
    if (status == CM_OK)
        status = require_key(whole, &keys[3], "the output width: classes or regression targets");
    if (status == CM_OK)
        status = parse_list(whole, "cardinality", keys[0].value, 'x', 1, CM_MODEL_MAX_ID,
                            CM_MODEL_MAX_COLUMNS, spec->cardinality, &spec->columns);
    if (status == CM_OK) status = key_number(whole, &keys[1], 1, MAX_DIM, &spec->dim);
    int hidden = 1;
    spec->widths[1] = 128;
    if (status == CM_OK && keys[2].seen)
        status = parse_list(whole, "MLP width", keys[2].value, '-', 1, MAX_WIDTH,
                            CM_MODEL_MAX_LAYERS - 1, spec->widths + 1, &hidden);
    if (status == CM_OK) status = key_number(whole, &keys[3], 1, MAX_WIDTH, &spec->classes);
    if (status != CM_OK) return status;
    spec->widths[0] = spec->columns * spec->dim;
    spec->widths[hidden + 1] = spec->classes;
    spec->layers = hidden + 1;
    return CM_OK;
}

static cm_status_t parse_tok(const char *whole, slice_t body, cm_model_spec_t *spec) {
    spec->kind = CM_MODEL_TOK;
    spec->dim = 64;
    spec->depth = 2;
    spec->heads = 4;
    spec_key_t keys[] = {{.name = "dim"}, {.name = "depth"}, {.name = "heads"}, {.name = "mlp"},
                         {.name = "len"}, {.name = "vocab"}, {.name = "pad"},   {.name = "out"}};
    cm_status_t status =
        split_keys(whole, body, keys, 8, "len, vocab, dim, depth, heads, mlp, pad, out");
    if (status == CM_OK) status = require_key(whole, &keys[4], "tokens per example");
    if (status == CM_OK) status = require_key(whole, &keys[5], "the number of token ids");
    if (status == CM_OK)
        status = require_key(whole, &keys[7], "the output width: classes or regression targets");
    if (status == CM_OK) status = parse_transformer_keys(whole, keys, spec);
    if (status == CM_OK)
        status = key_number(whole, &keys[4], 1, MAX_SEQUENCE, &spec->sequence_length);
    if (status == CM_OK) status = key_number(whole, &keys[5], 1, CM_MODEL_MAX_ID, &spec->vocab);
    if (status == CM_OK) status = key_number(whole, &keys[6], 0, CM_MODEL_MAX_ID - 1, &spec->pad);
    if (status == CM_OK) status = key_number(whole, &keys[7], 1, MAX_WIDTH, &spec->classes);
    if (status != CM_OK) return status;
    if (spec->pad >= spec->vocab)
        return cm_fail(CM_ERR_INVALID_ARG,
                       "model spec '%s': pad %d is not a token id below vocab %d", whole, spec->pad,
                       spec->vocab);
    return CM_OK;
}

static cm_status_t parse_cnn(const char *whole, slice_t body, cm_model_spec_t *spec) {
    spec->kind = CM_MODEL_CNN;
    spec->image_height = spec->image_width = 28;
    spec->channels = 1;
    spec->stages = 3;
    spec->conv_channels[0] = 32;
    spec->conv_channels[1] = 64;
    spec->conv_channels[2] = 128;
    spec->kernel = 3;
    spec->classes = 10;
    int hidden[CM_MODEL_MAX_LAYERS] = {256}, hidden_count = 1;
    spec_key_t keys[] = {{.name = "image"},   {.name = "channels"}, {.name = "conv"},
                         {.name = "kernel"},  {.name = "pool"},     {.name = "fc"},
                         {.name = "classes"}, {.name = "head"}};
    cm_status_t status = CM_OK;
    if (body.text)
        status = split_keys(whole, body, keys, 8,
                            "image, channels, conv, kernel, pool, head, fc, classes");
    if (status == CM_OK && keys[7].seen) {
        slice_t head = keys[7].value;
        if (head.length == 7 && memcmp(head.text, "flatten", 7) == 0)
            spec->flatten = 1;
        else if (!(head.length == 3 && memcmp(head.text, "gap", 3) == 0))
            status = cm_fail(CM_ERR_INVALID_ARG,
                             "model spec '%s': head must be gap (global average pooling) or "
                             "flatten, not '%.*s'",
                             whole, (int)head.length, head.text);
    }
    if (status == CM_OK) status = parse_image(whole, &keys[0], spec);
    if (status == CM_OK) status = key_number(whole, &keys[1], 1, MAX_DIM, &spec->channels);
    if (status == CM_OK && keys[2].seen)
        status = parse_list(whole, "conv width", keys[2].value, '-', 1, MAX_DIM,
                            CM_MODEL_MAX_STAGES, spec->conv_channels, &spec->stages);
    if (status == CM_OK) status = key_number(whole, &keys[3], 1, 7, &spec->kernel);
    for (int stage = 0; stage < spec->stages; stage++) spec->pool[stage] = 1;
    if (status == CM_OK && keys[4].seen) {
        int count = 0;
        status = parse_list(whole, "pool flag", keys[4].value, '-', 0, 1, CM_MODEL_MAX_STAGES,
                            spec->pool, &count);
        if (status == CM_OK && count != spec->stages)
            status = cm_fail(CM_ERR_INVALID_ARG,
                             "model spec '%s' gives %d pool flags for %d conv stages (one 0 or 1 "
                             "per stage, e.g. pool=1-1-0)",
                             whole, count, spec->stages);
    }
    if (status == CM_OK && keys[5].seen) {
        status = parse_list(whole, "fc width", keys[5].value, '-', 0, MAX_WIDTH,
                            CM_MODEL_MAX_LAYERS - 1, hidden, &hidden_count);
        if (status == CM_OK && hidden_count == 1 && hidden[0] == 0) hidden_count = 0;
        for (int index = 0; status == CM_OK && index < hidden_count; index++)
            if (hidden[index] == 0)
                status = cm_fail(CM_ERR_INVALID_ARG,
                                 "model spec '%s': an fc width is 0 (fc=0 alone means no hidden "
                                 "dense layer)",
                                 whole);
    }
    if (status == CM_OK) status = key_number(whole, &keys[6], 1, MAX_WIDTH, &spec->classes);
    if (status != CM_OK) return status;
    if (spec->kernel % 2 == 0)
        return cm_fail(CM_ERR_INVALID_ARG,
                       "model spec '%s': kernel %d must be odd (\"same\" padding of kernel/2)",
                       whole, spec->kernel);
    int height = spec->image_height, width = spec->image_width;
    for (int stage = 0; stage < spec->stages; stage++) {
        if (!spec->pool[stage]) continue;
        if (height < 2 || width < 2)
            return cm_fail(CM_ERR_INVALID_ARG,
                           "model spec '%s': stage %d pools a %dx%d map (too small to pool)", whole,
                           stage, height, width);
        height /= 2;
        width /= 2;
    }
    spec->widths[0] = spec->conv_channels[spec->stages - 1] * (spec->flatten ? height * width : 1);
    for (int index = 0; index < hidden_count; index++) spec->widths[index + 1] = hidden[index];
    spec->layers = hidden_count + 1;
    spec->widths[spec->layers] = spec->classes;
    return CM_OK;
}

cm_status_t cm_model_spec_parse(const char *text, cm_model_spec_t *spec) {
    memset(spec, 0, sizeof *spec);
    size_t length = strlen(text);
    if (length >= CM_MODEL_SPEC_MAX)
        return cm_fail(CM_ERR_INVALID_ARG, "model spec '%.40s...' is longer than %d characters",
                       text, CM_MODEL_SPEC_MAX - 1);
    const char *colon = strchr(text, ':');
    size_t family_length = colon ? (size_t)(colon - text) : length;
    slice_t body = {colon ? colon + 1 : NULL, colon ? length - family_length - 1 : 0};
    if (family_length == 3 && memcmp(text, "vit", 3) == 0) return parse_vit(text, body, spec);
    if (family_length == 3 && memcmp(text, "cnn", 3) == 0) return parse_cnn(text, body, spec);
    if (colon && family_length == 3) {
        if (memcmp(text, "mlp", 3) == 0) return parse_mlp(text, body, spec);
        if (memcmp(text, "emb", 3) == 0) return parse_emb(text, body, spec);
        if (memcmp(text, "tok", 3) == 0) return parse_tok(text, body, spec);
    }
    return cm_fail(CM_ERR_INVALID_ARG,
                   "model spec '%s' is none of 'mlp:IN-HIDDEN-...-OUT', "
                   "'vit:image=HxW,patch=P,dim=D,depth=L,heads=H,mlp=M,classes=C', "
                   "'emb:cards=AxB...,dim=D,mlp=H1-H2...,out=O', "
                   "'tok:len=L,vocab=V,dim=D,depth=L,heads=H,mlp=M,pad=P,out=O' or "
                   "'cnn:image=HxW,channels=C,conv=C1-C2...,kernel=K,pool=P1-P2...,fc=F1-F2...,"
                   "classes=N'",
                   text);
}

/* Appends printf output to text[size] at *used, never past the end. */
static void append(char *text, size_t size, size_t *used, const char *format, ...)
    __attribute__((format(printf, 4, 5)));
static void append(char *text, size_t size, size_t *used, const char *format, ...) {
    if (*used >= size) return;
    va_list arguments;
    va_start(arguments, format);
    int written = vsnprintf(text + *used, size - *used, format, arguments);
    va_end(arguments);
    if (written > 0) *used += (size_t)written;
}

void cm_model_spec_format(const cm_model_spec_t *spec, char *text, size_t size) {
    size_t used = 0;
    if (size) text[0] = '\0';
    switch (spec->kind) {
    case CM_MODEL_MLP:
        append(text, size, &used, "mlp:");
        for (int layer = 0; layer <= spec->layers; layer++)
            append(text, size, &used, layer ? "-%d" : "%d", spec->widths[layer]);
        return;
    case CM_MODEL_VIT:
        append(text, size, &used,
               "vit:image=%dx%d,patch=%d,dim=%d,depth=%d,heads=%d,mlp=%d,classes=%d",
               spec->image_height, spec->image_width, spec->patch, spec->dim, spec->depth,
               spec->heads, spec->mlp_dim, spec->classes);
        return;
    case CM_MODEL_EMB:
        append(text, size, &used, "emb:cards=");
        for (int column = 0; column < spec->columns; column++)
            append(text, size, &used, column ? "x%d" : "%d", spec->cardinality[column]);
        append(text, size, &used, ",dim=%d,mlp=", spec->dim);
        for (int layer = 1; layer < spec->layers; layer++)
            append(text, size, &used, layer > 1 ? "-%d" : "%d", spec->widths[layer]);
        append(text, size, &used, ",out=%d", spec->classes);
        return;
    case CM_MODEL_TOK:
        append(text, size, &used,
               "tok:len=%d,vocab=%d,dim=%d,depth=%d,heads=%d,mlp=%d,pad=%d,out=%d",
               spec->sequence_length, spec->vocab, spec->dim, spec->depth, spec->heads,
               spec->mlp_dim, spec->pad, spec->classes);
        return;
    case CM_MODEL_CNN:
        append(text, size, &used, "cnn:image=%dx%d,channels=%d,conv=", spec->image_height,
               spec->image_width, spec->channels);
        for (int stage = 0; stage < spec->stages; stage++)
            append(text, size, &used, stage ? "-%d" : "%d", spec->conv_channels[stage]);
        append(text, size, &used, ",kernel=%d,pool=", spec->kernel);
        for (int stage = 0; stage < spec->stages; stage++)
            append(text, size, &used, stage ? "-%d" : "%d", spec->pool[stage]);
        append(text, size, &used, ",head=%s,fc=", spec->flatten ? "flatten" : "gap");
        if (spec->layers == 1) append(text, size, &used, "0");
        for (int layer = 1; layer < spec->layers; layer++)
            append(text, size, &used, layer > 1 ? "-%d" : "%d", spec->widths[layer]);
        append(text, size, &used, ",classes=%d", spec->classes);
        return;
    }
}

int cm_model_spec_inputs(const cm_model_spec_t *spec) {
    switch (spec->kind) {
    case CM_MODEL_MLP:
        return spec->widths[0];
    case CM_MODEL_VIT:
        return spec->image_height * spec->image_width;
    case CM_MODEL_EMB:
        return spec->columns;
    case CM_MODEL_TOK:
        return spec->sequence_length;
    case CM_MODEL_CNN:
        return spec->channels * spec->image_height * spec->image_width;
    }
    return 0;
}

/* ---------------------------------------------------------------- building */

/* Registers a tensor of ndim (1..4) dimensions; buffer: a running statistic (see param_entry_t). */
static void add_param_shape(cm_model_t *model, float **slot, const char *name, int ndim,
                            const int64_t *shape, int decay, float init_std, int init_one,
                            int buffer) {
    assert(model->tensor_count < MAX_TENSORS && ndim >= 1 && ndim <= 4);
    param_entry_t *entry = &model->tensors[model->tensor_count++];
    snprintf(entry->name, sizeof entry->name, "%s", name);
    entry->ndim = ndim;
    entry->count = 1;
    for (int axis = 0; axis < ndim; axis++) {
        entry->shape[axis] = shape[axis];
        entry->count *= (size_t)shape[axis];
    }
    entry->offset = model->param_count;
    entry->decay = decay;
    entry->init_std = init_std;
    entry->init_one = init_one;
    entry->buffer = buffer;
    entry->slot = slot;
    /* Keep every tensor 16-float (64-byte) aligned inside the block. */
    model->param_count += (entry->count + 15) / 16 * 16;
}

/* A matrix [rows][cols], or a vector [rows] when cols is 0. */
static void add_param(cm_model_t *model, float **slot, const char *name, int rows, int cols,
                      int decay, float init_std, int init_one) {
    int64_t shape[2] = {rows, cols};
    add_param_shape(model, slot, name, cols > 0 ? 2 : 1, shape, decay, init_std, init_one, 0);
}

static void add_dense(cm_model_t *model, float **weight, float **bias, const char *prefix,
                      int in_dim, int out_dim, float init_std) {
    char name[CM_TENSOR_MAX_NAME];
    snprintf(name, sizeof name, "%s.weight", prefix);
    add_param(model, weight, name, out_dim, in_dim, 1, init_std, 0);
    snprintf(name, sizeof name, "%s.bias", prefix);
    add_param(model, bias, name, out_dim, 0, 0, 0.0f, 0);
}

static void add_layernorm(cm_model_t *model, float **gamma, float **beta, const char *prefix,
                          int dim) {
    char name[CM_TENSOR_MAX_NAME];
    snprintf(name, sizeof name, "%s.weight", prefix);
    add_param(model, gamma, name, dim, 0, 0, 0.0f, 1);
    snprintf(name, sizeof name, "%s.bias", prefix);
    add_param(model, beta, name, dim, 0, 0, 0.0f, 0);
}

static float *new_buffer(cm_model_t *model, size_t count) {
    if (model->buffer_count >= MAX_BUFFERS) return NULL;
    float *buffer = cm_alloc_floats(count);
    if (buffer) model->buffers[model->buffer_count++] = buffer;
    return buffer;
}

/* The dense stack of the MLP and the emb model: fc0 .. fc<layers-1> over spec->widths. */
static void register_mlp(cm_model_t *model) {
    const cm_model_spec_t *spec = &model->spec;
    for (int layer = 0; layer < spec->layers; layer++) {
        char prefix[32];
        snprintf(prefix, sizeof prefix, "fc%d", layer);
        int in_dim = spec->widths[layer], out_dim = spec->widths[layer + 1];
        /* He init for layers feeding a ReLU; the output layer gets Xavier-like scale. */
        float std =
            layer + 1 < spec->layers ? sqrtf(2.0f / (float)in_dim) : sqrtf(1.0f / (float)in_dim);
        add_dense(model, &model->dense_weight[layer], &model->dense_bias[layer], prefix, in_dim,
                  out_dim, std);
    }
}

static int alloc_mlp_activations(cm_model_t *model) {
    const cm_model_spec_t *spec = &model->spec;
    size_t batch = (size_t)model->max_batch;
    int widest = 0;
    for (int layer = 0; layer < spec->layers; layer++) {
        int width = spec->widths[layer + 1];
        if (spec->widths[layer] > widest) widest = spec->widths[layer];
        if (width > widest) widest = width;
        if (!(model->pre[layer] = new_buffer(model, batch * (size_t)width))) return 0;
        if (layer + 1 < spec->layers &&
            !(model->act[layer] = new_buffer(model, batch * (size_t)width)))
            return 0;
    }
    model->scratch_a = new_buffer(model, batch * (size_t)widest);
    model->scratch_b = new_buffer(model, batch * (size_t)widest);
    return model->scratch_a && model->scratch_b;
}

/* emb: one table per column ("emb.<column>.weight"), then the dense stack. */
static void register_emb(cm_model_t *model) {
    const cm_model_spec_t *spec = &model->spec;
    for (int column = 0; column < spec->columns; column++) {
        char name[CM_TENSOR_MAX_NAME];
        snprintf(name, sizeof name, "emb.%d.weight", column);
        /* N(0, 1) like torch.nn.Embedding: the He-initialized fc0 expects unit-scale inputs. */
        add_param(model, &model->embedding_table[column], name, spec->cardinality[column],
                  spec->dim, 1, 1.0f, 0);
    }
    register_mlp(model);
}

static int alloc_emb_activations(cm_model_t *model) {
    size_t batch = (size_t)model->max_batch, width = (size_t)model->spec.widths[0];
    model->ids = cm_alloc_aligned(batch * (size_t)model->spec.columns, sizeof *model->ids);
    model->concat = new_buffer(model, batch * width);
    model->d_concat = new_buffer(model, batch * width);
    return model->ids && model->concat && model->d_concat && alloc_mlp_activations(model);
}

/* The trunk shared by the ViT and tok: blocks, final LN "norm", "head". */
static void register_transformer(cm_model_t *model) {
    const cm_model_spec_t *spec = &model->spec;
    int dim = spec->dim;
    float std = 0.02f, residual_std = 0.02f / sqrtf(2.0f * (float)spec->depth);
    for (int depth = 0; depth < spec->depth; depth++) {
        vit_block_t *block = &model->blocks[depth];
        char prefix[64];
        snprintf(prefix, sizeof prefix, "blocks.%d.norm1", depth);
        add_layernorm(model, &block->ln1_gamma, &block->ln1_beta, prefix, dim);
        snprintf(prefix, sizeof prefix, "blocks.%d.attn.qkv", depth);
        add_dense(model, &block->qkv_weight, &block->qkv_bias, prefix, dim, 3 * dim, std);
        snprintf(prefix, sizeof prefix, "blocks.%d.attn.proj", depth);
        add_dense(model, &block->proj_weight, &block->proj_bias, prefix, dim, dim, residual_std);
        snprintf(prefix, sizeof prefix, "blocks.%d.norm2", depth);
        add_layernorm(model, &block->ln2_gamma, &block->ln2_beta, prefix, dim);
        snprintf(prefix, sizeof prefix, "blocks.%d.mlp.fc1", depth);
        add_dense(model, &block->fc1_weight, &block->fc1_bias, prefix, dim, spec->mlp_dim, std);
        snprintf(prefix, sizeof prefix, "blocks.%d.mlp.fc2", depth);
        add_dense(model, &block->fc2_weight, &block->fc2_bias, prefix, spec->mlp_dim, dim,
                  residual_std);
    }
    add_layernorm(model, &model->lnf_gamma, &model->lnf_beta, "norm", dim);
    add_dense(model, &model->head_weight, &model->head_bias, "head", dim, spec->classes, std);
}

static void register_vit(cm_model_t *model) {
    const cm_model_spec_t *spec = &model->spec;
    int dim = spec->dim, patch_area = spec->patch * spec->patch;
    float std = 0.02f;
    add_dense(model, &model->patch_weight, &model->patch_bias, "patch_embed", patch_area, dim,
              sqrtf(1.0f / (float)patch_area));
    add_param(model, &model->cls, "cls_token", dim, 0, 0, std, 0);
    add_param(model, &model->pos, "pos_embed", model->tokens, dim, 0, std, 0);
    register_transformer(model);
}

static void register_tok(cm_model_t *model) {
    const cm_model_spec_t *spec = &model->spec;
    add_param(model, &model->token_table, "tok_embed.weight", spec->vocab, spec->dim, 1, 0.02f, 0);
    add_param(model, &model->pos, "pos_embed", model->tokens, spec->dim, 0, 0.02f, 0);
    register_transformer(model);
}

static int alloc_transformer_activations(cm_model_t *model) {
    const cm_model_spec_t *spec = &model->spec;
    size_t rows = (size_t)model->max_batch * (size_t)model->tokens;
    size_t dim = (size_t)spec->dim, mlp_dim = (size_t)spec->mlp_dim;
    size_t att = (size_t)model->max_batch * (size_t)spec->heads * (size_t)model->tokens *
                 (size_t)model->tokens;
    model->x0 = new_buffer(model, rows * dim);
    for (int depth = 0; depth < spec->depth; depth++) {
        vit_block_t *block = &model->blocks[depth];
        float **targets[] = {&block->ln1_out,  &block->ln1_mean, &block->ln1_rstd, &block->qkv,
                             &block->att,      &block->attn_out, &block->x_mid,    &block->ln2_out,
                             &block->ln2_mean, &block->ln2_rstd, &block->fc1_pre,  &block->fc1_act,
                             &block->x_out};
        size_t sizes[] = {rows * dim,     rows,           rows,       rows * 3 * dim, att,
                          rows * dim,     rows * dim,     rows * dim, rows,           rows,
                          rows * mlp_dim, rows * mlp_dim, rows * dim};
        for (size_t index = 0; index < sizeof sizes / sizeof sizes[0]; index++)
            if (!(*targets[index] = new_buffer(model, sizes[index]))) return 0;
    }
    size_t batch = (size_t)model->max_batch;
    model->lnf_out = new_buffer(model, rows * dim);
    model->lnf_mean = new_buffer(model, rows);
    model->lnf_rstd = new_buffer(model, rows);
    model->pooled = new_buffer(model, batch * dim);
    model->logits = new_buffer(model, batch * (size_t)spec->classes);
    model->d_pooled = new_buffer(model, batch * dim);
    model->d_ln = new_buffer(model, rows * dim);
    model->d_res = new_buffer(model, rows * dim);
    model->d_attn = new_buffer(model, rows * dim);
    model->d_qkv = new_buffer(model, rows * 3 * dim);
    model->d_fc_act = new_buffer(model, rows * mlp_dim);
    model->d_fc_pre = new_buffer(model, rows * mlp_dim);
    model->att_scratch = new_buffer(model, (size_t)model->tokens * (size_t)model->tokens);
    return model->att_scratch != NULL && model->d_fc_pre && model->d_fc_act && model->d_qkv &&
           model->d_attn && model->d_res && model->d_ln && model->d_pooled && model->logits &&
           model->pooled && model->lnf_rstd && model->lnf_mean && model->lnf_out && model->x0;
}

static int alloc_vit_activations(cm_model_t *model) {
    const cm_model_spec_t *spec = &model->spec;
    model->patches = new_buffer(model, (size_t)model->max_batch * (size_t)model->num_patches *
                                           (size_t)(spec->patch * spec->patch));
    return model->patches && alloc_transformer_activations(model);
}

static int alloc_tok_activations(cm_model_t *model) {
    size_t rows = (size_t)model->max_batch * (size_t)model->tokens;
    model->ids = cm_alloc_aligned(rows, sizeof *model->ids);
    model->valid = cm_alloc_aligned(rows, sizeof *model->valid);
    return model->ids && model->valid && alloc_transformer_activations(model);
}

/* cnn: per stage "stages.<s>.conv.weight" [out][in][k][k] and "stages.<s>.bn.{weight, bias,
 * running_mean, running_var}", then the dense stack fc0 .. fc<layers-1> over the pooled
 * channels.  Also fills in every stage's map sizes. */
static void register_cnn(cm_model_t *model) {
    const cm_model_spec_t *spec = &model->spec;
    int channels = spec->channels, height = spec->image_height, width = spec->image_width;
    int kernel = spec->kernel;
    for (int index = 0; index < spec->stages; index++) {
        cnn_stage_t *stage = &model->stages[index];
        stage->in_channels = channels;
        stage->height = height;
        stage->width = width;
        stage->out_channels = spec->conv_channels[index];
        stage->out_height = spec->pool[index] ? height / 2 : height;
        stage->out_width = spec->pool[index] ? width / 2 : width;
        char name[CM_TENSOR_MAX_NAME];
        snprintf(name, sizeof name, "stages.%d.conv.weight", index);
        int64_t shape[4] = {stage->out_channels, channels, kernel, kernel};
        /* He normal: the conv feeds batch norm and a ReLU. */
        add_param_shape(model, &stage->conv_weight, name, 4, shape, 1,
                        sqrtf(2.0f / (float)(channels * kernel * kernel)), 0, 0);
        int64_t per_channel[1] = {stage->out_channels};
        snprintf(name, sizeof name, "stages.%d.bn.weight", index);
        add_param_shape(model, &stage->bn_gamma, name, 1, per_channel, 0, 0.0f, 1, 0);
        snprintf(name, sizeof name, "stages.%d.bn.bias", index);
        add_param_shape(model, &stage->bn_beta, name, 1, per_channel, 0, 0.0f, 0, 0);
        snprintf(name, sizeof name, "stages.%d.bn.running_mean", index);
        add_param_shape(model, &stage->running_mean, name, 1, per_channel, 0, 0.0f, 0, 1);
        snprintf(name, sizeof name, "stages.%d.bn.running_var", index);
        add_param_shape(model, &stage->running_var, name, 1, per_channel, 0, 0.0f, 1, 1);
        channels = stage->out_channels;
        height = stage->out_height;
        width = stage->out_width;
    }
    register_mlp(model);
}

static int alloc_cnn_activations(cm_model_t *model) {
    const cm_model_spec_t *spec = &model->spec;
    size_t batch = (size_t)model->max_batch, largest_map = 0, largest_cols = 0;
    for (int index = 0; index < spec->stages; index++) {
        cnn_stage_t *stage = &model->stages[index];
        size_t plane = (size_t)stage->height * (size_t)stage->width;
        size_t map = batch * (size_t)stage->out_channels * plane;
        size_t in_map = batch * (size_t)stage->in_channels * plane;
        size_t cols = (size_t)stage->in_channels * (size_t)(spec->kernel * spec->kernel) * plane;
        if (map > largest_map) largest_map = map;
        if (in_map > largest_map) largest_map = in_map;
        if (cols > largest_cols) largest_cols = cols;
        stage->conv_out = new_buffer(model, map);
        stage->relu_out = new_buffer(model, map);
        stage->mean = new_buffer(model, (size_t)stage->out_channels);
        stage->rstd = new_buffer(model, (size_t)stage->out_channels);
        if (!stage->conv_out || !stage->relu_out || !stage->mean || !stage->rstd) return 0;
        if (spec->pool[index]) {
            size_t pooled = batch * (size_t)stage->out_channels * (size_t)stage->out_height *
                            (size_t)stage->out_width;
            stage->pooled = new_buffer(model, pooled);
            stage->argmax = cm_alloc_aligned(pooled, sizeof *stage->argmax);
            if (!stage->pooled || !stage->argmax) return 0;
        }
    }
    const cnn_stage_t *last = &model->stages[spec->stages - 1];
    size_t last_map =
        batch * (size_t)last->out_channels * (size_t)last->out_height * (size_t)last->out_width;
    model->gap = new_buffer(model, batch * (size_t)last->out_channels);
    /* set before any forward, so "hidden" (fc=0) is never a NULL feature */
    model->head_input = spec->flatten ? (last->pooled ? last->pooled : last->relu_out) : model->gap;
    model->d_gap = new_buffer(model, batch * (size_t)last->out_channels);
    model->cnn_tokens = new_buffer(model, last_map);
    model->cols = new_buffer(model, largest_cols);
    model->d_map_a = new_buffer(model, largest_map);
    model->d_map_b = new_buffer(model, largest_map);
    return model->gap && model->d_gap && model->cnn_tokens && model->cols && model->d_map_a &&
           model->d_map_b && alloc_mlp_activations(model);
}

cm_status_t cm_model_new(const cm_model_spec_t *spec, int max_batch, cm_model_t **out) {
    *out = NULL;
    if (max_batch < 1) return cm_fail(CM_ERR_INVALID_ARG, "batch size must be at least 1");
    cm_model_t *model = calloc(1, sizeof *model);
    if (!model) return cm_fail(CM_ERR_NOMEM, "out of memory building a model");
    model->spec = *spec;
    model->max_batch = max_batch;
    int activations_ok = 0;
    switch (spec->kind) {
    case CM_MODEL_MLP:
        register_mlp(model);
        break;
    case CM_MODEL_EMB:
        register_emb(model);
        break;
    case CM_MODEL_VIT:
        model->num_patches = (spec->image_height / spec->patch) * (spec->image_width / spec->patch);
        model->tokens = 1 + model->num_patches;
        register_vit(model);
        break;
    case CM_MODEL_TOK:
        model->tokens = spec->sequence_length;
        register_tok(model);
        break;
    case CM_MODEL_CNN:
        register_cnn(model);
        break;
    }
    model->params = cm_alloc_floats(model->param_count);
    model->grads = cm_alloc_floats(model->param_count);
    if (!model->params || !model->grads) goto fail;
    for (int index = 0; index < model->tensor_count; index++)
        *model->tensors[index].slot = model->params + model->tensors[index].offset;
    switch (spec->kind) {
    case CM_MODEL_MLP:
        activations_ok = alloc_mlp_activations(model);
        break;
    case CM_MODEL_EMB:
        activations_ok = alloc_emb_activations(model);
        break;
    case CM_MODEL_VIT:
        activations_ok = alloc_vit_activations(model);
        break;
    case CM_MODEL_TOK:
        activations_ok = alloc_tok_activations(model);
        break;
    case CM_MODEL_CNN:
        activations_ok = alloc_cnn_activations(model);
        break;
    }
    if (!activations_ok) goto fail;
    *out = model;
    return CM_OK;
fail:
    cm_model_free(&model);
    return cm_fail(CM_ERR_NOMEM, "out of memory allocating a model for batch %d", max_batch);
}

void cm_model_free(cm_model_t **model_pointer) {
    cm_model_t *model = *model_pointer;
    if (!model) return;
    for (int index = 0; index < model->buffer_count; index++)
        cm_free_aligned(model->buffers[index]);
    cm_free_aligned(model->params);
    cm_free_aligned(model->grads);
    cm_free_aligned(model->ids);
    cm_free_aligned(model->valid);
    for (int stage = 0; stage < CM_MODEL_MAX_STAGES; stage++)
        cm_free_aligned(model->stages[stage].argmax);
    free(model);
    *model_pointer = NULL;
}

void cm_model_init(cm_model_t *model, uint64_t seed) {
    cm_rng_t rng;
    cm_rng_seed(&rng, seed);
    for (int index = 0; index < model->tensor_count; index++) {
        const param_entry_t *entry = &model->tensors[index];
        float *values = model->params + entry->offset;
        for (size_t element = 0; element < entry->count; element++)
            values[element] = entry->init_one ? 1.0f : entry->init_std * cm_rng_normal(&rng);
    }
}

const cm_model_spec_t *cm_model_spec(const cm_model_t *model) { return &model->spec; }
void cm_model_set_training(cm_model_t *model, int training) { model->training = training != 0; }
int cm_model_training(const cm_model_t *model) { return model->training; }
int cm_model_max_batch(const cm_model_t *model) { return model->max_batch; }
float *cm_model_params(cm_model_t *model) { return model->params; }
float *cm_model_grads(cm_model_t *model) { return model->grads; }
size_t cm_model_param_count(const cm_model_t *model) { return model->param_count; }
int cm_model_tensor_count(const cm_model_t *model) { return model->tensor_count; }

cm_tensor_t cm_model_tensor(const cm_model_t *model, int index) {
    const param_entry_t *entry = &model->tensors[index];
    cm_tensor_t tensor = {.dtype = CM_DTYPE_F32, .ndim = entry->ndim};
    snprintf(tensor.name, sizeof tensor.name, "%s", entry->name);
    for (int axis = 0; axis < entry->ndim; axis++) tensor.shape[axis] = entry->shape[axis];
    tensor.data = model->params + entry->offset;
    return tensor;
}

/* ---------------------------------------------------------------- forward */

/* ---------------------------------------------------------------- forward */

/*
 * The id inputs of emb and tok: inputs[batch][columns] must hold whole numbers below each
 * column's limit (a cardinality, or the vocabulary).  Writes them to ids (NULL: check only).
 * The comparison is written so that NaN fails it and no float outside int32 is ever cast.
 */
static cm_status_t gather_ids(const cm_model_t *model, const float *inputs, int batch,
                              int32_t *ids) {
    const cm_model_spec_t *spec = &model->spec;
    int columns = cm_model_spec_inputs(spec), token_model = spec->kind == CM_MODEL_TOK;
    for (int row = 0; row < batch; row++)
        for (int column = 0; column < columns; column++) {
            size_t index = (size_t)row * (size_t)columns + (size_t)column;
            float value = inputs[index];
            int limit = token_model ? spec->vocab : spec->cardinality[column];
            int whole = value >= 0.0f && value < (float)limit && (float)(int32_t)value == value;
            if (!whole)
                return cm_fail(CM_ERR_OUT_OF_RANGE,
                               "input row %d, %s %d holds %g, which is not a %s id in 0..%d", row,
                               token_model ? "position" : "column", column, (double)value,
                               token_model ? "token" : "category", limit - 1);
            if (ids) ids[index] = (int32_t)value;
        }
    return CM_OK;
}

cm_status_t cm_model_check_inputs(const cm_model_t *model, const float *inputs, int batch) {
    if (model->spec.kind != CM_MODEL_EMB && model->spec.kind != CM_MODEL_TOK) return CM_OK;
    return gather_ids(model, inputs, batch, NULL);
}

/* Fills model->ids for the forward pass; a bad id is a programmer bug (see cm_model.h). */
static void load_ids(cm_model_t *model, const float *inputs, int batch) {
    if (gather_ids(model, inputs, batch, model->ids) == CM_OK) return;
    fprintf(stderr,
            "cm_model_forward: %s; ids must be validated by the data layer before they reach a "
            "model\n",
            cm_last_error());
    abort();
}

/* The dense stack over input[batch][widths[0]]; returns pre[layers-1], the outputs. */
static const float *mlp_forward(cm_model_t *model, const float *input, int batch) {
    const cm_model_spec_t *spec = &model->spec;
    const float *layer_input = input;
    for (int layer = 0; layer < spec->layers; layer++) {
        int in_dim = spec->widths[layer], out_dim = spec->widths[layer + 1];
        cm_layers_dense_forward(model->pre[layer], layer_input, model->dense_weight[layer],
                                model->dense_bias[layer], batch, in_dim, out_dim);
        if (layer + 1 < spec->layers) {
            cm_layers_relu_forward(model->act[layer], model->pre[layer], batch * out_dim);
            layer_input = model->act[layer];
        }
    }
    return model->pre[spec->layers - 1];
}

static const float *emb_forward(cm_model_t *model, const float *inputs, int batch) {
    const cm_model_spec_t *spec = &model->spec;
    int columns = spec->columns, dim = spec->dim, width = spec->widths[0];
    load_ids(model, inputs, batch);
    /* concat[batch][columns*dim]: column c's rows fill the slice [c*dim, (c+1)*dim). */
    for (int column = 0; column < columns; column++)
        cm_layers_embedding_forward(model->concat + (size_t)column * dim, width,
                                    model->ids + column, columns, model->embedding_table[column],
                                    batch, dim);
    return mlp_forward(model, model->concat, batch);
}

/* The trunk runs over chunks of whole examples (attention mixes tokens within an example only),
 * each of about TRUNK_CHUNK_ROWS token rows: one chunk's activations, a few hundred KB, stay in
 * the core's L2 cache from one layer to the next, where the whole batch's (2.5 MB for qkv at
 * batch 128 in the README's ViT) would go to L3 and memory between every two kernels.  The
 * per-row kernels give the same values chunk by chunk; the weight gradients add up chunk by
 * chunk (GEMMs with beta 1). */
enum { TRUNK_CHUNK_ROWS = 256 };

static int trunk_chunk_examples(const cm_model_t *model) {
    int examples = TRUNK_CHUNK_ROWS / model->tokens;
    return examples < 1 ? 1 : examples;
}

/* The trunk over x0 for examples [start, start + count); valid (NULL: none) masks keys and
 * pooling.  Writes their logits. */
static void transformer_forward_chunk(cm_model_t *model, int start, int count,
                                      const unsigned char *valid) {
    const cm_model_spec_t *spec = &model->spec;
    int dim = spec->dim, mlp_dim = spec->mlp_dim, tokens = model->tokens, heads = spec->heads;
    int rows = count * tokens;
    size_t row0 = (size_t)start * (size_t)tokens;
    size_t att0 = (size_t)start * (size_t)heads * (size_t)tokens * (size_t)tokens;
    const unsigned char *valid_chunk = valid ? valid + row0 : NULL;
    const float *residual = model->x0 + row0 * dim;
    for (int depth = 0; depth < spec->depth; depth++) {
        vit_block_t *block = &model->blocks[depth];
        float *ln1_out = block->ln1_out + row0 * dim, *qkv = block->qkv + row0 * 3 * dim;
        float *attn_out = block->attn_out + row0 * dim, *x_mid = block->x_mid + row0 * dim;
        float *ln2_out = block->ln2_out + row0 * dim, *fc1_pre = block->fc1_pre + row0 * mlp_dim;
        float *fc1_act = block->fc1_act + row0 * mlp_dim, *x_out = block->x_out + row0 * dim;
        cm_layers_layernorm_forward(ln1_out, block->ln1_mean + row0, block->ln1_rstd + row0,
                                    residual, block->ln1_gamma, block->ln1_beta, rows, dim);
        cm_layers_dense_forward(qkv, ln1_out, block->qkv_weight, block->qkv_bias, rows, dim,
                                3 * dim);
        cm_layers_attention_forward(attn_out, block->att + att0, qkv, valid_chunk, count, tokens,
                                    dim, heads);
        cm_layers_dense_forward_residual(x_mid, attn_out, block->proj_weight, block->proj_bias,
                                         residual, rows, dim, dim);
        cm_layers_layernorm_forward(ln2_out, block->ln2_mean + row0, block->ln2_rstd + row0, x_mid,
                                    block->ln2_gamma, block->ln2_beta, rows, dim);
        cm_layers_dense_forward(fc1_pre, ln2_out, block->fc1_weight, block->fc1_bias, rows, dim,
                                mlp_dim);
        cm_layers_gelu_forward(fc1_act, fc1_pre, rows * mlp_dim);
        cm_layers_dense_forward_residual(x_out, fc1_act, block->fc2_weight, block->fc2_bias, x_mid,
                                         rows, mlp_dim, dim);
        residual = x_out;
    }
    float *lnf_out = model->lnf_out + row0 * dim, *pooled = model->pooled + (size_t)start * dim;
    cm_layers_layernorm_forward(lnf_out, model->lnf_mean + row0, model->lnf_rstd + row0, residual,
                                model->lnf_gamma, model->lnf_beta, rows, dim);
    cm_layers_mean_pool_forward(pooled, lnf_out, valid_chunk, count, tokens, dim);
    cm_layers_dense_forward(model->logits + (size_t)start * spec->classes, pooled,
                            model->head_weight, model->head_bias, count, dim, spec->classes);
}

/* The trunk over x0[batch][tokens][dim]; valid[batch][tokens] masks keys and pooling (NULL:
 * none).  Returns the logits. */
static const float *transformer_forward(cm_model_t *model, int batch, const unsigned char *valid) {
    int chunk = trunk_chunk_examples(model);
    for (int start = 0; start < batch; start += chunk)
        transformer_forward_chunk(model, start, batch - start < chunk ? batch - start : chunk,
                                  valid);
    return model->logits;
}

static const float *vit_forward(cm_model_t *model, const float *inputs, int batch) {
    const cm_model_spec_t *spec = &model->spec;
    cm_layers_patch_embed_forward(model->x0, model->patches, inputs, model->patch_weight,
                                  model->patch_bias, model->cls, model->pos, batch,
                                  spec->image_height, spec->image_width, spec->patch, spec->dim);
    return transformer_forward(model, batch, NULL);
}

static const float *tok_forward(cm_model_t *model, const float *inputs, int batch) {
    const cm_model_spec_t *spec = &model->spec;
    int dim = spec->dim, tokens = model->tokens, rows = batch * tokens;
    load_ids(model, inputs, batch);
    for (int row = 0; row < rows; row++) model->valid[row] = model->ids[row] != spec->pad;
    /* x0[batch][tokens][dim] = token_table[ids] + pos */
    cm_layers_embedding_forward(model->x0, dim, model->ids, 1, model->token_table, rows, dim);
    for (int example = 0; example < batch; example++) {
        float *x0_example = model->x0 + (size_t)example * (size_t)tokens * (size_t)dim;
        cm_layers_add_forward(x0_example, x0_example, model->pos, tokens * dim);
    }
    return transformer_forward(model, batch, model->valid);
}

static const float batchnorm_momentum = 0.1f; /* PyTorch's default */

/* The stages over NCHW images, global average pooling, the dense stack. */
static const float *cnn_forward(cm_model_t *model, const float *inputs, int batch) {
    const cm_model_spec_t *spec = &model->spec;
    const float *map = inputs;
    for (int index = 0; index < spec->stages; index++) {
        cnn_stage_t *stage = &model->stages[index];
        int channels = stage->out_channels, plane = stage->height * stage->width;
        cm_layers_conv2d_forward(stage->conv_out, model->cols, map, stage->conv_weight, NULL, batch,
                                 stage->in_channels, stage->height, stage->width, channels,
                                 spec->kernel, 1, spec->kernel / 2);
        /* batch norm and ReLU fused: one pass, no pre-activation buffer */
        if (model->training)
            cm_layers_batchnorm_train_forward(stage->relu_out, stage->mean, stage->rstd,
                                              stage->running_mean, stage->running_var,
                                              stage->conv_out, stage->bn_gamma, stage->bn_beta,
                                              batch, channels, plane, batchnorm_momentum, 1);
        else
            cm_layers_batchnorm_eval_forward(stage->relu_out, stage->conv_out, stage->bn_gamma,
                                             stage->bn_beta, stage->running_mean,
                                             stage->running_var, batch, channels, plane, 1);
        map = stage->relu_out;
        if (stage->pooled) {
            cm_layers_maxpool2x2_forward(stage->pooled, stage->argmax, stage->relu_out,
                                         batch * channels, stage->height, stage->width);
            map = stage->pooled;
        }
    }
    const cnn_stage_t *last = &model->stages[spec->stages - 1];
    int channels = last->out_channels, positions = last->out_height * last->out_width;
    cm_layers_global_avg_pool_forward(model->gap, map, batch, channels, positions);
    /* "tokens": cnn_tokens[batch][positions][channels], the last map transposed per example. */
    for (int example = 0; example < batch; example++) {
        const float *source = map + (size_t)example * channels * positions;
        float *target = model->cnn_tokens + (size_t)example * channels * positions;
        for (int channel = 0; channel < channels; channel++)
            for (int position = 0; position < positions; position++)
                target[(size_t)position * channels + channel] =
                    source[(size_t)channel * positions + position];
    }
    model->head_input = spec->flatten ? map : model->gap;
    return mlp_forward(model, model->head_input, batch);
}

const float *cm_model_forward(cm_model_t *model, const float *inputs, int batch) {
    assert(batch >= 1 && batch <= model->max_batch);
    model->last_input = inputs;
    model->last_batch = batch;
    switch (model->spec.kind) {
    case CM_MODEL_MLP:
        return mlp_forward(model, inputs, batch);
    case CM_MODEL_EMB:
        return emb_forward(model, inputs, batch);
    case CM_MODEL_VIT:
        return vit_forward(model, inputs, batch);
    case CM_MODEL_TOK:
        return tok_forward(model, inputs, batch);
    case CM_MODEL_CNN:
        return cnn_forward(model, inputs, batch);
    }
    return NULL;
}

static int has_dense_stack(const cm_model_t *model) {
    cm_model_kind_t kind = model->spec.kind;
    return kind == CM_MODEL_MLP || kind == CM_MODEL_EMB || kind == CM_MODEL_CNN;
}

static const float *trunk_last_tokens(const cm_model_t *model) {
    return model->spec.depth > 0 ? model->blocks[model->spec.depth - 1].x_out : model->x0;
}

const float *cm_model_feature(const cm_model_t *model, const char *name, int *per_example,
                              int *tokens_out) {
    const cm_model_spec_t *spec = &model->spec;
    if (tokens_out) *tokens_out = 1;
    if (strcmp(name, "hidden") == 0) {
        if (has_dense_stack(model)) {
            *per_example = spec->widths[spec->layers - 1];
            return spec->layers >= 2 ? model->act[spec->layers - 2] : model->head_input;
        }
        *per_example = spec->dim;
        return model->pooled;
    }
    if (strcmp(name, "tokens") == 0 && spec->kind == CM_MODEL_CNN) {
        const cnn_stage_t *last = &model->stages[spec->stages - 1];
        int positions = last->out_height * last->out_width;
        *per_example = positions * last->out_channels;
        if (tokens_out) *tokens_out = positions;
        return model->cnn_tokens;
    }
    if (strcmp(name, "tokens") == 0 && !has_dense_stack(model)) {
        *per_example = model->tokens * spec->dim;
        if (tokens_out) *tokens_out = model->tokens;
        return trunk_last_tokens(model);
    }
    return NULL;
}

const char *cm_model_feature_names(const cm_model_t *model) {
    return has_dense_stack(model) && model->spec.kind != CM_MODEL_CNN ? "hidden" : "hidden,tokens";
}

/* The tensor whose parameter pointer lives in `slot`. */
static cm_tensor_t tensor_of_slot(const cm_model_t *model, float *const *slot) {
    for (int index = 0; index < model->tensor_count; index++)
        if (model->tensors[index].slot == slot) return cm_model_tensor(model, index);
    assert(!"every parameter slot is registered");
    return (cm_tensor_t){.dtype = CM_DTYPE_F32};
}

void cm_model_head(const cm_model_t *model, cm_tensor_t *weight, cm_tensor_t *bias) {
    const cm_model_spec_t *spec = &model->spec;
    int last = spec->layers - 1;
    int dense = has_dense_stack(model);
    *weight = tensor_of_slot(model, dense ? &model->dense_weight[last] : &model->head_weight);
    *bias = tensor_of_slot(model, dense ? &model->dense_bias[last] : &model->head_bias);
}

/* ---------------------------------------------------------------- backward */

#define GRAD(model, param) ((model)->grads + ((param) - (model)->params))

static void add_into(float *target, const float *source, int count) {
    for (int index = 0; index < count; index++) target[index] += source[index];
}

/* Backward of the dense stack over input[batch][widths[0]]; d_input (NULL: not needed) gets
 * the gradient of that input added. */
static void mlp_backward(cm_model_t *model, const float *input, float *d_input_of_stack,
                         const float *d_logits, const float *d_hidden, int batch) {
    const cm_model_spec_t *spec = &model->spec;
    int last = spec->layers - 1;
    /* scratch_a holds the gradient of the current layer's output activation. */
    float *d_act = model->scratch_a, *d_pre = model->scratch_b;
    int hidden_width = spec->widths[last];
    memset(d_act, 0, sizeof(float) * (size_t)batch * (size_t)hidden_width);
    cm_layers_dense_backward(d_act, GRAD(model, model->dense_weight[last]),
                             GRAD(model, model->dense_bias[last]), d_logits,
                             last == 0 ? input : model->act[last - 1], model->dense_weight[last],
                             batch, hidden_width, spec->classes);
    if (d_hidden) add_into(d_act, d_hidden, batch * hidden_width);
    if (last == 0) { /* one layer (a cnn with fc=0): "hidden" is the stack's input */
        if (d_input_of_stack) add_into(d_input_of_stack, d_act, batch * hidden_width);
        return;
    }
    for (int layer = last - 1; layer >= 0; layer--) {
        int in_dim = spec->widths[layer], out_dim = spec->widths[layer + 1];
        memset(d_pre, 0, sizeof(float) * (size_t)batch * (size_t)out_dim);
        cm_layers_relu_backward(d_pre, d_act, model->pre[layer], batch * out_dim);
        const float *layer_input = layer == 0 ? input : model->act[layer - 1];
        float *d_input = d_input_of_stack;
        if (layer > 0) {
            d_input = d_act; /* d_act was consumed by the ReLU backward above */
            memset(d_input, 0, sizeof(float) * (size_t)batch * (size_t)in_dim);
        }
        cm_layers_dense_backward(d_input, GRAD(model, model->dense_weight[layer]),
                                 GRAD(model, model->dense_bias[layer]), d_pre, layer_input,
                                 model->dense_weight[layer], batch, in_dim, out_dim);
    }
}

static void emb_backward(cm_model_t *model, const float *d_logits, const float *d_hidden,
                         int batch) {
    const cm_model_spec_t *spec = &model->spec;
    int columns = spec->columns, dim = spec->dim, width = spec->widths[0];
    memset(model->d_concat, 0, sizeof(float) * (size_t)batch * (size_t)width);
    mlp_backward(model, model->concat, model->d_concat, d_logits, d_hidden, batch);
    for (int column = 0; column < columns; column++)
        cm_layers_embedding_backward(GRAD(model, model->embedding_table[column]),
                                     model->d_concat + (size_t)column * dim, width,
                                     model->ids + column, columns, batch, dim);
}

/* Backward of the trunk for examples [start, start + count), from d_pooled (their rows of it
 * filled); leaves the gradient of their rows of x0 in d_res. */
static void transformer_backward_chunk(cm_model_t *model, int start, int count,
                                       const unsigned char *valid) {
    const cm_model_spec_t *spec = &model->spec;
    int dim = spec->dim, mlp_dim = spec->mlp_dim, tokens = model->tokens, heads = spec->heads;
    int rows = count * tokens;
    size_t row0 = (size_t)start * (size_t)tokens;
    size_t att0 = (size_t)start * (size_t)heads * (size_t)tokens * (size_t)tokens;
    size_t row_bytes = sizeof(float) * (size_t)rows;
    const unsigned char *valid_chunk = valid ? valid + row0 : NULL;
    float *d_res = model->d_res + row0 * dim, *d_ln = model->d_ln + row0 * dim;
    float *d_fc_act = model->d_fc_act + row0 * mlp_dim,
          *d_fc_pre = model->d_fc_pre + row0 * mlp_dim;
    float *d_attn = model->d_attn + row0 * dim, *d_qkv = model->d_qkv + row0 * 3 * dim;

    memset(d_ln, 0, row_bytes * (size_t)dim);
    cm_layers_mean_pool_backward(d_ln, model->d_pooled + (size_t)start * dim, valid_chunk, count,
                                 tokens, dim);
    /* d_res: gradient of the residual stream, walked back through the blocks in place. */
    memset(d_res, 0, row_bytes * (size_t)dim);
    cm_layers_layernorm_backward(d_res, GRAD(model, model->lnf_gamma), GRAD(model, model->lnf_beta),
                                 d_ln, trunk_last_tokens(model) + row0 * dim, model->lnf_gamma,
                                 model->lnf_mean + row0, model->lnf_rstd + row0, rows, dim);
    for (int depth = spec->depth - 1; depth >= 0; depth--) {
        vit_block_t *block = &model->blocks[depth];
        const float *block_input =
            (depth == 0 ? model->x0 : model->blocks[depth - 1].x_out) + row0 * dim;
        /* MLP branch: x_out = x_mid + fc2(gelu(fc1(ln2(x_mid)))) */
        memset(d_fc_act, 0, row_bytes * (size_t)mlp_dim);
        cm_layers_dense_backward(
            d_fc_act, GRAD(model, block->fc2_weight), GRAD(model, block->fc2_bias), d_res,
            block->fc1_act + row0 * mlp_dim, block->fc2_weight, rows, mlp_dim, dim);
        memset(d_fc_pre, 0, row_bytes * (size_t)mlp_dim);
        cm_layers_gelu_backward(d_fc_pre, d_fc_act, block->fc1_pre + row0 * mlp_dim,
                                rows * mlp_dim);
        memset(d_ln, 0, row_bytes * (size_t)dim);
        cm_layers_dense_backward(d_ln, GRAD(model, block->fc1_weight), GRAD(model, block->fc1_bias),
                                 d_fc_pre, block->ln2_out + row0 * dim, block->fc1_weight, rows,
                                 dim, mlp_dim);
        cm_layers_layernorm_backward(d_res, GRAD(model, block->ln2_gamma),
                                     GRAD(model, block->ln2_beta), d_ln, block->x_mid + row0 * dim,
                                     block->ln2_gamma, block->ln2_mean + row0,
                                     block->ln2_rstd + row0, rows, dim);
        /* Attention branch: x_mid = x_in + proj(attention(qkv(ln1(x_in)))); the masked
         * probabilities saved in att are 0, so the same backward serves the masked trunk. */
        memset(d_attn, 0, row_bytes * (size_t)dim);
        cm_layers_dense_backward(d_attn, GRAD(model, block->proj_weight),
                                 GRAD(model, block->proj_bias), d_res, block->attn_out + row0 * dim,
                                 block->proj_weight, rows, dim, dim);
        memset(d_qkv, 0, row_bytes * 3 * (size_t)dim);
        cm_layers_attention_backward(d_qkv, model->att_scratch, d_attn, block->qkv + row0 * 3 * dim,
                                     block->att + att0, count, tokens, dim, heads);
        memset(d_ln, 0, row_bytes * (size_t)dim);
        cm_layers_dense_backward(d_ln, GRAD(model, block->qkv_weight), GRAD(model, block->qkv_bias),
                                 d_qkv, block->ln1_out + row0 * dim, block->qkv_weight, rows, dim,
                                 3 * dim);
        cm_layers_layernorm_backward(
            d_res, GRAD(model, block->ln1_gamma), GRAD(model, block->ln1_beta), d_ln, block_input,
            block->ln1_gamma, block->ln1_mean + row0, block->ln1_rstd + row0, rows, dim);
    }
}

/* Backward of the trunk; leaves the gradient of x0[batch][tokens][dim] in d_res.  Chunks of
 * examples as the forward (see TRUNK_CHUNK_ROWS), after the head, which sees the whole batch. */
static void transformer_backward(cm_model_t *model, const float *d_logits, const float *d_hidden,
                                 int batch, const unsigned char *valid) {
    const cm_model_spec_t *spec = &model->spec;
    int dim = spec->dim;
    memset(model->d_pooled, 0, sizeof(float) * (size_t)batch * (size_t)dim);
    cm_layers_dense_backward(model->d_pooled, GRAD(model, model->head_weight),
                             GRAD(model, model->head_bias), d_logits, model->pooled,
                             model->head_weight, batch, dim, spec->classes);
    if (d_hidden) add_into(model->d_pooled, d_hidden, batch * dim);
    int chunk = trunk_chunk_examples(model);
    for (int start = 0; start < batch; start += chunk)
        transformer_backward_chunk(model, start, batch - start < chunk ? batch - start : chunk,
                                   valid);
}

static void vit_backward(cm_model_t *model, const float *d_logits, const float *d_hidden,
                         int batch) {
    const cm_model_spec_t *spec = &model->spec;
    transformer_backward(model, d_logits, d_hidden, batch, NULL);
    cm_layers_patch_embed_backward(GRAD(model, model->patch_weight), GRAD(model, model->patch_bias),
                                   GRAD(model, model->cls), GRAD(model, model->pos), model->d_res,
                                   model->patches, batch, model->num_patches, spec->patch,
                                   spec->dim);
}

static void tok_backward(cm_model_t *model, const float *d_logits, const float *d_hidden,
                         int batch) {
    int dim = model->spec.dim, tokens = model->tokens;
    transformer_backward(model, d_logits, d_hidden, batch, model->valid);
    cm_layers_embedding_backward(GRAD(model, model->token_table), model->d_res, dim, model->ids, 1,
                                 batch * tokens, dim);
    for (int example = 0; example < batch; example++)
        add_into(GRAD(model, model->pos),
                 model->d_res + (size_t)example * (size_t)tokens * (size_t)dim, tokens * dim);
}

/* Backward of cnn_forward: the dense stack into d_gap, then every stage from the last, the
 * map gradient moving between the two ping-pong buffers (each step writes the other one). */
static void cnn_backward(cm_model_t *model, const float *d_logits, const float *d_hidden,
                         int batch) {
    const cm_model_spec_t *spec = &model->spec;
    const cnn_stage_t *last = &model->stages[spec->stages - 1];
    int last_channels = last->out_channels;
    float *d_map = model->d_map_a, *d_next = model->d_map_b, *swap;
    size_t last_count =
        (size_t)batch * (size_t)last_channels * (size_t)last->out_height * (size_t)last->out_width;
    memset(d_map, 0, sizeof(float) * last_count);
    if (spec->flatten) {
        mlp_backward(model, model->head_input, d_map, d_logits, d_hidden, batch);
    } else {
        memset(model->d_gap, 0, sizeof(float) * (size_t)batch * (size_t)last_channels);
        mlp_backward(model, model->gap, model->d_gap, d_logits, d_hidden, batch);
        cm_layers_global_avg_pool_backward(d_map, model->d_gap, batch, last_channels,
                                           last->out_height * last->out_width);
    }
    for (int index = spec->stages - 1; index >= 0; index--) {
        cnn_stage_t *stage = &model->stages[index];
        int channels = stage->out_channels, plane = stage->height * stage->width;
        size_t map_bytes = sizeof(float) * (size_t)batch * (size_t)channels * (size_t)plane;
        if (stage->pooled) { /* d_map: gradient of the pooled map -> of relu_out */
            memset(d_next, 0, map_bytes);
            cm_layers_maxpool2x2_backward(d_next, d_map, stage->argmax, batch * channels,
                                          stage->height, stage->width);
            swap = d_map, d_map = d_next, d_next = swap;
        }
        memset(d_next, 0, map_bytes); /* relu_out's gradient -> conv_out's (fused ReLU + BN) */
        if (model->training)
            cm_layers_batchnorm_train_backward(d_next, GRAD(model, stage->bn_gamma),
                                               GRAD(model, stage->bn_beta), d_map, stage->relu_out,
                                               stage->conv_out, stage->bn_gamma, stage->mean,
                                               stage->rstd, batch, channels, plane);
        else
            cm_layers_batchnorm_eval_backward(d_next, GRAD(model, stage->bn_gamma),
                                              GRAD(model, stage->bn_beta), d_map, stage->relu_out,
                                              stage->conv_out, stage->bn_gamma, stage->running_mean,
                                              stage->running_var, batch, channels, plane);
        swap = d_map, d_map = d_next, d_next = swap;
        /* -> gradient of the stage's input map (not needed for the images) */
        float *d_input = NULL;
        if (index > 0) {
            d_input = d_next;
            memset(d_input, 0,
                   sizeof(float) * (size_t)batch * (size_t)stage->in_channels * (size_t)plane);
        }
        const float *stage_input = index == 0 ? model->last_input
                                   : model->stages[index - 1].pooled
                                       ? model->stages[index - 1].pooled
                                       : model->stages[index - 1].relu_out;
        cm_layers_conv2d_backward(d_input, GRAD(model, stage->conv_weight), NULL, model->cols,
                                  d_map, stage_input, stage->conv_weight, batch, stage->in_channels,
                                  stage->height, stage->width, channels, spec->kernel, 1,
                                  spec->kernel / 2);
        swap = d_map, d_map = d_next, d_next = swap;
    }
}

void cm_model_backward(cm_model_t *model, const float *d_logits, const float *d_hidden, int batch) {
    assert(batch == model->last_batch);
    switch (model->spec.kind) {
    case CM_MODEL_MLP:
        mlp_backward(model, model->last_input, NULL, d_logits, d_hidden, batch);
        break;
    case CM_MODEL_EMB:
        emb_backward(model, d_logits, d_hidden, batch);
        break;
    case CM_MODEL_VIT:
        vit_backward(model, d_logits, d_hidden, batch);
        break;
    case CM_MODEL_TOK:
        tok_backward(model, d_logits, d_hidden, batch);
        break;
    case CM_MODEL_CNN:
        cnn_backward(model, d_logits, d_hidden, batch);
        break;
    }
}

void cm_model_zero_grads(cm_model_t *model) {
    memset(model->grads, 0, sizeof(float) * model->param_count);
}

void cm_model_adamw_step(cm_model_t *model, float *m, float *v, const cm_adamw_config_t *config,
                         long step) {
    for (int index = 0; index < model->tensor_count; index++) {
        const param_entry_t *entry = &model->tensors[index];
        if (entry->buffer) continue; /* running statistics are not trained */
        cm_adamw_update(model->params + entry->offset, model->grads + entry->offset,
                        m + entry->offset, v + entry->offset, entry->count, config, step,
                        entry->decay);
    }
}

/* ---------------------------------------------------------------- checkpoints */

cm_status_t cm_model_save(const cm_model_t *model, const char *path, const char *const *metadata,
                          int pairs) {
    enum { MAX_PAIRS = 32 };
    if (pairs > MAX_PAIRS - 1)
        return cm_fail(CM_ERR_INVALID_ARG, "too many metadata entries for %s", path);
    cm_tensor_t *tensors = calloc((size_t)model->tensor_count, sizeof *tensors);
    if (!tensors) return cm_fail(CM_ERR_NOMEM, "out of memory saving %s", path);
    for (int index = 0; index < model->tensor_count; index++)
        tensors[index] = cm_model_tensor(model, index);
    char spec_text[CM_MODEL_SPEC_MAX];
    cm_model_spec_format(&model->spec, spec_text, sizeof spec_text);
    const char *all_metadata[2 * MAX_PAIRS];
    all_metadata[0] = "model";
    all_metadata[1] = spec_text;
    for (int index = 0; index < 2 * pairs; index++) all_metadata[2 + index] = metadata[index];
    cm_status_t status =
        cm_safetensors_write(path, tensors, model->tensor_count, all_metadata, pairs + 1);
    free(tensors);
    return status;
}

cm_status_t cm_model_load(const char *path, int max_batch, cm_model_t **out,
                          cm_safetensors_t **metadata_out) {
    *out = NULL;
    if (metadata_out) *metadata_out = NULL;
    cm_safetensors_t *file = NULL;
    cm_model_t *model = NULL;
    cm_status_t status = cm_safetensors_read(&file, path);
    if (status != CM_OK) return status;
    const char *spec_text = cm_safetensors_metadata(file, "model");
    cm_model_spec_t spec;
    if (!spec_text) {
        status = cm_fail(CM_ERR_FORMAT,
                         "%s: no \"model\" entry in __metadata__; not a committee "
                         "checkpoint",
                         path);
        goto fail;
    }
    status = cm_model_spec_parse(spec_text, &spec);
    if (status != CM_OK) {
        status =
            cm_fail(CM_ERR_FORMAT, "%s: bad model spec in metadata: %s", path, cm_last_error());
        goto fail;
    }
    status = cm_model_new(&spec, max_batch, &model);
    if (status != CM_OK) goto fail;
    if (cm_safetensors_count(file) != model->tensor_count) {
        status = cm_fail(CM_ERR_FORMAT, "%s: holds %d tensors, model '%s' has %d", path,
                         cm_safetensors_count(file), spec_text, model->tensor_count);
        goto fail;
    }
    for (int index = 0; index < model->tensor_count; index++) {
        const param_entry_t *entry = &model->tensors[index];
        const cm_tensor_t *stored = cm_safetensors_find(file, entry->name);
        if (!stored) {
            status = cm_fail(CM_ERR_FORMAT, "%s: tensor '%s' is missing", path, entry->name);
            goto fail;
        }
        int shape_ok = stored->dtype == CM_DTYPE_F32 && stored->ndim == entry->ndim;
        for (int axis = 0; shape_ok && axis < entry->ndim; axis++)
            shape_ok = stored->shape[axis] == entry->shape[axis];
        if (!shape_ok) {
            char shape_text[96];
            size_t used = 0;
            for (int axis = 0; axis < entry->ndim; axis++)
                append(shape_text, sizeof shape_text, &used, axis ? ",%lld" : "%lld",
                       (long long)entry->shape[axis]);
            status = cm_fail(CM_ERR_SHAPE, "%s: tensor '%s' should be F32 [%s] for model '%s'",
                             path, entry->name, shape_text, spec_text);
            goto fail;
        }
        memcpy(model->params + entry->offset, stored->data, sizeof(float) * entry->count);
    }
    *out = model;
    if (metadata_out)
        *metadata_out = file;
    else
        cm_safetensors_free(&file);
    return CM_OK;
fail:
    cm_model_free(&model);
    cm_safetensors_free(&file);
    return status;
}

/* ---------------------------------------------------------------- evaluation */

void cm_model_evaluate(cm_model_t *model, const float *inputs, const int32_t *labels, int count,
                       double *accuracy, double *mean_loss) {
    int features = cm_model_spec_inputs(&model->spec), classes = model->spec.classes;
    int training = model->training;
    model->training = 0;
    long correct = 0;
    double loss_sum = 0.0;
    for (int start = 0; start < count; start += model->max_batch) {
        int batch = count - start < model->max_batch ? count - start : model->max_batch;
        const float *logits =
            cm_model_forward(model, inputs + (size_t)start * (size_t)features, batch);
        for (int row = 0; row < batch; row++) {
            const float *row_logits = logits + (size_t)row * (size_t)classes;
            int best = 0;
            float max_logit = row_logits[0];
            for (int class = 1; class < classes; class ++)
                if (row_logits[class] > max_logit) max_logit = row_logits[best = class];
            double sum = 0.0;
            for (int class = 0; class < classes; class ++)
                sum += exp((double)row_logits[class] - (double)max_logit);
            int label = labels[start + row];
            loss_sum += log(sum) - ((double)row_logits[label] - (double)max_logit);
            correct += best == label;
        }
    }
    model->training = training;
    if (accuracy) *accuracy = count ? (double)correct / count : 0.0;
    if (mean_loss) *mean_loss = count ? loss_sum / count : 0.0;
}

void cm_model_evaluate_regression(cm_model_t *model, const float *inputs, const float *targets,
                                  int count, double *rmse, double *mae) {
    int features = cm_model_spec_inputs(&model->spec), outputs = model->spec.classes;
    int training = model->training;
    model->training = 0;
    double squared_sum = 0.0, absolute_sum = 0.0;
    for (int start = 0; start < count; start += model->max_batch) {
        int batch = count - start < model->max_batch ? count - start : model->max_batch;
        const float *predictions =
            cm_model_forward(model, inputs + (size_t)start * (size_t)features, batch);
        const float *batch_targets = targets + (size_t)start * (size_t)outputs;
        for (size_t index = 0; index < (size_t)batch * (size_t)outputs; index++) {
            double error = (double)predictions[index] - (double)batch_targets[index];
            squared_sum += error * error;
            absolute_sum += fabs(error);
        }
    }
    model->training = training;
    double values = (double)count * (double)outputs;
    if (rmse) *rmse = count ? sqrt(squared_sum / values) : 0.0;
    if (mae) *mae = count ? absolute_sum / values : 0.0;
}
