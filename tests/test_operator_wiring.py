"""The operator's edges that need no cluster: webhook TLS, handler registration, the CLI."""

from __future__ import annotations

import asyncio
import datetime
import gc
import getpass
import ssl
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from kubernetes import client
from kubernetes.config.incluster_config import InClusterConfigLoader

from tokenomy_operator import collector
from tokenomy_operator.certs import WebhookCerts, generate, service_hosts, usable
from tokenomy_operator.cli import listening, native_sidecars_supported, peering_identity
from tokenomy_operator.controller import Controller
from tokenomy_operator.handlers import TOKEN_RECHECK, connection_info, register
from tokenomy_operator.injection import InjectionSettings
from tokenomy_operator.webhook import HANDLER_ID
from tokenomy_operator.webhook import register as register_webhook
from tokenomy_operator.xds.server import AdsServer
from tokenomy_operator.xds.snapshot import SnapshotCache


def test_certificate_names_and_chain() -> None:
    hosts = [*service_hosts("tokenomy-operator", "tokenomy-system"), "127.0.0.1"]
    certs = generate(hosts)
    cert = x509.load_pem_x509_certificate(certs.cert)
    ca = x509.load_pem_x509_certificate(certs.ca)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "tokenomy-operator.tokenomy-system.svc" in sans.get_values_for_type(x509.DNSName)
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert cert.issuer == ca.subject
    cert.verify_directly_issued_by(ca)


async def test_a_client_trusting_the_ca_completes_a_tls_handshake(tmp_path: Path) -> None:
    certs = generate(["tokenomy-operator.tokenomy-system.svc", "127.0.0.1"])
    ca, cert, key = certs.write(tmp_path)
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    server_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ssl.load_cert_chain(cert, key)
    app = web.Application()

    async def ok(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app.router.add_get("/", ok)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ssl)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        trusting = ssl.create_default_context(cafile=str(ca))
        async with aiohttp.ClientSession() as session:
            async with session.get(f"https://127.0.0.1:{port}/", ssl=trusting) as response:
                assert await response.text() == "ok"
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await session.get(f"https://127.0.0.1:{port}/", ssl=ssl.create_default_context())
    finally:
        await runner.cleanup()


def test_handlers_watch_what_the_operator_needs() -> None:
    controller = Controller(SnapshotCache(), AdsServer(SnapshotCache()), writer=None)  # type: ignore[arg-type]
    registry = register(controller)
    register_webhook(registry, controller, InjectionSettings())
    watched = {h.selector.any_name for h in registry._watching.get_all_handlers()}
    assert watched == {"costpolicies", "modelroutes", "pods", "services", "endpointslices", "nodes"}
    [mutator] = registry._webhooks.get_all_handlers()
    assert mutator.id == HANDLER_ID
    assert set(mutator.operations) == {"CREATE"}
    assert mutator.ignore_failures is True


@pytest.mark.parametrize(
    ("major", "minor", "native"),
    [
        ("1", "28", False),
        ("1", "29", True),
        ("1", "35", True),
        ("1", "30+", True),
        ("1", "", False),
        ("2", "0", True),
    ],
)
def test_native_sidecars_from_the_server_version(major: str, minor: str, native: bool) -> None:
    assert native_sidecars_supported(major, minor) is native


def test_in_cluster_login_uses_the_service_account_token_and_follows_its_rotation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The in-cluster loader keeps the token as BearerToken behind a refresh hook."""
    token, ca = tmp_path / "token", tmp_path / "ca.crt"
    token.write_text("first-token")
    ca.write_text(generate(["x"]).ca.decode())
    config = client.Configuration()
    loader = InClusterConfigLoader(
        str(token),
        str(ca),
        environ={"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"},
    )
    loader.load_and_set(config)
    now = datetime.datetime(2026, 12, 1, tzinfo=datetime.UTC)
    info = connection_info(config, now)
    assert (info.server, info.token, info.ca_path) == (
        "https://10.0.0.1:443",
        "first-token",
        str(ca),
    )
    assert (info.scheme or "").lower() == "bearer"
    assert info.expiration == now + TOKEN_RECHECK  # kopf logs in again, and re-reads
    token.write_text("rotated-token")  # the kubelet rotates the projected token
    loader.token_expires_at = datetime.datetime.now() - datetime.timedelta(seconds=1)
    assert connection_info(config, now).token == "rotated-token"


def test_kubeconfig_token_login_does_not_expire() -> None:
    config = client.Configuration()
    config.host = "https://127.0.0.1:6443"
    config.api_key = {"authorization": "Bearer static"}
    info = connection_info(config, datetime.datetime(2026, 12, 1, tzinfo=datetime.UTC))
    assert (info.scheme, info.token, info.expiration) == ("Bearer", "static", None)


def test_peering_identity_needs_no_passwd_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    """uid 65532 in the image has no passwd entry: getpass.getuser() raises KeyError."""

    def no_user() -> str:
        raise KeyError("getpwuid(): uid not found: 65532")

    monkeypatch.setattr(getpass, "getuser", no_user)
    monkeypatch.delenv("USER", raising=False)
    assert peering_identity({"POD_NAME": "tokenomy-operator-7d9-abc"}, "h", 1) == (
        "tokenomy-operator-7d9-abc"
    )
    assert peering_identity({"POD_ID": "a", "POD_NAME": "b"}, "h", 1) == "a"
    assert peering_identity({}, "host", 42).endswith("@host/42")


def test_stored_webhook_certificates_are_reused_only_while_they_fit() -> None:
    hosts = service_hosts("tokenomy-operator", "tokenomy-system")
    certs = generate(hosts)
    now = datetime.datetime.now(datetime.UTC)
    assert usable(certs, hosts, now)
    assert not usable(certs, [*hosts, "other.example"], now)  # a name it does not carry
    assert not usable(certs, hosts, now + datetime.timedelta(days=340))  # under 30 days left
    assert not usable(WebhookCerts(b"x", b"not a certificate", b"k"), hosts, now)


async def test_readiness_waits_for_a_listening_webhook_server() -> None:
    """A replica is ready only once an admission sent to it would be answered."""
    server = await asyncio.start_server(lambda _r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    assert await listening(("0.0.0.0", port))  # the wildcard means this host
    assert await listening(("127.0.0.1", port))
    server.close()
    await server.wait_closed()
    assert not await listening(("127.0.0.1", port))


def test_the_collector_leaves_a_rollouts_live_objects_alone() -> None:
    collections: list[int] = []

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collections.append(info["generation"])

    gc.collect()
    previous = collector.tune()
    gc.callbacks.append(count)
    try:
        assert gc.get_freeze_count() > 0  # what existed at start is out of every collection
        in_flight = [[i] for i in range(20_000)]  # a future per stream, alive until its ACK
        assert collections == []  # the default threshold (700) would have collected ~28 times
        del in_flight
    finally:
        gc.callbacks.remove(count)
        gc.unfreeze()
        gc.set_threshold(*previous)
