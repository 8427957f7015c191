"""The tool's own error types.

Every failure the tool can foresee is raised as a :class:`TmacError` (or a subclass), whose
message names the tensor, the file and the rule that was broken.  The CLI turns these into a
one-line message and an exit code; nothing else should reach a user as a traceback.
"""

from __future__ import annotations


class TmacError(Exception):
    """A bad input or an impossible request.  CLI exit code 2."""

    exit_code = 2

    def __init__(self, message: str, *, tensor: str | None = None, file: str | None = None,
                 rule: str | None = None) -> None:
        self.tensor = tensor
        self.file = file
        self.rule = rule
        where = []
        if file:
            where.append(f"file {file}")
        if tensor:
            where.append(f"tensor {tensor}")
        prefix = (", ".join(where) + ": ") if where else ""
        super().__init__(prefix + message)


class LayoutError(TmacError):
    """A shape, bit width or tile configuration the T-MAC layout does not admit."""


class VerificationError(TmacError):
    """A converted tensor does not compute what its source computed.  CLI exit code 1."""

    exit_code = 1
