/*
 * main.c: the gptd command line. One binary with subcommands, like git.
 *
 * Each subcommand is an entry in the table below with its own argument parsing. Usage errors
 * (unknown subcommand or flag, missing value) print one line naming the problem plus the usage
 * and exit 2; runtime failures exit 1.
 */
#include <stdio.h>
#include <string.h>

#include <gptd/util.h>

#include "version.h"

#define EXIT_USAGE 2

struct command {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
};

static int cmd_version(int argc, char **argv);
static int cmd_help(int argc, char **argv);

static const struct command commands[] = {
    {"version", cmd_version, "print the version and git revision"},
    {"help", cmd_help, "print this help"},
};

static void print_usage(FILE *out) {
    fprintf(out, "usage: gptd [--help] [--version] <command> [<args>]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
        fprintf(out, "  %-12s %s\n", commands[i].name, commands[i].summary);
    }
    fprintf(out, "\nRun 'gptd <command> --help' for a command's options.\n");
}

static int usage_error(const char *fmt, const char *arg) {
    fprintf(stderr, "gptd: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n");
    print_usage(stderr);
    return EXIT_USAGE;
}

static int cmd_version(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            printf("usage: gptd version\n");
            return 0;
        }
        return usage_error("version: unknown argument '%s'", argv[i]);
    }
    printf("gptd %s (%s)\n", GPTD_VERSION, GPTD_REVISION);
    return 0;
}

static int cmd_help(int argc, char **argv) {
    (void)argc;
    (void)argv;
    print_usage(stdout);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        print_usage(stderr);
        return EXIT_USAGE;
    }
    const char *name = argv[1];
    if (strcmp(name, "--help") == 0 || strcmp(name, "-h") == 0) {
        print_usage(stdout);
        return 0;
    }
    if (strcmp(name, "--version") == 0) {
        name = "version";
    }
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
        if (strcmp(name, commands[i].name) == 0) {
            return commands[i].run(argc - 1, argv + 1);
        }
    }
    if (name[0] == '-') {
        return usage_error("unknown option '%s'", name);
    }
    return usage_error("unknown command '%s'", name);
}
