"""MultiTaskUNet: the seed study's multi-task 3D U-Net (segmentation + four molecular / grade heads)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.nets.basic_unet import TwoConv
from torch import nn

from gliofed.segmentation import SEG_OUTPUTS
from gliofed.vocab import MARKER_CLASSES, REGIONS, SEG_CLASSES

__all__ = ["MultiTaskUNet", "HEADS", "NORMS", "build_model", "norm_layer_spec", "OneDNNConv3d", "prefer_onednn",
           "plain_convolutions"]

#: classification heads and their class counts: idh 2, codeletion 2, mgmt 2, grade 3
HEADS: dict[str, int] = {marker: len(classes) for marker, classes in MARKER_CLASSES.items()}

#: normalisation names :class:`MultiTaskUNet` knows by name (MONAI's); a MONAI ``(name, args)`` tuple also works
NORMS = ("batch", "group", "instance")

#: most groups of the ``"group"`` normalisation (Wu & He, ECCV 2018, use 32 for 64+ channels; the seed's first
#: stage has 16 channels, so 8 keeps two channels per group there)
MAX_GROUPS = 8


def norm_layer_spec(norm: str | tuple, features: Sequence[int]) -> str | tuple:
    """The MONAI norm spec for ``norm``: ``"group"`` becomes ``("group", {"num_groups": G})`` with G the largest
    divisor of every stage width up to :data:`MAX_GROUPS` (8 at the default widths), so that each GroupNorm splits
    its channels evenly; any other name or tuple is passed to MONAI as it is.

    >>> norm_layer_spec("group", (16, 32, 64, 128))
    ('group', {'num_groups': 8})
    >>> norm_layer_spec("batch", (16, 32, 64, 128))
    'batch'
    """
    if norm == "group":
        return ("group", {"num_groups": math.gcd(MAX_GROUPS, *[int(f) for f in features])})
    return norm


class OneDNNConv3d(nn.Conv3d):
    """A :class:`torch.nn.Conv3d` that, for float32 on the CPU, always takes oneDNN's convolution.

    PyTorch picks its CPU kernel by a size rule: a float32 3D convolution of a single small volume (batch 1, fewer
    than 20,480 values of batch x channels x depth x height) goes to the generic ``slow_conv3d`` (im2col + GEMM),
    about 6x slower here than oneDNN on the same input (benchmarks/RESULTS.md), while a batch of two takes oneDNN.
    Scoring, condensation and Grad-CAM read one case at a time, and CPU workshops use small volumes, so that rule
    chose the slow kernel for most of their work. The weights, the state dict, every other device and dtype,
    autocast, ``torch.compile`` (which traces the plain convolution), unbatched inputs and tensors that need 64-bit
    indexing are unchanged; the outputs agree with the generic kernel's to float32 rounding (so a seeded CPU run's
    numbers moved at that level when this class came in). Transposed convolutions are not affected.
    """

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if (input.device.type == "cpu" and input.dim() == 5 and input.dtype == torch.float32
                and weight.dtype == torch.float32 and input.numel() < 2**31 and not torch.compiler.is_compiling()
                and not torch.is_autocast_enabled("cpu") and self.padding_mode == "zeros"
                and isinstance(self.padding, tuple) and torch.backends.mkldnn.is_available()
                and torch.backends.mkldnn.enabled):
            return torch.ops.aten.mkldnn_convolution(input, weight, bias, list(self.padding), list(self.stride),
                                                     list(self.dilation), self.groups)
        return super()._conv_forward(input, weight, bias)


def prefer_onednn(module: nn.Module) -> nn.Module:
    """Make every plain :class:`torch.nn.Conv3d` of ``module`` a :class:`OneDNNConv3d` (in place: the same
    parameters, buffers and hooks; only the class changes). Returns ``module``."""
    for layer in module.modules():
        if type(layer) is nn.Conv3d:
            layer.__class__ = OneDNNConv3d
    return module


def plain_convolutions(module: nn.Module) -> nn.Module:
    """The inverse of :func:`prefer_onednn`: every :class:`OneDNNConv3d` of ``module`` becomes a plain
    :class:`torch.nn.Conv3d` again, so that PyTorch picks the kernel (in place; benchmarks and tests compare the
    two). Returns ``module``."""
    for layer in module.modules():
        if type(layer) is OneDNNConv3d:
            layer.__class__ = nn.Conv3d
    return module


class _Down(nn.Module):
    """Max-pool (kernel = stride = ``pool``) then TwoConv."""

    def __init__(self, in_chns: int, out_chns: int, pool: Sequence[int], act, norm, dropout: float) -> None:
        super().__init__()
        self.pool = nn.MaxPool3d(kernel_size=tuple(pool), stride=tuple(pool), ceil_mode=True)
        self.convs = TwoConv(3, in_chns, out_chns, act, norm, True, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convs(self.pool(x))


class _UpCat(nn.Module):
    """Transposed conv (kernel = stride = ``pool``), crop to the skip's size, concatenate, TwoConv."""

    def __init__(self, in_chns: int, skip_chns: int, out_chns: int, pool: Sequence[int], act, norm,
                 dropout: float) -> None:
        super().__init__()
        self.up = nn.ConvTranspose3d(in_chns, in_chns // 2, kernel_size=tuple(pool), stride=tuple(pool))
        self.convs = TwoConv(3, in_chns // 2 + skip_chns, out_chns, act, norm, True, dropout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        # ceil-mode pooling of odd sizes makes the upsampled map one voxel larger: crop it back
        x = x[..., : skip.shape[-3], : skip.shape[-2], : skip.shape[-1]]
        return self.convs(torch.cat([x, skip], dim=1))


class MultiTaskUNet(nn.Module):
    """Multi-task 3D U-Net of Ren et al. (Front. Radiol. 2025): one encoder, a segmentation decoder and a
    classification branch with one head per marker.

    Encoder stages of two (conv 3x3x3, norm, ReLU) with ``features`` channels (default 16-32-64-128),
    max-pool ``pool`` between stages (default (1, 2, 2): depth is kept, any depth works); decoder by
    transposed convolution and skip concatenation; a 1x1x1 segmentation head; classification by global
    average pooling of the bottleneck, an MLP and one linear head per marker. Any in-plane size works
    (odd sizes are ceil-pooled and cropped back). 1,395,645 parameters at the default (measured).

    Args:
        in_channels: input contrasts (default 4: t1, t1ce, t2, flair).
        seg_classes: segmentation output channels (default: 4 for ``"classes"``: background, NCR, ED, ET; 3 for
            ``"regions"``: WT, TC, ET).
        seg_output: ``"classes"`` (default, the seed's: one softmax over the four classes) or ``"regions"`` (one
            sigmoid per nested region, as BraTS methods train; :mod:`gliofed.segmentation` reads either).
        features: channels per stage, one more than the number of down-sampling steps (default (16, 32, 64, 128)).
        pool: pooling kernel/stride per down-sampling step (default (1, 2, 2)).
        norm: ``"batch"`` (default: the seed's network), ``"group"`` (GroupNorm, :func:`norm_layer_spec`: no
            running statistics and no mixing across cases in a batch, which DP-SGD needs (Opacus computes
            per-case gradients and refuses BatchNorm), and nothing like BatchNorm statistics to upload),
            ``"instance"`` (tiny batches), or any MONAI norm spec.
        act: MONAI activation (default ReLU).
        hidden: width of the classification MLP (default 256).
        dropout: dropout in the MLP (default 0.2).
        heads: marker -> classes (default :data:`HEADS`).

    Returns (forward):
        dict of logits: ``seg`` (B, seg_classes, D, H, W), classes or regions; ``idh``, ``codeletion``, ``mgmt`` (B, 2);
        ``grade`` (B, 3). With ``return_features=True`` also ``bottleneck`` (B, features[-1]) pooled
        bottleneck features and ``decoder`` (B, features[0], D, H, W) last decoder features.

    >>> net = MultiTaskUNet()
    >>> out = net(torch.zeros(1, 4, 5, 33, 40))
    >>> out["seg"].shape, out["grade"].shape
    (torch.Size([1, 4, 5, 33, 40]), torch.Size([1, 3]))
    """

    def __init__(self, in_channels: int = 4, seg_classes: int | None = None,
                 features: Sequence[int] = (16, 32, 64, 128), pool: Sequence[int] = (1, 2, 2),
                 norm: str | tuple = "batch",
                 act: str | tuple = ("relu", {"inplace": True}), hidden: int = 256, dropout: float = 0.2,
                 heads: dict[str, int] | None = None, seg_output: str = "classes") -> None:
        super().__init__()
        if len(features) != 4:
            raise ValueError("features needs four stage widths (three down-sampling steps), e.g. (16, 32, 64, 128).")
        if seg_output not in SEG_OUTPUTS:
            raise ValueError(f"seg_output {seg_output!r} is not one of {', '.join(SEG_OUTPUTS)}.")
        expected = len(REGIONS) if seg_output == "regions" else len(SEG_CLASSES)
        seg_classes = expected if seg_classes is None else seg_classes
        if seg_output == "regions" and seg_classes != expected:
            raise ValueError(f"a 'regions' head outputs {expected} channels (WT, TC, ET), not {seg_classes}.")
        f0, f1, f2, f3 = features
        asked, norm = norm, norm_layer_spec(norm, features)
        self.conv_0 = TwoConv(3, in_channels, f0, act, norm, True, 0.0)
        self.down_1 = _Down(f0, f1, pool, act, norm, 0.0)
        self.down_2 = _Down(f1, f2, pool, act, norm, 0.0)
        self.down_3 = _Down(f2, f3, pool, act, norm, 0.0)
        self.upcat_3 = _UpCat(f3, f2, f2, pool, act, norm, 0.0)
        self.upcat_2 = _UpCat(f2, f1, f1, pool, act, norm, 0.0)
        self.upcat_1 = _UpCat(f1, f0, f0, pool, act, norm, 0.0)
        self.seg_head = nn.Conv3d(f0, seg_classes, kernel_size=1)
        self.mlp = nn.Sequential(nn.Linear(f3, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout))
        self.heads = nn.ModuleDict({name: nn.Linear(hidden, n) for name, n in (heads or HEADS).items()})
        self.config = dict(in_channels=in_channels, seg_classes=seg_classes, features=tuple(features),
                           pool=tuple(pool), norm=asked, act=act, hidden=hidden, dropout=dropout,
                           heads=dict(heads or HEADS))
        if seg_output != "classes":  # a classes model's config stays as earlier gliofed versions wrote it
            self.config["seg_output"] = seg_output
        prefer_onednn(self)

    def forward(self, x: torch.Tensor, return_features: bool = False) -> dict[str, torch.Tensor]:
        x0 = self.conv_0(x)
        x1 = self.down_1(x0)
        x2 = self.down_2(x1)
        x3 = self.down_3(x2)
        u2 = self.upcat_3(x3, x2)
        u1 = self.upcat_2(u2, x1)
        u0 = self.upcat_1(u1, x0)
        pooled = F.adaptive_avg_pool3d(x3, 1).flatten(1)
        hidden = self.mlp(pooled)
        out = {"seg": self.seg_head(u0)}
        out.update({name: head(hidden) for name, head in self.heads.items()})
        if return_features:
            out["bottleneck"] = pooled
            out["decoder"] = u0
        return out


def build_model(spec) -> MultiTaskUNet:
    """The one place a :class:`MultiTaskUNet` is built.

    Args:
        spec: a :class:`~gliofed.config.TrainConfig` (its ``model`` options and one input channel per
            ``modalities`` entry), or a saved model config (the ``config`` dict of a built model, as checkpoints
            and the server's requests carry it).
    """
    if isinstance(spec, dict):
        return MultiTaskUNet(**spec)
    return MultiTaskUNet(in_channels=len(spec.modalities), **spec.model)
