/*
 * completion_flow.c: one completion request from its parsed body to its last byte:
 * POST /v1/completions and POST /v1/chat/completions share everything but how the prompt is
 * built (text or ids vs. the chat template) and how events are written (text_completion vs.
 * chat.completion objects, response.c). Also POST /apply-template (the chat prompt only).
 *
 * Runs on libmicrohttpd's threads, one at a time per connection; waits by suspending the
 * connection (server.c's protocol), never by blocking a thread.
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <gptd/engine.h>
#include <gptd/tokenizer.h>
#include <gptd/util.h>

#include "server_internal.h"

/* ---------------------------------------------------------------------------------------- */
/* completions                                                                              */

static const char *token_text(void *ctx, int32_t id, size_t *len) {
    return tokenizer_token_bytes(ctx, id, len);
}

void completion_flow_mark_done(struct conn *x) {
    if (x->counted_inflight) {
        x->counted_inflight = false;
        atomic_fetch_sub(&x->srv->n_inflight, 1);
    }
}

/* Cancels and releases every engine request (the caller holds no lock). */
void completion_flow_release(struct conn *x, bool cancel) {
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
enum MHD_Result completion_flow_step(struct conn *x) {
    for (;;) {
        conn_clear_news(x);
        take_events(x);
        if (conn_is_gone(x)) {
            snprintf(x->cancel_reason, sizeof(x->cancel_reason), "client_disconnected");
            return MHD_NO;
        }
        if (x->has_error) {
            completion_flow_mark_done(x);
            return conn_respond_error(x, &x->error);
        }
        if (x->is_stream && x->n_admitted == x->n_ereqs) {
            return stream_start_response(x);
        }
        if (completion_builder_is_done(x->builder)) {
            completion_flow_mark_done(x);
            struct sbuf b;
            sbuf_init(&b);
            completion_builder_body(x->builder, &b);
            enum MHD_Result rc = conn_respond_json(x, 200, &b);
            sbuf_finish(&b);
            return rc;
        }
        if (atomic_load(&x->srv->stopping)) {
            completion_flow_mark_done(x);
            return conn_respond_errorf(x, 503, "unavailable_error", "shutting_down",
                                       "the server is shutting down");
        }
        if (conn_try_suspend(x)) {
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
    return conn_queue(x, 200, r);
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
        conn_clear_news(x);
        bool any = take_events(x);
        if (x->has_error) {
            response_sse_error(&x->out, &x->error);
            x->stream_finished = true;
            completion_flow_mark_done(x);
            continue;
        }
        if (completion_builder_is_done(x->builder)) {
            completion_builder_stream_end(x->builder, &x->out);
            x->stream_finished = true;
            completion_flow_mark_done(x);
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
            completion_flow_mark_done(x);
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
        if (conn_try_suspend(x)) {
            return 0;
        }
    }
}

static void stream_free(void *cls) {
    conn_unref(cls);
}

/* The request is parsed (x->req): the checks every completion route shares, tokenization,
 * the response builder and submission to the engine. */
static enum MHD_Result start(struct conn *x) {
    struct server *s = x->srv;
    struct api_error e;
    if (s->cfg.strict_model && x->req.has_model && !x->req.model_matches) {
        api_error_set(&e, 404, "not_found_error", "model_not_found", "model",
                      "the model does not exist; this server serves '%s'",
                      s->cfg.served_model_name);
        return conn_respond_error(x, &e);
    }
    if (x->req.n_prompts > sizeof(x->ereqs) / sizeof(x->ereqs[0])) {
        api_error_set(&e, 400, "invalid_request_error", "too_many_prompts", "prompt",
                      "too many prompts");
        return conn_respond_error(x, &e);
    }
    if (server_request_tokenize(&x->req, s->tok, &s->limits, &e) != 0) {
        return conn_respond_error(x, &e);
    }
    x->is_stream = x->req.stream;
    completion_meta_init(&x->meta, x->is_chat, s->cfg.served_model_name, s->fingerprint);
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
        .chat = x->is_chat,
        .eos_id = tokenizer_eos_id(s->tok),
        .drop_generated = x->req.max_tokens == 0,
        .token_text = token_text,
        .token_text_ctx = s->tok,
    };
    x->builder = completion_builder_create(&x->meta, &bc);
    if (x->builder == NULL) {
        return conn_respond_errorf(x, 500, "server_error", "out_of_memory", "out of memory");
    }
    for (size_t i = 0; i < x->req.n_prompts; i++) {
        const struct prompt *p = &x->req.prompts[i];
        char *decoded = NULL;
        size_t dlen = 0;
        if (x->req.echo && p->text == NULL) {
            decoded = tokenizer_decode(s->tok, p->ids, p->n_ids, &dlen);
            if (decoded == NULL) {
                return conn_respond_errorf(x, 500, "server_error", "out_of_memory",
                                           "out of memory");
            }
        }
        const char *text = p->text != NULL ? p->text : decoded != NULL ? decoded : "";
        size_t tlen = p->text != NULL ? p->text_len : dlen;
        int rc = completion_builder_set_prompt(x->builder, (int32_t)i, text, x->req.echo ? tlen : 0,
                                               p->ids, p->n_ids);
        free(decoded);
        if (rc != 0) {
            return conn_respond_errorf(x, 500, "server_error", "out_of_memory", "out of memory");
        }
    }
    /* The registry before submitting: the ticker must see a connection the moment it can be
     * suspended. */
    server_registry_add(s, x);
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
        ep.skip_special_tokens = x->req.skip_special_tokens;
        enum engine_status st = ENGINE_OK;
        char msg[200] = "";
        struct engine_request *er =
            engine_request_create(s->engine, &ep, conn_on_engine_notify, x, &st, msg, sizeof(msg));
        if (er != NULL) {
            st = engine_submit(s->engine, er);
            if (st != ENGINE_OK) {
                engine_request_release(er);
                er = NULL;
            }
        }
        if (er == NULL) {
            completion_flow_release(x, true);
            server_registry_remove(s, x);
            response_engine_error(&e, st == ENGINE_OK ? ENGINE_ERR_NOMEM : st, true, msg);
            snprintf(x->cancel_reason, sizeof(x->cancel_reason), "rejected");
            return conn_respond_error(x, &e);
        }
        x->ereqs[x->n_ereqs++] = er;
    }
    x->counted_inflight = true;
    atomic_fetch_add(&s->n_inflight, 1);
    return completion_flow_step(x);
}

enum MHD_Result completion_flow_text(struct conn *x) {
    struct server *s = x->srv;
    struct api_error e;
    if (atomic_load(&s->draining) || atomic_load(&s->stopping)) {
        return conn_respond_unavailable(x);
    }
    if (server_request_parse_completion(x->body.data != NULL ? x->body.data : "", x->body.len,
                                        &s->limits, s->cfg.served_model_name, &x->req, &e) != 0) {
        return conn_respond_error(x, &e);
    }
    return start(x);
}

/* Bounds of one chat-template render on an HTTP thread: a real template over a thousand
 * messages takes about 10^5 steps; the output cannot usefully exceed what fits the context. */
static const struct template_limits chat_limits = {
    .max_steps = 4000000,
    .max_depth = 64,
    .max_output = 8u << 20,
};

/* The chat request parsed and its prompt rendered, or an error answered (returns false). */
static bool chat_prompt(struct conn *x, enum MHD_Result *rc) {
    struct server *s = x->srv;
    struct api_error e;
    const char *body = x->body.data != NULL ? x->body.data : "";
    if (server_request_parse_chat(body, x->body.len, &s->limits, s->cfg.served_model_name, &x->req,
                                  &e) != 0 ||
        server_request_chat_prompt(body, x->body.len, s->chat, &chat_limits, &x->req, &e) != 0) {
        *rc = conn_respond_error(x, &e);
        return false;
    }
    return true;
}

enum MHD_Result completion_flow_chat(struct conn *x) {
    struct server *s = x->srv;
    if (atomic_load(&s->draining) || atomic_load(&s->stopping)) {
        return conn_respond_unavailable(x);
    }
    enum MHD_Result rc;
    if (!chat_prompt(x, &rc)) {
        return rc;
    }
    x->is_chat = true;
    return start(x);
}

enum MHD_Result completion_flow_apply_template(struct conn *x) {
    enum MHD_Result rc;
    if (!chat_prompt(x, &rc)) {
        return rc;
    }
    struct sbuf b;
    sbuf_init(&b);
    sbuf_puts(&b, "{\"prompt\":");
    sbuf_json_string(&b, x->req.prompts[0].text, x->req.prompts[0].text_len);
    sbuf_puts(&b, "}");
    rc = conn_respond_json(x, 200, &b);
    sbuf_finish(&b);
    return rc;
}
