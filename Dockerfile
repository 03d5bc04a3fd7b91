# One image for both services of docker-compose.yml (the cloud Ray head and the edge node).
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0
WORKDIR /app
COPY requirements.lock pyproject.toml ./
RUN pip install --no-cache-dir -r requirements.lock
COPY router ./router
COPY edge_node ./edge_node
COPY cloud_service ./cloud_service
COPY edgeroute ./edgeroute
COPY deploy/cloud-entrypoint.sh ./deploy/cloud-entrypoint.sh
COPY policies ./policies
RUN pip install --no-cache-dir --no-deps -e .
# The demo bundles are built from scikit-learn's bundled digits data (no download).
RUN edgeroute model build-demo /app/models
RUN useradd --create-home edgeroute && mkdir -p /data && chown edgeroute /data
USER edgeroute
EXPOSE 8000 8080
CMD ["edgeroute", "--help"]
