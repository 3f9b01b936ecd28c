"""The gliofed ServerApp: FedAvg, FedProx or distillation federation over Flower, from run config.

Run config (``[tool.flwr.app.config]`` in ``pyproject.toml``; override with ``flwr run . <superlink>
--run-config 'strategy="distill" num-server-rounds=5'``):

``strategy`` (fedavg | fedprox | distill), ``num-server-rounds``, ``local-epochs``, ``mu`` (FedProx),
``preset`` (training recipe and distillation preset: tiny | workshop | paper), ``seed``, ``modalities``,
``size`` (in-plane size sites preprocess to), ``min-nodes`` (nodes to wait for before round 1),
``min-sites`` (valid replies a round needs), ``round-timeout`` (seconds to wait for replies),
``connect-timeout`` (seconds to wait for ``min-nodes``), ``out-dir`` (where the final ``model.ckpt`` and
``history.json`` go, on the SuperLink's machine).

The server never sees a scan: it holds the model, sends declared payloads and aggregates declared replies,
exactly as in the in-process simulator (same :func:`federated_round`, same seeds, same payload bytes).
"""

from __future__ import annotations

import json
import logging
import time

from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp
from monai.utils import set_determinism

from gliofed.federated.flower.records import payload_to_record, record_to_payload
from gliofed.federated.strategies import FederationError, make_strategy
from gliofed.model import build_model
from gliofed.presets import get_preset
from gliofed.runs import TrainingRun

__all__ = ["app", "FLOWER_STRATEGIES", "connect_sites", "flower_exchange"]

log = logging.getLogger("gliofed.federated.flower")
app = ServerApp()

#: strategies that run over Flower (centralized needs pooled scans, local-only needs no server)
FLOWER_STRATEGIES = ("fedavg", "fedprox", "distill")


def connect_sites(grid: Grid, min_nodes: int, timeout: float) -> dict[str, int]:
    """Wait for ``min_nodes`` SuperNodes, ask each which site it is; return site -> node ID."""
    deadline = time.monotonic() + timeout
    while len(nodes := sorted(grid.get_node_ids())) < min_nodes:
        if time.monotonic() > deadline:
            raise FederationError(f"only {len(nodes)} of {min_nodes} SuperNodes connected within {timeout:.0f} s.")
        time.sleep(0.5)
    questions = [Message(content=RecordDict({"site": ConfigRecord({})}), dst_node_id=node,
                         message_type=MessageType.QUERY) for node in nodes]
    sites = {}
    for reply in grid.send_and_receive(questions, timeout=timeout):
        if reply.has_error():
            log.warning("node %s did not identify itself: %s", reply.metadata.src_node_id, reply.error.reason)
            continue
        name = str(reply.content.config_records["site"]["site"])
        if name in sites:
            raise FederationError(f"two SuperNodes claim site {name!r} (nodes {sites[name]} and "
                                  f"{reply.metadata.src_node_id}).")
        sites[name] = reply.metadata.src_node_id
    return dict(sorted(sites.items()))


def flower_exchange(grid: Grid, nodes: dict[str, int], rnd: int, timeout: float):
    """The Flower transport for :func:`federated_round`: one TRAIN message per site, replies within ``timeout``.

    A site whose node is gone, errs, or does not answer in time gets an exception as its answer, so the
    round goes on with the others (and :func:`federated_round` enforces ``min-sites``)."""

    def exchange(requests: dict) -> dict:
        connected = set(grid.get_node_ids())
        answers, messages, site_of = {}, [], {}
        for site, (task, outgoing, settings) in requests.items():
            if nodes[site] not in connected:
                answers[site] = ConnectionError(f"node {nodes[site]} of site {site} is no longer connected")
                continue
            message = Message(content=payload_to_record(outgoing, task, settings), dst_node_id=nodes[site],
                              message_type=MessageType.TRAIN, group_id=str(rnd))
            messages.append(message)
            site_of[nodes[site]] = site
        for reply in grid.send_and_receive(messages, timeout=timeout):
            site = site_of.get(reply.metadata.src_node_id)
            if site is None:
                continue
            if reply.has_error():
                answers[site] = ConnectionError(f"node {nodes[site]}: {reply.error.reason}")
            else:
                answers[site] = record_to_payload(reply.content)[0]
        for site in site_of.values():
            answers.setdefault(site, TimeoutError(f"no reply from site {site} within {timeout:.0f} s"))
        return answers

    return exchange


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    name = str(cfg.get("strategy", "fedavg"))
    if name not in FLOWER_STRATEGIES:
        raise FederationError(f"strategy {name!r} does not run over Flower; choose one of "
                              f"{', '.join(FLOWER_STRATEGIES)}.")
    preset, seed = get_preset(str(cfg.get("preset", "workshop"))), int(cfg.get("seed", 0))
    rounds, min_sites = int(cfg.get("num-server-rounds", 3)), int(cfg.get("min-sites", 1))
    config = preset.train.replace(seed=seed, device="cpu",
                                  modalities=tuple(str(cfg.get("modalities", "t1,t1ce,t2,flair")).split(",")))
    strategy = make_strategy(name, int(cfg.get("local-epochs", 1)), float(cfg.get("mu", 0.01)), preset.distill, seed)
    run = TrainingRun(str(cfg.get("out-dir", "runs/flower")))

    set_determinism(seed=config.seed)  # the same initial model as the simulator's
    model = build_model(config)
    nodes = connect_sites(grid, int(cfg.get("min-nodes", 2)), float(cfg.get("connect-timeout", 120)))
    log.warning("gliofed %s over Flower: %d rounds, sites %s", name, rounds, nodes)
    history = []
    for rnd in range(1, rounds + 1):
        started = time.perf_counter()
        exchange = flower_exchange(grid, nodes, rnd, float(cfg.get("round-timeout", 600)))
        bytes_up, bytes_down, excluded, info = strategy.run_round(model, rnd, list(nodes), config, exchange,
                                                                  min_sites=min_sites,
                                                                  max_payload_bytes=256 * 2**20)
        for site, reason in excluded.items():
            log.warning("round %d: site %s left out (%s); the round goes on with %d site(s)", rnd, site, reason,
                        len(nodes) - len(excluded))
        history.append({"round": rnd, "wall_s": time.perf_counter() - started, "bytes_up": bytes_up,
                        "bytes_down": bytes_down, "excluded": excluded,
                        "info": json.loads(json.dumps(info, default=float))})
        run.save_rounds(name, history)
    run.save_model(model, config, epoch=rounds, extra={"history": history, "strategy": name, "engine": "flower"})
    log.warning("saved %s and %s", run.path(TrainingRun.MODEL), run.path(TrainingRun.ROUNDS))
