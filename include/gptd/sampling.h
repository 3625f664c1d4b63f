/*
 * sampling.h: per-sequence token sampling (logit bias, penalties, temperature, top-k, top-p,
 * min-p), a seeded RNG per sequence, logprobs, and stop-string matching on decoded text.
 *
 * Knows nothing about the model or HTTP: it sees a vocabulary size, token ids and a (V,) row
 * of logits. Who calls it:
 *   - server/ (HTTP threads) fills a struct sampling_params from the request JSON and calls
 *     sampling_params_validate(); a failure becomes a 400 whose "param" is the returned name.
 *   - engine/ (the engine thread only) creates one struct sampler and one struct stop_matcher
 *     per sequence at admission, calls sampler_sample() + sampler_accept() once per generated
 *     token, pushes the tokenizer's decoded pieces through stop_matcher_push(), and destroys
 *     both when the sequence finishes. Preemption keeps both, so the RNG stream and the counts
 *     survive it. No locks: a sampler and a matcher belong to one thread at a time.
 *
 * The pipeline (sampler_sample), in this fixed order:
 *   1. logit_bias: logit[id] += bias; a bias of exactly -100 bans the token (-inf).
 *      min_tokens: while fewer than min_tokens tokens were generated, EOS (unless ignore_eos)
 *      and every stop_token_id are banned (-inf).
 *   2. penalties: repetition_penalty (Hugging Face / CTRL) over prompt + generated tokens:
 *      logit > 0 ? logit / r : logit * r; then presence/frequency (OpenAI) over generated
 *      tokens: logit -= frequency_penalty * count + presence_penalty * (count > 0).
 *   3. temperature: 0 = greedy: the argmax of the logits after steps 1-2 (lowest id on ties);
 *      else probabilities softmax(logit / T).
 *   4. top_k: keep the K largest.  5. top_p: keep the smallest set of the survivors whose
 *      probability mass reaches top_p of their total.  6. min_p: drop p < min_p * p_max.
 *   7. draw: ONE uniform double from the sequence's RNG per sampler_sample() call, also for
 *      greedy (where it is discarded), so that the i-th token always uses the i-th draw.
 *   No step sorts the vocabulary: top-k is a size-K heap, top-p a probability-mass histogram
 *   plus a partial selection inside one bin, min-p a threshold, the draw a linear scan
 *   (details in sampler.c). Tokens whose probability underflows to 0 (exp(-87) and below,
 *   relative to the most likely) are never drawn and not counted as survivors.
 *
 * Logprobs describe the RAW model distribution (log-softmax of the logits as passed in, before
 * any step above), as OpenAI and vLLM report them.
 *
 * Where stopping is decided: token-level finishes (EOS, stop_token_ids, max_tokens) by
 * sampler_accept(); stop strings by struct stop_matcher on the decoded text; the end of the
 * model's context by the engine.
 */
#ifndef GPTD_SAMPLING_H
#define GPTD_SAMPLING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SAMPLING_MAX_STOP           16  /* stop strings per request */
#define SAMPLING_MAX_STOP_BYTES     256 /* bytes per stop string (not counting the NUL) */
#define SAMPLING_MAX_STOP_TOKEN_IDS 64
#define SAMPLING_MAX_LOGIT_BIAS     300
#define SAMPLING_MAX_LOGPROBS       20 /* top alternatives per position */
#define SAMPLING_MAX_CANDIDATES     64 /* candidates reported per position (extension) */
#define SAMPLING_BIAS_BAN           (-100.0f)

struct sampling_logit_bias {
    int32_t token_id;
    float bias; /* [-100, 100]; -100 bans */
};

/*
 * Per-request sampling parameters. Plain data with no pointers: copy it with `=`; every string
 * and list lives inside (fixed capacities above), so there is nothing to free and no ownership
 * to track. ~7 KB; the server fills one per request and the engine copies it into the sequence.
 */
struct sampling_params {
    float temperature;        /* [0, 2], default 1; 0 = greedy */
    int32_t top_k;            /* 0 or -1 = off (default), else >= 1 */
    float top_p;              /* (0, 1], default 1 = off */
    float min_p;              /* [0, 1), default 0 = off */
    float repetition_penalty; /* > 0 (at most 10), default 1 = off */
    float presence_penalty;   /* [-2, 2], default 0 */
    float frequency_penalty;  /* [-2, 2], default 0 */

    int32_t n_logit_bias; /* [0, SAMPLING_MAX_LOGIT_BIAS]; token ids distinct */
    struct sampling_logit_bias logit_bias[SAMPLING_MAX_LOGIT_BIAS];

    bool has_seed; /* false: sampler_create draws a seed from sampling_seed_random() */
    uint64_t seed;

    int32_t max_tokens; /* >= 1, default 16 (OpenAI's); the engine also stops at the context end */
    int32_t min_tokens; /* [0, max_tokens], default 0 */
    bool ignore_eos;    /* EOS neither ends the sequence nor is banned by min_tokens */

    int32_t n_stop;                                            /* [0, SAMPLING_MAX_STOP] */
    char stop[SAMPLING_MAX_STOP][SAMPLING_MAX_STOP_BYTES + 1]; /* NUL-terminated, non-empty UTF-8 */
    int32_t n_stop_token_ids; /* [0, SAMPLING_MAX_STOP_TOKEN_IDS] */
    int32_t stop_token_ids[SAMPLING_MAX_STOP_TOKEN_IDS];

    int32_t logprobs;   /* -1 = off (default); 0..20 = chosen token's logprob + that many top */
    int32_t candidates; /* extension: 0 = off (default); 1..64 = report that many survivors */
};

/* Fills *p with the defaults in the comments above (temperature 1, everything else off). */
void sampling_params_init_default(struct sampling_params *p);

/*
 * Helpers for parsers that fill the fixed arrays. Each returns 0, or -1 (nothing changed) when
 * the array is full or the string is empty or longer than SAMPLING_MAX_STOP_BYTES. They do not
 * check ranges: sampling_params_validate() does.
 */
int sampling_params_add_stop(struct sampling_params *p, const char *s, size_t len);
int sampling_params_add_stop_token_id(struct sampling_params *p, int32_t token_id);
int sampling_params_add_logit_bias(struct sampling_params *p, int32_t token_id, float bias);

/*
 * Checks every field against its range (NaN is out of every range), token ids against
 * [0, n_vocab), stop strings for valid UTF-8, and logit_bias for duplicate ids. Returns 0, or -1
 * with *param set to the offending field's request name ("temperature", "top_k", "logit_bias",
 * "stop", ...; a static string) and a one-line reason in msg (msg_size bytes, may be 0).
 * Any thread.
 */
int sampling_params_validate(const struct sampling_params *p, int32_t n_vocab, const char **param,
                             char *msg, size_t msg_size);

/*
 * RNG: xoshiro256** (Blackman & Vigna), its 256-bit state seeded from a 64-bit seed through
 * splitmix64, so nearby seeds (seed, seed + 1, ...) give unrelated streams.
 */
struct rng {
    uint64_t s[4];
};

void rng_seed(struct rng *r, uint64_t seed);
uint64_t rng_next_u64(struct rng *r);
/* Uniform in [0, 1) with 53 random bits. */
double rng_next_double(struct rng *r);

/*
 * A seed for a request that gave none: process-wide, from the clock and an atomic counter mixed
 * by splitmix64, so two calls never return the same value. Any thread.
 */
uint64_t sampling_seed_random(void);

/* What sampler_sample() reports besides the token. */
struct sampling_logprob {
    int32_t token_id;
    float logprob; /* raw: log-softmax of the unprocessed logits */
};

/*
 * Raw logprobs of one row: the log-softmax of logits (n_vocab,) as the model produced them (no
 * penalty, bias or temperature). Writes the k most likely tokens, largest first (ties: the lower
 * id; NaN never enters), to top (room for k entries) and their count to *n_top (k, or fewer
 * when the row has fewer finite entries), and returns the logprob of token (0..n_vocab-1; pass
 * any valid id when only the top list is wanted). scratch (n_vocab,) is overwritten. The one
 * routine behind every logprob gptd reports (sampled tokens, prompt tokens of echo, beam
 * candidates), so that the same row gives the same numbers on every path. Allocates nothing.
 */
float sampling_logprobs(const float *logits, int32_t n_vocab, int32_t token, int32_t k,
                        struct sampling_logprob *top, int32_t *n_top, float *scratch);

struct sampling_candidate {
    int32_t token_id;
    float prob; /* renormalised over the survivors of every filter */
};

struct sample_result {
    int32_t token_id;
    /* Filled when params.logprobs >= 0 (has_logprobs). */
    bool has_logprobs;
    float logprob;          /* the chosen token's raw logprob */
    int32_t n_top_logprobs; /* = params.logprobs (fewer only if V is smaller) */
    struct sampling_logprob top_logprobs[SAMPLING_MAX_LOGPROBS]; /* most likely first */
    /* Always filled: how many tokens survived every filter (1 for greedy) — the nucleus size. */
    int32_t n_survivors;
    /* Filled when params.candidates > 0: the min(candidates, n_survivors) most likely survivors,
     * most likely first. */
    int32_t n_candidates;
    struct sampling_candidate candidates[SAMPLING_MAX_CANDIDATES];
};

enum sampler_finish {
    SAMPLER_CONTINUE = 0,
    SAMPLER_FINISH_EOS = 1,        /* finish_reason "stop", stop_reason null */
    SAMPLER_FINISH_STOP_TOKEN = 2, /* finish_reason "stop", stop_reason = the token id */
    SAMPLER_FINISH_LENGTH = 3,     /* finish_reason "length": max_tokens reached */
};

struct sampler;

/* End tokens one sampler knows (models with several: Llama 3's <|eot_id|> and <|end_of_text|>). */
#define SAMPLING_MAX_EOS 8

