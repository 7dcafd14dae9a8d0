"""The Deep Compression pipeline: dense -> prune -> quantize -> code -> decode and evaluate.

Each stage trains with the jitted epochs of :mod:`experiments.train` and uses
only the public API of ``jaxrm.prune``, ``jaxrm.quant`` and ``jaxrm.coding``.
After every epoch and at the end of every stage the state is checkpointed with
orbax, so a run that is interrupted and started again with ``resume=True``
continues where it stopped and ends with the same result (the randomness of
epoch ``e`` of stage ``s`` is ``fold_in(fold_in(key(seed), s), e)``).

The reported error and size come from ``model.jrm``: the file is written,
read back with ``jaxrm.coding.load`` alone, and the test error is measured
with the decoded parameters.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax

import jaxrm
from experiments import models, train
from experiments.checkpoints import Checkpoints
from experiments.configs import Config
from jaxrm import coding, prune, quant

__all__ = ["Interrupted", "run_seed", "summarize"]

STAGES = ("dense", "prune", "quant", "coding")


class Interrupted(RuntimeError):
    """Raised by the ``stop_after`` hook (tests of ``--resume``)."""


# ---------------------------------------------------------------------- helpers


def _progress(total: int, desc: str, quiet: bool):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is in the experiments extra; run without bars if absent
        tqdm = None
    if tqdm is None or quiet:
        return _NoBar()
    return tqdm(total=total, desc=desc, unit="epoch", leave=True, file=sys.stderr)


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, s: str) -> None:
        pass

    def close(self) -> None:
        pass


def _sgd(lr: Any, momentum: float, wd: float) -> optax.GradientTransformation:
    return optax.chain(optax.add_decayed_weights(wd), optax.sgd(lr, momentum=momentum))


def _tree_from_paths(like: Any, values: dict[str, Any], default: Any = None) -> Any:
    """A tree of ``like``'s structure holding ``values[path]`` (``default`` elsewhere)."""
    leaves = [values.get(p, default) for p, _ in jaxrm.tree.leaves_with_paths(like)]
    return jax.tree.unflatten(jax.tree.structure(like), leaves)


def _density_table(masks: Any) -> dict[str, float]:
    """Kept fraction per masked leaf and over them all (``"total"``)."""
    s = prune.summary(masks)
    return {**{r.path: r.density for r in s.rows}, "total": s.density}


def _sparsity_tree(params: Any, densities: dict[str, float]) -> Any:
    """Per-leaf sparsity pytree for ``prune.masks`` (0.0 on leaves kept dense)."""
    return _tree_from_paths(params, {p: 1.0 - d for p, d in densities.items()}, 0.0)


def _where_paths(paths: set[str]):
    return lambda path, leaf: path in paths


# ------------------------------------------------------------------ the stages


class _Run:
    """One seed of one config: holds the data, the jitted functions, checkpoints."""

    def __init__(self, cfg: Config, seed: int, data: train.Data, ckdir: Path, *,
                 resume: bool, quiet: bool, stop_after: int | None):
        self.cfg, self.seed, self.data = cfg, seed, data
        self.apply = models.apply_fn(cfg.model)
        self.quiet = quiet
        self.ck = Checkpoints(ckdir)
        ckdir.mkdir(parents=True, exist_ok=True)
        if not resume:
            for name in list(STAGES) + [f"{s}-partial" for s in STAGES]:
                self.ck.drop(name)
        self.key = jax.random.key(seed)
        self.epochs_run = 0
        self.stop_after = stop_after

    def _tick(self) -> None:
        """Counts trained epochs and raises :class:`Interrupted` for resume tests."""
        self.epochs_run += 1
        if self.stop_after is not None and self.epochs_run >= self.stop_after:
            raise Interrupted(f"stopped after {self.epochs_run} epochs (stop_after)")

    def _epoch_key(self, stage: int, epoch: int) -> jax.Array:
        return jax.random.fold_in(jax.random.fold_in(self.key, stage), epoch)

    def _train(self, stage: str, theta: Any, opt: optax.GradientTransformation, epochs: int, *,
               frozen: Any = None, masks: Any = None, teacher: Any = None,
               to_params=lambda t, f: t, project=lambda t, m: t, kd: float = 0.0,
               augment: int = 0, on_epoch=None,
               batch: int | None = None) -> tuple[Any, Any, float]:
        """Trains ``epochs`` epochs with per-epoch checkpoints.

        Returns:
          ``(theta, masks, seconds)``: the trained variables, the masks as
          ``on_epoch`` left them (``masks`` itself when it does not change
          them), and the training time summed over all runs of this stage.
        """
        sid = STAGES.index(stage)
        opt_state = opt.init(theta)
        start, elapsed = 0, 0.0
        partial = f"{stage}-partial"
        templates = {"theta": theta, "opt_state": opt_state, "masks": masks}
        if self.ck.has(partial):
            got, meta = self.ck.restore(partial, templates)
            theta, opt_state, masks = got["theta"], got["opt_state"], got["masks"]
            start, elapsed = meta["epoch"], meta["seconds"]
        epoch_fn = train.make_epoch(
            self.apply, opt, batch=batch or self.cfg.batch, to_params=to_params, project=project,
            kd=kd, temperature=self.cfg.temperature, augment=augment, scan=self.cfg.scan,
        )
        bar = _progress(epochs, f"{self.cfg.short()} s{self.seed} {stage}", self.quiet)
        bar.update(start)
        for e in range(start, epochs):
            t0 = time.perf_counter()
            if on_epoch is not None:
                theta, masks = on_epoch(e, theta, masks)
            theta, opt_state, loss = epoch_fn(
                theta, opt_state, frozen, masks, teacher, self._epoch_key(sid, e), self.data
            )
            loss = float(loss)
            elapsed += time.perf_counter() - t0
            self.ck.save(partial, {"theta": theta, "opt_state": opt_state, "masks": masks},
                         {"epoch": e + 1, "seconds": elapsed, "loss": loss})
            bar.update(1)
            bar.set_postfix_str(f"loss {loss:.4f}")
            self._tick()
        bar.close()
        return theta, masks, elapsed

    def _stage_done(self, stage: str, trees: dict, record: dict) -> None:
        self.ck.save(stage, trees, record)
        self.ck.drop(f"{stage}-partial")

    # stage 1 ------------------------------------------------------------------
    def dense(self) -> tuple[Any, dict]:
        cfg = self.cfg
        init = models.init_params(cfg.model, jax.random.fold_in(self.key, 100))
        if self.ck.has("dense"):
            got, rec = self.ck.restore("dense", {"params": init})
            return got["params"], rec
        steps = cfg.dense_epochs * (self.data.x.shape[0] // cfg.batch)
        opt = _sgd(optax.cosine_decay_schedule(cfg.dense_lr, steps), 0.9, cfg.weight_decay)
        params, _, secs = self._train("dense", init, opt, cfg.dense_epochs, augment=cfg.augment)
        rec = {"error": train.error_rate(self.apply, params, self.data), "seconds": secs,
               "epochs": cfg.dense_epochs,
               "params": int(jaxrm.tree.count(params, jaxrm.tree.arrays))}
        self._stage_done("dense", {"params": params}, rec)
        return params, rec

    # stage 2 ------------------------------------------------------------------
    def prune(self, dense: Any) -> tuple[Any, Any, dict]:
        cfg = self.cfg
        targets = dict(cfg.densities)
        where = _where_paths(set(targets))
        template_masks = prune.masks(prune.magnitude(dense), _sparsity_tree(dense, targets),
                                     where=where)
        if self.ck.has("prune"):
            got, rec = self.ck.restore("prune", {"params": dense, "masks": template_masks})
            return got["params"], got["masks"], rec

        def masks_at(params, density_of):
            sp = _sparsity_tree(params, {p: density_of(p, d) for p, d in targets.items()})
            return prune.masks(prune.magnitude(params), sp, where=where)

        if cfg.prune_mode == "iterative":
            # Han et al. (2015): prune to density_r, retrain, repeat.
            rounds = cfg.prune_rounds
            total = rounds * cfg.prune_epochs + cfg.prune_final_epochs
            boundaries = [r * cfg.prune_epochs for r in range(rounds)]

            def round_of(e):
                return min(sum(e >= b for b in boundaries), rounds)

            def on_epoch(e, theta, masks):
                if e in boundaries:
                    r = round_of(e)
                    masks = masks_at(theta, lambda p, d: d ** (r / rounds))
                    theta = prune.apply(theta, masks)
                return theta, masks
        elif cfg.prune_mode == "polynomial":
            # Zhu & Gupta (2017): the sparsity rises as a cubic over the ramp.
            ramp = cfg.prune_epochs
            total = ramp + cfg.prune_final_epochs
            schedules = {p: prune.polynomial(1.0 - d, 0, ramp - 1) for p, d in targets.items()}

            def on_epoch(e, theta, masks):
                if e < ramp:
                    masks = masks_at(theta, lambda p, d: 1.0 - float(schedules[p](e)))
                    theta = prune.apply(theta, masks)
                return theta, masks
        else:
            raise ValueError(
                f"prune_mode must be 'iterative' or 'polynomial', got {cfg.prune_mode!r}"
            )

        # The paper's retraining rate (1/10 of the original), held while the
        # masks change, then decayed to 0 (cosine) over the final retraining.
        spe = self.data.x.shape[0] // cfg.batch
        final_begin = (total - cfg.prune_final_epochs) * spe
        lr = optax.join_schedules(
            [optax.constant_schedule(cfg.prune_lr),
             optax.cosine_decay_schedule(cfg.prune_lr, max(cfg.prune_final_epochs * spe, 1))],
            [final_begin],
        )
        opt = _sgd(lr, 0.9, cfg.weight_decay)
        params, masks, secs = self._train(
            "prune", dense, opt, total, masks=template_masks, teacher=dense if cfg.kd else None,
            project=prune.apply, kd=cfg.kd, augment=cfg.augment, on_epoch=on_epoch,
        )
        params = prune.apply(params, masks)
        rec = {"error": train.error_rate(self.apply, params, self.data), "seconds": secs,
               "epochs": total, "mode": cfg.prune_mode, "density": _density_table(masks)}
        self._stage_done("prune", {"params": params, "masks": masks}, rec)
        return params, masks, rec

    # stage 3 ------------------------------------------------------------------
    def quant(self, pruned: Any, masks: Any, teacher: Any) -> tuple[Any, dict]:
        cfg = self.cfg
        bits = dict(cfg.bits)
        t0 = time.perf_counter()
        bits_tree = _tree_from_paths(pruned, bits)
        q0 = quant.kmeans(pruned, bits_tree, masks=masks, init="linear",
                          where=_where_paths(set(bits)))
        kmeans_s = time.perf_counter() - t0
        theta0, frozen = quant.partition(q0)
        if self.ck.has("quant"):
            got, rec = self.ck.restore("quant", {"theta": theta0})
            return quant.combine(got["theta"], frozen), rec
        err0 = train.error_rate(self.apply, quant.dequantize(q0), self.data)
        opt = optax.sgd(cfg.quant_lr, momentum=0.9)
        theta, _, secs = self._train(
            "quant", theta0, opt, cfg.quant_epochs, frozen=frozen,
            teacher=teacher if cfg.kd else None,
            to_params=lambda t, f: quant.dequantize(quant.combine(t, f)),
            kd=cfg.kd, augment=cfg.augment, batch=cfg.quant_batch,
        )
        q = quant.combine(theta, frozen)
        rec = {"error": train.error_rate(self.apply, quant.dequantize(q), self.data),
               "error_before_finetune": err0, "seconds": secs + kmeans_s,
               "kmeans_seconds": kmeans_s, "epochs": cfg.quant_epochs, "bits": bits}
        self._stage_done("quant", {"theta": theta}, rec)
        return q, rec

    # stages 4 and 5 -------------------------------------------------------------
    def code(self, q: Any, path: Path) -> dict:
        cfg = self.cfg
        t0 = time.perf_counter()
        nbytes = coding.save(path, q, entropy=cfg.entropy, index_bits=cfg.index_bits)
        code_s = time.perf_counter() - t0
        # Stage 5: everything below comes from the file alone.
        t0 = time.perf_counter()
        decoded = coding.load(path)
        err = train.error_rate(self.apply, decoded, self.data)
        decode_s = time.perf_counter() - t0
        expected = quant.dequantize(q)
        exact = all(
            np.array_equal(np.asarray(a), np.asarray(b))
            for a, b in zip(jax.tree.leaves(decoded), jax.tree.leaves(expected))
        ) and jax.tree.structure(decoded) == jax.tree.structure(expected)
        data = path.read_bytes()
        dense_bytes = 4 * jaxrm.tree.count(decoded, jaxrm.tree.arrays)
        rep = coding.report(data)
        return {
            "error": err,
            "bytes": int(nbytes),
            "dense_bytes": int(dense_bytes),
            "ratio": dense_bytes / nbytes,
            "sha256": hashlib.sha256(data).hexdigest(),
            "decoded_equals_dequantized": bool(exact),
            "entropy": cfg.entropy,
            "index_bits": cfg.index_bits,
            "seconds": code_s,
            "decode_eval_seconds": decode_s,
            "report": [dataclasses.asdict(r) for r in rep.rows] + [dataclasses.asdict(rep.total)],
            "report_markdown": rep.to_markdown(),
        }


def run_seed(cfg: Config, seed: int, data: train.Data, out: Path, *, resume: bool = False,
             quiet: bool = False, stop_after: int | None = None, jrm_name: str = "model.jrm",
             keep: dict | None = None) -> dict:
    """Runs the four stages and the file evaluation for one seed.

    Args:
      cfg: the configuration.
      seed: the random seed (initialization and data order).
      data: MNIST on the device (:func:`experiments.train.device_data`).
      out: the results directory; checkpoints go to ``out/ckpt/seed-<seed>``.
      resume: continue from the checkpoints instead of starting over.
      quiet: no progress bars.
      stop_after: raise :class:`Interrupted` after this many trained epochs
        (to test ``resume``).
      jrm_name: the name of the compressed file in ``out``.
      keep: if a dict, receives the intermediate trees (for plots and sweeps).

    Returns:
      The per-stage record (errors, densities, bits, bytes, seconds).
    """
    out.mkdir(parents=True, exist_ok=True)
    run = _Run(cfg, seed, data, out / "ckpt" / f"seed-{seed}", resume=resume, quiet=quiet,
               stop_after=stop_after)
    dense, r_dense = run.dense()
    pruned, masks, r_prune = run.prune(dense)
    q, r_quant = run.quant(pruned, masks, dense)
    r_code = run.code(q, out / jrm_name)
    if keep is not None:
        keep.update(dense=dense, pruned=pruned, masks=masks, quantized=q)
    return {
        "seed": seed,
        "file": jrm_name,
        "dense": r_dense,
        "prune": r_prune,
        "quant": r_quant,
        "coding": r_code,
        "error": r_code["error"],
        "ratio": r_code["ratio"],
        "bytes": r_code["bytes"],
    }


def summarize(runs: list[dict]) -> dict:
    """Mean and (sample) standard deviation of the headline numbers over seeds."""
    def stats(xs):
        xs = [float(x) for x in xs]
        mean = sum(xs) / len(xs)
        std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
        return {"mean": mean, "std": std, "values": xs}

    return {
        "seeds": [r["seed"] for r in runs],
        "error": stats([r["error"] for r in runs]),
        "dense_error": stats([r["dense"]["error"] for r in runs]),
        "ratio": stats([r["ratio"] for r in runs]),
        "bytes": stats([r["bytes"] for r in runs]),
    }
