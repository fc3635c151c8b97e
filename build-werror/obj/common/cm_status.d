build-werror/obj/common/cm_status.o: common/cm_status.c \
 common/cm_status.h
common/cm_status.h:
