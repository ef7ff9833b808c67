"""Render a compiled config as xDS resources: Tokenomy's own type, and Envoy clusters.

The sidecar reads the Tokenomy resource. The same snapshot carries each
tier as an Envoy Cluster (EDS) with a ClusterLoadAssignment, so a real Envoy
can be the egress proxy: locality = region/zone, priority = the compiled
capacity preference, endpoint metadata = the backend's price. Backends whose
URL names a host rather than an IP become DNS clusters with the assignment
inline, since EDS endpoints must be addresses.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from urllib.parse import urlsplit

from envoy.config.cluster.v3.circuit_breaker_pb2 import CircuitBreakers
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.cluster.v3.outlier_detection_pb2 import OutlierDetection
from envoy.config.core.v3.address_pb2 import Address, SocketAddress
from envoy.config.core.v3.base_pb2 import Locality, Metadata
from envoy.config.core.v3.config_source_pb2 import AggregatedConfigSource, ApiVersion, ConfigSource
from envoy.config.endpoint.v3.endpoint_components_pb2 import (
    Endpoint,
    LbEndpoint,
    LocalityLbEndpoints,
)
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from envoy.config.route.v3.route_components_pb2 import (
    HeaderMatcher,
    RetryPolicy,
    Route,
    RouteAction,
    RouteMatch,
    VirtualHost,
)
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from envoy.extensions.retry.host.previous_hosts.v3.previous_hosts_pb2 import PreviousHostsPredicate
from envoy.extensions.retry.priority.previous_priorities.v3.previous_priorities_config_pb2 import (
    PreviousPrioritiesConfig,
)
from envoy.type.matcher.v3.string_pb2 import StringMatcher
from google.protobuf.any_pb2 import Any as AnyProto
from google.protobuf.duration_pb2 import Duration
from google.protobuf.struct_pb2 import Struct
from google.protobuf.wrappers_pb2 import UInt32Value

from tokenomy_api import xds_type
from tokenomy_api.compiled import CompiledTier, SidecarConfig
from tokenomy_api.names import SIDECAR_CONFIG_TYPE_URL
from tokenomy_operator.xds.server import CLUSTER, ENDPOINT, ROUTE
from tokenomy_operator.xds.snapshot import Snapshot, make_snapshot


def _pack(message: object) -> AnyProto:
    packed = AnyProto()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def cluster_name(config: SidecarConfig, route: str, tier: str) -> str:
    """``namespace/route/tier``: one Envoy cluster per tier of a route."""
    return f"{config.policy.namespace}/{route}/{tier}"


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def load_assignment(name: str, tier: CompiledTier) -> ClusterLoadAssignment:
    """A tier's endpoints grouped by (priority, region, zone), with price metadata."""
    groups: dict[tuple[int, str, str], list[LbEndpoint]] = {}
    for backend in tier.backends:
        for endpoint in backend.endpoints:
            url = urlsplit(endpoint.url)
            port = url.port or (443 if url.scheme == "https" else 80)
            metadata = Struct()
            metadata.update(
                {
                    "backend": backend.name,
                    "model": backend.model,
                    "capacity": endpoint.capacity,
                    "price_input_usd_per_mtok": str(backend.price.input),
                    "price_output_usd_per_mtok": str(backend.price.output),
                }
            )
            key = (endpoint.priority, endpoint.region or "", endpoint.zone or "")
            groups.setdefault(key, []).append(
                LbEndpoint(
                    endpoint=Endpoint(
                        address=Address(
                            socket_address=SocketAddress(
                                address=url.hostname or "", port_value=port
                            )
                        )
                    ),
                    metadata=Metadata(filter_metadata={"tokenomy": metadata}),
                    load_balancing_weight=UInt32Value(value=max(1, backend.weight)),
                )
            )
    return ClusterLoadAssignment(
        cluster_name=name,
        endpoints=[
            LocalityLbEndpoints(
                locality=Locality(region=region, zone=zone), priority=priority, lb_endpoints=items
            )
            for (priority, region, zone), items in sorted(groups.items())
        ],
    )


def cluster(name: str, tier: CompiledTier, timeout_seconds: float) -> Cluster:
    """An Envoy cluster for a tier, ejecting failing endpoints like the sidecar does."""
    hosts = {urlsplit(e.url).hostname or "" for b in tier.backends for e in b.endpoints}
    common = {
        "name": name,
        "connect_timeout": Duration(seconds=max(1, int(min(timeout_seconds, 5)))),
        "outlier_detection": OutlierDetection(
            consecutive_5xx=UInt32Value(value=3),
            consecutive_gateway_failure=UInt32Value(value=1),
            base_ejection_time=Duration(seconds=1),
            max_ejection_percent=UInt32Value(value=100),
        ),
        # Envoy allows 3 concurrent retries per cluster by default: when a
        # backend dies with many requests in flight, the rest would fail.
        "circuit_breakers": CircuitBreakers(
            thresholds=[CircuitBreakers.Thresholds(max_retries=UInt32Value(value=1024))]
        ),
    }
    if all(_is_ip(h) for h in hosts):
        return Cluster(
            type=Cluster.EDS,
            eds_cluster_config=Cluster.EdsClusterConfig(
                eds_config=ConfigSource(
                    ads=AggregatedConfigSource(), resource_api_version=ApiVersion.V3
                )
            ),
            **common,
        )
    return Cluster(type=Cluster.STRICT_DNS, load_assignment=load_assignment(name, tier), **common)


MODEL_HEADER = "x-tokenomy-model"
"""Header an Envoy-egress client sets to pick a route (Envoy cannot read the JSON body)."""
TIER_HEADER = "x-tokenomy-tier"
"""Header an Envoy-egress client sets to pick a tier; the route's default tier otherwise."""
RETRY_ON = "connect-failure,refused-stream,reset,gateway-error,retriable-status-codes"


def _retry_policy(attempts: int) -> RetryPolicy:
    """Retry on a failed connection, reset, 502-504 and 429, on other hosts and priorities.

    Without previous_priorities and previous_hosts, failover after an endpoint
    moved between priorities lost requests for up to a second (DESIGN.md).
    """
    priorities = AnyProto()
    priorities.Pack(PreviousPrioritiesConfig(update_frequency=2))
    hosts = AnyProto()
    hosts.Pack(PreviousHostsPredicate())
    return RetryPolicy(
        retry_on=RETRY_ON,
        retriable_status_codes=[429],
        num_retries=UInt32Value(value=max(1, attempts - 1)),
        retry_priority=RetryPolicy.RetryPriority(
            name="envoy.retry_priorities.previous_priorities", typed_config=priorities
        ),
        retry_host_predicate=[
            RetryPolicy.RetryHostPredicate(
                name="envoy.retry_host_predicates.previous_hosts", typed_config=hosts
            )
        ],
        host_selection_retry_max_attempts=3,
    )


def _header(name: str, value: str) -> HeaderMatcher:
    return HeaderMatcher(name=name, string_match=StringMatcher(exact=value))


def route_configuration(config: SidecarConfig) -> RouteConfiguration:
    """Envoy routes for the policy, named after it, for an Envoy used as the egress proxy.

    ``x-tokenomy-model`` picks the route and ``x-tokenomy-tier`` the tier; a
    request without them goes to the first route's default tier.
    """
    routes = []
    for route in config.routes:
        retry = _retry_policy(route.retry.attempts)
        timeout = Duration(seconds=max(1, int(route.retry.timeout_seconds)))
        for tier in route.tiers:
            routes.append(
                Route(
                    match=RouteMatch(
                        prefix="/",
                        headers=[
                            _header(MODEL_HEADER, route.model),
                            _header(TIER_HEADER, tier.name),
                        ],
                    ),
                    route=RouteAction(
                        cluster=cluster_name(config, route.name, tier.name),
                        timeout=timeout,
                        retry_policy=retry,
                    ),
                )
            )
        routes.append(
            Route(
                match=RouteMatch(prefix="/", headers=[_header(MODEL_HEADER, route.model)]),
                route=RouteAction(
                    cluster=cluster_name(config, route.name, route.default_tier),
                    timeout=timeout,
                    retry_policy=retry,
                ),
            )
        )
    first = config.routes[0]
    routes.append(
        Route(
            match=RouteMatch(prefix="/"),
            route=RouteAction(
                cluster=cluster_name(config, first.name, first.default_tier),
                timeout=Duration(seconds=max(1, int(first.retry.timeout_seconds))),
                retry_policy=_retry_policy(first.retry.attempts),
            ),
        )
    )
    return RouteConfiguration(
        name=config.policy.key,
        virtual_hosts=[VirtualHost(name="tokenomy", domains=["*"], routes=routes)],
    )


def snapshot_for(config: SidecarConfig) -> Snapshot:
    """Every resource a node of this policy should have."""
    clusters: dict[str, AnyProto] = {}
    assignments: dict[str, AnyProto] = {}
    for route in config.routes:
        for tier in route.tiers:
            name = cluster_name(config, route.name, tier.name)
            built = cluster(name, tier, route.retry.timeout_seconds)
            clusters[name] = _pack(built)
            if built.type == Cluster.EDS:
                assignments[name] = _pack(load_assignment(name, tier))
    tokenomy = AnyProto(type_url=SIDECAR_CONFIG_TYPE_URL, value=xds_type.encode(config))
    resources: Mapping[str, Mapping[str, AnyProto]] = {
        CLUSTER: clusters,
        ENDPOINT: assignments,
        ROUTE: {config.policy.key: _pack(route_configuration(config))} if config.routes else {},
        SIDECAR_CONFIG_TYPE_URL: {config.policy.key: tokenomy},
    }
    # The config's own version, so that what a sidecar ACKs is what status shows.
    return make_snapshot(resources, {SIDECAR_CONFIG_TYPE_URL: config.version})
