"""Time `tmac-convert kit` on a Llama-3-8B-shaped T-MAC GGUF (bar: under 1 s; it reads only the header).

    .venv/bin/python benchmarks/bench_kit.py [--layers 32] [--vocab 128256] [--repeat 5] [--dir D]

The GGUF is written here with the exact header of a converted Llama-3-8B 2-bit model (32 layers of
q/k/v/o/gate/up/down I2 tensors with group 128 and zero points, float16 embedding and output, the
``tmac.*`` keys and kcfg, a 128256-token vocabulary with token types and merges) and a data section
that is a hole in a sparse file: the kit must not need it.  Printed: the median seconds of
``write_kit`` and, as the baseline measured in the same run, of parsing the header alone
(``tmac_convert.gguf_tmac.parse``), and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HIDDEN, FFN, KV, VOCAB = 4096, 14336, 1024, 128256
BITS, GROUP, ACT_GROUP = 2, 128, 64
I2, F16, F32 = 37, 1, 0
ALIGN = 32

_U32, _I32, _F32, _BOOL, _STR, _ARR, _U64 = 4, 5, 6, 7, 8, 9, 10


def _s(v: str) -> bytes:
    b = v.encode()
    return struct.pack("<Q", len(b)) + b


def _kv(key: str, vtype: int, value, sub: int | None = None) -> bytes:
    out = _s(key) + struct.pack("<I", vtype)
    if vtype == _ARR:
        out += struct.pack("<IQ", sub, len(value))
        if sub == _STR:
            out += b"".join(_s(x) for x in value)
        else:
            out += struct.pack(f"<{len(value)}{ {_U32: 'I', _I32: 'i', _F32: 'f'}[sub] }", *value)
        return out
    fmt = {_U32: "<I", _I32: "<i", _F32: "<f", _BOOL: "<?", _U64: "<Q"}
    return out + (_s(value) if vtype == _STR else struct.pack(fmt[vtype], value))


def llama3_8b_tensors(layers: int, vocab: int) -> list[tuple[str, tuple[int, int], int]]:
    """``(name, (M0, K), type id)`` in llama.cpp naming."""
    out = [("token_embd.weight", (vocab, HIDDEN), F16)]
    for i in range(layers):
        p = f"blk.{i}."
        out += [(p + "attn_q.weight", (HIDDEN, HIDDEN), I2), (p + "attn_k.weight", (KV, HIDDEN), I2),
                (p + "attn_v.weight", (KV, HIDDEN), I2), (p + "attn_output.weight", (HIDDEN, HIDDEN), I2),
                (p + "ffn_gate.weight", (FFN, HIDDEN), I2), (p + "ffn_up.weight", (FFN, HIDDEN), I2),
                (p + "ffn_down.weight", (HIDDEN, FFN), I2)]
    out += [("output_norm.weight", (1, HIDDEN), F32), ("output.weight", (vocab, HIDDEN), F16)]
    return out


def write_llama3_8b_header(path: Path, layers: int = 32, vocab: int = VOCAB) -> Path:
    """Write the GGUF (header + sparse data section) of a converted Llama-3-8B-shaped 2-bit model."""
    from tmac_convert.layouts import Kcfg, KernelConfig, default_tiles

    tensors = llama3_8b_tensors(layers, vocab)
    tiles, kcfg = {}, Kcfg()
    for name, (m0, k), t in tensors:
        if t == I2:
            tl = default_tiles(m0, k, BITS, GROUP)
            tiles[name] = tl
            kcfg.add(KernelConfig.for_tensor(m0, k, BITS, group_size=GROUP, zero_point=True, per_tensor=False,
                                             tiles=tl, act_group_size=ACT_GROUP))
    names = [n for n, _, t in tensors if t == I2]
    kvs = [
        _kv("general.architecture", _STR, "llama"), _kv("general.name", _STR, "bench-llama3-8b"),
        _kv("general.file_type", _U32, 38), _kv("general.alignment", _U32, ALIGN),
        _kv("llama.block_count", _U32, layers), _kv("llama.embedding_length", _U32, HIDDEN),
        _kv("llama.feed_forward_length", _U32, FFN), _kv("llama.attention.head_count", _U32, 32),
        _kv("llama.attention.head_count_kv", _U32, 8),
        _kv("tokenizer.ggml.model", _STR, "gpt2"), _kv("tokenizer.ggml.pre", _STR, "llama-bpe"),
        _kv("tokenizer.ggml.tokens", _ARR, [f"tok{i}" for i in range(vocab)], _STR),
        _kv("tokenizer.ggml.token_type", _ARR, [1] * vocab, _I32),
        _kv("tokenizer.ggml.merges", _ARR, [f"t{i} o{i}" for i in range(vocab * 2)], _STR),
        _kv("tmac.format_version", _U32, 1), _kv("tmac.converter", _STR, "bench"), _kv("tmac.layout", _STR, "A"),
        _kv("tmac.runtime", _STR, "tmac"), _kv("tmac.bits", _U32, BITS), _kv("tmac.group_size", _I32, GROUP),
        _kv("tmac.zero_point", _BOOL, True), _kv("tmac.one_scale", _BOOL, False),
        _kv("tmac.act_group_size", _I32, ACT_GROUP), _kv("tmac.tensor_names", _ARR, names, _STR),
        _kv("tmac.tensor_bm", _ARR, [tiles[n].bm for n in names], _U32),
        _kv("tmac.tensor_kfactor", _ARR, [tiles[n].kfactor for n in names], _U32),
        _kv("tmac.kcfg", _STR, kcfg.to_ini()),
    ]
    infos, offset = [], 0
    for name, (m0, k), t in tensors:
        if t == I2:
            nbytes = m0 * k * BITS // 8 + 4 * 2 * m0 * (k // GROUP)
        else:
            nbytes = m0 * k * (2 if t == F16 else 4)
        ne = (k,) if m0 == 1 else (k, m0)
        infos.append(_s(name) + struct.pack("<I", len(ne)) + struct.pack(f"<{len(ne)}Q", *ne) +
                     struct.pack("<IQ", t, offset))
        offset += (nbytes + ALIGN - 1) // ALIGN * ALIGN
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs)) + b"".join(kvs) + b"".join(infos)
    head += b"\0" * (-len(head) % ALIGN)
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(len(head) + offset)  # the data section: a hole
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--vocab", type=int, default=VOCAB)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--dir", type=Path, default=None)
    a = ap.parse_args()
    from tmac_convert.gguf_tmac import parse
    from tmac_convert.kit import write_kit

    with tempfile.TemporaryDirectory(dir=a.dir) as d:
        model = write_llama3_8b_header(Path(d) / "llama3-8b-2bit.gguf", a.layers, a.vocab)
        size = model.stat().st_size
        kit_s, parse_s = [], []
        for i in range(a.repeat):  # interleaved, so both see the same machine load
            t0 = time.perf_counter()
            parse(model)  # every key, as inspect and the readers do
            parse_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            r = write_kit(model, Path(d) / "kit", force=True)
            kit_s.append(time.perf_counter() - t0)
        k, p = statistics.median(kit_s), statistics.median(parse_s)
        print(f"model: Llama-3-8B shapes, {a.layers} layers, vocab {a.vocab}, {size / 2**30:.2f} GiB file "
              f"(data section sparse), {len(r.shapes)} kernel shapes")
        print(f"header parse alone (baseline): {p:.3f} s median of {a.repeat}")
        print(f"write_kit:                     {k:.3f} s median of {a.repeat}  ({k / p:.2f}x the header parse)")
        print(f"bar: under 1 s -> {'PASS' if k < 1.0 else 'FAIL'}")


if __name__ == "__main__":
    main()
