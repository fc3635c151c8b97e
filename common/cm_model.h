/*
 * cm_model: the model families of committee, built from cm_layers kernels.
 *
 * A model is described by a spec string "FAMILY:..." that is stored in its
 * checkpoint.  Parsing is strict: every number is a whole decimal number in
 * its range, nothing is left over, no field is empty or given twice, and an
 * unknown key is named; cm_model_spec_format gives the canonical string
 * (every key, fixed order), and parse(format(spec)) == spec.
 *
 *  - MLP, spec "mlp:784-256-256-10": dense layers with ReLU between them;
 *    the first width is the number of input features (any dense view,
 *    flattened), the last the output width (classes, or regression targets).
 *  - Small vision transformer, spec
 *    "vit:image=28x28,patch=7,dim=64,depth=2,heads=4,mlp=128,classes=10":
 *    patch embedding with a class token and learned positions, `depth`
 *    pre-norm blocks (LN, multi-head self-attention, residual; LN, GELU MLP,
 *    residual), a final LN, mean pooling over tokens, a dense head.  Every
 *    key has a default (those shown, mlp = 2*dim); "vit" alone is valid.
 *  - Embedding model over categorical columns (a recommender-style student or
 *    complementary teacher), spec "emb:cards=671x9066,dim=32,mlp=128-64,out=1":
 *    one embedding table of `dim` per column (cards lists each column's
 *    cardinality, 'x'-separated, 1..64 columns), the looked-up rows
 *    concatenated (columns*dim), then an MLP with ReLU through the '-'-separated
 *    hidden widths to `out` outputs.  cards and out are required; dim
 *    defaults to 32, mlp to 128.
 *  - Token model (a text foundation teacher), spec
 *    "tok:len=64,vocab=20000,dim=64,depth=2,heads=4,mlp=128,pad=0,out=1":
 *    token embedding plus learned positions, the ViT's pre-norm blocks with a
 *    padding mask (keys holding the `pad` id get no attention), a final LN,
 *    mean pooling over the non-pad tokens, a dense head to `out` outputs.
 *    len, vocab and out are required; dim 64, depth 2, heads 4, mlp 2*dim
 *    and pad 0 are the defaults.  A sequence of pads only pools to zeros.
 *  - Convolutional network (a vision foundation teacher), spec
 *    "cnn:image=28x28,channels=1,conv=32-64-128,kernel=3,pool=1-1-1,head=gap,fc=256,
 *    classes=10": one stage per '-'-separated conv width, each conv (kernel x
 *    kernel, stride 1, "same" zero padding kernel/2, no bias) -> batch norm ->
 *    ReLU, then a 2x2 max pool where the stage's pool flag (0 or 1, one per
 *    stage) is 1; the last feature map is either averaged per channel
 *    (head=gap, global average pooling) or flattened in NCHW order
 *    (head=flatten, as torch.flatten(x, 1)); a dense stack with ReLU through
 *    the fc widths ("fc=0": none) to `classes` outputs.
 *    Inputs are NCHW images, channels*height*width floats per example.
 *    Every key has a default (those shown; pool defaults to 1 for every
 *    stage); "cnn" alone is valid.  kernel is odd, 1..7; a pooled map side
 *    must be at least 2 (odd sides drop their last row/column, as PyTorch).
 *
 * Inputs are always floats [batch][cm_model_spec_inputs]: features for mlp
 * and vit, category ids (one per column) for emb, token ids (len of them) for
 * tok.  Ids are whole numbers below 2^24 so floats hold them exactly; the
 * data layer validates them, cm_model_check_inputs says why a batch is bad,
 * and cm_model_forward aborts on an id outside its table (a programmer bug:
 * nothing is ever read or written out of bounds).
 *
 * Every model exposes, besides its outputs, named intermediate features a
 * teacher serves: "hidden" (the penultimate vector: the last ReLU output of
 * an MLP or emb model, the pooled vector of a ViT or tok model) and, for the
 * ViT and tok models, "tokens" (the last block's token matrix, tokens x dim).
 * The CNN's "hidden" is its last fc ReLU output (the pooled vector with fc=0)
 * and its "tokens" the last feature map as [positions][channels], position
 * y*width + x of the map, so it reads like a ViT's tokens.
 * `classes` is the output width whatever the task: for regression the caller
 * applies MSE to the outputs, and cm_model_evaluate_regression reports RMSE
 * and MAE.
 *
 * Parameters, gradients (and the optimizer moments the caller keeps) share
 * one flat layout in one allocation each; named tensors are views into it,
 * named like PyTorch state dicts ("fc0.weight", "blocks.1.attn.qkv.weight",
 * "emb.0.weight", "tok_embed.weight") with dense weights stored [out][in].
 * Activations (and the id and mask buffers of emb and tok) are allocated
 * once for `max_batch` examples, so forward/backward never allocate.
 *
 * Train and eval mode.  A new or loaded model is in eval mode (what serving and
 * evaluation want); training code calls cm_model_set_training(model, 1).  The
 * mode matters only to batch norm: training mode normalizes by the batch
 * statistics and updates the running mean and variance (momentum 0.1, as
 * PyTorch), eval mode uses the running statistics.  Running statistics are
 * buffers, not parameters: they live in the parameter block (so they are
 * saved and loaded as "stages.<s>.bn.running_mean" / ".running_var", like a
 * PyTorch state dict) but never get a gradient or an AdamW update.  Conv
 * weights are 4-D tensors [out][in][k][k], as torch.nn.Conv2d.
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

/* CM_MODEL_MAX_ID: ids (categories, tokens) are below 2^24, where floats are exact. */
enum {
    CM_MODEL_MAX_LAYERS = 16,
    CM_MODEL_MAX_COLUMNS = 64,
    CM_MODEL_MAX_ID = 1 << 24,
    CM_MODEL_MAX_STAGES = 8,
    CM_MODEL_SPEC_MAX = 1024
};

typedef enum {
    CM_MODEL_MLP,
    CM_MODEL_VIT,
    CM_MODEL_EMB,
    CM_MODEL_TOK,
    CM_MODEL_CNN
} cm_model_kind_t;

typedef struct {
    cm_model_kind_t kind;
    int classes; /* output width (classes, or regression targets) */
    /* MLP, emb and cnn: widths[0] inputs of the dense stack (emb: columns*dim; cnn: the last
     * conv width, times the last map's positions with head=flatten) ... widths[layers] ==
     * classes */
    int layers;
    int widths[CM_MODEL_MAX_LAYERS + 1];
    /* ViT and cnn */
    int image_height, image_width; /* pixels */
    int patch;                     /* square patch side, divides both image sides */
    /* ViT, tok (dim also emb) */
    int dim;     /* token width (emb: width of every embedding row) */
    int depth;   /* transformer blocks */
    int heads;   /* attention heads, divides dim */
    int mlp_dim; /* hidden width of each block's MLP */
    /* emb */
    int columns;                           /* categorical input columns */
    int cardinality[CM_MODEL_MAX_COLUMNS]; /* categories of each column, ids 0..card-1 */
    /* tok */
    int sequence_length; /* tokens per example */
    int vocab;           /* token ids 0..vocab-1 */
    int pad;             /* the padding id, below vocab */
    /* cnn */
    int channels;                           /* input channels (NCHW) */
    int stages;                             /* conv-bn-relu(-pool) stages */
    int conv_channels[CM_MODEL_MAX_STAGES]; /* output channels of each stage */
    int pool[CM_MODEL_MAX_STAGES];          /* 1: the stage ends with a 2x2 max pool */
    int kernel;                             /* odd square conv kernel side */
    int flatten;                            /* 1: head=flatten, 0: head=gap */
} cm_model_spec_t;

/*
 * Parses a spec string (see above) into *spec (zeroed first, so two parses of one text compare
 * equal with memcmp).  CM_ERR_INVALID_ARG with one sentence naming the spec and the bad part on
 * any problem: an unknown family or key, a number that is not a whole number in its range
 * (trailing letters, signs, overflow), an empty field, a key given twice, a missing required
 * key, sizes that do not fit together.
 */
cm_status_t cm_model_spec_parse(const char *text, cm_model_spec_t *spec);

/* Canonical spec string of `spec` into text[size]. */
void cm_model_spec_format(const cm_model_spec_t *spec, char *text, size_t size);

/* Number of input floats per example the model expects (features, columns or tokens). */
int cm_model_spec_inputs(const cm_model_spec_t *spec);

typedef struct cm_model cm_model_t;

/* Builds a model with zeroed parameters and activations for up to max_batch examples. */
cm_status_t cm_model_new(const cm_model_spec_t *spec, int max_batch, cm_model_t **out);

/* Frees the model and sets *model to NULL; NULL-safe. */
void cm_model_free(cm_model_t **model);

/* Random initialization from `seed`: He-normal dense stacks (MLP, emb, cnn) and convolutions,
 * N(0, 1) emb tables (as torch.nn.Embedding), N(0, 0.02) for the ViT and tok (embeddings,
 * positions, blocks); batch norm gains 1, shifts 0, running mean 0 and variance 1. */
void cm_model_init(cm_model_t *model, uint64_t seed);

const cm_model_spec_t *cm_model_spec(const cm_model_t *model);

/* Switches between training mode (training = 1) and eval mode (0); see the file comment.
 * Cheap; a model starts in eval mode. */
void cm_model_set_training(cm_model_t *model, int training);
/* 1 in training mode, 0 in eval mode. */
int cm_model_training(const cm_model_t *model);
int cm_model_max_batch(const cm_model_t *model);

/* The flat parameter and gradient blocks (borrowed, valid for the model's life). */
float *cm_model_params(cm_model_t *model);
float *cm_model_grads(cm_model_t *model);
size_t cm_model_param_count(const cm_model_t *model);

/* Number of named parameter tensors and the index-th one as a view into the parameters (1-D to
 * 4-D; the cnn's batch-norm running statistics are among them, see the file comment). */
int cm_model_tensor_count(const cm_model_t *model);
cm_tensor_t cm_model_tensor(const cm_model_t *model, int index);

/*
 * Checks that inputs[batch][inputs] fit the model: for emb and tok every value is a whole number
 * below its column's cardinality or the vocabulary (dense models accept anything).
 * CM_ERR_OUT_OF_RANGE with a sentence naming the row, the column or position and the value.
 */
cm_status_t cm_model_check_inputs(const cm_model_t *model, const float *inputs, int batch);

/*
 * Forward pass over inputs[batch][inputs] (batch <= max_batch).  Returns the logits
 * [batch][classes], borrowed and valid until the next forward.  The inputs are borrowed until
 * the matching backward.  An emb or tok input that cm_model_check_inputs refuses is a
 * programmer bug (the data layer validates ids): the process aborts with that sentence.
 */
const float *cm_model_forward(cm_model_t *model, const float *inputs, int batch);

/*
 * A named feature of the last forward pass ("hidden" or, for the ViT, tok and cnn, "tokens"), as
 * [batch][*per_example] floats, borrowed until the next forward; NULL if the model has
 * no such output.  For "tokens", *tokens_out (may be NULL) receives the token count.
 */
const float *cm_model_feature(const cm_model_t *model, const char *name, int *per_example,
                              int *tokens_out);

/* Names of the features the model exposes, comma-separated ("hidden" or "hidden,tokens"). */
const char *cm_model_feature_names(const cm_model_t *model);

/*
 * The dense head that maps the "hidden" feature to the logits, logits = weight . hidden + bias
 * (an MLP's, emb's or cnn's last layer "fc<layers-1>", a ViT's or tok's "head"): *weight
 * [classes][hidden] (stored
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
 * One AdamW step over all parameters (weight decay on matrices, convolutions and embeddings,
 * not on biases, norms, positions or the class token; batch-norm running statistics are
 * buffers and never change here).  m and v are caller-owned moment
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
 * in batches of the model's max_batch, in eval mode (the model's mode is restored after).
 * Either output may be NULL.
 */
void cm_model_evaluate(cm_model_t *model, const float *inputs, const int32_t *labels, int count,
                       double *accuracy, double *mean_loss);

/*
 * Regression quality of the model on inputs[count][inputs] against targets[count][classes],
 * in batches of the model's max_batch: the root mean squared error and the mean absolute error
 * over every output of every example (both 0 when count is 0), in eval mode like
 * cm_model_evaluate.  Either output may be NULL.
 */
void cm_model_evaluate_regression(cm_model_t *model, const float *inputs, const float *targets,
                                  int count, double *rmse, double *mae);

#endif
