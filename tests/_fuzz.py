"""Shared machinery of the fuzz tests (``tests/test_fuzz_*.py``): mutations, guards and properties.

The property every fuzz test checks: a mutated input gives either a correct result or the tool's
own :class:`~tmac_convert.errors.TmacError` -- never another exception, never a huge allocation
(each input runs under an address-space limit), never a hang (each input runs under a timer).

CI runs a fixed, derandomised number of inputs per test (see :func:`fuzz_settings`); set
``TMAC_FUZZ_EXAMPLES=N`` for a longer, randomised run with ``N`` inputs per test, and
``TMAC_FUZZ_COLLECT=<folder>`` to record every distinct unexpected exception there (signature, message,
traceback tail and the first input that raised it) instead of stopping at the first.

Bugs found in modules other helpers are still writing are registered in :data:`KNOWN_BUGS` (each with a
strict-xfail reproducer in ``test_fuzz_regressions.py``), so the fuzzers keep hunting for new ones.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import resource
import shutil
import signal
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

import tmac_convert
from tmac_convert.errors import TmacError
from tmac_convert.format import KV, parse
from tmac_convert.readers.base import FloatTensor
from tmac_convert.format.tensor import QuantTensor

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures"
FUZZ_ENV = "TMAC_FUZZ_EXAMPLES"

#: Mutated inputs run so far, by test file (each test file asserts its own floor).
COUNTS: Counter = Counter()

#: Integers that break length, count, offset and size fields (and the arithmetic done on them).
INTERESTING_INTS = (0, 1, 2, 3, 7, 8, 31, 32, 33, 255, 256, 4095, 65535, 2**31 - 1, 2**31, 2**32 - 1, 2**32,
                    2**40, 2**53 + 1, 2**62, 2**63 - 1, 2**63, 2**64 - 1)
HOSTILE_STRINGS = ("", " ", "0", "-1", "1e9", "nan", "inf", "null", "true", "gptq", "gptq_v2", "bitnet",
                   "offline", "online", "autobitlinear", "int32", "int8", "torch.int16", "float16",
                   "__import__('os').system('touch /tmp/tmac_fuzz_pwned')", "${HOME}", "../../../../etc/passwd",
                   "/etc/passwd", "a/../../b", "LlamaForCausalLM", "BitnetForCausalLM", "Qwen2ForCausalLM",
                   "\x00", "\ud7ff", "x" * 300, "[bold]x[/]", "[/]", "\u202e")

#: Keys worth adding to (or finding in) HF JSON configs.
CONFIG_KEYS = ("quantization_config", "quant_method", "bits", "group_size", "sym", "desc_act", "checkpoint_format",
               "pack_dtype", "meta", "quantizer", "architectures", "num_hidden_layers", "hidden_size",
               "num_attention_heads", "num_key_value_heads", "head_dim", "intermediate_size", "vocab_size",
               "quantization_mode", "linear_class", "use_rms_norm", "model_type", "weight_map", "attention_bias",
               "mlp_bias", "tie_word_embeddings")


def n_examples(ci: int) -> int:
    """Inputs per test: ``ci`` in CI, or ``$TMAC_FUZZ_EXAMPLES`` for a longer run."""
    env = os.environ.get(FUZZ_ENV)
    return int(env) if env else ci


def fuzz_settings(ci: int) -> settings:
    """Hypothesis settings of a fuzz test: derandomised in CI (reproducible), random in a long run."""
    return settings(max_examples=n_examples(ci), deadline=None, derandomize=not os.environ.get(FUZZ_ENV),
                    database=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much])


# ---------------------------------------------------------------------------------------------
# guards: no huge allocation, no hang

class Hang(Exception):
    """Raised by :func:`bounded` when one input takes longer than its time limit."""


def _vm_size() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


@contextlib.contextmanager
def bounded(seconds: float = 30.0, extra_bytes: int = 2 << 30) -> Iterator[None]:
    """Run a block with at most ``extra_bytes`` more address space and ``seconds`` of wall time.

    A header that lies about a size and makes the tool allocate gigabytes fails with MemoryError
    (not a TmacError, so the property fails); a loop driven by a lying count raises :class:`Hang`.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = _vm_size() + extra_bytes
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)

    def on_alarm(signum, frame):  # noqa: ARG001
        raise Hang(f"one input took more than {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


# ---------------------------------------------------------------------------------------------
# staging: a private copy of fixtures whose files are swapped for mutated ones

class Stage:
    """A writable copy of fixture folders; :meth:`swap` replaces one file for the duration of a block.

    Files are replaced by rename, never rewritten in place, so memory maps a reader still holds on
    the previous version stay valid.
    """

    def __init__(self, root: Path, names: list[str]) -> None:
        self.root = Path(root)
        for n in names:
            src = FIXTURES / n
            if src.is_dir():
                shutil.copytree(src, self.root / n)
            else:
                (self.root / n).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, self.root / n)
        self.original: dict[Path, bytes] = {}

    def path(self, rel: str) -> Path:
        return self.root / rel

    def read(self, rel: str) -> bytes:
        p = self.path(rel)
        if p not in self.original:
            self.original[p] = p.read_bytes()
        return self.original[p]

    def _put(self, p: Path, data: bytes) -> None:
        tmp = p.with_name(p.name + ".fuzz-tmp")
        tmp.write_bytes(data)
        os.replace(tmp, p)

    @contextlib.contextmanager
    def swap(self, rel: str, data: bytes) -> Iterator[Path]:
        p = self.path(rel)
        orig = self.read(rel)
        self._put(p, data)
        try:
            yield p
        finally:
            self._put(p, orig)


