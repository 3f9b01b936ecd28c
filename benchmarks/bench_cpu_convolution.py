"""One case at a time on the CPU: the seed network's forward (and forward + backward) at batch 1, with its 3D
convolutions as gliofed builds them (:class:`gliofed.model.OneDNNConv3d`: always oneDNN for float32 on the CPU)
against plain ``torch.nn.Conv3d`` (PyTorch's size rule, which sends a small single volume to ``slow_conv3d``).

    python benchmarks/bench_cpu_convolution.py [--threads 2] [--turns 3] [--repeats 5]

Scoring, condensation's passes over real cases, thresholds and Grad-CAM all read one case at a time. Prints one
row per shape: seconds per case of each path (median of interleaved turns), their ratio and the largest output
difference. Random weights: the time does not depend on what the network learned.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

#: (name, input shape at batch 1): the tiny and workshop presets' cached shapes, and a full-size one
SHAPES = (("tiny", (1, 4, 14, 32, 32)), ("workshop", (1, 4, 26, 48, 48)), ("full 128", (1, 4, 155, 128, 128)))


def generic(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` whose convolutions are plain ``torch.nn.Conv3d`` again (PyTorch picks the kernel)."""
    from gliofed.model import plain_convolutions

    return plain_convolutions(copy.deepcopy(model))


def seconds(model: torch.nn.Module, x: torch.Tensor, repeats: int, backward: bool) -> float:
    started = time.perf_counter()
    for _ in range(repeats):
        if backward:
            image = x.clone().requires_grad_(True)
            out = model(image)
            (out["seg"].float().mean() + out["idh"].float().sum()).backward()
        else:
            with torch.no_grad():
                model(x)
    return (time.perf_counter() - started) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-full", action="store_true", help="leave out the full-size shape (slow on a CPU)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from gliofed.model import build_model
    from gliofed.presets import train_preset

    torch.manual_seed(0)
    fast = build_model(train_preset("workshop", device="cpu")).eval()
    slow = generic(fast).eval()
    print(f"torch {torch.__version__}, {args.threads} threads, oneDNN available: "
          f"{torch.backends.mkldnn.is_available()}; seconds per case, median of {args.turns} interleaved turns")
    print("| shape | pass | plain Conv3d (PyTorch's rule) | OneDNNConv3d | ratio | largest output difference |")
    print("|---|---|---|---|---|---|")
    for name, shape in SHAPES:
        if args.skip_full and name.startswith("full"):
            continue
        x = torch.randn(shape)
        with torch.no_grad():
            difference = max(float((a - b).abs().max()) for a, b in zip(fast(x).values(), slow(x).values()))
        for backward in (False, True):
            repeats = 1 if name.startswith("full") else args.repeats
            seconds(fast, x, 1, backward), seconds(slow, x, 1, backward)  # warm-up
            turns = [(seconds(slow, x, repeats, backward), seconds(fast, x, repeats, backward))
                     for _ in range(args.turns)]
            before, after = (statistics.median(t[i] for t in turns) for i in (0, 1))
            print(f"| {name} {tuple(shape[1:])} | {'forward + backward' if backward else 'forward'} | "
                  f"{before:.4f} | {after:.4f} | {before / after:.1f}x | {difference:.1e} |")


if __name__ == "__main__":
    main()
