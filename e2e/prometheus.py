"""A real Prometheus on the host, fed the shipped monitoring manifests.

Built from Go modules by e2e/build.sh: Debian's prometheus has no Kubernetes
service discovery.

There is no Prometheus Operator here, so what it would do is done by hand
and nothing more: each shipped PodMonitor's selectors become a
``kubernetes_sd_configs`` scrape job with the relabelling the operator
generates (namespace selector, label selector, port name, path,
honorLabels), and the PrometheusRule's groups become a rule file.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from controlplane import free_port, stop_all

REPO = Path(__file__).resolve().parent.parent
MONITORING = REPO / "manifests" / "monitoring"


def _label(name: str) -> str:
    """A Kubernetes label name as Prometheus's service discovery spells it."""
    return "".join(c if c.isalnum() else "_" for c in name)


def scrape_job(monitor: dict[str, Any], kubeconfig: Path, interval: str) -> dict[str, Any]:
    """One PodMonitor as the Prometheus Operator renders it (the parts used here)."""
    spec = monitor["spec"]
    meta = monitor["metadata"]
    [endpoint] = spec["podMetricsEndpoints"]
    sd: dict[str, Any] = {"role": "pod", "kubeconfig_file": str(kubeconfig)}
    namespaces = spec.get("namespaceSelector") or {}
    if not namespaces.get("any"):
        sd["namespaces"] = {"names": namespaces.get("matchNames") or [meta["namespace"]]}
    relabel: list[dict[str, Any]] = []
    selector = spec.get("selector") or {}
    for key, value in (selector.get("matchLabels") or {}).items():
        relabel.append(
            {
                "action": "keep",
                "source_labels": [f"__meta_kubernetes_pod_label_{_label(key)}"],
                "regex": value,
            }
        )
    for expression in selector.get("matchExpressions") or []:
        source = [f"__meta_kubernetes_pod_label_{_label(expression['key'])}"]
        values = "|".join(expression.get("values") or [])
        operator = expression["operator"]
        action = {"In": "keep", "NotIn": "drop"}.get(operator)
        if action is None:
            raise NotImplementedError(f"matchExpressions operator {operator}")
        relabel.append({"action": action, "source_labels": source, "regex": f"({values})"})
    relabel += [
        {
            "action": "keep",
            "source_labels": ["__meta_kubernetes_pod_container_port_name"],
            "regex": endpoint["port"],
        },
        {
            "action": "drop",
            "source_labels": ["__meta_kubernetes_pod_phase"],
            "regex": "(Failed|Succeeded)",
        },
        {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
        {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
    ]
    return {
        "job_name": f"podMonitor/{meta['namespace']}/{meta['name']}",
        "honor_labels": bool(endpoint.get("honorLabels")),
        "metrics_path": endpoint.get("path", "/metrics"),
        "scrape_interval": interval,
        "kubernetes_sd_configs": [sd],
        "relabel_configs": relabel,
    }


def rule_file(rule: dict[str, Any]) -> dict[str, Any]:
    """A PrometheusRule's groups, as a Prometheus rule file."""
    return {"groups": rule["spec"]["groups"]}


def shipped() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The shipped PodMonitors and PrometheusRules."""
    docs = [
        d
        for name in ("podmonitor.yaml", "prometheusrule.yaml")
        for d in yaml.safe_load_all((MONITORING / name).read_text())
        if d
    ]
    return (
        [d for d in docs if d["kind"] == "PodMonitor"],
        [d for d in docs if d["kind"] == "PrometheusRule"],
    )


def dashboard_queries(range_: str = "10m") -> list[tuple[str, str]]:
    """(panel, PromQL) of every query of the shipped dashboard, variables filled in."""
    board = json.loads((MONITORING / "dashboard.json").read_text())
    out = []
    for panel in board["panels"]:
        for target in panel.get("targets") or []:
            expr = target["expr"].replace("$__range", range_)
            expr = expr.replace('"$namespace"', '".*"').replace('"$policy"', '".*"')
            out.append((panel["title"], expr))
    return out


@dataclass
class Prometheus:
    """Prometheus scraping the cluster through Kubernetes service discovery."""

    folder: Path
    kubeconfig: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    def start(self, binary: Path, interval: str = "2s") -> None:
        monitors, rules = shipped()
        for n, rule in enumerate(rules):
            (self.folder / f"rules-{n}.yaml").write_text(yaml.safe_dump(rule_file(rule)))
        config = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "rule_files": [str(p) for p in sorted(self.folder.glob("rules-*.yaml"))],
            "scrape_configs": [scrape_job(m, self.kubeconfig, interval) for m in monitors],
        }
        (self.folder / "prometheus.yml").write_text(yaml.safe_dump(config))
        log = (self.folder / "prometheus.log").open("wb")
        self.process = subprocess.Popen(
            [
                str(binary),
                f"--config.file={self.folder / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                self.api("status/buildinfo")
                return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError((self.folder / "prometheus.log").read_text()[-3000:])

    def api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}{query}"
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api("query", query=expr)["result"]
        return result

    def stop(self) -> None:
        if self.process is not None:
            stop_all([self.process])
            self.process = None
