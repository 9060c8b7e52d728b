"""Watching jobs: the headline figures (one formula each, for `monitor` and the dashboard), the
Grafana dashboard built from the metrics registry, and the self-contained HTML job report."""
