/*
 * server.c: the libmicrohttpd daemon: routing, auth, CORS, limits, the completion flow with
 * suspend/resume, SSE streaming, /metrics, the access log and shutdown (see server.h).
 *
 * DESIGN
 * Threads: libmicrohttpd's internal pool (epoll, n_threads) calls on_access, the stream reader,
 * and on_completed; the engine thread calls on_engine_notify; our ticker thread wakes suspended
 * connections for SSE pings and notices dead clients. No HTTP thread ever waits for the engine:
 * when a connection has nothing to send it is suspended, and whoever brings news resumes it.
 *
 * One struct conn per HTTP request (libmicrohttpd's con_cls). Its lifetime is reference
 * counted: one reference for libmicrohttpd (dropped in on_completed) and one for a streaming
 * response (dropped by the response's free callback), because the two callbacks come in no
 * guaranteed order.
 *
 * Suspension protocol (libmicrohttpd forbids resuming a connection that is not suspended and
 * suspending one twice): x->suspended and x->has_news live under x->mu.
 *   - serving thread: clear has_news; poll the engine (without x->mu); if nothing came, lock
 *     x->mu: has_news set -> unlock and poll again; else suspended = true, suspend, unlock.
 *   - notify / ticker: lock x->mu; suspended -> suspended = false and resume; else has_news.
 * Lock order: engine request lock -> x->mu (notify is called under the engine's lock), and
 * registry lock -> x->mu (ticker, stop). We never call into the engine while holding x->mu, and
 * on_completed releases the engine requests holding nothing, so no cycle exists. A connection
 * is never resumed after it completed: on_completed first unlinks it from the registry (no
 * ticker) and releases its engine requests (engine_request_release guarantees no later notify).
 *
 * Disconnects: a suspended connection does not notice its client leaving, so the ticker peeks
 * at the socket of every suspended connection (poll + recv MSG_PEEK: 0 bytes = closed) and
 * marks it gone; the serving thread then ends it (MHD_NO / END_WITH_ERROR), on_completed gets a
 * non-OK code and cancels the engine requests. A failed SSE write (pings every second) does
 * the same for streams.
 */
#include <errno.h>
#include <math.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>

#include <microhttpd.h>

#include <gptd/server.h>
#include <gptd/util.h>

#include "auth.h"
#include "request.h"
#include "response.h"
#include "sbuf.h"
#include "version.h"
#include "web.h"

enum route {
    ROUTE_COMPLETIONS = 0,
    ROUTE_MODELS,
    ROUTE_HEALTH,
    ROUTE_LIVEZ,
    ROUTE_METRICS,
    ROUTE_TOKENIZE,
    ROUTE_DETOKENIZE,
    ROUTE_WEB, /* a playground file (web.h): GET, public */
    ROUTE_OTHER,
    N_ROUTES,
};

struct route_info {
    const char *path;
    bool is_post;   /* POST (+ OPTIONS) or GET/HEAD (+ OPTIONS) */
    bool is_public; /* no API key needed */
};

static const struct route_info routes[N_ROUTES] = {
    [ROUTE_COMPLETIONS] = {"/v1/completions", true, false},
    [ROUTE_MODELS] = {"/v1/models", false, false},
    [ROUTE_HEALTH] = {"/health", false, true},
    [ROUTE_LIVEZ] = {"/livez", false, true},
    [ROUTE_METRICS] = {"/metrics", false, false},
    [ROUTE_TOKENIZE] = {"/tokenize", true, false},
    [ROUTE_DETOKENIZE] = {"/detokenize", true, false},
    [ROUTE_WEB] = {"web", false, true},
    [ROUTE_OTHER] = {"other", false, false},
};

#define MAX_STATUS 600

struct conn;

struct server {
    struct server_config cfg;
    bool check_host; /* bound to loopback: refuse foreign Host headers (DNS rebinding) */
    struct MHD_Daemon *mhd;
    int port;
    struct auth_keys *keys;
    char fingerprint[64];
    int64_t t_created_s;

    /* Set once by server_set_engine, then read-only; `ready` publishes them. */
    struct engine *engine;     /* borrowed */
    struct tokenizer *tok;     /* borrowed */
    struct model_config model; /* copy */
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
    size_t body_seen; /* bytes uploaded so far, kept or not */
    bool body_too_large;

    /* completion */
    struct completion_request req;
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

/* ---------------------------------------------------------------------------------------- */
/* conn lifetime                                                                            */

static struct conn *conn_create(struct server *s, struct MHD_Connection *c) {
    struct conn *x = calloc(1, sizeof(*x));
    if (x == NULL) {
        return NULL;
    }
    if (pthread_mutex_init(&x->mu, NULL) != 0) {
        free(x);
        return NULL;
    }
    atomic_init(&x->refs, 1);
    x->srv = s;
    x->mhd = c;
    x->fd = -1;
    x->t_start_us = time_now_us();
    sbuf_init(&x->body);
    sbuf_init(&x->out);
    server_request_init(&x->req);
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (ci != NULL) {
        x->fd = (int)ci->connect_fd;
    }
    return x;
}

static void conn_unref(struct conn *x) {
    if (x == NULL || atomic_fetch_sub(&x->refs, 1) != 1) {
        return;
    }
    for (int i = 0; i < x->n_ereqs; i++) {
        engine_request_release(x->ereqs[i]); /* normally already released in on_completed */
    }
    completion_builder_destroy(x->builder);
    server_request_finish(&x->req);
    sbuf_finish(&x->body);
    sbuf_finish(&x->out);
    pthread_mutex_destroy(&x->mu);
    free(x);
}

static void registry_add(struct server *s, struct conn *x) {
    pthread_mutex_lock(&s->reg_mu);
    x->reg_prev = NULL;
    x->reg_next = s->reg_head;
    if (s->reg_head != NULL) {
        s->reg_head->reg_prev = x;
    }
    s->reg_head = x;
    x->registered = true;
    s->n_registered++;
    pthread_mutex_unlock(&s->reg_mu);
}

static void registry_remove(struct server *s, struct conn *x) {
    pthread_mutex_lock(&s->reg_mu);
    if (x->registered) {
        if (x->reg_prev != NULL) {
            x->reg_prev->reg_next = x->reg_next;
        } else {
            s->reg_head = x->reg_next;
        }
        if (x->reg_next != NULL) {
            x->reg_next->reg_prev = x->reg_prev;
        }
        x->registered = false;
        s->n_registered--;
    }
    pthread_mutex_unlock(&s->reg_mu);
}

/* ---------------------------------------------------------------------------------------- */
/* suspension                                                                               */

static void on_engine_notify(void *ctx) {
    struct conn *x = ctx;
    pthread_mutex_lock(&x->mu);
    if (x->suspended) {
        x->suspended = false;
        MHD_resume_connection(x->mhd);
    } else {
        x->has_news = true;
    }
    pthread_mutex_unlock(&x->mu);
}

static void clear_news(struct conn *x) {
    pthread_mutex_lock(&x->mu);
    x->has_news = false;
    pthread_mutex_unlock(&x->mu);
}

/* Suspends unless news arrived since clear_news (or the server is stopping, or the client is
 * gone). Returns true when suspended: the caller must return at once. */
static bool try_suspend(struct conn *x) {
    bool done = false;
    pthread_mutex_lock(&x->mu);
    if (!x->has_news && !x->gone && !x->ping_due && !atomic_load(&x->srv->stopping)) {
        x->suspended = true;
        x->t_suspended_us = time_now_us();
        MHD_suspend_connection(x->mhd);
        done = true;
    }
    pthread_mutex_unlock(&x->mu);
    return done;
}

static bool conn_is_gone(struct conn *x) {
    pthread_mutex_lock(&x->mu);
    bool gone = x->gone;
    pthread_mutex_unlock(&x->mu);
    return gone;
}

/* True when the peer has closed (or broken) the socket. Never blocks. */
static bool socket_closed(int fd) {
    if (fd < 0) {
        return false;
    }
    struct pollfd p = {.fd = fd, .events = POLLIN, .revents = 0};
    if (poll(&p, 1, 0) <= 0) {
        return false;
    }
    if (p.revents & (POLLHUP | POLLERR | POLLNVAL)) {
        return true;
    }
    if (p.revents & POLLIN) {
        char c;
        ssize_t r = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
        return r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
    }
    return false;
}

static void *ticker_main(void *arg) {
    struct server *s = arg;
    const int64_t tick_us = 200 * 1000;
    while (!atomic_load(&s->ticker_stop)) {
        struct timespec ts = {.tv_sec = 0, .tv_nsec = (long)tick_us * 1000};
        nanosleep(&ts, NULL);
        int64_t now = time_now_us();
        pthread_mutex_lock(&s->reg_mu);
        for (struct conn *x = s->reg_head; x != NULL; x = x->reg_next) {
            pthread_mutex_lock(&x->mu);
            if (x->suspended) {
                bool wake = false;
                if (socket_closed(x->fd)) {
                    x->gone = true;
                    wake = true;
                } else if (x->is_stream_started &&
                           now - x->t_suspended_us >= (int64_t)s->cfg.ping_interval_ms * 1000) {
                    x->ping_due = true;
                    wake = true;
                }
                if (wake) {
                    x->suspended = false;
                    MHD_resume_connection(x->mhd);
                }
            }
            pthread_mutex_unlock(&x->mu);
        }
        pthread_mutex_unlock(&s->reg_mu);
    }
    return NULL;
}

/* ---------------------------------------------------------------------------------------- */
/* responses                                                                                */

static void add_cors(struct conn *x, struct MHD_Response *r) {
    if (x->cors_origin != NULL) {
        MHD_add_response_header(r, "Access-Control-Allow-Origin", x->cors_origin);
        MHD_add_response_header(r, "Vary", "Origin");
    }
}

static enum MHD_Result queue(struct conn *x, int status, struct MHD_Response *r) {
    x->status = status;
    x->responded = true;
    add_cors(x, r);
    enum MHD_Result rc = MHD_queue_response(x->mhd, (unsigned int)status, r);
    MHD_destroy_response(r);
    return rc;
}

static enum MHD_Result respond_bytes(struct conn *x, int status, const char *content_type,
                                     const char *data, size_t len) {
    struct MHD_Response *r =
        MHD_create_response_from_buffer(len, (void *)data, MHD_RESPMEM_MUST_COPY);
    if (r == NULL) {
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", content_type);
    return queue(x, status, r);
}

static enum MHD_Result respond_json(struct conn *x, int status, const struct sbuf *b) {
    if (b->failed) {
        static const char oom[] = "{\"error\":{\"message\":\"out of memory\",\"type\":"
                                  "\"server_error\",\"param\":null,\"code\":\"out_of_memory\"}}";
        return respond_bytes(x, 500, "application/json; charset=utf-8", oom, sizeof(oom) - 1);
    }
    return respond_bytes(x, status, "application/json; charset=utf-8", b->data, b->len);
}

/* An OpenAI error object with the right extra headers (Allow, WWW-Authenticate, Retry-After). */
static enum MHD_Result respond_error(struct conn *x, const struct api_error *e) {
    struct sbuf b;
    sbuf_init(&b);
    response_error_json(&b, e);
    struct MHD_Response *r = NULL;
    if (!b.failed) {
        r = MHD_create_response_from_buffer(b.len, b.data, MHD_RESPMEM_MUST_COPY);
    }
    sbuf_finish(&b);
    if (r == NULL) {
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", "application/json; charset=utf-8");
    if (e->status == 401) {
        MHD_add_response_header(r, "WWW-Authenticate", "Bearer");
    } else if (e->status == 405) {
        MHD_add_response_header(r, "Allow",
                                routes[x->route].is_post ? "POST, OPTIONS" : "GET, HEAD, OPTIONS");
    } else if (e->status == 503) {
        MHD_add_response_header(r, "Retry-After", "1");
    }
    return queue(x, e->status, r);
}

static enum MHD_Result respond_errorf(struct conn *x, int status, const char *type,
                                      const char *code, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

static enum MHD_Result respond_errorf(struct conn *x, int status, const char *type,
                                      const char *code, const char *fmt, ...) {
    struct api_error e;
    e.status = status;
    e.type = type;
    e.code = code;
    e.param = NULL;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e.message, sizeof(e.message), fmt, ap);
    va_end(ap);
    return respond_error(x, &e);
}

static enum MHD_Result respond_unavailable(struct conn *x) {
    if (atomic_load(&x->srv->draining) || atomic_load(&x->srv->stopping)) {
        return respond_errorf(x, 503, "unavailable_error", "draining",
                              "the server is shutting down");
    }
    return respond_errorf(x, 503, "unavailable_error", "loading", "the model is loading");
}

/* ---------------------------------------------------------------------------------------- */
/* simple routes                                                                            */

static enum MHD_Result handle_health(struct conn *x) {
    struct server *s = x->srv;
    if (!atomic_load(&s->ready) || atomic_load(&s->draining) || atomic_load(&s->stopping)) {
        return respond_unavailable(x);
    }
    static const char ok[] = "{\"status\":\"ok\"}";
    return respond_bytes(x, 200, "application/json; charset=utf-8", ok, sizeof(ok) - 1);
}

static enum MHD_Result handle_models(struct conn *x) {
    struct server *s = x->srv;
    if (!atomic_load(&s->ready)) {
        return respond_unavailable(x);
    }
    struct sbuf b;
    sbuf_init(&b);
    sbuf_puts(&b, "{\"object\":\"list\",\"data\":[{\"id\":");
    sbuf_json_cstr(&b, s->cfg.served_model_name);
    sbuf_printf(&b, ",\"object\":\"model\",\"created\":%lld,\"owned_by\":\"gptd\",\"root\":",
                (long long)s->t_created_s);
    sbuf_json_cstr(&b, s->cfg.served_model_name);
    sbuf_printf(&b, ",\"parent\":null,\"max_model_len\":%d}]}", s->model.n_ctx);
    enum MHD_Result rc = respond_json(x, 200, &b);
    sbuf_finish(&b);
    return rc;
}

static void prom_metric(struct sbuf *b, const char *name, const char *type, const char *help,
                        double value) {
    sbuf_printf(b, "# HELP %s %s\n# TYPE %s %s\n%s %.17g\n", name, help, name, type, name, value);
}

static void prom_histogram(struct sbuf *b, const char *name, const char *help,
                           const struct engine_histogram *h, const double *bounds) {
    sbuf_printf(b, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    for (int i = 0; i < ENGINE_HIST_BUCKETS; i++) {
        if (isinf(bounds[i]) || i == ENGINE_HIST_BUCKETS - 1) {
            sbuf_printf(b, "%s_bucket{le=\"+Inf\"} %llu\n", name, (unsigned long long)h->count);
            break;
        }
        sbuf_printf(b, "%s_bucket{le=\"%g\"} %llu\n", name, bounds[i],
                    (unsigned long long)h->counts[i]);
    }
    sbuf_printf(b, "%s_sum %.17g\n%s_count %llu\n", name, h->sum, name,
                (unsigned long long)h->count);
}

static enum MHD_Result handle_metrics(struct conn *x) {
    struct server *s = x->srv;
    struct sbuf b;
    sbuf_init(&b);
    if (atomic_load(&s->ready)) {
        struct engine_metrics m;
        memset(&m, 0, sizeof(m));
        engine_get_metrics(s->engine, &m);
        prom_metric(&b, "gptd_requests_waiting", "gauge", "Requests waiting in the queue.",
                    (double)m.n_waiting);
        prom_metric(&b, "gptd_requests_running", "gauge", "Sequences running.",
                    (double)m.n_running);
        prom_metric(&b, "gptd_kv_blocks_used", "gauge", "KV cache blocks in use.",
                    (double)m.kv_blocks_used);
        prom_metric(&b, "gptd_kv_blocks_total", "gauge", "KV cache blocks in the pool.",
                    (double)m.kv_blocks_total);
        prom_metric(&b, "gptd_kv_blocks_free", "gauge", "KV cache blocks free.",
                    (double)(m.kv_blocks_total - m.kv_blocks_used));
        prom_metric(&b, "gptd_requests_started_total", "counter", "Requests admitted.",
                    (double)m.requests_started);
        prom_metric(&b, "gptd_requests_completed_total", "counter", "Requests finished.",
                    (double)m.requests_completed);
        prom_metric(&b, "gptd_requests_cancelled_total", "counter",
                    "Requests cancelled (client gone or shutdown).", (double)m.requests_cancelled);
        prom_metric(&b, "gptd_requests_rejected_total", "counter",
                    "Requests refused at submission (queue full, draining).",
                    (double)m.requests_rejected);
        prom_metric(&b, "gptd_requests_failed_total", "counter", "Requests failed.",
                    (double)m.requests_failed);
        prom_metric(&b, "gptd_preemptions_total", "counter", "Sequences preempted.",
                    (double)m.preemptions);
        prom_metric(&b, "gptd_prompt_tokens_total", "counter", "Prompt tokens processed.",
                    (double)m.prompt_tokens);
        prom_metric(&b, "gptd_generation_tokens_total", "counter", "Tokens generated.",
                    (double)m.generation_tokens);
        prom_metric(&b, "gptd_steps_total", "counter", "Engine steps (forward passes).",
                    (double)m.steps);
        prom_histogram(&b, "gptd_step_seconds", "Duration of one engine step.", &m.step_seconds,
                       engine_hist_seconds_bounds);
        prom_histogram(&b, "gptd_batch_rows", "Rows (tokens) per forward pass.", &m.batch_rows,
                       engine_hist_rows_bounds);
        prom_histogram(&b, "gptd_queue_seconds", "Time requests spent queued.", &m.queue_seconds,
                       engine_hist_seconds_bounds);
        prom_histogram(&b, "gptd_ttft_seconds", "Time to first token.", &m.ttft_seconds,
                       engine_hist_seconds_bounds);
        prom_histogram(&b, "gptd_itl_seconds", "Inter-token latency.", &m.itl_seconds,
                       engine_hist_seconds_bounds);
        prom_histogram(&b, "gptd_e2e_seconds", "Request latency end to end.", &m.e2e_seconds,
                       engine_hist_seconds_bounds);
    }
    prom_metric(&b, "gptd_http_inflight_requests", "gauge",
                "Completion requests admitted and not finished.",
                (double)atomic_load(&s->n_inflight));
    sbuf_puts(&b, "# HELP gptd_http_requests_total HTTP requests by route and status.\n"
                  "# TYPE gptd_http_requests_total counter\n");
    for (int r = 0; r < N_ROUTES; r++) {
        for (int st = 0; st < MAX_STATUS; st++) {
            uint64_t n = atomic_load(&s->http_counts[r][st]);
            if (n > 0) {
                sbuf_printf(&b, "gptd_http_requests_total{route=\"%s\",status=\"%d\"} %llu\n",
                            routes[r].path, st, (unsigned long long)n);
            }
        }
    }
    enum MHD_Result rc;
    if (b.failed) {
        rc = respond_errorf(x, 500, "server_error", "out_of_memory", "out of memory");
    } else {
        rc = respond_bytes(x, 200, "text/plain; version=0.0.4; charset=utf-8", b.data, b.len);
    }
    sbuf_finish(&b);
    return rc;
}

static enum MHD_Result handle_tokenize(struct conn *x) {
    struct server *s = x->srv;
    struct api_error e;
    char *text = NULL;
    size_t len = 0;
    bool add_special = true;
    if (server_request_parse_tokenize(x->body.data != NULL ? x->body.data : "", x->body.len, &text,
                                      &len, &add_special, &e) != 0) {
        return respond_error(x, &e);
    }
    int32_t *ids = NULL;
    size_t n = 0;
    char msg[128];
    enum MHD_Result rc;
    int flags = TOKENIZER_PARSE_SPECIAL | (add_special ? TOKENIZER_ADD_SPECIAL : 0);
    if (tokenizer_encode(s->tok, text, len, flags, &ids, &n, msg, sizeof(msg)) != 0) {
        rc = respond_errorf(x, 400, "invalid_request_error", "invalid_value",
                            "the prompt could not be tokenized");
    } else {
        struct sbuf b;
        sbuf_init(&b);
        sbuf_puts(&b, "{\"tokens\":[");
        for (size_t i = 0; i < n; i++) {
            sbuf_printf(&b, i > 0 ? ",%d" : "%d", ids[i]);
        }
        sbuf_printf(&b, "],\"count\":%zu,\"max_model_len\":%d}", n, s->model.n_ctx);
        rc = respond_json(x, 200, &b);
        sbuf_finish(&b);
    }
    free(ids);
    free(text);
    return rc;
}

static enum MHD_Result handle_detokenize(struct conn *x) {
    struct server *s = x->srv;
    struct api_error e;
    int32_t *ids = NULL;
    size_t n = 0;
    if (server_request_parse_detokenize(x->body.data != NULL ? x->body.data : "", x->body.len,
                                        &s->limits, &ids, &n, &e) != 0) {
        return respond_error(x, &e);
    }
    size_t len = 0;
    char *text = tokenizer_decode(s->tok, ids, n, &len);
    free(ids);
    if (text == NULL) {
        return respond_errorf(x, 500, "server_error", "out_of_memory", "out of memory");
    }
    struct sbuf b;
    sbuf_init(&b);
    sbuf_puts(&b, "{\"prompt\":");
    sbuf_json_string(&b, text, len);
    sbuf_puts(&b, "}");
    free(text);
    enum MHD_Result rc = respond_json(x, 200, &b);
    sbuf_finish(&b);
    return rc;
}

/* ---------------------------------------------------------------------------------------- */
/* completions                                                                              */

static const char *token_text(void *ctx, int32_t id, size_t *len) {
    return tokenizer_token_bytes(ctx, id, len);
}

static void mark_not_inflight(struct conn *x) {
    if (x->counted_inflight) {
        x->counted_inflight = false;
        atomic_fetch_sub(&x->srv->n_inflight, 1);
    }
}

/* Cancels and releases every engine request (the caller holds no lock). */
static void release_engine_requests(struct conn *x, bool cancel) {
    for (int i = 0; i < x->n_ereqs; i++) {
        if (cancel) {
            engine_request_cancel(x->ereqs[i]);
        }
        engine_request_release(x->ereqs[i]);
        x->ereqs[i] = NULL;
    }
    x->n_ereqs = 0;
}

/*
 * Moves pending engine events into the builder (and, when streaming, SSE text into x->out).
 * Returns true when at least one event was taken. Sets has_error on an ERROR event (or a
 * cancellation by shutdown).
 */
static bool take_events(struct conn *x) {
    struct engine_event evs[8];
    bool any = false;
    for (int i = 0; i < x->n_ereqs && !x->has_error; i++) {
        size_t n;
        while (!x->has_error && (n = engine_request_poll(x->ereqs[i], evs, 8)) > 0) {
            any = true;
            int64_t now = time_now_us();
            if (x->t_first_event_us == 0) {
                x->t_first_event_us = now;
            }
            for (size_t k = 0; k < n && !x->has_error; k++) {
                const struct engine_event *ev = &evs[k];
                if (ev->type == ENGINE_EVENT_ADMITTED) {
                    x->n_admitted++;
                    continue;
                }
                if (ev->type == ENGINE_EVENT_ERROR) {
                    response_engine_error(&x->error, ev->error, false, ev->error_message);
                    x->has_error = true;
                    break;
                }
                if (ev->type == ENGINE_EVENT_FINISH &&
                    (ev->finish_reason == ENGINE_FINISH_CANCELLED ||
                     ev->finish_reason == ENGINE_FINISH_ERROR)) {
                    if (ev->finish_reason == ENGINE_FINISH_CANCELLED) {
                        response_engine_error(&x->error, ENGINE_ERR_DRAINING, false, NULL);
                    } else {
                        api_error_set(&x->error, 500, "server_error", "internal_error", NULL,
                                      "generation failed");
                    }
                    x->has_error = true;
                    break;
                }
                if (ev->type == ENGINE_EVENT_TOKEN && x->t_first_token_us == 0) {
                    x->t_first_token_us = now;
                }
                if (completion_builder_event(x->builder, i, ev, x->is_stream ? &x->out : NULL) !=
                    0) {
                    api_error_set(&x->error, 500, "server_error", "internal_error", NULL,
                                  "unexpected event from the engine");
                    x->has_error = true;
                }
            }
            /* Let a long burst of chunks go out before taking more. */
            if (x->is_stream && x->out.len - x->out_off > 64 * 1024) {
                return any;
            }
        }
    }
    return any;
}

static enum MHD_Result stream_start_response(struct conn *x);

/* Waits (suspended) for a non-streamed completion to finish, or for a stream's admission;
 * called on the final access call and after every resume until a response is queued. */
static enum MHD_Result completion_step(struct conn *x) {
    for (;;) {
        clear_news(x);
        take_events(x);
        if (conn_is_gone(x)) {
            snprintf(x->cancel_reason, sizeof(x->cancel_reason), "client_disconnected");
            return MHD_NO;
        }
        if (x->has_error) {
            mark_not_inflight(x);
            return respond_error(x, &x->error);
        }
        if (x->is_stream && x->n_admitted == x->n_ereqs) {
            return stream_start_response(x);
        }
        if (completion_builder_is_done(x->builder)) {
            mark_not_inflight(x);
            struct sbuf b;
            sbuf_init(&b);
            completion_builder_body(x->builder, &b);
            enum MHD_Result rc = respond_json(x, 200, &b);
            sbuf_finish(&b);
            return rc;
        }
        if (atomic_load(&x->srv->stopping)) {
            mark_not_inflight(x);
            return respond_errorf(x, 503, "unavailable_error", "shutting_down",
                                  "the server is shutting down");
        }
        if (try_suspend(x)) {
            return MHD_YES;
        }
    }
}

static ssize_t stream_reader(void *cls, uint64_t pos, char *buf, size_t max);
static void stream_free(void *cls);

/* Every engine request has left the queue: only now do the 200 and the SSE headers go out
 * (docs/RELIABILITY.md section 0), so a request refused while queued (queue timeout, shutdown)
 * still gets a real status. Events that came with the admission wait in x->out. */
static enum MHD_Result stream_start_response(struct conn *x) {
    struct MHD_Response *r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16 * 1024,
                                                               stream_reader, x, stream_free);
    if (r == NULL) {
        return MHD_NO;
    }
    atomic_fetch_add(&x->refs, 1); /* the response's reference, dropped by stream_free */
    MHD_add_response_header(r, "Content-Type", "text/event-stream; charset=utf-8");
    MHD_add_response_header(r, "Cache-Control", "no-cache");
    MHD_add_response_header(r, "X-Accel-Buffering", "no");
    pthread_mutex_lock(&x->mu);
    x->is_stream_started = true;
    pthread_mutex_unlock(&x->mu);
    return queue(x, 200, r);
}

static ssize_t stream_reader(void *cls, uint64_t pos, char *buf, size_t max) {
    (void)pos;
    struct conn *x = cls;
    for (;;) {
        if (x->out_off < x->out.len) {
            size_t n = x->out.len - x->out_off;
            if (n > max) {
                n = max;
            }
            memcpy(buf, x->out.data + x->out_off, n);
            x->out_off += n;
            if (x->out_off == x->out.len) {
                sbuf_reset(&x->out);
                x->out_off = 0;
            }
            return (ssize_t)n;
        }
        if (x->out.failed) {
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
        if (x->stream_finished) {
            return MHD_CONTENT_READER_END_OF_STREAM;
        }
        if (conn_is_gone(x)) {
            snprintf(x->cancel_reason, sizeof(x->cancel_reason), "client_disconnected");
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
        clear_news(x);
        bool any = take_events(x);
        if (x->has_error) {
            response_sse_error(&x->out, &x->error);
            x->stream_finished = true;
            mark_not_inflight(x);
            continue;
        }
        if (completion_builder_is_done(x->builder)) {
            completion_builder_stream_end(x->builder, &x->out);
            x->stream_finished = true;
            mark_not_inflight(x);
            continue;
        }
        if (any) {
            continue;
        }
        if (atomic_load(&x->srv->stopping)) {
            struct api_error e;
            response_engine_error(&e, ENGINE_ERR_DRAINING, false, NULL);
            response_sse_error(&x->out, &e);
            x->stream_finished = true;
            mark_not_inflight(x);
            continue;
        }
        pthread_mutex_lock(&x->mu);
        bool ping = x->ping_due;
        x->ping_due = false;
        pthread_mutex_unlock(&x->mu);
        if (ping) {
            /* An SSE comment: keeps proxies and clients from timing out, and a write to a
             * closed socket is how libmicrohttpd notices the client left. */
            sbuf_puts(&x->out, ": ping\n\n");
            continue;
        }
        if (try_suspend(x)) {
            return 0;
        }
    }
}

static void stream_free(void *cls) {
    conn_unref(cls);
}

static enum MHD_Result handle_completion(struct conn *x) {
    struct server *s = x->srv;
    struct api_error e;
    if (atomic_load(&s->draining) || atomic_load(&s->stopping)) {
        return respond_unavailable(x);
    }
    if (server_request_parse_completion(x->body.data != NULL ? x->body.data : "", x->body.len,
                                        &s->limits, s->cfg.served_model_name, &x->req, &e) != 0) {
        return respond_error(x, &e);
    }
    if (s->cfg.strict_model && x->req.has_model && !x->req.model_matches) {
        api_error_set(&e, 404, "not_found_error", "model_not_found", "model",
                      "the model does not exist; this server serves '%s'",
                      s->cfg.served_model_name);
        return respond_error(x, &e);
    }
    if (x->req.n_prompts > sizeof(x->ereqs) / sizeof(x->ereqs[0])) {
        api_error_set(&e, 400, "invalid_request_error", "too_many_prompts", "prompt",
                      "too many prompts");
        return respond_error(x, &e);
    }
    if (server_request_tokenize(&x->req, s->tok, &s->limits, &e) != 0) {
        return respond_error(x, &e);
    }
    x->is_stream = x->req.stream;
    completion_meta_init(&x->meta, s->cfg.served_model_name, s->fingerprint);
    struct completion_builder_config bc = {
        .n_prompts = (int32_t)x->req.n_prompts,
        .n = x->req.n,
        /* Beam search: the engine ranks the beams itself and reports only the n best. */
        .best_of = x->req.use_beam_search ? x->req.n : x->req.best_of,
        .logprobs = x->req.sampling.logprobs,
        .candidates = x->req.sampling.candidates,
        .echo = x->req.echo,
        .stream = x->req.stream,
        .include_usage = x->req.include_usage,
        .eos_id = tokenizer_eos_id(s->tok),
        .drop_generated = x->req.max_tokens == 0,
        .token_text = token_text,
        .token_text_ctx = s->tok,
    };
    x->builder = completion_builder_create(&x->meta, &bc);
    if (x->builder == NULL) {
        return respond_errorf(x, 500, "server_error", "out_of_memory", "out of memory");
    }
    for (size_t i = 0; i < x->req.n_prompts; i++) {
        const struct prompt *p = &x->req.prompts[i];
        char *decoded = NULL;
        size_t dlen = 0;
        if (x->req.echo && p->text == NULL) {
            decoded = tokenizer_decode(s->tok, p->ids, p->n_ids, &dlen);
            if (decoded == NULL) {
                return respond_errorf(x, 500, "server_error", "out_of_memory", "out of memory");
            }
        }
        const char *text = p->text != NULL ? p->text : decoded != NULL ? decoded : "";
        size_t tlen = p->text != NULL ? p->text_len : dlen;
        int rc = completion_builder_set_prompt(x->builder, (int32_t)i, text, x->req.echo ? tlen : 0,
                                               p->ids, p->n_ids);
        free(decoded);
        if (rc != 0) {
            return respond_errorf(x, 500, "server_error", "out_of_memory", "out of memory");
        }
    }
    /* The registry before submitting: the ticker must see a connection the moment it can be
     * suspended. */
    registry_add(s, x);
    x->t_submit_us = time_now_us();
    for (size_t i = 0; i < x->req.n_prompts; i++) {
        const struct prompt *p = &x->req.prompts[i];
        struct engine_request_params ep;
        memset(&ep, 0, sizeof(ep));
        ep.prompt = p->ids;
        ep.n_prompt = p->n_ids;
        ep.sampling = x->req.sampling;
        ep.sampling.max_tokens = x->req.max_tokens; /* 0 = echo only: the engine allows it */
        ep.n = x->req.n;
        ep.best_of = x->req.best_of;
        ep.use_beam_search = x->req.use_beam_search;
        ep.length_penalty = x->req.length_penalty;
        ep.want_prompt_logprobs = x->req.echo && x->req.sampling.logprobs >= 0;
        enum engine_status st = ENGINE_OK;
        char msg[200] = "";
        struct engine_request *er =
            engine_request_create(s->engine, &ep, on_engine_notify, x, &st, msg, sizeof(msg));
        if (er != NULL) {
            st = engine_submit(s->engine, er);
            if (st != ENGINE_OK) {
                engine_request_release(er);
                er = NULL;
            }
        }
        if (er == NULL) {
            release_engine_requests(x, true);
            registry_remove(s, x);
            response_engine_error(&e, st == ENGINE_OK ? ENGINE_ERR_NOMEM : st, true, msg);
            snprintf(x->cancel_reason, sizeof(x->cancel_reason), "rejected");
            return respond_error(x, &e);
        }
        x->ereqs[x->n_ereqs++] = er;
    }
    x->counted_inflight = true;
    atomic_fetch_add(&s->n_inflight, 1);
    return completion_step(x);
}

/* ---------------------------------------------------------------------------------------- */
/* access handler                                                                           */

static enum route find_route(const struct server *s, const char *url,
                             const struct web_asset **asset) {
    for (int r = 0; r < ROUTE_WEB; r++) {
        if (strcmp(url, routes[r].path) == 0) {
            return (enum route)r;
        }
    }
    for (int i = 0; s->cfg.playground && i < web_assets_count; i++) {
        if (strcmp(url, web_assets[i].path) == 0) {
            *asset = &web_assets[i];
            return ROUTE_WEB;
        }
    }
    return ROUTE_OTHER;
}

/* A playground file: static, so it may be cached briefly; the policy headers keep the page to
 * its own scripts and this server (its API calls go to the same origin). */
static enum MHD_Result handle_web(struct conn *x) {
    const struct web_asset *a = x->asset;
    struct MHD_Response *r =
        MHD_create_response_from_buffer(a->len, (void *)a->data, MHD_RESPMEM_PERSISTENT);
    if (r == NULL) {
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", a->content_type);
    MHD_add_response_header(r, "Cache-Control", "no-cache");
    MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
    MHD_add_response_header(r, "Referrer-Policy", "no-referrer");
    MHD_add_response_header(r, "Content-Security-Policy",
                            "default-src 'none'; script-src 'self'; style-src 'self'; "
                            "connect-src 'self'; img-src 'self' data:; base-uri 'none'; "
                            "form-action 'none'; frame-ancestors 'none'");
    return queue(x, 200, r);
}

struct header_counts {
    int content_length;
    int transfer_encoding;
    size_t bytes; /* request line + headers as sent (approximately: name: value CRLF) */
};

static enum MHD_Result count_headers(void *cls, enum MHD_ValueKind kind, const char *key,
                                     const char *value) {
    (void)kind;
    (void)value;
    struct header_counts *h = cls;
    h->bytes += strlen(key) + (value != NULL ? strlen(value) : 0) + 4;
    if (strcasecmp(key, "Content-Length") == 0) {
        h->content_length++;
    } else if (strcasecmp(key, "Transfer-Encoding") == 0) {
        h->transfer_encoding++;
    }
    return MHD_YES;
}

static bool origin_allowed(const struct server *s, const char *origin) {
    if (origin == NULL) {
        return false;
    }
    for (int i = 0; i < s->cfg.n_cors_origins; i++) {
        if (strcmp(origin, s->cfg.cors_origins[i]) == 0) {
            return true;
        }
    }
    return false;
}

static bool is_loopback_name(const char *h, size_t len) {
    return (len == 9 && strncasecmp(h, "localhost", 9) == 0) ||
           (len >= 4 && strncmp(h, "127.", 4) == 0 && strspn(h, "0123456789.") == len) ||
           (len == 5 && strncmp(h, "[::1]", 5) == 0) || (len == 3 && strncmp(h, "::1", 3) == 0);
}

/* The Host header names this loopback server (any port), or an --allowed-hosts entry. */
static bool host_allowed(const struct server *s, const char *host) {
    if (!s->check_host || host == NULL) {
        return true; /* HTTP/1.0 without Host: nothing a browser would send */
    }
    size_t len = strlen(host);
    const char *colon = strrchr(host, ':');
    if (colon != NULL && (host[0] != '[' || (colon > host && colon[-1] == ']'))) {
        len = (size_t)(colon - host); /* strip ":port" (not the colons of a bare IPv6) */
    }
    if (is_loopback_name(host, len)) {
        return true;
    }
    for (int i = 0; i < s->cfg.n_allowed_hosts; i++) {
        if (strlen(s->cfg.allowed_hosts[i]) == len &&
            strncasecmp(host, s->cfg.allowed_hosts[i], len) == 0) {
            return true;
        }
    }
    return false;
}

static enum MHD_Result handle_preflight(struct conn *x) {
    struct MHD_Response *r = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
    if (r == NULL) {
        return MHD_NO;
    }
    if (x->cors_origin != NULL) {
        MHD_add_response_header(r, "Access-Control-Allow-Methods", "GET, POST, OPTIONS");
        MHD_add_response_header(r, "Access-Control-Allow-Headers", "Authorization, Content-Type");
        MHD_add_response_header(r, "Access-Control-Max-Age", "600");
    }
    MHD_add_response_header(r, "Allow",
                            routes[x->route].is_post ? "POST, OPTIONS" : "GET, HEAD, OPTIONS");
    return queue(x, 204, r);
}

/* First call for a request: headers only. May answer at once (errors, GET routes). */
static enum MHD_Result on_headers(struct conn *x, const char *method, const char *url) {
    struct server *s = x->srv;
    struct MHD_Connection *c = x->mhd;
    const char *origin = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Origin");
    if (origin_allowed(s, origin)) {
        x->cors_origin = origin;
    }
    struct header_counts h = {0, 0, strlen(method) + strlen(url) + 12};
    MHD_get_connection_values(c, MHD_HEADER_KIND, count_headers, &h);
    if (h.bytes > s->cfg.max_header_bytes) {
        return respond_errorf(x, 431, "invalid_request_error", "headers_too_large",
                              "request headers are larger than %zu bytes", s->cfg.max_header_bytes);
    }
    if (!host_allowed(s, MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Host"))) {
        return respond_errorf(x, 403, "permission_error", "host_not_allowed",
                              "the Host header does not name this server (see --allowed-hosts)");
    }
    if (x->route == ROUTE_OTHER) {
        return respond_errorf(x, 404, "not_found_error", "not_found", "no such route");
    }
    if (strcmp(method, "OPTIONS") == 0) {
        return handle_preflight(x);
    }
    bool is_get = strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;
    bool is_post = strcmp(method, "POST") == 0;
    if (routes[x->route].is_post ? !is_post : !is_get) {
        return respond_errorf(x, 405, "invalid_request_error", "method_not_allowed",
                              "method not allowed on this route");
    }
    bool needs_key =
        !routes[x->route].is_public && !(x->route == ROUTE_METRICS && s->cfg.metrics_public);
    if (needs_key &&
        !auth_check(s->keys, MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization"))) {
        return respond_errorf(x, 401, "authentication_error", "invalid_api_key",
                              "a valid API key is required (Authorization: Bearer KEY)");
    }
    if (!routes[x->route].is_post) {
        /* GET routes answer on the next call: a response queued on this first call makes
         * libmicrohttpd close the connection (the request is not complete yet), which would
         * cost keep-alive clients (wrk, ab -k) a reconnect per request. */
        return MHD_YES;
    }
    /* POST routes: framing checks before reading a byte of the body. */
    if (h.content_length > 1 || (h.content_length > 0 && h.transfer_encoding > 0)) {
        return respond_errorf(x, 400, "invalid_request_error", "invalid_framing",
                              "conflicting Content-Length / Transfer-Encoding headers");
    }
    const char *ct = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Type");
    if (ct != NULL && strncasecmp(ct, "multipart/", 10) == 0) {
        return respond_errorf(x, 415, "invalid_request_error", "unsupported_media_type",
                              "send the request as a JSON body");
    }
    const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
    if (cl != NULL) {
        char *end = NULL;
        errno = 0;
        unsigned long long n = strtoull(cl, &end, 10);
        if (errno != 0 || end == cl || n > s->cfg.max_body_bytes) {
            return respond_errorf(x, 413, "invalid_request_error", "body_too_large",
                                  "the request body is larger than %zu bytes",
                                  s->cfg.max_body_bytes);
        }
    }
    if (!atomic_load(&s->ready) || atomic_load(&s->draining) || atomic_load(&s->stopping)) {
        return respond_unavailable(x);
    }
    return MHD_YES;
}

static enum MHD_Result on_access(void *cls, struct MHD_Connection *c, const char *url,
                                 const char *method, const char *version, const char *upload_data,
                                 size_t *upload_data_size, void **con_cls) {
    (void)version;
    struct server *s = cls;
    struct conn *x = *con_cls;
    if (x == NULL) {
        x = conn_create(s, c);
        if (x == NULL) {
            return MHD_NO;
        }
        *con_cls = x;
        x->route = find_route(s, url, &x->asset);
        snprintf(x->method, sizeof(x->method), "%s", method);
        return on_headers(x, method, url);
    }
    if (*upload_data_size > 0) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        if (x->responded) {
            return MHD_YES; /* discard the body of a request already answered */
        }
        x->body_seen += n;
        if (x->body_too_large || x->body.len + n > s->cfg.max_body_bytes) {
            /* Chunked upload beyond the cap: stop storing it and answer 413 at its end; a
             * client that goes on for much longer is dropped. */
            x->body_too_large = true;
            sbuf_finish(&x->body);
            return x->body_seen > 4 * s->cfg.max_body_bytes ? MHD_NO : MHD_YES;
        }
        sbuf_append(&x->body, upload_data, n);
        return x->body.failed ? MHD_NO : MHD_YES;
    }
    if (x->responded) {
        return MHD_YES;
    }
    if (x->builder != NULL) {
        return completion_step(x); /* resumed while waiting (a completion, or an admission) */
    }
    if (x->body_too_large) {
        return respond_errorf(x, 413, "invalid_request_error", "body_too_large",
                              "the request body is larger than %zu bytes", s->cfg.max_body_bytes);
    }
    switch (x->route) {
    case ROUTE_COMPLETIONS:
        return handle_completion(x);
    case ROUTE_TOKENIZE:
        return handle_tokenize(x);
    case ROUTE_DETOKENIZE:
        return handle_detokenize(x);
    case ROUTE_HEALTH:
        return handle_health(x);
    case ROUTE_LIVEZ: {
        static const char alive[] = "{\"status\":\"alive\"}";
        return respond_bytes(x, 200, "application/json; charset=utf-8", alive, sizeof(alive) - 1);
    }
    case ROUTE_MODELS:
        return handle_models(x);
    case ROUTE_METRICS:
        return handle_metrics(x);
    case ROUTE_WEB:
        return handle_web(x);
    default:
        return respond_errorf(x, 500, "server_error", "internal_error", "unexpected state");
    }
}

static void access_log(struct conn *x, enum MHD_RequestTerminationCode toe) {
    struct sbuf b;
    sbuf_init(&b);
    int64_t now = time_now_us();
    int64_t pt = 0, ct = 0;
    if (x->builder != NULL) {
        completion_builder_usage(x->builder, &pt, &ct);
    }
    sbuf_printf(&b, "{\"ts\":%lld,\"id\":", (long long)time_wall_s());
    sbuf_json_cstr(&b, x->builder != NULL ? x->meta.id : NULL);
    sbuf_printf(&b, ",\"method\":\"%s\",\"route\":\"%s\",\"status\":%d", x->method,
                routes[x->route].path, x->status);
    if (x->route == ROUTE_COMPLETIONS && x->builder != NULL) {
        sbuf_printf(&b, ",\"stream\":%s,\"prompt_tokens\":%lld,\"completion_tokens\":%lld",
                    x->is_stream ? "true" : "false", (long long)pt, (long long)ct);
        if (x->t_first_event_us > 0 && x->t_submit_us > 0) {
            sbuf_printf(&b, ",\"queue_ms\":%.1f", (x->t_first_event_us - x->t_submit_us) / 1e3);
        }
        if (x->t_first_token_us > 0) {
            sbuf_printf(&b, ",\"ttft_ms\":%.1f", (x->t_first_token_us - x->t_start_us) / 1e3);
        }
        sbuf_puts(&b, ",\"finish\":");
        sbuf_json_cstr(&b, x->has_error ? (x->error.code != NULL ? x->error.code : "error")
                                        : completion_builder_finish_reason(x->builder));
    }
    if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK) {
        sbuf_puts(&b, ",\"cancel\":");
        sbuf_json_cstr(&b, x->cancel_reason[0] != '\0'                     ? x->cancel_reason
                           : toe == MHD_REQUEST_TERMINATED_TIMEOUT_REACHED ? "timeout"
                           : toe == MHD_REQUEST_TERMINATED_DAEMON_SHUTDOWN ? "shutdown"
                           : toe == MHD_REQUEST_TERMINATED_CLIENT_ABORT    ? "client_abort"
                                                                           : "connection_error");
    }
    sbuf_printf(&b, ",\"total_ms\":%.1f}\n", (now - x->t_start_us) / 1e3);
    if (!b.failed) {
        fwrite(b.data, 1, b.len, stdout);
        fflush(stdout);
    }
    sbuf_finish(&b);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
    (void)c;
    struct server *s = cls;
    struct conn *x = *con_cls;
    if (x == NULL) {
        return;
    }
    *con_cls = NULL;
    registry_remove(s, x);
    /* Not a clean end (client gone, write failed, timeout, shutdown): the engine drops the
     * sequences at its next step. Release guarantees no notify after it returns. */
    bool cancel = toe != MHD_REQUEST_TERMINATED_COMPLETED_OK || x->has_error ||
                  (x->builder != NULL && !completion_builder_is_done(x->builder));
    release_engine_requests(x, cancel);
    mark_not_inflight(x);
    int st = x->status > 0 && x->status < MAX_STATUS ? x->status : 0;
    atomic_fetch_add(&s->http_counts[x->route][st], 1);
    if (s->cfg.access_log) {
        access_log(x, toe);
    }
    conn_unref(x);
}

static void mhd_logger(void *cls, const char *fmt, va_list ap) {
    (void)cls;
    char msg[512];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    size_t len = strlen(msg);
    while (len > 0 && (msg[len - 1] == '\n' || msg[len - 1] == '\r')) {
        msg[--len] = '\0';
    }
    log_warn("libmicrohttpd: %s", msg);
}

/* ---------------------------------------------------------------------------------------- */
/* lifecycle                                                                                */

struct server *server_create(const struct server_config *cfg, char *err, size_t err_size) {
    struct server *s = calloc(1, sizeof(*s));
    struct addrinfo *ai = NULL;
    if (s == NULL) {
        snprintf(err, err_size, "out of memory");
        return NULL;
    }
    s->cfg = *cfg;
    s->t_created_s = time_wall_s();
    snprintf(s->fingerprint, sizeof(s->fingerprint), "fp_gptd_%s", GPTD_VERSION);
    server_request_limits_init_default(&s->limits);
    pthread_mutex_init(&s->reg_mu, NULL);
    s->keys = auth_keys_create(cfg->api_keys, cfg->n_api_keys);
    if (s->keys == NULL) {
        snprintf(err, err_size, "out of memory");
        goto fail;
    }

    struct addrinfo hints;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    char port[16];
    snprintf(port, sizeof(port), "%d", cfg->port);
    int gai = getaddrinfo(cfg->host, port, &hints, &ai);
    if (gai != 0 || ai == NULL) {
        snprintf(err, err_size, "cannot resolve --host %s: %s", cfg->host, gai_strerror(gai));
        goto fail;
    }
    s->check_host = is_loopback_name(cfg->host, strlen(cfg->host));
    unsigned int flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL |
                         MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    if (ai->ai_family == AF_INET6) {
        flags |= MHD_USE_IPv6;
    }
    s->mhd = MHD_start_daemon(
        flags, (uint16_t)cfg->port, NULL, NULL, on_access, s, MHD_OPTION_EXTERNAL_LOGGER,
        mhd_logger, NULL, MHD_OPTION_SOCK_ADDR, ai->ai_addr, MHD_OPTION_THREAD_POOL_SIZE,
        (unsigned int)cfg->n_threads, MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned int)cfg->connection_timeout_s, MHD_OPTION_CONNECTION_LIMIT,
        (unsigned int)cfg->connection_limit, MHD_OPTION_PER_IP_CONNECTION_LIMIT,
        (unsigned int)cfg->per_ip_connection_limit, MHD_OPTION_CONNECTION_MEMORY_LIMIT,
        cfg->connection_memory_bytes, MHD_OPTION_LISTEN_BACKLOG_SIZE, 512u,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, s, MHD_OPTION_END);
    if (s->mhd == NULL) {
        snprintf(err, err_size, "cannot listen on %s:%d (address in use or not permitted?)",
                 cfg->host, cfg->port);
        goto fail;
    }
    freeaddrinfo(ai);
    ai = NULL;
    s->port = cfg->port;
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->mhd, MHD_DAEMON_INFO_BIND_PORT);
    if (di != NULL && di->port != 0) {
        s->port = di->port;
    }
    if (pthread_create(&s->ticker, NULL, ticker_main, s) != 0) {
        snprintf(err, err_size, "cannot start the ticker thread");
        goto fail;
    }
    s->has_ticker = true;
    return s;

fail:
    if (ai != NULL) {
        freeaddrinfo(ai);
    }
    server_destroy(s);
    return NULL;
}

int server_port(const struct server *s) {
    return s->port;
}

void server_set_engine(struct server *s, struct engine *engine, struct tokenizer *tok,
                       const struct model_config *model_cfg) {
    s->engine = engine;
    s->tok = tok;
    s->model = *model_cfg;
    s->limits.n_vocab = tokenizer_n_vocab(tok);
    if (model_cfg->n_vocab > 0 && model_cfg->n_vocab < s->limits.n_vocab) {
        s->limits.n_vocab = model_cfg->n_vocab; /* ids the model has no embedding for */
    }
    s->limits.n_ctx = model_cfg->n_ctx;
    s->limits.max_tokens_cap = s->cfg.max_tokens_cap;
    s->limits.max_n = s->cfg.max_n;
    s->limits.max_prompts = s->cfg.max_prompts;
    s->limits.max_token_bytes = tokenizer_max_text_per_token(tok);
    atomic_store(&s->ready, true);
}

void server_begin_drain(struct server *s) {
    atomic_store(&s->draining, true);
}

int server_n_inflight(const struct server *s) {
    return atomic_load(&((struct server *)s)->n_inflight);
}

void server_stop(struct server *s) {
    if (s == NULL || s->mhd == NULL) {
        return;
    }
    atomic_store(&s->draining, true);
    atomic_store(&s->stopping, true);
    /* Wake every waiting connection: with `stopping` set none suspends again; streams write
     * their shutdown error and [DONE], the rest answer 503. Then give them a moment to flush
     * before libmicrohttpd closes the sockets (it must not be stopped with connections still
     * suspended). */
    int64_t deadline = time_now_us() + 2 * 1000 * 1000;
    for (;;) {
        pthread_mutex_lock(&s->reg_mu);
        for (struct conn *x = s->reg_head; x != NULL; x = x->reg_next) {
            pthread_mutex_lock(&x->mu);
            if (x->suspended) {
                x->suspended = false;
                MHD_resume_connection(x->mhd);
            }
            pthread_mutex_unlock(&x->mu);
        }
        int n = s->n_registered;
        pthread_mutex_unlock(&s->reg_mu);
        if (n == 0 || time_now_us() > deadline) {
            break;
        }
        struct timespec ts = {.tv_sec = 0, .tv_nsec = 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    if (s->has_ticker) {
        atomic_store(&s->ticker_stop, true);
        pthread_join(s->ticker, NULL);
        s->has_ticker = false;
    }
    MHD_stop_daemon(s->mhd);
    s->mhd = NULL;
}

void server_destroy(struct server *s) {
    if (s == NULL) {
        return;
    }
    server_stop(s);
    if (s->has_ticker) {
        atomic_store(&s->ticker_stop, true);
        pthread_join(s->ticker, NULL);
    }
    auth_keys_destroy(s->keys);
    pthread_mutex_destroy(&s->reg_mu);
    free(s);
}
