build-werror/obj/common/cm_dataset.o: common/cm_dataset.c \
 common/cm_dataset.h common/cm_status.h common/cm_alloc.h \
 common/cm_sha256.h
common/cm_dataset.h:
common/cm_status.h:
common/cm_alloc.h:
common/cm_sha256.h:
