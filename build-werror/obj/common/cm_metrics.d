build-werror/obj/common/cm_metrics.o: common/cm_metrics.c \
 common/cm_metrics.h common/cm_status.h common/cm_alloc.h
common/cm_metrics.h:
common/cm_status.h:
common/cm_alloc.h:
