"""`mtss benchmark`: latency, memory, parameters and GFLOPs of bundles against MONAI's SegResNet anchor.

Everything is measured in the same run on the same volume and device: the student (and any bundles or
teacher ensembles given), and MONAI's SegResNet with 16 filters (the ``brats_mri_segmentation``
configuration; random weights, timing only) as the anchor. Figures are medians of several runs.

Measured per model:
- ``network_s``: the network pass over one prepared case (sliding window where the case is bigger than the
  window), after a warm-up;
- ``files_in_out_s`` (bundles only): read the four files, segment, write the label map, in a warm process;
- ``cold_command_s`` (bundles only): a fresh ``mtss segment`` process, process start included;
- ``peak_mem_mb``: peak GPU memory (CUDA) or the peak resident memory of the cold process (CPU);
- ``params_m`` and ``gflop_128``: parameters (millions) and GFLOP per 128^3 patch (2 FLOP per MAC).
On the CPU the cold command is also compared with a cold ``python -c`` that imports torch and MONAI and runs
a bare SegResNet-8 sliding window (roi 96, overlap 0.25) over the same volume: the target is a third of it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

ANCHOR_H100 = {  # ../shared/ANCHORS.md, measured on the lent H100 (bf16, roi 128, overlap 0.5)
    "SegResNet-16 sliding window (H100, ANCHORS.md)": 0.268,
    "five SegResNet-16 ensemble (H100, ANCHORS.md)": 1.33,
}
TARGETS = {"cuda": {"network_s": 0.050, "files_in_out_s": 1.0, "cold_command_s": 5.0}}
RSS_WRAPPER = (
    "import atexit, resource, runpy, sys\n"
    "atexit.register(lambda: print('MTSS-MAXRSS-KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "
    "file=sys.stderr))\n"
    "sys.argv = ['mtss'] + sys.argv[1:]\n"
    "runpy.run_module('MTSSSegmenterLib.cli', run_name='__main__')\n"
)
BARE_SEGRESNET8 = (
    "import sys, torch, monai, SimpleITK as sitk, numpy as np\n"
    "from monai.networks.nets import SegResNet\n"
    "from monai.inferers import sliding_window_inference\n"
    "x = np.stack([sitk.GetArrayFromImage(sitk.ReadImage(f)).astype(np.float32) for f in sys.argv[1:]])\n"
    "net = SegResNet(init_filters=8, in_channels=4, out_channels=3, blocks_down=[1,2,2,4], blocks_up=[1,1,1]).eval()\n"
    "with torch.inference_mode():\n"
    "    sliding_window_inference(torch.from_numpy(x)[None], (96, 96, 96), 1, net, overlap=0.25)\n"
)


def gflops_per_patch(network: torch.nn.Module, in_channels: int, size: int = 128) -> float:
    """GFLOP of one forward pass over a ``size``^3 patch (FlopCounterMode counts 2 FLOP per MAC)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, in_channels, size, size, size, device=next(network.parameters()).device)
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        network.eval()(x)
    return counter.get_total_flops() / 1e9


def _median_time(fn, repeats: int, device: torch.device) -> float:
    import torch

    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _peak_reset(device: torch.device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device: torch.device) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def _cold(cmd: list[str]) -> tuple[float, float | None]:
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed: {p.stderr.strip()[-400:]}")
    rss = None
    for line in p.stderr.splitlines():
        if line.startswith("MTSS-MAXRSS-KB"):
            rss = int(line.split()[1]) / 1024
    return wall, rss


def bench_bundle(model: str | None, files: dict[str, Path], device: torch.device, repeats: int,
                 cold: bool) -> dict[str, Any]:
    from MTSSSegmenterLib.io import write_image
    from MTSSSegmenterLib.networks import count_parameters
    from MTSSSegmenterLib.pipeline import bundle_preprocessing, get_bundle, read_inputs, run_network, segment
    from MTSSSegmenterLib.preprocess import prepare_case

    bundle = get_bundle(model)
    images = read_inputs(files)
    case = prepare_case(images, bundle_preprocessing(bundle), device=device)
    _peak_reset(device)
    net_s = _median_time(lambda: run_network(bundle, case, device), repeats, device)
    row: dict[str, Any] = {
        "model": bundle.name, "kind": bundle.network_config.kind, "device": str(device),
        "params_m": count_parameters(bundle.network) / 1e6,
        "gflop_128": gflops_per_patch(bundle.network, bundle.network_config.in_channels),
        "working_spacing_mm": bundle.meta["preprocessing"]["spacing_mm"],
        "network_s": net_s, "peak_mem_mb": _peak(device),
    }
    with tempfile.TemporaryDirectory() as tmp:
        def files_in_out() -> None:
            result = segment(read_inputs(files), model=bundle, device=str(device))
            write_image(result.label, Path(tmp) / "seg.nii.gz")
        row["files_in_out_s"] = _median_time(files_in_out, repeats, device)
        if cold:
            args = [sys.executable, "-c", RSS_WRAPPER, "segment", "-o", str(Path(tmp) / "cold.nii.gz"),
                    "--device", device.type]
            args += ["--model", str(bundle.path)]
            for code, f in files.items():
                args += [f"--{code}", str(f)]
            walls, rss = [], None
            for _ in range(max(1, repeats // 2)):
                w, rss = _cold(args)
                walls.append(w)
            row["cold_command_s"] = statistics.median(walls)
            if device.type == "cpu":
                row["peak_mem_mb"] = rss
    return row


def bench_anchor(files: dict[str, Path], device: torch.device, repeats: int, filters: int = 16) -> dict[str, Any]:
    """MONAI SegResNet (random weights) with the usual sliding window over the 4-channel volume."""
    import torch

    import numpy as np
    import SimpleITK as sitk
    from monai.inferers import sliding_window_inference
    from monai.networks.nets import SegResNet

    net = SegResNet(init_filters=filters, in_channels=4, out_channels=3, blocks_down=[1, 2, 2, 4],
                    blocks_up=[1, 1, 1]).eval()
    x = np.stack([sitk.GetArrayFromImage(sitk.ReadImage(str(files[c]))).astype(np.float32)
                  for c in ("t1n", "t1c", "t2w", "t2f") if c in files])
    if x.shape[0] < 4:
        x = np.concatenate([x, np.zeros((4 - x.shape[0],) + x.shape[1:], np.float32)])
    xt = torch.from_numpy(x)[None].to(device)
    roi, overlap = ((128, 128, 128), 0.5) if device.type == "cuda" else ((96, 96, 96), 0.25)
    net.to(device)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)

    def run() -> None:
        with torch.inference_mode(), amp:
            sliding_window_inference(xt, roi, 1 if device.type == "cpu" else 4, net, overlap=overlap)

    _peak_reset(device)
    t = _median_time(run, repeats, device)
    return {"model": f"MONAI SegResNet-{filters} (anchor, random weights)", "kind": "segresnet",
            "device": str(device), "params_m": sum(p.numel() for p in net.parameters()) / 1e6,
            "gflop_128": gflops_per_patch(net.cpu(), 4), "working_spacing_mm": [1.0, 1.0, 1.0],
            "network_s": t, "peak_mem_mb": _peak(device), "sliding_window": {"roi": list(roi), "overlap": overlap}}


def bench_ensemble(spec: list[str], files: dict[str, Path], device: torch.device, repeats: int) -> dict[str, Any]:
    from MTSSTrainingLib.ensemble import load_ensemble  # written with the training engine

    ens = load_ensemble(spec)
    from MTSSSegmenterLib.pipeline import bundle_preprocessing, read_inputs, run_network
    from MTSSSegmenterLib.preprocess import prepare_case

    case = prepare_case(read_inputs(files), bundle_preprocessing(ens), device=device)
    _peak_reset(device)
    t = _median_time(lambda: run_network(ens, case, device), repeats, device)
    return {"model": ens.name, "kind": "ensemble", "device": str(device), "network_s": t,
            "peak_mem_mb": _peak(device)}


def default_case() -> Path:
    """The real BraTS case beside the checkout when present, else the bundled sample case."""
    here = Path(__file__).resolve()
    real = here.parents[3] / "shared" / "real" / "BraTS-GLI-00001-000"
    if real.is_dir():
        return real
    import MTSSSegmenterLib

    return Path(MTSSSegmenterLib.__file__).parent / "data" / "sample"


def table(rows: list[dict[str, Any]]) -> str:
    cols = [("model", "model", "{}"), ("device", "device", "{}"), ("params_m", "params (M)", "{:.2f}"),
            ("gflop_128", "GFLOP/128³", "{:.1f}"), ("network_s", "network (s)", "{:.3f}"),
            ("files_in_out_s", "files in→out warm (s)", "{:.3f}"), ("cold_command_s", "cold command (s)", "{:.2f}"),
            ("peak_mem_mb", "peak mem (MB)", "{:.0f}")]
    lines = ["| " + " | ".join(c[1] for c in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for key, _title, fmt in cols:
            v = r.get(key)
            cells.append("–" if v is None else fmt.format(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_benchmark(models: list[str | None], ensembles: list[list[str]], device_name: str, quick: bool,
                  case_dir: Path | None, repeats: int | None) -> dict[str, Any]:
    import torch

    from MTSSSegmenterLib.inference import resolve_device
    from MTSSSegmenterLib.io import find_case_files

    device = resolve_device(device_name)
    case = case_dir or default_case()
    files, _ = find_case_files(case)
    n = repeats or (1 if quick else 5)
    rows = [bench_bundle(m, files, device, n, cold=True) for m in (models or [None])]
    for spec in ensembles:
        rows.append(bench_ensemble(spec, files, device, n))
    rows.append(bench_anchor(files, device, n))
    result: dict[str, Any] = {"case": str(case), "device": str(device), "torch": torch.__version__,
                              "threads": torch.get_num_threads(), "repeats": n, "rows": rows,
                              "reference_anchors_h100_s": ANCHOR_H100}
    if device.type == "cpu":
        import os

        mods = [str(files[c]) for c in ("t1n", "t1c", "t2w", "t2f") if c in files]
        bare, _ = _cold([sys.executable, "-c", BARE_SEGRESNET8] + mods)
        student = rows[0].get("cold_command_s")
        result["cpu_target"] = {"bare_segresnet8_cold_s": bare, "student_cold_command_s": student,
                                "ratio": (student / bare) if student else None, "target_ratio": 1 / 3,
                                "met": bool(student and student <= bare / 3), "cpus": os.cpu_count()}
    else:
        student = rows[0]
        result["gpu_targets"] = {k: {"measured": student.get(k), "target": v,
                                     "met": student.get(k) is not None and student[k] <= v}
                                 for k, v in TARGETS["cuda"].items()}
    anchor = rows[-1]
    result["gflop_ratio_vs_segresnet16"] = rows[0]["gflop_128"] / anchor["gflop_128"]
    return result


def cmd_benchmark(args: argparse.Namespace) -> int:
    ensembles = [args.ensemble] if args.ensemble else []
    models: list[str | None] = list(args.model or [])
    result = run_benchmark(models, ensembles, args.device, args.quick, Path(args.case) if args.case else None,
                           args.repeats)
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"Case: {result['case']}  device: {result['device']}  torch {result['torch']}, "
          f"{result['threads']} threads, median of {result['repeats']}")
    print(table(result["rows"]))
    print(f"Student GFLOP per 128³ patch / SegResNet-16's: {result['gflop_ratio_vs_segresnet16']:.3f} (target ≤ 0.2)")
    if "cpu_target" in result:
        c = result["cpu_target"]
        print(f"CPU: cold `mtss segment` {c['student_cold_command_s']:.2f} s vs cold bare SegResNet-8 "
              f"{c['bare_segresnet8_cold_s']:.2f} s: ratio {c['ratio']:.2f} (target ≤ 0.33, {'met' if c['met'] else 'NOT met'})")
    for name, s in result["reference_anchors_h100_s"].items():
        print(f"reference: {name}: {s:.3f} s")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("benchmark", help="Time the student (and other models) against MONAI SegResNet.",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", help="bundle (repeatable; default: the default bundle)")
    p.add_argument("--ensemble", nargs="+", metavar="POP=RUN", help="a teacher ensemble to time as well")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--case", help="case folder (default: ../shared/real case if present, else the sample case)")
    p.add_argument("--repeats", type=int, help="runs per measurement (median); default 5, 1 with --quick")
    p.add_argument("--quick", action="store_true", help="student and anchor, one run each (CI)")
    p.add_argument("--json", action="store_true")
    p.add_argument("-o", "--output", help="also write the JSON here")
    p.set_defaults(func=cmd_benchmark)
