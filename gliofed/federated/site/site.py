"""Site: one hospital. It owns its cases and answers the server only with declared payloads."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from gliofed.config import TrainConfig
from gliofed.data.dataset import CaseDataset
from gliofed.data.manifest import MARKERS, MODALITIES
from gliofed.data.transforms import augment_pipeline
from gliofed.engine import fit, seed_everything
from gliofed.federated.payload import Payload, arrays_to_state, state_to_arrays
from gliofed.federated.site.condense import condense
from gliofed.federated.strategies.distill import DistillSettings
from gliofed.model import MultiTaskUNet, build_model

__all__ = ["Site", "TASKS"]

#: what a server may ask of a site
TASKS = ("describe", "train", "distill")


class Site:
    """A federated site over its training cases in a preprocessed cache.

    The cases live in a private attribute and are never returned; :meth:`handle` is the only entry
    point, taking and returning :class:`Payload` objects.

    Args:
        name: site name (the manifest's ``site``).
        cache_dir: preprocessed cache holding this site's cases.
        modalities: input contrasts (default all four).
        seed: seeds the split of cases whose manifest split is blank.
        external_site: the held-out site, if any (its cases are never training cases).
        members: the sites whose training cases this participant holds (default: ``[name]``; the centralized
            baseline's data centre holds them all).
    """

    def __init__(self, name: str, cache_dir: str | Path, modalities: Sequence[str] = MODALITIES, seed: int = 0,
                 external_site: str | None = None, members: Sequence[str] | None = None) -> None:
        self.name = name
        self.__cases = CaseDataset(cache_dir, split="train", sites=list(members or [name]), modalities=modalities,
                                   seed=seed, external_site=external_site)
        self.__cache_dir = Path(cache_dir)

    @property
    def n_cases(self) -> int:
        """Number of training cases (sites disclose this: FedAvg weights by it)."""
        return len(self.__cases)

    def raw_bytes(self) -> int:
        """Bytes of this site's cached training cases: what pooling them (centralized) would transfer."""
        total = 0
        for subject in self.__cases.index["subject_id"]:
            for suffix in ("image", "seg"):
                path = self.__cache_dir / "cases" / f"{subject}.{suffix}.npy"
                total += path.stat().st_size if path.exists() else 0
        return total

    def handle(self, task: str, model: Payload, settings: dict) -> Payload:
        """Answer one server request.

        Args:
            task: ``"train"`` (local training from the global model: FedAvg, FedProx, local-only, the centralized
                data centre), ``"distill"`` (soft labels + condensed synthetic set) or ``"describe"`` (the number
                and bytes of its training cases: what pooling them would transfer).
            model: the global model (``model`` payload).
            settings: ``train`` (TrainConfig as dict), ``epochs``, ``seed``, ``mu`` (FedProx),
                ``distill`` (DistillSettings as dict).

        Returns:
            ``weights_update`` (weights; meta ``n_cases``, ``n_masked``, ``n_labelled`` per marker, ``loss``),
            ``distilled_set`` or ``site_info`` payload.
        """
        if task == "describe":
            return Payload("site_info", {}, {"site": self.name, "n_cases": self.n_cases, "raw_bytes": self.raw_bytes()})
        config = TrainConfig.from_dict(settings["train"])
        network = build_model(settings["model_config"])
        network.load_state_dict(arrays_to_state(model.arrays))
        seed = int(settings["seed"])
        seed_everything(seed)
        if task == "train":
            return self._train(network, config, settings, seed)
        if task == "distill":
            return condense(network, self.__cases, DistillSettings(**settings.get("distill", {})), seed, self.name)
        raise ValueError(f"site {self.name}: unknown task {task!r}; expected one of {', '.join(TASKS)}.")

    def _train(self, network: MultiTaskUNet, config: TrainConfig, settings: dict, seed: int) -> Payload:
        mu = float(settings.get("mu", 0.0))
        extra = None
        if mu > 0:  # FedProx: mu/2 * ||w - w_global||^2
            anchor = [p.detach().clone() for p in network.parameters()]

            def extra(model: torch.nn.Module) -> torch.Tensor:
                return 0.5 * mu * sum(((p - a.to(p.device)) ** 2).sum() for p, a in zip(model.parameters(), anchor))

        self.__cases.transform = augment_pipeline(seed) if config.augment else None
        try:
            history = fit(network, self.__cases, config.replace(seed=seed), epochs=int(settings["epochs"]),
                          extra_loss=extra, progress=False)
        finally:
            self.__cases.transform = None
        network.cpu()
        loss = float(np.mean([h["total"] for h in history])) if history else float("nan")
        # counts FedAvg weights the decoder and each marker head by (disclosed, like n_cases)
        labels = self.__cases.labels
        labelled = {marker: int((labels[:, j] >= 0).sum()) for j, marker in enumerate(MARKERS)}
        n_masked = int(self.__cases.index["has_mask"].astype(bool).sum())
        return Payload("weights_update", state_to_arrays(network),
                       {"site": self.name, "n_cases": self.n_cases, "n_masked": n_masked,
                        "n_labelled": labelled, "loss": loss})

    def privacy_audit(self, payload: Payload, quantile: float = 0.95):
        """Audit an outgoing ``distilled_set`` against this site's real volumes (runs inside the site;
        only the report — correlations and flags — leaves). See :mod:`gliofed.federated.privacy`."""
        from gliofed.federated.site.privacy import nearest_neighbour_audit, volume_vectors

        synthetic = payload.arrays["syn_images"].astype(np.float32)
        grid = synthetic.shape[2:]
        real, ids = [], []
        for i in range(len(self.__cases)):
            sample = self.__cases[i]
            real.append(volume_vectors(sample["image"][None], grid))
            ids.append(sample["subject"])
        report = nearest_neighbour_audit(synthetic.reshape(len(synthetic), -1), np.concatenate(real), ids,
                                         self.name, quantile)
        report["init"] = payload.meta.get("init", "")
        return report
