"""The timing harness every benchmark shares (not a benchmark itself).

* **Interleaved rounds.** `rounds` times every contender once per round,
  in turn, for several rounds in one process, so a change of machine load
  hits them all alike; each is warmed up (compiled) first.
* **Min and median.** Each contender's times are kept; tables print the
  minimum (the least disturbed run) and the median (the typical one).
* **One memory pass.** `memcpy` is ``np.copyto`` of the same bytes into
  a preallocated buffer: the cost of touching the data once, the yardstick
  for "how many memory passes" a method costs (steadier under load than an
  arithmetic pass such as ``np.abs``).
* **Conditions.** `conditions` prints ``os.getloadavg()`` and the CPU
  count; tables print the load average again at their end.
* **Fresh process.** `fresh_process` times a one-off call in a new Python
  process (compilation included) against the same call repeated there;
  `fresh_table` prints the ratios.
* **Peak memory.** `peak_extra_rss` is the peak resident memory an
  operation adds to its process (Linux: resets the high-water mark through
  ``/proc/self/clear_refs`` and reads ``VmHWM``); run it in a fresh process
  so earlier allocations do not blur it.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

import jax
import numpy as np

__all__ = [
    "RESNET18_SETUP", "Setup", "conditions", "fresh_process", "fresh_table", "load", "memcpy",
    "peak_extra_rss", "rounds", "table",
]


class Setup:
    """A contender whose untimed ``setup()`` builds the argument of a timed ``fn(arg)``."""

    def __init__(self, setup: Callable[[], object], fn: Callable[[object], object]):
        self.setup, self.fn = setup, fn


def _run(contender) -> float:
    if isinstance(contender, Setup):
        arg = contender.setup()
        start = time.perf_counter()
        jax.block_until_ready(contender.fn(arg))
    else:
        start = time.perf_counter()
        jax.block_until_ready(contender())
    return time.perf_counter() - start


def rounds(contenders: dict, n: int = 5, warmup: bool = True) -> dict[str, list[float]]:
    """Times each contender once per round, interleaved, for ``n`` rounds.

    Args:
      contenders: name -> a callable (timed whole, its result blocked on) or a
        `Setup`.
      n: rounds.
      warmup: run each once, untimed, first (compilation, caches).

    Returns:
      name -> the ``n`` wall times in seconds, in round order.
    """
    if warmup:
        for c in contenders.values():
            _run(c)
    times = {name: [] for name in contenders}
    for _ in range(n):
        for name, c in contenders.items():
            times[name].append(_run(c))
    return times


def memcpy(arrays) -> Callable[[], None]:
    """One memory pass over ``arrays``: ``np.copyto`` into preallocated buffers."""
    src = [np.asarray(a) for a in arrays]
    dst = [np.empty_like(a) for a in src]

    def copy():
        for d, s in zip(dst, src):
            np.copyto(d, s)

    return copy


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} / {five:.2f} / {fifteen:.2f} (1 / 5 / 15 min)"


def conditions(title: str) -> None:
    """Prints the benchmark's title, the machine and its load."""
    print(f"== {title}")
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}, jax {jax.__version__} "
          f"({jax.default_backend()}), {platform.machine()}, {os.cpu_count()} CPUs; {load()}")


def table(times: dict[str, list[float]], reference: str, notes: dict | None = None,
          unit: float = 1e-3) -> None:
    """Min and median of each contender and their ratios to ``reference``'s.

    Args:
      times: as returned by `rounds`.
      reference: the contender the ratio columns divide by.
      notes: name -> a short note printed last.
      unit: seconds per printed unit (``1e-3``: milliseconds).
    """
    notes = notes or {}
    label = {1e-3: "ms", 1e-6: "us", 1.0: "s"}.get(unit, f"x{unit:g} s")
    ref_min, ref_med = min(times[reference]), statistics.median(times[reference])
    width = max(len(n) for n in times)
    print(f"{'':{width}}  {'min ' + label:>10}  {'median ' + label:>12}  "
          f"{'min / ref':>9}  {'med / ref':>9}  rounds  note")
    for name, ts in times.items():
        lo, med = min(ts), statistics.median(ts)
        print(f"{name:{width}}  {lo / unit:10.2f}  {med / unit:12.2f}  {lo / ref_min:9.2f}  "
              f"{med / ref_med:9.2f}  {len(ts):6d}  {notes.get(name, '')}")
    print(f"(ref: {reference}; {load()})")


