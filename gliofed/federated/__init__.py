"""Federated training: sites that keep their data, payloads that cross, strategies that aggregate.

- :mod:`~gliofed.federated.strategies` (server side: what each round asks, how replies combine),
  :mod:`~gliofed.federated.payload` (the only things that cross, declared and validated),
  :mod:`~gliofed.federated.rounds` (one round over any transport) — no import path to any site's cases (tested);
- :mod:`~gliofed.federated.site` (site side: the Site, condensation, the privacy audit of what leaves);
- drivers: :mod:`~gliofed.federated.simulate` (in-process) and :mod:`~gliofed.federated.flower` (Flower apps and the
  loopback launcher).
"""
