"""The site's room: everything that touches a hospital's cases — the :class:`Site` that answers the server, its
operator's :class:`~gliofed.federated.site.policy.SitePolicy`, the condensation of distillation federation
(:mod:`~gliofed.federated.site.condense`), the privacy audit of what leaves, and the Flower ClientApp
(:mod:`~gliofed.federated.site.client_app`). Server-side code never imports this package, in any form (tested)."""

from __future__ import annotations

from gliofed.federated.site.site import Site

__all__ = ["Site"]
