"""The pipeline's checkpoints: orbax saves of the library's own trees, restored exactly."""

import jax
import numpy as np
import optax

from experiments.checkpoints import Checkpoints
from jaxrm import quant


def test_library_trees_round_trip_through_orbax(tmp_path):
    rng = np.random.default_rng(0)
    params = {  # a conv layer and a dense layer, as the LeNets hold them
        "conv1": {"kernel": rng.normal(size=(5, 5, 1, 4)).astype(np.float32),
                  "bias": np.zeros(4, np.float32)},
        "ip1": {"kernel": rng.normal(size=(64, 10)).astype(np.float32),
                "bias": np.zeros(10, np.float32)},
    }
    masks = {k: {"kernel": np.abs(np.asarray(v["kernel"])) > 1.0, "bias": None}
             for k, v in params.items()}
    pruned = {k: {"kernel": np.where(masks[k]["kernel"], v["kernel"], 0), "bias": v["bias"]}
              for k, v in params.items()}
    q = quant.kmeans(pruned, 3, masks=masks)
    theta, frozen = quant.partition(q)  # Codebook leaves with None halves
    opt = optax.chain(optax.add_decayed_weights(1e-4), optax.sgd(0.1, momentum=0.9))
    state = opt.init(theta)
    state = opt.update(jax.tree.map(np.ones_like, theta), state, theta)[1]  # momentum != 0
    trees = {"theta": theta, "frozen": frozen, "opt_state": state, "masks": masks, "none": None}
    ck = Checkpoints(tmp_path)
    assert not ck.has("stage")
    ck.save("stage", trees, {"epoch": 3, "loss": np.float32(0.5)})
    assert ck.has("stage")
    templates = jax.tree.map(np.zeros_like, trees)
    got, meta = ck.restore("stage", templates)
    assert meta == {"epoch": 3, "loss": 0.5}
    assert jax.tree.structure(got) == jax.tree.structure(trees)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(trees)):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert got["masks"]["ip1"]["bias"] is None
    back = quant.combine(got["theta"], got["frozen"])
    assert jax.tree.structure(back, is_leaf=quant.is_quantized) == jax.tree.structure(
        q, is_leaf=quant.is_quantized)
    ck.drop("stage")
    assert not ck.has("stage") and not (tmp_path / "stage").exists()
