"""The background segmentation process that the Slicer module (and scripts) talk to.

Run as ``PythonSlicer -u -m MTSSSegmenterLib.worker`` (or any Python with MTSS installed). It reads one JSON
request per line on stdin and answers with event lines on stdout. Every event line starts with
:data:`PREFIX` followed by a JSON object, so that stray prints of third-party libraries are told apart
(the caller shows them as log text). The process stays alive between requests, keeping loaded models in
memory: the first request pays process start and model loading, later ones only the case.

Requests::

    {"cmd": "segment", "id": "3", "inputs": {"t1c": "/tmp/x/t1c.nrrd", ...}, "output": "/tmp/x/label.nrrd",
     "model": null | "path or name", "device": "auto", "reference": null | "t1c", "options": {...}}
    {"cmd": "info"}
    {"cmd": "quit"}

Events (``event`` key): ``ready`` (once, after the imports, with :func:`environment_info`), ``info``,
``progress`` (``stage``, ``fraction`` within the stage), ``log`` (``level``, ``message``), ``result``
(``summary`` of :meth:`SegmentationResult.summary`, ``output``), ``error`` (``kind``, ``message``).

A missing or broken torch/MONAI is reported as an ``error`` of kind ``dependency`` naming what to install,
then the process exits with status 3. Cancelling is done by the caller killing the process group.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from typing import Any, TextIO

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
            "options": sorted(getattr(pipeline, "SEGMENT_OPTIONS", {}))}


def split_options(options: dict[str, Any], supported: dict[str, Any] | None) -> tuple[dict[str, Any], list[str]]:
    """Options the pipeline accepts, and warnings for requested ones it does not know.

    ``supported`` is the pipeline's ``SEGMENT_OPTIONS`` (name -> default) when it declares one. Options it
    does not declare are dropped: silently when they ask for nothing (False/None/empty), with a warning
    when they ask for something this MTSS version cannot do yet (e.g. ``register=True``).
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
    options, warnings = split_options(dict(request.get("options") or {}), getattr(pipeline, "SEGMENT_OPTIONS", None))
    progress("preparing", 0.0)
    images = pipeline.read_inputs(inputs)
    result = pipeline.segment(images, model=request.get("model") or None, device=str(request.get("device") or "auto"),
                              progress=progress, reference=request.get("reference") or None, **options)
    output = write_image(result.label, request["output"], compress=False)
    summary = result.summary()
    summary["warnings"] = list(summary.get("warnings", [])) + warnings
    emit("result", id=job, output=str(output), summary=summary)


def serve(stdin: TextIO, emit: EventWriter) -> int:
    """Answer requests until ``quit`` or the end of stdin. Returns the exit status."""
    from .errors import MTSSError

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


if __name__ == "__main__":
    sys.exit(main())
