"""``tokenomy operator``: the control plane."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import logging
import os
import signal
import socket
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

import kopf
from kubernetes import client, config

from tokenomy_api.clock import SystemClock
from tokenomy_operator import collector
from tokenomy_operator.certs import generate, service_hosts
from tokenomy_operator.controller import Controller
from tokenomy_operator.departure import Departure
from tokenomy_operator.handlers import register
from tokenomy_operator.injection import InjectionSettings
from tokenomy_operator.kube import KubeStatusWriter
from tokenomy_operator.leadership import LeaseElector, label_own_pod
from tokenomy_operator.metrics import serve_metrics
from tokenomy_operator.spend.usage import LeaderUsage, UsageService, add_to_server
from tokenomy_operator.webhook import policy_reader, publish_ca, shared_certs
from tokenomy_operator.webhook import register as register_webhook
from tokenomy_operator.xds.server import AdsServer, serve
from tokenomy_operator.xds.snapshot import SnapshotCache

log = logging.getLogger("tokenomy.operator")


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``operator``'s arguments."""
    here = os.environ.get("POD_NAMESPACE", "tokenomy-system")
    parser.add_argument(
        "--namespace",
        action="append",
        default=[],
        help="watch only these namespaces (repeatable); all by default",
    )
    parser.add_argument(
        "--xds-listen", type=_address, default=("0.0.0.0", 15010), metavar="HOST:PORT"
    )
    parser.add_argument(
        "--webhook-listen", type=_address, default=("0.0.0.0", 9443), metavar="HOST:PORT"
    )
    parser.add_argument(
        "--webhook-service",
        default="tokenomy-operator",
        help="Service the API server calls the webhook through",
    )
    parser.add_argument(
        "--webhook-namespace", default=here, help="namespace of that Service (env POD_NAMESPACE)"
    )
    parser.add_argument(
        "--webhook-host",
        action="append",
        default=[],
        help="extra certificate names (e.g. 127.0.0.1 outside a cluster)",
    )
    parser.add_argument(
        "--webhook-configuration",
        default="tokenomy-sidecar-injector",
        help="MutatingWebhookConfiguration to put the CA into ('' to leave it alone)",
    )
    parser.add_argument(
        "--no-webhook", action="store_true", help="do not serve the injection webhook"
    )
    parser.add_argument(
        "--webhook-secret",
        default="",
        help="Secret (in --webhook-namespace) holding the webhook's CA and certificate, "
        "shared by every replica; '' makes one per process (a single replica only)",
    )
    parser.add_argument(
        "--metrics-listen",
        type=_address,
        default=("0.0.0.0", 8080),
        metavar="HOST:PORT",
        help="/metrics and /healthz",
    )
    parser.add_argument("--sidecar-image", default=InjectionSettings.image)
    parser.add_argument(
        "--xds-address",
        default=f"tokenomy-operator-leader.{here}.svc:15010",
        help="where injected sidecars reach xDS (the leader's Service: its status counts "
        "the acknowledgements of the streams it serves)",
    )
    parser.add_argument(
        "--native-sidecar",
        choices=["auto", "yes", "no"],
        default="auto",
        help="init container with restartPolicy: Always (auto: if the API server is 1.29+)",
    )
    parser.add_argument(
        "--leader-election",
        default="",
        metavar="LEASE",
        help="elect a leader among replicas with this Lease (in --webhook-namespace); "
        "the leader serves the sidecars, keeps the ledgers and writes status, every "
        "replica serves the webhook; a single replica leads alone if empty",
    )
    parser.add_argument(
        "--usage-address",
        default=f"tokenomy-operator-leader.{here}.svc:15010",
        help="where injected sidecars send usage (the leader's Service)",
    )
    parser.add_argument(
        "--shutdown-delay",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="after SIGTERM, hand the Lease back and answer /readyz 503 at once but keep "
        "serving the webhook this long, while the Service stops sending to this replica "
        "(a call in that window would be refused and the Pod admitted without a sidecar)",
    )
    parser.add_argument("--kubeconfig", help="outside a cluster: the kubeconfig to use")
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )


async def listening(address: tuple[str, int]) -> bool:
    """Whether a TCP connection to ``address`` (a wildcard host meaning this host) opens."""
    host, port = address
    target = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(target, port), 1.0)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


def _kube(kubeconfig: str | None) -> client.ApiClient:
    if kubeconfig:
        os.environ["KUBECONFIG"] = kubeconfig  # kopf logs in from the same place
        config.load_kube_config(config_file=kubeconfig)
    else:
        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
    return client.ApiClient()


async def _native_sidecars(api: client.ApiClient) -> bool:
    """Whether the API server knows native sidecars (Kubernetes 1.29 and later)."""
    info = await asyncio.to_thread(client.VersionApi(api).get_code)
    return native_sidecars_supported(info.major, info.minor)


def native_sidecars_supported(major: str, minor: str) -> bool:
    """``1.29`` and later; minors like ``29+`` (some providers) count too."""
    digits = "".join(ch for ch in minor if ch.isdigit())
    return (major == "1" and bool(digits) and int(digits) >= 29) or (
        major.isdigit() and int(major) > 1
    )


def peering_identity(environ: Mapping[str, str], hostname: str, pid: int) -> str:
    """This replica's name in kopf's peering objects, never from the passwd database.

    kopf's own guess (``detect_own_id``) asks ``getpass.getuser()``, which
    raises ``KeyError`` for a uid without a passwd entry: exactly a container
    running as 65532. In a Pod the name is the Pod's (``POD_ID``, which kopf
    documents, or ``POD_NAME`` from the Deployment); elsewhere
    ``user@host/pid``, the user falling back to the uid.
    """
    pod = environ.get("POD_ID") or environ.get("POD_NAME")
    if pod:
        return pod
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid{os.getuid()}"
    return f"{user}@{hostname}/{pid}"


async def _elect(
    args: argparse.Namespace, api: client.ApiClient, controller: Controller, identity: str
) -> asyncio.Task[None] | None:
    """Start the leader election (``--leader-election``), or lead alone without it."""
    if not args.leader_election:
        controller.lead(True)
        return None
    controller.lead(False)
    pod = os.environ.get("POD_NAME", "")

    async def changed(leading: bool) -> None:
        controller.lead(leading)
        if pod:
            await label_own_pod(api, args.webhook_namespace, pod, leading)

    if pod:  # a restarted container may still carry the label of a past term
        await label_own_pod(api, args.webhook_namespace, pod, False)
    elector = LeaseElector(api, args.webhook_namespace, args.leader_election, identity, changed)
    return asyncio.create_task(elector.run())


async def _run_kopf(
    args: argparse.Namespace, registry: kopf.OperatorRegistry, identity: str, departure: Departure
) -> None:
    """kopf.operator() in its two steps: spawning installs kopf's own SIGTERM handler,
    which stops at once; ours (Departure) replaces it before the tasks run."""
    existing = set(asyncio.all_tasks())
    tasks = await kopf.spawn_tasks(
        registry=registry,
        stop_flag=departure.stop,
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        # Every replica watches and serves; leadership is our own Lease
        # (leadership.py), so kopf's peering, which pauses all but one, is off.
        standalone=True,
        identity=identity,  # type: ignore[arg-type]
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, departure.signal)
    await kopf.run_tasks(tasks, ignored=existing)


def _readiness(
    args: argparse.Namespace,
    controller: Controller,
    departure: Departure,
    published: asyncio.Event,
) -> Callable[[], Awaitable[str]]:
    """Why this replica cannot serve yet ('' once it can), for /readyz."""
    webhook_up = asyncio.Event()

    async def not_ready() -> str:
        if departure.leaving.is_set():
            return "shutting down"
        if controller.latest is None:
            return "the watches have not been reconciled yet"
        if args.no_webhook:
            return ""
        if args.webhook_configuration and not published.is_set():
            return f"the webhook's CA is not yet in {args.webhook_configuration}"
        # kopf starts its webhook server on its own schedule: until it accepts,
        # an admission sent here fails open and the Pod starts without a sidecar.
        # Once it has, it listens until shutdown: no more probes (each one is a
        # handshake the server logs as cut short).
        if not webhook_up.is_set():
            if not await listening(args.webhook_listen):
                return "the webhook server does not accept connections yet"
            webhook_up.set()
        return ""

    return not_ready


async def serve_operator(args: argparse.Namespace) -> int:
    """Run the xDS server, the control loop and kopf until SIGTERM or SIGINT."""
    collector.tune()
    api = _kube(args.kubeconfig)
    cache = SnapshotCache()
    ads = AdsServer(cache)
    controller = Controller(cache, ads, KubeStatusWriter(api))
    # Reports wait until the controller has read each policy's status.spend.
    controller.new_usage = lambda: UsageService(controller.budget_of, SystemClock(), ready=False)
    usage = LeaderUsage(lambda: controller.usage)
    grpc_server, port = await serve(
        ads, f"{args.xds_listen[0]}:{args.xds_listen[1]}", lambda s: add_to_server(usage, s)
    )
    log.info("xDS (ADS) and usage reports on port %d", port)
    identity = peering_identity(os.environ, socket.gethostname(), os.getpid())
    elector_task = await _elect(args, api, controller, identity)
    loop_task = asyncio.create_task(controller.run())
    published = asyncio.Event()
    # Leaving hands the Lease back at once (the elector releases it when cancelled).
    departure = Departure(args.shutdown_delay, lambda: elector_task and elector_task.cancel())

    not_ready = _readiness(args, controller, departure, published)

    metrics_host, metrics_port = args.metrics_listen
    metrics_runner = await serve_metrics(controller.metrics, metrics_host, metrics_port, not_ready)

    webhook_server = None
    if not args.no_webhook:
        hosts = [*service_hosts(args.webhook_service, args.webhook_namespace), *args.webhook_host]
        certs = (
            await shared_certs(api, args.webhook_namespace, args.webhook_secret, hosts)
            if args.webhook_secret
            else generate(hosts)
        )
        ca_path, cert_path, key_path = certs.write(
            Path(tempfile.mkdtemp(prefix="tokenomy-webhook-"))
        )
        if args.webhook_configuration:
            await publish_ca(api, args.webhook_configuration, certs.ca)
            published.set()
        webhook_server = kopf.WebhookServer(
            addr=args.webhook_listen[0],
            port=args.webhook_listen[1],
            certfile=str(cert_path),
            pkeyfile=str(key_path),
            cafile=str(ca_path),
        )
    registry = register(controller, webhook_server)
    injection = InjectionSettings(
        image=args.sidecar_image,
        xds_address=args.xds_address,
        usage_address=args.usage_address,
        native_sidecar=await _native_sidecars(api)
        if args.native_sidecar == "auto"
        else args.native_sidecar == "yes",
    )
    if not args.no_webhook:
        register_webhook(registry, controller, injection, policy_reader(api))

    try:
        await _run_kopf(args, registry, identity, departure)
    finally:
        if elector_task is not None:  # the Lease is back (or is now) before the rest stops
            elector_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await elector_task
        loop_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop_task
        # Streams never end on their own: a short grace, then they are cut and
        # sidecars reconnect elsewhere. grpc.aio may surface the cut as a
        # CancelledError from its own loop; that is the shutdown, not a failure.
        with contextlib.suppress(asyncio.CancelledError):
            await grpc_server.stop(1)
        await metrics_runner.cleanup()
    return 0


def run(args: argparse.Namespace) -> int:
    """Run the operator."""
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # kopf reports every handler run at INFO; for event handlers that is noise.
    logging.getLogger("kopf.objects").setLevel(
        max(logging.WARNING, logging.getLevelName(args.log_level))
    )
    return asyncio.run(serve_operator(args))
