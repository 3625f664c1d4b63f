/*
 * fuzz_util.c: helpers shared by the harnesses (failure reporting, temporary files).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fuzz.h"

_Noreturn void fuzz_fail(const char *file, int line, const char *what) {
    fprintf(stderr, "%s:%d: fuzz invariant failed: %s\n", file, line, what);
    abort();
}

static char temp_dir[64];

static void remove_temp_dir(void) {
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", temp_dir);
    if (system(cmd) != 0) {
        fprintf(stderr, "could not remove %s\n", temp_dir);
    }
}

const char *fuzz_temp_dir(void) {
    if (temp_dir[0] == '\0') {
        snprintf(temp_dir, sizeof(temp_dir), "/tmp/gptd-fuzz-XXXXXX");
        if (mkdtemp(temp_dir) == NULL) {
            perror("mkdtemp");
            abort();
        }
        atexit(remove_temp_dir);
    }
    return temp_dir;
}

const char *fuzz_write_temp(const char *name, const uint8_t *data, size_t size) {
    static char path[256];
    snprintf(path, sizeof(path), "%s/%s", fuzz_temp_dir(), name);
    FILE *f = fopen(path, "wb");
    if (f == NULL || (size > 0 && fwrite(data, 1, size, f) != size)) {
        perror(path);
        abort();
    }
    fclose(f);
    return path;
}

const char *fuzz_tiny_model_dir(void) {
    static char dir[4096];
    const char *d = getenv("GPTD_TESTDATA_DIR");
    snprintf(dir, sizeof(dir), "%s/gpt2-tiny-random",
             d != NULL && d[0] != '\0' ? d : GPTD_TESTDATA_DIR);
    return dir;
}
