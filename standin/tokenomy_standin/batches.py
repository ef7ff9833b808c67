"""The stand-in's OpenAI Batch API: files, batches, status, output and error files, cancel.

A batch runs ``batch_seconds`` after it is created (a provider takes hours;
tests need it quick): each line is answered as ``/v1/chat/completions``
would answer it, into an output file (200s) and an error file (the rest,
and lines that are not requests), in the provider's format.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

Complete = Callable[[dict[str, Any]], Awaitable[tuple[int, dict[str, Any]]]]
"""Answers one chat request body: (HTTP status, JSON body)."""


@dataclass
class Batches:
    """Files and batches of one stand-in."""

    complete: Complete
    batch_seconds: float = 0.05
    files: dict[str, tuple[dict[str, Any], bytes]] = field(default_factory=dict)
    batches: dict[str, dict[str, Any]] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)

    def routes(self, app: web.Application) -> None:
        """Register the endpoints on ``app``."""
        app.router.add_post("/v1/files", self.upload)
        app.router.add_get("/v1/files/{id}", self.file)
        app.router.add_get("/v1/files/{id}/content", self.content)
        app.router.add_post("/v1/batches", self.create)
        app.router.add_get("/v1/batches/{id}", self.batch)
        app.router.add_post("/v1/batches/{id}/cancel", self.cancel)

    def _store(self, name: str, purpose: str, data: bytes) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "id": f"file-{next(self._ids)}",
            "object": "file",
            "bytes": len(data),
            "created_at": int(time.time()),
            "filename": name,
            "purpose": purpose,
        }
        self.files[meta["id"]] = (meta, data)
        return meta

    async def upload(self, request: web.Request) -> web.Response:
        """``POST /v1/files`` (multipart: ``purpose``, ``file``)."""
        form = await request.post()
        upload = form.get("file")
        if not isinstance(upload, web.FileField):
            return _error(400, "a multipart field `file` is required")
        return web.json_response(
            self._store(upload.filename, str(form.get("purpose", "")), upload.file.read())
        )

    async def file(self, request: web.Request) -> web.Response:
        """``GET /v1/files/{id}``."""
        found = self.files.get(request.match_info["id"])
        return web.json_response(found[0]) if found else _error(404, "no such file")

    async def content(self, request: web.Request) -> web.Response:
        """``GET /v1/files/{id}/content``."""
        found = self.files.get(request.match_info["id"])
        if found is None:
            return _error(404, "no such file")
        return web.Response(body=found[1], content_type="application/jsonl")

    async def create(self, request: web.Request) -> web.Response:
        """``POST /v1/batches``."""
        body = await request.json()
        if body.get("input_file_id") not in self.files:
            return _error(400, "input_file_id names no file")
        batch = {
            "id": f"batch_{next(self._ids)}",
            "object": "batch",
            "endpoint": body.get("endpoint", "/v1/chat/completions"),
            "input_file_id": body["input_file_id"],
            "completion_window": body.get("completion_window", "24h"),
            "status": "validating",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": int(time.time()),
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
            "metadata": body.get("metadata"),
        }
        self.batches[batch["id"]] = batch
        self._tasks[batch["id"]] = asyncio.get_running_loop().create_task(self._run(batch))
        return web.json_response(batch)

    async def batch(self, request: web.Request) -> web.Response:
        """``GET /v1/batches/{id}``."""
        found = self.batches.get(request.match_info["id"])
        return web.json_response(found) if found else _error(404, "no such batch")

    async def cancel(self, request: web.Request) -> web.Response:
        """``POST /v1/batches/{id}/cancel``: lines not yet answered never are."""
        found = self.batches.get(request.match_info["id"])
        if found is None:
            return _error(404, "no such batch")
        if found["status"] in ("validating", "in_progress"):
            task = self._tasks.get(found["id"])
            if task is not None:
                task.cancel()
            found.update(status="cancelled", cancelled_at=int(time.time()))
        return web.json_response(found)

    async def _run(self, batch: dict[str, Any]) -> None:
        batch["status"] = "in_progress"
        batch["in_progress_at"] = int(time.time())
        await asyncio.sleep(self.batch_seconds)
        lines = self.files[batch["input_file_id"]][1].splitlines()
        out: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        for number, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                item = orjson.loads(line)
                custom_id, body = item["custom_id"], item["body"]
            except (orjson.JSONDecodeError, KeyError, TypeError):
                error = {"code": "invalid_request", "message": "not a request"}
                errors.append(
                    {
                        "id": f"batch_req_{number}",
                        "custom_id": None,
                        "response": None,
                        "error": error,
                    }
                )
                continue
            status, answer = await self.complete(body)
            result = {
                "id": f"batch_req_{number}",
                "custom_id": custom_id,
                "response": {"status_code": status, "request_id": f"req_{number}", "body": answer},
                "error": None,
            }
            (out if status == 200 else errors).append(result)
        counts = batch["request_counts"]
        counts.update(total=len(out) + len(errors), completed=len(out), failed=len(errors))
        for kind, items in (("output", out), ("error", errors)):
            if items:
                stored = self._store(f"{kind}.jsonl", "batch_output", _jsonl(items))
                batch[f"{kind}_file_id"] = stored["id"]
        batch.update(status="completed", completed_at=int(time.time()))


def _jsonl(items: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(i) + b"\n" for i in items)


def _error(status: int, message: str) -> web.Response:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": None,
                      "code": None}}  # fmt: skip
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")
