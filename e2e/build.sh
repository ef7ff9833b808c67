#!/usr/bin/env bash
# Build a real kube-apiserver and etcd from Go modules, once per machine.
#
# k8s.io/kubernetes cannot be `go install`ed: its go.mod replaces every
# staging module (k8s.io/api, k8s.io/client-go, ...) with a local path. A
# small wrapper module requires it and replaces each staging module with its
# published v0.Y.Z release instead; the list is read from the published
# go.mod, so nothing is hard-coded. etcd's server module builds the same way
# through a wrapper whose main calls etcdmain.Main. Binaries land in
# ${TOKENOMY_E2E_CACHE:-~/.cache/tokenomy-e2e}/<versions>/bin and are reused.
set -euo pipefail

KUBE_VERSION="${KUBE_VERSION:-v1.35.4}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
CACHE="${TOKENOMY_E2E_CACHE:-$HOME/.cache/tokenomy-e2e}/kube-${KUBE_VERSION}-etcd-${ETCD_VERSION}"
BIN="$CACHE/bin"
export CGO_ENABLED=0 GOFLAGS=-mod=mod

if [[ -x "$BIN/kube-apiserver" && -x "$BIN/etcd" ]]; then
  echo "$BIN"
  exit 0
fi
mkdir -p "$BIN" "$CACHE/apiserver" "$CACHE/etcd"

staging_version="v0.${KUBE_VERSION#v1.}"
gomod="$(go mod download -json "k8s.io/kubernetes@${KUBE_VERSION}" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
go_line="$(grep -m1 '^go ' "$gomod")"

cd "$CACHE/apiserver"
{
  echo "module tokenomy.dev/e2e/apiserver"
  echo
  echo "$go_line"
  echo
  echo "require k8s.io/kubernetes ${KUBE_VERSION}"
  echo
  grep -E '=> \./staging/' "$gomod" | awk -v v="$staging_version" '{print "replace " $1 " => " $1 " " v}'
} > go.mod
cat > tools.go <<'GO'
//go:build tools

package tools

import _ "k8s.io/kubernetes/cmd/kube-apiserver/app"
GO
go mod tidy >&2
go build -trimpath -ldflags "-s -w" -o "$BIN/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver >&2

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
go mod tidy >&2
go build -trimpath -ldflags "-s -w" -o "$BIN/etcd" . >&2

echo "$BIN"
