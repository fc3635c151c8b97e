/*
 * cm_model: MLP and small ViT on top of cm_layers.  See cm_model.h.
 *
 * Building a model is two-phase: every parameter tensor is first registered
 * (name, shape, weight decay or not, and the address of the pointer that will
 * point at it), then one block is allocated for all parameters and one for
 * all gradients, and the registered pointers are filled in.  Activations are
 * allocated per buffer for max_batch examples and owned by the model.
 */
#include "cm_model.h"

#include "cm_alloc.h"
#include "cm_layers.h"
#include "cm_loss.h"
#include "cm_rng.h"
#include "cm_safetensors.h"

#include <assert.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { MAX_TENSORS = 256, MAX_BUFFERS = 512, MAX_VIT_DEPTH = 24 };

typedef struct {
    char name[CM_TENSOR_MAX_NAME];
    int ndim;
    int64_t shape[2];
    size_t offset;  /* in floats, into params and grads */
    size_t count;   /* floats */
    int decay;      /* 1: AdamW weight decay applies */
    float init_std; /* N(0, init_std); 0 with init_one: filled with 1 */
    int init_one;
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

struct cm_model {
    cm_model_spec_t spec;
    int max_batch;
    int tensor_count;
    param_entry_t tensors[MAX_TENSORS];
    size_t param_count;
    float *params, *grads;
    int buffer_count;
    float *buffers[MAX_BUFFERS]; /* every activation/scratch allocation, for freeing */
    const float *last_input;     /* borrowed from the last forward */
    int last_batch;

    /* MLP */
    float *dense_weight[CM_MODEL_MAX_LAYERS], *dense_bias[CM_MODEL_MAX_LAYERS];
    float *pre[CM_MODEL_MAX_LAYERS], *act[CM_MODEL_MAX_LAYERS];
    float *scratch_a, *scratch_b;

    /* ViT */
    int tokens, num_patches;
    float *patch_weight, *patch_bias, *cls, *pos, *lnf_gamma, *lnf_beta, *head_weight, *head_bias;
    vit_block_t blocks[MAX_VIT_DEPTH];
    float *patches, *x0, *lnf_out, *lnf_mean, *lnf_rstd, *pooled, *logits;
    float *d_pooled, *d_ln, *d_res, *d_attn, *d_qkv, *d_fc_act, *d_fc_pre, *att_scratch;
};

/* ---------------------------------------------------------------- spec */

static cm_status_t parse_positive(const char *text, const char *what, int max, int *out) {
    char *end = NULL;
    long value = strtol(text, &end, 10);
    if (end == text || value < 1 || value > max)
        return cm_fail(CM_ERR_INVALID_ARG, "model spec: %s must be an integer in 1..%d, got '%s'",
                       what, max, text);
    *out = (int)value;
    return CM_OK;
}

static cm_status_t parse_mlp(const char *text, cm_model_spec_t *spec) {
    char copy[CM_MODEL_SPEC_MAX];
    snprintf(copy, sizeof copy, "%s", text);
    int count = 0;
    char *save = NULL;
    for (char *piece = strtok_r(copy, "-", &save); piece; piece = strtok_r(NULL, "-", &save)) {
        if (count > CM_MODEL_MAX_LAYERS)
            return cm_fail(CM_ERR_INVALID_ARG, "model spec 'mlp:%s': at most %d layers", text,
                           CM_MODEL_MAX_LAYERS);
        cm_status_t status = parse_positive(piece, "an MLP width", 1 << 16, &spec->widths[count]);
        if (status != CM_OK) return status;
        count++;
    }
    if (count < 3)
        return cm_fail(CM_ERR_INVALID_ARG,
                       "model spec 'mlp:%s': give inputs, at least one hidden width and the "
                       "classes, e.g. mlp:784-256-10",
                       text);
    spec->kind = CM_MODEL_MLP;
    spec->layers = count - 1;
    spec->classes = spec->widths[count - 1];
    return CM_OK;
}

static cm_status_t parse_vit(const char *text, cm_model_spec_t *spec) {
    spec->kind = CM_MODEL_VIT;
    spec->image_height = spec->image_width = 28;
    spec->patch = 7;
    spec->dim = 64;
    spec->depth = 2;
    spec->heads = 4;
    spec->mlp_dim = 0;
    spec->classes = 10;
    char copy[CM_MODEL_SPEC_MAX];
    snprintf(copy, sizeof copy, "%s", text);
    char *save = NULL;
    for (char *piece = strtok_r(copy, ",", &save); piece; piece = strtok_r(NULL, ",", &save)) {
        char *equals = strchr(piece, '=');
        if (!equals)
            return cm_fail(CM_ERR_INVALID_ARG, "model spec 'vit:%s': expected key=value, got '%s'",
                           text, piece);
        *equals = '\0';
        const char *key = piece, *value = equals + 1;
        cm_status_t status = CM_OK;
        if (strcmp(key, "image") == 0) {
            char *cross = strchr(value, 'x');
            if (!cross)
                return cm_fail(CM_ERR_INVALID_ARG, "model spec: image must be HxW, got '%s'",
                               value);
            *cross = '\0';
            status = parse_positive(value, "image height", 4096, &spec->image_height);
            if (status == CM_OK)
                status = parse_positive(cross + 1, "image width", 4096, &spec->image_width);
        } else if (strcmp(key, "patch") == 0) {
            status = parse_positive(value, "patch", 4096, &spec->patch);
        } else if (strcmp(key, "dim") == 0) {
            status = parse_positive(value, "dim", 1 << 14, &spec->dim);
        } else if (strcmp(key, "depth") == 0) {
            status = parse_positive(value, "depth", MAX_VIT_DEPTH, &spec->depth);
        } else if (strcmp(key, "heads") == 0) {
            status = parse_positive(value, "heads", 256, &spec->heads);
        } else if (strcmp(key, "mlp") == 0) {
            status = parse_positive(value, "mlp", 1 << 16, &spec->mlp_dim);
        } else if (strcmp(key, "classes") == 0) {
            status = parse_positive(value, "classes", 1 << 16, &spec->classes);
        } else {
            return cm_fail(CM_ERR_INVALID_ARG,
                           "model spec: unknown ViT key '%s' (known: image, patch, dim, depth, "
                           "heads, mlp, classes)",
                           key);
        }
        if (status != CM_OK) return status;
    }
    if (spec->mlp_dim == 0) spec->mlp_dim = 2 * spec->dim;
    if (spec->image_height % spec->patch || spec->image_width % spec->patch)
        return cm_fail(CM_ERR_INVALID_ARG, "model spec: patch %d does not divide the %dx%d image",
                       spec->patch, spec->image_height, spec->image_width);
    if (spec->dim % spec->heads)
        return cm_fail(CM_ERR_INVALID_ARG, "model spec: heads %d does not divide dim %d",
                       spec->heads, spec->dim);
    return CM_OK;
}

cm_status_t cm_model_spec_parse(const char *text, cm_model_spec_t *spec) {
    memset(spec, 0, sizeof *spec);
    if (strlen(text) >= CM_MODEL_SPEC_MAX)
        return cm_fail(CM_ERR_INVALID_ARG, "model spec is longer than %d characters",
                       CM_MODEL_SPEC_MAX - 1);
    if (strncmp(text, "mlp:", 4) == 0) return parse_mlp(text + 4, spec);
    if (strncmp(text, "vit:", 4) == 0) return parse_vit(text + 4, spec);
    if (strcmp(text, "vit") == 0) return parse_vit("", spec);
    return cm_fail(CM_ERR_INVALID_ARG,
                   "model spec '%s' is neither 'mlp:IN-HIDDEN-...-CLASSES' nor "
                   "'vit:image=HxW,patch=P,dim=D,depth=L,heads=H,mlp=M,classes=C'",
                   text);
}

void cm_model_spec_format(const cm_model_spec_t *spec, char *text, size_t size) {
    if (spec->kind == CM_MODEL_MLP) {
        size_t used = (size_t)snprintf(text, size, "mlp:");
        for (int layer = 0; layer <= spec->layers && used < size; layer++)
            used += (size_t)snprintf(text + used, size - used, layer ? "-%d" : "%d",
                                     spec->widths[layer]);
        return;
    }
    snprintf(text, size, "vit:image=%dx%d,patch=%d,dim=%d,depth=%d,heads=%d,mlp=%d,classes=%d",
             spec->image_height, spec->image_width, spec->patch, spec->dim, spec->depth,
             spec->heads, spec->mlp_dim, spec->classes);
}

int cm_model_spec_inputs(const cm_model_spec_t *spec) {
    return spec->kind == CM_MODEL_MLP ? spec->widths[0] : spec->image_height * spec->image_width;
}

/* ---------------------------------------------------------------- building */

static void add_param(cm_model_t *model, float **slot, const char *name, int rows, int cols,
                      int decay, float init_std, int init_one) {
    assert(model->tensor_count < MAX_TENSORS);
    param_entry_t *entry = &model->tensors[model->tensor_count++];
    snprintf(entry->name, sizeof entry->name, "%s", name);
    entry->ndim = cols > 0 ? 2 : 1;
    entry->shape[0] = rows;
    entry->shape[1] = cols;
    entry->count = (size_t)rows * (size_t)(cols > 0 ? cols : 1);
    entry->offset = model->param_count;
    entry->decay = decay;
    entry->init_std = init_std;
    entry->init_one = init_one;
    entry->slot = slot;
    /* Keep every tensor 16-float (64-byte) aligned inside the block. */
    model->param_count += (entry->count + 15) / 16 * 16;
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

static void register_vit(cm_model_t *model) {
    const cm_model_spec_t *spec = &model->spec;
    int dim = spec->dim, patch_area = spec->patch * spec->patch;
    float std = 0.02f, residual_std = 0.02f / sqrtf(2.0f * (float)spec->depth);
    add_dense(model, &model->patch_weight, &model->patch_bias, "patch_embed", patch_area, dim,
              sqrtf(1.0f / (float)patch_area));
    add_param(model, &model->cls, "cls_token", dim, 0, 0, std, 0);
    add_param(model, &model->pos, "pos_embed", model->tokens, dim, 0, std, 0);
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

static int alloc_vit_activations(cm_model_t *model) {
    const cm_model_spec_t *spec = &model->spec;
    size_t rows = (size_t)model->max_batch * (size_t)model->tokens;
    size_t dim = (size_t)spec->dim, mlp_dim = (size_t)spec->mlp_dim;
    size_t att = (size_t)model->max_batch * (size_t)spec->heads * (size_t)model->tokens *
                 (size_t)model->tokens;
    model->patches = new_buffer(model, (size_t)model->max_batch * (size_t)model->num_patches *
                                           (size_t)(spec->patch * spec->patch));
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
           model->pooled && model->lnf_rstd && model->lnf_mean && model->lnf_out && model->x0 &&
           model->patches;
}

cm_status_t cm_model_new(const cm_model_spec_t *spec, int max_batch, cm_model_t **out) {
    *out = NULL;
    if (max_batch < 1) return cm_fail(CM_ERR_INVALID_ARG, "batch size must be at least 1");
    cm_model_t *model = calloc(1, sizeof *model);
    if (!model) return cm_fail(CM_ERR_NOMEM, "out of memory building a model");
    model->spec = *spec;
    model->max_batch = max_batch;
    int activations_ok;
    if (spec->kind == CM_MODEL_MLP) {
        register_mlp(model);
    } else {
        model->num_patches = (spec->image_height / spec->patch) * (spec->image_width / spec->patch);
        model->tokens = 1 + model->num_patches;
        register_vit(model);
    }
    model->params = cm_alloc_floats(model->param_count);
    model->grads = cm_alloc_floats(model->param_count);
    if (!model->params || !model->grads) goto fail;
    for (int index = 0; index < model->tensor_count; index++)
        *model->tensors[index].slot = model->params + model->tensors[index].offset;
    activations_ok =
        spec->kind == CM_MODEL_MLP ? alloc_mlp_activations(model) : alloc_vit_activations(model);
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
int cm_model_max_batch(const cm_model_t *model) { return model->max_batch; }
float *cm_model_params(cm_model_t *model) { return model->params; }
float *cm_model_grads(cm_model_t *model) { return model->grads; }
size_t cm_model_param_count(const cm_model_t *model) { return model->param_count; }
int cm_model_tensor_count(const cm_model_t *model) { return model->tensor_count; }

cm_tensor_t cm_model_tensor(const cm_model_t *model, int index) {
    const param_entry_t *entry = &model->tensors[index];
    cm_tensor_t tensor = {.dtype = CM_DTYPE_F32, .ndim = entry->ndim};
    snprintf(tensor.name, sizeof tensor.name, "%s", entry->name);
    tensor.shape[0] = entry->shape[0];
    tensor.shape[1] = entry->shape[1];
    tensor.data = model->params + entry->offset;
    return tensor;
}

/* ---------------------------------------------------------------- forward */

static const float *mlp_forward(cm_model_t *model, const float *inputs, int batch) {
    const cm_model_spec_t *spec = &model->spec;
    const float *layer_input = inputs;
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

static const float *vit_forward(cm_model_t *model, const float *inputs, int batch) {
    const cm_model_spec_t *spec = &model->spec;
    int dim = spec->dim, rows = batch * model->tokens;
    cm_layers_patch_embed_forward(model->x0, model->patches, inputs, model->patch_weight,
                                  model->patch_bias, model->cls, model->pos, batch,
                                  spec->image_height, spec->image_width, spec->patch, dim);
    const float *residual = model->x0;
    for (int depth = 0; depth < spec->depth; depth++) {
        vit_block_t *block = &model->blocks[depth];
        cm_layers_layernorm_forward(block->ln1_out, block->ln1_mean, block->ln1_rstd, residual,
                                    block->ln1_gamma, block->ln1_beta, rows, dim);
        cm_layers_dense_forward(block->qkv, block->ln1_out, block->qkv_weight, block->qkv_bias,
                                rows, dim, 3 * dim);
        cm_layers_attention_forward(block->attn_out, block->att, block->qkv, batch, model->tokens,
                                    dim, spec->heads);
        cm_layers_dense_forward(block->x_mid, block->attn_out, block->proj_weight, block->proj_bias,
                                rows, dim, dim);
        cm_layers_add_forward(block->x_mid, block->x_mid, residual, rows * dim);
        cm_layers_layernorm_forward(block->ln2_out, block->ln2_mean, block->ln2_rstd, block->x_mid,
                                    block->ln2_gamma, block->ln2_beta, rows, dim);
        cm_layers_dense_forward(block->fc1_pre, block->ln2_out, block->fc1_weight, block->fc1_bias,
                                rows, dim, spec->mlp_dim);
        cm_layers_gelu_forward(block->fc1_act, block->fc1_pre, rows * spec->mlp_dim);
        cm_layers_dense_forward(block->x_out, block->fc1_act, block->fc2_weight, block->fc2_bias,
                                rows, spec->mlp_dim, dim);
        cm_layers_add_forward(block->x_out, block->x_out, block->x_mid, rows * dim);
        residual = block->x_out;
    }
    cm_layers_layernorm_forward(model->lnf_out, model->lnf_mean, model->lnf_rstd, residual,
                                model->lnf_gamma, model->lnf_beta, rows, dim);
    cm_layers_mean_pool_forward(model->pooled, model->lnf_out, batch, model->tokens, dim);
    cm_layers_dense_forward(model->logits, model->pooled, model->head_weight, model->head_bias,
                            batch, dim, spec->classes);
    return model->logits;
}

const float *cm_model_forward(cm_model_t *model, const float *inputs, int batch) {
    assert(batch >= 1 && batch <= model->max_batch);
    model->last_input = inputs;
    model->last_batch = batch;
    return model->spec.kind == CM_MODEL_MLP ? mlp_forward(model, inputs, batch)
                                            : vit_forward(model, inputs, batch);
}

static const float *vit_last_tokens(const cm_model_t *model) {
    return model->spec.depth > 0 ? model->blocks[model->spec.depth - 1].x_out : model->x0;
}

const float *cm_model_feature(const cm_model_t *model, const char *name, int *per_example,
                              int *tokens_out) {
    const cm_model_spec_t *spec = &model->spec;
    if (tokens_out) *tokens_out = 1;
    if (strcmp(name, "hidden") == 0) {
        if (spec->kind == CM_MODEL_MLP) {
            *per_example = spec->widths[spec->layers - 1];
            return model->act[spec->layers - 2];
        }
        *per_example = spec->dim;
        return model->pooled;
    }
    if (strcmp(name, "tokens") == 0 && spec->kind == CM_MODEL_VIT) {
        *per_example = model->tokens * spec->dim;
        if (tokens_out) *tokens_out = model->tokens;
        return vit_last_tokens(model);
    }
    return NULL;
}

const char *cm_model_feature_names(const cm_model_t *model) {
    return model->spec.kind == CM_MODEL_MLP ? "hidden" : "hidden,tokens";
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
    int mlp = spec->kind == CM_MODEL_MLP;
    *weight = tensor_of_slot(model, mlp ? &model->dense_weight[last] : &model->head_weight);
    *bias = tensor_of_slot(model, mlp ? &model->dense_bias[last] : &model->head_bias);
}

/* ---------------------------------------------------------------- backward */

#define GRAD(model, param) ((model)->grads + ((param) - (model)->params))

static void add_into(float *target, const float *source, int count) {
    for (int index = 0; index < count; index++) target[index] += source[index];
}

static void mlp_backward(cm_model_t *model, const float *d_logits, const float *d_hidden,
                         int batch) {
    const cm_model_spec_t *spec = &model->spec;
    int last = spec->layers - 1;
    /* scratch_a holds the gradient of the current layer's output activation. */
    float *d_act = model->scratch_a, *d_pre = model->scratch_b;
    int hidden_width = spec->widths[last];
    memset(d_act, 0, sizeof(float) * (size_t)batch * (size_t)hidden_width);
    cm_layers_dense_backward(d_act, GRAD(model, model->dense_weight[last]),
                             GRAD(model, model->dense_bias[last]), d_logits, model->act[last - 1],
                             model->dense_weight[last], batch, hidden_width, spec->classes);
    if (d_hidden) add_into(d_act, d_hidden, batch * hidden_width);
    for (int layer = last - 1; layer >= 0; layer--) {
        int in_dim = spec->widths[layer], out_dim = spec->widths[layer + 1];
        memset(d_pre, 0, sizeof(float) * (size_t)batch * (size_t)out_dim);
        cm_layers_relu_backward(d_pre, d_act, model->pre[layer], batch * out_dim);
        const float *layer_input = layer == 0 ? model->last_input : model->act[layer - 1];
        float *d_input = NULL;
        if (layer > 0) {
            d_input = d_act; /* d_act was consumed by the ReLU backward above */
            memset(d_input, 0, sizeof(float) * (size_t)batch * (size_t)in_dim);
        }
        cm_layers_dense_backward(d_input, GRAD(model, model->dense_weight[layer]),
                                 GRAD(model, model->dense_bias[layer]), d_pre, layer_input,
                                 model->dense_weight[layer], batch, in_dim, out_dim);
    }
}

static void vit_backward(cm_model_t *model, const float *d_logits, const float *d_hidden,
                         int batch) {
    const cm_model_spec_t *spec = &model->spec;
    int dim = spec->dim, mlp_dim = spec->mlp_dim, tokens = model->tokens;
    int rows = batch * tokens;
    size_t row_bytes = sizeof(float) * (size_t)rows;

    memset(model->d_pooled, 0, sizeof(float) * (size_t)batch * (size_t)dim);
    cm_layers_dense_backward(model->d_pooled, GRAD(model, model->head_weight),
                             GRAD(model, model->head_bias), d_logits, model->pooled,
                             model->head_weight, batch, dim, spec->classes);
    if (d_hidden) add_into(model->d_pooled, d_hidden, batch * dim);
    memset(model->d_ln, 0, row_bytes * (size_t)dim);
    cm_layers_mean_pool_backward(model->d_ln, model->d_pooled, batch, tokens, dim);
    /* d_res: gradient of the residual stream, walked back through the blocks in place. */
    memset(model->d_res, 0, row_bytes * (size_t)dim);
    cm_layers_layernorm_backward(model->d_res, GRAD(model, model->lnf_gamma),
                                 GRAD(model, model->lnf_beta), model->d_ln, vit_last_tokens(model),
                                 model->lnf_gamma, model->lnf_mean, model->lnf_rstd, rows, dim);
    for (int depth = spec->depth - 1; depth >= 0; depth--) {
        vit_block_t *block = &model->blocks[depth];
        const float *block_input = depth == 0 ? model->x0 : model->blocks[depth - 1].x_out;
        /* MLP branch: x_out = x_mid + fc2(gelu(fc1(ln2(x_mid)))) */
        memset(model->d_fc_act, 0, row_bytes * (size_t)mlp_dim);
        cm_layers_dense_backward(model->d_fc_act, GRAD(model, block->fc2_weight),
                                 GRAD(model, block->fc2_bias), model->d_res, block->fc1_act,
                                 block->fc2_weight, rows, mlp_dim, dim);
        memset(model->d_fc_pre, 0, row_bytes * (size_t)mlp_dim);
        cm_layers_gelu_backward(model->d_fc_pre, model->d_fc_act, block->fc1_pre, rows * mlp_dim);
        memset(model->d_ln, 0, row_bytes * (size_t)dim);
        cm_layers_dense_backward(model->d_ln, GRAD(model, block->fc1_weight),
                                 GRAD(model, block->fc1_bias), model->d_fc_pre, block->ln2_out,
                                 block->fc1_weight, rows, dim, mlp_dim);
        cm_layers_layernorm_backward(model->d_res, GRAD(model, block->ln2_gamma),
                                     GRAD(model, block->ln2_beta), model->d_ln, block->x_mid,
                                     block->ln2_gamma, block->ln2_mean, block->ln2_rstd, rows, dim);
        /* Attention branch: x_mid = x_in + proj(attention(qkv(ln1(x_in)))) */
        memset(model->d_attn, 0, row_bytes * (size_t)dim);
        cm_layers_dense_backward(model->d_attn, GRAD(model, block->proj_weight),
                                 GRAD(model, block->proj_bias), model->d_res, block->attn_out,
                                 block->proj_weight, rows, dim, dim);
        memset(model->d_qkv, 0, row_bytes * 3 * (size_t)dim);
        cm_layers_attention_backward(model->d_qkv, model->att_scratch, model->d_attn, block->qkv,
                                     block->att, batch, tokens, dim, spec->heads);
        memset(model->d_ln, 0, row_bytes * (size_t)dim);
        cm_layers_dense_backward(model->d_ln, GRAD(model, block->qkv_weight),
                                 GRAD(model, block->qkv_bias), model->d_qkv, block->ln1_out,
                                 block->qkv_weight, rows, dim, 3 * dim);
        cm_layers_layernorm_backward(model->d_res, GRAD(model, block->ln1_gamma),
                                     GRAD(model, block->ln1_beta), model->d_ln, block_input,
                                     block->ln1_gamma, block->ln1_mean, block->ln1_rstd, rows, dim);
    }
    cm_layers_patch_embed_backward(GRAD(model, model->patch_weight), GRAD(model, model->patch_bias),
                                   GRAD(model, model->cls), GRAD(model, model->pos), model->d_res,
                                   model->patches, batch, model->num_patches, spec->patch, dim);
}

void cm_model_backward(cm_model_t *model, const float *d_logits, const float *d_hidden, int batch) {
    assert(batch == model->last_batch);
    if (model->spec.kind == CM_MODEL_MLP)
        mlp_backward(model, d_logits, d_hidden, batch);
    else
        vit_backward(model, d_logits, d_hidden, batch);
}

void cm_model_zero_grads(cm_model_t *model) {
    memset(model->grads, 0, sizeof(float) * model->param_count);
}

void cm_model_adamw_step(cm_model_t *model, float *m, float *v, const cm_adamw_config_t *config,
                         long step) {
    for (int index = 0; index < model->tensor_count; index++) {
        const param_entry_t *entry = &model->tensors[index];
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
        int shape_ok = stored->dtype == CM_DTYPE_F32 && stored->ndim == entry->ndim &&
                       stored->shape[0] == entry->shape[0] &&
                       (entry->ndim == 1 || stored->shape[1] == entry->shape[1]);
        if (!shape_ok) {
            status =
                cm_fail(CM_ERR_SHAPE, "%s: tensor '%s' should be F32 [%lld%s%lld] for model '%s'",
                        path, entry->name, (long long)entry->shape[0], entry->ndim == 2 ? "," : "",
                        entry->ndim == 2 ? (long long)entry->shape[1] : 0LL, spec_text);
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
    if (accuracy) *accuracy = count ? (double)correct / count : 0.0;
    if (mean_loss) *mean_loss = count ? loss_sum / count : 0.0;
}
