/*
 * bench_template.c: what rendering a chat template costs, one thread: the chat prompt of every
 * /v1/chat/completions request goes through it on an HTTP thread before tokenization.
 *
 * Usage: bench_template [CHAT_GOLDENS_DIR]   (default: the source tree's tests/data/chat)
 *
 * For each family folder (template.jinja + visible.json), compiles the template (timed) and
 * renders all its cases repeatedly; then renders conversations of 10, 100 and 1,000 turns with
 * the Qwen3 template (the most involved of the collected ones: a reversed scan of the messages
 * and per-message string methods). Prints microseconds per render and output MB/s. Numbers go
 * to docs/PERFORMANCE.md; run under `flock /tmp/gptd-bench.lock`.
 */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <gptd/template.h>
#include <gptd/util.h>

#include "bench_util.h"

/* A case's variables: extra + messages + add_generation_prompt (new reference). */
static struct template_value *case_vars(const struct template_value *c) {
    struct template_value *vars = template_value_dict();
    const struct template_value *extra = template_value_dict_get(c, "extra");
    for (size_t i = 0; i < template_value_length(extra); i++) {
        template_value_dict_set(vars, template_value_dict_key(extra, i),
                                template_value_ref(template_value_dict_value(extra, i)));
    }
    template_value_dict_set(vars, "messages",
                            template_value_ref(template_value_dict_get(c, "messages")));
    template_value_dict_set(
        vars, "add_generation_prompt",
        template_value_ref(template_value_dict_get(c, "add_generation_prompt")));
    return vars;
}

/* Renders vars with t until at least 0.3 s have passed; prints one line. */
static void time_renders(const char *name, const struct template *t,
                         struct template_value *const *vars, size_t n_vars) {
    size_t n_renders = 0, out_bytes = 0;
    int64_t t0 = time_now_us(), t1 = t0;
    while (t1 - t0 < 300000) {
        for (size_t i = 0; i < n_vars; i++) {
            char *out = NULL, err[256];
            size_t len = 0;
            enum template_status st =
                template_render(t, vars[i], NULL, &out, &len, err, sizeof(err));
            if (st != TEMPLATE_OK && st != TEMPLATE_RAISED) {
                fprintf(stderr, "bench_template: %s: %s\n", name, err);
                exit(1);
            }
            out_bytes += len;
            n_renders++;
            free(out);
        }
        t1 = time_now_us();
    }
    double us = (double)(t1 - t0) / (double)n_renders;
    printf("%-24s %8.1f us/render %8.1f MB/s output (%zu bytes/render)\n", name, us,
           (double)out_bytes / (double)(t1 - t0), out_bytes / n_renders);
}

int main(int argc, char **argv) {
    char root[1024];
    snprintf(root, sizeof(root), "%s", argc > 1 ? argv[1] : GPTD_SOURCE_DIR "/tests/data/chat");
    DIR *d = opendir(root);
    if (d == NULL) {
        fprintf(stderr, "bench_template: cannot open %s\n", root);
        return 1;
    }
    struct dirent *e;
    char *qwen3 = NULL;
    size_t qwen3_len = 0;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') {
            continue;
        }
        char path[2048];
        size_t src_len = 0, cases_len = 0;
        snprintf(path, sizeof(path), "%s/%s/template.jinja", root, e->d_name);
        char *src = bench_read_file(path, &src_len);
        snprintf(path, sizeof(path), "%s/%s/visible.json", root, e->d_name);
        char *json = bench_read_file(path, &cases_len);
        if (src == NULL || json == NULL) {
            free(src);
            free(json);
            continue;
        }
        char err[256];
        int64_t t0 = time_now_us();
        struct template *t = NULL;
        int n_compiles = 0;
        while (time_now_us() - t0 < 100000) {
            template_destroy(t);
            t = template_compile(src, src_len, err, sizeof(err));
            n_compiles++;
        }
        double compile_us = (double)(time_now_us() - t0) / n_compiles;
        struct template_value *cases = template_value_from_json(json, cases_len, err, sizeof(err));
        size_t n = template_value_length(cases);
        struct template_value **vars = calloc(n > 0 ? n : 1, sizeof(*vars));
        for (size_t i = 0; i < n; i++) {
            vars[i] = case_vars(template_value_list_get(cases, i));
        }
        char name[128];
        snprintf(name, sizeof(name), "%.40s (%zu cases)", e->d_name, n);
        printf("%-24s compile %7.1f us; ", e->d_name, compile_us);
        time_renders(name, t, vars, n);
        for (size_t i = 0; i < n; i++) {
            template_value_unref(vars[i]);
        }
        free(vars);
        template_value_unref(cases);
        template_destroy(t);
        if (strcmp(e->d_name, "qwen3") == 0) {
            qwen3 = src;
            qwen3_len = src_len;
        } else {
            free(src);
        }
        free(json);
    }
    closedir(d);
    if (qwen3 == NULL) {
        return 0;
    }
    /* Long conversations with the Qwen3 template: user/assistant turns of ~200 bytes. */
    char err[256];
    struct template *t = template_compile(qwen3, qwen3_len, err, sizeof(err));
    static const int turns[] = {10, 100, 1000};
    for (size_t k = 0; k < sizeof(turns) / sizeof(turns[0]); k++) {
        struct template_value *msgs = template_value_list();
        for (int i = 0; i < turns[k]; i++) {
            char text[256];
            int len = snprintf(text, sizeof(text),
                               "Turn %d: the quick brown fox jumps over the lazy dog, and then "
                               "asks the server about its context window, its batch size and "
                               "how many tokens per second it reaches on two cores.",
                               i);
            struct template_value *m = template_value_dict();
            template_value_dict_set(m, "role",
                                    i % 2 == 0 ? template_value_string("user", 4)
                                               : template_value_string("assistant", 9));
            template_value_dict_set(m, "content", template_value_string(text, (size_t)len));
            template_value_list_append(msgs, m);
        }
        struct template_value *vars = template_value_dict();
        template_value_dict_set(vars, "messages", msgs);
        template_value_dict_set(vars, "add_generation_prompt", template_value_bool(true));
        char name[128];
        snprintf(name, sizeof(name), "qwen3, %d turns", turns[k]);
        time_renders(name, t, &vars, 1);
        template_value_unref(vars);
    }
    template_destroy(t);
    free(qwen3);
    return 0;
}
