/*
 * test_chat.c: the chat layer without HTTP: which template a model folder gives (the flag,
 * tokenizer_config.json as a string or a named list, chat_template.jinja, none), the variables
 * the template sees (special-token strings, extra variables, tools), content parts joined for
 * string templates and kept for templates that iterate them, continue_final_message, a chat
 * request's prompt (server_request_chat_prompt: tool-call arguments as objects, template errors
 * as 400s), and one compiled template rendered from several threads at once (this suite also
 * runs under ThreadSanitizer).
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <check.h>

#include <gptd/chat.h>
#include <gptd/template.h>

#include "../src/server/request.h"
#include "common.h"

static char dir[64];

static void write_file(const char *name, const char *text) {
    char path[256];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
}

static void remove_file(const char *name) {
    char path[256];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    unlink(path);
}

static void setup(void) {
    snprintf(dir, sizeof(dir), "/tmp/gptd-test-chat.XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
}

static void teardown(void) {
    remove_file("tokenizer_config.json");
    remove_file("chat_template.jinja");
    remove_file("flag.jinja");
    remove_file("special_tokens_map.json");
    rmdir(dir);
}

static struct template_value *json(const char *text) {
    char err[128];
    struct template_value *v = template_value_from_json(text, strlen(text), err, sizeof(err));
    ck_assert_msg(v != NULL, "%s", err);
    return v;
}

/* Renders messages (JSON) with c; returns the malloc'd text or NULL with err filled. */
static char *render(const struct chat *c, const char *messages, const char *extra, bool agp,
                    bool cont, enum template_status *st, char *err, size_t err_size) {
    struct template_value *m = json(messages);
    struct template_value *x = extra != NULL ? json(extra) : NULL;
    struct chat_render_params p = {
        .messages = m, .extra = x, .add_generation_prompt = agp, .continue_final_message = cont};
    char *out = NULL;
    size_t len = 0;
    *st = chat_render(c, &p, &out, &len, err, err_size);
    if (out != NULL) {
        ck_assert_uint_eq(strlen(out), len);
    }
    template_value_unref(m);
    template_value_unref(x);
    return out;
}

static void expect_render(const struct chat *c, const char *messages, const char *extra, bool agp,
                          const char *want) {
    char err[256] = "";
    enum template_status st;
    char *out = render(c, messages, extra, agp, false, &st, err, sizeof(err));
    ck_assert_msg(st == TEMPLATE_OK, "render failed: %s", err);
    ck_assert_str_eq(out, want);
    free(out);
}

static const char *const user_hi = "[{\"role\":\"user\",\"content\":\"hi\"}]";

START_TEST(test_chat_template_comes_from_flag_then_config_then_jinja_file) {
    char err[512];
    /* Nothing: no template, not an error. */
    struct chat *c = chat_load(dir, NULL, err, sizeof(err));
    ck_assert_ptr_nonnull(c);
    ck_assert(!chat_has_template(c));
    ck_assert_str_eq(chat_template_origin(c), "");
    enum template_status st;
    char *out = render(c, user_hi, NULL, true, false, &st, err, sizeof(err));
    ck_assert_ptr_null(out);
    ck_assert_int_eq(st, TEMPLATE_ERROR);
    ck_assert_str_eq(err, "model has no chat template (start with --chat-template FILE)");
    chat_destroy(c);

    /* chat_template.jinja. */
    write_file("chat_template.jinja", "J:{{ messages[0].content }}");
    c = chat_load(dir, NULL, err, sizeof(err));
    ck_assert(chat_has_template(c));
    ck_assert_ptr_nonnull(strstr(chat_template_origin(c), "chat_template.jinja"));
    expect_render(c, user_hi, NULL, true, "J:hi");
    chat_destroy(c);

    /* tokenizer_config.json's string wins over the .jinja file. */
    write_file("tokenizer_config.json",
               "{\"chat_template\":\"C:{{ messages[0].content }}\",\"eos_token\":\"</s>\"}");
    c = chat_load(dir, NULL, err, sizeof(err));
    expect_render(c, user_hi, NULL, true, "C:hi");
    chat_destroy(c);

    /* A list of named templates: "default". */
    write_file("tokenizer_config.json",
               "{\"chat_template\":[{\"name\":\"rag\",\"template\":\"R\"},"
               "{\"name\":\"default\",\"template\":\"D{{ add_generation_prompt }}\"}]}");
    c = chat_load(dir, NULL, err, sizeof(err));
    expect_render(c, user_hi, NULL, true, "DTrue");
    chat_destroy(c);
    write_file("tokenizer_config.json",
               "{\"chat_template\":[{\"name\":\"rag\",\"template\":\"R\"}]}");
    ck_assert_ptr_null(chat_load(dir, NULL, err, sizeof(err)));
    ck_assert_ptr_nonnull(strstr(err, "default"));

    /* The flag wins over everything; a file that does not exist is an error. */
    write_file("flag.jinja", "F");
    char flag[256];
    snprintf(flag, sizeof(flag), "%s/flag.jinja", dir);
    c = chat_load(dir, flag, err, sizeof(err));
    ck_assert_ptr_nonnull(c);
    expect_render(c, user_hi, NULL, true, "F");
    ck_assert_str_eq(chat_template_origin(c), flag);
    chat_destroy(c);
    snprintf(flag, sizeof(flag), "%s/missing.jinja", dir);
    ck_assert_ptr_null(chat_load(dir, flag, err, sizeof(err)));
    ck_assert_ptr_nonnull(strstr(err, "missing.jinja"));

    /* A template that does not compile: named with its line. */
    write_file("tokenizer_config.json", "{\"chat_template\":\"ok\\n{% if %}\"}");
    ck_assert_ptr_null(chat_load(dir, NULL, err, sizeof(err)));
    ck_assert_ptr_nonnull(strstr(err, "tokenizer_config.json"));
    ck_assert_ptr_nonnull(strstr(err, "line 2"));
    /* Bad JSON in the config. */
    write_file("tokenizer_config.json", "{\"chat_template\":");
    ck_assert_ptr_null(chat_load(dir, NULL, err, sizeof(err)));
}
END_TEST

START_TEST(test_chat_variables_are_special_tokens_then_extra) {
    char err[256];
    write_file("tokenizer_config.json",
               "{\"bos_token\":{\"content\":\"<s>\",\"lstrip\":false},\"eos_token\":\"</s>\","
               "\"unk_token\":null,\"pad_token\":\"<pad>\",\"chat_template\":\"{{ bos_token }}|{{ "
               "eos_token }}|{{ unk_token is defined }}|{{ pad_token }}|{{ tools is defined }}|{{ "
               "x }}\"}");
    struct chat *c = chat_load(dir, NULL, err, sizeof(err));
    ck_assert_ptr_nonnull(c);
    expect_render(c, user_hi, NULL, true, "<s>|</s>|False|<pad>|False|");
    expect_render(c, user_hi, "{\"eos_token\":\"<E>\",\"x\":1.0}", true,
                  "<s>|<E>|False|<pad>|False|1.0");
    chat_destroy(c);

    /* special_tokens_map.json fills what the config leaves out; the config wins; the
     * additional special tokens are a list. */
    write_file("tokenizer_config.json",
               "{\"bos_token\":\"<s>\",\"chat_template\":\"{{ bos_token }}|{{ mask_token }}|{{ "
               "additional_special_tokens|join(',') }}|{{ sep_token }}\"}");
    write_file("special_tokens_map.json",
               "{\"bos_token\":\"<other>\",\"mask_token\":{\"content\":\"<mask>\"},"
               "\"additional_special_tokens\":[\"<a>\",{\"content\":\"<b>\"}]}");
    c = chat_load(dir, NULL, err, sizeof(err));
    ck_assert_msg(c != NULL, "%s", err);
    expect_render(c, user_hi, NULL, true, "<s>|<mask>|<a>,<b>|");
    remove_file("special_tokens_map.json");
    chat_destroy(c);
    write_file("tokenizer_config.json",
               "{\"bos_token\":{\"content\":\"<s>\",\"lstrip\":false},\"eos_token\":\"</s>\","
               "\"unk_token\":null,\"pad_token\":\"<pad>\",\"chat_template\":\"{{ bos_token }}|{{ "
               "eos_token }}|{{ unk_token is defined }}|{{ pad_token }}|{{ tools is defined }}|{{ "
               "x }}\"}");
    c = chat_load(dir, NULL, err, sizeof(err));
    /* tools: passed when given (the server passes none when the request has none). */
    struct template_value *m = json(user_hi);
    struct template_value *none = template_value_none();
    struct chat_render_params p = {.messages = m, .tools = none};
    char *out = NULL;
    size_t len = 0;
    ck_assert_int_eq(chat_render(c, &p, &out, &len, err, sizeof(err)), TEMPLATE_OK);
    ck_assert_str_eq(out, "<s>|</s>|False|<pad>|True|");
    free(out);
    template_value_unref(none);
    template_value_unref(m);
    chat_destroy(c);
}
END_TEST

START_TEST(test_chat_joins_text_parts_unless_the_template_iterates_them) {
    char err[256];
    const char *parts = "[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\"},"
                        "{\"type\":\"text\",\"text\":\"b\"}],\"name\":\"n\"}]";
    write_file("tokenizer_config.json",
               "{\"chat_template\":\"{{ messages[0].content }}/{{ messages[0].name }}\"}");
    struct chat *c = chat_load(dir, NULL, err, sizeof(err));
    expect_render(c, parts, NULL, true, "a\nb/n");
    chat_destroy(c);
    write_file("tokenizer_config.json",
               "{\"chat_template\":\"{% for p in messages[0]['content'] %}<{{ p.text "
               "}}>{% endfor %}\"}");
    c = chat_load(dir, NULL, err, sizeof(err));
    expect_render(c, parts, NULL, true, "<a><b>");
    /* A string content still renders through such a template (characters). */
    expect_render(c, user_hi, NULL, true, "<><>");
    chat_destroy(c);
}
END_TEST

START_TEST(test_chat_continue_final_message_cuts_after_its_content) {
    char err[256];
    write_file("tokenizer_config.json",
               "{\"chat_template\":\"{% for m in messages %}<{{ m.role }}>{{ m.content | trim "
               "}}</{{ m.role }}>{% endfor %}{% if add_generation_prompt %}<assistant>{% endif "
               "%}\"}");
    struct chat *c = chat_load(dir, NULL, err, sizeof(err));
    enum template_status st;
    const char *msgs = "[{\"role\":\"user\",\"content\":\"go\"},"
                       "{\"role\":\"assistant\",\"content\":\"Once upon\"}]";
    char *out = render(c, msgs, NULL, false, true, &st, err, sizeof(err));
    ck_assert_int_eq(st, TEMPLATE_OK);
    ck_assert_str_eq(out, "<user>go</user><assistant>Once upon");
    free(out);
    /* Trailing spaces the template trimmed: cut after the stripped text. */
    const char *spaced = "[{\"role\":\"assistant\",\"content\":\"Once upon \"}]";
    out = render(c, spaced, NULL, false, true, &st, err, sizeof(err));
    ck_assert_str_eq(out, "<assistant>Once upon");
    free(out);
    /* Not with add_generation_prompt; not when the content is not in the text. */
    out = render(c, msgs, NULL, true, true, &st, err, sizeof(err));
    ck_assert_ptr_null(out);
    ck_assert_int_eq(st, TEMPLATE_ERROR);
    chat_destroy(c);
    write_file("tokenizer_config.json", "{\"chat_template\":\"nothing\"}");
    c = chat_load(dir, NULL, err, sizeof(err));
    out = render(c, msgs, NULL, false, true, &st, err, sizeof(err));
    ck_assert_ptr_null(out);
    ck_assert_int_eq(st, TEMPLATE_ERROR);
    ck_assert_ptr_nonnull(strstr(err, "does not appear"));
    chat_destroy(c);
}
END_TEST

START_TEST(test_chat_request_prompt_passes_tool_arguments_as_objects) {
    char err[256];
    write_file("tokenizer_config.json",
               "{\"chat_template\":\"{% for m in messages %}{% for t in m.tool_calls or [] %}{{ "
               "t.function.arguments | tojson }}{% endfor %}{% endfor %}|{{ tools | tojson "
               "}}|{{ enable_thinking }}\"}");
    struct chat *c = chat_load(dir, NULL, err, sizeof(err));
    ck_assert_ptr_nonnull(c);
    struct request_limits lim;
    server_request_limits_init_default(&lim);
    struct completion_request r;
    struct api_error e;
    const char *body = "{\"messages\":[{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{"
                       "\"function\":{\"name\":\"f\",\"arguments\":\"{\\\"x\\\": 1.0, "
                       "\\\"s\\\": \\\"\\u00e9\\\"}\"}}]}],\"chat_template_kwargs\":{"
                       "\"enable_thinking\":false}}";
    ck_assert_int_eq(server_request_parse_chat(body, strlen(body), &lim, NULL, &r, &e), 0);
    ck_assert_int_eq(server_request_chat_prompt(body, strlen(body), c, NULL, &r, &e), 0);
    ck_assert_str_eq(r.prompts[0].text, "{\"x\": 1.0, \"s\": \"\xc3\xa9\"}|null|False");
    server_request_finish(&r);

    /* Arguments that are not JSON; a template that raises. */
    const char *bad = "{\"messages\":[{\"role\":\"assistant\",\"tool_calls\":[{\"function\":{"
                      "\"name\":\"f\",\"arguments\":\"{x\"}}]}]}";
    ck_assert_int_eq(server_request_parse_chat(bad, strlen(bad), &lim, NULL, &r, &e), 0);
    ck_assert_int_eq(server_request_chat_prompt(bad, strlen(bad), c, NULL, &r, &e), -1);
    ck_assert_int_eq(e.status, 400);
    ck_assert_str_eq(e.param, "messages");
    server_request_finish(&r);
    chat_destroy(c);

    write_file("tokenizer_config.json",
               "{\"chat_template\":\"{{ raise_exception('roles must alternate') }}\"}");
    c = chat_load(dir, NULL, err, sizeof(err));
    const char *ok = "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}";
    ck_assert_int_eq(server_request_parse_chat(ok, strlen(ok), &lim, NULL, &r, &e), 0);
    ck_assert_int_eq(server_request_chat_prompt(ok, strlen(ok), c, NULL, &r, &e), -1);
    ck_assert_int_eq(e.status, 400);
    ck_assert_str_eq(e.code, "chat_template_error");
    ck_assert_str_eq(e.message, "roles must alternate");
    server_request_finish(&r);
    chat_destroy(c);

    /* Without a template. */
    ck_assert_int_eq(server_request_parse_chat(ok, strlen(ok), &lim, NULL, &r, &e), 0);
    ck_assert_int_eq(server_request_chat_prompt(ok, strlen(ok), NULL, NULL, &r, &e), -1);
    ck_assert_str_eq(e.code, "no_chat_template");
    server_request_finish(&r);
}
END_TEST

