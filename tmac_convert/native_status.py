"""Which compiled extensions this installation has: the install falls back to numpy without them.

``setup.py`` builds three optional C extensions; where compiling fails (no C compiler) the install
goes on and the numpy reference code runs instead (the same bits, slower).  This module says which
are loaded, for ``tmac-convert --version`` and the conversion summary.
"""

from __future__ import annotations

import os

#: extension -> what falls back to numpy without it
EXTENSIONS: dict[str, str] = {"_layout_native": "layout packing", "_gptq_native": "GPTQ unpacking",
                              "_lut_native": "LUT kernels"}


def loaded() -> dict[str, bool]:
    """Extension name -> whether it is built and in use (``TMAC_CONVERT_NO_NATIVE`` turns all off)."""
    from .kernels._native import native as lut
    from .layouts._native import native as layout
    from .readers.gptq_bits import _native as gptq

    return {"_layout_native": layout is not None, "_gptq_native": gptq is not None, "_lut_native": lut is not None}


def summary() -> str:
    """One line: the kernel path in use and any extension that is missing (so numpy runs instead)."""
    from .kernels import resolve_path

    have = loaded()
    missing = [n for n, ok in have.items() if not ok]
    try:
        path = resolve_path()
    except Exception:  # noqa: BLE001 - a bad TMAC_CONVERT_KERNEL_PATH is reported where it is used
        path = "?"
    kernels = "numpy reference" if path == "reference" else f"native C ({path})"
    if not missing:
        return f"kernels: {kernels}; native extensions: all built"
    why = "disabled by TMAC_CONVERT_NO_NATIVE" if os.environ.get("TMAC_CONVERT_NO_NATIVE") else \
        "not built (no C compiler at install time?)"
    slow = ", ".join(EXTENSIONS[n] for n in missing)
    return f"kernels: {kernels}; native extensions {why}: numpy fallback for {slow} (same results, slower)"


def fallback_note() -> str | None:
    """:func:`summary` when some extension is missing (the conversion summary shows it then), else None."""
    return None if all(loaded().values()) else summary()
