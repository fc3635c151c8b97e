build-werror/obj/common/cm_zloop.o: common/cm_zloop.c common/cm_zloop.h \
 common/cm_status.h common/cm_log.h
common/cm_zloop.h:
common/cm_status.h:
common/cm_log.h:
