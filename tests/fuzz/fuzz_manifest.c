/*
 * fuzz_manifest: libFuzzer harness for the dataset manifest parser
 * (cm_manifest_parse) on arbitrary text.  A manifest that parses must have
 * a canonical form that parses again to the same canonical form.
 */
#include "cm_manifest.h"

#include <assert.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    cm_manifest_t *manifest = NULL;
    if (cm_manifest_parse((const char *)data, size, "fuzz.json", &manifest) != CM_OK) return 0;
    cm_manifest_t *again = NULL;
    cm_status_t status =
        cm_manifest_parse(manifest->canonical, strlen(manifest->canonical), "again.json", &again);
    assert(status == CM_OK);
    assert(strcmp(again->canonical, manifest->canonical) == 0);
    for (int index = 0; index < manifest->view_count; index++) {
        char *view = cm_manifest_view_json(manifest, &manifest->views[index]);
        free(view);
    }
    free(cm_manifest_task_json(manifest));
    cm_manifest_free(&again);
    cm_manifest_free(&manifest);
    (void)status;
    return 0;
}
