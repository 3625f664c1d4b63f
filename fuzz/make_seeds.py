#!/usr/bin/env python3
"""make_seeds.py: writes the small seed corpus of each fuzz harness into fuzz/corpus/<harness>/.

Seeds are tiny, hand-made inputs that reach each parser's main paths; the fuzzer grows the rest.
Run once after changing a harness's input format; the output is committed (a few KB in all).
Python standard library only.
"""
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def write(harness, name, data):
    d = os.path.join(HERE, "corpus", harness)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def request_seeds():
    seeds = {
        "minimal": '{"prompt":"Hello","max_tokens":4}',
        "full": json.dumps({
            "model": "gpt2", "prompt": ["Hello", "world"], "max_tokens": 8, "temperature": 0.7,
            "top_p": 0.9, "top_k": 40, "min_p": 0.05, "n": 2, "best_of": 3, "stream": True,
            "stream_options": {"include_usage": True}, "logprobs": 3, "echo": False,
            "stop": ["\n", "."], "presence_penalty": 0.5, "frequency_penalty": -0.5,
            "repetition_penalty": 1.2, "logit_bias": {"50256": -100, "11": 5}, "seed": 42,
            "user": "u", "min_tokens": 1, "ignore_eos": True, "stop_token_ids": [198],
            "candidates": 5}),
        "ids": '{"prompt":[15496,11,995],"max_tokens":2}',
        "ids_nested": '{"prompt":[[15496,11],[995]],"max_tokens":2,"echo":true,"logprobs":1}',
        "beam": '{"prompt":"a","use_beam_search":true,"best_of":4,"length_penalty":1.0}',
        "echo_zero": '{"prompt":"a","max_tokens":0,"echo":true,"logprobs":0}',
        "trailing": '{"prompt":"hi","max_tokens":2} xyz',
        "duplicate": '{"prompt":"hi","max_tokens":1,"max_tokens":3}',
        "nul_escape": '{"prompt":"hi \\u0000 there"}',
        "surrogate": '{"prompt":"hi \\ud800 there"}',
        "nesting": '{"prompt":"hi","x":' + "[" * 200 + "]" * 200 + "}",
        "tokenize": '{"prompt":"Hello <|endoftext|>","add_special_tokens":false}',
        "detokenize": '{"tokens":[15496,11,995]}',
        "not_object": "[1,2]",
        "huge_number": '{"prompt":"a","max_tokens":1e400,"temperature":1e400}',
    }
    for name, body in seeds.items():
        write("request", name, body)
    write("request", "invalid_utf8", b'{"prompt":"hi \xff\xfe there"}')
    write("request", "raw_nul", b'{"prompt":"hi \x00 there"}')


def tokenizer_seeds():
    write("tokenizer", "english", b"\x00Hello, world! It's a test of the tokenizer's splits.")
    write("tokenizer", "unicode", "\x00naïve café — 日本語のテキスト 🙂👍🏽 e\u0301".encode())
    write("tokenizer", "special", b"\x00before<|endoftext|>after")
    write("tokenizer", "spaces", b"\x00   leading\t\ttabs\n\n\nnewlines   ")
    write("tokenizer", "digits", b"\x00 12345 678.90 1e10")
    write("tokenizer", "invalid", b"\x00abc\xc3\x28def")
    write("tokenizer", "ids", b"\x01" + struct.pack("<8H", 15496, 11, 995, 50256, 220, 10263, 234, 99))
    # A split emoji: byte tokens of F0 9F 99 82.
    write("tokenizer", "split_bytes", b"\x01" + struct.pack("<4H", 8582, 247, 224, 191))


def tiny_safetensors():
    c, v, t = 8, 16, 8
    shapes = {
        "transformer.wte.weight": [v, c], "transformer.wpe.weight": [t, c],
        "transformer.h.0.ln_1.weight": [c], "transformer.h.0.ln_1.bias": [c],
        "transformer.h.0.attn.c_attn.weight": [c, 3 * c], "transformer.h.0.attn.c_attn.bias": [3 * c],
        "transformer.h.0.attn.c_proj.weight": [c, c], "transformer.h.0.attn.c_proj.bias": [c],
        "transformer.h.0.ln_2.weight": [c], "transformer.h.0.ln_2.bias": [c],
        "transformer.h.0.mlp.c_fc.weight": [c, 4 * c], "transformer.h.0.mlp.c_fc.bias": [4 * c],
        "transformer.h.0.mlp.c_proj.weight": [4 * c, c], "transformer.h.0.mlp.c_proj.bias": [c],
        "transformer.ln_f.weight": [c], "transformer.ln_f.bias": [c],
    }
    header, data, off = {}, b"", 0
    for i, (name, shape) in enumerate(shapes.items()):
        n = 1
        for s in shape:
            n *= s
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [off, off + 4 * n]}
        data += struct.pack("<%df" % n, *[((i * 31 + k) % 17 - 8) / 64.0 for k in range(n)])
        off += 4 * n
    header["__metadata__"] = {"format": "pt"}
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data, h, data


def safetensors_seeds():
    full, h, data = tiny_safetensors()
    write("safetensors", "valid", full)
    write("safetensors", "truncated_data", full[: len(full) - 100])
    write("safetensors", "header_too_long", struct.pack("<Q", 1 << 40) + h + data)
    write("safetensors", "empty_header", struct.pack("<Q", 2) + b"{}")
    bad = json.loads(h)
    bad["transformer.wte.weight"]["data_offsets"] = [0, 8]
    hb = json.dumps(bad).encode()
    write("safetensors", "wrong_span", struct.pack("<Q", len(hb)) + hb + data)
    f16 = {"transformer.wte.weight": {"dtype": "F16", "shape": [16, 8], "data_offsets": [0, 256]}}
    hf = json.dumps(f16).encode()
    write("safetensors", "f16_partial", struct.pack("<Q", len(hf)) + hf + b"\x00\x3c" * 128)