# ---------------------------------------------------------------------------------------------
# byte-level mutations

class Blob:
    """Mutated file contents with a short description (hypothesis prints draws; bytes would flood it)."""

    __slots__ = ("data", "desc")

    def __init__(self, data: bytes, desc: str) -> None:
        self.data, self.desc = data, desc

    def __repr__(self) -> str:
        return f"Blob({len(self.data)} bytes: {self.desc})"

@st.composite
def mutated_bytes(draw, data: bytes, hot: int | None = None) -> Blob:
    """``data`` after 1-3 mutations: bit flips, byte sets, truncation, insertion, deletion, or a
    little-endian 32/64-bit field overwritten with an interesting integer.

    Positions fall in ``[0, hot)`` (the header) with probability 3/4 when ``hot`` is given.
    The result always differs from ``data``.
    """
    buf = bytearray(data)

    def pos(extra: int = 0) -> int:
        n = max(1, len(buf) + extra)
        if hot and draw(st.integers(0, 3)) and hot <= n:
            return draw(st.integers(0, max(0, min(hot, n) - 1)))
        return draw(st.integers(0, n - 1))

    ops = []
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["flip", "set", "field", "field", "truncate", "insert", "delete"]))
        if not buf:
            op = "insert"
        if op == "flip":
            i = pos()
            bit = draw(st.integers(0, 7))
            buf[i] ^= 1 << bit
            ops.append(f"flip bit {bit} of byte {i}")
        elif op == "set":
            i = pos()
            buf[i] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80, draw(st.integers(0, 255))]))
            ops.append(f"byte {i} = {buf[i]:#x}")
        elif op == "field":
            width = draw(st.sampled_from([4, 8]))
            i = pos()
            value = draw(st.one_of(st.sampled_from(INTERESTING_INTS + (len(buf), len(buf) + 1, len(buf) - 8)),
                                   st.integers(0, 2**64 - 1)))
            raw = struct.pack("<Q", value % 2**64)[:width]
            buf[i:i + width] = raw[: max(0, min(width, len(buf) - i))]
            ops.append(f"u{8 * width} at {i} = {value % 2**(8 * width)}")
        elif op == "truncate":
            cut = draw(st.one_of(st.integers(0, max(0, len(buf) - 1)), st.just(pos())))
            del buf[cut:]
            ops.append(f"truncate to {cut}")
        elif op == "insert":
            i = pos(1)
            ins = draw(st.binary(min_size=1, max_size=64))
            buf[i:i] = ins
            ops.append(f"insert {ins!r} at {i}")
        else:
            i = pos()
            n = draw(st.integers(1, 64))
            del buf[i:i + n]
            ops.append(f"delete {n} at {i}")
    out = bytes(buf)
    if out == data:  # e.g. a field overwritten with its own value
        out = data[:-1]
        ops.append("drop the last byte")
    return Blob(out, "; ".join(ops))


# ---------------------------------------------------------------------------------------------
# JSON edits

_SCALARS = st.one_of(st.none(), st.booleans(), st.sampled_from(INTERESTING_INTS), st.integers(-2**70, 2**70),
                     st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(HOSTILE_STRINGS),
                     st.text(max_size=12))
HOSTILE_VALUES = st.recursive(_SCALARS, lambda c: st.lists(c, max_size=4)
                              | st.dictionaries(st.text(max_size=8), c, max_size=4), max_leaves=6)
_DEEP = "__tmac_fuzz_deep__"


def _paths(obj: Any, prefix: tuple = (), depth: int = 0) -> Iterator[tuple]:
    if depth > 6:
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield prefix + (k,)
            yield from _paths(v, prefix + (k,), depth + 1)
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:8]):
            yield prefix + (i,)
            yield from _paths(v, prefix + (i,), depth + 1)


def _parent(obj: Any, path: tuple) -> Any:
    for k in path[:-1]:
        obj = obj[k]
    return obj


@st.composite
def edited_json(draw, obj: Any, keys: tuple[str, ...] = ()) -> Blob:
    """UTF-8 JSON text of ``obj`` after one hostile edit: a value replaced (with a hostile value, another
    type, a huge nesting), a key deleted or added, or the whole document replaced.  ``keys`` are
    names worth adding (fields the readers look for)."""
    obj = copy.deepcopy(obj)
    paths = list(_paths(obj))
    op = draw(st.sampled_from(["replace", "replace", "replace", "delete", "add", "deep", "root"]))
    if op == "root" or not paths:
        obj = draw(HOSTILE_VALUES)
        desc = f"document = {obj!r:.80}"
    elif op == "add":
        dicts = [()] + [p for p in paths if isinstance(_parent(obj, p + (None,)), dict)]
        where = draw(st.sampled_from(dicts))
        target = _parent(obj, where + (None,))
        key = draw(st.one_of(st.sampled_from(keys or ("x",)), st.text(max_size=8)))
        value = draw(HOSTILE_VALUES)
        target[key] = value
        desc = f"add {list(where) + [key]} = {value!r:.80}"
    else:
        path = draw(st.sampled_from(paths))
        parent = _parent(obj, path)
        if op == "delete":
            del parent[path[-1]]
            desc = f"delete {list(path)}"
        elif op == "deep":
            parent[path[-1]] = _DEEP
            desc = f"{list(path)} = deeply nested list"
        else:
            value = draw(HOSTILE_VALUES)
            parent[path[-1]] = value
            desc = f"{list(path)} = {value!r:.80}"
    text = json.dumps(obj, allow_nan=True)
    if _DEEP in text:
        depth = draw(st.sampled_from([50, 900, 3000, 100_000]))
        text = text.replace(json.dumps(_DEEP), "[" * depth + "]" * depth, 1)
        desc += f" (depth {depth})"
    return Blob(text.encode("utf-8", "surrogatepass"), desc)


# ---------------------------------------------------------------------------------------------
# safetensors

def st_split(data: bytes) -> tuple[dict, bytes]:
    """A safetensors file -> (header dict, data section bytes)."""
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), data[8 + n:]


def st_join(header: Any, body: bytes, *, header_text: str | None = None, length: int | None = None) -> bytes:
    """(header, data section) -> safetensors bytes (``length`` overrides the honest header length)."""
    raw = (header_text if header_text is not None else json.dumps(header, allow_nan=True)).encode("utf-8",
                                                                                                "surrogatepass")
    n = len(raw) if length is None else length
    return struct.pack("<Q", n % 2**64) + raw + body


ST_DTYPES = ("F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U64", "U32", "U16", "U8", "BOOL")


@st.composite
def edited_safetensors(draw, data: bytes) -> Blob:
    """A safetensors file whose JSON header got one structured hostile edit (dtype, shape, offsets,
    names, metadata), optionally with a lying header length."""
    header, body = st_split(data)
    names = [k for k in header if k != "__metadata__"]
    h = copy.deepcopy(header)
    op = draw(st.sampled_from(["dtype", "shape", "shape", "offsets", "offsets", "delete", "rename", "swap",
                               "metadata", "json"]))
    name = draw(st.sampled_from(names))
    ent = h[name]
    text = None
    if op == "dtype":
        ent["dtype"] = draw(st.one_of(st.sampled_from(ST_DTYPES + ("F8_E4M3", "bf16", "Q4")), HOSTILE_VALUES))
        desc = f"{name} dtype = {ent['dtype']!r:.60}"
    elif op == "shape":
        ints = st.one_of(st.sampled_from(INTERESTING_INTS + (-1, -2**63)), st.integers(-5, 5000))
        ent["shape"] = draw(st.one_of(st.lists(ints, max_size=5), HOSTILE_VALUES,
                                      st.just(list(reversed(ent["shape"]))), st.just(ent["shape"] + [1])))
        desc = f"{name} shape = {ent['shape']!r:.60}"
    elif op == "offsets":
        lo, hi = ent["data_offsets"]
        ints = st.one_of(st.sampled_from(INTERESTING_INTS + (-1, lo, hi, len(body), len(body) + 1)),
                         st.integers(-10, len(body) + 10))
        ent["data_offsets"] = draw(st.one_of(st.lists(ints, min_size=2, max_size=2), st.lists(ints, max_size=3),
                                             HOSTILE_VALUES))
        desc = f"{name} data_offsets = {ent['data_offsets']!r:.60}"
    elif op == "delete":
        del h[name]
        desc = f"delete {name}"
    elif op == "rename":
        new = draw(st.one_of(st.sampled_from(names), st.sampled_from(HOSTILE_STRINGS), st.text(max_size=20)))
        h[new] = h.pop(name)
        desc = f"rename {name} to {new!r:.40}"
    elif op == "swap" and len(names) > 1:
        other = draw(st.sampled_from(names))
        ent["data_offsets"], h[other]["data_offsets"] = h[other]["data_offsets"], ent["data_offsets"]
        desc = f"swap offsets of {name} and {other}"
    elif op == "metadata":
        h["__metadata__"] = draw(HOSTILE_VALUES)
        desc = f"__metadata__ = {h['__metadata__']!r:.60}"
    else:
        blob = draw(edited_json(h, keys=("__metadata__", "dtype", "shape", "data_offsets")))
        text, desc = blob.data.decode("utf-8", "surrogatepass"), "header JSON: " + blob.desc
    length = None
    if draw(st.integers(0, 7)) == 0:
        raw_len = len((text if text is not None else json.dumps(h, allow_nan=True)).encode("utf-8", "surrogatepass"))
        length = draw(st.sampled_from([0, 1, raw_len - 1, raw_len + 1, raw_len + len(body), 2**63, 2**64 - 1,
                                       100 * 1024 * 1024]))
        desc += f"; header length field = {length}"
    return Blob(st_join(h, body, header_text=text, length=length), desc)


# ---------------------------------------------------------------------------------------------
# GGUF: a small serialiser, so that headers can be edited field by field

_SCALAR_FMT = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q",
               12: "<d"}
_NP = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "<u1", 10: "<u8", 11: "<i8",
       12: "<f8"}


@dataclass
class GGUFTensor:
    name: str
    ne: list[int]
    type_id: int
    rel_offset: int


