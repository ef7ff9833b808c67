"""Fixtures for the end-to-end scenarios: one real control plane per session."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from controlplane import ControlPlane, start_control_plane
from realnode import NodeCluster, node_tools_missing
from realnode import start as start_node_cluster


@pytest.fixture(scope="session")
def plane() -> Iterator[ControlPlane]:
    """etcd and kube-apiserver, started once, stopped by PID at the end; nothing left running."""
    running = start_control_plane()
    try:
        yield running
    finally:
        running.stop()
        shutil.rmtree(running.folder, ignore_errors=True)


@pytest.fixture(scope="session")
def admin(plane: ControlPlane) -> Path:
    """An admin kubeconfig (client certificate in system:masters)."""
    return plane.kubeconfig()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeCluster]:
    """The node tier's cluster; torn down by PID, and nothing of it may be left."""
    missing = node_tools_missing()
    if missing:
        pytest.fail(f"the node tier needs {', '.join(missing)} (.ci/run installs them)")
    plane, node, images = start_node_cluster(tmp_path_factory.mktemp("images"))
    try:
        yield NodeCluster(plane, node, images, plane.kubeconfig())
    finally:
        node.stop()
        plane.stop()
        shutil.rmtree(plane.folder, ignore_errors=True)
        left = node.leftovers()
        assert not left, f"the node left these behind: {left}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """e2e/ tests are ``apiserver`` unless they carry ``node`` (``pytest -m apiserver``)."""
    here = Path(__file__).resolve().parent
    for item in items:
        if Path(str(item.fspath)).resolve().parent == here and not item.get_closest_marker("node"):
            item.add_marker(pytest.mark.apiserver)
