"""Where a simulated federated round's time goes: the sites' training, or set-up around it (issue 26 point 3).

One strategy (default FedAvg) runs ``--rounds`` rounds over a preset's synthetic cohort in the in-process simulator
(``gliofed.experiments.run_experiment``, as notebook 02 does). Every round's wall time (the history's ``wall_s``,
evaluation included) is split into:

  training      the sites' epochs (``engine.train_epoch``: batches, forward, backward, optimizer steps)
  loaders       making each site's training batches (``engine.TrainBatches``: views, workers, device cache)
  optimizer     making optimizers (``engine.make_optimizer``)
  model prep    moving / compiling the model for training (``engine.prepare_model``)
  model copies  the site's network built and loaded from the broadcast, its weights packed for the reply, the
                server's requests (``configure_round``) and aggregation
  evaluation    scoring the global model on the test split (``simulate._evaluate``)
  other         the rest (policy checks, reply validation, seeding, bookkeeping)

and the set-up share is ``1 - training / wall``. The first round also pays one-time costs (a site's first loader,
workers, verification, compilation); the summary gives the first round apart and the mean of the later ones.

Usage:
  python benchmarks/bench_round_overhead.py                        # workshop preset, FedAvg, 4 rounds, CPU
  python benchmarks/bench_round_overhead.py --preset tiny --rounds 2   # smoke run (seconds)
  python benchmarks/bench_round_overhead.py --device cuda          # on a GPU
Record figures in benchmarks/RESULTS.md with device and date (and whether the machine was idle).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

CATEGORIES = ("training", "loaders", "optimizer", "model prep", "model copies", "evaluation")


class Clock:
    """Seconds per category; nested timers count once, in the outermost category."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._depth = 0

    @contextmanager
    def timing(self, category: str):
        self._depth += 1
        started = time.perf_counter()
        try:
            yield
        finally:
            self._depth -= 1
            if self._depth == 0:
                self.seconds[category] += time.perf_counter() - started

    def wrap(self, owner, name: str, category: str) -> None:
        """Replace ``owner.name`` by a timed call of itself."""
        inner = getattr(owner, name)

        def timed(*args, **kwargs):
            with self.timing(category):
                return inner(*args, **kwargs)

        setattr(owner, name, timed)

    def take(self) -> dict[str, float]:
        taken = {category: self.seconds.get(category, 0.0) for category in CATEGORIES}
        self.seconds.clear()
        return taken


def instrument(clock: Clock, strategy) -> None:
    """Time the engine, the site's model handling, the server's requests and aggregation, and the evaluation."""
    import gliofed.engine as engine
    import gliofed.federated.simulate as simulate
    import gliofed.federated.site.site as site

    clock.wrap(engine, "train_epoch", "training")
    clock.wrap(engine, "TrainBatches", "loaders")
    clock.wrap(engine, "make_optimizer", "optimizer")
    clock.wrap(engine, "prepare_model", "model prep")
    for name in ("build_model", "arrays_to_state", "state_to_arrays"):
        clock.wrap(site, name, "model copies")
    clock.wrap(strategy, "configure_round", "model copies")
    clock.wrap(strategy, "aggregate", "model copies")
    clock.wrap(simulate, "_evaluate", "evaluation")


def prepare_cache(preset: str, work: Path, seed: int, cases_per_site: int | None, size: int | None) -> Path:
    """The preset's synthetic cohort and its cache under ``work`` (made once, reused)."""
    from gliofed.data.cache import preprocess
    from gliofed.data.synth import make_cohort
    from gliofed.presets import get_preset

    chosen = get_preset(preset)
    size = size or chosen.cache_size
    stamp = {"preset": preset, "seed": seed, "cases_per_site": cases_per_site, "size": size}
    cohort, cache = work / "cohort", work / f"cache_{size}"
    stamp_file = work / "stamp.json"
    if not (stamp_file.is_file() and json.loads(stamp_file.read_text()) == stamp and (cache / "index.csv").is_file()):
        make_cohort(cohort, preset=preset, seed=seed, cases_per_site=cases_per_site, progress=False, verbose=False)
        preprocess(cohort / "manifest.csv", cache, size=size, progress=False)
        stamp_file.write_text(json.dumps(stamp))
    return cache


def run(args: argparse.Namespace) -> dict:
    import torch

    from gliofed.experiments import run_experiment
    from gliofed.federated.server.strategies import make_strategy
    from gliofed.presets import get_preset, train_preset

    if args.threads:
        torch.set_num_threads(args.threads)
    cache = prepare_cache(args.preset, Path(args.work), args.seed, args.cases_per_site, args.size)
    config = train_preset(args.preset, device=args.device, seed=args.seed, num_workers=args.workers,
                          eval_batch=args.eval_batch if args.eval_batch == "auto" else int(args.eval_batch))
    clock = Clock()
    real_make = make_strategy

    def made(*a, **k):  # the experiment's own strategy object, instrumented
        strategy = real_make(*a, **k)
        instrument(clock, strategy)
        return strategy

    import gliofed.experiments.comparison as comparison

    comparison.make_strategy = made
    rounds_seen: list[dict] = []
    import gliofed.federated.simulate as simulate_module

    real_run_rounds = simulate_module.run_rounds

    def recorded(*a, **k):
        after = k.get("after_round")

        def after_round(rnd, history):
            rounds_seen.append({"round": rnd, "wall_s": history[-1]["wall_s"], **clock.take()})
            if after is not None:
                after(rnd, history)

        k["after_round"] = after_round
        return real_run_rounds(*a, **k)

    simulate_module.run_rounds = recorded
    distill = get_preset(args.preset).distill if args.strategy == "distill" else None
    clock.take()
    run_experiment(cache, args.strategy, config, args.rounds, local_epochs=args.local_epochs, distill=distill,
                   progress=False)
    for row in rounds_seen:
        row["other"] = max(row["wall_s"] - sum(row[c] for c in CATEGORIES), 0.0)
        row["setup_share"] = 1 - row["training"] / row["wall_s"]
    return {"preset": args.preset, "strategy": args.strategy, "device": args.device, "rounds": rounds_seen}


def summary_table(result: dict) -> str:
    import pandas as pd

    frame = pd.DataFrame(result["rounds"]).set_index("round")
    later = frame.iloc[1:] if len(frame) > 1 else frame
    rows = {"first round": frame.iloc[0], "later rounds (mean)": later.mean()}
    table = pd.DataFrame(rows).T[["wall_s", *CATEGORIES, "other", "setup_share"]]
    return table.round(3).to_string()


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="workshop")
    parser.add_argument("--strategy", default="fedavg")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers per site")
    parser.add_argument("--eval-batch", default="auto",
                        help="cases of one shape per forward pass when scoring (default auto: CPU 1, CUDA 8)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cases-per-site", type=int, default=None, help="default: the preset's")
    parser.add_argument("--size", type=int, default=None, help="cache in-plane size (default: the preset's)")
    parser.add_argument("--work", default="runs/bench_round_overhead", help="cohort and cache folder (reused)")
    parser.add_argument("--json", default=None, help="also write the per-round figures here")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    result = run(args)
    print(f"{result['strategy']} on the {result['preset']} preset, {result['device']}, {args.rounds} rounds, "
          f"eval batch {args.eval_batch} (seconds per round; setup_share = 1 - training / wall)")
    print(summary_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
