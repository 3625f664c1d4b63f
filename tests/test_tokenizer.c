/*
 * test_tokenizer.c: Check suite for src/tokenizer: byte-exact encoding against the golden data
 * in tests/data for all three ways of loading the GPT-2 vocabulary, round trips, the
 * streaming decoder, malformed files, long inputs and concurrent encoding.
 *
 * The three tokenizers are loaded once in main() (before Check forks) and shared read-only:
 *   0: gpt2-tiny-random/tokenizer.json (merges as ["a", "b"] pairs)
 *   1: a copy of it written by this test with merges as "a b" strings
 *   2: vocab.json + merges.txt (fixture gpt2-vocab of tools/fetch-testdata, symlinked into a
 *      temporary directory without tokenizer.json)
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <check.h>
#include <cjson/cJSON.h>

#include <gptd/tokenizer.h>

#include "common.h"
#include "tokenizer_common.h"

#define N_LOADERS 3
static struct tokenizer *toks[N_LOADERS];
static const char *loader_names[N_LOADERS] = {"tokenizer.json (pairs)", "tokenizer.json (strings)",
                                              "vocab.json + merges.txt"};
static char tmp_root[64];
static int is_valgrind;

/* ---- helpers ------------------------------------------------------------------------- */

/* For set-up code that runs outside a Check test (ck_assert may not be called there). */
#define need(cond)                                                                                 \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: failed: %s\n", __FILE__, __LINE__, #cond);                     \
            exit(EXIT_FAILURE);                                                                    \
        }                                                                                          \
    } while (0)

static char *read_whole(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    need(f != NULL);
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)size + 1);
    need(buf != NULL);
    need(fread(buf, 1, (size_t)size, f) == (size_t)size);
    buf[size] = '\0';
    fclose(f);
    if (n != NULL) {
        *n = (size_t)size;
    }
    return buf;
}

static void write_whole(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    need(f != NULL);
    need(fwrite(text, 1, strlen(text), f) == strlen(text));
    fclose(f);
}

/* One golden case: text (with its length: texts may hold NUL) and ids. */
struct golden_case {
    char *text;
    size_t n_text;
    int32_t *ids;
    size_t n_ids;
    int flags;
};

static struct golden_case *cases;
static size_t n_cases;

static void add_case(const char *text, size_t n_text, const int32_t *ids, size_t n_ids, int flags) {
    cases = realloc(cases, (n_cases + 1) * sizeof(*cases));
    struct golden_case *c = &cases[n_cases++];
    c->text = malloc(n_text + 1);
    memcpy(c->text, text, n_text);
    c->text[n_text] = '\0';
    c->n_text = n_text;
    c->ids = malloc((n_ids + 1) * sizeof(int32_t));
    memcpy(c->ids, ids, n_ids * sizeof(int32_t));
    c->n_ids = n_ids;
    c->flags = flags;
}

/*
 * Decodes the JSON string starting at p (just after its opening quote) into out, returning its
 * length. cJSON cannot report the length of a string holding "\u0000", and some golden texts
 * hold NUL, so the test decodes the texts itself.
 */
static size_t json_string_decode(const char *p, char *out) {
    size_t n = 0;
    while (*p != '"') {
        if (*p != '\\') {
            out[n++] = *p++;
            continue;
        }
        p++;
        char e = *p++;
        switch (e) {
        case 'n':
            out[n++] = '\n';
            break;
        case 't':
            out[n++] = '\t';
            break;
        case 'r':
            out[n++] = '\r';
            break;
        case 'b':
            out[n++] = '\b';
            break;
        case 'f':
            out[n++] = '\f';
            break;
        case 'u': {
            uint32_t cp = (uint32_t)strtoul((char[5]){p[0], p[1], p[2], p[3], 0}, NULL, 16);
            p += 4;
            if (cp >= 0xd800 && cp < 0xdc00 && p[0] == '\\' && p[1] == 'u') {
                uint32_t lo = (uint32_t)strtoul((char[5]){p[2], p[3], p[4], p[5], 0}, NULL, 16);
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                p += 6;
            }
            n += put_utf8(out + n, cp);
            break;
        }
        default: /* '"', '\\', '/' */
            out[n++] = e;
            break;
        }
    }
    return n;
}

/* Cases from a {"cases": [{"text", "ids"}]} file: ids through cJSON, texts decoded from the raw
 * file (the k-th "text": key belongs to the k-th case). */
static size_t load_json_cases(const char *rel, int flags) {
    char path[512];
    testdata_path(path, sizeof(path), rel);
    char *buf = read_whole(path, NULL);
    cJSON *root = cJSON_Parse(buf);
    need(root != NULL);
    size_t before = n_cases;
    const char *raw = buf;
    char *text = malloc(strlen(buf) + 1);
    const cJSON *c;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(root, "cases")) {
        const cJSON *ids = cJSON_GetObjectItem(c, "ids");
        size_t n_ids = (size_t)cJSON_GetArraySize(ids);
        int32_t *v = malloc((n_ids + 1) * sizeof(int32_t));
        for (size_t i = 0; i < n_ids; i++) {
            v[i] = (int32_t)cJSON_GetArrayItem(ids, (int)i)->valuedouble;
        }
        raw = strstr(raw, "\"text\":");
        need(raw != NULL);
        raw = strchr(raw + 7, '"');
        size_t n_text = json_string_decode(raw + 1, text);
        const char *parsed = cJSON_GetObjectItem(c, "text")->valuestring;
        need(memcmp(text, parsed, strlen(parsed)) == 0);
        add_case(text, n_text, v, n_ids, flags);
        free(v);
        raw++;
    }
    free(text);
    cJSON_Delete(root);
    free(buf);
    return n_cases - before;
}

/* The llama.cpp vectors: strings split by "\n__ggml_vocab_test__\n", ids one line each. */
static size_t load_ggml_cases(void) {
    char path[512];
    testdata_path(path, sizeof(path), "gpt2-tokenizer-cases/ggml-vocab-gpt-2.gguf.inp");
    size_t n_inp;
    char *inp = read_whole(path, &n_inp);
    testdata_path(path, sizeof(path), "gpt2-tokenizer-cases/ggml-vocab-gpt-2.gguf.out");
    char *out = read_whole(path, NULL);
    static const char sep[] = "\n__ggml_vocab_test__\n";
    size_t before = n_cases;
    char *p = inp;
    char *line = out;
    for (;;) {
        char *end = strstr(p, sep);
        if (end == NULL) {
            break;
        }
        char *nl = strchr(line, '\n');
        need(nl != NULL);
        *nl = '\0';
        int32_t ids[512];
        size_t n_ids = 0;
        char *q = line;
        while (*q != '\0') {
            char *next;
            long v = strtol(q, &next, 10);
            if (next == q) {
                break;
            }
            need(n_ids < 512);
            ids[n_ids++] = (int32_t)v;
            q = next;
        }
        add_case(p, (size_t)(end - p), ids, n_ids, TOKENIZER_PARSE_SPECIAL);
        p = end + strlen(sep);
        line = nl + 1;
    }
    free(inp);
    free(out);
    return n_cases - before;
}

static int32_t byte_id(const struct tokenizer *tok, unsigned char b) {
    char c = (char)b;
    int32_t id = tokenizer_token_id(tok, &c, 1);
    ck_assert_int_ge(id, 0);
    return id;
}

/* Streams ids through a detok, one at a time, into a malloc'd buffer. */
static char *stream_decode(const struct tokenizer *tok, const int32_t *ids, size_t n_ids,
                           size_t *n_out) {
    return stream_decode_with(tok, ids, n_ids, 0, n_out);
}

/* ---- golden encoding ------------------------------------------------------------------ */

START_TEST(test_encode_matches_golden_for_every_loader) {
    struct tokenizer *tok = toks[_i];
    ck_assert_uint_eq(n_cases, 130 + 46 + 13);
    for (size_t k = 0; k < n_cases; k++) {
        const struct golden_case *c = &cases[k];
        size_t n_ids;
        int32_t *ids = encode_ok(tok, c->text, c->n_text, c->flags, &n_ids);
        int is_same = n_ids == c->n_ids && memcmp(ids, c->ids, n_ids * sizeof(int32_t)) == 0;
        ck_assert_msg(is_same, "%s: case %zu (\"%.60s\"): got %zu ids, want %zu", loader_names[_i],
                      k, c->text, n_ids, c->n_ids);
        free(ids);
    }
}
END_TEST

START_TEST(test_loaders_agree_on_vocab_size_and_eos) {
    ck_assert_int_eq(tokenizer_n_vocab(toks[_i]), 50257);
    ck_assert_int_eq(tokenizer_eos_id(toks[_i]), 50256);
    size_t n;
    const char *p = tokenizer_token_bytes(toks[_i], 50256, &n);
    ck_assert_uint_eq(n, 13);
    ck_assert_mem_eq(p, "<|endoftext|>", 13);
    p = tokenizer_token_bytes(toks[_i], 220, &n); /* "Ġ" is the byte-level space */
    ck_assert_uint_eq(n, 1);
    ck_assert_int_eq(p[0], ' ');
    ck_assert_ptr_null(tokenizer_token_bytes(toks[_i], 50257, &n));
    ck_assert_ptr_null(tokenizer_token_bytes(toks[_i], -1, &n));
    ck_assert_uint_ge(tokenizer_max_token_bytes(toks[_i]), 64);
}
END_TEST

/* Extra cases from a reference of the original encoder (Python's regex module): Unicode
 * whitespace, and U+180E, which PCRE2's \s counts as a space but Unicode (since 6.3) does not. */
START_TEST(test_encode_treats_unicode_whitespace_like_the_reference) {
    static const struct {
        const char *text;
        int32_t ids[8];
        size_t n_ids;
    } extra[] = {
        {"x\xe3\x80\x80\xe3\x80\x80y", {87, 5099, 222, 5099, 222, 88}, 6},
        {"a\xe2\x80\xa8\xe2\x80\xa8 b", {64, 447, 101, 447, 101, 275}, 6},
        {".\xc2\x85\xc2\x85.", {13, 126, 227, 126, 227, 13}, 6},
        {"x\x1c\x1cy", {87, 216, 216, 88}, 4},
        {" \xe1\xa0\x8e!", {28053, 254, 236, 0}, 4},
        {"x \xe1\xa0\x8e", {87, 28053, 254, 236}, 4},
        {"a\xe1\xa0\x8e\xe1\xa0\x8e b", {64, 157, 254, 236, 157, 254, 236, 275}, 8},
    };
    for (size_t k = 0; k < sizeof(extra) / sizeof(extra[0]); k++) {
        size_t n_ids;
        int32_t *ids = encode_ok(toks[0], extra[k].text, strlen(extra[k].text), 0, &n_ids);
        ck_assert_msg(n_ids == extra[k].n_ids &&
                          memcmp(ids, extra[k].ids, n_ids * sizeof(int32_t)) == 0,
                      "case %zu: got %zu ids", k, n_ids);
        free(ids);
    }
}
END_TEST

START_TEST(test_special_tokens_parsed_only_with_the_flag) {
    static const char text[] = "a<|endoftext|>b<|endoftext|><|endoftext|>";
    size_t n_ids;
    int32_t *ids = encode_ok(toks[_i], text, strlen(text), TOKENIZER_PARSE_SPECIAL, &n_ids);
    static const int32_t want[] = {64, 50256, 65, 50256, 50256};
    ck_assert_uint_eq(n_ids, 5);
    ck_assert_mem_eq(ids, want, sizeof(want));
    free(ids);
    ids = encode_ok(toks[_i], text, strlen(text), 0, &n_ids);
    for (size_t i = 0; i < n_ids; i++) {
        ck_assert_int_ne(ids[i], 50256);
    }
    char *back = tokenizer_decode(toks[_i], ids, n_ids, NULL);
    ck_assert_str_eq(back, text);
    free(back);
    free(ids);
}
END_TEST

START_TEST(test_encode_refuses_invalid_utf8) {
    static const char *bad[] = {"\xff", "ok\xc0\x80", "\xed\xa0\x80", "abc\xe2\x82",
                                "\xf4\x90\x80\x80"};
    for (size_t k = 0; k < sizeof(bad) / sizeof(bad[0]); k++) {
        int32_t *ids = (int32_t *)1;
        size_t n_ids = 7;
        char err[128] = "";
        ck_assert_int_eq(
            tokenizer_encode(toks[0], bad[k], strlen(bad[k]), 0, &ids, &n_ids, err, sizeof(err)),
            -1);
        ck_assert_ptr_null(ids);
        ck_assert_uint_eq(n_ids, 0);
        ck_assert_msg(strstr(err, "UTF-8") != NULL, "message: %s", err);
    }
}
END_TEST

START_TEST(test_encode_empty_text_gives_no_ids) {
    size_t n_ids = 9;
    int32_t *ids = encode_ok(toks[0], "", 0, TOKENIZER_PARSE_SPECIAL, &n_ids);
    ck_assert_uint_eq(n_ids, 0);
    free(ids);
}
END_TEST

/* ---- decoding ------------------------------------------------------------------------- */

START_TEST(test_round_trip_decode_encode_is_identity) {
    for (size_t k = 0; k < n_cases; k++) {
        const struct golden_case *c = &cases[k];
        size_t n_ids;
        int32_t *ids = encode_ok(toks[_i], c->text, c->n_text, c->flags, &n_ids);
        size_t n_back;
        char *back = tokenizer_decode(toks[_i], ids, n_ids, &n_back);
        ck_assert_uint_eq(n_back, c->n_text);
        ck_assert_msg(memcmp(back, c->text, n_back) == 0, "case %zu", k);
        ck_assert_int_eq(back[n_back], '\0');
        free(back);
        free(ids);
    }
}
END_TEST

START_TEST(test_stream_decode_equals_whole_decode) {
    for (size_t k = 0; k < n_cases; k++) {
        const struct golden_case *c = &cases[k];
        size_t n_whole;
        size_t n_stream;
        char *whole = tokenizer_decode(toks[0], c->ids, c->n_ids, &n_whole);
        char *stream = stream_decode(toks[0], c->ids, c->n_ids, &n_stream);
        ck_assert_uint_eq(n_stream, n_whole);
        ck_assert_msg(memcmp(stream, whole, n_whole) == 0, "case %zu", k);
        free(whole);
        free(stream);
    }
}
END_TEST

/* Valid UTF-8 is never split: each piece the stream emits is itself valid UTF-8. */
START_TEST(test_stream_emits_only_complete_characters) {
    static const char *texts[] = {
        "\xf0\x9f\xa6\x99 emoji \xf0\x9f\x98\x80\xf0\x9f\x91\x8d\xf0\x9f\x8f\xbd",
        "\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e\xe3\x81\xae\xe3\x83\x86\xe3\x82\xad\xe3\x82\xb9"
        "\xe3\x83\x88 \xe4\xb8\xad\xe6\x96\x87",
        "e\xcc\x81 a\xcc\x8a\xcc\x81 n\xcc\x83o\xcc\x88 \xe1\x84\x92\xe1\x85\xa1\xe1\x86\xab",
    };
    for (size_t k = 0; k < sizeof(texts) / sizeof(texts[0]); k++) {
        size_t n_ids;
        int32_t *ids = encode_ok(toks[0], texts[k], strlen(texts[k]), 0, &n_ids);
        ck_assert_uint_gt(n_ids, 3);
        struct detok d;
        detok_init(&d, toks[0]);
        char all[512];
        size_t at = 0;
        int n_empty = 0;
        for (size_t i = 0; i < n_ids; i++) {
            char piece[512];
            size_t n = detok_feed(&d, ids[i], piece, tokenizer_max_token_bytes(toks[0]) + 16);
            n_empty += n == 0;
            /* A piece must re-encode: the tokenizer refuses invalid UTF-8. */
            int32_t *tmp = NULL;
            size_t n_tmp;
            ck_assert_int_eq(tokenizer_encode(toks[0], piece, n, 0, &tmp, &n_tmp, NULL, 0), 0);
            free(tmp);
            memcpy(all + at, piece, n);
            at += n;
        }
        ck_assert_uint_eq(detok_flush(&d, all + at, 16), 0);
        ck_assert_uint_eq(at, strlen(texts[k]));
        ck_assert_mem_eq(all, texts[k], at);
        /* Every text here has a character whose bytes span tokens, so some feed emits nothing. */
        ck_assert_int_gt(n_empty, 0);
        free(ids);
    }
}
END_TEST

START_TEST(test_stream_split_emoji_waits_for_its_last_byte) {
    /* U+1F999 (llama) is the three tokens 8582 99 247 in GPT-2. */
    struct detok d;
    detok_init(&d, toks[0]);
    char out[512];
    size_t cap = tokenizer_max_token_bytes(toks[0]) + 16;
    ck_assert_uint_eq(detok_feed(&d, 8582, out, cap), 0);
    ck_assert_uint_eq(detok_feed(&d, 99, out, cap), 0);
    ck_assert_uint_eq(detok_feed(&d, 247, out, cap), 4);
    ck_assert_mem_eq(out, "\xf0\x9f\xa6\x99", 4);
    ck_assert_uint_eq(detok_flush(&d, out, cap), 0);
}
END_TEST

/* Invalid bytes become U+FFFD per maximal subpart, as Python's errors="replace" does. */
START_TEST(test_decode_replaces_invalid_utf8_like_python) {
    static const struct {
        unsigned char bytes[8];
        size_t n;
        const char *want;
    } table[] = {
        {{0xf0, 0x9f, 0xa6}, 3, "\xef\xbf\xbd"}, /* truncated at the end */
        {{0xf0, 0x9f, 'a'},
         3,
         "\xef\xbf\xbd"
         "a"},                                                           /* broken by ASCII */
        {{0xed, 0xa0, 0x80}, 3, "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"}, /* surrogate */
        {{0xc0, 0x80}, 2, "\xef\xbf\xbd\xef\xbf\xbd"},                   /* overlong */
        {{0x80, 'x'},
         2,
         "\xef\xbf\xbd"
         "x"},                                                           /* lone continuation */
        {{0xe2, 0x82, 0xe2, 0x82, 0xac}, 5, "\xef\xbf\xbd\xe2\x82\xac"}, /* restart on a lead */
        {{0xff, 0xf5, 0xc1}, 3, "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"},
    };
    for (size_t k = 0; k < sizeof(table) / sizeof(table[0]); k++) {
        int32_t ids[8];
        for (size_t i = 0; i < table[k].n; i++) {
            ids[i] = byte_id(toks[0], table[k].bytes[i]);
        }
        size_t n_whole;
        char *whole = tokenizer_decode(toks[0], ids, table[k].n, &n_whole);
        ck_assert_msg(n_whole == strlen(table[k].want) &&
                          memcmp(whole, table[k].want, n_whole) == 0,
                      "case %zu: got %zu bytes", k, n_whole);
        size_t n_stream;
        char *stream = stream_decode(toks[0], ids, table[k].n, &n_stream);
        ck_assert_uint_eq(n_stream, n_whole);
        ck_assert_mem_eq(stream, whole, n_whole);
        free(whole);
        free(stream);
    }
}
END_TEST

START_TEST(test_stream_flush_emits_replacement_for_incomplete_tail) {
    struct detok d;
    detok_init(&d, toks[0]);
    char out[512];
    size_t cap = tokenizer_max_token_bytes(toks[0]) + 16;
    ck_assert_uint_eq(detok_feed(&d, byte_id(toks[0], 0xe6), out, cap), 0);
    ck_assert_uint_eq(detok_feed(&d, byte_id(toks[0], 0x97), out, cap), 0);
    ck_assert_uint_eq(detok_flush(&d, out, 16), 3);
    ck_assert_mem_eq(out, "\xef\xbf\xbd", 3);
    ck_assert_uint_eq(detok_flush(&d, out, 16), 0); /* flush resets */
    ck_assert_uint_eq(detok_feed(&d, 50256, out, cap), 13);
    ck_assert_uint_eq(detok_feed(&d, -5, out, cap), 0);
    ck_assert_uint_eq(detok_feed(&d, 999999, out, cap), 0);
}
END_TEST

/* Random valid UTF-8 from many blocks (ASCII, Latin, combining marks, Cyrillic, CJK, emoji,
 * spaces of every kind, controls, private use, the top plane): each text must round-trip, and
 * streaming must agree with the whole decode. Deterministic: a fixed-seed generator. */
static uint32_t lcg_next(uint64_t *state) {
    *state = *state * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(*state >> 33);
}

static size_t put_cp(char *out, uint32_t cp) {
    char tmp[4];
    size_t n = put_utf8(tmp, cp);
    memcpy(out, tmp, n);
    return n;
}

START_TEST(test_round_trip_random_unicode) {
    static const uint32_t ranges[][2] = {
        {0x00, 0x7f},     {0x80, 0x24f},      {0x300, 0x36f},       {0x400, 0x4ff},
        {0x900, 0x97f},   {0x1780, 0x17ff},   {0x180e, 0x180e},     {0x2000, 0x206f},
        {0x3000, 0x30ff}, {0x4e00, 0x9fff},   {0xac00, 0xd7a3},     {0xe000, 0xf8ff},
        {0xfe00, 0xfeff}, {0x1f300, 0x1faff}, {0x10fff0, 0x10ffff},
    };
    uint64_t state = 42;
    int n_texts = 300;
    for (int t = 0; t < n_texts; t++) {
        char text[256 * 4];
        size_t n = 0;
        int n_chars = 1 + (int)(lcg_next(&state) % 200);
        for (int k = 0; k < n_chars; k++) {
            const uint32_t *r = ranges[lcg_next(&state) % (sizeof(ranges) / sizeof(ranges[0]))];
            uint32_t cp = r[0] + lcg_next(&state) % (r[1] - r[0] + 1);
            n += put_cp(text + n, cp);
        }
        size_t n_ids;
        int32_t *ids = encode_ok(toks[t % N_LOADERS], text, n, 0, &n_ids);
        size_t n_back;
        char *back = tokenizer_decode(toks[t % N_LOADERS], ids, n_ids, &n_back);
        ck_assert_uint_eq(n_back, n);
        ck_assert_msg(memcmp(back, text, n) == 0, "text %d", t);
        size_t n_stream;
        char *stream = stream_decode(toks[t % N_LOADERS], ids, n_ids, &n_stream);
        ck_assert_uint_eq(n_stream, n);
        ck_assert(memcmp(stream, text, n) == 0);
        free(stream);
        free(back);
        free(ids);
    }
}
END_TEST

/* ---- long and concurrent inputs ------------------------------------------------------- */

/* One pre-token of 900,000 identical characters must not take quadratic time. There is no
 * timing assertion; a quadratic merge would hit the test timeout instead. */
START_TEST(test_encode_long_single_pretoken_completes) {
    static const char unit[][3] = {"a", " ", "7", "\xc3\xa9", "'", "\xc2\x85"};
    size_t n_chars = is_valgrind ? 90000 : 900000;
    for (size_t k = 0; k < sizeof(unit) / sizeof(unit[0]); k++) {
        size_t w = strlen(unit[k]);
        char *text = malloc(n_chars * w + 1);
        for (size_t i = 0; i < n_chars; i++) {
            memcpy(text + i * w, unit[k], w);
        }
        size_t n = n_chars * w;
        size_t n_ids;
        int32_t *ids = encode_ok(toks[0], text, n, 0, &n_ids);
        ck_assert_uint_gt(n_ids, 0);
        ck_assert_uint_le(n_ids, n); /* GPT-2 has no merge for two spaces: one id each */
        size_t n_back;
        char *back = tokenizer_decode(toks[0], ids, n_ids, &n_back);
        ck_assert_uint_eq(n_back, n);
        ck_assert(memcmp(back, text, n) == 0);
        free(back);
        free(ids);
        free(text);
    }
}
END_TEST

struct thread_job {
    struct tokenizer *tok;
    size_t i_first; /* each thread encodes every case, starting at a different one */
    int n_rounds;
    int n_mismatch;
};

static void *encode_thread(void *arg) {
    struct thread_job *job = arg;
    for (int r = 0; r < job->n_rounds; r++) {
        for (size_t j = 0; j < n_cases; j++) {
            const struct golden_case *c = &cases[(job->i_first + j) % n_cases];
            int32_t *ids = NULL;
            size_t n_ids;
            if (tokenizer_encode(job->tok, c->text, c->n_text, c->flags, &ids, &n_ids, NULL, 0) !=
                    0 ||
                n_ids != c->n_ids || memcmp(ids, c->ids, n_ids * sizeof(int32_t)) != 0) {
                job->n_mismatch++;
            }
            free(ids);
        }
    }
    return NULL;
}

START_TEST(test_concurrent_encodes_agree_with_golden) {
    enum { N_THREADS = 4 };
    pthread_t threads[N_THREADS];
    struct thread_job jobs[N_THREADS];
    for (int t = 0; t < N_THREADS; t++) {
        jobs[t] = (struct thread_job){toks[0], (size_t)t * 37, is_valgrind ? 1 : 20, 0};
        ck_assert_int_eq(pthread_create(&threads[t], NULL, encode_thread, &jobs[t]), 0);
    }
    for (int t = 0; t < N_THREADS; t++) {
        pthread_join(threads[t], NULL);
        ck_assert_int_eq(jobs[t].n_mismatch, 0);
    }
}
END_TEST

/* ---- malformed files ------------------------------------------------------------------ */

/* The byte-level character of byte b, as UTF-8 (GPT-2's bytes_to_unicode, written again here
 * so the test does not trust the code under test). */
static void byte_level_char(int b, char out[4]) {
    int cp;
    int is_self = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae);
    if (is_self) {
        cp = b;
    } else {
        int k = 0;
        for (int x = 0; x < b; x++) {
            k += !((x >= 0x21 && x <= 0x7e) || (x >= 0xa1 && x <= 0xac) || (x >= 0xae));
        }
        cp = 256 + k;
    }
    if (cp < 0x80) {
        out[0] = (char)cp;
        out[1] = '\0';
    } else {
        out[0] = (char)(0xc0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3f));
        out[2] = '\0';
    }
}

/* A tiny valid vocabulary: the 256 bytes (ids 0..255), "ab" (256), "abc" (257),
 * <|endoftext|> (258, added). Returned as cJSON for the cases to damage. */
static cJSON *tiny_vocab(void) {
    cJSON *vocab = cJSON_CreateObject();
    for (int b = 0; b < 256; b++) {
        char c[4];
        byte_level_char(b, c);
        cJSON_AddNumberToObject(vocab, c, b);
    }
    cJSON_AddNumberToObject(vocab, "ab", 256);
    cJSON_AddNumberToObject(vocab, "abc", 257);
    return vocab;
}

static cJSON *tiny_tokenizer_json(void) {
    cJSON *root = cJSON_CreateObject();
    cJSON *added = cJSON_AddArrayToObject(root, "added_tokens");
    cJSON *eot = cJSON_CreateObject();
    cJSON_AddNumberToObject(eot, "id", 258);
    cJSON_AddStringToObject(eot, "content", "<|endoftext|>");
    cJSON_AddBoolToObject(eot, "special", 1);
    cJSON_AddItemToArray(added, eot);
    cJSON_AddNullToObject(root, "normalizer");
    cJSON *pre = cJSON_AddObjectToObject(root, "pre_tokenizer");
    cJSON_AddStringToObject(pre, "type", "ByteLevel");
    cJSON_AddBoolToObject(pre, "add_prefix_space", 0);
    cJSON *model = cJSON_AddObjectToObject(root, "model");
    cJSON_AddStringToObject(model, "type", "BPE");
    cJSON_AddItemToObject(model, "vocab", tiny_vocab());
    cJSON *merges = cJSON_AddArrayToObject(model, "merges");
    cJSON_AddItemToArray(merges, cJSON_CreateString("a b"));
    cJSON *pair = cJSON_CreateArray();
    cJSON_AddItemToArray(pair, cJSON_CreateString("ab"));
    cJSON_AddItemToArray(pair, cJSON_CreateString("c"));
    cJSON_AddItemToArray(merges, pair);
    return root;
}

/* Each case damages the tiny tokenizer.json (or writes the two original files). */
enum bad_kind { BAD_JSON, BAD_FILES };
struct bad_case {
    const char *name;
    enum bad_kind kind;
    const char *file_text;   /* written verbatim when not NULL (BAD_JSON: tokenizer.json) */
    const char *merges_text; /* BAD_FILES: merges.txt (NULL: not written) */
    const char *want_file;   /* the message must name this file */
    const char *want;        /* and contain this */
};

static void damage(const char *name, cJSON *root) {
    cJSON *model = cJSON_GetObjectItem(root, "model");
    cJSON *vocab = cJSON_GetObjectItem(model, "vocab");
    cJSON *merges = cJSON_GetObjectItem(model, "merges");
    if (strcmp(name, "merge-unknown-token") == 0) {
        cJSON_AddItemToArray(merges, cJSON_CreateString("zq q"));
    } else if (strcmp(name, "merge-result-unknown") == 0) {
        cJSON_AddItemToArray(merges, cJSON_CreateString("x y"));
    } else if (strcmp(name, "merge-not-a-pair") == 0) {
        cJSON_AddItemToArray(merges, cJSON_CreateString("abc"));
    } else if (strcmp(name, "merge-wrong-type") == 0) {
        cJSON_AddItemToArray(merges, cJSON_CreateNumber(3));
    } else if (strcmp(name, "duplicate-id") == 0) {
        cJSON_AddNumberToObject(vocab, "xyz", 256);
    } else if (strcmp(name, "id-out-of-range") == 0) {
        cJSON_AddNumberToObject(vocab, "xyz", 1e9);
    } else if (strcmp(name, "id-negative") == 0) {
        cJSON_AddNumberToObject(vocab, "xyz", -3);
    } else if (strcmp(name, "id-not-integer") == 0) {
        cJSON_AddNumberToObject(vocab, "xyz", 259.5);
    } else if (strcmp(name, "id-wrong-type") == 0) {
        cJSON_AddStringToObject(vocab, "xyz", "259");
    } else if (strcmp(name, "vocab-wrong-type") == 0) {
        cJSON_ReplaceItemInObject(model, "vocab", cJSON_CreateArray());
    } else if (strcmp(name, "merges-missing") == 0) {
        cJSON_DeleteItemFromObjectCaseSensitive(model, "merges");
    } else if (strcmp(name, "model-missing") == 0) {
        cJSON_DeleteItemFromObjectCaseSensitive(root, "model");
    } else if (strcmp(name, "model-not-bpe") == 0) {
        cJSON_ReplaceItemInObject(model, "type", cJSON_CreateString("WordPiece"));
    } else if (strcmp(name, "byte-token-missing") == 0) {
        cJSON_DeleteItemFromObjectCaseSensitive(vocab, "a");
        cJSON_AddNumberToObject(vocab, "zz", 'a'); /* keep the id space dense */
    } else if (strcmp(name, "not-byte-level") == 0) {
        cJSON_AddNumberToObject(vocab, "\xe2\x98\x85", 259);
    } else if (strcmp(name, "added-conflicts") == 0) {
        cJSON *eot = cJSON_GetArrayItem(cJSON_GetObjectItem(root, "added_tokens"), 0);
        cJSON_ReplaceItemInObject(eot, "id", cJSON_CreateNumber(256));
    } else if (strcmp(name, "added-wrong-type") == 0) {
        cJSON *eot = cJSON_GetArrayItem(cJSON_GetObjectItem(root, "added_tokens"), 0);
        cJSON_ReplaceItemInObject(eot, "content", cJSON_CreateNumber(1));
    } else if (strcmp(name, "pre-tokenizer-other") == 0) {
        cJSON_ReplaceItemInObject(root, "pre_tokenizer", cJSON_CreateNull());
    }
}

static const struct bad_case bad_cases[] = {
    {"truncated", BAD_JSON, "{\"model\": {\"vocab\": {\"a\": 1", NULL, "tokenizer.json",
     "invalid JSON"},
    {"not-an-object", BAD_JSON, "[1, 2]", NULL, "tokenizer.json", "not a JSON object"},
    {"merge-unknown-token", BAD_JSON, NULL, NULL, "tokenizer.json", "unknown token 'zq'"},
    {"merge-result-unknown", BAD_JSON, NULL, NULL, "tokenizer.json", "not in the vocab"},
    {"merge-not-a-pair", BAD_JSON, NULL, NULL, "tokenizer.json", "merge 3"},
    {"merge-wrong-type", BAD_JSON, NULL, NULL, "tokenizer.json", "merge 3 is neither"},
    {"duplicate-id", BAD_JSON, NULL, NULL, "tokenizer.json", "duplicate id 256"},
    {"id-out-of-range", BAD_JSON, NULL, NULL, "tokenizer.json", "out of range"},
    {"id-negative", BAD_JSON, NULL, NULL, "tokenizer.json", "out of range"},
    {"id-not-integer", BAD_JSON, NULL, NULL, "tokenizer.json", "not an integer"},
    {"id-wrong-type", BAD_JSON, NULL, NULL, "tokenizer.json", "not an integer"},
    {"vocab-wrong-type", BAD_JSON, NULL, NULL, "tokenizer.json", "model.vocab"},
    {"merges-missing", BAD_JSON, NULL, NULL, "tokenizer.json", "model.merges"},
    {"model-missing", BAD_JSON, NULL, NULL, "tokenizer.json", "\"model\""},
    {"model-not-bpe", BAD_JSON, NULL, NULL, "tokenizer.json", "BPE"},
    {"byte-token-missing", BAD_JSON, NULL, NULL, "tokenizer.json", "byte 0x61"},
    {"not-byte-level", BAD_JSON, NULL, NULL, "tokenizer.json", "byte-level alphabet"},
    {"added-conflicts", BAD_JSON, NULL, NULL, "tokenizer.json", "the vocab gives"},
    {"added-wrong-type", BAD_JSON, NULL, NULL, "tokenizer.json", "added_tokens[0]"},
    {"pre-tokenizer-other", BAD_JSON, NULL, NULL, "tokenizer.json", "pre_tokenizer"},
    {"vocab-json-truncated", BAD_FILES, "{\"a\": 0, ", "#version: 0.2\n", "vocab.json",
     "invalid JSON"},
    {"merges-txt-three-parts", BAD_FILES, NULL, "#version: 0.2\na b\na b c\n", "merges.txt",
     "line 3"},
    {"merges-txt-unknown", BAD_FILES, NULL, "#version: 0.2\nq zz\n", "merges.txt",
     "unknown token 'zz'"},
    {"merges-txt-missing", BAD_FILES, NULL, NULL, "merges.txt", "cannot open"},
    {"nothing-there", BAD_FILES, "", NULL, "gptd_tok", "neither tokenizer.json"},
};

