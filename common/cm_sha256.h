/*
 * cm_sha256: SHA-256 (FIPS 180-4), incremental.  Used for dataset
 * fingerprints and model hashes; checked against the NIST test vectors.
 */
#ifndef CM_SHA256_H
#define CM_SHA256_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint32_t state[8];
    uint64_t length; /* bytes hashed so far */
    uint8_t block[64];
    size_t used; /* bytes pending in block */
} cm_sha256_t;

void cm_sha256_init(cm_sha256_t *hash);
void cm_sha256_update(cm_sha256_t *hash, const void *data, size_t size);
/* Finishes the hash into digest[32]. */
void cm_sha256_final(cm_sha256_t *hash, uint8_t digest[32]);
/* Lower-case hex of a digest into hex[65] (NUL-terminated). */
void cm_sha256_hex(const uint8_t digest[32], char hex[65]);

#endif
