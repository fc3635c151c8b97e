build-werror/obj/common/cm_sha256.o: common/cm_sha256.c \
 common/cm_sha256.h
common/cm_sha256.h:
