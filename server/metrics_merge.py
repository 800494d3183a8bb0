"""The supervisor's one view of its workers' metrics: their expositions, summed.

Each worker keeps its own series (server/metrics.py). The supervisor asks every worker
for its exposition when it is scraped (and every few seconds besides, so what a worker
had counted is known when it dies) and merges them:

* counters and histograms are summed; the gauges that describe what is served
  (model info, versions loaded, labels) are the same in every worker and are taken
  once (their maximum); a version's queue depth and capacity are those of its fullest
  worker's queue (their maximum): each worker has its own queue, bounded by
  --max-queue, and a client's calls on one connection all go to one worker, so that
  queue refuses first (summed, one full queue of two read 50 % full);
* a worker that died leaves its counters and histograms behind ("carried"), so a
  restart is not a counter reset: the sums never go down. What it counted after the
  supervisor's last look is lost. Carried series of a model version that is no
  longer served are dropped with it, so cardinality follows what is loaded;
* ``*_created`` samples are dropped (one per worker; their sum means nothing).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families

# Gauges every worker reports alike: their value once, not N times.
SAME_IN_EVERY_WORKER = frozenset(
    {"fashion_model_info", "fashion_model_versions_loaded", "fashion_model_version_label"}
)
# Each worker's own queue of a version: the fullest one's (see the module docstring).
FULLEST_WORKER = frozenset({"fashion_queue_depth_images", "fashion_queue_capacity_images"})
CUMULATIVE = frozenset({"counter", "histogram", "summary"})

Key = tuple[str, tuple[tuple[str, str], ...]]  # sample name, sorted labels


@dataclass
class Family:
    name: str
    kind: str
    documentation: str
    samples: dict[Key, float] = field(default_factory=dict)


def parse(text: str) -> dict[str, Family]:
    """One exposition -> its families, without ``*_created`` samples."""
    families: dict[str, Family] = {}
    for parsed in text_string_to_metric_families(text):
        family = Family(parsed.name, parsed.type, parsed.documentation)
        for sample in parsed.samples:
            if sample.name.endswith("_created"):
                continue
            family.samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        if parsed.name.endswith("_created") and not family.samples:
            # The text format writes a counter's or histogram's ``_created`` samples as a
            # gauge family of that name: left empty, it would still be exposed, and
            # OpenMetrics reserves the name (a strict parser refuses the scrape).
            continue
        families[parsed.name] = family
    return families


def cumulative_samples(families: Mapping[str, Family]) -> dict[Key, tuple[Family, float]]:
    """The counter and histogram samples of one worker (what its death leaves behind)."""
    return {
        key: (family, value)
        for family in families.values()
        if family.kind in CUMULATIVE
        for key, value in family.samples.items()
    }


def merge(
    workers: Iterable[Mapping[str, Family]], carried: Mapping[Key, tuple[Family, float]]
) -> list[Metric]:
    """Every worker's families as one exposition's (see the module docstring)."""
    merged: dict[str, Family] = {}
    for families in workers:
        for family in families.values():
            total = merged.setdefault(
                family.name, Family(family.name, family.kind, family.documentation)
            )
            keep_max = family.name in SAME_IN_EVERY_WORKER or family.name in FULLEST_WORKER
            for key, value in family.samples.items():
                if key in total.samples:
                    total.samples[key] = (
                        max(total.samples[key], value) if keep_max else total.samples[key] + value
                    )
                else:
                    total.samples[key] = value
    for key, (family, value) in carried.items():
        total = merged.setdefault(
            family.name, Family(family.name, family.kind, family.documentation)
        )
        total.samples[key] = total.samples.get(key, 0.0) + value
    metrics = []
    for family in merged.values():
        metric = Metric(family.name, family.documentation, family.kind)
        for (name, labels), value in sorted(family.samples.items(), key=_exposition_order):
            metric.add_sample(name, dict(labels), value)
        metrics.append(metric)
    return metrics


def _exposition_order(sample: tuple[Key, float]) -> tuple[tuple[tuple[str, str], ...], str, float]:
    """Where a sample goes in the exposition: each series' samples together (its buckets,
    then ``_count``, then ``_sum``) and its buckets by increasing ``le``, ``+Inf`` last.

    OpenMetrics, which Prometheus asks for first, requires both; sorted by their labels as
    they are, the samples of every histogram came out by ``le`` as text (``+Inf`` first),
    each bucket bound's series of every method interleaved, and strict parsers refused the
    whole scrape.
    """
    (name, labels), _ = sample
    series = tuple(item for item in labels if item[0] not in _BOUNDS)
    bound = next((value for key, value in labels if key in _BOUNDS), None)
    return series, name, float(bound) if bound is not None else 0.0


# The labels that order the samples within one series: a bucket's bound, a quantile.
_BOUNDS = frozenset({"le", "quantile"})


def served_only(
    carried: Mapping[Key, tuple[Family, float]], served: Mapping[str, Iterable[str]]
) -> dict[Key, tuple[Family, float]]:
    """Carried samples of model versions still served, and those of no version at all."""
    kept = {}
    for key, entry in carried.items():
        labels = dict(key[1])
        model, version = labels.get("model", ""), labels.get("version", "")
        if not model or not version or version in served.get(model, ()):
            kept[key] = entry
    return kept
