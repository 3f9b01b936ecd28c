"""Site: one hospital. It owns its cases and answers the server only with declared payloads."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from gliofed.config import TrainConfig
from gliofed.data.dataset import CaseDataset
from gliofed.data.transforms import augment_pipeline
from gliofed.engine import fit, make_optimizer, seed_everything
from gliofed.errors import PolicyError
from gliofed.federated.protocol import DistillSettings, Payload, arrays_to_state, state_to_arrays
from gliofed.federated.site.condense import condense
from gliofed.federated.site.policy import SitePolicy
from gliofed.model import MultiTaskUNet, build_model
from gliofed.vocab import MARKERS, MODALITIES, TASKS

__all__ = ["Site"]


def _declared_model_bytes(model_config: dict) -> int:
    """Bytes of the network ``model_config`` describes, counted on the ``meta`` device (nothing allocated), so
    that a request for a huge network is refused before the site builds it."""
    try:
        with torch.device("meta"):
            network = build_model(model_config)
    except Exception:  # not buildable: the request fails later with its own error
        return 0
    return sum(t.numel() * t.element_size() for t in network.state_dict().values())


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
        policy: what this site's operator allows a server to ask (default :class:`SitePolicy` ()); a request
            outside it is refused with a :class:`~gliofed.errors.PolicyError`.
    """

    def __init__(self, name: str, cache_dir: str | Path, modalities: Sequence[str] = MODALITIES, seed: int = 0,
                 external_site: str | None = None, members: Sequence[str] | None = None,
                 policy: SitePolicy | None = None) -> None:
        self.name = name
        self.__policy = policy if policy is not None else SitePolicy()
        self.__cases = CaseDataset(cache_dir, split="train", sites=list(members or [name]), modalities=modalities,
                                   seed=seed, external_site=external_site)
        self.__cache_dir = Path(cache_dir)
        #: the optimizer state of the last ``train`` request that asked to keep it (``keep_optimizer``); stays here
        self.__optimizer_state: dict | None = None

    @property
    def policy(self) -> SitePolicy:
        """The operator's policy this site answers under (read-only)."""
        return self.__policy

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
                ``keep_optimizer`` (train: continue from the optimizer state this site kept from its last such
                request, with the request's learning rate, and keep the new state; the state never leaves the
                site), ``distill`` (DistillSettings as dict).

        Returns:
            ``weights_update`` (weights, in the precision of the model it was sent; meta ``n_cases``,
            ``n_masked``, ``n_labelled`` per marker, ``loss``), ``distilled_set`` or ``site_info`` payload.

        Raises:
            PolicyError: the request, or the reply it would produce, is outside this site's :attr:`policy`
                (checked before any case is read, and again before the reply leaves).
        """
        model_bytes = sum(int(np.asarray(a).nbytes) for a in model.arrays.values()) if model is not None else 0
        if task != "describe" and isinstance((settings or {}).get("model_config"), dict):
            model_bytes = max(model_bytes, _declared_model_bytes(settings["model_config"]))
        self.__policy.check_request(self.name, task, settings or {}, model_bytes)
        if task == "distill" and self.n_cases < self.__policy.min_group:
            raise PolicyError(f"site {self.name} refuses the 'distill' request: it has {self.n_cases} training case(s),"
                              f" fewer than the {self.__policy.min_group} any summary it sends must pool.")
        reply = self._answer(task, model, settings)
        self.__policy.check_reply_size(self.name, reply.nbytes)
        if reply.kind == "distilled_set" and self.__policy.refuse_flagged:
            self._refuse_if_flagged(reply)
        return reply

    def _answer(self, task: str, model: Payload, settings: dict) -> Payload:
        if task == "describe":
            return Payload("site_info", {}, {"site": self.name, "n_cases": self.n_cases, "raw_bytes": self.raw_bytes()})
        if self.__policy.device is not None:  # the operator, not the server, picks the site's hardware
            settings = {**settings, "train": {**settings["train"], "device": self.__policy.device}}
        config = TrainConfig.from_dict(settings["train"])
        network = build_model(settings["model_config"])
        network.load_state_dict(arrays_to_state(model.arrays))
        seed = int(settings["seed"])
        seed_everything(seed)
        if task == "train":
            sent = {k: np.asarray(v).dtype for k, v in model.arrays.items()}
            return self._train(network, config, settings, seed, sent)
        if task == "distill":
            return condense(network, self.__cases, DistillSettings(**settings.get("distill", {})), seed, self.name,
                            min_group=self.__policy.min_group)
        raise ValueError(f"site {self.name}: unknown task {task!r}; expected one of {', '.join(TASKS)}.")

    def _train(self, network: MultiTaskUNet, config: TrainConfig, settings: dict, seed: int,
               received_dtypes: dict | None = None) -> Payload:
        mu = float(settings.get("mu", 0.0))
        extra = None
        if mu > 0:  # FedProx: mu/2 * ||w - w_global||^2
            anchor = [p.detach().clone() for p in network.parameters()]

            def extra(model: torch.nn.Module) -> torch.Tensor:
                return 0.5 * mu * sum(((p - a.to(p.device)) ** 2).sum() for p, a in zip(model.parameters(), anchor))

        keep = settings.get("keep_optimizer") is True
        optimizer = self._optimizer(network, config) if keep else None
        self.__cases.transform = augment_pipeline(seed) if config.augment else None
        try:
            history = fit(network, self.__cases, config.replace(seed=seed), epochs=int(settings["epochs"]),
                          optimizer=optimizer, extra_loss=extra, progress=False)
        finally:
            self.__cases.transform = None
        if keep:
            self.__optimizer_state = copy.deepcopy(optimizer.state_dict())
        network.cpu()
        loss = float(np.mean([h["total"] for h in history])) if history else None  # no step: no loss (not NaN)
        # counts FedAvg weights the decoder and each marker head by (disclosed, like n_cases)
        labels = self.__cases.labels
        labelled = {marker: int((labels[:, j] >= 0).sum()) for j, marker in enumerate(MARKERS)}
        n_masked = int(self.__cases.index["has_mask"].astype(bool).sum())
        # answer in the precision the model came in (a server that sends float16 weights gets float16 back)
        sent = received_dtypes or {}
        arrays = {k: v.astype(sent[k]) if k in sent and v.dtype.kind == "f" and sent[k].kind == "f" else v
                  for k, v in state_to_arrays(network).items()}
        return Payload("weights_update", arrays,
                       {"site": self.name, "n_cases": self.n_cases, "n_masked": n_masked,
                        "n_labelled": labelled, "loss": loss})

    def _optimizer(self, network: MultiTaskUNet, config: TrainConfig) -> torch.optim.Optimizer:
        """A new optimizer for ``network``, continuing the kept state (moments, step counts) when this site has one
        for an optimizer of the same kind and shape, with the request's learning rate and weight decay."""
        optimizer = make_optimizer(network, config)
        if self.__optimizer_state is not None:
            try:
                optimizer.load_state_dict(copy.deepcopy(self.__optimizer_state))
            except (ValueError, KeyError):  # another network or optimizer: start fresh
                optimizer = make_optimizer(network, config)
            for group in optimizer.param_groups:
                group["lr"], group["weight_decay"] = config.lr, config.weight_decay
        return optimizer

    def _refuse_if_flagged(self, payload: Payload) -> None:
        """The outgoing audit: a distilled set with any synthetic volume flagged as a near-copy stays here."""
        report = self.privacy_audit(payload, self.__policy.audit_quantile)
        flagged = report[report["flagged"]]
        if len(flagged):
            worst = flagged.loc[flagged["nn_corr"].idxmax()]
            raise PolicyError(f"site {self.name} refuses to send its distilled set: the privacy audit flags "
                              f"{len(flagged)} of {len(report)} synthetic volume(s) as near-copies of patients "
                              f"(nearest-neighbour correlation up to {worst['nn_corr']:.3f} >= threshold "
                              f"{worst['threshold']:.3f}).")

    def privacy_audit(self, payload: Payload, quantile: float = 0.95):
        """Audit an outgoing ``distilled_set`` against this site's real volumes (runs inside the site;
        only the report — correlations and flags — leaves). See :mod:`gliofed.federated.site.privacy`."""
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
