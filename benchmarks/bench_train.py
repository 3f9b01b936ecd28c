"""Training-step throughput of the default MultiTaskUNet: the bare model step, and gliofed's whole engine, in one run.

Bare modes (the model step alone on one resident batch: forward, loss, backward, optimizer step; the optimizer the
engine would make on this device, fused on CUDA):
  fp32                  eager fp32
  bf16                  bf16 autocast
  bf16+cl               bf16 autocast + channels_last_3d
  bf16+cl+compile       the above + torch.compile
  bf16+cl+compile+graphs   the above in the ``reduce-overhead`` mode (CUDA graphs; CUDA only)
Engine modes (gliofed's own loop, as real training runs it: a real on-disk cache -> ``TrainBatches`` with
augmentation -> ``train_epoch``; one epoch of ``--steps`` batches per timing, its per-epoch costs included):
  engine                the engine's defaults on this device (CUDA: bf16, channels_last_3d, compile, fixed depth,
                        device cache when it fits, augmentation on the device; CPU: fp32, augmentation in the loader)
  engine-loader         the same with the device cache off: ``--workers`` persistent DataLoader workers
  engine-device-aug     (CPU) the GPU's data path on the CPU: fp16 cases, augmentation on the device

Every mode is warmed up, then the modes take turns (``--repeats`` rounds of all modes, ``--steps`` steps each), so
that a machine whose load drifts slows every mode alike; a mode's rate is its median over the rounds. The summary
gives each engine mode's ratio to the best bare mode and to the bare mode of the engine's own precision (fp32 on the
CPU, where the engine does not autocast).

Usage:
  python benchmarks/bench_train.py                              # full size (batch 2 x 4x155x128x128), CUDA if present
  python benchmarks/bench_train.py --preset-shape tiny --device cpu       # batch 4 x 4x14x32x32
  python benchmarks/bench_train.py --preset-shape workshop --device cpu   # batch 4 x 4x20x48x48
  python benchmarks/bench_train.py --device cpu --shape 4,8,24,24 --steps 2 --warmup 1 --repeats 1   # smoke run
Record figures in benchmarks/RESULTS.md with device and date (and whether the machine was idle).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

#: (batch, C, D, H, W) of the presets' caches: tiny (cache 32, depths 6-16), workshop (cache 48, depths ~10-27),
#: full (the seed's 155 x 128 x 128)
PRESET_SHAPES = {"tiny": (4, 4, 14, 32, 32), "workshop": (4, 4, 20, 48, 48), "full": (2, 4, 155, 128, 128)}
BARE_MODES = ("fp32", "bf16", "bf16+cl", "bf16+cl+compile", "bf16+cl+compile+graphs")
ENGINE_MODES = ("engine", "engine-loader", "engine-device-aug")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB (GPU)"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB (host RSS, whole run)"


class Bare:
    """The model step alone on one resident batch."""

    def __init__(self, mode: str, shape, batch: int, device: torch.device) -> None:
        from gliofed.config import TrainConfig
        from gliofed.engine import make_optimizer
        from gliofed.losses import MultiTaskLoss
        from gliofed.model import MultiTaskUNet

        torch.manual_seed(0)
        self.device, self.bf16 = device, mode.startswith("bf16")
        model = MultiTaskUNet().to(device)
        channels_last = "+cl" in mode
        if channels_last:
            model = model.to(memory_format=torch.channels_last_3d)
        self.optimizer = make_optimizer(model, TrainConfig())
        if "compile" in mode:
            model = torch.compile(model, mode="reduce-overhead" if "graphs" in mode else None)
        self.model, self.loss_fn = model, MultiTaskLoss()
        self.x = torch.randn(batch, *shape, device=device)
        if channels_last:
            self.x = self.x.contiguous(memory_format=torch.channels_last_3d)
        self.seg = torch.randint(0, 4, (batch, 1, *shape[1:]), device=device)
        self.has_mask = torch.ones(batch, dtype=torch.bool)
        self.labels = torch.tensor([[1, 0, 1, 2]] * batch)

    def steps(self, n: int) -> int:
        for _ in range(n):
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                out = self.model(self.x)
            loss, _ = self.loss_fn.terms(out, self.seg, self.has_mask, self.labels)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        return n * self.x.shape[0]


def write_cache(folder: Path, cases: int, shape) -> None:
    """A real cache on disk (fp16 image + uint8 seg per case, index.csv with sizes and checksums)."""
    from gliofed.data.cache import write_case_files, write_index

    rng = np.random.default_rng(0)
    rows = []
    for i in range(cases):
        subject = f"bench_{i:03d}"
        files = write_case_files(folder, subject, rng.standard_normal(shape, dtype=np.float32),
                                 rng.integers(0, 4, shape[1:], dtype=np.uint8))
        rows.append({"subject_id": subject, "dataset": "bench", "site": f"s{i % 2}", "split": "train", "idh": 1,
                     "codeletion": 0, "mgmt": 1, "grade": 2, "age": 50, "sex": "M", "has_mask": True,
                     "depth": shape[1], "height": shape[2], "width": shape[3], "fingerprint": "bench", **files})
    write_index(folder, rows)


class Engine:
    """gliofed's loop as real training runs it, one epoch of ``steps`` batches per call."""

    def __init__(self, mode: str, cache: Path, batch: int, device: torch.device, workers: int) -> None:
        from gliofed.config import TrainConfig
        from gliofed.data.dataset import CaseDataset
        from gliofed.engine import TrainBatches, make_optimizer, prepare_model
        from gliofed.losses import MultiTaskLoss
        from gliofed.model import build_model

        config = TrainConfig(batch_size=batch, device=str(device), num_workers=workers)
        if mode == "engine-loader":
            config = config.replace(device_cache="off")
        elif mode == "engine-device-aug":
            config = config.replace(augment_on="device", device_cache="off")
        torch.manual_seed(0)
        model = build_model(config)
        self.model = prepare_model(model, config, device)
        self.optimizer = make_optimizer(model, config)
        self.loss_fn, self.config, self.device = MultiTaskLoss(), config, device
        self.batches = TrainBatches(CaseDataset(cache), config, device)
        self.epoch = 0

    def steps(self, _n: int) -> int:
        from gliofed.engine import train_epoch

        train_epoch(self.model, self.batches.epoch(self.epoch), self.loss_fn, self.optimizer, self.device,
                    self.config.amp, self.batches.channels_last, progress=False)
        self.epoch += 1
        return len(self.batches.dataset)


