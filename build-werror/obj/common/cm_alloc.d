build-werror/obj/common/cm_alloc.o: common/cm_alloc.c common/cm_alloc.h
common/cm_alloc.h:
