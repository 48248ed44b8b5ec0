# The one image every Nest component runs from: the operator (nest-operator), the gateway
# (nest-gateway), and the two containers of a pool pod (nest-runtime, nest-sidecar).
# deploy/ references it as `nest:latest`; push it under your registry's name and set the image
# with `kustomize edit set image nest=REGISTRY/nest:TAG`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY crds crds
COPY operator operator
COPY nest_sidecar nest_sidecar
COPY sandbox sandbox
COPY isolation isolation
COPY gateway gateway
COPY nest_api nest_api
COPY nest_kube nest_kube
COPY nest nest
# Product only: the local cluster (cluster/), bench/ and tests/ are development tools, not
# copied (and in .dockerignore); pyproject.toml's package list leaves them out of the wheel too.
# libseccomp2: the sandboxes' seccomp filters are compiled by it (pyseccomp binds it by ctypes).
RUN apt-get update && apt-get install -y --no-install-recommends libseccomp2 \
    && rm -rf /var/lib/apt/lists/*
RUN pip install . && rm -rf /src

# Components run as this user unless their securityContext says otherwise: the pool's runtime
# container runs as 0 with six capabilities (deploy/pool), to give each sandbox a uid of its own.
RUN useradd --create-home --uid 10001 nest \
    && mkdir -p /var/run/nest /var/lib/nest/code && chown nest /var/run/nest /var/lib/nest/code
USER nest
WORKDIR /home/nest
CMD ["nest", "--help"]
