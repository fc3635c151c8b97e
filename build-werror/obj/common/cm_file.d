build-werror/obj/common/cm_file.o: common/cm_file.c common/cm_file.h \
 common/cm_status.h
common/cm_file.h:
common/cm_status.h:
