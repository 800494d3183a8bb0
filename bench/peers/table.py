"""One run's measurements -> same-run ratios against the issue's targets (JSON, markdown, plot).

``results["servers"][NAME]["points"]`` holds :func:`bench.point.measure` dicts for each server
(``fashion-serve``, ``floor`` = bench.echo, ``pytriton``, ``mlserver``);
``results["inprocess_images_per_s"]`` the in-process onnxruntime limit by batch size.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.report import points_table

# The comparison points: (label, images per request, concurrency, what is compared).
POINTS = (
    ("1 image, conc 1", 1, 1, "p50"),
    ("1 image, conc 32", 1, 32, "images_per_s"),
    ("32 images, conc 8", 32, 8, "images_per_s"),
)
PEER_API = "oip-fp32"  # what the ready-made servers are driven with
OUR_UNARY = ("oip", "predict")
OUR_STREAMS = ("stream", "oip-stream")
LABEL = {
    "oip": "ModelInfer",
    "predict": "Predict",
    "stream": "PredictStream",
    "oip-stream": "ModelStreamInfer",
    "oip-fp32": "ModelInfer FP32",
    "oip-fp32-stream": "ModelStreamInfer FP32",
}


@dataclass(frozen=True)
class Ratio:
    """``ours / reference`` for one target; ``met`` compares it with ``bound``."""

    target: str
    api: str
    ours: float | None
    reference: float | None
    bound: float
    lower_is_better: bool

    @property
    def ratio(self) -> float | None:
        if self.ours is None or not self.reference:
            return None
        return self.ours / self.reference

    @property
    def met(self) -> bool | None:
        r = self.ratio
        if r is None:
            return None
        return r <= self.bound if self.lower_is_better else r >= self.bound

    def as_dict(self) -> dict[str, Any]:
        r = self.ratio
        return {
            "target": self.target,
            "api": self.api,
            "ours": self.ours,
            "reference": self.reference,
            "ratio": None if r is None else round(r, 3),
            "bound": self.bound,
            "lower_is_better": self.lower_is_better,
            "met": self.met,
        }


def find(results: dict[str, Any], server: str, api: str, size: int, conc: int) -> dict | None:
    points = results.get("servers", {}).get(server, {}).get("points", [])
    return next(
        (p for p in points if (p["api"], p["size"], p["concurrency"]) == (api, size, conc)), None
    )


def value(point: dict[str, Any] | None, metric: str) -> float | None:
    if point is None:
        return None
    v = point["latency_ms"]["p50"] if metric == "p50" else point[metric]
    return None if v is None else float(v)


def ratios(results: dict[str, Any]) -> list[Ratio]:
    """Every target of the issue, as same-run ratios (missing measurements give None)."""
    out: list[Ratio] = []
    limit32 = results.get("inprocess_images_per_s", {}).get("32")
    for label, size, conc, metric in POINTS:
        latency = metric == "p50"
        for api in OUR_UNARY:
            ours = value(find(results, "fashion-serve", api, size, conc), metric)
            triton = value(find(results, "pytriton", PEER_API, size, conc), metric)
            mls = value(find(results, "mlserver", PEER_API, size, conc), metric)
            if latency:
                out.append(Ratio(f"{label}: p50 vs PyTriton", api, ours, triton, 0.4, True))
                out.append(Ratio(f"{label}: p50 vs MLServer", api, ours, mls, 0.5, True))
                continue
            out.append(Ratio(f"{label}: images/s vs PyTriton", api, ours, triton, 2.0, False))
            out.append(Ratio(f"{label}: images/s vs MLServer", api, ours, mls, 2.0, False))
            if size == 1:
                floor = value(find(results, "floor", api, size, conc), metric)
                out.append(Ratio(f"{label}: of the grpc.aio floor", api, ours, floor, 0.7, False))
            else:
                ref = None if limit32 is None else float(limit32)
                out.append(Ratio(f"{label}: of in-process onnxruntime", api, ours, ref, 0.7, False))
    triton_1x32 = value(find(results, "pytriton", PEER_API, 1, 32), "images_per_s")
    mls_1x32 = value(find(results, "mlserver", PEER_API, 1, 32), "images_per_s")
    for api in OUR_STREAMS:
        ours = value(find(results, "fashion-serve", api, 1, 32), "images_per_s")
        out.append(
            Ratio(
                "1 image, conc 32, streamed: vs PyTriton unary", api, ours, triton_1x32, 3.0, False
            )
        )
        out.append(
            Ratio("1 image, conc 32, streamed: vs MLServer unary", api, ours, mls_1x32, 2.0, False)
        )
    return out


OURS = "fashion-serve"
WORKERS_PREFIX = "fashion-serve --workers"


def our_servers(results: dict[str, Any]) -> list[str]:
    """``fashion-serve`` and its ``--workers N`` runs, in the order they were measured."""
    return [name for name in results.get("servers", {}) if name.startswith(OURS)]


def targets_25(results: dict[str, Any]) -> list[Ratio]:
    """Issue #25's targets for each of our servers (one process, and with workers)."""
    out: list[Ratio] = []
    unary = ceiling(results, "oip")
    streamed = ceiling(results, "stream")
    limit32 = results.get("inprocess_images_per_s", {}).get("32")
    triton = {
        point: value(find(results, "pytriton", PEER_API, size, conc), metric)
        for point, (size, conc, metric) in {
            "c1": (1, 1, "p50"),
            "1x32": (1, 32, "images_per_s"),
            "32x8": (32, 8, "images_per_s"),
        }.items()
    }
    for server in our_servers(results):
        tag = "" if server == OURS else f" ({server.removeprefix(OURS).strip()})"

        def at(api: str, size: int, conc: int, metric: str = "images_per_s") -> float | None:
            return value(find(results, server, api, size, conc), metric)  # noqa: B023

        ceiling_images = None if unary is None else unary["images_per_s"]
        out.append(
            Ratio(
                f"1 x 32: of the grpc.aio ceiling{tag}",
                "oip",
                at("oip", 1, 32),
                ceiling_images,
                0.9,
                False,
            )
        )
        out.append(
            Ratio(f"1 x 32: vs PyTriton{tag}", "oip", at("oip", 1, 32), triton["1x32"], 1.4, False)
        )
        out.append(
            Ratio(f"32 x 8: vs PyTriton{tag}", "oip", at("oip", 32, 8), triton["32x8"], 1.4, False)
        )
        ref = None if limit32 is None else float(limit32)
        out.append(
            Ratio(
                f"32 x 8: of in-process onnxruntime{tag}", "oip", at("oip", 32, 8), ref, 0.65, False
            )
        )
        streamed_images = None if streamed is None else streamed["images_per_s"]
        out.append(
            Ratio(
                f"streamed 1 x 32: of its ceiling{tag}",
                "stream",
                at("stream", 1, 32),
                streamed_images,
                0.9,
                False,
            )
        )
        out.append(
            Ratio(
                f"1 image, conc 1: p50 vs PyTriton{tag}",
                "oip",
                at("oip", 1, 1, "p50"),
                triton["c1"],
                0.4,
                True,
            )
        )
    return out


@dataclass(frozen=True)
class WorkersPoint:
    """One point of ``fashion-serve --workers N`` beside the same point of one process."""

    workers: str  # "--workers N"
    api: str
    size: int
    concurrency: int
    one: float | None  # images/s, or the p50 in ms at concurrency 1
    many: float | None

    @property
    def metric(self) -> str:
        return _compared(self.concurrency)

    @property
    def label(self) -> str:
        return f"{self.size} x conc {self.concurrency}"

    @property
    def ratio(self) -> float | None:
        return self.many / self.one if self.one and self.many is not None else None


def _compared(concurrency: int) -> str:
    """What a point is compared by: its p50 at concurrency 1, else its throughput."""
    return "p50" if concurrency == 1 else "images_per_s"


def workers_points(results: dict[str, Any]) -> list[WorkersPoint]:
    """Each point of every ``--workers N`` server measured, with one process's, same run."""
    out: list[WorkersPoint] = []
    for server in our_servers(results):
        if server == OURS:
            continue
        for point in results["servers"][server].get("points", []):
            one = find(results, OURS, point["api"], point["size"], point["concurrency"])
            if one is None:
                continue
            metric = _compared(point["concurrency"])
            out.append(
                WorkersPoint(
                    server.removeprefix(OURS).strip(),
                    point["api"],
                    point["size"],
                    point["concurrency"],
                    value(one, metric),
                    value(point, metric),
                )
            )
    return out


def workers_vs_one(results: dict[str, Any]) -> str:
    """Each point of ``fashion-serve --workers N`` against one process, same run."""
    lines = ["| point | API | one process | with workers | ratio |", "|---|---|---|---|---|"]
    for w in workers_points(results):
        ratio = "—" if w.ratio is None else f"{w.ratio:.2f}"
        unit, digits = (" ms p50", 2) if w.metric == "p50" else (" img/s", 0)
        lines.append(
            f"| {w.label} | {LABEL.get(w.api, w.api)} "
            f"| {_num(w.one, digits)}{unit} | {_num(w.many, digits)}{unit} ({w.workers}) "
            f"| {ratio} |"
        )
    return "\n".join(lines) if len(lines) > 2 else "No --workers run in this measurement."


def _client_ms(point: dict[str, Any]) -> float:
    rate = float(point["requests_per_s"])
    return 1000.0 * float(point["client_cpu_cores"]) / rate if rate else 0.0


def ceiling(results: dict[str, Any], api: str = "oip") -> dict[str, float] | None:
    """The most any grpc.aio server could serve of this model at 1 image x 32, this run.

    An ideal server does, per request, the floor's Python gRPC work on its event loop
    (``f`` ms CPU, the floor's own figure) plus this model's compute on another thread
    (``m`` ms CPU per image, in-process onnxruntime at the small batches these requests
    form: the cheaper of batch 1 and 4), and nothing else; its clients cost what the
    floor's cost per request (``c``). The machine gives server and clients together what
    it gave the floor and its clients (``C`` cores, the floor point's sum). Then

        images/s <= min(1000 / f  (one loop thread),  1000 * C / (f + m + c)  (the cores)).

    No data plane, batcher, thread hop, codec or metric is counted, so it bounds ours
    from above; ``vs_pytriton`` is the best ratio to PyTriton's unary any server built on
    grpc.aio could show in this run (for ``stream``: the floor's stream, against the
    streamed target's reference, PyTriton's unary). ``ours_own_ms`` is what ours spends
    per request beyond ``f + m``: the part that is ours to cut.
    """
    floor = find(results, "floor", api, 1, 32)
    model_cpu = results.get("inprocess_cpu_ms_per_image", {})
    small = [float(model_cpu[k]) for k in ("1", "4") if k in model_cpu]
    if floor is None or not floor.get("server_cpu_ms_per_request") or not small:
        return None
    f, m, c = float(floor["server_cpu_ms_per_request"]), min(small), _client_ms(floor)
    cores = float(floor["server_cpu_cores"]) + float(floor["client_cpu_cores"])
    images = min(1000.0 / f, 1000.0 * cores / (f + m + c))
    out = {
        "floor_cpu_ms_per_request": f,
        "model_cpu_ms_per_image": m,
        "client_cpu_ms_per_request": round(c, 3),
        "cores": round(cores, 2),
        "images_per_s": round(images, 1),
        "fraction_of_floor": round(images / float(floor["images_per_s"]), 3),
    }
    triton = value(find(results, "pytriton", PEER_API, 1, 32), "images_per_s")
    if triton:
        out["vs_pytriton"] = round(images / triton, 3)
    ours = find(results, "fashion-serve", api, 1, 32)
    if ours is not None:
        out["ours_of_ceiling"] = round(float(ours["images_per_s"]) / images, 3)
        if ours.get("server_cpu_ms_per_request"):
            own = float(ours["server_cpu_ms_per_request"]) - f - m
            out["ours_own_ms_per_request"] = round(own, 3)
    return out


def ceiling_text(results: dict[str, Any], api: str = "oip") -> str:
    x = ceiling(results, api)
    if x is None:
        return "The ceiling needs the floor and in-process CPU figures of the same run."
    kind = "per message on a stream" if api == "stream" else "per request"
    text = (
        f"the floor's {x['floor_cpu_ms_per_request']:.3f} ms CPU {kind} + the model's "
        f"{x['model_cpu_ms_per_image']:.3f} ms per image + its clients' "
        f"{x['client_cpu_ms_per_request']:.3f} ms, on the {x['cores']:.2f} cores the floor's "
        f"point got: at most {x['images_per_s']:,.0f} images/s "
        f"({x['fraction_of_floor']:.0%} of the floor) for any grpc.aio server of this model"
    )
    if "vs_pytriton" in x:
        text += f", {x['vs_pytriton']:.2f}x PyTriton's unary"
    if "ours_of_ceiling" in x:
        text += f"; ours reached {x['ours_of_ceiling']:.0%} of it"
    if "ours_own_ms_per_request" in x:
        text += f", spending {x['ours_own_ms_per_request']:.3f} ms CPU {kind} beyond floor + model"
    return text + "."


def our_errors(results: dict[str, Any]) -> int:
    """Errors and wrong-sized answers at the points of every server of ours (workers too)."""
    servers = results.get("servers", {})
    return sum(
        p["errors"] + p["bad_responses"]
        for name in our_servers(results)
        for p in servers[name].get("points", [])
    )


def _num(v: float | None, digits: int = 2) -> str:
    return "n/a" if v is None else f"{v:,.{digits}f}"


def ratios_table(rows: list[Ratio]) -> str:
    lines = [
        "| target | our API | ours | reference | ratio | target ratio | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        digits = 2 if "p50" in r.target else 0
        bound = f"≤ {r.bound:g}x" if r.lower_is_better else f"≥ {r.bound:g}x"
        met = {True: "yes", False: "**no**", None: "n/a"}[r.met]
        ratio = "n/a" if r.ratio is None else f"{r.ratio:.2f}x"
        lines.append(
            f"| {r.target} | {LABEL.get(r.api, r.api)} | {_num(r.ours, digits)} "
            f"| {_num(r.reference, digits)} | {ratio} | {bound} | {met} |"
        )
    return "\n".join(lines)


def markdown(results: dict[str, Any]) -> str:
    rows = ratios(results)
    parts = [
        f"Command: `{results.get('command', 'python -m bench.peers')}`",
        f"Machine: {results.get('machine', '?')}; load average before/after: "
        f"{results.get('loadavg_before', '?')} / {results.get('loadavg_after', '?')}",
        "",
        "In-process onnxruntime (the server's sessions): "
        + ", ".join(
            f"batch {n}: {float(v):,.0f} images/s"
            + (
                f" ({float(cpu[n]):.3f} ms CPU/image)"
                if n in (cpu := results.get("inprocess_cpu_ms_per_image", {}))
                else ""
            )
            for n, v in results.get("inprocess_images_per_s", {}).items()
        ),
        "",
        "## Ratios (ours / reference, this run)",
        "",
        ratios_table(rows),
        "",
        f"Errors and wrong-sized answers at our points: {our_errors(results)}.",
        "",
        "## Issue #25's targets (ours / reference, this run)",
        "",
        ratios_table(targets_25(results)),
        "",
        "## --workers against one process, same run",
        "",
        workers_vs_one(results),
        "",
        "## The ceiling at 1 image x 32",
        "",
        f"Unary (ModelInfer): {ceiling_text(results)}",
        "",
        f"Streamed (PredictStream): {ceiling_text(results, 'stream')}",
        "",
        "Cold start to ready: "
        + ", ".join(
            f"{name} {_num(server.get('cold_start_s'))} s"
            for name, server in results.get("servers", {}).items()
            if server.get("cold_start_s") is not None
        ),
        "",
    ]
    for name, server in results.get("servers", {}).items():
        for crash in server.get("crashes", []):
            api, size, conc = crash["during"]
            failed = crash.get("failed", {})
            parts += [
                f"**{name} died** during {api} {size} x conc {conc} (exit "
                f"{crash['exit_code']}; {failed.get('errors', '?')} errors "
                f"{failed.get('errors_by_code', {})}, {failed.get('requests', '?')} answers); "
                "restarted, and the point measured again on the fresh process.",
                "",
            ]
    for name, server in results.get("servers", {}).items():
        parts += [f"## {name}", "", points_table(server.get("points", [])), ""]
    for name, pa in results.get("perf_analyzer", {}).items():
        parts += [
            f"## perf_analyzer against {name}",
            "",
            pa.get("table") or pa.get("error", ""),
            "",
        ]
    return "\n".join(parts)


def plot(results: dict[str, Any], path: Path) -> bool:
    """The ratios as bars, each beside its target; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = [r for r in ratios(results) if r.ratio is not None]
    if not rows:
        return False
    fig, ax = plt.subplots(figsize=(10, 0.38 * len(rows) + 1.2))
    names = [f"{r.target} [{LABEL.get(r.api, r.api)}]" for r in rows]
    # Latency targets are shown inverted (reference / ours) so that right is better for all.
    shown = [1 / r.ratio if r.lower_is_better else r.ratio for r in rows if r.ratio]
    bounds = [1 / r.bound if r.lower_is_better else r.bound for r in rows]
    colours = ["tab:green" if r.met else "tab:red" for r in rows]
    y = range(len(rows))
    ax.barh(list(y), shown, color=colours)
    ax.scatter(bounds, list(y), marker="|", s=300, color="black", label="target")
    ax.set_yticks(list(y), names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("ratio, same run (better to the right; p50 shown as reference/ours)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write(results: dict[str, Any], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    results = {
        **results,
        "ratios": [r.as_dict() for r in ratios(results)],
        "ceiling_1x32": ceiling(results),
        "ceiling_1x32_stream": ceiling(results, "stream"),
    }
    written = [out_dir / "peers.json", out_dir / "peers.md"]
    written[0].write_text(json.dumps(results, indent=2) + "\n")
    written[1].write_text(markdown(results) + "\n")
    if plot(results, out_dir / "peers.png"):
        written.append(out_dir / "peers.png")
    return written


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.peers.table DIR...``: rewrite each DIR's peers.md/.png (and the
    derived figures in peers.json) from its measurements, e.g. after a change to the ratios."""
    import sys

    dirs = [Path(d) for d in (sys.argv[1:] if argv is None else argv)]
    if not dirs:
        print("usage: python -m bench.peers.table DIR [DIR...]", file=sys.stderr)
        return 2
    for d in dirs:
        results = json.loads((d / "peers.json").read_text())
        for path in write(results, d):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
