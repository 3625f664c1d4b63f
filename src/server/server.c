/*
 * server.c: the libmicrohttpd daemon: routing and HTTP framing, auth, CORS, limits, the
 * per-request state and its suspend/resume protocol, the simple routes, the access log and
 * shutdown (see server.h). The completion flow is in completion_flow.c, /metrics in
 * prometheus.c.
 *
 * DESIGN
 * Threads: libmicrohttpd's internal pool (epoll, n_threads) calls on_access, the stream reader,
 * and on_completed; the engine thread calls conn_on_engine_notify; our ticker thread wakes
 * suspended connections for SSE pings and notices dead clients. No HTTP thread ever waits for the
 * engine: when a connection has nothing to send it is suspended, and whoever brings news resumes
 * it.
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
#include <malloc.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
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
#include "server_internal.h"
#include "version.h"

const struct route_info server_routes[N_ROUTES] = {
    [ROUTE_COMPLETIONS] = {"/v1/completions", true, false},
    [ROUTE_MODELS] = {"/v1/models", false, false},
    [ROUTE_HEALTH] = {"/health", false, true},
    [ROUTE_LIVEZ] = {"/livez", false, true},
    [ROUTE_METRICS] = {"/metrics", false, false},
    [ROUTE_TOKENIZE] = {"/tokenize", true, false},
    [ROUTE_DETOKENIZE] = {"/detokenize", true, false},
    [ROUTE_CHAT] = {"/v1/chat/completions", true, false},
    [ROUTE_APPLY_TEMPLATE] = {"/apply-template", true, false},
    [ROUTE_WEB] = {"web", false, true},
    [ROUTE_OTHER] = {"other", false, false},
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

void conn_unref(struct conn *x) {
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

void server_registry_add(struct server *s, struct conn *x) {
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

void server_registry_remove(struct server *s, struct conn *x) {
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

void conn_on_engine_notify(void *ctx) {
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

void conn_clear_news(struct conn *x) {
    pthread_mutex_lock(&x->mu);
    x->has_news = false;
    pthread_mutex_unlock(&x->mu);
}

/* Suspends unless news arrived since clear_news (or the server is stopping, or the client is
 * gone). Returns true when suspended: the caller must return at once. */
bool conn_try_suspend(struct conn *x) {
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

bool conn_is_gone(struct conn *x) {
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
    int64_t t_idle_since_us = 0;
    bool is_trimmed = true;
    while (!atomic_load(&s->ticker_stop)) {
        struct timespec ts = {.tv_sec = 0, .tv_nsec = (long)tick_us * 1000};
        nanosleep(&ts, NULL);
        int64_t now = time_now_us();
        pthread_mutex_lock(&s->reg_mu);
        bool is_idle = s->n_registered == 0 && atomic_load(&s->n_inflight) == 0;
        pthread_mutex_unlock(&s->reg_mu);
        /* A burst (thousands of streams, each with its event ring and buffers, freed on other
         * threads than allocated them) leaves glibc's per-thread arenas holding freed pages the
         * process no longer needs. Once nothing has been in flight for a tick, hand them back
         * to the system, once per idle period, so RSS returns to its baseline after load
         * instead of staying at the burst's high-water mark. */
        if (!is_idle) {
            t_idle_since_us = 0;
            is_trimmed = false;
        } else if (t_idle_since_us == 0) {
            t_idle_since_us = now;
        } else if (!is_trimmed && now - t_idle_since_us >= tick_us) {
            malloc_trim(0);
            is_trimmed = true;
        }
        conn_guard_tick(&s->guard, now);
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

enum MHD_Result conn_queue(struct conn *x, int status, struct MHD_Response *r) {
    x->status = status;
    x->responded = true;
    add_cors(x, r);
    enum MHD_Result rc = MHD_queue_response(x->mhd, (unsigned int)status, r);
    MHD_destroy_response(r);
    return rc;
}

enum MHD_Result conn_respond_bytes(struct conn *x, int status, const char *content_type,
                                   const char *data, size_t len) {
    struct MHD_Response *r =
        MHD_create_response_from_buffer(len, (void *)data, MHD_RESPMEM_MUST_COPY);
    if (r == NULL) {
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", content_type);
    return conn_queue(x, status, r);
}

enum MHD_Result conn_respond_json(struct conn *x, int status, const struct sbuf *b) {
    if (b->failed) {
        static const char oom[] = "{\"error\":{\"message\":\"out of memory\",\"type\":"
                                  "\"server_error\",\"param\":null,\"code\":\"out_of_memory\"}}";
        return conn_respond_bytes(x, 500, "application/json; charset=utf-8", oom, sizeof(oom) - 1);
    }
    return conn_respond_bytes(x, status, "application/json; charset=utf-8", b->data, b->len);
}

/* An OpenAI error object with the right extra headers (Allow, WWW-Authenticate, Retry-After). */
enum MHD_Result conn_respond_error(struct conn *x, const struct api_error *e) {
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
        MHD_add_response_header(
            r, "Allow", server_routes[x->route].is_post ? "POST, OPTIONS" : "GET, HEAD, OPTIONS");
    } else if (e->status == 503) {
        MHD_add_response_header(r, "Retry-After", "1");
    }
    return conn_queue(x, e->status, r);
}

enum MHD_Result conn_respond_errorf(struct conn *x, int status, const char *type, const char *code,
                                    const char *fmt, ...) {
    struct api_error e;
    e.status = status;
    e.type = type;
    e.code = code;
    e.param = NULL;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e.message, sizeof(e.message), fmt, ap);
    va_end(ap);
    return conn_respond_error(x, &e);
}

enum MHD_Result conn_respond_unavailable(struct conn *x) {
    if (atomic_load(&x->srv->draining) || atomic_load(&x->srv->stopping)) {
        return conn_respond_errorf(x, 503, "unavailable_error", "draining",
                                   "the server is shutting down");
    }
    return conn_respond_errorf(x, 503, "unavailable_error", "loading", "the model is loading");
}

/* ---------------------------------------------------------------------------------------- */
/* simple routes                                                                            */

static enum MHD_Result handle_health(struct conn *x) {
    struct server *s = x->srv;
    if (!atomic_load(&s->ready) || atomic_load(&s->draining) || atomic_load(&s->stopping)) {
        return conn_respond_unavailable(x);
    }
    static const char ok[] = "{\"status\":\"ok\"}";
    return conn_respond_bytes(x, 200, "application/json; charset=utf-8", ok, sizeof(ok) - 1);
}

static enum MHD_Result handle_models(struct conn *x) {
    struct server *s = x->srv;
    if (!atomic_load(&s->ready)) {
        return conn_respond_unavailable(x);
    }
    struct sbuf b;
    sbuf_init(&b);
    sbuf_puts(&b, "{\"object\":\"list\",\"data\":[{\"id\":");
    sbuf_json_cstr(&b, s->cfg.served_model_name);
    sbuf_printf(&b, ",\"object\":\"model\",\"created\":%lld,\"owned_by\":\"gptd\",\"root\":",
                (long long)s->t_created_s);
    sbuf_json_cstr(&b, s->cfg.served_model_name);
    sbuf_printf(&b, ",\"parent\":null,\"max_model_len\":%d,\"weights\":", s->model.n_ctx);
    sbuf_json_cstr(&b, s->weights_name);
    sbuf_puts(&b, ",\"kv_cache_dtype\":");
    sbuf_json_cstr(&b, s->kv_dtype_name);
    sbuf_puts(&b, "}]}");
    enum MHD_Result rc = conn_respond_json(x, 200, &b);
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
        return conn_respond_error(x, &e);
    }
    int32_t *ids = NULL;
    size_t n = 0;
    char msg[128];
    enum MHD_Result rc;
    int flags = TOKENIZER_PARSE_SPECIAL | (add_special ? TOKENIZER_ADD_SPECIAL : 0);
    if (tokenizer_encode(s->tok, text, len, flags, &ids, &n, msg, sizeof(msg)) != 0) {
        rc = conn_respond_errorf(x, 400, "invalid_request_error", "invalid_value",
                                 "the prompt could not be tokenized");
    } else {
        struct sbuf b;
        sbuf_init(&b);
        sbuf_puts(&b, "{\"tokens\":[");
        for (size_t i = 0; i < n; i++) {
            sbuf_printf(&b, i > 0 ? ",%d" : "%d", ids[i]);
        }
        sbuf_printf(&b, "],\"count\":%zu,\"max_model_len\":%d}", n, s->model.n_ctx);
        rc = conn_respond_json(x, 200, &b);
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
        return conn_respond_error(x, &e);
    }
    size_t len = 0;
    char *text = tokenizer_decode(s->tok, ids, n, &len);
    free(ids);
    if (text == NULL) {
        return conn_respond_errorf(x, 500, "server_error", "out_of_memory", "out of memory");
    }
    struct sbuf b;
    sbuf_init(&b);
    sbuf_puts(&b, "{\"prompt\":");
    sbuf_json_string(&b, text, len);
    sbuf_puts(&b, "}");
    free(text);
    enum MHD_Result rc = conn_respond_json(x, 200, &b);
    sbuf_finish(&b);
    return rc;
}

/* ---------------------------------------------------------------------------------------- */
/* access handler                                                                           */

static enum route find_route(const struct server *s, const char *url,
                             const struct web_asset **asset) {
    for (int r = 0; r < ROUTE_WEB; r++) {
        if (strcmp(url, server_routes[r].path) == 0) {
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
    return conn_queue(x, 200, r);
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
    MHD_add_response_header(
        r, "Allow", server_routes[x->route].is_post ? "POST, OPTIONS" : "GET, HEAD, OPTIONS");
    return conn_queue(x, 204, r);
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
        return conn_respond_errorf(x, 431, "invalid_request_error", "headers_too_large",
                                   "request headers are larger than %zu bytes",
                                   s->cfg.max_header_bytes);
    }
    if (!host_allowed(s, MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Host"))) {
        return conn_respond_errorf(
            x, 403, "permission_error", "host_not_allowed",
            "the Host header does not name this server (see --allowed-hosts)");
    }
    if (x->route == ROUTE_OTHER) {
        return conn_respond_errorf(x, 404, "not_found_error", "not_found", "no such route");
    }
    if (strcmp(method, "OPTIONS") == 0) {
        return handle_preflight(x);
    }
    bool is_get = strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;
    bool is_post = strcmp(method, "POST") == 0;
    if (server_routes[x->route].is_post ? !is_post : !is_get) {
        return conn_respond_errorf(x, 405, "invalid_request_error", "method_not_allowed",
                                   "method not allowed on this route");
    }
    bool needs_key =
        !server_routes[x->route].is_public && !(x->route == ROUTE_METRICS && s->cfg.metrics_public);
    if (needs_key &&
        !auth_check(s->keys, MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization"))) {
        return conn_respond_errorf(x, 401, "authentication_error", "invalid_api_key",
                                   "a valid API key is required (Authorization: Bearer KEY)");
    }
    if (!server_routes[x->route].is_post) {
        /* GET routes answer on the next call: a response queued on this first call makes
         * libmicrohttpd close the connection (the request is not complete yet), which would
         * cost keep-alive clients (wrk, ab -k) a reconnect per request. */
        return MHD_YES;
    }
    /* POST routes: framing checks before reading a byte of the body. */
    if (h.content_length > 1 || (h.content_length > 0 && h.transfer_encoding > 0)) {
        return conn_respond_errorf(x, 400, "invalid_request_error", "invalid_framing",
                                   "conflicting Content-Length / Transfer-Encoding headers");
    }
    const char *ct = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Type");
    if (ct != NULL && strncasecmp(ct, "multipart/", 10) == 0) {
        return conn_respond_errorf(x, 415, "invalid_request_error", "unsupported_media_type",
                                   "send the request as a JSON body");
    }
    const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
    if (cl != NULL) {
        char *end = NULL;
        errno = 0;
        unsigned long long n = strtoull(cl, &end, 10);
        if (errno != 0 || end == cl || n > s->cfg.max_body_bytes) {
            return conn_respond_errorf(x, 413, "invalid_request_error", "body_too_large",
                                       "the request body is larger than %zu bytes",
                                       s->cfg.max_body_bytes);
        }
    }
    if (!atomic_load(&s->ready) || atomic_load(&s->draining) || atomic_load(&s->stopping)) {
        return conn_respond_unavailable(x);
    }
    return MHD_YES;
}

/* What the admin listener (--admin-port) answers: the orchestrator's probes and /metrics. */
static bool is_admin_route(enum route r) {
    return r == ROUTE_HEALTH || r == ROUTE_LIVEZ || r == ROUTE_METRICS;
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
        conn_guard_headers_done(&s->guard, c);
        x->route = find_route(s, url, &x->asset);
        if (s->admin_mhd != NULL && !is_admin_route(x->route)) {
            const union MHD_ConnectionInfo *di =
                MHD_get_connection_info(c, MHD_CONNECTION_INFO_DAEMON);
            if (di != NULL && di->daemon == s->admin_mhd) {
                x->route = ROUTE_OTHER; /* the admin listener serves the probes only: 404 */
            }
        }
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
    if (!x->body_complete) { /* once: later calls are resumes, on the per-token path */
        x->body_complete = true;
        conn_guard_body_done(&s->guard, c);
    }
    if (x->responded) {
        return MHD_YES;
    }
    if (x->builder != NULL) {
        return completion_flow_step(x); /* resumed while waiting (a completion, or an admission) */
    }
    if (x->body_too_large) {
        return conn_respond_errorf(x, 413, "invalid_request_error", "body_too_large",
                                   "the request body is larger than %zu bytes",
                                   s->cfg.max_body_bytes);
    }
    switch (x->route) {
    case ROUTE_COMPLETIONS:
        return completion_flow_text(x);
    case ROUTE_CHAT:
        return completion_flow_chat(x);
    case ROUTE_APPLY_TEMPLATE:
        return completion_flow_apply_template(x);
    case ROUTE_TOKENIZE:
        return handle_tokenize(x);
    case ROUTE_DETOKENIZE:
        return handle_detokenize(x);
    case ROUTE_HEALTH:
        return handle_health(x);
    case ROUTE_LIVEZ: {
        static const char alive[] = "{\"status\":\"alive\"}";
        return conn_respond_bytes(x, 200, "application/json; charset=utf-8", alive,
                                  sizeof(alive) - 1);
    }
    case ROUTE_MODELS:
        return handle_models(x);
    case ROUTE_METRICS:
        return prometheus_respond(x);
    case ROUTE_WEB:
        return handle_web(x);
    default:
        return conn_respond_errorf(x, 500, "server_error", "internal_error", "unexpected state");
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
                server_routes[x->route].path, x->status);
    if ((x->route == ROUTE_COMPLETIONS || x->route == ROUTE_CHAT) && x->builder != NULL) {
        sbuf_printf(&b,
                    ",\"stream\":%s,\"prompt_tokens\":%lld,\"cached_tokens\":%lld,"
                    "\"completion_tokens\":%lld",
                    x->is_stream ? "true" : "false", (long long)pt,
                    (long long)completion_builder_cached_tokens(x->builder), (long long)ct);
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
    struct server *s = cls;
    struct conn *x = *con_cls;
    conn_guard_request_done(&s->guard, c); /* a kept-alive connection waits for headers again */
    if (x == NULL) {
        return;
    }
    *con_cls = NULL;
    server_registry_remove(s, x);
    /* Not a clean end (client gone, write failed, timeout, shutdown): the engine drops the
     * sequences at its next step. Release guarantees no notify after it returns. */
    bool cancel = toe != MHD_REQUEST_TERMINATED_COMPLETED_OK || x->has_error ||
                  (x->builder != NULL && !completion_builder_is_done(x->builder));
    completion_flow_release(x, cancel);
    completion_flow_mark_done(x);
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

/* The port of an IPv4 or IPv6 address (--admin-port listens on --host's address too). */
static void set_port(struct sockaddr *addr, int port) {
    if (addr->sa_family == AF_INET6) {
        ((struct sockaddr_in6 *)(void *)addr)->sin6_port = htons((uint16_t)port);
    } else {
        ((struct sockaddr_in *)(void *)addr)->sin_port = htons((uint16_t)port);
    }
}

struct server *server_create(const struct server_config *cfg, char *err, size_t err_size) {
    struct server *s = calloc(1, sizeof(*s));
    struct addrinfo *ai = NULL;
    if (s == NULL) {
        snprintf(err, err_size, "out of memory");
        return NULL;
    }
    s->cfg = *cfg;
    s->t_created_s = time_wall_s();
    server_set_model_info(s, "f32", "f32"); /* until the caller says otherwise */
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
    if (conn_guard_init(&s->guard, cfg) != 0) {
        snprintf(err, err_size, "out of memory");
        goto fail;
    }
    log_info("file descriptors: soft limit %lld%s, hard %lld; connections: %d in all, %d per "
             "client address; headers within %d s, bodies within %d s",
             s->guard.fd_soft, s->guard.fd_soft_before != s->guard.fd_soft ? " (raised)" : "",
             s->guard.fd_hard, s->guard.limit, s->guard.per_client_limit, cfg->header_timeout_s,
             cfg->body_timeout_s);
    unsigned int flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL |
                         MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    if (ai->ai_family == AF_INET6) {
        flags |= MHD_USE_IPv6;
    }
    /* The guard enforces the limits (and counts refusals): libmicrohttpd's own global limit,
     * split evenly over its threads, is set so that no thread's share binds before it. */
    s->mhd = MHD_start_daemon(
        flags, (uint16_t)cfg->port, conn_guard_accept, s, on_access, s, MHD_OPTION_EXTERNAL_LOGGER,
        mhd_logger, NULL, MHD_OPTION_SOCK_ADDR, ai->ai_addr, MHD_OPTION_THREAD_POOL_SIZE,
        (unsigned int)cfg->n_threads, MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned int)cfg->connection_timeout_s, MHD_OPTION_CONNECTION_LIMIT,
        (unsigned int)s->guard.limit * (unsigned int)cfg->n_threads,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, cfg->connection_memory_bytes,
        MHD_OPTION_LISTEN_BACKLOG_SIZE, 512u, MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
        MHD_OPTION_NOTIFY_CONNECTION, conn_guard_notify, s, MHD_OPTION_END);
    if (s->mhd == NULL) {
        snprintf(err, err_size, "cannot listen on %s:%d (address in use or not permitted?)",
                 cfg->host, cfg->port);
        goto fail;
    }
    if (cfg->admin_port >= 0) {
        /* The orchestrator's probes on their own listener: a table full of slow clients on the
         * main port cannot keep /livez from answering. One thread, a small table. */
        set_port(ai->ai_addr, cfg->admin_port);
        s->admin_mhd = MHD_start_daemon(
            (flags & ~(unsigned int)MHD_ALLOW_SUSPEND_RESUME), (uint16_t)cfg->admin_port, NULL,
            NULL, on_access, s, MHD_OPTION_EXTERNAL_LOGGER, mhd_logger, NULL, MHD_OPTION_SOCK_ADDR,
            ai->ai_addr, MHD_OPTION_CONNECTION_TIMEOUT, 10u, MHD_OPTION_CONNECTION_LIMIT, 64u,
            MHD_OPTION_CONNECTION_MEMORY_LIMIT, cfg->connection_memory_bytes,
            MHD_OPTION_NOTIFY_COMPLETED, on_completed, s, MHD_OPTION_END);
        if (s->admin_mhd == NULL) {
            snprintf(err, err_size,
                     "cannot listen on %s:%d for --admin-port (address in use or not permitted?)",
                     cfg->host, cfg->admin_port);
            goto fail;
        }
        const union MHD_DaemonInfo *ai_port =
            MHD_get_daemon_info(s->admin_mhd, MHD_DAEMON_INFO_BIND_PORT);
        s->admin_port = ai_port != NULL && ai_port->port != 0 ? ai_port->port : cfg->admin_port;
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

int server_admin_port(const struct server *s) {
    return s->admin_mhd != NULL ? s->admin_port : -1;
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

void server_set_chat(struct server *s, const struct chat *chat) {
    s->chat = chat;
}

void server_set_model_info(struct server *s, const char *weights, const char *kv_cache_dtype) {
    snprintf(s->weights_name, sizeof(s->weights_name), "%s", weights);
    snprintf(s->kv_dtype_name, sizeof(s->kv_dtype_name), "%s", kv_cache_dtype);
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
    if (s->admin_mhd != NULL) {
        MHD_stop_daemon(s->admin_mhd);
        s->admin_mhd = NULL;
    }
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
    conn_guard_destroy(&s->guard);
    auth_keys_destroy(s->keys);
    pthread_mutex_destroy(&s->reg_mu);
    free(s);
}
