build-werror/obj/student_trainer/trainer_eval.o: \
 student_trainer/trainer_eval.c student_trainer/trainer_eval.h \
 common/cm_blas.h common/cm_cli.h common/cm_status.h common/cm_dataset.h \
 common/cm_log.h common/cm_model.h common/cm_adamw.h common/cm_tensor.h \
 common/cm_safetensors.h
student_trainer/trainer_eval.h:
common/cm_blas.h:
common/cm_cli.h:
common/cm_status.h:
common/cm_dataset.h:
common/cm_log.h:
common/cm_model.h:
common/cm_adamw.h:
common/cm_tensor.h:
common/cm_safetensors.h:
