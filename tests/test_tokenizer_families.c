/*
 * test_tokenizer_families.c: Check suite for the tokenizer.json pipelines beyond GPT-2 --
 * Llama 3 and 3.1, Qwen 2.5 and 3, Mistral (SentencePiece-style), Gemma 3 -- and GPT-2's own
 * tokenizer.json, against the goldens in tests/data/tokenizers/<family>/visible.json: for every
 * case, encode with and without the post-processor's special tokens and decode both id lists,
 * exactly; streamed decode equals whole decode. Then the pipeline pieces on small tokenizers
 * this test writes itself (byte fallback, unknown tokens, Metaspace, added-token flags, the
 * decoder's start-of-text strip) and the load-time refusals.
 *
 * The families' tokenizer.json files come from npm packages (registry fixtures
 * tokenizer-<family>, tools/fetch-testdata); a missing one fails its test naming that command.
 */
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

static char tmp_root[64];

/* The families whose goldens must match exactly. */
static const char *const families[] = {"gpt2",  "llama3",  "llama3_1", "qwen2_5",
                                       "qwen3", "mistral", "gemma3"};
#define N_FAMILIES (sizeof(families) / sizeof(families[0]))

/* ---- helpers ------------------------------------------------------------------------- */

/*
 * The JSON string value of "key" in one line of a golden file, decoded into a malloc'd buffer
 * (*n gets its length). cJSON cannot report the length of a string holding \u0000, and one
 * golden text does, so strings are decoded here. Returns NULL when the key is absent.
 */
static char *line_string(const char *line, const char *key, size_t *n) {
    char pat[64];
    snprintf(pat, sizeof(pat), "\"%s\": \"", key);
    const char *p = strstr(line, pat);
    if (p == NULL) {
        return NULL;
    }
    p += strlen(pat);
    /* Zeroed: PCRE2's JIT may load bytes past the end of a subject (and ignore them), which
     * valgrind reports when they were never written. */
    char *out = calloc(strlen(p) + 1, 1);
    size_t m = 0;
    while (*p != '"') {
        if (*p != '\\') {
            out[m++] = *p++;
            continue;
        }
        p++;
        char e = *p++;
        if (e == 'u') {
            uint32_t cp = (uint32_t)strtoul((char[5]){p[0], p[1], p[2], p[3], 0}, NULL, 16);
            p += 4;
            if (cp >= 0xd800 && cp < 0xdc00 && p[0] == '\\' && p[1] == 'u') {
                uint32_t lo = (uint32_t)strtoul((char[5]){p[2], p[3], p[4], p[5], 0}, NULL, 16);
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                p += 6;
            }
            m += put_utf8(out + m, cp);
        } else {
            out[m++] = e == 'n'   ? '\n'
                       : e == 't' ? '\t'
                       : e == 'r' ? '\r'
                       : e == 'b' ? '\b'
                       : e == 'f' ? '\f'
                                  : e; /* '"', '\\', '/' */
        }
    }
    out[m] = '\0';
    *n = m;
    return out;
}

/* The ids of a JSON array as int32 (malloc'd; *n gets the count). */
static int32_t *json_ids(const cJSON *arr, size_t *n) {
    *n = (size_t)cJSON_GetArraySize(arr);
    int32_t *ids = malloc((*n + 1) * sizeof(*ids));
    size_t i = 0;
    const cJSON *v;
    cJSON_ArrayForEach(v, arr) {
        ids[i++] = (int32_t)v->valuedouble;
    }
    return ids;
}

/* Loads registry fixture tokenizer-<family>; fails the test when it is missing. */
static struct tokenizer *load_family(const char *family) {
    char fixture[64];
    char file[1024];
    snprintf(fixture, sizeof(fixture), "tokenizer-%s", family);
    ck_assert_msg(registry_path(file, sizeof(file), fixture, "tokenizer.json") != NULL,
                  "missing test data %s: run tools/fetch-testdata %s", fixture, fixture);
    *strrchr(file, '/') = '\0';
    char err[512] = "";
    struct tokenizer *tok = tokenizer_load(file, err, sizeof(err));
    ck_assert_msg(tok != NULL, "%s: %s", family, err);
    return tok;
}

static int ids_equal(const int32_t *a, size_t n_a, const int32_t *b, size_t n_b) {
    return n_a == n_b && (n_a == 0 || memcmp(a, b, n_a * sizeof(*a)) == 0);
}

static void print_ids(const char *what, const int32_t *ids, size_t n) {
    fprintf(stderr, "    %s:", what);
    for (size_t i = 0; i < n && i < 40; i++) {
        fprintf(stderr, " %d", ids[i]);
    }
    fprintf(stderr, n > 40 ? " ...\n" : "\n");
}

/* Decodes ids (whole and streamed, with flags) and compares with want; returns 1 when equal. */
static int decode_matches(const struct tokenizer *tok, const int32_t *ids, size_t n_ids, int flags,
                          const char *want, size_t n_want, const char *label) {
    size_t n_whole;
    size_t n_stream;
    char *whole = tokenizer_decode_with(tok, ids, n_ids, flags, &n_whole);
    char *stream = stream_decode_with(tok, ids, n_ids, flags, &n_stream);
    int ok = n_whole == n_want && memcmp(whole, want, n_want) == 0;
    int same = n_stream == n_whole && memcmp(stream, whole, n_whole) == 0;
    if (!ok) {
        fprintf(stderr, "    %s: got \"%.*s\" (%zu bytes), want \"%.*s\" (%zu bytes)\n", label,
                (int)n_whole, whole, n_whole, (int)n_want, want, n_want);
    }
    if (!same) {
        fprintf(stderr, "    %s: streamed \"%.*s\" differs from the whole decode\n", label,
                (int)n_stream, stream);
    }
    free(whole);
    free(stream);
    return ok && same;
}

/* ---- the goldens ----------------------------------------------------------------------- */

START_TEST(test_family_matches_every_visible_case) {
    const char *family = families[_i];
    struct tokenizer *tok = load_family(family);
    char rel[128];
    char path[1024];
    snprintf(rel, sizeof(rel), "tokenizers/%s/visible.json", family);
    char *buf = read_file(testdata_path(path, sizeof(path), rel), NULL);
    ck_assert_msg(buf != NULL, "cannot read %s", path);
    size_t n_cases = 0;
    size_t n_bad = 0;
    for (char *line = buf; line != NULL && *line != '\0';) {
        char *nl = strchr(line, '\n');
        if (nl != NULL) {
            *nl = '\0';
        }
        if (strncmp(line, "  {\"id\": ", 9) == 0) {
            /* One case per line: {...}, possibly followed by a comma. */
            size_t n_line = strlen(line);
            while (n_line > 0 && (line[n_line - 1] == ',' || line[n_line - 1] == ' ')) {
                n_line--;
            }
            cJSON *c = cJSON_ParseWithLength(line, n_line);
            ck_assert_msg(c != NULL, "%s: a case line is not JSON", rel);
            size_t n_text;
            size_t n_dec_with;
            size_t n_dec_no;
            char *text = line_string(line, "text", &n_text);
            char *dec_with = line_string(line, "decode_with_special", &n_dec_with);
            char *dec_no = line_string(line, "decode_no_special", &n_dec_no);
            ck_assert(text != NULL && dec_with != NULL && dec_no != NULL);
            size_t n_want_with;
            size_t n_want_no;
            int32_t *want_with = json_ids(cJSON_GetObjectItem(c, "ids_with_special"), &n_want_with);
            int32_t *want_no = json_ids(cJSON_GetObjectItem(c, "ids_no_special"), &n_want_no);
            const char *id = cJSON_GetStringValue(cJSON_GetObjectItem(c, "id"));

            size_t n_with;
            size_t n_no;
            int32_t *with = encode_ok(tok, text, n_text,
                                      TOKENIZER_PARSE_SPECIAL | TOKENIZER_ADD_SPECIAL, &n_with);
            int32_t *no = encode_ok(tok, text, n_text, TOKENIZER_PARSE_SPECIAL, &n_no);
            int ok = 1;
            if (!ids_equal(with, n_with, want_with, n_want_with)) {
                fprintf(stderr, "%s %s: ids_with_special differ\n", family, id);
                print_ids("got ", with, n_with);
                print_ids("want", want_with, n_want_with);
                ok = 0;
            }
            if (!ids_equal(no, n_no, want_no, n_want_no)) {
                fprintf(stderr, "%s %s: ids_no_special differ\n", family, id);
                print_ids("got ", no, n_no);
                print_ids("want", want_no, n_want_no);
                ok = 0;
            }
            ok &= decode_matches(tok, want_with, n_want_with, 0, dec_with, n_dec_with,
                                 "decode_with_special");
            ok &= decode_matches(tok, want_no, n_want_no, 0, dec_no, n_dec_no, "decode_no_special");
            if (!ok) {
                fprintf(stderr, "%s %s (%s): text \"%.*s\"\n", family, id,
                        cJSON_GetStringValue(cJSON_GetObjectItem(c, "category")), (int)n_text,
                        text);
                n_bad++;
            }
            n_cases++;
            free(with);
            free(no);
            free(want_with);
            free(want_no);
            free(text);
            free(dec_with);
            free(dec_no);
            cJSON_Delete(c);
        }
        line = nl != NULL ? nl + 1 : NULL;
    }
    free(buf);
    tokenizer_destroy(tok);
    ck_assert_msg(n_cases == 120, "%s: %zu cases, want 120", rel, n_cases);
    ck_assert_msg(n_bad == 0, "%s: %zu of %zu cases differ (details on stderr)", family, n_bad,
                  n_cases);
}
END_TEST

/* Skipping special tokens drops exactly the post-processor's BOS: for texts without special
 * strings, decode(ids_with_special, SKIP_SPECIAL) == decode(ids_no_special). And a completion
 * decoded after its prompt (CONTINUATION) keeps the leading space SentencePiece strips at the
 * start of a text. */
START_TEST(test_skip_special_and_continuation) {
    struct tokenizer *tok = load_family("mistral");
    static const char text[] = "Hello world";
    size_t n_with;
    size_t n_no;
    int32_t *with = encode_ok(tok, text, strlen(text),
                              TOKENIZER_PARSE_SPECIAL | TOKENIZER_ADD_SPECIAL, &n_with);
    int32_t *no = encode_ok(tok, text, strlen(text), TOKENIZER_PARSE_SPECIAL, &n_no);
    ck_assert_uint_eq(n_with, n_no + 1);
    ck_assert_int_eq(with[0], tokenizer_bos_id(tok));
    ck_assert(tokenizer_is_special(tok, with[0]));
    ck_assert(!tokenizer_is_special(tok, no[0]));
    ck_assert(decode_matches(tok, with, n_with, 0, "<s> Hello world", 15, "with"));
    ck_assert(decode_matches(tok, with, n_with, TOKENIZER_SKIP_SPECIAL, "Hello world", 11, "skip"));
    ck_assert(decode_matches(tok, no, n_no, TOKENIZER_CONTINUATION, " Hello world", 12, "cont"));
    ck_assert(decode_matches(tok, no, n_no, 0, "Hello world", 11, "start"));
    ck_assert_uint_eq(tokenizer_max_text_per_token(tok), tokenizer_max_token_bytes(tok));
    /* After a flush the stream starts over: the strip applies again. */
    struct detok d;
    detok_init(&d, tok);
    char out[256];
    size_t at = 0;
    for (int round = 0; round < 2; round++) {
        for (size_t i = 0; i < n_no; i++) {
            at += detok_feed(&d, no[i], out + at, sizeof(out) - at);
        }
        at += detok_flush(&d, out + at, sizeof(out) - at);
    }
    ck_assert_uint_eq(at, 22);
    ck_assert_mem_eq(out, "Hello worldHello world", 22);
    free(with);
    free(no);
    tokenizer_destroy(tok);
}
END_TEST

/* Byte tokens assemble a character across tokens: a streamed emoji appears whole, once its last
 * byte token arrives; the pieces before are empty. */
START_TEST(test_byte_fallback_streams_whole_characters) {
    struct tokenizer *tok = load_family("mistral");
    static const char text[] = "\xf0\x9f\xa6\x99!"; /* U+1F999, not in the vocabulary */
    size_t n;
    int32_t *ids = encode_ok(tok, text, strlen(text), 0, &n);
    /* "▁" then 4 byte tokens <0xF0> <0x9F> <0xA6> <0x99>, then "!". */
    ck_assert_uint_ge(n, 5);
    size_t k = 0;
    while (k < n && tokenizer_token_id(tok, "<0xF0>", 6) != ids[k]) {
        k++;
    }
    ck_assert_msg(k + 4 < n, "no <0xF0> byte token");
    struct detok d;
    detok_init(&d, tok);
    char out[64];
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        size_t m = detok_feed(&d, ids[i], out + total, sizeof(out) - total);
        if (i > k && i < k + 3) {
            ck_assert_uint_eq(m, 0);
        }
        if (i == k + 3) {
            ck_assert_uint_eq(m, 4);
            ck_assert_mem_eq(out + total, text, 4);
        }
        total += m;
    }
    total += detok_flush(&d, out + total, sizeof(out) - total);
    ck_assert_uint_eq(total, strlen(text));
    ck_assert_mem_eq(out, text, total);
    free(ids);
    tokenizer_destroy(tok);
}
END_TEST

/* Qwen's NFC normalizer: decomposed and precomposed spellings of the same text encode alike,
 * also when only part of a long text needs composing (gptd composes only around characters at
 * or above U+0300), and Hangul jamo compose into syllables. */
START_TEST(test_nfc_normalizer) {
    struct tokenizer *tok = load_family("qwen2_5");
    /* A decomposed character takes up to 3 times its composed bytes: the bound on text per
     * token (the server's early length check) allows for it. */
    ck_assert_uint_eq(tokenizer_max_text_per_token(tok), 3 * tokenizer_max_token_bytes(tok));
    static const struct {
        const char *nfd;
        const char *nfc;
    } pairs[] = {
        {"caf"
         "e\xcc\x81",
         "caf\xc3\xa9"},
        {"plain ascii then e\xcc\x81 and o\xcc\x88 again",
         "plain ascii then \xc3\xa9 and \xc3\xb6 again"},
        /* e + dot below + circumflex, reordered and composed: U+1EC7 */
        {"e\xcc\x82\xcc\xa3", "\xe1\xbb\x87"},
        /* Hangul L + V + T: U+D55C */
        {"\xe1\x84\x92\xe1\x85\xa1\xe1\x86\xab", "\xed\x95\x9c"},
        /* Angstrom sign U+212B is a singleton: it becomes U+00C5 */
        {"\xe2\x84\xab", "\xc3\x85"},
    };
    for (size_t k = 0; k < sizeof(pairs) / sizeof(pairs[0]); k++) {
        size_t n_a;
        size_t n_b;
        int32_t *a = encode_ok(tok, pairs[k].nfd, strlen(pairs[k].nfd), 0, &n_a);
        int32_t *b = encode_ok(tok, pairs[k].nfc, strlen(pairs[k].nfc), 0, &n_b);
        ck_assert_msg(ids_equal(a, n_a, b, n_b), "pair %zu encodes differently", k);
        size_t n_text;
        char *text = tokenizer_decode(tok, a, n_a, &n_text);
        ck_assert_uint_eq(n_text, strlen(pairs[k].nfc));
        ck_assert_mem_eq(text, pairs[k].nfc, n_text);
        free(text);
        free(a);
        free(b);
    }
    tokenizer_destroy(tok);
}
END_TEST

/* ---- small tokenizers written here ----------------------------------------------------- */

/*
 * A SentencePiece-style vocabulary: <unk> <s> </s>, the 256 byte tokens, "▁", letters a-e,
 * "▁a", "ab", "▁ab", "<x>" and a few merges. Returned as cJSON for the cases to change.
 */
static cJSON *sp_tokenizer_json(void) {
    cJSON *root = cJSON_CreateObject();
    cJSON *added = cJSON_AddArrayToObject(root, "added_tokens");
    static const char *const specials[] = {"<unk>", "<s>", "</s>"};
    for (int i = 0; i < 3; i++) {
        cJSON *a = cJSON_CreateObject();
        cJSON_AddNumberToObject(a, "id", i);
        cJSON_AddStringToObject(a, "content", specials[i]);
        cJSON_AddBoolToObject(a, "special", 1);
        cJSON_AddBoolToObject(a, "normalized", 0);
        cJSON_AddItemToArray(added, a);
    }
    cJSON *norm = cJSON_AddObjectToObject(root, "normalizer");
    cJSON_AddStringToObject(norm, "type", "Sequence");
    cJSON *steps = cJSON_AddArrayToObject(norm, "normalizers");
    cJSON *prepend = cJSON_CreateObject();
    cJSON_AddStringToObject(prepend, "type", "Prepend");
    cJSON_AddStringToObject(prepend, "prepend", "\xe2\x96\x81");
    cJSON_AddItemToArray(steps, prepend);
    cJSON *replace = cJSON_CreateObject();
    cJSON_AddStringToObject(replace, "type", "Replace");
    cJSON_AddStringToObject(cJSON_AddObjectToObject(replace, "pattern"), "String", " ");
    cJSON_AddStringToObject(replace, "content", "\xe2\x96\x81");
    cJSON_AddItemToArray(steps, replace);
    cJSON_AddNullToObject(root, "pre_tokenizer");
    cJSON *post = cJSON_AddObjectToObject(root, "post_processor");
    cJSON_AddStringToObject(post, "type", "TemplateProcessing");
    cJSON *single = cJSON_AddArrayToObject(post, "single");
    cJSON *bos = cJSON_CreateObject();
    cJSON_AddStringToObject(cJSON_AddObjectToObject(bos, "SpecialToken"), "id", "<s>");
    cJSON_AddItemToArray(single, bos);
    cJSON *seq = cJSON_CreateObject();
    cJSON_AddStringToObject(cJSON_AddObjectToObject(seq, "Sequence"), "id", "A");
    cJSON_AddItemToArray(single, seq);
    cJSON *sp = cJSON_AddObjectToObject(cJSON_AddObjectToObject(post, "special_tokens"), "<s>");
    cJSON_AddStringToObject(sp, "id", "<s>");
    cJSON_AddItemToArray(cJSON_AddArrayToObject(sp, "ids"), cJSON_CreateNumber(1));
    cJSON *dec = cJSON_AddObjectToObject(root, "decoder");
    cJSON_AddStringToObject(dec, "type", "Sequence");
    cJSON *ds = cJSON_AddArrayToObject(dec, "decoders");
    cJSON *r = cJSON_CreateObject();
    cJSON_AddStringToObject(r, "type", "Replace");
    cJSON_AddStringToObject(cJSON_AddObjectToObject(r, "pattern"), "String", "\xe2\x96\x81");
    cJSON_AddStringToObject(r, "content", " ");
    cJSON_AddItemToArray(ds, r);
    cJSON *bf = cJSON_CreateObject();
    cJSON_AddStringToObject(bf, "type", "ByteFallback");
    cJSON_AddItemToArray(ds, bf);
    cJSON *fuse = cJSON_CreateObject();
    cJSON_AddStringToObject(fuse, "type", "Fuse");
    cJSON_AddItemToArray(ds, fuse);
    cJSON *strip = cJSON_CreateObject();
    cJSON_AddStringToObject(strip, "type", "Strip");
    cJSON_AddStringToObject(strip, "content", " ");
    cJSON_AddNumberToObject(strip, "start", 1);
    cJSON_AddNumberToObject(strip, "stop", 0);
    cJSON_AddItemToArray(ds, strip);
    cJSON *model = cJSON_AddObjectToObject(root, "model");
    cJSON_AddStringToObject(model, "type", "BPE");
    cJSON_AddStringToObject(model, "unk_token", "<unk>");
    cJSON_AddBoolToObject(model, "byte_fallback", 1);
    cJSON_AddBoolToObject(model, "fuse_unk", 1);
    cJSON *vocab = cJSON_AddObjectToObject(model, "vocab");
    for (int i = 0; i < 3; i++) {
        cJSON_AddNumberToObject(vocab, specials[i], i);
    }
    for (int b = 0; b < 256; b++) {
        char piece[8];
        snprintf(piece, sizeof(piece), "<0x%02X>", b);
        cJSON_AddNumberToObject(vocab, piece, 3 + b);
    }
#define SEP "\xe2\x96\x81" /* "▁" */
    static const char *const pieces[] = {SEP,     "a",  "b",      "c",   "d",     "e",
                                         SEP "a", "ab", SEP "ab", "<x>", "e" SEP, "e" SEP "c"};
    for (int i = 0; i < 12; i++) {
        cJSON_AddNumberToObject(vocab, pieces[i], 259 + i);
    }
    cJSON *merges = cJSON_AddArrayToObject(model, "merges");
    static const char *const merge_list[] = {"a b", SEP " ab", SEP " a", "e " SEP, "e" SEP " c"};
#undef SEP
    for (int i = 0; i < 5; i++) {
        cJSON_AddItemToArray(merges, cJSON_CreateString(merge_list[i]));
    }
    return root;
}

/* Ids of sp_tokenizer_json's pieces. */
enum {
    SP_UNK = 0,
    SP_BOS = 1,
    SP_SPACE = 259,
    SP_A,
    SP_B,
    SP_C,
    SP_D,
    SP_E,
    SP_SA,
    SP_AB,
    SP_SAB,
    SP_X,
    SP_E_SPACE,
    SP_E_SPACE_C
};

