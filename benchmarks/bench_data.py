"""The training data path alone: cache -> device-ready batch, no model (issue 26 point 4).

A real cache of random full-size cases (fp16 image + uint8 mask per case, index with sizes and checksums) is
written to a temporary folder (or ``--cache`` names one), and each mode runs ``--epochs`` epochs of
:class:`gliofed.engine.TrainBatches` with augmentation: every batch ends on the device as the model takes it
(float32, augmented, channels_last_3d on CUDA), and the device is synchronised before the clock stops.

Modes:
  legacy        the path before issue 26: float32 cases, MONAI's per-case augmentation in the loader, fp32 copies
                (``augment_on="loader"``: what the CPU still does by default, for its numbers)
  loader-wN     fp16 cases through a DataLoader with N persistent workers (``--workers``), pinned, non-blocking,
                cast and augmented on the device
  device-cache  every case held on the device (in memory on the CPU), indexed there each step

The first epoch of each mode is a warm-up (workers start, cases verified, the device cache filled); the rate is
over the later epochs. With ``--train-steps K`` the engine's own training rate (``fit``, the default model, the same
cases, the engine's defaults on this device) is measured too, and each mode's ratio to it is printed: the data path
must not be what the GPU waits for.

Usage:
  python benchmarks/bench_data.py                                  # full size 4x155x128x128, CPU or CUDA
  python benchmarks/bench_data.py --device cpu --train-steps 2     # the CPU figures with the engine's rate
  python benchmarks/bench_data.py --shape 4,12,32,32 --cases 8 --epochs 2   # smoke run
Record figures in benchmarks/RESULTS.md with device and date (and whether the machine was idle).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))


def write_cache(folder: Path, cases: int, shape: tuple[int, ...], seed: int = 0) -> Path:
    """A real on-disk cache of ``cases`` random cases of ``shape`` (C, D, H, W), all labelled, with masks."""
    from gliofed.data.cache import write_case_files, write_index

    rng = np.random.default_rng(seed)
    rows = []
    for i in range(cases):
        subject = f"bench_{i:04d}"
        image = rng.standard_normal(shape, dtype=np.float32)
        files = write_case_files(folder, subject, image, rng.integers(0, 4, shape[1:], dtype=np.uint8))
        rows.append({"subject_id": subject, "dataset": "bench", "site": f"s{i % 2}", "split": "train", "idh": i % 2,
                     "codeletion": 0, "mgmt": 1, "grade": i % 3, "age": 50, "sex": "M", "has_mask": True,
                     "depth": shape[1], "height": shape[2], "width": shape[3], "fingerprint": "bench", **files})
    write_index(folder, rows)
    return folder


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def data_rate(cache: Path, mode: str, device, batch: int, epochs: int, seed: int = 0) -> float:
    """Volumes per second of device-ready batches over epochs 2..``epochs`` of ``mode``."""
    from gliofed.config import TrainConfig
    from gliofed.data.dataset import CaseDataset
    from gliofed.engine import TrainBatches

    config = TrainConfig(batch_size=batch, device=str(device), seed=seed, augment=True)
    if mode == "legacy":
        config = config.replace(augment_on="loader", device_cache="off")
    elif mode.startswith("loader-w"):
        config = config.replace(augment_on="device", device_cache="off", num_workers=int(mode.removeprefix("loader-w")))
    elif mode == "device-cache":
        config = config.replace(augment_on="device", device_cache="on")
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    dataset = CaseDataset(cache)
    with TrainBatches(dataset, config, device) as batches:
        volumes, started = 0, None
        for epoch in range(epochs):
            if epoch == 1 or epochs == 1:
                _sync(device)
                started, volumes = time.perf_counter(), 0
            for item in batches.epoch(epoch):
                volumes += item["image"].shape[0]
        _sync(device)
        return volumes / (time.perf_counter() - started)


def train_rate(cache: Path, device, batch: int, steps: int, seed: int = 0) -> float:
    """The engine's training rate on the same cases (``fit``, default model, this device's defaults), volumes
    per second over ``steps`` steps after one warm-up step."""
    import torch

    from gliofed.config import TrainConfig
    from gliofed.data.dataset import CaseDataset
    from gliofed.engine import fit, seed_everything
    from gliofed.model import build_model

    config = TrainConfig(batch_size=batch, device=str(device), seed=seed)
    dataset = CaseDataset(cache)
    warm = torch.utils.data.Subset(dataset, range(batch))
    timed = torch.utils.data.Subset(dataset, range(batch, batch * (steps + 1)))
    seed_everything(seed)
    model = build_model(config)
    fit(model, warm, config, epochs=1, progress=False)
    _sync(device)
    started = time.perf_counter()
    fit(model, timed, config, epochs=1, progress=False)
    _sync(device)
    return batch * steps / (time.perf_counter() - started)


def build_parser() -> argparse.ArgumentParser:
    """The command line (also used by ``gpu_check.py --dry-run`` to check the arguments it will pass)."""
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shape", default="4,155,128,128", help="C,D,H,W of one volume")
    parser.add_argument("--cases", type=int, default=24, help="cases in the cache")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per mode (the first is a warm-up)")
    parser.add_argument("--workers", default="0,2,4", help="worker counts of the loader modes")
    parser.add_argument("--modes", default=None, help="comma-separated (default: legacy, the loaders, device-cache)")
    parser.add_argument("--train-steps", type=int, default=0, help="also time the engine's training (0: skip)")
    parser.add_argument("--cache", default=None, help="an existing cache to read (default: write a temporary one)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    parser.add_argument("--json", default=None, help="also write the figures here")
    return parser


def main(argv: list[str] | None = None) -> int:
    import pandas as pd
    import torch

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    shape = tuple(int(v) for v in args.shape.split(","))
    modes = (args.modes.split(",") if args.modes else
             ["legacy", *(f"loader-w{w}" for w in args.workers.split(",")), "device-cache"])
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(args.cache) if args.cache else write_cache(Path(tmp), args.cases, shape)
        rows = [{"mode": mode, "vol/s": data_rate(cache, mode, device, args.batch, args.epochs)} for mode in modes]
        engine = train_rate(cache, device, args.batch, args.train_steps) if args.train_steps else None
    for row in rows:
        row["vol/s"] = round(row["vol/s"], 2)
        if engine:
            row["x engine training"] = round(row["vol/s"] / engine, 1)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}; torch {torch.__version__}; batch {args.batch} x {shape}; {args.cases} cases; "
          f"{args.epochs - 1 if args.epochs > 1 else 1} timed epoch(s) per mode")
    if engine:
        print(f"engine training rate (fit, {args.train_steps} steps): {engine:.3f} vol/s")
    print(pd.DataFrame(rows).to_string(index=False))
    if args.json:
        Path(args.json).write_text(json.dumps({"device": name, "shape": shape, "engine_vol_s": engine, "rows": rows},
                                              indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
