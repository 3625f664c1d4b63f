/*
 * tokenize.c: `gptd tokenize` (text -> ids) and `gptd detokenize` (JSON array of ids -> text).
 *
 * Run from main() on the main thread. MODEL_DIR needs only the tokenizer files (tokenizer.json
 * or vocab.json + merges.txt, and tokenizer_config.json if the model has one); no config.json or
 * weights. The input is read whole (a file or stdin) and taken byte for byte: a trailing newline
 * is part of the text and gets its own token. With --jsonl each input line is one JSON string,
 * encoded on its own, and the tokenizer is loaded once for all of them. Special tokens are
 * added as transformers' encode() adds them (Llama's BOS). Usage errors exit 2, failures to load
 * or to encode exit 1.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include <gptd/tokenizer.h>

#include "cli.h"

static const char tokenize_usage[] =
    "usage: gptd tokenize -m MODEL_DIR [--json] [--jsonl] [--no-special] [--no-add-special] "
    "[FILE|-]\n"
    "  prints the token ids of FILE (or stdin), space-separated, or as a JSON array with --json;\n"
    "  MODEL_DIR needs only the tokenizer files;\n"
    "  --jsonl reads one JSON string per line and prints one JSON array of ids per line;\n"
    "  --no-special encodes special tokens such as <|endoftext|> as plain text;\n"
    "  --no-add-special leaves out the tokens the model adds around a text (Llama's BOS),\n"
    "  which are added by default, as transformers' encode() does\n";

static const char detokenize_usage[] =
    "usage: gptd detokenize -m MODEL_DIR [--skip-special] [FILE|-]\n"
    "  reads a JSON array of token ids, prints their text; --skip-special leaves out special\n"
    "  tokens (BOS, EOS, ...)\n";

char *cli_read_all(const char *path, size_t *n_bytes) {
    FILE *f = stdin;
    if (path != NULL && strcmp(path, "-") != 0) {
        f = fopen(path, "rb");
        if (f == NULL) {
            fprintf(stderr, "gptd: %s: %s\n", path, strerror(errno));
            return NULL;
        }
    }
    size_t cap = 1 << 16;
    size_t n = 0;
    char *buf = malloc(cap);
    while (buf != NULL) {
        if (n + 1 >= cap) {
            cap *= 2;
            char *grown = realloc(buf, cap);
            if (grown == NULL) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = grown;
        }
        size_t got = fread(buf + n, 1, cap - n - 1, f);
        n += got;
        if (got == 0) {
            if (ferror(f)) {
                fprintf(stderr, "gptd: %s: read error\n", path != NULL ? path : "-");
                free(buf);
                buf = NULL;
            }
            break;
        }
    }
    if (buf == NULL) {
        fprintf(stderr, "gptd: cannot read %s\n", path != NULL ? path : "stdin");
    } else {
        buf[n] = '\0';
        *n_bytes = n;
    }
    if (f != stdin) {
        fclose(f);
    }
    return buf;
}

/* Flags shared by both commands. Returns 0, or CLI_EXIT_USAGE after printing the problem. */
struct tok_args {
    const char *model_dir;
    const char *input;
    int is_json;
    int is_jsonl;
    int is_no_special;
    int is_no_add_special;
    int is_skip_special;
    int is_help;
};

static int parse_args(int argc, char **argv, int is_tokenize, struct tok_args *a,
                      const char *usage) {
    const char *cmd = is_tokenize ? "tokenize" : "detokenize";
    memset(a, 0, sizeof(*a));
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            a->is_help = 1;
            return 0;
        } else if (strcmp(arg, "-m") == 0 || strcmp(arg, "--model") == 0) {
            if (i + 1 >= argc) {
                fprintf(stderr, "gptd %s: %s needs a value\n%s", cmd, arg, usage);
                return CLI_EXIT_USAGE;
            }
            a->model_dir = argv[++i];
        } else if (is_tokenize && strcmp(arg, "--json") == 0) {
            a->is_json = 1;
        } else if (is_tokenize && strcmp(arg, "--jsonl") == 0) {
            a->is_jsonl = 1;
        } else if (is_tokenize && strcmp(arg, "--no-special") == 0) {
            a->is_no_special = 1;
        } else if (is_tokenize && strcmp(arg, "--no-add-special") == 0) {
            a->is_no_add_special = 1;
        } else if (!is_tokenize && strcmp(arg, "--skip-special") == 0) {
            a->is_skip_special = 1;
        } else if (arg[0] == '-' && arg[1] != '\0') {
            fprintf(stderr, "gptd %s: unknown option '%s'\n%s", cmd, arg, usage);
            return CLI_EXIT_USAGE;
        } else if (a->input != NULL) {
            fprintf(stderr, "gptd %s: unexpected argument '%s'\n%s", cmd, arg, usage);
            return CLI_EXIT_USAGE;
        } else {
            a->input = arg;
        }
    }
    if (a->model_dir == NULL) {
        fprintf(stderr, "gptd %s: -m MODEL_DIR is required\n%s", cmd, usage);
        return CLI_EXIT_USAGE;
    }
    return 0;
}

