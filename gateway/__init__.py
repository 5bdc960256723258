"""The stateless HTTP gateway: discovery and bootstrap for a controlplane cluster over HTTP JSON.

- :func:`gateway.app.create_app` builds the ASGI app (``cpctl gateway`` runs it under uvicorn);
- :mod:`gateway.models` holds its request/response models, converters and
  :class:`~gateway.models.SdkBackend`, shared with the client and importable without FastAPI;
- :class:`gateway.client.GatewayClient` is the resilient client a node uses to reach it, falling
  back to the servers themselves when the gateway is down.

See ``gateway/DESIGN.md`` for why it is stateless and what it must never do, and ``docs/gateway.md``
for the endpoints.

The submodules are imported on use, not here: a node that only needs the client does not pay for
FastAPI's import, and the app does not import httpx's client machinery.
"""

from __future__ import annotations

__all__: list[str] = []
