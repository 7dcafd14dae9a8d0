"""Time bounds for the hostile-input tests that hold on a loaded machine.

A bound in seconds fails when other processes take the cores, and a bound
loose enough for that proves little. Here a bound is a number of
*yardsticks*: a fixed job (a Python loop and numpy passes, about 3 ms on a
quiet core) timed in the same process right after the slow run, so load
slows both alike. A run under `FLOOR` seconds passes without more ado (far
below any bound); a slower one is repeated up to twice and its fastest run
compared with the bound: a load spike does not repeat three times, work that
grows without bound does. What the tests prove is unchanged: a hostile file
cannot make the reader spend more than a bounded, small amount of time.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np

__all__ = ["FLOOR", "run_fast", "within", "yardstick"]

FLOOR = 0.1  # seconds: anything faster passes at once
_DATA = np.ones(1 << 18)  # 2 MiB


def yardstick() -> float:
    """Seconds of the reference job (fastest of three runs)."""
    best = math.inf
    for _ in range(3):
        start = time.perf_counter()
        s = 0
        for i in range(20_000):
            s += i
        for _ in range(20):
            _DATA.sum()
        best = min(best, time.perf_counter() - start)
    return best


def _timed(fn: Callable[[], object]) -> tuple[object, BaseException | None, float]:
    start = time.perf_counter()
    try:
        out, err = fn(), None
    except Exception as e:  # the caller decides whether this exception was expected
        out, err = None, e
    return out, err, time.perf_counter() - start


def within(fn: Callable[[], object], yardsticks: float) -> tuple[object, BaseException | None,
                                                                  float, float]:
    """Runs ``fn`` and times it against ``yardsticks`` times the yardstick.

    Returns:
      ``(result, exception or None, seconds, bound)``: ``seconds`` is the
      fastest of the runs made (one when under `FLOOR`, else up to three),
      ``bound`` the time allowed (``max(FLOOR, yardsticks * yardstick())``).
    """
    out, err, best = _timed(fn)
    bound = FLOOR
    for _ in range(2):
        if best <= bound:
            break
        bound = max(FLOOR, yardsticks * yardstick())
        if best <= bound:
            break
        out, err, seconds = _timed(fn)
        best = min(best, seconds)
    return out, err, best, bound


def run_fast(fn: Callable[[], object], yardsticks: float) -> object:
    """``fn()`` (raising what it raises), asserting it stays `within` the bound."""
    out, err, seconds, bound = within(fn, yardsticks)
    assert seconds <= bound, f"took {seconds:.3f} s, over {yardsticks} yardsticks ({bound:.3f} s)"
    if err is not None:
        raise err
    return out
