"""``tokenomy sidecar``: run the data plane."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
from pathlib import Path

from tokenomy_api import pod
from tokenomy_sidecar.app import Sidecar, SidecarSettings
from tokenomy_sidecar.credentials import SECRETS_DIR, Credentials
from tokenomy_sidecar.runtime import ConfigRejectedError
from tokenomy_sidecar.sources import FileSource
from tokenomy_sidecar.xds_client import XdsSource

MODELS_DIR = Path(pod.MODELS_DIR)

log = logging.getLogger("tokenomy.sidecar")


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def _default_node_id() -> str:
    namespace = os.environ.get(pod.ENV_POD_NAMESPACE, "default")
    name = os.environ.get(pod.ENV_POD_NAME) or socket.gethostname()
    return pod.node_id(namespace, name)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``sidecar``'s arguments."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--config",
        action="append",
        metavar="PATH",
        help="standalone: CostPolicy/ModelRoute/Secret YAML files or folders (repeatable); watched",
    )
    source.add_argument(
        "--xds",
        metavar="HOST:PORT",
        default=os.environ.get(pod.ENV_XDS_ADDRESS),
        help=f"in a cluster: the operator's xDS address (env {pod.ENV_XDS_ADDRESS})",
    )
    parser.add_argument(
        "--node-id",
        default=_default_node_id(),
        help="this sidecar's xDS node id (default: POD_NAMESPACE/POD_NAME from the environment)",
    )
    parser.add_argument("--policy", metavar="NS/NAME", help="the CostPolicy to serve, if several")
    parser.add_argument(
        "--usage",
        metavar="HOST:PORT",
        default=os.environ.get(pod.ENV_USAGE_ADDRESS),
        help="in a cluster: where usage reports go (the operator leader's Service; "
        "default: the --xds address)",
    )
    parser.add_argument(
        "--listen", type=_address, default=("127.0.0.1", pod.API_PORT), metavar="HOST:PORT"
    )
    parser.add_argument(
        "--metrics", type=_address, default=("0.0.0.0", pod.METRICS_PORT), metavar="HOST:PORT"
    )
    parser.add_argument(
        "--secrets-dir",
        type=Path,
        default=SECRETS_DIR,
        help=f"mounted Secrets, as DIR/SECRET/KEY (default {SECRETS_DIR})",
    )
    parser.add_argument(
        "--pod-region",
        default=os.environ.get(pod.ENV_POD_REGION),
        help=f"region of this pod, for nearest-region placement (env {pod.ENV_POD_REGION})",
    )
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=MODELS_DIR,
        help="trained routing models by name, as DIR/NAME[.npz] "
        f"(default: the --config folder, else {MODELS_DIR})",
    )
    parser.add_argument(
        "--batch-poll-seconds",
        type=float,
        default=30.0,
        help="how often a provider's batch is asked whether it is done (default 30)",
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )


def _pod_labels(text: str) -> dict[str, str]:
    """The JSON object injection puts in ``TOKENOMY_POD_LABELS``; anything else is ignored."""
    try:
        value = json.loads(text) if text else {}
    except json.JSONDecodeError:
        log.warning("%s is not JSON; spend is not attributed to pod labels", pod.ENV_POD_LABELS)
        return {}
    if not isinstance(value, dict):
        return {}
    return {str(k): str(v) for k, v in value.items()}


def _models_dir(args: argparse.Namespace) -> Path:
    if args.models_dir != MODELS_DIR or not args.config:
        return Path(args.models_dir)
    first = Path(args.config[0])
    return first if first.is_dir() else first.parent


async def serve(args: argparse.Namespace) -> int:
    """Load the config, serve until SIGTERM or SIGINT, then drain and stop."""
    settings = SidecarSettings(
        listen_host=args.listen[0],
        listen_port=args.listen[1],
        metrics_host=args.metrics[0],
        metrics_port=args.metrics[1],
        pod_region=args.pod_region or None,
        models_dir=_models_dir(args),
        # Standalone, this process is the policy's only replica: it keeps the budget;
        # injected, the budget is the operator's, shared through leases.
        enforce_local_budget=bool(args.config),
        usage_address=None if args.config else (args.usage or args.xds),
        node_id=args.node_id or "",
        pod_labels=_pod_labels(os.environ.get(pod.ENV_POD_LABELS, "")),
        batch_poll_seconds=args.batch_poll_seconds,
    )
    sidecar = Sidecar(settings)
    source: FileSource | XdsSource
    if args.config:
        source = FileSource(
            args.config, args.policy, sidecar.holder, sidecar.metrics, args.secrets_dir
        )
        try:
            config = source.load()
        except ConfigRejectedError as error:
            print(f"tokenomy sidecar: {error}", file=sys.stderr)
            return 2
        log.info("config %s of %s", config.version, config.policy.key)
        follow = source.watch
    else:
        # Serve at once: /readyz says 503 until the first config arrives.
        source = XdsSource(
            args.xds,
            args.node_id,
            sidecar.holder,
            sidecar.metrics,
            Credentials(directory=args.secrets_dir),
        )
        follow = source.run
    await sidecar.start()
    print(f"tokenomy sidecar: OpenAI API on {sidecar.api_url}/v1", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watcher = asyncio.create_task(follow())
    await stop.wait()
    log.info("shutting down: draining in-flight requests")
    watcher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watcher
    await sidecar.stop()
    return 0


def run(args: argparse.Namespace) -> int:
    """Run the sidecar; uvloop when installed (it roughly halves proxy CPU)."""
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        import uvloop  # noqa: PLC0415
    except ImportError:
        return asyncio.run(serve(args))
    return uvloop.run(serve(args))
