"""Run checkpoints: every tensor (weights and optimiser state) in safetensors, everything else in JSON.

A checkpoint named ``last`` (or ``best``) in ``RUN/checkpoints/`` is two files: ``last-<epoch>.safetensors``
holding the module weights (``model/<key>``) and the optimiser's per-parameter state
(``optim/<param index>/<name>``), and ``last.json`` holding the epoch, step, optimiser hyper-parameters,
the sha256 of the tensor file and whatever the trainer adds (metrics, run state). The JSON file is written
last, atomically: it is the commit. A run killed while writing keeps the previous checkpoint, and a tensor
file that does not match its JSON is refused. Nothing is ever pickled.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch
from MTSSSegmenterLib.bundle import atomic_write_bytes
from MTSSSegmenterLib.errors import MTSSError
from torch import nn

log = logging.getLogger(__name__)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=_json_default) + "\n").encode("utf-8"))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.Tensor) and obj.numel() == 1:
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimiser's ``state_dict`` into tensors (for safetensors) and JSON-ready values."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, state in sd["state"].items():
        for name, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim/{index}/{name}"] = value.detach().to("cpu").contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim/"):
            _, index, name = key.split("/", 2)
            state.setdefault(int(index), {})[name] = value
    for index, values in info.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": info["param_groups"]})


def save_checkpoint(folder: str | Path, tag: str, module: nn.Module, optimizer: torch.optim.Optimizer | None,
                    state: dict[str, Any]) -> Path:
    """Write checkpoint ``tag`` of ``module`` (+ optimiser) atomically; returns the JSON path."""
    from safetensors.torch import save

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"model/{k}": v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
    info: dict[str, Any] = {}
    if optimizer is not None:
        opt_tensors, info = optimizer_tensors(optimizer)
        tensors.update(opt_tensors)
    blob = save(tensors)
    epoch = int(state.get("epoch", 0))
    weights = f"{tag}-{epoch:04d}.safetensors"
    atomic_write_bytes(folder / weights, blob)
    meta = {**state, "tag": tag, "weights": weights, "sha256": hashlib.sha256(blob).hexdigest(), "optimizer": info}
    atomic_write_json(folder / f"{tag}.json", meta)
    for old in folder.glob(f"{tag}-*.safetensors"):
        if old.name != weights:
            old.unlink(missing_ok=True)
    return folder / f"{tag}.json"


def read_checkpoint_meta(folder: str | Path, tag: str) -> dict[str, Any] | None:
    """The JSON of checkpoint ``tag``, or None when there is none."""
    path = Path(folder) / f"{tag}.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise MTSSError(f"The checkpoint '{path}' is unreadable ({exc}); delete it to start over, or restore it.") from exc


def load_checkpoint(folder: str | Path, tag: str, module: nn.Module,
                    optimizer: torch.optim.Optimizer | None = None) -> dict[str, Any]:
    """Load checkpoint ``tag`` into ``module`` (and ``optimizer``); returns its JSON state."""
    from safetensors.torch import load

    folder = Path(folder)
    meta = read_checkpoint_meta(folder, tag)
    if meta is None:
        raise MTSSError(f"No checkpoint '{tag}' in '{folder}'; nothing to resume from. Start the run without --resume.")
    path = folder / meta["weights"]
    if not path.is_file():
        raise MTSSError(f"Checkpoint '{folder / (tag + '.json')}' names '{path.name}', which is missing; "
                        "the run folder was modified. Start over in a new folder.")
    blob = path.read_bytes()
    if hashlib.sha256(blob).hexdigest() != meta["sha256"]:
        raise MTSSError(f"Checkpoint '{path}' does not match the checksum in '{tag}.json' (corrupt or modified); "
                        "start over in a new folder.")
    tensors = load(blob)
    model_state = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
    module.load_state_dict(model_state, strict=True)
    if optimizer is not None and meta.get("optimizer"):
        restore_optimizer(optimizer, tensors, meta["optimizer"])
    return meta
