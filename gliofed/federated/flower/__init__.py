"""A real Flower federation on one machine: :class:`~gliofed.federated.flower.launcher.LocalFederation` starts a
loopback SuperLink and one SuperNode per site and runs gliofed's Flower app with ``flwr run``.

The app's two halves live in their rooms: the ServerApp (:mod:`gliofed.federated.server.server_app`) drives the
same round loop as the in-process simulator over a transport that sends Flower messages, and the ClientApp
(:mod:`gliofed.federated.site.client_app`) hands each message to :meth:`gliofed.federated.site.Site.handle`.
Payloads travel as ``ArrayRecord`` (arrays) plus ``ConfigRecord`` (kind, metadata, settings)
(:mod:`gliofed.federated.protocol.records`). Requires the ``flower`` extra: ``pip install gliofed[flower]``.

Components (see ``[tool.flwr.app.components]`` in ``pyproject.toml``):
``gliofed.federated.server.server_app:app`` and ``gliofed.federated.site.client_app:app``.
"""
