"""The server's room: strategies (configure a round, aggregate its replies), the one round loop
(:mod:`~gliofed.federated.server.rounds`) and the Flower ServerApp (:mod:`~gliofed.federated.server.server_app`).

Everything here sees payloads and the global model, never a case: nothing under this folder may import
``federated/site/``, :mod:`gliofed.data` or :mod:`gliofed.engine`, in any form (tested).
"""
