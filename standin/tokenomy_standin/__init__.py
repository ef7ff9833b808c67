"""A stand-in for paid model providers: our own OpenAI-compatible server.

Used by the tests, the benchmarks and the demo wherever a real provider
cannot run here. It speaks the real protocol — chat completions with and
without SSE streaming, embeddings, model listing — with configurable latency,
token usage, paced chunks and injected faults (500, 429, dropped connections,
streams cut in the middle).
"""