/* ---- one template, several threads ---- */

struct render_job {
    const struct chat *chat;
    const char *messages;
    char *first; /* the thread's first result; every later one must equal it */
    int mismatches;
};

static void *render_thread(void *arg) {
    struct render_job *j = arg;
    char err[256];
    for (int i = 0; i < 50; i++) {
        struct template_value *m =
            template_value_from_json(j->messages, strlen(j->messages), err, sizeof(err));
        struct chat_render_params p = {.messages = m, .add_generation_prompt = true};
        char *out = NULL;
        size_t len = 0;
        if (m == NULL || chat_render(j->chat, &p, &out, &len, err, sizeof(err)) != TEMPLATE_OK) {
            j->mismatches++;
        } else if (j->first == NULL) {
            j->first = out;
            out = NULL;
        } else if (strcmp(out, j->first) != 0) {
            j->mismatches++;
        }
        free(out);
        template_value_unref(m);
    }
    return NULL;
}

START_TEST(test_chat_one_template_renders_on_many_threads_at_once) {
    char err[512], path[512];
    testdata_path(path, sizeof(path), "chat/qwen3/template.jinja");
    struct chat *c = chat_load(NULL, path, err, sizeof(err));
    ck_assert_msg(c != NULL, "%s", err);
    static const char *const convs[4] = {
        "[{\"role\":\"user\",\"content\":\"a\"}]",
        "[{\"role\":\"system\",\"content\":\"s\"},{\"role\":\"user\",\"content\":\"b\"}]",
        "[{\"role\":\"user\",\"content\":\"c\"},{\"role\":\"assistant\",\"content\":"
        "\"<think>x</think>y\"},{\"role\":\"user\",\"content\":\"d\"}]",
        "[{\"role\":\"user\",\"content\":\"\\u00e9\"}]",
    };
    pthread_t th[4];
    struct render_job jobs[4];
    for (int i = 0; i < 4; i++) {
        jobs[i] = (struct render_job){.chat = c, .messages = convs[i]};
        ck_assert_int_eq(pthread_create(&th[i], NULL, render_thread, &jobs[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        ck_assert_int_eq(jobs[i].mismatches, 0);
        ck_assert_ptr_nonnull(jobs[i].first);
        ck_assert_ptr_nonnull(strstr(jobs[i].first, "<|im_start|>assistant\n"));
        free(jobs[i].first);
    }
    chat_destroy(c);
}
END_TEST

static Suite *chat_suite(void) {
    Suite *s = suite_create("chat");
    TCase *tc = tcase_create("chat");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_chat_template_comes_from_flag_then_config_then_jinja_file);
    tcase_add_test(tc, test_chat_variables_are_special_tokens_then_extra);
    tcase_add_test(tc, test_chat_joins_text_parts_unless_the_template_iterates_them);
    tcase_add_test(tc, test_chat_continue_final_message_cuts_after_its_content);
    tcase_add_test(tc, test_chat_request_prompt_passes_tool_arguments_as_objects);
    tcase_add_test(tc, test_chat_one_template_renders_on_many_threads_at_once);
    tcase_set_timeout(tc, 60);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(chat_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
