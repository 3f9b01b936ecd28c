"""The gliofed ServerApp: FedAvg, FedProx or distillation federation over Flower, from run config.

Run config (``[tool.flwr.app.config]`` in ``pyproject.toml``; override with ``flwr run . <superlink>
--run-config 'strategy="distill" num-server-rounds=5'``):

``strategy`` (fedavg | fedprox | distill), ``num-server-rounds``, ``local-epochs``, ``mu`` (FedProx),
``aggregation`` (fedavg/fedprox: mean | median | trimmed-mean),
``preset`` (training recipe and distillation preset: tiny | workshop | paper), ``seed``, ``modalities``,
``size`` (in-plane size sites preprocess to), ``min-nodes`` (nodes to wait for before round 1),
``min-sites`` (valid replies a round needs), ``round-timeout`` (seconds to wait for replies),
``connect-timeout`` (seconds to wait for ``min-nodes``), ``out-dir`` (where the final ``model.safetensors`` and
``history.json`` go, on the SuperLink's machine), ``distill`` (overrides of the preset's
:class:`~gliofed.federated.protocol.DistillSettings`, e.g. ``distill="steps=10,n_synthetic=4"``; each site's
policy decides whether it accepts them), ``dp`` (the differential-privacy dial, :class:`~gliofed.dp.DPSettings`,
e.g. ``dp="mechanism=dp_sgd,noise_multiplier=1.0"``; blank: off) and ``norm`` (the network's normalisation,
``batch`` or ``group``: DP-SGD needs ``group``).

The server never sees a scan: it holds the model, sends declared payloads and aggregates declared replies,
exactly as in the in-process simulator (the same round loop, :func:`~gliofed.federated.server.rounds.run_rounds`, the
same seeds, the same payload bytes).
"""

from __future__ import annotations

import logging
import re
import time

from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp
from monai.utils import set_determinism

from gliofed.errors import PolicyError
from gliofed.federated.protocol import MAX_PAYLOAD_BYTES
from gliofed.federated.protocol.records import REFUSAL, payload_to_record, record_to_payload
from gliofed.federated.server.rounds import SiteFailure, run_rounds
from gliofed.federated.server.strategies import FederationError, make_strategy
from gliofed.model import build_model
from gliofed.presets import get_preset
from gliofed.runs import TrainingRun

__all__ = ["app", "FLOWER_STRATEGIES", "connect_sites", "flower_exchange", "decode_reply"]

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
    """The Flower transport for :func:`~gliofed.federated.server.rounds.federated_round`: one TRAIN message per site,
    replies within ``timeout``.

    A site whose node is gone, errs, refuses (its policy), does not answer in time or answers with a record that
    does not decode gets an exception as its answer, so the round goes on with the others (and the round validates
    the decoded replies and enforces ``min-sites``)."""

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
            answers[site] = decode_reply(reply, site, nodes[site])
        for site in site_of.values():
            answers.setdefault(site, TimeoutError(f"no reply from site {site} within {timeout:.0f} s"))
        return answers

    return exchange


def distill_overrides(text: str) -> dict:
    """``"steps=10,init=noise"`` -> ``{"steps": 10, "init": "noise"}`` (numbers as int or float)."""
    overrides = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise FederationError(f"run config distill item {item!r} is not key=value.")
        for kind in (int, float):
            try:
                overrides[key.strip()] = kind(value)
                break
            except ValueError:
                continue
        else:
            overrides[key.strip()] = value.strip()
    return overrides


def _remote_reason(reason: str | None) -> str:
    """Flower's error reason (``"<class 'RuntimeError'>:<'message ...'>"``, possibly a whole traceback) as
    ``"RuntimeError: first line"``."""
    text = str(reason or "no reason given")
    match = re.match(r"<class '([\w.]+)'>:<'(.*)'>\s*$", text, re.DOTALL)
    if match:
        kind, text = match.group(1).rsplit(".", 1)[-1], match.group(2)
    else:
        kind = "SiteError"
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return f"{kind}: {first}"


def decode_reply(reply: Message, site: str, node: int):
    """One reply as a :class:`~gliofed.federated.protocol.payload.Payload`, or the exception that stands for it (an
    error, a policy refusal, or a record that does not decode): never raises, so one site cannot stop the round."""
    try:
        if reply.has_error():
            return SiteFailure(f"{_remote_reason(reply.error.reason)} (node {node})")
        if REFUSAL in reply.content.config_records:
            return PolicyError(str(reply.content.config_records[REFUSAL].get("reason", f"site {site} refuses")))
        return record_to_payload(reply.content)[0]
    except Exception as error:  # malformed reply: this site's problem only
        return SiteFailure(f"undecodable reply: {type(error).__name__}: {error}")


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
    norm = str(cfg.get("norm", "batch")) or "batch"
    if norm != "batch":
        config = config.replace(model={**config.model, "norm": norm})
    distill = {**preset.distill, **distill_overrides(str(cfg.get("distill", "")))}
    dp = distill_overrides(str(cfg.get("dp", ""))) or None
    strategy = make_strategy(name, int(cfg.get("local-epochs", 1)), float(cfg.get("mu", 0.01)), distill, seed,
                             aggregation=str(cfg.get("aggregation", "mean")), dp=dp)
    run = TrainingRun(str(cfg.get("out-dir", "runs/flower")))

    set_determinism(seed=config.seed)  # the same initial model as the simulator's
    model = build_model(config)
    if rounds < 1:
        raise FederationError(f"num-server-rounds must be a positive integer, not {rounds}.")
    nodes = connect_sites(grid, int(cfg.get("min-nodes", 2)), float(cfg.get("connect-timeout", 120)))
    if not 1 <= min_sites <= len(nodes):  # before round 1, not after it
        raise FederationError(f"min-sites={min_sites} must be between 1 and the {len(nodes)} connected site(s).")
    log.warning("gliofed %s over Flower: %d rounds, sites %s", name, rounds, nodes)
    timeout = float(cfg.get("round-timeout", 600))
    with run.lock("Flower ServerApp"):  # one writer per run folder, as `gliofed train`
        history = run_rounds(strategy, model, list(nodes), config,
                             lambda rnd: flower_exchange(grid, nodes, rnd, timeout), rounds, min_sites=min_sites,
                             max_payload_bytes=MAX_PAYLOAD_BYTES,
                             after_round=lambda rnd, history: run.save_rounds(name, history))
        run.save_model(model, config, epoch=rounds, extra={"history": history, "strategy": name, "engine": "flower"},
                       preprocessing={"size": int(cfg.get("size", 128)), "modalities": list(config.modalities)})
    log.warning("saved %s and %s", run.path(TrainingRun.MODEL), run.path(TrainingRun.ROUNDS))
