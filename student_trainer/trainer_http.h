/*
 * trainer_http: the trainer's /healthz, /readyz and /metrics endpoints.
 *
 * /readyz answers 200 "ready" once the trainer said it is (every teacher
 * said Hello and training started), else 503 with the reason it is not.
 *
 * The training loop is a plain loop on the main thread, so HTTP runs on a
 * small thread of its own with its own libuv loop; the training thread only
 * updates cm_metrics handles (lock-free atomics) and the HTTP thread renders
 * them on scrape.  Stopping wakes the HTTP thread with a uv_async_t, closes
 * every handle and joins it.
 */
#ifndef TRAINER_HTTP_H
#define TRAINER_HTTP_H

#include "cm_metrics.h"
#include "cm_status.h"

typedef struct trainer_http trainer_http_t;

/* Serves `metrics` (borrowed; must outlive the server) on `address` ("127.0.0.1:9101"). */
cm_status_t trainer_http_start(const char *address, cm_metrics_t *metrics, trainer_http_t **out);

/* Sets what /readyz answers: NULL for ready (200), else the reason it is not (503); `reason`
 * must be a string that lives as long as the server (a literal).  Any thread; NULL-safe. */
void trainer_http_set_ready(trainer_http_t *http, const char *reason);

/* Stops the thread, closes everything and frees; NULL-safe. */
void trainer_http_stop(trainer_http_t **http);

#endif
