"""A real etcd and kube-apiserver on loopback, started the way envtest starts them."""

from __future__ import annotations

import base64
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import yaml

from pki import Authority, service_account_keys

HERE = Path(__file__).resolve().parent
SERVICE_IP = "10.0.0.1"
"""The ``kubernetes`` Service's ClusterIP: the first of --service-cluster-ip-range."""
SERVICE_SUFFIXES = ("svc", "svc.cluster.local")


T = TypeVar("T")


def wait(
    predicate: Callable[[], T],
    timeout: float = 30.0,
    what: str = "condition",
    interval: float = 0.2,
) -> T:
    """Poll ``predicate`` until it returns something true, and return that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def build(*what: str) -> Path:
    """The folder with the binaries, built once per machine by e2e/build.sh (``node``: all)."""
    out = subprocess.run(
        ["bash", str(HERE / "build.sh"), *what], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"e2e/build.sh failed:\n{out.stderr[-4000:]}")
    return Path(out.stdout.strip().splitlines()[-1])


@dataclass
class ControlPlane:
    """etcd + kube-apiserver; ``kubeconfig(user, groups)`` gives credentials for anyone."""

    folder: Path
    address: str = "127.0.0.1"
    """Where the API server listens and advertises itself; a node's IP for the node tier."""
    for_nodes: bool = False
    """Serve kubelets and Pods: ServiceAccount tokens, the Node authorizer, the
    ``kubernetes`` Service's names in the certificate."""
    url: str = ""
    client_ca: Authority = field(default_factory=lambda: Authority.create("tokenomy-e2e-client-ca"))
    server_ca: Authority = field(default_factory=lambda: Authority.create("tokenomy-e2e-server-ca"))
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, bin_dir: Path) -> None:
        etcd_client, etcd_peer, etcd_metrics, secure = (
            free_port(),
            free_port(),
            free_port(),
            free_port(),
        )
        data = self.folder / "etcd"
        log = (self.folder / "etcd.log").open("wb")
        self.processes.append(
            subprocess.Popen(
                [
                    str(bin_dir / "etcd"), "--data-dir", str(data), "--name", "default",
                    "--listen-client-urls", f"http://127.0.0.1:{etcd_client}",
                    "--advertise-client-urls", f"http://127.0.0.1:{etcd_client}",
                    "--listen-peer-urls", f"http://127.0.0.1:{etcd_peer}",
                    "--initial-advertise-peer-urls", f"http://127.0.0.1:{etcd_peer}",
                    "--initial-cluster", f"default=http://127.0.0.1:{etcd_peer}",
                    "--listen-metrics-urls", f"http://127.0.0.1:{etcd_metrics}",
                    "--unsafe-no-fsync",
                ],
                stdout=log, stderr=subprocess.STDOUT,
            )
        )  # fmt: skip
        hosts = ("127.0.0.1", "localhost", self.address)
        if self.for_nodes:
            hosts += (SERVICE_IP, *(f"kubernetes.default.{s}" for s in SERVICE_SUFFIXES))
            hosts += ("kubernetes", "kubernetes.default")
        cert, key = self.server_ca.issue("kube-apiserver", hosts=tuple(dict.fromkeys(hosts)))
        (self.folder / "serving.crt").write_bytes(cert)
        (self.folder / "serving.key").write_bytes(key)
        (self.folder / "client-ca.crt").write_bytes(self.client_ca.pem)
        sa_key, sa_pub = service_account_keys(self.folder)
        (self.folder / "server-ca.crt").write_bytes(self.server_ca.pem)
        if self.for_nodes:
            node_flags = [
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction",
                "--kubelet-preferred-address-types=InternalIP",
            ]
        else:
            node_flags = ["--authorization-mode=RBAC", "--disable-admission-plugins=ServiceAccount"]
        log = (self.folder / "apiserver.log").open("wb")
        self.processes.append(
            subprocess.Popen(
                [
                    str(bin_dir / "kube-apiserver"),
                    f"--etcd-servers=http://127.0.0.1:{etcd_client}",
                    f"--bind-address={self.address}", f"--advertise-address={self.address}",
                    f"--secure-port={secure}",
                    f"--tls-cert-file={self.folder / 'serving.crt'}",
                    f"--tls-private-key-file={self.folder / 'serving.key'}",
                    f"--client-ca-file={self.folder / 'client-ca.crt'}",
                    "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                    f"--service-account-key-file={sa_pub}",
                    f"--service-account-signing-key-file={sa_key}",
                    "--service-cluster-ip-range=10.0.0.0/24",
                    *node_flags,
                    "--allow-privileged=true",
                ],
                stdout=log, stderr=subprocess.STDOUT,
            )
        )  # fmt: skip
        self.url = f"https://{self.address}:{secure}"
        self._wait_ready()

    def _context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cadata=self.server_ca.pem.decode())
        cert, key = self.client_ca.issue("admin", organizations=("system:masters",), client=True)
        (self.folder / "admin.crt").write_bytes(cert)
        (self.folder / "admin.key").write_bytes(key)
        context.load_cert_chain(self.folder / "admin.crt", self.folder / "admin.key")
        return context

    def _wait_ready(self, timeout: float = 90.0) -> None:
        context = self._context()
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            for process in self.processes:
                if process.poll() is not None:
                    raise RuntimeError(f"a control-plane process exited:\n{self.logs()}")
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", context=context, timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError as error:
                last = str(error)
            time.sleep(0.2)
        raise TimeoutError(f"kube-apiserver not ready: {last}\n{self.logs()}")

    def logs(self) -> str:
        return "\n".join(
            (self.folder / n).read_text(errors="replace")[-3000:]
            for n in ("etcd.log", "apiserver.log")
            if (self.folder / n).exists()
        )

    def kubeconfig(
        self, user: str = "admin", groups: tuple[str, ...] = ("system:masters",)
    ) -> Path:
        """A kubeconfig with a client certificate for ``user`` in ``groups``."""
        cert, key = self.client_ca.issue(user, organizations=groups, client=True)
        return self.kubeconfig_for(cert, key, self.folder / f"kubeconfig-{user.replace(':', '_')}")

    def kubeconfig_for(self, cert: bytes, key: bytes, path: Path) -> Path:
        """A kubeconfig at ``path`` with this client certificate and key embedded."""
        user = "user"
        b64 = lambda data: base64.b64encode(data).decode()  # noqa: E731
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "e2e",
                    "cluster": {
                        "server": self.url,
                        "certificate-authority-data": b64(self.server_ca.pem),
                    },
                }
            ],
            "users": [
                {
                    "name": user,
                    "user": {"client-certificate-data": b64(cert), "client-key-data": b64(key)},
                }
            ],
            "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": user}}],
            "current-context": "e2e",
        }
        path.write_text(yaml.safe_dump(config))
        return path

    def stop(self) -> None:
        stop_all(list(reversed(self.processes)))
        self.processes.clear()


