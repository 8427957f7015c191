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

import contextlib
import errno
import os
import re
import secrets
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import Iterable, Iterator

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


#: errno values that mean "no room for the output": a full disk, a per-process file size limit, a quota.
DISK_FULL_ERRNOS = frozenset(e for e in (errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", None)) if e is not None)


_SHORT_WRITE = re.compile(r"^\d+ requested and \d+ written$")


@contextlib.contextmanager
def disk_full_as_tmac_error(target: str | os.PathLike) -> Iterator[None]:
    """Turn an OSError meaning "no room" (:data:`DISK_FULL_ERRNOS`) raised inside the block, by a write, a flush
    or an fsync, into a :class:`TmacError` naming ``target`` (other OSErrors pass unchanged: they may come from
    reading the source)."""
    try:
        yield
    except OSError as e:
        if e.errno in DISK_FULL_ERRNOS:
            why = os.strerror(e.errno)
        elif e.errno is None and _SHORT_WRITE.search(str(e)):
            # numpy's ndarray.tofile (the gguf package's tensor writes) reports a short write without errno
            why = f"a short write: {e}"
        else:
            raise
        raise TmacError(f"no room to write the output ({why}); nothing was written", file=str(target),
                        rule="free disk space") from None


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
            # held back while creating: an interrupt between mkstemp() and recording its name would leave a
            # temporary file that _cleanup() does not know of (seen once in 50 random kills)
            with _signals_blocked():
                for t in self.targets:
                    fd, tmp = tempfile.mkstemp(dir=t.parent, prefix=f".{t.name}.", suffix=".part")
                    self.temps[t] = Path(tmp)
                    os.close(fd)
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
        with _signals_blocked():
            self._rename_all()
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

    def _rename_all(self) -> None:
        """Rename every temporary file over its target, all or nothing: on any failure (or an interrupt raised
        in this thread) the targets renamed so far get their previous file back (kept as a hard link until
        the end) or are removed when they did not exist before."""
        backups: dict[Path, Path | None] = {}  # target -> hard link to its previous file (None: there was none)
        done: list[Path] = []
        try:
            for t, tmp in self.temps.items():
                os.chmod(tmp, 0o644 & ~_umask())
                backups[t] = _backup(t) if self.force else None
                if self.force:
                    try:
                        os.replace(tmp, t)
                    finally:
                        if not tmp.exists():  # renamed, even if an interrupt arrived as the call returned
                            done.append(t)
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
                done.append(t)
        except BaseException:
            for t in done:
                b = backups.get(t)
                if b is not None:
                    os.replace(b, t)
                else:  # it did not exist before (or could not be linked: nothing to give back)
                    t.unlink(missing_ok=True)
            raise
        finally:
            for b in backups.values():
                if b is not None:
                    b.unlink(missing_ok=True)

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


def _backup(t: Path) -> Path | None:
    """A hard link to ``t``'s current file beside it (None when ``t`` does not exist or links are unsupported)."""
    if not t.exists():
        return None
    b = t.parent / f".{t.name}.{secrets.token_hex(8)}.prev.part"  # a leftover looks like the other temporaries
    try:
        os.link(t, b)
    except OSError:
        return None
    return b


@contextlib.contextmanager
def _signals_blocked() -> Iterator[None]:
    """SIGINT and SIGTERM held back (delivered on leaving the block) in the main thread, so that renaming a pair
    of outputs is not cut in the middle by Ctrl-C or a polite kill (SIGKILL cannot be held back).

    Python runs signal handlers in the main thread whichever thread the kernel hands the signal to, so masking
    the main thread (pthread_sigmask) holds nothing back once other threads exist (the converter's always do):
    the handlers themselves are swapped for one that only notes the signal, which is raised again on leaving."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    old: dict[int, object] = {}
    try:
        for s in (signal.SIGINT, signal.SIGTERM):
            old[s] = signal.getsignal(s)
            signal.signal(s, lambda signum, frame: held.append(signum))
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)  # None: a handler not set from Python
        if held:
            signal.raise_signal(held[0])


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m
