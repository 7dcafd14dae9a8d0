"""The models of the sparse-training reproduction: what one run trains, on what, and its score.

A [Task][experiments.sparse_tasks.Task] is everything
``experiments.sparse_training`` needs to train one model with any method:
the initial parameters, the loss of one batch, the per-seed batch plan, the
held-out score and the ERK targets of its sparse leaves.

* MNIST (``lenet-300-100``, ``lenet-5``, from ``experiments.models``): SGD
  with momentum and a cosine learning rate; the score is the test error.
* ``lm``: the byte-level GPT of ``experiments.llm_compression`` (blocks under
  ``nn.scan``) on its KJV corpus, shrunk; AdamW as there; the score is the
  held-out perplexity (and bits per byte). The sparse leaves are the blocks'
  matmuls (``llm_methods.WHERE``): embeddings, position table, output head and
  norms stay dense, as usual for Transformers. Their scanned kernels are
  stacked on axis 0 (``STACKED``: the MLP's are user-named ``nn.Dense``
  modules, whose stacking is not inferred), and [jaxrm.prune.erk][] reads
  each slice off its layout as the ``(fan_in, fan_out)`` matrix it multiplies
  by, not as a 3-D tensor with head axes.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import data as mnist
from experiments import gpt, kjv, llm_compression, llm_methods, models, train
from jaxrm import prune

__all__ = ["LM", "Run", "Task", "make"]


@dataclasses.dataclass(frozen=True)
class LM:
    """The shape of the small Transformer LM (see ``experiments.gpt``)."""

    d_model: int = 128
    heads: int = 4
    layers: int = 2
    context: int = 64
    eval_windows: int = 128  # consecutive held-out windows scored


@dataclasses.dataclass(frozen=True)
class Run:
    """One model's training budget."""

    model: str  # "lenet-300-100", "lenet-5" or "lm"
    steps: int
    batch: int = 100
    lr: float = 0.05  # sgd: momentum 0.9, cosine decay to 0; adamw: llm_compression's schedule
    every: int = 100  # RigL/SET mask updates, and the gradual schedule's pruning frequency
    chunk: int = 100  # steps per compiled call (a lax.scan over them)
    # Unroll the chunk's scan fully. XLA's CPU convolutions run an order of magnitude
    # slower inside a loop body, a one-step scan included (a LeNet-5 step at batch 100:
    # 0.7-1.1 s so, 60 ms in a fully unrolled chunk of 10).
    unroll: bool = False
    optimizer: str = "sgd"  # "sgd" or "adamw"
    lm: LM | None = None
    seeds: int = 3


class Task(NamedTuple):
    """What the training loop needs of one model (see the module notes)."""

    key: tuple  # hashable: everything the compiled programs depend on
    init: Callable[[jax.Array], Any]  # key -> params
    loss: Callable[[Any, jax.Array, Any], jax.Array]  # (params, batch, consts) -> mean loss
    consts: Any  # device arrays passed to every compiled call
    batches: Callable[[int, jax.Array], jax.Array]  # (seed, key) -> (steps, ...) batch plan
    evaluate: Callable[[Any], dict]  # params -> held-out scores
    targets: Callable[[Any, float], Any]  # (params, sparsity) -> per-leaf sparsities
    where: Any = None
    stacked: Any = None


# The blocks' leaves under the unboxed nn.scan: axis 0 is the layer.
STACKED = [(r"^blocks/", 0)]


def optimizer(run: Run) -> optax.GradientTransformation:
    """The dense optimizer every method of ``run`` wraps."""
    if run.optimizer == "adamw":
        return llm_compression.optimizer(run.lr, run.steps)
    if run.optimizer != "sgd":
        raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {run.optimizer!r}")
    return optax.sgd(optax.cosine_decay_schedule(run.lr, run.steps), momentum=0.9)


def _mnist(run: Run, data_dir, quiet: bool) -> Task:
    data = train.device_data(mnist.load_mnist(data_dir, quiet=quiet))
    apply = models.apply_fn(run.model)

    def loss(p, idx, consts):
        images, labels = consts
        x = images[idx].astype(jnp.float32)[..., None] * (1.0 / 256.0)
        return optax.softmax_cross_entropy_with_integer_labels(apply(p, x), labels[idx]).mean()

    def batches(seed, k_data):
        n = data.x.shape[0]
        epochs = -(-run.steps * run.batch // n)
        order = jnp.concatenate([jax.random.permutation(jax.random.fold_in(k_data, e), n)
                                 for e in range(epochs)])[: run.steps * run.batch]
        return order.reshape(run.steps, run.batch)

    return Task(key=(run, data.x.shape), init=lambda k: models.init_params(run.model, k),
                loss=loss, consts=(data.x, data.y), batches=batches,
                evaluate=lambda p: {"error": train.error_rate(apply, p, data)},
                targets=lambda p, s: prune.erk(p, s))


def _lm(run: Run, corpus: Path | None, cache: Path) -> Task:
    if run.lm is None:
        raise ValueError(f"run {run.model!r} needs an LM shape (Run.lm)")
    text = corpus.read_bytes() if corpus is not None else kjv.text(cache)
    train_tok, test_tok, vocab = kjv.splits(text)
    shape = run.lm
    model = gpt.GPT(gpt.GPTConfig(len(vocab), shape.d_model, shape.heads, shape.layers,
                                  shape.context))
    init = jax.jit(model.init)
    eval_cfg = {"context": shape.context, "eval_windows": shape.eval_windows}

    def batches(seed, k_data):
        w = llm_compression.windows(train_tok, shape.context + 1, run.steps * run.batch,
                                    np.random.default_rng(seed))
        return jnp.asarray(w.reshape(run.steps, run.batch, shape.context + 1))

    def evaluate(p):
        ppl = llm_compression.perplexity(model, p, test_tok, eval_cfg)
        return {"ppl": ppl, "bits_per_byte": math.log2(ppl)}

    where = llm_methods.WHERE
    return Task(key=(run, len(vocab)),
                init=lambda k: init(k, jnp.zeros((1, shape.context), jnp.int32))["params"],
                loss=lambda p, tokens, consts: gpt.loss(model, p, tokens), consts=(),
                batches=batches, evaluate=evaluate,
                targets=lambda p, s: prune.erk(p, s, where=where, stacked=STACKED),
                where=where,
                stacked=STACKED)


def make(run: Run, *, data_dir=None, corpus: Path | None = None, cache: Path = kjv.CACHE,
         quiet: bool = True) -> Task:
    """The [Task][experiments.sparse_tasks.Task] of ``run``'s model.

    Args:
      run: the model and its budget.
      data_dir: MNIST IDX files (default: the cached download).
      corpus: a text file for the LM instead of the KJV.
      cache: the KJV cache directory.
      quiet: no download progress.

    Returns:
      The task.

    Raises:
      ValueError: an unknown model.
    """
    if run.model == "lm":
        return _lm(run, corpus, cache)
    if run.model in models.MODELS:
        return _mnist(run, data_dir, quiet)
    raise ValueError(f"model must be one of {[*sorted(models.MODELS), 'lm']}, got {run.model!r}")
