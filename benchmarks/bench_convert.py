"""End-to-end conversion speed and memory on a synthetic Llama-3-8B-shaped GPTQ checkpoint.

    .venv/bin/python benchmarks/bench_convert.py [--layers 32] [--rounds 2] [--no-verify] [--threads N] [--dir D]

The checkpoint has Llama-3-8B's exact tensor shapes (hidden 4096, MLP 14336, 32 query and 8 key/value
heads, vocabulary 128256, untied 1 GiB embedding and output matrices), 2-bit, group 128, asymmetric
(GPTQ v2 zeros), in safetensors shards with an index, packed with the readers' own GPTQ pack helpers.
It is generated once per ``--layers`` in a child process (cached under ``--dir``), then this process
alternates, ``--rounds`` times, a durable copy of the same bytes (``shutil.copyfile`` of every shard,
then ``fsync``: the baseline) with a copy of the same bytes by the converter's own writer (``O_DIRECT``
where the file system allows it, then ``fsync``: what moving the bytes costs the converter) and with the
conversion to T-MAC GGUF (which fsyncs its output too), and prints each round's seconds and ratios, the
median ratios, GB/s of source, and peak RSS (``ru_maxrss`` of
this process, which did nothing but the copies and the conversions; plus the peak anonymous and
file-backed parts, sampled from /proc).  Alternating keeps a busy machine's drift out of the ratio.

Bars (issue 13): conversion with verification within 1.5x of the durable copy (moonshot 1.1x); peak
RSS under 1.5 GB at 32 layers.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HIDDEN, FFN, HEADS, KV_HEADS, VOCAB = 4096, 14336, 32, 8, 128256
BITS, GROUP = 2, 128
SHARD_BYTES = 2 << 30
GEN_VERSION = 1


def layer_tensors(i: int) -> list[tuple[str, str, tuple[int, int]]]:
    """``(hf prefix, kind, (M0, K))`` of layer ``i``'s quantised projections."""
    kv = HIDDEN // HEADS * KV_HEADS
    p = f"model.layers.{i}."
    return [(p + "self_attn.q_proj", "attn", (HIDDEN, HIDDEN)), (p + "self_attn.k_proj", "attn", (kv, HIDDEN)),
            (p + "self_attn.v_proj", "attn", (kv, HIDDEN)), (p + "self_attn.o_proj", "attn", (HIDDEN, HIDDEN)),
            (p + "mlp.gate_proj", "mlp", (FFN, HIDDEN)), (p + "mlp.up_proj", "mlp", (FFN, HIDDEN)),
            (p + "mlp.down_proj", "mlp", (HIDDEN, FFN))]


def plan(layers: int) -> list[tuple[str, str, tuple[int, ...]]]:
    """Every stored tensor: ``(name, safetensors dtype, shape)`` in file order."""
    out = [("model.embed_tokens.weight", "F16", (VOCAB, HIDDEN))]
    w = 32 // BITS
    for i in range(layers):
        p = f"model.layers.{i}."
        out += [(p + "input_layernorm.weight", "F16", (HIDDEN,)),
                (p + "post_attention_layernorm.weight", "F16", (HIDDEN,))]
        for prefix, _, (m0, k) in layer_tensors(i):
            g = k // GROUP
            out += [(prefix + ".qweight", "I32", (k // w, m0)), (prefix + ".qzeros", "I32", (g, m0 // w)),
                    (prefix + ".scales", "F16", (g, m0)), (prefix + ".g_idx", "I32", (k,))]
    out += [("model.norm.weight", "F16", (HIDDEN,)), ("lm_head.weight", "F16", (VOCAB, HIDDEN))]
    return out


_ITEMSIZE = {"F16": 2, "I32": 4}


def _nbytes(dtype: str, shape: tuple[int, ...]) -> int:
    return int(np.prod(shape)) * _ITEMSIZE[dtype]


def _f16_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """Random finite float16 values of magnitude about 1e-3..1e-1, made from random bits (fast)."""
    u = np.frombuffer(rng.bytes(2 * n), dtype=np.uint16)
    return ((u & np.uint16(0x83FF)) | np.uint16(0x1C00)).view(np.float16)


def _tensor(name: str, dtype: str, shape: tuple[int, ...], rng: np.random.Generator, cache: dict) -> np.ndarray:
    from tmac_convert.readers.gptq_bits import pack_qweight, pack_qzeros

    n = int(np.prod(shape))
    if name.endswith(".g_idx"):
        return (np.arange(shape[0], dtype=np.int32) // GROUP)
    if name.endswith(".qweight"):
        k, m0 = shape[0] * 32 // BITS, shape[1]
        codes = (np.frombuffer(rng.bytes(m0 * k), np.uint8) & np.uint8((1 << BITS) - 1)).reshape(m0, k)
        return pack_qweight(codes, BITS)
    if name.endswith(".qzeros"):
        g, m0 = shape[0], shape[1] * 32 // BITS
        z = (np.frombuffer(rng.bytes(g * m0), np.uint8) & np.uint8((1 << BITS) - 1)).reshape(g, m0)
        return pack_qzeros(z, BITS)
    if name.endswith(".scales"):
        return (np.abs(_f16_noise(rng, n)) * np.float16(0.1) + np.float16(1e-3)).reshape(shape)
    if name.endswith("norm.weight"):
        return np.ones(shape, np.float16)
    return _f16_noise(rng, n).reshape(shape)


def generate(folder: Path, layers: int) -> None:
    """Write the checkpoint (shards, index, config) tensor by tensor."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    entries = plan(layers)
    shards: list[list[tuple[str, str, tuple[int, ...]]]] = [[]]
    size = 0
    for e in entries:
        nb = _nbytes(e[1], e[2])
        if shards[-1] and size + nb > SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append(e)
        size += nb
    weight_map = {}
    for si, shard in enumerate(shards):
        fname = f"model-{si + 1:05d}-of-{len(shards):05d}.safetensors"
        header, off = {}, 0
        for name, dt, shape in shard:
            nb = _nbytes(dt, shape)
            header[name] = {"dtype": dt, "shape": list(shape), "data_offsets": [off, off + nb]}
            off += nb
            weight_map[name] = fname
        hb = json.dumps(header, separators=(",", ":")).encode()
        hb += b" " * (-len(hb) % 8)
        with open(folder / fname, "wb") as f:
            f.write(len(hb).to_bytes(8, "little") + hb)
            for name, dt, shape in shard:
                f.write(np.ascontiguousarray(_tensor(name, dt, shape, rng, {})).tobytes())
    total = sum(_nbytes(dt, s) for _, dt, s in entries)
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN,
           "intermediate_size": FFN, "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS,
           "num_hidden_layers": layers, "vocab_size": VOCAB, "max_position_embeddings": 8192,
           "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "tie_word_embeddings": False, "torch_dtype": "float16",
           "bos_token_id": 128000, "eos_token_id": 128001,
           "quantization_config": {"quant_method": "gptq", "bits": BITS, "group_size": GROUP, "sym": False,
                                   "desc_act": False, "checkpoint_format": "gptq_v2",
                                   "meta": {"quantizer": ["gptqmodel:bench"]}}}
    (folder / "config.json").write_text(json.dumps(cfg, indent=1))
    (folder / "bench.json").write_text(json.dumps({"version": GEN_VERSION, "layers": layers}))


def ensure_checkpoint(base: Path, layers: int) -> Path:
    folder = base / f"llama3-8b-shape-w2g128-L{layers}"
    stamp = folder / "bench.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == {"version": GEN_VERSION, "layers": layers}:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    t = time.perf_counter()
    # a child process, so that this process's peak RSS measures only the copy and the conversion
    subprocess.run([sys.executable, __file__, "--generate", str(folder), "--layers", str(layers)], check=True)
    print(f"generated {folder} in {time.perf_counter() - t:.1f} s", flush=True)
    return folder


class RssSampler:
    """Peak RssAnon and RssFile of this process, sampled from /proc/self/status."""

    def __init__(self, every: float = 0.02) -> None:
        self.every = every
        self.peak = {"RssAnon": 0, "RssFile": 0}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for line in open("/proc/self/status"):
                    k = line.split(":")[0]
                    if k in self.peak:
                        self.peak[k] = max(self.peak[k], int(line.split()[1]) * 1024)
            except OSError:
                return
            self._stop.wait(self.every)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--dir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "tmac-bench")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-verify", action="store_true")
    ap.add_argument("--rounds", type=int, default=2, help="copy/convert pairs, alternated")
    ap.add_argument("--keep", action="store_true", help="keep the converted file")
    ap.add_argument("--generate", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.generate is not None:
        generate(a.generate, a.layers)
        return

    src = ensure_checkpoint(a.dir, a.layers)
    files = sorted(src.glob("*.safetensors"))
    src_bytes = sum(f.stat().st_size for f in files)
    work = Path(tempfile.mkdtemp(prefix="work-", dir=a.dir))  # private: concurrent runs must not collide
    for f in files:  # warm the page cache equally for both contenders
        with open(f, "rb") as fh:
            while fh.read(64 << 20):
                pass

    from tmac_convert.convert import convert
    from tmac_convert.format.tensor import FileSpan
    from tmac_convert.writers.sequential import SequentialWriter

    def timed_copy(copy_one) -> float:
        """Seconds to copy every shard into ``work`` with ``copy_one(src, dst)`` and fsync the copies."""
        t = time.perf_counter()
        for f in files:
            copy_one(f, work / f.name)
        for f in files:
            fd = os.open(work / f.name, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
        dt = time.perf_counter() - t
        for f in files:
            (work / f.name).unlink()
        return dt

    modes = set()

    def writer_copy(src: Path, dst: Path) -> None:
        """The converter's own writer (O_DIRECT where the file system allows it) moving the bytes unchanged."""
        dst.write_bytes(b"")
        w = SequentialWriter(dst, 0)
        modes.add(w.mode)
        w.copy(FileSpan(src, 0, src.stat().st_size, "|u1"))
        w.close()

    def durable_copy() -> float:
        return timed_copy(shutil.copyfile)

    def direct_copy() -> tuple[float, str]:
        dt = timed_copy(writer_copy)
        return dt, "/".join(sorted(modes))

    out = work / "model.tmac.gguf"
    load = os.getloadavg()[0]
    copies, directs, convs, cpus = [], [], [], []
    with RssSampler() as rss:
        for _ in range(a.rounds):
            copies.append(durable_copy())
            dt, direct_mode = direct_copy()
            directs.append(dt)
            t, c = time.perf_counter(), time.process_time()
            report = convert(str(src), out, verify=not a.no_verify, threads=a.threads, force=True)
            convs.append(time.perf_counter() - t)
            cpus.append(time.process_time() - c)
            out_bytes = out.stat().st_size
            if not a.keep:
                out.unlink()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)
    worst = report.worst
    ratios = [v / c for v, c in zip(convs, copies)]
    ratios_direct = [v / c for v, c in zip(convs, directs)]
    t_copy, t_conv = float(np.median(copies)), float(np.median(convs))
    print(json.dumps({
        "layers": a.layers, "tensors": len(report.tensors), "verify": not a.no_verify, "threads": report.threads,
        "source_bytes": src_bytes, "output_bytes": out_bytes,
        "rounds": a.rounds, "copy_s_each": [round(x, 3) for x in copies],
        "convert_s_each": [round(x, 3) for x in convs], "ratio_each": [round(x, 2) for x in ratios],
        "copy_s": round(t_copy, 3), "convert_s": round(t_conv, 3),
        "copy_GBps": round(src_bytes / t_copy / 1e9, 3), "convert_GBps": round(src_bytes / t_conv / 1e9, 3),
        "ratio_to_copy_median": round(float(np.median(ratios)), 2), "ratio_to_copy_best": round(min(ratios), 2),
        "writer_copy_mode": direct_mode, "writer_copy_s_each": [round(x, 3) for x in directs],
        "ratio_to_writer_copy_each": [round(x, 2) for x in ratios_direct],
        "ratio_to_writer_copy_median": round(float(np.median(ratios_direct)), 2),
        "convert_cpu_s": round(float(np.median(cpus)), 2), "load_avg_before": round(load, 2), "cores": os.cpu_count(),
        "peak_rss_MB": round(peak / 1e6, 1), "peak_rss_anon_MB": round(rss.peak["RssAnon"] / 1e6, 1),
        "peak_rss_file_MB": round(rss.peak["RssFile"] / 1e6, 1),
        "load_avg_after": round(os.getloadavg()[0], 2),
        "worst_nmse": None if worst is None else worst.nmse,
    }, indent=1))


if __name__ == "__main__":
    main()
