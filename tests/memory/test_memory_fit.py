"""fit_batch: the affine search (at most 4 compilations), its fallback, rounding, budgets."""

import functools
import math

import jax
import jax.numpy as jnp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxrm import memory
from jaxrm.memory import _fit
from jaxrm.memory._report import MemoryReport


def _fake(total):
    return MemoryReport(0, 0, total, 0, 0, total)


def fake_search(monkeypatch, memory_of):
    """fit_batch over a synthetic memory curve; returns the batch sizes it measured."""
    seen = []

    def measure(build, x, argument):
        seen.append(x)
        return _fake(memory_of(x))

    monkeypatch.setattr(_fit, "_measure", measure)
    return seen


def brute_force(memory_of, budget, start, limit, m):
    first = -(-start // m) * m
    fits = [b for b in range(first, limit + 1, m) if memory_of(b) <= budget]
    return max(fits)


@settings(max_examples=60, deadline=None)
@given(base=st.integers(0, 10**6), per=st.integers(1, 10**4), limit=st.integers(1, 5000),
       m=st.sampled_from([1, 2, 8]), start=st.integers(1, 40), frac=st.floats(0, 1.2))
def test_affine_memory_takes_at_most_four_measurements(base, per, limit, m, start, frac):
    with pytest.MonkeyPatch.context() as mp:
        curve = lambda b: base + per * b
        first = -(-start // m) * m
        if first > limit:
            return
        budget = curve(first) + frac * per * limit
        seen = fake_search(mp, curve)
        got = memory.fit_batch(None, budget, start=start, limit=limit, multiple_of=m)
        assert got == brute_force(curve, budget, start, limit, m)
        assert len(seen) == len(set(seen)) <= 4
        assert seen[0] == first  # start rounded up to the multiple


@settings(max_examples=60, deadline=None)
@given(base=st.integers(0, 10**5), per=st.integers(1, 100), power=st.sampled_from([0.5, 1.5, 2]),
       pad=st.sampled_from([1, 64, 4096]), limit=st.integers(2, 3000), frac=st.floats(0, 1))
def test_non_affine_memory_gives_the_bisection_answer(base, per, power, pad, limit, frac):
    # rounded up to allocation granules and bent: the prediction misses, the fallback is exact
    with pytest.MonkeyPatch.context() as mp:
        curve = lambda b: math.ceil((base + per * b**power) / pad) * pad
        budget = curve(1) + frac * (curve(limit) - curve(1))
        seen = fake_search(mp, curve)
        got = memory.fit_batch(None, budget, limit=limit)
        assert got == brute_force(curve, budget, 1, limit, 1)
        assert len(seen) == len(set(seen)) <= 4 + 2 * math.ceil(math.log2(limit)) + 2


def test_budget_forms(monkeypatch):
    curve = lambda b: 1000 + 10 * b
    fake_search(monkeypatch, curve)
    assert memory.fit_batch(None, float("inf"), limit=100, multiple_of=8) == 96
    # compared as given (an int total <= T + 0.9 is one <= T), never truncated below it
    assert memory.fit_batch(None, curve(37) + 0.9, limit=100) == 37
    assert memory.fit_batch(None, 1000 + 10 * 37 + 9.99, limit=100) == 37
    with pytest.raises(ValueError, match="budget_bytes"):
        memory.fit_batch(None, float("nan"))
    with pytest.raises(ValueError, match="budget_bytes"):
        memory.fit_batch(None, -5)
    with pytest.raises(TypeError, match="budget_bytes"):
        memory.fit_batch(None, True)
    with pytest.raises(TypeError, match="budget_bytes"):
        memory.fit_batch(None, "1GB")
    for kw in ({"start": 1.0}, {"limit": "8"}, {"multiple_of": 2.0}):
        with pytest.raises(TypeError, match=next(iter(kw))):
            memory.fit_batch(None, 10**9, **kw)
    for kw in ({"start": 0}, {"limit": -1}, {"multiple_of": 0}):
        with pytest.raises(ValueError, match=next(iter(kw))):
            memory.fit_batch(None, 10**9, **kw)
    with pytest.raises(ValueError, match="no multiple of multiple_of=8"):
        memory.fit_batch(None, 10**9, start=3, limit=7, multiple_of=8)
    with pytest.raises(ValueError, match="even batch size 8 needs 1080 bytes"):
        memory.fit_batch(None, 1050, start=5, multiple_of=8)


def test_progress_bar(monkeypatch, capsys):
    fake_search(monkeypatch, lambda b: 1000 + 10 * b)
    memory.fit_batch(None, 2000, limit=1000, progress=True)
    assert "fit_batch" in capsys.readouterr().err
    memory.fit_batch(None, 2000, limit=1000, progress=False)
    assert capsys.readouterr().err == ""


def test_default_budget_keeps_the_margin(monkeypatch):
    monkeypatch.setattr(_fit, "device_budget", lambda margin: int(10_000 * (1 - margin)))
    fake_search(monkeypatch, lambda b: 1000 + 10 * b)
    assert memory.fit_batch(None, limit=10**6) == int((10_000 * (1 - memory.DEFAULT_MARGIN)
                                                        - 1000) // 10)


# -- a real compiled step, compilations counted by JAX's own compile events ----------

D, HIDDEN, LAYERS = 32, 128, 4


def scanned_loss(ws, x):
    def body(h, w):
        return h + jnp.tanh(h @ w[0]) @ w[1], None

    return jnp.mean(jax.lax.scan(body, x, ws)[0] ** 2)


@functools.cache
def grad_step():
    return jax.jit(jax.grad(scanned_loss))


WS = (jax.ShapeDtypeStruct((LAYERS, D, HIDDEN), jnp.float32),
      jax.ShapeDtypeStruct((LAYERS, HIDDEN, D), jnp.float32))


def build(batch):
    return grad_step(), (WS, jax.ShapeDtypeStruct((batch, D), jnp.float32))


class CompileCounter:
    def __init__(self):
        self.count = 0
        self.active = False
        jax.monitoring.register_event_duration_secs_listener(self)

    def __call__(self, name, duration, **kwargs):
        if self.active and name == "/jax/core/compile/backend_compile_duration":
            self.count += 1


COUNTER = CompileCounter()


def test_compiled_step_fits_in_four_compilations():
    small = memory.report(*((build(8)[0],) + build(8)[1]), residuals=False).total_bytes
    budget = small * 6  # a few thousand examples
    COUNTER.count, COUNTER.active = 0, True
    try:
        got = memory.fit_batch(build, budget, start=8, multiple_of=8, limit=1 << 16)
    finally:
        COUNTER.active = False
    assert COUNTER.count <= 4, COUNTER.count
    total = lambda b: memory.report(build(b)[0], *build(b)[1], residuals=False).total_bytes
    assert got % 8 == 0 and total(got) <= budget < total(got + 8)
