"""Where a cache's :class:`~gliofed.preprocessing.Preprocessing` record comes from: the one rule for its size.

A cache is made once from a manifest; its record is decided here, and every later stage reads it from the cache or
the checkpoint (never decides again). The in-plane size is, in this order:

1. the size asked for (``gliofed preprocess --size``, ``gliofed train --size``, a notebook's workspace);
2. for a synthetic cohort (a ``cohort.json`` beside the manifest), its preset's size (``tiny`` 32, ``workshop`` 48,
   ``paper`` 128);
3. otherwise the smallest in-plane matrix (RAS x, y) among the manifest's scans, at most 128 (the seed's): a default
   never upsamples a cohort.
"""

from __future__ import annotations

from pathlib import Path

from gliofed.preprocessing import Preprocessing

__all__ = ["plan_for_manifest", "native_size", "LARGEST_DEFAULT_SIZE"]

#: the largest in-plane size chosen by default (the seed's 128)
LARGEST_DEFAULT_SIZE = 128


def native_size(manifest: str | Path, largest: int = LARGEST_DEFAULT_SIZE) -> int:
    """The smallest in-plane matrix (RAS x, y) of the manifest's scans, at most ``largest``, so that a default never
    upsamples a cohort. Reads T1 headers only; a case whose t1 is missing or unreadable is left to preprocessing,
    which skips it and names the reason.

    Raises:
        DataError: no case has a readable 3D t1 (one sentence; before any work).
    """
    import nibabel as nib

    from gliofed.data.manifest import read_manifest
    from gliofed.errors import DataError

    smallest, readable = largest, 0
    for path in read_manifest(manifest)["t1"]:
        try:
            image = nib.load(path)
            axes = nib.orientations.io_orientation(image.affine)[:, 0].astype(int)  # voxel axis -> world axis
            in_plane = [int(n) for n, world in zip(image.shape[:3], axes) if world in (0, 1)]
        except Exception:  # noqa: BLE001 - missing, unreadable or not 3D: preprocessing skips it with its reason
            continue
        if len(in_plane) == 2 and min(in_plane) >= 1:
            smallest, readable = min(smallest, *in_plane), readable + 1
    if not readable:
        raise DataError(f"{manifest}: no case has a readable t1 scan to take the in-plane size from; run `gliofed "
                        "check` to list every problem, or give --size.")
    return int(smallest)


def plan_for_manifest(manifest: str | Path, size: int | None = None) -> Preprocessing:
    """The preprocessing record of a new cache of ``manifest`` (see the module docstring for the size rule).

    Args:
        manifest: the manifest CSV.
        size: the in-plane size asked for, or None for the default rule.

    Returns:
        the :class:`~gliofed.preprocessing.Preprocessing` record (all four contrasts, the seed's steps).
    """
    if size is None:
        from gliofed.presets import cohort_preset, get_preset

        preset = cohort_preset(manifest)
        size = get_preset(preset).cache_size if preset else native_size(manifest)
    return Preprocessing(size=int(size))
