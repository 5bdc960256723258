"""The metrics port's probes (controlplane/server/probes.py) on a real HTTP listener, no server."""

from __future__ import annotations

import httpx

from controlplane.server import probes


def test_probes_answer_from_the_health_beat_and_everything_else_is_metrics() -> None:
    readiness = probes.Readiness()
    listener = probes.serve_metrics_and_probes("127.0.0.1", 0, readiness)
    try:
        _check(f"http://127.0.0.1:{listener.server_address[1]}", readiness)
    finally:
        listener.shutdown()
        listener.server_close()


def _check(base: str, readiness: probes.Readiness) -> None:
    assert (httpx.get(f"{base}/readyz").status_code, httpx.get(f"{base}/readyz").text) == (503, "not ready: starting\n")
    assert httpx.get(f"{base}/livez").status_code == 200
    readiness.set(True)
    assert (httpx.get(f"{base}/readyz").status_code, httpx.get(f"{base}/readyz").text) == (200, "ready\n")
    readiness.set(False, "cannot reach a majority of the voters")
    assert httpx.get(f"{base}/readyz").text == "not ready: cannot reach a majority of the voters\n"
    # The beat stopped (a stalled event loop): liveness fails, with how long.
    readiness.beat_at -= probes.LIVENESS_STALL_S + 1
    stalled = httpx.get(f"{base}/livez")
    assert stalled.status_code == 503 and stalled.text.startswith("event loop stalled for ")
    readiness.set(True)
    assert httpx.get(f"{base}/livez").status_code == 200
    # Any other path is Prometheus's exposition, as before.
    for path in ("/metrics", "/", "/metrics?name[]=python_info"):
        answer = httpx.get(f"{base}{path}")
        assert answer.status_code == 200 and "python_info" in answer.text, path
