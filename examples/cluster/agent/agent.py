"""Ask the model a fixed set of questions forever, one JSON line per answer.

Every line says what the sidecar said happened (cache, tier, cost) or the
error; the e2e scenarios read them with ``kubectl logs``.
"""

import itertools
import json
import os
import sys
import time

import openai

QUESTIONS = os.environ.get("AGENT_QUESTIONS", "hello|what is 2 + 2?").split("|")
PAUSE = float(os.environ.get("AGENT_PAUSE", "0.5"))
TASK_SIZE = int(os.environ.get("AGENT_TASK_SIZE", "0"))
"""Requests per task (x-tokenomy-task, for cost per task); 0 sends no task id."""
OUTCOMES = [o for o in os.environ.get("AGENT_TASK_OUTCOMES", "").split(",") if o]
"""Each task's outcome in turn (success or failure), sent on its last request as
x-tokenomy-task-outcome (for cost per successful task); empty sends none."""


def task_headers(n: int) -> dict[str, str] | None:
    """The headers of request ``n``: its task, and on a task's last request its outcome."""
    if not TASK_SIZE:
        return None
    task, step = divmod(n, TASK_SIZE)
    headers = {"x-tokenomy-task": f"task-{task}"}
    if OUTCOMES and step == TASK_SIZE - 1:
        headers["x-tokenomy-task-outcome"] = OUTCOMES[task % len(OUTCOMES)]
    return headers


client = openai.OpenAI(api_key="unused", max_retries=0, timeout=10)
for n, question in enumerate(itertools.cycle(QUESTIONS)):
    started = time.monotonic()
    try:
        raw = client.chat.completions.with_raw_response.create(
            model=os.environ.get("AGENT_MODEL", "chat"),
            messages=[{"role": "user", "content": question}],
            extra_headers=task_headers(n),
        )
        answer = raw.parse()
        line = {
            "n": n,
            "ok": True,
            "cache": raw.headers.get("x-tokenomy-cache"),
            "tier": raw.headers.get("x-tokenomy-tier"),
            "backend": raw.headers.get("x-tokenomy-backend"),
            "cost": raw.headers.get("x-tokenomy-cost-usd"),
            "answer": answer.choices[0].message.content,
        }
    except Exception as error:  # every failure is a line, never a crash
        line = {"n": n, "ok": False, "error": f"{type(error).__name__}: {error}"}
    line["seconds"] = round(time.monotonic() - started, 3)
    print(json.dumps(line), flush=True)
    sys.stdout.flush()
    time.sleep(PAUSE)
