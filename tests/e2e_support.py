"""Helpers of the end-to-end tests: a source's weights read independently, and llama.cpp's logits.

Nothing here uses the converter's readers or writers.  :func:`source_weights` opens a fixture
folder with its own small safetensors parser and dequantises it the way the *producer* defines
the weights, in HF names and HF row order (float64):

* float checkpoints: the stored values;
* GPTQ: ``W = (q - z[g_idx]) * s[g_idx]`` from a ``np.unpackbits`` bit stream
  (:func:`tests.test_readers_gptq.ref_dequant`), v1 zeros stored as ``z - 1``;
* BitNet float (1bitLLM ``BitnetForCausalLM``): BitNet's ``weight_quant`` in float64,
  ``W = clip(round(W / s), -1, 1) * s`` with ``s = mean|W|`` rounded to the checkpoint dtype;
* BitNet packed (transformers ``BitNetForCausalLM``): four row slabs of 2-bit fields, ``W = (f - 1) /
  weight_scale``.

:func:`llama_run` runs a GGUF in stock llama.cpp (``llama-cpp-python``) in a child process and returns
the logits of every position (and token ids); a native crash there is a :class:`LlamaCppCrashed`
failure of one test, never a dead test run.
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path
from dataclasses import dataclass
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"

# ---------------------------------------------------------------------------------------------
# safetensors, read without the converter

_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
           "U8": "u1", "BF16": "<u2"}


def read_safetensors(folder: Path) -> dict[str, np.ndarray]:
    """Every tensor of a folder's ``*.safetensors`` files (BF16 widened exactly to float32)."""
    out: dict[str, np.ndarray] = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        raw = f.read_bytes()
        (n,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8:8 + n])
        base = 8 + n
        for name, e in header.items():
            if name == "__metadata__":
                continue
            a, b = e["data_offsets"]
            arr = np.frombuffer(raw[base + a: base + b], dtype=_DTYPES[e["dtype"]]).reshape(e["shape"])
            if e["dtype"] == "BF16":
                arr = (arr.astype(np.uint32) << 16).view(np.float32)
            out[name] = arr
    return out


# ---------------------------------------------------------------------------------------------
# the source's own weights

def _gptq_weights(folder: Path, config: dict, raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    sys.path.insert(0, str(ROOT))
    from tests.test_readers_gptq import ref_unpack  # np.unpackbits bit stream, not the converter's

    truth = json.loads((folder / "fixture.json").read_text())  # what the fixture's producer wrote
    bits, conv = int(truth["bits"]), truth["zero_convention"]
    out: dict[str, np.ndarray] = {}
    for name, a in raw.items():
        if name.endswith(".qweight"):
            p = name[: -len(".qweight")]
            q = ref_unpack(a, bits, 0).T                                                  # [M0, K]
            z = ref_unpack(raw[p + ".qzeros"], bits, 1) + (1 if conv == "v1" else 0)     # [G, M0]
            s = raw[p + ".scales"].astype(np.float64)                                    # [G, M0]
            g = raw[p + ".g_idx"].astype(np.int64)                                       # [K]
            out[p + ".weight"] = (q - z[g].T) * s[g].T
        elif not name.endswith((".qzeros", ".scales", ".g_idx")):
            out[name] = a.astype(np.float64)
    return out


def _bitnet_float_weights(config: dict, raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    dtype = np.float16 if config.get("torch_dtype") == "float16" else np.float32
    out: dict[str, np.ndarray] = {}
    for name, a in raw.items():
        w = a.astype(np.float64)
        if name.endswith("_proj.weight"):
            s = max(float(np.abs(w).mean()), 1e-5)
            t = np.clip(np.round(w / s), -1, 1)
            w = t * float(dtype(s))
        out[name] = w
    return out


def _bitnet_packed_weights(raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for name, a in raw.items():
        if name.endswith(".weight_scale"):
            continue
        if a.dtype == np.uint8:
            # four slabs of rows: slab i holds the 2-bit field at bits 2i, 2i+1 of every byte
            fields = [((a >> (2 * i)) & 3).astype(np.float64) for i in range(4)]
            t = np.concatenate(fields, axis=0) - 1.0
            out[name] = t / float(raw[name + "_scale"].reshape(-1)[0])
        else:
            out[name] = a.astype(np.float64)
    return out


def source_weights(folder: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``(config, weights)``: a fixture's HF config and its float64 weights in HF names and row order."""
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    raw = read_safetensors(folder)
    qc = config.get("quantization_config") or {}
    if any(n.endswith(".qweight") for n in raw):
        return config, _gptq_weights(folder, config, raw)
    if "bitnet" in config["architectures"][0].lower():
        if qc.get("quant_method") == "bitnet":
            return config, _bitnet_packed_weights(raw)
        return config, _bitnet_float_weights(config, raw)
    return config, {n: a.astype(np.float64) for n, a in raw.items()}


# ---------------------------------------------------------------------------------------------
# tokenizer and llama.cpp

def source_tokenize(folder: Path, text: str) -> list[int]:
    """Token ids of ``text`` by the source's ``tokenizer.json`` (``tokenizers`` package, no specials)."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(Path(folder) / "tokenizer.json")).encode(text, add_special_tokens=False).ids


class LlamaCppCrashed(AssertionError):
    """llama.cpp died in its child process (a native crash, an abort or a hang): a failed test, not a dead run."""


class LlamaCppRefused(RuntimeError):
    """llama.cpp refused the file (``Llama(...)`` raised in the child): what a negative control may expect."""


@dataclass
class LlamaRun:
    """What one child run of llama.cpp computed."""

    logits: np.ndarray | None  # float64 [len(tokens), vocab], None when no tokens were given
    tokenized: dict[str, list[int]]  # text -> ids (add_bos=False, special=False)


#: The child: loads the GGUF in llama-cpp-python, tokenises, evaluates, writes an npz, prints one JSON line.
_CHILD = r"""
import json, sys
import numpy as np
job = json.loads(sys.argv[1])
import llama_cpp
try:
    llm = llama_cpp.Llama(model_path=job["path"], logits_all=True, n_ctx=job["n_ctx"], n_threads=2,
                          n_batch=job["n_ctx"], verbose=False)
except Exception as e:  # a refused file: reported, not a crash
    print(json.dumps({"refused": f"{type(e).__name__}: {e}"}), flush=True)
    sys.exit(0)
tokenized = {t: list(llm.tokenize(t.encode("utf-8"), add_bos=False, special=False)) for t in job["texts"]}
arrays = {}
if job["tokens"]:
    llm.reset()
    llm.eval(job["tokens"])
    arrays["logits"] = np.array(llm.scores[: llm.n_tokens], dtype=np.float64)
np.savez(job["out"], **arrays)
llm.close()
print(json.dumps({"tokenized": tokenized}), flush=True)
"""


def llama_cpp_available() -> bool:
    """Whether ``llama_cpp`` is installed (found, not imported: its native library loads only in children)."""
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def llama_run(path: Path, tokens: list[int] | None = None, texts: tuple[str, ...] | list[str] = (), *,
              n_ctx: int = 128, timeout: float = 300, prelude: str = "") -> LlamaRun:
    """Run a GGUF in stock llama.cpp in a child process: logits after each of ``tokens`` and the ids of ``texts``.

    A native crash (e.g. the AMX segfault of native builds, see environment-notes), an abort or a
    timeout raises :class:`LlamaCppCrashed` naming the signal and the child's last stderr lines, so
    the test fails with a message and the run goes on.  ``prelude`` is code run in the child first
    (tests of this helper use it to crash the child on purpose).
    """
    import os
    import signal
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory(prefix="llama-run-") as tmp:
        out = Path(tmp) / "run.npz"
        job = {"path": str(path), "tokens": list(tokens or []), "texts": list(texts), "n_ctx": n_ctx, "out": str(out)}
        env = {**os.environ, "PYTHONFAULTHANDLER": "1"}
        try:
            p = subprocess.run([sys.executable, "-c", prelude + "\n" + _CHILD, json.dumps(job)], capture_output=True,
                               text=True, timeout=timeout, env=env, cwd=tmp)
        except subprocess.TimeoutExpired:
            raise LlamaCppCrashed(f"llama.cpp did not finish within {timeout:g} s running {path}") from None
        tail = "\n".join(p.stderr.strip().splitlines()[-15:])
        if p.returncode != 0:
            why = f"exit code {p.returncode}"
            if p.returncode < 0:
                try:
                    why = f"signal {signal.Signals(-p.returncode).name}"
                except ValueError:
                    why = f"signal {-p.returncode}"
            raise LlamaCppCrashed(f"llama.cpp died ({why}) running {path} in its child process; "
                                  f"last stderr lines:\n{tail}")
        lines = [json.loads(x) for x in p.stdout.splitlines() if x.startswith("{")]
        if not lines:
            raise LlamaCppCrashed(f"llama.cpp's child printed no result running {path}; stderr:\n{tail}")
        if "refused" in lines[-1]:
            raise LlamaCppRefused(lines[-1]["refused"])
        with np.load(out) as z:
            logits = z["logits"] if "logits" in z.files else None
        return LlamaRun(logits, lines[-1]["tokenized"])


def rel_logit_error(got: np.ndarray, want: np.ndarray) -> float:
    """Max absolute logit difference over every position, relative to the reference's logit range."""
    return float(np.max(np.abs(got - want)) / (want.max() - want.min()))


# ---------------------------------------------------------------------------------------------
# deliberately broken copies (negative controls: the bars must catch the classic converter bugs)

def rewrite_gguf(src: Path, dst: Path, *, tensors: dict[str, Any] | None = None,
                 kv: dict[str, Any] | None = None) -> Path:
    """Copy a GGUF with ``tensors[name](array) -> array`` and ``kv[key] = value`` applied (quantised tensors
    are passed as their uint8 block rows, float ones as float arrays, both in the gguf package's shapes)."""
    import gguf

    tensors, kv = tensors or {}, kv or {}
    r = gguf.GGUFReader(src)
    w = gguf.GGUFWriter(str(dst), r.fields["general.architecture"].contents())
    for key, f in r.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        sub = f.types[1] if len(f.types) > 1 else None
        w.add_key_value(key, kv.get(key, f.contents()), f.types[0], sub)
    for t in r.tensors:
        data = np.array(t.data)
        if t.name in tensors:
            data = np.ascontiguousarray(tensors[t.name](data), dtype=data.dtype)
        w.add_tensor(t.name, data, raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(dst)


def unpermute_rows(rows: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's q/k permutation: HF row h*d + p*d/2 + i takes GGUF row h*d + 2i + p."""
    m0 = rows.shape[0]
    d = m0 // n_head
    r = np.arange(m0)
    h, rem = np.divmod(r, d)
    p, i = np.divmod(rem, d // 2)
    return rows[h * d + 2 * i + p]
