"""Federated training in three rooms and two transports.

- :mod:`~gliofed.federated.protocol`: what crosses (declared, validated payloads), how a request is made, the
  distillation settings; both rooms import it, it imports neither;
- :mod:`~gliofed.federated.server`: strategies (configure a round, aggregate its replies), the one round loop
  (:func:`~gliofed.federated.server.rounds.run_rounds`) and the Flower ServerApp; no import path to any site's cases,
  in any form (tested);
- :mod:`~gliofed.federated.site`: everything that touches a site's cases: the Site, its operator's policy,
  condensation, the privacy audit of what leaves, and the Flower ClientApp;
- transports under the same loop: :mod:`~gliofed.federated.simulate` (in-process) and
  :mod:`~gliofed.federated.flower.launcher` (a loopback Flower federation: SuperLink, SuperNodes, ``flwr run``).
"""