def measure(modes: list[str], shape, batch: int, steps: int, warmup: int, repeats: int, device: torch.device,
            workers: int, cache: Path) -> list[dict]:
    runners, peaks = {}, {}
    for mode in modes:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        runner = Engine(mode, cache, batch, device, workers) if mode in ENGINE_MODES else Bare(mode, shape, batch,
                                                                                              device)
        runner.steps(warmup)  # compiles, autotunes, starts workers, fills the device cache (engine: one epoch)
        _sync(device)
        runners[mode], peaks[mode] = runner, _peak_memory(device)
        print(f"  warmed up {mode}", flush=True)
    rates: dict[str, list[float]] = {mode: [] for mode in modes}
    for _ in range(repeats):
        for mode in modes:
            _sync(device)
            started = time.perf_counter()
            volumes = runners[mode].steps(steps)
            _sync(device)
            rates[mode].append(volumes / (time.perf_counter() - started))
    return [{"mode": mode, "vol/s": statistics.median(rates[mode]), "runs": [round(r, 3) for r in rates[mode]],
             "peak memory": peaks[mode]} for mode in modes]


def summarise(rows: list[dict], device: torch.device) -> list[dict]:
    bare = [row for row in rows if row["mode"] in BARE_MODES]
    best = max(bare, key=lambda row: row["vol/s"]) if bare else None
    own = next((row for row in bare if row["mode"] == ("fp32" if device.type == "cpu" else "bf16+cl+compile")),
               None)
    for row in rows:
        if row["mode"] in ENGINE_MODES:
            if best:
                row["x best bare"] = round(row["vol/s"] / best["vol/s"], 3)
            if own:
                row[f"x {own['mode']}"] = round(row["vol/s"] / own["vol/s"], 3)
    return rows


def build_parser() -> argparse.ArgumentParser:
    """The command line (also used by ``gpu_check.py --dry-run`` to check the arguments it will pass)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--preset-shape", choices=sorted(PRESET_SHAPES), default=None,
                        help="batch and shape of a preset's cache (overrides --shape and --batch)")
    parser.add_argument("--shape", default="4,155,128,128", help="C,D,H,W of one volume")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20, help="steps per timing")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3, help="rounds of timings, the modes taking turns")
    parser.add_argument("--workers", type=int, default=None,
                        help="DataLoader workers of the engine modes (default: 8 on CUDA, 0 on the CPU)")
    parser.add_argument("--modes", default=None,
                        help="comma-separated (default: every bare mode this device runs and the engine modes)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    parser.add_argument("--json", default=None, help="also write the figures here")
    return parser


def main(argv: list[str] | None = None) -> int:
    import pandas as pd

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    batch, shape = args.batch, tuple(int(v) for v in args.shape.split(","))
    if args.preset_shape:
        batch, *shape = PRESET_SHAPES[args.preset_shape]
        shape = tuple(shape)
    workers = args.workers if args.workers is not None else (8 if device.type == "cuda" else 0)
    if args.modes:
        modes = args.modes.split(",")
    elif device.type == "cuda":
        modes = [*BARE_MODES, "engine", "engine-loader"]
    else:  # no compile on the CPU (the engine does not compile there) and no CUDA graphs
        modes = ["fp32", "bf16", "bf16+cl", "engine", "engine-device-aug"]
    unknown = [m for m in modes if m not in BARE_MODES + ENGINE_MODES]
    if unknown:
        parser.error(f"unknown mode(s) {', '.join(unknown)}")
    with tempfile.TemporaryDirectory() as tmp:
        if any(m in ENGINE_MODES for m in modes):
            write_cache(Path(tmp), batch * args.steps, shape)
        rows = summarise(measure(modes, shape, batch, args.steps, args.warmup, args.repeats, device, workers,
                                 Path(tmp)), device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"\ndevice: {name}; torch {torch.__version__}; batch {batch} x {shape}; {args.steps} steps per timing, "
          f"median of {args.repeats} turns; engine workers {workers}")
    table = pd.DataFrame(rows).drop(columns=["runs"])
    table["vol/s"] = table["vol/s"].round(3)
    print(table.to_string(index=False))
    if args.json:
        Path(args.json).write_text(json.dumps({"device": name, "batch": batch, "shape": shape, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
