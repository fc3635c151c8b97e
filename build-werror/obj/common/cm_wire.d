build-werror/obj/common/cm_wire.o: common/cm_wire.c common/cm_wire.h \
 common/cm_dataset.h common/cm_status.h common/cm_tensor.h \
 build-werror/gen/committee.pb-c.h
common/cm_wire.h:
common/cm_dataset.h:
common/cm_status.h:
common/cm_tensor.h:
build-werror/gen/committee.pb-c.h:
