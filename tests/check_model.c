/*
 * cm_model: spec parsing, whole-model gradients against finite differences
 * (MLP and ViT, through every layer and the extra "hidden" gradient), a tiny
 * model overfitting one batch, features, the head (logits are the head
 * applied to "hidden"), and checkpoint round trips and rejections.
 */
#include "cm_alloc.h"
#include "cm_loss.h"
#include "cm_model.h"
#include "cm_rng.h"
#include "cm_safetensors.h"

#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

START_TEST(test_spec_parse) {
    cm_model_spec_t spec;
    char text[CM_MODEL_SPEC_MAX];
    ck_assert_int_eq(cm_model_spec_parse("mlp:49-64-64-10", &spec), CM_OK);
    ck_assert_int_eq(spec.kind, CM_MODEL_MLP);
    ck_assert_int_eq(spec.layers, 3);
    ck_assert_int_eq(spec.classes, 10);
    ck_assert_int_eq(cm_model_spec_inputs(&spec), 49);
    cm_model_spec_format(&spec, text, sizeof text);
    ck_assert_str_eq(text, "mlp:49-64-64-10");

    ck_assert_int_eq(cm_model_spec_parse("vit:patch=4,dim=32,depth=1,heads=2", &spec), CM_OK);
    ck_assert_int_eq(spec.kind, CM_MODEL_VIT);
    cm_model_spec_format(&spec, text, sizeof text);
    ck_assert_str_eq(text, "vit:image=28x28,patch=4,dim=32,depth=1,heads=2,mlp=64,classes=10");
    cm_model_spec_t again;
    ck_assert_int_eq(cm_model_spec_parse(text, &again), CM_OK);
    ck_assert_int_eq(memcmp(&spec, &again, sizeof spec), 0);

    const char *bad[] = {"mlp:784-10",    "mlp:784--10",  "mlp:0-5-10",
                         "cnn:3",         "vit:patch=5",  "vit:dim=30,heads=4",
                         "vit:color=red", "vit:image=28", "mlp:a-b-c"};
    for (size_t index = 0; index < sizeof bad / sizeof bad[0]; index++) {
        ck_assert_msg(cm_model_spec_parse(bad[index], &spec) == CM_ERR_INVALID_ARG,
                      "accepted bad spec %s", bad[index]);
        ck_assert_ptr_nonnull(strstr(cm_last_error(), "spec"));
    }
}
END_TEST

/* Loss used by the gradient check: CE on the logits plus <probe, hidden>. */
static double probe_loss(cm_model_t *model, const float *inputs, const int32_t *labels,
                         const float *hidden_probe, int batch, float *probs) {
    const cm_model_spec_t *spec = cm_model_spec(model);
    const float *logits = cm_model_forward(model, inputs, batch);
    double loss = cm_loss_cross_entropy_forward(probs, logits, labels, batch, spec->classes, NULL);
    int width = 0;
    const float *hidden = cm_model_feature(model, "hidden", &width, NULL);
    for (int index = 0; index < batch * width; index++)
        loss += (double)hidden_probe[index] * (double)hidden[index];
    return loss;
}

static void check_model_gradients(const char *spec_text, int batch, int inputs_per_example) {
    cm_model_spec_t spec;
    ck_assert_int_eq(cm_model_spec_parse(spec_text, &spec), CM_OK);
    cm_model_t *model = NULL;
    ck_assert_int_eq(cm_model_new(&spec, batch, &model), CM_OK);
    cm_model_init(model, 3);
    cm_rng_t rng;
    cm_rng_seed(&rng, 11);
    float *params = cm_model_params(model);
    size_t param_count = cm_model_param_count(model);
    /* Perturb every parameter a little so LN gains, biases and the class token are not at
     * their trivial initial values (their gradients would be too special to test). */
    for (size_t index = 0; index < param_count; index++)
        params[index] += 0.05f * cm_rng_normal(&rng);
    float *inputs = cm_alloc_floats((size_t)batch * (size_t)inputs_per_example);
    for (int index = 0; index < batch * inputs_per_example; index++)
        inputs[index] = cm_rng_normal(&rng);
    int32_t labels[8];
    for (int row = 0; row < batch; row++)
        labels[row] = (int32_t)cm_rng_below(&rng, (uint32_t)spec.classes);
    labels[batch - 1] = -1; /* an unlabelled row contributes only through the probe */
    int width = 0;
    cm_model_forward(model, inputs, batch);
    cm_model_feature(model, "hidden", &width, NULL);
    float *probe = cm_alloc_floats((size_t)batch * (size_t)width);
    for (int index = 0; index < batch * width; index++) probe[index] = 0.1f * cm_rng_normal(&rng);
    float *probs = cm_alloc_floats((size_t)batch * (size_t)spec.classes);
    float *d_logits = cm_alloc_floats((size_t)batch * (size_t)spec.classes);

    probe_loss(model, inputs, labels, probe, batch, probs);
    cm_loss_cross_entropy_backward(d_logits, probs, labels, batch, spec.classes, 1.0f);
    cm_model_zero_grads(model);
    cm_model_backward(model, d_logits, probe, batch);
    const float *grads = cm_model_grads(model);

    /* Every tensor gets checked at a few random positions. */
    const float step = 1e-2f;
    int checked = 0, worst_tensor = -1;
    double worst = 0.0;
    for (int tensor_index = 0; tensor_index < cm_model_tensor_count(model); tensor_index++) {
        cm_tensor_t tensor = cm_model_tensor(model, tensor_index);
        size_t offset = (size_t)((float *)tensor.data - params);
        int64_t elements = cm_tensor_elements(&tensor);
        for (int probe_index = 0; probe_index < 4; probe_index++) {
            size_t element = offset + cm_rng_below(&rng, (uint32_t)elements);
            float saved = params[element];
            params[element] = saved + step;
            double plus = probe_loss(model, inputs, labels, probe, batch, probs);
            params[element] = saved - step;
            double minus = probe_loss(model, inputs, labels, probe, batch, probs);
            params[element] = saved;
            double numeric = (plus - minus) / (2.0 * step), analytic = grads[element];
            double error = fabs(numeric - analytic) / (fabs(numeric) + fabs(analytic) + 1e-2);
            if (error > worst) {
                worst = error;
                worst_tensor = tensor_index;
            }
            ck_assert_msg(error < 0.05, "%s: d/d %s[%zu]: analytic %.6g vs numeric %.6g", spec_text,
                          tensor.name, element - offset, analytic, numeric);
            checked++;
        }
    }
    ck_assert_int_gt(checked, 0);
    (void)worst_tensor;
    cm_free_aligned(inputs);
    cm_free_aligned(probe);
    cm_free_aligned(probs);
    cm_free_aligned(d_logits);
    cm_model_free(&model);
    ck_assert_ptr_null(model);
}

START_TEST(test_mlp_gradients) { check_model_gradients("mlp:6-9-7-5", 4, 6); }
END_TEST

START_TEST(test_vit_gradients) {
    check_model_gradients("vit:image=8x8,patch=4,dim=8,depth=2,heads=2,mlp=12,classes=3", 3, 64);
}
END_TEST

static void overfit(const char *spec_text, int inputs_per_example, float lr) {
    enum { BATCH = 16 };
    cm_model_spec_t spec;
    ck_assert_int_eq(cm_model_spec_parse(spec_text, &spec), CM_OK);
    cm_model_t *model = NULL;
    ck_assert_int_eq(cm_model_new(&spec, BATCH, &model), CM_OK);
    cm_model_init(model, 5);
    cm_rng_t rng;
    cm_rng_seed(&rng, 9);
    float *inputs = cm_alloc_floats((size_t)BATCH * (size_t)inputs_per_example);
    for (int index = 0; index < BATCH * inputs_per_example; index++)
        inputs[index] = cm_rng_normal(&rng);
    int32_t labels[BATCH];
    for (int row = 0; row < BATCH; row++)
        labels[row] = (int32_t)cm_rng_below(&rng, (uint32_t)spec.classes);
    size_t count = cm_model_param_count(model);
    float *m = cm_alloc_floats(count), *v = cm_alloc_floats(count);
    float probs[BATCH * 16], d_logits[BATCH * 16];
    cm_adamw_config_t config = cm_adamw_defaults();
    config.learning_rate = lr;
    double loss = 0.0;
    for (long step = 1; step <= 300; step++) {
        cm_model_zero_grads(model);
        const float *logits = cm_model_forward(model, inputs, BATCH);
        loss =
            cm_loss_cross_entropy_forward(probs, logits, labels, BATCH, spec.classes, NULL) / BATCH;
        memset(d_logits, 0, sizeof d_logits);
        cm_loss_cross_entropy_backward(d_logits, probs, labels, BATCH, spec.classes, 1.0f / BATCH);
        cm_model_backward(model, d_logits, NULL, BATCH);
        cm_model_adamw_step(model, m, v, &config, step);
    }
    ck_assert_msg(loss < 0.05, "%s did not overfit one batch: loss %g", spec_text, loss);
    double accuracy = 0.0;
    cm_model_evaluate(model, inputs, labels, BATCH, &accuracy, NULL);
    ck_assert(accuracy == 1.0);
    cm_free_aligned(m);
    cm_free_aligned(v);
    cm_free_aligned(inputs);
    cm_model_free(&model);
}

START_TEST(test_mlp_overfits_one_batch) { overfit("mlp:12-32-5", 12, 1e-2f); }
END_TEST

START_TEST(test_vit_overfits_one_batch) {
    overfit("vit:image=8x8,patch=4,dim=16,depth=1,heads=2,mlp=32,classes=4", 64, 3e-3f);
}
END_TEST

START_TEST(test_features) {
    cm_model_spec_t spec;
    ck_assert_int_eq(
        cm_model_spec_parse("vit:image=8x8,patch=2,dim=8,depth=1,heads=2,classes=3", &spec), CM_OK);
    cm_model_t *model = NULL;
    ck_assert_int_eq(cm_model_new(&spec, 2, &model), CM_OK);
    cm_model_init(model, 1);
    float inputs[128] = {0};
    cm_model_forward(model, inputs, 2);
    int width = 0, tokens = 0;
    ck_assert_ptr_nonnull(cm_model_feature(model, "tokens", &width, &tokens));
    ck_assert_int_eq(tokens, 17);
    ck_assert_int_eq(width, 17 * 8);
    ck_assert_ptr_nonnull(cm_model_feature(model, "hidden", &width, NULL));
    ck_assert_int_eq(width, 8);
    ck_assert_ptr_null(cm_model_feature(model, "attention", &width, NULL));
    ck_assert_str_eq(cm_model_feature_names(model), "hidden,tokens");
    cm_model_free(&model);
}
END_TEST

/* The head is the layer that reads "hidden": applying it in double precision gives the logits. */
static void check_head(const char *spec_text, const char *weight_name, const char *bias_name) {
    enum { BATCH = 3 };
    cm_model_spec_t spec;
    ck_assert_int_eq(cm_model_spec_parse(spec_text, &spec), CM_OK);
    cm_model_t *model = NULL;
    ck_assert_int_eq(cm_model_new(&spec, BATCH, &model), CM_OK);
    cm_model_init(model, 4);
    int inputs = cm_model_spec_inputs(&spec), hidden_width = 0;
    float *batch = malloc(sizeof(float) * BATCH * (size_t)inputs);
    ck_assert_ptr_nonnull(batch);
    cm_rng_t rng;
    cm_rng_seed(&rng, 8);
    for (int index = 0; index < BATCH * inputs; index++) batch[index] = cm_rng_normal(&rng);
    const float *logits = cm_model_forward(model, batch, BATCH);
    const float *hidden = cm_model_feature(model, "hidden", &hidden_width, NULL);
    cm_tensor_t weight, bias;
    cm_model_head(model, &weight, &bias);
    ck_assert_str_eq(weight.name, weight_name);
    ck_assert_str_eq(bias.name, bias_name);
    ck_assert_int_eq(weight.ndim, 2);
    ck_assert_int_eq(weight.shape[0], spec.classes);
    ck_assert_int_eq(weight.shape[1], hidden_width);
    ck_assert_int_eq(bias.ndim, 1);
    ck_assert_int_eq(bias.shape[0], spec.classes);
    const float *w = weight.data, *b = bias.data;
    for (int row = 0; row < BATCH; row++)
        for (int class = 0; class < spec.classes; class ++) {
            double sum = b[class];
            for (int input = 0; input < hidden_width; input++)
                sum += (double)w[class * hidden_width + input] *
                       (double)hidden[row * hidden_width + input];
            ck_assert_msg(fabs(sum - logits[row * spec.classes + class]) <= 1e-5 * (1 + fabs(sum)),
                          "%s row %d class %d: head(hidden) %.9g, logit %.9g", spec_text, row,
                          class, sum, (double)logits[row * spec.classes + class]);
        }
    free(batch);
    cm_model_free(&model);
}

START_TEST(test_head_reads_hidden) {
    check_head("mlp:6-9-7-5", "fc2.weight", "fc2.bias");
    check_head("mlp:6-4-5", "fc1.weight", "fc1.bias");
    check_head("vit:image=8x8,patch=4,dim=16,depth=1,heads=2,mlp=32,classes=4", "head.weight",
               "head.bias");
}
END_TEST

static char temp_dir[64];

static void make_temp_dir(void) {
    snprintf(temp_dir, sizeof temp_dir, "/tmp/check_model.XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(temp_dir));
}

START_TEST(test_checkpoint_round_trip) {
    make_temp_dir();
    char path[128];
    snprintf(path, sizeof path, "%s/model.safetensors", temp_dir);
    cm_model_spec_t spec;
    ck_assert_int_eq(
        cm_model_spec_parse("vit:image=8x8,patch=4,dim=8,depth=1,heads=2,classes=3", &spec), CM_OK);
    cm_model_t *model = NULL, *loaded = NULL;
    ck_assert_int_eq(cm_model_new(&spec, 4, &model), CM_OK);
    cm_model_init(model, 42);
    const char *metadata[] = {"view", "full", "fingerprint", "abc123"};
    ck_assert_int_eq(cm_model_save(model, path, metadata, 2), CM_OK);
    cm_safetensors_t *file = NULL;
    ck_assert_int_eq(cm_model_load(path, 4, &loaded, &file), CM_OK);
    ck_assert_str_eq(cm_safetensors_metadata(file, "view"), "full");
    ck_assert_str_eq(cm_safetensors_metadata(file, "fingerprint"), "abc123");
    ck_assert_ptr_nonnull(cm_safetensors_find(file, "blocks.0.attn.qkv.weight"));
    ck_assert_int_eq(cm_model_param_count(model), cm_model_param_count(loaded));
    ck_assert_int_eq(memcmp(cm_model_params(model), cm_model_params(loaded),
                            sizeof(float) * cm_model_param_count(model)),
                     0);
    float inputs[4 * 64];
    for (int index = 0; index < 4 * 64; index++) inputs[index] = (float)index / 100.0f;
    float first[12];
    memcpy(first, cm_model_forward(model, inputs, 4), sizeof first);
    ck_assert_int_eq(memcmp(first, cm_model_forward(loaded, inputs, 4), sizeof first), 0);
    cm_safetensors_free(&file);
    cm_model_free(&loaded);

    /* A checkpoint whose tensor does not fit its spec is refused with the tensor's name. */
    cm_tensor_t tensors[64];
    int count = cm_model_tensor_count(model);
    for (int index = 0; index < count; index++) tensors[index] = cm_model_tensor(model, index);
    tensors[0].shape[1] -= 1;
    const char *bad_metadata[] = {"model", "vit:image=8x8,patch=4,dim=8,depth=1,heads=2,classes=3"};
    ck_assert_int_eq(cm_safetensors_write(path, tensors, count, bad_metadata, 1), CM_OK);
    ck_assert_int_eq(cm_model_load(path, 4, &loaded, NULL), CM_ERR_SHAPE);
    ck_assert_ptr_nonnull(strstr(cm_last_error(), tensors[0].name));
    ck_assert_ptr_null(loaded);

    /* No model spec: not a committee checkpoint. */
    ck_assert_int_eq(cm_safetensors_write(path, tensors, count, NULL, 0), CM_OK);
    ck_assert_int_eq(cm_model_load(path, 4, &loaded, NULL), CM_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(cm_last_error(), "not a committee checkpoint"));

    /* Truncated file. */
    ck_assert_int_eq(cm_model_save(model, path, NULL, 0), CM_OK);
    ck_assert_int_eq(truncate(path, 200), 0);
    ck_assert_int_ne(cm_model_load(path, 4, &loaded, NULL), CM_OK);
    ck_assert_ptr_nonnull(strstr(cm_last_error(), path));
    ck_assert_ptr_null(loaded);

    cm_model_free(&model);
    unlink(path);
    rmdir(temp_dir);
}
END_TEST

Suite *check_model_suite(void);
Suite *check_model_suite(void) {
    Suite *suite = suite_create("model");
    TCase *tcase = tcase_create("model");
    tcase_set_timeout(tcase, 30);
    tcase_add_test(tcase, test_spec_parse);
    tcase_add_test(tcase, test_mlp_gradients);
    tcase_add_test(tcase, test_vit_gradients);
    tcase_add_test(tcase, test_mlp_overfits_one_batch);
    tcase_add_test(tcase, test_vit_overfits_one_batch);
    tcase_add_test(tcase, test_features);
    tcase_add_test(tcase, test_head_reads_hidden);
    tcase_add_test(tcase, test_checkpoint_round_trip);
    suite_add_tcase(suite, tcase);
    return suite;
}
