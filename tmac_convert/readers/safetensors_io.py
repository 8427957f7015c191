"""Lazy, memory-mapped access to a (possibly sharded) safetensors checkpoint, one tensor at a time.

Every file's header is parsed and checked here first (so a truncated or malformed file fails with a
:class:`TmacError` naming it, before any data is touched); tensors are then read through
``safetensors.safe_open`` (memory-mapped).  BF16 is the exception: numpy has no bfloat16, so BF16
tensors are memory-mapped as uint16 bit patterns and widened to float32 (exactly).
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..errors import TmacError
from ..format.tensor import FileSpan

INDEX_NAME = "model.safetensors.index.json"
_MAX_HEADER = 100 * 1024 * 1024

#: safetensors dtype name -> (numpy dtype, bytes per element); BF16 maps to its uint16 bit pattern.
DTYPES: dict[str, tuple[np.dtype, int]] = {
    "F64": (np.dtype("<f8"), 8), "F32": (np.dtype("<f4"), 4), "F16": (np.dtype("<f2"), 2),
    "BF16": (np.dtype("<u2"), 2), "I64": (np.dtype("<i8"), 8), "I32": (np.dtype("<i4"), 4),
    "I16": (np.dtype("<i2"), 2), "I8": (np.dtype("i1"), 1), "U64": (np.dtype("<u8"), 8),
    "U32": (np.dtype("<u4"), 4), "U16": (np.dtype("<u2"), 2), "U8": (np.dtype("u1"), 1),
    "BOOL": (np.dtype("?"), 1),
}
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")


@dataclass(frozen=True)
class StEntry:
    """Where one tensor lives: its file, safetensors dtype, shape and absolute byte range."""

    name: str
    file: Path
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


def read_header(path: Path) -> tuple[dict[str, StEntry], dict[str, str]]:
    """Parse and validate a safetensors header: ``(name -> StEntry, __metadata__)``.

    Checks the header length, the JSON, each dtype, that each byte range matches its shape and lies
    inside the file (a truncated file fails here), and that ranges do not overlap.
    """
    path = Path(path)
    fname = str(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise TmacError("file is shorter than the 8-byte safetensors header length", file=fname,
                                rule="safetensors header")
            (n,) = struct.unpack("<Q", head)
            if n > _MAX_HEADER or 8 + n > size:
                raise TmacError(f"header length {n} exceeds the file ({size} bytes): truncated or not "
                                "safetensors", file=fname, rule="safetensors header")
            raw = f.read(n)
    except OSError as e:
        raise TmacError(f"cannot read: {e.strerror or e}", file=fname, rule="readable file") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise TmacError(f"header is not valid JSON ({str(e)[:200]})", file=fname,
                        rule="safetensors header") from None
    if not isinstance(header, dict):
        raise TmacError("header is not a JSON object", file=fname, rule="safetensors header")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict):
        raise TmacError("__metadata__ is not a JSON object", file=fname, rule="safetensors header")
    base = 8 + n
    data_len = size - base
    entries: dict[str, StEntry] = {}
    for name, info in header.items():
        try:
            dtype = info["dtype"]
            shape = tuple(info["shape"])
            lo, hi = info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise TmacError("malformed header entry", file=fname, tensor=name, rule="safetensors header") from None
        # JSON integers only (no floats, bools or strings that int() would quietly accept)
        if not all(type(x) is int and x >= 0 for x in shape + (lo, hi)):
            raise TmacError(f"shape {list(shape)} and data_offsets [{lo}, {hi}] must be non-negative integers",
                            file=fname, tensor=name, rule="safetensors header")
        if not isinstance(dtype, str) or dtype not in DTYPES:
            raise TmacError(f"unsupported dtype {dtype!r:.40}", file=fname, tensor=name, rule="safetensors dtype")
        want = math.prod(shape) * DTYPES[dtype][1]  # python ints: a huge shape cannot wrap around
        if hi - lo != want or lo < 0:
            raise TmacError(f"byte range {lo}..{hi} does not hold {dtype} {list(shape)} ({want} bytes)",
                            file=fname, tensor=name, rule="safetensors header")
        if hi > data_len:
            raise TmacError(f"data ends at byte {base + hi} but the file has {size} bytes: truncated file",
                            file=fname, tensor=name, rule="complete file")
        entries[name] = StEntry(name, path, dtype, shape, base + lo, base + hi)
    spans = sorted((e.start, e.end, e.name) for e in entries.values() if e.end > e.start)
    for (_, e0, n0), (s1, _, n1) in zip(spans, spans[1:]):
        if s1 < e0:
            raise TmacError(f"data overlaps tensor {n0}", file=fname, tensor=n1, rule="safetensors header")
    return entries, {str(k): str(v) for k, v in dict(meta).items()}


def checkpoint_files(path: Path) -> list[Path]:
    """The safetensors files of a folder (index-listed shards, or every ``*.safetensors``) or one file."""
    path = Path(path)
    if path.is_file():
        return [path]
    index = path / INDEX_NAME
    if index.exists():
        try:
            wm = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, ValueError, KeyError, TypeError, RecursionError):
            raise TmacError("cannot read its weight_map", file=str(index), rule="safetensors index") from None
        if not isinstance(wm, dict) or not all(isinstance(v, str) for v in wm.values()):
            raise TmacError("weight_map is not an object of tensor name -> shard file name", file=str(index),
                            rule="safetensors index")
        files = []
        for shard in dict.fromkeys(wm.values()):
            # A plain file name in the model folder, judged on the name itself: shards that are symlinks
            # into the Hugging Face cache's blobs/ folder (its normal layout) are fine, names are not.
            if not shard or shard in (".", "..") or Path(shard).name != shard or "\0" in shard:
                raise TmacError(f"shard {shard!r:.80} is not a file name in the model folder", file=str(index),
                                rule="safetensors index")
            p = path / shard
            if not p.is_file():
                raise TmacError(f"shard {shard} listed in the index is missing", file=str(index),
                                rule="complete checkpoint")
            files.append(p)
        return files
    return sorted(path.glob("*.safetensors"))


class SafetensorsCheckpoint:
    """Every tensor of a checkpoint, by name, loaded lazily (``get``) and never all at once."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.files = checkpoint_files(self.path)
        if not self.files:
            raise TmacError("no .safetensors files found", file=str(self.path), rule="safetensors checkpoint")
        self.entries: dict[str, StEntry] = {}
        self.metadata: dict[Path, dict[str, str]] = {}
        for f in self.files:
            entries, meta = read_header(f)
            self.metadata[f] = meta
            for name, e in entries.items():
                if name in self.entries:
                    raise TmacError(f"tensor appears in two files ({self.entries[name].file.name} and {f.name})",
                                    file=str(f), tensor=name, rule="unique tensor names")
                self.entries[name] = e
        self._handles: dict[Path, Any] = {}

    def names(self) -> list[str]:
        """Tensor names in file order (files in index order, tensors by offset)."""
        order = {f: i for i, f in enumerate(self.files)}
        return [e.name for e in sorted(self.entries.values(), key=lambda e: (order[e.file], e.start))]

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def entry(self, name: str) -> StEntry:
        """The header entry of ``name``; :class:`TmacError` when absent."""
        try:
            return self.entries[name]
        except KeyError:
            raise TmacError("tensor is missing from the checkpoint", file=str(self.path), tensor=name,
                            rule="required tensor") from None

    def _handle(self, f: Path) -> Any:
        h = self._handles.get(f)
        if h is None:
            from safetensors import safe_open
            try:
                h = safe_open(str(f), framework="numpy")
            except Exception as e:  # safetensors raises its own SafetensorError
                raise TmacError(f"safetensors cannot open it: {e}", file=str(f), rule="safetensors format") from None
            self._handles[f] = h
        return h

    def get(self, name: str) -> np.ndarray:
        """Load one tensor (a fresh array; BF16 widened to float32, other dtypes as stored)."""
        e = self.entry(name)
        if e.dtype == "BF16":
            mm = np.memmap(e.file, dtype="<u2", mode="r", offset=e.start, shape=e.shape) if e.nbytes else \
                np.zeros(e.shape, np.uint16)
            out = (np.asarray(mm).astype(np.uint32) << 16).view(np.float32)
            del mm
            return out
        # Plain reads, not safe_open's memory map: mapped pages stay resident in this process (RSS grows
        # to the whole checkpoint); read() leaves them in the page cache only.  The range was validated
        # against the file by read_header.
        dt = DTYPES[e.dtype][0]
        count = e.nbytes // dt.itemsize
        try:
            out = np.fromfile(e.file, dtype=dt, count=count, offset=e.start) if count else np.zeros(0, dt)
        except (OSError, ValueError) as ex:
            raise TmacError(f"cannot read tensor data: {ex}", file=str(e.file), tensor=name,
                            rule="safetensors format") from None
        if out.size != count:
            raise TmacError(f"tensor data is truncated ({out.size} of {count} values)", file=str(e.file),
                            tensor=name, rule="safetensors format")
        return out.reshape(e.shape)

    def get_mapped(self, name: str) -> np.ndarray:
        """:meth:`get` as a read-only memory map, for a tensor that is read once by native code (GPTQ words):
        no copy into a fresh array.  The map is released when the array is dropped.  BF16 and empty
        tensors come from :meth:`get`."""
        e = self.entry(name)
        if e.dtype == "BF16" or e.nbytes == 0:
            return self.get(name)
        try:
            size = os.stat(e.file).st_size
        except OSError as ex:
            raise TmacError(f"cannot read tensor data: {ex}", file=str(e.file), tensor=name,
                            rule="safetensors format") from None
        if e.start + e.nbytes > size:  # the file shrank since its header was read: a map would fault
            raise TmacError(f"tensor data is truncated (the file is {size} bytes, the tensor ends at "
                            f"{e.start + e.nbytes})", file=str(e.file), tensor=name, rule="safetensors format")
        return FileSpan(e.file, e.start, e.nbytes, DTYPES[e.dtype][0].str).array(tuple(e.shape))

    def span(self, name: str) -> FileSpan | None:
        """Where an F16/F32 tensor's bytes lie (stored little-endian, C order: exactly what GGUF stores), else None."""
        e = self.entry(name)
        if e.dtype not in ("F16", "F32") or e.nbytes == 0:
            return None
        return FileSpan(e.file, e.start, e.nbytes, DTYPES[e.dtype][0].str)

    def get_float_mapped(self, name: str) -> tuple[np.ndarray, FileSpan | None]:
        """:meth:`get_float`, except that an F16/F32 tensor comes as a memory map of its bytes with its
        :class:`FileSpan` (nothing is read until something touches it: an unchanged tensor is then copied
        file to file by the writer)."""
        span = self.span(name)
        if span is None:
            return self.get_float(name), None
        return span.array(self.entry(name).shape), span

    def get_float(self, name: str) -> np.ndarray:
        """Load a float tensor as float16 (F16) or float32 (BF16, F32, F64 narrowed)."""
        e = self.entry(name)
        if e.dtype not in FLOAT_DTYPES:
            raise TmacError(f"expected a float tensor, found {e.dtype}", file=str(e.file), tensor=name,
                            rule="float dtype")
        a = self.get(name)
        return a.astype(np.float32) if a.dtype == np.float64 else a

    def iter_entries(self) -> Iterator[StEntry]:
        for n in self.names():
            yield self.entries[n]

    def close(self) -> None:
        self._handles.clear()
