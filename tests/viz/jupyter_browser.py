"""Drive notebook 04's slice viewer in a real browser: JupyterLab on 127.0.0.1 (own session, stopped by PID) and
Debian's Chromium through Playwright. Used by ``tests/viz/test_browser.py`` and ``docs/make_viewer_screenshots.py``.

Playwright's own browser download needs the internet, so the system ``chromium`` is launched instead, with the
background services that would hammer a closed network switched off.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "notebooks" / "04_interpretability_viewer.ipynb"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage"]
#: a laptop screen: the viewer must fit it
VIEWPORT = {"width": 1280, "height": 900}


def browser_unavailable() -> str | None:
    """Why the browser test cannot run here, or ``None`` when it can."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (it is in the `test` extra: pip install -e '.[test]')"
    if chromium_path() is None:
        return ("no Chromium on PATH: `make test` installs Debian's `chromium` with apt-get when run as root; "
                "otherwise install it yourself (apt-get install chromium)")
    return None


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def prepare_notebook(folder: Path, parameters: dict, name: str = NOTEBOOK.name) -> Path:
    """Notebook 04 with ``parameters`` injected by papermill (not executed): the browser runs it."""
    import papermill

    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    papermill.execute_notebook(str(NOTEBOOK), str(target), parameters=parameters, prepare_only=True,
                               progress_bar=False)
    return target


@contextmanager
def jupyter_lab(root: Path, log: Path, timeout: float = 90.0) -> Iterator[tuple[str, str]]:
    """Run JupyterLab on 127.0.0.1 serving ``root``; yield (base URL, token). Settings, runtime files and workspaces
    live under ``root/.jupyter`` (nothing of the user's is read or written). Stopped by its process group's ID."""
    port, token = _free_port(), secrets.token_hex(16)
    home = root / ".jupyter"
    settings = home / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True, exist_ok=True)
    # no news or update checks: the machine has no internet and a toast would cover the page
    (settings / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false",
                                                                          "checkForUpdates": False}))
    env = {k: v for k, v in os.environ.items() if k != "GLIOFED_STATIC_VIEWER"}
    env.update(JUPYTER_CONFIG_DIR=str(home / "config"), JUPYTER_RUNTIME_DIR=str(home / "runtime"),
               JUPYTERLAB_SETTINGS_DIR=str(home / "settings"), JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"),
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])))
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
               f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
               "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=None", "--LabApp.extension_manager=readonly",
               *(["--allow-root"] if os.geteuid() == 0 else [])]  # CI containers run as root
    with open(log, "wb") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=root,
                                  start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"JupyterLab did not start; its log:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
        yield base, token
    finally:
        # the server and its kernels share the session we gave it: end that group, by the server's PID
        try:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        except ProcessLookupError:
            pass


@contextmanager
def chromium(profile: Path) -> Iterator[object]:
    """A headless Chromium page (1280 x 900) with a fresh profile; ``page.errors`` collects console errors and
    uncaught exceptions."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=chromium_path(), headless=True, args=CHROMIUM_FLAGS, viewport=VIEWPORT)
        try:
            page = context.pages[0] if context.pages else context.new_page()
            page.errors = []
            page.on("console", lambda message: page.errors.append(f"console: {message.text}")
                    if message.type == "error" else None)
            page.on("pageerror", lambda error: page.errors.append(f"page error: {error}"))
            yield page
        finally:
            context.close()


def open_and_run(page, base: str, token: str, notebook: str, timeout_s: float = 150.0) -> None:
    """Open ``notebook`` in JupyterLab, run all its cells and wait until the viewer is drawn."""
    page.set_default_timeout(timeout_s * 1000)
    page.goto(f"{base}/lab/tree/{notebook}?token={token}")
    page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget"
                           " && window.jupyterapp.shell.currentWidget.sessionContext"
                           " && window.jupyterapp.shell.currentWidget.sessionContext.session"
                           " && window.jupyterapp.shell.currentWidget.sessionContext.session.kernel"
                           " && window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.status === 'idle'")
    finished = page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']",
                          has_text="Traceback")
    if finished is False or errors.count():
        raise AssertionError(f"notebook failed: {errors.first.inner_text()[:2000] if errors.count() else ''}")
    wait_for_viewer(page)


def wait_for_viewer(page) -> None:
    """Wait until the viewer's plot has drawn its image."""
    page.locator(".gliofed-viewer .gliofed-figure .heatmaplayer image").first.wait_for(state="attached")
    page.locator(".gliofed-viewer").scroll_into_view_if_needed()
    page.wait_for_timeout(300)  # let plotly finish the frame


def save_and_reload(page) -> None:
    """Save the notebook (so the page finds its outputs again) and reload the page: the widgets come back from the
    live kernel."""
    page.evaluate("() => window.jupyterapp.commands.execute('docmanager:save')")
    page.reload()
    page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget")
    wait_for_viewer(page)


def plot_area(page):
    """The plot area (inside the axes) of the viewer's figure, as a page clip rectangle."""
    return page.locator(".gliofed-viewer .gliofed-figure .nsewdrag").first.bounding_box()


def figure_pixels(page) -> np.ndarray:
    """RGB pixels of the viewer's whole figure (title, labels, key and colour bar included)."""
    return _png(page.locator(".gliofed-viewer .gliofed-figure").first.screenshot())


def plot_pixels(page) -> np.ndarray:
    """RGB pixels of the plot area only."""
    return _png(page.screenshot(clip=plot_area(page)))


def _png(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def changed(before: np.ndarray, after: np.ndarray) -> float:
    """Share of pixels that differ (0 when the shapes differ is impossible: then everything changed)."""
    if before.shape != after.shape:
        return 1.0
    return float(np.any(before != after, axis=-1).mean())


def cyan_pixels(pixels: np.ndarray) -> int:
    """Pixels of the prediction outline's colour (cyan; anti-aliased edges included)."""
    r, g, b = (pixels[..., i].astype(int) for i in range(3))
    return int(((r < 90) & (g > 190) & (b > 190)).sum())