class GGUFImage:
    """A GGUF file as editable parts: key/values, tensor infos, alignment and the raw data section.

    :meth:`to_bytes` writes it back and records the position of every integer field of the
    header (``fields``: ``(what, position, struct format)``) for field-level edits.  (Not a dataclass:
    hypothesis would print every field of one in its reports.)
    """

    def __init__(self, version: int, kvs: list[KV], tensors: list[GGUFTensor], alignment: int, data: bytes) -> None:
        self.version, self.kvs, self.tensors, self.alignment, self.data = version, kvs, tensors, alignment, data
        self.fields: list[tuple[str, int, str]] = []

    @classmethod
    def load(cls, path: Path) -> "GGUFImage":
        g = parse(path)
        raw = Path(path).read_bytes()
        return cls(g.version, list(g.kv.values()),
                   [GGUFTensor(t.name, list(t.ne), t.type_id, t.rel_offset) for t in g.tensors], g.alignment,
                   raw[g.data_offset:])

    def copy(self) -> "GGUFImage":
        return GGUFImage(self.version, [KV(k.key, k.vtype, copy.deepcopy(k.value), k.sub_type) for k in self.kvs],
                         [GGUFTensor(t.name, list(t.ne), t.type_id, t.rel_offset) for t in self.tensors],
                         self.alignment, self.data)

    def to_bytes(self) -> bytes:
        out = io.BytesIO()
        self.fields = []

        def num(what: str, fmt: str, v: Any) -> None:
            self.fields.append((what, out.tell(), fmt))
            out.write(struct.pack(fmt, v))

        def string(what: str, s: str | bytes) -> None:
            b = s if isinstance(s, bytes) else s.encode("utf-8", "surrogatepass")
            num(f"length of {what}", "<Q", len(b))
            out.write(b)

        def value(what: str, vtype: int, v: Any, sub: int | None) -> None:
            if vtype == 8:
                string(what, v)
            elif vtype == 9:
                num(f"item type of {what}", "<I", sub)
                items = list(v) if not isinstance(v, np.ndarray) else v
                num(f"length of {what}", "<Q", len(items))
                if sub in _NP:
                    out.write(np.asarray(items).astype(_NP[sub]).tobytes())
                else:
                    for x in items:
                        value(f"item of {what}", sub, x, None)
            else:
                num(what, _SCALAR_FMT[vtype], v)

        out.write(b"GGUF")
        num("version", "<I", self.version)
        num("tensor count", "<Q", len(self.tensors))
        num("key/value count", "<Q", len(self.kvs))
        for kv in self.kvs:
            string(f"key {kv.key}", kv.key)
            num(f"type of {kv.key}", "<I", kv.vtype)
            value(kv.key, kv.vtype, kv.value, kv.sub_type)
        for t in self.tensors:
            string(f"name of {t.name}", t.name)
            num(f"n_dims of {t.name}", "<I", len(t.ne))
            for j, d in enumerate(t.ne):
                num(f"ne[{j}] of {t.name}", "<Q", d)
            num(f"type of {t.name}", "<I", t.type_id)
            num(f"offset of {t.name}", "<Q", t.rel_offset)
        pad = -out.tell() % self.alignment
        out.write(b"\0" * pad)
        return out.getvalue() + self.data

    def kv(self, key: str) -> KV | None:
        return next((k for k in self.kvs if k.key == key), None)

    def __repr__(self) -> str:
        return f"GGUFImage({len(self.kvs)} keys, {len(self.tensors)} tensors)"


def gguf_value(vtype: int):
    """A strategy for a value of GGUF value type ``vtype`` (arrays: ``(value, item type)``)."""
    ints = {0: (0, 255), 1: (-128, 127), 2: (0, 65535), 3: (-32768, 32767), 4: (0, 2**32 - 1),
            5: (-2**31, 2**31 - 1), 10: (0, 2**64 - 1), 11: (-2**63, 2**63 - 1)}
    if vtype in ints:
        lo, hi = ints[vtype]
        return st.one_of(st.sampled_from([v for v in INTERESTING_INTS if lo <= v <= hi] + [lo, hi]),
                         st.integers(lo, hi)).map(lambda v: (v, None))
    if vtype in (6, 12):
        return st.floats(allow_nan=True, allow_infinity=True, width=32 if vtype == 6 else 64).map(lambda v: (v, None))
    if vtype == 7:
        return st.booleans().map(lambda v: (v, None))
    if vtype == 8:
        return st.one_of(st.sampled_from(HOSTILE_STRINGS), st.text(max_size=20),
                         st.binary(max_size=8)).map(lambda v: (v, None))
    return st.one_of(
        st.tuples(st.lists(st.integers(0, 255), max_size=8), st.just(0)),
        st.tuples(st.lists(st.integers(-2**31, 2**31 - 1), max_size=8), st.just(5)),
        st.tuples(st.lists(st.sampled_from(HOSTILE_STRINGS), max_size=5), st.just(8)))


@st.composite
def gguf_field_edit(draw, image: GGUFImage) -> Blob:
    """The image's bytes with one header integer field (a count, length, type, dimension or offset)
    set to an interesting value."""
    data = bytearray(image.to_bytes())
    what, at, fmt = draw(st.sampled_from(image.fields))
    size = struct.calcsize(fmt)
    fmt = "<" + {1: "B", 2: "H", 4: "I", 8: "Q"}[size]  # every field as an unsigned integer of its width
    current = struct.unpack_from(fmt, data, at)[0]
    lo, hi = (0, 2 ** (8 * size) - 1)
    choices = [v for v in INTERESTING_INTS if lo <= v <= hi] + [min(hi, current + 1), max(lo, current - 1),
                                                                min(hi, len(data))]
    v = draw(st.one_of(st.sampled_from(choices), st.integers(lo, hi)))
    struct.pack_into(fmt, data, at, v)
    if bytes(data) == image.to_bytes():
        del data[-1:]
    return Blob(bytes(data), f"{what} (at byte {at}) = {v}")


# ---------------------------------------------------------------------------------------------
# bugs the fuzzers found in modules still being written by other helpers

#: Modules another helper is still writing: a bug found there is registered below (with a strict-xfail
#: reproducer in test_fuzz_regressions.py) instead of fixed here.  Readers and layouts are never listed.
IN_PROGRESS = ("cli.py", "convert.py", "pipeline.py", "format/runtime.py", "readers/tmac_file.py", "inspect_file.py",
               "verify_file.py", "proof.py", "writers/", "format/encodings/", "kernels/")


@dataclass(frozen=True)
class KnownBug:
    """A bug in an in-progress module: one of ``excs`` escaping from one of ``funcs`` of ``module`` (the
    innermost tmac_convert frame of the traceback decides)."""

    module: str
    funcs: tuple[str, ...]
    excs: tuple[str, ...]
    reproducer: str  # the strict-xfail test in test_fuzz_regressions.py that pins it down


KNOWN_BUGS: tuple[KnownBug, ...] = ()
KNOWN_SEEN: Counter = Counter()
#: TMAC_FUZZ_COLLECT=<folder>: record unexpected exceptions there (signature, count, first input) instead of
#: failing, to list every distinct failure of a run at once (a development aid; CI never sets it).
COLLECT = os.environ.get("TMAC_FUZZ_COLLECT")


def _where(e: BaseException) -> tuple[str, str] | None:
    tb, where = e.__traceback__, None
    while tb is not None:
        f = tb.tb_frame.f_code.co_filename.replace("\\", "/")
        if "/tmac_convert/" in f:
            where = (f.split("/tmac_convert/", 1)[1], tb.tb_frame.f_code.co_name)
        tb = tb.tb_next
    return where


def _match(exc: str, module: str, func: str) -> KnownBug | None:
    if not any(module.startswith(m) for m in IN_PROGRESS):
        return None
    for b in KNOWN_BUGS:
        if module == b.module and func in b.funcs and exc in b.excs:
            KNOWN_SEEN[b.reproducer] += 1
            return b
    return None


def known_bug(e: BaseException) -> KnownBug | None:
    """The registered bug ``e`` is an instance of, else None."""
    where = _where(e)
    return None if where is None else _match(type(e).__name__, *where)


def unexpected(e: BaseException, path: Path) -> str:
    """Called with a non-TmacError: a registered bug passes, collect mode records it, anything else re-raises."""
    if known_bug(e) is not None:
        return "known bug"
    if COLLECT and not isinstance(e, (AssertionError, Hang)):
        import traceback

        where = _where(e) or ("?", "?")
        sig = f"{type(e).__name__} in {where[0]}:{where[1]}"
        folder = Path(COLLECT)
        folder.mkdir(parents=True, exist_ok=True)
        log = folder / "failures.jsonl"
        seen = {json.loads(line)["sig"] for line in log.read_text().splitlines()} if log.exists() else set()
        if sig not in seen:
            dst = folder / f"input-{len(seen)}{Path(path).suffix}"
            if Path(path).is_dir():
                shutil.copytree(path, dst)
            else:
                shutil.copy2(path, dst)
            with log.open("a") as f:
                f.write(json.dumps({"sig": sig, "message": str(e)[:300], "input": str(dst),
                                    "traceback": traceback.format_exception(e)[-6:]}) + "\n")
        return "collected"
    raise e


# ---------------------------------------------------------------------------------------------
# properties

def check_read(path: Path, oracle=None, **options: Any) -> str:
    """Open ``path`` with :func:`tmac_convert.read` and stream every tensor.

    Returns ``"ok"`` or ``"error"`` (a TmacError); any other exception propagates.  A successful read
    must be self-consistent: the tensors streamed are exactly those ``tensor_infos()`` announced
    (names, order, shapes, bits, group sizes, zero points), every quantised tensor satisfies the
    intermediate form's invariants and every float tensor is a float array of its shape.  ``oracle``
    (optional) is called with each tensor for a format-specific check of its values.
    """
    try:
        with bounded():
            model = tmac_convert.read(path, **options)
            infos = model.tensor_infos()
            n = 0
            for t in model.tensors():
                assert n < len(infos), f"tensor {t.name} beyond the {len(infos)} announced"
                info = infos[n]
                n += 1
                assert t.name == info.name, (t.name, info.name)
                if isinstance(t, QuantTensor):
                    t.validate()
                    assert info.bits == t.bits and tuple(info.shape) == t.shape, (info, t.shape, t.bits)
                    assert info.group_size in (None, t.group_size), (info, t.group_size)
                    assert bool(info.zero_point) == (t.zeros is not None), (info, t.zeros is None)
                    assert bool(info.per_tensor_scale) == t.per_tensor_scale, info
                else:
                    assert isinstance(t, FloatTensor), type(t)
                    a = np.asarray(t.data)
                    assert a.dtype.kind == "f" and tuple(a.shape) == tuple(info.shape), (t.name, a.dtype, a.shape)
                if oracle is not None:
                    oracle(path, t)
            assert n == len(infos), f"{n} tensors streamed, {len(infos)} announced"
    except TmacError as e:
        assert str(e).strip()
        return "error"
    except Exception as e:  # noqa: BLE001 - only registered bugs of in-progress modules pass
        return unexpected(e, path)
    return "ok"


def check_inspect(path: Path) -> str:
    """``tmac-convert inspect`` as a library call: a description or a TmacError."""
    from tmac_convert.inspect_file import describe_file

    try:
        with bounded():
            d = describe_file(path)
        assert isinstance(d["tensors"], list) and isinstance(d["problems"], list)
        json.dumps(d, default=str)  # the --json output must be serialisable
    except TmacError as e:
        assert str(e).strip()
        return "error"
    except Exception as e:  # noqa: BLE001 - only registered bugs of in-progress modules pass
        return unexpected(e, path)
    return "ok"


def check_verify(path: Path, source: Path | None = None, verify: bool = True) -> str:
    """``tmac-convert verify`` as a library call: ``"ok"``, ``"fail"`` (problems listed) or ``"error"``."""
    from tmac_convert.verify_file import verify_file

    try:
        with bounded():
            r = verify_file(path, source, verify=verify)
            json.dumps(r.to_dict())
    except TmacError as e:
        assert str(e).strip()
        return "error"
    except Exception as e:  # noqa: BLE001 - only registered bugs of in-progress modules pass
        return unexpected(e, path)
    if not r.ok:
        assert r.failures and all(isinstance(f, str) and f for f in r.failures)
        return "fail"
    return "ok"


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """The CLI's ``main`` in this process: ``(exit code, stdout, stderr)``.

    Tracebacks of unexpected errors are switched on, so that :func:`known_bug_in_cli` can tell a
    registered bug from a new one (a clean run prints none either way).
    """
    from tmac_convert.cli import TRACEBACK_ENV, main

    out, err = io.StringIO(), io.StringIO()
    old = {k: os.environ.get(k) for k in (TRACEBACK_ENV, "COLUMNS")}
    os.environ.update({TRACEBACK_ENV: "1", "COLUMNS": "200"})
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                with bounded():
                    main(argv)
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 0
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return code, out.getvalue(), err.getvalue()


def known_bug_in_cli(err: str) -> KnownBug | None:
    """The registered bug behind a CLI's "unexpected" error (from the traceback it printed), else None."""
    import re

    frames = re.findall(r'File "[^"]*/tmac_convert/([^"]+)", line \d+, in (\w+)', err)
    exc = re.search(r"unexpected (\w+):", err)
    if not frames or exc is None:
        return None
    module, func = frames[-1]
    return _match(exc.group(1), module, func)


def assert_cli_clean(code: int, out: str, err: str, allowed: tuple[int, ...]) -> None:
    """Exit code documented, no traceback, no 'unexpected' last-resort message."""
    assert code in allowed, (code, out[-2000:], err[-2000:])
    assert "Traceback" not in err and "Traceback" not in out, err
    assert "unexpected" not in err, err
