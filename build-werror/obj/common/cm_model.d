build-werror/obj/common/cm_model.o: common/cm_model.c common/cm_model.h \
 common/cm_adamw.h common/cm_status.h common/cm_tensor.h \
 common/cm_alloc.h common/cm_layers.h common/cm_loss.h common/cm_rng.h \
 common/cm_safetensors.h
common/cm_model.h:
common/cm_adamw.h:
common/cm_status.h:
common/cm_tensor.h:
common/cm_alloc.h:
common/cm_layers.h:
common/cm_loss.h:
common/cm_rng.h:
common/cm_safetensors.h:
