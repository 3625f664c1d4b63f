/*
 * options.c: `gptd serve` configuration from flags, GPTD_* environment variables and a JSON
 * config file, with precedence flags > environment > file > defaults (see server.h).
 *
 * One table lists every option once; the flag name, the environment variable (GPTD_ + the name
 * upper-cased with '-' -> '_') and the JSON key (the name with '-' -> '_') all derive from it,
 * so the three sources cannot drift apart. Main thread only, at start-up.
 */
#include <ctype.h>
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <cjson/cJSON.h>

#include <gptd/server.h>

enum opt_type {
    OPT_STR,     /* char[] field */
    OPT_INT,     /* int field, [lo, hi] */
    OPT_SIZE,    /* size_t bytes: "1048576", "64K", "64KiB", "1M", "1MiB", "2G" */
    OPT_MIB,     /* size_t bytes given in MiB */
    OPT_BOOL,    /* bool field; a bare flag means true */
    OPT_MS,      /* int64_t milliseconds given in seconds (may be fractional) */
    OPT_I32,     /* int32_t field, [lo, hi] */
    OPT_KEYS,    /* --api-key, repeatable */
    OPT_ORIGINS, /* --cors-origins, repeatable and comma-separated */
    OPT_HOSTS    /* --allowed-hosts, repeatable and comma-separated */
};

struct opt {
    const char *name;
    char short_name;
    enum opt_type type;
    size_t offset; /* into struct server_options */
    size_t size;   /* OPT_STR: the array's size */
    long long lo, hi;
    const char *help;
};

#define SO(field)       offsetof(struct server_options, field)
#define SZ(field)       sizeof(((struct server_options *)0)->field)
#define STR(f)          OPT_STR, SO(f), SZ(f), 0, 0
#define NUM(t, f, l, h) t, SO(f), 0, l, h

static const struct opt opts[] = {
    {"model", 'm', STR(model_dir), "model directory (config.json, model.safetensors, tokenizer)"},
    {"config", 'c', STR(config_file), "JSON config file (keys = option names with '_')"},
    {"host", 0, STR(server.host), "address to bind (default 127.0.0.1)"},
    {"port", 'p', NUM(OPT_INT, server.port, 0, 65535), "port (default 8080; 0 = any free port)"},
    {"http-threads", 0, NUM(OPT_INT, server.n_threads, 1, 256), "HTTP thread pool (default 4)"},
    {"threads", 't', NUM(OPT_INT, n_model_threads, 0, 1024),
     "compute threads of the model (default: the model's choice)"},
    {"admin-port", 0, NUM(OPT_INT, server.admin_port, -1, 65535),
     "second listener for /health, /livez, /metrics only (default -1 = none; 0 = any port)"},
    {"connection-timeout", 0, NUM(OPT_INT, server.connection_timeout_s, 1, 86400),
     "idle connection timeout in seconds (default 30)"},
    {"header-timeout", 0, NUM(OPT_INT, server.header_timeout_s, 1, 86400),
     "seconds for a request line and headers to arrive, however they trickle (default 10)"},
    {"body-timeout", 0, NUM(OPT_INT, server.body_timeout_s, 1, 86400),
     "seconds for a request body to arrive after its headers (default 30)"},
    {"connection-limit", 0, NUM(OPT_INT, server.connection_limit, 0, 1000000),
     "open connections (default 0 = the descriptor limit - 256, at most 16384)"},
    {"per-ip-connection-limit", 0, NUM(OPT_INT, server.per_ip_connection_limit, 0, 1000000),
     "open connections per client address (default 512; 0 = no limit)"},
    {"connection-memory", 0, NUM(OPT_SIZE, server.connection_memory_bytes, 8192, 1 << 30),
     "per-connection memory pool (default 128KiB)"},
    {"max-header-bytes", 0, NUM(OPT_SIZE, server.max_header_bytes, 1024, 1 << 30),
     "request line + headers cap (default 32KiB; more -> 431)"},
    {"max-body", 0, NUM(OPT_SIZE, server.max_body_bytes, 1024, 1LL << 32),
     "request body cap (default 1MiB; more -> 413)"},
    {"max-prompts", 0, NUM(OPT_INT, server.max_prompts, 1, 64), "prompts per request (default 16)"},
    {"max-n", 0, NUM(OPT_INT, server.max_n, 1, 64), "largest n and best_of (default 16)"},
    {"max-tokens-cap", 0, NUM(OPT_INT, server.max_tokens_cap, 0, 1 << 30),
     "largest max_tokens accepted (default 0 = the model's context)"},
    {"chat-template", 0, STR(chat_template),
     "Jinja chat template file for /v1/chat/completions (default: the model's "
     "tokenizer_config.json chat_template, else chat_template.jinja)"},
    {"served-model-name", 0, STR(server.served_model_name),
     "model name in responses (default: the model directory's name)"},
    {"strict-model", 0, NUM(OPT_BOOL, server.strict_model, 0, 1),
     "answer 404 to requests naming another model"},
    {"api-key", 0, NUM(OPT_KEYS, server.api_keys, 0, 0), "accepted API key (repeatable)"},
    {"api-key-file", 0, STR(api_key_file), "file with one API key per line"},
    {"metrics-public", 0, NUM(OPT_BOOL, server.metrics_public, 0, 1),
     "serve /metrics without an API key"},
    {"allowed-hosts", 0, NUM(OPT_HOSTS, server.allowed_hosts, 0, 0),
     "Host header values accepted besides localhost/127.0.0.1/[::1] when bound to loopback"},
    {"cors-origins", 0, NUM(OPT_ORIGINS, server.cors_origins, 0, 0),
     "allowed browser origins, comma-separated or repeated (default: none)"},
    {"ping-interval-ms", 0, NUM(OPT_INT, server.ping_interval_ms, 50, 60000),
     "SSE keep-alive comment interval (default 1000)"},
    {"playground", 0, NUM(OPT_BOOL, server.playground, 0, 1),
     "the web playground at / (default true; its API calls still need the key)"},
    {"access-log", 0, NUM(OPT_BOOL, server.access_log, 0, 1),
     "one JSON line per request on stdout (default true)"},
    {"drain-timeout", 0, NUM(OPT_INT, drain_timeout_s, 0, 86400),
     "seconds in-flight requests get to finish on SIGTERM (default 30)"},
    {"log-level", 0, STR(log_level), "error, warn, info or debug (default info)"},
    {"weights", 0, STR(weights),
     "matmul weights in memory: auto (as stored, exact), f32, f16/bf16 (rounded: half the "
     "memory, faster decode) or q8 (int8 in groups of 32: a quarter; default auto)"},
    {"kv-cache-mb", 0, NUM(OPT_MIB, engine.kv_cache_bytes, 1, 1 << 20),
     "KV cache budget in MiB (default 256)"},
    {"prefix-cache", 0, NUM(OPT_BOOL, engine.prefix_cache, 0, 1),
     "reuse the KV blocks of prompt prefixes computed before (on|off, default on; outputs are "
     "identical either way)"},
    {"kv-cache-dtype", 0, STR(kv_dtype),
     "f32 (exact) or f16 (twice the tokens per MiB, K/V rounded; default f32)"},
    {"prefill-chunk", 0, NUM(OPT_I32, engine.prefill_chunk, 0, 1 << 20),
     "rows per step for a long prompt while others decode (default 12; 0 = no limit)"},
    {"max-batch-tokens", 0, NUM(OPT_I32, engine.max_batch_tokens, 1, 1 << 20),
     "rows per forward step (default 256)"},
    {"max-batch", 0, NUM(OPT_I32, engine.max_running, 0, 1 << 16),
     "running sequences (default 0 = as the KV budget allows)"},
    {"max-queue", 0, NUM(OPT_I32, engine.max_queue, 0, 1 << 20),
     "waiting requests before 503 (default 256)"},
    {"queue-timeout", 0, NUM(OPT_MS, engine.queue_timeout_ms, 0, 86400000),
     "seconds a request may wait in the queue before 503 (default 30)"},
};

#define N_OPTS (sizeof(opts) / sizeof(opts[0]))

enum source { SRC_FILE = 1, SRC_ENV = 2, SRC_FLAG = 3 };

/* Which source last started the repeatable lists (a higher one replaces, not appends). */
struct list_state {
    enum source keys_src, origins_src, hosts_src;
};

void server_config_init_default(struct server_config *cfg) {
    memset(cfg, 0, sizeof(*cfg));
    snprintf(cfg->host, sizeof(cfg->host), "127.0.0.1");
    cfg->port = 8080;
    cfg->n_threads = 4;
    cfg->admin_port = -1;
    cfg->connection_timeout_s = 30;
    cfg->header_timeout_s = 10;
    cfg->body_timeout_s = 30;
    /* 0: sized from the descriptor limit (conn_guard.c). Per client 512: the usual load tools
     * from one machine (wrk -c 256, hey -c 200, ab -c 256) fit with room to spare, while one
     * address cannot take more than a slice of the table. */
    cfg->connection_limit = 0;
    cfg->per_ip_connection_limit = 512;
    /* The pool must hold the headers we are willing to read plus room to answer: requests
     * between max_header_bytes and the pool size get our JSON 431, bigger ones libmicrohttpd's
     * own (HTML) 431. */
    cfg->connection_memory_bytes = 128 * 1024;
    cfg->max_header_bytes = 32 * 1024;
    cfg->max_body_bytes = 1024 * 1024;
    cfg->max_prompts = 16;
    cfg->max_n = 16;
    cfg->max_tokens_cap = 0;
    snprintf(cfg->served_model_name, sizeof(cfg->served_model_name), "gptd");
    cfg->ping_interval_ms = 1000;
    cfg->access_log = true;
    cfg->playground = true;
}

void server_options_init(struct server_options *o) {
    memset(o, 0, sizeof(*o));
    server_config_init_default(&o->server);
    engine_config_init_default(&o->engine);
    o->drain_timeout_s = 30;
    o->server.served_model_name[0] = '\0'; /* filled from the model directory later */
    snprintf(o->log_level, sizeof(o->log_level), "info");
    snprintf(o->weights, sizeof(o->weights), "auto");
    snprintf(o->kv_dtype, sizeof(o->kv_dtype), "f32");
}

void server_options_finish(struct server_options *o) {
    for (int i = 0; i < o->n_owned; i++) {
        free(o->owned[i]);
    }
    o->n_owned = 0;
}

static char *own(struct server_options *o, const char *s, size_t len) {
    if (o->n_owned >= (int)(sizeof(o->owned) / sizeof(o->owned[0]))) {
        return NULL;
    }
    char *c = malloc(len + 1);
    if (c == NULL) {
        return NULL;
    }
    memcpy(c, s, len);
    c[len] = '\0';
    o->owned[o->n_owned++] = c;
    return c;
}

static int fail(char *err, size_t err_size, const char *fmt, const char *a, const char *b) {
    snprintf(err, err_size, fmt, a, b);
    return -1;
}

static bool parse_bool(const char *v, bool *out) {
    if (strcmp(v, "1") == 0 || strcasecmp(v, "true") == 0 || strcasecmp(v, "yes") == 0 ||
        strcasecmp(v, "on") == 0) {
        *out = true;
        return true;
    }
    if (strcmp(v, "0") == 0 || strcasecmp(v, "false") == 0 || strcasecmp(v, "no") == 0 ||
        strcasecmp(v, "off") == 0) {
        *out = false;
        return true;
    }
    return false;
}

/* Parses "123", "64K", "64KiB", "1M", "1MiB", "2G", "2GiB" (powers of 1024). */
static bool parse_size(const char *v, unsigned long long *out) {
    char *end = NULL;
    errno = 0;
    unsigned long long n = strtoull(v, &end, 10);
    if (errno != 0 || end == v || v[0] == '-') {
        return false;
    }
    unsigned long long mul = 1;
    if (*end != '\0') {
        char u = (char)toupper((unsigned char)*end);
        mul = u == 'K' ? 1ULL << 10 : u == 'M' ? 1ULL << 20 : u == 'G' ? 1ULL << 30 : 0;
        end++;
        if (strcmp(end, "iB") == 0 || strcmp(end, "B") == 0) {
            end += strlen(end);
        }
        if (mul == 0 || *end != '\0') {
            return false;
        }
    }
    if (n > (~0ULL) / mul) {
        return false;
    }
    *out = n * mul;
    return true;
}

static int add_key(struct server_options *o, const char *v, char *err, size_t err_size) {
    if (o->server.n_api_keys >= SERVER_MAX_API_KEYS) {
        return fail(err, err_size, "too many API keys (at most %s)%s", "16", "");
    }
    char *k = own(o, v, strlen(v));
    if (k == NULL || k[0] == '\0') {
        return fail(err, err_size, "empty or unstorable API key%s%s", "", "");
    }
    o->server.api_keys[o->server.n_api_keys++] = k;
    return 0;
}

/* Appends the comma-separated items of v to list (at most max). */
static int add_list(struct server_options *o, char **list, int *n, int max, const char *v,
                    char *err, size_t err_size) {
    while (*v != '\0') {
        const char *comma = strchr(v, ',');
        size_t len = comma != NULL ? (size_t)(comma - v) : strlen(v);
        while (len > 0 && *v == ' ') {
            v++;
            len--;
        }
        while (len > 0 && v[len - 1] == ' ') {
            len--;
        }
        if (len > 0) {
            if (*n >= max) {
                return fail(err, err_size, "too many list items (at most %s)%s", "16", "");
            }
            char *s = own(o, v, len);
            if (s == NULL) {
                return fail(err, err_size, "out of memory%s%s", "", "");
            }
            list[(*n)++] = s;
        }
        v += len;
        while (*v == ',' || *v == ' ') {
            v++;
        }
    }
    return 0;
}

/* Sets option op from the text value v coming from source src. */
static int apply(struct server_options *o, struct list_state *ls, const struct opt *op,
                 const char *v, enum source src, char *err, size_t err_size) {
    char *field = (char *)o + op->offset;
    char bad[64];
    snprintf(bad, sizeof(bad), "--%s", op->name);
    switch (op->type) {
    case OPT_STR:
        if (strlen(v) >= op->size) {
            return fail(err, err_size, "%s: value too long%s", bad, "");
        }
        memcpy(field, v, strlen(v) + 1);
        return 0;
    case OPT_INT:
    case OPT_I32: {
        char *end = NULL;
        errno = 0;
        long long n = strtoll(v, &end, 10);
        if (errno != 0 || end == v || *end != '\0' || n < op->lo || n > op->hi) {
            return fail(err, err_size, "%s: expected an integer in range, got '%s'", bad, v);
        }
        if (op->type == OPT_INT) {
            *(int *)field = (int)n;
        } else {
            *(int32_t *)field = (int32_t)n;
        }
        return 0;
    }
    case OPT_SIZE:
    case OPT_MIB: {
        unsigned long long n;
        if (!parse_size(v, &n) || n < (unsigned long long)op->lo ||
            n > (unsigned long long)op->hi) {
            return fail(err, err_size, "%s: expected a size in range, got '%s'", bad, v);
        }
        *(size_t *)field = op->type == OPT_MIB ? (size_t)n << 20 : (size_t)n;
        return 0;
    }
    case OPT_BOOL:
        if (!parse_bool(v, (bool *)field)) {
            return fail(err, err_size, "%s: expected true or false, got '%s'", bad, v);
        }
        return 0;
    case OPT_MS: {
        char *end = NULL;
        errno = 0;
        double sec = strtod(v, &end);
        if (end != NULL && *end == 's') {
            end++;
        }
        if (errno != 0 || end == v || *end != '\0' || !(sec >= 0) || sec * 1000 > (double)op->hi) {
            return fail(err, err_size, "%s: expected seconds, got '%s'", bad, v);
        }
        *(int64_t *)field = (int64_t)(sec * 1000 + 0.5);
        return 0;
    }
    case OPT_KEYS:
        if (ls->keys_src != src) {
            o->server.n_api_keys = 0;
            ls->keys_src = src;
        }
        return add_key(o, v, err, err_size);
    case OPT_ORIGINS:
        if (ls->origins_src != src) {
            o->server.n_cors_origins = 0;
            ls->origins_src = src;
        }
        return add_list(o, o->server.cors_origins, &o->server.n_cors_origins,
                        SERVER_MAX_CORS_ORIGINS, v, err, err_size);
    case OPT_HOSTS:
        if (ls->hosts_src != src) {
            o->server.n_allowed_hosts = 0;
            ls->hosts_src = src;
        }
        return add_list(o, o->server.allowed_hosts, &o->server.n_allowed_hosts,
                        SERVER_MAX_CORS_ORIGINS, v, err, err_size);
    }
    return -1;
}

/* "max-body" <-> "max_body" <-> "GPTD_MAX_BODY" */
static bool name_matches(const char *optname, const char *key, bool env) {
    size_t i = 0;
    for (; optname[i] != '\0'; i++) {
        char want = optname[i] == '-' ? '_' : optname[i];
        if (env) {
            want = (char)toupper((unsigned char)want);
        }
        if (key[i] != want) {
            return false;
        }
    }
    return key[i] == '\0';
}

static int load_file(struct server_options *o, struct list_state *ls, const char *path, char *err,
                     size_t err_size) {
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        return fail(err, err_size, "cannot open config file %s: %s", path, strerror(errno));
    }
    char *buf = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len + 4096 + 1 > cap) {
            cap = cap == 0 ? 8192 : cap * 2;
            char *p = cap <= (1u << 24) ? realloc(buf, cap) : NULL;
            if (p == NULL) {
                free(buf);
                fclose(f);
                return fail(err, err_size, "config file %s is too large%s", path, "");
            }
            buf = p;
        }
        size_t n = fread(buf + len, 1, 4096, f);
        len += n;
        if (n == 0) {
            break;
        }
    }
    fclose(f);
    buf[len] = '\0';
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(buf, len + 1, &end, 1);
    free(buf);
    if (root == NULL || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return fail(err, err_size, "config file %s is not a JSON object%s", path, "");
    }
    int rc = 0;
    for (const cJSON *it = root->child; it != NULL && rc == 0; it = it->next) {
        if (it->string[0] == '_' || strcmp(it->string, "comment") == 0) {
            continue; /* documentation keys in the example file */
        }
        const struct opt *op = NULL;
        for (size_t i = 0; i < N_OPTS; i++) {
            if (name_matches(opts[i].name, it->string, false)) {
                op = &opts[i];
            }
        }
        if (op == NULL) {
            rc = fail(err, err_size, "config file %s: unknown key '%s'", path, it->string);
            break;
        }
        if (strcmp(op->name, "config") == 0) {
            continue;
        }
        char num[64];
        if (cJSON_IsArray(it) &&
            (op->type == OPT_KEYS || op->type == OPT_ORIGINS || op->type == OPT_HOSTS)) {
            for (const cJSON *e = it->child; e != NULL && rc == 0; e = e->next) {
                if (!cJSON_IsString(e)) {
                    rc = fail(err, err_size, "config file %s: '%s' must hold strings", path,
                              it->string);
                } else {
                    rc = apply(o, ls, op, e->valuestring, SRC_FILE, err, err_size);
                }
            }
        } else if (cJSON_IsString(it)) {
            rc = apply(o, ls, op, it->valuestring, SRC_FILE, err, err_size);
        } else if (cJSON_IsBool(it)) {
            rc = apply(o, ls, op, cJSON_IsTrue(it) ? "true" : "false", SRC_FILE, err, err_size);
        } else if (cJSON_IsNumber(it)) {
            snprintf(num, sizeof(num), "%.17g", it->valuedouble);
            rc = apply(o, ls, op, num, SRC_FILE, err, err_size);
        } else {
            rc = fail(err, err_size, "config file %s: bad value for '%s'", path, it->string);
        }
    }
    cJSON_Delete(root);
    return rc;
}

static int load_key_file(struct server_options *o, const char *path, char *err, size_t err_size) {
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        return fail(err, err_size, "cannot open --api-key-file %s: %s", path, strerror(errno));
    }
    char line[1024];
    int rc = 0;
    while (rc == 0 && fgets(line, sizeof(line), f) != NULL) {
        size_t len = strlen(line);
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r' || line[len - 1] == ' ' ||
                           line[len - 1] == '\t')) {
            line[--len] = '\0';
        }
        const char *k = line;
        while (*k == ' ' || *k == '\t') {
            k++;
        }
        if (*k == '\0' || *k == '#') {
            continue;
        }
        rc = add_key(o, k, err, err_size);
    }
    fclose(f);
    return rc;
}

static const struct opt *find_flag(const char *arg, const char **value) {
    *value = NULL;
    if (arg[0] == '-' && arg[1] != '-' && arg[1] != '\0' && arg[2] == '\0') {
        for (size_t i = 0; i < N_OPTS; i++) {
            if (opts[i].short_name == arg[1]) {
                return &opts[i];
            }
        }
        return NULL;
    }
    if (strncmp(arg, "--", 2) != 0) {
        return NULL;
    }
    const char *name = arg + 2;
    const char *eq = strchr(name, '=');
    size_t len = eq != NULL ? (size_t)(eq - name) : strlen(name);
    for (size_t i = 0; i < N_OPTS; i++) {
        if (strlen(opts[i].name) == len && strncmp(opts[i].name, name, len) == 0) {
            *value = eq != NULL ? eq + 1 : NULL;
            return &opts[i];
        }
    }
    return NULL;
}

void server_options_print_usage(void *file) {
    FILE *f = file;
    fprintf(f, "usage: gptd serve -m MODEL_DIR [--host 127.0.0.1] [--port 8080] [--config FILE] "
               "[options]\n\noptions (each also GPTD_<NAME> in the environment and <name> in "
               "the config file;\nprecedence: flags > environment > file > defaults):\n");
    for (size_t i = 0; i < N_OPTS; i++) {
        char flag[64];
        if (opts[i].short_name != 0) {
            snprintf(flag, sizeof(flag), "-%c, --%s", opts[i].short_name, opts[i].name);
        } else {
            snprintf(flag, sizeof(flag), "    --%s", opts[i].name);
        }
        fprintf(f, "  %-30s %s\n", flag, opts[i].help);
    }
}

int server_options_load(struct server_options *o, int argc, char **argv,
                        const char *(*getenv_fn)(const char *name), char *err, size_t err_size) {
    struct list_state ls = {0, 0, 0};
    /* 1. find --config and --help first: the file is applied before everything else. */
    const char *config = getenv_fn != NULL ? getenv_fn("GPTD_CONFIG") : NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            server_options_print_usage(stdout);
            return 1;
        }
        const char *v;
        const struct opt *op = find_flag(argv[i], &v);
        if (op != NULL && strcmp(op->name, "config") == 0) {
            config = v != NULL ? v : (i + 1 < argc ? argv[i + 1] : NULL);
        }
    }
    if (config != NULL && config[0] != '\0') {
        snprintf(o->config_file, sizeof(o->config_file), "%s", config);
        if (load_file(o, &ls, config, err, err_size) != 0) {
            return -1;
        }
    }
    /* 2. the environment */
    if (getenv_fn != NULL) {
        for (size_t i = 0; i < N_OPTS; i++) {
            char env[96] = "GPTD_";
            size_t k = 5;
            for (const char *p = opts[i].name; *p != '\0' && k + 1 < sizeof(env); p++) {
                env[k++] = *p == '-' ? '_' : (char)toupper((unsigned char)*p);
            }
            env[k] = '\0';
            const char *v = getenv_fn(env);
            if (v != NULL && strcmp(opts[i].name, "config") != 0 &&
                apply(o, &ls, &opts[i], v, SRC_ENV, err, err_size) != 0) {
                return -1;
            }
        }
    }
    /* 3. the flags */
    for (int i = 1; i < argc; i++) {
        const char *v;
        const struct opt *op = find_flag(argv[i], &v);
        if (op == NULL) {
            return fail(err, err_size, "unknown %s '%s'", argv[i][0] == '-' ? "option" : "argument",
                        argv[i]);
        }
        if (v == NULL) {
            if (op->type == OPT_BOOL && (i + 1 >= argc || !parse_bool(argv[i + 1], &(bool){0}))) {
                v = "true"; /* a bare boolean flag */
            } else if (i + 1 < argc) {
                v = argv[++i];
            } else {
                return fail(err, err_size, "option '%s' needs a value%s", argv[i], "");
            }
        }
        if (strcmp(op->name, "config") == 0) {
            continue;
        }
        if (apply(o, &ls, op, v, SRC_FLAG, err, err_size) != 0) {
            return -1;
        }
    }
    if (o->api_key_file[0] != '\0' && load_key_file(o, o->api_key_file, err, err_size) != 0) {
        return -1;
    }
    return 0;
}
