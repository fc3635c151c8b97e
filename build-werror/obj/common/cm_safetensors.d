build-werror/obj/common/cm_safetensors.o: common/cm_safetensors.c \
 common/cm_safetensors.h common/cm_status.h common/cm_tensor.h \
 common/cm_alloc.h common/cm_file.h
common/cm_safetensors.h:
common/cm_status.h:
common/cm_tensor.h:
common/cm_alloc.h:
common/cm_file.h:
