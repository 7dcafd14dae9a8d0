"""Runs every crafted case under an address-space limit; prints one JSON line per case.

Run as a script (the test starts it in a subprocess): imports jaxrm, decodes
the valid base files once (so JAX is set up), then caps the address space at
its current size plus ``--headroom`` MiB and tries each hostile file with
``decode`` and ``report``, timing it against a yardstick bound (``jrm_time``:
``YARDSTICKS``, about 1 s on a quiet core) and tracing its peak allocation.
"""

import argparse
import json
import os
import resource
import sys
import tracemalloc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jrm_cases
from jrm_time import within

from jaxrm import coding


def address_space() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


YARDSTICKS = 300


def attempt(fn, data):
    tracemalloc.start()
    try:
        _, err, seconds, bound = within(lambda: fn(data), YARDSTICKS)
    except BaseException as e:  # what `within` does not catch (KeyboardInterrupt aside)
        err, seconds, bound = e, 0.0, 0.0
    if err is None:
        outcome, message = "silent", ""
    elif isinstance(err, coding.FormatError):
        outcome, message = "refused", str(err)[:120]
    elif isinstance(err, MemoryError):
        outcome, message = "memory", repr(err)[:120]
    else:
        outcome, message = "wrong-exception", f"{type(err).__name__}: {err}"[:120]
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return outcome, message, seconds, bound, peak


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--headroom", type=int, default=1024)
    args = ap.parse_args()
    for data in jrm_cases.base_files().values():
        coding.decode(data)
        coding.report(data)
    cases = list(jrm_cases.cases())
    limit = address_space() + (args.headroom << 20)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    for category, name, data in cases:
        for api, fn in (("decode", coding.decode), ("report", coding.report)):
            outcome, message, seconds, bound, peak = attempt(fn, data)
            print(json.dumps({"category": category, "name": name, "api": api, "bytes": len(data),
                              "outcome": outcome, "message": message, "seconds": seconds,
                              "bound": bound, "peak": peak}), flush=True)


if __name__ == "__main__":
    main()
