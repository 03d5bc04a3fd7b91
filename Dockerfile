# Two images from one file, each with one install profile and no dev or tools packages:
#   docker build --target edge  -t edgeroute-edge .    (requirements/edge.lock: no Ray)
#   docker build --target cloud -t edgeroute-cloud .   (requirements/cloud.lock: Ray Serve)
# The demo bundles are built in a throwaway stage with the tools profile (scikit-learn's
# bundled digits data, no download) and only the bundles are copied into the images.
FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0
WORKDIR /app
COPY pyproject.toml README.md ./
COPY router ./router
COPY runtime ./runtime
COPY edge_node ./edge_node
COPY cloud_service ./cloud_service
COPY edgeroute ./edgeroute
RUN useradd --create-home edgeroute && mkdir -p /data && chown edgeroute /data

FROM base AS models
COPY requirements/tools.lock ./requirements/tools.lock
RUN pip install --no-cache-dir --require-hashes -r requirements/tools.lock \
    && pip install --no-cache-dir --no-deps . \
    && edgeroute model build-demo /app/models

FROM base AS edge
COPY requirements/edge.lock ./requirements/edge.lock
RUN pip install --no-cache-dir --require-hashes -r requirements/edge.lock \
    && pip install --no-cache-dir --no-deps .
COPY policies ./policies
COPY --from=models /app/models/edge /app/models/edge
USER edgeroute
EXPOSE 8080
CMD ["edgeroute", "edge", "serve", "--help"]

FROM base AS cloud
COPY requirements/cloud.lock ./requirements/cloud.lock
RUN pip install --no-cache-dir --require-hashes -r requirements/cloud.lock \
    && pip install --no-cache-dir --no-deps .
COPY deploy/cloud-entrypoint.sh ./deploy/cloud-entrypoint.sh
COPY cloud_service/serve_config.yaml ./cloud_service/serve_config.yaml
COPY --from=models /app/models/cloud /app/models/cloud
USER edgeroute
EXPOSE 8000 8080
CMD ["sh", "deploy/cloud-entrypoint.sh"]
