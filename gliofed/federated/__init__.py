"""Federated training: sites that keep their data, payloads that cross, strategies that aggregate.

Server side (no access to any site's cases): :mod:`payload`, :mod:`strategy`, :mod:`fedavg`, :mod:`fedprox`,
:mod:`distill`, :mod:`local`, :mod:`centralized`. Site side: :mod:`site`, :mod:`condense`, :mod:`privacy`.
The in-process driver is :mod:`simulate`; the Flower apps are another driver over the same code.
"""
