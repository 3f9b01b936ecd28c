"""The ``gliofed`` command. User errors print one line (no traceback) and exit non-zero."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from gliofed.errors import GliofedError

__all__ = ["main", "build_parser"]


def _parse_value(text: str):
    """Notebook parameter values from the command line: int, float, bool, None or string."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _cmd_synth(args: argparse.Namespace) -> int:
    from gliofed.data.synth import make_cohort

    make_cohort(args.out, preset=args.preset, seed=args.seed, difficulty=args.difficulty,
                sites=tuple(args.sites.split(",")) if args.sites else None, cases_per_site=args.cases_per_site,
                workers=args.workers)
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from gliofed.data.check import check_manifest

    report = check_manifest(args.manifest, workers=args.workers)
    print(report)
    return 0 if report.ok else 1


def _cmd_preprocess(args: argparse.Namespace) -> int:
    from gliofed.data.cache import preprocess

    report = preprocess(args.manifest, args.cache, size=args.size, workers=args.workers)
    print(report)
    return 0


def _cmd_notebooks(args: argparse.Namespace) -> int:
    from gliofed.notebooks import run_notebooks

    run_notebooks(args.out, {k: _parse_value(v) for k, v in args.parameters or []})
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gliofed", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("synth", help="generate the synthetic multi-site cohort")
    p.add_argument("--preset", default="workshop", choices=["tiny", "workshop", "paper"])
    p.add_argument("--out", required=True, help="output folder (receives manifest.csv)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--difficulty", type=float, default=0.5, help="0 (easy) .. 1 (hard); default 0.5")
    p.add_argument("--sites", help="comma-separated subset of sites (default: all five)")
    p.add_argument("--cases-per-site", type=int, help="override the preset's subjects per site")
    p.add_argument("--workers", type=int, default=1)
    p.set_defaults(func=_cmd_synth)

    p = commands.add_parser("check", help="report every problem of a manifest and its files")
    p.add_argument("manifest")
    p.add_argument("--workers", type=int, default=1)
    p.set_defaults(func=_cmd_check)

    p = commands.add_parser("preprocess", help="preprocess a manifest into the case cache")
    p.add_argument("manifest")
    p.add_argument("--cache", required=True, help="cache folder")
    p.add_argument("--size", type=int, default=128, help="in-plane size (default 128, the seed's)")
    p.add_argument("--workers", type=int, default=1)
    p.set_defaults(func=_cmd_preprocess)

    p = commands.add_parser("notebooks", help="execute the ordered notebooks with papermill")
    sub = p.add_subparsers(dest="action", required=True)
    run = sub.add_parser("run", help="run notebooks/01_... onwards in order")
    run.add_argument("--out", default="runs/notebooks", help="folder for executed notebooks and HTML")
    run.add_argument("-p", "--parameter", nargs=2, action="append", dest="parameters", metavar=("KEY", "VALUE"))
    run.set_defaults(func=_cmd_notebooks)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gliofed`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except GliofedError as error:
        print(f"gliofed: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
