build-werror/obj/teacher_server/teacher_query.o: \
 teacher_server/teacher_query.c teacher_server/teacher_query.h \
 common/cm_cli.h common/cm_status.h common/cm_dataset.h common/cm_log.h \
 common/cm_wire.h common/cm_dataset.h common/cm_tensor.h \
 common/cm_zwire.h common/cm_wire.h
teacher_server/teacher_query.h:
common/cm_cli.h:
common/cm_status.h:
common/cm_dataset.h:
common/cm_log.h:
common/cm_wire.h:
common/cm_dataset.h:
common/cm_tensor.h:
common/cm_zwire.h:
common/cm_wire.h:
