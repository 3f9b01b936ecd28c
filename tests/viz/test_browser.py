"""The slice viewer as a workshop student meets it: notebook 04 on the ``tiny`` cohort, run in JupyterLab, in headless
Chromium (Debian's package, driven by Playwright). Screenshots of every step are kept under the test's tmp dir
(their folder is printed).

Skips, with the reason, only where Playwright or Chromium is missing; ``make test`` installs both
(``.ci/install-browser.sh``, as root).
"""

from __future__ import annotations

import shutil
import time

import numpy as np
import pytest

from tests.viz import jupyter_browser as jb

pytestmark = pytest.mark.browser

_missing = jb.browser_unavailable()
if _missing:
    pytest.skip(f"browser test skipped: {_missing}", allow_module_level=True)


class Session:
    """The running notebook: the page, where screenshots go, and a counter to name them in order."""

    def __init__(self, page, shots) -> None:
        self.page, self.shots, self.step = page, shots, 0

    def shot(self, name: str) -> None:
        self.step += 1
        self.page.locator(".gliofed-viewer").first.screenshot(path=self.shots / f"{self.step:02d}_{name}.png")


@pytest.fixture(scope="module")
def session(tiny_cohort, tmp_path_factory):
    started = time.monotonic()
    root = tmp_path_factory.mktemp("browser")
    data = shutil.copytree(tiny_cohort, root / "data")
    shots = tmp_path_factory.mktemp("viewer_screenshots")
    notebook = jb.prepare_notebook(root, {"preset": "tiny", "data_dir": str(data), "viewer_cases": 2, "seed": 0})
    with jb.jupyter_lab(root, root / "jupyterlab.log") as (base, token), jb.chromium(root / "profile") as page:
        jb.open_and_run(page, base, token, notebook.name)
        page.set_default_timeout(20_000)  # from here on everything is interactive
        session = Session(page, shots)
        session.shot("rendered")
        print(f"\nnotebook 04 ran in the browser in {time.monotonic() - started:.0f} s; screenshots: {shots}")
        yield session
        print(f"\nbrowser test: {time.monotonic() - started:.0f} s in all; screenshots: {shots}")


def test_viewer_renders(session):
    page = session.page
    assert page.locator(".gliofed-viewer .gliofed-figure .heatmaplayer image").count() >= 1
    assert page.locator(".gliofed-viewer .gliofed-figure .xtick").count() == 0  # axes hidden
    assert [page.locator(f".gliofed-viewer .gliofed-{name}").count() for name in
            ("case", "plane", "slice", "modality", "truth", "prediction", "cam", "cam-threshold", "opacity")] == [1] * 9
    assert np.asarray(jb.plot_pixels(page), float).std() > 10  # a picture, not an empty frame


def test_viewer_fits_a_1280_px_screen(session):
    page = session.page
    output = page.locator(".jp-OutputArea-output", has=page.locator(".gliofed-viewer")).first.bounding_box()
    for part in (".gliofed-figure", "table"):
        box = page.locator(f".gliofed-viewer {part}").first.bounding_box()
        assert box["x"] + box["width"] <= min(output["x"] + output["width"], jb.VIEWPORT["width"]) + 1, part


def _slider(name, key, times):
    def act(page):
        handle = page.locator(f".gliofed-viewer .gliofed-{name} .noUi-handle").first
        handle.focus()
        for _ in range(times):
            handle.press(key)
    return act


def _select(name, value):
    return lambda page: page.locator(f".gliofed-viewer .gliofed-{name} select").first.select_option(value)


def _tick(name):
    return lambda page: page.locator(f".gliofed-viewer .gliofed-{name} input").first.click()


def _button(name, text):
    return lambda page: page.locator(f".gliofed-viewer .gliofed-{name} button", has_text=text).first.click()


#: every control, in an order where each one has something visible to change
CONTROLS = [
    ("slice", _slider("slice", "ArrowLeft", 2)),
    ("contrast", _select("modality", "t1")),
    ("prediction", _tick("prediction")),
    ("truth", _tick("truth")),
    ("grad_cam", _select("cam", "idh")),
    ("cam_threshold", _slider("cam-threshold", "ArrowRight", 4)),
    ("opacity", _slider("opacity", "ArrowRight", 6)),
    ("plane", _button("plane", "coronal")),
    ("case", lambda page: page.locator(".gliofed-viewer .gliofed-case select").first.select_option(index=1)),
]


@pytest.mark.parametrize(("name", "act"), CONTROLS, ids=[name for name, _ in CONTROLS])
def test_each_control_changes_the_picture(session, name, act):
    page = session.page
    before = jb.plot_pixels(page)
    act(page)
    deadline, share = time.monotonic() + 10, 0.0
    while time.monotonic() < deadline and share < 0.002:
        page.wait_for_timeout(150)
        share = jb.changed(before, jb.plot_pixels(page))
    session.shot(name)
    assert share >= 0.002, f"{name}: the plot did not change within 10 s"
    if name == "prediction":  # the outline is drawn, in its stated colour
        assert jb.cyan_pixels(before) == 0 and jb.cyan_pixels(jb.plot_pixels(page)) > 20


def test_reload_keeps_the_figure(session):
    page = session.page
    before, box = jb.plot_pixels(page), jb.plot_area(page)
    bars = page.locator(".gliofed-viewer .gliofed-figure .colorbar").count()
    jb.save_and_reload(page)
    page.wait_for_timeout(500)
    session.shot("reloaded")
    after, reloaded = jb.plot_pixels(page), jb.plot_area(page)
    assert np.asarray(after, float).std() > 10  # not an empty frame
    assert page.locator(".gliofed-viewer .gliofed-figure .xtick").count() == 0  # axes still hidden
    assert reloaded["width"] / reloaded["height"] == pytest.approx(box["width"] / box["height"], rel=0.03)
    assert page.locator(".gliofed-viewer .gliofed-figure .colorbar").count() == bars  # no stray colour bars
    assert jb.changed(before, after) < 0.05  # the same picture as before the reload


def test_no_console_errors(session):
    assert session.page.errors == []


def test_label_and_grad_cam_colours_differ_as_drawn(session):
    """The colours the browser's figure holds: every ground-truth fill and the prediction outline far (CIE76 ΔE)
    from every colour of the Grad-CAM scale."""
    from gliofed.viz.colours import MIN_SEPARATION, palette_separation

    traces = session.page.evaluate("""() => Array.from(
        document.querySelector('.gliofed-viewer .js-plotly-plot').data,
        t => ({type: t.type, name: t.name, colorscale: t.colorscale || null}))""")
    scales = {(t["type"], t["name"]): t["colorscale"] for t in traces}
    truth = [c for _, c in scales[("heatmap", "truth")] if not c.replace(" ", "").startswith("rgba(0,0,0,0")]
    labels = set(truth) | {c for _, c in scales[("contour", "prediction")]}
    assert len(labels) == 4
    assert palette_separation(labels, scales[("heatmap", "cam")]) >= MIN_SEPARATION
