/*
 * bench_quality.c: what rounding or quantizing the weights costs in quality, measured rather
 * than asserted (docs/PERFORMANCE.md, "8-bit weights"). One model directory loaded with
 * --weights f32, f16 and q8 in turn:
 *   - perplexity over consecutive non-overlapping windows of a text's tokens (every position of
 *     a window predicts the next token; the first token of each window is context only), as
 *     the bundled model's training script evaluates its held-out chapters;
 *   - greedy continuations of 32 tokens from the start of each window (up to 16 windows):
 *     the fraction of tokens equal to float32's, and how many continuations are identical;
 *   - |logprob difference| of float32's chosen tokens, teacher-forced on float32's greedy
 *     sequence: max and mean.
 *
 * Usage: bench_quality MODEL_DIR TEXT [--json] [--window N] [--max-windows N]
 *        TEXT is a UTF-8 file; with --json a JSON array of strings (documents, e.g. chapters),
 *        each tokenized on its own and followed by the end-of-text token.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include <gptd/model.h>
#include <gptd/tokenizer.h>
#include <gptd/util.h>

#include "bench_util.h"

enum { N_CONT = 32, MAX_CONT_WINDOWS = 16, N_TYPES = 3 };

/* Appends the ids of text (and eos when >= 0) to *ids. */
static void append_text(struct tokenizer *tok, const char *text, size_t len, int32_t eos,
                        int32_t **ids, size_t *n, size_t *cap) {
    char err[256];
    int32_t *got = NULL;
    size_t n_got = 0;
    if (tokenizer_encode(tok, text, len, TOKENIZER_ADD_SPECIAL, &got, &n_got, err, sizeof(err)) !=
        0) {
        fprintf(stderr, "bench_quality: %s\n", err);
        exit(1);
    }
    while (*n + n_got + 1 > *cap) {
        *cap = *cap * 2 + 1024;
        *ids = realloc(*ids, *cap * sizeof(int32_t));
    }
    memcpy(*ids + *n, got, n_got * sizeof(int32_t));
    *n += n_got;
    if (eos >= 0) {
        (*ids)[(*n)++] = eos;
    }
    free(got);
}

/* log softmax of row at id. */
static double logprob_of(const float *row, int32_t n_vocab, int32_t id) {
    float max = row[0];
    for (int32_t i = 1; i < n_vocab; i++) {
        max = row[i] > max ? row[i] : max;
    }
    double sum = 0.0;
    for (int32_t i = 0; i < n_vocab; i++) {
        sum += exp((double)row[i] - max);
    }
    return (double)row[id] - max - log(sum);
}

static int32_t argmax(const float *row, int32_t n_vocab) {
    int32_t best = 0;
    for (int32_t i = 1; i < n_vocab; i++) {
        best = row[i] > row[best] ? i : best;
    }
    return best;
}

/* Runs tokens[0..n) through a fresh sequence, logits of every position into logits. */
static void forward_all(struct model *m, struct kv_cache *kv, struct model_scratch *s,
                        const int32_t *tokens, int32_t n, float *logits) {
    struct kv_seq seq;
    kv_seq_init(&seq, kv);
    if (kv_seq_reserve(kv, &seq, n) != KV_OK) {
        fprintf(stderr, "bench_quality: KV cache too small\n");
        exit(1);
    }
    struct model_batch_seq b = {.kv = &seq, .tokens = tokens, .n_tokens = n, .n_logits = n};
    if (model_forward(m, kv, s, &b, 1, logits) != 0) {
        fprintf(stderr, "bench_quality: forward refused the batch\n");
        exit(1);
    }
    kv_seq_finish(kv, &seq);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: bench_quality MODEL_DIR TEXT [--json] [--window N] "
                        "[--max-windows N]\n");
        return 2;
    }
    const char *dir = argv[1];
    int is_json = 0;
    int32_t window = 256;
    int32_t max_windows = 1 << 20;
    for (int i = 3; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0) {
            is_json = 1;
        } else if (strcmp(argv[i], "--window") == 0 && i + 1 < argc) {
            window = atoi(argv[++i]);
        } else if (strcmp(argv[i], "--max-windows") == 0 && i + 1 < argc) {
            max_windows = atoi(argv[++i]);
        }
    }
    log_set_level(LOG_LEVEL_WARN);
    char err[512];
    struct tokenizer *tok = tokenizer_load(dir, err, sizeof(err));
    if (tok == NULL) {
        fprintf(stderr, "bench_quality: %s\n", err);
        return 1;
    }
    size_t len = 0;
    char *text = bench_read_file(argv[2], &len);
    if (text == NULL) {
        fprintf(stderr, "bench_quality: cannot read %s\n", argv[2]);
        return 1;
    }
    int32_t *ids = NULL;
    size_t n_ids = 0, cap = 0;
    if (is_json) {
        cJSON *root = cJSON_ParseWithLength(text, len);
        const cJSON *doc;
        cJSON_ArrayForEach(doc, root) {
            if (cJSON_IsString(doc)) {
                append_text(tok, doc->valuestring, strlen(doc->valuestring), tokenizer_eos_id(tok),
                            &ids, &n_ids, &cap);
            }
        }
        cJSON_Delete(root);
    } else {
        append_text(tok, text, len, -1, &ids, &n_ids, &cap);
    }
    free(text);

    const enum model_weights types[N_TYPES] = {MODEL_WEIGHTS_F32, MODEL_WEIGHTS_F16,
                                               MODEL_WEIGHTS_Q8};
    int32_t n_windows = 0;
    int32_t *cont[N_TYPES][MAX_CONT_WINDOWS];
    float *f32_lp[MAX_CONT_WINDOWS]; /* float32's logprobs of its own greedy tokens */
    printf("model %s, text %s: %zu tokens\n", dir, argv[2], n_ids);
    printf("weights  bytes_MB  windows  tokens_scored  nll_nats  perplexity  greedy_agree  "
           "identical_conts  max_dlogprob  mean_dlogprob\n");
    for (int t = 0; t < N_TYPES; t++) {
        struct model *m = model_load_with(dir, types[t], err, sizeof(err));
        if (m == NULL) {
            fprintf(stderr, "bench_quality: %s\n", err);
            return 1;
        }
        const struct model_config *c = model_get_config(m);
        int32_t w = window < c->n_ctx ? window : c->n_ctx;
        if (w < 16 + N_CONT) {
            fprintf(stderr, "bench_quality: the window must hold at least %d tokens\n",
                    16 + N_CONT);
            return 2;
        }
        struct kv_cache *kv = kv_cache_create(m, (size_t)64 << 20, err, sizeof(err));
        struct model_scratch *s = model_scratch_create(m, w, w);
        float *logits = malloc((size_t)w * c->n_vocab * sizeof(float));
        if (kv == NULL || s == NULL || logits == NULL) {
            fprintf(stderr, "bench_quality: %s\n", kv == NULL ? err : "out of memory");
            return 1;
        }
        /* Perplexity. */
        double nll = 0.0;
        size_t scored = 0;
        int32_t n_win = 0;
        for (size_t at = 0; at + (size_t)w + 1 <= n_ids && n_win < max_windows; at += (size_t)w) {
            forward_all(m, kv, s, ids + at, w, logits);
            for (int32_t i = 0; i < w; i++) {
                nll -= logprob_of(logits + (size_t)i * c->n_vocab, c->n_vocab, ids[at + i + 1]);
            }
            scored += (size_t)w;
            n_win++;
        }
        /* Greedy continuations from the first 16 tokens of each window. */
        int32_t n_cont = n_win < MAX_CONT_WINDOWS ? n_win : MAX_CONT_WINDOWS;
        int32_t seqbuf[16 + N_CONT];
        int agree = 0, identical = 0;
        double max_d = 0.0, sum_d = 0.0;
        for (int32_t k = 0; k < n_cont; k++) {
            memcpy(seqbuf, ids + (size_t)k * w, 16 * sizeof(int32_t));
            cont[t][k] = malloc(N_CONT * sizeof(int32_t));
            if (t == 0) {
                f32_lp[k] = malloc(N_CONT * sizeof(float));
            }
            for (int32_t g = 0; g < N_CONT; g++) {
                forward_all(m, kv, s, seqbuf, 16 + g, logits);
                const float *last = logits + (size_t)(16 + g - 1) * c->n_vocab;
                int32_t next = argmax(last, c->n_vocab);
                cont[t][k][g] = next;
                seqbuf[16 + g] = next;
            }
            /* Teacher-forced on float32's continuation: its tokens' logprobs here. */
            memcpy(seqbuf + 16, cont[0][k], N_CONT * sizeof(int32_t));
            forward_all(m, kv, s, seqbuf, 16 + N_CONT, logits);
            int same = 1;
            for (int32_t g = 0; g < N_CONT; g++) {
                double lp = logprob_of(logits + (size_t)(16 + g - 1) * c->n_vocab, c->n_vocab,
                                       cont[0][k][g]);
                if (t == 0) {
                    f32_lp[k][g] = (float)lp;
                } else {
                    double d = fabs(lp - f32_lp[k][g]);
                    max_d = d > max_d ? d : max_d;
                    sum_d += d;
                }
                agree += cont[t][k][g] == cont[0][k][g];
                same = same && cont[t][k][g] == cont[0][k][g];
            }
            identical += same;
        }
        n_windows = n_cont;
        printf("%-7s  %8.1f  %7d  %13zu  %8.4f  %10.3f  %11.1f%%  %8d / %-4d  %12.4f  %13.5f\n",
               model_weights_name(types[t]), (double)model_weight_bytes(m) / 1e6, n_win, scored,
               nll / (double)scored, exp(nll / (double)scored),
               n_cont > 0 ? 100.0 * agree / (n_cont * N_CONT) : 0.0, identical, n_cont, max_d,
               n_cont > 0 ? sum_d / (n_cont * N_CONT) : 0.0);
        fflush(stdout);
        free(logits);
        model_scratch_destroy(s);
        kv_cache_destroy(kv);
        model_destroy(m);
    }
    for (int t = 0; t < N_TYPES; t++) {
        for (int32_t k = 0; k < n_windows; k++) {
            free(cont[t][k]);
        }
    }
    for (int32_t k = 0; k < n_windows; k++) {
        free(f32_lp[k]);
    }
    free(ids);
    tokenizer_destroy(tok);
    return 0;
}
