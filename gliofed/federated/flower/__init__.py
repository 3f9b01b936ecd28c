"""Flower apps: gliofed's strategies and sites over a real FL engine (Flower's Message API).

Thin drivers over the same framework-free code the in-process simulator uses: the ServerApp runs
:func:`gliofed.federated.rounds.federated_round` with a transport that sends Flower messages; the ClientApp
hands each message to :meth:`gliofed.federated.site.Site.handle`. Payloads travel as ``ArrayRecord`` (arrays)
plus ``ConfigRecord`` (kind, metadata, settings). Requires the ``flower`` extra: ``pip install gliofed[flower]``.

Components (see ``[tool.flwr.app.components]`` in ``pyproject.toml``):
``gliofed.federated.flower.server_app:app`` and ``gliofed.federated.flower.client_app:app``.
"""
