"""The training loop shared by ``train-teacher``, ``train-joint`` and ``distill``.

What a run does, in order (nnU-Net's structure, with distillation as a task):

1. joins the process group when launched by ``torchrun`` (:mod:`.distributed`);
2. writes ``RUN/run.json`` (options), finds the data (:mod:`.data`), records the split in
   ``RUN/split.json`` and the cases left out in ``RUN/data.json``;
3. prepares every case once into the :class:`~.cache.CaseCache`;
4. builds the task (a module whose ``forward(batch)`` returns the loss, see :class:`TaskSpec`) and AdamW
   over its trainable parameters (network and KD projection heads), with a warm-up then cosine or poly
   learning rate per step;
5. per epoch: reseeds every generator from (run seed, epoch, rank), trains ``steps_per_epoch`` steps on
   patches drawn by index (so a resumed run draws the same samples), bf16 autocast on CUDA with
   ``amp``, validates on held-out cases of every population, and writes the ``last`` (and ``best``)
   checkpoints atomically, then a log record (``RUN/log.jsonl``, TensorBoard);
6. writes the bundle into ``RUN/`` (:func:`MTSSSegmenterLib.bundle.save_bundle`) from the best
   checkpoint, with provenance and validation metrics, and a training-curve PNG.

``resume=True`` continues from the last finished epoch with the same result as an uninterrupted run. A
non-finite loss stops the run (:class:`TrainingDiverged`) before the weights are touched, keeping the
last good checkpoint. ``progress`` may raise :class:`~MTSSSegmenterLib.errors.Cancelled`; the run then
stops at once, keeping its checkpoints.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from MTSSSegmenterLib.bundle import default_meta, load_bundle, save_bundle
from MTSSSegmenterLib.errors import InputError, MTSSError
from MTSSSegmenterLib.inference import resolve_device
from MTSSSegmenterLib.networks import SegNetwork
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from .cache import CaseCache
from .checkpoint import (
    atomic_write_json,
    load_checkpoint,
    read_checkpoint_meta,
    save_checkpoint,
)
from .data import DataIndex, Split, discover, make_split
from .distributed import DistContext, init_distributed
from .progress import ProgressCallback, RunLog, read_log
from .runconfig import RESUMABLE_OVERRIDES, TrainConfig, git_commit
from .transforms import AugmentConfig, PatchSampler, sample_seed
from .validation import validate

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"


class TrainingDiverged(MTSSError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TaskSpec:
    """What a command trains; built once the data is prepared.

    Attributes:
        module: everything trainable; ``module(batch) -> (loss, {term: value})`` on a batch dict
            (``image``, ``present``, ``keep``, ``target``, ``label_mask``, ``population``...).
        network: the network that is validated and becomes the bundle (a sub-module of ``module``).
        role: ``teacher``, ``joint`` or ``student`` (goes into the bundle).
        train_populations: populations whose cases train (None: all).
        selection_population: validation Dice that picks the best epoch (None: macro over populations).
        meta: extra ``meta["training"]`` entries (teachers, KD terms...).
        extra_networks: more bundles to write, ``{sub-folder of RUN: network}``.
        sampler_extras: per-case aligned arrays cropped with each patch (teacher-output cache).
        augment: overrides of the augmentation config.
    """

    module: nn.Module
    network: SegNetwork
    role: str
    train_populations: list[str] | None = None
    selection_population: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    extra_networks: dict[str, SegNetwork] = field(default_factory=dict)
    sampler_extras: Callable[[str], dict[str, tuple[np.ndarray, int]]] | None = None
    augment: dict[str, Any] = field(default_factory=dict)


TaskBuilder = Callable[[TrainConfig, DistContext, CaseCache, DataIndex, Split], TaskSpec]


@dataclass
class TrainResult:
    run_dir: Path
    bundle: Path | None
    epochs_done: int
    validation: dict[str, Any] | None
    data: DataIndex


class EpochDataset(Dataset):
    """The samples of one epoch: sample ``i`` is drawn from case ``plan[i]`` with seed (seed, epoch, i)."""

    def __init__(self, cache: CaseCache, plan: list[str], sampler: PatchSampler, seed: int, epoch: int) -> None:
        self.cache, self.plan, self.sampler, self.seed, self.epoch = cache, plan, sampler, seed, epoch

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.sampler(self.cache.get(self.plan[index]), sample_seed(self.seed, self.epoch, index))


def epoch_plan(cases_by_pop: dict[str, list[str]], n: int, seed: int, epoch: int) -> list[str]:
    """``n`` case names balanced over populations (population first, then a case of it)."""
    rng = np.random.default_rng(sample_seed(seed, epoch, 0x5EED))
    pops = [p for p in sorted(cases_by_pop) if cases_by_pop[p]]
    out = []
    for _ in range(n):
        names = cases_by_pop[pops[int(rng.integers(len(pops)))]]
        out.append(names[int(rng.integers(len(names)))])
    return out


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Linear warm-up, then cosine to 0 or poly (power 0.9, nnU-Net)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "poly":
        return (1.0 - t) ** 0.9
    return 0.5 * (1.0 + math.cos(math.pi * t))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    """One run (see the module docstring). ``Trainer(config, builder).run()`` -> :class:`TrainResult`."""

    def __init__(self, config: TrainConfig, builder: TaskBuilder, progress: ProgressCallback | None = None,
                 resume: bool = False) -> None:
        self.config, self.builder, self.progress, self.resume = config, builder, progress, resume
        self.run_dir = Path(config.out)
        self.ck_dir = self.run_dir / CHECKPOINTS

    # ------------------------------------------------------------------ set-up
    def _notify(self, **event: Any) -> None:
        if self.progress is not None and self.dist.is_main:
            self.progress(event)

    def _load_config(self) -> None:
        run_json = self.run_dir / "run.json"
        if self.resume:
            if not run_json.is_file():
                raise InputError(f"Cannot resume: '{self.run_dir}' holds no training run (no run.json). "
                                 "Start it without --resume.")
            stored = TrainConfig.from_dict(json.loads(run_json.read_text(encoding="utf-8")))
            for key in RESUMABLE_OVERRIDES:
                setattr(stored, key, getattr(self.config, key))
            stored.out = self.config.out
            self.config = stored
        elif run_json.is_file():
            done = read_checkpoint_meta(self.ck_dir, "last")
            where = f" (epoch {done['epoch']} of {done.get('epochs', '?')})" if done else ""
            raise InputError(f"'{self.run_dir}' already holds a training run{where}. Continue it with --resume, "
                             "or choose another output folder.")

    def _data(self) -> tuple[DataIndex, Split]:
        c = self.config
        index = discover(c.data, c.mapping)
        split_path = self.run_dir / "split.json"
        if self.resume and split_path.is_file():
            split = Split.from_dict(json.loads(split_path.read_text(encoding="utf-8")))
            missing = sorted(set(split.train + split.val) - set(index.by_name()))
            if missing:
                log.warning("%d cases of the recorded split are gone from the data folder: %s", len(missing),
                            ", ".join(missing[:10]))
        else:
            split = make_split(index.cases, c.val_fraction, c.seed)
        return index, split

    def _fill_cache(self, index: DataIndex, split: Split) -> CaseCache:
        c = self.config
        budget = None if c.cache_gb is None else int(c.cache_gb * 2**30)
        cache = CaseCache(c.preprocessing(), self.run_dir / "cache", budget, self.dist)
        records = index.select(split.train + split.val)
        self._notify(stage="preparing", fraction=0.0, message=f"{len(records)} cases")
        broken = cache.fill(records, lambda i, n: self._notify(stage="preparing", fraction=i / max(n, 1),
                                                                 message=f"case {i}/{n}"))
        index.leave_out(broken)
        bad = {b.name for b in index.broken}
        split.train = [n for n in split.train if n not in bad and n in cache]
        split.val = [n for n in split.val if n not in bad and n in cache]
        if index.broken and self.dist.is_main:
            log.warning("%d case(s) left out:\n%s", len(index.broken), index.broken_report())
        log.info("Data: %s. Cache: %s", index.summary(), cache.describe())
        return cache

    # ------------------------------------------------------------------ run
    def run(self) -> TrainResult:
        device = resolve_device(self.config.device)
        self.dist = init_distributed(device)
        try:
            return self._run()
        finally:
            self.dist.close()

    def _run(self) -> TrainResult:
        d = self.dist
        self._load_config()
        c = self.config
        if d.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.run_dir / "run.json", c.to_dict())
        index, split = self._data()
        cache = self._fill_cache(index, split)
        if d.is_main:
            atomic_write_json(self.run_dir / "split.json", split.to_dict())
            atomic_write_json(self.run_dir / "data.json", index.to_dict())
        seed_everything(c.seed)
        spec = self.builder(c, d, cache, index, split)
        pops = spec.train_populations
        by_pop: dict[str, list[str]] = {}
        for rec in index.select(split.train):
            if pops is None or rec.population in pops:
                by_pop.setdefault(rec.population, []).append(rec.name)
        if not by_pop:
            want = f"population {', '.join(pops)}" if pops else "any population"
            raise InputError(f"No training cases of {want} in {', '.join(c.data)} ({index.summary()}). "
                             + ("Left out:\n" + index.broken_report() if index.broken else ""))
        module = spec.module.to(d.device)
        params = [p for p in module.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay)
        start_epoch, global_step, best = 0, 0, {"value": -math.inf, "epoch": None}
        last = read_checkpoint_meta(self.ck_dir, "last") if self.resume else None
        if last is not None:
            load_checkpoint(self.ck_dir, "last", module, optimizer)
            start_epoch, global_step = int(last["epoch"]), int(last["global_step"])
            best = last.get("best", best)
            if best.get("value") is None:
                best["value"] = -math.inf
            log.info("Resuming %s after epoch %d (step %d)", self.run_dir, start_epoch, global_step)
        if d.is_main and self.resume:
            self._trim_log(start_epoch)
        train_module: nn.Module = module
        if d.distributed:
            from torch.nn.parallel import DistributedDataParallel

            train_module = DistributedDataParallel(module, device_ids=[d.device] if d.device.type == "cuda" else None,
                                                   find_unused_parameters=True)
        augment = AugmentConfig.from_dict({**c.augment, "patch": c.patch, "modality_dropout": c.modality_dropout,
                                           **spec.augment})
        sampler = PatchSampler(augment, extras=spec.sampler_extras)
        runlog = RunLog(self.run_dir, enabled=d.is_main)
        amp = bool(c.amp and d.device.type == "cuda")
        total_steps = c.epochs * c.steps_per_epoch
        warmup = int(c.warmup_fraction * total_steps)
        validation: dict[str, Any] | None = last.get("validation") if last else None
        started = time.monotonic()
        steps_this_session = 0
        try:
            for epoch in range(start_epoch, c.epochs):
                seed_everything(sample_seed(c.seed, epoch, d.rank))
                plan = epoch_plan(by_pop, c.steps_per_epoch * c.batch * d.world, c.seed, epoch)
                dataset = EpochDataset(cache, plan, sampler, c.seed, epoch)
                dsampler = DistributedSampler(dataset, num_replicas=d.world, rank=d.rank, shuffle=False)
                loader = DataLoader(dataset, batch_size=c.batch, sampler=dsampler, num_workers=c.workers,
                                    drop_last=True, persistent_workers=False)
                train_module.train()
                sums: dict[str, float] = {}
                n_steps = 0
                for batch in loader:
                    for g in optimizer.param_groups:
                        g["lr"] = c.lr * lr_factor(global_step, total_steps, warmup, c.schedule)
                    batch = {k: (v.to(d.device, non_blocking=True) if isinstance(v, torch.Tensor) else v)
                             for k, v in batch.items()}
                    with torch.autocast(device_type=d.device.type, dtype=torch.bfloat16, enabled=amp):
                        loss, terms = train_module(batch)
                    bad = 0.0 if torch.isfinite(loss.detach()).item() else 1.0
                    if d.all_reduce_max(bad) > 0:
                        self._diverged(runlog, epoch, global_step, terms)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if c.grad_clip > 0:
                        torch.nn.utils.clip_grad_norm_(params, c.grad_clip)
                    optimizer.step()
                    global_step += 1
                    n_steps += 1
                    steps_this_session += 1
                    sums["loss"] = sums.get("loss", 0.0) + float(loss.detach())
                    for k, v in terms.items():
                        sums[k] = sums.get(k, 0.0) + float(v)
                    rate = (time.monotonic() - started) / steps_this_session
                    self._notify(stage="training", epoch=epoch + 1, epochs=c.epochs, step=global_step,
                                 steps=total_steps, fraction=global_step / total_steps,
                                 loss=sums["loss"] / n_steps, lr=optimizer.param_groups[0]["lr"],
                                 eta_s=rate * (total_steps - global_step))
                keys = sorted(sums)
                totals = d.all_reduce_sum([sums[k] for k in keys] + [float(n_steps)])
                means = {k: v / max(totals[-1], 1.0) for k, v in zip(keys, totals[:-1])}
                validation = self._validate(spec, cache, split, epoch, amp)
                value = self._selection(spec, validation, means)
                is_best = value > best["value"]
                if is_best:
                    best = {"value": value, "epoch": epoch + 1}
                state = {"epoch": epoch + 1, "epochs": c.epochs, "global_step": global_step, "best": best,
                         "train": means, "validation": validation}
                if d.is_main:
                    self._notify(stage="saving", epoch=epoch + 1, epochs=c.epochs, fraction=global_step / total_steps)
                    if is_best:
                        save_checkpoint(self.ck_dir, "best", module, None, state)
                    save_checkpoint(self.ck_dir, "last", module, optimizer, state)
                    runlog.write({"epoch": epoch + 1, "step": global_step, "time": time.time(),
                                  "lr": optimizer.param_groups[0]["lr"], "train": means,
                                  "val": _val_scalars(validation)}, step=global_step)
                d.barrier()
                log.info("epoch %d/%d loss %.4f val %s", epoch + 1, c.epochs, means.get("loss", math.nan),
                         None if validation is None else round(validation["macro"]["mean"], 4))
        finally:
            runlog.close()
        bundle = self._finish(spec, module, index, split, validation)
        self._notify(stage="done", fraction=1.0, epoch=c.epochs, epochs=c.epochs, bundle=str(bundle), final=True)
        return TrainResult(self.run_dir, bundle, c.epochs, validation, index)

    # ------------------------------------------------------------------ pieces
    def _validate(self, spec: TaskSpec, cache: CaseCache, split: Split, epoch: int, amp: bool) -> dict[str, Any] | None:
        if not split.val:
            return None
        c = self.config
        self._notify(stage="validating", epoch=epoch + 1, epochs=c.epochs,
                     fraction=(epoch + 1) * c.steps_per_epoch / (c.epochs * c.steps_per_epoch))
        return validate(spec.network, cache, split.val, c.roi_size, self.dist.device, amp, spec.network.config.divisor,
                        self.dist, subsets=c.val_subsets)

    @staticmethod
    def _selection(spec: TaskSpec, validation: dict[str, Any] | None, means: dict[str, float]) -> float:
        if validation is None:
            return -means.get("loss", math.inf)
        if spec.selection_population and spec.selection_population in validation["populations"]:
            value = validation["populations"][spec.selection_population]["mean"]
        else:
            value = validation["macro"]["mean"]
        return value if math.isfinite(value) else -math.inf

    def _diverged(self, runlog: RunLog, epoch: int, step: int, terms: dict[str, float]) -> None:
        last = read_checkpoint_meta(self.ck_dir, "last")
        kept = (f"The last good checkpoint (epoch {last['epoch']}) is kept in {self.ck_dir}; continue from it "
                "with --resume after lowering --lr" if last else "No epoch had finished, so no checkpoint exists; "
                "start again with a lower --lr")
        bad_terms = [k for k, v in terms.items() if not math.isfinite(v)]
        which = f" (non-finite terms: {', '.join(bad_terms)})" if bad_terms else ""
        runlog.write({"event": "diverged", "epoch": epoch + 1, "step": step, "time": time.time()})
        raise TrainingDiverged(f"The training loss became NaN or infinite at epoch {epoch + 1}, step {step + 1}{which}. "
                               f"{kept} (now {self.config.lr:g}), or check the data.")

    def _trim_log(self, epoch: int) -> None:
        records = [r for r in read_log(self.run_dir) if int(r.get("epoch", 0)) <= epoch]
        path = self.run_dir / "log.jsonl"
        if path.is_file():
            text = "".join(json.dumps(r) + "\n" for r in records)
            from .checkpoint import atomic_write_bytes

            atomic_write_bytes(path, text.encode("utf-8"))

    def _finish(self, spec: TaskSpec, module: nn.Module, index: DataIndex, split: Split,
                validation: dict[str, Any] | None) -> Path | None:
        d = self.dist
        bundle_path = None
        if d.is_main:
            best = read_checkpoint_meta(self.ck_dir, "best")
            chosen = "last"
            if best is not None and validation is not None:
                load_checkpoint(self.ck_dir, "best", module)
                validation, chosen = best.get("validation"), f"best (epoch {best['epoch']})"
            meta = self._bundle_meta(spec, index, split, validation, chosen)
            bundle_path = save_bundle(spec.network.cpu(), meta, self.run_dir)
            for sub, net in spec.extra_networks.items():
                extra = {**meta, "name": f"{meta['name']}-{sub}", "role": "teacher"}
                save_bundle(net.cpu(), extra, self.run_dir / sub)
            try:
                from .plots import training_curves

                training_curves(read_log(self.run_dir), self.run_dir / "training_curves.png", title=meta["name"])
            except ImportError as exc:  # matplotlib is optional
                log.info("No training-curve PNG (%s).", exc)
            log.info("Wrote bundle %s", bundle_path)
        d.barrier()
        return bundle_path

    def _bundle_meta(self, spec: TaskSpec, index: DataIndex, split: Split, validation: dict[str, Any] | None,
                     chosen: str) -> dict[str, Any]:
        c, d = self.config, self.dist
        pops = spec.train_populations or index.populations()
        name = c.name or (f"teacher-{c.population}" if spec.role == "teacher" else
                          "joint" if spec.role == "joint" else "student")
        train_cases = index.select(split.train)
        labelled = sorted({r for rec in train_cases if spec.train_populations is None or rec.population in pops
                           for r in rec.labels}, key=["WT", "TC", "ET"].index)
        training = {
            "command": c.command, "data": c.data, "synthetic": index.synthetic, "datasets": index.datasets,
            "cases": {"train": len(split.train), "val": len(split.val), "left_out": [b.name for b in index.broken]},
            "split": "split.json", "epochs": c.epochs, "steps_per_epoch": c.steps_per_epoch, "batch": c.batch,
            "world_size": d.world, "patch": list(c.patch), "lr": c.lr, "schedule": c.schedule, "seed": c.seed,
            "amp": bool(c.amp), "device": str(d.device), "modality_dropout": c.modality_dropout,
            "labelled_regions": labelled, "weights_from": chosen, "git_commit": git_commit(),
            "torch": torch.__version__, "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            **spec.meta,
        }
        if c.init:
            training["init"] = c.init
        meta = default_meta(spec.network.config, name=name, role=spec.role, populations=list(pops),
                            description=f"{spec.role} trained by `mtss {c.command}` on {index.summary()}",
                            trained_on=("synthetic data (mtss synth): " if index.synthetic else "")
                            + ", ".join(Path(p).name for p in c.data), training=training,
                            metrics={"validation": validation} if validation else {})
        meta["preprocessing"]["spacing_mm"] = [float(c.spacing)] * 3
        meta["inference"]["roi_size"] = c.roi_size
        return meta


def _val_scalars(validation: dict[str, Any] | None) -> dict[str, Any] | None:
    if validation is None:
        return None
    out: dict[str, Any] = {"macro": validation["macro"]}
    out.update({p: {k: v for k, v in row.items() if k != "n_cases"} for p, row in validation["populations"].items()})
    for key, sub in validation.get("subsets", {}).items():
        out[f"subset_{key}"] = sub["macro"]
    return out


def init_from_bundle(network: SegNetwork, path: str | Path) -> dict[str, Any]:
    """Load a bundle's weights into ``network`` (``--init``: fine-tuning); returns the bundle's meta."""
    bundle = load_bundle(path)
    if bundle.network.config.to_dict() != network.config.to_dict():
        raise InputError(f"--init bundle '{path}' has network {bundle.network.config.to_dict()}, but this run trains "
                         f"{network.config.to_dict()}. Leave --network out to use the bundle's, or match it.")
    network.load_state_dict(bundle.network.state_dict())
    return bundle.meta


__all__ = ["TaskSpec", "TrainResult", "Trainer", "TrainingDiverged", "init_from_bundle"]
