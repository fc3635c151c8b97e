build-werror/obj/common/cm_http.o: common/cm_http.c common/cm_http.h \
 common/cm_status.h common/cm_log.h
common/cm_http.h:
common/cm_status.h:
common/cm_log.h:
