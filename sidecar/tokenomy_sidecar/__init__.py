"""The data plane: the OpenAI-compatible proxy and its request pipeline.

Not built yet (issue 3).
"""