def stop_all(processes: list[subprocess.Popen[bytes]]) -> None:
    """Terminate, wait, and kill what does not stop: nothing is left running."""
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def install_crds(admin: Path, *namespaces: str) -> None:
    """Apply the generated CRDs, wait until they serve, and create ``namespaces``."""
    crds = ["crd/costpolicies.tokenomy.dev", "crd/modelroutes.tokenomy.dev"]
    apply_crds(admin, ["-k", str(HERE.parent / "crds")], crds, namespaces)


def apply_crds(
    admin: Path, sources: Sequence[str], names: Sequence[str], namespaces: Sequence[str] = ()
) -> None:
    """``kubectl apply`` the CRDs ``sources`` name (its -f/-k arguments), wait until
    ``names`` are Established, and create ``namespaces``."""
    kubectl(admin, "apply", "--server-side", *sources)
    kubectl(admin, "wait", "--for=condition=Established", "--timeout=60s", *names)
    for namespace in namespaces:
        kubectl(admin, "create", "namespace", namespace, check=False)


def start_control_plane(address: str = "127.0.0.1", for_nodes: bool = False) -> ControlPlane:
    plane = ControlPlane(Path(tempfile.mkdtemp(prefix="tokenomy-e2e-")), address, for_nodes)
    plane.start(build())
    return plane


def kubectl(
    kubeconfig: Path, *args: str, stdin: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("kubectl")
    assert binary, "kubectl is needed for the e2e tests"
    result = subprocess.run(
        [binary, "--kubeconfig", str(kubeconfig), *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "KUBECTL_EXTERNAL_DIFF": ""},
    )
    if check and result.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed:\n{result.stderr}")
    return result
