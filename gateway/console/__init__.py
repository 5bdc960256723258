"""The web console at ``/ui``: read-only, server-rendered pages over the cluster, live through
server-sent events fanned out from one Watch per gateway. See ``gateway/DESIGN.md`` ("The console")
and ``docs/console.md``."""

from gateway.console.routes import router

__all__ = ["router"]
