"""The one registry of output encodings: importing this package registers every built-in one.

* :mod:`.base` — :class:`TensorPlan`, :class:`Encoding` (the registry), ``f16``/``f32``;
* :mod:`.tmac` — T-MAC ``I1..I4`` (the Format A blob, checked by the LUT kernel);
* :mod:`.stock` — llama.cpp's ``Q4_0``/``Q4_1``/``TQ1_0``/``TQ2_0`` (and ``:lossy`` twins) and
  dequantised ``F16``/``F32`` projections.
"""

from .base import (Encoding, TensorPlan, encoding_for_type, get_encoding, output_types,  # noqa: F401
                   projection_encoding)
from . import tmac  # noqa: F401 - registers "tmac" (first: the default --type)
from . import stock  # noqa: F401 - registers the stock llama.cpp types

__all__ = ["Encoding", "TensorPlan", "encoding_for_type", "get_encoding", "output_types", "projection_encoding"]
