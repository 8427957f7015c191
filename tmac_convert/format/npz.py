"""Hostile-input-safe access to tmac-convert's npz container (written by :mod:`tmac_convert.writers.npz_writer`).

``zipfile`` and ``numpy.lib.format`` raise a zoo of exceptions on damaged files (``BadZipFile``,
``NotImplementedError`` for odd versions or flags, ``RuntimeError`` for "encrypted" members, ``EOFError``,
``zlib.error``, ``struct.error``...) and ``np.load`` allocates whatever shape a member header claims.
Everything here turns those into :class:`TmacError` and checks sizes before allocating:

* members must be stored (no compression, no encryption), as the writer stores them;
* the manifest is bounded in size and validated field by field (:func:`read_manifest`);
* a member's ``.npy`` header must describe exactly the bytes the manifest announced (:func:`read_member`).
"""

from __future__ import annotations

import json
import struct
import zipfile
import zlib
from contextlib import contextmanager
from math import prod
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..errors import TmacError

NPZ_FORMAT = "tmac-convert.npz"
NPZ_FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TOKENIZER_PREFIX = "tokenizer/"
MAX_MANIFEST_BYTES = 64 << 20
MAX_TOKENIZER_BYTES = 1 << 30
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, RuntimeError, EOFError, OSError,
               ValueError, struct.error, zlib.error, UnicodeDecodeError, KeyError, OverflowError, RecursionError)


#: Date and attributes of every member the writer stores, so that the same conversion gives the same bytes
#: (the zip default is the clock, or a tokenizer file's mtime and mode).
FIXED_DATE_TIME = (1980, 1, 1, 0, 0, 0)
FIXED_EXTERNAL_ATTR = 0o100644 << 16  # a regular file, rw-r--r--

#: Characters a tensor name may hold that cannot appear in a member name as they are: path separators
#: (zip-slip for tools that extract), NUL and other controls (zipfile cuts a name at NUL), and ``%`` itself.
_MEMBER_ESCAPES = {c: f"%{ord(c):02X}" for c in ["%", "/", "\\"] + [chr(i) for i in range(32)] + ["\x7f"]}


def member_name(tensor: str) -> str:
    """The zip member of a tensor: its name with ``%``, ``/``, ``\\`` and control characters percent-encoded,
    plus ``.npy`` (one path component, never ``..`` or absolute, and a different member for each name)."""
    return "".join(_MEMBER_ESCAPES.get(c, c) for c in tensor) + ".npy"


def is_safe_member(member: str) -> bool:
    """Whether a manifest's member name is a single plain component that no extractor can place outside its
    folder (what :func:`member_name` produces)."""
    return (member.endswith(".npy") and not any(c in member for c in "/\\") and member not in (".", "..")
            and not any(ord(c) < 32 or c == "\x7f" for c in member))


@contextmanager
def guarded(p: Path, what: str) -> Iterator[None]:
    """Re-raise any zip/npy/JSON failure inside the block as a TmacError naming the file."""
    try:
        yield
    except TmacError:
        raise
    except _ZIP_ERRORS as e:
        raise TmacError(f"{what}: {type(e).__name__}: {str(e)[:200]}", file=str(p), rule="valid npz container") from None


@contextmanager
def open_zip(p: Path) -> Iterator[zipfile.ZipFile]:
    with guarded(p, "unreadable zip"):
        with zipfile.ZipFile(p) as zf:
            yield zf


def _stored_info(zf: zipfile.ZipFile, p: Path, member: str, limit: int) -> zipfile.ZipInfo:
    try:
        info = zf.getinfo(member)
    except KeyError:
        raise TmacError(f"member {member} is missing", file=str(p), rule="manifest consistent") from None
    if info.flag_bits & 0x1:
        raise TmacError(f"member {member} is encrypted", file=str(p), rule="npz members stored plainly")
    if info.compress_type != zipfile.ZIP_STORED:
        raise TmacError(f"member {member} is compressed (method {info.compress_type}); tmac-convert stores members",
                        file=str(p), rule="npz members stored plainly")
    if info.file_size > limit or info.file_size > p.stat().st_size:
        raise TmacError(f"member {member} claims {info.file_size} bytes", file=str(p), rule="member size")
    return info


def is_our_npz(p: Path) -> bool:
    """True for a zip holding a manifest whose ``format`` is tmac-convert's (never raises)."""
    try:
        if not p.is_file() or not zipfile.is_zipfile(p):
            return False
        return read_manifest(p, validate=False).get("format") == NPZ_FORMAT
    except (TmacError, *_ZIP_ERRORS):
        return False


def read_manifest(p: Path, *, validate: bool = True) -> dict[str, Any]:
    """The manifest as a dict; with ``validate`` every field the reader uses is type-checked."""
    with open_zip(p) as zf, guarded(p, "unreadable manifest"):
        info = _stored_info(zf, p, MANIFEST, MAX_MANIFEST_BYTES)
        man = json.loads(zf.read(info).decode("utf-8"))
    if not isinstance(man, dict):
        raise TmacError("manifest is not a JSON object", file=str(p), rule="manifest schema")
    if validate:
        _validate(man, p)
    return man


def _need(d: Any, key: str, types: type | tuple[type, ...], p: Path, where: str = "manifest") -> Any:
    if not isinstance(d, dict) or key not in d:
        raise TmacError(f"{where} lacks {key!r}", file=str(p), rule="manifest schema")
    v = d[key]
    ok = isinstance(v, types) and not (isinstance(v, bool) and bool not in (types if isinstance(types, tuple)
                                                                               else (types,)))
    if not ok:
        raise TmacError(f"{where} field {key!r} has a value of type {type(v).__name__}", file=str(p),
                        rule="manifest schema")
    return v


def _validate(man: dict[str, Any], p: Path) -> None:
    if _need(man, "format", str, p) != NPZ_FORMAT:
        raise TmacError(f"manifest format {man['format']!r} is not {NPZ_FORMAT}", file=str(p), rule="manifest schema")
    v = _need(man, "format_version", int, p)
    if v > NPZ_FORMAT_VERSION:
        raise TmacError(f"manifest format_version {v} is newer than this tool reads ({NPZ_FORMAT_VERSION})",
                        file=str(p), rule="npz format version")
    for key in ("architecture", "gguf_arch"):
        _need(man, key, str, p)
    for key, types in (("config", dict), ("quantization", dict), ("tokenizer_files", list), ("gguf_metadata", list)):
        if man.get(key) is not None and not isinstance(man[key], types):
            raise TmacError(f"manifest field {key!r} has a value of type {type(man[key]).__name__}", file=str(p),
                            rule="manifest schema")
    tm = _need(man, "tmac", dict, p)
    for key, types in (("bits", int), ("group_size", int), ("zero_point", bool), ("one_scale", bool),
                       ("act_group_size", int), ("kcfg", str)):
        _need(tm, key, types, p, "manifest tmac")
    tensors = _need(man, "tensors", list, p)
    for i, d in enumerate(tensors):
        where = f"manifest tensor {i}"
        for key, types in (("name", str), ("member", str), ("encoding", str), ("shape", list), ("nbytes", int)):
            _need(d, key, types, p, where)
        if not is_safe_member(d["member"]):
            raise TmacError(f"{where} has member {d['member'][:80]!r}, not a plain .npy name (a path would let "
                            "an extractor write outside its folder)", file=str(p), tensor=d["name"],
                            rule="npz member names are plain")
        shape = d["shape"]
        if not 1 <= len(shape) <= 4 or not all(isinstance(x, int) and not isinstance(x, bool) and 0 < x < 1 << 40
                                               for x in shape):
            raise TmacError(f"{where} has shape {shape!r}", file=str(p), tensor=d["name"], rule="manifest schema")
        if d["encoding"] == "tmac":
            for key, types in (("bits", int), ("group_size", int), ("zero_point", bool), ("per_tensor_scale", bool),
                               ("bm", int), ("kfactor", int)):
                _need(d, key, types, p, where)
            if len(shape) != 2:
                raise TmacError(f"{where}: a quantised tensor must be 2-D, got {shape}", file=str(p),
                                tensor=d["name"], rule="manifest schema")


def read_member(p: Path, member: str, *, nbytes: int, dtype: np.dtype, tensor: str) -> np.ndarray:
    """A member's array as flat ``dtype`` values, after checking its .npy header describes ``nbytes`` bytes."""
    dtype = np.dtype(dtype)
    with open_zip(p) as zf, guarded(p, f"member {member} unreadable"):
        info = _stored_info(zf, p, member, nbytes + 4096)
        with zf.open(info) as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dt = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dt = np.lib.format.read_array_header_2_0(f)
            else:
                raise TmacError(f"member {member} has .npy version {version}", file=str(p), tensor=tensor,
                                rule="npy member")
            n = prod(shape) * dt.itemsize if not dt.hasobject else -1
            if fortran or dt.hasobject or dt.str != dtype.str or n != nbytes:
                raise TmacError(f"member {member} holds {dt} {shape}, the manifest says {nbytes} bytes of {dtype}",
                                file=str(p), tensor=tensor, rule="manifest consistent")
            raw = f.read(nbytes)
        if len(raw) != nbytes:
            raise TmacError(f"member {member} is truncated", file=str(p), tensor=tensor, rule="npy member")
    return np.frombuffer(raw, dtype=dt)


def read_raw_member(p: Path, member: str, limit: int) -> bytes:
    """A member's bytes as stored (tokenizer files), bounded by ``limit``."""
    with open_zip(p) as zf, guarded(p, f"member {member} unreadable"):
        info = _stored_info(zf, p, member, limit)
        return zf.read(info)


def member_names(p: Path) -> set[str]:
    with open_zip(p) as zf, guarded(p, "unreadable zip directory"):
        return set(zf.namelist())
