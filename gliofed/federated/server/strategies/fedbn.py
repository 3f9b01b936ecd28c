"""FedBN (Li et al., ICLR 2021): federated averaging that leaves BatchNorm local.

Every site keeps its own BatchNorm layers (affine weights and running statistics): the server averages every other
weight (as FedAvg, with its partial-label weights) and sends each site the averaged weights with **that site's own**
BatchNorm from its last update (the global initial BatchNorm before its first). In this implementation a site's
BatchNorm travels with its update, as every weight does in FedAvg's payload, and goes back to that site alone; no
site receives another site's BatchNorm.

**Evaluation on a common test split** (defined here, stated in ``benchmarks/PREREGISTRATION.md``): each test case
is scored by the model of the site it comes from: the averaged weights with that site's BatchNorm
(:meth:`FedBN.case_site_models`), as a FedBN deployment is used. A test case from a site that never trained (an
external site) is scored with the case-weighted mean of the sites' BatchNorm (:meth:`models_to_evaluate`, the
global model), which is also what a new site would start from.
"""

from __future__ import annotations

import numpy as np
from torch import nn

from gliofed.federated.protocol import Payload, state_to_arrays
from gliofed.federated.server.strategies.fedavg import FedAvg

__all__ = ["FedBN", "batchnorm_keys"]


def batchnorm_keys(model: nn.Module) -> list[str]:
    """The ``w:`` payload keys of every BatchNorm parameter and buffer of ``model``."""
    keys = []
    for prefix, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            keys += [f"w:{prefix}.{name}" for name in module.state_dict()]
    return keys


class FedBN(FedAvg):
    """FedAvg with site-local BatchNorm.

    Args:
        local_epochs: local epochs per round (default 1).
        partial_weights, options: as :class:`FedAvg`.
    """

    name = "fedbn"

    def __init__(self, local_epochs: int = 1, partial_weights: bool = True, **options) -> None:
        super().__init__(local_epochs, partial_weights, **options)
        #: site -> its BatchNorm arrays from its last update
        self.site_bn: dict[str, dict[str, np.ndarray]] = {}

    def broadcast(self, site: str, model: nn.Module, rnd: int) -> Payload:
        payload = Payload("model", state_to_arrays(model), {"round": rnd, "strategy": self.name})
        payload.arrays.update(self.site_bn.get(site, {}))
        return self.in_transport(payload)

    def aggregate(self, model: nn.Module, replies: dict[str, Payload], rnd: int) -> dict:
        keys = batchnorm_keys(model)
        for site, payload in replies.items():
            self.site_bn[site] = {key: np.array(payload.arrays[key]) for key in keys}
        # the averaged BatchNorm stays in the global model: a new or external site's start, never sent to a site
        return super().aggregate(model, replies, rnd)

    def case_site_models(self, model: nn.Module) -> dict[str, dict[str, np.ndarray]]:
        """Site -> the averaged weights with that site's BatchNorm: the model that scores that site's test cases."""
        shared = state_to_arrays(model)
        return {site: {**shared, **{k: v.astype(shared[k].dtype) for k, v in bn.items()}}
                for site, bn in sorted(self.site_bn.items())}

    def state_dict(self) -> dict:
        return {"site_bn": self.site_bn}

    def load_state_dict(self, state: dict) -> None:
        self.site_bn = {site: dict(arrays) for site, arrays in (state.get("site_bn") or {}).items()}
