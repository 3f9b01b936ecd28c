"""gliofed: federated, multi-task glioma MRI analysis (segmentation + IDH, 1p/19q, MGMT, WHO grade)."""

from __future__ import annotations

from gliofed._startup import defer_rfc3987_syntax

# before anything imports MONAI: its jsonschema import would compile rfc3987_syntax grammars (~5 s, unused)
defer_rfc3987_syntax()

__version__ = "0.1.0"
__all__ = ["__version__", "print_config"]


def print_config() -> None:
    """Print gliofed's version, the versions of its libraries and the compute device (notebook header)."""
    import importlib.metadata as md
    import platform

    import torch

    print(f"gliofed {__version__} | Python {platform.python_version()} | {platform.platform(terse=True)}")
    names = ["torch", "monai", "nibabel", "captum", "plotly", "ipywidgets", "papermill", "scikit-learn",
             "nilearn", "flwr"]
    versions = []
    for name in names:
        try:
            versions.append(f"{name} {md.version(name)}")
        except md.PackageNotFoundError:
            versions.append(f"{name} (not installed)")
    print(" | ".join(versions))
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {device}")
