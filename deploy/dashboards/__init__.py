"""Grafana dashboards and alert rules as code, built from the components' metric names."""
