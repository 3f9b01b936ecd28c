"""The gliofed ClientApp: one hospital. Its node config names the site and where its data lives:

``flower-supernode ... --node-config 'site="upenn" cache="/data/cache_128"'`` (optionally ``manifest="..."``:
the cache is then brought up to date from it first, with the cache's own preprocessing record, or for a new cache at
the run's ``size``; and ``device="cuda:1"``: where this site trains and evaluates, default CUDA when present, else
the CPU). The operator's :class:`~gliofed.federated.site.policy.SitePolicy` comes from the ``policy-*`` keys of the
same node config (e.g. ``policy-min-scale=4 policy-max-synthetic=8``); the server cannot change it.

The cache's preprocessing record (:func:`gliofed.data.cache.read_plan`) is this site's: when the run names a ``size``
and the cache was made at another, or the run asks for contrasts the cache lacks, the site refuses to take part in one
sentence (its answer to the handshake), before any round.

Every ``train`` message carries a gliofed payload (the global model) plus the task (``train`` or
``distill``) and its settings, and every ``evaluate`` message the global model and the task ``evaluate`` (its metrics
on this site's held-out cases); :meth:`Site.handle` answers it and only the declared reply payload goes back. A
request the policy refuses is answered with a refusal record (``records.REFUSAL``: the one-line reason), which the
server records as the reason this site sat the round out.
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from gliofed.errors import GliofedError
from gliofed.federated.protocol.records import REFUSAL, payload_to_record, record_to_payload
from gliofed.preprocessing import Preprocessing

__all__ = ["app", "site_from_context"]

app = ClientApp()
_SITES: dict[tuple, object] = {}


def site_from_context(context: Context):
    """The :class:`~gliofed.federated.site.Site` named by the node config (cached per process)."""
    from gliofed.errors import ConfigError
    from gliofed.federated.site import Site
    from gliofed.federated.site.policy import SitePolicy

    node, run = context.node_config, context.run_config
    for key in ("site", "cache"):
        if key not in node:
            raise ConfigError(f"node config lacks {key!r}; start the SuperNode with "
                              "--node-config 'site=\"<name>\" cache=\"<cache folder>\"'.")
    cache = Path(str(node["cache"]))
    modalities = tuple(str(run.get("modalities", "t1,t1ce,t2,flair")).split(","))
    policy = _with_device(SitePolicy.from_node_config(node), node)
    # the split of cases with a blank manifest split is the site's: seeded from its node config, never from the
    # run config (which the server writes), so a server cannot choose which cases the site trains and summarises
    try:
        split_seed = int(node.get("split-seed", 0))
    except (TypeError, ValueError) as error:
        raise ConfigError(f"node config 'split-seed' must be an integer, not {node.get('split-seed')!r}.") from error
    size = _run_size(run)
    key = (str(node["site"]), str(cache), modalities, split_seed, policy, size)
    if key not in _SITES:
        from gliofed.data.cache import check_plan, read_plan

        if "manifest" in node:
            from gliofed.data.cache import preprocess, read_settings

            made = read_settings(cache) is not None if cache.is_dir() else False
            preprocess(str(node["manifest"]), cache, size=None if made or not size else size, progress=False)
        own = read_plan(cache)
        wanted = own.for_model(modalities) if not size else Preprocessing(size=size, modalities=modalities)
        try:
            check_plan(cache, wanted, "this federation")
        except GliofedError as error:
            raise ConfigError(f"site {key[0]} takes no part: {error}") from None
        _SITES[key] = Site(key[0], cache, modalities, seed=key[3], policy=policy)
    return _SITES[key]


def _run_size(run) -> int:
    """The run config's ``size`` (0 or absent: the site's own cache decides)."""
    from gliofed.errors import ConfigError

    value = run.get("size", 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"run config size {value!r} is not an in-plane size (or 0: the sites' own).")
    return int(value)


def _with_device(policy, node):
    """The policy with this site's device: the node config's ``device`` (or ``policy-device``), default ``"auto"``
    (CUDA when present); a device this machine lacks is refused now, in one sentence."""
    import dataclasses

    from gliofed.engine import resolve_device
    from gliofed.errors import ConfigError

    named = {str(node[k]) for k in ("device", "policy-device") if k in node}
    if len(named) > 1:
        raise ConfigError(f"node config names two devices ({', '.join(sorted(named))}); give one 'device'.")
    device = named.pop() if named else "auto"
    try:
        resolve_device(device)
    except (RuntimeError, ValueError) as error:  # torch's own error for a malformed name
        raise ConfigError(f"node config device {device!r} is not a device ({str(error).splitlines()[0]}).") from None
    return dataclasses.replace(policy, device=device)


@app.query()
def describe(message: Message, context: Context) -> Message:
    """Handshake: which site this node is, how many training cases it has (FedAvg weights by it), the device it trains
    on and its cache's preprocessing record; or its refusal to take part (the one-sentence reason)."""
    import json

    from gliofed.data.cache import read_plan
    from gliofed.engine import resolve_device

    try:
        site = site_from_context(context)
    except GliofedError as refusal:
        return Message(RecordDict({REFUSAL: ConfigRecord({"reason": str(refusal)})}), reply_to=message)
    plan = read_plan(Path(str(context.node_config["cache"])))
    return Message(RecordDict({"site": ConfigRecord({
        "site": site.name, "n_cases": site.n_cases, "device": str(resolve_device(site.policy.device or "auto")),
        "preprocessing": json.dumps(plan.to_dict())})}), reply_to=message)


@app.train()
def train(message: Message, context: Context) -> Message:
    """Run the requested task on this site's own cases; reply with its declared payload."""
    return _answer(message, context)


@app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    """Federated evaluation: the global model's metrics on this site's held-out cases (``site_metrics``), nothing
    per case."""
    return _answer(message, context)


def _answer(message: Message, context: Context) -> Message:
    from gliofed.errors import PolicyError

    outgoing, task, settings = record_to_payload(message.content)
    try:
        reply = site_from_context(context).handle(task, outgoing, settings)
    except PolicyError as refusal:  # a clear refusal, not a crash: the server records the reason
        return Message(RecordDict({REFUSAL: ConfigRecord({"reason": str(refusal)})}), reply_to=message)
    return Message(payload_to_record(reply), reply_to=message)