/*
 * Creates the sampler of one sequence. Copies *p (which must have passed validation) and the
 * prompt's token counts; allocates every buffer sampler_sample needs (4 bytes per vocabulary
 * entry, 8 more when top_k/top_p/min_p/candidates is on, 9 more when a penalty is on, about
 * 20 KB besides). The RNG seed is p->seed + i_choice
 * when p->has_seed (i_choice = 0..n-1 for the n choices of one request), else a fresh
 * sampling_seed_random(). eos_ids (n_eos,) are the tokens that end the sequence (any of them;
 * n_eos may be 0; ids outside the vocabulary are ignored, at most SAMPLING_MAX_EOS are kept).
 * eos_ids and prompt_ids (n_prompt,) are borrowed for the call only. Returns NULL (and a message
 * in err) on allocation failure or bad arguments. Engine thread.
 */
struct sampler *sampler_create(const struct sampling_params *p, int32_t i_choice, int32_t n_vocab,
                               const int32_t *eos_ids, int32_t n_eos, const int32_t *prompt_ids,
                               int32_t n_prompt, char *err, size_t err_size);

/* NULL is a no-op. */
void sampler_destroy(struct sampler *s);

/*
 * Picks the next token from logits (n_vocab,) — the model's raw row, read only — following the
 * pipeline in the file comment, and fills *out. Non-finite logits (NaN, +-inf) are never
 * chosen. For best_of ranking without user logprobs, the engine may set logprobs = 0 in the
 * params it passes to sampler_create to get the chosen token's raw logprob. Allocates nothing; O(V)
 * expected time. Returns the token id, or -1 when no token is allowed (every logit -inf or NaN
 * after the bans). Does not update the counts: call sampler_accept() with the token that is kept.
 */
int32_t sampler_sample(struct sampler *s, const float *logits, struct sample_result *out);

/*
 * Records that token was appended to the sequence (penalty counts, the generated count) and
 * says whether the sequence ends with it: EOS (unless ignore_eos), a stop token id (both only
 * once min_tokens tokens came before it), or max_tokens reached. An EOS or stop token that ends
 * the sequence is counted as generated but should not be detokenized into the text.
 */
enum sampler_finish sampler_accept(struct sampler *s, int32_t token);

/*
 * Steps 1-2 only (logit_bias, min_tokens bans, penalties) applied to logits (n_vocab,), written
 * to out (n_vocab,); no draw, no state change. For tests and debugging: it shows exactly what
 * sampler_sample() feeds to temperature and the filters.
 */
void sampler_processed_logits(struct sampler *s, const float *logits, float *out);

/* Tokens accepted so far. */
int32_t sampler_n_generated(const struct sampler *s);

/* The seed actually used (for logs and reproduction). */
uint64_t sampler_seed(const struct sampler *s);

/*
 * Stop strings on decoded text. The engine pushes each token's decoded text (valid UTF-8, from
 * the tokenizer's streaming decoder) and sends on what the matcher releases. The matcher holds
 * back only the longest tail of the text that is still a prefix of some stop string, and
 * releases it the moment it can no longer match. A match is the stop-string occurrence that
 * completes earliest in the text (the longest one if several complete at the same byte); the
 * text is cut right before it and the matcher is done. Because the rule is defined on bytes,
 * the result does not depend on how the text was split into pieces:
 *   concatenation of every released piece == the whole text cut before the first match
 *   (or the whole text when there is none, after stop_matcher_finish()).
 * Released text always ends on a UTF-8 character boundary.
 */
struct stop_matcher;

struct stop_output {
    const char *text; /* borrowed: valid until the next push/finish/destroy */
    size_t len;       /* bytes that may be sent now (may be 0) */
    int32_t i_stop;   /* -1, or the index into params.stop of the string that matched */
};

/* Copies the stop strings of *p. Returns NULL on allocation failure. Engine thread. */
struct stop_matcher *stop_matcher_create(const struct sampling_params *p);

/* NULL is a no-op. */
void stop_matcher_destroy(struct stop_matcher *m);

/*
 * Pushes one piece of decoded text. can_match says whether this text may contain (the end of)
 * a stop string: the engine passes false for the tokens generated before min_tokens; such text
 * is released at once and never becomes part of a match. Fills *out; out->i_stop >= 0 means a
 * stop string matched: out->text is the last text to send and the sequence finishes with
 * finish_reason "stop" and stop_reason params.stop[i_stop]. Returns 0, or -1 on allocation
 * failure (the pending buffer grows only for pieces longer than it has seen). After a match,
 * further pushes release nothing.
 */
int stop_matcher_push(struct stop_matcher *m, const char *piece, size_t len, bool can_match,
                      struct stop_output *out);

/* At the end of a sequence that did not stop on a string: releases the held-back tail. */
void stop_matcher_finish(struct stop_matcher *m, struct stop_output *out);

/* Whether a stop string has matched. */
bool stop_matcher_is_stopped(const struct stop_matcher *m);

#endif
