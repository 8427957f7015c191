"""Never damage the input: refuse an output path that is, or would replace, a file of the source.

A conversion writes its outputs by renaming a temporary file over the target, so a target that *is* a
source file — the same path, a symlink to it, a hard link to it (same ``(st_dev, st_ino)``), or the
source itself — would replace the checkpoint being read.  :func:`refuse_source_targets` refuses those
before anything is written (exit 2), whatever ``--force`` says.

Files of the source: the source file itself, or every file under the source folder except outputs of
this tool, so that re-running a conversion inside a model folder with ``--force`` may replace its own
earlier output: files named as it names them by default (``*.tmac.gguf``, ``*.tmac.npz``,
``*.tmac.kcfg.ini``, ``*.<stock type>.gguf``) and, when the folder's reader reads neither GGUF nor npz
files (a Hugging Face folder), any ``*.gguf`` / ``*.npz`` and the ``<stem>.kcfg.ini`` beside one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from .errors import TmacError

#: Names of outputs this tool writes by default; they are not files of a source folder.
OWN_OUTPUT_SUFFIXES = (".tmac.gguf", ".tmac.npz", ".tmac.kcfg.ini", ".q4_0.gguf", ".q4_1.gguf", ".tq1_0.gguf",
                       ".tq2_0.gguf", ".f16.gguf", ".f32.gguf")
_MAX_FILES = 100_000  # a folder with more files than this is not a checkpoint; stop listing there


def source_files(path: Path, *, reads_containers: bool = True) -> list[Path]:
    """The files a conversion must never replace: ``path`` itself, or the files under the folder ``path``
    (``reads_containers``: whether the source's reader may read ``.gguf``/``.npz`` files in it)."""
    if not path.is_dir():
        return [path]
    out: list[Path] = []
    for root, _dirs, files in os.walk(path, followlinks=False):
        names = set(files)
        for f in files:
            if f.endswith(OWN_OUTPUT_SUFFIXES):
                continue
            if not reads_containers:
                if f.endswith((".gguf", ".npz")):
                    continue
                stem = f[:-len(".kcfg.ini")] if f.endswith(".kcfg.ini") else None
                if stem is not None and (f"{stem}.gguf" in names or f"{stem}.npz" in names):
                    continue
            out.append(Path(root) / f)
            if len(out) >= _MAX_FILES:
                return out
    return out


def _identity(p: Path) -> tuple[int, int] | None:
    try:
        st = p.stat()  # follows symlinks: a link to a source file has that file's identity
    except OSError:
        return None
    return st.st_dev, st.st_ino


def refuse_source_targets(targets: Iterable[Path], source: Path, *, reads_containers: bool = True) -> None:
    """Raise :class:`TmacError` (exit 2) when an output target is the source or one of its files.

    Compared by resolved path and by ``(st_dev, st_ino)``, so symlinks and hard links are caught.
    """
    source = Path(source)
    src_resolved = source.resolve()
    files = source_files(source, reads_containers=reads_containers)
    by_path = {f.resolve(): f for f in files}
    by_id = {i: f for f in files if (i := _identity(f)) is not None}
    for t in targets:
        t = Path(t)
        r = t.resolve()
        hit = by_path.get(r)
        if hit is None and (t.exists() or t.is_symlink()):
            ident = _identity(t)
            hit = by_id.get(ident) if ident is not None else None
        if hit is None and (r == src_resolved or src_resolved.is_relative_to(r)):
            hit = source
        if hit is not None:
            what = "is" if Path(os.path.abspath(t)) == Path(os.path.abspath(hit)) else f"would replace {hit},"
            raise TmacError(f"the output {what} part of the source being converted; choose another output path "
                            "(--out)", file=str(t), rule="output is not a file of the source")
