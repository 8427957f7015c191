"""Safe output: temporary files in the target folder, fsync, then rename; nothing left behind on failure.

Usage::

    with AtomicOutputs([out, kcfg_path], force=False, needed_bytes=n) as tmp:
        write(tmp[out]); write(tmp[kcfg_path])
    # on success every temporary file was flushed to disk and renamed over its target;
    # on any exception, Ctrl-C or SIGTERM all temporary files are removed and no target is touched.

Without ``force`` an existing target is refused before anything is written, and the final rename is
a hard link that fails rather than replace a file that appeared meanwhile.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import Iterable

from ..errors import TmacError

# Kept free beyond the planned bytes: file-system metadata and the GGUF header estimate's error.
FREE_SPACE_MARGIN = 16 << 20


def _raise_interrupt(signum, frame):  # noqa: ARG001 - signal handler signature
    raise KeyboardInterrupt(f"signal {signum}")


def check_free_space(folder: Path, needed_bytes: int) -> None:
    """Raise :class:`TmacError` when ``folder``'s file system has less than ``needed_bytes`` (+ margin) free."""
    free = shutil.disk_usage(folder).free
    if free < needed_bytes + FREE_SPACE_MARGIN:
        raise TmacError(f"{free / 2**20:.1f} MiB free, the output needs {(needed_bytes + FREE_SPACE_MARGIN) / 2**20:.1f} "
                        "MiB", file=str(folder), rule="free disk space")


class AtomicOutputs:
    """Context manager writing several files all-or-nothing (see the module docstring).

    Entering returns a dict ``target -> temporary path`` (same folder as the target).
    """

    def __init__(self, targets: Iterable[str | os.PathLike], *, force: bool = False, needed_bytes: int = 0) -> None:
        self.targets = [Path(t) for t in targets]
        self.force = force
        self.needed_bytes = needed_bytes
        self.temps: dict[Path, Path] = {}
        self._old_handler = None

    def check(self) -> None:
        """Every refusal that can be decided before writing: existing targets, missing folders, free space."""
        if len(set(t.resolve() for t in self.targets)) != len(self.targets):
            raise TmacError("two outputs would be written to the same path", file=str(self.targets[0]),
                            rule="distinct outputs")
        for t in self.targets:
            if t.is_dir():
                raise TmacError("the output path is a folder", file=str(t), rule="output is a file")
            if not t.parent.is_dir():
                raise TmacError("the output folder does not exist", file=str(t.parent), rule="output folder exists")
            if (t.exists() or t.is_symlink()) and not self.force:
                raise TmacError("exists; pass --force (force=True) to overwrite it", file=str(t),
                                rule="no overwrite without --force")
            if not os.access(t.parent, os.W_OK):
                raise TmacError("the output folder is not writable", file=str(t.parent), rule="writable output folder")
        by_folder: dict[Path, int] = {}
        for t in self.targets:
            by_folder.setdefault(t.parent.resolve(), 0)
        folder = self.targets[0].parent.resolve()
        by_folder[folder] += self.needed_bytes
        for f, n in by_folder.items():
            check_free_space(f, n)

    def __enter__(self) -> dict[Path, Path]:
        self.check()
        if threading.current_thread() is threading.main_thread():
            self._old_handler = signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            for t in self.targets:
                fd, tmp = tempfile.mkstemp(dir=t.parent, prefix=f".{t.name}.", suffix=".part")
                os.close(fd)
                self.temps[t] = Path(tmp)
        except BaseException:
            self._cleanup()
            raise
        return dict(self.temps)

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self._commit()
        finally:
            self._cleanup()

    def _commit(self) -> None:
        for tmp in self.temps.values():
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        created: list[Path] = []
        try:
            for t, tmp in self.temps.items():
                os.chmod(tmp, 0o644 & ~_umask())
                if self.force:
                    os.replace(tmp, t)
                    continue
                try:
                    os.link(tmp, t)  # unlike a rename, fails if the target appeared since check()
                except FileExistsError:
                    raise TmacError("appeared while converting; not overwritten", file=str(t),
                                    rule="no overwrite without --force") from None
                except OSError:  # a file system without hard links
                    if t.exists():
                        raise TmacError("appeared while converting; not overwritten", file=str(t),
                                        rule="no overwrite without --force") from None
                    os.replace(tmp, t)
                created.append(t)
        except BaseException:
            for t in created:  # all or nothing: these did not exist before
                t.unlink(missing_ok=True)
            raise
        for folder in {t.parent for t in self.temps}:
            try:
                fd = os.open(folder, os.O_RDONLY)
            except OSError:
                continue
            try:
                os.fsync(fd)
            except OSError:
                pass
            finally:
                os.close(fd)

    def _cleanup(self) -> None:
        for tmp in self.temps.values():
            try:
                tmp.unlink()
            except FileNotFoundError:
                pass
        self.temps = {}
        if self._old_handler is not None:
            signal.signal(signal.SIGTERM, self._old_handler)
            self._old_handler = None


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m
