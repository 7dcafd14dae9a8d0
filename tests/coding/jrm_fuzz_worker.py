"""Runs every crafted case under an address-space limit; prints one JSON line per case.

Run as a script (the test starts it in a subprocess): imports jaxrm, decodes
the valid base files once (so JAX is set up), then caps the address space at
its current size plus ``--headroom`` MiB and tries each hostile file with
``decode`` and ``report``, timing it and tracing its peak allocation.
"""

import argparse
import json
import os
import resource
import sys
import time
import tracemalloc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jrm_cases

from jaxrm import coding


def address_space() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def attempt(fn, data):
    tracemalloc.start()
    start = time.perf_counter()
    try:
        fn(data)
        outcome, message = "silent", ""
    except coding.FormatError as e:
        outcome, message = "refused", str(e)[:120]
    except MemoryError as e:
        outcome, message = "memory", repr(e)[:120]
    except BaseException as e:
        outcome, message = "wrong-exception", f"{type(e).__name__}: {e}"[:120]
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return outcome, message, seconds, peak


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
            outcome, message, seconds, peak = attempt(fn, data)
            print(json.dumps({"category": category, "name": name, "api": api, "bytes": len(data),
                              "outcome": outcome, "message": message, "seconds": seconds,
                              "peak": peak}), flush=True)


if __name__ == "__main__":
    main()
