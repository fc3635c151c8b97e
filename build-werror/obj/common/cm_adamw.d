build-werror/obj/common/cm_adamw.o: common/cm_adamw.c common/cm_adamw.h
common/cm_adamw.h:
