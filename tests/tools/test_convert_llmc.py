#!/usr/bin/python3
"""tests/tools/test_convert_llmc.py: tools/convert-llmc on llm.c checkpoints this test writes.

    test_convert_llmc.py GPTD_BINARY

The shared tiny GPT-2 (golden logits from Hugging Face transformers) is written out the way
llm.c's train_gpt2.py does it (header 20240326, [out, in] matrices, vocabulary padded to 50304
with junk rows), once as version 3 (float32) and once as version 5 (bfloat16, rounded to
nearest even). Then:
- the converted float32 tensors equal the original bit for bit, and gptd's greedy continuation
  of the converted model equals transformers' (golden/forward.json);
- the converted bfloat16 tensors equal the bf16-rounded original, and gptd gives the same ids
  and log-probabilities for it as for a Hugging Face directory of those rounded weights;
- broken files (wrong magic, unknown version, truncated, header that lies) are refused with a
  message and no output directory is left half-written as a success.
"""

import json
import os
import subprocess
import sys
import tempfile

import numpy as np

SRC = os.environ.get("GPTD_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))
TESTDATA = os.environ.get("GPTD_TESTDATA_DIR", os.path.join(SRC, "tests", "data"))
sys.path.insert(0, os.path.join(SRC, "tools", "pylib"))
import hfgpt2  # noqa: E402

TINY = os.path.join(TESTDATA, "gpt2-tiny-random")
CONVERT = os.path.join(SRC, "tools", "convert-llmc")
failures = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        failures.append(what)


def to_bf16_bits(a):
    """float32 -> bfloat16 bit patterns, round to nearest even (as torch does)."""
    u = a.astype(np.float32).view(np.uint32).astype(np.uint64)
    u = u + 0x7FFF + ((u >> 16) & 1)
    return (u >> 16).astype(np.uint16)


def from_bf16_bits(b):
    return (b.astype(np.uint32) << 16).view(np.float32)


def llmc_params(t, cfg, vp, rng):
    """The llm.c parameter arrays of a Hugging Face GPT-2 state, in file order."""
    L, C, V = cfg["n_layer"], cfg["n_embd"], cfg["vocab_size"]
    g = lambda name: t["transformer." + name]  # noqa: E731
    wte = np.concatenate([g("wte.weight"), rng.standard_normal((vp - V, C)).astype(np.float32)])
    per_layer = lambda n, tr=False: np.stack(  # noqa: E731
        [g("h.%d.%s" % (i, n)).T if tr else g("h.%d.%s" % (i, n)) for i in range(L)])
    return [wte, g("wpe.weight"), per_layer("ln_1.weight"), per_layer("ln_1.bias"),
            per_layer("attn.c_attn.weight", True), per_layer("attn.c_attn.bias"),
            per_layer("attn.c_proj.weight", True), per_layer("attn.c_proj.bias"),
            per_layer("ln_2.weight"), per_layer("ln_2.bias"),
            per_layer("mlp.c_fc.weight", True), per_layer("mlp.c_fc.bias"),
            per_layer("mlp.c_proj.weight", True), per_layer("mlp.c_proj.bias"),
            g("ln_f.weight"), g("ln_f.bias")]


def write_llmc(path, cfg, vp, params, version, magic=20240326):
    header = np.zeros(256, dtype="<i4")
    header[:8] = [magic, version, cfg["n_positions"], cfg["vocab_size"], cfg["n_layer"],
                  cfg["n_head"], cfg["n_embd"], vp]
    with open(path, "wb") as f:
        f.write(header.tobytes())
        for p in params:
            if version == 5:
                f.write(to_bf16_bits(p).astype("<u2").tobytes())
            else:
                f.write(np.ascontiguousarray(p, dtype="<f4").tobytes())


def run(*args):
    return subprocess.run(list(args), capture_output=True, text=True)


def generate(gptd, model, prompt_ids, n=12):
    r = run(gptd, "generate", "-m", model, "--prompt-ids", ",".join(map(str, prompt_ids)),
            "-n", str(n), "--ignore-eos", "--json", "--logprobs", "5")
    check(r.returncode == 0, "gptd generate -m %s exits 0 (%s)" % (model, r.stderr[-300:]))
    return json.loads(r.stdout) if r.returncode == 0 else None


def main():
    gptd = sys.argv[1]
    with open(os.path.join(TINY, "config.json")) as f:
        cfg = json.load(f)
    with open(os.path.join(TINY, "golden", "forward.json")) as f:
        golden = json.load(f)["prompts"][0]
    orig = hfgpt2.read_safetensors(os.path.join(TINY, "model.safetensors"))
    rng = np.random.default_rng(7)
    vp = 50304
    params = llmc_params(orig, cfg, vp, rng)

    with tempfile.TemporaryDirectory() as tmp:
        # Version 3: float32, exact.
        ck3 = os.path.join(tmp, "v3.bin")
        write_llmc(ck3, cfg, vp, params, 3)
        out3 = os.path.join(tmp, "v3")
        r = run(CONVERT, ck3, out3, "--tokenizer", TINY)
        check(r.returncode == 0, "convert-llmc v3 exits 0 (%s)" % r.stderr.strip())
        conv = hfgpt2.read_safetensors(os.path.join(out3, "model.safetensors"))
        check(sorted(conv) == sorted(k for k in orig if not k.endswith(".attn.bias")),
              "v3: the converted tensor names are the Hugging Face ones")
        check(all(np.array_equal(conv[k], orig[k]) for k in conv),
              "v3: every converted tensor equals the original bit for bit (vocab cut to 50257)")
        with open(os.path.join(out3, "config.json")) as f:
            c3 = json.load(f)
        check((c3["n_layer"], c3["n_head"], c3["n_embd"], c3["n_positions"], c3["vocab_size"]) ==
              (cfg["n_layer"], cfg["n_head"], cfg["n_embd"], cfg["n_positions"], 50257),
              "v3: config.json has the checkpoint's shape and the unpadded vocabulary")
        g3 = generate(gptd, out3, golden["prompt_ids"], n=len(golden["greedy_ids"]))
        check(g3 is not None and g3["ids"] == golden["greedy_ids"],
              "v3: gptd's greedy continuation equals transformers' golden ids")

        # Version 5: bfloat16 -> the rounded weights, compared with an HF directory of them.
        ck5 = os.path.join(tmp, "v5.bin")
        write_llmc(ck5, cfg, vp, params, 5)
        check(os.path.getsize(ck5) == 1024 + (os.path.getsize(ck3) - 1024) // 2,
              "v5: the test's bf16 file is half the size of the float32 one")
        out5 = os.path.join(tmp, "v5")
        r = run(CONVERT, ck5, out5, "--tokenizer", TINY)
        check(r.returncode == 0, "convert-llmc v5 exits 0 (%s)" % r.stderr.strip())
        conv5 = hfgpt2.read_safetensors(os.path.join(out5, "model.safetensors"))
        rounded = {k: from_bf16_bits(to_bf16_bits(v)) for k, v in orig.items()
                   if not k.endswith(".attn.bias")}
        check(all(np.array_equal(conv5[k], rounded[k]) for k in rounded),
              "v5: every converted tensor equals the bf16-rounded original")
        check(any(not np.array_equal(conv5[k], orig[k]) for k in rounded),
              "v5: the rounding is real (some tensor differs from float32)")
        ref5 = os.path.join(tmp, "ref5")
        os.makedirs(ref5)
        hfgpt2.write_safetensors(os.path.join(ref5, "model.safetensors"), rounded)
        for name in ("config.json", "tokenizer.json"):
            with open(os.path.join(TINY, name), "rb") as s, \
                    open(os.path.join(ref5, name), "wb") as d:
                d.write(s.read())
        a, b = generate(gptd, out5, golden["prompt_ids"]), generate(gptd, ref5,
                                                                    golden["prompt_ids"])
        check(a is not None and b is not None and a["ids"] == b["ids"] and
              a["logprobs"] == b["logprobs"],
              "v5: gptd gives the same ids and logprobs as for the rounded HF directory")

        # f16 output: smaller file, same greedy ids on this model.
        out16 = os.path.join(tmp, "v3f16")
        r = run(CONVERT, ck3, out16, "--tokenizer", TINY, "--dtype", "f16")
        check(r.returncode == 0 and os.path.getsize(os.path.join(out16, "model.safetensors")) <
              0.51 * os.path.getsize(os.path.join(out3, "model.safetensors")),
              "--dtype f16 writes a half-size model")

        # Refusals.
        data = open(ck3, "rb").read()
        bad = {
            "magic": np.array([20240327], dtype="<i4").tobytes() + data[4:],
            "version": data[:4] + np.array([4], dtype="<i4").tobytes() + data[8:],
            "truncated": data[:len(data) - 4],
            "header": data[:12] + np.array([50300], dtype="<i4").tobytes() + data[16:],
            "short": data[:100],
        }
        for what, blob in bad.items():
            p = os.path.join(tmp, "bad-" + what + ".bin")
            with open(p, "wb") as f:
                f.write(blob)
            out = os.path.join(tmp, "bad-" + what)
            r = run(CONVERT, p, out, "--tokenizer", TINY)
            check(r.returncode != 0 and "convert-llmc:" in r.stderr and
                  "Traceback" not in r.stderr and
                  not os.path.exists(os.path.join(out, "model.safetensors")),
                  "refuses a checkpoint with a bad %s: %s" % (what, r.stderr.strip()[:120]))
        r = run(CONVERT, ck3, os.path.join(tmp, "notok"), "--tokenizer", tmp)
        check(r.returncode != 0 and "tokenizer" in r.stderr,
              "refuses a --tokenizer directory without tokenizer files")

    if failures:
        print("%d check(s) failed" % len(failures))
        sys.exit(1)
    print("all checks passed")


if __name__ == "__main__":
    main()
