"""Regenerate the README's slice-viewer screenshots (docs/viewer_axial.png, docs/viewer_coronal.png).

A small synthetic cohort (the ``workshop`` preset's geometry, a few cases per site) is generated, a centralized model
is trained long enough to outline tumours, and notebook 04 is run in JupyterLab in headless Chromium, exactly as
``tests/viz/test_browser.py`` does; the viewer is then set up as a student would and photographed.

Needs the ``test`` extra (Playwright) and Debian's ``chromium`` (``.ci/install-browser.sh``). About 5 to 10 minutes
on 2 CPU cores, most of it training::

    python docs/make_viewer_screenshots.py            # writes docs/viewer_axial.png and docs/viewer_coronal.png
    python docs/make_viewer_screenshots.py --keep /tmp/shots   # also keep the data and the full-page shots there
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.viz import jupyter_browser as jb  # noqa: E402  (the repository root must be importable first)


def _save_small(png: bytes, path: Path) -> int:
    """Save a screenshot as an optimised PNG (under 100 KB for the viewer; a palette would band the colour bar);
    return its size in bytes."""
    from PIL import Image

    Image.open(io.BytesIO(png)).convert("RGB").save(path, optimize=True)
    return path.stat().st_size


def _train(data: Path, preset: str, seed: int, epochs: int) -> None:
    import torch

    from gliofed.experiments.comparison import train_and_save
    from gliofed.runs import TrainingRun
    from gliofed.workspace import Workspace

    torch.set_num_threads(2)
    ws, config = Workspace.prepare(data, preset, seed=seed, device="cpu")
    run_dir = ws.runs / "centralized"
    if not TrainingRun(run_dir).has_model:
        train_and_save(run_dir, ws.cache, "centralized", config, rounds=1, local_epochs=epochs, progress=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs", help="where the two PNGs go (default docs/)")
    parser.add_argument("--keep", type=Path, help="keep the data, JupyterLab's log and full-page shots here")
    parser.add_argument("--preset", default="workshop")
    parser.add_argument("--cases-per-site", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=15, help="centralized training epochs (default 15)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    missing = jb.browser_unavailable()
    if missing:
        raise SystemExit(f"cannot take screenshots: {missing}")

    from gliofed.data.synth import make_cohort

    started = time.monotonic()
    root = args.keep or Path(tempfile.mkdtemp(prefix="gliofed-screenshots-"))
    root.mkdir(parents=True, exist_ok=True)
    data = root / "data"
    if not (data / "manifest.csv").is_file():
        make_cohort(data, preset=args.preset, seed=args.seed, cases_per_site=args.cases_per_site, progress=False,
                    verbose=False)
    _train(data, args.preset, args.seed, args.epochs)
    print(f"cohort and model ready after {time.monotonic() - started:.0f} s")
    notebook = jb.prepare_notebook(root, {"preset": args.preset, "data_dir": str(data), "viewer_cases": 3,
                                          "seed": args.seed})
    with jb.jupyter_lab(root, root / "jupyterlab.log") as (base, token), jb.chromium(root / "profile") as page:
        jb.open_and_run(page, base, token, notebook.name)
        page.set_default_timeout(20_000)
        viewer = page.locator(".gliofed-viewer").first

        def settle() -> None:
            page.wait_for_timeout(1200)

        # axial, all overlays: truth filled, prediction outlined, segmentation Grad-CAM above the default 0.3
        page.locator(".gliofed-viewer .gliofed-prediction input").first.check()
        page.locator(".gliofed-viewer .gliofed-cam select").first.select_option("seg")
        settle()
        size = _save_small(viewer.screenshot(), args.out / "viewer_axial.png")
        print(f"{args.out / 'viewer_axial.png'}: {size / 1024:.0f} KB")
        if args.keep:
            page.screenshot(path=root / "page_axial.png")
        # coronal: no Grad-CAM, so the anatomy, the truth and the outline are easy to compare
        page.locator(".gliofed-viewer .gliofed-cam select").first.select_option("none")
        page.locator(".gliofed-viewer .gliofed-plane button", has_text="coronal").first.click()
        settle()
        size = _save_small(viewer.screenshot(), args.out / "viewer_coronal.png")
        print(f"{args.out / 'viewer_coronal.png'}: {size / 1024:.0f} KB")
        if args.keep:
            page.screenshot(path=root / "page_coronal.png")
        if page.errors:
            raise SystemExit(f"the page reported errors: {page.errors}")
    print(f"done in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
