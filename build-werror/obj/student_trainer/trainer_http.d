build-werror/obj/student_trainer/trainer_http.o: \
 student_trainer/trainer_http.c student_trainer/trainer_http.h \
 common/cm_metrics.h common/cm_status.h common/cm_status.h \
 common/cm_http.h
student_trainer/trainer_http.h:
common/cm_metrics.h:
common/cm_status.h:
common/cm_status.h:
common/cm_http.h:
