build-werror/obj/common/cm_cli.o: common/cm_cli.c common/cm_cli.h \
 common/cm_status.h
common/cm_cli.h:
common/cm_status.h:
