/*
 * trainer_resolve: finding the replicas behind a host name, without blocking.
 *
 * A teacher endpoint such as tcp://tasks.fm:5555 names a service; DNS (Docker
 * Swarm's tasks.NAME, a Kubernetes headless Service, a compose service
 * scaled up) answers with one address per replica.  The trainer asks again
 * every few seconds and keeps one connection per address, so replicas that
 * come and go are used and dropped while training runs.
 *
 * The system resolver is glibc's getaddrinfo_a (the lookup runs on glibc's
 * own thread, the training thread only polls), so a slow or broken DNS
 * never holds up a step or a signal.  Tests give their own lookup function.
 */
#ifndef TRAINER_RESOLVE_H
#define TRAINER_RESOLVE_H

enum {
    TRAINER_RESOLVE_MAX = 16,     /* addresses kept from one answer */
    TRAINER_RESOLVE_ADDRESS = 48, /* a numeric IPv4 or IPv6 address and its NUL */
};

typedef enum {
    TRAINER_RESOLVE_PENDING, /* still asking */
    TRAINER_RESOLVE_DONE,    /* addresses[0..count) hold the answer (count may be 0: no replica) */
    TRAINER_RESOLVE_FAILED,  /* a temporary failure: keep what is known, ask again later */
} trainer_resolve_state_t;

/*
 * A lookup function: answers `host` into addresses[0..*count) (numeric, sorted, no duplicates),
 * or says it is still pending.  `context` is the function's own.  Called again with the same
 * host until it stops answering PENDING.
 */
typedef trainer_resolve_state_t (*trainer_resolve_fn)(void *context, const char *host,
                                                      char addresses[][TRAINER_RESOLVE_ADDRESS],
                                                      int *count);

/* One host name's lookups through the system resolver (getaddrinfo_a). */
typedef struct trainer_lookup trainer_lookup_t;

/* A lookup of `host`; NULL when out of memory.  Nothing is asked until trainer_lookup_poll. */
trainer_lookup_t *trainer_lookup_new(const char *host);

/*
 * Starts a query when none runs, else looks whether the running one finished; never blocks.
 * DONE with the addresses (IPv4 and IPv6, numeric), DONE with *count 0 when the name does not
 * exist (no replica now), FAILED on a temporary failure (*error names it), PENDING otherwise.
 */
trainer_resolve_state_t trainer_lookup_poll(trainer_lookup_t *lookup,
                                            char addresses[][TRAINER_RESOLVE_ADDRESS], int *count,
                                            const char **error);

/* Cancels a running query and frees; NULL-safe. */
void trainer_lookup_free(trainer_lookup_t *lookup);

/* 1 when `host` is a numeric IPv4 or IPv6 address (nothing to resolve). */
int trainer_resolve_is_numeric(const char *host);

/*
 * Splits "tcp://HOST:PORT" into host[host_size] and port[port_size] when HOST is a name to
 * resolve (not numeric, not "*"); 0 for every other endpoint (ipc://, inproc://, numeric).
 */
int trainer_resolve_split(const char *endpoint, char *host, int host_size, char *port,
                          int port_size);

#endif
