/*
 * version.c: `gptd version` prints the Meson project version and the git revision.
 */
#include "version.h"

#include <stdio.h>
#include <string.h>

#include "cli.h"

int cmd_version(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            printf("usage: gptd version\n");
            return 0;
        }
        fprintf(stderr, "gptd version: unknown argument '%s'\nusage: gptd version\n", argv[i]);
        return CLI_EXIT_USAGE;
    }
    printf("gptd %s (%s)\n", GPTD_VERSION, GPTD_REVISION);
    return 0;
}
