"""The gliofed ClientApp: one hospital. Its node config names the site and where its data lives:

``flower-supernode ... --node-config 'site="upenn" cache="/data/cache_128"'`` (optionally ``manifest="..."``:
the cache is then brought up to date from it first, at ``size`` from the run config).

Every ``train`` message carries a gliofed payload (the global model) plus the task (``train`` or
``distill``) and its settings; :meth:`Site.handle` answers it and only the declared reply payload goes back.
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from gliofed.federated.flower.records import payload_to_record, record_to_payload

__all__ = ["app", "site_from_context"]

app = ClientApp()
_SITES: dict[tuple, object] = {}


def site_from_context(context: Context):
    """The :class:`~gliofed.federated.site.Site` named by the node config (cached per process)."""
    from gliofed.errors import ConfigError
    from gliofed.federated.site import Site

    node, run = context.node_config, context.run_config
    for key in ("site", "cache"):
        if key not in node:
            raise ConfigError(f"node config lacks {key!r}; start the SuperNode with "
                              "--node-config 'site=\"<name>\" cache=\"<cache folder>\"'.")
    cache = Path(str(node["cache"]))
    modalities = tuple(str(run.get("modalities", "t1,t1ce,t2,flair")).split(","))
    key = (str(node["site"]), str(cache), modalities, int(run.get("seed", 0)))
    if key not in _SITES:
        if "manifest" in node:
            from gliofed.data.cache import preprocess

            preprocess(str(node["manifest"]), cache, size=int(run.get("size", 128)), progress=False)
        _SITES[key] = Site(key[0], cache, modalities, seed=key[3])
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
    outgoing, task, settings = record_to_payload(message.content)
    reply = site_from_context(context).handle(task, outgoing, settings)
    return Message(payload_to_record(reply), reply_to=message)
