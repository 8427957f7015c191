"""Shared test helpers."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings

GOLDEN = Path(__file__).parent / "golden"

# CI keeps property tests quick; TMAC_TEST_EXAMPLES raises the count for a longer local run.
settings.register_profile("default", max_examples=int(os.environ.get("TMAC_TEST_EXAMPLES", "40")), deadline=None)
settings.load_profile("default")


def golden_files(prefix: str) -> list[Path]:
    files = sorted(GOLDEN.glob(f"{prefix}*.npz"))
    assert files, f"no golden files {prefix}*.npz in {GOLDEN}"
    return files


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)



@contextlib.contextmanager
def layout_native(enabled: bool):
    """Run the layout engine on its native module (True) or on the numpy fallback (False)."""
    from tmac_convert.layouts import format_a

    built = format_a.native
    assert built is not None, "the native layout module was not built"
    format_a.native = built if enabled else None
    try:
        yield
    finally:
        format_a.native = built
