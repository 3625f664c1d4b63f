/*
 * bench_tokenizer.c: encode and decode throughput of a tokenizer, one thread.
 *
 * Usage: bench_tokenizer [MODEL_DIR] [MEGABYTES]   (default: the source tree's
 * tests/data/gpt2-tiny-random, which has GPT-2's vocabulary; 1 MB). MODEL_DIR needs only the
 * tokenizer files, so the registry fixtures serve as they are, e.g. Llama 3's:
 * bench_tokenizer ~/.cache/gptd/testdata/tokenizer-llama3 (tools/fetch-testdata). Builds the input
 * deterministically from the sample below: runs of 4-40 consecutive words taken at pseudo-random
 * offsets, so the text mixes English, other scripts, code and numbers the way a prompt mix does,
 * with natural word repetition. Prints MB/s
 * for the first encode (cold pre-token cache), the best of several warm encodes, a cold encode
 * with a fresh tokenizer per run, whole decode and streaming decode. Numbers go to
 * docs/PERFORMANCE.md; run under `flock /tmp/gptd-bench.lock`.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <gptd/tokenizer.h>
#include <gptd/util.h>

/* Our own mixed sample: prose, several scripts, code, numbers, whitespace runs. */
static const char sample[] =
    "The server reads a prompt, splits it into tokens, and hands the ids to the engine. Each "
    "request carries its own sampling settings, so two users can ask for very different things "
    "at once without noticing each other. When the queue is full the server answers 429 and "
    "says when to come back. It's a small program, but it's careful: nothing is allocated in "
    "the hot loop, and every error names the file it came from.\n\n"
    "Numbers like 3.14159, 2,718,281 and 1e-9 appear in logs; so do dates (2026-12-03) and "
    "times (07:45:12.345). Prices: $19.99, 42 EUR, 1000 yen.\n"
    "    for (size_t i = 0; i < n_tokens; i++) {\n"
    "        logits[i] = (x[i] - max) / temperature;\n"
    "    }\n"
    "def tokenize(text: str) -> list[int]:\n\treturn [ord(c) for c in text]  # not really\n"
    "Le serveur lit la requête, découpe le texte en jetons et renvoie la réponse dès qu'elle "
    "est prête. Les caractères accentués — é, è, ê, ç, œ — prennent souvent deux octets.\n"
    "Der Server liest die Anfrage, zerlegt den Text in Tokens und schickt die Antwort zurück. "
    "Größere Eingaben dauern länger; Übermäßige Längen werden abgelehnt.\n"
    "El servidor lee la petición, divide el texto en fragmentos y devuelve la respuesta. "
    "¿Cuántos tokens caben en el contexto? ¡Depende del modelo!\n"
    "Сервер читает запрос, разбивает текст на токены и отправляет ответ. Длинные строки "
    "обрабатываются быстро, а ошибки описываются понятно.\n"
    "服务器读取请求，把文本切分成词元，然后返回结果。长文本也能很快处理。\n"
    "サーバーはリクエストを読み、テキストをトークンに分割して、結果を返します。日本語の文も問題あり"
    "ません。\n"
    "서버는 요청을 읽고 텍스트를 토큰으로 나눈 다음 응답을 보냅니다.\n"
    "الخادم يقرأ الطلب ويقسم النص إلى رموز ثم يعيد الإجابة بسرعة.\n"
    "सर्वर अनुरोध पढ़ता है, पाठ को टोकन में बाँटता है और उत्तर लौटाता है।\n"
    "Emoji travel too: 🦙 🚀 👍🏽 ❤️ — and so do symbols like ∑, ∞, ≤, →, "
    "©.\n"
    "Whitespace   runs,\ttabs\t\tand\n\n\nblank lines are part of the text, as are 'quotes', "
    "\"double quotes\", don't, we'll, they're and I've.\n";

static uint64_t rng_state = 0x853c49e6748fea9bull;

static uint32_t rng_next(void) {
    /* splitmix64: deterministic, so every run benchmarks the same text */
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return (uint32_t)((z ^ (z >> 31)) >> 32);
}

/* Builds about n_bytes of text from runs of the sample's words. */
static char *make_text(size_t n_bytes, size_t *n_out) {
    size_t n_sample = sizeof(sample) - 1;
    /* Word starts: positions right after a space (or 0). */
    size_t *starts = malloc(n_sample * sizeof(*starts));
    size_t n_starts = 0;
    for (size_t i = 0; i < n_sample; i++) {
        if (i == 0 || sample[i - 1] == ' ') {
            starts[n_starts++] = i;
        }
    }
    char *text = malloc(n_bytes + n_sample + 1);
    size_t at = 0;
    while (at < n_bytes) {
        size_t w = rng_next() % n_starts;
        size_t n_words = 4 + rng_next() % 37;
        size_t end = w + n_words < n_starts ? starts[w + n_words] : n_sample;
        size_t len = end - starts[w];
        memcpy(text + at, sample + starts[w], len);
        at += len;
    }
    /* Cut at a character boundary. */
    while (at > 0 && ((unsigned char)text[at - 1] & 0xc0) == 0x80) {
        at--;
    }
    if (at > 0 && (unsigned char)text[at - 1] >= 0xc0) {
        at--;
    }
    text[at] = '\0';
    free(starts);
    *n_out = at;
    return text;
}

