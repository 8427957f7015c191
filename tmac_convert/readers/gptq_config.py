"""GPTQ quantisation config, and the v1/v2 zero-point decision.

Two conventions exist for the stored zero point: **v1** (AutoGPTQ: stored = z - 1) and **v2**
(GPTQModel's ``gptq_v2``, EfficientQAT exports: stored = z).  Labels lie (``checkpoint_format`` is
missing from AutoGPTQ configs, GPTQModel writes ``"gptq"``, EfficientQAT names itself only in
``meta.quantizer``), so the decision weighs three kinds of evidence, strongest first:

1. the user's override (``gptq_format="v1"|"v2"``);
2. the stored zeros: in a symmetric checkpoint every stored zero is ``2**(b-1) - 1`` (v1) or
   ``2**(b-1)`` (v2); a stored field of ``2**b - 1`` is impossible in v1 (z would be ``2**b``) unless
   it is AutoGPTQ's -1 defect, which fills the rest of its word with ones;
3. the labels: ``checkpoint_format``, then the quantizer name (and version) in ``meta.quantizer``.

The result says which convention was chosen and why; contradictions that no convention explains
are :class:`TmacError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import TmacError
from ..format.rules import bits_supported
from .gptq_bits import PACK_DTYPES
from .hf_common import load_json


@dataclass
class GPTQConfig:
    """The quantisation facts of a GPTQ checkpoint, as its config states them."""

    file: str
    bits: int
    group_size: int  # -1 for per channel
    sym: bool
    desc_act: bool
    checkpoint_format: str | None  # "gptq", "gptq_v2", other, or None when absent
    pack_dtype: str | None
    quantizers: list[tuple[str, str]]  # (lower-cased name, version) from meta.quantizer / quantizer
    raw: dict[str, Any] = field(default_factory=dict)

    def label(self) -> tuple[str | None, str]:
        """What the labels alone say: ``("v1"|"v2"|None, reason)``."""
        fmt = (self.checkpoint_format or "").lower()
        if fmt == "gptq_v2":
            return "v2", "checkpoint_format is 'gptq_v2'"
        names = [n for n, _ in self.quantizers]
        for n, v in self.quantizers:
            if "efficientqat" in n:
                return "v2", f"quantizer {n!r} (EfficientQAT exports GPTQ v2 zeros)"
        gptqmodel = [(n, v) for n, v in self.quantizers if "gptqmodel" in n]
        if fmt == "gptq":
            if gptqmodel:
                n, v = gptqmodel[0]
                return "v1", (f"checkpoint_format is 'gptq' (written by {n} {v or ''}; GPTQModel converts to v1 "
                              "on save)").replace("  ", " ")
            return "v1", "checkpoint_format is 'gptq'"
        if fmt:
            return None, f"checkpoint_format {self.checkpoint_format!r} is not a GPTQ zero convention"
        if gptqmodel:
            n, v = gptqmodel[0]
            return "v2", f"no checkpoint_format; quantizer {n} {v}".rstrip() + " (GPTQModel's own format is v2)"
        if any("auto_gptq" in n or "autogptq" in n for n in names):
            return "v1", "no checkpoint_format; quantizer is AutoGPTQ (v1)"
        return None, "no checkpoint_format and no known quantizer"


def _quantizers(q: dict[str, Any]) -> list[tuple[str, str]]:
    raw: list[Any] = []
    for holder in (q.get("meta") or {}, q):
        val = holder.get("quantizer") if isinstance(holder, dict) else None
        if isinstance(val, str):
            raw.append(val)
        elif isinstance(val, list):
            raw += [x for x in val if isinstance(x, str)]
    out = []
    for item in raw:
        name, _, ver = item.partition(":")
        out.append((name.strip().lower(), ver.strip()))
    return out


def find_quant_config(folder: Path, config: dict[str, Any]) -> tuple[dict[str, Any], str] | None:
    """The GPTQ quantisation config and where it came from, or None when the folder is not GPTQ.

    Looks at ``config.json`` ``quantization_config`` (``quant_method`` ``gptq``) and at
    ``quantize_config.json``; when both exist their bits and group size must agree.
    """
    found = []
    qc = config.get("quantization_config")
    if isinstance(qc, dict) and str(qc.get("quant_method", "")).lower() in ("gptq", "gptq_v2"):
        found.append((qc, str(folder / "config.json")))
    qfile = folder / "quantize_config.json"
    if qfile.is_file():
        obj = load_json(qfile)
        method = str(obj.get("quant_method", "gptq")).lower()
        if method in ("gptq", "gptq_v2"):
            found.append((obj, str(qfile)))
    if not found:
        return None
    if len(found) == 2:
        a, b = found[0][0], found[1][0]
        for key in ("bits", "group_size"):
            if key in a and key in b and a[key] != b[key]:
                raise TmacError(f"{key} is {a[key]} in config.json quantization_config but {b[key]} in "
                                "quantize_config.json", file=found[1][1], rule="consistent quantisation config")
        merged = {**b, **a}
        return merged, found[0][1]
    return found[0]


def parse_config(q: dict[str, Any], file: str) -> GPTQConfig:
    """Validate the fields the reader relies on; :class:`TmacError` names the file and the field."""
    try:
        bits = int(q["bits"])
    except (KeyError, TypeError, ValueError):
        raise TmacError("quantisation config has no integer 'bits'", file=file, rule="bits in 1..4") from None
    if not bits_supported(bits):
        raise TmacError(f"{bits}-bit GPTQ is not supported: T-MAC kernels take 1, 2, 3 or 4 bits", file=file,
                        rule="bits in 1..4")
    gs = q.get("group_size", -1)
    try:
        gs = int(gs)
    except (TypeError, ValueError):
        raise TmacError(f"group_size {gs!r} is not an integer", file=file, rule="group size") from None
    if gs == 0 or gs < -1:
        raise TmacError(f"group_size {gs} is invalid (use -1 for per channel)", file=file, rule="group size")
    fmt = q.get("checkpoint_format", q.get("format"))
    pack = q.get("pack_dtype")
    if pack is not None:
        key = str(pack).rsplit(".", 1)[-1]
        if key not in PACK_DTYPES:
            raise TmacError(f"pack_dtype {pack!r} is not one of {sorted(PACK_DTYPES)}", file=file, rule="pack_dtype")
        pack = key
    return GPTQConfig(file=file, bits=bits, group_size=gs, sym=bool(q.get("sym", True)),
                      desc_act=bool(q.get("desc_act", False)),
                      checkpoint_format=str(fmt) if fmt is not None else None, pack_dtype=pack,
                      quantizers=_quantizers(q), raw=dict(q))


@dataclass
class ZeroEvidence:
    """What the stored zero fields of one tensor say about v1 versus v2."""

    tensor: str
    values: frozenset[int]  # distinct stored field values
    max_fields: int  # fields equal to 2**b - 1
    defect_pattern: bool | None  # every all-ones field is followed by all-ones to the end of its word

    @classmethod
    def of(cls, tensor: str, stored: np.ndarray, bits: int, word_bits: int) -> "ZeroEvidence":
        """``stored``: uint8 ``[G, M0]`` zero fields as unpacked (values along M0 packed per word)."""
        maxq = (1 << bits) - 1
        is_max = stored == maxq
        n_max = int(is_max.sum())
        pattern: bool | None = None
        if n_max and word_bits % bits == 0:
            per_word = word_bits // bits
            w = is_max.reshape(stored.shape[0], -1, per_word)
            pattern = bool(np.array_equal(np.maximum.accumulate(w, axis=-1), w))
        counts = np.bincount(stored.reshape(-1), minlength=maxq + 1)  # stored is uint8: a count per value
        return cls(tensor, frozenset(int(v) for v in np.flatnonzero(counts)), n_max, pattern)


def decide_format(cfg: GPTQConfig, evidence: list[ZeroEvidence], override: str | None
                  ) -> tuple[str, str, list[str]]:
    """Choose ``"v1"`` or ``"v2"``: returns ``(choice, reason, warnings)``.

    Raises :class:`TmacError` for a checkpoint no convention explains (a symmetric config whose
    zeros are not one value, tensors that disagree, the AutoGPTQ -1 defect under v1).
    """
    bits = cfg.bits
    half, maxq = 1 << (bits - 1), (1 << bits) - 1
    label, label_why = cfg.label()
    warnings: list[str] = []

    # What the stored zeros prove.
    zero_says: str | None = None
    zero_why = ""
    if cfg.sym and evidence:
        values = frozenset().union(*(e.values for e in evidence))
        if values == {half - 1}:
            zero_says, zero_why = "v1", f"symmetric and every stored zero is {half - 1} = 2^(b-1) - 1"
        elif values == {half}:
            zero_says, zero_why = "v2", f"symmetric and every stored zero is {half} = 2^(b-1)"
        else:
            bad = next((e for e in evidence if e.values - {half - 1, half} or e.values != evidence[0].values),
                       evidence[0])
            raise TmacError(
                f"the config says sym=true, so every stored zero should be {half - 1} (v1) or {half} (v2), but "
                f"stored zeros take the values {sorted(bad.values)} here (model-wide: {sorted(values)}); the "
                "checkpoint contradicts its config", file=cfg.file, tensor=bad.tensor,
                rule="symmetric checkpoint has one zero value")
    with_max = [e for e in evidence if e.max_fields]
    if zero_says is None and with_max:
        if any(e.defect_pattern is False for e in with_max):
            e = next(e for e in with_max if e.defect_pattern is False)
            zero_says = "v2"
            zero_why = (f"stored zero fields equal 2^b - 1 = {maxq} (impossible in v1, where z = stored + 1 <= "
                        f"{maxq}) in tensor {e.tensor}")

    if override is not None:
        if override not in ("v1", "v2"):
            raise TmacError(f"gptq_format must be 'v1' or 'v2', got {override!r}", rule="gptq_format option")
        if zero_says is not None and zero_says != override:
            warnings.append(f"override gptq_format={override} contradicts the stored zeros ({zero_why})")
        if label is not None and label != override:
            warnings.append(f"override gptq_format={override} contradicts the labels ({label_why})")
        choice, reason = override, f"gptq_format={override} given by the user"
    elif zero_says is not None:
        choice, reason = zero_says, zero_why
        if label is not None and label != zero_says:
            reason += f"; this overrides the label ({label_why})"
        elif label is not None:
            reason += f"; agrees with the label ({label_why})"
    elif label is not None:
        choice, reason = label, label_why + "; the stored zeros cannot tell (asymmetric)"
    else:
        choice, reason = "v1", label_why + "; assuming AutoGPTQ's v1 (the stored zeros cannot tell)"

    if choice == "v1" and with_max:
        e = with_max[0]
        total = sum(x.max_fields for x in with_max)
        raise TmacError(
            f"{total} stored zero fields equal {maxq} = 2^b - 1 ({e.max_fields} in this tensor), impossible in v1 "
            "(z = stored + 1 would exceed the largest code). This is AutoGPTQ's v1 defect: an asymmetric zero "
            "point of 0 is stored as -1, which sets every higher bit of its int32 word and destroys the "
            "neighbouring zeros, so this checkpoint cannot be converted exactly. Re-quantise with GPTQModel "
            "(or another fixed quantiser); if this checkpoint really stores v2 zeros, pass gptq_format='v2'",
            file=cfg.file, tensor=e.tensor, rule="AutoGPTQ v1 zero -1 defect")
    return choice, reason, warnings
