/*
 * generate.c: `gptd generate`: runs one prompt through the model on the command line and prints
 * the continuation, optionally as JSON with the log-softmax of each generated position (greedy
 * by default here, unlike the API's temperature 1, so that a bare `gptd generate` is
 * reproducible).
 *
 * It is a client of the engine, as the server is: it starts an engine on the loaded model,
 * submits one request and prints what the request's events say. So the CLI and the server share
 * one decode loop, one sampler call, one stop matcher and one logprob routine, and `gptd
 * generate` prints what `gptd serve` would answer. Usage errors exit 2, failures to load or to
 * run exit 1.
 */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include <gptd/engine.h>
#include <gptd/model.h>
#include <gptd/sampling.h>
#include <gptd/tokenizer.h>
#include <gptd/util.h>

#include "cli.h"

static const char generate_usage[] =
    "usage: gptd generate [-m MODEL_DIR] (-p TEXT | --prompt-ids 1,2,3) [-n N] [--ignore-eos]\n"
    "                     [--logprobs K] [--json] [--threads N] [--kv-cache-mb MB]\n"
    "                     [--weights auto|f32|f16|bf16|q8] [--kv-cache-dtype f32|f16]\n"
    "  greedy continuation of the prompt (N new tokens, default 16); --json prints\n"
    "  {prompt_ids, ids, text, finish_reason, logprobs}; --logprobs K adds the top K per step\n"
    "sampling (defaults: greedy, everything else off):\n"
    "  --temperature T  --top-k K  --top-p P  --min-p P  --repetition-penalty R\n"
    "  --presence-penalty X  --frequency-penalty X  --seed N  --max-tokens N (= -n)\n"
    "  --min-tokens N  --stop TEXT (repeatable)  --stop-token-id ID (repeatable)\n"
    "  --logit-bias ID:BIAS (repeatable; -100 bans)\n";

#define GENERATE_MAX_TOP ENGINE_EVENT_TOP_MAX

struct gen_args {
    const char *model_dir;
    const char *prompt;
    const char *prompt_ids;
    int32_t n_new;
    int is_ignore_eos;
    int32_t n_top;
    int is_json;
    int n_threads;
    enum model_weights weights; /* --weights, default auto */
    enum kv_dtype kv_dtype;     /* --kv-cache-dtype, default f32 */
    int32_t kv_mb;
    struct sampling_params sp; /* n_new, ignore_eos and the vocabulary are applied later */
};

static int usage_error(const char *fmt, const char *what) {
    fprintf(stderr, "gptd generate: ");
    fprintf(stderr, fmt, what);
    fprintf(stderr, "\n%s", generate_usage);
    return CLI_EXIT_USAGE;
}

static int parse_float(const char *s, float *out) {
    char *end = NULL;
    errno = 0;
    float v = strtof(s, &end);
    if (errno != 0 || end == s || *end != '\0') {
        return -1;
    }
    *out = v; /* ranges are checked by sampling_params_validate once the vocabulary is known */
    return 0;
}

static int parse_int(const char *s, long lo, long hi, int32_t *out) {
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < lo || v > hi) {
        return -1;
    }
    *out = (int32_t)v;
    return 0;
}

/*
 * The sampling flags, all taking a value. Returns 1 when arg is not one of them, 0 when it was
 * parsed into *sp, or CLI_EXIT_USAGE.
 */
static int parse_sampling_flag(const char *arg, const char *value, struct sampling_params *sp) {
    static const char *const names[] = {"--temperature",
                                        "--top-k",
                                        "--top-p",
                                        "--min-p",
                                        "--repetition-penalty",
                                        "--presence-penalty",
                                        "--frequency-penalty",
                                        "--seed",
                                        "--min-tokens",
                                        "--stop",
                                        "--stop-token-id",
                                        "--logit-bias"};
    size_t i_name = 0;
    while (i_name < sizeof(names) / sizeof(names[0]) && strcmp(arg, names[i_name]) != 0) {
        i_name++;
    }
    if (i_name == sizeof(names) / sizeof(names[0])) {
        return 1;
    }
    if (value == NULL) {
        return usage_error("option '%s' needs a value", arg);
    }
    int bad = 0;
    int32_t v = 0;
    switch (i_name) {
    case 0:
        bad = parse_float(value, &sp->temperature);
        break;
    case 1:
        bad = parse_int(value, -1, INT32_MAX, &sp->top_k);
        break;
    case 2:
        bad = parse_float(value, &sp->top_p);
        break;
    case 3:
        bad = parse_float(value, &sp->min_p);
        break;
    case 4:
        bad = parse_float(value, &sp->repetition_penalty);
        break;
    case 5:
        bad = parse_float(value, &sp->presence_penalty);
        break;
    case 6:
        bad = parse_float(value, &sp->frequency_penalty);
        break;
    case 7: {
        char *end = NULL;
        errno = 0;
        unsigned long long seed = strtoull(value, &end, 10);
        bad = errno != 0 || end == value || *end != '\0' || value[0] == '-';
        sp->seed = (uint64_t)seed;
        sp->has_seed = true;
        break;
    }
    case 8:
        bad = parse_int(value, 0, INT32_MAX, &sp->min_tokens);
        break;
    case 9:
        bad = sampling_params_add_stop(sp, value, strlen(value));
        break;
    case 10:
        bad = parse_int(value, 0, INT32_MAX, &v) != 0 || sampling_params_add_stop_token_id(sp, v);
        break;
    default: {
        /* ID:BIAS */
        const char *colon = strchr(value, ':');
        char id_text[16];
        float bias = 0.0f;
        size_t n = colon != NULL ? (size_t)(colon - value) : 0;
        bad = colon == NULL || n == 0 || n >= sizeof(id_text);
        if (!bad) {
            memcpy(id_text, value, n);
            id_text[n] = '\0';
            bad = parse_int(id_text, 0, INT32_MAX, &v) != 0 || parse_float(colon + 1, &bias) != 0 ||
                  sampling_params_add_logit_bias(sp, v, bias) != 0;
        }
        break;
    }
    }
    if (bad) {
        fprintf(stderr, "gptd generate: bad value '%s' for %s\n%s", value, arg, generate_usage);
        return CLI_EXIT_USAGE;
    }
    return 0;
}

/* Returns 0, 1 for --help, or CLI_EXIT_USAGE. */
static int parse_args(int argc, char **argv, struct gen_args *a) {
    memset(a, 0, sizeof(*a));
    a->n_new = 16;
    a->kv_mb = 256;
    sampling_params_init_default(&a->sp);
    a->sp.temperature = 0.0f;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        const char *next = i + 1 < argc ? argv[i + 1] : NULL;
        int32_t v;
        int rc = parse_sampling_flag(arg, next, &a->sp);
        if (rc != 1) {
            if (rc != 0) {
                return rc;
            }
            i++;
            continue;
        }
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            return 1;
        } else if (strcmp(arg, "--ignore-eos") == 0) {
            a->is_ignore_eos = 1;
        } else if (strcmp(arg, "--json") == 0) {
            a->is_json = 1;
        } else if (strcmp(arg, "-m") == 0 || strcmp(arg, "--model") == 0 ||
                   strcmp(arg, "-p") == 0 || strcmp(arg, "--prompt") == 0 ||
                   strcmp(arg, "--prompt-ids") == 0 || strcmp(arg, "-n") == 0 ||
                   strcmp(arg, "--max-tokens") == 0 || strcmp(arg, "--logprobs") == 0 ||
                   strcmp(arg, "--threads") == 0 || strcmp(arg, "--kv-cache-mb") == 0 ||
                   strcmp(arg, "--weights") == 0 || strcmp(arg, "--kv-cache-dtype") == 0) {
            if (next == NULL) {
                return usage_error("option '%s' needs a value", arg);
            }
            i++;
            if (arg[1] == 'm' || strcmp(arg, "--model") == 0) {
                a->model_dir = next;
            } else if (arg[1] == 'p' || strcmp(arg, "--prompt") == 0) {
                a->prompt = next;
            } else if (strcmp(arg, "--prompt-ids") == 0) {
                a->prompt_ids = next;
            } else if (strcmp(arg, "-n") == 0 || strcmp(arg, "--max-tokens") == 0) {
                if (parse_int(next, 0, 1 << 20, &a->n_new) != 0) {
                    return usage_error("-n wants a count, not '%s'", next);
                }
            } else if (strcmp(arg, "--logprobs") == 0) {
                if (parse_int(next, 0, GENERATE_MAX_TOP, &a->n_top) != 0) {
                    return usage_error("--logprobs wants 0..20, not '%s'", next);
                }
            } else if (strcmp(arg, "--threads") == 0) {
                if (parse_int(next, 1, 256, &v) != 0) {
                    return usage_error("--threads wants 1..256, not '%s'", next);
                }
                a->n_threads = v;
            } else if (strcmp(arg, "--kv-cache-dtype") == 0) {
                if (kv_dtype_parse(next, &a->kv_dtype) != 0) {
                    return usage_error("--kv-cache-dtype wants f32 or f16, not '%s'", next);
                }
            } else if (strcmp(arg, "--weights") == 0) {
                if (model_weights_parse(next, &a->weights) != 0) {
                    return usage_error("--weights wants auto, f32, f16, bf16 or q8, not '%s'",
                                       next);
                }
            } else {
                if (parse_int(next, 1, 1 << 20, &a->kv_mb) != 0) {
                    return usage_error("--kv-cache-mb wants a size in MB, not '%s'", next);
                }
            }
        } else {
            return usage_error("unknown argument '%s'", arg);
        }
    }
    if (a->model_dir == NULL) {
        a->model_dir = GPTD_DEFAULT_MODEL_DIR; /* the bundled model */
    }
    if ((a->prompt == NULL) == (a->prompt_ids == NULL)) {
        return usage_error("%s", "give exactly one of -p TEXT and --prompt-ids");
    }
    return 0;
}

/* "1,2,3" -> ids. Returns the count, or -1 on a malformed list. */
static int32_t parse_ids(const char *s, int32_t *ids, int32_t cap) {
    int32_t n = 0;
    while (*s != '\0') {
        char *end = NULL;
        errno = 0;
        long v = strtol(s, &end, 10);
        if (end == s || errno != 0 || v < 0 || v > INT32_MAX || n == cap) {
            return -1;
        }
        ids[n++] = (int32_t)v;
        s = end;
        if (*s == ',') {
            s++;
            if (*s == '\0') {
                return -1;
            }
        } else if (*s != '\0') {
            return -1;
        }
    }
    return n;
}

/* Wakes the CLI's thread when the engine has pushed events (engine thread, request lock held). */
struct wakeup {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool is_signalled;
};

static void wakeup_notify(void *ctx) {
    struct wakeup *w = ctx;
    pthread_mutex_lock(&w->lock);
    w->is_signalled = true;
    pthread_cond_signal(&w->cond);
    pthread_mutex_unlock(&w->lock);
}

static void wakeup_wait(struct wakeup *w) {
    pthread_mutex_lock(&w->lock);
    while (!w->is_signalled) {
        pthread_cond_wait(&w->cond, &w->lock);
    }
    w->is_signalled = false;
    pthread_mutex_unlock(&w->lock);
}

/* What the request's events said, gathered for printing. */
struct gen_output {
    int32_t *ids; /* generated ids (an EOS or stop token that ended the run is dropped) */
    int32_t n_ids;
    char *text; /* the concatenated text of the events, NUL-terminated */
    size_t n_text, text_cap;
    cJSON *logprobs; /* with --json: one {id, logprob, top} per id */
    enum engine_finish_reason finish;
    int32_t stop_token;
    char stop_reason[260];
    int64_t t_admitted_us, t_first_token_us, t_end_us;
    char error[200];
    bool has_error;
};

static int on_event(struct gen_output *o, const struct engine_event *ev, int64_t now_us) {
    switch (ev->type) {
    case ENGINE_EVENT_ADMITTED:
        o->t_admitted_us = now_us;
        return 0;
    case ENGINE_EVENT_TOKEN:
        if (o->n_text + ev->text_len + 1 > o->text_cap) {
            size_t cap = 2 * (o->n_text + ev->text_len + 1);
            char *p = realloc(o->text, cap);
            if (p == NULL) {
                return -1;
            }
            o->text = p;
            o->text_cap = cap;
        }
        memcpy(o->text + o->n_text, ev->text, ev->text_len);
        o->n_text += ev->text_len;
        o->text[o->n_text] = '\0';
        if (ev->token < 0) {
            return 0; /* the rest of a long piece of text */
        }
        if (o->t_first_token_us == 0) {
            o->t_first_token_us = now_us;
        }
        o->ids[o->n_ids++] = ev->token;
        if (o->logprobs != NULL) {
            cJSON *entry = cJSON_CreateObject();
            cJSON_AddItemToArray(o->logprobs, entry);
            cJSON_AddNumberToObject(entry, "id", ev->token);
            cJSON_AddNumberToObject(entry, "logprob", ev->logprob);
            cJSON *top = cJSON_AddArrayToObject(entry, "top");
            for (int32_t i = 0; i < ev->n_top; i++) {
                cJSON *pair = cJSON_CreateArray();
                cJSON_AddItemToArray(pair, cJSON_CreateNumber(ev->top[i].token_id));
                cJSON_AddItemToArray(pair, cJSON_CreateNumber(ev->top[i].logprob));
                cJSON_AddItemToArray(top, pair);
            }
        }
        return 0;
    case ENGINE_EVENT_FINISH:
        o->finish = ev->finish_reason;
        o->stop_token = ev->stop_token;
        snprintf(o->stop_reason, sizeof(o->stop_reason), "%s", ev->stop_reason);
        o->t_end_us = now_us;
        /* The EOS or stop token that ended the run is not part of the output. */
        if (ev->stop_token >= 0 && o->n_ids > 0 && o->ids[o->n_ids - 1] == ev->stop_token) {
            o->n_ids--;
            if (o->logprobs != NULL) {
                cJSON_DeleteItemFromArray(o->logprobs, cJSON_GetArraySize(o->logprobs) - 1);
            }
        }
        return 0;
    case ENGINE_EVENT_ERROR:
        o->has_error = true;
        snprintf(o->error, sizeof(o->error), "%s", ev->error_message);
        return 0;
    case ENGINE_EVENT_PROMPT_TOKEN:
        return 0;
    }
    return 0;
}

/* Submits one request to the engine and reads its events until it is done. 0 or -1 (message
 * in err). */
static int run_request(struct engine *engine, const struct engine_request_params *params,
                       struct gen_output *o, char *err, size_t err_size) {
    struct wakeup w = {.is_signalled = false};
    pthread_mutex_init(&w.lock, NULL);
    pthread_cond_init(&w.cond, NULL);
    enum engine_status st;
    int rc = -1;
    struct engine_request *req =
        engine_request_create(engine, params, wakeup_notify, &w, &st, err, err_size);
    if (req == NULL) {
        goto done;
    }
    st = engine_submit(engine, req);
    if (st != ENGINE_OK) {
        snprintf(err, err_size, "%s",
                 st == ENGINE_ERR_TOO_LARGE ? "the KV cache is too small (--kv-cache-mb)"
                 : st == ENGINE_ERR_CONTEXT ? "the prompt and -n exceed the model's context"
                                            : "the engine refused the request");
        goto done;
    }
    struct engine_event ev[16];
    /* Drain, then ask whether more can come: done means every event is pushed and the channel
     * is empty. Any push after that check notifies, so the wait cannot miss it. */
    for (;;) {
        size_t n;
        while ((n = engine_request_poll(req, ev, 16)) > 0) {
            int64_t now = time_now_us();
            for (size_t i = 0; i < n; i++) {
                if (on_event(o, &ev[i], now) != 0) {
                    snprintf(err, err_size, "out of memory");
                    goto done;
                }
            }
        }
        if (engine_request_is_done(req)) {
            break;
        }
        wakeup_wait(&w);
    }
    if (o->has_error) {
        snprintf(err, err_size, "%s", o->error);
        goto done;
    }
    rc = 0;
done:
    engine_request_release(req); /* no notify after this: w can go */
    pthread_cond_destroy(&w.cond);
    pthread_mutex_destroy(&w.lock);
    return rc;
}

