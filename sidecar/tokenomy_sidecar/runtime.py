"""The config in force, and the atomic swap that replaces it.

A :class:`Runtime` is everything a request needs, built once per config
version: the compiled config, routes by model name, resolved keys and the
cache store. Requests read ``holder.current`` once and use that object to the
end, so a swap mid-request never mixes two versions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from tokenomy_api.clock import Clock
from tokenomy_api.compiled import CompiledBackend, CompiledRoute, SecretKey, SidecarConfig
from tokenomy_api.compiled import CompiledStore as StoreSpec
from tokenomy_sidecar.credentials import Credentials
from tokenomy_sidecar.memory_budget import MemoryBudget
from tokenomy_sidecar.routing.complexity import ComplexityModel
from tokenomy_sidecar.routing.models import ModelFiles, targeted
from tokenomy_sidecar.routing.scorer import AnswerScorer
from tokenomy_sidecar.stores import CacheStore, MemoryStore, RedisStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Runtime:
    """One config version, ready to serve."""

    config: SidecarConfig
    routes: dict[str, CompiledRoute]
    keys: dict[str, str]
    """API keys by backend cluster name."""
    store: CacheStore
    store_spec: StoreSpec
    credentials: Credentials
    complexity: ComplexityModel | None = None
    """The complexity model, when complexity routing is on."""
    scorer: AnswerScorer | None = None
    """The cascade's answer scorer, when its confidence method is ``scorer``."""
    notices: tuple[str, ...] = ()
    """Levers this config asks for that save nothing here (sent to the operator)."""

    def credential(self, backend: CompiledBackend) -> str | None:
        """The API key for a backend, if it has one."""
        return self.keys.get(backend.cluster)

    def credential_for(self, ref: SecretKey) -> str | None:
        """Any Secret key the config's credentials can reach."""
        return self.credentials.get(ref)


class ConfigRejectedError(ValueError):
    """A config the sidecar cannot apply; the message says why (it becomes a NACK)."""


StoreFactory = Callable[[StoreSpec, Credentials], CacheStore]


def default_store_factory(clock: Clock, budget: MemoryBudget | None = None) -> StoreFactory:
    """Build the store a spec asks for; memory stores charge ``budget`` (or one of their own)."""

    def build(spec: StoreSpec, credentials: Credentials) -> CacheStore:
        if spec.type == "redis":
            assert spec.redis is not None  # CacheStore's rule
            ref = spec.redis.password
            password = credentials.get(ref) if ref is not None else None
            if ref is not None and password is None:
                raise ConfigRejectedError(
                    f"Secret key {ref.name}/{ref.key} for the Redis password is not available"
                )
            return RedisStore(spec.redis.url, password)
        return MemoryStore(spec.max_entries, clock, budget or MemoryBudget(spec.max_memory_bytes))

    return build


class ConfigHolder:
    """Holds the runtime in force and swaps it atomically."""

    def __init__(self, store_factory: StoreFactory, models: ModelFiles | None = None) -> None:
        self.store_factory = store_factory
        self.models = models or ModelFiles(None)
        self.current: Runtime | None = None
        self.listeners: list[Callable[[Runtime], None]] = []
        self.retired: list[CacheStore] = []
        self.retire: Callable[[CacheStore], None] = self.retired.append
        """Called with a store a config change replaced; requests may still be using it.
        The sidecar closes it after a grace period; by default it is only kept."""

    def apply(self, config: SidecarConfig, credentials: Credentials) -> Runtime:
        """Build a runtime for ``config`` and put it in force, or raise ConfigRejectedError.

        The cache store carries over when its settings are unchanged, so a new
        version does not empty the cache. A refused config leaves the current
        one in force.
        """
        keys: dict[str, str] = {}
        missing = []
        for route in config.routes:
            for tier in route.tiers:
                for backend in tier.backends:
                    if backend.credentials is None:
                        continue
                    value = credentials.get(backend.credentials)
                    if value is None:
                        missing.append(f"{backend.credentials.name}/{backend.credentials.key}")
                    else:
                        keys[backend.cluster] = value
        if missing:
            raise ConfigRejectedError(
                f"Secret keys not available: {', '.join(sorted(set(missing)))}"
            )
        models = targeted(config, *self._models(config))
        for notice in models.notices:
            log.warning("%s", notice)
        previous = self.current
        spec = config.cache.store
        # The memory budget is the sidecar's, not the store's: changing it keeps the entries.
        same = {"max_memory_bytes"}
        if previous is not None and previous.store_spec.model_dump(exclude=same) == spec.model_dump(
            exclude=same
        ):
            store = previous.store
        else:
            store = self.store_factory(spec, credentials)
            if previous is not None:
                self.retire(previous.store)
        runtime = Runtime(
            config=config,
            routes={r.model: r for r in config.routes},
            keys=keys,
            store=store,
            store_spec=spec,
            credentials=credentials,
            complexity=models.complexity,
            scorer=models.scorer,
            notices=models.notices,
        )
        self.current = runtime
        log.info("config %s of %s in force", config.version, config.policy.key)
        for listener in self.listeners:
            listener(runtime)
        return runtime

    def _models(self, config: SidecarConfig) -> tuple[ComplexityModel | None, AnswerScorer | None]:
        try:
            complexity = (
                self.models.complexity(config.routing.complexity_model)
                if config.routing.complexity
                else None
            )
            confidence = config.cascade
            scorer = (
                self.models.scorer(confidence.scorer)
                if confidence is not None and confidence.method == "scorer" and confidence.scorer
                else None
            )
        except (OSError, ValueError) as error:
            raise ConfigRejectedError(str(error)) from None
        return complexity, scorer
