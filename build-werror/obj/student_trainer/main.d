build-werror/obj/student_trainer/main.o: student_trainer/main.c \
 student_trainer/trainer_eval.h student_trainer/trainer_train.h
student_trainer/trainer_eval.h:
student_trainer/trainer_train.h:
