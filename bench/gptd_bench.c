/*
 * gptd_bench.c: gptd-bench, a load generator for any OpenAI-compatible /v1/completions server
 * (or, with --chat, /v1/chat/completions: the prompt goes as one user message, as words; a
 * dataset line's "prompt" may then also be a whole "messages" list).
 *
 * Drives streaming completions closed-loop (--concurrency N requests in flight) or open-loop
 * (--rate R Poisson arrivals per second, optionally capped by --concurrency), bounded by
 * --requests and/or --duration, and stops by itself. Every request streams (SSE) and asks for
 * usage (stream_options.include_usage), so output tokens come from the server's own count.
 * Figures are computed as vLLM's serving benchmark defines them (bench/loadgen/stats.h).
 *
 * One thread, libcurl's multi interface: light enough to share the machine with the server; its
 * own CPU time is printed with every result.
 */
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <curl/curl.h>

#include "loadgen/sse.h"
#include "loadgen/stats.h"

#define USAGE                                                                                      \
    "usage: gptd-bench [--url http://127.0.0.1:8080] [--concurrency N] [--rate R]\n"               \
    "                  [--requests N] [--duration S] [--prompt-tokens A[:B]] [--max-tokens "       \
    "A[:B]]\n"                                                                                     \
    "                  [--dataset FILE.jsonl] [--prompt-text] [--ignore-eos] [--temperature T]\n"  \
    "                  [--model NAME] [--api-key KEY] [--seed S] [--request-timeout S]\n"          \
    "                  [--json FILE|-] [--quiet] [--chat [--turns N]]\n"

struct range {
    int32_t lo, hi;
};

struct options {
    char url[512];
    int concurrency;
    double rate; /* 0 = closed loop */
    long requests;
    double duration_s;
    struct range prompt_tokens, max_tokens;
    const char *dataset;
    int is_prompt_text;
    int is_ignore_eos;
    double temperature;
    const char *model;
    const char *api_key;
    uint64_t seed;
    long request_timeout_s;
    const char *json_out;
    int is_quiet;
    int is_chat; /* POST /v1/chat/completions with the prompt as one user message */
    int turns;   /* > 0: conversations of this many requests, each resending the history */
};

struct dataset_entry {
    char *prompt_json;  /* the "prompt" value as JSON text */
    int32_t max_tokens; /* 0 = from --max-tokens */
};

struct request {
    CURL *easy;
    struct curl_slist *headers;
    char *body;
    struct sse_parser sse;
    struct request_record *rec;
    int has_done, has_finish, has_error;
    char error[160];
    int conv;     /* --turns: the conversation (slot) this request continues, else -1 */
    char *answer; /* --turns: the streamed assistant content, appended to the history */
    size_t answer_len, answer_cap;
};

/* --turns: one conversation per concurrency slot. Each request resends the whole history plus
 * a new user message, as chat front ends do; the answer joins the history; after `turns`
 * requests the slot starts a new conversation. */
struct conversation {
    cJSON *messages; /* the history so far */
    int32_t n_done;  /* turns completed */
    bool is_busy;
};
static struct conversation *convs;

static struct options opt;
static struct series itl;
static uint64_t rng_state;

static int64_t now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* splitmix64: small, seeded, reproducible. */
static uint64_t rng_next(void) {
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static double rng_uniform(void) {
    return (double)(rng_next() >> 11) / 9007199254740992.0;
}

static int32_t range_pick(struct range r) {
    if (r.hi <= r.lo) {
        return r.lo;
    }
    return r.lo + (int32_t)(rng_next() % (uint64_t)(r.hi - r.lo + 1));
}

static int parse_range(const char *s, struct range *r) {
    char *end;
    long lo = strtol(s, &end, 10);
    long hi = lo;
    if (*end == ':') {
        hi = strtol(end + 1, &end, 10);
    }
    if (*end != '\0' || lo < 0 || hi < lo || hi > 1000000) {
        return -1;
    }
    r->lo = (int32_t)lo;
    r->hi = (int32_t)hi;
    return 0;
}

/* ---- request bodies --------------------------------------------------------------------- */

static struct dataset_entry *dataset;
static size_t n_dataset;

static int load_dataset(const char *path) {
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        fprintf(stderr, "gptd-bench: cannot open %s: %s\n", path, strerror(errno));
        return -1;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    size_t n_line = 0;
    while ((len = getline(&line, &cap, f)) > 0) {
        n_line++;
        cJSON *obj = cJSON_ParseWithLength(line, (size_t)len);
        const cJSON *prompt = cJSON_GetObjectItemCaseSensitive(obj, "prompt");
        if (prompt == NULL) {
            if (obj != NULL || strspn(line, " \t\r\n") != (size_t)len) {
                fprintf(stderr, "gptd-bench: %s:%zu: expected an object with \"prompt\"\n", path,
                        n_line);
                cJSON_Delete(obj);
                free(line);
                fclose(f);
                return -1;
            }
            continue;
        }
        if (opt.is_chat && !cJSON_IsString(prompt) &&
            !(cJSON_IsArray(prompt) && cJSON_IsObject(cJSON_GetArrayItem(prompt, 0)))) {
            fprintf(stderr,
                    "gptd-bench: %s:%zu: with --chat a \"prompt\" is a string or a list of "
                    "messages, not token ids\n",
                    path, n_line);
            cJSON_Delete(obj);
            free(line);
            fclose(f);
            return -1;
        }
        const cJSON *mt = cJSON_GetObjectItemCaseSensitive(obj, "max_tokens");
        struct dataset_entry *d = realloc(dataset, (n_dataset + 1) * sizeof(*d));
        if (d == NULL) {
            cJSON_Delete(obj);
            break;
        }
        dataset = d;
        dataset[n_dataset].prompt_json = cJSON_PrintUnformatted(prompt);
        dataset[n_dataset].max_tokens = cJSON_IsNumber(mt) ? (int32_t)mt->valuedouble : 0;
        n_dataset++;
        cJSON_Delete(obj);
    }
    free(line);
    fclose(f);
    if (n_dataset == 0) {
        fprintf(stderr, "gptd-bench: %s has no prompts\n", path);
        return -1;
    }
    return 0;
}

/* The body of request number i. Prompts of N tokens are sent as N token ids (exact length on
 * any server that takes token-id prompts), or with --prompt-text as N common words. */
/* --prompt-text's words: n common words. malloc'd. */
static char *words_text(int32_t n) {
    static const char *const words[] = {"the",  "cat", "sat", "on",   "a",    "mat", "and",
                                        "then", "it",  "ran", "away", "from", "home"};
    size_t cap = (size_t)n * 8 + 1, len = 0;
    char *text = malloc(cap);
    for (int32_t k = 0; k < n && text != NULL; k++) {
        len +=
            (size_t)snprintf(text + len, cap - len, "%s%s", k ? " " : "", words[rng_next() % 13]);
    }
    return text;
}

static void add_sampling_fields(cJSON *body, int32_t max_tokens) {
    cJSON_AddNumberToObject(body, "max_tokens", max_tokens);
    cJSON_AddNumberToObject(body, "temperature", opt.temperature);
    cJSON_AddBoolToObject(body, "stream", 1);
    cJSON *so = cJSON_AddObjectToObject(body, "stream_options");
    cJSON_AddBoolToObject(so, "include_usage", 1);
    if (opt.is_ignore_eos) {
        cJSON_AddBoolToObject(body, "ignore_eos", 1);
    }
}

/* The next turn of conversation c: its history plus a new user message of --prompt-tokens
 * words. */
static char *make_turn_body(struct conversation *c) {
    if (c->messages == NULL) {
        c->messages = cJSON_CreateArray();
    }
    char *text = words_text(range_pick(opt.prompt_tokens));
    cJSON *m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "role", "user");
    cJSON_AddStringToObject(m, "content", text != NULL ? text : "hello");
    free(text);
    cJSON_AddItemToArray(c->messages, m);
    cJSON *body = cJSON_CreateObject();
    if (opt.model != NULL) {
        cJSON_AddStringToObject(body, "model", opt.model);
    }
    cJSON_AddItemToObject(body, "messages", cJSON_Duplicate(c->messages, 1));
    add_sampling_fields(body, range_pick(opt.max_tokens));
    char *out = cJSON_PrintUnformatted(body);
    cJSON_Delete(body);
    return out;
}

static char *make_body(long i) {
    cJSON *body = cJSON_CreateObject();
    int32_t max_tokens = range_pick(opt.max_tokens);
    if (opt.model != NULL) {
        cJSON_AddStringToObject(body, "model", opt.model);
    }
    if (n_dataset > 0) {
        const struct dataset_entry *d = &dataset[(size_t)i % n_dataset];
        cJSON *prompt = cJSON_Parse(d->prompt_json);
        if (opt.is_chat && cJSON_IsString(prompt)) {
            cJSON *msgs = cJSON_AddArrayToObject(body, "messages");
            cJSON *m = cJSON_CreateObject();
            cJSON_AddStringToObject(m, "role", "user");
            cJSON_AddItemToObject(m, "content", prompt);
            cJSON_AddItemToArray(msgs, m);
        } else {
            /* a completion prompt, or (--chat) a "messages" list given as the prompt (checked
             * when the dataset was read) */
            cJSON_AddItemToObject(body, opt.is_chat ? "messages" : "prompt", prompt);
        }
        if (d->max_tokens > 0) {
            max_tokens = d->max_tokens;
        }
    } else {
        int32_t n = range_pick(opt.prompt_tokens);
        n = n > 0 ? n : 1;
        if (opt.is_prompt_text || opt.is_chat) {
            char *text = words_text(n);
            if (opt.is_chat) {
                cJSON *m = cJSON_CreateObject();
                cJSON_AddStringToObject(m, "role", "user");
                cJSON_AddStringToObject(m, "content", text != NULL ? text : "hello");
                cJSON_AddItemToArray(cJSON_AddArrayToObject(body, "messages"), m);
            } else {
                cJSON_AddStringToObject(body, "prompt", text != NULL ? text : "hello");
            }
            free(text);
        } else {
            cJSON *ids = cJSON_AddArrayToObject(body, "prompt");
            for (int32_t k = 0; k < n; k++) {
                /* Ids of ordinary tokens in any GPT-2-like vocabulary. */
                cJSON_AddItemToArray(ids, cJSON_CreateNumber((double)(256 + rng_next() % 20000)));
            }
        }
    }
    add_sampling_fields(body, max_tokens);
    char *text = cJSON_PrintUnformatted(body);
    cJSON_Delete(body);
    return text;
}

/* ---- streaming ---------------------------------------------------------------------------- */

static int on_event(void *ctx, const char *data, size_t len) {
    struct request *r = ctx;
    int64_t t = now_us();
    if (len == 6 && memcmp(data, "[DONE]", 6) == 0) {
        r->has_done = 1;
        return 0;
    }
    cJSON *json = cJSON_ParseWithLength(data, len);
    if (json == NULL) {
        r->has_error = 1;
        snprintf(r->error, sizeof(r->error), "unparseable event");
        return 0;
    }
    const cJSON *err = cJSON_GetObjectItemCaseSensitive(json, "error");
    if (err != NULL) {
        const cJSON *msg = cJSON_GetObjectItemCaseSensitive(err, "message");
        r->has_error = 1;
        snprintf(r->error, sizeof(r->error), "%s",
                 cJSON_IsString(msg) ? msg->valuestring : "error event");
    }
    const cJSON *choices = cJSON_GetObjectItemCaseSensitive(json, "choices");
    const cJSON *choice = cJSON_GetArrayItem(choices, 0);
    /* Chat: the chunk that opens a choice carries only the role; it comes with the first token
     * and is not an arrival of its own (it would add a 0 ms inter-token gap). */
    const cJSON *delta = cJSON_GetObjectItemCaseSensitive(choice, "delta");
    const cJSON *content = cJSON_GetObjectItemCaseSensitive(delta, "content");
    bool is_role_only = opt.is_chat &&
                        cJSON_IsString(cJSON_GetObjectItemCaseSensitive(delta, "role")) &&
                        !(cJSON_IsString(content) && content->valuestring[0] != '\0');
    if (choice != NULL && !is_role_only) {
        /* vLLM counts every chunk that carries choices as one arrival. */
        if (r->rec->t_first_us == 0) {
            r->rec->t_first_us = t;
        } else {
            series_push(&itl, (double)(t - r->rec->t_last_us) / 1000.0);
        }
        r->rec->t_last_us = t;
        r->rec->n_chunks++;
        const cJSON *fr =
            cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(choices, 0), "finish_reason");
        if (cJSON_IsString(fr)) {
            r->has_finish = 1;
        }
    }
    if (r->conv >= 0 && cJSON_IsString(content)) {
        size_t n = strlen(content->valuestring);
        if (r->answer_len + n + 1 > r->answer_cap) {
            size_t cap = (r->answer_len + n + 1) * 2;
            char *grown = realloc(r->answer, cap);
            if (grown != NULL) {
                r->answer = grown;
                r->answer_cap = cap;
            }
        }
        if (r->answer_len + n + 1 <= r->answer_cap) {
            memcpy(r->answer + r->answer_len, content->valuestring, n + 1);
            r->answer_len += n;
        }
    }
    const cJSON *usage = cJSON_GetObjectItemCaseSensitive(json, "usage");
    const cJSON *ct = cJSON_GetObjectItemCaseSensitive(usage, "completion_tokens");
    if (cJSON_IsNumber(ct)) {
        r->rec->usage_completion_tokens = (int32_t)ct->valuedouble;
    }
    const cJSON *cached = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(usage, "prompt_tokens_details"), "cached_tokens");
    if (cJSON_IsNumber(cached)) {
        r->rec->usage_cached_tokens = (int32_t)cached->valuedouble;
    }
    cJSON_Delete(json);
    return 0;
}

static size_t on_write(char *ptr, size_t size, size_t nmemb, void *ctx) {
    struct request *r = ctx;
    sse_parser_feed(&r->sse, ptr, size * nmemb);
    return size * nmemb;
}

static struct request *request_start(CURLM *multi, struct request_record *rec, long i) {
    struct request *r = calloc(1, sizeof(*r));
    r->rec = rec;
    rec->usage_completion_tokens = -1;
    rec->usage_cached_tokens = -1;
    r->conv = -1;
    if (opt.turns > 0) {
        int c = 0;
        while (convs[c].is_busy) {
            c++; /* a free slot exists: fewer than --concurrency requests are in flight */
        }
        convs[c].is_busy = true;
        r->conv = c;
        rec->turn = convs[c].n_done + 1;
        r->body = make_turn_body(&convs[c]);
    } else {
        r->body = make_body(i);
    }
    sse_parser_init(&r->sse, on_event, r);
    r->easy = curl_easy_init();
    r->headers = curl_slist_append(NULL, "Content-Type: application/json");
    r->headers = curl_slist_append(r->headers, "Accept: text/event-stream");
    if (opt.api_key != NULL) {
        char auth[512];
        snprintf(auth, sizeof(auth), "Authorization: Bearer %s", opt.api_key);
        r->headers = curl_slist_append(r->headers, auth);
    }
    char url[600];
    snprintf(url, sizeof(url), "%s%s", opt.url,
             opt.is_chat ? "/v1/chat/completions" : "/v1/completions");
    curl_easy_setopt(r->easy, CURLOPT_URL, url);
    curl_easy_setopt(r->easy, CURLOPT_HTTPHEADER, r->headers);
    curl_easy_setopt(r->easy, CURLOPT_POSTFIELDS, r->body);
    curl_easy_setopt(r->easy, CURLOPT_WRITEFUNCTION, on_write);
    curl_easy_setopt(r->easy, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(r->easy, CURLOPT_PRIVATE, r);
    curl_easy_setopt(r->easy, CURLOPT_TIMEOUT, opt.request_timeout_s);
    curl_easy_setopt(r->easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(r->easy, CURLOPT_TCP_NODELAY, 1L);
    rec->t_send_us = now_us();
    curl_multi_add_handle(multi, r->easy);
    return r;
}

static void request_end(CURLM *multi, struct request *r, CURLcode result) {
    struct request_record *rec = r->rec;
    rec->t_end_us = now_us();
    curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &rec->http_status);
    rec->is_ok = result == CURLE_OK && rec->http_status == 200 && r->has_done && r->has_finish &&
                 !r->has_error;
    static int n_reported;
    if (!rec->is_ok && !opt.is_quiet && n_reported++ < 5) {
        fprintf(stderr, "\ngptd-bench: request failed: %s (HTTP %ld)%s%s\n",
                result != CURLE_OK ? curl_easy_strerror(result) : "incomplete stream",
                rec->http_status, r->has_error ? ": " : "", r->error);
        if (n_reported == 5) {
            fprintf(stderr, "gptd-bench: (further failures are only counted)\n");
        }
    }
    if (r->conv >= 0) {
        /* The answer joins the history; a failed turn or the last one ends the conversation. */
        struct conversation *c = &convs[r->conv];
        c->is_busy = false;
        c->n_done++;
        if (rec->is_ok && c->n_done < opt.turns) {
            cJSON *m = cJSON_CreateObject();
            cJSON_AddStringToObject(m, "role", "assistant");
            cJSON_AddStringToObject(m, "content", r->answer != NULL ? r->answer : "");
            cJSON_AddItemToArray(c->messages, m);
        } else {
            cJSON_Delete(c->messages);
            c->messages = NULL;
            c->n_done = 0;
        }
    }
    free(r->answer);
    curl_multi_remove_handle(multi, r->easy);
    curl_easy_cleanup(r->easy);
    curl_slist_free_all(r->headers);
    sse_parser_finish(&r->sse);
    cJSON_free(r->body);
    free(r);
}

/* ---- main loop ---------------------------------------------------------------------------- */

static double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static void progress(long done, long total, long tokens, double elapsed) {
    if (opt.is_quiet || elapsed < 1.0) {
        return;
    }
    if (total > 0) {
        int width = 30, filled = (int)((double)width * (double)done / (double)total);
        fprintf(stderr, "\r[%.*s%*s] %ld/%ld  %.0f tok/s  %.1fs ", filled,
                "##############################", width - filled, "", done, total,
                (double)tokens / elapsed, elapsed);
    } else {
        fprintf(stderr, "\r%ld done  %.0f tok/s  %.1fs / %.0fs ", done, (double)tokens / elapsed,
                elapsed, opt.duration_s);
    }
}

static int parse_args(int argc, char **argv) {
    snprintf(opt.url, sizeof(opt.url), "http://127.0.0.1:8080");
    opt.concurrency = 0;
    opt.prompt_tokens = (struct range){64, 64};
    opt.max_tokens = (struct range){128, 128};
    opt.temperature = 0.0;
    opt.seed = 1;
    opt.request_timeout_s = 600;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define TAKES_VALUE()                                                                              \
    do {                                                                                           \
        if (v == NULL) {                                                                           \
            fprintf(stderr, "gptd-bench: %s needs a value\n" USAGE, a);                            \
            return -1;                                                                             \
        }                                                                                          \
        i++;                                                                                       \
    } while (0)
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            printf(USAGE);
            exit(0);
        } else if (strcmp(a, "--url") == 0) {
            TAKES_VALUE();
            snprintf(opt.url, sizeof(opt.url), "%s", v);
            size_t n = strlen(opt.url);
            while (n > 0 && opt.url[n - 1] == '/') {
                opt.url[--n] = '\0';
            }
        } else if (strcmp(a, "--concurrency") == 0) {
            TAKES_VALUE();
            opt.concurrency = atoi(v);
        } else if (strcmp(a, "--rate") == 0) {
            TAKES_VALUE();
            opt.rate = atof(v);
        } else if (strcmp(a, "--requests") == 0) {
            TAKES_VALUE();
            opt.requests = atol(v);
        } else if (strcmp(a, "--duration") == 0) {
            TAKES_VALUE();
            opt.duration_s = atof(v);
        } else if (strcmp(a, "--prompt-tokens") == 0 || strcmp(a, "--max-tokens") == 0) {
            TAKES_VALUE();
            struct range *r = a[2] == 'p' ? &opt.prompt_tokens : &opt.max_tokens;
            if (parse_range(v, r) != 0) {
                fprintf(stderr, "gptd-bench: %s: expected N or A:B\n", a);
                return -1;
            }
        } else if (strcmp(a, "--dataset") == 0) {
            TAKES_VALUE();
            opt.dataset = v;
        } else if (strcmp(a, "--chat") == 0) {
            opt.is_chat = 1;
        } else if (strcmp(a, "--turns") == 0) {
            TAKES_VALUE();
            opt.turns = atoi(v);
        } else if (strcmp(a, "--prompt-text") == 0) {
            opt.is_prompt_text = 1;
        } else if (strcmp(a, "--ignore-eos") == 0) {
            opt.is_ignore_eos = 1;
        } else if (strcmp(a, "--temperature") == 0) {
            TAKES_VALUE();
            opt.temperature = atof(v);
        } else if (strcmp(a, "--model") == 0) {
            TAKES_VALUE();
            opt.model = v;
        } else if (strcmp(a, "--api-key") == 0) {
            TAKES_VALUE();
            opt.api_key = v;
        } else if (strcmp(a, "--seed") == 0) {
            TAKES_VALUE();
            opt.seed = strtoull(v, NULL, 10);
        } else if (strcmp(a, "--request-timeout") == 0) {
            TAKES_VALUE();
            opt.request_timeout_s = atol(v);
        } else if (strcmp(a, "--json") == 0) {
            TAKES_VALUE();
            opt.json_out = v;
        } else if (strcmp(a, "--quiet") == 0) {
            opt.is_quiet = 1;
        } else {
            fprintf(stderr, "gptd-bench: unknown option '%s'\n" USAGE, a);
            return -1;
        }
#undef TAKES_VALUE
    }
    if (opt.requests <= 0 && opt.duration_s <= 0) {
        fprintf(stderr, "gptd-bench: give --requests and/or --duration (the run must end)\n");
        return -1;
    }
    if (opt.rate <= 0 && opt.concurrency <= 0) {
        opt.concurrency = 1;
    }
    if (opt.concurrency < 0 || opt.concurrency > 10000 || opt.rate < 0) {
        fprintf(stderr, "gptd-bench: --concurrency must be 1..10000, --rate >= 0\n");
        return -1;
    }
    if (opt.turns < 0 || opt.turns > 1000 ||
        (opt.turns > 0 && (!opt.is_chat || opt.rate > 0 || opt.dataset != NULL))) {
        fprintf(stderr, "gptd-bench: --turns N (1..1000) needs --chat and closed-loop "
                        "--concurrency, without --dataset\n");
        return -1;
    }
    return 0;
}

static void print_summary(const struct bench_summary *s, double cpu_s) {
    printf("============ gptd-bench: %s ============\n", opt.url);
    if (opt.rate > 0) {
        printf("%-34s %.2f req/s (Poisson)%s\n", "Arrivals:", opt.rate,
               opt.concurrency > 0 ? ", capped by --concurrency" : "");
    }
    if (opt.concurrency > 0) {
        printf("%-34s %d\n", "Concurrency:", opt.concurrency);
    }
    printf("%-34s %zu\n", "Completed requests:", s->n_completed);
    printf("%-34s %zu\n", "Failed requests:", s->n_failed);
    printf("%-34s %.2f\n", "Duration (s):", s->duration_s);
    printf("%-34s %ld\n", "Total output tokens:", s->total_output_tokens);
    printf("%-34s %.2f\n", "Request throughput (req/s):", s->request_throughput);
    printf("%-34s %.2f\n", "Output token throughput (tok/s):", s->output_throughput);
    printf("%-34s %8s %8s %8s %8s\n", "(ms)", "mean", "p50", "p90", "p99");
    printf("%-34s %8.1f %8.1f %8.1f %8.1f\n", "Time to first token (TTFT):", s->ttft_mean,
           s->ttft_p50, s->ttft_p90, s->ttft_p99);
    printf("%-34s %8.1f %8.1f %8.1f %8.1f\n", "Time per output token (TPOT):", s->tpot_mean,
           s->tpot_p50, s->tpot_p90, s->tpot_p99);
    printf("%-34s %8.1f %8.1f %8.1f %8.1f\n", "Inter-token latency (ITL):", s->itl_mean, s->itl_p50,
           s->itl_p90, s->itl_p99);
    printf("%-34s %8.1f %8.1f %8s %8.1f\n", "End-to-end latency (E2EL):", s->e2el_mean, s->e2el_p50,
           "", s->e2el_p99);
    printf("%-34s %.2f s (%.1f%% of one core)\n", "gptd-bench CPU time:", cpu_s,
           s->duration_s > 0 ? 100.0 * cpu_s / s->duration_s : 0.0);
}

/* --turns: TTFT and cached prompt tokens by turn. */
struct turn_stats {
    int32_t n;
    double ttft_mean, ttft_p50;
    double cached_mean;
};

static void turn_summary(const struct request_record *recs, size_t n, struct turn_stats *out) {
    for (int32_t t = 1; t <= opt.turns; t++) {
        struct series ttft;
        series_init(&ttft);
        double cached = 0;
        int32_t n_t = 0;
        for (size_t i = 0; i < n; i++) {
            if (recs[i].turn == t && recs[i].is_ok && recs[i].t_first_us > 0) {
                series_push(&ttft, (double)(recs[i].t_first_us - recs[i].t_send_us) / 1000.0);
                cached += recs[i].usage_cached_tokens > 0 ? recs[i].usage_cached_tokens : 0;
                n_t++;
            }
        }
        struct turn_stats *o = &out[t - 1];
        o->n = n_t;
        o->ttft_mean = series_mean(&ttft);
        o->ttft_p50 = series_percentile(&ttft, 50);
        o->cached_mean = n_t > 0 ? cached / n_t : 0;
        series_finish(&ttft);
    }
}

static void print_turns(const struct turn_stats *ts) {
    printf("%-34s %8s %8s %8s %12s\n", "By turn (ms)", "n", "mean", "p50", "cached tok");
    for (int32_t t = 0; t < opt.turns; t++) {
        printf("  turn %-28d %8d %8.1f %8.1f %12.1f\n", t + 1, ts[t].n, ts[t].ttft_mean,
               ts[t].ttft_p50, ts[t].cached_mean);
    }
}

static struct turn_stats *g_turns;

static void write_json(const struct bench_summary *s, double cpu_s) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "url", opt.url);
    cJSON_AddNumberToObject(o, "concurrency", opt.concurrency);
    cJSON_AddNumberToObject(o, "rate", opt.rate);
    cJSON_AddNumberToObject(o, "completed", (double)s->n_completed);
    cJSON_AddNumberToObject(o, "failed", (double)s->n_failed);
    cJSON_AddNumberToObject(o, "duration_s", s->duration_s);
    cJSON_AddNumberToObject(o, "total_output_tokens", (double)s->total_output_tokens);
    cJSON_AddNumberToObject(o, "request_throughput", s->request_throughput);
    cJSON_AddNumberToObject(o, "output_throughput", s->output_throughput);
    const struct {
        const char *name;
        double v;
    } f[] = {
        {"ttft_mean_ms", s->ttft_mean}, {"ttft_p50_ms", s->ttft_p50},
        {"ttft_p90_ms", s->ttft_p90},   {"ttft_p99_ms", s->ttft_p99},
        {"tpot_mean_ms", s->tpot_mean}, {"tpot_p50_ms", s->tpot_p50},
        {"tpot_p90_ms", s->tpot_p90},   {"tpot_p99_ms", s->tpot_p99},
        {"itl_mean_ms", s->itl_mean},   {"itl_p50_ms", s->itl_p50},
        {"itl_p90_ms", s->itl_p90},     {"itl_p99_ms", s->itl_p99},
        {"e2el_mean_ms", s->e2el_mean}, {"e2el_p50_ms", s->e2el_p50},
        {"e2el_p99_ms", s->e2el_p99},   {"bench_cpu_s", cpu_s},
    };
    for (size_t i = 0; i < sizeof(f) / sizeof(f[0]); i++) {
        cJSON_AddNumberToObject(o, f[i].name, f[i].v);
    }
    if (g_turns != NULL) {
        cJSON *arr = cJSON_AddArrayToObject(o, "turns");
        for (int32_t t = 0; t < opt.turns; t++) {
            cJSON *e = cJSON_CreateObject();
            cJSON_AddNumberToObject(e, "turn", t + 1);
            cJSON_AddNumberToObject(e, "completed", g_turns[t].n);
            cJSON_AddNumberToObject(e, "ttft_mean_ms", g_turns[t].ttft_mean);
            cJSON_AddNumberToObject(e, "ttft_p50_ms", g_turns[t].ttft_p50);
            cJSON_AddNumberToObject(e, "cached_tokens_mean", g_turns[t].cached_mean);
            cJSON_AddItemToArray(arr, e);
        }
    }
    char *text = cJSON_Print(o);
    if (strcmp(opt.json_out, "-") == 0) {
        printf("%s\n", text);
    } else {
        FILE *fp = fopen(opt.json_out, "w");
        if (fp != NULL) {
            fprintf(fp, "%s\n", text);
            fclose(fp);
        } else {
            fprintf(stderr, "gptd-bench: cannot write %s: %s\n", opt.json_out, strerror(errno));
        }
    }
    cJSON_free(text);
    cJSON_Delete(o);
}

int main(int argc, char **argv) {
    if (parse_args(argc, argv) != 0) {
        return 2;
    }
    if (opt.dataset != NULL && load_dataset(opt.dataset) != 0) {
        return 1;
    }
    rng_state = opt.seed;
    if (opt.turns > 0) {
        convs = calloc((size_t)opt.concurrency, sizeof(*convs));
    }
    curl_global_init(CURL_GLOBAL_DEFAULT);
    CURLM *multi = curl_multi_init();
    series_init(&itl);
    /* Records are allocated one by one: in-flight requests point at theirs, so the table of
     * pointers may grow but a record never moves. */
    long cap = opt.requests > 0 ? opt.requests : 1024;
    struct request_record **records = calloc((size_t)cap, sizeof(*records));
    long n_started = 0, n_done = 0, total_tokens = 0;
    int in_flight = 0;
    double cpu0 = cpu_seconds();
    int64_t t0 = now_us();
    int64_t stop_at = opt.duration_s > 0 ? t0 + (int64_t)(opt.duration_s * 1e6) : INT64_MAX;
    int64_t next_arrival = t0;
    int64_t last_progress = 0;
    for (;;) {
        int64_t now = now_us();
        bool may_start = (opt.requests <= 0 || n_started < opt.requests) && now < stop_at;
        while (may_start && (opt.concurrency <= 0 || in_flight < opt.concurrency) &&
               (opt.rate <= 0 || now >= next_arrival)) {
            if (n_started == cap) {
                struct request_record **r = realloc(records, (size_t)cap * 2 * sizeof(*records));
                if (r == NULL) {
                    break;
                }
                records = r;
                cap *= 2;
            }
            records[n_started] = calloc(1, sizeof(**records));
            if (records[n_started] == NULL) {
                break;
            }
            request_start(multi, records[n_started], n_started);
            n_started++;
            in_flight++;
            if (opt.rate > 0) {
                next_arrival += (int64_t)(-log(1.0 - rng_uniform()) / opt.rate * 1e6);
            }
            may_start = (opt.requests <= 0 || n_started < opt.requests) && now < stop_at;
        }
        if (!may_start && in_flight == 0) {
            break;
        }
        int running;
        curl_multi_perform(multi, &running);
        CURLMsg *msg;
        int n_msgs;
        while ((msg = curl_multi_info_read(multi, &n_msgs)) != NULL) {
            if (msg->msg != CURLMSG_DONE) {
                continue;
            }
            struct request *r;
            curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&r);
            struct request_record *rec = r->rec;
            request_end(multi, r, msg->data.result);
            in_flight--;
            n_done++;
            if (rec->is_ok) {
                total_tokens += record_output_tokens(rec);
            }
        }
        now = now_us();
        if (now - last_progress > 250000) {
            progress(n_done, opt.requests, total_tokens, (double)(now - t0) / 1e6);
            last_progress = now;
        }
        int wait_ms = 50;
        if (opt.rate > 0 && may_start) {
            int64_t until = (next_arrival - now) / 1000;
            wait_ms = until < 0 ? 0 : until < 50 ? (int)until : 50;
        }
        curl_multi_poll(multi, NULL, 0, wait_ms, NULL);
    }
    double duration = (double)(now_us() - t0) / 1e6;
    double cpu_s = cpu_seconds() - cpu0;
    if (!opt.is_quiet && duration >= 1.0) {
        fprintf(stderr, "\n");
    }
    struct request_record *flat = calloc((size_t)n_started + 1, sizeof(*flat));
    for (long i = 0; i < n_started; i++) {
        flat[i] = *records[i];
        free(records[i]);
    }
    struct bench_summary s;
    bench_summarize(flat, (size_t)n_started, &itl, duration, &s);
    if (opt.turns > 0) {
        g_turns = calloc((size_t)opt.turns, sizeof(*g_turns));
        turn_summary(flat, (size_t)n_started, g_turns);
    }
    free(flat);
    print_summary(&s, cpu_s);
    if (g_turns != NULL) {
        print_turns(g_turns);
    }
    if (opt.json_out != NULL) {
        write_json(&s, cpu_s);
    }
    free(records);
    free(g_turns);
    for (int c = 0; convs != NULL && c < opt.concurrency; c++) {
        cJSON_Delete(convs[c].messages);
    }
    free(convs);
    series_finish(&itl);
    for (size_t i = 0; i < n_dataset; i++) {
        cJSON_free(dataset[i].prompt_json);
    }
    free(dataset);
    curl_multi_cleanup(multi);
    curl_global_cleanup();
    return s.n_failed == 0 && s.n_completed > 0 ? 0 : 1;
}
