build-werror/obj/student_trainer/trainer_method.o: \
 student_trainer/trainer_method.c student_trainer/trainer_method.h \
 common/cm_adamw.h common/cm_status.h common/cm_alloc.h \
 common/cm_layers.h common/cm_loss.h common/cm_rng.h
student_trainer/trainer_method.h:
common/cm_adamw.h:
common/cm_status.h:
common/cm_alloc.h:
common/cm_layers.h:
common/cm_loss.h:
common/cm_rng.h:
