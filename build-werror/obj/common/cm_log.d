build-werror/obj/common/cm_log.o: common/cm_log.c common/cm_log.h
common/cm_log.h:
