/*
 * conn_guard.c: keeps slow and flooding clients from taking the connection table (issue 21).
 *
 * libmicrohttpd's own protections are an idle timeout, which every byte resets (a client that
 * trickles one header byte every few seconds holds its slot forever), and limits it enforces
 * silently. The guard adds, for the main listener:
 *   - limits checked at accept (the accept-policy callback): a global one sized from the file
 *     descriptor limit, and one per client address; a refused connection is closed at once and
 *     counted by reason;
 *   - deadlines per request phase, whatever the client trickles: the request line and headers
 *     must be complete within header_timeout_s of the connection opening (on a kept-alive
 *     connection, within the idle timeout of the previous response ending, if that is
 *     longer: the next request may take a while to come), the body within body_timeout_s of
 *     the headers. A connection past its deadline gets shutdown(2) from the server's ticker;
 *     libmicrohttpd then sees the socket end and closes it itself. The answer phase has no
 *     deadline here (streams have their own disconnect handling).
 *
 * Every connection of the main listener has a struct guard_conn (libmicrohttpd's socket
 * context), created at MHD_CONNECTION_NOTIFY_STARTED and freed at _CLOSED, which libmicrohttpd
 * calls before it closes the socket: while an entry is in the list under g->mu its fd is still
 * that connection's, so the ticker never shuts down a reused descriptor.
 */
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include <gptd/util.h>

#include "server_internal.h"

#define GUARD_BUCKETS 1024

/* Open connections of one client address. */
struct guard_addr {
    struct guard_addr *next;
    unsigned char key[16]; /* IPv4 addresses as IPv4-mapped IPv6 */
    int count;
};

enum guard_phase {
    GUARD_HEADERS = 0,
    GUARD_BODY,
    GUARD_ANSWER,
    GUARD_CLOSING, /* shut down by the ticker, waiting for libmicrohttpd's close */
};

struct guard_conn {
    struct guard_conn *prev, *next;
    int fd;
    unsigned char key[16];
    bool has_key;
    enum guard_phase phase;
    int64_t t_phase_us; /* when the phase started */
    bool kept_alive;    /* waiting for a request after an earlier one on this connection */
};

/* An address as 16 bytes (IPv4 mapped into IPv6, so both families share one table). */
static bool address_key(const struct sockaddr *addr, unsigned char key[16]) {
    if (addr == NULL) {
        return false;
    }
    if (addr->sa_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)(const void *)addr;
        memset(key, 0, 10);
        key[10] = key[11] = 0xff;
        memcpy(key + 12, &a->sin_addr, 4);
        return true;
    }
    if (addr->sa_family == AF_INET6) {
        memcpy(key, &((const struct sockaddr_in6 *)(const void *)addr)->sin6_addr, 16);
        return true;
    }
    return false;
}

static size_t address_bucket(const unsigned char key[16]) {
    uint32_t h = 2166136261u; /* FNV-1a */
    for (int i = 0; i < 16; i++) {
        h = (h ^ key[i]) * 16777619u;
    }
    return h % GUARD_BUCKETS;
}

/* The entry of key, or NULL; under g->mu. */
static struct guard_addr *address_find(struct conn_guard *g, const unsigned char key[16]) {
    for (struct guard_addr *a = g->buckets[address_bucket(key)]; a != NULL; a = a->next) {
        if (memcmp(a->key, key, 16) == 0) {
            return a;
        }
    }
    return NULL;
}

int conn_guard_init(struct conn_guard *g, const struct server_config *cfg) {
    memset(g, 0, sizeof(*g));
    g->buckets = calloc(GUARD_BUCKETS, sizeof(*g->buckets));
    if (g->buckets == NULL) {
        return -1;
    }
    pthread_mutex_init(&g->mu, NULL);
    g->per_client_limit = cfg->per_ip_connection_limit;
    g->header_timeout_us = (int64_t)cfg->header_timeout_s * 1000000;
    /* A kept-alive connection may sit idle as long as libmicrohttpd's idle timeout allows
     * before its next request starts; from then, as long as a new one. */
    g->keepalive_timeout_us =
        (int64_t)(cfg->connection_timeout_s > cfg->header_timeout_s ? cfg->connection_timeout_s
                                                                    : cfg->header_timeout_s) *
        1000000;
    g->body_timeout_us = (int64_t)cfg->body_timeout_s * 1000000;

    /* The descriptor limit: raise the soft limit to the hard one (a server wants every
     * descriptor it may have), then size the table from it unless the operator chose. */
    struct rlimit rl;
    long long soft0 = -1, soft = 1024, hard = -1;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        soft0 = rl.rlim_cur == RLIM_INFINITY ? -1 : (long long)rl.rlim_cur;
        hard = rl.rlim_max == RLIM_INFINITY ? -1 : (long long)rl.rlim_max;
        if (rl.rlim_cur != rl.rlim_max) {
            struct rlimit raised = {.rlim_cur = rl.rlim_max, .rlim_max = rl.rlim_max};
            if (setrlimit(RLIMIT_NOFILE, &raised) == 0) {
                rl = raised;
            }
        }
        soft = rl.rlim_cur == RLIM_INFINITY ? 1 << 20 : (long long)rl.rlim_cur;
    }
    if (cfg->connection_limit > 0) {
        g->limit = cfg->connection_limit;
    } else {
        /* Descriptors kept for the rest of the process (model files, epoll, the admin listener,
         * logs), and a cap that bounds memory: each connection may hold a
         * connection_memory_bytes pool. */
        long long n = soft - CONN_GUARD_FD_RESERVE;
        g->limit = (int)(n < CONN_GUARD_MIN_LIMIT   ? CONN_GUARD_MIN_LIMIT
                         : n > CONN_GUARD_MAX_LIMIT ? CONN_GUARD_MAX_LIMIT
                                                    : n);
    }
    g->fd_soft_before = soft0;
    g->fd_soft = soft;
    g->fd_hard = hard;
    return 0;
}

void conn_guard_destroy(struct conn_guard *g) {
    if (g->buckets == NULL) {
        return;
    }
    for (size_t i = 0; i < GUARD_BUCKETS; i++) {
        for (struct guard_addr *a = g->buckets[i], *next; a != NULL; a = next) {
            next = a->next;
            free(a);
        }
    }
    free(g->buckets);
    g->buckets = NULL;
    /* Entries of connections still open at this point belong to libmicrohttpd's shutdown,
     * which runs before (server_stop): none is left. */
    pthread_mutex_destroy(&g->mu);
}

enum MHD_Result conn_guard_accept(void *cls, const struct sockaddr *addr, socklen_t addr_len) {
    (void)addr_len;
    struct conn_guard *g = &((struct server *)cls)->guard;
    unsigned char key[16];
    bool has_key = address_key(addr, key);
    enum MHD_Result ok = MHD_YES;
    pthread_mutex_lock(&g->mu);
    if (g->n_open >= g->limit) {
        ok = MHD_NO;
        atomic_fetch_add(&g->rejected_limit, 1);
    } else if (g->per_client_limit > 0 && has_key) {
        const struct guard_addr *a = address_find(g, key);
        if (a != NULL && a->count >= g->per_client_limit) {
            ok = MHD_NO;
            atomic_fetch_add(&g->rejected_per_client, 1);
        }
    }
    pthread_mutex_unlock(&g->mu);
    return ok;
}

void conn_guard_notify(void *cls, struct MHD_Connection *c, void **socket_context,
                       enum MHD_ConnectionNotificationCode code) {
    struct conn_guard *g = &((struct server *)cls)->guard;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        struct guard_conn *gc = calloc(1, sizeof(*gc));
        *socket_context = gc;
        if (gc == NULL) {
            return; /* unguarded, but counted nowhere: never refused for it */
        }
        const union MHD_ConnectionInfo *fd =
            MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
        const union MHD_ConnectionInfo *ad =
            MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
        gc->fd = fd != NULL ? fd->connect_fd : -1;
        gc->has_key = ad != NULL && address_key(ad->client_addr, gc->key);
        gc->phase = GUARD_HEADERS;
        gc->t_phase_us = time_now_us();
        pthread_mutex_lock(&g->mu);
        if (gc->has_key) {
            struct guard_addr *a = address_find(g, gc->key);
            if (a == NULL && (a = calloc(1, sizeof(*a))) != NULL) {
                memcpy(a->key, gc->key, 16);
                size_t b = address_bucket(gc->key);
                a->next = g->buckets[b];
                g->buckets[b] = a;
            }
            if (a != NULL) {
                a->count++;
            } else {
                gc->has_key = false; /* out of memory: not counted per client */
            }
        }
        gc->next = g->head;
        if (g->head != NULL) {
            g->head->prev = gc;
        }
        g->head = gc;
        g->n_open++;
        pthread_mutex_unlock(&g->mu);
        return;
    }
    struct guard_conn *gc = *socket_context;
    if (gc == NULL) {
        return;
    }
    *socket_context = NULL;
    pthread_mutex_lock(&g->mu);
    if (gc->has_key) {
        size_t b = address_bucket(gc->key);
        for (struct guard_addr **pa = &g->buckets[b]; *pa != NULL; pa = &(*pa)->next) {
            if (memcmp((*pa)->key, gc->key, 16) == 0) {
                if (--(*pa)->count == 0) {
                    struct guard_addr *dead = *pa;
                    *pa = dead->next;
                    free(dead);
                }
                break;
            }
        }
    }
    if (gc->prev != NULL) {
        gc->prev->next = gc->next;
    } else {
        g->head = gc->next;
    }
    if (gc->next != NULL) {
        gc->next->prev = gc->prev;
    }
    g->n_open--;
    pthread_mutex_unlock(&g->mu);
    free(gc);
}

/* The guard entry of c, or NULL (the admin listener's connections, or out of memory). */
static struct guard_conn *guard_of(struct MHD_Connection *c) {
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return ci != NULL ? ci->socket_context : NULL;
}

static void guard_set_phase(struct conn_guard *g, struct MHD_Connection *c,
                            enum guard_phase phase) {
    struct guard_conn *gc = guard_of(c);
    if (gc == NULL) {
        return;
    }
    int64_t now = time_now_us();
    pthread_mutex_lock(&g->mu);
    if (gc->phase != GUARD_CLOSING) {
        gc->kept_alive = phase == GUARD_HEADERS;
        gc->phase = phase;
        gc->t_phase_us = now;
    }
    pthread_mutex_unlock(&g->mu);
}

void conn_guard_headers_done(struct conn_guard *g, struct MHD_Connection *c) {
    guard_set_phase(g, c, GUARD_BODY);
}

void conn_guard_body_done(struct conn_guard *g, struct MHD_Connection *c) {
    guard_set_phase(g, c, GUARD_ANSWER);
}

void conn_guard_request_done(struct conn_guard *g, struct MHD_Connection *c) {
    guard_set_phase(g, c, GUARD_HEADERS);
}

void conn_guard_tick(struct conn_guard *g, int64_t now_us) {
    pthread_mutex_lock(&g->mu);
    for (struct guard_conn *gc = g->head; gc != NULL; gc = gc->next) {
        int64_t age = now_us - gc->t_phase_us;
        bool late_headers = gc->phase == GUARD_HEADERS &&
                            age > (gc->kept_alive ? g->keepalive_timeout_us : g->header_timeout_us);
        bool late_body = gc->phase == GUARD_BODY && age > g->body_timeout_us;
        if ((late_headers || late_body) && gc->fd >= 0) {
            /* The fd is still this connection's (see the file comment); shutting it down makes
             * libmicrohttpd's next read end the connection. */
            shutdown(gc->fd, SHUT_RDWR);
            gc->phase = GUARD_CLOSING;
            atomic_fetch_add(late_headers ? &g->timed_out_headers : &g->timed_out_body, 1);
        }
    }
    pthread_mutex_unlock(&g->mu);
}

int conn_guard_open(struct conn_guard *g) {
    pthread_mutex_lock(&g->mu);
    int n = g->n_open;
    pthread_mutex_unlock(&g->mu);
    return n;
}
