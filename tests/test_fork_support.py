"""The fork build harness's own logic (no fork, no compiler needed): the kit copy that keeps rebuilds
incremental, and how the ``TMAC_FORK_SRC`` setting is read."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.fork_support import ENV_SRC, ForkUnavailable, fork_source_setting, sync_tree


def _tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def test_switching_kits_rewrites_only_the_files_that_differ(tmp_path: Path) -> None:
    old = _tree(tmp_path / "a", {"lib/kernels.cc": b"A", "lib/kcfg.ini": b"same", "include/t-mac/kernels.h": b"h",
                                 "lib/only_in_a.txt": b"x"})
    new = _tree(tmp_path / "b", {"lib/kernels.cc": b"B", "lib/kcfg.ini": b"same", "include/t-mac/kernels.h": b"h"})
    dst = tmp_path / "kit"
    assert sorted(sync_tree(old, dst)) == ["include/t-mac/kernels.h", "lib/kcfg.ini", "lib/kernels.cc",
                                           "lib/only_in_a.txt"]
    past = 1_000_000_000
    for p in dst.rglob("*"):
        if p.is_file():
            os.utime(p, (past, past))
    changed = sync_tree(new, dst)
    assert sorted(changed) == ["lib/kernels.cc", "lib/only_in_a.txt"]
    assert (dst / "lib/kernels.cc").read_bytes() == b"B" and not (dst / "lib/only_in_a.txt").exists()
    # unchanged files keep their time stamps, so the build does not recompile what includes them
    assert (dst / "lib/kcfg.ini").stat().st_mtime == past
    assert (dst / "include/t-mac/kernels.h").stat().st_mtime == past
    assert sync_tree(new, dst) == []


def test_an_unset_setting_is_a_reason_to_skip(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_SRC, raising=False)
    with pytest.raises(ForkUnavailable, match=ENV_SRC):
        fork_source_setting()


def test_a_setting_that_names_nothing_is_an_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(ENV_SRC, str(tmp_path / "missing.tar.gz"))
    monkeypatch.setenv("PATH", os.environ.get("PATH", ""))
    try:
        fork_source_setting()
    except ForkUnavailable as e:  # no clang/cmake here: the toolchain is checked first
        pytest.skip(str(e))
    except FileNotFoundError as e:
        assert "missing.tar.gz" in str(e)
    else:
        pytest.fail("a missing fork source was accepted")
