build-werror/obj/common/cm_rng.o: common/cm_rng.c common/cm_rng.h
common/cm_rng.h:
