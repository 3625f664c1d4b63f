/*
 * server.h: the HTTP front end: an OpenAI-compatible API on libmicrohttpd (POST /v1/completions
 * with SSE streaming, GET /v1/models, /health, /livez, /metrics, POST /tokenize, /detokenize).
 *
 * Who calls it: `gptd serve` (src/cli/serve.c) on the main thread: server_options_* to build the
 * configuration from flags, GPTD_* environment variables and a JSON file; server_create to start
 * listening (possibly before the model is loaded: /health answers 503 "loading" until
 * server_set_engine); server_begin_drain on SIGTERM; server_stop + server_destroy at the end.
 * Requests are served by libmicrohttpd's internal thread pool; no HTTP thread ever waits for
 * the engine: a connection with nothing to send is suspended and resumed by the engine's notify
 * callback (or by the server's 1 s ticker, which sends SSE pings and notices dead clients).
 */
#ifndef GPTD_SERVER_H
#define GPTD_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <gptd/engine.h>
#include <gptd/model.h>
#include <gptd/tokenizer.h>

#define SERVER_MAX_API_KEYS     16
#define SERVER_MAX_CORS_ORIGINS 16

struct server_config {
    char host[256];                 /* address to bind; default 127.0.0.1 */
    int port;                       /* default 8080; 0 = an ephemeral port (see server_port) */
    int n_threads;                  /* libmicrohttpd thread pool, default 4 */
    int admin_port;                 /* -1 (default): none; else a second listener on
                                       host for /health, /livez and /metrics only */
    int connection_timeout_s;       /* idle connection timeout, default 30 */
    int header_timeout_s;           /* request line + headers complete within this, default 10 */
    int body_timeout_s;             /* the body complete within this of the headers, default 30 */
    int connection_limit;           /* open connections; default 0 = from the descriptor limit */
    int per_ip_connection_limit;    /* per client address, default 512; 0 = no limit */
    size_t connection_memory_bytes; /* per-connection pool (request line + headers), 128 KiB;
                                       beyond it libmicrohttpd answers 431 itself (HTML) */
    size_t max_header_bytes;        /* request line + headers, 32 KiB: more -> 431 (JSON) */
    size_t max_body_bytes;          /* request body cap, default 1 MiB -> 413 */
    int max_prompts;                /* prompts per request, default 16 */
    int max_n;                      /* n and best_of, default 16 */
    int max_tokens_cap;             /* largest max_tokens, default 0 = the model's context */
    char served_model_name[128];    /* default: the model directory's base name */
    bool strict_model;              /* a request naming another model gets 404 */
    char *api_keys[SERVER_MAX_API_KEYS]; /* borrowed; empty = no authentication */
    int n_api_keys;
    bool metrics_public; /* /metrics without a key even when keys are set (default false) */
    char *cors_origins[SERVER_MAX_CORS_ORIGINS]; /* borrowed; exact origins allowed */
    int n_cors_origins;
    /* DNS rebinding guard: when bound to a loopback address, a request whose Host header is
     * not localhost, 127.0.0.1, [::1] (any port) or one of these gets 403. */
    char *allowed_hosts[SERVER_MAX_CORS_ORIGINS]; /* borrowed */
    int n_allowed_hosts;
    int ping_interval_ms; /* SSE `: ping` while nothing is produced, default 1000 */
    bool access_log;      /* one JSON line per request on stdout, default true */
    bool playground;      /* the web playground at GET / (web/), default true */
};

void server_config_init_default(struct server_config *cfg);

struct server;

/*
 * Binds and starts serving. The engine may come later (server_set_engine): until then every
 * route but /livez answers 503 "loading". Returns NULL with a message in err on failure.
 * The config is copied (its key and origin strings stay borrowed).
 */
struct server *server_create(const struct server_config *cfg, char *err, size_t err_size);

/* The port actually bound (useful with port 0). */
int server_port(const struct server *s);
/* The admin listener's port (--admin-port), or -1 without one. */
int server_admin_port(const struct server *s);

/* Attaches the loaded model's engine and tokenizer (borrowed; they must outlive the server's
 * stop) and turns /health to 200. Main thread, once. */
void server_set_engine(struct server *s, struct engine *engine, struct tokenizer *tok,
                       const struct model_config *model_cfg);

struct chat;
/* The model's chat template for /v1/chat/completions and /apply-template (borrowed; it must
 * outlive the server's stop). Without one (or NULL) those routes answer 400 "model has no chat
 * template". Main thread, before server_set_engine. */
void server_set_chat(struct server *s, const struct chat *chat);

/* How the model is held, as /v1/models ("weights", "kv_cache_dtype") and /metrics
 * (gptd_model_info) report it: model_weights_name and kv_dtype_name of what was loaded.
 * Main thread, before server_set_engine. */
void server_set_model_info(struct server *s, const char *weights, const char *kv_cache_dtype);

/* SIGTERM: from now on /health says 503 "draining" and new requests get 503; in-flight
 * requests go on. Any thread. */
void server_begin_drain(struct server *s);

/* Completion requests still in flight (admitted to the engine and not yet finished). */
int server_n_inflight(const struct server *s);

/* Ends every remaining stream with an error event, resumes every suspended connection, stops
 * libmicrohttpd. Call after engine_stop (so no request is still generating). Main thread. */
void server_stop(struct server *s);

/* Stops if needed and frees. NULL is a no-op. */
void server_destroy(struct server *s);

/*
 * `gptd serve` options: every flag also settable by an environment variable (GPTD_<NAME>) and
 * a JSON config file (key = the flag's name with dashes as underscores); precedence flags >
 * environment > file > defaults.
 */
struct server_options {
    char model_dir[1024];
    char config_file[1024];
    char api_key_file[1024];
    char chat_template[1024]; /* --chat-template FILE; "" = the model's own */
    char log_level[16];
    char weights[8];     /* auto, f32, f16, bf16, q8 (model_weights_parse); default auto */
    char kv_dtype[8];    /* f32, f16 (kv_dtype_parse) -> engine.kv_dtype; default f32 */
    int drain_timeout_s; /* default 30 */
    int n_model_threads; /* 0 = leave the model's default */
    struct server_config server;
    struct engine_config engine;
    /* Storage for strings the configs borrow (keys, origins); freed by server_options_finish. */
    char *owned[2 * (SERVER_MAX_API_KEYS + 2 * SERVER_MAX_CORS_ORIGINS) + 8];
    int n_owned;
};

/* Defaults everywhere. */
void server_options_init(struct server_options *o);
/* Frees the owned strings. */
void server_options_finish(struct server_options *o);

/*
 * Applies the file named by --config / GPTD_CONFIG, then the environment (getenv_fn, which may
 * be NULL for none, so tests can pass their own), then argv[1..argc) (argv[0] is the command
 * name). Returns 0; 1 when --help was given (usage already printed to stdout); or -1 for a
 * usage error with a one-line message in err.
 */
int server_options_load(struct server_options *o, int argc, char **argv,
                        const char *(*getenv_fn)(const char *name), char *err, size_t err_size);

/* The option list, for `gptd serve --help`. */
void server_options_print_usage(void *file);

#endif
