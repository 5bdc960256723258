"""The defaults of `cpctl gateway`'s connection settings, importable without the gateway's own
dependencies (FastAPI, pydantic, uvicorn): the CLI builds its options from them in an install
that has only the client (``pip install controlplane``)."""

#: Seconds a request's headers may take to arrive, and its body after them (gateway/slow_clients.py).
DEFAULT_HEADER_TIMEOUT_S = 10.0
DEFAULT_BODY_TIMEOUT_S = 30.0
#: Connections the gateway serves at once (uvicorn's limit_concurrency; 503 beyond).
DEFAULT_MAX_CONNECTIONS = 1000
