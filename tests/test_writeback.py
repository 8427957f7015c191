"""Background writeback: an output's bytes reach the disk while the conversion still computes.

The final fsync before the rename (tests/test_crash_safety.py) stays the durability guarantee; these
tests pin what the background syncs add: they happen every ``step`` bytes, a failing sync is reported in
the caller's thread, and stopping after a failure does not raise again.
"""

from __future__ import annotations

import os

import pytest

from tmac_convert.writers.writeback import Writeback

from .lock_trace import python_lock_entries, run_in_fresh_thread


def test_a_sync_runs_every_step_bytes_and_finish_joins(tmp_path):
    path = tmp_path / "out.bin"
    with open(path, "wb") as f:
        wb = Writeback(f.fileno(), step=1000)
        for _ in range(5):
            f.write(b"x" * 1000)
            f.flush()
            wb.wrote(1000)
        wb.finish()
        # one wake-up per step; wake-ups that arrive while a sync runs are merged into the next one
        assert 1 <= wb.syncs <= 5
    assert path.stat().st_size == 5000


def test_nothing_is_synced_below_one_step(tmp_path):
    with open(tmp_path / "out.bin", "wb") as f:
        wb = Writeback(f.fileno(), step=1 << 20)
        wb.wrote(1000)
        wb.finish()
        assert wb.syncs == 0


def test_a_failing_sync_is_raised_by_finish_and_dropped_by_stop():
    r, w = os.pipe()
    os.close(r)
    os.close(w)  # a closed descriptor: fdatasync fails with EBADF
    wb = Writeback(w, step=1)
    wb.wrote(1)
    with pytest.raises(OSError):
        wb.finish()
    wb2 = Writeback(w, step=1)
    wb2.wrote(1)
    wb2.stop()  # after a failure elsewhere: joins, raises nothing


@pytest.mark.parametrize("end", ["finish", "stop"])
def test_ending_it_takes_no_python_lock_in_the_callers_thread(tmp_path, end):
    # finish() and stop() run in the converter's thread, where Ctrl-C may strike at any bytecode
    # (tests/lock_trace.py): waking the sync thread must not go through a Python lock such as an Event's.
    def run():
        with open(tmp_path / "out.bin", "wb") as f:
            wb = Writeback(f.fileno(), step=10)
            with python_lock_entries() as entered:
                wb.wrote(100)
                getattr(wb, end)()
            return entered, wb.syncs

    entered, syncs = run_in_fresh_thread(run)
    assert entered == []
    if end == "finish":  # the sync asked for before finish() still runs
        assert syncs == 1
