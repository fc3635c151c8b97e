/*
 * cm_endpoint: a small hand-written parser.  IP literals are checked with
 * inet_pton, interface names with if_nametoindex (the host's own list, so a
 * bind to `eth0` works where it exists and is refused with a sentence where
 * it does not).  Nothing is resolved through DNS here: a connect endpoint's
 * name is only checked for its syntax, ZeroMQ resolves it when it connects.
 */
#include "cm_endpoint.h"

#include <arpa/inet.h>
#include <net/if.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int is_dns_name(const char *host) {
    if (!*host || strlen(host) > 253) return 0;
    for (const char *c = host; *c; c++)
        if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
              *c == '-' || *c == '.'))
            return 0;
    return host[0] != '-' && host[0] != '.';
}

static int is_ipv4(const char *host) {
    struct in_addr address;
    return inet_pton(AF_INET, host, &address) == 1;
}

/* "[v6]" with a valid IPv6 address inside. */
static int is_bracketed_ipv6(const char *host, size_t length) {
    if (length < 3 || host[0] != '[' || host[length - 1] != ']' || length - 2 >= 64) return 0;
    char inner[64];
    memcpy(inner, host + 1, length - 2);
    inner[length - 2] = '\0';
    struct in6_addr address;
    return inet_pton(AF_INET6, inner, &address) == 1;
}

cm_status_t cm_endpoint_check(const char *endpoint, cm_endpoint_use_t use, const char *option,
                              char *out, size_t out_size) {
    const char *verb = use == CM_ENDPOINT_BIND ? "listen on" : "connect to";
    if (!endpoint || !*endpoint)
        return cm_fail(CM_ERR_INVALID_ARG,
                       "%s is empty; give tcp://HOST:PORT, ipc://PATH or inproc://NAME", option);
    if (strlen(endpoint) >= CM_ENDPOINT_MAX)
        return cm_fail(CM_ERR_INVALID_ARG, "%s %.40s... is longer than %d characters", option,
                       endpoint, CM_ENDPOINT_MAX - 1);
    int is_ipc = strncmp(endpoint, "ipc://", 6) == 0;
    int is_inproc = strncmp(endpoint, "inproc://", 9) == 0;
    if (is_ipc || is_inproc) {
        if (endpoint[is_ipc ? 6 : 9] == '\0')
            return cm_fail(CM_ERR_INVALID_ARG, "%s %s has no %s after the scheme", option, endpoint,
                           is_ipc ? "path" : "name");
        if (out) snprintf(out, out_size, "%s", endpoint);
        return CM_OK;
    }
    if (strncmp(endpoint, "tcp://", 6) != 0)
        return cm_fail(CM_ERR_INVALID_ARG,
                       "%s %s is not a ZeroMQ endpoint: it must start with tcp://, ipc:// or "
                       "inproc:// (e.g. tcp://127.0.0.1:5555)",
                       option, endpoint);
    const char *host = endpoint + 6;
    const char *colon = strrchr(host, ':');
    if (!colon || (colon[-1] != ']' && memchr(host, ':', (size_t)(colon - host))))
        return cm_fail(CM_ERR_INVALID_ARG,
                       "%s %s has no port: write tcp://HOST:PORT (an IPv6 address goes in "
                       "brackets, tcp://[::1]:5555)",
                       option, endpoint);
    size_t host_length = (size_t)(colon - host);
    char host_text[CM_ENDPOINT_MAX];
    memcpy(host_text, host, host_length);
    host_text[host_length] = '\0';

    const char *port_text = colon + 1;
    int ephemeral = strcmp(port_text, "*") == 0;
    long port = -1;
    if (!ephemeral) {
        char *port_end = NULL;
        if (*port_text >= '0' && *port_text <= '9' && strlen(port_text) <= 6)
            port = strtol(port_text, &port_end, 10);
        if (port < 0 || *port_end != '\0')
            return cm_fail(CM_ERR_INVALID_ARG, "%s %s: the port '%s' is not a number%s", option,
                           endpoint, port_text, use == CM_ENDPOINT_BIND ? " or '*'" : "");
        ephemeral = port == 0;
    }
    if (use == CM_ENDPOINT_CONNECT && ephemeral)
        return cm_fail(CM_ERR_INVALID_ARG,
                       "%s %s: a port to connect to must be 1 to 65535 (0 and '*' only mean "
                       "\"any free port\" for a bind)",
                       option, endpoint);
    if (port > 65535)
        return cm_fail(CM_ERR_INVALID_ARG, "%s %s: port %ld is not in 1..65535", option, endpoint,
                       port);

    const char *rewritten = host_text;
    if (strcmp(host_text, "localhost") == 0) {
        rewritten = "127.0.0.1";
    } else if (host_length == 0) {
        return cm_fail(CM_ERR_INVALID_ARG, "%s %s has no host: write tcp://127.0.0.1:%s%s", option,
                       endpoint, port_text,
                       use == CM_ENDPOINT_BIND ? " (this host only) or tcp://*:PORT (every "
                                                 "interface)"
                                               : "");
    } else if (is_ipv4(host_text) || is_bracketed_ipv6(host_text, host_length)) {
        /* an address: fine for both uses */
    } else if (host_text[0] == '[') {
        return cm_fail(CM_ERR_INVALID_ARG, "%s %s: %s is not an IPv6 address", option, endpoint,
                       host_text);
    } else if (use == CM_ENDPOINT_BIND) {
        if (strcmp(host_text, "*") != 0 && if_nametoindex(host_text) == 0)
            return cm_fail(CM_ERR_INVALID_ARG,
                           "%s %s: cannot %s '%s', which is neither an IP address, '*' nor a "
                           "network interface of this host (write tcp://127.0.0.1:%s for this "
                           "host only, tcp://*:%s for every interface)",
                           option, endpoint, verb, host_text, port_text, port_text);
    } else if (!is_dns_name(host_text)) {
        return cm_fail(CM_ERR_INVALID_ARG,
                       "%s %s: cannot %s '%s', which is neither an IP address nor a host name",
                       option, endpoint, verb, host_text);
    }
    if (out) snprintf(out, out_size, "tcp://%s:%s", rewritten, port_text);
    return CM_OK;
}

static int is_loopback_host(const char *host, size_t length) {
    if (length == 9 && strncmp(host, "localhost", 9) == 0) return 1;
    if (length == 5 && strncmp(host, "[::1]", 5) == 0) return 1;
    if (length == 2 && strncmp(host, "lo", 2) == 0) return 1;
    if (length < 4 || strncmp(host, "127.", 4) != 0 || length >= 16) return 0;
    char text[16];
    memcpy(text, host, length);
    text[length] = '\0';
    return is_ipv4(text);
}

int cm_endpoint_is_loopback(const char *endpoint) {
    if (strncmp(endpoint, "ipc://", 6) == 0 || strncmp(endpoint, "inproc://", 9) == 0) return 1;
    if (strncmp(endpoint, "tcp://", 6) != 0) return 0;
    const char *host = endpoint + 6, *colon = strrchr(host, ':');
    return colon && is_loopback_host(host, (size_t)(colon - host));
}

int cm_endpoint_http_is_loopback(const char *address) {
    const char *colon = strrchr(address, ':');
    return colon && is_loopback_host(address, (size_t)(colon - address));
}
