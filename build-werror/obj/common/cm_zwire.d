build-werror/obj/common/cm_zwire.o: common/cm_zwire.c common/cm_zwire.h \
 common/cm_status.h common/cm_wire.h common/cm_dataset.h \
 common/cm_tensor.h
common/cm_zwire.h:
common/cm_status.h:
common/cm_wire.h:
common/cm_dataset.h:
common/cm_tensor.h:
