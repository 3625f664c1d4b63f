/*
 * chat.h: a model's chat format: which chat template it has (--chat-template FILE, else
 * tokenizer_config.json's chat_template, else chat_template.jinja), the variables transformers
 * passes to it, and turning a list of chat messages into prompt text.
 *
 * Who calls it: the server (POST /v1/chat/completions, /apply-template) and `gptd template`.
 * Loaded once at start-up, then immutable: chat_render may run on any number of threads at once
 * (each call builds its own variables; the compiled template is shared read-only).
 */
#ifndef GPTD_CHAT_H
#define GPTD_CHAT_H

#include <stdbool.h>
#include <stddef.h>

#include <gptd/template.h>

struct chat;

/*
 * Finds and compiles the chat template of the model (or tokenizer) folder dir:
 *   1. template_file, when not NULL (--chat-template FILE);
 *   2. else dir/tokenizer_config.json's "chat_template": a string, or a list of
 *      {"name", "template"} of which the one named "default" is used;
 *   3. else dir/chat_template.jinja.
 * (The order the project's issue 18 specifies. transformers reads a chat_template.jinja before
 * the config's entry; current transformers writes only the .jinja file, so both at once with
 * different contents does not happen in practice.)
 * Also reads the special-token strings transformers passes as variables -- bos_token,
 * eos_token, unk_token, sep_token, pad_token, cls_token, mask_token (plain strings or
 * {"content": ...}) and additional_special_tokens (a list of them) -- from
 * tokenizer_config.json, the gaps filled from special_tokens_map.json as transformers fills
 * them. Finding no template is not an error:
 * the result answers chat_has_template() false. Returns NULL with a message naming the file
 * (and for a template that does not compile, its line and column) in err.
 */
struct chat *chat_load(const char *dir, const char *template_file, char *err, size_t err_size);
void chat_destroy(struct chat *c); /* NULL is a no-op */

bool chat_has_template(const struct chat *c);
/* Where the template came from, for logs: the file's path, or "" with no template. */
const char *chat_template_origin(const struct chat *c);
/* The compiled template (NULL when there is none). Borrowed. */
const struct template *chat_template(const struct chat *c);

struct chat_render_params {
    const struct template_value *messages;  /* borrowed: a list of message dicts */
    const struct template_value *tools;     /* borrowed: a list (or none), or NULL (not
                                               passed) */
    const struct template_value *documents; /* borrowed: as tools (transformers passes both,
                                               None when absent; the server does the same) */
    const struct template_value *extra;     /* borrowed: a dict of more variables (a request's
                                               chat_template_kwargs, a case's "extra"), or NULL;
                                               they override the special-token strings */
    bool add_generation_prompt;
    bool continue_final_message; /* end the text right after the last message's content, so the
                                    model continues it (transformers' rule); needs
                                    add_generation_prompt false */
    struct template_limits limits;
};

/*
 * Renders the template. Messages whose content is a list of parts are passed as they are to a
 * template that iterates over content (template_iterates_content), and otherwise with the texts
 * of their "text" parts joined by "\n" (vLLM's rule), so plain-string templates work with
 * OpenAI-style content arrays. Returns TEMPLATE_OK with a malloc'd NUL-terminated *out the
 * caller frees, or the template's status with a message in err (TEMPLATE_RAISED: the
 * template's own message; TEMPLATE_ERROR also for a continue_final_message that cannot be
 * honoured). No template: TEMPLATE_ERROR.
 */
enum template_status chat_render(const struct chat *c, const struct chat_render_params *p,
                                 char **out, size_t *out_len, char *err, size_t err_size);

#endif
