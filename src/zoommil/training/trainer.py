"""The one training loop every model shares, so that the benchmark compares models, not loops.

One bag per step, Adam, ReduceLROnPlateau on the validation loss, class-balanced sampling with
a seeded generator, cross-entropy (or the model's own ``training_loss``), and the epoch with the
best validation loss or weighted F1 kept (optionally stopping once ``early_stopping`` epochs
bring no better one). On CPU a run is bit-for-bit repeatable for a seed and a thread count
(default 1 thread: results then do not depend on the machine's core count, and Snakemake can
run one training per core).
"""

from __future__ import annotations

import copy
import csv
import io
import logging
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import WeightedRandomSampler
from tqdm import tqdm

from zoommil import __version__
from zoommil.device import resolve_device
from zoommil.environment import environment
from zoommil.errors import ZoomMILError
from zoommil.io.atomic import write_text_atomic
from zoommil.io.jsonio import write_json
from zoommil.io.sheet import read_sheet
from zoommil.option_values import check_zoom_steps
from zoommil.recipe import arch_mags, encoder_provenance
from zoommil.training import modeling
from zoommil.training.checkpoint import save_checkpoint
from zoommil.training.config import MethodSpec, TrainConfig, apply_overrides, method_label
from zoommil.training.data import (
    Bag,
    BagStore,
    check_one_encoder,
    check_same_dim,
    drop_empty,
    read_exclusions,
    resolve_classes,
    shared_attrs,
    split_records,
)
from zoommil.training.metrics import classification_metrics
from zoommil.training.normalize import FeatureNorm, fit_feature_norm

log = logging.getLogger(__name__)

LOG_COLUMNS = (
    "epoch",
    "train_loss",
    "val_loss",
    "val_accuracy",
    "val_weighted_f1",
    "lr",
    "seconds",
)


@contextmanager
def deterministic(
    seed: int, threads: int | None, device: torch.device | None = None
) -> Iterator[None]:
    """Seed every generator, set the thread count and, on CUDA, ask torch for deterministic
    kernels (warn where none exist); torch's global settings are restored afterwards, so a
    caller in the same process (a test session, a notebook) is not left with 1 thread.

    On CPU the kernels used here are deterministic for a given thread count already, and
    ``torch.use_deterministic_algorithms`` imports ``torch._inductor`` (about 2 s of CPU in
    every training process, 45 of them in the demo), so it is called for CUDA only.
    """
    cuda = device is not None and device.type == "cuda"
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.get_num_threads(),
        torch.backends.cudnn.benchmark,
    )
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if cuda:
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if cuda:
            torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.set_num_threads(saved[2])
        torch.backends.cudnn.benchmark = saved[3]


def bag_inputs(bag: Bag, device: torch.device) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The model inputs of a bag on ``device``."""
    return [f.to(device) for f in bag.feats], [c.to(device) for c in bag.coords]


def _on_bag(store: BagStore, i: int, call: Callable[..., Any], *args: Any) -> Any:
    """``call(*args)`` on bag ``i``; a model's error about the bag (empty, wrong dimension, rows
    that break ZoomMIL's descendant layout) names its slide and feature file, which the models
    never see."""
    try:
        return call(*args)
    except ZoomMILError as error:
        record = store.records[i]
        raise ZoomMILError(f"{record.slide_id} ({record.path}): {error}") from error


def _check_logits(logits: torch.Tensor, n_classes: int, slide_id: str) -> torch.Tensor:
    if logits.shape != (1, n_classes):
        raise ZoomMILError(
            f"{slide_id}: model returned logits of shape {tuple(logits.shape)}, "
            f"expected (1, {n_classes})"
        )
    return logits


def predict_store(
    model: nn.Module, store: BagStore, n_classes: int, device: torch.device, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities [n, C] and cross-entropy losses [n] of every bag, in eval mode.

    The global RNG is forked and seeded, so a model with randomness at inference gives the
    same answer here, in `zoommil evaluate` and between epochs, without disturbing training.
    """
    model.eval()
    probs = np.zeros((len(store), n_classes), dtype=np.float64)
    losses = np.zeros(len(store), dtype=np.float64)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(seed)
        for i, bag in store.iterate(range(len(store))):
            feats, coords = bag_inputs(bag, device)
            logits = _on_bag(store, i, model, feats, coords)
            logits = _check_logits(logits, n_classes, bag.slide_id).float()
            target = torch.tensor([bag.label], device=device)
            losses[i] = F.cross_entropy(logits, target).item()
            probs[i] = torch.softmax(logits, dim=1)[0].cpu().numpy()
    return probs, losses


def split_report(
    store: BagStore, probs: np.ndarray, losses: np.ndarray, classes: Sequence[str]
) -> dict[str, Any]:
    """Metrics of a split plus one prediction per slide (what the tables and figures need)."""
    labels = np.asarray(store.labels)
    report = {"n_slides": len(store), "loss": float(losses.mean())}
    names = [record.slide_id for record in store.records]
    report.update(classification_metrics(labels, probs, classes, names))
    report["predictions"] = [
        {
            "slide_id": record.slide_id,
            "label": classes[record.label],
            "pred": classes[int(p.argmax())],
            "probs": {name: float(p[c]) for c, name in enumerate(classes)},
            "loss": float(loss),
        }
        for record, p, loss in zip(store.records, probs, losses, strict=True)
    ]
    return report


def balanced_sampler(labels: Sequence[int], seed: int) -> WeightedRandomSampler:
    """Draw len(labels) bags per epoch, each class equally likely, from a seeded generator."""
    labels = np.asarray(labels)
    counts = np.bincount(labels)
    weights = torch.as_tensor(1.0 / counts[labels], dtype=torch.double)
    generator = torch.Generator().manual_seed(seed)
    return WeightedRandomSampler(weights, len(labels), replacement=True, generator=generator)


def untrained_classes(classes: Sequence[str], train_labels: Sequence[int]) -> list[str]:
    """The classes without a slide in ``train_labels``: the model never sees them, so it can
    hardly predict them, and its metrics would not say why (metrics.json, the checkpoint and
    the evaluation JSON record them; the tables note them). Also asked of the val labels."""
    seen = set(int(label) for label in train_labels)
    return [name for c, name in enumerate(classes) if c not in seen]


def warn_if_k_keeps_all(
    model: nn.Module, stores: Mapping[str, BagStore], mags: Sequence[float]
) -> None:
    """Say how many slides have no more patches at the lowest magnification than ZoomMIL's
    first step keeps: it keeps all of them there, so that step does not zoom (BRIGHT's
    K = 12 at 1.25x against a biopsy's handful of 1.25x patches)."""
    kept = model._n_select(0)  # k, or 4k for the random_4k ablation
    records = [record for store in stores.values() for record in store.records]
    few = [r.slide_id for r in records if r.patches and r.patches[0] <= kept]
    if few:
        k = model.ks[0]
        chosen = f"k = {k}" if kept == k else f"4k = {kept} with k = {k}"
        log.warning(
            "%d of %d slides have at most %d patches at %gx, as many as ZoomMIL's first step "
            "keeps (%s), so it keeps them all (e.g. %s); a smaller first k zooms on them",
            len(few), len(records), kept, min(mags), chosen, ", ".join(few[:3]),
        )  # fmt: skip


def train_epoch(
    model: nn.Module,
    store: BagStore,
    order: Sequence[int],
    optimizer: torch.optim.Optimizer,
    n_classes: int,
    device: torch.device,
) -> float:
    """One pass over the sampled bags, one optimiser step per bag; returns the mean loss."""
    model.train()
    total = 0.0
    use_own_loss = callable(getattr(model, "training_loss", None))
    for i, bag in store.iterate(order):
        feats, coords = bag_inputs(bag, device)
        target = torch.tensor([bag.label], device=device)
        optimizer.zero_grad(set_to_none=True)
        if use_own_loss:
            logits, loss = _on_bag(store, i, model.training_loss, feats, coords, target)
        else:
            logits = _on_bag(store, i, model, feats, coords)
            loss = F.cross_entropy(_check_logits(logits, n_classes, bag.slide_id), target)
        if not torch.isfinite(loss):
            raise ZoomMILError(f"training diverged: loss is {loss.item()} on {bag.slide_id}")
        loss.backward()
        optimizer.step()
        total += loss.item()
    return total / max(len(order), 1)


def _better(selection: str, report: dict[str, float], best: dict[str, float] | None) -> bool:
    """Strict improvement, so a tie keeps the earlier epoch; ties in weighted F1 go to the
    lower validation loss (config/README.md, ``train.selection``)."""
    if best is None:
        return True
    if selection == "val_loss":
        return report["loss"] < best["loss"]
    if report["weighted_f1"] != best["weighted_f1"]:
        return report["weighted_f1"] > best["weighted_f1"]
    return report["loss"] < best["loss"]


def should_stop(epoch: int, best_epoch: int, patience: int | None, n_epochs: int) -> bool:
    """Early stopping: ``patience`` epochs have passed without a better validation result and
    epochs remain (``None``/0: never)."""
    return bool(patience) and epoch - best_epoch >= patience and epoch < n_epochs


def replay_early_stopping(
    log_rows: Sequence[dict[str, Any]], patience: int | None, selection: str = "val_loss"
) -> tuple[int, int]:
    """(epochs run, kept epoch) had a run with these `log.csv` rows stopped early, by the rule
    the loop applies: what `benchmarks/early_stopping.py` replays on full-length runs."""
    best: dict[str, float] | None = None
    best_epoch = 0
    for i, row in enumerate(log_rows, 1):
        report = {"loss": float(row["val_loss"]), "weighted_f1": float(row["val_weighted_f1"])}
        if _better(selection, report, best):
            best, best_epoch = report, i
        if should_stop(i, best_epoch, patience, len(log_rows)):
            return i, best_epoch
    return len(log_rows), best_epoch


def _write_log(path: Path, rows: list[dict[str, Any]]) -> None:
    """log.csv after every epoch, atomically: an interrupted run leaves the last whole log,
    never a cut one (as every other output)."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=LOG_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, text.getvalue())


def load_splits(
    config: TrainConfig, arch: str, splits: Sequence[str]
) -> tuple[list[str], list[float], dict[str, BagStore], list[dict[str, str]], int]:
    """Classes, model magnifications, one BagStore per split, skipped slides and in_dim."""
    sheet = read_sheet(config.sheet)
    excluded = read_exclusions(config.exclude)
    classes = resolve_classes(sheet, config.classes, str(config.sheet))
    mags = modeling.model_mags(arch, config.mags)
    records, skipped, dims, total = {}, [], {}, 0
    for split in splits:
        kept, skip = split_records(sheet, split, config.features_dir, classes, excluded)
        kept, empty, dim, size = drop_empty(kept, mags)
        skipped += [{**s, "split": split} for s in skip + empty]
        records[split] = kept
        if kept:
            dims.setdefault(dim, kept[0].path)
            check_same_dim(dims)
        total += size
    check_one_encoder([r.path for kept in records.values() for r in kept])
    in_memory = config.cache == "memory" or (
        config.cache == "auto" and total <= config.cache_max_gb * 2**30
    )
    stores = {s: BagStore(r, mags, in_memory) for s, r in records.items()}
    return classes, mags, stores, skipped, (next(iter(dims)) if dims else 0)


def train(
    config: TrainConfig,
    method: MethodSpec,
    seed: int,
    out_dir: str | Path,
    device: str = "auto",
    threads: int | None = 1,
    epochs: int | None = None,
    progress: bool = True,
    stale: Sequence[Path] = (),
    need_test: bool = False,
) -> dict[str, Any]:
    """Train ``method`` with ``seed``; writes checkpoint.pt, log.csv and metrics.json.

    ``stale``: an earlier run's files to remove once the data has loaded, before the first
    epoch writes log.csv (a killed run must not leave its log beside an older checkpoint and
    look finished; removing them before the sheet and features were read lost a finished
    run to a typo in --sheet). ``need_test`` (`zoommil train --eval-out`): no usable test
    slide is an error once the data has loaded, not after the last epoch. Returns the content
    of metrics.json.
    """
    dev = resolve_device(device)
    with deterministic(seed, threads, dev):
        return _train(config, method, seed, Path(out_dir), dev, epochs, progress, stale, need_test)


@dataclass
class _Run:
    """What one training run works on: the data, the model and its optimiser."""

    cfg: TrainConfig
    classes: list[str]
    mags: list[float]
    stores: dict[str, BagStore]
    skipped: list[dict[str, str]]
    in_dim: int
    norm: FeatureNorm | None
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau
    sampler: WeightedRandomSampler


def _prepare(
    cfg: TrainConfig, method: MethodSpec, seed: int, dev: torch.device, need_test: bool = False
) -> _Run:
    """Bags of every split (standardised when configured), then the seeded model."""
    classes, mags, stores, skipped, in_dim = load_splits(cfg, method.arch, ("train", "val", "test"))
    for split in ("train", "val", "test") if need_test else ("train", "val"):
        if len(stores[split]) == 0:
            raise ZoomMILError(f"{cfg.sheet}: no usable slides in the '{split}' split")
    if len(stores["test"]) == 0:
        log.warning("%s: no usable slides in the 'test' split; test metrics are null", cfg.sheet)
    if untrained := untrained_classes(classes, stores["train"].labels):
        log.warning(
            "%s: no usable training slide of class(es) %s: the model cannot learn them "
            "(metrics.json: untrained_classes)", cfg.sheet, ", ".join(untrained),
        )  # fmt: skip
    if unvalidated := untrained_classes(classes, stores["val"].labels):
        log.warning(
            "%s: no usable val slide of class(es) %s: model selection (%s) cannot see how "
            "the model does on them", cfg.sheet, ", ".join(unvalidated), cfg.selection,
        )  # fmt: skip
    norm = None
    if cfg.feature_norm == "standardize":
        norm = fit_feature_norm(f for bag in stores["train"] for f in bag.feats)
        for store in stores.values():
            store.set_norm(norm)
    for store in stores.values():
        store.to_device(dev)
    torch.manual_seed(seed)
    model = modeling.make_model(
        method.arch, len(classes), in_dim, cfg.mags, dict(method.kwargs), run_seed=seed
    )
    model = model.to(dev)
    if method.arch == "zoommil":
        warn_if_k_keeps_all(model, stores, mags)
    # fused: one kernel for all parameters instead of ~10 ops per tensor; with one small bag
    # per step the per-op overhead of the default loop was ~half of a ZoomMIL step on CPU.
    optimizer = torch.optim.Adam(
        model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True
    )
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=cfg.lr_factor, patience=cfg.lr_patience
    )
    sampler = balanced_sampler(stores["train"].labels, seed)
    return _Run(cfg, classes, mags, stores, skipped, in_dim, norm, model, optimizer, scheduler,
                sampler)  # fmt: skip


def _fit(
    run: _Run, name: str, n_epochs: int, seed: int, dev: torch.device, log_csv: Path,
    progress: bool,
) -> tuple[dict[str, torch.Tensor], int, int]:  # fmt: skip
    """The epoch loop: train, validate, step the schedule, keep the best epoch's weights.

    Returns the best weights, their epoch and the number of epochs run (fewer than
    ``n_epochs`` when ``early_stopping`` ends the loop)."""
    model, optimizer, n_classes = run.model, run.optimizer, len(run.classes)
    train_store, val_store = run.stores["train"], run.stores["val"]
    rows: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    best_state: dict[str, torch.Tensor] = {}
    best_epoch = 0
    bar = tqdm(range(1, n_epochs + 1), desc=f"train {name}", unit="epoch", disable=not progress)
    for epoch in bar:
        tic = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        train_loss = train_epoch(model, train_store, list(run.sampler), optimizer, n_classes, dev)
        probs, losses = predict_store(model, val_store, n_classes, dev, seed)
        names = [record.slide_id for record in val_store.records]
        val = classification_metrics(val_store.labels, probs, run.classes, names)
        val["loss"] = float(losses.mean())
        run.scheduler.step(val["loss"])
        if _better(run.cfg.selection, val, best):
            best, best_epoch = val, epoch
            best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
        rows.append(
            {
                "epoch": epoch,
                "train_loss": train_loss,
                "val_loss": val["loss"],
                "val_accuracy": val["accuracy"],
                "val_weighted_f1": val["weighted_f1"],
                "lr": lr,
                "seconds": round(time.perf_counter() - tic, 4),
            }
        )
        _write_log(log_csv, rows)
        bar.set_postfix(
            loss=f"{train_loss:.3f}", val_loss=f"{val['loss']:.3f}", f1=f"{val['weighted_f1']:.3f}"
        )
        if should_stop(epoch, best_epoch, run.cfg.early_stopping, n_epochs):
            # the epochs run so far are the same as in a full run: stopping changes the kept
            # epoch only where a later one would have been better
            log.info(
                "%s: stopped after epoch %d, %d epochs without a better %s (best epoch %d)",
                name, epoch, run.cfg.early_stopping, run.cfg.selection, best_epoch,
            )  # fmt: skip
            break
    bar.close()
    return best_state, best_epoch, len(rows)


def _checkpoint_config(
    run: _Run, method: MethodSpec, seed: int, best_epoch: int, n_epochs: int, epochs_run: int
) -> dict[str, Any]:
    """The checkpoint's config: the model, the training settings and the recipe of the
    features (what `zoommil predict` redoes)."""
    cfg = run.cfg
    records = [r.path for s in run.stores.values() for r in s.records]
    return {
        "method": method.name,
        "arch": method.arch,
        "kwargs": method.kwargs,
        "classes": run.classes,
        "untrained_classes": untrained_classes(run.classes, run.stores["train"].labels),
        "mags": run.mags,
        "config_mags": cfg.mags,
        "in_dim": run.in_dim,
        "selection": cfg.selection,
        "seed": seed,
        "epoch": best_epoch,
        "epochs": n_epochs,
        "epochs_run": epochs_run,
        "early_stopping": cfg.early_stopping,
        "lr": cfg.lr,
        "weight_decay": cfg.weight_decay,
        # absolute: `zoommil evaluate` defaults to them from any folder (relative ones meant
        # another sheet or QC table there); a moved project passes --sheet / --exclude
        "features_dir": str(Path(cfg.features_dir).resolve()),
        "sheet": str(Path(cfg.sheet).resolve()),
        "exclude": str(Path(cfg.exclude).resolve()) if cfg.exclude else None,
        "preprocessing": shared_attrs(records),
        "feature_norm": run.norm.to_config() if run.norm is not None else None,
        "zoommil_version": __version__,
    }


def _train(
    config: TrainConfig,
    method: MethodSpec,
    seed: int,
    out_dir: Path,
    dev: torch.device,
    epochs: int | None,
    progress: bool,
    stale: Sequence[Path] = (),
    need_test: bool = False,
) -> dict[str, Any]:
    started = time.perf_counter()
    cfg = apply_overrides(config, method)
    n_epochs = int(epochs or cfg.epochs)
    if n_epochs < 1:  # `load_config`/`resolve_method` refuse it first; the message says where
        origin = "--epochs" if epochs else f"{method_label(cfg.source, method.name)}: 'epochs'"
        raise ZoomMILError(f"{origin} must be at least 1, got {n_epochs}")
    try:  # before any bag is read: the model would refuse it only once built
        check_zoom_steps(method.arch, method.kwargs, arch_mags(method.arch, cfg.mags))
    except ZoomMILError as error:
        raise ZoomMILError(f"{method_label(cfg.source, method.name)}: {error}") from None
    run = _prepare(cfg, method, seed, dev, need_test)
    for path in stale:
        Path(path).unlink(missing_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    best_state, best_epoch, epochs_run = _fit(
        run, method.name, n_epochs, seed, dev, out_dir / "log.csv", progress
    )
    run.model.load_state_dict(best_state)
    ckpt_config = _checkpoint_config(run, method, seed, best_epoch, n_epochs, epochs_run)
    save_checkpoint(out_dir / "checkpoint.pt", best_state, ckpt_config)
    reports = {}
    for split in ("val", "test"):
        store = run.stores[split]
        if len(store) == 0:
            reports[split] = None
            continue
        probs, losses = predict_store(run.model, store, len(run.classes), dev, seed)
        reports[split] = {"split": split, **split_report(store, probs, losses, run.classes)}
    stores = run.stores
    metrics = {
        "method": method.name,
        "arch": method.arch,
        "model_kwargs": method.kwargs,
        "seed": seed,
        "selection": cfg.selection,
        "best_epoch": best_epoch,
        "epochs": n_epochs,
        "epochs_run": epochs_run,
        "early_stopping": cfg.early_stopping,
        "lr": cfg.lr,
        "weight_decay": cfg.weight_decay,
        "classes": run.classes,
        "untrained_classes": ckpt_config["untrained_classes"],
        "mags": run.mags,
        "in_dim": run.in_dim,
        # the features' encoder and weights: random ones say so (weights_note)
        **encoder_provenance(ckpt_config["preprocessing"]),
        "n_parameters": sum(p.numel() for p in run.model.parameters()),
        "device": dev.type,
        "threads": torch.get_num_threads(),
        # the code, libraries and CPU: fp32 results move with the CPU (README)
        "environment": environment(),
        "cache": "memory" if stores["train"].in_memory else "disk",
        "n_slides": {s: len(stores[s]) for s in ("train", "val", "test")},
        "n_excluded": len(run.skipped),
        "excluded": run.skipped,
        "val": reports["val"],
        "test": reports["test"],
        "train_seconds": round(time.perf_counter() - started, 3),
    }
    write_json(out_dir / "metrics.json", metrics)
    return metrics
