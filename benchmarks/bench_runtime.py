"""Decode speed in T-MAC's llama.cpp fork: the kit's I1/I2/I4 tensors against the fork's own types.

    TMAC_FORK_SRC=../shared/third_party/llama.cpp-tmac-fork-81ffd4cd.tar.gz \\
    .venv/bin/python benchmarks/bench_runtime.py [--layers 4] [--rounds 3] [--tokens 16] [--bits 1 2 4]
                                                 [--threads 1 2] [--dir D]

The model: ``--layers`` layers of Llama-2-7B shapes (hidden 4096, MLP 11008, 32 heads, no GQA) with
the fixtures' 512-token vocabulary, so that decoding is bound by the layers' matrix-vector products.
Synthetic GPTQ checkpoints (asymmetric, group 128, GPTQ v2 zeros, random codes, scales and zeros: random
``qweight``/``qzeros`` words, since every bit pattern is a valid field), one per ``--bits``, converted to
T-MAC GGUFs (``I1``/``I2``/``I4``).  The 2-bit checkpoint is also written as F16 (its dequantised
weights), and the fork's ``llama_model_quantize`` (every weight, ``pure``) makes Q2_K, TQ2_0 and Q4_0
from that F16 file: the fork's own types of the same weights.

For each bit width: the kit of its file is written, the fork is built around it (one cached build,
incremental between kits, :mod:`tests.fork_support`), and then, at each thread count, the types are
run round by round, interleaved (I_b, Q2_K, TQ2_0, Q4_0, F16, then again), each run a child process
that decodes ``--tokens`` tokens one at a time after two warm-up tokens (``driver bench``).  The
best round of each is reported: tokens/s, the ratios against Q2_K, TQ2_0 and Q4_0 of the same build,
and the effective weight bandwidth (bytes of the 2-D weights read per token, i.e. all of them but the
embedding table, times tokens/s) next to the machine's streaming read bandwidth, measured in the same
run by ``benchmarks/read_bandwidth.c`` (a buffer larger than the last-level cache) at the same threads.

Timings are noisy on shared machines: only ratios measured in one run mean anything.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fork_support import ForkBuild, fork_source_setting  # noqa: E402

HIDDEN, FFN, HEADS, VOCAB_FROM = 4096, 11008, 32, ROOT / "fixtures" / "llama_f16"
GROUP = 128
GEN_VERSION = 1
STOCK = ("q2_k", "tq2_0", "q4_0", "f16")


# ------------------------------------------------------------------------------------------ checkpoint

def _projections(i: int) -> list[tuple[str, tuple[int, int]]]:
    p = f"model.layers.{i}."
    return [(p + "self_attn.q_proj", (HIDDEN, HIDDEN)), (p + "self_attn.k_proj", (HIDDEN, HIDDEN)),
            (p + "self_attn.v_proj", (HIDDEN, HIDDEN)), (p + "self_attn.o_proj", (HIDDEN, HIDDEN)),
            (p + "mlp.gate_proj", (FFN, HIDDEN)), (p + "mlp.up_proj", (FFN, HIDDEN)),
            (p + "mlp.down_proj", (HIDDEN, FFN))]


def _write_safetensors(path: Path, tensors: list[tuple[str, np.ndarray]]) -> None:
    dt = {np.dtype(np.float16): "F16", np.dtype(np.int32): "I32"}
    header, off = {}, 0
    for name, a in tensors:
        header[name] = {"dtype": dt[a.dtype], "shape": list(a.shape), "data_offsets": [off, off + a.nbytes]}
        off += a.nbytes
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)
    with open(path, "wb") as f:
        f.write(len(hb).to_bytes(8, "little") + hb)
        for _, a in tensors:
            f.write(np.ascontiguousarray(a).tobytes())


def generate(folder: Path, layers: int, bits: int, vocab: int) -> None:
    """A GPTQ checkpoint (v2 zeros, group 128, asymmetric) of Llama-2-7B layer shapes, one layer per shard."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(bits)
    maxq = (1 << bits) - 1
    weight_map: dict[str, str] = {}
    shards: list[list[tuple[str, np.ndarray]]] = [[
        ("model.embed_tokens.weight", (rng.standard_normal((vocab, HIDDEN), np.float32) * 0.02).astype(np.float16)),
        ("model.norm.weight", np.ones(HIDDEN, np.float16)),
        ("lm_head.weight", (rng.standard_normal((vocab, HIDDEN), np.float32) * 0.02).astype(np.float16))]]
    for i in range(layers):
        shard = [(f"model.layers.{i}.input_layernorm.weight", np.ones(HIDDEN, np.float16)),
                 (f"model.layers.{i}.post_attention_layernorm.weight", np.ones(HIDDEN, np.float16))]
        for name, (m0, k) in _projections(i):
            g = k // GROUP
            # random 32-bit words are random codes and zeros: every bit pattern is a valid field
            qweight = np.frombuffer(rng.bytes(m0 * k * bits // 8), np.int32).reshape(k * bits // 32, m0)
            qzeros = np.frombuffer(rng.bytes(g * m0 * bits // 8), np.int32).reshape(g, m0 * bits // 32)
            scales = (rng.uniform(0.5, 1.5, (g, m0)) * 0.04 / (maxq + 1)).astype(np.float16)
            shard += [(name + ".qweight", qweight), (name + ".qzeros", qzeros),
                      (name + ".scales", scales), (name + ".g_idx", (np.arange(k, dtype=np.int32) // GROUP))]
        shards.append(shard)
    for si, shard in enumerate(shards):
        fname = f"model-{si + 1:05d}-of-{len(shards):05d}.safetensors"
        _write_safetensors(folder / fname, shard)
        weight_map.update({n: fname for n, _ in shard})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN,
           "intermediate_size": FFN, "num_attention_heads": HEADS, "num_key_value_heads": HEADS,
           "num_hidden_layers": layers, "vocab_size": vocab, "max_position_embeddings": 4096,
           "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False, "torch_dtype": "float16",
           "bos_token_id": 0, "eos_token_id": 1,
           "quantization_config": {"quant_method": "gptq", "bits": bits, "group_size": GROUP, "sym": False,
                                   "desc_act": False, "checkpoint_format": "gptq_v2"}}
    (folder / "config.json").write_text(json.dumps(cfg, indent=1))
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(VOCAB_FROM / f, folder / f)
    (folder / "bench.json").write_text(json.dumps({"version": GEN_VERSION}))


def ensure(path: Path, make) -> Path:
    """``make(tmp)`` once: reuse ``path`` from an earlier run (the stamp is written last)."""
    stamp = path.with_name(path.name + ".done")
    if stamp.is_file() and path.exists():
        return path
    shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    t = time.perf_counter()
    make(path)
    stamp.write_text(str(GEN_VERSION))
    print(f"  made {path.name} in {time.perf_counter() - t:.1f} s", flush=True)
    return path


# ------------------------------------------------------------------------------------------ measuring

def weight_bytes_per_token(model: Path) -> int:
    """Bytes of the 2-D weights one decoded token reads: every matrix but the embedding table (one row)."""
    from tmac_convert.format.gguf_file import parse

    f = parse(model)
    return sum(t.span for t in f.tensors if len(t.ne) == 2 and t.name != "token_embd.weight")


def read_bandwidth(work: Path, threads: int) -> float:
    exe = work / "read_bandwidth"
    src = ROOT / "benchmarks" / "read_bandwidth.c"
    if not exe.is_file() or exe.stat().st_mtime < src.stat().st_mtime:
        subprocess.run(["clang", "-O3", "-march=native", "-pthread", str(src), "-o", str(exe)], check=True)
    p = subprocess.run([str(exe), "1024", str(threads), "5"], capture_output=True, text=True, check=True)
    return json.loads(p.stdout)["gb_per_s"]


def decode_speed(fork: ForkBuild, model: Path, threads: int, tokens: int) -> float:
    p = fork.run_driver("bench", model, threads, tokens, timeout=1200)
    return json.loads(p.stdout.strip().splitlines()[-1])["tok_per_s"]


# ------------------------------------------------------------------------------------------ main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=16, help="decoded tokens per run")
    ap.add_argument("--bits", type=int, nargs="+", default=[2, 1, 4], choices=[1, 2, 3, 4])
    ap.add_argument("--threads", type=int, nargs="+", default=sorted({1, os.cpu_count() or 1}))
    ap.add_argument("--stock", nargs="+", default=list(STOCK), choices=list(STOCK))
    ap.add_argument("--dir", type=Path, default=ROOT / ".fork-cache" / "bench", help="cache of models")
    ap.add_argument("--prepare-only", action="store_true", help="make the checkpoints and T-MAC/F16 files, then stop")
    a = ap.parse_args()

    from tmac_convert.convert import convert

    src = fork_source_setting()
    work = a.dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    vocab = json.loads((VOCAB_FROM / "config.json").read_text())["vocab_size"]
    tag = f"L{a.layers}"
    print(f"model: {a.layers} layers of Llama-2-7B shapes, vocabulary {vocab}; cache {work}", flush=True)

    ckpt = {b: ensure(work / f"gptq-w{b}g{GROUP}-{tag}", lambda p, b=b: generate(p, a.layers, b, vocab))
            for b in sorted(set(a.bits) | {2})}
    tmac = {b: ensure(work / f"w{b}-{tag}.tmac.gguf",
                      lambda p, b=b: convert(ckpt[b], p, verify=False, force=True)) for b in a.bits}
    f16 = ensure(work / f"w2-{tag}.f16.gguf", lambda p: convert(ckpt[2], p, out_type="f16", verify=False, force=True))

    if a.prepare_only:
        return
    with ForkBuild(src) as fork:
        stock: dict[str, Path] = {}
        results: dict[tuple[int, str, int], float] = {}
        share: dict[tuple[int, str, int], float] = {}
        for b in a.bits:
            t = time.perf_counter()
            fork.write_model_kit(tmac[b])
            log = fork.build()
            print(f"\nkit for I{b}: fork built in {time.perf_counter() - t:.0f} s "
                  f"({len(log.kit_files_changed)} kit files changed)", flush=True)
            for s in a.stock:  # quantised by this build's llama_model_quantize (the first build's is the same code)
                stock[s] = f16 if s == "f16" else ensure(work / f"w2-{tag}.{s}.gguf",
                                                         lambda p, s=s: fork.quantize(f16, p, s, os.cpu_count() or 1))
            models = {f"I{b}": tmac[b], **{s.upper(): stock[s] for s in a.stock}}
            for th in a.threads:
                best: dict[str, float] = {}
                for r in range(a.rounds):
                    for name, m in models.items():
                        v = decode_speed(fork, m, th, a.tokens)
                        best[name] = max(best.get(name, 0.0), v)
                bw = read_bandwidth(work, th)
                print(f"  {th} thread{'s' if th > 1 else ''}: streaming read bandwidth {bw:.1f} GB/s", flush=True)
                print(f"    {'type':6} {'tok/s':>8} {'weights MB/tok':>15} {'GB/s':>6} {'% of read bw':>13}"
                      + "".join(f" {'vs ' + s.upper():>9}" for s in ("q2_k", "tq2_0", "q4_0") if s in a.stock))
                for name, m in models.items():
                    nb = weight_bytes_per_token(m)
                    v = best[name]
                    results[(b, name, th)] = v
                    eff = nb * v / 1e9
                    share[(b, name, th)] = eff / bw
                    ratios = "".join(f" {v / best[s.upper()]:9.2f}" for s in ("q2_k", "tq2_0", "q4_0") if s in a.stock)
                    print(f"    {name:6} {v:8.2f} {nb / 1e6:15.1f} {eff:6.2f} {100 * eff / bw:12.0f}%{ratios}", flush=True)
        print("\nbars (issue 11), from the rounds above:")
        for th in a.threads:
            def r(b: int, name: str, base: str) -> float | None:
                x, y = results.get((b, name, th)), results.get((b, base, th))
                return None if x is None or y is None else x / y
            for label, val, want in (("I2 / Q2_K", r(2, "I2", "Q2_K"), 2.0), ("I2 / TQ2_0", r(2, "I2", "TQ2_0"), 1.5),
                                     ("I4 / Q4_0", r(4, "I4", "Q4_0"), 1.5)):
                if val is not None:
                    print(f"  {th}T {label}: {val:.2f} (bar {want}) {'ok' if val >= want else 'BELOW'}")
            if th == 1 and (2, "I2", 1) in share:
                v = share[(2, "I2", 1)]
                print(f"  1T I2 weight streaming: {100 * v:.0f}% of the read bandwidth (bar 70%) {'ok' if v >= 0.7 else 'BELOW'}")
            i1, i2 = r(1, "I1", "Q2_K"), r(2, "I2", "Q2_K")
            if i1 is not None and i2 is not None:
                print(f"  {th}T I1 vs I2 (each over Q2_K of its build): {i1:.2f} vs {i2:.2f} "
                      f"{'ok' if i1 > i2 else 'BELOW'}")


if __name__ == "__main__":
    main()