def loader_seeds():
    cfg = {"model_type": "gpt2", "n_layer": 2, "n_head": 2, "n_embd": 8, "n_positions": 16,
           "vocab_size": 300, "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new",
           "n_inner": None, "tie_word_embeddings": True, "bos_token_id": 0, "eos_token_id": 0,
           "scale_attn_weights": True}
    write("loaders", "config_valid", b"\x00" + json.dumps(cfg).encode())
    cfg2 = dict(cfg, scale_attn_by_inverse_layer_idx=True)
    write("loaders", "config_unsupported", b"\x00" + json.dumps(cfg2).encode())
    write("loaders", "config_bad_type", b'\x00{"model_type":"gpt2","n_layer":"4"}')
    # A byte-level BPE with the 256 byte tokens, two merges and <|endoftext|>.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    byte_chars = [chr(c) for c in cs]
    vocab = {ch: i for i, ch in enumerate(byte_chars)}
    vocab["Ġt"] = 256
    vocab["Ġth"] = 257
    vocab["<|endoftext|>"] = 258
    tok = {"model": {"type": "BPE", "vocab": vocab, "merges": [["Ġ", "t"], ["Ġt", "h"]]},
           "added_tokens": [{"id": 258, "content": "<|endoftext|>", "special": True}],
           "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True},
           "decoder": {"type": "ByteLevel"}}
    write("loaders", "tokenizer_json", b"\x01" + json.dumps(tok).encode())
    tok_old = dict(tok, model=dict(tok["model"], merges=["Ġ t", "Ġt h"]))
    write("loaders", "tokenizer_json_string_merges", b"\x01" + json.dumps(tok_old).encode())
    vocab_json = json.dumps(vocab).encode()
    merges = "#version: 0.2\nĠ t\nĠt h\n".encode()
    write("loaders", "vocab_merges", b"\x02" + vocab_json + b"\x00" + merges)
    write("loaders", "vocab_merges_unknown", b"\x02" + vocab_json + b"\x00" + "Ġ zz\n".encode())
    # Llama 3 style: a Split regex before a ByteLevel without regex, ignore_merges, NFC, a
    # post-processor that adds BOS.
    split = {"type": "Split", "pattern": {"Regex": "(?i:'s|'t)|\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+|\\s+"},
             "behavior": "Isolated", "invert": False}
    llama3 = dict(tok, normalizer={"type": "NFC"},
                  model=dict(tok["model"], ignore_merges=True),
                  pre_tokenizer={"type": "Sequence", "pretokenizers": [
                      split, {"type": "ByteLevel", "add_prefix_space": False, "use_regex": False}]},
                  post_processor={"type": "TemplateProcessing",
                                  "single": [{"SpecialToken": {"id": "<|endoftext|>"}},
                                             {"Sequence": {"id": "A"}}],
                                  "special_tokens": {"<|endoftext|>": {"ids": [258]}}})
    write("loaders", "tokenizer_json_split_regex", b"\x01" + json.dumps(llama3).encode())
    # SentencePiece style: byte fallback, Prepend/Replace, the Replace/ByteFallback/Fuse/Strip
    # decoder; and the same with the Metaspace pre-tokenizer and decoder.
    sp = ["<unk>", "<s>", "</s>"] + ["<0x%02X>" % b for b in range(256)] + \
        ["\u2581", "a", "b", "\u2581a", "ab", "\u2581ab"]
    sp_tok = {"model": {"type": "BPE", "byte_fallback": True, "fuse_unk": True, "unk_token": "<unk>",
                        "vocab": {p: i for i, p in enumerate(sp)},
                        "merges": ["a b", "\u2581 ab", "\u2581 a"]},
              "added_tokens": [{"id": i, "content": sp[i], "special": True} for i in range(3)],
              "normalizer": {"type": "Sequence", "normalizers": [
                  {"type": "Prepend", "prepend": "\u2581"},
                  {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]},
              "pre_tokenizer": None,
              "post_processor": {"type": "TemplateProcessing",
                                 "single": [{"SpecialToken": {"id": "<s>"}}, {"Sequence": {"id": "A"}}],
                                 "special_tokens": {"<s>": {"ids": [1]}}},
              "decoder": {"type": "Sequence", "decoders": [
                  {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
                  {"type": "ByteFallback"}, {"type": "Fuse"},
                  {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}}
    write("loaders", "tokenizer_json_sentencepiece", b"\x01" + json.dumps(sp_tok).encode())
    ms_tok = dict(sp_tok, normalizer=None,
                  pre_tokenizer={"type": "Metaspace", "replacement": "\u2581",
                                 "prepend_scheme": "first", "split": True},
                  decoder={"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first"})
    write("loaders", "tokenizer_json_metaspace", b"\x01" + json.dumps(ms_tok).encode())


def stream_seeds():
    ids = struct.pack("<10H", 15496, 11, 995, 13, 198, 40, 716, 257, 1332, 13)
    write("stream", "no_stop", b"\x00" + ids)
    write("stream", "stop_comma", b"\x01" + b"\x00," + ids)
    write("stream", "stop_split", b"\x02" + b"\x02o, " + b"\x01\n" + ids)
    emoji = struct.pack("<4H", 8582, 247, 224, 191)
    write("stream", "emoji_stop", b"\x01" + b"\x03\xf0\x9f\x99\x82" + emoji + ids)


if __name__ == "__main__":
    request_seeds()
    tokenizer_seeds()
    safetensors_seeds()
    loader_seeds()
    stream_seeds()
