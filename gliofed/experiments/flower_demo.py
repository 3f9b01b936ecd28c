"""A Flower app folder for the installed gliofed, so that notebook 05 can run a real Flower federation on loopback
(:class:`~gliofed.federated.flower.launcher.LocalFederation`) from anywhere, not only from a checkout whose
``pyproject.toml`` carries ``[tool.flwr.app]``.

The folder holds one ``pyproject.toml`` naming the installed ServerApp and ClientApp and the run config defaults
(the same as the repository's, tested); ``flwr run`` packs it into a FAB, and every SuperNode loads the apps from
its own installed gliofed, as a hospital's node does.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from gliofed.fileio import atomic_write_text

__all__ = ["FLOWER_COMPONENTS", "FLOWER_RUN_CONFIG", "flower_app", "bytes_per_round", "wire_gap"]

#: the apps a SuperLink runs (as in the repository's ``[tool.flwr.app.components]``)
FLOWER_COMPONENTS = {"serverapp": "gliofed.federated.server.server_app:app",
                     "clientapp": "gliofed.federated.site.client_app:app"}
#: the run config defaults (as in the repository's ``[tool.flwr.app.config]``); ``--run-config`` overrides them
FLOWER_RUN_CONFIG = {"strategy": "fedavg", "num-server-rounds": 3, "local-epochs": 1, "mu": 0.01, "aggregation": "mean",
                     "preset": "workshop", "seed": 0, "modalities": "t1,t1ce,t2,flair", "size": 0, "min-nodes": 2,
                     "min-sites": 1, "round-timeout": 600, "connect-timeout": 120, "out-dir": "runs/flower",
                     "distill": "", "dp": "", "norm": "batch", "federated-evaluation": True}


def _toml(value) -> str:
    from gliofed.federated.flower.launcher import toml_value

    return toml_value(value)


def flower_app(folder: str | Path) -> Path:
    """Write a Flower app folder for the installed gliofed (a ``pyproject.toml`` with ``[project]`` and
    ``[tool.flwr.app]``) and return it; ``LocalFederation(app_dir=...)`` runs it.

    Args:
        folder: where to write it (created).
    """
    from gliofed import __version__

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["[project]", 'name = "gliofed"', f'version = "{__version__}"',
             'description = "gliofed federation on Flower (the installed package\'s apps)"', 'license = "Apache-2.0"',
             "", "[tool.flwr.app]", 'publisher = "gliofed"', "", "[tool.flwr.app.components]"]
    lines += [f"{key} = {_toml(value)}" for key, value in FLOWER_COMPONENTS.items()]
    lines += ["", "[tool.flwr.app.config]"] + [f"{key} = {_toml(value)}" for key, value in FLOWER_RUN_CONFIG.items()]
    atomic_write_text(folder / "pyproject.toml", "\n".join(lines) + "\n")
    return folder


def bytes_per_round(history: dict, strategy: str | None = None) -> pd.DataFrame:
    """A Flower run's ``history.json`` (what :meth:`LocalFederation.run` returns) as one row per round and site:
    bytes sent to the site (down) and received from it (up), and why a site sat a round out."""
    rows = []
    for record in history.get("rounds", []):
        for site in sorted(set(record.get("bytes_up", {})) | set(record.get("bytes_down", {}))):
            rows.append({"strategy": strategy or history.get("strategy", ""), "round": record["round"], "site": site,
                         "bytes_down": int(record.get("bytes_down", {}).get(site, 0)),
                         "bytes_up": int(record.get("bytes_up", {}).get(site, 0)),
                         "excluded": (record.get("excluded") or {}).get(site, "")})
    return pd.DataFrame(rows, columns=["strategy", "round", "site", "bytes_down", "bytes_up", "excluded"])


def wire_gap(simulated: list[dict], flower: list[dict]) -> pd.DataFrame:
    """Two runs' round records (``History.rounds`` of the simulator, ``history["rounds"]`` of a Flower run) side by
    side: one row per round, site and direction (``up``/``down``) with both byte counts and their ``difference``
    (Flower minus simulator; a site missing from one run counts 0 there).

    The same strategy, seed and sites send the same payloads: the same fields, shapes and dtypes. A FedAvg reply's
    ``meta.json`` also carries the site's mean training loss as decimal text, and two processes' float32 training can
    differ in the last bits on some CPUs, so an upload may differ by exactly the difference in length of that text
    (a byte or two); nothing else may.

    Raises:
        ValueError: the runs have different numbers of rounds, or a pair of records names different rounds.

    >>> wire_gap([{"round": 1, "bytes_up": {"a": 10}, "bytes_down": {"a": 5}}],
    ...          [{"round": 1, "bytes_up": {"a": 11}, "bytes_down": {"a": 5}}])["difference"].tolist()
    [0, 1]
    """
    rows = []
    for first, second in zip(simulated, flower, strict=True):
        if first.get("round", second.get("round")) != second.get("round", first.get("round")):
            raise ValueError(f"round {first.get('round')} of one run lined up with round {second.get('round')}.")
        for direction in ("down", "up"):
            key = f"bytes_{direction}"
            mine, theirs = first.get(key, {}), second.get(key, {})
            for site in sorted(set(mine) | set(theirs)):
                a, b = int(mine.get(site, 0)), int(theirs.get(site, 0))
                rows.append({"round": second.get("round", first.get("round")), "site": site, "direction": direction,
                             "simulator": a, "flower": b, "difference": b - a})
    return pd.DataFrame(rows, columns=["round", "site", "direction", "simulator", "flower", "difference"])
