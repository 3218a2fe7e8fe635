"""Parses OpenMetrics text from stdin with the Prometheus project's own Python parser
(prometheus_client.openmetrics.parser, strict: it rejects what Prometheus would) and prints
every sample as JSON for the Rust tests."""
import json
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families

samples = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        samples.append({
            "family": family.name,
            "type": family.type,
            "unit": family.unit,
            "name": s.name,
            "labels": s.labels,
            "value": s.value,
        })
json.dump(samples, sys.stdout)
