build-werror/obj/teacher_server/teacher_serve.o: \
 teacher_server/teacher_serve.c teacher_server/teacher_serve.h \
 common/cm_blas.h common/cm_cli.h common/cm_status.h common/cm_dataset.h \
 common/cm_file.h common/cm_http.h common/cm_log.h common/cm_metrics.h \
 common/cm_model.h common/cm_adamw.h common/cm_tensor.h \
 common/cm_progress.h common/cm_safetensors.h common/cm_sha256.h \
 common/cm_wire.h common/cm_dataset.h common/cm_zloop.h common/cm_zwire.h \
 common/cm_wire.h
teacher_server/teacher_serve.h:
common/cm_blas.h:
common/cm_cli.h:
common/cm_status.h:
common/cm_dataset.h:
common/cm_file.h:
common/cm_http.h:
common/cm_log.h:
common/cm_metrics.h:
common/cm_model.h:
common/cm_adamw.h:
common/cm_tensor.h:
common/cm_progress.h:
common/cm_safetensors.h:
common/cm_sha256.h:
common/cm_wire.h:
common/cm_dataset.h:
common/cm_zloop.h:
common/cm_zwire.h:
common/cm_wire.h:
