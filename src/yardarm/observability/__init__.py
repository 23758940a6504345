"""Observability as code: dashboards, Prometheus rules and scrape configs, collector,
Grafana, Jaeger and Loki settings, generated from the deployment model and committed
under `observability/` so every target mounts the same files."""
