"""Site side: everything that touches a hospital's cases — the :class:`Site` that answers the server, the
condensation of distillation federation and the privacy audit of what leaves. Server-side code never imports
this package (tested)."""

from __future__ import annotations

from gliofed.federated.site.site import TASKS, Site

__all__ = ["Site", "TASKS"]
