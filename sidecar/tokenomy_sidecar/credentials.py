"""Provider keys: from mounted Secret files in a pod, or from Secret manifests standalone.

Keys are read when a config is applied, never logged, and never reach the
application: the sidecar adds them to upstream requests itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from tokenomy_api import pod
from tokenomy_api.compiled import SecretKey
from tokenomy_api.resources import Secret

SECRETS_DIR = Path(pod.SECRETS_DIR)
"""Where the injected sidecar finds each Secret: ``<dir>/<secret name>/<key>``."""


class Credentials:
    """Looks up Secret keys in manifests first, then in mounted files."""

    def __init__(self, secrets: Iterable[Secret] = (), directory: Path | None = None) -> None:
        self._values: Mapping[tuple[str, str], bytes] = {
            (s.name, key): value for s in secrets for key, value in s.data.items()
        }
        self.directory = directory

    def get(self, ref: SecretKey) -> str | None:
        """The key's value without surrounding whitespace, or None if nowhere to be found."""
        value = self._values.get((ref.name, ref.key))
        if value is None and self.directory is not None:
            path = self.directory / ref.name / ref.key
            try:
                value = path.read_bytes()
            except OSError:
                return None
        return value.decode().strip() if value is not None else None