static double mb_per_s(size_t n_bytes, int64_t us) {
    return (double)n_bytes / 1e6 / ((double)us / 1e6);
}

int main(int argc, char **argv) {
    const char *model_dir = argc > 1 ? argv[1] : GPTD_SOURCE_DIR "/tests/data/gpt2-tiny-random";
    double megabytes = argc > 2 ? atof(argv[2]) : 1.0;
    char err[512];

    int64_t t0 = time_now_us();
    struct tokenizer *tok = tokenizer_load(model_dir, err, sizeof(err));
    int64_t t_load = time_now_us() - t0;
    if (tok == NULL) {
        fprintf(stderr, "bench_tokenizer: %s\n", err);
        return 1;
    }
    size_t n_text;
    char *text = make_text((size_t)(megabytes * 1e6), &n_text);
    printf("tokenizer: %s (load %.1f ms)\n", model_dir, (double)t_load / 1e3);
    printf("text: %zu bytes (mixed English, 9 other languages, code, emoji)\n", n_text);

    int32_t *ids = NULL;
    size_t n_ids = 0;
    t0 = time_now_us();
    if (tokenizer_encode(tok, text, n_text, TOKENIZER_PARSE_SPECIAL, &ids, &n_ids, err,
                         sizeof(err)) != 0) {
        fprintf(stderr, "bench_tokenizer: %s\n", err);
        return 1;
    }
    int64_t t_first = time_now_us() - t0;
    printf("tokens: %zu (%.2f bytes/token)\n", n_ids, (double)n_text / (double)n_ids);
    printf("encode, first run (cold cache): %8.1f MB/s\n", mb_per_s(n_text, t_first));

    int64_t best = INT64_MAX;
    for (int r = 0; r < 5; r++) {
        int32_t *again = NULL;
        size_t n_again = 0;
        t0 = time_now_us();
        tokenizer_encode(tok, text, n_text, TOKENIZER_PARSE_SPECIAL, &again, &n_again, NULL, 0);
        int64_t t = time_now_us() - t0;
        best = t < best ? t : best;
        if (n_again != n_ids || memcmp(again, ids, n_ids * sizeof(*ids)) != 0) {
            fprintf(stderr, "bench_tokenizer: encodes disagree\n");
            return 1;
        }
        free(again);
    }
    printf("encode, best of 5 (warm cache): %8.1f MB/s\n", mb_per_s(n_text, best));

    /* No cache help at all: a fresh tokenizer for each of 3 runs, load time excluded. */
    int64_t best_cold = INT64_MAX;
    for (int r = 0; r < 3; r++) {
        struct tokenizer *fresh = tokenizer_load(model_dir, err, sizeof(err));
        int32_t *again = NULL;
        size_t n_again = 0;
        t0 = time_now_us();
        tokenizer_encode(fresh, text, n_text, TOKENIZER_PARSE_SPECIAL, &again, &n_again, NULL, 0);
        int64_t t = time_now_us() - t0;
        best_cold = t < best_cold ? t : best_cold;
        free(again);
        tokenizer_destroy(fresh);
    }
    printf("encode, best of 3 (fresh tokenizer): %8.1f MB/s\n", mb_per_s(n_text, best_cold));

    t0 = time_now_us();
    size_t n_back;
    char *back = tokenizer_decode(tok, ids, n_ids, &n_back);
    int64_t t_decode = time_now_us() - t0;
    if (n_back != n_text || memcmp(back, text, n_text) != 0) {
        fprintf(stderr, "bench_tokenizer: round trip failed\n");
        return 1;
    }
    printf("decode, whole:                  %8.1f MB/s\n", mb_per_s(n_text, t_decode));

    struct detok d;
    detok_init(&d, tok);
    size_t cap = tokenizer_max_token_bytes(tok) + 16;
    char *piece = malloc(cap);
    size_t n_streamed = 0;
    t0 = time_now_us();
    for (size_t i = 0; i < n_ids; i++) {
        n_streamed += detok_feed(&d, ids[i], piece, cap);
    }
    n_streamed += detok_flush(&d, piece, cap);
    int64_t t_stream = time_now_us() - t0;
    printf("decode, streaming:              %8.1f MB/s (%.0f ns/token)\n",
           mb_per_s(n_streamed, t_stream), (double)t_stream * 1e3 / (double)n_ids);

    /* The worst case the issue names: one pre-token of 900,000 identical letters. */
    size_t n_long = 900000;
    char *long_text = malloc(n_long);
    memset(long_text, 'a', n_long);
    int32_t *long_ids = NULL;
    size_t n_long_ids = 0;
    t0 = time_now_us();
    tokenizer_encode(tok, long_text, n_long, 0, &long_ids, &n_long_ids, NULL, 0);
    int64_t t_long = time_now_us() - t0;
    printf("encode, 900,000 x 'a' (one pre-token): %.1f ms, %zu tokens\n", (double)t_long / 1e3,
           n_long_ids);
    free(long_ids);
    free(long_text);

    free(piece);
    free(back);
    free(ids);
    free(text);
    tokenizer_destroy(tok);
    return 0;
}
