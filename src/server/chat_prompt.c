/*
 * chat_prompt.c: a validated chat request -> its prompt text, through the model's chat template
 * (server_request_chat_prompt in request.h). Pure: no HTTP, no engine; called on HTTP threads
 * (the compiled template is shared read-only, the variables are this call's own).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <gptd/chat.h>
#include <gptd/template.h>

#include "request.h"

static const char *const invalid_request = "invalid_request_error";

/* OpenAI sends tool-call arguments as a JSON string; templates (Qwen, Llama 3.1, Hermes) print
 * them with tojson or iterate their items and expect a mapping, which is what transformers'
 * documentation asks for and what vLLM passes. Converted in place (the tree is ours). */
static int tool_call_arguments(struct template_value *messages, struct api_error *err) {
    for (size_t i = 0; i < template_value_length(messages); i++) {
        struct template_value *calls =
            template_value_dict_get(template_value_list_get(messages, i), "tool_calls");
        for (size_t k = 0; k < template_value_length(calls); k++) {
            struct template_value *fn =
                template_value_dict_get(template_value_list_get(calls, k), "function");
            size_t len = 0;
            const char *args =
                template_value_string_bytes(template_value_dict_get(fn, "arguments"), &len);
            if (args == NULL) {
                continue;
            }
            char msg[128];
            struct template_value *parsed = template_value_from_json(args, len, msg, sizeof(msg));
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
        /* The body passed cJSON's strict parse already: only memory can fail here. */
        return api_error_set(err, 500, "server_error", "out_of_memory", NULL, "out of memory");
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
    if (tool_call_arguments(messages, err) != 0) {
        goto done;
    }
    struct chat_render_params p = {
        .messages = messages,
        .tools = template_value_type(tools) == TEMPLATE_LIST ? tools : none,
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
        api_error_set(err, 400, invalid_request, "chat_template_error", "messages",
                      "the chat template failed: %s", msg);
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
