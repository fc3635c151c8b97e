/*
 * cm_wire's UTF-8 rule: every string it packs is valid UTF-8, whatever it was given.
 */
#include "cm_wire.h"

#include <check.h>
#include <stdio.h>
#include <string.h>

START_TEST(test_utf8_validity) {
    static const char *const valid[] = {
        "", "plain", "caf\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80", "\xf4\x8f\xbf\xbf"};
    static const char *const invalid[] = {
        "\xff",      "\xc3", "\x80", "\xc0\xaf", "\xe0\x80\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80",
        "ok\xe2\x82"};
    for (size_t i = 0; i < sizeof valid / sizeof valid[0]; i++)
        ck_assert_msg(cm_wire_utf8_valid(valid[i], strlen(valid[i])), "valid[%zu]", i);
    for (size_t i = 0; i < sizeof invalid / sizeof invalid[0]; i++)
        ck_assert_msg(!cm_wire_utf8_valid(invalid[i], strlen(invalid[i])), "invalid[%zu]", i);
}
END_TEST

/* Encodes `message`, decodes the header again and returns the Error's message (static copy). */
static const char *round_trip_error(const cm_wire_message_t *message) {
    static char copy[CM_WIRE_MAX_STRING + 1];
    cm_wire_encoded_t encoded;
    ck_assert_int_eq(cm_wire_encode(&encoded, message), CM_OK);
    cm_wire_message_t decoded;
    cm_wire_limits_t limits = cm_wire_limits_default();
    ck_assert_msg(cm_wire_decode(&decoded, encoded.frames, encoded.frame_count, &limits) == CM_OK,
                  "%s", cm_last_error());
    ck_assert_int_eq(decoded.kind, CM_WIRE_ERROR);
    snprintf(copy, sizeof copy, "%s", decoded.error.message);
    cm_wire_message_deinit(&decoded);
    cm_wire_encoded_deinit(&encoded);
    return copy;
}

START_TEST(test_invalid_strings_are_sent_as_valid_utf8) {
    cm_wire_message_t message;
    cm_wire_message_error(&message, 7, CM_ERR_NOT_FOUND, "no output '\xff\xfe' (caf\xc3\xa9, \xc3");
    const char *sent = round_trip_error(&message);
    ck_assert(cm_wire_utf8_valid(sent, strlen(sent)));
    ck_assert_str_eq(sent, "no output '\xef\xbf\xbd\xef\xbf\xbd' (caf\xc3\xa9, \xef\xbf\xbd");
    /* A valid sentence is sent as it is. */
    cm_wire_message_error(&message, 7, CM_ERR_NOT_FOUND, "caf\xc3\xa9");
    ck_assert_str_eq(round_trip_error(&message), "caf\xc3\xa9");
    /* The longest string of bad bytes still fits the limit once replaced, cut between
     * characters. */
    char bad[CM_WIRE_MAX_STRING + 1];
    memset(bad, 0xff, CM_WIRE_MAX_STRING);
    bad[CM_WIRE_MAX_STRING] = '\0';
    cm_wire_message_error(&message, 7, CM_ERR_NOT_FOUND, bad);
    sent = round_trip_error(&message);
    ck_assert(cm_wire_utf8_valid(sent, strlen(sent)));
    ck_assert_uint_eq(strlen(sent), CM_WIRE_MAX_STRING / 3 * 3);
}
END_TEST

Suite *check_wire_utf8_suite(void);
Suite *check_wire_utf8_suite(void) {
    Suite *suite = suite_create("wire_utf8");
    TCase *tcase = tcase_create("utf8");
    tcase_add_test(tcase, test_utf8_validity);
    tcase_add_test(tcase, test_invalid_strings_are_sent_as_valid_utf8);
    suite_add_tcase(suite, tcase);
    return suite;
}
