"""Fixtures for the end-to-end scenarios: one real control plane per session."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from controlplane import ControlPlane, start_control_plane


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
