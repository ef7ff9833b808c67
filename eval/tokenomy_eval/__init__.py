"""Offline evaluation: how much routing and caching save, at what quality, on real data."""
