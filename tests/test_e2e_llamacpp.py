"""End to end: tiny checkpoints converted by the CLI to stock llama.cpp types, run by stock llama.cpp
(``llama-cpp-python``), and compared with a numpy forward pass of the *source's own* weights.

For every fixture the logits of every position of a test sentence are compared with
:func:`tests.reference_forward.forward` over weights dequantised independently of the converter
(:mod:`tests.e2e_support`), and the sentence's tokens from the source's ``tokenizer.json``
(``tokenizers`` package) are compared with llama.cpp's ``tokenize`` of the GGUF.

Error measure: ``max |logits - reference| / (max(reference) - min(reference))`` over all positions.

Bars:

* F16 output: below ``F16_BAR = 1e-2``.  Measured (llama-cpp-python 0.3.36, 2 threads): 1.0e-4 to
  3.0e-4 for every fixture (F32: 1.7e-4); llama.cpp's own float16 KV cache and float16 activations
  of F16 matmuls make most of it.
* Q4_0 / Q4_1 / TQ1_0 / TQ2_0 output: at most ``err(F16) + ACT8_FACTOR * act8``, where ``act8`` is
  the error llama.cpp's 8-bit activation quantisation adds, measured in the test by running the
  reference with llama.cpp's activation quantiser (``Q8_0``/``Q8_1`` blocks of 32 for Q4_0/Q4_1,
  ``Q8_K`` blocks of 256 for TQ types) on the input of every projection.  Measured ``act8``: 6.4e-4
  (1-bit GPTQ) to 7.2e-3 (2-bit GPTQ); the stock-type errors were 0.89 to 1.08 times ``err(F16) +
  act8`` (2.6e-3 to 8.1e-3).  The factor 1.5 is there because the emulation rounds slightly
  different activations than llama.cpp (float16 KV cache), so the two realisations of the same
  rounding noise differ by a comparable amount; a wrong weight (every code of one tensor one step
  off: 0.15; swapped nibbles in one tensor: 0.40) or a wrong hyper-parameter (rope base 0.13, q/k
  not permuted 0.20) gives far more (see the negative controls at the end).
* Tokenisation: identical ids.

The float round trips (``llama_f16`` and Qwen2/Mistral/Llama-3-RoPE variants to F16/F32) are the
check of the reference forward pass itself against an independent runtime.

llama.cpp runs in a child process (:func:`tests.e2e_support.llama_run`): a native crash there (the
AMX segfault of natively built llama-cpp-python, see environment-notes) fails one test with the
signal and llama.cpp's last words instead of killing pytest.

Skipped, with the reason, only when ``llama_cpp`` is not installed.  A fresh CI machine builds
llama-cpp-python from source (about 8-10 minutes on 2 cores); runtime of this file: ~45 s.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.e2e_support import (FIXTURES, LlamaCppRefused, llama_cpp_available, llama_run,  # noqa: E402
                               rel_logit_error, rewrite_gguf, source_tokenize, source_weights, unpermute_rows)

if not llama_cpp_available():
    pytest.skip("stock llama.cpp is not installed (pip install -e '.[e2e]' builds llama-cpp-python); the "
                "end-to-end logits tests need it", allow_module_level=True)
from tests.reference_forward import forward, q8_blocks  # noqa: E402

sys.path.insert(0, str(FIXTURES))
import gen_common  # noqa: E402

F16_BAR = 1e-2
ACT8_FACTOR = 1.5
TEXT = "The quick brown fox reads 42 tables, and the farmer converts checkpoints by the sea."
TOKENIZE_TEXTS = (TEXT, "Numbers like 12345 and 4096 don't   fit\n\n here.", "Ünïcödé → naïve café ✓, 3.14159!")

#: fixture -> the exact stock types it converts to (besides F16)
STOCK = {
    "gptq_v1_sym_4bit": ("q4_0", "q4_1"),
    "gptq_v2_asym_2bit": ("q4_1",),
    "gptq_3bit": ("q4_1",),
    "gptq_1bit": ("q4_1",),
    "autogptq_4bit": ("q4_1",),
    "bitnet_float": ("q4_0",),            # hidden 128: rows too short for TQ types (256)
    "bitnet_packed_silu": ("tq2_0", "tq1_0", "q4_0"),
}


def _variant(root: Path, name: str) -> Path:
    """Temporary sources: other architectures and settings of the tiny model."""
    out = root / name
    if out.exists():
        return out
    if name == "bitnet_packed_silu":
        # llama.cpp 0.3.36's bitnet graph runs SiLU whatever the GGUF says (see the relu2 test)
        shutil.copytree(FIXTURES / "bitnet_packed", out)
        cfg = json.loads((out / "config.json").read_text())
        (out / "config.json").write_text(json.dumps(dict(cfg, hidden_act="silu"), indent=1))
        return out
    arch, over = {"qwen2_f16": ("Qwen2ForCausalLM", {}), "mistral_f16": ("MistralForCausalLM", {}),
                  "llama3_rope_f16": ("LlamaForCausalLM", {"rope_scaling": {
                      "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 64}})}[name]
    cfg = gen_common.tiny_config(arch, **over)
    gen_common.write_model_dir(out, cfg, gen_common.tiny_weights(cfg, seed=7), dtypes="F16", tokenizer=False)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(FIXTURES / "llama_f16" / f, out / f)
    return out


class E2E:
    """Conversions, llama.cpp runs and reference logits, each computed once per test session."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tokens = source_tokenize(FIXTURES / "llama_f16", TEXT)
        self._cache: dict[Any, Any] = {}

    def source(self, name: str) -> Path:
        return FIXTURES / name if (FIXTURES / name).is_dir() else _variant(self.root / "src", name)

    def convert(self, name: str, stock: str, *extra: str) -> tuple[Path, dict]:
        key = ("convert", name, stock, extra)
        if key not in self._cache:
            out = self.root / f"{name}.{stock}.gguf"
            cmd = [sys.executable, "-m", "tmac_convert", str(self.source(name)), "--type", stock, "-o", str(out),
                   "--json", "--force", "--threads", "1", *extra]
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            assert p.returncode == 0, f"{' '.join(cmd)} exited {p.returncode}: {p.stderr}"
            self._cache[key] = (out, json.loads(p.stdout))
        return self._cache[key]

    def run(self, path: Path) -> tuple[np.ndarray, dict[str, list[int]]]:
        """llama.cpp's logits of the test sentence and its ids of TOKENIZE_TEXTS (in a child process)."""
        key = ("run", str(path))
        if key not in self._cache:
            r = llama_run(path, self.tokens, TOKENIZE_TEXTS)
            self._cache[key] = (r.logits, r.tokenized)
        return self._cache[key]

    def reference(self, name: str, act: str | None = None) -> np.ndarray:
        key = ("ref", name, act)
        if key not in self._cache:
            cfg, w = source_weights(self.source(name))
            self._cache[key] = forward(cfg, w, self.tokens, matmul_input=q8_blocks(act) if act else None)
        return self._cache[key]

    def error(self, name: str, stock: str, *extra: str) -> float:
        path, _ = self.convert(name, stock, *extra)
        return rel_logit_error(self.run(path)[0], self.reference(name))


@pytest.fixture(scope="module")
def e2e(tmp_path_factory: pytest.TempPathFactory) -> E2E:
    return E2E(tmp_path_factory.mktemp("e2e"))


# ------------------------------------------------------------------------------ the reference itself


@pytest.mark.parametrize("name, stock", [("llama_f16", "f16"), ("llama_f16", "f32"), ("qwen2_f16", "f16"),
                                         ("mistral_f16", "f16"), ("llama3_rope_f16", "f16")])
def test_float_checkpoint_round_trip_agrees_with_the_reference(e2e: E2E, name: str, stock: str) -> None:
    """A float checkpoint written as F16/F32 loses nothing llama.cpp would not: its logits check the
    reference forward pass (RoPE, GQA, norms, Qwen2 biases, Llama 3 rope_freqs) against a real runtime."""
    err = e2e.error(name, stock)
    assert err < F16_BAR, f"{name} as {stock}: relative logit error {err:.3g}"
    if name == "llama3_rope_f16":
        path, report = e2e.convert(name, stock)
        assert "rope_freqs.weight" in [t["name"] for t in report["tensors"]]
        cfg, w = source_weights(e2e.source(name))
        plain = forward(dict(cfg, rope_scaling=None), w, e2e.tokens)
        assert rel_logit_error(e2e.run(path)[0], plain) > 10 * err  # the scaling is visible and applied


# ------------------------------------------------------------------------------ converted fixtures


@pytest.mark.parametrize("name", sorted(STOCK))
def test_f16_output_matches_the_source(e2e: E2E, name: str) -> None:
    err = e2e.error(name, "f16")
    assert err < F16_BAR, f"{name} as F16: relative logit error {err:.3g}"


@pytest.mark.parametrize("name, stock", [(n, s) for n, types in STOCK.items() for s in types])
def test_stock_type_matches_the_source_within_llamacpps_activation_rounding(e2e: E2E, name: str, stock: str) -> None:
    path, report = e2e.convert(name, stock)
    # the conversion was exact: every projection is of the requested type and reported within float16 rounding
    quant = [t for t in report["tensors"] if t["type"] == stock.upper()]
    assert quant and all(t["nmse"] is not None and t["nmse"] < 1e-6 for t in quant)
    err = rel_logit_error(e2e.run(path)[0], e2e.reference(name))
    err_f16 = e2e.error(name, "f16")
    act8 = rel_logit_error(e2e.reference(name, act=stock), e2e.reference(name))
    bar = err_f16 + ACT8_FACTOR * act8
    assert err <= bar, (f"{name} as {stock}: relative logit error {err:.3g} > F16 {err_f16:.3g} + "
                        f"{ACT8_FACTOR} x activation rounding {act8:.3g}")


@pytest.mark.parametrize("name", ["gptq_v1_sym_4bit", "gptq_v2_asym_2bit", "bitnet_float", "bitnet_packed_silu"])
def test_tokenisation_is_the_source_tokenizers(e2e: E2E, name: str) -> None:
    path, _ = e2e.convert(name, "f16")
    ids = e2e.run(path)[1]
    for text in TOKENIZE_TEXTS:
        assert ids[text] == source_tokenize(e2e.source(name), text), text


@pytest.mark.xfail(strict=True, reason="llama.cpp 0.3.36 (llama-cpp-python) builds the bitnet FFN with SiLU whatever "
                   "the GGUF says; BitNet b1.58 2B4T-style checkpoints use relu2 (squared ReLU), so stock llama.cpp "
                   "computes another model (a newer llama.cpp reads bitnet.hidden_activation)")
def test_relu2_bitnet_runs_as_the_source(e2e: E2E) -> None:
    err = e2e.error("bitnet_packed", "f16")
    assert err < F16_BAR, f"relative logit error {err:.3g}"


def test_lossy_request_is_refused_and_allowed_with_the_error_reported(e2e: E2E, tmp_path: Path) -> None:
    out = tmp_path / "x.gguf"
    cmd = [sys.executable, "-m", "tmac_convert", str(FIXTURES / "gptq_v2_asym_2bit"), "--type", "q4_0", "-o", str(out)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "--allow-lossy" in p.stderr and "zero points" in p.stderr and not out.exists()
    path, report = e2e.convert("gptq_v2_asym_2bit", "q4_0", "--allow-lossy")
    quant = [t for t in report["tensors"] if t["type"] == "Q4_0"]
    assert len(quant) == 14 and all(t["nmse"] > 1e-4 for t in quant)  # re-quantised, and it says how much
    assert rel_logit_error(e2e.run(path)[0], e2e.reference("gptq_v2_asym_2bit")) < 1.0


# ------------------------------------------------------------------------------ negative controls


def test_the_bars_catch_classic_converter_bugs(e2e: E2E, tmp_path: Path) -> None:
    """Each bug of the issue's list, planted in a good F16 file, fails its bar."""
    good, _ = e2e.convert("llama_f16", "f16")
    ref = e2e.reference("llama_f16")
    qk = {f"blk.{i}.attn_{x}.weight": (lambda a, n=(4 if x == "q" else 2): unpermute_rows(a, n))
          for i in range(2) for x in "qk"}
    for what, kw in (("q/k rows not permuted", {"tensors": qk}),
                     ("wrong rope base", {"kv": {"llama.rope.freq_base": 500000.0}}),
                     ("wrong head count", {"kv": {"llama.attention.head_count_kv": 4}})):
        bad = rewrite_gguf(good, tmp_path / "bad.gguf", **kw)
        try:
            logits = llama_run(bad, e2e.tokens).logits
        except LlamaCppRefused:  # a refused file is caught too
            continue
        err = rel_logit_error(logits, ref)
        assert err > F16_BAR, f"{what} went unnoticed ({err:.3g})"
    bad = rewrite_gguf(good, tmp_path / "pre.gguf", kv={"tokenizer.ggml.pre": "llama-bpe"})
    ids = llama_run(bad, texts=TOKENIZE_TEXTS).tokenized
    assert any(ids[t] != source_tokenize(FIXTURES / "llama_f16", t) for t in TOKENIZE_TEXTS)


def _codes_up_one(blocks: np.ndarray) -> np.ndarray:
    """Q4_0 rows with every 4-bit code one step up (saturating at 15)."""
    b = blocks.reshape(blocks.shape[0], -1, 18).copy()
    lo, hi = np.minimum((b[..., 2:] & 15) + 1, 15), np.minimum((b[..., 2:] >> 4) + 1, 15)
    b[..., 2:] = lo | (hi << 4)
    return b.reshape(blocks.shape)


def test_the_stock_bar_catches_one_wrong_tensor(e2e: E2E, tmp_path: Path) -> None:
    name = "gptq_v1_sym_4bit"
    good, _ = e2e.convert(name, "q4_0")
    bad = rewrite_gguf(good, tmp_path / "bad.gguf", tensors={"blk.1.attn_v.weight": _codes_up_one})
    err = rel_logit_error(llama_run(bad, e2e.tokens).logits, e2e.reference(name))
    act8 = rel_logit_error(e2e.reference(name, act="q4_0"), e2e.reference(name))
    assert err > e2e.error(name, "f16") + ACT8_FACTOR * act8, f"a wrong tensor went unnoticed ({err:.3g})"
