"""Builds T-MAC's llama.cpp fork around a tmac-convert kernel kit, and runs the logits driver in it.

The fork source is named by the setting ``TMAC_FORK_SRC``: a source folder (a T-MAC checkout's
``3rdparty/llama.cpp``) or the tarball ``llama.cpp-tmac-fork-81ffd4cd.tar.gz``.  One build is kept per
source in a cache folder (``TMAC_FORK_CACHE``, default ``<repo>/.fork-cache``)::

    <cache>/<source key>/src/       the unpacked tarball (a folder source is used in place)
    <cache>/<source key>/kit/       the current kit, always at this one path
    <cache>/<source key>/build/     the CMake build of the ``llama`` target
    <cache>/<source key>/driver     tests/fork_driver/driver.cpp linked against that build

A kit is written to a staging folder and copied into ``kit/`` file by file, only where the bytes
differ (an unchanged file keeps its time stamp), so switching kits recompiles ``kernels.cc``, the LUT
library and what includes the changed headers, then relinks: never the whole fork.  The kit's
``TMACConfig.cmake`` locates itself (``CMAKE_CURRENT_LIST_DIR``), so the copy is a complete kit.

The driver runs as a child process: a native crash is a :class:`DriverError` carrying its stderr.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DRIVER_SRC = ROOT / "tests" / "fork_driver" / "driver.cpp"
ENV_SRC = "TMAC_FORK_SRC"
ENV_CACHE = "TMAC_FORK_CACHE"
ENV_JOBS = "TMAC_FORK_JOBS"

#: CMake options of every build (the fork README's, plus T-MAC on).
CMAKE_FLAGS = ("-DCMAKE_BUILD_TYPE=Release", "-DCMAKE_C_COMPILER=clang", "-DCMAKE_CXX_COMPILER=clang++",
               "-DGGML_TMAC=ON", "-DLLAMA_CURL=OFF", "-DGGML_OPENMP=OFF", "-DBUILD_SHARED_LIBS=OFF",
               "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF")

#: llama_ftype numbers of the fork's llama.h (for ``driver quantize``).
FTYPES = {"f16": 1, "q4_0": 2, "q2_k": 10, "tq1_0": 36, "tq2_0": 37}


class ForkUnavailable(Exception):
    """The fork cannot be built here (setting, clang or cmake missing): a reason to skip."""


class ForkBuildError(Exception):
    """Configuring or compiling the fork (or the driver) failed; the message ends with the tool's output."""


class DriverError(Exception):
    """The driver exited non-zero or was killed by a signal; ``stderr`` is its error output."""

    def __init__(self, message: str, returncode: int, stderr: str) -> None:
        super().__init__(f"{message} (exit status {returncode}):\n{stderr[-4000:]}")
        self.returncode = returncode
        self.stderr = stderr


def fork_source_setting() -> Path:
    """The fork source named by ``TMAC_FORK_SRC``; :class:`ForkUnavailable` when unset or no toolchain.

    A setting that names nothing is an error (``FileNotFoundError``), not a skip.
    """
    raw = os.environ.get(ENV_SRC, "").strip()
    if not raw:
        raise ForkUnavailable(f"{ENV_SRC} is not set: name T-MAC's llama.cpp fork (a source folder or "
                              "llama.cpp-tmac-fork-*.tar.gz) to build it around generated kernel kits")
    missing = [t for t in ("clang", "clang++", "cmake") if shutil.which(t) is None]
    if missing:
        raise ForkUnavailable(f"{', '.join(missing)} not found: the fork builds only with clang and cmake "
                              "(apt-get install clang cmake)")
    path = Path(raw).expanduser().resolve()
    if not path.exists():
        raise FileNotFoundError(f"{ENV_SRC}={raw} does not exist")
    return path


def _source_key(src: Path) -> str:
    st = src.stat()
    ident = f"{src}|{st.st_size}|{int(st.st_mtime)}" if src.is_file() else str(src)
    return f"{src.name.split('.tar')[0]}-{hashlib.sha256(ident.encode()).hexdigest()[:12]}"


def _run(cmd: Sequence[str], what: str, **kw) -> subprocess.CompletedProcess:
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    if p.returncode != 0:
        raise ForkBuildError(f"{what} failed (exit status {p.returncode}): {' '.join(map(str, cmd))}\n"
                             f"{(p.stdout + p.stderr)[-6000:]}")
    return p


def sync_tree(src: Path, dst: Path) -> list[str]:
    """Make ``dst`` a copy of ``src``, rewriting only files whose bytes differ; returns those (relative)."""
    changed: list[str] = []
    want = {p.relative_to(src) for p in src.rglob("*") if p.is_file()}
    if dst.exists():
        for p in sorted(dst.rglob("*"), reverse=True):
            rel = p.relative_to(dst)
            if p.is_file() and rel not in want:
                p.unlink()
                changed.append(str(rel))
            elif p.is_dir() and not any(p.iterdir()):
                p.rmdir()
    for rel in sorted(want):
        s, d = src / rel, dst / rel
        data = s.read_bytes()
        if d.is_file() and d.read_bytes() == data:
            continue
        d.parent.mkdir(parents=True, exist_ok=True)
        tmp = d.with_name(d.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, d)
        changed.append(str(rel))
    return changed


@dataclass
class BuildLog:
    """What one :meth:`ForkBuild.build` did."""

    kit_files_changed: list[str]
    configured: bool
    seconds: float


class ForkBuild:
    """One cached build of the fork (see the module docstring).  Holds a lock on its cache folder from
    :meth:`open` to :meth:`close`, so two test runs never swap each other's kit."""

    def __init__(self, source: Path, cache: Path | None = None, jobs: int | None = None) -> None:
        self.source = Path(source)
        base = Path(os.environ.get(ENV_CACHE) or cache or ROOT / ".fork-cache")
        self.home = base.resolve() / _source_key(self.source)
        self.kit_dir = self.home / "kit"
        self.staging = self.home / "kit.staging"
        self.build_dir = self.home / "build"
        self.driver = self.home / "driver"
        self.jobs = int(os.environ.get(ENV_JOBS) or jobs or os.cpu_count() or 1)
        self._lock = None

    # ------------------------------------------------------------------ source and lock

    def open(self) -> "ForkBuild":
        self.home.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.home / "lock", "w")
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        self.src_dir = self._unpacked()
        return self

    def close(self) -> None:
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def __enter__(self) -> "ForkBuild":
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    def _unpacked(self) -> Path:
        if self.source.is_dir():
            src = self.source
        else:
            done = self.home / "src" / ".unpacked"
            if not done.exists():
                shutil.rmtree(self.home / "src", ignore_errors=True)
                tmp = self.home / "src.tmp"
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir()
                with tarfile.open(self.source) as tf:
                    tf.extractall(tmp, filter="data")
                os.replace(tmp, self.home / "src")
                done.write_text(str(self.source))
            tops = [p for p in (self.home / "src").iterdir() if p.is_dir()]
            if len(tops) != 1:
                raise ForkBuildError(f"{self.source}: expected one top folder in the tarball, found "
                                     f"{[p.name for p in tops]}")
            src = tops[0]
        if not (src / "CMakeLists.txt").is_file() or not (src / "include" / "llama.h").is_file():
            raise ForkBuildError(f"{src} is not a llama.cpp source folder (no CMakeLists.txt / include/llama.h)")
        (src / "models").mkdir(exist_ok=True)  # the fork's CMake wants it; the tarball leaves it out
        return src

    # ------------------------------------------------------------------ kit and build

    def write_model_kit(self, model_gguf: Path, **kit_options):
        """Write the kit of ``model_gguf`` (``tmac_convert.kit.write_kit``) into the fixed kit path."""
        from tmac_convert.kit import write_kit

        report = write_kit(model_gguf, self.staging, force=True, **kit_options)
        self.install_kit(self.staging)
        return report

    def install_kit(self, kit: Path) -> list[str]:
        """Copy a kit folder to the fixed kit path (changed files only); returns the changed files."""
        self._changed = sync_tree(Path(kit), self.kit_dir)
        return self._changed

    def build(self) -> BuildLog:
        """Configure (first time) and build the ``llama`` target around the installed kit, then the driver."""
        import time

        t0 = time.perf_counter()
        if not (self.kit_dir / "lib" / "cmake" / "t-mac" / "TMACConfig.cmake").is_file():
            raise ForkBuildError(f"no kit installed at {self.kit_dir} (write_model_kit or install_kit first)")
        configured = not (self.build_dir / "CMakeCache.txt").is_file()
        if configured:
            gen = ["-G", "Ninja"] if shutil.which("ninja") else []
            _run(["cmake", "-S", self.src_dir, "-B", self.build_dir, *gen, *CMAKE_FLAGS,
                  f"-DTMAC_DIR={self.kit_dir / 'lib' / 'cmake' / 't-mac'}"], "configuring the fork")
        _run(["cmake", "--build", self.build_dir, "--target", "llama", "-j", str(self.jobs)], "building the fork")
        self._link_driver()
        return BuildLog(getattr(self, "_changed", []), configured, time.perf_counter() - t0)

    def _libraries(self) -> list[Path]:
        return sorted(self.build_dir.rglob("*.a"))

    def _link_driver(self) -> None:
        libs = self._libraries()
        inputs = [DRIVER_SRC, *libs]
        if self.driver.is_file() and all(p.stat().st_mtime <= self.driver.stat().st_mtime for p in inputs):
            return
        tmp = self.driver.with_name("driver.tmp")
        _run(["clang++", "-O2", "-std=c++17", DRIVER_SRC, f"-I{self.src_dir / 'include'}",
              f"-I{self.src_dir / 'ggml' / 'include'}", "-Wl,--start-group", *libs, "-Wl,--end-group",
              "-lpthread", "-lm", "-ldl", "-o", tmp], "linking the logits driver")
        os.replace(tmp, self.driver)

    # ------------------------------------------------------------------ driver

    def run_driver(self, *args: object, env: dict[str, str] | None = None, timeout: float = 600
                   ) -> subprocess.CompletedProcess:
        """Run the driver (a child process); :class:`DriverError` with its stderr when it fails or crashes."""
        full_env = dict(os.environ, **(env or {}))
        try:
            p = subprocess.run([str(self.driver), *map(str, args)], capture_output=True, text=True,
                               env=full_env, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise DriverError(f"driver {args[0]} timed out after {timeout} s", -1,
                              (e.stderr or b"").decode("utf-8", "replace") if isinstance(e.stderr, bytes)
                              else (e.stderr or "")) from None
        if p.returncode != 0:
            how = f"killed by signal {-p.returncode}" if p.returncode < 0 else "failed"
            raise DriverError(f"driver {args[0]} {how}", p.returncode, p.stderr)
        return p

    def logits(self, model: Path, tokens: Sequence[int], threads: int, *, out: Path,
               env: dict[str, str] | None = None) -> np.ndarray:
        """float32 ``[len(tokens), n_vocab]``: the fork's logits at every position (one batch)."""
        self.run_driver("logits", model, out, threads, *tokens, env=env)
        a = np.fromfile(out, dtype=np.float32)
        return a.reshape(len(tokens), -1)

    def quantize(self, src: Path, dst: Path, ftype: str, threads: int = 1) -> Path:
        """The fork's ``llama_model_quantize`` of ``src`` to ``ftype`` (a key of :data:`FTYPES`), every weight."""
        self.run_driver("quantize", src, dst, FTYPES[ftype], threads)
        return Path(dst)
