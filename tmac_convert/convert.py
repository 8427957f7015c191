"""The library API: ``convert(source, out, ...)`` = read -> normalise -> layout -> verify -> write.

Everything that can be refused is refused before a byte is written: options against the source
(``bits``/``group_size``/``zero_point`` of an already-quantised model), the kcfg against every
quantised shape, the tokenizer, the output path (no overwrite without ``force``) and the free disk
space.  Tensors then stream through a bounded pipeline:

    reader thread --> pool of ``threads`` workers: encode (pack) + verify --> writer (caller's thread)

Results are written strictly in the reader's order, so the output is byte-identical for any thread
count, and memory stays bounded (see :mod:`tmac_convert.pipeline`).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from functools import partial
from typing import Any, Callable, Iterator

import numpy as np

from .buffer_pool import BufferPool
from .errors import TmacError, VerificationError
from .format.runtime import DEFAULT_RUNTIME, get_runtime
from .layouts import Kcfg, load_kcfg, load_preset
from .parallel import cpu_count
from .pipeline import run_pipeline
from .source_guard import refuse_source_targets
from .readers.base import SourceModel, Tensor, TensorInfo
from .format.tensor import QuantTensor
from .writers.atomic import AtomicOutputs, disk_full_as_tmac_error
from .writers.base import WriteContext, get_writer
from .format.rules import bits_supported
from .format.encodings import TensorPlan, get_encoding, projection_encoding
from .format.encodings.tmac import VERIFY_SEED  # noqa: F401 - the seed verify_file re-checks with
from .archs import architecture_for
from .archs.hparams import config_file
from .writers.plan import plan_model, plan_stock

#: Default ``max_error``: NMSE 0.1 of the weights (10 dB signal to noise).  Round-to-nearest at 3 and 4
#: bits stays under it (about 0.05 and 0.01 on Gaussian-like weights), like Q4_0/Q4_1 re-quantisation
#: (< 0.01); 2-bit and 1-bit round-to-nearest (0.25, > 1) and ternary re-quantisation of non-ternary
#: weights (0.67-0.85 on the fixtures) are far above it, and such a model no longer computes its source's
#: function.  Lossless conversions never consult it.
DEFAULT_MAX_ERROR = 0.1

#: Idle output buffers a conversion keeps for reuse (a few of each blob size are in flight).
_BLOB_POOL_BYTES = 256 << 20


@dataclass
class ProgressUpdate:
    """Sent to a ``progress`` callback after each tensor is written."""

    done: int
    total: int
    bytes_done: int
    bytes_total: int
    name: str


@dataclass
class TensorReport:
    """One written tensor: its type, sizes, tiles and verification figures."""

    name: str
    type: str  # I2, F16, F32...
    shape: tuple[int, ...]
    src_nbytes: int
    out_nbytes: int
    bm: int | None = None
    kfactor: int | None = None
    nmse: float | None = None           # int8-table NMSE (T-MAC) or the stored weights' NMSE (stock types)
    max_abs_err: float | None = None
    exact_error: float | None = None    # layout proof: float-table error / output magnitude (T-MAC)
    exact_limit: float | None = None    # its float32 rounding bound
    int8_ratio: float | None = None     # int8 error / the error the tables' rounding explains (T-MAC)
    expected_nmse: float | None = None  # the rounding model's average int8 NMSE (T-MAC)
    lossy_nmse: float | None = None     # re-quantised: NMSE of the written weights against the source's


@dataclass
class ConversionReport:
    """What :func:`convert` did (``to_dict()`` is the CLI's ``--json`` output)."""

    source: str
    source_format: str
    out: str
    format: str
    runtime: str
    kcfg_out: str | None
    kcfg_from: str  # a path, "preset:NAME" or "default tiles"
    act_group_size: int
    threads: int
    verified: bool
    max_error: float = 0.0
    seconds: float = 0.0
    tensors: list[TensorReport] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def src_nbytes(self) -> int:
        return sum(t.src_nbytes for t in self.tensors)

    @property
    def out_nbytes(self) -> int:
        return sum(t.out_nbytes for t in self.tensors)

    @property
    def f16_nbytes(self) -> int:
        """The model's size with every tensor in float16 (the reference of the compression ratio)."""
        return sum(2 * int(np.prod(t.shape)) for t in self.tensors)

    @property
    def compression(self) -> float:
        """float16 size / output size."""
        return self.f16_nbytes / max(1, self.out_nbytes)

    def by_type(self) -> dict[str, dict[str, int]]:
        """``type -> {"tensors", "src_nbytes", "out_nbytes"}``."""
        out: dict[str, dict[str, int]] = {}
        for t in self.tensors:
            d = out.setdefault(t.type, {"tensors": 0, "src_nbytes": 0, "out_nbytes": 0})
            d["tensors"] += 1
            d["src_nbytes"] += t.src_nbytes
            d["out_nbytes"] += t.out_nbytes
        return out

    @property
    def lossy(self) -> list[TensorReport]:
        """Tensors whose written weights differ from the source's beyond rounding (re-quantised)."""
        return [t for t in self.tensors if t.lossy_nmse is not None]

    @property
    def worst_lossy(self) -> TensorReport | None:
        lossy = self.lossy
        return max(lossy, key=lambda t: t.lossy_nmse) if lossy else None

    @property
    def worst(self) -> TensorReport | None:
        """The verified tensor with the largest NMSE (None when nothing was verified)."""
        v = [t for t in self.tensors if t.nmse is not None]
        return max(v, key=lambda t: t.nmse) if v else None

    def to_dict(self) -> dict[str, Any]:
        worst = self.worst
        d = {k: v for k, v in asdict(self).items() if k != "tensors"}
        d.update(src_nbytes=self.src_nbytes, out_nbytes=self.out_nbytes, f16_nbytes=self.f16_nbytes,
                 compression=round(self.compression, 4), by_type=self.by_type(),
                 worst_nmse=None if worst is None else worst.nmse,
                 worst_max_abs_err=max((t.max_abs_err for t in self.tensors if t.max_abs_err is not None),
                                       default=None),
                 worst_tensor=None if worst is None else worst.name,
                 worst_exact_error=max((t.exact_error for t in self.tensors if t.exact_error is not None),
                                       default=None),
                 lossy=bool(self.lossy),
                 worst_lossy_nmse=None if self.worst_lossy is None else self.worst_lossy.lossy_nmse,
                 worst_lossy_tensor=None if self.worst_lossy is None else self.worst_lossy.name,
                 tensors=[{**asdict(t), "shape": list(t.shape)} for t in self.tensors])
        return d


# ---------------------------------------------------------------------------------------------

def resolve_kcfg(kcfg: str | Path | Kcfg | None, preset: str | None) -> Kcfg | None:
    """The kcfg named by ``kcfg`` (a path or a parsed :class:`Kcfg`) or ``preset``; None when neither."""
    if kcfg is not None and preset is not None:
        raise TmacError("give --kcfg or --preset, not both", rule="one tile source")
    if isinstance(kcfg, Kcfg):
        return kcfg
    if kcfg is not None:
        return load_kcfg(kcfg)
    if preset is not None:
        return load_preset(preset)
    return None




def default_out(source: str | Path, fmt_suffix: str) -> Path:
    """``<source name>.tmac<suffix>`` in the current folder.

    The name is that of the resolved local path (``.`` inside a folder ``llama-2bit`` gives
    ``llama-2bit.tmac.gguf``), or the last part of a Hub id ``org/name``.
    """
    p = Path(source)
    if p.exists():
        name = p.resolve().name
    else:
        name = str(source).rstrip("/\\").replace("\\", "/").split("/")[-1]
    name = name.lstrip(".") or "model"
    for ext in (".gguf", ".npz", ".safetensors"):
        if name.endswith(ext):
            name = name[: -len(ext)]
    return Path(f"{name}.tmac{fmt_suffix}")


def kcfg_path_for(out: Path) -> Path:
    """Where the kcfg.ini of an output goes: beside it, ``<stem>.kcfg.ini``."""
    return out.with_name((out.stem if out.suffix else out.name) + ".kcfg.ini")


def check_requested(infos: list[TensorInfo], *, bits: int | None, group_size: int | None,
                    zero_point: bool | None, file: str | None) -> None:
    """Raise when a requested bits / group size / zero point disagrees with a quantised source tensor."""
    for i in infos:
        if i.bits is None:
            continue
        if bits is not None and i.bits != bits:
            raise TmacError(f"--bits {bits} was given but the source is {i.bits}-bit", tensor=i.name, file=file,
                            rule="requested bits match the source")
        if group_size is not None:
            if i.per_tensor_scale:
                raise TmacError(f"--group {group_size} was given but the source has one scale per tensor",
                                tensor=i.name, file=file, rule="requested group size matches the source")
            k = i.shape[1]
            want = k if group_size in (-1, 0) else group_size
            if (i.group_size or k) != want:
                raise TmacError(f"--group {group_size} was given but the source has group size {i.group_size}",
                                tensor=i.name, file=file, rule="requested group size matches the source")
        if zero_point is not None and bool(i.zero_point) != bool(zero_point):
            given = "--zero-point" if zero_point else "--no-zero-point"
            has = "zero points" if i.zero_point else "no zero points (symmetric)"
            raise TmacError(f"{given} was given but the source has {has}", tensor=i.name, file=file,
                            rule="requested zero point matches the source")


def _check_tensor(t: Tensor, e: TensorPlan) -> None:
    """The streamed tensor is the one planned (a reader that changed its mind is a bug to report)."""
    if e.quantized:
        if not isinstance(t, QuantTensor):
            raise TmacError("yielded a float tensor where a quantised one was announced", tensor=e.name,
                            rule="reader yields what tensor_infos() said")
        gs = t.shape[1] if t.per_tensor_scale else t.group_size
        got = (t.shape, t.bits, gs, t.zeros is not None, t.per_tensor_scale)
        want = (tuple(e.shape), e.bits, e.group_size, e.zero_point, e.per_tensor_scale)
        if got != want:
            raise TmacError(f"yielded (shape, bits, group, zero point, per-tensor) {got}, planned {want}",
                            tensor=e.name, rule="reader yields what tensor_infos() said")
        return
    shape = t.shape if isinstance(t, QuantTensor) else tuple(np.shape(t.data))
    if tuple(shape) != tuple(e.shape):
        raise TmacError(f"yielded shape {tuple(shape)}, planned {tuple(e.shape)}", tensor=e.name,
                        rule="reader yields what tensor_infos() said")


def lossy_error(t: Tensor, result: Any) -> float | None:
    """The NMSE of the written weights against the source's when the output re-quantised ``t``, else None.

    Re-quantised means: a float source quantised by round-to-nearest, an act-order layer re-quantised to
    contiguous groups (both recorded by the reader in ``t.meta``), or a stock type that cannot hold the
    source's codes (``result`` of :meth:`StockEncoding.check` with ``exact`` False).
    """
    if getattr(result, "exact", True) is False:
        return float(result.nmse)
    meta = getattr(t, "meta", None) or {}
    stats = meta.get("quant_stats") or meta.get("requantized")
    return None if stats is None else float(stats["nmse"])


def check_lossy(name: str, nmse: float | None, max_error: float, what: str) -> None:
    """Raise :class:`VerificationError` when a re-quantised tensor's error exceeds ``max_error``."""
    if nmse is not None and not nmse <= max_error:
        raise VerificationError(
            f"lossy: {what} gives NMSE {nmse:.3g} against the source's weights, above the limit {max_error:g} "
            f"(--max-error; raise it explicitly, e.g. --max-error {_round_up(nmse):g}, to accept this loss)",
            tensor=name, rule="lossy error within --max-error")


def _round_up(x: float) -> float:
    """A short number a little above ``x`` (for the message's suggestion)."""
    if not np.isfinite(x) or x <= 0:
        return x
    e = 10.0 ** np.floor(np.log10(x))
    return float(np.ceil(x / e * 1.0001) * e)


def _work(t: Tensor, e: TensorPlan, *, verify: bool, max_error: float, blobs: BufferPool | None = None
          ) -> tuple[TensorPlan, np.ndarray, Any, str | None, float | None]:
    """Encode one tensor and (``verify``) prove the bytes with its encoding's check; runs in a worker thread.
    Returns the plan entry, the bytes, the check's figures, the tensor's note for the report and, for a
    re-quantised tensor, its NMSE against the source (raises beyond ``max_error``)."""
    _check_tensor(t, e)
    enc = get_encoding(e.encoding)
    note = t.meta.get("note") if isinstance(t, QuantTensor) else None
    span = enc.passthrough(t, e)
    if span is not None:  # stored exactly as the output stores it: the writer copies it file to file
        return e, span, None, note, None
    data = enc.encode(t, e) if blobs is None else enc.encode_into(t, e, lambda n: blobs.empty((n,)))
    # a lossy encoding's error is measured even without verify: a loss is never silent
    result = enc.check(t, data, e) if verify or getattr(enc, "lossy", False) else None
    lossy = lossy_error(t, result)
    if lossy is not None:
        what = (f"re-quantising to {_type_label(e)}" if getattr(enc, "lossy", False) else
                "re-quantisation by round-to-nearest" if "quant_stats" in getattr(t, "meta", {}) else
                "re-quantising act-order groups")
        check_lossy(e.name, lossy, max_error, what)
    return e, data, result, note, lossy


def _figure(result: Any, name: str) -> float | None:
    v = getattr(result, name, None)
    return None if v is None else float(v)


def _type_label(e: TensorPlan) -> str:
    """``I{bits}`` for T-MAC tensors, the encoding's type name (``F16``, ``Q4_0``...) otherwise."""
    return get_encoding(e.encoding).type_label(e)


def convert(source: str | Path, out: str | Path | None = None, *, format: str = "gguf", bits: int | None = None,
            group_size: int | None = None, zero_point: bool | None = None, kcfg: str | Path | Kcfg | None = None,
            preset: str | None = None, runtime: str = DEFAULT_RUNTIME, threads: int | None = None,
            force: bool = False, verify: bool = True, act_group_size: int | None = None,
            tokenizer_pre: str | None = None, progress: Callable[[ProgressUpdate], None] | None = None,
            out_type: str = "tmac", allow_lossy: bool = False, max_error: float = DEFAULT_MAX_ERROR,
            **reader_options: Any) -> ConversionReport:
    """Convert a checkpoint to a T-MAC GGUF (or npz) file.

    Args:
        source: a local folder/file or a Hugging Face repo id (whatever :func:`tmac_convert.read` takes).
        out: output path; default ``<source name>.tmac.gguf`` (``.npz``) in the current folder.  A
            ``<stem>.kcfg.ini`` is written beside it when the model has quantised tensors.
        format: ``gguf`` or ``npz``.
        bits, group_size, zero_point: for an already-quantised source, checked against it (a mismatch
            is an error naming both values); for a float source, the quantisation to apply.
        kcfg, preset: the tile configuration (a kcfg.ini path or parsed :class:`Kcfg`, or a bundled
            preset name); checked against every quantised shape before anything is written.  Without
            either, :func:`tmac_convert.layouts.default_tiles` chooses and a kcfg is generated.
        runtime: ``tmac`` (T-MAC's pinned fork: ids 36-39, file type 38) or ``aug2024`` (30-33, 32).
        threads: worker threads (default: all cores); the output does not depend on it.
        force: overwrite existing outputs.
        verify: run the kernel-level check on each quantised tensor (a failure raises
            :class:`VerificationError` and leaves no output).
        act_group_size: the kernels' activation group size (default: from the kcfg, else 64; -1 = K).
        tokenizer_pre: ``tokenizer.ggml.pre`` when the pre-tokenizer cannot be recognised.
        progress: called with a :class:`ProgressUpdate` after each tensor.
        out_type: ``tmac`` (T-MAC ``I`` types), or a stock llama.cpp type for the projections (``q4_0``,
            ``q4_1``, ``tq1_0``, ``tq2_0``, ``f16``, ``f32``; see :mod:`tmac_convert.format.encodings.stock`): the
            same GGUF otherwise, without kcfg, tiles or ``tmac.*`` keys.
        allow_lossy: with a stock type, re-quantise tensors whose codes it cannot hold (else refused).
        max_error: the largest NMSE a re-quantised tensor (float source, act-order requantisation, lossy
            stock type) may have against the source's weights; beyond it the conversion fails with
            :class:`VerificationError` (:data:`DEFAULT_MAX_ERROR` unless raised explicitly).
        reader_options: passed to the reader (e.g. ``gptq_format``).

    Returns:
        A :class:`ConversionReport`.
    """
    t0 = time.perf_counter()
    rt = get_runtime(runtime)
    writer_cls = get_writer(format)
    if not (max_error >= 0):
        raise TmacError(f"--max-error must be a number >= 0, got {max_error}", rule="max error >= 0")
    if threads is not None and threads < 1:
        raise TmacError(f"threads must be at least 1, got {threads}", rule="threads >= 1")
    if bits is not None and not bits_supported(bits):
        raise TmacError(f"--bits must be 1, 2, 3 or 4, got {bits}", rule="bits in 1..4")
    if group_size is not None and group_size < -1:
        raise TmacError(f"--group must be positive (or -1 for a whole row), got {group_size}", rule="group size")
    stock = not projection_encoding(out_type).quantized  # an unknown type is refused here
    if stock:
        if format != "gguf":
            raise TmacError(f"--type {out_type} is a GGUF tensor type; --format {format} holds T-MAC blobs only",
                            rule="stock types are GGUF")
        given = [n for n, v in (("--bits", bits), ("--group", group_size), ("--zero-point", zero_point),
                                ("--kcfg", kcfg), ("--preset", preset), ("--act-group", act_group_size)) if v is not None]
        if given:
            raise TmacError(f"{', '.join(given)} set T-MAC's quantisation or tiles; --type {out_type} keeps the "
                            "source's own codes", rule="options apply to the output type")
        reader_options = {**reader_options, "quantize": False}  # float projections stay float
    elif allow_lossy:
        raise TmacError("--allow-lossy applies to a stock --type (q4_0, q4_1, tq1_0, tq2_0)",
                        rule="options apply to the output type")
    kc = resolve_kcfg(kcfg, preset)
    out_path = Path(out) if out is not None else default_out(source, writer_cls.suffix)
    if stock and out is None:  # <name>.q4_0.gguf: not a T-MAC file
        out_path = out_path.with_name(out_path.name.replace(".tmac.gguf", f".{out_type}.gguf"))

    from .readers import read

    opts = dict(reader_options)
    for k, v in (("bits", bits), ("group_size", group_size), ("zero_point", zero_point)):
        if v is not None:
            opts[k] = v
    model: SourceModel = read(source, **opts)
    infos = model.tensor_infos()
    check_requested(infos, bits=bits, group_size=group_size, zero_point=zero_point, file=str(model.path))
    extras = (architecture_for(model.config, config_file(model)).extra_tensors({i.name for i in infos})
              if model.config else [])
    all_infos = infos + [TensorInfo(t.name, tuple(t.data.shape), nbytes=t.data.nbytes) for t in extras]
    if stock:
        plan = plan_stock(all_infos, out_type, allow_lossy=allow_lossy, generated=frozenset(t.name for t in extras))
    else:
        plan = plan_model(all_infos, kcfg=kc, act_group_size=act_group_size,
                          generated=frozenset(t.name for t in extras))

    kcfg_out = kcfg_path_for(out_path) if plan.quantized else None
    refuse_source_targets([out_path] + ([kcfg_out] if kcfg_out else []), Path(model.path),
                          reads_containers=model.format == "gguf" or model.format.startswith("tmac"))
    ctx = WriteContext(model, plan, rt, tokenizer_pre=tokenizer_pre)
    writer = writer_cls(ctx)
    writer.prepare()
    kcfg_text = plan.kcfg.to_ini()
    targets = [out_path] + ([kcfg_out] if kcfg_out else [])
    nthreads = threads or cpu_count()
    report = ConversionReport(
        source=str(source), source_format=model.format, out=str(out_path), format=format,
        runtime="stock llama.cpp" if stock else rt.name,
        kcfg_out=str(kcfg_out) if kcfg_out else None,
        kcfg_from="none (stock type)" if stock else (kc.source or "given") if kc is not None else "default tiles",
        act_group_size=plan.act_group_size, threads=nthreads, verified=verify, max_error=float(max_error))

    def stream() -> Iterator[Tensor]:
        yield from model.tensors()
        yield from extras

    total = len(plan.entries)
    bytes_total = plan.total_nbytes
    done_bytes = 0
    with disk_full_as_tmac_error(out_path), \
            AtomicOutputs(targets, force=force,
                          needed_bytes=plan.total_nbytes + writer.overhead_bytes() + len(kcfg_text)) as tmp:
        writer.open(tmp[out_path])
        try:
            # output buffers come back to the pool once written: no fresh (zeroed) pages per tensor
            work = partial(_work, verify=verify, max_error=max_error, blobs=BufferPool(_BLOB_POOL_BYTES))
            tensor_notes: list[str] = []
            for n, (e, data, result, note, lossy) in enumerate(run_pipeline(stream(), plan.entries, work,
                                                                             threads=nthreads)):
                writer.write(e, data, result)
                if note:
                    tensor_notes.append(note)
                done_bytes += e.nbytes
                report.tensors.append(TensorReport(
                    e.name, _type_label(e), tuple(e.shape), e.src_nbytes, e.nbytes,
                    bm=e.tiles.bm if e.tiles else None, kfactor=e.tiles.kfactor if e.tiles else None,
                    nmse=_figure(result, "nmse"), max_abs_err=_figure(result, "max_abs_err"),
                    exact_error=_figure(result, "exact_error"), exact_limit=_figure(result, "exact_limit"),
                    int8_ratio=_figure(result, "int8_ratio"), expected_nmse=_figure(result, "expected_nmse"),
                    lossy_nmse=lossy))
                del data
                if progress is not None:
                    progress(ProgressUpdate(n + 1, total, done_bytes, bytes_total, e.name))
            writer.close()
        except BaseException:
            writer.abort()
            raise
        writer.check_written(tmp[out_path])
        if kcfg_out is not None:
            tmp[kcfg_out].write_text(kcfg_text)
    report.notes = list(model.notes) + tensor_notes + ctx.notes
    report.seconds = time.perf_counter() - t0
    return report


__all__ = ["convert", "DEFAULT_MAX_ERROR", "ConversionReport", "TensorReport", "ProgressUpdate", "check_requested",
           "resolve_kcfg", "default_out", "kcfg_path_for", "VerificationError"]
