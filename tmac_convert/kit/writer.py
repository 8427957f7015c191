"""Atomic replacement of a kit folder: everything is written into a temporary sibling, then renamed.

An existing folder is kept unless ``force``; even then only an empty folder or a kit that
tmac-convert wrote (it holds ``tmac-kit.json``) is replaced.  Files whose bytes do not change keep
their old timestamps, so a build that uses the kit recompiles only what differs.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from ..errors import TmacError

MARKER = "tmac-kit.json"


def check_target(out_dir: Path, force: bool) -> None:
    """Refuse, before any work, a target that exists (without ``force``) or is not ours to replace."""
    if not out_dir.exists() and not out_dir.is_symlink():
        return
    if not out_dir.is_dir() or out_dir.is_symlink():
        raise TmacError("exists and is not a folder; choose another kit folder", file=str(out_dir),
                        rule="kit folder is a folder")
    if not force:
        raise TmacError("the kit folder exists; pass --force (force=True) to replace it", file=str(out_dir),
                        rule="no overwrite without --force")
    if any(out_dir.iterdir()) and not (out_dir / MARKER).is_file():
        raise TmacError(f"exists, is not empty and is not a kit written by tmac-convert (no {MARKER}); refusing to "
                        "replace it even with --force", file=str(out_dir), rule="replace only kit folders")


def write_tree(out_dir: Path, files: dict[str, str | bytes], force: bool) -> None:
    """Write ``{relative path: content}`` as the folder ``out_dir``, atomically."""
    check_target(out_dir, force)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    old: Path | None = None
    try:
        for rel, content in files.items():
            p = tmp / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            data = content.encode() if isinstance(content, str) else content
            p.write_bytes(data)
            prev = out_dir / rel
            if prev.is_file() and not prev.is_symlink() and prev.stat().st_size == len(data) and prev.read_bytes() == data:
                st = prev.stat()
                os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.chmod(tmp, 0o755)
        if out_dir.exists():
            check_target(out_dir, force)  # again: it may have appeared meanwhile
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".old", dir=out_dir.parent))
            os.rmdir(old)
            os.rename(out_dir, old)
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and old.exists() and not out_dir.exists():
            os.rename(old, out_dir)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
