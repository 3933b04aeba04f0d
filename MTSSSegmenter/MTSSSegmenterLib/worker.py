"""The background segmentation process that the Slicer module (and scripts) talk to.

Run as ``PythonSlicer -u -m MTSSSegmenterLib.worker`` (or any Python with MTSS installed). It reads one JSON
request per line on stdin and answers with event lines on stdout. Every event line starts with
:data:`PREFIX` followed by a JSON object, so that stray prints of third-party libraries are told apart
(the caller shows them as log text). The process stays alive between requests, keeping loaded models in
memory: the first request pays process start and model loading, later ones only the case.

Requests::

    {"cmd": "segment", "id": "3", "inputs": {"t1c": "/tmp/x/t1c.nrrd", ...}, "output": "/tmp/x/label.nrrd",
     "model": null | "path or name", "device": "auto", "reference": null | "t1c", "options": {...},
     "brain_mask_output": null | "/tmp/x/brain.nrrd"}
    {"cmd": "info"}
    {"cmd": "quit"}

``options`` are keyword arguments of :func:`~MTSSSegmenterLib.pipeline.segment` (see :func:`segment_options`),
e.g. ``{"register": false, "n4": true}``. With ``brain_mask_output`` the brain mask the network saw is
written there too (uint8, on the label's grid) and named in the result event (``brain_mask``).

Events (``event`` key): ``ready`` (once, after the imports, with :func:`environment_info`), ``info``,
``progress`` (``stage``, ``fraction`` within the stage), ``log`` (``level``, ``message``), ``result``
(``summary`` of :meth:`SegmentationResult.summary`, ``output``, ``brain_mask`` when asked for), ``error``
(``kind``, ``message``).

A missing or broken torch/MONAI is reported as an ``error`` of kind ``dependency`` naming what to install,
then the process exits with status 3. Cancelling is done by the caller killing the process group.

Both ends of the protocol live here: :func:`main` is the process, :class:`WorkerClient` starts it, sends
requests, collects events on a reader thread and ends the whole process tree (no Slicer, no Qt).
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import queue
import shutil
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from .errors import BundleError, Cancelled, InputError, MTSSError, OutputError
from .process_tree import kill_tree, new_session_kwargs, process_exists

PREFIX = "@@MTSS "
EXIT_DEPENDENCY = 3


class EventWriter:
    """Writes protocol events as single prefixed JSON lines (flushed at once)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def __call__(self, event: str, **fields: Any) -> None:
        self._stream.write(PREFIX + json.dumps({"event": event, **fields}, default=str) + "\n")
        self._stream.flush()


class _EventLogHandler(logging.Handler):
    def __init__(self, emit: EventWriter) -> None:
        super().__init__(logging.INFO)
        self._emit = emit

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._emit("log", level=record.levelname.lower(), message=self.format(record))
        except Exception:  # pragma: no cover - logging must never kill the worker
            pass


def _dependency_message(exc: BaseException) -> str:
    missing = getattr(exc, "name", None) or str(exc)
    return (f"The segmentation engine cannot start: Python package '{missing}' is missing or broken "
            f"({exc.__class__.__name__}: {exc}) in {sys.executable}. In 3D Slicer, install the 'PyTorch' "
            "extension and click Segment again (MTSS then installs PyTorch through PyTorchUtils and MONAI "
            "with pip, after asking). Outside Slicer: pip install torch monai safetensors.")


def environment_info() -> dict[str, Any]:
    """Versions and GPUs this worker sees (also what the GUI shows next to the device choice)."""
    import torch

    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            try:
                free, total = torch.cuda.mem_get_info(i)
            except RuntimeError:
                free, total = 0, 0
            gpus.append({"index": i, "name": torch.cuda.get_device_name(i), "free_bytes": int(free),
                         "total_bytes": int(total)})
    from . import pipeline

    return {"python": sys.version.split()[0], "executable": sys.executable, "torch": torch.__version__,
            "cuda_available": torch.cuda.is_available(), "gpus": gpus, "pid": os.getpid(),
            "options": sorted(segment_options(pipeline))}


# Arguments of ``pipeline.segment`` that the request sets through its own fields, not through ``options``.
_REQUEST_FIELDS = frozenset({"images", "model", "device", "progress", "reference"})


def segment_options(pipeline: Any) -> dict[str, Any]:
    """The options ``pipeline.segment`` accepts (name -> default).

    The keyword arguments with a default of ``pipeline.segment`` (``register``, ``n4``, ``brain_mask_out``,
    ``output_spacing``), less those the request sets through its own fields.
    """
    parameters = inspect.signature(pipeline.segment).parameters.values()
    return {p.name: p.default for p in parameters if p.name not in _REQUEST_FIELDS
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.default is not p.empty}


def split_options(options: dict[str, Any], supported: dict[str, Any] | None) -> tuple[dict[str, Any], list[str]]:
    """Options the pipeline accepts, and warnings for requested ones it does not know.

    ``supported`` is what :func:`segment_options` found (name -> default). Options outside it are dropped:
    silently when they ask for nothing (False/None/empty), with a warning when they ask for something, so
    that a newer Slicer module talking to an older engine says what it could not do.
    """
    known = supported or {}
    accepted, warnings = {}, []
    for name, value in options.items():
        if name in known:
            accepted[name] = value
        elif value not in (None, False, "", 0):
            warnings.append(f"Option '{name}={value}' is not available in this MTSS version; it was ignored.")
    return accepted, warnings


def handle_segment(request: dict[str, Any], emit: EventWriter) -> None:
    """Run one segmentation request and emit its result (or raise)."""
    from . import pipeline
    from .io import write_image

    job = str(request.get("id", ""))

    def progress(stage: str, fraction: float) -> None:
        emit("progress", id=job, stage=stage, fraction=float(fraction))

    inputs = {str(k): str(v) for k, v in dict(request["inputs"]).items()}
    supported = segment_options(pipeline)
    options, warnings = split_options(dict(request.get("options") or {}), supported)
    brain_output = request.get("brain_mask_output") or None
    if brain_output and "brain_mask_out" in supported:
        options["brain_mask_out"] = True
    elif brain_output:
        warnings.append("This MTSS version cannot output the brain mask; it was left out.")
        brain_output = None
    progress("reading", 0.0)
    images = pipeline.read_inputs(inputs)
    result = pipeline.segment(images, model=request.get("model") or None, device=str(request.get("device") or "auto"),
                              progress=progress, reference=request.get("reference") or None, **options)
    output = write_image(result.label, request["output"], compress=False)
    extra = {}
    if brain_output and getattr(result, "brain_mask", None) is not None:
        extra["brain_mask"] = str(write_image(result.brain_mask, brain_output, compress=False))
    summary = result.summary()
    summary["warnings"] = list(summary.get("warnings", [])) + warnings
    emit("result", id=job, output=str(output), summary=summary, **extra)


def serve(stdin: TextIO, emit: EventWriter) -> int:
    """Answer requests until ``quit`` or the end of stdin. Returns the exit status."""
    for line in stdin:
        line = line.strip()
        if not line:
            continue
        try:
            request = json.loads(line)
        except json.JSONDecodeError as exc:
            emit("error", id="", kind="protocol", message=f"Request is not JSON ({exc}): {line[:200]}")
            continue
        cmd = request.get("cmd")
        if cmd == "quit":
            return 0
        if cmd == "info":
            emit("info", id=str(request.get("id", "")), **environment_info())
            continue
        if cmd != "segment":
            emit("error", id=str(request.get("id", "")), kind="protocol",
                 message=f"Unknown command {cmd!r}; known: segment, info, quit.")
            continue
        try:
            handle_segment(request, emit)
        except MTSSError as exc:
            emit("error", id=str(request.get("id", "")), kind=exc.__class__.__name__, message=str(exc))
        except (ImportError, OSError) as exc:
            kind = "dependency" if isinstance(exc, ImportError) else "OutputError"
            message = _dependency_message(exc) if isinstance(exc, ImportError) else str(exc)
            emit("error", id=str(request.get("id", "")), kind=kind, message=message)
        except Exception as exc:  # report, keep serving
            emit("log", level="error", message=traceback.format_exc())
            emit("error", id=str(request.get("id", "")), kind="internal",
                 message=f"Unexpected error in the segmentation engine: {exc.__class__.__name__}: {exc}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: import the engine, announce readiness, serve requests."""
    emit = EventWriter(sys.stdout)
    handler = _EventLogHandler(emit)
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        info = environment_info()  # imports torch and the pipeline (MONAI, SimpleITK)
    except ImportError as exc:
        emit("error", id="", kind="dependency", message=_dependency_message(exc))
        return EXIT_DEPENDENCY
    except Exception as exc:  # e.g. a torch build whose DLLs do not load
        emit("error", id="", kind="dependency", message=_dependency_message(exc))
        return EXIT_DEPENDENCY
    emit("ready", **info)
    return serve(sys.stdin, emit)


def default_python() -> str:
    """``PythonSlicer`` inside Slicer (same packages, no GUI), else the running interpreter."""
    if "slicer" in sys.modules and hasattr(sys.modules["slicer"], "app"):
        found = shutil.which("PythonSlicer")
        if found:
            return found
    return sys.executable


def parse_line(line: str) -> dict[str, Any]:
    """An event from one output line; lines without the prefix become ``log`` events."""
    text = line.rstrip("\r\n")
    if text.startswith(PREFIX):
        try:
            event = json.loads(text[len(PREFIX):])
            if isinstance(event, dict) and "event" in event:
                return event
        except json.JSONDecodeError:
            pass
    return {"event": "log", "level": "info", "message": text}


class WorkerClient:
    """One worker process: start, send requests, read events, end the whole process tree.

    Events are read on a daemon thread into a queue; :meth:`events` drains it without blocking the caller
    for more than ``timeout`` seconds. The process gets its own session (POSIX) or process group (Windows)
    so that :meth:`kill` also ends anything it started.
    """

    def __init__(self, python: str | None = None, extra_env: dict[str, str] | None = None) -> None:
        self.python = python or default_python()
        self.extra_env = dict(extra_env or {})
        self.process: subprocess.Popen[str] | None = None
        self._events: queue.Queue[dict[str, Any]] = queue.Queue()
        self._reader: threading.Thread | None = None
        self.info: dict[str, Any] | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def command(self) -> list[str]:
        return [self.python, "-u", "-m", "MTSSSegmenterLib.worker"]

    def start(self) -> None:
        """Start the process (returns at once; a ``ready`` event follows after the imports)."""
        env = dict(os.environ)
        env.update(self.extra_env)
        package_root = str(Path(__file__).resolve().parent.parent)  # the folder holding MTSSSegmenterLib
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
        env.setdefault("PYTHONIOENCODING", "utf-8")
        kwargs: dict[str, Any] = new_session_kwargs()
        self._events = queue.Queue()
        self.process = subprocess.Popen(self.command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, encoding="utf-8", errors="replace",
                                        bufsize=1, env=env, **kwargs)
        self._reader = threading.Thread(target=self._read, args=(self.process, self._events), daemon=True,
                                        name="MTSS worker reader")
        self._reader.start()

    @staticmethod
    def _read(process: subprocess.Popen[str], events: queue.Queue[dict[str, Any]]) -> None:
        if process.stdout is None:
            return
        for line in process.stdout:
            events.put(parse_line(line))
        events.put({"event": "exit", "returncode": process.wait()})

    def send(self, request: dict[str, Any]) -> None:
        if not self.alive() or self.process is None or self.process.stdin is None:
            raise BrokenPipeError("The MTSS worker process is not running.")
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()

    def events(self, timeout: float = 0.0) -> list[dict[str, Any]]:
        """Events received so far; waits up to ``timeout`` seconds for the first one."""
        out: list[dict[str, Any]] = []
        try:
            out.append(self._events.get(timeout=timeout) if timeout > 0 else self._events.get_nowait())
            while True:
                out.append(self._events.get_nowait())
        except queue.Empty:
            pass
        for event in out:
            if event.get("event") == "ready":
                self.info = {k: v for k, v in event.items() if k != "event"}
        return out

    def kill(self) -> None:
        """End the process and everything it started (process group / tree), at once."""
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        kill_tree(proc)

    def close(self, timeout: float = 3.0) -> None:
        """Ask the process to quit; kill it if it does not within ``timeout`` seconds."""
        proc = self.process
        if proc is None:
            return
        if proc.poll() is None:
            try:
                self.send({"cmd": "quit"})
                proc.wait(timeout=timeout)
            except (BrokenPipeError, OSError, subprocess.TimeoutExpired):
                self.kill()
        for stream in (proc.stdin, proc.stdout):
            try:
                if stream:
                    stream.close()
            except OSError:
                pass


STAGES: dict[str, tuple[float, float, str]] = {
    # state or worker stage: (overall progress at its start, at its end, what the user reads)
    "starting": (0.00, 0.05, "Starting the segmentation engine..."),
    "reading": (0.05, 0.10, "Reading the images..."),
    "loading model": (0.10, 0.20, "Loading the model..."),
    "preparing": (0.20, 0.35, "Preparing the images..."),
    "segmenting": (0.35, 0.85, "Segmenting..."),
    "finishing": (0.85, 0.92, "Finishing the label map..."),
    "importing": (0.92, 1.00, "Importing segments..."),
}
_ERRORS: dict[str, type[Exception]] = {"InputError": InputError, "BundleError": BundleError, "OutputError": OutputError}


class SegmentationJob:
    """One segmentation request to a worker, seen from the caller: state, progress, log, cancel, result.

    States: ``starting`` (process starting, models loading), ``running``, ``importing`` (result being put into
    the scene by ``importer``), then one of ``done``, ``failed``, ``cancelled``. :meth:`poll` is cheap and is
    meant to be called from a timer on the GUI thread; the import happens inside :meth:`poll`, so on the
    thread that calls it (MRML must be changed from the main thread).

    Args:
        client: the worker the request was sent to.
        request: the request (its ``id`` and ``output`` are used).
        folder: temporary folder of the job, removed when the job ends.
        importer: ``importer(label_path, summary) -> result`` turns the worker's output into the result.
        on_end: ``on_end(job, killed)`` is called once when the job ends.
    """

    def __init__(self, client: WorkerClient, request: dict[str, Any], folder: Path,
                 importer: Callable[[Path, dict[str, Any]], Any],
                 on_end: Callable[[SegmentationJob, bool], None] | None = None) -> None:
        self.client, self.request, self.folder = client, request, Path(folder)
        self._importer, self._on_end = importer, on_end
        self.state = "starting" if client.info is None else "running"
        self.progress = 0.0
        self.message = STAGES["starting"][2] if client.info is None else "Waiting for the segmentation engine..."
        self.log: list[str] = []
        self.summary: dict[str, Any] | None = None
        self.error: Exception | None = None
        self._result: Any = None
        self._pending: dict[str, Any] | None = None

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed", "cancelled")

    def _advance(self, stage: str, fraction: float) -> None:
        lo, hi, text = STAGES.get(stage, (self.progress, self.progress, stage))
        self.progress = max(self.progress, lo + (hi - lo) * min(max(fraction, 0.0), 1.0))
        self.message = text

    def poll(self, timeout: float = 0.0) -> tuple[str, float, str]:
        """Take in what the worker said; returns ``(state, progress 0..1, message)``."""
        if self.finished:
            return self.state, self.progress, self.message
        if self._pending is not None:  # import on the poll after the one that reported "importing"
            self._import(self._pending)
            return self.state, self.progress, self.message
        for event in self.client.events(timeout):
            kind = event.get("event")
            if kind == "log":
                self.log.append(str(event.get("message", "")))
            elif kind == "ready":
                self.state = "running"
                self.log.append(f"Segmentation engine ready (Python {event.get('python')}, torch {event.get('torch')}, "
                                f"CUDA {'available' if event.get('cuda_available') else 'not available'}).")
            elif event.get("id") not in (None, "", self.request["id"]):
                continue  # belongs to another request
            elif kind == "progress":
                self.state = "running"
                self._advance(str(event.get("stage")), float(event.get("fraction", 0.0)))
            elif kind == "result":
                self.summary = dict(event.get("summary") or {})
                self.state, self._pending = "importing", event
                self._advance("importing", 0.0)
                break
            elif kind == "error":
                cls = _ERRORS.get(str(event.get("kind")), MTSSError)
                self._fail(cls(str(event.get("message", "The segmentation failed."))), killed=event.get("id") == "")
                break
            elif kind == "exit":
                tail = "\n".join(self.log[-5:])
                self._fail(MTSSError(f"The segmentation engine stopped unexpectedly (exit status "
                                     f"{event.get('returncode')}). Last messages:\n{tail}"), killed=True)
                break
        return self.state, self.progress, self.message

    def _import(self, event: dict[str, Any]) -> None:
        self._pending = None
        try:
            self._result = self._importer(Path(str(event["output"])), self.summary or {})
        except Exception as exc:
            self._fail(exc, killed=False)
            return
        self.state, self.progress, self.message = "done", 1.0, "Done."
        self._end(killed=False)

    def _fail(self, error: Exception, killed: bool) -> None:
        self.error, self.state, self.message = error, "failed", str(error).splitlines()[0] if str(error) else "Failed."
        self._end(killed)

    def _end(self, killed: bool) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        if self._on_end is not None:
            self._on_end(self, killed)

    def cancel(self) -> None:
        """Stop now: end the worker's whole process tree; nothing is imported. Not an error."""
        if self.finished:
            return
        self.client.kill()
        self.state, self.message = "cancelled", "Cancelled."
        self._pending = None
        self._end(killed=True)

    def result(self) -> Any:
        """The imported result; raises the job's error, :class:`Cancelled`, or RuntimeError if still running."""
        if self.state == "done":
            return self._result
        if self.state == "cancelled":
            raise Cancelled("The segmentation was cancelled.")
        if self.state == "failed" and self.error is not None:
            raise self.error
        raise RuntimeError(f"The segmentation is still {self.state}; poll() until it has finished.")

    def wait(self, callback: Callable[[str, float, str], None] | None = None, interval: float = 0.1) -> Any:
        """Block until the job ends, reporting to ``callback``; a :class:`Cancelled` raised in it cancels."""
        while not self.finished:
            state, progress, message = self.poll(interval)
            if callback is not None:
                try:
                    callback(state, progress, message)
                except Cancelled:
                    self.cancel()
                    raise
        if callback is not None:
            callback(self.state, self.progress, self.message)
        return self.result()


_process_exists = process_exists  # kept for the tests of WorkerClient.kill


__all__ = ["PREFIX", "WorkerClient", "SegmentationJob", "STAGES", "EventWriter", "parse_line", "split_options",
           "segment_options", "default_python", "main"]


if __name__ == "__main__":
    sys.exit(main())
