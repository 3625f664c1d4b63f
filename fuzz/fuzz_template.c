/*
 * fuzz_template.c: the chat-template renderer (src/template/) on arbitrary templates and
 * variables, and the seven real templates of tests/data/chat/ on arbitrary JSON.
 *
 * The first byte picks the mode:
 *   even: the rest is "SOURCE\0VARS": SOURCE is compiled; when it compiles it is rendered with
 *         VARS (JSON; a dict is the variables, anything else goes in as `messages`) under small
 *         limits (100,000 steps, 1 MiB of output). A render either succeeds with NUL-terminated,
 *         valid UTF-8 output or fails with a message and no output.
 *   odd:  the rest is JSON, rendered by every real template (as the variables when it is a
 *         dict, else as `messages`, with add_generation_prompt and bos/eos tokens).
 * Any crash, leak, sanitizer report or failed invariant is a bug.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <gptd/template.h>

#include "fuzz.h"

static const char *const families[] = {"chatml_smollm2", "deepseek_v3", "gemma3", "llama3",
                                       "llama3_1",       "qwen2_5",     "qwen3"};
#define N_FAMILIES (sizeof(families) / sizeof(families[0]))

static struct template *real[N_FAMILIES];

static bool valid_utf8(const char *s, size_t len) {
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < len;) {
        unsigned c = u[i];
        size_t n = c < 0x80                ? 1
                   : c >= 0xc2 && c < 0xe0 ? 2
                   : c >= 0xe0 && c < 0xf0 ? 3
                   : c >= 0xf0 && c < 0xf5 ? 4
                                           : 0;
        if (n == 0 || i + n > len) {
            return false;
        }
        uint32_t cp = n == 1 ? c : c & (0xff >> (n + 1));
        for (size_t k = 1; k < n; k++) {
            if ((u[i + k] & 0xc0) != 0x80) {
                return false;
            }
            cp = (cp << 6) | (u[i + k] & 0x3f);
        }
        if ((n == 3 && (cp < 0x800 || (cp >= 0xd800 && cp < 0xe000))) ||
            (n == 4 && (cp < 0x10000 || cp > 0x10ffff))) {
            return false;
        }
        i += n;
    }
    return true;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    const char *dir = getenv("GPTD_TESTDATA_DIR");
    if (dir == NULL || dir[0] == '\0') {
        dir = GPTD_TESTDATA_DIR;
    }
    for (size_t i = 0; i < N_FAMILIES; i++) {
        char path[1024];
        snprintf(path, sizeof(path), "%s/chat/%s/template.jinja", dir, families[i]);
        FILE *f = fopen(path, "rb");
        if (f == NULL) {
            fprintf(stderr, "fuzz_template: cannot read %s (set GPTD_TESTDATA_DIR)\n", path);
            abort();
        }
        char buf[16384];
        size_t n = fread(buf, 1, sizeof(buf), f);
        fclose(f);
        char err[256];
        real[i] = template_compile(buf, n, err, sizeof(err));
        if (real[i] == NULL) {
            fprintf(stderr, "fuzz_template: %s: %s\n", path, err);
            abort();
        }
    }
    return 0;
}

static void check_render(const struct template *t, const struct template_value *vars,
                         bool expect_utf8) {
    struct template_limits lim = {.max_steps = 100000, .max_output = 1 << 20, .now = 1};
    char *out = (char *)"not written";
    size_t out_len = 12345;
    char err[256];
    err[0] = 'x';
    err[1] = '\0';
    enum template_status st = template_render(t, vars, &lim, &out, &out_len, err, sizeof(err));
    FUZZ_CHECK(st >= TEMPLATE_OK && st <= TEMPLATE_NOMEM);
    FUZZ_CHECK(memchr(err, '\0', sizeof(err)) != NULL);
    if (st == TEMPLATE_OK) {
        FUZZ_CHECK(out != NULL);
        FUZZ_CHECK(out_len <= lim.max_output);
        FUZZ_CHECK(out[out_len] == '\0');
        FUZZ_CHECK(!expect_utf8 || valid_utf8(out, out_len));
        free(out);
    } else {
        FUZZ_CHECK(out == NULL);
        FUZZ_CHECK(st == TEMPLATE_RAISED || err[0] != '\0');
    }
}

/* vars from JSON: a dict as it is, anything else as messages. */
static struct template_value *make_vars(const char *json, size_t len) {
    char err[128];
    struct template_value *v = template_value_from_json(json, len, err, sizeof(err));
    if (v == NULL) {
        FUZZ_CHECK(err[0] != '\0');
        return NULL;
    }
    if (template_value_type(v) == TEMPLATE_DICT) {
        return v;
    }
    struct template_value *vars = template_value_dict();
    FUZZ_CHECK(vars != NULL);
    template_value_dict_set(vars, "messages", v);
    template_value_dict_set(vars, "add_generation_prompt", template_value_bool(true));
    template_value_dict_set(vars, "bos_token", template_value_string("<s>", 3));
    template_value_dict_set(vars, "eos_token", template_value_string("</s>", 4));
    return vars;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0) {
        return 0;
    }
    const char *rest = (const char *)data + 1;
    size_t n = size - 1;
    if (data[0] % 2 == 0) {
        const char *sep = memchr(rest, '\0', n);
        size_t src_len = sep != NULL ? (size_t)(sep - rest) : n;
        char err[256];
        err[0] = '\0';
        struct template *t = template_compile(rest, src_len, err, sizeof(err));
        if (t == NULL) {
            FUZZ_CHECK(strncmp(err, "line ", 5) == 0);
            return 0;
        }
        (void)template_iterates_content(t);
        struct template_value *vars = sep != NULL ? make_vars(sep + 1, n - src_len - 1) : NULL;
        check_render(t, vars, true);
        template_value_unref(vars);
        template_destroy(t);
        return 0;
    }
    struct template_value *vars = make_vars(rest, n);
    if (vars == NULL) {
        return 0;
    }
    for (size_t i = 0; i < N_FAMILIES; i++) {
        check_render(real[i], vars, true);
    }
    template_value_unref(vars);
    return 0;
}
