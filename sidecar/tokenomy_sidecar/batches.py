"""Batch jobs through the sidecar: the OpenAI Batch API (``/v1/files``, ``/v1/batches``).

An app uploads a JSONL file of chat requests and creates a batch; the
sidecar runs each line through the chat pipeline like a live request —
partition, trimming, the exact and semantic caches, tool pruning, routing,
the budget — up to :class:`~tokenomy_sidecar.stages.batch_park.Park`. A line
a cache answers is never sent. Once every line has an answer or waits at
the park, the waiting lines are sent together: to the provider's own Batch
API (and priced at its batch price) where the backend has one
(``price.batchInput``/``batchOutput``), otherwise live, a few at a time.
Each line's reservation is taken before anything is sent and settled when
its answer comes, so the job never spends past the budget.

A line the cascade would decide goes to the cascade's last tier: a batch
cannot wait for one tier's answer to choose the next, and the strongest
tier is the one that keeps quality. Jobs and files live in the sidecar's
memory: a restarted sidecar has forgotten them (a provider batch it
submitted still runs, and is billed, at the provider).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from tokenomy_api.clock import Clock, SystemClock
from tokenomy_sidecar.errors import ApiError, error_response
from tokenomy_sidecar.pipeline import Answer, Exchange, Pipeline
from tokenomy_sidecar.request import parse_chat
from tokenomy_sidecar.routing.decision import walk
from tokenomy_sidecar.runtime import ConfigHolder, Runtime
from tokenomy_sidecar.stages.backend_choice import Candidate, rank
from tokenomy_sidecar.stages.exact_cache import hit
from tokenomy_sidecar.stages.metering import Meter, Usage
from tokenomy_sidecar.stages.upstream import Caller, Reply, completion_of
from tokenomy_sidecar.tasks import TASK_HEADER, TASK_MAX

log = logging.getLogger(__name__)

ENDPOINT = "/v1/chat/completions"
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
LIVE_CONCURRENCY = 8
"""Lines of a job sent live at once, to a backend without a Batch API."""


@dataclass
class FileStore:
    """Uploaded and result files, in memory, up to ``max_bytes`` in all."""

    clock: Clock = field(default_factory=SystemClock)
    """Dates files (``created_at``)."""
    max_bytes: int = 256 * 1024 * 1024
    files: dict[str, tuple[dict[str, Any], bytes]] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def add(self, name: str, purpose: str, data: bytes) -> dict[str, Any]:
        """Store a file; ApiError when the store is full."""
        used = sum(len(d) for _, d in self.files.values())
        if used + len(data) > self.max_bytes:
            raise ApiError(400, f"the sidecar's file store is full ({self.max_bytes} bytes)")
        meta: dict[str, Any] = {
            "id": f"file-tk{next(self._ids)}",
            "object": "file",
            "bytes": len(data),
            "created_at": int(self.clock.wall()),
            "filename": name,
            "purpose": purpose,
        }
        self.files[meta["id"]] = (meta, data)
        return meta

    def get(self, file_id: str) -> tuple[dict[str, Any], bytes]:
        """A file, or a 404."""
        found = self.files.get(file_id)
        if found is None:
            raise ApiError(404, f"no file `{file_id}`", code="not_found")
        return found


@dataclass
class Line:
    """One line of a job and what became of it."""

    number: int
    custom_id: str
    status: int = 0
    body: Any = None
    """The answer (a completion) or the error body."""


@dataclass
class Job:
    """A batch: its lines, its state, and the lines waiting to be sent."""

    id: str
    input_file_id: str
    completion_window: str
    metadata: Any
    created_at: int
    status: str = "validating"
    lines: list[Line] = field(default_factory=list)
    output_file_id: str | None = None
    error_file_id: str | None = None
    times: dict[str, int] = field(default_factory=dict)
    waiting: list[tuple[Exchange, asyncio.Future[Answer]]] = field(default_factory=list)
    finished: int = 0
    """Lines answered without waiting (a cache hit, a refusal)."""
    all_in: asyncio.Event = field(default_factory=asyncio.Event)
    """Every line answered or waiting: the waiting ones can go."""
    provider_batches: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    """(endpoint URL, batch id, headers) of what was submitted to providers."""
    cancelled: bool = False

    def check(self) -> None:
        """Let the waiting lines go once nothing else can arrive."""
        if len(self.waiting) + self.finished >= len(self.lines):
            self.all_in.set()

    def api_object(self) -> dict[str, Any]:
        """The job as the Batch API shows it."""
        done = [line for line in self.lines if line.status]
        failed = sum(line.status != 200 for line in done)
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": ENDPOINT,
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": self.created_at,
            **self.times,
            "request_counts": {
                "total": len(self.lines),
                "completed": len(done) - failed,
                "failed": failed,
            },
            "metadata": self.metadata,
            "errors": None,
        }


def read_lines(data: bytes) -> list[tuple[str, dict[str, Any] | None, str]]:
    """Each non-empty line's (custom_id, chat body or None, why it is not a request)."""
    out: list[tuple[str, dict[str, Any] | None, str]] = []
    for number, raw in enumerate(data.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            item = orjson.loads(raw)
        except orjson.JSONDecodeError:
            out.append((f"line-{number}", None, f"line {number} is not JSON"))
            continue
        if not isinstance(item, dict) or not isinstance(item.get("body"), dict):
            out.append((f"line-{number}", None, f"line {number} has no `body` object"))
            continue
        custom_id = item.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            out.append((f"line-{number}", None, f"line {number} has no `custom_id`"))
        elif item.get("url", ENDPOINT) != ENDPOINT:
            out.append((custom_id, None, f"line {number}: only {ENDPOINT} is served in batches"))
        else:
            out.append((custom_id, item["body"], ""))
    return out


class Batches:
    """The Batch API's endpoints and the jobs they run."""

    def __init__(
        self,
        holder: ConfigHolder,
        pipeline: Pipeline,
        caller: Caller,
        meter: Meter,
        session: aiohttp.ClientSession,
        clock: Clock,
        max_body_bytes: int,
        poll_seconds: float = 30.0,
    ) -> None:
        self.holder = holder
        self.pipeline = pipeline
        self.caller = caller
        self.meter = meter
        self.session = session
        self.clock = clock
        self.max_body_bytes = max_body_bytes
        self.poll_seconds = poll_seconds
        self.files = FileStore(clock)
        self.jobs: dict[str, Job] = {}
        self._ids = itertools.count(1)
        self._running: set[asyncio.Task[None]] = set()

    def routes(self, app: web.Application) -> None:
        """Register the endpoints."""
        app.router.add_post("/v1/files", self.upload)
        app.router.add_get("/v1/files/{id}", self.file)
        app.router.add_get("/v1/files/{id}/content", self.content)
        app.router.add_post("/v1/batches", self.create)
        app.router.add_get("/v1/batches", self.list)
        app.router.add_get("/v1/batches/{id}", self.get)
        app.router.add_post("/v1/batches/{id}/cancel", self.cancel)

    async def close(self) -> None:
        """Stop the jobs still running (their provider batches are cancelled)."""
        for job in self.jobs.values():
            if job.status not in TERMINAL:
                await self._cancel_provider(job)
        for task in list(self._running):
            task.cancel()

    # --- endpoints -------------------------------------------------------------

    async def upload(self, request: web.Request) -> web.Response:
        """``POST /v1/files`` (multipart: ``purpose``, ``file``)."""
        try:
            form = await request.post()
        except (ValueError, web.HTTPRequestEntityTooLarge):
            return error_response(413, f"a file larger than {self.max_body_bytes} bytes")
        upload = form.get("file")
        if not isinstance(upload, web.FileField):
            return error_response(400, "a multipart field `file` is required", param="file")
        purpose = str(form.get("purpose", ""))
        if purpose != "batch":
            return error_response(400, "only files for `purpose: batch` are kept", param="purpose")
        try:
            meta = self.files.add(upload.filename, purpose, upload.file.read())
        except ApiError as error:
            return error.response()
        return web.json_response(meta)

    async def file(self, request: web.Request) -> web.Response:
        """``GET /v1/files/{id}``."""
        try:
            return web.json_response(self.files.get(request.match_info["id"])[0])
        except ApiError as error:
            return error.response()

    async def content(self, request: web.Request) -> web.Response:
        """``GET /v1/files/{id}/content``."""
        try:
            data = self.files.get(request.match_info["id"])[1]
        except ApiError as error:
            return error.response()
        return web.Response(body=data, content_type="application/jsonl")

    async def create(self, request: web.Request) -> web.Response:
        """``POST /v1/batches``: the job starts at once."""
        runtime = self.holder.current
        if runtime is None:
            return error_response(503, "the sidecar has no configuration yet", "server_error")
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return error_response(400, "body is not JSON")
        if not isinstance(body, dict):
            return error_response(400, "body must be an object")
        if body.get("endpoint") != ENDPOINT:
            return error_response(400, f"`endpoint` must be {ENDPOINT}", param="endpoint")
        try:
            _, data = self.files.get(str(body.get("input_file_id")))
        except ApiError as error:
            error.param = "input_file_id"
            return error.response()
        job = Job(
            id=f"batch_tk{next(self._ids)}",
            input_file_id=str(body["input_file_id"]),
            completion_window=str(body.get("completion_window", "24h")),
            metadata=body.get("metadata"),
            created_at=int(self.clock.wall()),
        )
        self.jobs[job.id] = job
        task = asyncio.get_running_loop().create_task(
            self._run(job, runtime, data, dict(request.headers))
        )
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        return web.json_response(job.api_object())

    async def get(self, request: web.Request) -> web.Response:
        """``GET /v1/batches/{id}``."""
        job = self.jobs.get(request.match_info["id"])
        if job is None:
            return error_response(404, f"no batch `{request.match_info['id']}`", code="not_found")
        return web.json_response(job.api_object())

    async def list(self, request: web.Request) -> web.Response:
        """``GET /v1/batches``: newest first."""
        data = [job.api_object() for job in reversed(self.jobs.values())]
        return web.json_response({"object": "list", "data": data, "has_more": False})

    async def cancel(self, request: web.Request) -> web.Response:
        """``POST /v1/batches/{id}/cancel``: lines not answered yet never are."""
        job = self.jobs.get(request.match_info["id"])
        if job is None:
            return error_response(404, f"no batch `{request.match_info['id']}`", code="not_found")
        if job.status not in TERMINAL:
            job.cancelled = True
            job.status = "cancelling"
            job.times["cancelling_at"] = int(self.clock.wall())
            job.all_in.set()
            await self._cancel_provider(job)
        return web.json_response(job.api_object())

    # --- running a job ----------------------------------------------------------

    async def _run(
        self, job: Job, runtime: Runtime, data: bytes, headers: Mapping[str, str]
    ) -> None:
        parsed = read_lines(data)
        job.lines = [Line(n, custom_id) for n, (custom_id, _, _) in enumerate(parsed)]
        job.status = "in_progress"
        job.times["in_progress_at"] = int(self.clock.wall())
        tasks = []
        for line, (_, body, problem) in zip(job.lines, parsed, strict=True):
            if body is None:
                self._refuse(job, line, 400, problem)
                continue
            tasks.append(asyncio.create_task(self._line(job, runtime, line, body, headers)))
        job.check()
        await job.all_in.wait()
        try:
            await self._send(job)
        finally:
            for _, future in job.waiting:
                if not future.done():
                    future.set_exception(
                        ApiError(499 if job.cancelled else 502, "the batch line was not answered")
                    )
        await asyncio.gather(*tasks, return_exceptions=True)
        self._write_results(job)

    def _refuse(self, job: Job, line: Line, status: int, message: str) -> None:
        line.status = status
        line.body = {"error": {"message": message, "type": "invalid_request_error"}}
        job.finished += 1

    async def _line(
        self,
        job: Job,
        runtime: Runtime,
        line: Line,
        body: dict[str, Any],
        headers: Mapping[str, str],
    ) -> None:
        """One line through the pipeline; answered there, or by the job once it waited."""
        waited = False

        async def park(x: Exchange) -> Answer:
            nonlocal waited
            waited = True
            future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
            job.waiting.append((x, future))
            job.check()
            return await future

        try:
            body = {**body, "stream": False}
            raw = orjson.dumps(body)
            chat = parse_chat(raw)
            route = runtime.routes.get(chat.model)
            if route is None:
                raise ApiError(404, f"model `{chat.model}` is not served here", code="not_found")
            header = runtime.config.attribution.header
            x = Exchange(
                runtime, route, raw, chat, self.clock.monotonic(), client_headers=headers,
                feature=headers.get(header) if header else None,
                task=headers.get(TASK_HEADER, "")[:TASK_MAX], park=park,
            )  # fmt: skip
        except ApiError as error:
            self._refuse(job, line, error.status, error.message)
            job.check()
            return
        try:
            answer, ran = await self.pipeline.run(x)
            if answer.fresh and answer.completion is not None:
                await self.pipeline.store(x, answer, ran)
            line.status = answer.status
            line.body = answer.completion if answer.completion is not None else _json(answer.body)
        except ApiError as error:
            line.status = error.status
            line.body = {"error": {"message": error.message, "type": error.kind,
                                   "code": error.code}}  # fmt: skip
        except Exception:
            log.exception("batch %s line %s failed", job.id, line.custom_id)
            line.status = 500
            line.body = {"error": {"message": "the sidecar failed on this line"}}
        finally:
            await self.pipeline.close(x)
            if not waited:
                job.finished += 1
                job.check()

    async def _send(self, job: Job) -> None:
        """Send the waiting lines: grouped per provider Batch API, the rest live."""
        if job.cancelled:
            return
        groups: dict[tuple[str, str], list[tuple[Exchange, asyncio.Future[Answer], Candidate]]] = {}
        live: list[tuple[Exchange, asyncio.Future[Answer]]] = []
        firsts: dict[tuple[str, str], asyncio.Future[Answer]] = {}
        repeats: list[tuple[Exchange, asyncio.Future[Answer], asyncio.Future[Answer]]] = []
        for x, future in job.waiting:
            self._final_tier(x)
            # A line the exact cache would answer once its twin is answered: sent once.
            same = (x.cache.key, x.routing.tier.name)
            if x.cache.key and x.cache.decision.lookup:
                if same in firsts:
                    repeats.append((x, future, firsts[same]))
                    continue
                firsts[same] = future
            candidates = rank(
                x.routing.tier, x.runtime.config.placement, self.caller.pod_region,
                self.caller.upstream.health.endpoints, self.clock.monotonic(), self.caller.rng,
            )  # fmt: skip
            first = candidates[0] if candidates else None
            if first is not None and first.backend.price.batch() is not None:
                key = (first.backend.cluster, first.endpoint.url)
                groups.setdefault(key, []).append((x, future, first))
            else:
                live.append((x, future))
        await asyncio.gather(
            *(self._provider_batch(job, lines) for lines in groups.values()),
            self._live(live),
        )
        for x, future, twin in repeats:
            self._repeat(x, future, twin)

    def _repeat(
        self, x: Exchange, future: asyncio.Future[Answer], twin: asyncio.Future[Answer]
    ) -> None:
        """Answer a line from its twin's answer, as an exact cache hit (it costs nothing)."""
        if twin.exception() is not None:
            future.set_exception(twin.exception() or RuntimeError())
            return
        answer = twin.result()
        if answer.completion is None or answer.reply is None or answer.status != 200:
            future.set_result(answer)  # the same failure, not billed twice
            return
        tier, backend = x.routing.tier.name, answer.reply.candidate.backend.name
        entry = f"{tier}\n{backend}\n".encode() + orjson.dumps(answer.completion)
        self.meter.metrics.cache_lookups.labels(*x.labels, "exact", "coalesced").inc()
        future.set_result(hit(x, self.meter, entry, "exact"))

    @staticmethod
    def _final_tier(x: Exchange) -> None:
        """Where the cascade would decide, its last tier answers."""
        routing = x.routing
        if routing.straight or x.runtime.config.cascade is None:
            return
        tiers = walk(x.route, routing.tier.name)
        if len(tiers) > 1:
            routing.tier = x.route.tier(tiers[-1])
            routing.reason = f"{routing.reason}; batch: cascade's last tier"

    async def _live(self, lines: Sequence[tuple[Exchange, asyncio.Future[Answer]]]) -> None:
        gate = asyncio.Semaphore(LIVE_CONCURRENCY)

        async def one(x: Exchange, future: asyncio.Future[Answer]) -> None:
            async with gate:
                try:
                    reply = await self.caller.send(x, x.routing.tier, x.chat.body)
                except ApiError as error:
                    future.set_exception(error)
                    return
            future.set_result(self._answer(x, reply))

        await asyncio.gather(*(one(x, f) for x, f in lines))

    def _answer(self, x: Exchange, reply: Reply) -> Answer:
        """Meter and settle one line's reply, as Forward does for a live request."""
        x.answered_by(reply)
        completion = completion_of(reply)
        usage = Usage.from_openai(completion.get("usage")) if completion is not None else Usage()
        self.meter.call(x, reply, usage)
        self.meter.settle(x, reply, usage, x.source)
        return Answer(x.source, status=reply.status, body=reply.body, completion=completion,
                      reply=reply)  # fmt: skip

    async def _provider_batch(
        self, job: Job, lines: Sequence[tuple[Exchange, asyncio.Future[Answer], Candidate]]
    ) -> None:
        """Submit lines to a backend's Batch API, wait for it, answer each line."""
        candidate = lines[0][2]
        backend, url = candidate.backend, candidate.endpoint.url
        price = backend.price.batch()
        assert price is not None
        priced = Candidate(backend.model_copy(update={"price": price}), candidate.endpoint)
        headers: dict[str, str] = {}
        key = lines[0][0].runtime.credential(backend)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        payload = b"".join(
            orjson.dumps({"custom_id": str(i), "method": "POST", "url": ENDPOINT,
                          "body": {**x.chat.body, "model": backend.model}}) + b"\n"
            for i, (x, _, _) in enumerate(lines)
        )  # fmt: skip
        try:
            results = await self._submit(job, url, headers, payload)
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as error:
            log.warning("batch %s: %s's Batch API failed: %s", job.id, backend.name, error)
            for _, future, _ in lines:
                future.set_exception(
                    ApiError(502, f"backend {backend.name}'s Batch API failed: {error}",
                             "server_error", code="upstream_unavailable")
                )  # fmt: skip
            return
        for i, (x, future, _) in enumerate(lines):
            found = results.get(str(i))
            if found is None:
                future.set_exception(
                    ApiError(499 if job.cancelled else 502, "the provider's batch left this line "
                             "unanswered", "server_error")
                )  # fmt: skip
                continue
            status, body = found
            reply = Reply(priced, status, "application/json", body=orjson.dumps(body))
            future.set_result(self._answer(x, reply))

    async def _submit(
        self, job: Job, url: str, headers: dict[str, str], payload: bytes
    ) -> dict[str, tuple[int, Any]]:
        """Upload, create, poll until done, download: each custom id's (status, body)."""
        form = aiohttp.FormData()
        form.add_field("purpose", "batch")
        form.add_field("file", payload, filename="batch.jsonl", content_type="application/jsonl")
        async with self.session.post(f"{url}/files", data=form, headers=headers) as response:
            response.raise_for_status()
            file_id = (await response.json())["id"]
        create = {"input_file_id": file_id, "endpoint": ENDPOINT, "completion_window": "24h"}
        async with self.session.post(f"{url}/batches", json=create, headers=headers) as response:
            response.raise_for_status()
            batch = await response.json()
        job.provider_batches.append((url, batch["id"], headers))
        while batch["status"] not in TERMINAL:
            await asyncio.sleep(self.poll_seconds)
            async with self.session.get(f"{url}/batches/{batch['id']}", headers=headers) as r:
                r.raise_for_status()
                batch = await r.json()
        results: dict[str, tuple[int, Any]] = {}
        for kind in ("output_file_id", "error_file_id"):
            if not batch.get(kind):
                continue
            async with self.session.get(
                f"{url}/files/{batch[kind]}/content", headers=headers
            ) as response:
                response.raise_for_status()
                data = await response.read()
            for raw in data.splitlines():
                item = orjson.loads(raw) if raw.strip() else None
                if isinstance(item, dict) and isinstance(item.get("response"), dict):
                    answer = item["response"]
                    results[str(item.get("custom_id"))] = (
                        int(answer.get("status_code", 500)), answer.get("body"),
                    )  # fmt: skip
        return results

    async def _cancel_provider(self, job: Job) -> None:
        for url, batch_id, headers in job.provider_batches:
            try:
                async with self.session.post(
                    f"{url}/batches/{batch_id}/cancel", headers=headers
                ) as response:
                    await response.read()
            except aiohttp.ClientError:
                log.warning("batch %s: could not cancel %s at %s", job.id, batch_id, url)

    def _write_results(self, job: Job) -> None:
        out: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        for line in job.lines:
            item = {
                "id": f"batch_req_{job.id}_{line.number}",
                "custom_id": line.custom_id,
                "response": {"status_code": line.status, "request_id": "", "body": line.body},
                "error": None,
            }
            (out if line.status == 200 else errors).append(item)
        for kind, items in (("output", out), ("error", errors)):
            if items:
                data = b"".join(orjson.dumps(i) + b"\n" for i in items)
                try:
                    meta = self.files.add(f"{job.id}_{kind}.jsonl", "batch_output", data)
                except ApiError:
                    log.warning("batch %s: the file store is full, %s file lost", job.id, kind)
                    continue
                setattr(job, f"{kind}_file_id", meta["id"])
        job.status = "cancelled" if job.cancelled else "completed"
        job.times["cancelled_at" if job.cancelled else "completed_at"] = int(self.clock.wall())


def _json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return {"error": {"message": body.decode("utf-8", "replace")[:500]}}