static int dir_counter;

/* Writes root (and, when config is not NULL, a tokenizer_config.json) into a fresh folder and
 * loads it. Returns the tokenizer, or NULL with err filled. */
static struct tokenizer *load_json(const cJSON *root, const char *config, char *err,
                                   size_t err_size) {
    char dir[128];
    char path[256];
    snprintf(dir, sizeof(dir), "%s/t%d", tmp_root, dir_counter++);
    ck_assert_int_eq(mkdir(dir, 0700), 0);
    snprintf(path, sizeof(path), "%s/tokenizer.json", dir);
    char *text = cJSON_Print(root);
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
    free(text);
    char cpath[256];
    snprintf(cpath, sizeof(cpath), "%s/tokenizer_config.json", dir);
    if (config != NULL) {
        f = fopen(cpath, "wb");
        ck_assert_ptr_nonnull(f);
        fputs(config, f);
        fclose(f);
    }
    struct tokenizer *tok = tokenizer_load(dir, err, err_size);
    unlink(path);
    unlink(cpath);
    rmdir(dir);
    return tok;
}

static void expect_ids(struct tokenizer *tok, const char *text, int flags, const int32_t *want,
                       size_t n_want) {
    size_t n;
    int32_t *ids = encode_ok(tok, text, strlen(text), flags, &n);
    if (!ids_equal(ids, n, want, n_want)) {
        print_ids("got ", ids, n);
        print_ids("want", want, n_want);
    }
    ck_assert_msg(ids_equal(ids, n, want, n_want), "\"%s\" (flags %d)", text, flags);
    free(ids);
}

START_TEST(test_sentencepiece_pipeline_on_a_small_vocabulary) {
    cJSON *root = sp_tokenizer_json();
    char err[512] = "";
    struct tokenizer *tok = load_json(root, NULL, err, sizeof(err));
    ck_assert_msg(tok != NULL, "%s", err);
    /* Prepend + Replace, merges by rank: "▁ab" comes from "▁" + "ab" (rank 1) after "a b". */
    expect_ids(tok, "ab a", 0, (int32_t[]){SP_SAB, SP_SA}, 2);
    expect_ids(tok, "ab a", TOKENIZER_ADD_SPECIAL, (int32_t[]){SP_BOS, SP_SAB, SP_SA}, 3);
    /* A token that spans a space ("e▁c"): the word is not cut before that "▁" (a cut is only
     * made where no token can span it), so it forms; after "a" the cut is made. */
    expect_ids(tok, "e c a c", 0, (int32_t[]){SP_SPACE, SP_E_SPACE_C, SP_SA, SP_SPACE, SP_C}, 5);
    /* The empty text has no segment to prepend to: only BOS. */
    expect_ids(tok, "", TOKENIZER_ADD_SPECIAL, (int32_t[]){SP_BOS}, 1);
    /* A character outside the vocabulary becomes its UTF-8 bytes' tokens. */
    expect_ids(tok, "\xc3\xa9", 0, (int32_t[]){SP_SPACE, 3 + 0xc3, 3 + 0xa9}, 3);
    /* Each segment between added tokens is normalized on its own: Prepend again after <s>. */
    expect_ids(tok, "a<s>a", TOKENIZER_PARSE_SPECIAL, (int32_t[]){SP_SA, SP_BOS, SP_SA}, 3);
    /* Without PARSE_SPECIAL, "<s>" is text: its characters are byte tokens here. */
    expect_ids(tok, "<s>", 0, (int32_t[]){SP_SPACE, 3 + '<', 3 + 's', 3 + '>'}, 4);
    /* Decoding: "▁" is a space, bytes join into characters, one leading space is stripped. */
    size_t n;
    int32_t *ids = encode_ok(tok, " ab \xc3\xa9", 6, TOKENIZER_ADD_SPECIAL, &n);
    ck_assert(decode_matches(tok, ids, n, 0, "<s>  ab \xc3\xa9", 10, "with bos"));
    ck_assert(decode_matches(tok, ids + 1, n - 1, 0, " ab \xc3\xa9", 6, "without bos"));
    ck_assert(decode_matches(tok, ids, n, TOKENIZER_SKIP_SPECIAL, " ab \xc3\xa9", 6, "skipped"));
    free(ids);
    tokenizer_destroy(tok);

    /* Without the byte tokens of a character, the unknown token stands for it; consecutive
     * unknown characters fuse into one (fuse_unk). */
    cJSON *vocab = cJSON_GetObjectItem(cJSON_GetObjectItem(root, "model"), "vocab");
    cJSON_DeleteItemFromObject(vocab, "<0xC3>");
    tok = load_json(root, NULL, err, sizeof(err));
    ck_assert_msg(tok != NULL, "%s", err);
    expect_ids(tok,
               "\xc3\xa9\xc3\xa8"
               "a",
               0, (int32_t[]){SP_SPACE, SP_UNK, SP_A}, 3);
    tokenizer_destroy(tok);
    cJSON_Delete(root);
}
END_TEST

/* tokenizer_config.json's add_bos_token / add_eos_token decide what ADD_SPECIAL adds. */
START_TEST(test_config_flags_override_the_post_processor) {
    cJSON *root = sp_tokenizer_json();
    char err[512] = "";
    struct tokenizer *tok =
        load_json(root,
                  "{\"add_bos_token\": false, \"add_eos_token\": true, \"bos_token\": \"<s>\", "
                  "\"eos_token\": {\"content\": \"</s>\"}}",
                  err, sizeof(err));
    ck_assert_msg(tok != NULL, "%s", err);
    ck_assert_int_eq(tokenizer_bos_id(tok), 1);
    ck_assert_int_eq(tokenizer_eos_id(tok), 2);
    expect_ids(tok, "a", TOKENIZER_ADD_SPECIAL, (int32_t[]){SP_SA, 2}, 2);
    tokenizer_destroy(tok);
    /* transformers would convert this tokenizer anew without the "▁" prefix: refused. */
    tok = load_json(root, "{\"add_prefix_space\": false}", err, sizeof(err));
    ck_assert_ptr_null(tok);
    ck_assert_msg(strstr(err, "tokenizer_config.json") != NULL &&
                      strstr(err, "add_prefix_space false") != NULL,
                  "%s", err);
    tok = load_json(root, "{\"add_prefix_space\": true}", err, sizeof(err));
    ck_assert_msg(tok != NULL, "%s", err);
    tokenizer_destroy(tok);
    tok = load_json(root, "{\"add_bos_token\": true, \"bos_token\": \"<nope>\"}", err, sizeof(err));
    ck_assert_ptr_null(tok);
    ck_assert_msg(strstr(err, "tokenizer_config.json") != NULL && strstr(err, "bos_token") &&
                      strstr(err, "<nope>") != NULL,
                  "%s", err);
    cJSON_Delete(root);
}
END_TEST

/* The Metaspace pre-tokenizer (the newer Llama form): spaces become "▁", one goes in front of
 * the first segment only ("first"), and split true cuts before each "▁". */
START_TEST(test_metaspace_pre_tokenizer) {
    cJSON *root = sp_tokenizer_json();
    cJSON_ReplaceItemInObject(root, "normalizer", cJSON_CreateNull());
    cJSON *ms = cJSON_CreateObject();
    cJSON_AddStringToObject(ms, "type", "Metaspace");
    cJSON_AddStringToObject(ms, "replacement", "\xe2\x96\x81");
    cJSON_AddStringToObject(ms, "prepend_scheme", "first");
    cJSON_AddBoolToObject(ms, "split", 0);
    cJSON_ReplaceItemInObject(root, "pre_tokenizer", ms);
    char err[512] = "";
    struct tokenizer *tok = load_json(root, NULL, err, sizeof(err));
    ck_assert_msg(tok != NULL, "%s", err);
    expect_ids(tok, "ab a", 0, (int32_t[]){SP_SAB, SP_SA}, 2);
    /* "first": no "▁" in front of the segment after <s>. */
    expect_ids(tok, "a<s>a", TOKENIZER_PARSE_SPECIAL, (int32_t[]){SP_SA, SP_BOS, SP_A}, 3);
    /* A segment that already starts with the replacement gets no second one. */
    expect_ids(tok, " a", 0, (int32_t[]){SP_SA}, 1);
    tokenizer_destroy(tok);
    cJSON_ReplaceItemInObject(ms, "prepend_scheme", cJSON_CreateString("always"));
    cJSON_ReplaceItemInObject(ms, "split", cJSON_CreateTrue());
    tok = load_json(root, NULL, err, sizeof(err));
    ck_assert_msg(tok != NULL, "%s", err);
    expect_ids(tok, "a<s>a", TOKENIZER_PARSE_SPECIAL, (int32_t[]){SP_SA, SP_BOS, SP_SA}, 3);
    /* Split before each "▁": "▁a" "▁" "▁ab" -- "▁▁" has no merge anyway. */
    expect_ids(tok, "a  ab", 0, (int32_t[]){SP_SA, SP_SPACE, SP_SAB}, 3);
    tokenizer_destroy(tok);
    cJSON_Delete(root);
}
END_TEST

/* Added-token flags: rstrip / lstrip take the whitespace beside the match; a token marked
 * normalized is matched by its normalized content ("▁<x>" after Prepend), so in the middle of
 * a segment it needs the space before it. */
START_TEST(test_added_token_flags) {
    cJSON *root = sp_tokenizer_json();
    cJSON *added = cJSON_GetObjectItem(root, "added_tokens");
    cJSON *x = cJSON_CreateObject();
    cJSON_AddNumberToObject(x, "id", SP_SAB + 1);
    cJSON_AddStringToObject(x, "content", "<x>");
    cJSON_AddBoolToObject(x, "special", 0);
    cJSON_AddBoolToObject(x, "rstrip", 1);
    cJSON_AddBoolToObject(x, "lstrip", 1);
    cJSON_AddBoolToObject(x, "normalized", 0);
    cJSON_AddItemToArray(added, x);
    char err[512] = "";
    struct tokenizer *tok = load_json(root, NULL, err, sizeof(err));
    ck_assert_msg(tok != NULL, "%s", err);
    /* Whitespace taken by lstrip/rstrip has no bound: no bound on text per token either. */
    ck_assert_uint_eq(tokenizer_max_text_per_token(tok), 0);
    /* Non-special: matched even without PARSE_SPECIAL; the spaces around it are gone. */
    expect_ids(tok, "a  <x>  a", 0, (int32_t[]){SP_SA, SP_SAB + 1, SP_SA}, 3);
    tokenizer_destroy(tok);

    cJSON_ReplaceItemInObject(x, "rstrip", cJSON_CreateFalse());
    cJSON_ReplaceItemInObject(x, "lstrip", cJSON_CreateFalse());
    cJSON_ReplaceItemInObject(x, "normalized", cJSON_CreateTrue());
    tok = load_json(root, NULL, err, sizeof(err));
    ck_assert_msg(tok != NULL, "%s", err);
    /* At the start of the text the Prepend supplies the "▁"; "a<x>" has none before "<x>". */
    expect_ids(tok, "<x>", 0, (int32_t[]){SP_SAB + 1}, 1);
    expect_ids(tok, "a <x>", 0, (int32_t[]){SP_SA, SP_SAB + 1}, 2);
    expect_ids(tok, "a<x>", 0, (int32_t[]){SP_SA, 3 + '<', 3 + 'x', 3 + '>'}, 4);
    tokenizer_destroy(tok);
    cJSON_Delete(root);
}
END_TEST

/* ---- refusals ------------------------------------------------------------------------- */

struct refusal {
    const char *name;
    const char *want[3]; /* the message names the field and the value */
};

static const struct refusal refusals[] = {
    {"unigram", {"model.type", "Unigram"}},
    {"wordpiece", {"model.type", "WordPiece"}},
    {"normalizer-nfkc", {"normalizer.normalizers[0].type", "NFKC"}},
    {"normalizer-regex", {"normalizer.normalizers[1]", "Regex"}},
    {"pre-whitespace", {"pre_tokenizer.type", "Whitespace"}},
    {"pre-two-splits", {"pre_tokenizer.pretokenizers[1]", "second splitting"}},
    {"pre-after-bytelevel", {"pre_tokenizer.pretokenizers[1]", "after a ByteLevel"}},
    {"split-invert", {"pre_tokenizer.invert"}},
    {"split-contiguous", {"pre_tokenizer.behavior", "Contiguous"}},
    {"split-bad-regex", {"pre_tokenizer", "PCRE2"}},
    {"decoder-wordpiece", {"decoder.decoders[1].type", "WordPiece"}},
    {"decoder-missing", {"decoder is missing"}},
    {"strip-stop", {"decoder.decoders[3]", "stop 1"}},
    {"post-roberta", {"post_processor.type", "RobertaProcessing"}},
    {"post-sequence-b", {"post_processor.single", "\"B\""}},
    {"single-word", {"added_tokens[3].single_word", "<y>"}},
    {"no-byte-fallback", {"pre_tokenizer", "byte_fallback"}},
    {"dropout", {"model.dropout", "0.1"}},
    {"unk-unknown", {"model.unk_token", "<nope>"}},
};

static void make_refusal(const char *name, cJSON *root) {
    cJSON *model = cJSON_GetObjectItem(root, "model");
    cJSON *norm = cJSON_GetObjectItem(cJSON_GetObjectItem(root, "normalizer"), "normalizers");
    cJSON *dec = cJSON_GetObjectItem(cJSON_GetObjectItem(root, "decoder"), "decoders");
    cJSON *post = cJSON_GetObjectItem(root, "post_processor");
    cJSON *split = cJSON_CreateObject();
    cJSON_AddStringToObject(split, "type", "Split");
    cJSON_AddStringToObject(cJSON_AddObjectToObject(split, "pattern"), "Regex", "\\s+");
    cJSON_AddStringToObject(split, "behavior", "Isolated");
    cJSON_AddBoolToObject(split, "invert", 0);
    if (strcmp(name, "unigram") == 0) {
        cJSON_ReplaceItemInObject(model, "type", cJSON_CreateString("Unigram"));
    } else if (strcmp(name, "wordpiece") == 0) {
        cJSON_ReplaceItemInObject(model, "type", cJSON_CreateString("WordPiece"));
    } else if (strcmp(name, "normalizer-nfkc") == 0) {
        cJSON_ReplaceItemInObject(cJSON_GetArrayItem(norm, 0), "type", cJSON_CreateString("NFKC"));
    } else if (strcmp(name, "normalizer-regex") == 0) {
        cJSON *pattern = cJSON_GetObjectItem(cJSON_GetArrayItem(norm, 1), "pattern");
        cJSON_DeleteItemFromObject(pattern, "String");
        cJSON_AddStringToObject(pattern, "Regex", " ");
    } else if (strcmp(name, "pre-whitespace") == 0) {
        cJSON *w = cJSON_CreateObject();
        cJSON_AddStringToObject(w, "type", "Whitespace");
        cJSON_ReplaceItemInObject(root, "pre_tokenizer", w);
    } else if (strcmp(name, "pre-two-splits") == 0) {
        cJSON *s = cJSON_CreateObject();
        cJSON_AddStringToObject(s, "type", "Sequence");
        cJSON *list = cJSON_AddArrayToObject(s, "pretokenizers");
        cJSON_AddItemToArray(list, cJSON_Duplicate(split, 1));
        cJSON_AddItemToArray(list, cJSON_Duplicate(split, 1));
        cJSON_ReplaceItemInObject(root, "pre_tokenizer", s);
    } else if (strcmp(name, "pre-after-bytelevel") == 0) {
        /* The byte mapping first would make the regex see "Ġ" for a space. */
        cJSON *s = cJSON_CreateObject();
        cJSON_AddStringToObject(s, "type", "Sequence");
        cJSON *list = cJSON_AddArrayToObject(s, "pretokenizers");
        cJSON *bl = cJSON_CreateObject();
        cJSON_AddStringToObject(bl, "type", "ByteLevel");
        cJSON_AddBoolToObject(bl, "use_regex", 0);
        cJSON_AddItemToArray(list, bl);
        cJSON_AddItemToArray(list, cJSON_Duplicate(split, 1));
        cJSON_ReplaceItemInObject(root, "pre_tokenizer", s);
    } else if (strcmp(name, "split-invert") == 0) {
        cJSON_ReplaceItemInObject(split, "invert", cJSON_CreateTrue());
        cJSON_ReplaceItemInObject(root, "pre_tokenizer", cJSON_Duplicate(split, 1));
    } else if (strcmp(name, "split-contiguous") == 0) {
        cJSON_ReplaceItemInObject(split, "behavior", cJSON_CreateString("Contiguous"));
        cJSON_ReplaceItemInObject(root, "pre_tokenizer", cJSON_Duplicate(split, 1));
    } else if (strcmp(name, "split-bad-regex") == 0) {
        cJSON *pattern = cJSON_GetObjectItem(split, "pattern");
        cJSON_ReplaceItemInObject(pattern, "Regex", cJSON_CreateString("(unclosed"));
        cJSON_ReplaceItemInObject(root, "pre_tokenizer", cJSON_Duplicate(split, 1));
    } else if (strcmp(name, "decoder-wordpiece") == 0) {
        cJSON_ReplaceItemInObject(cJSON_GetArrayItem(dec, 1), "type",
                                  cJSON_CreateString("WordPiece"));
    } else if (strcmp(name, "decoder-missing") == 0) {
        cJSON_DeleteItemFromObject(root, "decoder");
    } else if (strcmp(name, "strip-stop") == 0) {
        cJSON_ReplaceItemInObject(cJSON_GetArrayItem(dec, 3), "stop", cJSON_CreateNumber(1));
    } else if (strcmp(name, "post-roberta") == 0) {
        cJSON_ReplaceItemInObject(post, "type", cJSON_CreateString("RobertaProcessing"));
    } else if (strcmp(name, "post-sequence-b") == 0) {
        cJSON *b = cJSON_CreateObject();
        cJSON_AddStringToObject(cJSON_AddObjectToObject(b, "Sequence"), "id", "B");
        cJSON_AddItemToArray(cJSON_GetObjectItem(post, "single"), b);
    } else if (strcmp(name, "single-word") == 0) {
        cJSON *y = cJSON_CreateObject();
        cJSON_AddNumberToObject(y, "id", SP_SAB + 1);
        cJSON_AddStringToObject(y, "content", "<y>");
        cJSON_AddBoolToObject(y, "special", 0);
        cJSON_AddBoolToObject(y, "single_word", 1);
        cJSON_AddItemToArray(cJSON_GetObjectItem(root, "added_tokens"), y);
    } else if (strcmp(name, "no-byte-fallback") == 0) {
        cJSON_ReplaceItemInObject(model, "byte_fallback", cJSON_CreateFalse());
    } else if (strcmp(name, "dropout") == 0) {
        cJSON_AddNumberToObject(model, "dropout", 0.1);
    } else if (strcmp(name, "unk-unknown") == 0) {
        cJSON_ReplaceItemInObject(model, "unk_token", cJSON_CreateString("<nope>"));
    }
    cJSON_Delete(split);
}

START_TEST(test_unsupported_parts_are_refused_naming_field_and_value) {
    const struct refusal *r = &refusals[_i];
    cJSON *root = sp_tokenizer_json();
    make_refusal(r->name, root);
    char err[512] = "";
    struct tokenizer *tok = load_json(root, NULL, err, sizeof(err));
    cJSON_Delete(root);
    ck_assert_msg(tok == NULL, "%s: loaded", r->name);
    ck_assert_msg(strstr(err, "tokenizer.json") != NULL, "%s: \"%s\" names no file", r->name, err);
    for (int k = 0; k < 3 && r->want[k] != NULL; k++) {
        ck_assert_msg(strstr(err, r->want[k]) != NULL, "%s: \"%s\" lacks \"%s\"", r->name, err,
                      r->want[k]);
    }
}
END_TEST

/* ---- set-up --------------------------------------------------------------------------- */

static Suite *families_suite(void) {
    Suite *s = suite_create("tokenizer_families");
    TCase *tc = tcase_create("goldens");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test_family_matches_every_visible_case, 0, (int)N_FAMILIES);
    tcase_add_test(tc, test_skip_special_and_continuation);
    tcase_add_test(tc, test_byte_fallback_streams_whole_characters);
    tcase_add_test(tc, test_nfc_normalizer);
    suite_add_tcase(s, tc);

    tc = tcase_create("pipeline");
    tcase_add_test(tc, test_sentencepiece_pipeline_on_a_small_vocabulary);
    tcase_add_test(tc, test_config_flags_override_the_post_processor);
    tcase_add_test(tc, test_metaspace_pre_tokenizer);
    tcase_add_test(tc, test_added_token_flags);
    tcase_add_loop_test(tc, test_unsupported_parts_are_refused_naming_field_and_value, 0,
                        (int)(sizeof(refusals) / sizeof(refusals[0])));
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    snprintf(tmp_root, sizeof(tmp_root), "/tmp/gptd_tokfam_XXXXXX");
    if (mkdtemp(tmp_root) == NULL) {
        perror("mkdtemp");
        return EXIT_FAILURE;
    }
    SRunner *sr = srunner_create(families_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    rmdir(tmp_root);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
