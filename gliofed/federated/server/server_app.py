"""The gliofed ServerApp: FedAvg, FedProx or distillation federation over Flower, from run config.

Run config (``[tool.flwr.app.config]`` in ``pyproject.toml``; override with ``flwr run . <superlink>
--run-config 'strategy="distill" num-server-rounds=5'``):

``strategy`` (fedavg | fedprox | distill), ``num-server-rounds``, ``local-epochs``, ``mu`` (FedProx),
``aggregation`` (fedavg/fedprox: mean | median | trimmed-mean),
``preset`` (training recipe and distillation preset: tiny | workshop | paper), ``seed``, ``modalities``,
``size`` (the in-plane size the federation runs at: a SuperNode whose cache was preprocessed at another size refuses
to take part, and one with a manifest but no cache preprocesses at it; 0, the default: whatever the sites' caches
hold, which must agree), ``min-nodes`` (nodes to wait for before round 1),
``min-sites`` (valid replies a round needs), ``round-timeout`` (seconds to wait for replies),
``connect-timeout`` (seconds to wait for ``min-nodes``), ``out-dir`` (where the final ``model.safetensors`` and
``history.json`` go, on the SuperLink's machine), ``distill`` (overrides of the preset's
:class:`~gliofed.federated.protocol.DistillSettings`, e.g. ``distill="steps=10,n_synthetic=4"``; each site's
policy decides whether it accepts them), ``dp`` (the differential-privacy dial, :class:`~gliofed.dp.DPSettings`,
e.g. ``dp="mechanism=dp_sgd,noise_multiplier=1.0"``; blank: off), ``norm`` (the network's normalisation,
``batch`` or ``group``: DP-SGD needs ``group``) and ``federated-evaluation`` (true by default: after every round
each site scores the global model on its own held-out cases and reports only its metrics,
:func:`federated_evaluation`).

Each site trains on the device its node config names (``device``, default CUDA when present): the server does not
choose a hospital's hardware. The sites' preprocessing records (:class:`~gliofed.preprocessing.Preprocessing`, from
their caches) must agree; the one they share goes into the final checkpoint, so ``evaluate`` and ``predict`` read it
back. ``history.json`` records, per round, the bytes, the sites left out and why, and the sites' validation metrics;
and once, each site's cases and device.

The server never sees a scan: it holds the model, sends declared payloads and aggregates declared replies,
exactly as in the in-process simulator (the same round loop, :func:`~gliofed.federated.server.rounds.run_rounds`, the
same seeds, the same payload bytes).
"""

from __future__ import annotations

import json
import logging
import re
import time

from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp
from monai.utils import set_determinism

from gliofed.errors import ConfigError, PolicyError
from gliofed.federated.protocol import MAX_PAYLOAD_BYTES
from gliofed.federated.protocol.records import REFUSAL, payload_to_record, record_to_payload
from gliofed.federated.server.rounds import SiteFailure, federated_evaluation, run_rounds
from gliofed.federated.server.strategies import FederationError, make_strategy
from gliofed.model import build_model
from gliofed.preprocessing import Preprocessing
from gliofed.presets import get_preset
from gliofed.runs import TrainingRun

__all__ = ["app", "FLOWER_STRATEGIES", "connect_sites", "describe_sites", "agreed_preprocessing", "flower_exchange",
           "decode_reply"]

log = logging.getLogger("gliofed.federated.flower")
app = ServerApp()

#: strategies that run over Flower (centralized needs pooled scans, local-only needs no server)
FLOWER_STRATEGIES = ("fedavg", "fedprox", "distill")


def connect_sites(grid: Grid, min_nodes: int, timeout: float) -> dict[str, int]:
    """Wait for ``min_nodes`` SuperNodes, ask each which site it is; return site -> node ID."""
    return describe_sites(grid, min_nodes, timeout)[0]


def describe_sites(grid: Grid, min_nodes: int, timeout: float) -> tuple[dict[str, int], dict[str, dict]]:
    """Wait for ``min_nodes`` SuperNodes and ask each which site it is, how many training cases it has, which device it
    trains on and how its cache was preprocessed.

    A node that refuses to take part (its operator's settings or its cache do not fit this run: the reason is its
    one sentence), errs, or answers with a description that does not validate is left out, with its reason logged.

    Returns:
        (site -> node ID, site -> ``{"n_cases", "device", "preprocessing"}`` with the record as a
        :class:`~gliofed.preprocessing.Preprocessing`).

    Raises:
        FederationError: fewer than ``min_nodes`` nodes connected, or fewer than ``min_nodes`` sites took part (with
            the refusals' reasons), or two nodes claim one site.
    """
    deadline = time.monotonic() + timeout
    while len(nodes := sorted(grid.get_node_ids())) < min_nodes:
        if time.monotonic() > deadline:
            raise FederationError(f"only {len(nodes)} of {min_nodes} SuperNodes connected within {timeout:.0f} s.")
        time.sleep(0.5)
    questions = [Message(content=RecordDict({"site": ConfigRecord({})}), dst_node_id=node,
                         message_type=MessageType.QUERY) for node in nodes]
    sites, described, refused = {}, {}, {}
    for reply in grid.send_and_receive(questions, timeout=timeout):
        node = reply.metadata.src_node_id
        try:
            name, description = _description(reply)
        except Exception as error:  # an error, a refusal or a description that does not validate: this node only
            refused[node] = str(error).splitlines()[0][:300] if str(error) else type(error).__name__
            log.warning("node %s takes no part: %s", node, refused[node])
            continue
        if name in sites:
            raise FederationError(f"two SuperNodes claim site {name!r} (nodes {sites[name]} and {node}).")
        sites[name], described[name] = node, description
    if refused and len(sites) < min_nodes:
        reasons = "; ".join(f"node {node}: {reason}" for node, reason in refused.items())
        raise FederationError(f"only {len(sites)} of {min_nodes} SuperNodes take part ({reasons}).")
    return dict(sorted(sites.items())), dict(sorted(described.items()))


def _description(reply: Message) -> tuple[str, dict]:
    """(site, ``{"n_cases", "device", "preprocessing"}``) of a node's answer to the handshake; raises with the reason
    when the node refused, erred or described itself in a way that does not validate."""
    if reply.has_error():
        raise SiteFailure(_remote_reason(reply.error.reason))
    records = reply.content.config_records
    if REFUSAL in records:
        raise PolicyError(str(records[REFUSAL].get("reason", "refuses to take part")))
    record = records["site"]
    name = str(record["site"])
    if not name:
        raise ConfigError("the node names no site.")
    n_cases, device = record.get("n_cases", 0), str(record.get("device", ""))
    if isinstance(n_cases, bool) or not isinstance(n_cases, int) or n_cases < 0:
        raise ConfigError(f"site {name} reports {n_cases!r} training cases.")
    if len(device) > 40:
        raise ConfigError(f"site {name} reports a device name of {len(device)} characters.")
    text = record.get("preprocessing")
    plan = Preprocessing.from_dict(json.loads(str(text)), f"site {name}") if text is not None else None
    return name, {"n_cases": int(n_cases), "device": device, "preprocessing": plan}


def agreed_preprocessing(described: dict[str, dict], size: int = 0) -> Preprocessing | None:
    """The preprocessing record every site's cache shares (None when no site reports one).

    Args:
        described: :func:`describe_sites`' descriptions.
        size: the run's in-plane size (0: any); each site already refused another one, checked again here.

    Raises:
        FederationError: two sites' records differ, or one differs from ``size`` (one sentence naming them).
    """
    plans = {site: d["preprocessing"] for site, d in described.items() if d.get("preprocessing") is not None}
    if not plans:
        return None
    first, reference = next(iter(plans.items()))
    for site, plan in plans.items():
        if size and plan.size != size:
            raise FederationError(f"site {site}'s cache was preprocessed at {plan.size}x{plan.size} in-plane, not "
                                  f"the run's {size}x{size}.")
        difference = reference.difference(plan)
        if difference is not None:
            mine, _, theirs = difference.partition(" (the other: ")
            raise FederationError(f"the sites' caches disagree: site {first}'s was preprocessed with {mine}, site "
                                  f"{site}'s with {theirs.rstrip(')')}; preprocess them alike, or set the run's size "
                                  "so that the others refuse.")
    return reference


def flower_exchange(grid: Grid, nodes: dict[str, int], rnd: int, timeout: float,
                    message_type: str = MessageType.TRAIN):
    """The Flower transport for :func:`~gliofed.federated.server.rounds.federated_round` (and, with
    ``message_type=MessageType.EVALUATE``, for :func:`~gliofed.federated.server.rounds.federated_evaluation`): one
    message per site, replies within ``timeout``.

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
                              message_type=message_type, group_id=str(rnd))
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
    # device "auto": each site trains where its own node config says (default CUDA when present), never where the
    # server says; the server's own work (aggregation) runs on its CPU
    config = preset.train.replace(seed=seed, device="auto",
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
    nodes, described = describe_sites(grid, int(cfg.get("min-nodes", 2)), float(cfg.get("connect-timeout", 120)))
    plan = agreed_preprocessing(described, int(cfg.get("size", 0)))
    if not 1 <= min_sites <= len(nodes):  # before round 1, not after it
        raise FederationError(f"min-sites={min_sites} must be between 1 and the {len(nodes)} connected site(s).")
    log.warning("gliofed %s over Flower: %d rounds, sites %s", name, rounds, nodes)
    timeout = float(cfg.get("round-timeout", 600))
    sites = {site: {"n_cases": d["n_cases"], "device": d["device"]} for site, d in described.items()}
    record = {"sites": sites, "preprocessing": plan.to_dict() if plan is not None else None}

    def evaluate(rnd: int, model) -> dict:
        exchange = flower_exchange(grid, nodes, rnd, timeout, MessageType.EVALUATE)
        return federated_evaluation(strategy, model, rnd, list(nodes), config, exchange, MAX_PAYLOAD_BYTES)

    with run.lock("Flower ServerApp"):  # one writer per run folder, as `gliofed train`
        history = run_rounds(strategy, model, list(nodes), config,
                             lambda rnd: flower_exchange(grid, nodes, rnd, timeout), rounds, min_sites=min_sites,
                             max_payload_bytes=MAX_PAYLOAD_BYTES,
                             evaluate=evaluate if bool(cfg.get("federated-evaluation", True)) else None,
                             after_round=lambda rnd, history: run.save_rounds(name, history, **record))
        run.save_model(model, config, epoch=rounds, extra={"history": history, "strategy": name, "engine": "flower",
                                                           "sites": sites},
                       preprocessing=plan.for_model(config.modalities) if plan is not None else None)
    log.warning("saved %s and %s", run.path(TrainingRun.MODEL), run.path(TrainingRun.ROUNDS))
