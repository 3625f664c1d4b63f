#!/usr/bin/python3
"""tests/tools/test_convert_nanogpt.py: tools/convert-nanogpt on checkpoints this test writes.

    test_convert_nanogpt.py GPTD_BINARY

The test builds nanoGPT's GPT in PyTorch (nn.Linear layers, exact GELU, tied lm_head, optional
biases), gives every parameter random values (LayerNorms and biases too, so a swapped or dropped
tensor shows), and saves checkpoints the way nanoGPT's train.py does: {"model", "model_args",
"optimizer", "iter_num", "best_val_loss", "config"}. Then it converts them and checks that gptd's
greedy continuation and top-5 log-probabilities at every step equal PyTorch's:
- GPT-2 vocabulary padded to 50304, biases, "_orig_mod." prefixes (torch.compile), --tokenizer;
- a model without biases saved as a bare state dict (no model_args: --n-head), text prompt;
- a bfloat16 state dict;
and that untied heads, pickled Python objects and missing tensors are refused.
"""

import json
import math
import os
import subprocess
import sys
import tempfile

import torch
import torch.nn as nn
import torch.nn.functional as F

SRC = os.environ.get("GPTD_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))
TESTDATA = os.environ.get("GPTD_TESTDATA_DIR", os.path.join(SRC, "tests", "data"))
TINY = os.path.join(TESTDATA, "gpt2-tiny-random")
CONVERT = os.path.join(SRC, "tools", "convert-nanogpt")
TOL = 2e-4
failures = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        failures.append(what)


class Block(nn.Module):
    def __init__(self, d, n_head, bias):
        super().__init__()
        self.n_head = n_head
        self.ln_1 = nn.LayerNorm(d, elementwise_affine=True)
        self.attn = nn.Module()
        self.attn.c_attn = nn.Linear(d, 3 * d, bias=bias)
        self.attn.c_proj = nn.Linear(d, d, bias=bias)
        self.ln_2 = nn.LayerNorm(d)
        self.mlp = nn.Module()
        self.mlp.c_fc = nn.Linear(d, 4 * d, bias=bias)
        self.mlp.c_proj = nn.Linear(4 * d, d, bias=bias)
        if not bias:
            self.ln_1.bias = None
            self.ln_2.bias = None

    def forward(self, x):
        b, t, d = x.shape
        h = self.n_head
        q, k, v = self.attn.c_attn(self.ln_1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, h, d // h).transpose(1, 2) for z in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(d // h)
        mask = torch.triu(torch.ones(t, t, dtype=torch.bool), 1)
        y = att.masked_fill(mask, float("-inf")).softmax(-1) @ v
        x = x + self.attn.c_proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp.c_proj(F.gelu(self.mlp.c_fc(self.ln_2(x))))


class GPT(nn.Module):
    def __init__(self, vocab, ctx, n_layer, n_head, d, bias):
        super().__init__()
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(vocab, d), wpe=nn.Embedding(ctx, d),
            h=nn.ModuleList([Block(d, n_head, bias) for _ in range(n_layer)]),
            ln_f=nn.LayerNorm(d)))
        if not bias:
            self.transformer.ln_f.bias = None
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.lm_head.weight = self.transformer.wte.weight
        with torch.no_grad():
            for p in self.parameters():
                p.normal_(0.0, 0.2 if p.dim() == 1 else 0.08)

    def forward(self, idx):
        x = self.transformer.wte(idx) + self.transformer.wpe(torch.arange(idx.shape[1]))
        for blk in self.transformer.h:
            x = blk(x)
        return self.lm_head(self.transformer.ln_f(x))


def nanogpt_checkpoint(model, args, prefix=""):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.zeros((1, 4), dtype=torch.long)).sum().backward()
    opt.step()  # a real optimizer state, as nanoGPT saves it
    sd = {prefix + k: v for k, v in model.state_dict().items()}
    return {"model": sd, "optimizer": opt.state_dict(), "model_args": dict(args),
            "iter_num": 5000, "best_val_loss": torch.tensor(1.4697),
            "config": {"batch_size": 12, "dataset": "test", "compile": bool(prefix)}}


def run(*args):
    return subprocess.run(list(args), capture_output=True, text=True)


def compare(gptd, model, out_dir, vocab_out, what, prompt_ids=None, prompt=None, n=10):
    """gptd's greedy run with --logprobs 5 against PyTorch on the same tokens."""
    cmd = [gptd, "generate", "-m", out_dir, "-n", str(n), "--ignore-eos", "--json",
           "--logprobs", "5"]
    cmd += ["--prompt-ids", ",".join(map(str, prompt_ids))] if prompt is None else ["-p", prompt]
    r = run(*cmd)
    check(r.returncode == 0, "%s: gptd generate exits 0 (%s)" % (what, r.stderr.strip()[-200:]))
    if r.returncode != 0:
        return None
    g = json.loads(r.stdout)
    seq = g["prompt_ids"] + g["ids"]
    with torch.no_grad():
        logits = model(torch.tensor([seq]))[0, :, :vocab_out]
        logp = torch.log_softmax(logits.double(), dim=-1)
    np_ = len(g["prompt_ids"])
    worst, ids_ok, top_ok = 0.0, True, True
    for i, step in enumerate(g["logprobs"]):
        row = logp[np_ - 1 + i]
        ids_ok &= int(row.argmax()) == step["id"]
        want = torch.topk(row, 5)
        got_ids = [t[0] for t in step["top"]]
        top_ok &= got_ids == want.indices.tolist()
        for (tid, lp) in step["top"]:
            worst = max(worst, abs(lp - float(row[tid])))
    check(ids_ok, "%s: gptd's %d greedy ids are PyTorch's argmax" % (what, n))
    check(top_ok, "%s: gptd's top-5 ids equal PyTorch's at every step" % what)
    check(worst < TOL, "%s: top-5 logprobs within %g of PyTorch (worst %.2e)" % (what, TOL, worst))
    return g


def main():
    gptd = sys.argv[1]
    torch.manual_seed(1234)
    with tempfile.TemporaryDirectory() as tmp:
        # 1. GPT-2 vocabulary, padded, biases, torch.compile prefixes.
        args = dict(n_layer=2, n_head=4, n_embd=64, block_size=128, bias=True, vocab_size=50304,
                    dropout=0.0)
        m = GPT(50304, 128, 2, 4, 64, True).eval()
        ck = os.path.join(tmp, "ckpt.pt")
        torch.save(nanogpt_checkpoint(m, args, prefix="_orig_mod."), ck)
        m.eval()
        out = os.path.join(tmp, "gpt2vocab")
        r = run(CONVERT, ck, out, "--tokenizer", TINY)
        check(r.returncode == 0, "convert GPT-2-vocab checkpoint (%s)" % r.stderr.strip())
        with open(os.path.join(out, "config.json")) as f:
            cfg = json.load(f)
        check((cfg["vocab_size"], cfg["n_layer"], cfg["n_head"], cfg["n_embd"],
               cfg["n_positions"], cfg["activation_function"]) ==
              (50257, 2, 4, 64, 128, "gelu"), "config.json: vocab cut to 50257, exact GELU")
        compare(gptd, m, out, 50257, "GPT-2 vocab", prompt_ids=[464, 3797, 3332, 319, 262])

        # 2. No biases, no padding, a bare state dict without model_args (--n-head).
        m2 = GPT(50257, 64, 3, 2, 32, False)
        ck2 = os.path.join(tmp, "bare.pt")
        torch.save(m2.state_dict(), ck2)
        m2.eval()
        out2 = os.path.join(tmp, "bare")
        r = run(CONVERT, ck2, out2, "--tokenizer", TINY)
        check(r.returncode != 0 and "--n-head" in r.stderr,
              "a bare state dict needs --n-head: " + r.stderr.strip()[:100])
        r = run(CONVERT, ck2, out2, "--tokenizer", TINY, "--n-head", "2")
        check(r.returncode == 0, "convert a bias-free bare state dict (%s)" % r.stderr.strip())
        compare(gptd, m2, out2, 50257, "no biases", prompt="In the beginning")

        # 3. A bfloat16 state dict (BFloat16Storage) against the same weights widened in PyTorch.
        m3 = GPT(50257, 64, 3, 2, 32, False).to(torch.bfloat16)
        ck3 = os.path.join(tmp, "bf16.pt")
        torch.save({"model": m3.state_dict(), "model_args": dict(
            n_layer=3, n_head=2, n_embd=32, block_size=64, bias=False, vocab_size=50257)}, ck3)
        m3 = m3.float().eval()
        out3 = os.path.join(tmp, "bf16")
        r = run(CONVERT, ck3, out3, "--tokenizer", TINY)
        check(r.returncode == 0, "convert a bfloat16 checkpoint (%s)" % r.stderr.strip())
        compare(gptd, m3, out3, 50257, "bfloat16", prompt_ids=[464, 3797])

        # 4. Refusals.
        small = dict(args, n_layer=1, n_head=2, n_embd=32)
        bad = nanogpt_checkpoint(GPT(50304, 128, 1, 2, 32, True), small)
        bad["model"]["lm_head.weight"] = bad["model"]["lm_head.weight"].clone() + 1.0
        torch.save(bad, os.path.join(tmp, "untied.pt"))
        r = run(CONVERT, os.path.join(tmp, "untied.pt"), os.path.join(tmp, "o1"),
                "--tokenizer", TINY)
        check(r.returncode != 0 and "tied" in r.stderr, "refuses an untied lm_head: " +
              r.stderr.strip()[:100])
        bad = nanogpt_checkpoint(GPT(50304, 128, 1, 2, 32, True), small)
        bad["config"]["scheduler"] = torch.optim.lr_scheduler.StepLR(
            torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1), 1)
        torch.save(bad, os.path.join(tmp, "pickled.pt"))
        r = run(CONVERT, os.path.join(tmp, "pickled.pt"), os.path.join(tmp, "o2"),
                "--tokenizer", TINY)
        check(r.returncode != 0 and "--trust-pickle" in r.stderr and
              not os.path.exists(os.path.join(tmp, "o2", "model.safetensors")),
              "refuses a checkpoint holding Python objects: " + r.stderr.strip()[:100])
        r = run(CONVERT, os.path.join(tmp, "pickled.pt"), os.path.join(tmp, "o2"),
                "--tokenizer", TINY, "--trust-pickle")
        check(r.returncode == 0, "--trust-pickle reads it with torch.load (%s)" % r.stderr[-100:])
        bad = nanogpt_checkpoint(GPT(50304, 128, 1, 2, 32, True), small)
        del bad["model"]["transformer.h.0.mlp.c_fc.weight"]
        torch.save(bad, os.path.join(tmp, "missing.pt"))
        r = run(CONVERT, os.path.join(tmp, "missing.pt"), os.path.join(tmp, "o3"),
                "--tokenizer", TINY)
        check(r.returncode != 0 and "c_fc.weight" in r.stderr and "Traceback" not in r.stderr,
              "refuses a missing weight: " + r.stderr.strip()[:100])
        r = run(CONVERT, ck, os.path.join(tmp, "o4"))
        check(r.returncode != 0 and "--tokenizer" in r.stderr,
              "asks for a tokenizer when none is given")

    if failures:
        print("%d check(s) failed" % len(failures))
        sys.exit(1)
    print("all checks passed")


if __name__ == "__main__":
    main()
