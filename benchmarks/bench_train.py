"""Training-step throughput of the default MultiTaskUNet, model-only and through gliofed's engine.

Modes (each: warm-up steps, then timed steps; volumes per second and peak memory):
  fp32        eager fp32
  bf16        bf16 autocast
  bf16+cl     bf16 autocast + channels_last_3d
  bf16+cl+compile   the above + torch.compile
  engine      gliofed's own loop (CaseDataset over a real on-disk cache -> DataLoader -> train_epoch),
              with the engine's defaults on this device (bf16 + channels_last_3d on CUDA; --compile adds compile)

Usage:
  python benchmarks/bench_train.py                       # full size: batch 2, 4x155x128x128, CUDA if present
  python benchmarks/bench_train.py --device cpu --shape 4,16,48,48 --steps 3 --warmup 1   # smoke run
Record figures in benchmarks/RESULTS.md with device and date.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch


def _peak_memory(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB (GPU)"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB (host RSS)"


def _model_only(mode: str, shape, batch: int, steps: int, warmup: int, device: torch.device) -> float:
    from gliofed.losses import MultiTaskLoss
    from gliofed.model import MultiTaskUNet

    torch.manual_seed(0)
    model = MultiTaskUNet().to(device)
    channels_last = "cl" in mode
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    if "compile" in mode:
        model = torch.compile(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    loss_fn = MultiTaskLoss()
    x = torch.randn(batch, *shape, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    seg = torch.randint(0, 4, (batch, 1, *shape[1:]), device=device)
    has_mask = torch.ones(batch, dtype=torch.bool, device=device)
    labels = torch.tensor([[1, 0, 1, 2]] * batch, device=device)
    use_bf16 = mode.startswith("bf16")

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            out = model(x)
        loss, _ = loss_fn(out, seg, has_mask, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return batch * steps / (time.perf_counter() - start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _write_cache(folder: Path, cases: int, shape) -> None:
    """A real cache on disk (fp16 image + uint8 seg per case, index.csv) of random full-size cases."""
    rng = np.random.default_rng(0)
    (folder / "cases").mkdir(parents=True)
    rows = []
    for i in range(cases):
        subject = f"bench_{i:03d}"
        image = rng.standard_normal(shape, dtype=np.float32).astype(np.float16)
        np.save(folder / "cases" / f"{subject}.image.npy", image)
        np.save(folder / "cases" / f"{subject}.seg.npy", rng.integers(0, 4, shape[1:], dtype=np.uint8))
        rows.append({"subject_id": subject, "dataset": "bench", "site": f"s{i % 2}", "split": "train", "idh": 1,
                     "codeletion": 0, "mgmt": 1, "grade": 2, "age": 50, "sex": "M", "has_mask": True,
                     "depth": shape[1], "height": shape[2], "width": shape[3], "fingerprint": "bench"})
    pd.DataFrame(rows).to_csv(folder / "index.csv", index=False)


def _engine(shape, batch: int, steps: int, warmup: int, device: torch.device, workers: int, compile_: bool) -> float:
    from gliofed.config import TrainConfig
    from gliofed.data.dataset import CaseDataset
    from gliofed.engine import make_loader, make_optimizer, prepare_model, train_epoch
    from gliofed.losses import MultiTaskLoss
    from gliofed.model import build_model

    config = TrainConfig(batch_size=batch, device=str(device), compile=compile_, num_workers=workers)
    with tempfile.TemporaryDirectory() as tmp:
        _write_cache(Path(tmp), batch * (steps + warmup), shape)
        dataset = CaseDataset(tmp)
        model = prepare_model(build_model(config), config, device)
        optimizer = make_optimizer(model, config)
        loss_fn = MultiTaskLoss()
        channels_last = config.channels_last and device.type == "cuda"
        warm = torch.utils.data.Subset(dataset, range(batch * warmup))
        timed = torch.utils.data.Subset(dataset, range(batch * warmup, len(dataset)))
        train_epoch(model, make_loader(warm, batch, True, 0, workers), loss_fn, optimizer, device, True,
                    channels_last, progress=False)
        _sync(device)
        start = time.perf_counter()
        train_epoch(model, make_loader(timed, batch, True, 1, workers), loss_fn, optimizer, device, True,
                    channels_last, progress=False)
        _sync(device)
        return batch * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shape", default="4,155,128,128", help="C,D,H,W of one volume")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--workers", type=int, default=8, help="DataLoader workers for the engine mode")
    parser.add_argument("--modes", default="fp32,bf16,bf16+cl,bf16+cl+compile,engine")
    args = parser.parse_args()
    device = torch.device(args.device)
    shape = tuple(int(v) for v in args.shape.split(","))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    rows = []
    for mode in args.modes.split(","):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        if mode == "engine":
            rate = _engine(shape, args.batch, args.steps, args.warmup, device, args.workers, compile_=False)
        elif mode == "engine+compile":
            rate = _engine(shape, args.batch, args.steps, args.warmup, device, args.workers, compile_=True)
        else:
            rate = _model_only(mode, shape, args.batch, args.steps, args.warmup, device)
        rows.append({"mode": mode, "vol/s": round(rate, 2), "peak memory": _peak_memory(device)})
        print(rows[-1], flush=True)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"\ndevice: {name}; torch {torch.__version__}; batch {args.batch} x {shape}")
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
