/*
 * cli.h: the gptd subcommands. main.c dispatches argv[1] to one of these; each parses its own
 * flags. Return value is the process exit code: 0 ok, 1 runtime failure, CLI_EXIT_USAGE (2) for
 * a usage error (after printing one line naming the problem plus the command's usage).
 */
#ifndef GPTD_CLI_H
#define GPTD_CLI_H

#include <stddef.h>

#define CLI_EXIT_USAGE 2

/* The model `gptd serve` and `gptd generate` use without -m: set by meson.build to the bundled
 * model (models/kjv-small in the source tree, or -Ddefault_model_dir=...). */
#ifndef GPTD_DEFAULT_MODEL_DIR
#define GPTD_DEFAULT_MODEL_DIR "models/default"
#endif

int cmd_version(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_detokenize(int argc, char **argv);
int cmd_serve(int argc, char **argv);
int cmd_template(int argc, char **argv);

/* Reads all of path ("-" or NULL: stdin) into a malloc'd NUL-terminated buffer; *n_bytes is its
 * length. NULL after printing the problem to stderr. */
char *cli_read_all(const char *path, size_t *n_bytes);

#endif
