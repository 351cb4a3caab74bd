#!/usr/bin/env python3
"""Parses a Prometheus text exposition (the coordinator's GET /metrics) with prometheus_client's
own parser and prints its families and samples as JSON on stdout:

  {"families": [{"name": ..., "type": ..., "samples": [{"name", "labels", "value"}, ...]}]}

Used by tests/coordinator/metrics_service_test.cpp, which checks the numbers.
Usage: parse_metrics.py FILE
Exit codes: 0 parsed; 1 the text does not parse (or holds a non-finite value); 2 usage;
77 skipped: prometheus_client is not importable (scripts/install-deps.sh installs it).
"""
import json
import math
import sys

try:
    from prometheus_client.parser import text_string_to_metric_families
except ImportError as e:
    print(f"parse_metrics.py: skipped: prometheus_client is not importable ({e}); "
          "scripts/install-deps.sh installs it", file=sys.stderr)
    sys.exit(77)


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: parse_metrics.py FILE", file=sys.stderr)
        return 2
    path = sys.argv[1]
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        families = list(text_string_to_metric_families(text))
    except Exception as e:  # the parser raises ValueError and friends on bad input
        print(f"parse_metrics.py: prometheus_client cannot parse {path}: {e!r}", file=sys.stderr)
        return 1
    out = []
    for family in families:
        samples = []
        for s in family.samples:
            if not math.isfinite(s.value):
                print(f"parse_metrics.py: {s.name}{s.labels} is {s.value}", file=sys.stderr)
                return 1
            samples.append({"name": s.name, "labels": dict(s.labels), "value": s.value})
        out.append({"name": family.name, "type": family.type, "samples": samples})
    json.dump({"families": out}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
