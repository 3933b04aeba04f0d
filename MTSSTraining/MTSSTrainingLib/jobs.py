"""A training command running in a child process: its progress lines, its state, and cancelling it.

:class:`TrainingJob` starts the process (in its own session / process group), reads its output on a
thread, reports progress in the caller's thread (:meth:`TrainingJob.poll`, :meth:`TrainingJob.wait`), and
:meth:`TrainingJob.cancel` ends the whole process tree, including the workers ``torchrun`` starts in
sessions of their own. :func:`parse_progress` reads the ``MTSS-PROGRESS {json}`` lines the training
commands print when the environment holds ``MTSS_PROGRESS=lines`` (and ``[k/n] item`` counters). The
command line itself is built by :mod:`MTSSTrainingLib.arguments`. No ``slicer``, no ``qt``.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from MTSSSegmenterLib.errors import Cancelled, MTSSError

from MTSSSegmenterLib.process_tree import kill_tree, new_session_kwargs

log = logging.getLogger(__name__)

PROGRESS_PREFIX = "MTSS-PROGRESS "


# ------------------------------------------------------------------------------------------------ progress
@dataclass
class TrainingProgress:
    """One progress report of a running command (from an ``MTSS-PROGRESS`` line).

    Attributes:
        stage: what runs (``teacher``, ``distill``, ``validate``, ``synth``... as the command names it).
        fraction: 0..1, how far the command is.
        epoch, step: where training is, when it says.
        loss: the latest training loss, when known.
        eta_s: estimated seconds left, when known.
        details: the whole parsed line.
    """

    stage: str = "starting"
    fraction: float = 0.0
    epoch: int | None = None
    step: int | None = None
    loss: float | None = None
    eta_s: float | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def text(self) -> str:
        """A readable state for a status line: ``training: epoch 2/10, loss 0.412, 14%, about 3 min left``."""
        parts = [self.stage]
        if "item" in self.details:
            parts.append(f"{self.details['item']} ({self.details.get('done')}/{self.details.get('total')})")
        if self.epoch is not None:
            total = self.details.get("epochs")
            parts.append(f"epoch {self.epoch}/{total}" if total else f"epoch {self.epoch}")
        if self.details.get("message"):
            parts.append(str(self.details["message"]))
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4g}")
        parts.append(f"{100 * self.fraction:.0f}%")
        if self.eta_s is not None and self.eta_s > 0:
            left = f"{self.eta_s / 60:.0f} min" if self.eta_s >= 90 else f"{self.eta_s:.0f} s"
            parts.append(f"about {left} left")
        return parts[0] + ": " + ", ".join(parts[1:])


def _number(value: Any, kind: type) -> Any:
    try:
        return None if value is None else kind(value)
    except (TypeError, ValueError):
        return None


_COUNTER = re.compile(r"^\s*\[(?P<done>\d+)/(?P<total>\d+)\]\s*(?P<what>.*)$")


def parse_progress(line: str, stage: str = "running") -> TrainingProgress | None:
    """The progress in one output line, or None for any other line (also for a damaged progress line).

    Besides ``MTSS-PROGRESS {json}`` lines, counters such as ``[3/20] BraTS-GLI-00002-000`` (what
    ``mtss synth`` and ``mtss segment-batch`` print) count as progress of ``stage``.
    """
    at = line.find(PROGRESS_PREFIX)
    if at < 0:
        counter = _COUNTER.match(line)
        if counter is None or int(counter.group("total")) < 1:
            return None
        done, total = int(counter.group("done")), int(counter.group("total"))
        return TrainingProgress(stage=stage, fraction=min(1.0, done / total), step=done,
                                details={"done": done, "total": total, "item": counter.group("what").strip()})
    try:
        data = json.loads(line[at + len(PROGRESS_PREFIX):])
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    fraction = _number(data.get("fraction"), float)
    return TrainingProgress(stage=str(data.get("stage") or stage),
                            fraction=min(1.0, max(0.0, fraction)) if fraction is not None else 0.0,
                            epoch=_number(data.get("epoch"), int), step=_number(data.get("step"), int),
                            loss=_number(data.get("loss"), float), eta_s=_number(data.get("eta_s"), float),
                            details=data)


# ----------------------------------------------------------------------------------------------------- job
ProgressCallback = Callable[[str, float, str], Any]

STARTING, RUNNING, DONE, FAILED, CANCELLED = "starting", "running", "done", "failed", "cancelled"


class TrainingJob:
    """An ``mtss`` command running in a child process, seen from the caller.

    The same shape as the segmenter's :class:`~MTSSSegmenterLib.worker.SegmentationJob`: :meth:`poll` returns
    ``(state, fraction 0..1, message)`` and is cheap enough for a ``qt.QTimer`` on the GUI thread;
    :meth:`wait` blocks, reporting to a ``callback(state, fraction, message)`` (raising
    :class:`~MTSSSegmenterLib.errors.Cancelled` in it cancels); :meth:`cancel` ends the whole process tree;
    :meth:`result` gives the result or raises. States: ``starting``, ``running``, then ``done``, ``failed``
    or ``cancelled``. The latest full progress (epoch, loss, ETA) is :attr:`details`; the command's other
    output lines are in :attr:`log`.

    Args:
        argv: the complete command (interpreter first).
        description: how messages name the job (``mtss train-teacher``).
        env: extra environment variables for the child.
        finish: called once after a successful exit, in the polling thread; its return value is the job's
            result (e.g. the bundle path). An :class:`MTSSError` it raises fails the job.
    """

    def __init__(self, argv: Sequence[str], description: str = "", env: Mapping[str, str] | None = None,
                 finish: Callable[[], Any] | None = None, cwd: str | Path | None = None,
                 log_lines: int = 5000) -> None:
        self.argv = [str(a) for a in argv]
        self.description = description or " ".join(self.argv[:4])
        self.extra_env = dict(env or {})
        self.cwd = str(cwd) if cwd else None
        self._finish = finish
        self.process: subprocess.Popen[str] | None = None
        self.log: deque[str] = deque(maxlen=log_lines)
        self.details = TrainingProgress()
        self.state = STARTING
        self.progress = 0.0
        self.message = f"Starting {self.description}..."
        self._listener: Callable[[], None] | None = None
        self.error: Exception | None = None
        self._result: Any = None
        self._events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._reader: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def finished(self) -> bool:
        return self.state in (DONE, FAILED, CANCELLED)

    def start(self) -> TrainingJob:
        """Start the process (returns at once)."""
        env = dict(os.environ)
        env.update(self.extra_env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        env.setdefault("PYTHONIOENCODING", "utf-8")
        kwargs: dict[str, Any] = new_session_kwargs()
        log.info("Starting %s: %s", self.description, " ".join(self.argv))
        try:
            self.process = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                            stderr=subprocess.STDOUT, text=True, encoding="utf-8",
                                            errors="replace", bufsize=1, env=env, cwd=self.cwd, **kwargs)
        except OSError as exc:
            raise MTSSError(f"Cannot start {self.description} ({self.argv[0]}): {exc}. Check that the Python "
                            "interpreter exists and can run.") from exc
        self._reader = threading.Thread(target=self._read, args=(self.process, self._events), daemon=True,
                                        name=f"MTSS job reader {self.process.pid}")
        self._reader.start()
        return self

    @staticmethod
    def _read(process: subprocess.Popen[str], events: queue.Queue[tuple[str, Any]]) -> None:
        if process.stdout is not None:
            for line in process.stdout:
                events.put(("line", line.rstrip("\r\n")))
        events.put(("exit", process.wait()))

    def poll(self, timeout: float = 0.0) -> tuple[str, float, str]:
        """Take in what the process said (waiting up to ``timeout`` s); returns ``(state, fraction, message)``."""
        if not self.finished and self.process is not None:
            try:
                self._handle(self._events.get(timeout=timeout) if timeout > 0 else self._events.get_nowait())
                while not self.finished:
                    self._handle(self._events.get_nowait())
            except queue.Empty:
                pass
        return self.state, self.progress, self.message

    def _handle(self, event: tuple[str, Any]) -> None:
        kind, value = event
        if kind == "exit":
            self._ended(int(value))
            return
        progress = parse_progress(value, self.description.split()[-1])
        if progress is None:
            self.log.append(value)
            log.debug("%s: %s", self.description, value)
            return
        self.details, self.state = progress, RUNNING
        self.progress, self.message = progress.fraction, progress.text()
        if self._listener is not None:  # wait(): every progress event, not only the latest of a poll
            self._listener()

    def _ended(self, returncode: int) -> None:
        if returncode != 0:
            self._fail(MTSSError(self._failure_message(returncode)))
            return
        try:
            self._result = self._finish() if self._finish else None
        except MTSSError as exc:
            self._fail(exc)
            return
        except Exception as exc:  # never leave a finished process looking as if it still ran
            self._fail(MTSSError(f"{self.description} finished, but handling its result failed: "
                                 f"{exc.__class__.__name__}: {exc}"))
            return
        self.state, self.progress, self.message = DONE, 1.0, "Done."
        log.info("%s finished", self.description)

    def _fail(self, error: Exception) -> None:
        self.error, self.state = error, FAILED
        self.message = str(error).splitlines()[0] if str(error) else "Failed."
        log.error("%s", error)

    def _failure_message(self, returncode: int) -> str:
        lines = [ln for ln in self.log if ln.strip()]
        errors = [ln.strip() for ln in lines if ln.strip().lower().startswith("error:")]
        if errors:
            reason = errors[-1][len("error:"):].strip()
        else:
            reason = "its last output was:\n" + "\n".join(lines[-15:]) if lines else "it printed nothing"
        if returncode < 0:
            return f"{self.description} was ended by signal {-returncode}; {reason}"
        return f"{self.description} failed (exit status {returncode}): {reason}"

    def cancel(self) -> None:
        """Stop now: end the process and everything it started. Not an error; nothing is installed."""
        if self.finished:
            return
        if self.process is not None:
            kill_tree(self.process)
        self.state, self.message = CANCELLED, "Cancelled."
        log.info("%s was cancelled", self.description)

    def result(self) -> Any:
        """The result; raises the job's error, :class:`Cancelled`, or RuntimeError while it still runs."""
        if self.state == DONE:
            return self._result
        if self.state == CANCELLED:
            raise Cancelled(f"{self.description} was cancelled.")
        if self.state == FAILED and self.error is not None:
            raise self.error
        raise RuntimeError(f"{self.description} is still {self.state}; poll() until it has finished.")

    def wait(self, callback: ProgressCallback | None = None, interval: float = 0.2,
             timeout: float | None = None) -> Any:
        """Block until the job ends, reporting to ``callback``; returns :meth:`result`.

        A :class:`Cancelled` raised in ``callback`` (or a KeyboardInterrupt) cancels the job and propagates.
        Raises TimeoutError (the job keeps running) when ``timeout`` seconds pass first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        last: tuple[str, float, str] | None = None

        def report() -> None:
            nonlocal last
            status = (self.state, self.progress, self.message)
            if callback is not None and status != last:
                last = status
                callback(*status)

        self._listener = report
        try:
            while not self.finished:
                self.poll(interval)
                report()
                if deadline is not None and not self.finished and time.monotonic() > deadline:
                    raise TimeoutError(f"{self.description} is still running after {timeout} s.")
        except (Cancelled, KeyboardInterrupt):
            self.cancel()
            raise
        finally:
            self._listener = None
        report()
        return self.result()

    def __del__(self) -> None:  # never leave a training running behind a forgotten job
        try:
            if not self.finished and self.process is not None and self.process.poll() is None:
                kill_tree(self.process)
        except Exception:
            pass


__all__ = ["TrainingJob", "TrainingProgress", "parse_progress", "ProgressCallback", "PROGRESS_PREFIX"]
