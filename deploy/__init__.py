"""Operator side of HAP: settings, the local stack, the `hap` CLI, dashboards and the demo."""
