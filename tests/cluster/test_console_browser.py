"""The console in a real browser (headless Chromium from Debian, driven by Playwright): log in, every
page loads without a console error (a CSP violation is one), the leader shown is the leader, an agent
registering appears on Fleet with no reload, search as you type finds a new model, and a kill -9 of
the leader changes the Cluster page with no reload. On a phone's screen no page (the login page and
a network's and a model's page included) is wider than the screen, every form control has a label,
and the keyboard reaches a control first. Screenshots of every page are saved, and the browser's own
timings of every page (the first render included) are printed, with 1,000 nodes too.

Part of ``make test``, which installs Debian's chromium with apt-get where it is missing (Playwright
is in the dev extra); ``make test-browser`` runs it alone. Without a chromium it is skipped, saying
so. ``CONSOLE_SCREENSHOTS=DIR`` keeps the screenshots there (``docs/console/`` holds the ones
``docs/console.md`` shows).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from controlplane.client import Client
from controlplane.dev import LocalCluster

from .conftest import wait_until
from .test_gateway import TOKEN, running_gateway

pytestmark = [pytest.mark.cluster, pytest.mark.browser, pytest.mark.timeout(240)]

CHROMIUM = os.environ.get("CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")
PAGES = {
    "cluster": "/ui/",
    "fleet": "/ui/fleet",
    "networks": "/ui/networks",
    "ports": "/ui/ports?host=br-host",
    "models": "/ui/models",
    "training": "/ui/training?group=br-g",
}
#: Generous: the cluster tests share two busy cores. The time taken is printed, not asserted.
LIVE_TIMEOUT_MS = 20_000
FLEET = 1000


@pytest.fixture
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[browser]' (make test-browser)")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or make test-browser)")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


def logged_in(
    browser: Any, url: str, viewport: dict[str, int] | None = None, color_scheme: str = "light"
) -> tuple[Any, Any, list[str]]:
    """A fresh browser context (a laptop's screen unless ``viewport``) with the console's token given
    at its login page, on Fleet; and the errors the page reports from then on (a CSP violation is one)."""
    context = browser.new_context(viewport=viewport or {"width": 1280, "height": 800}, color_scheme=color_scheme)
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"{m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"pageerror: {e}"))
    page.goto(url + "/ui/fleet")
    assert page.url.startswith(url + "/ui/login")  # no data before the token
    page.fill("#token", TOKEN)
    page.click("button[type=submit]")
    page.wait_for_url(url + "/ui/fleet")
    return context, page, problems


#: What the browser measured of the page it shows, in ms from the start of its navigation: the
#: response's last byte, the first contentful paint (the first render), DOM ready and load.
NAVIGATION_TIMING = """() => { const n = performance.getEntriesByType('navigation')[0];
    const paint = performance.getEntriesByName('first-contentful-paint')[0];
    return {response: n.responseEnd, first_render: paint ? paint.startTime : NaN,
            ready: n.domContentLoadedEventEnd, load: n.loadEventEnd}; }"""


def visit_and_time(page: Any, url: str, label: str) -> None:
    """Open ``url``, wait for its load event and print the browser's own timings of it (not
    asserted: the cluster tests share two busy cores; docs/console.md quotes quiet runs)."""
    page.goto(url)
    page.wait_for_load_state("load")
    # Chromium records the first paint a frame after it happens, often after the load event.
    page.wait_for_function("() => performance.getEntriesByName('first-contentful-paint').length > 0")
    timing = page.evaluate(NAVIGATION_TIMING)
    print(
        f"{label}: response {timing['response']:.0f} ms, first render {timing['first_render']:.0f} ms, "
        f"DOM ready {timing['ready']:.0f} ms, load {timing['load']:.0f} ms"
    )


def test_console_in_a_browser(cluster: LocalCluster, tmp_path: Path, browser: Any) -> None:
    shots = Path(os.environ.get("CONSOLE_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    leader_id = cluster.wait_for_leader()
    with Client(cluster.client_addresses, credentials=cluster.credentials, timeout=15) as admin:
        admin.membership.set_flag("multi_network", True)  # the shared cluster holds other tests' networks
        admin.membership.create_network("br-net", "br-model", 8, priority=1)
        admin.ports.allocate("br-host", "br-svc", "http")
        for i in range(4):
            admin.membership.register_node(f"br-a{i}", labels={"zone": "br"}, ttl_s=120)
        peers = [f"br-a{i}" for i in range(4)]
        for i, peer in enumerate(peers):
            admin.gossip.report_bandwidth(peer, {p: 1e6 * (1 + i + j) for j, p in enumerate(peers) if p != peer})
        admin.models.register("BrowserLlama-8B", "ab" * 32, 8192, "safetensors", family="llama")
        tensors = [("w", "float32", (8,))]
        admin.gossip.configure_group("br-g", tensors)
        deadline = int(time.time() * 1000) + 60_000
        for number, pairs in enumerate(
            ([("br-a0", "br-a1"), ("br-a2", "br-a3")], [("br-a0", "br-a2"), ("br-a1", "br-a3")])
        ):
            admin.gossip.start_round(
                "br-g", number + 1, peers, pairs, seed=number, deadline_unix_ms=deadline, tensors=tensors
            )
            for peer in peers:
                admin.gossip.report_round(
                    "br-g", number + 1, peer, bytes=8192, mix_delta_sq=1.0 / (number + 1),
                    loss=1.2 - 0.3 * number, accuracy=0.6 + 0.2 * number,
                )  # fmt: skip

    with running_gateway(cluster, tmp_path) as gateway:
        before_login = browser.new_context(viewport={"width": 1280, "height": 800})
        before_login.new_page().goto(gateway.url + "/ui/login")
        before_login.pages[0].screenshot(path=str(shots / "login.png"))
        before_login.close()
        context, page, problems = logged_in(browser, gateway.url)

        details = {"network": "/ui/networks/br-net", "model": "/ui/models/BrowserLlama-8B"}
        for name, path in {**PAGES, **details}.items():
            visit_and_time(page, gateway.url + path, name)
            page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
        assert problems == []

        # The leader shown is the leader: the one the cluster names now (a loaded machine may have
        # held an election since the setup above read it), and the page follows it live.
        page.goto(gateway.url + "/ui/")
        page.wait_for_selector("#live-state:has-text('live')")
        leader_id = wait_until(
            lambda: (
                (shown := page.get_attribute("tr[data-role=leader]", "data-member")) == cluster.wait_for_leader()
                and shown
            ),
            30,
            "the page to show the cluster's leader",
        )

        # A kill -9 of the leader: the page changes by itself (SSE status event, fragment refresh).
        killed_at = time.monotonic()
        cluster.kill(leader_id)
        page.wait_for_selector(f"tr[data-member='{leader_id}'] >> text=unreachable", timeout=LIVE_TIMEOUT_MS)
        print(
            f"cluster page showed {leader_id} unreachable {1000 * (time.monotonic() - killed_at):.0f} ms after the kill"
        )
        page.wait_for_function(
            "id => { const row = document.querySelector('tr[data-role=leader]');"
            " return row !== null && row.dataset.member !== id; }",
            arg=leader_id,
            timeout=LIVE_TIMEOUT_MS,
        )
        print(f"cluster page showed the new leader {1000 * (time.monotonic() - killed_at):.0f} ms after the kill")
        cluster.restart(leader_id)

        # An agent registering appears on Fleet with no reload.
        page.goto(gateway.url + "/ui/fleet?q=br-")
        page.wait_for_selector("#live-state:has-text('live')")
        with Client(cluster.client_addresses, credentials=cluster.credentials, timeout=15) as admin:
            admin.membership.register_node("br-live", labels={"zone": "br"}, ttl_s=120)
        page.wait_for_selector("tr[data-node='br-live']", timeout=LIVE_TIMEOUT_MS)

        # A model registered appears in search as you type.
        page.goto(gateway.url + "/ui/models")
        with Client(cluster.client_addresses, credentials=cluster.credentials, timeout=15) as admin:
            admin.models.register("BrowserMistral-7B", "ef" * 32, 4096, "safetensors", family="mistral")
            # The search index follows the log a moment later: type once it has the model.
            wait_until(lambda: admin.models.search("browsermis").hits, 15, "the model in the search index")
        page.type("#q", "browsermis", delay=30)
        page.wait_for_selector("tr[data-model='BrowserMistral-7B']", timeout=LIVE_TIMEOUT_MS)
        assert "q=browsermis" in page.url  # the URL follows the search box

        # The Training chart grows as a round completes, with no reload.
        page.goto(gateway.url + "/ui/training?group=br-g")
        page.wait_for_selector("#live-state:has-text('live')")
        assert page.text_content("#chart-title") == "Training rounds 1 to 2"
        with Client(cluster.client_addresses, credentials=cluster.credentials, timeout=15) as admin:
            pairs = [("br-a0", "br-a3"), ("br-a1", "br-a2")]
            admin.gossip.start_round("br-g", 3, peers, pairs, seed=3, deadline_unix_ms=deadline, tensors=tensors)
            for peer in peers:
                admin.gossip.report_round("br-g", 3, peer, bytes=8192, mix_delta_sq=0.2, loss=0.5, accuracy=0.95)
        page.wait_for_function(
            "() => document.querySelector('#chart-title')?.textContent === 'Training rounds 1 to 3'",
            timeout=LIVE_TIMEOUT_MS,
        )
        assert problems == []
        context.close()


#: A phone's screen in CSS pixels (an iPhone 12-15's).
PHONE = {"width": 390, "height": 844}

#: Form controls no label names: a screen reader would read nothing for them.
UNLABELLED_CONTROLS = """() => [...document.querySelectorAll('input, select, textarea')]
    .filter(e => e.type !== 'hidden')
    .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.getAttribute('aria-labelledby'))
    .map(e => e.outerHTML.slice(0, 120))"""

#: Text below WCAG AA's contrast for body text (4.5:1) against the background it is drawn on.
LOW_CONTRAST = """() => {
  const rgb = c => { const m = c.match(/rgba?\\(([^)]+)\\)/); if (!m) return null;
    const p = m[1].split(',').map(Number); return {r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1}; };
  const lum = ({r, g, b}) => {
    const f = v => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b); };
  const under = e => { for (let n = e; n; n = n.parentElement) { const c = rgb(getComputedStyle(n).backgroundColor);
    if (c && c.a > 0) return c; } return {r: 255, g: 255, b: 255, a: 1}; };
  const low = [];
  for (const e of document.body.querySelectorAll('*')) {
    if (![...e.childNodes].some(n => n.nodeType === 3 && n.textContent.trim())) continue;
    const style = getComputedStyle(e), box = e.getBoundingClientRect();
    if (style.visibility === 'hidden' || box.width === 0 || box.right < 0 || e.closest('svg')) continue;
    const [hi, lo] = [lum(rgb(style.color)), lum(under(e))].sort((x, y) => y - x);
    const ratio = (hi + 0.05) / (lo + 0.05);
    if (ratio < 4.5) low.push(`${e.tagName}.${e.className} ${ratio.toFixed(2)}: ${e.textContent.trim().slice(0, 30)}`);
  }
  return low.slice(0, 10);
}"""


def fits_a_phone(page: Any, name: str) -> None:
    """The page shown is no wider than a phone's screen, labels every form control and has
    WCAG AA contrast in the scheme its context was made with."""
    wider = page.evaluate("() => document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert wider <= 1, f"{name} is {wider} px wider than a phone's screen"
    assert page.evaluate(UNLABELLED_CONTROLS) == [], name
    assert page.evaluate(LOW_CONTRAST) == [], name


def test_every_page_fits_a_phone_labels_its_controls_and_takes_the_keyboard(
    cluster: LocalCluster, tmp_path: Path, browser: Any
) -> None:
    """On a phone's screen no page is wider than the screen (wide tables scroll inside their own
    box), every form control has a label, the keyboard reaches a control first (the login page's
    token field, every other page's skip link), and text has WCAG AA contrast (4.5:1) in the light
    and the dark scheme: the login page (with its refusal shown), the six main pages, and one
    network's and one model's page, made by this test."""
    shots = Path(os.environ.get("CONSOLE_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    with Client(cluster.client_addresses, credentials=cluster.credentials, timeout=15) as admin:
        admin.membership.set_flag("multi_network", True)
        admin.membership.create_network("phone-net", "phone-model", 4, priority=1)
        admin.models.register("PhoneModel-1B", "cd" * 32, 1024, "safetensors", family="phone")
    pages = {
        **{name: path.partition("?")[0] for name, path in PAGES.items()},  # what this test can count on
        "network": "/ui/networks/phone-net",
        "model": "/ui/models/PhoneModel-1B",
    }
    with running_gateway(cluster, tmp_path) as gateway:
        for scheme in ("light", "dark"):
            context = browser.new_context(viewport=PHONE, color_scheme=scheme)
            page = context.new_page()
            page.goto(gateway.url + "/ui/login")
            assert page.evaluate("() => document.activeElement.id") == "token"  # typing starts there
            fits_a_phone(page, f"login, {scheme}")
            page.fill("#token", "not-the-token")
            page.click("button[type=submit]")
            page.wait_for_selector("p.error[role=alert]")
            fits_a_phone(page, f"login refused, {scheme}")
            if scheme == "light":
                page.screenshot(path=str(shots / "phone-login.png"), full_page=True)
            context.close()

        context, page, problems = logged_in(browser, gateway.url, viewport=PHONE)
        for name, path in pages.items():
            page.goto(gateway.url + path)
            page.wait_for_load_state("load")
            fits_a_phone(page, name)
            page.keyboard.press("Tab")  # the first stop: the skip link, shown on the screen once focused
            skip = page.evaluate(
                "() => { const e = document.activeElement, box = e.getBoundingClientRect();"
                " return e.classList.contains('skip') && box.left >= 0 && box.right <= innerWidth; }"
            )
            assert skip, f"{name}: the first Tab does not show the skip link"
            page.screenshot(path=str(shots / f"phone-{name}.png"), full_page=True)
        assert problems == []
        context.close()
        context, page, problems = logged_in(browser, gateway.url, viewport=PHONE, color_scheme="dark")
        for name, path in pages.items():
            page.goto(gateway.url + path)
            page.wait_for_load_state("load")
            fits_a_phone(page, f"{name}, dark")
        assert problems == []
        context.close()


def test_a_fleet_of_1000_nodes_renders_and_stays_interactive(
    make_cluster: Callable[..., LocalCluster], tmp_path: Path, browser: Any
) -> None:
    """The browser's own clock (Navigation Timing and the first contentful paint) on every page of a
    cluster with 1,000 nodes, printed: the figures docs/console.md quotes. The search box still
    filters 1,000 nodes."""
    cluster = make_cluster(servers=3)
    with (
        Client(cluster.client_addresses, credentials=cluster.credentials, timeout=30) as admin,
        ThreadPoolExecutor(max_workers=8) as pool,
    ):

        def register(index: int) -> None:
            admin.membership.register_node(f"fleet-{index:04d}", labels={"rack": f"r{index % 20}"}, ttl_s=600)

        list(pool.map(register, range(FLEET)))
    with running_gateway(cluster, tmp_path) as gateway:
        context, page, problems = logged_in(browser, gateway.url)
        for name, path in PAGES.items():  # every page of a cluster with 1,000 nodes, the first visit
            visit_and_time(page, gateway.url + path.partition("?")[0], f"{name}, {FLEET} nodes")
        for attempt in range(3):  # Fleet again: what an operator sees on later visits
            visit_and_time(page, gateway.url + "/ui/fleet", f"fleet of {FLEET}, visit {attempt + 2}")
        assert f"· {FLEET} joining ·" in page.text_content("p.meta")  # the servers are nodes too
        assert page.locator("tr[data-node]").count() == 100  # a page of them
        started = time.monotonic()
        page.type("#q", "fleet-0777", delay=20)
        page.wait_for_function("() => document.querySelectorAll('tr[data-node]').length === 1", timeout=LIVE_TIMEOUT_MS)
        print(f"typed a node's id: only its row {1000 * (time.monotonic() - started):.0f} ms after the first key")
        assert page.get_attribute("tr[data-node]", "data-node") == "fleet-0777"
        shots = Path(os.environ.get("CONSOLE_SCREENSHOTS") or tmp_path / "screenshots")
        shots.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shots / "fleet-1000.png"))
        assert problems == []
        context.close()
