/*
 * cm_model: the model families of committee, built from cm_layers kernels.
 *
 *  - MLP, spec "mlp:784-256-256-10": dense layers with ReLU between them;
 *    the first width is the number of input features, the last the classes.
 *  - Small vision transformer, spec
 *    "vit:image=28x28,patch=7,dim=64,depth=2,heads=4,mlp=128,classes=10":
 *    patch embedding with a class token and learned positions, `depth`
 *    pre-norm blocks (LN, multi-head self-attention, residual; LN, GELU MLP,
 *    residual), a final LN, mean pooling over tokens, a dense head.
 *
 * Every model exposes, besides its logits, named intermediate features a
 * teacher serves: "hidden" (the penultimate vector: the last ReLU output of
 * an MLP, the pooled vector of a ViT) and, for the ViT, "tokens" (the last
 * block's token matrix, tokens x dim).
 *
 * Parameters, gradients (and the optimizer moments the caller keeps) share
 * one flat layout in one allocation each; named tensors are views into it,
 * named like PyTorch state dicts ("fc0.weight", "blocks.1.attn.qkv.weight")
 * with dense weights stored [out][in].  Activations are allocated once for
 * `max_batch` examples, so forward/backward never allocate.
 *
 * Checkpoints are safetensors files: the tensors plus __metadata__ with
 * "model" (the spec), "view", "dataset", "fingerprint" and whatever the
 * caller adds.  The model object is not thread-safe; one thread drives it.
 */
#ifndef CM_MODEL_H
#define CM_MODEL_H

#include "cm_adamw.h"
#include "cm_status.h"
#include "cm_tensor.h"

#include <stddef.h>
#include <stdint.h>

enum { CM_MODEL_MAX_LAYERS = 16, CM_MODEL_SPEC_MAX = 160 };

typedef enum { CM_MODEL_MLP, CM_MODEL_VIT } cm_model_kind_t;

typedef struct {
    cm_model_kind_t kind;
    int classes; /* output width */
    /* MLP: widths[0] inputs ... widths[layers] == classes */
    int layers;
    int widths[CM_MODEL_MAX_LAYERS + 1];
    /* ViT */
    int image_height, image_width; /* pixels */
    int patch;                     /* square patch side, divides both image sides */
    int dim;                       /* token width */
    int depth;                     /* transformer blocks */
    int heads;                     /* attention heads, divides dim */
    int mlp_dim;                   /* hidden width of each block's MLP */
} cm_model_spec_t;

/* Parses a spec string (see above); CM_ERR_INVALID_ARG with a sentence on any problem. */
cm_status_t cm_model_spec_parse(const char *text, cm_model_spec_t *spec);

/* Canonical spec string of `spec` into text[size]. */
void cm_model_spec_format(const cm_model_spec_t *spec, char *text, size_t size);

/* Number of input features per example the model expects. */
int cm_model_spec_inputs(const cm_model_spec_t *spec);

typedef struct cm_model cm_model_t;

/* Builds a model with zeroed parameters and activations for up to max_batch examples. */
cm_status_t cm_model_new(const cm_model_spec_t *spec, int max_batch, cm_model_t **out);

/* Frees the model and sets *model to NULL; NULL-safe. */
void cm_model_free(cm_model_t **model);

/* Random initialization from `seed` (He-normal for ReLU MLPs, N(0, 0.02) for the ViT). */
void cm_model_init(cm_model_t *model, uint64_t seed);

const cm_model_spec_t *cm_model_spec(const cm_model_t *model);
int cm_model_max_batch(const cm_model_t *model);

/* The flat parameter and gradient blocks (borrowed, valid for the model's life). */
float *cm_model_params(cm_model_t *model);
float *cm_model_grads(cm_model_t *model);
size_t cm_model_param_count(const cm_model_t *model);

/* Number of named parameter tensors and the index-th one as a view into the parameters. */
int cm_model_tensor_count(const cm_model_t *model);
cm_tensor_t cm_model_tensor(const cm_model_t *model, int index);

/*
 * Forward pass over inputs[batch][inputs] (batch <= max_batch).  Returns the logits
 * [batch][classes], borrowed and valid until the next forward.
 */
const float *cm_model_forward(cm_model_t *model, const float *inputs, int batch);

/*
 * A named feature of the last forward pass ("hidden" or, for the ViT, "tokens"), as
 * [batch][*per_example] floats, borrowed until the next forward; NULL if the model has
 * no such output.  For "tokens", *tokens_out (may be NULL) receives the token count.
 */
const float *cm_model_feature(const cm_model_t *model, const char *name, int *per_example,
                              int *tokens_out);

/* Names of the features the model exposes, comma-separated ("hidden" or "hidden,tokens"). */
const char *cm_model_feature_names(const cm_model_t *model);

/*
 * The dense head that maps the "hidden" feature to the logits, logits = weight . hidden + bias
 * (an MLP's last layer "fc<layers-1>", a ViT's "head"): *weight [classes][hidden] (stored
 * [out][in]) and *bias [classes], views into the parameters like cm_model_tensor's, valid for
 * the model's life.
 */
void cm_model_head(const cm_model_t *model, cm_tensor_t *weight, cm_tensor_t *bias);

/*
 * Backward pass of the last forward: ADDS the parameter gradients for d_logits
 * [batch][classes] (and, if d_hidden is not NULL, an extra gradient [batch][hidden]
 * flowing into the "hidden" feature) into cm_model_grads.  The caller zeroes the grads.
 */
void cm_model_backward(cm_model_t *model, const float *d_logits, const float *d_hidden, int batch);

/* Zeroes the gradient block. */
void cm_model_zero_grads(cm_model_t *model);

/*
 * One AdamW step over all parameters (weight decay on matrices and embeddings, not on
 * biases, norms, positions or the class token).  m and v are caller-owned moment
 * blocks of cm_model_param_count floats.
 */
void cm_model_adamw_step(cm_model_t *model, float *m, float *v, const cm_adamw_config_t *config,
                         long step);

/*
 * Saves the parameters as a safetensors checkpoint with __metadata__ "model" (the
 * spec) plus metadata[0..2*pairs) key/value pairs (e.g. "view", "dataset",
 * "fingerprint").  Atomic: the old file survives any failure.
 */
cm_status_t cm_model_save(const cm_model_t *model, const char *path, const char *const *metadata,
                          int pairs);

/*
 * Loads a checkpoint: builds the model its "model" metadata names (for up to max_batch
 * examples) and checks every tensor's presence, dtype and shape.  *metadata_out (may be
 * NULL) receives the opened file so the caller can read other metadata; the caller frees
 * it with cm_safetensors_free.
 */
struct cm_safetensors;
cm_status_t cm_model_load(const char *path, int max_batch, cm_model_t **out,
                          struct cm_safetensors **metadata_out);

/*
 * Accuracy and mean cross-entropy of the model on inputs[count][inputs] with labels,
 * in batches of the model's max_batch.  Either output may be NULL.
 */
void cm_model_evaluate(cm_model_t *model, const float *inputs, const int32_t *labels, int count,
                       double *accuracy, double *mean_loss);

#endif
