"""The control plane: kopf handlers, the xDS snapshot cache and server, the webhook, status.

Layers, outermost first: ``cli`` wires the settings; ``handlers`` (kopf),
``webhook`` and ``leadership`` talk to the Kubernetes API; ``controller``
turns :class:`~tokenomy_operator.state.ClusterState` into snapshots (``xds/``)
and statuses; ``spend/`` counts usage, keeps budgets and judges alerts;
``state``, ``status``, ``injection`` and ``topology`` are pure. The compiler
it calls lives in :mod:`tokenomy_api.compiler`, since the standalone sidecar
needs it too.
"""
