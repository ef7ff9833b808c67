"""The compiler: CostPolicies + ModelRoutes (+ Service endpoints) → sidecar configs.

A pure function: no I/O, no clock, no randomness. The same input gives the
same configs, byte for byte, with the same versions. It lives in the API
package, not the operator, because the standalone sidecar compiles the same
YAML without a cluster and must not import operator code.

Schema and CEL rules catch what one object can know about itself; the
compiler catches what needs several: a policy naming a route that does not
exist, a tier a route does not have, a placement no backend satisfies.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from tokenomy_api import compiled as c
from tokenomy_api.compiled import (
    CompiledBackend,
    CompiledDomain,
    CompiledEndpoint,
    CompiledQuality,
    CompiledRoute,
    CompiledRouting,
    CompiledTier,
    CompiledToolPruning,
    PolicyRef,
    SidecarConfig,
)
from tokenomy_api.costpolicy import (
    Cache,
    CostPolicy,
    CostPolicySpec,
    Placement,
    Prompt,
    Shadow,
    TierThreshold,
    Tools,
)
from tokenomy_api.meta import SecretKeyRef, parse_duration
from tokenomy_api.modelroute import (
    Backend,
    Capacity,
    Credentials,
    Embedding,
    ModelRoute,
    Price,
    Retry,
    Tier,
)
from tokenomy_api.names import COST_POLICY_KIND, MODEL_ROUTE_KIND
from tokenomy_api.problems import Problem

ProblemSink = Callable[[str, str], None]
"""Records a problem of the policy being compiled: (field path, reason)."""

ServiceKey = tuple[str, str, int]
"""(namespace, Service name, Service port) of a ``service`` backend."""


@dataclass(frozen=True)
class ServiceEndpoint:
    """A ready endpoint behind a Service, as the operator reads it from EndpointSlices."""

    address: str
    port: int
    region: str | None = None
    zone: str | None = None
    capacity: Capacity = "on-demand"


@dataclass(frozen=True)
class Compilation:
    """The result of one compile: a config per valid policy, and every problem found."""

    configs: dict[str, SidecarConfig] = field(default_factory=dict)
    """Configs by policy key (``namespace/name``)."""
    problems: list[Problem] = field(default_factory=list)
    """Problems, sorted; a policy with any problem has no config here."""
    notices: list[Problem] = field(default_factory=list)
    """Fields set that have no effect in this version, sorted: the policy still compiles,
    and the user is told (``tokenomy compile``, the ``FieldsInEffect`` condition)."""


# Order within a tier by how capacity is bought. Reserved capacity is paid for
# whether used or not, so it always comes first.
_CAPACITY_PRIORITY: dict[str, dict[str, int]] = {
    "prefer": {"reserved": 0, "spot": 1, "on-demand": 2},
    "avoid": {"reserved": 0, "on-demand": 1, "spot": 2},
    "only": {"spot": 0},
}


DEFAULT_SEMANTIC_THRESHOLD = 0.95
"""The semantic cache's threshold when the policy sets neither one nor a wrong-hit budget."""


def compile_configs(
    policies: Iterable[CostPolicy],
    routes: Iterable[ModelRoute],
    endpoints: Mapping[ServiceKey, Sequence[ServiceEndpoint]] | None = None,
) -> Compilation:
    """Compile every policy against the routes of its namespace.

    ``endpoints`` maps Services to their ready endpoints. A Service missing from
    it is reached through its cluster DNS name with the region and capacity the
    route declares, which is what a sidecar without a cluster can do.
    """
    endpoints = endpoints or {}
    by_name = {(r.metadata.namespace, r.metadata.name): r for r in routes}
    result = Compilation()
    broken_routes = set()
    for key, route in sorted(by_name.items()):
        route_problems = check_route(route)
        if route_problems:
            broken_routes.add(key)
            result.problems.extend(route_problems)
    for policy in sorted(policies, key=lambda p: (p.metadata.namespace, p.metadata.name)):
        config, problems = _compile_policy(policy, by_name, broken_routes, endpoints)
        result.problems.extend(problems)
        result.notices.extend(no_effect(policy))
        if config is not None:
            result.configs[config.policy.key] = config
    result.problems.sort()
    result.notices.sort()
    return result


def no_effect(policy: CostPolicy) -> list[Problem]:
    """The fields this policy sets that this version validates but does not act on.

    Pure, like the compiler: one notice per section, naming the field, so a
    user never believes a lever is on when it is not.
    """
    spec = policy.spec
    found = []
    if not spec.tools.enabled and (spec.tools.upstreams or spec.tools.mcp_servers):
        found.append(
            ("spec.tools.enabled", "is false: the tool proxy is off and its paths answer 404")
        )
    prompt = spec.prompt
    if prompt.summary.enabled and prompt.history_window is None and prompt.history_tokens is None:
        found.append(
            (
                "spec.prompt.summary.enabled",
                "has no effect without historyWindow or historyTokens: nothing drops turns "
                "to summarise",
            )
        )
    found.extend(_shadow_notices(spec))
    meta = policy.metadata
    return [Problem(COST_POLICY_KIND, meta.namespace, meta.name, f, r) for f, r in found]


def _shadow_notices(spec: CostPolicySpec) -> list[tuple[str, str]]:
    shadow = spec.shadow
    found = []
    if shadow.auto_tune.enabled and not shadow.enabled:
        found.append(("spec.shadow.autoTune.enabled", "has no effect while shadow is off"))
    tunable = (
        spec.cascade.enabled
        or (spec.cache.semantic.enabled and spec.cache.semantic.wrong_hit_budget is None)
        or spec.routing.complexity.enabled
    )
    if shadow.enabled and shadow.auto_tune.enabled and not tunable:
        found.append(
            (
                "spec.shadow.autoTune.enabled",
                "has nothing to tune: the cascade, a semantic cache threshold and complexity "
                "routing are all off",
            )
        )
    if shadow.judge_tier is not None and shadow.compare not in ("judge", "auto"):
        found.append(("spec.shadow.judgeTier", f"has no effect with compare: {shadow.compare}"))
    return found


def check_route(route: ModelRoute) -> list[Problem]:
    """What is wrong with a route on its own, beyond its schema."""
    problems = []
    for t, tier in enumerate(route.spec.tiers):
        for b, backend in enumerate(tier.backends):
            if backend.price is None:
                problems.append(
                    _route_problem(
                        route,
                        f"spec.tiers[{t}].backends[{b}].price",
                        "missing price; metering and savings need input and output prices "
                        '(write "0" for a free backend)',
                    )
                )
    return problems


def _route_problem(route: ModelRoute, path: str, reason: str) -> Problem:
    return Problem(MODEL_ROUTE_KIND, route.metadata.namespace, route.metadata.name, path, reason)


def _compile_policy(
    policy: CostPolicy,
    routes: Mapping[tuple[str, str], ModelRoute],
    broken_routes: set[tuple[str, str]],
    endpoints: Mapping[ServiceKey, Sequence[ServiceEndpoint]],
) -> tuple[SidecarConfig | None, list[Problem]]:
    namespace, name = policy.metadata.namespace, policy.metadata.name
    spec = policy.spec
    problems: list[Problem] = []

    def problem(path: str, reason: str) -> None:
        problems.append(Problem(COST_POLICY_KIND, namespace, name, path, reason))

    resolved: list[tuple[int, ModelRoute]] = []
    models: dict[str, str] = {}
    for i, route_name in enumerate(spec.routes):
        route = routes.get((namespace, route_name))
        if route is None:
            problem(f"spec.routes[{i}]", f'no ModelRoute "{route_name}" in namespace {namespace}')
        elif (namespace, route_name) in broken_routes:
            problem(f"spec.routes[{i}]", f'ModelRoute "{route_name}" has problems of its own')
        elif route.spec.model in models:
            problem(
                f"spec.routes[{i}]",
                f'ModelRoute "{route_name}" serves model "{route.spec.model}" '
                f'like ModelRoute "{models[route.spec.model]}"; a model needs one route',
            )
        else:
            models[route.spec.model] = route_name
            resolved.append((i, route))

    for _, route in resolved:
        _check_tier_references(policy, route, problem)
        if route.spec.embedding is None:
            needs = _embedding_users(policy)
            if needs:
                problem(needs, f'needs spec.embedding on ModelRoute "{route.metadata.name}"')

    if spec.budget is not None:
        try:
            ZoneInfo(spec.budget.time_zone)
        except (ZoneInfoNotFoundError, ValueError):
            problem("spec.budget.timeZone", f'unknown time zone "{spec.budget.time_zone}"')

    for i, packed in enumerate(spec.batching.routes):
        if packed not in spec.routes:
            problem(f"spec.batching.routes[{i}]", f'"{packed}" is not one of spec.routes')

    compiled_routes = []
    for _, route in resolved:
        compiled = _compile_route(policy, route, endpoints, problem)
        if compiled is not None:
            compiled_routes.append(compiled)

    if problems:
        return None, problems

    config = SidecarConfig(
        version="",
        policy=PolicyRef(namespace=namespace, name=name),
        routes=sorted(compiled_routes, key=lambda r: r.model),
        cache=_cache(spec.cache),
        cascade=_cascade(spec),
        quality=CompiledQuality(target=spec.quality.target, confidence=spec.quality.confidence),
        shadow=_shadow(spec.shadow),
        tuning=_tuning(policy),
        tool_pruning=(
            CompiledToolPruning(
                min_tools=spec.tools.pruning.min_tools, keep_share=spec.tools.pruning.keep_share
            )
            if spec.tools.pruning.enabled
            else None
        ),
        routing=CompiledRouting(
            complexity=spec.routing.complexity.enabled,
            complexity_model=spec.routing.complexity.model,
            cost_aware=spec.routing.complexity.cost_aware,
            domains=[
                CompiledDomain(
                    name=d.name,
                    tier=d.tier,
                    keywords=[k.lower() for k in d.keywords],
                    examples=d.examples,
                    similarity=d.similarity,
                )
                for d in spec.routing.domains
            ],
        ),
        placement=c.CompiledPlacement(nearest=spec.placement.region.strategy == "nearest"),
        prompt=c.CompiledPrompt(
            history_window=spec.prompt.history_window,
            history_tokens=spec.prompt.history_tokens,
            deduplicate=spec.prompt.deduplicate,
            max_input_tokens=spec.prompt.max_input_tokens,
            trim_to_fit=spec.prompt.over_limit == "trim",
            summary=_summary(spec.prompt),
        ),
        output=c.CompiledOutput(max_tokens=spec.output.max_tokens, brevity=spec.output.brevity),
        budget=_budget(spec),
        tools=_tools(spec.tools),
        packing=(
            c.CompiledPacking(
                max_batch_size=spec.batching.max_batch_size,
                max_wait_seconds=_seconds(spec.batching.max_wait),
                routes=sorted(spec.batching.routes),
            )
            if spec.batching.enabled
            else None
        ),
        attribution=c.CompiledAttribution(
            pod_labels=spec.attribution.pod_labels, header=spec.attribution.header
        ),
    )
    return config.versioned(), []


def _tools(tools: Tools) -> c.CompiledTools | None:
    if not tools.enabled:
        return None
    return c.CompiledTools(
        upstreams=[
            c.CompiledToolUpstream(
                name=u.name,
                url=u.url.rstrip("/"),
                ttl_seconds=_seconds(u.ttl),
                timeout_seconds=_seconds(u.timeout),
                fields=u.fields,
                price_per_call=u.price_per_call,
            )
            for u in sorted(tools.upstreams, key=lambda u: u.name)
        ],
        mcp_servers=[
            c.CompiledMcpServer(
                name=m.name,
                url=m.url,
                ttl_seconds=_seconds(m.ttl),
                timeout_seconds=_seconds(m.timeout),
                allow=sorted(set(m.allow)),
                results={r.tool: r.fields for r in m.results},
                price_per_call=m.price_per_call,
            )
            for m in sorted(tools.mcp_servers, key=lambda m: m.name)
        ],
    )


def _shadow(shadow: Shadow) -> c.CompiledShadow | None:
    if not shadow.enabled:
        return None
    return c.CompiledShadow(
        sample=shadow.sample,
        max_spend_share=shadow.max_spend_share,
        compare=shadow.compare,
        similarity=shadow.similarity,
        judge_tier=shadow.judge_tier,
    )


TUNED = {"cascade": "cascade", "semantic_cache": "semantic", "routing": "routing"}
"""Each tunable lever, and the field of :class:`CompiledTuning` it moves."""


def _tuning(policy: CostPolicy) -> c.CompiledTuning:
    """The offsets ``shadow.autoTune`` wrote into the policy's status, while it is on."""
    shadow = policy.spec.shadow
    if not (shadow.enabled and shadow.auto_tune.enabled) or policy.status is None:
        return c.CompiledTuning()
    limit = shadow.auto_tune.max_offset
    return c.CompiledTuning(**{TUNED[t.lever]: min(t.offset, limit) for t in policy.status.tuning})


def _summary(prompt: Prompt) -> c.CompiledSummary | None:
    summary = prompt.summary
    if not summary.enabled or (prompt.history_window is None and prompt.history_tokens is None):
        return None
    return c.CompiledSummary(
        max_tokens=summary.max_tokens,
        ttl_seconds=_seconds(summary.ttl),
        timeout_seconds=_seconds(summary.timeout),
    )


def _seconds(duration: str) -> float:
    return parse_duration(duration).total_seconds()


def _secret(ref: SecretKeyRef | None) -> c.SecretKey | None:
    return c.SecretKey(name=ref.name, key=ref.key) if ref is not None else None


def _credentials(credentials: Credentials | None) -> c.SecretKey | None:
    return _secret(credentials.secret_ref) if credentials is not None else None


def _price(price: Price) -> c.Price:
    cached = price.cached_input if price.cached_input is not None else price.input
    return c.Price(
        input=price.input,
        output=price.output,
        cached_input=cached,
        batch_input=price.batch_input,
        batch_output=price.batch_output,
    )


def _cache(cache: Cache) -> c.CompiledCache:
    redis = cache.store.redis
    return c.CompiledCache(
        exact=c.CompiledExactCache(
            enabled=cache.exact.enabled, ttl_seconds=_seconds(cache.exact.ttl)
        ),
        semantic=c.CompiledSemanticCache(
            enabled=cache.semantic.enabled,
            threshold=(
                cache.semantic.threshold
                if cache.semantic.threshold is not None
                else DEFAULT_SEMANTIC_THRESHOLD
            ),
            ttl_seconds=_seconds(cache.semantic.ttl),
            budget=(
                c.CompiledWrongHitBudget(
                    max_wrong_share=budget.max_wrong_share,
                    min_similarity=budget.min_similarity,
                    explore=budget.explore,
                )
                if (budget := cache.semantic.wrong_hit_budget) is not None
                else None
            ),
        ),
        scope=c.CompiledScope(type=cache.scope.type, header=cache.scope.header),
        store=c.CompiledStore(
            type=cache.store.type,
            max_entries=cache.store.max_entries,
            max_memory_bytes=cache.store.max_memory_mib * 1024 * 1024,
            redis=(
                c.CompiledRedis(url=redis.url, password=_secret(redis.password_secret_ref))
                if redis is not None
                else None
            ),
        ),
        never=c.CompiledNever(
            with_tools=cache.never.with_tools,
            temperature_above=cache.never.temperature_above,
            headers=cache.never.headers,
        ),
    )


def _cascade(spec: CostPolicySpec) -> c.CompiledCascade | None:
    if not spec.cascade.enabled:
        return None
    confidence = spec.cascade.confidence
    return c.CompiledCascade(
        method=confidence.method,
        samples=confidence.samples,
        verifier_prompt=confidence.verifier_prompt,
        scorer=confidence.scorer,
        format_checks=confidence.format_checks,
    )


def _budget(spec: CostPolicySpec) -> c.CompiledBudget | None:
    budget = spec.budget
    if budget is None:
        return None
    return c.CompiledBudget(
        amount=budget.amount,
        period=budget.period,
        time_zone=budget.time_zone,
        on_exceeded=budget.on_exceeded,
        fail_mode=budget.fail_mode,
    )


def _retry(retry: Retry) -> c.CompiledRetry:
    return c.CompiledRetry(attempts=retry.attempts, timeout_seconds=_seconds(retry.timeout))


def _embedding(embedding: Embedding | None, namespace: str) -> c.CompiledEmbedding | None:
    if embedding is None:
        return None
    url = embedding.url
    if embedding.service is not None:
        service = embedding.service
        url = f"http://{service.name}.{namespace}.svc.cluster.local:{service.port}{service.path}"
    return c.CompiledEmbedding(
        provider=embedding.provider,
        model=embedding.model,
        url=url,
        credentials=_credentials(embedding.credentials),
        price=_price(embedding.price) if embedding.price is not None else None,
    )


def _embedding_users(policy: CostPolicy) -> str:
    """The field of the first feature of a policy that needs embeddings, or ``""``."""
    if policy.spec.cache.semantic.enabled:
        return "spec.cache.semantic.enabled"
    for i, domain in enumerate(policy.spec.routing.domains):
        if domain.examples:
            return f"spec.routing.domains[{i}].examples"
    if policy.spec.tools.pruning.enabled:
        return "spec.tools.pruning.enabled"
    if policy.spec.shadow.enabled and policy.spec.shadow.compare == "similarity":
        return "spec.shadow.compare"
    return ""


def _check_tier_references(policy: CostPolicy, route: ModelRoute, problem: ProblemSink) -> None:
    spec = policy.spec
    tiers = [t.name for t in route.spec.tiers]

    def check(path: str, tier: str) -> None:
        if tier not in tiers:
            problem(
                path,
                f'ModelRoute "{route.metadata.name}" has no tier "{tier}" '
                f"(it has {', '.join(tiers)})",
            )

    for i, tier in enumerate(spec.cascade.tiers):
        check(f"spec.cascade.tiers[{i}]", tier)
    known = [t for t in spec.cascade.tiers if t in tiers]
    if known != sorted(known, key=tiers.index):
        problem(
            "spec.cascade.tiers",
            f'must list tiers cheapest first, in the order of ModelRoute "{route.metadata.name}" '
            f"({', '.join(tiers)})",
        )
    for i, item in enumerate(spec.cascade.confidence.per_tier):
        check(f"spec.cascade.confidence.perTier[{i}].tier", item.tier)
    for i, item in enumerate(spec.routing.complexity.per_tier):
        check(f"spec.routing.complexity.perTier[{i}].tier", item.tier)
    for i, domain in enumerate(spec.routing.domains):
        check(f"spec.routing.domains[{i}].tier", domain.tier)
    if spec.shadow.enabled and spec.shadow.judge_tier is not None:
        check("spec.shadow.judgeTier", spec.shadow.judge_tier)


_T = TypeVar("_T", float, float | None)


def _threshold(per_tier: Sequence[TierThreshold], tier: str, default: _T) -> float | _T:
    return next((t.threshold for t in per_tier if t.tier == tier), default)


def _compile_route(
    policy: CostPolicy,
    route: ModelRoute,
    endpoints: Mapping[ServiceKey, Sequence[ServiceEndpoint]],
    problem: ProblemSink,
) -> CompiledRoute | None:
    spec = policy.spec
    namespace = route.metadata.namespace
    tiers = []
    for tier in route.spec.tiers:
        backends = [
            b
            for b in (
                _compile_backend(
                    namespace, route.metadata.name, tier, backend, spec.placement, endpoints
                )
                for backend in tier.backends
            )
            if b is not None
        ]
        if not backends:
            problem("spec.placement", _why_no_backend(route, tier, spec.placement))
            continue
        tiers.append(
            CompiledTier(
                name=tier.name,
                backends=backends,
                cascade_threshold=_threshold(
                    spec.cascade.confidence.per_tier, tier.name, spec.cascade.confidence.threshold
                ),
                routing_threshold=_threshold(
                    spec.routing.complexity.per_tier, tier.name, spec.routing.complexity.threshold
                ),
            )
        )
    if len(tiers) != len(route.spec.tiers):
        return None
    tiers = [_dense_priorities(t) for t in tiers]
    names = [t.name for t in tiers]
    cascade_tiers = (spec.cascade.tiers or names) if spec.cascade.enabled else []
    return CompiledRoute(
        name=route.metadata.name,
        model=route.spec.model,
        tiers=tiers,
        default_tier=route.spec.default_tier or names[-1],
        reference_tier=names[-1],
        cascade_tiers=list(cascade_tiers),
        retry=_retry(route.spec.retry),
        embedding=_embedding(route.spec.embedding, namespace),
    )


def _dense_priorities(tier: CompiledTier) -> CompiledTier:
    """Renumber a tier's endpoint priorities 0, 1, 2… keeping their order.

    Envoy expects priority levels without gaps, and the sidecar's failover
    walks them in order; capacity ranks alone leave gaps (no reserved → no 0).
    """
    used = sorted({e.priority for b in tier.backends for e in b.endpoints})
    rank = {p: i for i, p in enumerate(used)}
    backends = [
        b.model_copy(
            update={
                "endpoints": [
                    e.model_copy(update={"priority": rank[e.priority]}) for e in b.endpoints
                ]
            }
        )
        for b in tier.backends
    ]
    return tier.model_copy(update={"backends": backends})


def _why_no_backend(route: ModelRoute, tier: Tier, placement: Placement) -> str:
    where = f'tier "{tier.name}" of ModelRoute "{route.metadata.name}"'
    if placement.spot == "only" and all(b.capacity != "spot" for b in tier.backends):
        return f"spot: only leaves no backend for {where}"
    rule = placement.region
    regions = ", ".join(rule.allowed if rule.pinned is None else [rule.pinned])
    return f"{where} has no backend in the allowed regions ({regions})"


def _region_allowed(region: str | None, placement: Placement) -> bool:
    rule = placement.region
    if rule.strategy == "pinned" and region != rule.pinned:
        return False
    # A backend of unknown region cannot be shown to satisfy data residency.
    return not rule.allowed or region in rule.allowed


def _compile_backend(
    namespace: str,
    route_name: str,
    tier: Tier,
    backend: Backend,
    placement: Placement,
    endpoints: Mapping[ServiceKey, Sequence[ServiceEndpoint]],
) -> CompiledBackend | None:
    priorities = _CAPACITY_PRIORITY[placement.spot]
    candidates = _candidate_endpoints(namespace, backend, endpoints)
    kept = sorted(
        (
            e.model_copy(update={"priority": priorities[e.capacity]})
            for e in candidates
            if e.capacity in priorities and _region_allowed(e.region, placement)
        ),
        key=lambda e: (e.priority, e.url),
    )
    # A Service with no ready endpoint keeps its backend, since endpoints come
    # and go; a backend whose every endpoint the placement excludes is dropped.
    if candidates and not kept:
        return None
    price = backend.price
    assert price is not None  # check_route refused the route otherwise
    return CompiledBackend(
        name=backend.name,
        cluster=f"{namespace}/{route_name}/{tier.name}/{backend.name}",
        provider=backend.provider,
        model=backend.model,
        endpoints=kept,
        credentials=_credentials(backend.credentials),
        price=_price(price),
        weight=backend.weight,
        prompt_cache_key=backend.prompt_cache_key,
    )


def _candidate_endpoints(
    namespace: str, backend: Backend, endpoints: Mapping[ServiceKey, Sequence[ServiceEndpoint]]
) -> list[CompiledEndpoint]:
    if backend.url is not None:
        return [
            CompiledEndpoint(
                url=backend.url.rstrip("/"),
                region=backend.region,
                zone=backend.zone,
                capacity=backend.capacity,
            )
        ]
    service = backend.service
    assert service is not None  # Backend's rule: exactly one of url and service
    known = endpoints.get((namespace, service.name, service.port))
    if known is None:
        host = f"{service.name}.{namespace}.svc.cluster.local:{service.port}"
        return [
            CompiledEndpoint(
                url=f"http://{host}{service.path}".rstrip("/"),
                region=backend.region,
                zone=backend.zone,
                capacity=backend.capacity,
            )
        ]
    return [
        CompiledEndpoint(
            url=f"http://{_host(e.address)}:{e.port}{service.path}".rstrip("/"),
            region=e.region,
            zone=e.zone,
            capacity=e.capacity,
        )
        for e in known
    ]


def _host(address: str) -> str:
    return f"[{address}]" if ":" in address else address
