"""Tokenomy's API: the custom resources, the compiled sidecar config and the compiler.

Both the operator and the sidecar import this package and nothing of each
other; the compiled config (:mod:`tokenomy_api.compiled`) is the only thing
that crosses between them.
"""
