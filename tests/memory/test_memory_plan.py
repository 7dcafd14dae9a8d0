"""memory.plan: every option compiled, the cheapest fitting one chosen, a table printed."""

import jax
import jax.numpy as jnp
import optax
import pytest

from jaxrm import memory
from tests.memory._memory_mlp import init_mlp, make_batch, mlp_loss


def test_plan_splits_the_batch_when_the_plain_step_misses():
    params = jax.tree.map(jnp.asarray, init_mlp(0, [32, 256, 8]))
    batch = tuple(map(jnp.asarray, make_batch(0, 64, 32, 8)))
    kw = dict(optimizer=optax.sgd(0.1), policies=("none",), micro_batches=(1, 4),
              quantized=(False,))
    loose = memory.plan(mlp_loss, params, batch, float("inf"), **kw)
    one, four = loose.options
    assert loose.best == one and four.total_bytes < one.total_bytes
    tight = memory.plan(mlp_loss, params, batch, (one.total_bytes + four.total_bytes) / 2, **kw)
    assert tight.best.micro_batches == 4


@pytest.mark.slow
def test_plan_picks_the_cheapest_option_that_fits():
    params = jax.tree.map(jnp.asarray, init_mlp(0, [64, 512, 512, 8]))
    batch = tuple(map(jnp.asarray, make_batch(0, 128, 64, 8)))
    kw = dict(optimizer=optax.adam(1e-3), policies=("none", "full"), micro_batches=(1, 4),
              quantized=(False, True))
    loose = memory.plan(mlp_loss, params, batch, float("inf"), **kw)
    assert len(loose.options) == 8
    by = {(o.policy, o.micro_batches, o.quantized): o for o in loose.options}
    # the plain step is the cheapest when memory is no object
    assert (loose.best.policy, loose.best.micro_batches) == ("none", 1)
    # each knob lowers memory, at a cost in FLOPs for remat
    plain = by["none", 1, False]
    # (8-bit state is stored in a quarter of the bytes, but the step's peak also holds the
    # float moments while it updates them: on a model this small that can outweigh it)
    assert by["none", 4, False].total_bytes < plain.total_bytes
    assert by["full", 1, False].flops > plain.flops
    # a budget the plain step misses: the chosen option fits and no fitting one is cheaper
    budget = (plain.total_bytes + min(o.total_bytes for o in loose.options)) / 2
    tight = memory.plan(mlp_loss, params, batch, budget, **kw)
    assert tight.best is not None and tight.best.total_bytes <= budget
    assert not by["none", 1, False].total_bytes <= budget
    # (FLOPs within 1% count as equal, and then fewer micro-batches win: k micro-batches
    # of B/k estimate a few FLOPs fewer than one batch of B)
    fitting = [o for o in tight.options if o.fits]
    assert all(o.flops >= 0.99 * tight.best.flops for o in fitting)
    ties = [o for o in fitting if o.flops <= 1.01 * tight.best.flops]
    assert tight.best.micro_batches == min(o.micro_batches for o in ties)
    table = str(tight)
    assert "<- chosen" in table and table.count("\n") == 8 + 1
    none = memory.plan(mlp_loss, params, batch, 1000, **kw)
    assert none.best is None and "no option fits" in str(none)


def test_plan_errors():
    params = init_mlp(0, [4, 4])
    batch = make_batch(0, 6, 4, 4)
    with pytest.raises(ValueError, match="does not divide"):
        memory.plan(mlp_loss, params, batch, 1e9, optimizer=optax.sgd(1.0), micro_batches=(4,))
    with pytest.raises(ValueError, match="policies"):
        memory.plan(mlp_loss, params, batch, 1e9, optimizer=optax.sgd(1.0), policies=())
    with pytest.raises(ValueError, match="sharding"):
        memory.plan(mlp_loss, params, batch, 1e9, optimizer=optax.sgd(1.0), shardings=("tp",))
    with pytest.raises(TypeError, match="loss"):
        memory.plan(None, params, batch, 1e9, optimizer=optax.sgd(1.0))


@pytest.mark.slow
def test_plan_on_a_scanned_transformer_with_remat_on_its_blocks():
    # a budget only a split or remat of the scanned blocks meets: the chosen option fits,
    # and compiling that option by hand gives the bytes the plan reported
    from tests.memory._models import ScannedLM, lm_loss

    model = ScannedLM(vocab=32, d=32, layers=4)
    tokens = jax.ShapeDtypeStruct((32, 64), jnp.int32)
    params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64), jnp.int32))

    def loss_for_policy(policy):
        m = memory.remat_modules(model, [(r"^layers$", policy)], prevent_cse=False)
        return lambda p, t: lm_loss(m.apply(p, t), t)

    kw = dict(optimizer=optax.adam(1e-3), policies=("none", "full"), micro_batches=(1, 4),
              quantized=(False,), loss_for_policy=loss_for_policy)
    loss = loss_for_policy("none")
    loose = memory.plan(loss, params, tokens, float("inf"), **kw)
    by = {(o.policy, o.micro_batches): o for o in loose.options}
    plain = by["none", 1]
    assert by["full", 1].total_bytes < plain.total_bytes  # remat inside the scan saves
    assert by["none", 4].total_bytes < plain.total_bytes
    budget = plain.total_bytes - 1
    tight = memory.plan(loss, params, tokens, budget, **kw)
    assert tight.best is not None and tight.best.total_bytes <= budget
    assert (tight.best.policy, tight.best.micro_batches) != ("none", 1)
    with pytest.raises(TypeError, match="loss_for_policy"):
        memory.plan(loss, params, tokens, budget, optimizer=optax.sgd(1.0), loss_for_policy=1)
