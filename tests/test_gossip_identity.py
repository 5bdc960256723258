"""TLS gossip: a dialer is the node its certificate names. Real grpc.aio exchange servers on loopback
with certificates from a dev CA: matching identities exchange; a certificate for one agent claiming
to be another is refused and counted; a certificate from another CA cannot connect at all."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest

from controlplane import tls
from gossip.exchange import REFUSED_IDENTITY, ExchangeServer, IdentityMismatch, PeerLost, exchange, tls_credentials

pytestmark = pytest.mark.timeout(60)

GROUP = "tls-net"
SEED = 7
DEADLINE_S = 10.0


def credentials(pki: Path, node_id: str) -> tuple[grpc.ServerCredentials, grpc.ChannelCredentials]:
    """Mutual TLS for an agent ``node_id``: what its exchange server presents and requires, and what
    it presents when it dials."""
    identity = tls.Identity("agent", node_id)
    if not tls.TlsFiles.from_directory(pki, identity).cert.exists():
        tls.issue(pki, identity, sans=["127.0.0.1", "localhost"])
    files = tls.TlsFiles.from_directory(pki, identity)
    return tls_credentials(files.ca.read_bytes(), files.cert.read_bytes(), files.key.read_bytes())


def tls_server(pki: Path, node_id: str) -> ExchangeServer:
    server_creds, channel_creds = credentials(pki, node_id)
    return ExchangeServer(node_id, "127.0.0.1:0", server_credentials=server_creds, channel_credentials=channel_creds)


def model(value: float) -> dict[str, np.ndarray]:
    return {"w": np.full((8, 4), value, np.float32), "b": np.full((4,), value, np.float64)}


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    directory = tmp_path / "pki"
    tls.ensure_dev_pki(directory, [], [])
    return directory


async def test_peers_whose_certificates_name_them_exchange(pki: Path) -> None:
    async with tls_server(pki, "a") as a, tls_server(pki, "b") as b:
        offer = await b.offer(GROUP, 1, model(2.0), seed=SEED, peer="a", deadline_s=DEADLINE_S)
        ra = await exchange(a, "b", b.address, GROUP, 1, model(0.0), seed=SEED, deadline_s=DEADLINE_S)
        rb = await offer.result()
    assert np.array_equal(ra.params["w"], np.full((8, 4), 1.0, np.float32))
    assert np.array_equal(rb.params["b"], ra.params["b"])


async def test_a_certificate_for_one_agent_claiming_another_is_refused(pki: Path) -> None:
    before = REFUSED_IDENTITY._value.get()
    # Mallory holds a real certificate from the cluster CA, for "mallory", and claims to be "a".
    mallory_server, mallory_channel = credentials(pki, "mallory")
    async with (
        tls_server(pki, "b") as b,
        ExchangeServer(
            "a", "127.0.0.1:0", server_credentials=mallory_server, channel_credentials=mallory_channel
        ) as impostor,
    ):
        offer = await b.offer(GROUP, 1, model(2.0), seed=SEED, peer="a", deadline_s=DEADLINE_S)
        with pytest.raises(IdentityMismatch, match="claims to be 'a' but its certificate names 'mallory'"):
            await exchange(impostor, "b", b.address, GROUP, 1, model(9.0), seed=SEED, deadline_s=DEADLINE_S)
        assert b.offers == ((GROUP, 1),)  # still open for the real a
        offer.withdraw()
    assert REFUSED_IDENTITY._value.get() == before + 1


async def test_a_certificate_from_another_ca_cannot_connect(pki: Path, tmp_path: Path) -> None:
    other = tmp_path / "other-pki"
    tls.ensure_dev_pki(other, [], [])
    stranger_server, stranger_channel = credentials(other, "a")
    async with (
        tls_server(pki, "b") as b,
        ExchangeServer(
            "a", "127.0.0.1:0", server_credentials=stranger_server, channel_credentials=stranger_channel
        ) as stranger,
    ):
        offer = await b.offer(GROUP, 1, model(2.0), seed=SEED, peer="a", deadline_s=DEADLINE_S)
        with pytest.raises(PeerLost):
            await exchange(stranger, "b", b.address, GROUP, 1, model(9.0), seed=SEED, deadline_s=3.0)
        assert b.offers == ((GROUP, 1),)
        offer.withdraw()
