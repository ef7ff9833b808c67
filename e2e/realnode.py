"""A real one-node Kubernetes cluster on this machine, started and stopped by the tests.

kube-apiserver and etcd (controlplane.py) listen on the node's IP; beside them
run kube-controller-manager, kube-scheduler, containerd with runc and the
bridge CNI plugin, a kubelet, kube-proxy (iptables) and CoreDNS, each a host
process whose PID is kept. Pods pull nothing: the images are built locally
(e2e/node/images.sh) and imported into containerd. ``stop`` deletes the Pods
through the kubelet, then stops every process by PID and removes what was
made (network namespaces, bridges, iptables chains, mounts): ``leftovers``
says what, if anything, survived, and the fixture fails on it.

What each setting is for is in ../shared/REAL-NODE.md (on this kind of
machine: root without CAP_SYS_RESOURCE, cgroup v1, no registry, no DNS for
Service names unless we serve it).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from controlplane import ControlPlane, build, free_port, kubectl, stop_all

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
NODE_NAME = "node1"
NODE_BRIDGE = "tkn-node0"
"""A port-less bridge holding the node IP (there is no dummy link type here)."""
NODE_IP = "10.200.0.1"
POD_BRIDGE = "tkn-cni0"
POD_CIDR = "10.22.0.0/16"
CLUSTER_DOMAIN = "cluster.local"
NODE_LABELS = {
    "topology.kubernetes.io/region": "eu-west-1",
    "topology.kubernetes.io/zone": "eu-west-1b",
    "karpenter.sh/capacity-type": "spot",
}
"""The node's placement, as a cloud provider's node would carry it."""
IMAGE_CACHE = Path(os.environ.get("TOKENOMY_E2E_CACHE", Path.home() / ".cache/tokenomy-e2e"))


def run(*args: str, check: bool = True, **kwargs: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(args), capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result  # type: ignore[no-any-return]


def build_images(bin_dir: Path, out: Path) -> dict[str, str]:
    """Build every image (e2e/node/images.sh); image name by short name, e.g. ``sidecar``."""
    result = run("bash", str(HERE / "node" / "images.sh"), str(bin_dir), str(out))
    return {line.rsplit("/", 1)[-1].split(":")[0]: line for line in result.stdout.split()}


@dataclass
class RealNode:
    """One kubelet node and the controllers a cluster needs, on ``plane``."""

    plane: ControlPlane
    bin_dir: Path
    images: Path
    """Folder of docker-archives to import (every ``*.tar``)."""
    folder: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="tokenomy-node-")))
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    state: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="tkn-", dir="/run")))
    """containerd's state and socket (short: shim socket paths are limited)."""
    netns_before: set[str] = field(default_factory=set)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def socket(self) -> Path:
        return self.state / "containerd.sock"

    @property
    def kubelet_root(self) -> Path:
        return self.folder / "kubelet"

    # -- start ---------------------------------------------------------------

    def start(self) -> None:
        started = time.monotonic()
        self._controllers()
        self._containerd()
        self._import_images()
        self._kubelet()
        self._kube_proxy()
        self._coredns()
        self._wait_ready()
        self.timings["node_start_seconds"] = time.monotonic() - started

    def _spawn(self, name: str, *args: str) -> None:
        log = (self.folder / f"{name}.log").open("wb")
        self.processes[name] = subprocess.Popen(list(args), stdout=log, stderr=subprocess.STDOUT)

    def network(self) -> None:
        """The node IP and the Pods' CNI config; before the API server, which listens there."""
        self.netns_before = set(_netns())
        _remove_links()
        run("ip", "link", "add", NODE_BRIDGE, "type", "bridge")
        run("ip", "addr", "add", f"{NODE_IP}/24", "dev", NODE_BRIDGE)
        run("ip", "link", "set", NODE_BRIDGE, "up")
        for key, value in (
            ("net.ipv4.ip_forward", "1"),
            # Pod -> Service -> Pod on one bridge: replies must pass iptables
            # to be un-DNATed.
            ("net.bridge.bridge-nf-call-iptables", "1"),
        ):
            run("sysctl", "-q", "-w", f"{key}={value}")
        cni = self.folder / "cni"
        cni.mkdir()
        (cni / "10-tokenomy-e2e.conflist").write_text(
            json.dumps(
                {
                    "cniVersion": "0.4.0",
                    "name": "tokenomy-e2e",
                    "plugins": [
                        {
                            "type": "bridge",
                            "bridge": POD_BRIDGE,
                            "isGateway": True,
                            "isDefaultGateway": True,
                            "ipMasq": True,
                            "hairpinMode": True,
                            "ipam": {
                                "type": "host-local",
                                "ranges": [[{"subnet": POD_CIDR}]],
                                "dataDir": str(self.folder / "cni-ipam"),
                            },
                        },
                        {"type": "portmap", "capabilities": {"portMappings": True}},
                    ],
                }
            )
        )

    def _controllers(self) -> None:
        admin = self.plane.kubeconfig()
        plane = self.plane.folder
        self._spawn(
            "kube-controller-manager",
            str(self.bin_dir / "kube-controller-manager"),
            f"--kubeconfig={admin}",
            f"--authentication-kubeconfig={admin}",
            f"--authorization-kubeconfig={admin}",
            f"--service-account-private-key-file={plane / 'sa.key'}",
            f"--root-ca-file={plane / 'server-ca.crt'}",
            "--use-service-account-credentials=false",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            f"--secure-port={free_port()}",
            "--controllers=*,-nodeipam,-cloud-node-lifecycle,-service-lb-controller",
            "--node-monitor-grace-period=20s",
        )
        self._spawn(
            "kube-scheduler",
            str(self.bin_dir / "kube-scheduler"),
            f"--kubeconfig={admin}",
            f"--authentication-kubeconfig={admin}",
            f"--authorization-kubeconfig={admin}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            f"--secure-port={free_port()}",
        )

    def _containerd(self) -> None:
        config = self.folder / "containerd.toml"
        config.write_text(
            f"""version = 2
root = "{self.folder / "containerd"}"
state = "{self.state / "state"}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "{self.socket}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "localhost/tokenomy-e2e/pause:1"
  # Root here lacks CAP_SYS_RESOURCE: the kubelet's -998 for the sandbox fails.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{self.folder / "cni"}"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
      SystemdCgroup = false
"""
        )
        self._spawn("containerd", "containerd", "--config", str(config))
        _wait(lambda: self.socket.exists() and self._ctr("version", check=False).returncode == 0,
              30, "containerd", self.logs)  # fmt: skip

    def _ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run("ctr", "--address", str(self.socket), "-n", "k8s.io", *args, check=check)

    def _import_images(self) -> None:
        started = time.monotonic()
        for archive in sorted(self.images.glob("*.tar")):
            self._ctr("images", "import", "--no-unpack", str(archive))
        self.timings["image_import_seconds"] = time.monotonic() - started

    def _kubelet(self) -> None:
        root = self.kubelet_root
        root.mkdir()
        # Volume mounts (ServiceAccount tokens, Secrets) must propagate from
        # the kubelet's root into the containers: the root filesystem here is
        # a private mount.
        run("mount", "--bind", str(root), str(root))
        run("mount", "--make-rshared", str(root))
        cert, key = self.plane.client_ca.issue(
            f"system:node:{NODE_NAME}", organizations=("system:nodes",), client=True
        )
        (self.folder / "kubelet.crt").write_bytes(cert)
        (self.folder / "kubelet.key").write_bytes(key)
        kubeconfig = self.plane.kubeconfig_for(cert, key, self.folder / "kubelet.kubeconfig")
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "failCgroupV1": False,
            "cgroupDriver": "cgroupfs",
            "containerRuntimeEndpoint": f"unix://{self.socket}",
            "authentication": {
                "anonymous": {"enabled": True},
                "webhook": {"enabled": False},
                "x509": {"clientCAFile": str(self.plane.folder / "client-ca.crt")},
            },
            "authorization": {"mode": "AlwaysAllow"},
            "clusterDNS": [NODE_IP],
            "clusterDomain": CLUSTER_DOMAIN,
            "failSwapOn": False,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": free_port(),
            "address": NODE_IP,
            "port": free_port(NODE_IP),
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
                "nodefs.inodesFree": "1%",
            },
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "serializeImagePulls": False,
            "registerNode": True,
            "syncFrequency": "10s",
            "fileCheckFrequency": "10s",
            "nodeStatusReportFrequency": "10s",
        }
        (self.folder / "kubelet.yaml").write_text(yaml.safe_dump(config))
        labels = ",".join(f"{k}={v}" for k, v in NODE_LABELS.items())
        self._spawn(
            "kubelet",
            str(self.bin_dir / "kubelet"),
            f"--config={self.folder / 'kubelet.yaml'}",
            f"--kubeconfig={kubeconfig}",
            f"--root-dir={root}",
            f"--cert-dir={self.folder / 'kubelet-pki'}",
            f"--node-ip={NODE_IP}",
            f"--hostname-override={NODE_NAME}",
            f"--node-labels={labels}",
            "--v=1",
        )

    def _kube_proxy(self) -> None:
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(self.plane.kubeconfig())},
            "mode": "iptables",
            "clusterCIDR": POD_CIDR,
            "hostnameOverride": NODE_NAME,
            "healthzBindAddress": f"127.0.0.1:{free_port()}",
            "metricsBindAddress": f"127.0.0.1:{free_port()}",
            # Leave the machine's conntrack sysctls alone.
            "conntrack": {
                "maxPerCore": 0,
                "tcpEstablishedTimeout": "0s",
                "tcpCloseWaitTimeout": "0s",
            },
        }
        (self.folder / "kube-proxy.yaml").write_text(yaml.safe_dump(config))
        self._spawn(
            "kube-proxy",
            str(self.bin_dir / "kube-proxy"),
            f"--config={self.folder / 'kube-proxy.yaml'}",
        )

    def _coredns(self) -> None:
        self.dns_ready = free_port()
        corefile = self.folder / "Corefile"
        corefile.write_text(
            f""".:53 {{
    errors
    health 127.0.0.1:{free_port()}
    ready 127.0.0.1:{self.dns_ready}
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {self.plane.kubeconfig()} e2e
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    cache 5
    forward . /etc/resolv.conf
}}
"""
        )
        self._spawn("coredns", str(self.bin_dir / "coredns"), "-conf", str(corefile))

    def _wait_ready(self) -> None:
        admin = self.plane.kubeconfig()

        def ready() -> bool:
            self._check_alive()
            out = kubectl(admin, "get", "node", NODE_NAME, "-o", "json", check=False)
            if out.returncode != 0:
                return False
            conditions = json.loads(out.stdout)["status"].get("conditions") or []
            node_ready = any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
            account = kubectl(admin, "get", "serviceaccount", "default", check=False)
            return node_ready and account.returncode == 0 and _http_ok(self.dns_ready, "/ready")

        _wait(ready, 180, "the node to be Ready", self.logs)

    def _check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited ({process.returncode}):\n{self.logs()}")

    def logs(self) -> str:
        parts = [self.plane.logs()]
        for name in self.processes:
            path = self.folder / f"{name}.log"
            if path.exists():
                parts.append(f"== {name}\n" + path.read_text(errors="replace")[-2500:])
        return "\n".join(parts)

    # -- stop ----------------------------------------------------------------

    def stop(self) -> None:
        """Pods first (the kubelet tears their sandboxes down), then everything by PID."""
        admin = self.plane.kubeconfig()
        if "kubelet" in self.processes and self.processes["kubelet"].poll() is None:
            namespaces = kubectl(admin, "get", "ns", "-o", "name", check=False).stdout.split()
            for ns in namespaces:
                kubectl(admin, "delete", "pods", "--all", "-n", ns.split("/")[1],
                        "--grace-period=1", "--wait=false", check=False)  # fmt: skip
            with contextlib.suppress(AssertionError, RuntimeError):  # killed below
                _wait(lambda: not self._ctr("containers", "ls", "-q").stdout.strip(),
                      60, "the pods' containers to go", self.logs)  # fmt: skip
        order = ["kubelet", "kube-proxy", "coredns", "kube-scheduler", "kube-controller-manager"]
        stop_all([self.processes[n] for n in order if n in self.processes])
        if "containerd" in self.processes:
            for task in self._ctr("tasks", "ls", "-q", check=False).stdout.split():
                self._ctr("tasks", "kill", "-s", "SIGKILL", task, check=False)
            stop_all([self.processes["containerd"]])
        _kill_shims(self.socket)
        subprocess.run(
            [str(self.bin_dir / "kube-proxy"), "--cleanup"],
            capture_output=True, check=False,
        )  # fmt: skip
        _remove_cni_chains()
        for ns in set(_netns()) - self.netns_before:
            run("ip", "netns", "delete", ns, check=False)
        _unmount_under(self.folder)
        _unmount_under(self.state)
        _remove_links()
        self.processes.clear()
        shutil.rmtree(self.state, ignore_errors=True)
        shutil.rmtree(self.folder, ignore_errors=True)

    def leftovers(self) -> list[str]:
        """Anything of this node still running, mounted, linked or ruled."""
        out = []
        links = run("ip", "-o", "link", "show").stdout
        out += [f"link {n}" for n in (NODE_BRIDGE, POD_BRIDGE) if f" {n}:" in links]
        out += [f"netns {n}" for n in set(_netns()) - self.netns_before]
        mounts = Path("/proc/self/mounts").read_text()
        out += [
            f"mount {line.split()[1]}" for line in mounts.splitlines() if str(self.folder) in line
        ]
        rules = run("iptables-save", check=False).stdout
        out += [
            f"iptables {line}"
            for line in rules.splitlines()
            if "KUBE-SVC" in line or "CNI-" in line
        ][:5]
        procs = run("ps", "-eo", "pid,args", check=False).stdout
        out += [
            f"process {line.strip()}"
            for line in procs.splitlines()
            if str(self.state) in line or str(self.folder) in line
        ]
        return out


