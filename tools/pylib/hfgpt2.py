"""hfgpt2: writes the Hugging Face GPT-2 directory layout that gptd loads.

Shared by the trainer (tools/train/) and the converters (tools/convert-nanogpt,
tools/convert-llmc). Needs only the standard library and numpy: tensors are numpy arrays in the
Hugging Face GPT-2 layout (Conv1D weights stored [in, out]).

- write_safetensors(path, tensors): the safetensors format (8-byte little-endian header length,
  a JSON header of dtype/shape/data_offsets, then the raw little-endian data, 8-byte aligned).
- read_safetensors(path): the inverse, for tests and tools.
- gpt2_config(...): a config.json dictionary for the settings gptd implements.
- bytes_to_unicode(): GPT-2's reversible map from bytes to printable characters.
- write_tokenizer_json(path, vocab, merges, eos): a byte-level BPE tokenizer.json.
- copy_gpt2_tokenizer(src_dir, dst_dir): copies the GPT-2 tokenizer files of a model directory.
- tokenizer_size(model_dir): how many token ids those files define.
"""

import json
import os
import shutil
import struct

import numpy as np

_DTYPES = {np.dtype("float32"): "F32", np.dtype("float16"): "F16"}


def write_safetensors(path, tensors, metadata=None):
    """Writes {name: numpy array} (float32 or float16) as one safetensors file, names sorted."""
    header = {}
    offset = 0
    arrays = []
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        if a.dtype not in _DTYPES:
            raise ValueError("%s: dtype %s is not float32 or float16" % (name, a.dtype))
        a = a.astype(a.dtype.newbyteorder("<"), copy=False)
        header[name] = {"dtype": _DTYPES[a.dtype], "shape": list(a.shape),
                        "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
        arrays.append(a)
    header["__metadata__"] = dict(metadata or {"format": "pt"})
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for a in arrays:
            f.write(a.tobytes())
    os.replace(tmp, path)


def read_safetensors(path):
    """Returns {name: numpy array} of an F32/F16 safetensors file."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    base = 8 + n
    names = {"F32": "<f4", "F16": "<f2"}
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        b, e = t["data_offsets"]
        out[name] = np.frombuffer(data[base + b:base + e], dtype=names[t["dtype"]]).reshape(
            t["shape"])
    return out


def gpt2_config(n_layer, n_head, n_embd, n_positions, vocab_size, bos=None, eos=None,
                activation="gelu_new", eps=1e-5, n_inner=None):
    """A config.json for a GPT-2 architecture model, in the keys transformers writes."""
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "n_layer": n_layer,
        "n_head": n_head,
        "n_embd": n_embd,
        "n_positions": n_positions,
        "n_ctx": n_positions,
        "n_inner": n_inner,
        "vocab_size": vocab_size,
        "activation_function": activation,
        "layer_norm_epsilon": eps,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "tie_word_embeddings": True,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "attn_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "resid_pdrop": 0.0,
        "torch_dtype": "float32",
    }


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


def _printable_bytes():
    """The bytes GPT-2 keeps as their own character: printable ASCII and Latin-1."""
    return list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))


def bytes_to_unicode():
    """GPT-2's byte -> character map: printable Latin-1 bytes map to themselves, the other bytes
    to code points from 256 up, in byte order. Returned as a list indexed by byte."""
    keep = _printable_bytes()
    out = [None] * 256
    extra = 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return out


def byte_token_order():
    """The 256 byte tokens in GPT-2's id order (printable ones first), as bytes values."""
    keep = _printable_bytes()
    return keep + [b for b in range(256) if b not in keep]


def write_tokenizer_json(path, vocab, merges, eos_token="<|endoftext|>"):
    """vocab: {token string (byte-level characters): id}; merges: [(left, right)] by rank. The
    end-of-text token, unless None, must be in vocab; it is written as a special added token."""
    added = []
    if eos_token is not None:
        added.append({"id": vocab[eos_token], "content": eos_token, "single_word": False,
                      "lstrip": False, "rstrip": False, "normalized": True, "special": True})
    tok = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                          "use_regex": True},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False,
                           "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                    "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": [[a, b] for a, b in merges]},
    }
    write_json(path, tok)


GPT2_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json")


def tokenizer_size(model_dir):
    """The number of token ids the tokenizer files of model_dir define (largest id + 1)."""
    path = os.path.join(model_dir, "tokenizer.json")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            tj = json.load(f)
        ids = list(tj["model"]["vocab"].values()) + [t["id"] for t in tj.get("added_tokens", [])]
    else:
        with open(os.path.join(model_dir, "vocab.json"), encoding="utf-8") as f:
            ids = list(json.load(f).values())
    return max(ids) + 1


def copy_gpt2_tokenizer(src_dir, dst_dir):
    """Copies whichever GPT-2 tokenizer files src_dir has; returns how many it copied."""
    n = 0
    for name in GPT2_TOKENIZER_FILES:
        src = os.path.join(src_dir, name)
        if os.path.isfile(src):
            shutil.copyfile(src, os.path.join(dst_dir, name))
            n += 1
    return n
