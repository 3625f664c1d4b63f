/*
 * main.c: the gptd command line. One binary with subcommands, like git.
 *
 * Each subcommand lives in src/cli/<name>.c and is an entry in the table below. Usage errors
 * (unknown subcommand or flag, missing value) print one line naming the problem plus the usage
 * and exit 2; runtime failures exit 1.
 */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"

struct command {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
};

static int cmd_help(int argc, char **argv);

static const struct command commands[] = {
    {"version", cmd_version, "print the version and git revision"},
    {"generate", cmd_generate, "continue a prompt with the model (greedy) and print it"},
    {"tokenize", cmd_tokenize, "print the token ids of a text"},
    {"detokenize", cmd_detokenize, "print the text of a JSON array of token ids"},
    {"serve", cmd_serve, "run the OpenAI-compatible HTTP server"},
    {"template", cmd_template, "render chat messages with the model's chat template"},
    {"help", cmd_help, "print this help"},
};

static void print_usage(FILE *out) {
    fprintf(out, "usage: gptd [--help] [--version] <command> [<args>]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
        fprintf(out, "  %-12s %s\n", commands[i].name, commands[i].summary);
    }
    fprintf(out, "\nRun 'gptd <command> --help' for a command's options.\n");
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
        return CLI_EXIT_USAGE;
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
    fprintf(stderr, "gptd: unknown %s '%s'\n", name[0] == '-' ? "option" : "command", name);
    print_usage(stderr);
    return CLI_EXIT_USAGE;
}
