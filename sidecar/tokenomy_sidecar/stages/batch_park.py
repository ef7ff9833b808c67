"""The last stage of a batch job's line: wait for the job to send it.

A line that no cache answered and the budget admitted waits here until
every line of its job has got this far (or an answer of its own); the job
then sends the waiting lines together (:mod:`tokenomy_sidecar.batches`).
"""

from __future__ import annotations

from tokenomy_sidecar.pipeline import Answer, Exchange, Quiet


class Park(Quiet):
    """Hands the line to its job and answers with what the job got for it."""

    name = "batch"
    optional = False

    async def request(self, x: Exchange) -> Answer:
        """The job's answer to this line."""
        if x.park is None:
            raise RuntimeError("a batch line without its job")
        return await x.park(x)
