build-werror/obj/common/cm_layers.o: common/cm_layers.c \
 common/cm_layers.h common/cm_blas.h
common/cm_layers.h:
common/cm_blas.h:
