/*
 * trainer_http: see trainer_http.h.
 */
#include "trainer_http.h"

#include "cm_http.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

struct trainer_http {
    uv_loop_t loop;
    uv_async_t stop;
    cm_http_t *server;
    cm_metrics_t *metrics;
    pthread_t thread;
    _Atomic(const char *) not_ready; /* NULL: ready */
};

void trainer_http_set_ready(trainer_http_t *http, const char *reason) {
    if (http) atomic_store(&http->not_ready, reason);
}

static void on_request(const cm_http_request_t *request, cm_http_response_t *response, void *user) {
    trainer_http_t *http = user;
    if (strcmp(request->path, "/healthz") == 0) {
        response->status = 200;
        response->body = "ok\n";
    } else if (strcmp(request->path, "/readyz") == 0) {
        const char *reason = atomic_load(&http->not_ready);
        response->status = reason ? 503 : 200;
        char text[256];
        snprintf(text, sizeof text, "%s\n", reason ? reason : "ready");
        char *body = strdup(text); /* each answer its own: requests may overlap */
        if (body) {
            response->body = body;
            response->body_release = free;
        } else {
            response->body = reason ? "not ready\n" : "ready\n";
        }
    } else if (strcmp(request->path, "/metrics") == 0) {
        cm_http_respond_metrics(response, http->metrics);
    }
}

static void on_stop(uv_async_t *handle) {
    trainer_http_t *http = handle->data;
    cm_http_close(http->server, NULL);
    uv_close((uv_handle_t *)&http->stop, NULL);
}

static void *run_loop(void *argument) {
    trainer_http_t *http = argument;
    uv_run(&http->loop, UV_RUN_DEFAULT);
    return NULL;
}

cm_status_t trainer_http_start(const char *address, cm_metrics_t *metrics, trainer_http_t **out) {
    *out = NULL;
    trainer_http_t *http = calloc(1, sizeof *http);
    if (!http) return cm_fail(CM_ERR_NOMEM, "out of memory for the HTTP server");
    http->metrics = metrics;
    atomic_init(&http->not_ready, "starting");
    if (uv_loop_init(&http->loop) != 0) {
        free(http);
        return cm_fail(CM_ERR_INTERNAL, "cannot start an event loop for HTTP");
    }
    cm_status_t status = cm_http_new(&http->loop, address, on_request, http, &http->server);
    if (status != CM_OK) {
        uv_loop_close(&http->loop);
        free(http);
        return status;
    }
    uv_async_init(&http->loop, &http->stop, on_stop);
    http->stop.data = http;
    if (pthread_create(&http->thread, NULL, run_loop, http) != 0) {
        on_stop(&http->stop);
        uv_run(&http->loop, UV_RUN_DEFAULT);
        cm_http_free(&http->server);
        uv_loop_close(&http->loop);
        free(http);
        return cm_fail(CM_ERR_INTERNAL, "cannot start the HTTP thread");
    }
    *out = http;
    return CM_OK;
}

void trainer_http_stop(trainer_http_t **http_pointer) {
    trainer_http_t *http = *http_pointer;
    if (!http) return;
    uv_async_send(&http->stop);
    pthread_join(http->thread, NULL);
    cm_http_free(&http->server);
    uv_loop_close(&http->loop);
    free(http);
    *http_pointer = NULL;
}