static const char *finish_name(enum engine_finish_reason r) {
    return r == ENGINE_FINISH_STOP ? "stop" : "length";
}

int cmd_generate(int argc, char **argv) {
    struct gen_args a;
    int rc = parse_args(argc, argv, &a);
    if (rc == 1) {
        printf("%s", generate_usage);
        return 0;
    }
    if (rc != 0) {
        return rc;
    }
    char err[1024] = "";
    int exit_code = 1;
    struct model *model = NULL;
    struct tokenizer *tok = NULL;
    struct engine *engine = NULL;
    int32_t *prompt = NULL;
    size_t n_prompt = 0;
    cJSON *json = NULL;
    struct gen_output out = {.stop_token = -1};

    if (a.n_threads > 0) {
        model_set_threads(a.n_threads);
    }
    model = model_load_with(a.model_dir, a.weights, err, sizeof(err));
    if (model == NULL) {
        fprintf(stderr, "gptd generate: %s\n", err);
        goto done;
    }
    const struct model_config *cfg = model_get_config(model);
    /* The tokenizer is needed for -p and for the text of the output; with --prompt-ids a model
     * without tokenizer files still generates ids. */
    tok = tokenizer_load(a.model_dir, err, sizeof(err));
    if (tok == NULL && a.prompt != NULL) {
        fprintf(stderr, "gptd generate: %s\n", err);
        goto done;
    }
    if (a.prompt != NULL) {
        /* With the model's special tokens (Llama's BOS), as the server tokenizes a prompt. */
        if (tokenizer_encode(tok, a.prompt, strlen(a.prompt),
                             TOKENIZER_PARSE_SPECIAL | TOKENIZER_ADD_SPECIAL, &prompt, &n_prompt,
                             err, sizeof(err)) != 0) {
            fprintf(stderr, "gptd generate: %s\n", err);
            goto done;
        }
    } else {
        prompt = malloc((size_t)cfg->n_ctx * sizeof(int32_t) + sizeof(int32_t));
        int32_t n = prompt != NULL ? parse_ids(a.prompt_ids, prompt, cfg->n_ctx) : -1;
        if (n < 0) {
            exit_code = usage_error("--prompt-ids wants comma-separated ids that fit the "
                                    "context, not '%s'",
                                    a.prompt_ids);
            goto done;
        }
        n_prompt = (size_t)n;
    }
    for (size_t i = 0; i < n_prompt; i++) {
        if (prompt[i] >= cfg->n_vocab) {
            fprintf(stderr, "gptd generate: prompt id %d is outside the vocabulary (%d)\n",
                    prompt[i], cfg->n_vocab);
            goto done;
        }
    }
    if (n_prompt == 0 || n_prompt > (size_t)cfg->n_ctx) {
        fprintf(stderr, "gptd generate: the prompt has %zu tokens (1..%d allowed)\n", n_prompt,
                cfg->n_ctx);
        goto done;
    }

    /* Validated as the server validates (max_tokens >= 1); -n 0 then asks for nothing. */
    a.sp.max_tokens = a.n_new > 0 ? a.n_new : 1;
    a.sp.ignore_eos = a.is_ignore_eos != 0;
    a.sp.logprobs = a.is_json ? a.n_top : -1;
    const char *bad_param = NULL;
    if (sampling_params_validate(&a.sp, cfg->n_vocab, &bad_param, err, sizeof(err)) != 0) {
        exit_code = usage_error("%s", err);
        goto done;
    }
    if (a.sp.n_stop > 0 && tok == NULL) {
        fprintf(stderr, "gptd generate: --stop needs the model's tokenizer files\n");
        goto done;
    }
    /* Generation stops at the end of the context ("length"), as before the engine ran it. */
    int64_t room = (int64_t)cfg->n_ctx - (int64_t)n_prompt;
    a.sp.max_tokens = a.n_new < room ? a.n_new : (int32_t)room;

    /* The same engine as `gptd serve`, with one request: one decode loop, one sampler call,
     * one stop matcher for the CLI and the server. */
    struct engine_config ecfg;
    engine_config_init_default(&ecfg);
    ecfg.kv_cache_bytes = (size_t)a.kv_mb << 20;
    ecfg.kv_dtype = a.kv_dtype;
    ecfg.max_queue = 1;
    engine = engine_create(model, tok, &ecfg, err, sizeof(err));
    if (engine == NULL || engine_start(engine) != 0) {
        fprintf(stderr, "gptd generate: %s\n", engine == NULL ? err : "cannot start the engine");
        goto done;
    }
    out.ids = malloc(((size_t)a.n_new + 1) * sizeof(int32_t));
    if (out.ids == NULL) {
        fprintf(stderr, "gptd generate: out of memory\n");
        goto done;
    }
    if (a.is_json) {
        json = cJSON_CreateObject();
        out.logprobs = cJSON_CreateArray();
    }
    struct engine_request_params params = {
        .prompt = prompt,
        .n_prompt = n_prompt,
        .sampling = a.sp,
        .n = 1,
        .best_of = 1,
    };
    int64_t t_start = time_now_us();
    if (run_request(engine, &params, &out, err, sizeof(err)) != 0) {
        fprintf(stderr, "gptd generate: %s\n", err);
        goto done;
    }
    int64_t t_prefill = out.t_first_token_us != 0 ? out.t_first_token_us : out.t_end_us;
    int64_t t_decode = out.t_end_us - t_prefill;
    log_info("generate: prompt %zu tokens in %.1f ms, %d new tokens in %.1f ms (%.1f tok/s)",
             n_prompt, (double)(t_prefill - t_start) / 1e3, out.n_ids, (double)t_decode / 1e3,
             t_decode > 0 && out.n_ids > 1 ? (out.n_ids - 1) / ((double)t_decode / 1e6) : 0.0);

    const char *text = tok == NULL ? NULL : out.text != NULL ? out.text : "";
    if (json != NULL) {
        cJSON *p = cJSON_AddArrayToObject(json, "prompt_ids");
        for (size_t i = 0; i < n_prompt; i++) {
            cJSON_AddItemToArray(p, cJSON_CreateNumber(prompt[i]));
        }
        cJSON *ids = cJSON_AddArrayToObject(json, "ids");
        for (int32_t i = 0; i < out.n_ids; i++) {
            cJSON_AddItemToArray(ids, cJSON_CreateNumber(out.ids[i]));
        }
        if (text != NULL) {
            cJSON_AddStringToObject(json, "text", text);
        } else {
            cJSON_AddNullToObject(json, "text");
        }
        cJSON_AddStringToObject(json, "finish_reason", finish_name(out.finish));
        if (out.stop_reason[0] != '\0') {
            cJSON_AddStringToObject(json, "stop_reason", out.stop_reason);
        }
        cJSON_AddItemToObject(json, "logprobs", out.logprobs);
        out.logprobs = NULL;
        char *s = cJSON_PrintUnformatted(json);
        if (s == NULL) {
            fprintf(stderr, "gptd generate: out of memory\n");
            goto done;
        }
        printf("%s\n", s);
        free(s);
    } else if (text != NULL) {
        printf("%s\n", text);
    } else {
        for (int32_t i = 0; i < out.n_ids; i++) {
            printf("%s%d", i > 0 ? " " : "", out.ids[i]);
        }
        printf("\n");
    }
    exit_code = 0;

done:
    engine_destroy(engine);
    cJSON_Delete(json);
    cJSON_Delete(out.logprobs);
    free(out.text);
    free(out.ids);
    free(prompt);
    tokenizer_destroy(tok);
    model_destroy(model);
    return exit_code;
}
