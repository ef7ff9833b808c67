"""``tokenomy demo``: the savings end to end on an embedded workload."""
