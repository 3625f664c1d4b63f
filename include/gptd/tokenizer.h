/*
 * tokenizer.h: BPE tokenizers as Hugging Face `tokenizers` runs them from tokenizer.json --
 * byte-level (GPT-2, Llama 3, Qwen 2/2.5/3, SmolLM) and SentencePiece-style with byte fallback
 * (Llama 2, Mistral, TinyLlama, Gemma 3) -- byte-exact, plus a UTF-8-safe streaming decoder.
 *
 * Who calls it: main.c / the CLI load one tokenizer at start-up; HTTP threads encode prompts
 * (concurrently: tokenizer_encode is thread-safe); the engine thread decodes generated ids one at
 * a time through a struct detok per sequence. A loaded tokenizer is otherwise immutable, so every
 * const function may be called from any thread at any time.
 */
#ifndef GPTD_TOKENIZER_H
#define GPTD_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

struct tokenizer;

/*
 * Loads DIR/tokenizer.json (Hugging Face format: a BPE model, merges as "a b" strings or
 * ["a", "b"] pairs, added_tokens, normalizer, pre_tokenizer, decoder, post_processor), or
 * DIR/vocab.json + DIR/merges.txt when tokenizer.json is absent; then DIR/tokenizer_config.json
 * when present (bos_token, eos_token, add_bos_token, add_eos_token). Anything in the files that
 * gptd does not implement is refused, never guessed at. Returns a tokenizer the caller owns
 * (free with tokenizer_destroy), or NULL with a message naming the file, the field and the
 * problem written to err (err_size bytes, always NUL-terminated).
 */
struct tokenizer *tokenizer_load(const char *dir, char *err, size_t err_size);

/* Frees everything the tokenizer owns. NULL is a no-op. No encode may be running. */
void tokenizer_destroy(struct tokenizer *tok);

/* Size of the id space: the largest id + 1, added tokens included. */
int32_t tokenizer_n_vocab(const struct tokenizer *tok);

/* Id of tokenizer_config.json's eos_token, else of <|endoftext|>; -1 when there is none (or tok
 * is NULL). */
int32_t tokenizer_eos_id(const struct tokenizer *tok);

/* Id of tokenizer_config.json's bos_token, or -1. */
int32_t tokenizer_bos_id(const struct tokenizer *tok);

/* Whether id is an added token marked special (BOS, EOS, <|im_end|>, ...). */
int tokenizer_is_special(const struct tokenizer *tok, int32_t id);

enum tokenizer_flags {
    /* Recognise special (added) tokens such as <|endoftext|> inside the text, as Hugging Face
     * does by default. Without it they are encoded as plain text (non-special added tokens are
     * always recognised). */
    TOKENIZER_PARSE_SPECIAL = 1,
    /* Add the post-processor's tokens around the text (Llama's BOS), as transformers' encode()
     * does by default (add_special_tokens=True). GPT-2, Qwen and early Llama 3 add nothing. */
    TOKENIZER_ADD_SPECIAL = 2,
};

/*
 * Encodes text[0..len) (need not be NUL-terminated; must be valid UTF-8). On success returns 0
 * and sets *ids to a malloc'd array the caller frees (non-NULL even when *n_ids == 0) and *n_ids.
 * On failure (invalid UTF-8, out of memory) returns -1, sets *ids = NULL, *n_ids = 0 and writes
 * a message to err. Thread-safe: many threads may encode with one tokenizer at once (the
 * pre-token cache is sharded, each shard behind its own mutex).
 */
int tokenizer_encode(struct tokenizer *tok, const char *text, size_t len, int flags, int32_t **ids,
                     size_t *n_ids, char *err, size_t err_size);

/* The raw bytes of token id (after the byte-level unmapping); *len is set to their count.
 * Borrowed: valid until tokenizer_destroy. NULL (and *len = 0) for an id out of range, a hole
 * in the id space, or a NULL tok (an engine serving ids only: a streaming decoder with no
 * tokenizer produces no text). */
const char *tokenizer_token_bytes(const struct tokenizer *tok, int32_t id, size_t *len);

/* Length in bytes of the longest token (0 for a NULL tok); sizes streaming-decoder buffers. */
size_t tokenizer_max_token_bytes(const struct tokenizer *tok);

/* The most bytes of input text one token can stand for, so a text of n bytes has at least
 * n / this many tokens: the longest token, times what the normalizer can shrink (NFC: a
 * decomposed character takes up to 3 times the bytes of its composed form). 0 when there is no
 * bound (an added token with lstrip or rstrip takes any run of whitespace; a normalizer that
 * deletes text). */
size_t tokenizer_max_text_per_token(const struct tokenizer *tok);

/* Id of the token spelled exactly bytes[0..len), or -1: an added token's content, or a
 * vocabulary token as the model matches it (raw bytes for a byte-level vocabulary, the piece
 * with "▁" (U+2581) for spaces for a SentencePiece-style one). */
int32_t tokenizer_token_id(const struct tokenizer *tok, const char *bytes, size_t len);

enum tokenizer_decode_flags {
    /* Leave out special tokens (transformers' skip_special_tokens=True; vLLM's default for
     * generated text). Without it they are decoded like any token. */
    TOKENIZER_SKIP_SPECIAL = 1,
    /* The ids continue a text decoded before (a completion after its prompt): the decoder's
     * start-of-text rule -- SentencePiece's strip of one leading space -- does not apply. */
    TOKENIZER_CONTINUATION = 2,
};

/*
 * Decodes the whole sequence as the tokenizer.json decoder does: concatenates the tokens' texts
 * (byte-level unmapped; or "▁" (U+2581) as a space and <0xNN> as its byte), strips the leading
 * space a SentencePiece decoder strips, and replaces each invalid UTF-8 sequence with U+FFFD as
 * Python's bytes.decode(errors="replace") does (maximal-subpart rule). Invalid ids are skipped.
 * Returns a malloc'd NUL-terminated string the caller frees (and its length in *len when len is
 * not NULL), or NULL when out of memory. tokenizer_decode is tokenizer_decode_with(..., 0):
 * special tokens shown, like transformers' decode() default.
 */
char *tokenizer_decode(const struct tokenizer *tok, const int32_t *ids, size_t n_ids, size_t *len);
char *tokenizer_decode_with(const struct tokenizer *tok, const int32_t *ids, size_t n_ids,
                            int flags, size_t *len);

/*
 * Streaming decoder: one per generated sequence, owned by whoever owns the sequence (the engine
 * thread). Fed one id at a time, it emits only complete UTF-8 characters; the concatenation of
 * everything emitted (including detok_flush) equals tokenizer_decode of all ids. Never allocates.
 */
struct detok {
    const struct tokenizer *tok; /* borrowed: owned by whoever loaded it */
    unsigned char pending[8];    /* bytes of a not yet complete character (at most 3 are kept) */
    size_t n_pending;
    int flags;         /* enum tokenizer_decode_flags */
    size_t strip_left; /* leading characters the decoder may still strip */
    int is_first;      /* no token has been decoded yet */
};

/* Starts an empty stream. init/flush don't allocate; there is no finish. detok_init is
 * detok_init_with(d, tok, 0). */
void detok_init(struct detok *d, const struct tokenizer *tok);
void detok_init_with(struct detok *d, const struct tokenizer *tok, int flags);

/* Appends the text that id completes to out (at most cap bytes; cap >= tokenizer_max_token_bytes
 * (tok) + 16 is always enough) and returns the number of bytes written (not NUL-terminated).
 * Invalid ids are skipped, as in tokenizer_decode. */
size_t detok_feed(struct detok *d, int32_t id, char *out, size_t cap);

/* Ends the stream: emits the pending bytes of a character that never completed as one U+FFFD
 * (3 bytes; cap >= 16 is enough), resets the stream (to its start, same flags) and returns the
 * bytes written. */
size_t detok_flush(struct detok *d, char *out, size_t cap);

#endif
