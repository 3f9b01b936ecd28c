"""Differential privacy building blocks: the Gaussian mechanism with clipping, a standard accountant, and DP-SGD.

- :func:`gaussian_sigma`: the smallest noise standard deviation that makes one release of a function of L2
  ``sensitivity`` (epsilon, delta)-DP: the *analytic* Gaussian mechanism (Balle & Wang, ICML 2018, Theorem 8),
  exact where the classic bound of Dwork & Roth (2014, Theorem A.1: sigma = sensitivity * sqrt(2 ln(1.25 / delta))
  / epsilon, :func:`classic_gaussian_sigma`) is loose and holds for epsilon >= 1 too.
- :func:`clip_rows` and :func:`gaussian_sum`: per-record L2 clipping and the noised sum of clipped records (the
  sum's sensitivity under adding or removing one record is the clipping norm).
- :class:`Accountant`: Opacus's Renyi-DP accountant (Mironov 2017; Mironov, Talwar & Zhang 2019 for the sampled
  Gaussian mechanism) over a history of (noise multiplier, sample rate, steps); ``"prv"`` selects Opacus's PRV
  accountant (Gopi, Lee & Wutschitz, NeurIPS 2021) instead. :func:`noise_multiplier_for` calibrates.
- :class:`DPSGD`: DP-SGD (Abadi et al., CCS 2016) for one training request: Poisson sampling of cases (Opacus's
  ``UniformWithReplacementSampler``), per-case gradients computed one case at a time (exact: the padding of a
  batch, the normalisation and the masked loss means never mix two cases), clipped and noised by Opacus's
  ``DPOptimizer``. Needs a model without BatchNorm (``MultiTaskUNet(norm="group")``): BatchNorm mixes the cases
  of a batch and keeps running statistics that would leave the site un-noised.

Neighbouring datasets differ by adding or removing one patient (Opacus's convention). Opacus is imported when
first used, so that importing this module costs nothing.

>>> round(classic_gaussian_sigma(0.5, 1e-5), 3)
9.689
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import optimize, special

from gliofed.errors import ConfigError

__all__ = ["DPSettings", "MECHANISMS", "gaussian_sigma", "gaussian_delta", "classic_gaussian_sigma", "clip_rows",
           "gaussian_sum", "gaussian_release", "Accountant", "noise_multiplier_for", "DPSGD", "check_no_batchnorm",
           "ACCOUNTANTS"]

#: accountants :class:`Accountant` knows: Opacus's RDP (default) and PRV accountants
ACCOUNTANTS = ("rdp", "prv")

#: DP mechanisms a request may ask for: none; DP-SGD (train); the clipped and noised update (train, as Flower's
#: local DP mod); the Gaussian mechanism on the distillation payload's summaries (distill)
MECHANISMS = ("off", "dp_sgd", "clipped_update", "gaussian")


@dataclass(frozen=True)
class DPSettings:
    """The differential-privacy dial of a request (default off: the shipped behaviour).

    Attributes:
        mechanism: ``"off"`` (default), ``"dp_sgd"`` (train: per-case clipped and noised gradients, :class:`DPSGD`;
            needs a GroupNorm model), ``"clipped_update"`` (train: the whole update clipped to ``max_norm`` and
            noised once before it leaves, as Flower's local DP mod does; its sensitivity under adding or removing a
            patient is ``2 * max_norm``) or ``"gaussian"`` (distill: every released summary through the Gaussian
            mechanism with per-case clipping).
        noise_multiplier: z, noise standard deviation over the clipping norm (default 1.0).
        max_norm: clipping norm C of a case's gradient, of the update, or of a case's contribution to the summaries
            (default 1.0).
        delta: the delta epsilon is reported at (default 1e-5).
    """

    mechanism: str = "off"
    noise_multiplier: float = 1.0
    max_norm: float = 1.0
    delta: float = 1e-5

    def __post_init__(self) -> None:
        if self.mechanism not in MECHANISMS:
            raise ConfigError(f"DP mechanism {self.mechanism!r} is not one of {', '.join(MECHANISMS)}.")
        for name in ("noise_multiplier", "max_norm"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value <= 0:
                raise ConfigError(f"DP {name} must be a positive finite number, not {value!r}.")
        if isinstance(self.delta, bool) or not isinstance(self.delta, (int, float)) or not 0 < self.delta < 1:
            raise ConfigError(f"DP delta must be in (0, 1), not {self.delta!r}.")

    @property
    def enabled(self) -> bool:
        """Whether any mechanism is on."""
        return self.mechanism != "off"

    @classmethod
    def from_dict(cls, values: dict | None) -> DPSettings:
        """From a request's ``dp`` settings (None or {}: off); an unknown key is a :class:`ConfigError`."""
        values = dict(values or {})
        known = {"mechanism", "noise_multiplier", "max_norm", "delta"}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown DP setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}.")
        return cls(**values)

    def to_dict(self) -> dict:
        return {"mechanism": self.mechanism, "noise_multiplier": float(self.noise_multiplier),
                "max_norm": float(self.max_norm), "delta": float(self.delta)}


def _check_budget(epsilon: float, delta: float) -> None:
    if not (isinstance(epsilon, (int, float)) and math.isfinite(epsilon) and epsilon > 0):
        raise ConfigError(f"epsilon must be a positive finite number, not {epsilon!r}.")
    if not (isinstance(delta, (int, float)) and 0 < delta < 1):
        raise ConfigError(f"delta must be in (0, 1), not {delta!r}.")


def _log_phi(x: float) -> float:
    return float(special.log_ndtr(x))


def gaussian_delta(sigma: float, epsilon: float, sensitivity: float = 1.0) -> float:
    """The exact delta at ``epsilon`` of one release with Gaussian noise of standard deviation ``sigma`` added to a
    function of L2 ``sensitivity`` (Balle & Wang 2018, Theorem 8):
    ``Phi(s / (2 sigma) - epsilon sigma / s) - exp(epsilon) Phi(-s / (2 sigma) - epsilon sigma / s)``."""
    a = sensitivity / (2 * sigma)
    b = epsilon * sigma / sensitivity
    first = math.exp(_log_phi(a - b))
    second = math.exp(epsilon + _log_phi(-a - b))  # in log space: exp(epsilon) alone overflows for large epsilon
    return max(0.0, first - second)


def gaussian_sigma(epsilon: float, delta: float, sensitivity: float = 1.0) -> float:
    """The smallest noise standard deviation that makes one release of a function of L2 ``sensitivity``
    (``epsilon``, ``delta``)-DP: the analytic Gaussian mechanism (Balle & Wang 2018), solved to 1e-12 relative.

    Args:
        epsilon: privacy loss bound (> 0).
        delta: failure probability (0 < delta < 1).
        sensitivity: L2 sensitivity of the released function (default 1.0).

    Returns:
        sigma (the noise's standard deviation, in the units of the released function).

    >>> round(gaussian_sigma(1.0, 1e-5), 4)
    3.7305
    """
    _check_budget(epsilon, delta)
    if not sensitivity > 0:
        raise ConfigError(f"sensitivity must be positive, not {sensitivity!r}.")
    # delta(sigma) falls monotonically from ~1 towards 0: bracket the root on a unit-sensitivity scale, then scale
    low, high = 1e-6, 1.0
    while gaussian_delta(high, epsilon) > delta:
        high *= 2.0
    unit = optimize.brentq(lambda s: gaussian_delta(s, epsilon) - delta, low, high, xtol=1e-14, rtol=1e-12)
    return float(unit * sensitivity)


def classic_gaussian_sigma(epsilon: float, delta: float, sensitivity: float = 1.0) -> float:
    """Dwork & Roth (2014, Theorem A.1): ``sensitivity * sqrt(2 ln(1.25 / delta)) / epsilon``, valid for
    epsilon < 1 only (a looser bound than :func:`gaussian_sigma`; kept as the textbook reference)."""
    _check_budget(epsilon, delta)
    if epsilon >= 1:
        raise ConfigError(f"the classic Gaussian mechanism holds for epsilon < 1 only, not {epsilon!r}.")
    return float(sensitivity * math.sqrt(2 * math.log(1.25 / delta)) / epsilon)


def clip_rows(rows: np.ndarray, max_norm: float) -> np.ndarray:
    """Each row (one record's contribution, flattened) scaled down to L2 norm at most ``max_norm``; rows already
    inside the ball are unchanged.

    Args:
        rows: (N, ...) one record per leading index.
        max_norm: clipping norm C (> 0).

    Returns:
        float64 array of the shape of ``rows``.
    """
    if not max_norm > 0:
        raise ConfigError(f"the clipping norm must be positive, not {max_norm!r}.")
    rows = np.asarray(rows, np.float64)
    flat = rows.reshape(len(rows), -1)
    norms = np.linalg.norm(flat, axis=1)
    factor = np.minimum(1.0, max_norm / np.maximum(norms, 1e-12))
    return (flat * factor[:, None]).reshape(rows.shape)


def gaussian_sum(rows: np.ndarray, max_norm: float, noise_multiplier: float,
                 rng: np.random.Generator) -> np.ndarray:
    """The sum over records of their clipped contributions (:func:`clip_rows`) plus Gaussian noise of standard
    deviation ``noise_multiplier * max_norm`` per coordinate: one Gaussian mechanism of sensitivity ``max_norm``
    (adding or removing one record moves the sum by at most the clipping norm). Account it as one step of
    ``noise_multiplier`` at sample rate 1 (:meth:`Accountant.step`).

    Args:
        rows: (N, ...) one record's contribution per leading index (N may be 0: noise only).
        max_norm: clipping norm C.
        noise_multiplier: z = noise standard deviation / C (> 0).
        rng: NumPy generator of the noise.

    Returns:
        float64 array of shape ``rows.shape[1:]``.
    """
    if not noise_multiplier > 0:
        raise ConfigError(f"the noise multiplier must be positive, not {noise_multiplier!r}.")
    clipped = clip_rows(rows, max_norm)
    total = clipped.sum(0)
    return total + rng.normal(0.0, noise_multiplier * max_norm, size=total.shape)


def gaussian_release(pieces: dict[str, np.ndarray], max_norm: float, noise_multiplier: float,
                     rng: np.random.Generator, weights: dict[str, float] | None = None) -> dict[str, np.ndarray]:
    """Several sums over the same records released by one Gaussian mechanism: record i contributes
    ``weights[name] * pieces[name][i]`` to every piece, all flattened into one vector that is clipped to
    ``max_norm`` (:func:`clip_rows`) before summing, so that adding or removing one record moves the whole release
    by at most ``max_norm``; the noised sums are divided by the weights again. Account it as one step of
    ``noise_multiplier`` at sample rate 1.

    A weight spends the clipping budget: a piece with weight w gets noise of standard deviation
    ``noise_multiplier * max_norm / w`` in its own units; choose weights so that a typical record's contribution
    is not clipped away (e.g. a count gets weight ~1, a feature vector of norm ~10 weight ~0.1).

    Args:
        pieces: name -> (N, ...) per-record contributions (the same N for all).
        max_norm: clipping norm C of a record's whole weighted contribution.
        noise_multiplier: z.
        rng: NumPy generator of the noise.
        weights: name -> weight (default 1.0 each).

    Returns:
        name -> noised sum, shape ``pieces[name].shape[1:]``.
    """
    names = sorted(pieces)
    if not names:
        return {}
    counts = {len(np.asarray(pieces[name])) for name in names}
    if len(counts) != 1:
        raise ConfigError(f"every piece of a release needs one row per record; found {sorted(counts)} rows.")
    weights = {name: float((weights or {}).get(name, 1.0)) for name in names}
    if any(not w > 0 for w in weights.values()):
        raise ConfigError(f"release weights must be positive, not {weights}.")
    n = counts.pop()
    flat = [np.asarray(pieces[name], np.float64).reshape(n, -1) * weights[name] for name in names]
    total = gaussian_sum(np.concatenate(flat, axis=1), max_norm, noise_multiplier, rng)
    out, start = {}, 0
    for name, block in zip(names, flat):
        width = block.shape[1]
        shape = np.asarray(pieces[name]).shape[1:]
        out[name] = (total[start:start + width] / weights[name]).reshape(shape)
        start += width
    return out


@dataclass
class Accountant:
    """Privacy spent by a sequence of (sub)sampled Gaussian mechanisms, by a standard accountant (Opacus's).

    Attributes:
        kind: ``"rdp"`` (default; Opacus's ``RDPAccountant``) or ``"prv"`` (Opacus's ``PRVAccountant``).
        history: ``[(noise_multiplier, sample_rate, steps), ...]``: every mechanism spent so far; a release of
            clipped sums (:func:`gaussian_sum`) is one step at sample rate 1.

    >>> accountant = Accountant()
    >>> accountant.step(1.5, 0.04, 2250)
    >>> round(accountant.epsilon(1e-5), 3)  # Opacus's own regression value for this configuration
    7.329
    """

    kind: str = "rdp"
    history: list[tuple[float, float, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.kind not in ACCOUNTANTS:
            raise ConfigError(f"accountant {self.kind!r} is not one of {', '.join(ACCOUNTANTS)}.")
        self.history = [(float(z), float(q), int(n)) for z, q, n in self.history]

    def step(self, noise_multiplier: float, sample_rate: float = 1.0, steps: int = 1) -> None:
        """Record ``steps`` mechanisms of ``noise_multiplier`` (noise std / clipping norm) at ``sample_rate``."""
        if not noise_multiplier > 0 or not 0 < sample_rate <= 1 or int(steps) < 0:
            raise ConfigError(f"a Gaussian mechanism needs noise_multiplier > 0, 0 < sample_rate <= 1 and steps >= "
                              f"0, not ({noise_multiplier!r}, {sample_rate!r}, {steps!r}).")
        if int(steps) == 0:
            return
        # merge with the last entry when identical (Opacus's own history does the same)
        if self.history and self.history[-1][:2] == (float(noise_multiplier), float(sample_rate)):
            z, q, n = self.history[-1]
            self.history[-1] = (z, q, n + int(steps))
        else:
            self.history.append((float(noise_multiplier), float(sample_rate), int(steps)))

    def _opacus(self):
        import warnings

        from opacus.accountants import PRVAccountant, RDPAccountant

        accountant = RDPAccountant() if self.kind == "rdp" else PRVAccountant()
        accountant.history = list(self.history)
        return accountant, warnings

    def epsilon(self, delta: float) -> float:
        """Epsilon spent at ``delta`` (0 when nothing was spent)."""
        _check_budget(1.0, delta)
        if not self.history:
            return 0.0
        accountant, warnings = self._opacus()
        with warnings.catch_warnings():  # "optimal order is the largest alpha": a looser bound, not an error
            warnings.simplefilter("ignore")
            return float(accountant.get_epsilon(delta=delta))

    def to_dict(self) -> dict:
        """Plain JSON: ``{"kind": ..., "history": [[z, q, steps], ...]}``."""
        return {"kind": self.kind, "history": [list(entry) for entry in self.history]}

    @classmethod
    def from_dict(cls, values: dict) -> Accountant:
        return cls(values.get("kind", "rdp"), [tuple(entry) for entry in values.get("history", [])])


def noise_multiplier_for(epsilon: float, delta: float, sample_rate: float = 1.0, steps: int = 1,
                         kind: str = "rdp") -> float:
    """The noise multiplier at which ``steps`` mechanisms at ``sample_rate`` spend ``epsilon`` at ``delta``
    (Opacus's ``get_noise_multiplier``, to 0.01 epsilon)."""
    import warnings

    from opacus.accountants.utils import get_noise_multiplier

    _check_budget(epsilon, delta)
    if kind not in ACCOUNTANTS:
        raise ConfigError(f"accountant {kind!r} is not one of {', '.join(ACCOUNTANTS)}.")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(get_noise_multiplier(target_epsilon=epsilon, target_delta=delta, sample_rate=sample_rate,
                                          steps=int(steps), accountant=kind, epsilon_tolerance=0.01))


def check_no_batchnorm(model, what: str = "DP-SGD") -> None:
    """Raise :class:`ConfigError` when ``model`` holds a BatchNorm layer (Opacus's ``ModuleValidator``): it mixes
    the cases of a batch and keeps running statistics that would leave un-noised."""
    from opacus.validators import ModuleValidator

    training = model.training
    model.train()  # Opacus validates a model in training mode (BatchNorm in eval mode would pass, wrongly)
    try:
        errors = ModuleValidator.validate(model, strict=False)
    finally:
        model.train(training)
    if errors:
        raise ConfigError(f"{what} needs a model without BatchNorm (build it with norm='group'): "
                          f"{str(errors[0]).split('.')[0]}.")


class DPSGD:
    """DP-SGD over one dataset: Poisson-sampled steps, per-case gradients clipped to ``max_grad_norm`` and noised
    with standard deviation ``noise_multiplier * max_grad_norm`` (Opacus's ``DPOptimizer``), accounted per step.

    Args:
        model: the network (no BatchNorm: :func:`check_no_batchnorm`); trained in place. In-place activations are
            switched off (a per-case backward pass through them is fine, but Opacus's hooks are not).
        optimizer: the optimiser of ``model``'s parameters (wrapped).
        n_cases: number of records N.
        batch_size: expected cases per step B (sample rate q = B / N).
        noise_multiplier: z (> 0).
        max_grad_norm: clipping norm C (> 0).
        seed: seeds the sampling and the noise.

    Each epoch has ``round(N / B)`` steps (at least one). :attr:`accountant` holds what was spent.
    """

    def __init__(self, model, optimizer, n_cases: int, batch_size: int, noise_multiplier: float,
                 max_grad_norm: float, seed: int = 0) -> None:
        import torch
        from opacus.optimizers import DPOptimizer

        check_no_batchnorm(model)
        if n_cases < 1:
            raise ConfigError("DP-SGD needs at least one training case.")
        if not noise_multiplier > 0 or not max_grad_norm > 0:
            raise ConfigError(f"DP-SGD needs noise_multiplier > 0 and max_grad_norm > 0, not {noise_multiplier!r} "
                              f"and {max_grad_norm!r}.")
        for module in model.modules():
            if getattr(module, "inplace", False):
                module.inplace = False
        self.model, self.n_cases = model, int(n_cases)
        self.sample_rate = min(1.0, float(batch_size) / self.n_cases)
        self.steps_per_epoch = max(1, round(1.0 / self.sample_rate))
        self.noise_multiplier, self.max_grad_norm = float(noise_multiplier), float(max_grad_norm)
        self.generator = torch.Generator().manual_seed(int(seed))
        self.optimizer = DPOptimizer(optimizer, noise_multiplier=self.noise_multiplier,
                                     max_grad_norm=self.max_grad_norm,
                                     expected_batch_size=max(1, round(self.sample_rate * self.n_cases)),
                                     loss_reduction="mean", generator=self.generator)
        self.accountant = Accountant()
        self.params = [p for p in model.parameters() if p.requires_grad]

    def sample(self) -> list[int]:
        """One Poisson-sampled step: each case in independently with probability q (may be empty)."""
        import torch

        chosen = torch.rand(self.n_cases, generator=self.generator) < self.sample_rate
        return [int(i) for i in torch.nonzero(chosen).flatten()]

    def step(self, case_losses: Sequence[Callable[[], object]],
             extra_gradient: Callable[[], Sequence[object] | None] | None = None) -> None:
        """One DP-SGD step over the sampled cases: ``case_losses[k]()`` computes case k's loss (a scalar tensor,
        its own forward pass); its gradient is that case's gradient. ``extra_gradient()`` (optional) returns a
        gradient per parameter that depends on no case (FedProx's proximal term), added after the noise."""
        import torch

        per_case = [[] for _ in self.params]
        for loss_of_case in case_losses:
            grads = torch.autograd.grad(loss_of_case(), self.params, allow_unused=True)
            for slot, p, g in zip(per_case, self.params, grads):
                slot.append(torch.zeros_like(p) if g is None else g.detach())
        for slot, p in zip(per_case, self.params):
            p.grad_sample = torch.stack(slot) if slot else torch.zeros((0, *p.shape), dtype=p.dtype)
        if self.optimizer.pre_step():
            if extra_gradient is not None:
                extra = extra_gradient()
                for p, g in zip(self.params, extra or []):
                    if g is not None:
                        p.grad = p.grad + g
            self.optimizer.original_optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        for p in self.params:
            p.grad_sample = None
        self.accountant.step(self.noise_multiplier, self.sample_rate, 1)
