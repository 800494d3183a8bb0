"""Read the server's Prometheus metrics: the mean batch size it formed between two scrapes."""

from __future__ import annotations

import urllib.request
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True)
class Snapshot:
    batches: float
    batched_images: float
    errors: float  # fashion_requests_total with a code other than OK

    def mean_batch_since(self, before: Snapshot) -> float | None:
        batches = self.batches - before.batches
        if not batches:
            return None
        return round((self.batched_images - before.batched_images) / batches, 2)


def scrape(metrics_address: str, timeout_s: float = 5.0) -> Snapshot:
    """GET http://ADDRESS/metrics (ADDRESS = host:port) and sum the counters we use."""
    with urllib.request.urlopen(f"http://{metrics_address}/metrics", timeout=timeout_s) as r:
        text = r.read().decode()
    batches = images = errors = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "fashion_batch_size_images_count":
                batches += s.value
            elif s.name == "fashion_batch_size_images_sum":
                images += s.value
            elif s.name == "fashion_requests_total" and s.labels.get("code") != "OK":
                errors += s.value
    return Snapshot(batches, images, errors)
