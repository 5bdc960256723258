"""The console's routes under ``/ui``: server-rendered pages, their live fragments, the event stream,
the login and two static files. See ``gateway/DESIGN.md`` ("The console") for why it is built so.

Every page is rendered whole on the server (Jinja2, autoescaping on: text from the cluster is
never markup). ``?fragment=1`` renders only the page's live region, which ``console.js`` swaps in
when ``/ui/events`` says the page is stale. Nothing here writes to the cluster.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path as FilePath
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs, urlencode

import jinja2
import structlog
from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from controlplane import errors
from controlplane.client import AsyncClient, ClusterStatus
from gateway import errors as gw_errors
from gateway.console import auth, views
from gateway.console.hub import LiveHub, SharedReads
from gateway.console.source import ConsoleSource, SdkSource

log = structlog.get_logger("gateway.console")

HERE = FilePath(__file__).parent
#: No inline script or style anywhere, no third party, no framing: what a page may load is its own
#: two static files, and what it may fetch is its own origin.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
#: An idle event stream sends a comment this often, so proxies and browsers keep it open.
KEEPALIVE_S = 15.0
NAV = (
    ("/ui/", "Cluster"),
    ("/ui/fleet", "Fleet"),
    ("/ui/networks", "Networks"),
    ("/ui/ports", "Ports"),
    ("/ui/models", "Models"),
    ("/ui/training", "Training"),
)
ALL_DOMAINS = "*"

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.globals.update(human_bytes=views.human_bytes, human_rate=views.human_rate, ago=views.ago)

_STATIC_TYPES = {
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
_STATIC = {name: (HERE / "static" / name).read_bytes() for name in _STATIC_TYPES}
ASSET_VERSION = hashlib.sha256(b"".join(_STATIC.values())).hexdigest()[:12]

router = APIRouter(prefix="/ui", include_in_schema=False)


# --------------------------------------------------------------------------------------- plumbing


def _gateway(request: Request) -> Any:
    return request.app.state.gateway


def source_of(state: Any) -> ConsoleSource:
    """The console reads through the gateway's own SDK client (one per gateway); a test may set
    ``app.state.console_source`` instead."""
    override: ConsoleSource | None = getattr(state, "console_source", None)
    if override is not None:
        return override
    client = getattr(state.gateway.backend, "client", None)
    if not isinstance(client, AsyncClient):
        raise errors.FailedPrecondition("the console needs the gateway's SDK backend")
    return SdkSource(client)


def hub_of(request: Request) -> LiveHub:
    """The app's one hub, made on first use (the gateway's state lives on ``app.state`` too)."""
    state = request.app.state
    hub: LiveHub | None = getattr(state, "console_hub", None)
    if hub is None:
        hub = LiveHub(lambda: source_of(state).watch(), state.gateway.cache.refresh)
        state.console_hub = hub
        state.console_reads = SharedReads(hub)
    return hub


def shared_reads(request: Request) -> SharedReads:
    hub_of(request)
    reads: SharedReads = request.app.state.console_reads
    return reads


def _logged_in(request: Request, token: str) -> bool:
    header = request.headers.get("authorization", "")
    scheme, _, presented = header.partition(" ")
    if scheme.lower() == "bearer" and presented and auth.valid_token(token, presented.strip()):
        return True
    cookie = request.cookies.get(auth.COOKIE, "")
    return bool(cookie) and auth.valid_session(token, cookie)


async def require_login(request: Request) -> None:
    """With a token configured, nothing under /ui but the login and the static files answers
    without it: a page redirects to the login, a fragment or the event stream is a 401."""
    token = _gateway(request).settings.token
    if not token or _logged_in(request, token):
        return
    if request.url.path == "/ui/events" or request.query_params.get("fragment") == "1":
        raise gw_errors.Unauthenticated("log in to the console (or send Authorization: Bearer <token>)")
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    raise StarletteHTTPException(303, "log in first", headers={"Location": "/ui/login?" + urlencode({"next": target})})


Login = Depends(require_login)


def _html(body: str, status: int = 200, headers: dict[str, str] | None = None) -> HTMLResponse:
    return HTMLResponse(body, status_code=status, headers={**SECURITY_HEADERS, **(headers or {})})


async def _page(
    request: Request,
    *,
    title: str,
    page_template: str,
    live_template: str,
    domains: str,
    load: Callable[[], Awaitable[dict[str, Any]]],
    heading: str | None = None,
    controls: dict[str, Any] | None = None,
) -> HTMLResponse:
    """A whole page, or with ``?fragment=1`` its live region only. A cluster error is shown in the
    live region with the status the gateway's mapping gives it (the page keeps its live updates, so
    it recovers by itself)."""
    context: dict[str, Any] = {"now_ms": int(time.time() * 1000)}
    status = 200
    try:
        context.update(await load())
    except errors.ControlPlaneError as exc:
        answer = gw_errors.from_control_plane(exc)
        status, live_template = answer.status, "error.html"
        context["error"] = answer.body
    for key, value in (controls or {}).items():  # read after load(), which may fill them in
        context.setdefault(key, value)
    if request.query_params.get("fragment") == "1":
        return _html(_env.get_template(live_template).render(context), status)
    context.update(
        title=title,
        heading=heading,
        nav=NAV,
        domains=domains,
        live_template=live_template,
        asset_version=ASSET_VERSION,
        show_logout=bool(_gateway(request).settings.token) and auth.COOKIE in request.cookies,
    )
    return _html(_env.get_template(page_template).render(context), status)


# --------------------------------------------------------------------------------------- pages


@router.get("", dependencies=[Login])
async def console_root() -> RedirectResponse:
    return RedirectResponse("/ui/", status_code=307)


@router.get("/", dependencies=[Login])
async def cluster_page(request: Request) -> HTMLResponse:
    gateway = _gateway(request)

    async def load() -> dict[str, Any]:
        status: ClusterStatus = await gateway.cache.get()
        versions: dict[str, str] = {}
        try:
            servers = await source_of(request.app.state).nodes("server", None, False)
            versions = {v.node.spec.id: v.node.spec.version for v in servers if v.node.spec.version}
        except errors.ControlPlaneError:
            pass  # versions are a nicety; the status above is what this page is for
        return {"status": status, "versions": versions}

    return await _page(
        request,
        title="Cluster",
        page_template="base.html",
        live_template="cluster.html",
        domains=ALL_DOMAINS,
        load=load,
    )


StateName = Literal["", "joining", "active", "leaving", "left", "dead"]
RoleName = Literal["", "agent", "server"]


@router.get("/fleet", dependencies=[Login])
async def fleet_page(
    request: Request,
    q: Annotated[str, Query(max_length=200)] = "",
    state: StateName = "",
    role: RoleName = "",
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
) -> HTMLResponse:
    def page_url(number: int) -> str:
        params = {k: v for k, v in {"q": q, "state": state, "role": role}.items() if v}
        return "/ui/fleet?" + urlencode({**params, "page": number})

    async def load() -> dict[str, Any]:
        source = source_of(request.app.state)
        # Every open Fleet re-reads after each membership change: one read serves them all, and
        # the search box filters that read (views.fleet_page) instead of asking the cluster again.
        nodes = await shared_reads(request).get(
            "membership", ("nodes", role, state), lambda: source.nodes(role or None, state or None, False)
        )
        return {"fleet": views.fleet_page(nodes, q, page), "page_url": page_url}

    return await _page(
        request,
        title="Fleet",
        page_template="fleet_page.html",
        live_template="fleet.html",
        domains="membership",
        load=load,
        controls={"q": q, "state": state, "role": role},
    )


async def _if_available(read: Awaitable[Any]) -> tuple[Any, str]:
    """A page's secondary read: (its value, "") or (None, why it is not available). A cluster of an
    older release (below the level the read needs, or without the method at all) or a gateway
    identity without the permission loses that section only, shown with the reason, not the page.
    Any other error is the page's, as for its main reads."""
    try:
        return await read, ""
    except (errors.FailedPrecondition, errors.PermissionDenied) as exc:
        return None, exc.message or type(exc).__name__
    except errors.Unimplemented:
        # A server's own failure (Internal) is still the page's.
        return None, "the cluster's servers run a release without this read"


@router.get("/networks", dependencies=[Login])
async def networks_page(request: Request) -> HTMLResponse:
    async def load() -> dict[str, Any]:
        source = source_of(request.app.state)
        unplaced, unplaced_problem = await _if_available(source.unplaced(""))
        return {"networks": await source.networks(), "unplaced": unplaced, "unplaced_problem": unplaced_problem}

    return await _page(
        request,
        title="Networks",
        page_template="base.html",
        live_template="networks.html",
        domains="membership",
        load=load,
    )


@router.get("/networks/{name}", dependencies=[Login])
async def network_page(request: Request, name: Annotated[str, Path(min_length=1, max_length=64)]) -> HTMLResponse:
    async def load() -> dict[str, Any]:
        source = source_of(request.app.state)
        unplaced, unplaced_problem = await _if_available(source.unplaced(name))
        return {"detail": await source.network(name), "unplaced": unplaced, "unplaced_problem": unplaced_problem}

    return await _page(
        request,
        title="Networks",
        heading=f"Network {name}",
        page_template="base.html",
        live_template="network.html",
        domains="membership",
        load=load,
    )


@router.get("/ports", dependencies=[Login])
async def ports_page(
    request: Request,
    host: Annotated[str, Query(max_length=253)] = "",
    service: Annotated[str, Query(max_length=64)] = "",
) -> HTMLResponse:
    async def load() -> dict[str, Any]:
        source = source_of(request.app.state)
        conflicts = await source.conflicts(host)
        # What `cpctl ports resolve --dry-run` would do, asked only when there is something to fix.
        plan, plan_problem = await _if_available(source.resolution_plan(host)) if conflicts else (None, "")
        return {
            "stats": await source.port_stats(host),
            "conflicts": conflicts,
            "plan": plan,
            "plan_problem": plan_problem,
            "assignments": await source.ports(host, "") if host else None,
            "history": await source.port_history(service) if service else None,
        }

    return await _page(
        request,
        title="Ports",
        page_template="ports_page.html",
        live_template="ports.html",
        domains="ports",
        load=load,
        controls={"host": host, "service": service},
    )


MODELS_SHOWN = 50


@router.get("/models", dependencies=[Login])
async def models_page(request: Request, q: Annotated[str, Query(max_length=256)] = "") -> HTMLResponse:
    async def load() -> dict[str, Any]:
        source = source_of(request.app.state)
        if q.strip():
            return {"result": await source.search_models(q, MODELS_SHOWN), "listing": None}
        return {"result": None, "listing": await source.models("", MODELS_SHOWN)}

    return await _page(
        request,
        title="Models",
        page_template="models_page.html",
        live_template="models.html",
        domains="models",
        load=load,
        controls={"q": q},
    )


@router.get("/models/{name}", dependencies=[Login])
async def model_page(request: Request, name: Annotated[str, Path(min_length=1, max_length=129)]) -> HTMLResponse:
    async def load() -> dict[str, Any]:
        return {"detail": await source_of(request.app.state).model(name)}

    return await _page(
        request,
        title="Models",
        heading=f"Model {name}",
        page_template="base.html",
        live_template="model.html",
        domains="models",
        load=load,
    )


#: Rounds listed in the table under the chart (the chart draws all that were read).
ROUNDS_LISTED = 20


@router.get("/training", dependencies=[Login])
async def training_page(request: Request, group: Annotated[str, Query(max_length=64)] = "") -> HTMLResponse:
    controls: dict[str, Any] = {"groups": (), "group": group}

    async def load() -> dict[str, Any]:
        source = source_of(request.app.state)
        groups = await source.groups()
        controls["groups"] = groups
        chosen = group or (groups[0].group if groups else "")
        controls["group"] = chosen
        config = next((g for g in groups if g.group == chosen), None)
        matrix = await source.bandwidth()
        rounds = await source.latest_rounds(chosen) if chosen else ()
        latest_pairs = next((r for r in reversed(rounds) if r.pairs), None)
        return {
            "group": chosen,
            "config": config,
            "rounds": rounds,
            "recent": tuple(reversed(rounds[-ROUNDS_LISTED:])),
            "chart": views.round_chart(rounds),
            "graph": views.matching_graph(latest_pairs, matrix) if latest_pairs else None,
            "matrix": matrix,
            "heat": views.heat_map(matrix),
        }

    return await _page(
        request,
        title="Training",
        page_template="training_page.html",
        live_template="training.html",
        domains="gossip",
        load=load,
        controls=controls,
    )