def _netns() -> list[str]:
    return [
        line.split()[0]
        for line in run("ip", "netns", "list", check=False).stdout.splitlines()
        if line
    ]


def _remove_links() -> None:
    for name in (POD_BRIDGE, NODE_BRIDGE):
        run("ip", "link", "delete", name, check=False)


def _remove_cni_chains() -> None:
    """The bridge plugin's ipMasq chains are removed on CNI DEL; any a killed pod left go here."""
    rules = run("iptables-save", "-t", "nat", check=False).stdout
    for line in rules.splitlines():
        if line.startswith("-A POSTROUTING") and "CNI-" in line:
            run("iptables", "-t", "nat", "-D", *shlex.split(line)[1:], check=False)
    for line in rules.splitlines():
        if line.startswith(":CNI-"):
            chain = line[1:].split()[0]
            run("iptables", "-t", "nat", "-F", chain, check=False)
            run("iptables", "-t", "nat", "-X", chain, check=False)


def _processes() -> dict[int, str]:
    """Command line by PID, read from /proc (``ps`` cuts lines at 80 columns when piped)."""
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                out[int(entry.name)] = (
                    (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                )
    return out


def _kill_shims(socket: Path) -> None:
    for pid, args in _processes().items():
        if "containerd-shim" in args and str(socket) in args:
            with contextlib.suppress(OSError):
                os.kill(pid, 9)


def _unmount_under(folder: Path) -> None:
    for _ in range(3):
        mounts = [
            line.split()[1]
            for line in Path("/proc/self/mounts").read_text().splitlines()
            if line.split()[1].startswith(str(folder))
        ]
        if not mounts:
            return
        for mount in sorted(mounts, key=len, reverse=True):
            run("umount", "-l", mount, check=False)


def _http_ok(port: int, path: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def _wait(predicate: object, timeout: float, what: str, logs: object) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}\n{logs()}")  # type: ignore[operator]


@dataclass
class NodeCluster:
    """A control plane with a real kubelet node, and the images built for it."""

    plane: ControlPlane
    node: RealNode
    images: dict[str, str]
    """Image reference by short name: ``operator``, ``sidecar``, ``example-agent``."""
    admin: Path


def node_tools_missing() -> list[str]:
    """Host programs the node tier needs (installed by .ci/run from Debian)."""
    tools = (
        "containerd",
        "containerd-shim-runc-v2",
        "runc",
        "ctr",
        "buildah",
        "debootstrap",
        "iptables",
        "ip",
    )
    missing = [t for t in tools if shutil.which(t) is None]
    if not Path("/usr/lib/cni/bridge").exists():
        missing.append("containernetworking-plugins")
    return missing


STALE_MARKS = ("/tmp/tokenomy-node-", "/run/tkn-", "/tmp/tokenomy-e2e-")
"""Paths in the command lines of what a run starts; a killed run's leftovers carry them."""


def _parent(pid: int) -> int:
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    return 0


def reap_stale(bin_dir: Path) -> None:
    """Stop and remove what a killed earlier run left (its teardown never ran).

    Only orphans (parent pid 1): what this run or another live one started
    has its parent still.
    """
    stale = [
        pid
        for pid, args in _processes().items()
        if any(m in args for m in STALE_MARKS) and _parent(pid) == 1
    ]
    for pid in stale:
        with contextlib.suppress(OSError):
            os.kill(pid, 9)
    time.sleep(0.5 if stale else 0)
    for mark in STALE_MARKS:
        for folder in Path(mark).parent.glob(Path(mark).name + "*"):
            _unmount_under(folder)
    for ns in _netns():
        if ns.startswith("cni-"):
            run("ip", "netns", "delete", ns, check=False)
    subprocess.run([str(bin_dir / "kube-proxy"), "--cleanup"], capture_output=True, check=False)
    _remove_cni_chains()
    _remove_links()


def start(images_out: Path) -> tuple[ControlPlane, RealNode, dict[str, str]]:
    """Build what is missing, then the control plane and the node; images by short name."""
    bin_dir = build("node")
    reap_stale(bin_dir)
    names = build_images(bin_dir, images_out)
    from controlplane import start_control_plane  # noqa: PLC0415

    folder = Path(tempfile.mkdtemp(prefix="tokenomy-node-"))
    scratch = RealNode(ControlPlane(folder), bin_dir, images_out, folder)
    scratch.network()
    try:
        plane = start_control_plane(NODE_IP, for_nodes=True)
    except BaseException:
        scratch.stop()
        raise
    node = RealNode(
        plane, bin_dir, images_out, folder, state=scratch.state, netns_before=scratch.netns_before
    )
    try:
        node.start()
    except BaseException:
        node.stop()
        plane.stop()
        raise
    return plane, node, names