def peak_extra_rss(fn: Callable[[], object]) -> tuple[int, object]:
    """``(bytes, result)``: the peak resident memory ``fn()`` adds over the current.

    Linux only (``/proc``); returns ``-1`` bytes elsewhere.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident size
        before = _status("VmRSS")
    except OSError:
        return -1, jax.block_until_ready(fn())
    out = jax.block_until_ready(fn())
    return _status("VmHWM") - before, out


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(field)


_FRESH = r"""
import json, sys, time
import jax, numpy as np
jax.numpy.zeros(1).block_until_ready()  # the backend is up, as in any session that loaded a model
ns = {}
exec(sys.argv[1], ns)  # builds the inputs and `call`
start = time.perf_counter()
jax.block_until_ready(ns["call"]())
first = time.perf_counter() - start
steady = []
for _ in range(int(sys.argv[2])):
    start = time.perf_counter()
    jax.block_until_ready(ns["call"]())
    steady.append(time.perf_counter() - start)
print(json.dumps({"first": first, "steady": steady}))
"""


def fresh_process(setup: str, repeats: int = 5, timeout: float = 300.0) -> tuple[float, float]:
    """``(first, steady)`` seconds of ``call()`` in a new Python process.

    ``setup`` is Python source that defines ``call`` (a function of no
    arguments) and its inputs; it runs untimed after ``import jax`` and the
    backend's start. ``first`` is the one-off call (compilation included),
    ``steady`` the minimum of ``repeats`` calls after it.
    """
    import json
    import subprocess

    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    out = subprocess.run([sys.executable, "-c", _FRESH, setup, str(repeats)], env=env,
                         capture_output=True, text=True, timeout=timeout)
    if out.returncode:
        raise RuntimeError(f"the fresh process failed:\n{out.stderr[-2000:]}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    return res["first"], min(res["steady"])


def fresh_table(title: str, cases: dict[str, str], repeats: int = 5) -> dict[str, float]:
    """Prints first call / steady state of each ``name -> setup`` case; returns the ratios."""
    print(f"== {title}: a one-off call in a fresh process against its steady state; {load()}")
    ratios = {}
    width = max(len(n) for n in cases)
    for name, setup in cases.items():
        first, steady = fresh_process(setup, repeats)
        ratios[name] = first / steady
        print(f"  {name:{width}}  first {first * 1e3:8.1f} ms  steady (min of {repeats}) "
              f"{steady * 1e3:8.1f} ms  first / steady {first / steady:5.2f}x")
    print(f"  (target: first / steady <= 2x; {load()})")
    print()
    return ratios


# The kernels of a Flax ResNet-18 (HWIO convs, the final Dense) as float32 numpy
# leaves, for fresh-process setups: `tree`.
RESNET18_SETUP = """
import numpy as np
shapes = ([(7, 7, 3, 64)] + [(3, 3, 64, 64)] * 4
          + [(3, 3, 64, 128)] + [(3, 3, 128, 128)] * 3 + [(1, 1, 64, 128)]
          + [(3, 3, 128, 256)] + [(3, 3, 256, 256)] * 3 + [(1, 1, 128, 256)]
          + [(3, 3, 256, 512)] + [(3, 3, 512, 512)] * 3 + [(1, 1, 256, 512)] + [(512, 1000)])
rng = np.random.default_rng(0)
tree = {f"layer{i}": {"kernel": rng.standard_normal(s).astype(np.float32)}
        for i, s in enumerate(shapes)}
"""
