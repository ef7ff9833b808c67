"""Where a standalone sidecar gets its config: the YAML a user would ``kubectl apply``.

The files are compiled with the same compiler the operator runs. They are
watched; a change that does not compile is refused and logged, and the last
good config stays in force. The operator's xDS stream is the other source.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path

from tokenomy_api.compiled import SidecarConfig
from tokenomy_api.compiler import compile_configs
from tokenomy_api.loader import SUFFIXES, load_resources
from tokenomy_sidecar.credentials import Credentials
from tokenomy_sidecar.metrics import Metrics
from tokenomy_sidecar.runtime import ConfigHolder, ConfigRejectedError

log = logging.getLogger(__name__)


def compile_files(
    paths: Sequence[str | Path], policy: str | None, secrets_dir: Path | None
) -> tuple[SidecarConfig, Credentials]:
    """Compile the files and pick one policy's config, or raise ConfigRejectedError."""
    resources = load_resources(paths)
    compilation = compile_configs(resources.policies, resources.routes)
    problems = [str(p) for p in [*resources.problems, *compilation.problems]]
    if problems:
        raise ConfigRejectedError("; ".join(problems))
    configs = compilation.configs
    if policy is None:
        if len(configs) != 1:
            found = ", ".join(sorted(configs)) or "none"
            raise ConfigRejectedError(
                f"choose a CostPolicy with --policy NAMESPACE/NAME (found: {found})"
            )
        policy = next(iter(configs))
    if policy not in configs:
        raise ConfigRejectedError(f"no CostPolicy {policy} (found: {', '.join(sorted(configs))})")
    return configs[policy], Credentials(resources.secrets, secrets_dir)


class FileSource:
    """Feeds a :class:`ConfigHolder` from files, and again whenever they change."""

    def __init__(
        self,
        paths: Sequence[str | Path],
        policy: str | None,
        holder: ConfigHolder,
        metrics: Metrics,
        secrets_dir: Path | None = None,
        poll_seconds: float = 2.0,
    ) -> None:
        self.paths = [Path(p) for p in paths]
        self.policy = policy
        self.holder = holder
        self.metrics = metrics
        self.secrets_dir = secrets_dir
        self.poll_seconds = poll_seconds
        self._seen = self._fingerprint()

    def _fingerprint(self) -> tuple[tuple[str, float, int], ...]:
        files: list[Path] = []
        for path in self.paths:
            if path.is_dir():
                files.extend(p for p in path.iterdir() if p.suffix in SUFFIXES)
            elif path.exists():
                files.append(path)
        return tuple(sorted((str(f), f.stat().st_mtime, f.stat().st_size) for f in files))

    def load(self) -> SidecarConfig:
        """Compile and apply the files now; raises ConfigRejectedError, keeping the old config."""
        try:
            config, credentials = compile_files(self.paths, self.policy, self.secrets_dir)
            if self.holder.current and self.holder.current.config.version == config.version:
                return config
            self.holder.apply(config, credentials)
        except ConfigRejectedError:
            self.metrics.config_updates.labels("rejected").inc()
            raise
        self.metrics.config_updates.labels("applied").inc()
        return config

    async def watch(self) -> None:
        """Reload whenever a file changes, until cancelled."""
        while True:
            await asyncio.sleep(self.poll_seconds)
            seen = self._fingerprint()
            if seen == self._seen:
                continue
            self._seen = seen
            try:
                config = self.load()
                log.info("reloaded %s: version %s", config.policy.key, config.version)
            except ConfigRejectedError as error:
                log.error("config files changed but were refused, keeping the last good: %s", error)
