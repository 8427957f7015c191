"""Crash safety: real CLI processes killed at random moments (SIGINT, SIGTERM, SIGKILL), 50 kills in all.

After every kill the final paths hold either nothing (no previous output), the previous output byte for
byte, or the complete new output (byte-identical to an unkilled run: conversions are deterministic);
after SIGINT and SIGTERM no temporary file is left either (SIGKILL cannot be cleaned up after: only
the converter's own ``.<name>.*.part`` files may remain, never anything at the final path).

The source is a synthetic float Llama (hidden 256, 3 layers, 5 MB) quantised to 2 bits on the fly,
so a conversion takes a few hundred milliseconds: long enough to be killed while writing.  To spend
the test's time on conversions rather than on interpreter start-up, most processes are forked from a
"zygote" that has already imported tmac_convert; each child then runs the CLI's ``main`` with its own
argv, files and default signal handling.  A few kills also hit ``python -m tmac_convert`` started from
scratch, covering start-up.  Kill moments are uniform over a measured run, half of them aimed at the
window in which the temporary output exists.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "fixtures"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_COLOR": "1", "COLUMNS": "200"}
ENV.pop("TMAC_CONVERT_TRACEBACK", None)

N_FORKED = 46          # kills of forked CLI processes
N_FRESH = 4            # kills of freshly started ``python -m tmac_convert``
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGKILL)
PART = re.compile(r"^\.(model\.gguf|model\.kcfg\.ini)\..+\.part$")

ZYGOTE = r"""
import json, os, signal, sys
import tmac_convert.cli, tmac_convert.convert, tmac_convert.proof, tmac_convert.pipeline
import tmac_convert.writers.gguf_writer, tmac_convert.writers.npz_writer
import rich.console, rich.table, rich.progress
from tmac_convert.readers import load_readers
load_readers()
jobs, replies = sys.stdin, sys.stdout
print(json.dumps({"ready": os.getpid()}), flush=True)
for line in jobs:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:                                   # the child becomes `tmac-convert ARGV`
        fd = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1); os.dup2(fd, 2); os.close(fd)
        null = os.open(os.devnull, os.O_RDONLY); os.dup2(null, 0); os.close(null)
        os.chdir(job["cwd"])
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        sys.argv = ["tmac-convert"] + job["argv"]
        tmac_convert.cli.main(job["argv"])         # exits through SystemExit, like the console script
        sys.exit(0)
    print(json.dumps({"pid": pid}), flush=True)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"code": os.waitstatus_to_exitcode(status)}), flush=True)
"""


def make_source(d: Path, hidden: int = 256, inter: int = 768, layers: int = 3, heads: int = 4, kv: int = 2,
                seed: int = 0) -> Path:
    """A float16 Llama folder (config, safetensors, the fixtures' tokenizer) for the hf-float reader."""
    from safetensors.numpy import save_file

    d.mkdir(parents=True)
    cfg = json.loads((FIX / "llama_f16" / "config.json").read_text())
    cfg.update(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers, num_attention_heads=heads,
               num_key_value_heads=kv, head_dim=hidden // heads)
    (d / "config.json").write_text(json.dumps(cfg))
    for n in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(FIX / "llama_f16" / n, d / n)
    rng = np.random.default_rng(seed)
    hd, vocab = hidden // heads, cfg["vocab_size"]
    t = {"model.embed_tokens.weight": rng.standard_normal((vocab, hidden)).astype(np.float16),
         "model.norm.weight": np.ones(hidden, np.float16),
         "lm_head.weight": rng.standard_normal((vocab, hidden)).astype(np.float16)}
    shapes = {"self_attn.q_proj": (heads * hd, hidden), "self_attn.k_proj": (kv * hd, hidden),
              "self_attn.v_proj": (kv * hd, hidden), "self_attn.o_proj": (hidden, heads * hd),
              "mlp.gate_proj": (inter, hidden), "mlp.up_proj": (inter, hidden), "mlp.down_proj": (hidden, inter)}
    for i in range(layers):
        for n, shape in shapes.items():
            t[f"model.layers.{i}.{n}.weight"] = (rng.standard_normal(shape) * 0.02).astype(np.float16)
        t[f"model.layers.{i}.input_layernorm.weight"] = np.ones(hidden, np.float16)
        t[f"model.layers.{i}.post_attention_layernorm.weight"] = np.ones(hidden, np.float16)
    save_file(t, str(d / "model.safetensors"))
    return d


class Zygote:
    """A process with tmac_convert imported that forks one CLI process per job."""

    def __init__(self) -> None:
        self.p = subprocess.Popen([sys.executable, "-c", ZYGOTE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  env=ENV, text=True, bufsize=1)
        assert "ready" in self._reply()

    def _reply(self) -> dict:
        line = self.p.stdout.readline()
        assert line, "the zygote died"
        return json.loads(line)

    def start(self, argv: list[str], cwd: Path, log: Path) -> int:
        self.p.stdin.write(json.dumps({"argv": argv, "cwd": str(cwd), "log": str(log)}) + "\n")
        self.p.stdin.flush()
        return self._reply()["pid"]

    def wait(self) -> int:
        return self._reply()["code"]

    def close(self) -> None:
        self.p.stdin.close()
        self.p.wait(timeout=30)


def _argv(src: Path, out: Path, bits: int, force: bool) -> list[str]:
    # --max-error: the float source's 2-bit round-to-nearest (NMSE ~0.2) is lossy on purpose here
    return [str(src), "--bits", str(bits), "--group", "64", "--zero-point", "--out", str(out), "--threads", "2",
            "--max-error", "1", *(["--force"] if force else [])]


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in d.iterdir()}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("crash")
    src = make_source(base / "src")
    z = Zygote()
    ref = {}
    for bits in (4, 2):  # reference outputs: 2-bit is what the killed runs write, 4-bit the "previous output"
        d = base / f"ref{bits}"
        d.mkdir()
        t0 = time.perf_counter()
        pid = z.start(_argv(src, d / "model.gguf", bits, False), d, base / f"ref{bits}.log")
        t_part = None
        # time the run and the window in which it writes; a run that ends without output fails below
        while not (d / "model.gguf").exists() and Path(f"/proc/{pid}").exists():
            if t_part is None and any(p.name.endswith(".part") for p in d.iterdir()):
                t_part = time.perf_counter() - t0
            time.sleep(0.002)
        t_done = time.perf_counter() - t0
        assert z.wait() == 0, (base / f"ref{bits}.log").read_text()
        ref[bits] = _files(d)
        assert set(ref[bits]) == {"model.gguf", "model.kcfg.ini"}
    yield base, src, z, ref, t_done, t_done - (t_part or 0.0)
    z.close()


def _check_after_kill(d: Path, sig: int, before: dict[str, bytes], new: dict[str, bytes], code: int,
                      log: str) -> str:
    """Assert the folder is in an allowed state; return the outcome (``nothing``, ``previous``, ``new``)."""
    now = _files(d)
    finals = {n: b for n, b in now.items() if not n.startswith(".")}
    temps = sorted(n for n in now if n.startswith("."))
    if sig == signal.SIGKILL:
        assert all(PART.match(n) for n in temps), temps
    else:
        assert not temps, f"temporary files left after {signal.Signals(sig).name}: {temps}"
    states = []
    for name in ("model.gguf", "model.kcfg.ini"):
        got = finals.pop(name, None)
        if got is None:
            assert name not in before, f"{name}: the previous output was removed"
            states.append("nothing")
        elif name in before and got == before[name]:
            states.append("previous")
        else:
            assert got == new[name], f"{name} at the final path is neither the previous nor the complete new output"
            states.append("new")
    assert not finals, f"unexpected files {sorted(finals)}"
    allowed = {signal.SIGINT: (0, 130, -signal.SIGINT), signal.SIGTERM: (0, 130, -signal.SIGTERM),
               signal.SIGKILL: (0, -signal.SIGKILL)}[sig]
    assert code in allowed, (code, log[-2000:])
    if code == 130:  # interrupted: one line (typer exits 130 silently when Ctrl-C lands before the command runs)
        assert "Traceback" not in log and (log == "" or "interrupted" in log), log[-2000:]
    if code == 0:
        assert states == ["new", "new"], states
    return "+".join(states)


def test_random_kills_leave_nothing_or_the_previous_or_the_complete_output(setup):
    base, src, z, ref, duration, window = setup
    rng = random.Random(20260907)
    outcomes: Counter = Counter()
    during_write = 0
    d = base / "killed"
    d.mkdir()
    t_start = time.perf_counter()
    for i in range(N_FORKED + N_FRESH):
        sig = SIGNALS[i % 3]
        for p in d.iterdir():
            p.unlink()
        previous = i % 2 == 1
        if previous:  # a previous (4-bit) output the new (2-bit) conversion overwrites with --force
            for n, b in ref[4].items():
                (d / n).write_bytes(b)
        before = _files(d)
        argv = _argv(src, d / "model.gguf", 2, force=previous)
        log = base / f"kill{i}.log"
        aim_at_write = i % 4 < 2
        if i < N_FORKED:
            pid = z.start(argv, d, log)
            proc = None
            lag = 0.0
        else:  # from scratch: interpreter start-up and imports are part of the run
            with open(log, "w") as f:
                proc = subprocess.Popen([sys.executable, "-m", "tmac_convert", *argv], cwd=d, env=ENV, stdout=f,
                                        stderr=subprocess.STDOUT)
            pid = proc.pid
            lag = 0.6  # measured start-up of a fresh interpreter on this machine, roughly
        t0 = time.perf_counter()
        if aim_at_write:  # wait for the temporary output, then a random moment while it is written
            while not any(p.name.endswith(".part") for p in d.iterdir()) and time.perf_counter() - t0 < 30:
                time.sleep(0.002)
            time.sleep(rng.uniform(0, window))
        else:
            time.sleep(rng.uniform(0, duration + lag))
        writing = any(p.name.endswith(".part") for p in d.iterdir())
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
        code = z.wait() if proc is None else proc.wait(timeout=60)
        outcome = _check_after_kill(d, sig, before, ref[2], code, log.read_text(errors="replace"))
        outcomes[(signal.Signals(sig).name, outcome)] += 1
        during_write += writing and outcome != "new+new"
    elapsed = time.perf_counter() - t_start
    killed_midway = sum(n for (_, o), n in outcomes.items() if o != "new+new")
    print(f"\n{N_FORKED + N_FRESH} kills in {elapsed:.1f} s (conversion ~{duration:.2f} s, writing ~{window:.2f} s): "
          f"{dict(sorted(outcomes.items()))}; {during_write} while the temporary output was being written")
    assert sum(outcomes.values()) == N_FORKED + N_FRESH == 50
    # the kills must mostly land before the conversion finished, many of them while writing
    assert killed_midway >= 30, outcomes
    assert during_write >= 15, (during_write, outcomes)


def test_an_interrupt_between_the_two_renames_leaves_a_consistent_pair(tmp_path, monkeypatch):
    from tmac_convert.convert import convert
    from tmac_convert.writers import atomic

    new = tmp_path / "new"
    new.mkdir()
    convert(FIX / "gptq_v2_asym_2bit", new / "model.gguf", verify=False)
    d = tmp_path / "out"
    d.mkdir()
    convert(FIX / "gptq_3bit", d / "model.gguf", verify=False)  # the previous output
    before = _files(d)
    real, done = os.replace, []

    def replace_then_interrupt(src, dst):
        real(src, dst)
        done.append(dst)
        if len(done) == 1:
            raise KeyboardInterrupt  # a signal handled right after the first rename

    monkeypatch.setattr(atomic.os, "replace", replace_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        convert(FIX / "gptq_v2_asym_2bit", d / "model.gguf", verify=False, force=True)
    monkeypatch.undo()
    after = {n: b for n, b in _files(d).items() if not n.startswith(".")}
    assert after in (before, _files(new)), "a mixed pair: " + str({n: after[n] == before.get(n) for n in after})


HELD_BACK_SCRIPT = """
import os, signal, threading, time
from tmac_convert.writers.atomic import _signals_blocked
def handler(signum, frame):
    raise KeyboardInterrupt(signum)
signal.signal(signal.SIGTERM, handler)
threading.Thread(target=time.sleep, args=(5,), daemon=True).start()  # the kernel may hand the signal to it
inside = after = False
try:
    with _signals_blocked():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)  # the handler would run here if the signal were not held back
        inside = True
    time.sleep(1)
except KeyboardInterrupt:
    after = True
print(inside, after, signal.getsignal(signal.SIGTERM) is handler)
"""


@pytest.mark.skipif(not hasattr(signal, "raise_signal") or sys.platform == "win32", reason="POSIX signals")
def test_a_signal_during_the_renames_is_held_back_while_other_threads_run():
    # pthread_sigmask on the main thread alone held nothing back: the kernel delivered SIGTERM to another thread
    # and Python ran the handler in the main thread at once, inside the block
    r = subprocess.run([sys.executable, "-c", HELD_BACK_SCRIPT], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["True", "True", "True"]


@pytest.mark.parametrize("source, options", [
    ("gptq_v2_asym_2bit", {"bits": 2, "group_size": 64, "zero_point": True}),
    ("real/autogptq_f16_3bit_asym", {}),
    ("bitnet_packed", {}),
    ("gguf_q4_0/model.gguf", {}),
    ("llama_f16", {"bits": 4, "group_size": 128}),
])
def test_a_conversions_own_thread_never_waits_on_a_python_lock(tmp_path, source, options):
    # Ctrl-C and SIGTERM raise in the converter's thread at any bytecode: a Python lock (a Condition's, a
    # Queue's, an Event's, a Future's) taken there could be left held and hang the cleanup that follows
    # (tests/lock_trace.py).  Whatever reader, layout and writer a conversion uses, its own thread waits on
    # C-level primitives only.
    from tmac_convert.convert import convert

    from .lock_trace import python_lock_entries, run_in_fresh_thread

    def run() -> list[str]:
        with python_lock_entries() as entered:
            convert(FIX / source, tmp_path / "out.gguf", **options)
        return entered

    assert run_in_fresh_thread(run, timeout=300) == []
    assert (tmp_path / "out.gguf").stat().st_size > 0


def test_an_interrupt_while_a_gguf_header_is_parsed_stays_an_interrupt(tmp_path, monkeypatch):
    """The CI saw ``unexpected BufferError: cannot close exported pointers exist`` (exit 2) after a SIGTERM:
    the interrupt hit while a metadata array was a view into the header's memory map, the traceback kept that
    view alive and closing the map raised over the interrupt.  The interrupt must come out unchanged."""
    import gguf

    from tmac_convert.format import gguf_file

    path = tmp_path / "arrays.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_array("test.numbers", list(range(100)))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    class Interrupted(np.ndarray):
        def astype(self, *a, **k):  # the signal arrives while the view exists
            raise KeyboardInterrupt

    real = np.frombuffer
    monkeypatch.setattr(gguf_file.np, "frombuffer", lambda *a, **k: real(*a, **k).view(Interrupted))
    with pytest.raises(KeyboardInterrupt):
        gguf_file.parse_header_uncached(path)
    monkeypatch.setattr(gguf_file.np, "frombuffer", real)
    assert [int(x) for x in gguf_file.parse_header_uncached(path).get("test.numbers")] == list(range(100))
