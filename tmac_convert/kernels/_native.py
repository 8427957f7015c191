"""Loads the compiled LUT kernel module, or None when it was not built (the numpy reference runs then).

``TMAC_CONVERT_NO_NATIVE`` (any value) disables it, as for the layout module.
"""

from __future__ import annotations

import os

try:  # pragma: no cover - which branch runs depends on the build
    if os.environ.get("TMAC_CONVERT_NO_NATIVE"):
        raise ImportError("disabled by TMAC_CONVERT_NO_NATIVE")
    from .. import _lut_native as native
except ImportError:  # pragma: no cover
    native = None
