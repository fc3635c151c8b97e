build-werror/obj/common/cm_tensor.o: common/cm_tensor.c \
 common/cm_tensor.h
common/cm_tensor.h:
