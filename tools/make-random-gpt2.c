/*
 * make-random-gpt2.c: writes a GPT-2-shaped (or, with --arch llama, Llama-shaped) model with
 * random weights in the Hugging Face layout (config.json + model.safetensors, float32, tied
 * head) into a directory, for benchmarks. The default shape is GPT-2 small (124M: 12 layers, 768
 * wide, 12 heads, context 1024, vocab 50257), about 500 MB: write it under build/ or /tmp, never
 * into the repository. A fixed seed gives the same bytes on every run.
 *
 * Usage: make-random-gpt2 OUT_DIR [--layers L] [--embd C] [--heads NH] [--ctx T] [--vocab V]
 *                        [--seed S] [--byte-tokenizer]
 *                        [--arch gpt2|llama] [--kv-heads KVH] [--ffn F] [--smollm2-135m]
 * --arch llama writes a Llama (model_type llama: RMSNorm, RoPE, SiLU-gated MLP of width F,
 * grouped-query attention with KVH KV heads, tied embeddings; model.layers.N.* names);
 * --smollm2-135m is that with SmolLM2-135M's shape (30 layers, 576 wide, 9 heads, 3 KV heads,
 * FFN 1536, vocab 49152, context 2048).
 * --byte-tokenizer also writes a tokenizer.json of its own: GPT-2's byte-level BPE with the 256
 * byte tokens (id = byte value), no merges, and <|endoftext|> as the last id (a GPT-2's
 * vocabulary becomes 257; a Llama keeps its own, the ids between the bytes and the last one
 * spelled as made-up words " w<id>"). That makes a self-contained model directory, which
 * benchmarks serve over HTTP.
 * Stand-alone tool (single thread); it does not link libgptd.
 */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

struct shape {
    int32_t n_layer, n_embd, n_head, n_ctx, n_vocab;
    int is_llama;
    int32_t n_kv_head, n_ffn; /* Llama only */
};

struct tensor {
    char name[96];
    int64_t d0, d1; /* d1 = 0: 1-D */
    float mean, std;
};

static uint64_t g_rng;

/* xorshift64*: fast, fixed, good enough for weights nobody trains. */
static uint32_t rng_u32(void) {
    g_rng ^= g_rng >> 12;
    g_rng ^= g_rng << 25;
    g_rng ^= g_rng >> 27;
    return (uint32_t)((g_rng * 2685821657736338717ull) >> 32);
}

static float rng_normal(void) {
    /* Box-Muller on two uniforms in (0, 1]. */
    float u1 = ((float)rng_u32() + 1.0f) / 4294967296.0f;
    float u2 = (float)rng_u32() / 4294967296.0f;
    return sqrtf(-2.0f * logf(u1)) * cosf(6.28318530718f * u2);
}

static int build_tensors(const struct shape *s, struct tensor *t) {
    int n = 0;
    int64_t C = s->n_embd;
    float proj_std = 0.02f / sqrtf(2.0f * (float)s->n_layer);
#define ADD(NAME, D0, D1, MEAN, STD)                                                               \
    do {                                                                                           \
        snprintf(t[n].name, sizeof(t[n].name), "%s", NAME);                                        \
        t[n].d0 = (D0);                                                                            \
        t[n].d1 = (D1);                                                                            \
        t[n].mean = (MEAN);                                                                        \
        t[n].std = (STD);                                                                          \
        n++;                                                                                       \
    } while (0)
    if (s->is_llama) {
        int64_t kv_dim = C / s->n_head * s->n_kv_head;
        int64_t F = s->n_ffn;
        ADD("model.embed_tokens.weight", s->n_vocab, C, 0.0f, 0.02f);
        for (int32_t l = 0; l < s->n_layer; l++) {
            const struct {
                const char *suffix;
                int64_t d0, d1;
                float mean, std;
            } per[] = {{"input_layernorm.weight", C, 0, 1.0f, 0.02f},
                       {"self_attn.q_proj.weight", C, C, 0.0f, 0.02f},
                       {"self_attn.k_proj.weight", kv_dim, C, 0.0f, 0.02f},
                       {"self_attn.v_proj.weight", kv_dim, C, 0.0f, 0.02f},
                       {"self_attn.o_proj.weight", C, C, 0.0f, proj_std},
                       {"post_attention_layernorm.weight", C, 0, 1.0f, 0.02f},
                       {"mlp.gate_proj.weight", F, C, 0.0f, 0.02f},
                       {"mlp.up_proj.weight", F, C, 0.0f, 0.02f},
                       {"mlp.down_proj.weight", C, F, 0.0f, proj_std}};
            for (size_t i = 0; i < sizeof(per) / sizeof(per[0]); i++) {
                char name[96];
                snprintf(name, sizeof(name), "model.layers.%d.%s", l, per[i].suffix);
                ADD(name, per[i].d0, per[i].d1, per[i].mean, per[i].std);
            }
        }
        ADD("model.norm.weight", C, 0, 1.0f, 0.02f);
        return n;
    }
    ADD("transformer.wte.weight", s->n_vocab, C, 0.0f, 0.02f);
    ADD("transformer.wpe.weight", s->n_ctx, C, 0.0f, 0.01f);
    for (int32_t l = 0; l < s->n_layer; l++) {
        char name[96];
#define LAYER(SUFFIX, D0, D1, MEAN, STD)                                                           \
    do {                                                                                           \
        snprintf(name, sizeof(name), "transformer.h.%d.%s", l, SUFFIX);                            \
        ADD(name, D0, D1, MEAN, STD);                                                              \
    } while (0)
        LAYER("ln_1.weight", C, 0, 1.0f, 0.02f);
        LAYER("ln_1.bias", C, 0, 0.0f, 0.02f);
        LAYER("attn.c_attn.weight", C, 3 * C, 0.0f, 0.02f);
        LAYER("attn.c_attn.bias", 3 * C, 0, 0.0f, 0.02f);
        LAYER("attn.c_proj.weight", C, C, 0.0f, proj_std);
        LAYER("attn.c_proj.bias", C, 0, 0.0f, 0.02f);
        LAYER("ln_2.weight", C, 0, 1.0f, 0.02f);
        LAYER("ln_2.bias", C, 0, 0.0f, 0.02f);
        LAYER("mlp.c_fc.weight", C, 4 * C, 0.0f, 0.02f);
        LAYER("mlp.c_fc.bias", 4 * C, 0, 0.0f, 0.02f);
        LAYER("mlp.c_proj.weight", 4 * C, C, 0.0f, proj_std);
        LAYER("mlp.c_proj.bias", C, 0, 0.0f, 0.02f);
#undef LAYER
    }
    ADD("transformer.ln_f.weight", C, 0, 1.0f, 0.02f);
    ADD("transformer.ln_f.bias", C, 0, 0.0f, 0.02f);
#undef ADD
    return n;
}

/* Writes dir/tokenizer.json: 256 byte tokens in GPT-2's byte-to-unicode spelling (printable
 * Latin-1 bytes stand for themselves, the others for U+0100 onwards, in byte order), then (for a
 * larger vocabulary) one made-up word per id up to n_vocab - 2, spelled " w<id>", no merges,
 * and <|endoftext|> as the special token n_vocab - 1: every id of the model decodes to text. */
static int write_byte_tokenizer(const char *dir, int32_t n_vocab) {
    char path[4096];
    snprintf(path, sizeof(path), "%s/tokenizer.json", dir);
    FILE *f = fopen(path, "w");
    if (f == NULL) {
        fprintf(stderr, "make-random-gpt2: %s: %s\n", path, strerror(errno));
        return -1;
    }
    fprintf(f,
            "{\"version\":\"1.0\",\"added_tokens\":[{\"id\":%d,\"content\":\"<|endoftext|>\","
            "\"special\":true}],\"normalizer\":null,\"pre_tokenizer\":{\"type\":\"ByteLevel\","
            "\"add_prefix_space\":false,\"trim_offsets\":true,\"use_regex\":true},"
            "\"decoder\":{\"type\":\"ByteLevel\"},\"model\":{\"type\":\"BPE\",\"vocab\":{",
            (int)(n_vocab - 1));
    int n_shifted = 0;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
        int code = printable ? b : 256 + n_shifted++;
        fprintf(f, "%s\"\\u%04x\":%d", b > 0 ? "," : "", code, b);
    }
    for (int32_t id = 256; id < n_vocab - 1; id++) {
        fprintf(f, ",\"\\u0120w%d\":%d", (int)id, (int)id); /* U+0120 is the space byte */
    }
    fprintf(f, ",\"<|endoftext|>\":%d},\"merges\":[]}}\n", (int)(n_vocab - 1));
    return fclose(f) == 0 ? 0 : -1;
}

static int parse_flag(int argc, char **argv, int *i, const char *flag, int32_t *out) {
    if (strcmp(argv[*i], flag) != 0) {
        return 0;
    }
    if (*i + 1 >= argc) {
        fprintf(stderr, "make-random-gpt2: %s needs a value\n", flag);
        exit(2);
    }
    *out = (int32_t)strtol(argv[++*i], NULL, 10);
    return 1;
}

int main(int argc, char **argv) {
    struct shape s = {12, 768, 12, 1024, 50257, 0, 0, 0};
    int32_t seed = 1234;
    const char *dir = NULL;
    int has_byte_tokenizer = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--byte-tokenizer") == 0) {
            has_byte_tokenizer = 1;
            continue;
        }
        if (strcmp(argv[i], "--smollm2-135m") == 0) {
            s = (struct shape){30, 576, 9, 2048, 49152, 1, 3, 1536};
            continue;
        }
        if (strcmp(argv[i], "--arch") == 0 && i + 1 < argc) {
            i++;
            if (strcmp(argv[i], "llama") == 0) {
                s.is_llama = 1;
            } else if (strcmp(argv[i], "gpt2") != 0) {
                fprintf(stderr, "make-random-gpt2: --arch wants gpt2 or llama, not '%s'\n",
                        argv[i]);
                return 2;
            }
            continue;
        }
        if (parse_flag(argc, argv, &i, "--kv-heads", &s.n_kv_head) ||
            parse_flag(argc, argv, &i, "--ffn", &s.n_ffn)) {
            continue;
        }
        if (parse_flag(argc, argv, &i, "--layers", &s.n_layer) ||
            parse_flag(argc, argv, &i, "--embd", &s.n_embd) ||
            parse_flag(argc, argv, &i, "--heads", &s.n_head) ||
            parse_flag(argc, argv, &i, "--ctx", &s.n_ctx) ||
            parse_flag(argc, argv, &i, "--vocab", &s.n_vocab) ||
            parse_flag(argc, argv, &i, "--seed", &seed)) {
            continue;
        }
        if (argv[i][0] == '-' || dir != NULL) {
            fprintf(stderr, "usage: make-random-gpt2 OUT_DIR [--layers L] [--embd C] [--heads NH] "
                            "[--ctx T] [--vocab V] [--seed S] [--byte-tokenizer] [--arch "
                            "gpt2|llama] [--kv-heads KVH] [--ffn F] [--smollm2-135m]\n");
            return 2;
        }
        dir = argv[i];
    }
    if (s.is_llama && s.n_kv_head == 0) {
        s.n_kv_head = s.n_head;
    }
    if (s.is_llama && s.n_ffn == 0) {
        s.n_ffn = 4 * s.n_embd;
    }
    if (dir == NULL || s.n_layer < 1 || s.n_embd < 1 || s.n_head < 1 || s.n_embd % s.n_head != 0 ||
        s.n_ctx < 1 || s.n_vocab < 1 ||
        (s.is_llama && (s.n_kv_head < 1 || s.n_head % s.n_kv_head != 0 || s.n_ffn < 1))) {
        fprintf(stderr, "make-random-gpt2: need OUT_DIR and a valid shape\n");
        return 2;
    }
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, "make-random-gpt2: %s: %s\n", dir, strerror(errno));
        return 1;
    }
    if (has_byte_tokenizer) {
        /* GPT-2: the vocabulary becomes the tokenizer's. A Llama keeps its own (larger) one:
         * the byte tokenizer then covers its first 257 ids, enough to serve it over HTTP. */
        if (!s.is_llama) {
            s.n_vocab = 257;
        }
        if (write_byte_tokenizer(dir, s.n_vocab) != 0) {
            return 1;
        }
    }
    g_rng = 0x9E3779B97F4A7C15ull ^ (uint64_t)(uint32_t)seed;

    char path[4096];
    snprintf(path, sizeof(path), "%s/config.json", dir);
    FILE *f = fopen(path, "w");
    if (f == NULL) {
        fprintf(stderr, "make-random-gpt2: %s: %s\n", path, strerror(errno));
        return 1;
    }
    if (s.is_llama) {
        fprintf(f,
                "{\n  \"model_type\": \"llama\",\n  \"architectures\": [\"LlamaForCausalLM\"],\n"
                "  \"num_hidden_layers\": %d,\n  \"num_attention_heads\": %d,\n"
                "  \"num_key_value_heads\": %d,\n  \"hidden_size\": %d,\n"
                "  \"intermediate_size\": %d,\n  \"max_position_embeddings\": %d,\n"
                "  \"vocab_size\": %d,\n  \"hidden_act\": \"silu\",\n  \"rms_norm_eps\": 1e-05,\n"
                "  \"rope_theta\": 100000.0,\n  \"bos_token_id\": 0,\n  \"eos_token_id\": %d,\n"
                "  \"tie_word_embeddings\": true\n}\n",
                s.n_layer, s.n_head, s.n_kv_head, s.n_embd, s.n_ffn, s.n_ctx, s.n_vocab,
                s.n_vocab - 1);
    } else {
        fprintf(
            f,
            "{\n  \"model_type\": \"gpt2\",\n  \"architectures\": [\"GPT2LMHeadModel\"],\n"
            "  \"n_layer\": %d,\n  \"n_head\": %d,\n  \"n_embd\": %d,\n  \"n_positions\": %d,\n"
            "  \"vocab_size\": %d,\n  \"n_inner\": null,\n  \"activation_function\": "
            "\"gelu_new\",\n"
            "  \"layer_norm_epsilon\": 1e-05,\n  \"bos_token_id\": %d,\n  \"eos_token_id\": %d,\n"
            "  \"scale_attn_weights\": true,\n  \"tie_word_embeddings\": true\n}\n",
            s.n_layer, s.n_head, s.n_embd, s.n_ctx, s.n_vocab, s.n_vocab - 1, s.n_vocab - 1);
    }
    fclose(f);

    int max_tensors = 4 + 12 * s.n_layer;
    struct tensor *t = calloc((size_t)max_tensors, sizeof(*t));
    size_t header_cap = (size_t)max_tensors * 160 + 256;
    char *header = malloc(header_cap);
    if (t == NULL || header == NULL) {
        fprintf(stderr, "make-random-gpt2: out of memory\n");
        return 1;
    }
    int n = build_tensors(&s, t);
    size_t used = (size_t)snprintf(header, header_cap, "{\"__metadata__\":{\"format\":\"pt\"}");
    uint64_t offset = 0;
    for (int i = 0; i < n; i++) {
        uint64_t count = (uint64_t)t[i].d0 * (uint64_t)(t[i].d1 > 0 ? t[i].d1 : 1);
        if (t[i].d1 > 0) {
            used += (size_t)snprintf(header + used, header_cap - used,
                                     ",\"%s\":{\"dtype\":\"F32\",\"shape\":[%lld,%lld],", t[i].name,
                                     (long long)t[i].d0, (long long)t[i].d1);
        } else {
            used += (size_t)snprintf(header + used, header_cap - used,
                                     ",\"%s\":{\"dtype\":\"F32\",\"shape\":[%lld],", t[i].name,
                                     (long long)t[i].d0);
        }
        used +=
            (size_t)snprintf(header + used, header_cap - used, "\"data_offsets\":[%llu,%llu]}",
                             (unsigned long long)offset, (unsigned long long)(offset + count * 4));
        offset += count * 4;
    }
    used += (size_t)snprintf(header + used, header_cap - used, "}");
    /* Pad the header with spaces so the data area starts 8-byte aligned, as HF does. */
    while ((8 + used) % 8 != 0) {
        header[used++] = ' ';
    }

    snprintf(path, sizeof(path), "%s/model.safetensors", dir);
    f = fopen(path, "wb");
    if (f == NULL) {
        fprintf(stderr, "make-random-gpt2: %s: %s\n", path, strerror(errno));
        return 1;
    }
    uint8_t len_bytes[8];
    for (int i = 0; i < 8; i++) {
        len_bytes[i] = (uint8_t)((uint64_t)used >> (8 * i));
    }
    fwrite(len_bytes, 1, 8, f);
    fwrite(header, 1, used, f);
    float buf[4096];
    for (int i = 0; i < n; i++) {
        uint64_t count = (uint64_t)t[i].d0 * (uint64_t)(t[i].d1 > 0 ? t[i].d1 : 1);
        for (uint64_t done = 0; done < count;) {
            size_t chunk = count - done < 4096 ? (size_t)(count - done) : 4096;
            for (size_t j = 0; j < chunk; j++) {
                buf[j] = t[i].mean + t[i].std * rng_normal();
            }
            fwrite(buf, sizeof(float), chunk, f);
            done += chunk;
        }
    }
    if (fclose(f) != 0) {
        fprintf(stderr, "make-random-gpt2: %s: write failed\n", path);
        return 1;
    }
    printf("wrote %s: %s, %d layers, %d wide, %d heads (%d KV), context %d, vocab %d, %.1f MB\n",
           dir, s.is_llama ? "llama" : "gpt2", s.n_layer, s.n_embd, s.n_head,
           s.is_llama ? s.n_kv_head : s.n_head, s.n_ctx, s.n_vocab,
           (double)(8 + used + offset) / 1e6);
    free(t);
    free(header);
    return 0;
}
