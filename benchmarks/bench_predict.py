"""Wall time of `gliofed predict` on synthetic cases: preprocessing + network + inverse + NIfTI writing per case.

    python benchmarks/bench_predict.py [--preset tiny] [--size 32] [--cases 3]

The model is the seed's network with random weights (the time does not depend on what it learned).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--cases", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)

    from gliofed.config import TrainConfig
    from gliofed.data.cache import PREPROCESS_VERSION
    from gliofed.data.manifest import read_manifest
    from gliofed.data.synth import make_cohort
    from gliofed.inference import predict_cases
    from gliofed.model import build_model
    from gliofed.runs import save_checkpoint
    from gliofed.vocab import MODALITIES

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_cohort(tmp / "cohort", preset=args.preset, seed=0, progress=False, verbose=False)
        manifest = read_manifest(tmp / "cohort" / "manifest.csv").head(args.cases)
        config = TrainConfig(device="cpu")
        recorded = {"size": args.size, "modalities": list(MODALITIES), "version": PREPROCESS_VERSION}
        checkpoint = save_checkpoint(tmp / "model.safetensors", build_model(config), config, preprocessing=recorded)
        cases = [{"subject_id": r.subject_id, **{m: getattr(r, m) for m in MODALITIES}} for r in manifest.itertuples()]
        shape = tuple(__import__("nibabel").load(cases[0]["flair"]).shape)
        predict_cases(checkpoint, cases[:1], tmp / "warm", device="cpu", progress=False)  # imports, first call
        started = time.perf_counter()
        predict_cases(checkpoint, cases, tmp / "out", device="cpu", progress=False)
        per_case = (time.perf_counter() - started) / len(cases)
    print(f"predict: {per_case:.2f} s per case (scan {shape}, size {args.size}, seed network, CPU, 1 thread, "
          f"{len(cases)} cases)")


if __name__ == "__main__":
    main()
