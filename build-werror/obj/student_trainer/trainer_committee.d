build-werror/obj/student_trainer/trainer_committee.o: \
 student_trainer/trainer_committee.c student_trainer/trainer_committee.h \
 common/cm_status.h common/cm_tensor.h common/cm_wire.h \
 common/cm_dataset.h common/cm_status.h common/cm_tensor.h \
 student_trainer/trainer_cache.h common/cm_log.h common/cm_progress.h \
 common/cm_zwire.h common/cm_wire.h
student_trainer/trainer_committee.h:
common/cm_status.h:
common/cm_tensor.h:
common/cm_wire.h:
common/cm_dataset.h:
common/cm_status.h:
common/cm_tensor.h:
student_trainer/trainer_cache.h:
common/cm_log.h:
common/cm_progress.h:
common/cm_zwire.h:
common/cm_wire.h:
