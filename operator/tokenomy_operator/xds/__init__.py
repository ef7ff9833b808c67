"""Envoy's Aggregated Discovery Service, State of the World: snapshots and the server."""
