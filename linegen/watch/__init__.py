"""Watching jobs: the Grafana dashboard built from the metrics registry and the headline figures
(jobs/headline.py), and the self-contained HTML job report."""
