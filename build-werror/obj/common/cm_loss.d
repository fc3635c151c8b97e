build-werror/obj/common/cm_loss.o: common/cm_loss.c common/cm_loss.h
common/cm_loss.h:
