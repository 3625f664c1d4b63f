/*
 * server_internal.h: what the files of src/server share: the server and per-request (struct
 * conn) state, the route table, response helpers and the suspension protocol (server.c), the
 * completion flow of /v1/completions and /v1/chat/completions (completion_flow.c), the
 * Prometheus text of /metrics (prometheus.c) and the connection guard (conn_guard.c). See
 * server.c's DESIGN comment for the threads and the locking rules that hold over all of them.
 */
#ifndef GPTD_SERVER_INTERNAL_H
#define GPTD_SERVER_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <microhttpd.h>

#include <gptd/chat.h>
#include <gptd/server.h>

#include "request.h"
#include "response.h"
#include "sbuf.h"
#include "web.h"

enum route {
    ROUTE_COMPLETIONS = 0,
    ROUTE_MODELS,
    ROUTE_HEALTH,
    ROUTE_LIVEZ,
    ROUTE_METRICS,
    ROUTE_TOKENIZE,
    ROUTE_DETOKENIZE,
    ROUTE_CHAT,           /* POST /v1/chat/completions */
    ROUTE_APPLY_TEMPLATE, /* POST /apply-template: the chat prompt text only */
    ROUTE_WEB,            /* a playground file (web.h): GET, public */
    ROUTE_OTHER,
    N_ROUTES,
};

struct route_info {
    const char *path;
    bool is_post;   /* POST (+ OPTIONS) or GET/HEAD (+ OPTIONS) */
    bool is_public; /* no API key needed */
};

/* The routes, indexed by enum route (server.c). */
extern const struct route_info server_routes[N_ROUTES];

#define MAX_STATUS 600

struct conn;

/* conn_guard.c: limits at accept and per-phase deadlines for the main listener. */
#define CONN_GUARD_FD_RESERVE 256   /* descriptors kept back from the connection table */
#define CONN_GUARD_MIN_LIMIT  64    /* the automatic table size is kept within these */
#define CONN_GUARD_MAX_LIMIT  16384 /* (each connection may hold connection_memory_bytes) */
struct guard_conn;
struct guard_addr;
struct conn_guard {
    pthread_mutex_t mu;
    struct guard_conn *head;     /* every open connection, under mu */
    struct guard_addr **buckets; /* open connections per client address, under mu */
    int n_open;                  /* under mu */
    int limit;                   /* connections in all */
    int per_client_limit;        /* per client address; 0 = none */
    int64_t header_timeout_us, body_timeout_us, keepalive_timeout_us;
    long long fd_soft_before, fd_soft, fd_hard; /* RLIMIT_NOFILE at start (-1: unlimited) */
    atomic_uint_fast64_t rejected_limit, rejected_per_client;
    atomic_uint_fast64_t timed_out_headers, timed_out_body;
};

int conn_guard_init(struct conn_guard *g, const struct server_config *cfg);
void conn_guard_destroy(struct conn_guard *g);
/* libmicrohttpd's accept policy and connection notification callbacks (cls: the server). */
enum MHD_Result conn_guard_accept(void *cls, const struct sockaddr *addr, socklen_t addr_len);
void conn_guard_notify(void *cls, struct MHD_Connection *c, void **socket_context,
                       enum MHD_ConnectionNotificationCode code);
/* A request's phases (on_access / on_completed): each starts its deadline. */
void conn_guard_headers_done(struct conn_guard *g, struct MHD_Connection *c);
void conn_guard_body_done(struct conn_guard *g, struct MHD_Connection *c);
void conn_guard_request_done(struct conn_guard *g, struct MHD_Connection *c);
/* Shuts down every connection past its phase's deadline (the ticker, every tick). */
void conn_guard_tick(struct conn_guard *g, int64_t now_us);
int conn_guard_open(struct conn_guard *g);

struct server {
    struct server_config cfg;
    bool check_host; /* bound to loopback: refuse foreign Host headers (DNS rebinding) */
    struct MHD_Daemon *mhd;
    int port;
    struct MHD_Daemon *admin_mhd; /* --admin-port: /health, /livez, /metrics only; or NULL */
    int admin_port;
    struct conn_guard guard; /* the main listener's */
    struct auth_keys *keys;
    char fingerprint[64];
    int64_t t_created_s;

    /* Set once by server_set_engine, then read-only; `ready` publishes them. */
    struct engine *engine;     /* borrowed */
    struct tokenizer *tok;     /* borrowed */
    const struct chat *chat;   /* borrowed: the chat template (server_set_chat), or NULL */
    struct model_config model; /* copy */
    char weights_name[8];      /* server_set_model_info (default "f32"): "f16", "bf16", "q8" */
    char kv_dtype_name[8];     /* "f32" (default), "f16" */
    struct request_limits limits;
    atomic_bool ready;

    atomic_bool draining;
    atomic_bool stopping;
    atomic_int n_inflight;
    atomic_uint_fast64_t http_counts[N_ROUTES][MAX_STATUS];

    /* Connections waiting on the engine (ticker, stop). */
    pthread_mutex_t reg_mu;
    struct conn *reg_head;
    int n_registered;

    pthread_t ticker;
    bool has_ticker;
    atomic_bool ticker_stop;
};

struct conn {
    atomic_int refs;
    struct server *srv;
    struct MHD_Connection *mhd;
    int fd;
    enum route route;
    const struct web_asset *asset; /* ROUTE_WEB: the file asked for */
    char method[8];
    int64_t t_start_us, t_submit_us, t_first_event_us, t_first_token_us;
    const char *cors_origin; /* the request's Origin when allowed (lives in MHD's pool, valid
                                until on_completed) */
    int status;              /* the status we queued (access log, metrics) */
    bool responded;

    /* request body */
    struct sbuf body;
    size_t body_seen;   /* bytes uploaded so far, kept or not */
    bool body_complete; /* the upload ended (the connection guard was told) */
    bool body_too_large;

    /* completion */
    struct completion_request req;
    bool is_chat; /* /v1/chat/completions: chat.completion objects */
    struct completion_builder *builder;
    struct completion_meta meta;
    struct engine_request *ereqs[64]; /* one per prompt */
    int n_ereqs;
    bool is_stream;
    bool is_stream_started; /* the 200 + SSE headers went out (after every request's admission) */
    int n_admitted;         /* engine requests that have left the queue */
    bool counted_inflight;
    bool has_error;
    struct api_error error;
    char cancel_reason[32];

    /* streaming output not yet handed to libmicrohttpd */
    struct sbuf out;
    size_t out_off;
    bool stream_finished;

    /* suspension (see DESIGN) */
    pthread_mutex_t mu;
    bool suspended;
    bool has_news;
    bool ping_due;
    bool gone;
    int64_t t_suspended_us;

    /* registry links, under srv->reg_mu */
    struct conn *reg_prev, *reg_next;
    bool registered;
};

/* ---- server.c: conn lifetime, registry, suspension ---- */

/* Drops one reference; the last frees the conn and releases what it holds. */
void conn_unref(struct conn *x);
/* Connections waiting on the engine (the ticker wakes them; stop resumes them). */
void server_registry_add(struct server *s, struct conn *x);
void server_registry_remove(struct server *s, struct conn *x);
/* The engine's notify callback (engine thread, under the request's lock): resumes x. */
void conn_on_engine_notify(void *ctx);
void conn_clear_news(struct conn *x);
/* Suspends unless news arrived since conn_clear_news (or the server is stopping, or the client
 * is gone). Returns true when suspended: the caller must return at once. */
bool conn_try_suspend(struct conn *x);
bool conn_is_gone(struct conn *x);

/* ---- server.c: responses (each queues one response on x and records its status) ---- */

enum MHD_Result conn_queue(struct conn *x, int status, struct MHD_Response *r);
enum MHD_Result conn_respond_bytes(struct conn *x, int status, const char *content_type,
                                   const char *data, size_t len);
/* 500 out_of_memory instead when b failed. */
enum MHD_Result conn_respond_json(struct conn *x, int status, const struct sbuf *b);
/* An OpenAI error object with the right extra headers (Allow, WWW-Authenticate, Retry-After). */
enum MHD_Result conn_respond_error(struct conn *x, const struct api_error *e);
enum MHD_Result conn_respond_errorf(struct conn *x, int status, const char *type, const char *code,
                                    const char *fmt, ...) __attribute__((format(printf, 5, 6)));
/* 503: loading, or draining / shutting down. */
enum MHD_Result conn_respond_unavailable(struct conn *x);

/* ---- completion_flow.c ---- */

/* POST /v1/completions, /v1/chat/completions and /apply-template, once the body is complete. */
enum MHD_Result completion_flow_text(struct conn *x);
enum MHD_Result completion_flow_chat(struct conn *x);
enum MHD_Result completion_flow_apply_template(struct conn *x);
/* Waits (suspended) for a non-streamed completion to finish, or for a stream's admission;
 * called on every resume until a response is queued. */
enum MHD_Result completion_flow_step(struct conn *x);
/* Cancels (when cancel) and releases every engine request of x (the caller holds no lock). */
void completion_flow_release(struct conn *x, bool cancel);
/* The request no longer counts as in flight (idempotent). */
void completion_flow_mark_done(struct conn *x);

/* ---- prometheus.c ---- */

/* GET /metrics: the engine's counters and histograms and the HTTP counts, Prometheus text. */
enum MHD_Result prometheus_respond(struct conn *x);

#endif
