"""The readers' buffer pool hands a buffer out again only when nothing derived from it is alive."""

from __future__ import annotations

import numpy as np
import pytest

from tmac_convert import buffer_pool
from tmac_convert.buffer_pool import BufferPool

pytestmark = pytest.mark.skipif(not buffer_pool._EXACT_REFCOUNTS, reason="the pool only allocates on this Python")


def test_a_dropped_buffer_is_reused_for_the_same_size():
    pool = BufferPool()
    a = pool.empty((4, 8))
    addr = a.__array_interface__["data"][0]
    del a
    b = pool.empty((8, 4))
    assert b.shape == (8, 4) and b.dtype == np.uint8
    assert b.__array_interface__["data"][0] == addr and pool.reused == 1


def test_a_buffer_is_not_reused_while_the_array_or_any_view_of_it_lives():
    pool = BufferPool()
    a = pool.empty((4, 8))
    view = a[1:3]           # derived arrays refer to the pool's buffer itself
    del a
    b = pool.empty((4, 8))
    b[:] = 7
    view[:] = 1             # writing through the view must not touch b
    assert (b == 7).all() and pool.reused == 0
    del view, b
    assert pool.empty((4, 8)) is not None and pool.reused == 1


def test_other_sizes_get_fresh_buffers_and_idle_ones_beyond_the_budget_are_dropped():
    pool = BufferPool(max_bytes=100)
    a = pool.empty((60,))
    del a
    b = pool.empty((50,))   # 60 idle + 50 new > 100: the idle one is dropped
    assert pool.reused == 0 and [x.nbytes for x in pool._bufs] == [50]
    del b
    big = pool.empty((1000,))  # larger than the budget: allocated, never kept
    assert big.nbytes == 1000 and all(x.nbytes != 1000 for x in pool._bufs)
