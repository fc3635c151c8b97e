/*
 * cm_endpoint: the endpoint rules, one sentence per mistake.
 */
#include "cm_endpoint.h"

#include <check.h>
#include <string.h>

static void expect_ok(const char *endpoint, cm_endpoint_use_t use, const char *want) {
    char out[CM_ENDPOINT_MAX];
    ck_assert_msg(cm_endpoint_check(endpoint, use, "--bind", out, sizeof out) == CM_OK, "%s: %s",
                  endpoint, cm_last_error());
    ck_assert_str_eq(out, want);
}

static void expect_refused(const char *endpoint, cm_endpoint_use_t use, const char *sentence) {
    ck_assert_int_eq(cm_endpoint_check(endpoint, use, "--teacher fm", NULL, 0), CM_ERR_INVALID_ARG);
    ck_assert_msg(strstr(cm_last_error(), sentence) && strstr(cm_last_error(), "--teacher fm") &&
                      strstr(cm_last_error(), endpoint),
                  "%s: %s", endpoint, cm_last_error());
}

START_TEST(test_good_endpoints) {
    expect_ok("tcp://127.0.0.1:5555", CM_ENDPOINT_BIND, "tcp://127.0.0.1:5555");
    expect_ok("tcp://localhost:5590", CM_ENDPOINT_BIND, "tcp://127.0.0.1:5590");
    expect_ok("tcp://localhost:5590", CM_ENDPOINT_CONNECT, "tcp://127.0.0.1:5590");
    expect_ok("tcp://*:*", CM_ENDPOINT_BIND, "tcp://*:*");
    expect_ok("tcp://0.0.0.0:0", CM_ENDPOINT_BIND, "tcp://0.0.0.0:0");
    expect_ok("tcp://[::1]:65535", CM_ENDPOINT_BIND, "tcp://[::1]:65535");
    expect_ok("tcp://lo:7000", CM_ENDPOINT_BIND, "tcp://lo:7000");
    expect_ok("tcp://teacher-1.example.org:5555", CM_ENDPOINT_CONNECT,
              "tcp://teacher-1.example.org:5555");
    expect_ok("ipc:///tmp/x.sock", CM_ENDPOINT_BIND, "ipc:///tmp/x.sock");
    expect_ok("inproc://teacher", CM_ENDPOINT_CONNECT, "inproc://teacher");
}
END_TEST

START_TEST(test_bad_endpoints_say_what_is_wrong) {
    expect_refused("tcp://127.0.0.1:99999", CM_ENDPOINT_BIND, "port 99999 is not in 1..65535");
    expect_refused("tcp://127.0.0.1:65536", CM_ENDPOINT_CONNECT, "not in 1..65535");
    expect_refused("tcp://127.0.0.1:0", CM_ENDPOINT_CONNECT, "must be 1 to 65535");
    expect_refused("tcp://127.0.0.1:*", CM_ENDPOINT_CONNECT, "must be 1 to 65535");
    expect_refused("tcp://127.0.0.1:-1", CM_ENDPOINT_BIND, "is not a number");
    expect_refused("tcp://127.0.0.1:", CM_ENDPOINT_BIND, "is not a number");
    expect_refused("tcp://127.0.0.1", CM_ENDPOINT_BIND, "has no port");
    expect_refused("tcp://::1:5555", CM_ENDPOINT_BIND, "brackets");
    expect_refused("tcp://:5555", CM_ENDPOINT_BIND, "has no host");
    expect_refused("tcp://[zz]:5555", CM_ENDPOINT_BIND, "is not an IPv6 address");
    expect_refused("tcp://no-such-interface:5555", CM_ENDPOINT_BIND, "network interface");
    expect_refused("tcp://bad_host!:5555", CM_ENDPOINT_CONNECT, "nor a host name");
    expect_refused("udp://127.0.0.1:5555", CM_ENDPOINT_BIND, "tcp://, ipc:// or inproc://");
    expect_refused("127.0.0.1:5555", CM_ENDPOINT_CONNECT, "tcp://, ipc:// or inproc://");
    expect_refused("ipc://", CM_ENDPOINT_BIND, "has no path");
    expect_refused("inproc://", CM_ENDPOINT_BIND, "has no name");
}
END_TEST

START_TEST(test_loopback) {
    ck_assert(cm_endpoint_is_loopback("tcp://127.0.0.1:5555"));
    ck_assert(cm_endpoint_is_loopback("tcp://127.1.2.3:*"));
    ck_assert(cm_endpoint_is_loopback("tcp://[::1]:5555"));
    ck_assert(cm_endpoint_is_loopback("tcp://localhost:5555"));
    ck_assert(cm_endpoint_is_loopback("ipc:///tmp/x"));
    ck_assert(!cm_endpoint_is_loopback("tcp://*:5555"));
    ck_assert(!cm_endpoint_is_loopback("tcp://0.0.0.0:5555"));
    ck_assert(!cm_endpoint_is_loopback("tcp://127.evil.example:5555"));
    ck_assert(!cm_endpoint_is_loopback("tcp://10.0.0.5:5555"));
    ck_assert(cm_endpoint_http_is_loopback("127.0.0.1:9100"));
    ck_assert(cm_endpoint_http_is_loopback("localhost:9100"));
    ck_assert(cm_endpoint_http_is_loopback("[::1]:0"));
    ck_assert(!cm_endpoint_http_is_loopback("0.0.0.0:9100"));
    ck_assert(!cm_endpoint_http_is_loopback("*:9100"));
    ck_assert(!cm_endpoint_http_is_loopback(":9100"));
    ck_assert(!cm_endpoint_http_is_loopback("[::]:9100"));
}
END_TEST

Suite *check_endpoint_suite(void);
Suite *check_endpoint_suite(void) {
    Suite *suite = suite_create("endpoint");
    TCase *tcase = tcase_create("rules");
    tcase_add_test(tcase, test_good_endpoints);
    tcase_add_test(tcase, test_bad_endpoints_say_what_is_wrong);
    tcase_add_test(tcase, test_loopback);
    suite_add_tcase(suite, tcase);
    return suite;
}
