"""Errors that say what happened: a source no reader takes, a local-path typo and an unavailable hub id
each get a message naming the actual cause (and, for a hub id, whether it is offline or absent and
the command that fetches it), through the CLI as one line with exit code 2."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import huggingface_hub.constants
import pytest
from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError

from tmac_convert import read
from tmac_convert.errors import TmacError

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_COLOR": "1", "COLUMNS": "400"}


def error_of(source: str | Path, **kw) -> TmacError:
    with pytest.raises(TmacError) as e:
        read(source, **kw)
    return e.value


# ------------------------------------------------------------------------------ sources no reader takes


def test_a_folder_of_gguf_files_names_the_file_to_give() -> None:
    e = error_of(FIXTURES / "gguf_q4_0")
    assert e.rule == "known source format"
    assert "GGUF" in str(e) and str(FIXTURES / "gguf_q4_0" / "model.gguf") in str(e)


def test_a_gguf_with_the_wrong_magic_says_so(tmp_path: Path) -> None:
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"GGML" + (FIXTURES / "gguf_q4_0" / "model.gguf").read_bytes()[4:])
    e = error_of(bad)
    assert "not a GGUF file" in str(e) and "'GGML'" in str(e) and "'GGUF'" in str(e)


def test_a_text_file_named_safetensors_says_it_is_not_safetensors(tmp_path: Path) -> None:
    f = tmp_path / "model.safetensors"
    f.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 42\n")  # an LFS pointer
    e = error_of(f)
    assert "not a valid safetensors file" in str(e) and "version " in str(e)


@pytest.mark.parametrize("source", ["folder", "file"])
def test_missing_config_json_is_named(tmp_path: Path, source: str) -> None:
    shutil.copy(FIXTURES / "llama_f16" / "model.safetensors", tmp_path / "model.safetensors")
    e = error_of(tmp_path if source == "folder" else tmp_path / "model.safetensors")
    assert "no config.json" in str(e)


@pytest.mark.parametrize("make, cause", [
    (lambda d: None, "the folder is empty"),
    (lambda d: (d / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}'), "no *.safetensors"),
    (lambda d: (d / "notes.txt").write_text("hi"), "no model files here (notes.txt)"),
])
def test_other_folders_no_reader_takes(tmp_path: Path, make, cause: str) -> None:
    make(tmp_path)
    assert cause in str(error_of(tmp_path))


# ------------------------------------------------------------------------------ local typos and hub ids


@pytest.mark.parametrize("typo", ["./no-such-model", "/no/such/model", "no-such.gguf", "weights.safetensors",
                                  "fixtures/llama_f17"])
def test_a_path_like_typo_is_no_such_file_and_never_reaches_the_hub(monkeypatch: pytest.MonkeyPatch,
                                                                     typo: str) -> None:
    monkeypatch.chdir(FIXTURES.parent)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda **kw: pytest.fail("hub called"))
    monkeypatch.setattr(huggingface_hub.HfApi, "repo_info", lambda *a, **kw: pytest.fail("hub called"))
    e = error_of(typo)
    assert e.rule == "source exists" and "no such file or folder" in str(e)
    if typo == "fixtures/llama_f17":  # 'owner/name'-shaped, but its first part is a folder here
        assert "'fixtures' exists, but holds no 'llama_f17'" in str(e)


def test_an_uncached_hub_id_offline_says_offline_and_how_to_fetch(monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    e = error_of("someone/tiny-model", cache_dir=tmp_path)
    msg = str(e)
    assert e.rule == "hub download" and "taken as a Hugging Face repo id" in msg and "HF_HUB_OFFLINE" in msg
    assert "download someone/tiny-model --include '*.safetensors' '*.json'" in msg


def test_an_unreachable_hub_falls_back_to_the_cache_and_says_unreachable(monkeypatch: pytest.MonkeyPatch,
                                                                        tmp_path: Path) -> None:
    def no_network(*a, **kw):
        raise ConnectionError("[Errno -3] Temporary failure in name resolution")

    calls = []

    def snapshot(**kw):
        calls.append(kw)
        raise LocalEntryNotFoundError("not cached")

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.HfApi, "repo_info", no_network)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot)
    msg = str(error_of("someone/tiny-model", cache_dir=tmp_path))
    assert calls and calls[0]["local_files_only"] is True  # only the cache was consulted
    assert "cannot be reached" in msg and "name resolution" in msg and "download someone/tiny-model" in msg


def test_an_absent_hub_repo_says_absent(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    class NotFound(RepositoryNotFoundError):
        def __init__(self) -> None:
            Exception.__init__(self, "404 Client Error: Repository Not Found")

    def absent(*a, **kw):
        raise NotFound()

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.HfApi, "repo_info", absent)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda **kw: pytest.fail("downloaded"))
    msg = str(error_of("someone/no-such-model", cache_dir=tmp_path))
    assert "no such local file or folder" in msg and "no such repository on the hub" in msg


def test_the_cli_prints_the_cause_on_one_line_with_exit_code_2(tmp_path: Path) -> None:
    (tmp_path / "model.gguf").write_bytes(b"\x00" * 64)
    r = subprocess.run([sys.executable, "-m", "tmac_convert", str(tmp_path / "model.gguf"), "-o",
                        str(tmp_path / "o.gguf")], capture_output=True, text=True, env=ENV, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "not a GGUF file" in lines[0], r.stderr


@pytest.mark.parametrize("version, cli", [("0.23.4", "huggingface-cli"), ("0.34.0", "hf"), ("2.4.0", "hf"),
                                          ("1.0.0rc1", "hf")])
def test_the_fetch_command_matches_the_installed_hub_client(monkeypatch: pytest.MonkeyPatch, version: str,
                                                            cli: str) -> None:
    from tmac_convert.readers.source import fetch_command

    monkeypatch.setattr(huggingface_hub, "__version__", version)
    assert fetch_command("o/m", "v1").startswith(f"{cli} download o/m --revision v1 --include '*.safetensors'")
