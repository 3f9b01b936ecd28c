"""A whole Flower federation on this machine (127.0.0.1): one SuperLink, one SuperNode per site, ``flwr run``.

For trying the Flower path on a laptop and for the tests. Every process is started here, in its own
session, and only those processes are stopped, by PID, also when something fails. Registered nodes are counted
with Flower's own CLI (``flwr supernode list --format json``, the Control API), and the SuperLink / SuperNode flags
are built for the installed Flower (1.41 serves every API over one HTTP ``--host``/``--port``; older releases took
one address per API):

>>> with LocalFederation(app_dir=".", work_dir="runs/flower-local") as federation:       # doctest: +SKIP
...     federation.add_site("brats21", cache="data/tiny/cache_32")
...     federation.add_site("upenn", cache="data/tiny/cache_32")
...     federation.run({"strategy": "fedavg", "num-server-rounds": 2, "preset": "tiny"})
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from gliofed.errors import GliofedError
from gliofed.runs import TrainingRun

__all__ = ["LocalFederation", "FlowerRunError", "free_port", "toml_value", "flower_version"]

#: the first Flower release whose SuperLink serves Fleet, Control and ServerAppIo over one HTTP --host/--port
HTTP_APIS = (1, 41)


class FlowerRunError(GliofedError):
    """A Flower process failed or a run did not finish in time."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def flower_version() -> tuple[int, int]:
    """(major, minor) of the installed ``flwr``."""
    from importlib.metadata import version

    major, minor = (int(part) for part in re.findall(r"\d+", version("flwr"))[:2])
    return major, minor


def toml_value(value) -> str:
    """A Python value as a TOML literal for ``--run-config`` / ``--node-config``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))


class LocalFederation:
    """SuperLink + SuperNodes on loopback (insecure: for one machine only), started and stopped by this object.

    Args:
        app_dir: the Flower app folder (the one whose ``pyproject.toml`` has ``[tool.flwr.app]``).
        work_dir: logs, ``FLWR_HOME`` and the SuperLink's state go here.
    """

    def __init__(self, app_dir: str | Path, work_dir: str | Path) -> None:
        self.app_dir = Path(app_dir).resolve()
        self.work_dir = Path(work_dir).resolve()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.processes: dict[str, subprocess.Popen] = {}
        self.last_run_id: str | None = None
        self.version = flower_version()
        self.fleet, self.serverappio, self.control = free_port(), free_port(), free_port()
        if self.version >= HTTP_APIS:  # one port for every API
            self.serverappio = self.control = self.fleet
        bin_dir = str(Path(sys.executable).parent)
        # a Jupyter kernel sets FORCE_COLOR, and `flwr` then wraps its JSON answers in colour codes that no parser
        # reads: the processes started here get plain text
        inherited = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "CLICOLOR_FORCE")}
        self.env = {**inherited, "FLWR_HOME": str(self.work_dir / "flwr_home"),
                    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "NO_COLOR": "1",
                    "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""), "PYTHONUNBUFFERED": "1"}
        home = self.work_dir / "flwr_home"
        home.mkdir(exist_ok=True)
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "gliofed-local"\n\n[superlink.gliofed-local]\n'
            f'address = "127.0.0.1:{self.control}"\ninsecure = true\n')

    # processes ------------------------------------------------------------------------------------------------
    def _start(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.work_dir / f"{name}.log", "w")  # noqa: SIM115 - closed in stop()
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.work_dir,
                                   start_new_session=True)
        process.log_file = log
        self.processes[name] = process
        return process

    def superlink_args(self) -> list[str]:
        """``flower-superlink`` flags for the installed Flower (loopback, insecure, state in ``work_dir``)."""
        if self.version >= HTTP_APIS:
            return ["--insecure", "--host", "127.0.0.1", "--port", str(self.fleet),
                    "--database", str(self.work_dir / "superlink.db")]
        return ["--insecure", "--fleet-api-address", f"127.0.0.1:{self.fleet}",
                "--serverappio-api-address", f"127.0.0.1:{self.serverappio}",
                "--control-api-address", f"127.0.0.1:{self.control}", "--storage-dir", str(self.work_dir / "storage")]

    def supernode_args(self, node_config: str) -> list[str]:
        """``flower-supernode`` flags for the installed Flower: this SuperLink, a free local port, the node config."""
        own = ["--port", str(free_port())] if self.version >= HTTP_APIS else [
            "--clientappio-api-address", f"127.0.0.1:{free_port()}"]
        return ["--insecure", "--superlink", f"127.0.0.1:{self.fleet}", *own, "--node-config", node_config]

    def start_superlink(self) -> None:
        bin_dir = Path(sys.executable).parent
        self._start("superlink", [str(bin_dir / "flower-superlink"), *self.superlink_args()])
        for port in sorted({self.control, self.fleet, self.serverappio}):
            self._wait_for_port(port, "superlink")

    def add_site(self, site: str, cache: str | Path, manifest: str | Path | None = None,
                 node_config: dict | None = None) -> None:
        """Start one SuperNode for ``site`` (its node config names the site and its own cache; ``node_config`` adds
        keys, e.g. the operator's ``policy-*`` settings)."""
        if "superlink" not in self.processes:
            self.start_superlink()
        node_config = " ".join([f"site={toml_value(site)} cache={toml_value(Path(cache).resolve())}",
                                *(f"{key}={toml_value(value)}" for key, value in (node_config or {}).items())])
        if manifest is not None:
            node_config += f" manifest={toml_value(Path(manifest).resolve())}"
        bin_dir = Path(sys.executable).parent
        registered = self._registered_nodes()
        name = f"supernode-{site}"
        self._start(name, [str(bin_dir / "flower-supernode"), *self.supernode_args(node_config)])
        # one registration at a time: concurrent first registrations can race in the SuperLink's state
        deadline = time.monotonic() + 60
        while self._registered_nodes() <= registered:
            if self.processes[name].poll() is not None:
                raise FlowerRunError(f"{name} exited with code {self.processes[name].returncode}: "
                                     f"{self._log_tail(name)}")
            if time.monotonic() > deadline:
                raise FlowerRunError(f"{name} did not register with the SuperLink within 60 s: {self._log_tail(name)}")
            time.sleep(0.5)

    def registered_nodes(self) -> list[dict]:
        """The SuperNodes the SuperLink knows, as ``flwr supernode list --format json`` reports them (each with
        ``node-id`` and ``status``)."""
        text = self._flwr("supernode", "list", "gliofed-local", "--format", "json", check=False)
        try:
            reply = json.loads(text[text.index("{"):text.rindex("}") + 1])
        except ValueError as error:
            raise FlowerRunError(f"flwr supernode list gave no JSON: {text[-500:]}") from error
        if not reply.get("success", False):
            return []  # the SuperLink is still starting
        return list(reply.get("nodes", []))

    def _registered_nodes(self) -> int:
        return sum(1 for node in self.registered_nodes() if node.get("status", "online") == "online")

    def _log_tail(self, name: str, chars: int = 1500) -> str:
        log = self.work_dir / f"{name}.log"
        return log.read_text(errors="ignore")[-chars:] if log.exists() else "(no log)"

    def stop_site(self, site: str) -> None:
        """Stop one SuperNode (and its ClientApp processes): a hospital dropping out."""
        self._stop(f"supernode-{site}")

    def _wait_for_port(self, port: int, name: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.processes[name].poll() is not None:
                raise FlowerRunError(f"{name} exited with code {self.processes[name].returncode}; see "
                                     f"{self.work_dir / (name + '.log')}.")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.2)
        raise FlowerRunError(f"{name} did not open port {port} within {timeout:.0f} s.")

    def _stop(self, name: str) -> None:
        process = self.processes.pop(name, None)
        if process is None:
            return
        if process.poll() is None:
            try:  # the process and the children it spawned (its own session)
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=15)
            except (ProcessLookupError, PermissionError):
                pass
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=5)
        process.log_file.close()

    def stop(self) -> None:
        """Stop every process this object started (SuperNodes first, then the SuperLink)."""
        for name in sorted(self.processes, key=lambda n: n == "superlink"):
            self._stop(name)

    def __enter__(self) -> LocalFederation:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # runs ------------------------------------------------------------------------------------------------------
    def run(self, run_config: dict, timeout: float = 600, on_poll=None) -> dict:
        """``flwr run`` the app with ``run_config`` overrides; wait until ``out-dir/model.safetensors`` appears.

        ``on_poll(history)`` is called about twice a second with the history written so far (tests use it to
        stop a node mid-run). Returns the final history (``out-dir/history.json``).
        """
        out_dir = Path(str(run_config.get("out-dir", self.work_dir / "out"))).resolve()
        run_config = {**run_config, "out-dir": str(out_dir)}
        overrides = " ".join(f"{k}={toml_value(v)}" for k, v in run_config.items())
        submitted = self._flwr("run", str(self.app_dir), "gliofed-local", "--run-config", overrides, "--format",
                               "json")
        match = re.search(r'"run-id":\s*"?(\d+)', submitted)
        if match is None:
            raise FlowerRunError(f"flwr run did not start a run: {submitted[-2000:]}")
        run_id = self.last_run_id = match.group(1)
        deadline = time.monotonic() + timeout
        result = TrainingRun(out_dir)
        history_path, model_path = result.path(TrainingRun.ROUNDS), result.path(TrainingRun.MODEL)
        last_check = time.monotonic()
        while not model_path.exists():
            if time.monotonic() > deadline:
                raise FlowerRunError(f"the Flower run did not finish within {timeout:.0f} s; logs in {self.work_dir}.")
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise FlowerRunError(f"{name} exited with code {process.returncode} during the run: "
                                         f"{self._log_tail(name)}")
            if time.monotonic() - last_check > 5:  # a failed ServerApp never writes the model: ask the SuperLink
                last_check = time.monotonic()
                status = self._flwr("ls", "gliofed-local", "--run-id", run_id, "--format", "json")
                if re.search(r"finished:(failed|stopped)", status):
                    raise FlowerRunError(f"Flower run {run_id} failed: {self.logs(run_id)[-3000:]}")
            if on_poll is not None and history_path.exists():
                with contextlib.suppress(json.JSONDecodeError):  # caught mid-write: the next poll reads it
                    on_poll(json.loads(history_path.read_text()))
            time.sleep(0.5)
        time.sleep(0.5)  # the checkpoint is written after the last history update
        return json.loads(history_path.read_text())

    def logs(self, run_id: str | None = None) -> str:
        """The ServerApp's log of a run (default: the last one), as ``flwr log`` prints it."""
        return self._flwr("log", run_id or self.last_run_id, "gliofed-local", "--show", check=False)

    def _flwr(self, *args: str, check: bool = True) -> str:
        done = subprocess.run([str(Path(sys.executable).parent / "flwr"), *args], env=self.env, cwd=self.work_dir,
                              capture_output=True, text=True, timeout=120)
        if check and done.returncode != 0:
            raise FlowerRunError(f"flwr {args[0]} failed: {done.stdout[-2000:]} {done.stderr[-2000:]}")
        return done.stdout + done.stderr
