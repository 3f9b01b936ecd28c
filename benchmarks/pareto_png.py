"""Photograph the Pareto plots of a comparison (``pareto.html``, written by ``bench_comparison.py``'s merge) as a PNG
for ``benchmarks/RESULTS.md``, in headless Chromium: plotly's own image export (kaleido) needs the network.

Needs the ``test`` extra (Playwright) and Debian's ``chromium`` (``.ci/install-browser.sh``); a few seconds::

    python benchmarks/pareto_png.py runs/prereg/pareto.html benchmarks/results/comparison_pareto.png
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.viz import jupyter_browser as jb  # noqa: E402  (the repository root must be importable first)


def photograph(html: Path, png: Path, width: int = 1720) -> int:
    """Render ``html`` (a self-contained plotly page) and save the whole page as an optimised PNG at ``png``
    (written atomically); return its size in bytes.

    Raises:
        FileNotFoundError: ``html`` does not exist.
        RuntimeError: Playwright or Chromium is missing (the reason is in the message)."""
    from PIL import Image

    if not html.is_file():
        raise FileNotFoundError(f"{html}: no such file (run the merge of bench_comparison.py first).")
    reason = jb.browser_unavailable()
    if reason:
        raise RuntimeError(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=jb.chromium_path(), headless=True,
                                             args=jb.CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": 900})
            page.goto(html.resolve().as_uri())
            page.wait_for_selector(".main-svg", timeout=60_000)
            shot = page.screenshot(full_page=True)
        finally:
            browser.close()
    tmp = png.with_suffix(".tmp.png")
    Image.open(io.BytesIO(shot)).convert("RGB").save(tmp, format="PNG", optimize=True)
    tmp.replace(png)
    return png.stat().st_size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("html", type=Path, help="pareto.html of a merged comparison")
    parser.add_argument("png", type=Path, help="where the PNG goes")
    args = parser.parse_args(argv)
    try:
        size = photograph(args.html, args.png)
    except (FileNotFoundError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"{args.png}: {size / 1e3:.0f} kB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
