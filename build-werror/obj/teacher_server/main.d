build-werror/obj/teacher_server/main.o: teacher_server/main.c \
 teacher_server/teacher_fit.h teacher_server/teacher_query.h \
 teacher_server/teacher_serve.h
teacher_server/teacher_fit.h:
teacher_server/teacher_query.h:
teacher_server/teacher_serve.h:
