/*
 * serve.c: `gptd serve`: loads the model, starts the engine and the HTTP server, and runs until
 * SIGTERM/SIGINT, then drains: /health turns 503, new requests get 503, in-flight requests get
 * --drain-timeout seconds to finish, the engine stops (ending what is left with an error event),
 * the server stops and the process exits 0. A second signal skips the rest of the drain.
 *
 * Main thread only. SIGTERM/SIGINT go through a self-pipe: the handler (which may run on any
 * thread — OpenBLAS starts its threads before main, so blocking the signals in main would not
 * keep them from being delivered elsewhere with their default, fatal action) only writes one
 * byte; the main thread polls the pipe and does the work.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <gptd/chat.h>
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

static int sig_pipe[2] = {-1, -1};
static volatile sig_atomic_t last_signal;

static void on_signal(int sig) {
    int saved = errno;
    last_signal = sig;
    if (sig_pipe[1] >= 0) {
        ssize_t r = write(sig_pipe[1], "s", 1);
        (void)r; /* a full pipe already holds a wake-up */
    }
    errno = saved;
}

static int install_signals(void) {
    if (pipe(sig_pipe) != 0) {
        return -1;
    }
    for (int i = 0; i < 2; i++) {
        fcntl(sig_pipe[i], F_SETFL, fcntl(sig_pipe[i], F_GETFL) | O_NONBLOCK);
        fcntl(sig_pipe[i], F_SETFD, FD_CLOEXEC);
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    return 0;
}

/* Waits up to timeout_ms for SIGTERM/SIGINT. Returns the signal, or 0 on timeout. */
static int wait_signal(long timeout_ms) {
    struct pollfd p = {.fd = sig_pipe[0], .events = POLLIN, .revents = 0};
    if (poll(&p, 1, (int)timeout_ms) <= 0) {
        return 0;
    }
    char buf[16];
    ssize_t n = read(sig_pipe[0], buf, sizeof(buf));
    return n > 0 ? (int)last_signal : 0;
}

int cmd_serve(int argc, char **argv) {
    struct server_options o;
    char err[512];
    int rc = 1;
    struct server *srv = NULL;
    struct tokenizer *tok = NULL;
    struct chat *chat = NULL;
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
    enum model_weights weights;
    if (model_weights_parse(o.weights, &weights) != 0) {
        fprintf(stderr, "gptd serve: --weights: expected auto, f32, f16, bf16 or q8\n");
        server_options_finish(&o);
        return CLI_EXIT_USAGE;
    }
    if (kv_dtype_parse(o.kv_dtype, &o.engine.kv_dtype) != 0) {
        fprintf(stderr, "gptd serve: --kv-cache-dtype: expected f32 or f16\n");
        server_options_finish(&o);
        return CLI_EXIT_USAGE;
    }
    if (o.model_dir[0] == '\0') {
        snprintf(o.model_dir, sizeof(o.model_dir), "%s", GPTD_DEFAULT_MODEL_DIR);
        log_info("no -m given: serving the default model %s (the bundled King James Bible "
                 "model; -m DIR serves another)",
                 o.model_dir);
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

    if (install_signals() != 0) {
        log_error("cannot create the signal pipe");
        goto cleanup;
    }

    /* Listen first: /health answers 503 "loading" while the model loads. */
    srv = server_create(&o.server, err, sizeof(err));
    if (srv == NULL) {
        log_error("%s", err);
        goto cleanup;
    }
    log_info("listening on http://%s:%d (model loading)", o.server.host, server_port(srv));
    if (server_admin_port(srv) >= 0) {
        log_info("admin endpoints (/health, /livez, /metrics) on http://%s:%d", o.server.host,
                 server_admin_port(srv));
    }

    tok = tokenizer_load(o.model_dir, err, sizeof(err));
    if (tok == NULL) {
        log_error("%s", err);
        goto cleanup;
    }
    chat = chat_load(o.model_dir, o.chat_template[0] != '\0' ? o.chat_template : NULL, err,
                     sizeof(err));
    if (chat == NULL) {
        log_error("%s", err);
        goto cleanup;
    }
    if (chat_has_template(chat)) {
        log_info("chat template: %s", chat_template_origin(chat));
    } else {
        log_info("no chat template: /v1/chat/completions answers 400 (start with "
                 "--chat-template FILE)");
    }
    server_set_chat(srv, chat);
    model = model_load_with(o.model_dir, weights, err, sizeof(err));
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
    server_set_model_info(srv, model_weights_name(model_get_weights(model)),
                          kv_dtype_name(o.engine.kv_dtype));
    server_set_engine(srv, engine, tok, model_get_config(model));
    log_info("ready: model '%s' from %s on http://%s:%d", o.server.served_model_name, o.model_dir,
             o.server.host, server_port(srv));

    int sig = 0;
    while (sig == 0) {
        sig = wait_signal(1000);
    }
    log_info("%s: draining (up to %d s; a second signal stops at once)",
             sig == SIGTERM ? "SIGTERM" : "SIGINT", o.drain_timeout_s);
    server_begin_drain(srv);
    engine_drain(engine);
    int64_t deadline = time_now_us() + (int64_t)o.drain_timeout_s * 1000000;
    while (server_n_inflight(srv) > 0 && time_now_us() < deadline) {
        if (wait_signal(50) != 0) {
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
    chat_destroy(chat);
    server_options_finish(&o);
    for (int i = 0; i < 2; i++) {
        if (sig_pipe[i] >= 0) {
            close(sig_pipe[i]);
            sig_pipe[i] = -1;
        }
    }
    return rc;
}