# --------------------------------------------------------------------------------------- live


@router.get("/events", dependencies=[Login])
async def events(request: Request) -> StreamingResponse:
    """Server-sent events: ``change`` with ``{"domain": ..., "revision": ...}`` whenever the watch
    (or the status check, domain ``status``) saw a change, coalesced per domain."""
    hub = hub_of(request)

    async def stream() -> AsyncIterator[str]:
        subscriber = hub.subscribe()
        try:
            yield f"retry: 2000\n: {hub.subscribers} console(s) on this gateway\n\n"
            while True:
                marks = await subscriber.changes(KEEPALIVE_S)
                if not marks:
                    yield ": keep-alive\n\n"
                for domain, revision in sorted(marks.items()):
                    yield f"event: change\ndata: {json.dumps({'domain': domain, 'revision': revision})}\n\n"
        finally:
            hub.unsubscribe(subscriber)

    headers = {**SECURITY_HEADERS, "X-Accel-Buffering": "no"}
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)


# --------------------------------------------------------------------------------------- login


@router.get("/login")
async def login_form(request: Request, next: Annotated[str, Query(max_length=2048)] = "/ui/") -> Response:
    if not _gateway(request).settings.token:
        return RedirectResponse(auth.safe_next(next), status_code=303)
    page = _env.get_template("login.html").render(next=auth.safe_next(next), failed=False, asset_version=ASSET_VERSION)
    return _html(page)


@router.post("/login")
async def login(request: Request) -> Response:
    """A form post (``token``, ``next``), parsed here: the gateway's body limit has already bounded it."""
    token = _gateway(request).settings.token
    fields = parse_qs((await request.body()).decode("utf-8", "replace"), max_num_fields=4)
    presented = (fields.get("token") or [""])[0]
    target = auth.safe_next((fields.get("next") or ["/ui/"])[0])
    if not token:
        return RedirectResponse(target, status_code=303)
    if not auth.valid_token(token, presented):
        log.info("console_login_refused", client=request.client.host if request.client else "")
        page = _env.get_template("login.html").render(next=target, failed=True, asset_version=ASSET_VERSION)
        return _html(page, 401)
    response = RedirectResponse(target, status_code=303, headers=SECURITY_HEADERS)
    response.set_cookie(
        auth.COOKIE,
        auth.session_cookie(token),
        max_age=auth.SESSION_S,
        path="/ui",
        secure=request.url.scheme == "https",
        httponly=True,
        samesite="strict",
    )
    return response


@router.post("/logout")
async def logout() -> Response:
    response = RedirectResponse("/ui/login", status_code=303, headers=SECURITY_HEADERS)
    response.delete_cookie(auth.COOKIE, path="/ui", httponly=True, samesite="strict")
    return response


# --------------------------------------------------------------------------------------- static


@router.get("/static/{name}")
async def static(name: str) -> Response:
    """The two vendored files; no data in them, so no login (the login page uses the stylesheet).
    Pages name them with a content hash, so they may be cached for good."""
    if name not in _STATIC:
        raise errors.NotFound(f"no static file {name!r}")
    return Response(
        _STATIC[name],
        media_type=_STATIC_TYPES[name],
        headers={**SECURITY_HEADERS, "Cache-Control": "public, max-age=31536000, immutable"},
    )
