"""The data plane: the OpenAI-compatible proxy and its request pipeline.

``app`` runs the servers; ``proxy`` is HTTP intake and the ordered stages;
``pipeline`` holds what a request becomes and how stages run and fail open;
``stages/`` has one module per stage, each owning its lookups, calls and
bookkeeping; ``respond`` writes answers. ``xds_client`` and ``sources`` bring
the config, ``budget_client`` the budget leases. Nothing here imports the
operator: both speak :mod:`tokenomy_api`.
"""
