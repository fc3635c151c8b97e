/*
 * trainer_resolve: see trainer_resolve.h.
 *
 * A query's request block must outlive the query: glibc's resolver thread
 * writes into it.  trainer_lookup_free cancels a running query and, when
 * glibc cannot cancel it any more, waits (a bounded while) for its end.
 */
#include "trainer_resolve.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

struct trainer_lookup {
    char host[256];
    struct addrinfo hints;
    struct gaicb request;
    struct gaicb *list[1];
    int running;
};

trainer_lookup_t *trainer_lookup_new(const char *host) {
    trainer_lookup_t *lookup = calloc(1, sizeof *lookup);
    if (!lookup) return NULL;
    snprintf(lookup->host, sizeof lookup->host, "%s", host);
    lookup->hints.ai_family = AF_UNSPEC;
    lookup->hints.ai_socktype = SOCK_STREAM;
    lookup->list[0] = &lookup->request;
    return lookup;
}

static int compare_addresses(const void *a, const void *b) {
    return strcmp((const char *)a, (const char *)b);
}

/* The numeric addresses of `result`, sorted, each once. */
static int collect(const struct addrinfo *result, char addresses[][TRAINER_RESOLVE_ADDRESS]) {
    int count = 0;
    for (const struct addrinfo *info = result; info && count < TRAINER_RESOLVE_MAX;
         info = info->ai_next) {
        char text[TRAINER_RESOLVE_ADDRESS];
        if (getnameinfo(info->ai_addr, info->ai_addrlen, text, sizeof text, NULL, 0,
                        NI_NUMERICHOST) != 0)
            continue;
        int seen = 0;
        for (int index = 0; index < count && !seen; index++)
            seen = strcmp(addresses[index], text) == 0;
        if (!seen) memcpy(addresses[count++], text, sizeof text);
    }
    qsort(addresses, (size_t)count, TRAINER_RESOLVE_ADDRESS, compare_addresses);
    return count;
}

trainer_resolve_state_t trainer_lookup_poll(trainer_lookup_t *lookup,
                                            char addresses[][TRAINER_RESOLVE_ADDRESS], int *count,
                                            const char **error) {
    *count = 0;
    *error = NULL;
    if (!lookup->running) {
        memset(&lookup->request, 0, sizeof lookup->request);
        lookup->request.ar_name = lookup->host;
        lookup->request.ar_request = &lookup->hints;
        int started = getaddrinfo_a(GAI_NOWAIT, lookup->list, 1, NULL);
        if (started != 0) {
            *error = gai_strerror(started);
            return TRAINER_RESOLVE_FAILED;
        }
        lookup->running = 1;
    }
    int status = gai_error(&lookup->request);
    if (status == EAI_INPROGRESS) return TRAINER_RESOLVE_PENDING;
    lookup->running = 0;
    if (status == 0) {
        *count = collect(lookup->request.ar_result, addresses);
        freeaddrinfo(lookup->request.ar_result);
        lookup->request.ar_result = NULL;
        return TRAINER_RESOLVE_DONE;
    }
    if (status == EAI_NONAME
#ifdef EAI_NODATA
        || status == EAI_NODATA
#endif
    )
        return TRAINER_RESOLVE_DONE; /* the name is gone: no replica now */
    *error = gai_strerror(status);
    return TRAINER_RESOLVE_FAILED;
}

void trainer_lookup_free(trainer_lookup_t *lookup) {
    if (!lookup) return;
    if (lookup->running && gai_cancel(&lookup->request) == EAI_NOTCANCELED) {
        /* glibc's thread is inside the query: let it finish (DNS timeouts are seconds). */
        for (int waits = 0; waits < 100 && gai_error(&lookup->request) == EAI_INPROGRESS; waits++) {
            struct timespec pause = {0, 100 * 1000 * 1000};
            const struct gaicb *const pending[1] = {&lookup->request};
            gai_suspend(pending, 1, &pause);
        }
        if (gai_error(&lookup->request) == EAI_INPROGRESS) return; /* leave it to glibc */
    }
    if (!lookup->running || gai_error(&lookup->request) == 0)
        if (lookup->request.ar_result) freeaddrinfo(lookup->request.ar_result);
    free(lookup);
}

int trainer_resolve_is_numeric(const char *host) {
    unsigned char buffer[sizeof(struct in6_addr)];
    return inet_pton(AF_INET, host, buffer) == 1 || inet_pton(AF_INET6, host, buffer) == 1;
}

int trainer_resolve_split(const char *endpoint, char *host, int host_size, char *port,
                          int port_size) {
    const char *prefix = "tcp://";
    if (strncmp(endpoint, prefix, strlen(prefix)) != 0) return 0;
    const char *start = endpoint + strlen(prefix);
    if (*start == '[') return 0; /* a bracketed IPv6 literal */
    const char *colon = strrchr(start, ':');
    if (!colon || colon == start || (int)(colon - start) >= host_size ||
        (int)strlen(colon + 1) >= port_size)
        return 0;
    snprintf(host, (size_t)host_size, "%.*s", (int)(colon - start), start);
    snprintf(port, (size_t)port_size, "%s", colon + 1);
    if (strcmp(host, "*") == 0 || trainer_resolve_is_numeric(host)) return 0;
    return 1;
}
