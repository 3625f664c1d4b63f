/*
 * chat_prompt.c: a validated chat request -> its prompt text, through the model's chat template
 * (server_request_chat_prompt in request.h). Pure: no HTTP, no engine; called on HTTP threads
 * (the compiled template is shared read-only, the variables are this call's own).
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <gptd/chat.h>
#include <gptd/template.h>

#include "request.h"

static const char *const invalid_request = "invalid_request_error";

/* Messages as vLLM hands them to a template (transformers takes them as given):
 * - a null or missing content becomes "" (or [] for a template that loops over content): an
 *   assistant turn that only called tools has content null in OpenAI's API, and templates
 *   written for strings fail on None ('x' in None) or print "None";
 * - tool-call arguments, a JSON string in OpenAI's API, become the object they spell (empty or
 *   null: {}): templates (Qwen, Llama 3.1, Hermes) print them with tojson or iterate their
 *   items and expect a mapping, as transformers' documentation asks.
 * Converted in place (the tree is this request's own). */
static int normalize_messages(struct template_value *messages, bool content_lists,
                              struct api_error *err) {
    for (size_t i = 0; i < template_value_length(messages); i++) {
        struct template_value *m = template_value_list_get(messages, i);
        enum template_value_type ct = template_value_type(template_value_dict_get(m, "content"));
        if (template_value_type(m) == TEMPLATE_DICT &&
            (template_value_dict_get(m, "content") == NULL || ct == TEMPLATE_NONE)) {
            struct template_value *empty =
                content_lists ? template_value_list() : template_value_string("", 0);
            if (template_value_dict_set(m, "content", empty) != 0) {
                return api_error_set(err, 500, "server_error", "out_of_memory", NULL,
                                     "out of memory");
            }
        }
        struct template_value *calls = template_value_dict_get(m, "tool_calls");
        for (size_t k = 0; k < template_value_length(calls); k++) {
            struct template_value *fn =
                template_value_dict_get(template_value_list_get(calls, k), "function");
            struct template_value *a = template_value_dict_get(fn, "arguments");
            size_t len = 0;
            const char *args = template_value_string_bytes(a, &len);
            if (args == NULL && a != NULL && template_value_type(a) != TEMPLATE_NONE) {
                continue; /* already an object */
            }
            char msg[128];
            struct template_value *parsed =
                args != NULL && len > 0 ? template_value_from_json(args, len, msg, sizeof(msg))
                                        : template_value_dict();
            if (parsed == NULL) {
                return api_error_set(err, 400, invalid_request, "invalid_value", "messages",
                                     "messages[%zu].tool_calls[%zu].function.arguments is not "
                                     "valid JSON",
                                     i, k);
            }
            if (template_value_dict_set(fn, "arguments", parsed) != 0) {
                return api_error_set(err, 500, "server_error", "out_of_memory", NULL,
                                     "out of memory");
            }
        }
    }
    return 0;
}

int server_request_chat_prompt(const char *body, size_t len, const struct chat *chat,
                               const struct template_limits *limits, struct completion_request *r,
                               struct api_error *err) {
    if (!chat_has_template(chat)) {
        return api_error_set(err, 400, invalid_request, "no_chat_template", "messages",
                             "model has no chat template (start with --chat-template FILE)");
    }
    char msg[1024];
    struct template_value *root = template_value_from_json(body, len, msg, sizeof(msg));
    if (root == NULL) {
        /* cJSON let through what RFC 8259 (and Python's json, and pydantic) refuse: raw
         * control characters in strings, numbers such as 01 or 1. -- a 400 here. */
        if (strstr(msg, "out of memory") != NULL) {
            return api_error_set(err, 500, "server_error", "out_of_memory", NULL, "out of memory");
        }
        return api_error_set(err, 400, invalid_request, "invalid_json", NULL,
                             "the body is not valid JSON (%s)", msg);
    }
    int rc = -1;
    struct template_value *messages = template_value_dict_get(root, "messages");
    struct template_value *tools = template_value_dict_get(root, "tools");
    struct template_value *kwargs = template_value_dict_get(root, "chat_template_kwargs");
    struct template_value *none = template_value_none();
    if (none == NULL) {
        api_error_set(err, 500, "server_error", "out_of_memory", NULL, "out of memory");
        goto done;
    }
    if (normalize_messages(messages, template_iterates_content(chat_template(chat)), err) != 0) {
        goto done;
    }
    /* Variables a request may not set through chat_template_kwargs: transformers refuses
     * them twice over (a keyword given twice). */
    static const char *const reserved[] = {"messages", "tools", "documents",
                                           "add_generation_prompt", "continue_final_message"};
    for (size_t i = 0; i < sizeof(reserved) / sizeof(reserved[0]); i++) {
        if (template_value_type(kwargs) == TEMPLATE_DICT &&
            template_value_dict_get(kwargs, reserved[i]) != NULL) {
            api_error_set(err, 400, invalid_request, "invalid_value", "chat_template_kwargs",
                          "chat_template_kwargs may not set %s (a request field of its own)",
                          reserved[i]);
            goto done;
        }
    }
    struct chat_render_params p = {
        .messages = messages,
        .tools = template_value_type(tools) == TEMPLATE_LIST ? tools : none,
        .documents = none,
        .extra = template_value_type(kwargs) == TEMPLATE_DICT ? kwargs : NULL,
        .add_generation_prompt = r->add_generation_prompt,
        .continue_final_message = r->continue_final_message,
    };
    if (limits != NULL) {
        p.limits = *limits;
    }
    char *text = NULL;
    size_t text_len = 0;
    enum template_status st = chat_render(chat, &p, &text, &text_len, msg, sizeof(msg));
    switch (st) {
    case TEMPLATE_OK:
        break;
    case TEMPLATE_RAISED:
        api_error_set(err, 400, invalid_request, "chat_template_error", "messages", "%s", msg);
        goto done;
    case TEMPLATE_ERROR:
        if (r->continue_final_message && strncmp(msg, "continue_final_message", 22) == 0) {
            api_error_set(err, 400, invalid_request, "invalid_value", "continue_final_message",
                          "%s", msg);
        } else {
            api_error_set(err, 400, invalid_request, "chat_template_error", "messages",
                          "the chat template failed: %s", msg);
        }
        goto done;
    case TEMPLATE_LIMIT:
        api_error_set(err, 400, invalid_request, "chat_template_limit", "messages",
                      "the chat template ran past its bounds: %s", msg);
        goto done;
    default:
        api_error_set(err, 500, "server_error", "out_of_memory", NULL, "out of memory");
        goto done;
    }
    if (text_len == 0 || memchr(text, '\0', text_len) != NULL) {
        free(text);
        api_error_set(err, 400, invalid_request, text_len == 0 ? "empty_prompt" : "invalid_value",
                      "messages",
                      text_len == 0 ? "the chat template rendered an empty prompt"
                                    : "the rendered prompt contains a NUL character");
        goto done;
    }
    free(r->prompts[0].text);
    r->prompts[0].text = text;
    r->prompts[0].text_len = text_len;
    rc = 0;
done:
    template_value_unref(none);
    template_value_unref(root);
    return rc;
}
