/*
 * cm_sha256: the NIST example vectors (FIPS 180-4 / SHAVS: the empty string,
 * "abc", the 448-bit two-block message, one million 'a'), padding edge cases
 * around the 56- and 64-byte boundaries, and incremental hashing in odd-sized
 * pieces agreeing with one-shot hashing.
 */
#include "cm_rng.h"
#include "cm_sha256.h"

#include <check.h>
#include <stdlib.h>
#include <string.h>

static void hash_hex(const void *data, size_t size, char hex[65]) {
    cm_sha256_t hash;
    uint8_t digest[32];
    cm_sha256_init(&hash);
    cm_sha256_update(&hash, data, size);
    cm_sha256_final(&hash, digest);
    cm_sha256_hex(digest, hex);
}

START_TEST(test_empty_string) {
    char hex[65];
    hash_hex("", 0, hex);
    ck_assert_str_eq(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}
END_TEST

START_TEST(test_abc) {
    char hex[65];
    hash_hex("abc", 3, hex);
    ck_assert_str_eq(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}
END_TEST

START_TEST(test_448_bit_message) {
    static const char message[] = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    char hex[65];
    ck_assert_uint_eq(strlen(message) * 8, 448);
    hash_hex(message, strlen(message), hex);
    ck_assert_str_eq(hex, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
}
END_TEST

START_TEST(test_one_million_a) {
    enum { MILLION = 1000000 };
    char *message = malloc(MILLION);
    ck_assert_ptr_nonnull(message);
    memset(message, 'a', MILLION);
    char hex[65];
    hash_hex(message, MILLION, hex);
    ck_assert_str_eq(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");

    /* The same million fed one byte at a time exercises the block buffer. */
    cm_sha256_t hash;
    uint8_t digest[32];
    cm_sha256_init(&hash);
    for (int i = 0; i < MILLION; i++) cm_sha256_update(&hash, "a", 1);
    cm_sha256_final(&hash, digest);
    cm_sha256_hex(digest, hex);
    ck_assert_str_eq(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
    free(message);
}
END_TEST

/* Lengths 55, 56 and 64 put the length field in the same block, force a
 * second padding block, and fill a block exactly. */
START_TEST(test_padding_boundaries) {
    static const struct {
        size_t length;
        const char *hex;
    } cases[] = {
        {55, "9f4390f8d30c2dd92ec9f095b65e2b9ae9b0a925a5258e241c9f1e910f734318"},
        {56, "b35439a4ac6f0948b6d6f9e3c6af0f5f590ce20f1bde7090ef7970686ec6738a"},
        {64, "ffe054fe7ae0cb6dc65c3af9b61d5209f439851db43d0ba5997337df154668eb"},
    };
    char message[64];
    memset(message, 'a', sizeof message);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char hex[65];
        hash_hex(message, cases[i].length, hex);
        ck_assert_msg(strcmp(hex, cases[i].hex) == 0, "%zu x 'a': got %s, want %s", cases[i].length,
                      hex, cases[i].hex);
    }
}
END_TEST

START_TEST(test_pieces_equal_one_shot) {
    enum { SIZE = 10007 };
    uint8_t *data = malloc(SIZE);
    ck_assert_ptr_nonnull(data);
    cm_rng_t rng;
    cm_rng_seed(&rng, 256);
    for (int i = 0; i < SIZE; i++) data[i] = (uint8_t)cm_rng_u32(&rng);
    char whole[65];
    hash_hex(data, SIZE, whole);

    static const size_t piece_sizes[] = {1, 3, 7, 63, 64, 65, 127, 1000, 4099};
    for (size_t p = 0; p < sizeof piece_sizes / sizeof piece_sizes[0]; p++) {
        cm_sha256_t hash;
        uint8_t digest[32];
        char pieces[65];
        cm_sha256_init(&hash);
        for (size_t offset = 0; offset < SIZE; offset += piece_sizes[p]) {
            size_t take = SIZE - offset < piece_sizes[p] ? SIZE - offset : piece_sizes[p];
            cm_sha256_update(&hash, data + offset, take);
        }
        cm_sha256_final(&hash, digest);
        cm_sha256_hex(digest, pieces);
        ck_assert_msg(strcmp(pieces, whole) == 0, "pieces of %zu bytes: %s, one shot: %s",
                      piece_sizes[p], pieces, whole);
    }

    /* Random piece sizes, including empty updates. */
    cm_sha256_t hash;
    uint8_t digest[32];
    char random_pieces[65];
    cm_sha256_init(&hash);
    for (size_t offset = 0; offset < SIZE;) {
        size_t take = cm_rng_below(&rng, 200);
        if (take > SIZE - offset) take = SIZE - offset;
        cm_sha256_update(&hash, data + offset, take);
        offset += take;
    }
    cm_sha256_final(&hash, digest);
    cm_sha256_hex(digest, random_pieces);
    ck_assert_str_eq(random_pieces, whole);
    free(data);
}
END_TEST

START_TEST(test_different_inputs_differ) {
    char first[65], second[65];
    hash_hex("abc", 3, first);
    hash_hex("abd", 3, second);
    ck_assert_str_ne(first, second);
    ck_assert_uint_eq(strlen(first), 64);
}
END_TEST

Suite *check_sha256_suite(void);
Suite *check_sha256_suite(void) {
    Suite *suite = suite_create("sha256");
    TCase *tcase = tcase_create("vectors");
    tcase_add_test(tcase, test_empty_string);
    tcase_add_test(tcase, test_abc);
    tcase_add_test(tcase, test_448_bit_message);
    tcase_add_test(tcase, test_one_million_a);
    tcase_add_test(tcase, test_padding_boundaries);
    tcase_add_test(tcase, test_pieces_equal_one_shot);
    tcase_add_test(tcase, test_different_inputs_differ);
    suite_add_tcase(suite, tcase);
    return suite;
}
