"""Spend: sidecars' usage reports counted per policy and period, budget leases, alerts.

``usage`` is the operator's end of the usage stream (ledgers, leases, what
status shows), ``totals`` the per-request aggregates behind status and
metrics, ``alerting`` the alert conditions judged against baselines.
"""
