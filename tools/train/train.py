#!/usr/bin/python3
"""train: trains gptd's bundled model from scratch and exports it in the Hugging Face layout.

    /usr/bin/python3 tools/train/train.py --out models/kjv-small [--minutes 60] [--steps N]

1. The corpus: the King James Bible from Debian's bible-kjv-text (corpus.py), one document per
   chapter; every 20th chapter is held out for evaluation.
2. The vocabulary: a byte-level BPE trained here (bpe.py), vocab_size 4096.
3. The model: a GPT-2 decoder written out below (pre-norm blocks, causal self-attention, tanh
   GELU, tied embeddings), trained with AdamW (weight decay on matrices only), linear warm-up and
   cosine decay, gradient clipping at 1.0, on random windows of the training tokens.
4. The export: config.json, model.safetensors (float16 when --fp16, to stay under 16 MB) and
   tokenizer.json, plus train-log.json with the losses and expected.json (reference.py: PyTorch's
   greedy continuations of fixed prompts with the exported weights, which the test holds gptd to).

Everything is seeded: the same command on the same PyTorch gives the same model. Training is
not part of CI (it takes about an hour on two cores); tests/test_bundled_model.sh checks the
committed result.
"""

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "pylib"))
sys.path.insert(0, HERE)

import bpe  # noqa: E402
import corpus  # noqa: E402
import hfgpt2  # noqa: E402


# Block's Linear layers and their Hugging Face GPT-2 (Conv1D) names, for export and re-import.
LINEAR_NAMES = (("c_attn", "attn.c_attn"), ("attn_proj", "attn.c_proj"), ("c_fc", "mlp.c_fc"),
                ("mlp_proj", "mlp.c_proj"))


class Block(nn.Module):
    def __init__(self, d, n_head):
        super().__init__()
        self.n_head = n_head
        self.ln_1 = nn.LayerNorm(d, eps=1e-5)
        self.c_attn = nn.Linear(d, 3 * d)
        self.attn_proj = nn.Linear(d, d)
        self.ln_2 = nn.LayerNorm(d, eps=1e-5)
        self.c_fc = nn.Linear(d, 4 * d)
        self.mlp_proj = nn.Linear(4 * d, d)

    def forward(self, x, mask):
        b, t, d = x.shape
        h = self.n_head
        q, k, v = self.c_attn(self.ln_1(x)).split(d, dim=2)
        q = q.view(b, t, h, d // h).transpose(1, 2)
        k = k.view(b, t, h, d // h).transpose(1, 2)
        v = v.view(b, t, h, d // h).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(d // h))
        att = att.masked_fill(mask[:t, :t], float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(b, t, d)
        x = x + self.attn_proj(y)
        x = x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))
        return x


class GPT(nn.Module):
    def __init__(self, vocab, ctx, n_layer, n_head, d):
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(ctx, d)
        self.h = nn.ModuleList([Block(d, n_head) for _ in range(n_layer)])
        self.ln_f = nn.LayerNorm(d, eps=1e-5)
        self.register_buffer("mask", torch.triu(torch.ones(ctx, ctx, dtype=torch.bool), 1),
                             persistent=False)
        self.apply(self._init)
        for name, p in self.named_parameters():  # GPT-2's scaled init of residual projections
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))

    @staticmethod
    def _init(m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets=None):
        t = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(t))
        for blk in self.h:
            x = blk(x, self.mask)
        logits = self.ln_f(x) @ self.wte.weight.t()
        if targets is None:
            return logits
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))

    def hf_tensors(self):
        """The weights under Hugging Face GPT-2 names, Linear weights transposed to Conv1D."""
        out = {"wte.weight": self.wte.weight, "wpe.weight": self.wpe.weight,
               "ln_f.weight": self.ln_f.weight, "ln_f.bias": self.ln_f.bias}
        for i, b in enumerate(self.h):
            p = "h.%d." % i
            for ours, theirs in (("ln_1", "ln_1"), ("ln_2", "ln_2")):
                out[p + theirs + ".weight"] = getattr(b, ours).weight
                out[p + theirs + ".bias"] = getattr(b, ours).bias
            for ours, theirs in LINEAR_NAMES:
                out[p + theirs + ".weight"] = getattr(b, ours).weight.t()
                out[p + theirs + ".bias"] = getattr(b, ours).bias
        return {k: v.detach().contiguous().numpy().copy() for k, v in out.items()}


def batches(tokens, ctx, batch, gen):
    hi = len(tokens) - ctx - 1
    starts = torch.randint(0, hi, (batch,), generator=gen)
    x = torch.stack([tokens[s:s + ctx] for s in starts])
    y = torch.stack([tokens[s + 1:s + 1 + ctx] for s in starts])
    return x, y


@torch.no_grad()
def evaluate(model, tokens, ctx, batch):
    """Mean loss over consecutive non-overlapping windows of the held-out tokens."""
    model.eval()
    n = (len(tokens) - 1) // ctx
    total = 0.0
    for i in range(0, n, batch):
        idx = torch.arange(i, min(n, i + batch)) * ctx
        x = torch.stack([tokens[s:s + ctx] for s in idx])
        y = torch.stack([tokens[s + 1:s + 1 + ctx] for s in idx])
        total += model(x, y).item() * len(idx)
    model.train()
    return total / n


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--embd", type=int, default=288)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=6000)
    ap.add_argument("--lr", type=float, default=1.5e-3)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--fp16", action="store_true", help="store the weights as float16")
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    t_start = time.time()

    chapters = corpus.load_chapters()
    train_ch = [c for i, c in enumerate(chapters) if i % 20 != 19]
    held_ch = [c for i, c in enumerate(chapters) if i % 20 == 19]
    vocab, merges = bpe.train(train_ch, args.vocab)
    hfgpt2.write_tokenizer_json(os.path.join(args.out, "tokenizer.json"), vocab, merges)
    enc = bpe.Encoder(vocab, merges)
    eos = vocab[bpe.EOS]

    def tokenize(chs):
        ids = []
        for c in chs:
            ids.extend(enc.encode(c))
            ids.append(eos)
        return torch.tensor(ids, dtype=torch.long)

    train_tok, held_tok = tokenize(train_ch), tokenize(held_ch)
    print("corpus: %d chapters (%d held out), %d train tokens, %d held-out tokens; BPE %.0f s" %
          (len(chapters), len(held_ch), len(train_tok), len(held_tok), time.time() - t_start),
          flush=True)

    model = GPT(len(vocab), args.ctx, args.layers, args.heads, args.embd)
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "wpe" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "wpe" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(args.seed)
    print("model: %d layers, %d heads, %d wide, context %d, %.2fM parameters" %
          (args.layers, args.heads, args.embd, args.ctx, n_params / 1e6), flush=True)

    log = {"args": vars(args), "params": n_params, "evals": []}
    t_train = time.time()
    for step in range(1, args.steps + 1):
        if step <= args.warmup:
            lr = args.lr * step / args.warmup
        else:
            frac = (step - args.warmup) / max(1, args.steps - args.warmup)
            lr = args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = lr
        x, y = batches(train_tok, args.ctx, args.batch, gen)
        loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 50 == 0:
            el = time.time() - t_train
            print("step %d/%d loss %.3f lr %.2e %.0f ms/step, %.0f s left" %
                  (step, args.steps, loss.item(), lr, 1000 * el / step,
                   el / step * (args.steps - step)), flush=True)
        if step % args.eval_every == 0 or step == args.steps:
            val = evaluate(model, held_tok, args.ctx, 32)
            log["evals"].append({"step": step, "train_loss": loss.item(), "held_out_loss": val,
                                 "seconds": time.time() - t_train})
            print("eval step %d: held-out loss %.4f, perplexity %.2f" % (step, val, math.exp(val)),
                  flush=True)

    tensors = model.hf_tensors()
    if args.fp16:
        tensors = {k: v.astype(np.float16) for k, v in tensors.items()}
    hfgpt2.write_safetensors(os.path.join(args.out, "model.safetensors"), tensors)
    hfgpt2.write_json(os.path.join(args.out, "config.json"),
                      hfgpt2.gpt2_config(args.layers, args.heads, args.embd, args.ctx,
                                         len(vocab), bos=eos, eos=eos))
    log["train_seconds"] = time.time() - t_train
    log["total_seconds"] = time.time() - t_start
    log["torch"] = torch.__version__
    hfgpt2.write_json(os.path.join(args.out, "train-log.json"), log)
    import reference  # PyTorch's greedy continuations of the exported weights, for the test
    reference.expected(args.out, os.path.join(args.out, "expected.json"))
    print("done in %.0f s" % log["total_seconds"], flush=True)


if __name__ == "__main__":
    main()
