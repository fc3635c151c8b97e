build-werror/obj/student_trainer/trainer_cache.o: \
 student_trainer/trainer_cache.c student_trainer/trainer_cache.h \
 common/cm_status.h common/cm_alloc.h common/cm_safetensors.h \
 common/cm_status.h common/cm_tensor.h
student_trainer/trainer_cache.h:
common/cm_status.h:
common/cm_alloc.h:
common/cm_safetensors.h:
common/cm_status.h:
common/cm_tensor.h:
