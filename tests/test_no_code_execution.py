"""Inputs cannot run code or write outside the cache and the output folder.

* No unpickling: pickled checkpoints are refused without being opened (a pickle that would create a
  canary file never runs), pickles beside safetensors are ignored, an npz member holding a pickled
  object array is refused; and a whole conversion of every source format, watched by an audit hook,
  raises no ``pickle.find_class``, ``exec``, import, process or network event, and compiles nothing but
  the ``.npy`` header literals numpy parses with ``ast.literal_eval``.
* No ``trust_remote_code``: ``auto_map`` entries and ``*.py`` files in a model folder are never
  imported; config values and kcfg.ini values that look like code are data (refused or carried as
  text), never evaluated.
* Hub: invalid repo ids and revisions never reach the hub; a listing with file names that climb out
  of the snapshot (``../``, absolute) is refused (checked against a local fake hub server); hub
  downloads are limited to safetensors, JSON and tokenizer files; default output names cannot leave
  the current folder.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import re
import shutil
import sys
import threading
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest

import tmac_convert
from tmac_convert.convert import convert, default_out
from tmac_convert.errors import TmacError
from tmac_convert.readers import source

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "fixtures"
PACKAGE = ROOT / "tmac_convert"


class _Canary:
    """A pickle payload: unpickling it creates ``path`` (so any unpickling is visible)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def _pickle(canary: Path) -> bytes:
    return pickle.dumps({"model.layers.0.self_attn.q_proj.weight": _Canary(canary)})


# ---------------------------------------------------------------------------------------------
# pickles

@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "consolidated.00.pth", "model.ckpt",
                                  "weights.pkl"])
def test_pickled_checkpoints_are_refused_unopened(tmp_path, name):
    canary = tmp_path / "pwned"
    d = tmp_path / "model"
    d.mkdir()
    shutil.copy(FIX / "llama_f16" / "config.json", d / "config.json")
    (d / name).write_bytes(_pickle(canary))
    for src in (d, d / name):
        with pytest.raises(TmacError) as e:
            convert(src, tmp_path / "out.gguf")
        assert e.value.rule == "safetensors only" and "arbitrary code" in str(e.value)
    assert not canary.exists() and not (tmp_path / "out.gguf").exists()


def test_pickles_beside_safetensors_are_never_opened(tmp_path):
    canary = tmp_path / "pwned"
    d = tmp_path / "model"
    shutil.copytree(FIX / "gptq_3bit", d)
    (d / "pytorch_model.bin").write_bytes(_pickle(canary))
    (d / "training_args.bin").write_bytes(_pickle(canary))
    convert(d, tmp_path / "out.gguf", verify=False)
    assert not canary.exists()


def test_an_npz_member_with_a_pickled_object_array_is_refused(tmp_path):
    import zipfile

    canary = tmp_path / "pwned"
    out = tmp_path / "m.npz"
    convert(FIX / "gptq_3bit", out, format="npz", verify=False)
    buf = io.BytesIO()
    np.save(buf, np.array([_Canary(canary)], dtype=object), allow_pickle=True)
    evil = tmp_path / "evil.npz"
    with zipfile.ZipFile(out) as a, zipfile.ZipFile(evil, "w") as b:
        for info in a.infolist():
            data = buf.getvalue() if info.filename == "blk.0.attn_q.weight.npy" else a.read(info)
            b.writestr(info.filename, data)
    with pytest.raises(TmacError):
        list(tmac_convert.read(evil).tensors())
    from tmac_convert.verify_file import verify_file

    with pytest.raises(TmacError):
        verify_file(evil)
    assert not canary.exists()


# ---------------------------------------------------------------------------------------------
# the audit hook: what a conversion does, at the level of the interpreter

_WATCH = ("pickle.find_class", "exec", "compile", "import", "subprocess.Popen", "os.system", "os.exec", "os.spawn",
          "os.posix_spawn", "os.fork", "os.forkpty", "ctypes.dlopen", "socket.connect", "socket.getaddrinfo",
          "socket.bind", "urllib.Request", "webbrowser.open")
_seen: list[tuple[str, str]] = []
_active = threading.Event()


def _hook(event: str, args) -> None:
    if _active.is_set() and event.startswith(_WATCH):
        stack = "".join(traceback.format_stack(limit=12)[:-1])
        if event == "compile" and "in literal_eval" in stack and "_read_array_header" in stack:
            return  # numpy parses .npy headers with ast.literal_eval: literals only, nothing runs
        _seen.append((event, stack[-1500:]))


sys.addaudithook(_hook)  # audit hooks cannot be removed; this one only records while _active is set

#: (source, reader options, output formats): every reader and both containers
CONVERSIONS = [("gptq_v2_asym_2bit", {}, ("gguf", "npz")), ("gptq_act_order", {"act_order": "requantize"}, ("gguf",)),
               ("bitnet_packed", {}, ("npz",)), ("bitnet_float", {}, ("gguf",)),
               ("llama_f16", {"bits": 2, "group_size": 64, "max_error": 1.0}, ("gguf",)), ("gguf_q4_1/model.gguf", {}, ("npz",))]


def _every_conversion(tmp: Path, tag: str) -> None:
    from tmac_convert.inspect_file import describe_file
    from tmac_convert.verify_file import verify_file

    for src, opts, formats in CONVERSIONS:
        for fmt in formats:
            (tmp / f"{tag}-{fmt}").mkdir(exist_ok=True)
            out = tmp / f"{tag}-{fmt}" / f"{src.split('/')[0]}.{fmt}"
            convert(FIX / src, out, format=fmt, **opts)
            reader_opts = {k: v for k, v in opts.items() if k == "act_order"}
            assert verify_file(out, FIX / src, reader_options=reader_opts, max_error=opts.get("max_error")).ok
            describe_file(out)
            list(tmac_convert.read(out).tensors())


def test_a_conversion_runs_no_code_imports_nothing_and_touches_no_network(tmp_path):
    _every_conversion(tmp_path, "warm")  # first pass: lazy imports of our own modules happen here
    _seen.clear()
    _active.set()
    try:
        _every_conversion(tmp_path, "watched")
    finally:
        _active.clear()
    assert not _seen, "\n\n".join(f"{e}:\n{s}" for e, s in _seen[:3])


# ---------------------------------------------------------------------------------------------
# remote code and code-looking values

def _evil_module(d: Path, name: str, canary: Path) -> None:
    (d / name).write_text(f"from pathlib import Path\nPath({str(canary)!r}).touch()\n")


def test_auto_map_and_python_files_in_the_model_folder_are_never_imported(tmp_path):
    canary = tmp_path / "pwned"
    d = tmp_path / "model"
    shutil.copytree(FIX / "llama_f16", d)
    for n in ("modeling_evil.py", "configuration_evil.py", "tokenization_evil.py", "__init__.py"):
        _evil_module(d, n, canary)
    cfg = json.loads((d / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "configuration_evil.EvilConfig", "AutoModelForCausalLM": "modeling_evil.Evil"}
    (d / "config.json").write_text(json.dumps(cfg))
    tok = json.loads((d / "tokenizer_config.json").read_text())
    tok["auto_map"] = {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}
    (d / "tokenizer_config.json").write_text(json.dumps(tok))
    convert(d, tmp_path / "out.gguf", bits=2, group_size=64, verify=False, max_error=1.0)
    # an architecture only remote code would know is refused, not looked up
    cfg["architectures"] = ["EvilForCausalLM"]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(TmacError) as e:
        convert(d, tmp_path / "out2.gguf", bits=2, group_size=64, max_error=1.0)
    assert e.value.rule == "supported architecture"
    assert not canary.exists()
    assert not any(m.endswith("_evil") or m == "evil" for m in sys.modules)


CODE = "__import__('pathlib').Path({!r}).touch()"


def test_config_values_that_look_like_code_are_never_evaluated(tmp_path):
    canary = tmp_path / "pwned"
    code = CODE.format(str(canary))
    for key in ("torch_dtype", "rope_theta", "rms_norm_eps", "max_position_embeddings", "hidden_act", "model_type",
                "num_hidden_layers", "vocab_size", "rope_scaling", "quantization_config"):
        d = tmp_path / f"m-{key}"
        shutil.copytree(FIX / "gptq_3bit", d)
        cfg = json.loads((d / "config.json").read_text())
        cfg[key] = code if key != "quantization_config" else {**cfg[key], "bits": code, "group_size": code}
        (d / "config.json").write_text(json.dumps(cfg))
        try:
            convert(d, tmp_path / f"{key}.gguf", verify=False)
        except TmacError:
            pass
        except Exception as e:  # noqa: BLE001 - reported by test_fuzz_regressions.py; here only code execution counts
            assert type(e).__name__ in ("ValueError", "TypeError", "AttributeError"), repr(e)
        assert not canary.exists(), key


def test_kcfg_values_that_look_like_code_are_refused(tmp_path):
    canary = tmp_path / "pwned"
    ini = tmp_path / "kcfg.ini"
    ini.write_text("[qgemm_lut_t1_int8_m768_k256_n1_b3]\n" + "\n".join(
        f"{f} = {CODE.format(str(canary))}" for f in ("bm", "simd_n_in", "simd_n_out", "kfactor", "group_size",
                                                      "lut_scales_size", "scales_size", "n_tile_num")) + "\n")
    with pytest.raises(TmacError) as e:
        convert(FIX / "gptq_3bit", tmp_path / "out.gguf", kcfg=ini)
    assert e.value.rule == "kcfg field value" and not canary.exists()


def test_gguf_string_metadata_that_looks_like_code_is_carried_as_text(tmp_path):
    from . import _fuzz as F

    canary = tmp_path / "pwned"
    im = F.GGUFImage.load(FIX / "gguf_q4_0" / "model.gguf")
    im.kv("general.name").value = CODE.format(str(canary))
    src = tmp_path / "src.gguf"
    src.write_bytes(im.to_bytes())
    convert(src, tmp_path / "out.gguf", verify=False)
    from tmac_convert.format import parse

    assert parse(tmp_path / "out.gguf").get("general.name") == CODE.format(str(canary))
    assert not canary.exists()


def test_the_package_source_has_no_way_to_run_input_code():
    """A static guard beside the dynamic ones: no pickle, eval/exec, remote code or unsafe loaders."""
    banned = [r"\bpickle\.loads?\(", r"\btorch\.load\(", r"(?<![\w.])eval\(", r"(?<![\w.])exec\(",
              r"trust_remote_code\s*=\s*True", r"allow_pickle\s*=\s*True", r"\byaml\.load\(", r"\bmarshal\.loads?\(",
              r"__import__\(", r"\bos\.system\(", r"\bsubprocess\.", r"shell\s*=\s*True"]
    hits = []
    for p in sorted(PACKAGE.rglob("*.py")):
        text = p.read_text()
        for pat in banned:
            for m in re.finditer(pat, text):
                line = text.count("\n", 0, m.start()) + 1
                hits.append(f"{p.relative_to(ROOT)}:{line}: {m.group(0)}")
    imports = [f"{p.relative_to(ROOT)}" for p in PACKAGE.rglob("*.py") if "import_module(" in p.read_text()]
    assert not hits, hits
    # the one dynamic import loads this package's own reader modules by their file names
    assert imports == ["tmac_convert/readers/__init__.py"], imports


# ---------------------------------------------------------------------------------------------
# hub repo ids, revisions, listings and output names

@pytest.mark.parametrize("bad", ["../../etc", "owner/..", "../owner/name", "owner/name/../../x", "owner//name",
                                 "owner/name\x00", "owner\\name", "~root/x", "-owner/name", "owner/name.", ".hidden/x",
                                 "%2e%2e/x", "owner/" + "x" * 97, "a/b/c", " owner/name"])
def test_hostile_repo_ids_never_reach_the_hub(monkeypatch, tmp_path, bad):
    import huggingface_hub

    (tmp_path / "x" / "y").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "x" / "y")  # so that no id names an existing local path
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda **kw: pytest.fail(f"hub called for {bad!r}"))
    with pytest.raises(TmacError):
        source.resolve(bad)


@pytest.mark.parametrize("bad", ["../main", "main/../../x", "..", "", " main", "a" * 300, "-main", "main\x00"])
def test_hostile_revisions_never_reach_the_hub(monkeypatch, bad):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda **kw: pytest.fail(f"hub called for {bad!r}"))
    with pytest.raises(TmacError) as e:
        source.resolve("owner/name", revision=bad)
    assert e.value.rule == "valid revision"


def test_downloads_are_limited_to_weights_configs_and_tokenizers():
    from huggingface_hub.utils import filter_repo_objects

    listing = ["model.safetensors", "config.json", "tokenizer.json", "tokenizer.model", "merges.txt", "vocab.json",
               "pytorch_model.bin", "model.pt", "modeling_evil.py", "evil.sh", "model.gguf", "setup.cfg",
               "custom_code/__init__.py", "images/logo.png", "README.md", "model.onnx", "flax_model.msgpack"]
    allowed = set(filter_repo_objects(listing, allow_patterns=list(source.ALLOW_PATTERNS)))
    assert allowed == {"model.safetensors", "config.json", "tokenizer.json", "tokenizer.model", "merges.txt",
                       "vocab.json"}


@pytest.mark.parametrize("src", ["owner/name", "../../../x", "/abs/dir/", "a/..", ".", "/", "C:\\models\\m",
                                 "owner/name.gguf", "x/" * 50])
def test_default_output_names_stay_in_the_current_folder(src):
    out = default_out(src, ".gguf")
    assert len(out.parts) == 1 and out.name not in (".", "..") and out.suffix == ".gguf", out


class _FakeHub:
    """A local stand-in for the Hugging Face Hub API: ``repos`` maps a repo id to ``(files, sha, etag)``."""

    def __init__(self, repos: dict[str, tuple[dict[str, bytes], str, str | None]]) -> None:
        def split(path: str, marker: str) -> tuple[str, str]:
            repo, _, rest = path.partition(marker)
            return repo.strip("/").removeprefix("api/models/"), rest

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _reply(self, code: int, body: bytes, headers: dict, head: bool) -> None:
                self.send_response(code)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _any(self, head: bool = False) -> None:
                path = unquote(urlparse(self.path).path)
                for marker in ("/revision/", "/tree/", "/resolve/"):
                    if marker in path:
                        repo, rest = split(path, marker)
                        break
                else:
                    return self._reply(404, b"", {}, head)
                if repo not in repos:
                    return self._reply(404, b"", {"X-Error-Code": "RepoNotFound"}, head)
                files, sha, etag = repos[repo]
                if marker == "/revision/":
                    body = json.dumps({"id": repo, "sha": sha, "siblings": [{"rfilename": f} for f in files]}).encode()
                    return self._reply(200, body, {"Content-Type": "application/json"}, head)
                if marker == "/tree/":
                    body = json.dumps([{"type": "file", "path": f, "size": len(c), "oid": hashlib.sha1(c).hexdigest()}
                                       for f, c in files.items()]).encode()
                    return self._reply(200, body, {"Content-Type": "application/json"}, head)
                c = files.get(rest.split("/", 1)[1])
                if c is None:
                    return self._reply(404, b"", {"X-Error-Code": "EntryNotFound"}, head)
                tag = etag or f'"{hashlib.sha1(c).hexdigest()}"'
                return self._reply(200, c, {"X-Repo-Commit": sha, "ETag": tag}, head)

            def do_GET(self) -> None:
                self._any()

            def do_HEAD(self) -> None:
                self._any(head=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


_RESOLVE = """
import json, sys
from tmac_convert.errors import TmacError
from tmac_convert.readers.source import resolve
for repo, cache in json.loads(sys.argv[1]):
    try:
        print(json.dumps({"path": str(resolve(repo, cache_dir=cache))}), flush=True)
    except TmacError as e:
        print(json.dumps({"error": str(e), "rule": e.rule}), flush=True)
"""

_GOOD = {n: (FIX / "gptq_3bit" / n).read_bytes() for n in ("config.json", "model.safetensors")}
ESCAPING_NAMES = ["../../../escape.json", "sub/../../../../../escape.json", "<abs>/escape.json",
                  "..\\..\\escape.json", "./../escape.json"]
HUB_CASES = {
    "good": ({**_GOOD, "pytorch_model.bin": b"not fetched", "modeling_evil.py": b"not fetched"}, "a" * 40, None),
    **{f"name{i}": ({"config.json": b"{}", n: b'{"evil": 1}'}, "b" * 40, None) for i, n in enumerate(ESCAPING_NAMES)},
    "commit id": ({"config.json": b"{}", "model.safetensors": b"x" * 64}, "../../../../../escape_sha", None),
    "etag": ({"config.json": b"{}", "model.safetensors": b"x" * 64}, "c" * 40, '"../../../../../escape_etag"'),
}


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """Every hub case resolved once, by one process against one fake hub: case -> (answer, case folder)."""
    import subprocess

    base = tmp_path_factory.mktemp("hub")
    roots, repos = {}, {}
    for i, (case, (files, sha, etag)) in enumerate(HUB_CASES.items()):
        roots[case] = base / f"case{i}" / "a" / "b" / "c"  # room to climb out of the cache and still be ours
        roots[case].mkdir(parents=True)
        files = {n.replace("<abs>", str(base / f"case{i}")): c for n, c in files.items()}
        repos[f"owner/case{i}"] = (files, sha, etag)
    server = _FakeHub(repos)
    env = {**os.environ, "HF_ENDPOINT": server.url, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1",
           "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HOME": str(base / "hf")}
    jobs = [[f"owner/case{i}", str(roots[c] / "cache")] for i, c in enumerate(HUB_CASES)]
    try:
        r = subprocess.run([sys.executable, "-c", _RESOLVE, json.dumps(jobs)], env=env, capture_output=True, text=True,
                           timeout=300)
    finally:
        server.close()
    lines = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    assert r.returncode == 0 and len(lines) == len(HUB_CASES), r.stderr[-3000:]
    return {c: (answer, roots[c]) for c, answer in zip(HUB_CASES, lines)}


def _escaped(root: Path) -> list[str]:
    """Files written anywhere in the case folder except inside ``root/cache``."""
    case = root.parents[2]
    return sorted(str(p.relative_to(case)) for p in case.rglob("*")
                  if p.is_file() and (root / "cache") not in p.parents)


def test_the_fake_hub_serves_a_normal_snapshot(hub):
    answer, root = hub["good"]
    snap = Path(answer["path"])
    assert sorted(p.name for p in snap.iterdir()) == ["config.json", "model.safetensors"]
    assert tmac_convert.read(snap).format == "gptq"
    assert _escaped(root) == []


@pytest.mark.parametrize("i", range(len(ESCAPING_NAMES)), ids=ESCAPING_NAMES)
def test_listed_file_names_cannot_write_outside_the_cache(hub, i):
    answer, root = hub[f"name{i}"]
    assert answer.get("rule") == "hub download" and "escape" in answer["error"], answer
    assert _escaped(root) == []


def test_a_hostile_commit_id_is_refused_before_anything_is_written(hub):
    """huggingface_hub builds ``trees/<sha>.json`` from the hub's commit id unchecked: source.py resolves the
    revision first and refuses an id that is not 40 hex digits."""
    answer, root = hub["commit id"]
    assert answer.get("rule") == "hub download" and "commit id" in answer["error"], answer
    assert _escaped(root) == []


@pytest.mark.xfail(strict=True, reason="huggingface_hub 2.4.0 (upstream) builds cache paths from the hub's answers "
                   "unchecked: a hostile endpoint (HF_ENDPOINT mirror) answering an ETag '../../..' makes it write "
                   "the file's bytes to blobs/<etag> outside the cache (hf_hub_download does that per file; the "
                   "commit id is checked in source.py); the ETag needs a fix upstream")
def test_a_hostile_etag_cannot_write_outside_the_cache(hub):
    _, root = hub["etag"]
    assert _escaped(root) == []
