"""The complexity router's model: how likely a cheaper tier is to answer a prompt badly.

Logistic regression over hashed word unigrams and bigrams, in numpy: small
(1 MB at 2**18 float32 weights), fast (tens of microseconds a prompt), and
trainable on a user's own outcomes with ``tokenomy router train``.
"""

from __future__ import annotations

import itertools
import math
import re
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from tokenomy_sidecar.routing.guarantee import Calibration, packed, unpacked

WORD = re.compile(r"[a-z0-9]+")
BUCKETS = 1 << 18


def features(
    text: str, buckets: int = BUCKETS
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """Hashed unigram and bigram counts, L2-normalised: (indices, values)."""
    words = WORD.findall(text.lower())
    grams = words + [f"{a} {b}" for a, b in itertools.pairwise(words)]
    counts: dict[int, float] = {}
    for gram in grams:
        index = zlib.crc32(gram.encode()) % buckets
        counts[index] = counts.get(index, 0.0) + 1.0
    if not counts:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    indices = np.fromiter(counts.keys(), dtype=np.int64)
    values = np.fromiter(counts.values(), dtype=np.float32)
    return indices, values / np.float32(np.linalg.norm(values))


@dataclass
class ComplexityModel:
    """Weights and bias of the logistic regression, and what routing needs to use it."""

    weights: npt.NDArray[np.float32]
    bias: float = 0.0
    cut: float = 0.5
    """Score at or above which a request skips the cheaper tier, calibrated at training."""
    mean_input_tokens: float = 0.0
    """Average input tokens of the training prompts: what "an average request" costs."""
    mean_output_tokens: float = 0.0
    """Average output tokens of the training answers; also the output guess per request."""
    calibration: Calibration | None = None
    """Routing scores and outcomes of queries kept out of training: the cut for any
    quality target is chosen on them (:meth:`cut_for`). None in files from before."""

    def cut_for(self, fraction: float, confidence: float) -> float:
        """The cut that keeps ``fraction`` of the reference tier's quality on new requests
        with probability ``confidence``; ``-inf`` when the calibration supports no saving.
        A model without calibration has only the cut it was trained with."""
        if self.calibration is None:
            return self.cut
        return self.calibration.cut(fraction, confidence)

    @classmethod
    def empty(cls, buckets: int = BUCKETS) -> ComplexityModel:
        return cls(np.zeros(buckets, dtype=np.float32))

    def score(self, text: str) -> float:
        """Probability that the stronger tier answers better than the cheaper one."""
        indices, values = features(text, len(self.weights))
        z = float(self.weights[indices] @ values) + self.bias
        return 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, z))))

    def fit(
        self,
        texts: Sequence[str],
        labels: Sequence[float],
        epochs: int = 8,
        rate: float = 0.5,
        l2: float = 1e-5,
        seed: int = 0,
    ) -> ComplexityModel:
        """Stochastic gradient descent on log loss; labels are 1 where the stronger tier won."""
        rows = [features(t, len(self.weights)) for t in texts]
        y = np.asarray(labels, dtype=np.float32)
        rng = np.random.default_rng(seed)
        w = self.weights
        for epoch in range(epochs):
            step = rate / (1 + epoch)
            for i in rng.permutation(len(rows)):
                indices, values = rows[i]
                z = float(w[indices] @ values) + self.bias
                p = 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, z))))
                error = p - float(y[i])
                w[indices] -= np.float32(step) * (
                    np.float32(error) * values + np.float32(l2) * w[indices]
                )
                self.bias -= step * error
        return self

    @classmethod
    def average(cls, models: Sequence[ComplexityModel]) -> ComplexityModel:
        """One model whose logit is the mean of the models' logits (a linear ensemble)."""
        weights = np.mean([m.weights for m in models], axis=0).astype(np.float32)
        return cls(weights, float(np.mean([m.bias for m in models])))

    def save(self, path: Path) -> None:
        """Write the model as a compressed .npz."""
        meta = [self.bias, self.cut, self.mean_input_tokens, self.mean_output_tokens]
        with path.open("wb") as f:
            np.savez_compressed(
                f, weights=self.weights, meta=np.array(meta), calibration=packed(self.calibration)
            )

    @classmethod
    def load(cls, path: Path) -> ComplexityModel:
        """Read a model written by :meth:`save`; a file that is not one raises ValueError."""
        try:
            with np.load(path) as data:
                weights = data["weights"].astype(np.float32)
                bias, cut, mean_in, mean_out = (float(v) for v in data["meta"])
                calibration = unpacked(data, "calibration")
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as error:
            raise ValueError(f"{path} is not a complexity model: {error}") from None
        return cls(weights, bias, cut, mean_in, mean_out, calibration)
