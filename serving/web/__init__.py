"""The CRM dashboard: server-rendered pages (Jinja2, inline SVG) inside the service.

``install(app)`` adds the pages, the static files and the login; see :mod:`serving.web.routes`.
"""

from __future__ import annotations

from typing import Any


def install(app: Any) -> None:
    """Add the dashboard to ``app`` (imported lazily: importing this package is free)."""
    from serving.web.routes import install as install_routes

    install_routes(app)
