/*
 * template.c: `gptd template`: renders chat cases with a model's chat template, to check a
 * template (or gptd's renderer) against transformers without loading any weights.
 *
 * Run from main() on the main thread. Input: a JSON array of cases
 * {"messages": [...], "add_generation_prompt"?: bool, "extra"?: {variables},
 *  "tools"?: [...], "continue_final_message"?: bool} from --json FILE or stdin. Output: a JSON
 * array with one entry per case, {"text": rendered} or {"error": message}, in order. A case that
 * fails (the template raises, a bound is hit) is an entry, not a failure of the command; a
 * model without a template, a template that does not compile or input that is not such an
 * array exit 1; usage errors exit 2.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include <gptd/chat.h>
#include <gptd/template.h>

#include "cli.h"

static const char usage[] =
    "usage: gptd template [-m MODEL_DIR] [--chat-template FILE] [--json CASES_FILE | -]\n"
    "  renders each case of a JSON array {\"messages\", \"add_generation_prompt\", \"extra\"}\n"
    "  with the model's chat template (--chat-template FILE, else tokenizer_config.json's\n"
    "  chat_template, else chat_template.jinja) and prints a JSON array of {\"text\"} or\n"
    "  {\"error\"}; \"extra\" holds more template variables (it overrides bos_token and\n"
    "  eos_token). Needs no weights: MODEL_DIR may hold only the tokenizer files.\n";

/* One case's entry: {"text": ...} or {"error": ...}. NULL when out of memory. */
static cJSON *render_case(const struct chat *chat, const struct template_value *c) {
    const char *problem = NULL;
    struct template_value *messages = template_value_dict_get(c, "messages");
    struct template_value *agp = template_value_dict_get(c, "add_generation_prompt");
    struct template_value *extra = template_value_dict_get(c, "extra");
    struct template_value *tools = template_value_dict_get(c, "tools");
    struct template_value *cont = template_value_dict_get(c, "continue_final_message");
    if (template_value_type(c) != TEMPLATE_DICT) {
        problem = "a case must be an object";
    } else if (template_value_type(messages) != TEMPLATE_LIST) {
        problem = "a case needs \"messages\": a list";
    } else if (agp != NULL && template_value_type(agp) != TEMPLATE_BOOL) {
        problem = "\"add_generation_prompt\" must be a boolean";
    } else if (cont != NULL && template_value_type(cont) != TEMPLATE_BOOL) {
        problem = "\"continue_final_message\" must be a boolean";
    } else if (extra != NULL && template_value_type(extra) != TEMPLATE_DICT) {
        problem = "\"extra\" must be an object";
    }
    cJSON *entry = cJSON_CreateObject();
    if (entry == NULL) {
        return NULL;
    }
    if (problem != NULL) {
        cJSON_AddStringToObject(entry, "error", problem);
        return entry;
    }
    struct chat_render_params p = {
        .messages = messages,
        .tools = tools,
        .extra = extra,
        .add_generation_prompt = agp != NULL && template_value_truthy(agp),
        .continue_final_message = cont != NULL && template_value_truthy(cont),
    };
    char *text = NULL;
    size_t len = 0;
    char err[1024];
    if (chat_render(chat, &p, &text, &len, err, sizeof(err)) == TEMPLATE_OK) {
        /* cJSON strings end at a NUL: a text with one (from a "\u0000" in the case) cannot be
         * written whole, so it is reported rather than cut short. */
        if (memchr(text, '\0', len) != NULL) {
            cJSON_AddStringToObject(entry, "error", "the rendered text contains a NUL character");
        } else {
            cJSON_AddStringToObject(entry, "text", text);
        }
        free(text);
    } else {
        cJSON_AddStringToObject(entry, "error", err);
    }
    return entry;
}

int cmd_template(int argc, char **argv) {
    const char *model_dir = NULL, *template_file = NULL, *input = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            fputs(usage, stdout);
            return 0;
        }
        bool has_value = i + 1 < argc;
        if ((strcmp(a, "-m") == 0 || strcmp(a, "--model") == 0) && has_value) {
            model_dir = argv[++i];
        } else if (strcmp(a, "--chat-template") == 0 && has_value) {
            template_file = argv[++i];
        } else if (strcmp(a, "--json") == 0 && has_value) {
            input = argv[++i];
        } else if (strcmp(a, "-") == 0 && input == NULL) {
            input = "-";
        } else if (a[0] == '-') {
            fprintf(stderr, "gptd template: unknown flag or missing value: %s\n%s", a, usage);
            return CLI_EXIT_USAGE;
        } else {
            fprintf(stderr, "gptd template: unexpected argument: %s\n%s", a, usage);
            return CLI_EXIT_USAGE;
        }
    }
    if (model_dir == NULL && template_file == NULL) {
        fprintf(stderr, "gptd template: give -m MODEL_DIR or --chat-template FILE\n%s", usage);
        return CLI_EXIT_USAGE;
    }
    char err[1024];
    struct chat *chat = chat_load(model_dir, template_file, err, sizeof(err));
    if (chat == NULL) {
        fprintf(stderr, "gptd template: %s\n", err);
        return 1;
    }
    if (!chat_has_template(chat)) {
        fprintf(stderr,
                "gptd template: %s: model has no chat template (start with "
                "--chat-template FILE)\n",
                model_dir);
        chat_destroy(chat);
        return 1;
    }
    int rc = 1;
    size_t n = 0;
    char *json = cli_read_all(input, &n);
    struct template_value *cases = NULL;
    if (json != NULL) {
        cases = template_value_from_json(json, n, err, sizeof(err));
        if (cases == NULL) {
            fprintf(stderr, "gptd template: %s: %s\n", input != NULL ? input : "stdin", err);
        } else if (template_value_type(cases) != TEMPLATE_LIST) {
            fprintf(stderr, "gptd template: the input must be a JSON array of cases\n");
        } else {
            rc = 0;
        }
    }
    if (rc == 0) {
        fputs("[", stdout);
        for (size_t i = 0; i < template_value_length(cases) && rc == 0; i++) {
            cJSON *entry = render_case(chat, template_value_list_get(cases, i));
            char *s = entry != NULL ? cJSON_PrintUnformatted(entry) : NULL;
            if (s == NULL) {
                fprintf(stderr, "gptd template: out of memory\n");
                rc = 1;
            } else {
                printf("%s\n%s", i > 0 ? "," : "", s);
            }
            cJSON_free(s);
            cJSON_Delete(entry);
        }
        fputs("\n]\n", stdout);
        if (fflush(stdout) != 0) {
            rc = 1;
        }
    }
    template_value_unref(cases);
    free(json);
    chat_destroy(chat);
    return rc;
}
