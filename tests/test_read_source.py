"""tmac_convert.read(): local folders and files, hub repo ids (offline, through the hub cache), pickle
refusal, detection through the reader registry, and the HF -> llama.cpp naming rules."""

from __future__ import annotations

import fnmatch
import pickle
import shutil
from pathlib import Path

import gguf
import huggingface_hub
import huggingface_hub.constants
import numpy as np
import pytest

import tmac_convert
from tmac_convert import read
from tmac_convert.errors import TmacError
from tmac_convert.readers import Reader, detect, load_readers
from tmac_convert.readers import source as source_mod
from tmac_convert.archs.naming import (gguf_arch, gguf_tensor_name, is_projection, permute_qk, qk_permute_heads,
                                         unpermute_qk)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


# ----------------------------------------------------------------------------- local sources


def test_read_is_exported_at_top_level() -> None:
    assert tmac_convert.read is read


def test_folder_and_single_file_sources(tmp_path: Path) -> None:
    folder = FIXTURES / "gptq_3bit"
    by_folder = read(folder)
    by_file = read(folder / "model.safetensors")
    assert by_folder.format == by_file.format == "gptq"
    assert [i.name for i in by_folder.tensor_infos()] == [i.name for i in by_file.tensor_infos()]


def test_detection_uses_the_registry_by_priority() -> None:
    readers = load_readers()
    assert {"gptq", "hf-float"} <= set(readers)
    assert readers["gptq"].priority < readers["hf-float"].priority
    assert detect(FIXTURES / "gptq_v1_sym_4bit") is readers["gptq"]
    assert detect(FIXTURES / "llama_f16") is readers["hf-float"]


def test_forced_format(tmp_path: Path) -> None:
    with pytest.raises(TmacError) as e:
        read(FIXTURES / "llama_f16", format="nope")
    assert e.value.rule == "known format"
    assert read(FIXTURES / "llama_f16", format="hf-float").format == "hf-float"


def test_unknown_folder(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(TmacError) as e:
        read(tmp_path)
    assert e.value.rule == "known source format" and e.value.file == str(tmp_path)


def test_missing_local_path() -> None:
    with pytest.raises(TmacError) as e:
        read("./does/not/exist")
    assert e.value.rule == "source exists"


# ----------------------------------------------------------------------------- pickles


class _Boom:
    """Unpickling this writes a marker file: proof that a checkpoint was (wrongly) unpickled."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "unpickled!"))


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "consolidated.pth"])
def test_pickled_checkpoints_are_refused_without_unpickling(tmp_path: Path, name: str) -> None:
    marker = tmp_path / "marker"
    model = tmp_path / "m"
    shutil.copytree(FIXTURES / "llama_f16", model, ignore=shutil.ignore_patterns("*.safetensors"))
    (model / name).write_bytes(pickle.dumps(_Boom(str(marker))))
    for src in (model, model / name):
        with pytest.raises(TmacError) as e:
            read(src)
        assert e.value.rule == "safetensors only" and "safetensors" in str(e.value)
    assert not marker.exists()


def test_pickles_beside_safetensors_are_ignored(tmp_path: Path) -> None:
    shutil.copytree(FIXTURES / "gptq_1bit", tmp_path / "m")
    (tmp_path / "m" / "pytorch_model.bin").write_bytes(b"not even a pickle")
    assert read(tmp_path / "m").format == "gptq"


# ----------------------------------------------------------------------------- hub repo ids


@pytest.mark.parametrize("bad", ["../etc/passwd", "owner/..", "a/b/c", "-owner/name", "owner/name.", "o--x/y",
                                 "owner/na me", "owner/" + "x" * 97, ""])
def test_invalid_repo_ids_never_reach_the_hub(monkeypatch: pytest.MonkeyPatch, bad: str) -> None:
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda **kw: pytest.fail("hub called"))
    with pytest.raises(TmacError) as e:
        read(bad)
    assert e.value.rule == "source exists"


def test_repo_id_downloads_only_weights_configs_and_tokenizer(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls = []

    def fake(**kw):
        calls.append(kw)
        return str(FIXTURES / "gptq_v2_asym_2bit")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    model = read("someone/tiny-gptq", cache_dir=tmp_path, revision="main")
    assert model.format == "gptq"
    (kw,) = calls
    assert kw["repo_id"] == "someone/tiny-gptq" and kw["revision"] == "main" and kw["cache_dir"] == str(tmp_path)
    pats = kw["allow_patterns"]
    assert "*.safetensors" in pats and "*.json" in pats and "tokenizer.model" in pats
    for unwanted in ("pytorch_model.bin", "model.pt", "consolidated.00.pth", "model.gguf", "optimizer.ckpt",
                     "training_args.bin", "images/logo.png"):
        assert not any(fnmatch.fnmatch(unwanted, p) for p in pats), unwanted
    for wanted in ("model-00001-of-00002.safetensors", "config.json", "tokenizer.json", "tokenizer.model",
                   "merges.txt"):
        assert any(fnmatch.fnmatch(wanted, p) for p in pats), wanted


def test_bad_revision(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda **kw: pytest.fail("hub called"))
    with pytest.raises(TmacError) as e:
        read("someone/tiny", revision="../../x")
    assert e.value.rule == "valid revision"


def _fake_cache(cache: Path, repo: str, fixture: str) -> Path:
    """Lay a fixture out the way huggingface_hub caches a snapshot of ``repo`` at ``main``."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    base = cache / ("models--" + repo.replace("/", "--"))
    shutil.copytree(FIXTURES / fixture, base / "snapshots" / commit)
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(commit)
    return base / "snapshots" / commit


def test_offline_mode_reads_the_hub_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(TmacError) as e:
        read("someone/tiny", cache_dir=tmp_path)
    assert e.value.rule == "hub download" and "HF_HUB_OFFLINE" in str(e.value)
    snap = _fake_cache(tmp_path, "someone/tiny", "gptq_3bit")
    model = read("someone/tiny", cache_dir=tmp_path)
    assert model.path == snap and model.format == "gptq"


# ----------------------------------------------------------------------------- naming


@pytest.mark.parametrize("hf, arch, want", [
    ("LlamaForCausalLM", gguf.MODEL_ARCH.LLAMA, "llama"),
    ("MistralForCausalLM", gguf.MODEL_ARCH.LLAMA, "llama"),
    ("Qwen2ForCausalLM", gguf.MODEL_ARCH.QWEN2, "qwen2"),
    ("BitnetForCausalLM", gguf.MODEL_ARCH.BITNET, "bitnet"),
    ("BitNetForCausalLM", gguf.MODEL_ARCH.BITNET, "bitnet"),
])
def test_architecture_names(hf: str, arch, want: str) -> None:
    assert gguf_arch(hf) == (arch, want)


def test_unknown_architecture() -> None:
    with pytest.raises(TmacError) as e:
        gguf_arch("FancyNewModelForCausalLM", file="config.json")
    assert e.value.rule == "supported architecture" and e.value.file == "config.json"


@pytest.mark.parametrize("hf, want", [
    ("model.embed_tokens.weight", "token_embd.weight"),
    ("lm_head.weight", "output.weight"),
    ("model.norm.weight", "output_norm.weight"),
    ("model.layers.1.self_attn.o_proj.weight", "blk.1.attn_output.weight"),
    ("model.layers.0.mlp.gate_proj.weight", "blk.0.ffn_gate.weight"),
    ("model.layers.0.post_attention_layernorm.weight", "blk.0.ffn_norm.weight"),
    ("model.layers.0.self_attn.k_proj.qweight", "blk.0.attn_k.qweight"),
    ("model.layers.9.self_attn.k_proj.weight", None),  # beyond n_blocks
])
def test_tensor_names_come_from_gguf_tables(hf: str, want: str | None) -> None:
    assert gguf_tensor_name(hf, "llama", 2) == want


def test_projection_and_permutation_roles() -> None:
    cfg = {"num_attention_heads": 8, "num_key_value_heads": 2}
    assert is_projection("blk.3.ffn_down.weight") and not is_projection("blk.3.attn_norm.weight")
    assert not is_projection("token_embd.weight") and not is_projection("blk.0.attn_q.bias")
    assert qk_permute_heads("blk.0.attn_q.weight", "llama", cfg) == 8
    assert qk_permute_heads("blk.0.attn_k.bias", "llama", cfg) == 2
    assert qk_permute_heads("blk.0.attn_v.weight", "llama", cfg) is None
    assert qk_permute_heads("blk.0.attn_q.weight", "qwen2", cfg) is None


def test_permute_qk_matches_the_index_formula_on_any_trailing_shape() -> None:
    rng = np.random.default_rng(0)
    for shape, heads in (((64, 7), 4), ((32,), 2), ((48, 3), 3)):
        a = rng.integers(0, 255, shape).astype(np.uint8)
        m0, d = shape[0], shape[0] // heads
        h, rem = np.divmod(np.arange(m0), d)
        i, p = np.divmod(rem, 2)
        assert np.array_equal(permute_qk(a, heads), a[h * d + p * (d // 2) + i])
        assert np.array_equal(unpermute_qk(permute_qk(a, heads), heads), a)
    with pytest.raises(TmacError):
        permute_qk(np.zeros((10, 2)), 4)


def test_source_module_validates_repo_ids() -> None:
    assert source_mod.is_repo_id("meta-llama/Llama-2-7b-hf") and source_mod.is_repo_id("gpt2")
    assert not source_mod.is_repo_id("a/../b") and not source_mod.is_repo_id("/abs/path")


def test_reader_registry_names_are_unique() -> None:
    names = [cls.name for cls in Reader.registry.values()]
    assert len(names) == len(set(names))
