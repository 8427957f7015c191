"""The T-MAC type-id table: each runtime (T-MAC llama.cpp fork) with its ``I1..I4`` ids and file type.

The ``gguf`` package knows 30 as BF16, 39 as MXFP4 and nothing of 36-38, while T-MAC's forks use
these numbers for ``I1..I4`` (section 3.1 of the format notes).  This is the one place those numbers
are written down; everything else (the GGUF parser, readers, writers, ``inspect``, the CLI) asks
:data:`RUNTIMES`.
"""

from __future__ import annotations

from dataclasses import dataclass

import gguf

from ..errors import TmacError

__all__ = ["Runtime", "RUNTIMES", "DEFAULT_RUNTIME", "TMAC_ONLY_TYPE_IDS", "get_runtime", "type_name",
           "gguf_type_label"]


@dataclass(frozen=True)
class Runtime:
    """A T-MAC llama.cpp fork as a target: its ``GGML_TYPE_I{bits}`` ids and its ``general.file_type``.

    ``exclusive_ids`` are the ids no stock ggml type uses (so a tensor of one of them marks a T-MAC
    file by itself); the others (30 = BF16, 39 = MXFP4) are told apart only by ``tmac.*`` metadata.
    """

    name: str
    type_ids: dict[int, int]  # bits -> ggml type id
    file_type: int
    description: str
    exclusive_ids: frozenset[int] = frozenset()

    def bits_of(self, type_id: int) -> int | None:
        """The bit width a type id stands for in this runtime, or None for a non-T-MAC type."""
        for b, t in self.type_ids.items():
            if t == type_id:
                return b
        return None


RUNTIMES: dict[str, Runtime] = {
    "tmac": Runtime("tmac", {1: 36, 2: 37, 3: 38, 4: 39}, 38,
                    "T-MAC's pinned llama.cpp fork (kaleid-liner master-rebased, Oct 2024 on): I1..I4 = 36..39, "
                    "file type 38 (INT_N)", frozenset({36, 37, 38})),
    "aug2024": Runtime("aug2024", {1: 31, 2: 30, 3: 32, 4: 33}, 32,
                       "the August 2024 fork (kaleid-liner master@70c312d): I2 = 30, I1 = 31, I3 = 32, I4 = 33, "
                       "file type 32 (IN)", frozenset({31, 32, 33})),
}
DEFAULT_RUNTIME = "tmac"

#: Type ids that only T-MAC forks use (any of them marks a GGUF as a T-MAC file).
TMAC_ONLY_TYPE_IDS: frozenset[int] = frozenset().union(*(r.exclusive_ids for r in RUNTIMES.values()))


def get_runtime(name: str) -> Runtime:
    """The :class:`Runtime` called ``name`` (``tmac`` or ``aug2024``)."""
    try:
        return RUNTIMES[name]
    except KeyError:
        raise TmacError(f"unknown runtime {name!r}; runtimes: {', '.join(RUNTIMES)}", rule="runtime name") from None


def runtimes_using(type_ids: set[int]) -> list[str]:
    """The runtimes whose exclusive ids appear in ``type_ids`` (to infer a file's numbering)."""
    return [n for n, r in RUNTIMES.items() if type_ids & r.exclusive_ids]


def type_name(type_id: int, runtime: Runtime | None) -> str:
    """A type id's name: ``I2`` for T-MAC types of ``runtime``, the ``gguf`` package's name otherwise."""
    if runtime is not None:
        b = runtime.bits_of(type_id)
        if b is not None:
            return f"I{b}"
    return gguf_type_label(type_id)


def gguf_type_label(type_id: int) -> str:
    """What the ``gguf`` package would call a type id (to show how stock tools mislabel T-MAC types)."""
    try:
        return gguf.GGMLQuantizationType(type_id).name
    except ValueError:
        return f"unknown({type_id})"
