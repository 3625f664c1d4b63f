/*
 * serve.c: `gptd serve`: loads the model, starts the engine and the HTTP server, and runs until
 * SIGTERM/SIGINT, then drains: /health turns 503, new requests get 503, in-flight requests get
 * --drain-timeout seconds to finish, the engine stops (ending what is left with an error event),
 * the server stops and the process exits 0. A second signal skips the rest of the drain.
 *
 * Main thread only. SIGTERM/SIGINT are blocked in every thread (the mask is set before any
 * thread starts, so libmicrohttpd's and the engine's threads inherit it) and taken
 * synchronously here with sigtimedwait: no work happens inside a signal handler.
 */
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <gptd/engine.h>
#include <gptd/model.h>
#include <gptd/server.h>
#include <gptd/tokenizer.h>
#include <gptd/util.h>

#include "cli.h"

static const char *env_lookup(const char *name) {
    return getenv(name);
}

static bool is_loopback(const char *host) {
    return strcmp(host, "127.0.0.1") == 0 || strncmp(host, "127.", 4) == 0 ||
           strcmp(host, "localhost") == 0 || strcmp(host, "::1") == 0;
}

/* Waits up to timeout_ms for SIGTERM/SIGINT. Returns the signal, or 0 on timeout. */
static int wait_signal(const sigset_t *set, long timeout_ms) {
    struct timespec ts = {.tv_sec = timeout_ms / 1000, .tv_nsec = (timeout_ms % 1000) * 1000000};
    int sig = sigtimedwait(set, NULL, &ts);
    return sig > 0 ? sig : 0;
}

int cmd_serve(int argc, char **argv) {
    struct server_options o;
    char err[512];
    int rc = 1;
    struct server *srv = NULL;
    struct tokenizer *tok = NULL;
    struct model *model = NULL;
    struct engine *engine = NULL;

    server_options_init(&o);
    int lr = server_options_load(&o, argc, argv, env_lookup, err, sizeof(err));
    if (lr == 1) {
        server_options_finish(&o);
        return 0;
    }
    if (lr != 0) {
        fprintf(stderr, "gptd serve: %s\n", err);
        server_options_print_usage(stderr);
        server_options_finish(&o);
        return CLI_EXIT_USAGE;
    }
    enum log_level level;
    if (log_level_parse(o.log_level, &level) != 0) {
        fprintf(stderr, "gptd serve: --log-level: expected error, warn, info or debug\n");
        server_options_finish(&o);
        return CLI_EXIT_USAGE;
    }
    log_set_level(level);
    if (o.model_dir[0] == '\0') {
        /* TODO(default-model): serve the bundled model once it exists (a later issue). */
        fprintf(stderr, "gptd serve: no model: pass -m MODEL_DIR (or GPTD_MODEL)\n");
        server_options_print_usage(stderr);
        server_options_finish(&o);
        return CLI_EXIT_USAGE;
    }
    if (o.server.served_model_name[0] == '\0') {
        const char *base = o.model_dir;
        size_t len = strlen(base);
        while (len > 1 && base[len - 1] == '/') {
            len--;
        }
        const char *slash = NULL;
        for (size_t i = 0; i < len; i++) {
            if (base[i] == '/') {
                slash = base + i;
            }
        }
        const char *name = slash != NULL ? slash + 1 : base;
        size_t nlen = len - (size_t)(name - base);
        if (nlen >= sizeof(o.server.served_model_name)) {
            nlen = sizeof(o.server.served_model_name) - 1;
        }
        memcpy(o.server.served_model_name, name, nlen);
        o.server.served_model_name[nlen] = '\0';
    }
    if (!is_loopback(o.server.host) && o.server.n_api_keys == 0) {
        log_warn("listening on %s without an API key: anyone who can reach this address can use "
                 "the server (set --api-key or --api-key-file)",
                 o.server.host);
    }

    /* Before any thread exists: every thread inherits this mask. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    /* Listen first: /health answers 503 "loading" while the model loads. */
    srv = server_create(&o.server, err, sizeof(err));
    if (srv == NULL) {
        log_error("%s", err);
        goto cleanup;
    }
    log_info("listening on http://%s:%d (model loading)", o.server.host, server_port(srv));

    tok = tokenizer_load(o.model_dir, err, sizeof(err));
    if (tok == NULL) {
        log_error("%s", err);
        goto cleanup;
    }
    model = model_load(o.model_dir, err, sizeof(err));
    if (model == NULL) {
        log_error("%s", err);
        goto cleanup;
    }
    if (o.n_model_threads > 0) {
        model_set_threads(o.n_model_threads);
    }
    engine = engine_create(model, tok, &o.engine, err, sizeof(err));
    if (engine == NULL) {
        log_error("%s", err);
        goto cleanup;
    }
    if (engine_start(engine) != 0) {
        log_error("cannot start the engine thread");
        goto cleanup;
    }
    server_set_engine(srv, engine, tok, model_get_config(model));
    log_info("ready: model '%s' from %s on http://%s:%d", o.server.served_model_name, o.model_dir,
             o.server.host, server_port(srv));

    int sig = 0;
    while (sig == 0) {
        sig = wait_signal(&sigs, 1000);
    }
    log_info("%s: draining (up to %d s; a second signal stops at once)",
             sig == SIGTERM ? "SIGTERM" : "SIGINT", o.drain_timeout_s);
    server_begin_drain(srv);
    engine_drain(engine);
    int64_t deadline = time_now_us() + (int64_t)o.drain_timeout_s * 1000000;
    while (server_n_inflight(srv) > 0 && time_now_us() < deadline) {
        if (wait_signal(&sigs, 50) != 0) {
            log_warn("second signal: stopping now");
            break;
        }
    }
    if (server_n_inflight(srv) > 0) {
        log_warn("%d request(s) still running: ending them", server_n_inflight(srv));
    }
    engine_stop(engine);
    server_stop(srv);
    log_info("stopped");
    rc = 0;

cleanup:
    server_destroy(srv);
    engine_destroy(engine);
    model_destroy(model);
    tokenizer_destroy(tok);
    server_options_finish(&o);
    return rc;
}
