build-werror/obj/common/cm_progress.o: common/cm_progress.c \
 common/cm_progress.h
common/cm_progress.h:
