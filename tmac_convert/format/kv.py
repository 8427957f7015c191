"""Typed GGUF key/values: carrying a source's metadata over, writing them, and their JSON form (npz manifest)."""

from __future__ import annotations

from typing import Any

import gguf
import numpy as np

from ..errors import TmacError
from .gguf_file import KV
from .model import SourceModel

# Keys the writer sets itself (or that describe the source file's own layout).
_NOT_CARRIED = ("general.architecture", "general.file_type", "general.alignment", "split.")


def carried_kv(model: SourceModel) -> list[KV]:
    """Every key/value of a GGUF source, typed as in the source file (minus layout keys and ``tmac.*``)."""
    kvs: list[KV] = []
    if model.gguf_kv is not None:
        kvs = list(model.gguf_kv)
    elif model.gguf_metadata:
        for k, v in model.gguf_metadata.items():
            kvs.append(_guess_kv(k, v))
    return [kv for kv in kvs if not kv.key.startswith("tmac.") and not any(
        kv.key == p or (p.endswith(".") and kv.key.startswith(p)) for p in _NOT_CARRIED)]


def _guess_kv(key: str, v: Any) -> KV:
    T = gguf.GGUFValueType
    if isinstance(v, bool):
        return KV(key, T.BOOL, v)
    if isinstance(v, int):
        return KV(key, T.UINT32 if 0 <= v < 2**32 else T.INT64, v)
    if isinstance(v, float):
        return KV(key, T.FLOAT32, v)
    if isinstance(v, (str, bytes)):
        return KV(key, T.STRING, v)
    if isinstance(v, np.ndarray):
        sub = {"u1": T.UINT8, "i1": T.INT8, "u2": T.UINT16, "i2": T.INT16, "u4": T.UINT32, "i4": T.INT32,
               "f4": T.FLOAT32, "u8": T.UINT64, "i8": T.INT64, "f8": T.FLOAT64, "b1": T.BOOL}[v.dtype.str[1:]]
        return KV(key, T.ARRAY, v, sub)
    if isinstance(v, (list, tuple)):
        sub = _guess_kv(key, v[0]).vtype if len(v) else T.UINT32
        return KV(key, T.ARRAY, list(v), sub)
    raise TmacError(f"metadata key {key}: a value of type {type(v).__name__} cannot be written to GGUF",
                    rule="metadata types")


def add_kv(w: gguf.GGUFWriter, kv: KV) -> None:
    """Add one typed key/value to a writer (arrays as lists; numpy scalars as Python numbers)."""
    value = kv.value
    if isinstance(value, np.ndarray):
        value = value.tolist()
    w.add_key_value(kv.key, value, gguf.GGUFValueType(kv.vtype),
                    None if kv.sub_type is None else gguf.GGUFValueType(kv.sub_type))


def kv_to_json(kv: KV) -> dict[str, Any]:
    """A typed key/value as JSON (for the npz manifest); bytes become latin-1 text with a flag."""
    v = kv.value
    if isinstance(v, np.ndarray):
        v = v.tolist()
    out: dict[str, Any] = {"key": kv.key, "type": int(kv.vtype)}
    if kv.sub_type is not None:
        out["sub_type"] = int(kv.sub_type)
    if isinstance(v, bytes):
        out["bytes"] = True
        v = v.decode("latin-1")
    elif isinstance(v, list) and any(isinstance(x, bytes) for x in v):
        out["bytes"] = True
        v = [x.decode("latin-1") if isinstance(x, bytes) else x for x in v]
    out["value"] = v
    return out


def kv_from_json(d: dict[str, Any]) -> KV:
    """Inverse of :func:`kv_to_json` (numeric arrays come back as lists)."""
    v = d["value"]
    if d.get("bytes"):
        v = v.encode("latin-1") if isinstance(v, str) else [x.encode("latin-1") for x in v]
    vt = int(d["type"])
    sub = None if d.get("sub_type") is None else int(d["sub_type"])
    key = d["key"]
    if not isinstance(key, str) or not _value_fits(vt, v, sub):
        raise TmacError(f"metadata {key!r}: value {str(v)[:60]!r} does not fit value type {vt}/{sub}",
                        rule="manifest schema")
    return KV(key, vt, v, sub)


_INT_RANGES = {0: (0, 2**8), 1: (-2**7, 2**7), 2: (0, 2**16), 3: (-2**15, 2**15), 4: (0, 2**32), 5: (-2**31, 2**31),
               10: (0, 2**64), 11: (-2**63, 2**63)}


def _value_fits(vt: int, v: Any, sub: int | None, depth: int = 0) -> bool:
    """Whether ``v`` can be written as GGUF value type ``vt`` (arrays: every element as ``sub``)."""
    if vt in _INT_RANGES:
        lo, hi = _INT_RANGES[vt]
        return isinstance(v, int) and not isinstance(v, bool) and lo <= v < hi
    if vt in (6, 12):
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if vt == 7:
        return isinstance(v, bool)
    if vt == 8:
        return isinstance(v, (str, bytes))
    if vt == 9:
        return (depth < 2 and isinstance(v, list) and sub is not None and sub != 9
                and all(_value_fits(sub, x, None, depth + 1) for x in v))
    return False
