build-werror/obj/teacher_server/teacher_fit.o: \
 teacher_server/teacher_fit.c teacher_server/teacher_fit.h \
 common/cm_alloc.h common/cm_blas.h common/cm_cli.h common/cm_status.h \
 common/cm_dataset.h common/cm_log.h common/cm_loss.h common/cm_model.h \
 common/cm_adamw.h common/cm_tensor.h common/cm_progress.h \
 common/cm_rng.h
teacher_server/teacher_fit.h:
common/cm_alloc.h:
common/cm_blas.h:
common/cm_cli.h:
common/cm_status.h:
common/cm_dataset.h:
common/cm_log.h:
common/cm_loss.h:
common/cm_model.h:
common/cm_adamw.h:
common/cm_tensor.h:
common/cm_progress.h:
common/cm_rng.h:
