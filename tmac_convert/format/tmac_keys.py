"""The self-describing ``tmac.*`` GGUF keys (and the same facts in an npz manifest): names, reading, writing.

One home for the key names: the GGUF writer, the T-MAC file reader and ``inspect`` all use
:class:`TmacKeys` / :class:`TmacMeta`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gguf
import numpy as np

from .._version import __version__
from ..errors import TmacError
from .gguf_file import KV

#: The tool and version written to ``general.quantized_by`` and ``tmac.converter``.
CONVERTER = f"tmac-convert {__version__}"

#: Key prefix of every T-MAC key.
TMAC_KEY_PREFIX = "tmac."

TMAC_FORMAT_VERSION = 1


class TmacKeys:
    """Names of the ``tmac.*`` keys (one place; the reader and ``inspect`` use the same names)."""

    FORMAT_VERSION = "tmac.format_version"   # u32: version of this key set
    CONVERTER = "tmac.converter"             # str: tool and version that wrote the file
    LAYOUT = "tmac.layout"                   # str: "A" (pre-permuted blobs, section 1 of the notes)
    RUNTIME = "tmac.runtime"                 # str: type-id numbering: "tmac" (36-39) or "aug2024" (30-33)
    BITS = "tmac.bits"                       # u32: weight bits of every I-type tensor
    GROUP_SIZE = "tmac.group_size"           # i32: weights per scale along K (-1: per row, 0: one scale per tensor)
    ZERO_POINT = "tmac.zero_point"           # bool: zero offsets interleaved with the scales
    ONE_SCALE = "tmac.one_scale"             # bool: one scale per tensor (BitNet)
    ACT_GROUP_SIZE = "tmac.act_group_size"   # i32: activation (LUT) group size, -1 = the whole K
    TENSOR_NAMES = "tmac.tensor_names"       # [str]: the I-type tensors, in file order
    TENSOR_BM = "tmac.tensor_bm"             # [u32]: bm of each, same order
    TENSOR_KFACTOR = "tmac.tensor_kfactor"   # [u32]: kfactor of each, same order
    KCFG = "tmac.kcfg"                       # str: the kcfg.ini text the runtime must use


@dataclass
class TmacMeta:
    """What the ``tmac.*`` keys say about a file (the same facts go into an npz manifest)."""

    runtime: str
    bits: int
    group_size: int
    zero_point: bool
    one_scale: bool
    act_group_size: int
    tiles: dict[str, tuple[int, int]]  # tensor name -> (bm, kfactor)
    kcfg: str
    converter: str = CONVERTER
    format_version: int = TMAC_FORMAT_VERSION
    layout: str = "A"

    def add_to(self, w: gguf.GGUFWriter) -> None:
        w.add_uint32(TmacKeys.FORMAT_VERSION, self.format_version)
        w.add_string(TmacKeys.CONVERTER, self.converter)
        w.add_string(TmacKeys.LAYOUT, self.layout)
        w.add_string(TmacKeys.RUNTIME, self.runtime)
        w.add_uint32(TmacKeys.BITS, self.bits)
        w.add_int32(TmacKeys.GROUP_SIZE, self.group_size)
        w.add_bool(TmacKeys.ZERO_POINT, self.zero_point)
        w.add_bool(TmacKeys.ONE_SCALE, self.one_scale)
        w.add_int32(TmacKeys.ACT_GROUP_SIZE, self.act_group_size)
        names = list(self.tiles)
        if names:
            w.add_key_value(TmacKeys.TENSOR_NAMES, names, gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.STRING)
            w.add_key_value(TmacKeys.TENSOR_BM, [self.tiles[n][0] for n in names], gguf.GGUFValueType.ARRAY,
                            gguf.GGUFValueType.UINT32)
            w.add_key_value(TmacKeys.TENSOR_KFACTOR, [self.tiles[n][1] for n in names], gguf.GGUFValueType.ARRAY,
                            gguf.GGUFValueType.UINT32)
        w.add_string(TmacKeys.KCFG, self.kcfg)

    def to_json(self) -> dict[str, Any]:
        return {"format_version": self.format_version, "converter": self.converter, "layout": self.layout,
                "runtime": self.runtime, "bits": self.bits, "group_size": self.group_size,
                "zero_point": self.zero_point, "one_scale": self.one_scale, "act_group_size": self.act_group_size,
                "kcfg": self.kcfg}

    @classmethod
    def from_kv(cls, kv: dict[str, KV], file: str) -> "TmacMeta | None":
        """Read the keys back; None when the file has none; :class:`TmacError` when they are inconsistent."""
        if TmacKeys.FORMAT_VERSION not in kv:
            return None

        def get(key: str, types: tuple[type, ...], default: Any = ...) -> Any:
            if key not in kv:
                if default is not ...:
                    return default
                raise TmacError(f"key {key} is missing", file=file, rule="tmac keys complete")
            v = kv[key].value
            if not isinstance(v, types) or (isinstance(v, bool) and bool not in types):
                raise TmacError(f"key {key} has a value of the wrong type ({type(v).__name__})", file=file,
                                rule="tmac key types")
            return v

        version = get(TmacKeys.FORMAT_VERSION, (int,))
        if version > TMAC_FORMAT_VERSION:
            raise TmacError(f"tmac.format_version {version} is newer than this tool reads ({TMAC_FORMAT_VERSION}); "
                            "upgrade tmac-convert", file=file, rule="tmac format version")
        names = get(TmacKeys.TENSOR_NAMES, (list,), [])
        bms = get(TmacKeys.TENSOR_BM, (np.ndarray, list), np.zeros(0, dtype=np.uint32))
        kfs = get(TmacKeys.TENSOR_KFACTOR, (np.ndarray, list), np.zeros(0, dtype=np.uint32))
        if not (len(names) == len(bms) == len(kfs)):
            raise TmacError(f"tmac.tensor_names ({len(names)}), tmac.tensor_bm ({len(bms)}) and tmac.tensor_kfactor "
                            f"({len(kfs)}) differ in length", file=file, rule="tmac keys consistent")
        if not all(isinstance(n, str) for n in names):
            raise TmacError("tmac.tensor_names holds a non-string", file=file, rule="tmac key types")
        return cls(runtime=get(TmacKeys.RUNTIME, (str,)), bits=get(TmacKeys.BITS, (int,)),
                   group_size=get(TmacKeys.GROUP_SIZE, (int,)), zero_point=get(TmacKeys.ZERO_POINT, (bool,)),
                   one_scale=get(TmacKeys.ONE_SCALE, (bool,)), act_group_size=get(TmacKeys.ACT_GROUP_SIZE, (int,)),
                   tiles={n: (int(b), int(k)) for n, b, k in zip(names, bms, kfs)}, kcfg=get(TmacKeys.KCFG, (str,)),
                   converter=get(TmacKeys.CONVERTER, (str,), ""), format_version=version,
                   layout=get(TmacKeys.LAYOUT, (str,), "A"))
