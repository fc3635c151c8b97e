build-werror/obj/gen/committee.pb-c.o: build-werror/gen/committee.pb-c.c \
 build-werror/gen/committee.pb-c.h
build-werror/gen/committee.pb-c.h:
