/*
 * cm_sha256: SHA-256 as FIPS 180-4 section 6.2 describes it, written for
 * clarity first and speed second (a plain C compression function runs at a
 * couple of hundred MB/s, enough to fingerprint the 30 MB of Fashion-MNIST
 * in a fraction of a second).  Input is buffered into 64-byte blocks, so
 * callers may feed pieces of any size; words are read big-endian byte by byte,
 * so the code does not depend on the host's endianness or alignment.
 */
#include "cm_sha256.h"

#include <assert.h>
#include <string.h>

/* First 32 bits of the fractional parts of the cube roots of the first 64 primes. */
static const uint32_t round_constants[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

static uint32_t rotate_right(uint32_t word, int bits) {
    return (word >> bits) | (word << (32 - bits));
}

static uint32_t load_big_endian(const uint8_t *bytes) {
    return (uint32_t)bytes[0] << 24 | (uint32_t)bytes[1] << 16 | (uint32_t)bytes[2] << 8 |
           (uint32_t)bytes[3];
}

static void store_big_endian(uint8_t *bytes, uint32_t word) {
    bytes[0] = (uint8_t)(word >> 24);
    bytes[1] = (uint8_t)(word >> 16);
    bytes[2] = (uint8_t)(word >> 8);
    bytes[3] = (uint8_t)word;
}

/* The compression function: folds one 64-byte block into state[8]. */
static void compress_block(uint32_t state[8], const uint8_t block[64]) {
    uint32_t schedule[64];
    for (int t = 0; t < 16; t++) schedule[t] = load_big_endian(block + 4 * t);
    for (int t = 16; t < 64; t++) {
        uint32_t s0 = rotate_right(schedule[t - 15], 7) ^ rotate_right(schedule[t - 15], 18) ^
                      (schedule[t - 15] >> 3);
        uint32_t s1 = rotate_right(schedule[t - 2], 17) ^ rotate_right(schedule[t - 2], 19) ^
                      (schedule[t - 2] >> 10);
        schedule[t] = schedule[t - 16] + s0 + schedule[t - 7] + s1;
    }

    uint32_t a = state[0], b = state[1], c = state[2], d = state[3];
    uint32_t e = state[4], f = state[5], g = state[6], h = state[7];
    for (int t = 0; t < 64; t++) {
        uint32_t sum1 = rotate_right(e, 6) ^ rotate_right(e, 11) ^ rotate_right(e, 25);
        uint32_t choose = (e & f) ^ (~e & g);
        uint32_t temp1 = h + sum1 + choose + round_constants[t] + schedule[t];
        uint32_t sum0 = rotate_right(a, 2) ^ rotate_right(a, 13) ^ rotate_right(a, 22);
        uint32_t majority = (a & b) ^ (a & c) ^ (b & c);
        uint32_t temp2 = sum0 + majority;
        h = g;
        g = f;
        f = e;
        e = d + temp1;
        d = c;
        c = b;
        b = a;
        a = temp1 + temp2;
    }
    state[0] += a;
    state[1] += b;
    state[2] += c;
    state[3] += d;
    state[4] += e;
    state[5] += f;
    state[6] += g;
    state[7] += h;
}

void cm_sha256_init(cm_sha256_t *hash) {
    /* First 32 bits of the fractional parts of the square roots of the first 8 primes. */
    static const uint32_t initial_state[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                              0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(hash->state, initial_state, sizeof initial_state);
    hash->length = 0;
    hash->used = 0;
}

void cm_sha256_update(cm_sha256_t *hash, const void *data, size_t size) {
    assert(data != NULL || size == 0);
    const uint8_t *bytes = data;
    hash->length += size;
    if (hash->used > 0) {
        size_t take = 64 - hash->used < size ? 64 - hash->used : size;
        memcpy(hash->block + hash->used, bytes, take);
        hash->used += take;
        bytes += take;
        size -= take;
        if (hash->used < 64) return;
        compress_block(hash->state, hash->block);
        hash->used = 0;
    }
    /* Whole blocks straight from the caller's buffer, without copying. */
    for (; size >= 64; bytes += 64, size -= 64) compress_block(hash->state, bytes);
    memcpy(hash->block, bytes, size);
    hash->used = size;
}

void cm_sha256_final(cm_sha256_t *hash, uint8_t digest[32]) {
    uint64_t length_bits = hash->length * 8;
    /* Padding: one 1 bit, zeros up to 56 mod 64 bytes, then the length in bits. */
    hash->block[hash->used++] = 0x80;
    if (hash->used > 56) {
        memset(hash->block + hash->used, 0, 64 - hash->used);
        compress_block(hash->state, hash->block);
        hash->used = 0;
    }
    memset(hash->block + hash->used, 0, 56 - hash->used);
    store_big_endian(hash->block + 56, (uint32_t)(length_bits >> 32));
    store_big_endian(hash->block + 60, (uint32_t)length_bits);
    compress_block(hash->state, hash->block);
    for (int word = 0; word < 8; word++) store_big_endian(digest + 4 * word, hash->state[word]);
    hash->used = 0;
}

void cm_sha256_hex(const uint8_t digest[32], char hex[65]) {
    static const char digits[] = "0123456789abcdef";
    for (int i = 0; i < 32; i++) {
        hex[2 * i] = digits[digest[i] >> 4];
        hex[2 * i + 1] = digits[digest[i] & 0x0f];
    }
    hex[64] = '\0';
}
