build-werror/obj/student_trainer/trainer_train.o: \
 student_trainer/trainer_train.c student_trainer/trainer_train.h \
 common/cm_alloc.h common/cm_blas.h common/cm_cli.h common/cm_status.h \
 common/cm_dataset.h common/cm_log.h common/cm_metrics.h \
 common/cm_model.h common/cm_adamw.h common/cm_tensor.h \
 common/cm_progress.h common/cm_rng.h common/cm_safetensors.h \
 student_trainer/trainer_cache.h common/cm_status.h \
 student_trainer/trainer_committee.h common/cm_tensor.h common/cm_wire.h \
 common/cm_dataset.h student_trainer/trainer_http.h \
 student_trainer/trainer_method.h common/cm_adamw.h
student_trainer/trainer_train.h:
common/cm_alloc.h:
common/cm_blas.h:
common/cm_cli.h:
common/cm_status.h:
common/cm_dataset.h:
common/cm_log.h:
common/cm_metrics.h:
common/cm_model.h:
common/cm_adamw.h:
common/cm_tensor.h:
common/cm_progress.h:
common/cm_rng.h:
common/cm_safetensors.h:
student_trainer/trainer_cache.h:
common/cm_status.h:
student_trainer/trainer_committee.h:
common/cm_tensor.h:
common/cm_wire.h:
common/cm_dataset.h:
student_trainer/trainer_http.h:
student_trainer/trainer_method.h:
common/cm_adamw.h:
