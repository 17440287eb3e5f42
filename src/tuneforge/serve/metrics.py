"""Server metrics in Prometheus' text exposition format (counters, gauges, histograms; no dependency)."""

from __future__ import annotations

import threading

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
                     for k, v in sorted(labels.items()))
    return "{" + inner + "}"


class Metrics:
    def __init__(self):
        self._lock = threading.Lock()
        self.counters: dict[str, dict[tuple, float]] = {}
        self.gauges: dict[str, float] = {}
        self.histograms: dict[str, dict[tuple, list]] = {}
        self.help: dict[str, str] = {
            "tuneforge_requests_total": "HTTP API requests by endpoint and status code",
            "tuneforge_prompt_tokens_total": "prompt tokens processed",
            "tuneforge_completion_tokens_total": "tokens generated",
            "tuneforge_request_latency_seconds": "time from request to last token",
            "tuneforge_time_to_first_token_seconds": "time from request to first token",
            "tuneforge_queue_depth": "requests admitted and not finished (running + waiting)",
            "tuneforge_requests_rejected_total": "requests refused because the queue was full",
        }

    def inc(self, name: str, value: float = 1, **labels) -> None:
        with self._lock:
            series = self.counters.setdefault(name, {})
            key = tuple(sorted(labels.items()))
            series[key] = series.get(key, 0) + value

    def set(self, name: str, value: float) -> None:
        with self._lock:
            self.gauges[name] = value

    def observe(self, name: str, seconds: float, **labels) -> None:
        with self._lock:
            series = self.histograms.setdefault(name, {})
            key = tuple(sorted(labels.items()))
            counts = series.setdefault(key, [[0] * len(LATENCY_BUCKETS), 0.0, 0])
            for i, edge in enumerate(LATENCY_BUCKETS):
                if seconds <= edge:
                    counts[0][i] += 1
            counts[1] += seconds
            counts[2] += 1

    def render(self) -> str:
        lines: list[str] = []
        with self._lock:
            for name, series in sorted(self.counters.items()):
                lines += [f"# HELP {name} {self.help.get(name, name)}", f"# TYPE {name} counter"]
                lines += [f"{name}{_labels(dict(k))} {v:g}" for k, v in sorted(series.items())]
            for name, value in sorted(self.gauges.items()):
                lines += [f"# HELP {name} {self.help.get(name, name)}", f"# TYPE {name} gauge", f"{name} {value:g}"]
            for name, series in sorted(self.histograms.items()):
                lines += [f"# HELP {name} {self.help.get(name, name)}", f"# TYPE {name} histogram"]
                for key, (buckets, total, count) in sorted(series.items()):
                    labels = dict(key)
                    for edge, n in zip(LATENCY_BUCKETS, buckets, strict=True):
                        lines.append(f"{name}_bucket{_labels({**labels, 'le': f'{edge:g}'})} {n}")
                    lines.append(f"{name}_bucket{_labels({**labels, 'le': '+Inf'})} {count}")
                    lines.append(f"{name}_sum{_labels(labels)} {total:.6f}")
                    lines.append(f"{name}_count{_labels(labels)} {count}")
        return "\n".join(lines) + "\n"
