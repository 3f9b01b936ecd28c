"""The gliofed ClientApp: one hospital. Its node config names the site and where its data lives:

``flower-supernode ... --node-config 'site="upenn" cache="/data/cache_128"'`` (optionally ``manifest="..."``:
the cache is then brought up to date from it first, at ``size`` from the run config). The operator's
:class:`~gliofed.federated.site.policy.SitePolicy` comes from the ``policy-*`` keys of the same node config
(e.g. ``policy-min-scale=4 policy-max-synthetic=8``); the server cannot change it.

Every ``train`` message carries a gliofed payload (the global model) plus the task (``train`` or
``distill``) and its settings; :meth:`Site.handle` answers it and only the declared reply payload goes back. A
request the policy refuses is answered with a refusal record (``records.REFUSAL``: the one-line reason), which the
server records as the reason this site sat the round out.
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from gliofed.federated.protocol.records import REFUSAL, payload_to_record, record_to_payload

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
    policy = SitePolicy.from_node_config(node)
    # the split of cases with a blank manifest split is the site's: seeded from its node config, never from the
    # run config (which the server writes), so a server cannot choose which cases the site trains and summarises
    try:
        split_seed = int(node.get("split-seed", 0))
    except (TypeError, ValueError) as error:
        raise ConfigError(f"node config 'split-seed' must be an integer, not {node.get('split-seed')!r}.") from error
    key = (str(node["site"]), str(cache), modalities, split_seed, policy)
    if key not in _SITES:
        if "manifest" in node:
            from gliofed.data.cache import preprocess

            preprocess(str(node["manifest"]), cache, size=int(run.get("size", 128)), progress=False)
        _SITES[key] = Site(key[0], cache, modalities, seed=key[3], policy=policy)
    return _SITES[key]


@app.query()
def describe(message: Message, context: Context) -> Message:
    """Handshake: which site this node is and how many training cases it has (FedAvg weights by it)."""
    site = site_from_context(context)
    return Message(RecordDict({"site": ConfigRecord({"site": site.name, "n_cases": site.n_cases})}),
                   reply_to=message)


@app.train()
def train(message: Message, context: Context) -> Message:
    """Run the requested task on this site's own cases; reply with its declared payload."""
    from gliofed.errors import PolicyError

    outgoing, task, settings = record_to_payload(message.content)
    try:
        reply = site_from_context(context).handle(task, outgoing, settings)
    except PolicyError as refusal:  # a clear refusal, not a crash: the server records the reason
        return Message(RecordDict({REFUSAL: ConfigRecord({"reason": str(refusal)})}), reply_to=message)
    return Message(payload_to_record(reply), reply_to=message)
