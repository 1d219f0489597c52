# One image for every pagestore service; docker-compose.yml picks the process per service.
FROM python:3.11-slim-bookworm AS build
# gcc builds the compiled WAL decoder core (pagestore/pg/_walcore.c) into the wheel.
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY protos ./protos
COPY pagestore ./pagestore
COPY services ./services
COPY gateway ./gateway
# The build step generates the gRPC stubs from protos/ (setup.py) into the wheel.
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
# postgresql-client: pg_waldump/psql for operators debugging a node.
RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql-client-15 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels \
    && python -c "import pagestore.pg._walcore"
RUN useradd --system --home-dir /data --create-home pagestore
USER pagestore
WORKDIR /data
ENV PAGESTORE_WORKDIR=/data
COPY docker/pagestore.toml /etc/pagestore/pagestore.toml
EXPOSE 51051 51061 51062 51063 51064 64000
CMD ["pagestore", "--help"]