static void print_ids(const int32_t *ids, size_t n_ids, int is_json) {
    fputs(is_json ? "[" : "", stdout);
    for (size_t i = 0; i < n_ids; i++) {
        printf("%s%" PRId32, i == 0 ? "" : is_json ? ", " : " ", ids[i]);
    }
    fputs(is_json ? "]\n" : "\n", stdout);
}

static int hex4(const char *p, uint32_t *v) {
    *v = 0;
    for (int k = 0; k < 4; k++) {
        char c = p[k];
        int d = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                       : -1;
        if (d < 0) {
            return -1;
        }
        *v = *v << 4 | (uint32_t)d;
    }
    return 0;
}

/*
 * Decodes one JSON string literal that fills line[0..n) (surrounding whitespace allowed) into
 * out (room for n bytes: decoding never lengthens). Written here rather than with cJSON because
 * a text may hold \u0000, whose length cJSON cannot report. Returns the length, or -1 when the
 * line is not exactly one JSON string (a lone surrogate is refused, as the tokenizer wants UTF-8).
 */
static long json_string_line(const char *line, size_t n, char *out) {
    size_t i = 0;
    while (i < n && (line[i] == ' ' || line[i] == '\t' || line[i] == '\r')) {
        i++;
    }
    if (i >= n || line[i++] != '"') {
        return -1;
    }
    size_t m = 0;
    for (;;) {
        if (i >= n) {
            return -1;
        }
        unsigned char c = (unsigned char)line[i++];
        if (c == '"') {
            break;
        }
        if (c < 0x20) {
            return -1;
        }
        if (c != '\\') {
            out[m++] = (char)c;
            continue;
        }
        if (i >= n) {
            return -1;
        }
        char e = line[i++];
        const char *simple = strchr("\"\\/bfnrt", e);
        if (e != '\0' && simple != NULL) {
            out[m++] = "\"\\/\b\f\n\r\t"[simple - "\"\\/bfnrt"];
            continue;
        }
        uint32_t cp;
        if (e != 'u' || i + 4 > n || hex4(line + i, &cp) != 0) {
            return -1;
        }
        i += 4;
        if (cp >= 0xd800 && cp < 0xdc00) {
            uint32_t lo;
            if (i + 6 > n || line[i] != '\\' || line[i + 1] != 'u' ||
                hex4(line + i + 2, &lo) != 0 || lo < 0xdc00 || lo > 0xdfff) {
                return -1;
            }
            i += 6;
            cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
        } else if (cp >= 0xdc00 && cp < 0xe000) {
            return -1;
        }
        /* \uXXXX takes 6 input bytes (12 for a pair) and gives at most 4 output bytes. */
        if (cp < 0x80) {
            out[m++] = (char)cp;
        } else if (cp < 0x800) {
            out[m++] = (char)(0xc0 | (cp >> 6));
            out[m++] = (char)(0x80 | (cp & 0x3f));
        } else if (cp < 0x10000) {
            out[m++] = (char)(0xe0 | (cp >> 12));
            out[m++] = (char)(0x80 | ((cp >> 6) & 0x3f));
            out[m++] = (char)(0x80 | (cp & 0x3f));
        } else {
            out[m++] = (char)(0xf0 | (cp >> 18));
            out[m++] = (char)(0x80 | ((cp >> 12) & 0x3f));
            out[m++] = (char)(0x80 | ((cp >> 6) & 0x3f));
            out[m++] = (char)(0x80 | (cp & 0x3f));
        }
    }
    while (i < n && (line[i] == ' ' || line[i] == '\t' || line[i] == '\r')) {
        i++;
    }
    return i == n ? (long)m : -1;
}

/* --jsonl: one JSON string per line in, one JSON array of ids per line out. */
static int tokenize_lines(struct tokenizer *tok, const char *text, size_t n_text, int flags) {
    char err[512];
    char *buf = malloc(n_text + 1);
    if (buf == NULL) {
        fprintf(stderr, "gptd tokenize: out of memory\n");
        return 1;
    }
    int rc = 0;
    size_t line_no = 0;
    for (size_t at = 0; at < n_text && rc == 0;) {
        const char *nl = memchr(text + at, '\n', n_text - at);
        size_t end = nl != NULL ? (size_t)(nl - text) : n_text;
        line_no++;
        long n = json_string_line(text + at, end - at, buf);
        int32_t *ids = NULL;
        size_t n_ids = 0;
        if (n < 0) {
            fprintf(stderr, "gptd tokenize: line %zu is not one JSON string\n", line_no);
            rc = 1;
        } else if (tokenizer_encode(tok, buf, (size_t)n, flags, &ids, &n_ids, err, sizeof(err)) !=
                   0) {
            fprintf(stderr, "gptd tokenize: line %zu: %s\n", line_no, err);
            rc = 1;
        } else {
            print_ids(ids, n_ids, 1);
        }
        free(ids);
        at = end + 1;
    }
    free(buf);
    return rc;
}

