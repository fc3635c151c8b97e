/*
 * cm_model: strict spec parsing (everything not fully consumed is refused
 * with a sentence naming the spec and the bad part, through the library and
 * through `teacher-server fit`), canonical formats that parse back for every
 * family, whole-model gradients against finite differences (MLP, ViT, emb and
 * tok, through every layer and the extra "hidden" gradient), tiny models
 * overfitting one batch (classification, and regression with MSE for emb),
 * the padding invariants of the token model, id validation, features, the
 * head (logits are the head applied to "hidden"), regression metrics, and
 * checkpoint round trips and rejections.
 */
#include "cm_alloc.h"
#include "cm_loss.h"
#include "cm_model.h"
#include "cm_rng.h"
#include "cm_safetensors.h"
#include "serve_fixture.h"
#include "test_util.h"

#include <check.h>
#include <malloc.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/*
 * inputs[batch][inputs] a model of this spec accepts: normal features for mlp and vit, ids for
 * emb (column 0 is row % cardinality, so rows differ when the first cardinality is >= batch)
 * and tok (about a third pads, the first token of every example but the last-but-none real;
 * the example `all_pad_row`, if in range, is pads only).
 */
static void random_inputs(const cm_model_spec_t *spec, cm_rng_t *rng, int batch, int all_pad_row,
                          float *inputs) {
    int per_example = cm_model_spec_inputs(spec);
    for (int row = 0; row < batch; row++)
        for (int column = 0; column < per_example; column++) {
            float *value = &inputs[row * per_example + column];
            if (spec->kind == CM_MODEL_EMB) {
                uint32_t cardinality = (uint32_t)spec->cardinality[column];
                *value = (float)(column == 0 ? (uint32_t)row % cardinality
                                             : cm_rng_below(rng, cardinality));
            } else if (spec->kind == CM_MODEL_TOK) {
                int token = (int)cm_rng_below(rng, (uint32_t)spec->vocab);
                if (row == all_pad_row || (column > 0 && cm_rng_below(rng, 3) == 0))
                    token = spec->pad;
                else if (token == spec->pad)
                    token = (spec->pad + 1) % spec->vocab;
                *value = (float)token;
            } else {
                *value = cm_rng_normal(rng);
            }
        }
}

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

/*
 * Issue 11 item 13: "mlp:784-1O-10" (letter O) used to train mlp:784-1-10.  Whatever the parser
 * does not consume completely is refused, and the sentence quotes the spec and the bad part.
 */
START_TEST(test_spec_refuses_what_it_does_not_consume) {
    const char *cases[][2] = {
        {"mlp:784-1O-10", "'1O'"},
        {"mlp:784-10-", "empty MLP width"},
        {"mlp:784--5-10", "empty MLP width"},
        {"mlp:-784-5-10", "empty MLP width"},
        {"mlp:784-+5-10", "'+5'"},
        {"mlp:784- 5-10", "' 5'"},
        {"mlp:784-5-10 ", "'10 '"},
        {"mlp:784-5-0x10", "'0x10'"},
        {"mlp:784-99999999999999999999-10", "'99999999999999999999'"},
        {"mlp:784-4294967297-10", "'4294967297'"},
        {"mlp:", "empty MLP width"},
        {"mlp", "is none of"},
        {"mlp:1-2-3-4-5-6-7-8-9-10-11-12-13-14-15-16-17-18", "more than 17 MLP widths"},
        {"vit:", "empty field"},
        {"vit:dim=64,", "empty field"},
        {"vit:,dim=64", "empty field"},
        {"vit:dim=64x", "'64x'"},
        {"vit:dim=", "empty dim"},
        {"vit:dim", "'dim' is not key=value"},
        {"vit:dim=32,dim=64", "gives 'dim' twice"},
        {"vit:colour=red", "unknown key 'colour'"},
        {"vit:image=28x28x3", "more than 2 image sides"},
        {"vit:image=28x", "empty image side"},
        {"vit:depth=99", "'99'"},
        {"vitamin:dim=3", "is none of"},
        {"emb:dim=8,out=1", "needs cards="},
        {"emb:cards=5x7", "needs out="},
        {"emb:cards=5x,out=1", "empty cardinality"},
        {"emb:cards=5x0,out=1", "'0'"},
        {"emb:cards=5x16777217,out=1", "'16777217'"},
        {"emb:cards=5,mlp=8--4,out=1", "empty MLP width"},
        {"emb:cards=5,out=1,classes=3", "unknown key 'classes'"},
        {"emb:cards=5,out=1.5", "'1.5'"},
        {"tok:vocab=10,out=1", "needs len="},
        {"tok:len=8,out=1", "needs vocab="},
        {"tok:len=8,vocab=10", "needs out="},
        {"tok:len=8,vocab=10,pad=10,out=1", "pad 10 is not a token id below vocab 10"},
        {"tok:len=8,vocab=10,pad=-1,out=1", "'-1'"},
        {"tok:len=8,vocab=10,dim=30,heads=4,out=1", "heads 4 does not divide dim 30"},
        {"tok:len=8k,vocab=10,out=1", "'8k'"},
    };
    for (size_t index = 0; index < sizeof cases / sizeof cases[0]; index++) {
        cm_model_spec_t spec;
        ck_assert_msg(cm_model_spec_parse(cases[index][0], &spec) == CM_ERR_INVALID_ARG,
                      "accepted bad spec '%s'", cases[index][0]);
        const char *sentence = cm_last_error();
        char quoted[CM_MODEL_SPEC_MAX + 2];
        snprintf(quoted, sizeof quoted, "'%s'", cases[index][0]);
        ck_assert_msg(strstr(sentence, quoted), "'%s': the sentence does not quote it: %s",
                      cases[index][0], sentence);
        ck_assert_msg(strstr(sentence, cases[index][1]), "'%s': expected \"%s\" in: %s",
                      cases[index][0], cases[index][1], sentence);
        ck_assert_msg(!strchr(sentence, '\n'), "not one line: %s", sentence);
    }
    char too_long[CM_MODEL_SPEC_MAX + 8];
    memset(too_long, '1', sizeof too_long - 1);
    too_long[sizeof too_long - 1] = '\0';
    memcpy(too_long, "mlp:", 4);
    cm_model_spec_t spec;
    ck_assert_int_eq(cm_model_spec_parse(too_long, &spec), CM_ERR_INVALID_ARG);
    ck_assert_ptr_nonnull(strstr(cm_last_error(), "longer than"));
}
END_TEST

/* The same through the real binary: exit 1 or 2, one line quoting the spec, no checkpoint. */
START_TEST(test_fit_refuses_bad_spec) {
    char directory[256], command[1024], output[4096], checkpoint[320];
    test_util_temp_dir(directory, sizeof directory);
    snprintf(checkpoint, sizeof checkpoint, "%s/m.safetensors", directory);
    snprintf(command, sizeof command,
             "%s fit --model mlp:784-1O-10 --max-train 10 --max-test 10 --epochs 1 --out %s",
             test_util_bin("teacher-server"), checkpoint);
    int code = test_util_run(command, output, sizeof output);
    ck_assert_msg(code == 1 || code == 2, "exit %d: %s", code, output);
    ck_assert_msg(strstr(output, "model spec 'mlp:784-1O-10'") && strstr(output, "'1O'"),
                  "the error does not name the spec and the bad part: %s", output);
    ck_assert_msg(strchr(output, '\n') == output + strlen(output) - 1, "not one line: %s", output);
    ck_assert_int_ne(access(checkpoint, F_OK), 0);
    test_util_remove_tree(directory);
}
END_TEST

/* Every family's canonical format parses back to the same spec, and formats identically. */
START_TEST(test_spec_round_trip_all_families) {
    const char *cases[][2] = {
        {"mlp:105-7-3", "mlp:105-7-3"},
        {"mlp:49-64-64-10", "mlp:49-64-64-10"},
        {"vit", "vit:image=28x28,patch=7,dim=64,depth=2,heads=4,mlp=128,classes=10"},
        {"vit:classes=3,image=32x16,patch=8",
         "vit:image=32x16,patch=8,dim=64,depth=2,heads=4,mlp=128,classes=3"},
        {"emb:cards=671x9066,dim=32,mlp=128-64,out=1",
         "emb:cards=671x9066,dim=32,mlp=128-64,out=1"},
        {"emb:out=5,cards=16777216", "emb:cards=16777216,dim=32,mlp=128,out=5"},
        {"tok:len=64,vocab=20000,dim=64,depth=2,heads=4,mlp=128,pad=0,out=1",
         "tok:len=64,vocab=20000,dim=64,depth=2,heads=4,mlp=128,pad=0,out=1"},
        {"tok:out=3,vocab=100,len=16,dim=32,pad=99",
         "tok:len=16,vocab=100,dim=32,depth=2,heads=4,mlp=64,pad=99,out=3"},
        {"cnn", "cnn:image=28x28,channels=1,conv=32-64-128,kernel=3,pool=1-1-1,head=gap,fc=256,"
                "classes=10"},
        {"cnn:fc=0,conv=16-32,pool=0-1,kernel=5,channels=3,image=32x32,classes=100",
         "cnn:image=32x32,channels=3,conv=16-32,kernel=5,pool=0-1,head=gap,fc=0,classes=100"},
        {"cnn:conv=8,fc=64-32",
         "cnn:image=28x28,channels=1,conv=8,kernel=3,pool=1,head=gap,fc=64-32,classes=10"},
        {"cnn:head=flatten,conv=8-4,pool=1-1",
         "cnn:image=28x28,channels=1,conv=8-4,kernel=3,pool=1-1,head=flatten,fc=256,classes=10"},
    };
    for (size_t index = 0; index < sizeof cases / sizeof cases[0]; index++) {
        cm_model_spec_t spec, again;
        char text[CM_MODEL_SPEC_MAX], text_again[CM_MODEL_SPEC_MAX];
        ck_assert_msg(cm_model_spec_parse(cases[index][0], &spec) == CM_OK, "%s: %s",
                      cases[index][0], cm_last_error());
        cm_model_spec_format(&spec, text, sizeof text);
        ck_assert_str_eq(text, cases[index][1]);
        ck_assert_msg(cm_model_spec_parse(text, &again) == CM_OK, "%s: %s", text, cm_last_error());
        ck_assert_int_eq(memcmp(&spec, &again, sizeof spec), 0);
        cm_model_spec_format(&again, text_again, sizeof text_again);
        ck_assert_str_eq(text, text_again);
    }
    cm_model_spec_t spec;
    ck_assert_int_eq(cm_model_spec_parse("emb:cards=671x9066x3,dim=8,mlp=16,out=2", &spec), CM_OK);
    ck_assert_int_eq(spec.kind, CM_MODEL_EMB);
    ck_assert_int_eq(cm_model_spec_inputs(&spec), 3);
    ck_assert_int_eq(spec.widths[0], 24);
    ck_assert_int_eq(spec.layers, 2);
    ck_assert_int_eq(spec.classes, 2);
    ck_assert_int_eq(cm_model_spec_parse("tok:len=12,vocab=30,dim=8,heads=2,out=1", &spec), CM_OK);
    ck_assert_int_eq(spec.kind, CM_MODEL_TOK);
    ck_assert_int_eq(cm_model_spec_inputs(&spec), 12);
    ck_assert_int_eq(spec.classes, 1);
    /* The longest emb spec (64 columns of 2^24 categories) fits the buffer. */
    char longest[CM_MODEL_SPEC_MAX], text[CM_MODEL_SPEC_MAX];
    size_t used = (size_t)snprintf(longest, sizeof longest, "emb:cards=");
    for (int column = 0; column < CM_MODEL_MAX_COLUMNS; column++)
        used += (size_t)snprintf(longest + used, sizeof longest - used, column ? "x%d" : "%d",
                                 CM_MODEL_MAX_ID);
    snprintf(longest + used, sizeof longest - used, ",dim=16384,mlp=65536-65536,out=65536");
    ck_assert_int_eq(cm_model_spec_parse(longest, &spec), CM_OK);
    cm_model_spec_format(&spec, text, sizeof text);
    ck_assert_str_eq(text, longest);
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

/* `step` is the finite-difference step: 1e-2 unless a ReLU kink lies that close (see emb). */
static void check_model_gradients(const char *spec_text, int batch, float step, int training) {
    cm_model_spec_t spec;
    ck_assert_int_eq(cm_model_spec_parse(spec_text, &spec), CM_OK);
    cm_model_t *model = NULL;
    ck_assert_int_eq(cm_model_new(&spec, batch, &model), CM_OK);
    cm_model_init(model, 3);
    cm_model_set_training(model, training);
    cm_rng_t rng;
    cm_rng_seed(&rng, 11);
    float *params = cm_model_params(model);
    size_t param_count = cm_model_param_count(model);
    /* Perturb every parameter a little so LN gains, biases and the class token are not at
     * their trivial initial values (their gradients would be too special to test). */
    for (size_t index = 0; index < param_count; index++)
        params[index] += 0.05f * cm_rng_normal(&rng);
    int inputs_per_example = cm_model_spec_inputs(&spec);
    float *inputs = cm_alloc_floats((size_t)batch * (size_t)inputs_per_example);
    random_inputs(&spec, &rng, batch, batch - 1, inputs);
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
    int checked = 0, worst_tensor = -1;
    double worst = 0.0;
    for (int tensor_index = 0; tensor_index < cm_model_tensor_count(model); tensor_index++) {
        cm_tensor_t tensor = cm_model_tensor(model, tensor_index);
        /* batch-norm running statistics are buffers: no gradient by design (in eval mode the
         * loss depends on them; the test for that is the fixed-statistics check above) */
        if (strstr(tensor.name, "running_")) continue;
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

START_TEST(test_mlp_gradients) { check_model_gradients("mlp:6-9-7-5", 4, 1e-2f, 1); }
END_TEST

START_TEST(test_vit_gradients) {
    check_model_gradients("vit:image=8x8,patch=4,dim=8,depth=2,heads=2,mlp=12,classes=3", 3, 1e-2f,
                          1);
}
END_TEST

/*
 * Through the embedding tables, their concatenation and the dense stack.  A smaller step: the
 * N(0, 1) embeddings put some ReLU pre-activation within 1e-2 of its kink for these seeds
 * (a step of 1e-2 then measures the kink, not the gradient).
 */
START_TEST(test_emb_gradients) {
    check_model_gradients("emb:cards=5x3x4,dim=3,mlp=7-6,out=4", 5, 1e-3f, 1);
    check_model_gradients("emb:cards=6,dim=4,mlp=5,out=1", 4, 1e-3f, 1);
}
END_TEST

/* Token embedding, positions, masked blocks, masked pooling; the last example is all pads. */
START_TEST(test_tok_gradients) {
    check_model_gradients("tok:len=5,vocab=6,dim=8,depth=2,heads=2,mlp=12,pad=0,out=3", 4, 1e-2f,
                          1);
    check_model_gradients("tok:len=4,vocab=5,dim=4,depth=1,heads=1,mlp=6,pad=4,out=2", 3, 1e-2f, 1);
}
END_TEST

static void overfit(const char *spec_text, float lr) {
    enum { BATCH = 16 };
    cm_model_spec_t spec;
    ck_assert_int_eq(cm_model_spec_parse(spec_text, &spec), CM_OK);
    cm_model_t *model = NULL;
    ck_assert_int_eq(cm_model_new(&spec, BATCH, &model), CM_OK);
    cm_model_init(model, 5);
    cm_model_set_training(model, 1);
    cm_rng_t rng;
    cm_rng_seed(&rng, 9);
    int inputs_per_example = cm_model_spec_inputs(&spec);
    float *inputs = cm_alloc_floats((size_t)BATCH * (size_t)inputs_per_example);
    random_inputs(&spec, &rng, BATCH, -1, inputs);
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

/* The training step keeps no allocation: every buffer is the model's, sized when it was built.
 * glibc's count of bytes in use (heap and mmapped blocks) is the same before and after three
 * steps (forward, loss, backward, AdamW) and an evaluation-mode forward, for every family.
 * (A malloc freed within the step would not show here; `make bench-torch`'s profile under
 * perf showed none: the only page faults are the model's buffers, at cm_model_new.) */
static void assert_step_allocates_nothing(const char *spec_text) {
    enum { BATCH = 5 };
    cm_model_spec_t spec;
    ck_assert_int_eq(cm_model_spec_parse(spec_text, &spec), CM_OK);
    cm_model_t *model = NULL;
    ck_assert_int_eq(cm_model_new(&spec, BATCH, &model), CM_OK);
    cm_model_init(model, 5);
    cm_rng_t rng;
    cm_rng_seed(&rng, 9);
    int inputs_per_example = cm_model_spec_inputs(&spec);
    float *inputs = cm_alloc_floats((size_t)BATCH * (size_t)inputs_per_example);
    random_inputs(&spec, &rng, BATCH, -1, inputs);
    int32_t labels[BATCH];
    for (int row = 0; row < BATCH; row++)
        labels[row] = (int32_t)cm_rng_below(&rng, (uint32_t)spec.classes);
    size_t count = cm_model_param_count(model);
    float *m = cm_alloc_floats(count), *v = cm_alloc_floats(count);
    float probs[BATCH * 16], d_logits[BATCH * 16];
    cm_adamw_config_t config = cm_adamw_defaults();
    size_t in_use = 0;
    for (long step = 1; step <= 5; step++) {
        if (step == 3) { /* two steps warm up (BLAS and stdio may set themselves up once) */
            struct mallinfo2 info = mallinfo2();
            in_use = info.uordblks + info.hblkhd;
        }
        cm_model_set_training(model, 1);
        cm_model_zero_grads(model);
        const float *logits = cm_model_forward(model, inputs, BATCH);
        cm_loss_cross_entropy_forward(probs, logits, labels, BATCH, spec.classes, NULL);
        memset(d_logits, 0, sizeof d_logits);
        cm_loss_cross_entropy_backward(d_logits, probs, labels, BATCH, spec.classes, 1.0f / BATCH);
        cm_model_backward(model, d_logits, NULL, BATCH);
        cm_model_adamw_step(model, m, v, &config, step);
        cm_model_set_training(model, 0);
        cm_model_forward(model, inputs, BATCH);
    }
    struct mallinfo2 info = mallinfo2();
    ck_assert_msg(info.uordblks + info.hblkhd == in_use, "%s: a step changed the heap by %zd bytes",
                  spec_text, (ssize_t)(info.uordblks + info.hblkhd) - (ssize_t)in_use);
    cm_free_aligned(m);
    cm_free_aligned(v);
    cm_free_aligned(inputs);
    cm_model_free(&model);
}

START_TEST(test_step_allocates_nothing) {
    assert_step_allocates_nothing("mlp:12-32-5");
    assert_step_allocates_nothing("vit:image=8x8,patch=4,dim=16,depth=2,heads=2,mlp=32,classes=4");
    assert_step_allocates_nothing("tok:len=7,vocab=12,dim=16,depth=1,heads=2,mlp=32,pad=0,out=3");
    assert_step_allocates_nothing("emb:cards=16x5,dim=8,mlp=32,out=4");
    assert_step_allocates_nothing("cnn:image=8x8,conv=4-6,pool=1-0,fc=8,classes=3");
}
END_TEST

START_TEST(test_mlp_overfits_one_batch) { overfit("mlp:12-32-5", 1e-2f); }
END_TEST

START_TEST(test_vit_overfits_one_batch) {
    overfit("vit:image=8x8,patch=4,dim=16,depth=1,heads=2,mlp=32,classes=4", 3e-3f);
}
END_TEST

START_TEST(test_emb_overfits_one_batch) { overfit("emb:cards=16x5,dim=8,mlp=32,out=4", 1e-2f); }
END_TEST

START_TEST(test_tok_overfits_one_batch) {
    overfit("tok:len=6,vocab=12,dim=16,depth=1,heads=2,mlp=32,pad=0,out=4", 3e-3f);
}
END_TEST

/*
 * Regression: an emb model fits two float targets per example with MSE, and
 * cm_model_evaluate_regression sees it (RMSE and MAE near 0, against about 1 before).
 */
START_TEST(test_emb_regression_overfits_one_batch) {
    enum { BATCH = 16, OUTPUTS = 2 };
    cm_model_spec_t spec;
    ck_assert_int_eq(cm_model_spec_parse("emb:cards=16x3,dim=8,mlp=32,out=2", &spec), CM_OK);
    cm_model_t *model = NULL;
    ck_assert_int_eq(cm_model_new(&spec, 5, &model), CM_OK);
    cm_model_t *trainer_model = NULL;
    ck_assert_int_eq(cm_model_new(&spec, BATCH, &trainer_model), CM_OK);
    cm_model_init(trainer_model, 6);
    cm_rng_t rng;
    cm_rng_seed(&rng, 10);
    float inputs[BATCH * 2], targets[BATCH * OUTPUTS], d_out[BATCH * OUTPUTS];
    random_inputs(&spec, &rng, BATCH, -1, inputs);
    for (int index = 0; index < BATCH * OUTPUTS; index++) targets[index] = cm_rng_normal(&rng);
    size_t count = cm_model_param_count(trainer_model);
    float *m = cm_alloc_floats(count), *v = cm_alloc_floats(count);
    cm_adamw_config_t config = cm_adamw_defaults();
    config.learning_rate = 1e-2f;
    for (long step = 1; step <= 300; step++) {
        cm_model_zero_grads(trainer_model);
        const float *outputs = cm_model_forward(trainer_model, inputs, BATCH);
        memset(d_out, 0, sizeof d_out);
        cm_loss_mse_backward(d_out, outputs, targets, BATCH * OUTPUTS, 1.0f / BATCH);
        cm_model_backward(trainer_model, d_out, NULL, BATCH);
        cm_model_adamw_step(trainer_model, m, v, &config, step);
    }
    /* Evaluate in batches of 5 through a second model holding the trained weights. */
    memcpy(cm_model_params(model), cm_model_params(trainer_model), sizeof(float) * count);
    double rmse = -1.0, mae = -1.0;
    cm_model_evaluate_regression(model, inputs, targets, BATCH, &rmse, &mae);
    ck_assert_msg(rmse < 0.05 && mae <= rmse, "rmse %g mae %g", rmse, mae);
    cm_free_aligned(m);
    cm_free_aligned(v);
    cm_model_free(&model);
    cm_model_free(&trainer_model);
}
END_TEST

/* RMSE and MAE against known errors, over batches of 3 for 7 examples (a partial last batch). */
START_TEST(test_evaluate_regression) {
    enum { COUNT = 7, FEATURES = 4, OUTPUTS = 2 };
    cm_model_spec_t spec;
    ck_assert_int_eq(cm_model_spec_parse("mlp:4-6-2", &spec), CM_OK);
    cm_model_t *model = NULL;
    ck_assert_int_eq(cm_model_new(&spec, 3, &model), CM_OK);
    cm_model_init(model, 2);
    cm_rng_t rng;
    cm_rng_seed(&rng, 4);
    float inputs[COUNT * FEATURES], targets[COUNT * OUTPUTS];
    for (int index = 0; index < COUNT * FEATURES; index++) inputs[index] = cm_rng_normal(&rng);
    double squared = 0.0, absolute = 0.0;
    for (int start = 0; start < COUNT; start += 3) {
        int batch = COUNT - start < 3 ? COUNT - start : 3;
        const float *outputs = cm_model_forward(model, inputs + start * FEATURES, batch);
        for (int index = 0; index < batch * OUTPUTS; index++) {
            float error = (float)((start * OUTPUTS + index) % 3) - 1.0f; /* -1, 0, 1, -1, ... */
            error *= (float)(1 + index % 2);                             /* some of size 2 */
            targets[start * OUTPUTS + index] = outputs[index] - error;
            double actual = (double)outputs[index] - targets[start * OUTPUTS + index];
            squared += actual * actual;
            absolute += fabs(actual);
        }
    }
    double rmse = 0.0, mae = 0.0;
    cm_model_evaluate_regression(model, inputs, targets, COUNT, &rmse, &mae);
    ck_assert_double_eq_tol(rmse, sqrt(squared / (COUNT * OUTPUTS)), 1e-9);
    ck_assert_double_eq_tol(mae, absolute / (COUNT * OUTPUTS), 1e-9);
    ck_assert_double_gt(rmse, 0.5);
    cm_model_evaluate_regression(model, inputs, targets, 0, &rmse, &mae);
    ck_assert(rmse == 0.0 && mae == 0.0);
    cm_model_evaluate_regression(model, inputs, targets, COUNT, NULL, NULL);
    cm_model_free(&model);
}
END_TEST

/*
 * The token model's padding: whatever the pad token's embedding row holds, the outputs, the
 * pooled "hidden" vector and the non-pad rows of "tokens" stay the same bit for bit; the pad row
 * gets no gradient; an example of pads only gives finite outputs and a zero pooled vector.
 */
START_TEST(test_tok_padding_is_invisible) {
    enum { BATCH = 4, LEN = 7, DIM = 8, OUT = 3 };
    cm_model_spec_t spec;
    ck_assert_int_eq(
        cm_model_spec_parse("tok:len=7,vocab=9,dim=8,depth=2,heads=2,mlp=16,pad=2,out=3", &spec),
        CM_OK);
    cm_model_t *model = NULL;
    ck_assert_int_eq(cm_model_new(&spec, BATCH, &model), CM_OK);
    cm_model_init(model, 12);
    cm_rng_t rng;
    cm_rng_seed(&rng, 13);
    float inputs[BATCH * LEN];
    random_inputs(&spec, &rng, BATCH, BATCH - 1, inputs);
    float logits[BATCH * OUT], hidden[BATCH * DIM], tokens[BATCH * LEN * DIM];
    int width = 0, token_count = 0;
    memcpy(logits, cm_model_forward(model, inputs, BATCH), sizeof logits);
    memcpy(hidden, cm_model_feature(model, "hidden", &width, NULL), sizeof hidden);
    memcpy(tokens, cm_model_feature(model, "tokens", &width, &token_count), sizeof tokens);
    ck_assert_int_eq(token_count, LEN);
    for (int index = 0; index < BATCH * OUT; index++) ck_assert(isfinite(logits[index]));
    for (int index = 0; index < DIM; index++)
        ck_assert_float_eq(hidden[(BATCH - 1) * DIM + index], 0.0f);

    cm_tensor_t table = cm_model_tensor(model, 0);
    ck_assert_str_eq(table.name, "tok_embed.weight");
    float *pad_row = (float *)table.data + spec.pad * DIM;
    for (int index = 0; index < DIM; index++) pad_row[index] = 50.0f * cm_rng_normal(&rng);
    ck_assert_int_eq(memcmp(logits, cm_model_forward(model, inputs, BATCH), sizeof logits), 0);
    ck_assert_int_eq(memcmp(hidden, cm_model_feature(model, "hidden", &width, NULL), sizeof hidden),
                     0);
    const float *tokens_after = cm_model_feature(model, "tokens", &width, NULL);
    for (int position = 0; position < BATCH * LEN; position++)
        if ((int)inputs[position] != spec.pad)
            ck_assert_int_eq(
                memcmp(tokens + position * DIM, tokens_after + position * DIM, sizeof(float) * DIM),
                0);

    float d_logits[BATCH * OUT], d_hidden[BATCH * DIM];
    for (int index = 0; index < BATCH * OUT; index++) d_logits[index] = cm_rng_normal(&rng);
    for (int index = 0; index < BATCH * DIM; index++) d_hidden[index] = cm_rng_normal(&rng);
    cm_model_zero_grads(model);
    cm_model_backward(model, d_logits, d_hidden, BATCH);
    const float *pad_grad = cm_model_grads(model) + (pad_row - cm_model_params(model));
    for (int index = 0; index < DIM; index++) ck_assert_float_eq(pad_grad[index], 0.0f);
    float grad_sum = 0.0f;
    for (int index = 0; index < 9 * DIM; index++)
        grad_sum +=
            fabsf(cm_model_grads(model)[(float *)table.data - cm_model_params(model) + index]);
    ck_assert_float_gt(grad_sum, 0.0f);
    cm_model_free(&model);
}
END_TEST

/* Ids out of range, negative, fractional or NaN are refused with a sentence naming them. */
START_TEST(test_id_inputs_are_checked) {
    cm_model_spec_t spec;
    cm_model_t *emb = NULL, *tok = NULL, *mlp = NULL;
    ck_assert_int_eq(cm_model_spec_parse("emb:cards=4x3,dim=2,mlp=3,out=1", &spec), CM_OK);
    ck_assert_int_eq(cm_model_new(&spec, 2, &emb), CM_OK);
    ck_assert_int_eq(cm_model_spec_parse("tok:len=3,vocab=5,dim=2,heads=1,out=1", &spec), CM_OK);
    ck_assert_int_eq(cm_model_new(&spec, 2, &tok), CM_OK);
    ck_assert_int_eq(cm_model_spec_parse("mlp:2-3-1", &spec), CM_OK);
    ck_assert_int_eq(cm_model_new(&spec, 2, &mlp), CM_OK);
    float good[4] = {3, 2, 0, 0};
    ck_assert_int_eq(cm_model_check_inputs(emb, good, 2), CM_OK);
    const struct {
        float value;
        const char *sentence;
    } cases[] = {{3.0f, "row 1, column 1 holds 3, which is not a category id in 0..2"},
                 {-1.0f, "holds -1,"},
                 {1.5f, "holds 1.5,"},
                 {NAN, "holds nan,"},
                 {1e30f, "holds 1e+30,"}};
    for (size_t index = 0; index < sizeof cases / sizeof cases[0]; index++) {
        float bad[4] = {3, 2, 0, cases[index].value};
        ck_assert_int_eq(cm_model_check_inputs(emb, bad, 2), CM_ERR_OUT_OF_RANGE);
        ck_assert_msg(strstr(cm_last_error(), cases[index].sentence), "%s", cm_last_error());
        ck_assert_int_eq(cm_model_check_inputs(mlp, bad, 2), CM_OK);
    }
    float tokens[6] = {0, 4, 1, 2, 5, 0};
    ck_assert_int_eq(cm_model_check_inputs(tok, tokens, 1), CM_OK);
    ck_assert_int_eq(cm_model_check_inputs(tok, tokens, 2), CM_ERR_OUT_OF_RANGE);
    ck_assert_ptr_nonnull(
        strstr(cm_last_error(), "row 1, position 1 holds 5, which is not a token id in 0..4"));

    /* Forward treats a bad id as a programmer bug: it aborts before touching any table. */
    fflush(NULL);
    pid_t child = fork();
    ck_assert_int_ge(child, 0);
    if (child == 0) {
        freopen("/dev/null", "w", stderr);
        cm_model_forward(tok, tokens, 2);
        _exit(0);
    }
    int child_status = 0;
    ck_assert_int_eq(waitpid(child, &child_status, 0), child);
    ck_assert_msg(WIFSIGNALED(child_status) && WTERMSIG(child_status) == SIGABRT,
                  "forward over a bad token id did not abort (status %d)", child_status);
    cm_model_free(&emb);
    cm_model_free(&tok);
    cm_model_free(&mlp);
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

    ck_assert_int_eq(cm_model_spec_parse("emb:cards=4x3,dim=2,mlp=6-5,out=1", &spec), CM_OK);
    ck_assert_int_eq(cm_model_new(&spec, 2, &model), CM_OK);
    cm_model_forward(model, inputs, 2);
    ck_assert_ptr_nonnull(cm_model_feature(model, "hidden", &width, NULL));
    ck_assert_int_eq(width, 5);
    ck_assert_ptr_null(cm_model_feature(model, "tokens", &width, NULL));
    ck_assert_str_eq(cm_model_feature_names(model), "hidden");
    const char *emb_names[] = {"emb.0.weight", "emb.1.weight", "fc0.weight", "fc0.bias",
                               "fc1.weight",   "fc1.bias",     "fc2.weight", "fc2.bias"};
    ck_assert_int_eq(cm_model_tensor_count(model), 8);
    for (int index = 0; index < 8; index++)
        ck_assert_str_eq(cm_model_tensor(model, index).name, emb_names[index]);
    ck_assert_int_eq(cm_model_tensor(model, 1).shape[0], 3);
    ck_assert_int_eq(cm_model_tensor(model, 1).shape[1], 2);
    ck_assert_int_eq(cm_model_tensor(model, 2).shape[1], 4);
    cm_model_free(&model);

    ck_assert_int_eq(cm_model_spec_parse("tok:len=5,vocab=7,dim=4,depth=1,heads=2,out=2", &spec),
                     CM_OK);
    ck_assert_int_eq(cm_model_new(&spec, 2, &model), CM_OK);
    cm_model_init(model, 1);
    cm_model_forward(model, inputs, 2);
    ck_assert_ptr_nonnull(cm_model_feature(model, "tokens", &width, &tokens));
    ck_assert_int_eq(tokens, 5);
    ck_assert_int_eq(width, 5 * 4);
    ck_assert_ptr_nonnull(cm_model_feature(model, "hidden", &width, NULL));
    ck_assert_int_eq(width, 4);
    ck_assert_str_eq(cm_model_feature_names(model), "hidden,tokens");
    ck_assert_str_eq(cm_model_tensor(model, 0).name, "tok_embed.weight");
    ck_assert_str_eq(cm_model_tensor(model, 1).name, "pos_embed");
    ck_assert_str_eq(cm_model_tensor(model, 2).name, "blocks.0.norm1.weight");
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
    random_inputs(&spec, &rng, BATCH, -1, batch);
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
    check_head("emb:cards=5x4,dim=3,mlp=8-6,out=2", "fc2.weight", "fc2.bias");
    check_head("tok:len=6,vocab=9,dim=8,depth=1,heads=2,out=3", "head.weight", "head.bias");
    check_head("cnn:image=6x6,conv=3-4,pool=1-0,fc=5,classes=3", "fc1.weight", "fc1.bias");
    check_head("cnn:image=6x6,conv=3-4,pool=1-0,fc=0,classes=3", "fc0.weight", "fc0.bias");
    check_head("cnn:image=6x6,conv=3-4,pool=1-0,head=flatten,fc=0,classes=3", "fc0.weight",
               "fc0.bias");
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

/* emb and tok checkpoints: save, load, the same tensors and the same outputs bit for bit. */
static void check_round_trip(const char *spec_text, const char *tensor_name) {
    enum { BATCH = 3 };
    make_temp_dir();
    char path[128];
    snprintf(path, sizeof path, "%s/model.safetensors", temp_dir);
    cm_model_spec_t spec;
    ck_assert_int_eq(cm_model_spec_parse(spec_text, &spec), CM_OK);
    cm_model_t *model = NULL, *loaded = NULL;
    ck_assert_int_eq(cm_model_new(&spec, BATCH, &model), CM_OK);
    cm_model_init(model, 77);
    ck_assert_int_eq(cm_model_save(model, path, NULL, 0), CM_OK);
    cm_safetensors_t *file = NULL;
    ck_assert_int_eq(cm_model_load(path, BATCH, &loaded, &file), CM_OK);
    ck_assert_str_eq(cm_safetensors_metadata(file, "model"), spec_text);
    ck_assert_ptr_nonnull(cm_safetensors_find(file, tensor_name));
    ck_assert_int_eq(memcmp(cm_model_spec(model), cm_model_spec(loaded), sizeof spec), 0);
    ck_assert_int_eq(memcmp(cm_model_params(model), cm_model_params(loaded),
                            sizeof(float) * cm_model_param_count(model)),
                     0);
    cm_rng_t rng;
    cm_rng_seed(&rng, 78);
    float inputs[BATCH * 16];
    random_inputs(&spec, &rng, BATCH, -1, inputs);
    size_t bytes = sizeof(float) * BATCH * (size_t)spec.classes;
    float *first = malloc(bytes);
    ck_assert_ptr_nonnull(first);
    memcpy(first, cm_model_forward(model, inputs, BATCH), bytes);
    ck_assert_int_eq(memcmp(first, cm_model_forward(loaded, inputs, BATCH), bytes), 0);
    free(first);
    cm_safetensors_free(&file);
    cm_model_free(&loaded);
    cm_model_free(&model);
    unlink(path);
    rmdir(temp_dir);
}

START_TEST(test_checkpoint_round_trip_emb_tok) {
    check_round_trip("emb:cards=7x11x3,dim=4,mlp=9-5,out=2", "emb.2.weight");
    check_round_trip("tok:len=16,vocab=13,dim=8,depth=2,heads=2,mlp=12,pad=3,out=1",
                     "tok_embed.weight");
}
END_TEST

/* ---- cnn ------------------------------------------------------------------------------ */

/* Strict cnn specs: every refusal names the spec and the problem. */
START_TEST(test_cnn_spec) {
    cm_model_spec_t spec;
    ck_assert_int_eq(cm_model_spec_parse("cnn:conv=8-16,pool=1-0,fc=0,classes=4", &spec), CM_OK);
    ck_assert_int_eq(spec.kind, CM_MODEL_CNN);
    ck_assert_int_eq(spec.stages, 2);
    ck_assert_int_eq(spec.pool[0], 1);
    ck_assert_int_eq(spec.pool[1], 0);
    ck_assert_int_eq(spec.layers, 1);
    ck_assert_int_eq(spec.widths[0], 16);
    ck_assert_int_eq(spec.widths[1], 4);
    ck_assert_int_eq(cm_model_spec_inputs(&spec), 784);
    ck_assert_int_eq(cm_model_spec_parse("cnn:image=16x12,channels=3,fc=32-16", &spec), CM_OK);
    ck_assert_int_eq(cm_model_spec_inputs(&spec), 3 * 16 * 12);
    ck_assert_int_eq(spec.layers, 3);
    ck_assert_int_eq(cm_model_spec_parse("cnn:conv=8-16,pool=1-1,head=flatten,fc=0", &spec), CM_OK);
    ck_assert_int_eq(spec.widths[0], 16 * 7 * 7);
    const char *refused[][2] = {
        {"cnn:conv=8-16,pool=1", "gives 1 pool flags for 2 conv stages"},
        {"cnn:pool=1-2-1", "pool flag must be a whole number from 0 to 1, not '2'"},
        {"cnn:kernel=4", "kernel 4 must be odd"},
        {"cnn:kernel=9", "kernel must be a whole number from 1 to 7"},
        {"cnn:fc=0-16", "an fc width is 0"},
        {"cnn:fc=", "has an empty fc width"},
        {"cnn:conv=8-", "has an empty conv width"},
        {"cnn:image=4x4,conv=2-2-2", "stage 2 pools a 1x1 map"},
        {"cnn:image=28", "image must be HxW"},
        {"cnn:depth=3", "unknown key 'depth'"},
        {"cnn:conv=1-2-3-4-5-6-7-8-9", "more than 8 conv widths"},
        {"cnn:classes=10,classes=3", "gives 'classes' twice"},
        {"cnn:", "empty field"},
        {"cnn:head=max", "head must be gap (global average pooling) or flatten, not 'max'"},
    };
    for (size_t index = 0; index < sizeof refused / sizeof refused[0]; index++) {
        ck_assert_msg(cm_model_spec_parse(refused[index][0], &spec) == CM_ERR_INVALID_ARG,
                      "accepted %s", refused[index][0]);
        ck_assert_msg(strstr(cm_last_error(), refused[index][1]) &&
                          strstr(cm_last_error(), refused[index][0]),
                      "%s: '%s' does not say '%s'", refused[index][0], cm_last_error(),
                      refused[index][1]);
    }
}
END_TEST

/* Train-mode batch norm couples the examples of a batch; every gradient still matches (a
 * small step: max pooling and ReLU have kinks). */
START_TEST(test_cnn_gradients) {
    check_model_gradients("cnn:image=6x5,channels=2,conv=3-4,kernel=3,pool=1-0,fc=5,classes=3", 4,
                          1e-3f, 1);
    check_model_gradients("cnn:image=4x4,channels=1,conv=3,kernel=1,pool=0,fc=0,classes=2", 3,
                          1e-3f, 1);
    check_model_gradients("cnn:image=6x6,channels=1,conv=3-2,pool=1-0,head=flatten,fc=4,classes=3",
                          3, 1e-3f, 1);
    check_model_gradients("cnn:image=4x6,channels=2,conv=3,pool=1,head=flatten,fc=0,classes=2", 3,
                          1e-3f, 1);
    /* eval mode: batch norm is a fixed affine map of the running statistics */
    check_model_gradients("cnn:image=6x5,channels=2,conv=3-4,kernel=3,pool=1-0,fc=5,classes=3", 4,
                          1e-3f, 0);
}
END_TEST

START_TEST(test_cnn_overfits_one_batch) {
    overfit("cnn:image=8x8,channels=1,conv=8-16,pool=1-1,fc=16,classes=4", 1e-2f);
}
END_TEST

/*
 * Train and eval mode: a model starts in eval mode; a training forward updates the running
 * statistics, an eval forward does not and treats every example alone (the same logits for an
 * example in a batch of 4 and alone), while training-mode logits depend on the batch.  AdamW
 * never moves the running statistics; cm_model_evaluate runs in eval mode and restores the mode.
 */
START_TEST(test_cnn_train_eval_modes) {
    enum { BATCH = 4 };
    cm_model_spec_t spec;
    ck_assert_int_eq(
        cm_model_spec_parse("cnn:image=6x6,channels=1,conv=4-6,pool=1-0,fc=0,classes=3", &spec),
        CM_OK);
    cm_model_t *model = NULL;
    ck_assert_int_eq(cm_model_new(&spec, BATCH, &model), CM_OK);
    cm_model_init(model, 21);
    ck_assert_int_eq(cm_model_training(model), 0);
    cm_rng_t rng;
    cm_rng_seed(&rng, 22);
    float inputs[BATCH * 36];
    random_inputs(&spec, &rng, BATCH, -1, inputs);
    for (int index = 0; index < BATCH * 36; index++) inputs[index] = 2.0f * inputs[index] + 1.0f;
    const float *running = NULL;
    for (int index = 0; index < cm_model_tensor_count(model); index++)
        if (strcmp(cm_model_tensor(model, index).name, "stages.1.bn.running_mean") == 0)
            running = cm_model_tensor(model, index).data;
    ck_assert_ptr_nonnull(running);
    float eval_batch[BATCH * 3], eval_alone[3], train_batch[BATCH * 3];
    memcpy(eval_batch, cm_model_forward(model, inputs, BATCH), sizeof eval_batch);
    ck_assert_float_eq(running[0], 0.0f);
    memcpy(eval_alone, cm_model_forward(model, inputs + 36, 1), sizeof eval_alone);
    for (int class = 0; class < 3; class ++)
        ck_assert_float_eq_tol(eval_alone[class], eval_batch[3 + class], 1e-5f);
    cm_model_set_training(model, 1);
    memcpy(train_batch, cm_model_forward(model, inputs, BATCH), sizeof train_batch);
    ck_assert_float_ne(running[0], 0.0f);
    const float *alone = cm_model_forward(model, inputs + 36, 1);
    int differs = 0;
    for (int class = 0; class < 3; class ++)
        differs |= fabsf(alone[class] - train_batch[3 + class]) > 1e-4f;
    ck_assert_msg(differs, "training-mode logits do not depend on the batch");

    size_t count = cm_model_param_count(model);
    float *params_before = malloc(sizeof(float) * count), *m = cm_alloc_floats(count),
          *v = cm_alloc_floats(count);
    ck_assert_ptr_nonnull(params_before);
    float probs[BATCH * 3], d_logits[BATCH * 3];
    int32_t labels[BATCH] = {0, 1, 2, 1};
    cm_model_zero_grads(model);
    cm_model_forward(model, inputs, BATCH);
    cm_loss_cross_entropy_forward(probs, cm_model_forward(model, inputs, BATCH), labels, BATCH, 3,
                                  NULL);
    memset(d_logits, 0, sizeof d_logits);
    cm_loss_cross_entropy_backward(d_logits, probs, labels, BATCH, 3, 1.0f);
    cm_model_backward(model, d_logits, NULL, BATCH);
    memcpy(params_before, cm_model_params(model), sizeof(float) * count);
    cm_adamw_config_t config = cm_adamw_defaults();
    cm_model_adamw_step(model, m, v, &config, 1);
    for (int index = 0; index < cm_model_tensor_count(model); index++) {
        cm_tensor_t tensor = cm_model_tensor(model, index);
        size_t offset = (size_t)((float *)tensor.data - cm_model_params(model));
        int moved = memcmp(params_before + offset, tensor.data,
                           sizeof(float) * (size_t)cm_tensor_elements(&tensor)) != 0;
        int statistic = strstr(tensor.name, "running_") != NULL;
        ck_assert_msg(moved != statistic, "%s %s by AdamW", tensor.name,
                      moved ? "was moved" : "was not moved");
    }
    double accuracy = 0.0;
    cm_model_evaluate(model, inputs, labels, BATCH, &accuracy, NULL);
    ck_assert_int_eq(cm_model_training(model), 1);
    free(params_before);
    cm_free_aligned(m);
    cm_free_aligned(v);
    cm_model_free(&model);
}
END_TEST

/* "hidden" and "tokens": the tokens are the last map as [positions][channels], so with fc=0
 * their mean over positions is the hidden (pooled) vector, and every position differs. */
START_TEST(test_cnn_features) {
    enum { BATCH = 2 };
    cm_model_spec_t spec;
    ck_assert_int_eq(
        cm_model_spec_parse("cnn:image=8x6,channels=2,conv=4-5,pool=1-0,fc=0,classes=3", &spec),
        CM_OK);
    cm_model_t *model = NULL;
    ck_assert_int_eq(cm_model_new(&spec, BATCH, &model), CM_OK);
    cm_model_init(model, 31);
    cm_rng_t rng;
    cm_rng_seed(&rng, 32);
    float inputs[BATCH * 96];
    random_inputs(&spec, &rng, BATCH, -1, inputs);
    cm_model_forward(model, inputs, BATCH);
    ck_assert_str_eq(cm_model_feature_names(model), "hidden,tokens");
    int width = 0, tokens = 0, hidden_width = 0;
    const float *token_matrix = cm_model_feature(model, "tokens", &width, &tokens);
    const float *hidden = cm_model_feature(model, "hidden", &hidden_width, NULL);
    ck_assert_ptr_nonnull(token_matrix);
    ck_assert_ptr_nonnull(hidden);
    ck_assert_int_eq(tokens, 4 * 3);
    ck_assert_int_eq(width, 12 * 5);
    ck_assert_int_eq(hidden_width, 5);
    for (int example = 0; example < BATCH; example++)
        for (int channel = 0; channel < 5; channel++) {
            double sum = 0.0;
            for (int position = 0; position < tokens; position++)
                sum += token_matrix[example * width + position * 5 + channel];
            ck_assert_float_eq_tol(sum / tokens, hidden[example * 5 + channel], 1e-5);
        }
    ck_assert_str_eq(cm_model_tensor(model, 0).name, "stages.0.conv.weight");
    ck_assert_int_eq(cm_model_tensor(model, 0).ndim, 4);
    ck_assert_int_eq(cm_model_tensor(model, 0).shape[1], 2);
    ck_assert_int_eq(cm_model_tensor(model, 0).shape[3], 3);
    cm_model_free(&model);
}
END_TEST

/* Running statistics survive a checkpoint: trained ones are saved as tensors, loaded back, and
 * the loaded model's eval outputs equal the original's bit for bit. */
START_TEST(test_cnn_checkpoint_round_trip) {
    enum { BATCH = 3 };
    make_temp_dir();
    char path[128];
    snprintf(path, sizeof path, "%s/cnn.safetensors", temp_dir);
    const char *spec_text =
        "cnn:image=6x6,channels=1,conv=4-6,kernel=3,pool=1-0,head=gap,fc=7,classes=3";
    cm_model_spec_t spec;
    ck_assert_int_eq(cm_model_spec_parse(spec_text, &spec), CM_OK);
    cm_model_t *model = NULL, *loaded = NULL;
    ck_assert_int_eq(cm_model_new(&spec, BATCH, &model), CM_OK);
    cm_model_init(model, 41);
    cm_rng_t rng;
    cm_rng_seed(&rng, 42);
    float inputs[BATCH * 36];
    random_inputs(&spec, &rng, BATCH, -1, inputs);
    cm_model_set_training(model, 1);
    for (int pass = 0; pass < 3; pass++) cm_model_forward(model, inputs, BATCH);
    cm_model_set_training(model, 0);
    ck_assert_int_eq(cm_model_save(model, path, NULL, 0), CM_OK);
    cm_safetensors_t *file = NULL;
    ck_assert_int_eq(cm_model_load(path, BATCH, &loaded, &file), CM_OK);
    ck_assert_str_eq(cm_safetensors_metadata(file, "model"), spec_text);
    const cm_tensor_t *stored = cm_safetensors_find(file, "stages.1.bn.running_var");
    ck_assert_ptr_nonnull(stored);
    ck_assert_int_eq(stored->ndim, 1);
    ck_assert_int_eq(stored->shape[0], 6);
    ck_assert_float_ne(((const float *)stored->data)[0], 1.0f);
    stored = cm_safetensors_find(file, "stages.0.conv.weight");
    ck_assert_ptr_nonnull(stored);
    ck_assert_int_eq(stored->ndim, 4);
    ck_assert_int_eq(memcmp(cm_model_params(model), cm_model_params(loaded),
                            sizeof(float) * cm_model_param_count(model)),
                     0);
    ck_assert_int_eq(cm_model_training(loaded), 0);
    float first[BATCH * 3];
    memcpy(first, cm_model_forward(model, inputs, BATCH), sizeof first);
    ck_assert_int_eq(memcmp(first, cm_model_forward(loaded, inputs, BATCH), sizeof first), 0);
    cm_safetensors_free(&file);
    cm_model_free(&loaded);

    /* a conv weight of the wrong 4-D shape is refused with its name and shape */
    cm_tensor_t tensors[64];
    int count = cm_model_tensor_count(model);
    for (int index = 0; index < count; index++) tensors[index] = cm_model_tensor(model, index);
    tensors[0].shape[2] = 1;
    tensors[0].shape[3] = 9;
    const char *metadata[] = {"model", spec_text};
    ck_assert_int_eq(cm_safetensors_write(path, tensors, count, metadata, 1), CM_OK);
    ck_assert_int_eq(cm_model_load(path, BATCH, &loaded, NULL), CM_ERR_SHAPE);
    ck_assert_ptr_nonnull(
        strstr(cm_last_error(), "'stages.0.conv.weight' should be F32 [4,1,3,3]"));
    cm_model_free(&model);
    unlink(path);
    rmdir(temp_dir);
}
END_TEST

/* teacher-server fit trains a cnn with a one-cycle schedule: the log names the schedule and
 * warm-up, the checkpoint holds trained running statistics and beats chance on the test split;
 * teacher-server serve runs it in eval mode (the accuracy `query` measures on the same 200 test
 * examples is the one fit reported) and serves "hidden" and "tokens" [positions x channels]. */
START_TEST(test_fit_cnn_onecycle) {
    char directory[256], command[1024], output[8192], checkpoint[320];
    test_util_temp_dir(directory, sizeof directory);
    snprintf(checkpoint, sizeof checkpoint, "%s/cnn.safetensors", directory);
    snprintf(command, sizeof command,
             "%s fit --model cnn:conv=8-16,pool=1-1,fc=0 --max-train 1024 --max-test 200 "
             "--epochs 3 --batch 32 --lr 1e-2 --schedule onecycle --warmup-steps 5 --out %s",
             test_util_bin("teacher-server"), checkpoint);
    int code = test_util_run(command, output, sizeof output);
    ck_assert_msg(code == 0, "exit %d: %s", code, output);
    ck_assert_msg(strstr(output, "schedule onecycle, peak lr 0.01, 5 warm-up steps"), "%s", output);
    cm_model_t *model = NULL;
    ck_assert_int_eq(cm_model_load(checkpoint, 8, &model, NULL), CM_OK);
    for (int index = 0; index < cm_model_tensor_count(model); index++) {
        cm_tensor_t tensor = cm_model_tensor(model, index);
        if (strcmp(tensor.name, "stages.1.bn.running_var") == 0)
            ck_assert_float_ne(((const float *)tensor.data)[0], 1.0f);
    }
    cm_model_free(&model);
    const char *accuracy = strstr(output, "test_accuracy=");
    ck_assert_ptr_nonnull(accuracy);
    ck_assert_msg(atof(accuracy + 14) > 0.3, "%s", output);
    char fit_accuracy[16]; /* "0.4650" */
    snprintf(fit_accuracy, sizeof fit_accuracy, "%.6s", accuracy + strlen("test_accuracy="));

    serve_fixture_t server;
    char why[4096];
    const char *arguments[] = {"--http", "off", NULL};
    ck_assert_msg(serve_fixture_start(&server, directory, checkpoint, arguments, why, sizeof why) ==
                      0,
                  "%s", why);
    snprintf(command, sizeof command,
             "%s query --connect %s --outputs logits,hidden,tokens --ids 0-199 --rows 1",
             test_util_bin("teacher-server"), server.endpoint);
    code = test_util_run(command, output, sizeof output);
    serve_fixture_stop(&server, SIGTERM, SERVE_FIXTURE_TIMEOUT_MS);
    ck_assert_msg(code == 0, "exit %d: %s", code, output);
    ck_assert_msg(strstr(output, "logits[10] hidden[16] tokens[49x16]"), "%s", output);
    ck_assert_msg(strstr(output, "tokens (dense, F32) shape [200,49,16]"), "%s", output);
    char served[64];
    snprintf(served, sizeof served, "accuracy on these 200 examples: %s", fit_accuracy);
    ck_assert_msg(strstr(output, served), "fit measured %s, the served model: %s", fit_accuracy,
                  output);

    snprintf(command, sizeof command,
             "%s fit --model mlp:784-8-10 --max-train 10 --epochs 1 --schedule linear --out %s",
             test_util_bin("teacher-server"), checkpoint);
    code = test_util_run(command, output, sizeof output);
    ck_assert_msg(code == 2 && strstr(output, "--schedule must be cosine, onecycle or constant, "
                                              "not 'linear'"),
                  "exit %d: %s", code, output);
    test_util_remove_tree(directory);
}
END_TEST

Suite *check_model_suite(void);
Suite *check_model_suite(void) {
    Suite *suite = suite_create("model");
    TCase *tcase = tcase_create("model");
    tcase_set_timeout(tcase, 30);
    tcase_add_test(tcase, test_spec_parse);
    tcase_add_test(tcase, test_spec_refuses_what_it_does_not_consume);
    tcase_add_test(tcase, test_fit_refuses_bad_spec);
    tcase_add_test(tcase, test_spec_round_trip_all_families);
    tcase_add_test(tcase, test_mlp_gradients);
    tcase_add_test(tcase, test_vit_gradients);
    tcase_add_test(tcase, test_emb_gradients);
    tcase_add_test(tcase, test_tok_gradients);
    tcase_add_test(tcase, test_mlp_overfits_one_batch);
    tcase_add_test(tcase, test_step_allocates_nothing);
    tcase_add_test(tcase, test_vit_overfits_one_batch);
    tcase_add_test(tcase, test_emb_overfits_one_batch);
    tcase_add_test(tcase, test_tok_overfits_one_batch);
    tcase_add_test(tcase, test_emb_regression_overfits_one_batch);
    tcase_add_test(tcase, test_evaluate_regression);
    tcase_add_test(tcase, test_tok_padding_is_invisible);
    tcase_add_test(tcase, test_id_inputs_are_checked);
    tcase_add_test(tcase, test_features);
    tcase_add_test(tcase, test_head_reads_hidden);
    tcase_add_test(tcase, test_checkpoint_round_trip);
    tcase_add_test(tcase, test_checkpoint_round_trip_emb_tok);
    tcase_add_test(tcase, test_cnn_spec);
    tcase_add_test(tcase, test_cnn_gradients);
    tcase_add_test(tcase, test_cnn_overfits_one_batch);
    tcase_add_test(tcase, test_cnn_train_eval_modes);
    tcase_add_test(tcase, test_cnn_features);
    tcase_add_test(tcase, test_cnn_checkpoint_round_trip);
    tcase_add_test(tcase, test_fit_cnn_onecycle);
    suite_add_tcase(suite, tcase);
    return suite;
}
