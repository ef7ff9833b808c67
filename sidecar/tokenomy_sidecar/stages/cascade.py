"""Stage 5: the cascade — try cheaper tiers in turn, judge each answer, escalate.

A try sends the request to a cheaper tier as built here (never streamed:
the answer is judged whole before the client sees a byte), picks the choice
to judge and its confidence with the policy's method, and hands the client
an answer shaped like the one it asked for. Every try and verifier call is
metered; the first answer judged good enough is served, else the last tier
answers as usual (the forward stage).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from typing import Any

from tokenomy_api.compiled import CompiledCascade, CompiledTier
from tokenomy_sidecar.metrics import Metrics
from tokenomy_sidecar.pipeline import Answer, Exchange, Quiet
from tokenomy_sidecar.routing.confidence import (
    DEFAULT_VERIFIER_PROMPT,
    Verdict,
    agreement,
    content,
    format_problem,
    judge,
    logprob_confidence,
    parse_verdict,
    verifier_messages,
)
from tokenomy_sidecar.routing.decision import walk
from tokenomy_sidecar.routing.scorer import AnswerScorer
from tokenomy_sidecar.stages.metering import Meter, Usage, usd
from tokenomy_sidecar.stages.semantic_cache import question
from tokenomy_sidecar.stages.upstream import Caller, Reply, completion_of

log = logging.getLogger(__name__)

VERIFIER_MAX_TOKENS = 8
DEFAULT_THRESHOLD = 0.7
"""Confidence a kept answer needs when neither the tier nor the policy sets one."""


def cascade_threshold(
    tier: CompiledTier, confidence: CompiledCascade, scorer: AnswerScorer | None
) -> float:
    """The tier's own threshold, else the policy's, else the scorer's cut or the default."""
    if tier.cascade_threshold is not None:
        return tier.cascade_threshold
    if confidence.method == "scorer" and scorer is not None:
        return scorer.cut
    return DEFAULT_THRESHOLD


def trial_body(body: Mapping[str, Any], confidence: CompiledCascade) -> dict[str, Any]:
    """The request as a cheaper tier gets it: whole (not streamed), with what judging needs."""
    trial = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
    if confidence.method == "logprobs":
        trial["logprobs"] = True
    if confidence.method == "agreement":
        trial["n"] = confidence.samples
    return trial


def pick(
    completion: Mapping[str, Any],
    confidence: CompiledCascade,
    question: str,
    scorer: AnswerScorer | None,
) -> tuple[dict[str, Any], float | None]:
    """The choice to judge and, for methods that need no further call, its confidence.

    ``verifier`` and ``format`` return None: the verifier's call comes next,
    and ``format`` judges by the format checks alone.
    """
    choices = [c for c in completion.get("choices") or [] if isinstance(c, dict)]
    if not choices:
        raise ValueError("the answer has no choices")
    method = confidence.method
    if method == "logprobs":
        return choices[0], logprob_confidence(choices[0])
    if method == "agreement":
        index, share = agreement(choices)
        return choices[index], share
    if method == "scorer":
        if scorer is None:
            return choices[0], None
        return choices[0], scorer.score(question, content(choices[0]))
    return choices[0], None


def client_answer(
    completion: Mapping[str, Any], choice: Mapping[str, Any], request: Mapping[str, Any]
) -> dict[str, Any]:
    """The kept answer as the client asked for it: one choice, logprobs only if it asked."""
    kept = copy.deepcopy(dict(choice))
    kept["index"] = 0
    if not request.get("logprobs"):
        kept["logprobs"] = None
    return {**completion, "choices": [kept]}


class Cascade(Quiet):
    """Serves a cheaper tier's answer when it is judged good enough."""

    name = "cascade"
    optional = False

    def __init__(self, caller: Caller, meter: Meter, metrics: Metrics) -> None:
        self.caller = caller
        self.meter = meter
        self.metrics = metrics

    async def request(self, x: Exchange) -> Answer | None:
        """Try the cheaper tiers in turn; the first answer judged good enough answers.

        Returns None when every cheaper tier was passed over: the routing
        record then names the last tier, which answers as usual.
        """
        routing = x.routing
        tiers = [routing.tier.name] if routing.straight else walk(x.route, routing.tier.name)
        if len(tiers) < 2:
            return None
        confidence = x.runtime.config.cascade
        assert confidence is not None  # the compiler sets it whenever cascade tiers exist
        text = question(x.chat.body) or ""
        trail = []
        for name in tiers[:-1]:
            routing.tier = x.route.tier(name)
            kept: dict[str, Any] | None = None
            reply: Reply | None = None
            try:
                verdict, kept, reply = await self._try(x, routing.tier, confidence, text)
            except Exception as error:
                # A tier that fails, or an answer that cannot be judged, escalates.
                log.warning("cascade try on %s failed: %s", name, error)
                verdict = Verdict(False, None, "error")
            shown = f" {verdict.confidence:.2f}" if verdict.confidence is not None else ""
            trail.append(f"{name} {verdict.reason}{shown}")
            if verdict.accept and kept is not None and reply is not None:
                routing.reason = f"{routing.reason}; cascade: {', '.join(trail)}"
                x.answered_by(reply)
                x.headers["x-tokenomy-cost-usd"] = usd(x.spend.spent)
                self.meter.settle(x, reply, Usage.from_openai(kept.get("usage")), x.source)
                return Answer(x.source, completion=kept, reply=reply)
            self.metrics.escalations.labels(*x.labels, name, verdict.reason).inc()
        routing.tier = x.route.tier(tiers[-1])
        routing.reason = f"{routing.reason}; cascade: {', '.join(trail)} -> {tiers[-1]}"
        return None

    async def _try(
        self, x: Exchange, tier: CompiledTier, confidence: CompiledCascade, text: str
    ) -> tuple[Verdict, dict[str, Any] | None, Reply]:
        """One try: ask the tier, judge its answer; every call is metered."""
        reply = await self.caller.send(x, tier, trial_body(x.chat.body, confidence))
        completion = completion_of(reply)
        self.meter.call(
            x, reply, Usage.from_openai(completion.get("usage") if completion else None)
        )
        if completion is None:
            return Verdict(False, None, "error"), None, reply
        choice, value = pick(completion, confidence, text, x.runtime.scorer)
        if confidence.method == "verifier":
            value = await self._verify(x, tier, confidence, text, content(choice))
        checks = confidence.format_checks or confidence.method == "format"
        problem = format_problem(choice, x.chat.body) if checks else None
        tightened = x.runtime.config.tuning.cascade  # by shadow comparison
        threshold = min(1.0, cascade_threshold(tier, confidence, x.runtime.scorer) + tightened)
        verdict = judge(confidence.method, value, threshold, problem)
        return verdict, client_answer(completion, choice, x.chat.body), reply

    async def _verify(
        self, x: Exchange, tier: CompiledTier, confidence: CompiledCascade, text: str, answer: str
    ) -> float | None:
        """Ask the same tier how likely its answer is right; None if it will not say."""
        template = confidence.verifier_prompt or DEFAULT_VERIFIER_PROMPT
        body = {
            "messages": verifier_messages(template, text, answer),
            "max_tokens": VERIFIER_MAX_TOKENS,
            "temperature": 0,
        }
        reply = await self.caller.send(x, tier, body)
        completion = completion_of(reply)
        self.meter.call(x, reply, Usage.from_openai(completion and completion.get("usage")))
        if completion is None or not completion.get("choices"):
            return None
        return parse_verdict(content(completion["choices"][0]))
