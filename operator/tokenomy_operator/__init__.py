"""The control plane: kopf handlers, xDS snapshot cache and server, webhook, status.

Not built yet (issue 4). The compiler it will call lives in
:mod:`tokenomy_api.compiler` because the standalone sidecar needs it too.
"""
