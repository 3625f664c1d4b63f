/*
 * generate.c: `gptd generate`: runs one prompt through the model on the command line and prints
 * the continuation, optionally as JSON with the log-softmax of each generated position. Tokens
 * are chosen by the sampling module (greedy by default here, unlike the API's temperature 1, so
 * that a bare `gptd generate` is reproducible); stop strings go through its stop matcher.
 *
 * Run from main() on the main thread, which here is also the "engine thread" of model.h: it
 * owns the KV cache, the scratch and the sequence. Usage errors exit 2, failures to load or to
 * run exit 1.
 */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include <gptd/model.h>
#include <gptd/sampling.h>
#include <gptd/tokenizer.h>
#include <gptd/util.h>

#include "cli.h"

static const char generate_usage[] =
    "usage: gptd generate [-m MODEL_DIR] (-p TEXT | --prompt-ids 1,2,3) [-n N] [--ignore-eos]\n"
    "                     [--logprobs K] [--json] [--threads N] [--kv-cache-mb MB]\n"
    "                     [--weights auto|f32|f16|bf16] [--kv-cache-dtype f32|f16]\n"
    "  greedy continuation of the prompt (N new tokens, default 16); --json prints\n"
    "  {prompt_ids, ids, text, finish_reason, logprobs}; --logprobs K adds the top K per step\n"
    "sampling (defaults: greedy, everything else off):\n"
    "  --temperature T  --top-k K  --top-p P  --min-p P  --repetition-penalty R\n"
    "  --presence-penalty X  --frequency-penalty X  --seed N  --max-tokens N (= -n)\n"
    "  --min-tokens N  --stop TEXT (repeatable)  --stop-token-id ID (repeatable)\n"
    "  --logit-bias ID:BIAS (repeatable; -100 bans)\n";

#define GENERATE_MAX_TOP 20

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
                    return usage_error("--weights wants auto, f32, f16 or bf16, not '%s'", next);
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

struct top_entry {
    int32_t id;
    float logit;
};

/* log-softmax normaliser of logits (V,): max + log(sum exp(l - max)), in double. */
static double log_normaliser(const float *logits, int32_t n_vocab) {
    float max = logits[0];
    for (int32_t i = 1; i < n_vocab; i++) {
        max = logits[i] > max ? logits[i] : max;
    }
    double sum = 0.0;
    for (int32_t i = 0; i < n_vocab; i++) {
        sum += exp((double)logits[i] - (double)max);
    }
    return (double)max + log(sum);
}

/* The k largest logits, largest first (ties: smaller id first), by insertion into a short list. */
static int32_t top_k(const float *logits, int32_t n_vocab, int32_t k, struct top_entry *out) {
    if (k <= 0) {
        return 0; /* without this, k = 0 reads out[-1] below */
    }
    int32_t n = 0;
    for (int32_t i = 0; i < n_vocab; i++) {
        if (n == k && logits[i] <= out[n - 1].logit) {
            continue;
        }
        int32_t j = n < k ? n++ : k - 1;
        while (j > 0 && out[j - 1].logit < logits[i]) {
            out[j] = out[j - 1];
            j--;
        }
        out[j].id = i;
        out[j].logit = logits[i];
    }
    return n;
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
    struct kv_cache *kv = NULL;
    struct model_scratch *scratch = NULL;
    struct kv_seq seq = {0};
    int32_t *prompt = NULL;
    size_t n_prompt = 0;
    int32_t *out_ids = NULL;
    float *logits = NULL;
    cJSON *json = NULL;
    cJSON *json_logprobs = NULL;
    char *text = NULL;
    struct sampler *sampler = NULL;
    struct stop_matcher *matcher = NULL;
    char *stop_text = NULL; /* with --stop: the text the matcher released */
    char *piece = NULL;     /* with --stop: one token's decoded bytes */
    size_t piece_cap = 0;
    size_t n_stop_text = 0;
    int32_t i_stop = -1;
    struct detok detok;

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
        if (tokenizer_encode(tok, a.prompt, strlen(a.prompt), TOKENIZER_PARSE_SPECIAL, &prompt,
                             &n_prompt, err, sizeof(err)) != 0) {
            fprintf(stderr, "gptd generate: %s\n", err);
            goto done;
        }
    } else {
        prompt = malloc((size_t)cfg->n_ctx * sizeof(int32_t) + sizeof(int32_t));
        int32_t n = prompt != NULL ? parse_ids(a.prompt_ids, prompt, cfg->n_ctx) : -1;
        if (n < 0) {
            free(prompt);
            prompt = NULL;
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

    a.sp.max_tokens = a.n_new > 0 ? a.n_new : 1;
    a.sp.ignore_eos = a.is_ignore_eos != 0;
    const char *bad_param = NULL;
    if (sampling_params_validate(&a.sp, cfg->n_vocab, &bad_param, err, sizeof(err)) != 0) {
        exit_code = usage_error("%s", err);
        goto done;
    }
    sampler = sampler_create(&a.sp, 0, cfg->n_vocab, cfg->eos_token_id, prompt, (int32_t)n_prompt,
                             err, sizeof(err));
    if (sampler == NULL) {
        fprintf(stderr, "gptd generate: %s\n", err);
        goto done;
    }
    if (a.sp.n_stop > 0) {
        /* Stop strings need text: decode as we go and let the matcher cut it. */
        if (tok == NULL) {
            fprintf(stderr, "gptd generate: --stop needs the model's tokenizer files\n");
            goto done;
        }
        matcher = stop_matcher_create(&a.sp);
        piece_cap = tokenizer_max_token_bytes(tok) + 16;
        size_t max_new = a.n_new < cfg->n_ctx ? (size_t)a.n_new : (size_t)cfg->n_ctx;
        stop_text = malloc((max_new + 1) * piece_cap);
        piece = malloc(piece_cap);
        if (matcher == NULL || stop_text == NULL || piece == NULL) {
            fprintf(stderr, "gptd generate: out of memory\n");
            goto done;
        }
        detok_init(&detok, tok);
    }

    kv = kv_cache_create_with(model, (size_t)a.kv_mb << 20, a.kv_dtype, err, sizeof(err));
    int32_t max_rows = (int32_t)n_prompt < 512 ? (int32_t)n_prompt : 512;
    scratch = model_scratch_create(model, max_rows, 1);
    out_ids = malloc(((size_t)a.n_new + 1) * sizeof(int32_t));
    logits = malloc((size_t)cfg->n_vocab * sizeof(float));
    if (kv == NULL || scratch == NULL || out_ids == NULL || logits == NULL ||
        kv_seq_init(&seq, kv) != 0) {
        fprintf(stderr, "gptd generate: %s\n", kv == NULL ? err : "out of memory");
        goto done;
    }
    if (a.is_json) {
        json = cJSON_CreateObject();
        json_logprobs = cJSON_CreateArray();
    }

    /* Prefill in chunks of up to max_rows, logits for the last row only. */
    int64_t t_start = time_now_us();
    for (size_t done_rows = 0; done_rows < n_prompt;) {
        int32_t chunk =
            (int32_t)(n_prompt - done_rows) < max_rows ? (int32_t)(n_prompt - done_rows) : max_rows;
        enum kv_status st = kv_seq_reserve(kv, &seq, chunk);
        if (st != KV_OK) {
            fprintf(stderr, "gptd generate: the KV cache is too small (--kv-cache-mb)\n");
            goto done;
        }
        struct model_batch_seq b = {.kv = &seq,
                                    .tokens = prompt + done_rows,
                                    .n_tokens = chunk,
                                    .n_logits = done_rows + (size_t)chunk == n_prompt ? 1 : 0};
        if (model_forward(model, kv, scratch, &b, 1, logits) != 0) {
            fprintf(stderr, "gptd generate: forward pass failed\n");
            goto done;
        }
        done_rows += (size_t)chunk;
    }
    int64_t t_prefill = time_now_us();

    const char *finish = "length";
    int32_t n_out = 0;
    while (n_out < a.n_new) {
        struct sample_result res;
        int32_t best = sampler_sample(sampler, logits, &res);
        if (best < 0) { /* logit_bias banned every token */
            finish = "stop";
            break;
        }
        enum sampler_finish fin = sampler_accept(sampler, best);
        if (fin == SAMPLER_FINISH_EOS || fin == SAMPLER_FINISH_STOP_TOKEN) {
            finish = "stop"; /* the EOS or stop token is not part of the output */
            break;
        }
        out_ids[n_out++] = best;
        if (json_logprobs != NULL) {
            double norm = log_normaliser(logits, cfg->n_vocab);
            cJSON *entry = cJSON_CreateObject();
            cJSON_AddNumberToObject(entry, "id", best);
            cJSON_AddNumberToObject(entry, "logprob", (double)logits[best] - norm);
            cJSON *top = cJSON_AddArrayToObject(entry, "top");
            struct top_entry t[GENERATE_MAX_TOP];
            int32_t n_t = top_k(logits, cfg->n_vocab, a.n_top, t);
            for (int32_t i = 0; i < n_t; i++) {
                cJSON *pair = cJSON_CreateArray();
                cJSON_AddItemToArray(pair, cJSON_CreateNumber(t[i].id));
                cJSON_AddItemToArray(pair, cJSON_CreateNumber((double)t[i].logit - norm));
                cJSON_AddItemToArray(top, pair);
            }
            cJSON_AddItemToArray(json_logprobs, entry);
        }
        if (matcher != NULL) {
            size_t n_piece = detok_feed(&detok, best, piece, piece_cap);
            bool can_match = n_out > a.sp.min_tokens;
            struct stop_output so;
            if (stop_matcher_push(matcher, piece, n_piece, can_match, &so) != 0) {
                fprintf(stderr, "gptd generate: out of memory\n");
                goto done;
            }
            memcpy(stop_text + n_stop_text, so.text, so.len);
            n_stop_text += so.len;
            if (so.i_stop >= 0) {
                i_stop = so.i_stop;
                finish = "stop";
                break;
            }
        }
        if (n_out == a.n_new) {
            break;
        }
        if (seq.n_pos >= cfg->n_ctx) {
            break; /* the context is full: "length" */
        }
        if (kv_seq_reserve(kv, &seq, 1) != KV_OK) {
            fprintf(stderr, "gptd generate: the KV cache is too small (--kv-cache-mb)\n");
            goto done;
        }
        struct model_batch_seq b = {
            .kv = &seq, .tokens = &out_ids[n_out - 1], .n_tokens = 1, .n_logits = 1};
        if (model_forward(model, kv, scratch, &b, 1, logits) != 0) {
            fprintf(stderr, "gptd generate: forward pass failed\n");
            goto done;
        }
    }
    int64_t t_end = time_now_us();
    log_info("generate: prompt %zu tokens in %.1f ms, %d new tokens in %.1f ms (%.1f tok/s)",
             n_prompt, (double)(t_prefill - t_start) / 1e3, n_out,
             (double)(t_end - t_prefill) / 1e3,
             t_end > t_prefill ? n_out / ((double)(t_end - t_prefill) / 1e6) : 0.0);

    if (matcher != NULL) {
        if (i_stop < 0) { /* no match: release the held-back tail, then the decoder's */
            char tail[64];
            struct stop_output so;
            size_t n_tail = detok_flush(&detok, tail, sizeof(tail));
            stop_matcher_push(matcher, tail, n_tail, n_out > a.sp.min_tokens, &so);
            memcpy(stop_text + n_stop_text, so.text, so.len);
            n_stop_text += so.len;
            i_stop = so.i_stop;
            if (i_stop < 0) {
                stop_matcher_finish(matcher, &so);
                memcpy(stop_text + n_stop_text, so.text, so.len);
                n_stop_text += so.len;
            } else {
                finish = "stop";
            }
        }
        stop_text[n_stop_text] = '\0';
        text = stop_text;
        stop_text = NULL;
    } else if (tok != NULL) {
        text = tokenizer_decode(tok, out_ids, (size_t)n_out, NULL);
    }
    if (json != NULL) {
        cJSON *p = cJSON_AddArrayToObject(json, "prompt_ids");
        for (size_t i = 0; i < n_prompt; i++) {
            cJSON_AddItemToArray(p, cJSON_CreateNumber(prompt[i]));
        }
        cJSON *ids = cJSON_AddArrayToObject(json, "ids");
        for (int32_t i = 0; i < n_out; i++) {
            cJSON_AddItemToArray(ids, cJSON_CreateNumber(out_ids[i]));
        }
        if (text != NULL) {
            cJSON_AddStringToObject(json, "text", text);
        } else {
            cJSON_AddNullToObject(json, "text");
        }
        cJSON_AddStringToObject(json, "finish_reason", finish);
        if (i_stop >= 0) {
            cJSON_AddStringToObject(json, "stop_reason", a.sp.stop[i_stop]);
        }
        cJSON_AddItemToObject(json, "logprobs", json_logprobs);
        json_logprobs = NULL;
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
        for (int32_t i = 0; i < n_out; i++) {
            printf("%s%d", i > 0 ? " " : "", out_ids[i]);
        }
        printf("\n");
    }
    exit_code = 0;

done:
    free(text);
    free(stop_text);
    free(piece);
    stop_matcher_destroy(matcher);
    sampler_destroy(sampler);
    cJSON_Delete(json);
    cJSON_Delete(json_logprobs);
    free(logits);
    free(out_ids);
    free(prompt);
    if (kv != NULL) {
        kv_seq_finish(kv, &seq);
    }
    model_scratch_destroy(scratch);
    kv_cache_destroy(kv);
    tokenizer_destroy(tok);
    model_destroy(model);
    return exit_code;
}