int cmd_tokenize(int argc, char **argv) {
    struct tok_args a;
    int rc = parse_args(argc, argv, 1, &a, tokenize_usage);
    if (rc != 0 || a.is_help) {
        if (a.is_help) {
            fputs(tokenize_usage, stdout);
        }
        return rc;
    }
    char err[512];
    struct tokenizer *tok = tokenizer_load(a.model_dir, err, sizeof(err));
    if (tok == NULL) {
        fprintf(stderr, "gptd tokenize: %s\n", err);
        return 1;
    }
    rc = 1;
    size_t n_text = 0;
    int32_t *ids = NULL;
    size_t n_ids = 0;
    char *text = cli_read_all(a.input, &n_text);
    if (text == NULL) {
        goto cleanup;
    }
    int flags = (a.is_no_special ? 0 : TOKENIZER_PARSE_SPECIAL) |
                (a.is_no_add_special ? 0 : TOKENIZER_ADD_SPECIAL);
    if (a.is_jsonl) {
        if (tokenize_lines(tok, text, n_text, flags) != 0) {
            goto cleanup;
        }
    } else {
        if (tokenizer_encode(tok, text, n_text, flags, &ids, &n_ids, err, sizeof(err)) != 0) {
            fprintf(stderr, "gptd tokenize: %s\n", err);
            goto cleanup;
        }
        print_ids(ids, n_ids, a.is_json);
    }
    rc = fflush(stdout) == 0 ? 0 : 1;
cleanup:
    free(ids);
    free(text);
    tokenizer_destroy(tok);
    return rc;
}

/* Parses a JSON array of ids, each checked against the vocabulary. Returns a malloc'd array. */
static int32_t *parse_ids(const char *text, size_t n_text, const struct tokenizer *tok,
                          size_t *n_ids) {
    cJSON *root = cJSON_ParseWithLength(text, n_text);
    int32_t *ids = NULL;
    if (!cJSON_IsArray(root)) {
        fprintf(stderr, "gptd detokenize: the input is not a JSON array of token ids\n");
        goto cleanup;
    }
    size_t n = (size_t)cJSON_GetArraySize(root);
    ids = malloc((n + 1) * sizeof(*ids));
    if (ids == NULL) {
        fprintf(stderr, "gptd detokenize: out of memory\n");
        goto cleanup;
    }
    size_t i = 0;
    const cJSON *item;
    cJSON_ArrayForEach(item, root) {
        double d = cJSON_IsNumber(item) ? item->valuedouble : -1.0;
        size_t n_bytes;
        if (!(d >= 0.0 && d < 2147483647.0) || (double)(int32_t)d != d ||
            tokenizer_token_bytes(tok, (int32_t)d, &n_bytes) == NULL) {
            fprintf(stderr, "gptd detokenize: element %zu is not a valid token id (0..%d)\n", i,
                    (int)tokenizer_n_vocab(tok) - 1);
            free(ids);
            ids = NULL;
            goto cleanup;
        }
        ids[i++] = (int32_t)d;
    }
    *n_ids = i;
cleanup:
    cJSON_Delete(root);
    return ids;
}

int cmd_detokenize(int argc, char **argv) {
    struct tok_args a;
    int rc = parse_args(argc, argv, 0, &a, detokenize_usage);
    if (rc != 0 || a.is_help) {
        if (a.is_help) {
            fputs(detokenize_usage, stdout);
        }
        return rc;
    }
    char err[512];
    struct tokenizer *tok = tokenizer_load(a.model_dir, err, sizeof(err));
    if (tok == NULL) {
        fprintf(stderr, "gptd detokenize: %s\n", err);
        return 1;
    }
    rc = 1;
    size_t n_text = 0;
    size_t n_ids = 0;
    int32_t *ids = NULL;
    char *out = NULL;
    char *text = cli_read_all(a.input, &n_text);
    if (text == NULL) {
        goto cleanup;
    }
    ids = parse_ids(text, n_text, tok, &n_ids);
    if (ids == NULL) {
        goto cleanup;
    }
    size_t n_out;
    out = tokenizer_decode_with(tok, ids, n_ids, a.is_skip_special ? TOKENIZER_SKIP_SPECIAL : 0,
                                &n_out);
    if (out == NULL) {
        fprintf(stderr, "gptd detokenize: out of memory\n");
        goto cleanup;
    }
    fwrite(out, 1, n_out, stdout);
    rc = fflush(stdout) == 0 ? 0 : 1;
cleanup:
    free(out);
    free(ids);
    free(text);
    tokenizer_destroy(tok);
    return rc;
}