START_TEST(test_malformed_files_are_refused_naming_the_file) {
    const struct bad_case *bc = &bad_cases[_i];
    char dir[128];
    snprintf(dir, sizeof(dir), "%s/bad%d", tmp_root, _i);
    ck_assert_int_eq(mkdir(dir, 0700), 0);
    char path[256];
    char merges_path[256];
    snprintf(merges_path, sizeof(merges_path), "%s/merges.txt", dir);
    if (bc->kind == BAD_JSON) {
        snprintf(path, sizeof(path), "%s/tokenizer.json", dir);
        if (bc->file_text != NULL) {
            write_whole(path, bc->file_text);
        } else {
            cJSON *root = tiny_tokenizer_json();
            damage(bc->name, root);
            char *text = cJSON_Print(root);
            write_whole(path, text);
            free(text);
            cJSON_Delete(root);
        }
    } else {
        snprintf(path, sizeof(path), "%s/vocab.json", dir);
        if (bc->file_text == NULL) {
            cJSON *vocab = tiny_vocab();
            char *text = cJSON_Print(vocab);
            write_whole(path, text);
            free(text);
            cJSON_Delete(vocab);
        } else if (bc->file_text[0] != '\0') {
            write_whole(path, bc->file_text);
        } else {
            path[0] = '\0';
        }
        if (bc->merges_text != NULL) {
            write_whole(merges_path, bc->merges_text);
        }
    }
    char err[512] = "";
    struct tokenizer *tok = tokenizer_load(dir, err, sizeof(err));
    ck_assert_msg(tok == NULL, "%s: loaded", bc->name);
    ck_assert_msg(strstr(err, bc->want_file) != NULL && strstr(err, bc->want) != NULL,
                  "%s: message \"%s\" lacks \"%s\" or \"%s\"", bc->name, err, bc->want_file,
                  bc->want);
    if (path[0] != '\0') {
        unlink(path);
    }
    unlink(merges_path);
    rmdir(dir);
}
END_TEST

/* The tiny vocabulary itself loads, in both layouts, and merges by rank. */
START_TEST(test_tiny_vocab_loads_and_merges_by_rank) {
    char dir[128];
    snprintf(dir, sizeof(dir), "%s/tiny%d", tmp_root, _i);
    ck_assert_int_eq(mkdir(dir, 0700), 0);
    char path[256];
    char merges_path[256] = "";
    if (_i == 0) {
        snprintf(path, sizeof(path), "%s/tokenizer.json", dir);
        cJSON *root = tiny_tokenizer_json();
        char *text = cJSON_Print(root);
        write_whole(path, text);
        free(text);
        cJSON_Delete(root);
    } else {
        snprintf(path, sizeof(path), "%s/vocab.json", dir);
        cJSON *vocab = tiny_vocab();
        cJSON_AddNumberToObject(vocab, "<|endoftext|>", 258);
        char *text = cJSON_Print(vocab);
        write_whole(path, text);
        free(text);
        cJSON_Delete(vocab);
        snprintf(merges_path, sizeof(merges_path), "%s/merges.txt", dir);
        write_whole(merges_path, "#version: 0.2\r\na b\r\nab c\r\n");
    }
    char err[512] = "";
    struct tokenizer *tok = tokenizer_load(dir, err, sizeof(err));
    ck_assert_msg(tok != NULL, "%s", err);
    ck_assert_int_eq(tokenizer_n_vocab(tok), 259);
    ck_assert_int_eq(tokenizer_eos_id(tok), 258);
    size_t n_ids;
    int32_t *ids = encode_ok(tok, "abcab<|endoftext|>", 18, TOKENIZER_PARSE_SPECIAL, &n_ids);
    static const int32_t want[] = {257, 256, 258};
    ck_assert_uint_eq(n_ids, 3);
    ck_assert_mem_eq(ids, want, sizeof(want));
    free(ids);
    tokenizer_destroy(tok);
    unlink(path);
    if (merges_path[0] != '\0') {
        unlink(merges_path);
    }
    rmdir(dir);
}
END_TEST

START_TEST(test_destroy_null_is_a_noop) {
    tokenizer_destroy(NULL);
}
END_TEST

/* ---- set-up --------------------------------------------------------------------------- */

static void load_all(void) {
    char err[512] = "";
    char path[512];
    testdata_path(path, sizeof(path), "gpt2-tiny-random");
    toks[0] = tokenizer_load(path, err, sizeof(err));
    if (toks[0] == NULL) {
        fprintf(stderr, "cannot load %s: %s\n", path, err);
        exit(EXIT_FAILURE);
    }

    /* 1: the same tokenizer.json with merges rewritten as "a b" strings. */
    char dir[128];
    snprintf(dir, sizeof(dir), "%s/strings", tmp_root);
    mkdir(dir, 0700);
    testdata_path(path, sizeof(path), "gpt2-tiny-random/tokenizer.json");
    char *text = read_whole(path, NULL);
    cJSON *root = cJSON_Parse(text);
    free(text);
    cJSON *merges = cJSON_GetObjectItem(cJSON_GetObjectItem(root, "model"), "merges");
    cJSON *strings = cJSON_CreateArray();
    const cJSON *pair;
    cJSON_ArrayForEach(pair, merges) {
        char joined[512];
        snprintf(joined, sizeof(joined), "%s %s", cJSON_GetArrayItem(pair, 0)->valuestring,
                 cJSON_GetArrayItem(pair, 1)->valuestring);
        cJSON_AddItemToArray(strings, cJSON_CreateString(joined));
    }
    cJSON_ReplaceItemInObject(cJSON_GetObjectItem(root, "model"), "merges", strings);
    text = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    snprintf(path, sizeof(path), "%s/tokenizer.json", dir);
    write_whole(path, text);
    free(text);
    toks[1] = tokenizer_load(dir, err, sizeof(err));
    unlink(path);
    rmdir(dir);

    /* 2: vocab.json + merges.txt alone. */
    snprintf(dir, sizeof(dir), "%s/files", tmp_root);
    mkdir(dir, 0700);
    char link[256];
    for (int k = 0; k < 2; k++) {
        const char *name = k == 0 ? "vocab.json" : "merges.txt";
        /* GPT-2's own files, from the npm package tools/fetch-testdata caches. */
        if (registry_path(path, sizeof(path), "gpt2-vocab", name) == NULL) {
            exit(EXIT_FAILURE);
        }
        snprintf(link, sizeof(link), "%s/%s", dir, name);
        if (symlink(path, link) != 0) {
            perror("symlink");
        }
    }
    toks[2] = tokenizer_load(dir, err, sizeof(err));
    for (int k = 0; k < 2; k++) {
        snprintf(link, sizeof(link), "%s/%s", dir, k == 0 ? "vocab.json" : "merges.txt");
        unlink(link);
    }
    rmdir(dir);
    if (toks[1] == NULL || toks[2] == NULL) {
        fprintf(stderr, "cannot load a test tokenizer: %s\n", err);
        exit(EXIT_FAILURE);
    }

    size_t n_golden =
        load_json_cases("gpt2-tiny-random/golden/tokenizer.json", TOKENIZER_PARSE_SPECIAL);
    size_t n_ggml = load_ggml_cases();
    size_t n_expected = load_json_cases("gpt2-tokenizer-cases/expected.json", 0);
    if (n_golden != 130 || n_ggml != 46 || n_expected != 13) {
        fprintf(stderr, "golden data: %zu + %zu + %zu cases, want 130 + 46 + 13\n", n_golden,
                n_ggml, n_expected);
        exit(EXIT_FAILURE);
    }
}

static Suite *tokenizer_suite(void) {
    Suite *s = suite_create("tokenizer");
    TCase *tc = tcase_create("encode");
    tcase_set_timeout(tc, 60);
    tcase_add_loop_test(tc, test_encode_matches_golden_for_every_loader, 0, N_LOADERS);
    tcase_add_loop_test(tc, test_loaders_agree_on_vocab_size_and_eos, 0, N_LOADERS);
    tcase_add_loop_test(tc, test_special_tokens_parsed_only_with_the_flag, 0, N_LOADERS);
    tcase_add_test(tc, test_encode_treats_unicode_whitespace_like_the_reference);
    tcase_add_test(tc, test_encode_refuses_invalid_utf8);
    tcase_add_test(tc, test_encode_empty_text_gives_no_ids);
    tcase_add_test(tc, test_encode_long_single_pretoken_completes);
    tcase_add_test(tc, test_concurrent_encodes_agree_with_golden);
    suite_add_tcase(s, tc);

    tc = tcase_create("decode");
    tcase_add_loop_test(tc, test_round_trip_decode_encode_is_identity, 0, N_LOADERS);
    tcase_add_test(tc, test_stream_decode_equals_whole_decode);
    tcase_add_test(tc, test_round_trip_random_unicode);
    tcase_add_test(tc, test_stream_emits_only_complete_characters);
    tcase_add_test(tc, test_stream_split_emoji_waits_for_its_last_byte);
    tcase_add_test(tc, test_decode_replaces_invalid_utf8_like_python);
    tcase_add_test(tc, test_stream_flush_emits_replacement_for_incomplete_tail);
    suite_add_tcase(s, tc);

    tc = tcase_create("load");
    tcase_add_loop_test(tc, test_malformed_files_are_refused_naming_the_file, 0,
                        (int)(sizeof(bad_cases) / sizeof(bad_cases[0])));
    tcase_add_loop_test(tc, test_tiny_vocab_loads_and_merges_by_rank, 0, 2);
    tcase_add_test(tc, test_destroy_null_is_a_noop);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    is_valgrind = under_valgrind();
    snprintf(tmp_root, sizeof(tmp_root), "/tmp/gptd_tok_XXXXXX");
    if (mkdtemp(tmp_root) == NULL) {
        perror("mkdtemp");
        return EXIT_FAILURE;
    }
    load_all();
    SRunner *sr = srunner_create(tokenizer_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    for (int k = 0; k < N_LOADERS; k++) {
        tokenizer_destroy(toks[k]);
    }
    for (size_t k = 0; k < n_cases; k++) {
        free(cases[k].text);
        free(cases[k].ids);
    }
    free(cases);
    rmdir(tmp_root);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
