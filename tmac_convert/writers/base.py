"""What every output format implements, and the registry of formats (``gguf``, ``npz``).

A writer is driven in this order by :func:`tmac_convert.convert.convert`::

    w = get_writer("gguf")(ctx)
    w.prepare()            # everything that can fail before a file exists (metadata, tokenizer)
    w.open(tmp_path)       # header, tensor infos
    w.write(entry, data)   # once per planned tensor, in plan order
    w.close()              # finish the file
    w.check_written(tmp)   # parse it back against the plan (the caller then fsyncs and renames it)
    # or w.abort() on failure
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import TmacError
from ..format.runtime import Runtime
from ..format.model import SourceModel
from ..format.encodings import TensorPlan
from .plan import ModelPlan


@dataclass
class WriteContext:
    """What a writer needs besides the tensors.

    Attributes:
        model: the opened source (metadata, config, tokenizer files).
        plan: the output plan (tensor order, encodings, tiles, kcfg).
        runtime: the target T-MAC fork (type ids, file type).
        tokenizer_pre: ``tokenizer.ggml.pre`` override (None: detect it).
        notes: decisions and warnings the writer adds for the report.
    """

    model: SourceModel
    plan: ModelPlan
    runtime: Runtime
    tokenizer_pre: str | None = None
    notes: list[str] = field(default_factory=list)


class OutputWriter:
    """Base of output formats; subclasses register with ``class X(OutputWriter, name="...", suffix=".x")``."""

    registry: ClassVar[dict[str, type["OutputWriter"]]] = {}
    name: ClassVar[str] = ""
    suffix: ClassVar[str] = ""

    def __init_subclass__(cls, name: str = "", suffix: str = "", **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if name:
            cls.name = name
            cls.suffix = suffix
            OutputWriter.registry[name] = cls

    def __init__(self, ctx: WriteContext) -> None:
        self.ctx = ctx

    def prepare(self) -> None:
        """Collect and check metadata; raise :class:`TmacError` before any file is created."""

    def overhead_bytes(self) -> int:
        """An upper estimate of the bytes written besides tensor data (for the free-space check)."""
        return 1 << 20

    def open(self, path: Path) -> None:
        raise NotImplementedError

    def write(self, entry: TensorPlan, data: np.ndarray, verification: Any = None) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        """Release file handles after a failure (the caller removes the file)."""

    def check_written(self, path: Path) -> None:
        """Parse the finished file back and compare it with the plan; raise :class:`TmacError` on any difference."""


def output_formats() -> list[str]:
    """The registered output formats (the CLI's ``--format`` choices)."""
    from . import gguf_writer, npz_writer  # noqa: F401 - register the built-in formats

    return list(OutputWriter.registry)


def get_writer(name: str) -> type[OutputWriter]:
    """The writer class registered as ``name``."""
    from . import gguf_writer, npz_writer  # noqa: F401 - register the built-in formats

    try:
        return OutputWriter.registry[name]
    except KeyError:
        raise TmacError(f"unknown output format {name!r}; formats: {', '.join(sorted(OutputWriter.registry))}",
                        rule="output format") from None
