"""Progress and logs of a run: a terminal bar or machine-readable lines, a JSON-lines log, TensorBoard.

Training code reports :class:`ProgressEvent` dicts through a callback (it may raise
:class:`~MTSSSegmenterLib.errors.Cancelled` to stop). :class:`ProgressPrinter` is the command line's
callback: with ``MTSS_PROGRESS=lines`` in the environment it prints one line per update on stdout,
``MTSS-PROGRESS {"stage": "training", "epoch": 3, "step": 120, "fraction": 0.31, "loss": 0.52,
"eta_s": 340.0}``, which the Slicer logic parses; on a terminal it draws a bar with loss and ETA on
stderr; otherwise it prints a plain line per epoch and stage.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

log = logging.getLogger(__name__)

PREFIX = "MTSS-PROGRESS "
ProgressEvent = dict[str, Any]
ProgressCallback = Callable[[ProgressEvent], None]


def _fmt_time(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = round(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


def parse_progress_line(line: str) -> ProgressEvent | None:
    """The event of an ``MTSS-PROGRESS {...}`` line, or None for any other line."""
    if not line.startswith(PREFIX):
        return None
    try:
        event = json.loads(line[len(PREFIX):])
    except json.JSONDecodeError:
        return None
    return event if isinstance(event, dict) else None


class ProgressPrinter:
    """The command line's progress callback (see the module docstring for the three modes)."""

    def __init__(self, mode: str | None = None, stream: TextIO | None = None, min_interval_s: float = 0.5) -> None:
        env = os.environ.get("MTSS_PROGRESS", "").strip().lower()
        err = sys.stderr
        self.mode = mode or ("lines" if env == "lines" else "bar" if err.isatty() else "plain")
        self.stream = stream or (sys.stdout if self.mode == "lines" else err)
        self.min_interval_s = min_interval_s
        self._last = 0.0
        self._last_key: tuple[Any, ...] = ()
        self._bar_open = False

    def __call__(self, event: ProgressEvent) -> None:
        now = time.monotonic()
        key = (event.get("stage"), event.get("epoch"))
        final = event.get("final", False) or key != self._last_key
        if not final and now - self._last < self.min_interval_s:
            return
        self._last, self._last_key = now, key
        if self.mode == "lines":
            clean = {k: (round(v, 6) if isinstance(v, float) and math.isfinite(v) else v) for k, v in event.items()
                     if k != "final" and not (isinstance(v, float) and not math.isfinite(v))}
            self.stream.write(PREFIX + json.dumps(clean) + "\n")
            self.stream.flush()
        elif self.mode == "bar":
            self._bar(event)
        elif final:
            self.stream.write(self._text(event) + "\n")
            self.stream.flush()

    def _text(self, event: ProgressEvent) -> str:
        parts = [str(event.get("stage", ""))]
        if event.get("epoch") is not None:
            parts.append(f"epoch {event['epoch']}/{event.get('epochs', '?')}")
        if event.get("loss") is not None:
            parts.append(f"loss {event['loss']:.4f}")
        if event.get("message"):
            parts.append(str(event["message"]))
        if event.get("eta_s") is not None:
            parts.append(f"eta {_fmt_time(event['eta_s'])}")
        return "  ".join(parts)

    def _bar(self, event: ProgressEvent) -> None:
        frac = min(max(float(event.get("fraction", 0.0)), 0.0), 1.0)
        width = 28
        filled = int(frac * width)
        bar = "#" * filled + "-" * (width - filled)
        line = f"\r[{bar}] {100 * frac:5.1f}% {self._text(event)}"
        self.stream.write(line[:160].ljust(100))
        self.stream.flush()
        self._bar_open = True
        if event.get("stage") == "done":
            self.close()

    def close(self) -> None:
        if self._bar_open:
            self.stream.write("\n")
            self.stream.flush()
            self._bar_open = False


class RunLog:
    """``RUN/log.jsonl`` (one JSON object per line, appended) and TensorBoard scalars when available."""

    def __init__(self, run_dir: str | Path, enabled: bool = True, tensorboard: bool = True) -> None:
        self.path = Path(run_dir) / "log.jsonl"
        self.enabled = enabled
        self._tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))
            except (ImportError, ModuleNotFoundError):
                log.info("tensorboard is not installed; writing only %s", self.path)

    def write(self, record: dict[str, Any], step: int | None = None) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, default=float) + "\n")
        if self._tb is not None and step is not None:
            for key, value in _flatten(record):
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value)):
                    self._tb.add_scalar(key, float(value), step)
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _flatten(record: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in record.items():
        if key in ("epoch", "step", "time", "event"):
            continue
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.extend(_flatten(value, name + "/"))
        else:
            out.append((name, value))
    return out


def read_log(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of ``RUN/log.jsonl`` (skipping a torn last line)."""
    path = Path(run_dir) / "log.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records
