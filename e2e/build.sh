#!/usr/bin/env bash
# Build a real Kubernetes from Go modules, once per machine: kube-apiserver and
# etcd (every e2e tier), and for the node tier kubelet, kube-controller-manager,
# kube-scheduler, kube-proxy, CoreDNS and a pause binary; and Helm and the Prometheus
# Operator's PodMonitor and PrometheusRule CRDs, for the chart and manifests/.
#
# k8s.io/kubernetes cannot be `go install`ed: its go.mod replaces every
# staging module (k8s.io/api, k8s.io/client-go, ...) with a local path. A
# small wrapper module requires it and replaces each staging module with its
# published v0.Y.Z release instead; the list is read from the published
# go.mod, so nothing is hard-coded; every cmd/ of k8s.io/kubernetes builds from
# that one module. etcd's server module builds the same way through a wrapper
# whose main calls etcdmain.Main, CoreDNS through one whose main registers only
# the plugins a cluster's DNS needs. Binaries land in
# ${TOKENOMY_E2E_CACHE:-~/.cache/tokenomy-e2e}/<versions>/bin and are reused.
#
#   build.sh          kube-apiserver and etcd
#   build.sh node     also what a real node needs
set -euo pipefail

KUBE_VERSION="${KUBE_VERSION:-v1.35.4}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
COREDNS_VERSION="${COREDNS_VERSION:-v1.13.2}"
# r2: binaries report their real version (kubectl and version checks parse it).
CACHE="${TOKENOMY_E2E_CACHE:-$HOME/.cache/tokenomy-e2e}/kube-${KUBE_VERSION}-etcd-${ETCD_VERSION}-r2"
BIN="$CACHE/bin"
export CGO_ENABLED=0 GOFLAGS=-mod=mod
PROMETHEUS_VERSION="${PROMETHEUS_VERSION:-v0.305.0}"  # Prometheus 3.5's Go module version
HELM_VERSION="${HELM_VERSION:-v4.3.2}"  # the chart's lint, template and install tests
# Its PodMonitor and PrometheusRule CRDs, to check ours against on the API server.
PROMETHEUS_OPERATOR_VERSION="${PROMETHEUS_OPERATOR_VERSION:-v0.85.0}"
MONITORING_CRDS="$CACHE/prometheus-operator-${PROMETHEUS_OPERATOR_VERSION}-crds"
NODE_BINARIES=(kubelet kube-controller-manager kube-scheduler kube-proxy coredns pause prometheus)

have_all() {
  local name
  for name in "$@"; do [[ -x "$BIN/$name" ]] || return 1; done
}

wanted=(kube-apiserver etcd helm)
[[ "${1:-}" == node ]] && wanted+=("${NODE_BINARIES[@]}")
if have_all "${wanted[@]}" && [[ -f "$MONITORING_CRDS/monitoring.coreos.com_podmonitors.yaml" ]]; then
  echo "$BIN"
  exit 0
fi
mkdir -p "$BIN" "$CACHE/kubernetes" "$CACHE/etcd" "$CACHE/coredns" "$CACHE/pause" "$CACHE/prometheus"

staging_version="v0.${KUBE_VERSION#v1.}"
minor="${KUBE_VERSION#v1.}"; minor="${minor%%.*}"
version_flags="-s -w -X k8s.io/component-base/version.gitVersion=${KUBE_VERSION}"
version_flags+=" -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${minor}"
version_flags+=" -X k8s.io/component-base/version.gitTreeState=clean"

build_kubernetes() {
  local gomod go_line cmd
  gomod="$(go mod download -json "k8s.io/kubernetes@${KUBE_VERSION}" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
  go_line="$(grep -m1 '^go ' "$gomod")"
  cd "$CACHE/kubernetes"
  {
    echo "module tokenomy.dev/e2e/kubernetes"
    echo
    echo "$go_line"
    echo
    echo "require k8s.io/kubernetes ${KUBE_VERSION}"
    echo
    grep -E '=> \./staging/' "$gomod" | awk -v v="$staging_version" '{print "replace " $1 " => " $1 " " v}'
  } > go.mod
  {
    echo "//go:build tools"
    echo
    echo "package tools"
    echo
    for cmd in "$@"; do echo "import _ \"k8s.io/kubernetes/cmd/$cmd/app\""; done
  } > tools.go
  go mod tidy >&2
  for cmd in "$@"; do
    [[ -x "$BIN/$cmd" ]] && continue
    go build -trimpath -ldflags "$version_flags" -o "$BIN/$cmd" "k8s.io/kubernetes/cmd/$cmd" >&2
  done
}

kube_cmds=(kube-apiserver)
[[ "${1:-}" == node ]] && kube_cmds+=(kubelet kube-controller-manager kube-scheduler kube-proxy)
have_all "${kube_cmds[@]}" || build_kubernetes "${kube_cmds[@]}"

cd "$CACHE/etcd"
cat > go.mod <<GO
module tokenomy.dev/e2e/etcd

go 1.24

require go.etcd.io/etcd/server/v3 ${ETCD_VERSION}
GO
cat > main.go <<'GO'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
if [[ ! -x "$BIN/etcd" ]]; then
  go mod tidy >&2
  go build -trimpath -ldflags "-s -w" -o "$BIN/etcd" . >&2
fi

if [[ ! -f "$MONITORING_CRDS/monitoring.coreos.com_podmonitors.yaml" ]]; then
  # The CRDs as the Prometheus Operator publishes them, from its Go module.
  mkdir -p "$MONITORING_CRDS"
  cd "$MONITORING_CRDS"
  operator_dir="$(go mod download -json \
    "github.com/prometheus-operator/prometheus-operator@${PROMETHEUS_OPERATOR_VERSION}" \
    | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')"
  for kind in podmonitors prometheusrules; do
    cp "$operator_dir/example/prometheus-operator-crd/monitoring.coreos.com_${kind}.yaml" "$MONITORING_CRDS/"
  done
fi

if [[ ! -x "$BIN/helm" ]]; then
  GOBIN="$BIN" go install -trimpath -ldflags "-s -w" "helm.sh/helm/v4/cmd/helm@${HELM_VERSION}" >&2
fi

if [[ "${1:-}" == node && ! -x "$BIN/coredns" ]]; then
  cd "$CACHE/coredns"
  cat > go.mod <<GO
module tokenomy.dev/e2e/coredns

go 1.24

require github.com/coredns/coredns ${COREDNS_VERSION}
GO
  # Only the plugins a cluster's DNS uses, in CoreDNS's own order (plugin.cfg).
  cat > main.go <<'GO'
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
)

func init() {
	dnsserver.Directives = []string{"errors", "log", "health", "ready", "cache", "kubernetes", "forward"}
}

func main() { coremain.Run() }
GO
  go mod tidy >&2
  go build -trimpath -ldflags "-s -w" -o "$BIN/coredns" . >&2
fi

if [[ "${1:-}" == node && ! -x "$BIN/pause" ]]; then
  # The Pod sandbox's process: wait for SIGTERM, reap orphans (what
  # registry.k8s.io/pause does; that image cannot be pulled here).
  cd "$CACHE/pause"
  cat > go.mod <<'GO'
module tokenomy.dev/e2e/pause

go 1.24
GO
  cat > main.go <<'GO'
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for s := range signals {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
GO
  go build -trimpath -ldflags "-s -w" -o "$BIN/pause" . >&2
fi

if [[ "${1:-}" == node && ! -x "$BIN/prometheus" ]]; then
  # Debian's prometheus is built without Kubernetes service discovery. Only
  # that discovery is compiled in (Prometheus's own build tags); the wrapper
  # repeats the replace directive of Prometheus's go.mod, which a dependency's
  # go.mod cannot pass on.
  cd "$CACHE/prometheus"
  replace="$(go mod download -json "github.com/prometheus/prometheus@${PROMETHEUS_VERSION}" \
    | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p' | xargs grep '^replace' || true)"
  printf 'module tokenomy.dev/e2e/prometheus\n\ngo 1.24\n\n%s\n' "$replace" > go.mod
  go get "github.com/prometheus/prometheus/cmd/prometheus@${PROMETHEUS_VERSION}" >&2
  go build -tags remove_all_sd,enable_kubernetes_sd -trimpath -ldflags "-s -w" \
    -o "$BIN/prometheus" github.com/prometheus/prometheus/cmd/prometheus >&2
fi

echo "$BIN"
