"""Routing: which tier a request starts on. The offline evaluation scores this same code."""
