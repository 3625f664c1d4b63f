#!/usr/bin/python3
"""reference: the trained model and tokenizer run by PyTorch and the trainer's own BPE code.

    reference.py MODEL_DIR expected OUT.json   greedy continuations of fixed prompts -> OUT.json
    reference.py MODEL_DIR encode FILE         the trainer's token ids of FILE, one per line

This is the independent side of tests/test_bundled_model.sh: the test checks that gptd, reading
the exported files, tokenizes like the encoder the model was trained with and continues the
fixed prompts greedily exactly as PyTorch does with the exported (float16-rounded) weights.
train.py runs `expected` after exporting; the result is committed as expected.json.
"""

import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "pylib"))
sys.path.insert(0, HERE)

import bpe  # noqa: E402
import hfgpt2  # noqa: E402
from train import GPT, LINEAR_NAMES  # noqa: E402

# Prompts whose greedy path never has two candidates within 0.01 logits of each other on the
# committed model (min_top2_gap in expected.json), so float rounding cannot flip an argmax;
# "And God said" (0.0008) is left to the README's samples.
PROMPTS = ["In the beginning", "The LORD is my shepherd", "Blessed are the", "And it came to pass"]
NEW_TOKENS = 32


def load_encoder(model_dir):
    with open(os.path.join(model_dir, "tokenizer.json"), encoding="utf-8") as f:
        tj = json.load(f)
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m)
              for m in tj["model"]["merges"]]
    return bpe.Encoder(tj["model"]["vocab"], merges), tj["model"]["vocab"]


def load_model(model_dir):
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    model = GPT(cfg["vocab_size"], cfg["n_positions"], cfg["n_layer"], cfg["n_head"],
                cfg["n_embd"])
    hf = hfgpt2.read_safetensors(os.path.join(model_dir, "model.safetensors"))
    t = {k.removeprefix("transformer."): torch.from_numpy(v.astype("float32")) for k, v in hf.items()}
    with torch.no_grad():
        model.wte.weight.copy_(t["wte.weight"])
        model.wpe.weight.copy_(t["wpe.weight"])
        model.ln_f.weight.copy_(t["ln_f.weight"])
        model.ln_f.bias.copy_(t["ln_f.bias"])
        for i, b in enumerate(model.h):
            p = "h.%d." % i
            for n in ("ln_1", "ln_2"):
                getattr(b, n).weight.copy_(t[p + n + ".weight"])
                getattr(b, n).bias.copy_(t[p + n + ".bias"])
            for ours, theirs in LINEAR_NAMES:
                getattr(b, ours).weight.copy_(t[p + theirs + ".weight"].t())
                getattr(b, ours).bias.copy_(t[p + theirs + ".bias"])
    return model.eval()


@torch.no_grad()
def greedy(model, ids, n):
    ids = list(ids)
    out = []
    for _ in range(n):
        logits = model(torch.tensor([ids]))[0, -1].double()
        top2 = torch.topk(logits, 2).values
        out.append((int(logits.argmax()), float(top2[0] - top2[1])))
        ids.append(out[-1][0])
    return out


def expected(model_dir, out_path):
    enc, vocab = load_encoder(model_dir)
    inv = {i: s for s, i in vocab.items()}
    u2b = {c: b for b, c in enumerate(hfgpt2.bytes_to_unicode())}
    model = load_model(model_dir)
    rows = []
    for prompt in PROMPTS:
        ids = enc.encode(prompt)
        steps = greedy(model, ids, NEW_TOKENS)
        new = [t for t, _ in steps]
        text = b"".join(bytes(u2b[c] for c in inv[t]) if t in inv and t != vocab.get(bpe.EOS)
                        else b"" for t in new).decode("utf-8", errors="replace")
        rows.append({"prompt": prompt, "prompt_ids": ids, "greedy_ids": new, "greedy_text": text,
                     "min_top2_gap": min(g for _, g in steps)})
    hfgpt2.write_json(out_path, {
        "note": "PyTorch %s greedy continuations (argmax, no EOS stop) of the exported weights, "
                "written by tools/train/reference.py" % torch.__version__,
        "new_tokens": NEW_TOKENS, "prompts": rows})


def main():
    if len(sys.argv) != 4 or sys.argv[2] not in ("expected", "encode"):
        sys.exit(__doc__.split("\n\n")[1])
    model_dir, mode, path = sys.argv[1:]
    if mode == "expected":
        expected(model_dir, path)
    else:
        enc, _ = load_encoder(model_dir)
        with open(path, encoding="utf-8", newline="") as f:  # keep "\r\n" as it is
            sys.stdout.write("".join("%d\n" % i for i in enc.encode(f.read())))


if __name__ == "__main__":
    main()
