"""Triton's per-version statistics and the pure builders of server/triton_codec.py, alone.

The same paths run end to end, through tritonclient and perf_analyzer, in tests_tritonclient/.
"""

from __future__ import annotations

import pytest

from server.statistics import InferenceStatistics
from server.triton_codec import NOT_IMPLEMENTED, model_statistics, repository_index


def test_a_request_moves_all_its_counts_together() -> None:
    stats = InferenceStatistics()
    stats.observe_batch(2, images=5, inference_s=0.004)
    stats.observe_request(
        2, ok=True, total_s=0.010, input_s=0.001, queue_s=0.002, infer_s=0.004, output_s=0.0005
    )
    stats.observe_request(2, ok=False, total_s=0.003)
    v2 = stats.of(2)
    assert (v2.inference_count, v2.execution_count) == (5, 1)
    assert (v2.success.count, v2.success.ns) == (1, 10_000_000)
    assert (v2.fail.count, v2.fail.ns) == (1, 3_000_000)
    for part, ns in [
        (v2.compute_input, 1_000_000),
        (v2.queue, 2_000_000),
        (v2.compute_infer, 4_000_000),
        (v2.compute_output, 500_000),
    ]:
        assert (part.count, part.ns) == (1, ns)  # a failure adds to none of the parts
    assert {size: (d.count, d.ns) for size, d in v2.batches.items()} == {5: (1, 4_000_000)}
    assert v2.last_inference_ms > 0


def test_versions_are_kept_apart_and_unknown_ones_read_as_zero() -> None:
    stats = InferenceStatistics()
    stats.observe_batch(3, images=1, inference_s=0.001)
    stats.observe_batch(1, images=2, inference_s=0.001)
    assert stats.versions() == [1, 3]
    assert stats.of(7).inference_count == 0
    assert stats.versions() == [1, 3]  # reading does not create a version


def test_model_statistics_message_carries_every_count() -> None:
    stats = InferenceStatistics()
    stats.observe_batch(1, images=8, inference_s=0.002)
    stats.observe_batch(1, images=8, inference_s=0.002)
    stats.observe_batch(1, images=1, inference_s=0.001)
    stats.observe_request(1, ok=True, total_s=0.005, queue_s=0.001, infer_s=0.002)
    message = model_statistics(stats.of(1))
    assert (message.name, message.version) == ("fashion", "1")
    assert (message.inference_count, message.execution_count) == (17, 3)
    assert message.inference_stats.success.count == 1
    assert message.inference_stats.queue.ns == 1_000_000
    assert [(b.batch_size, b.compute_infer.count) for b in message.batch_stats] == [(1, 1), (8, 2)]


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        (
            {"served": 2, "ready": True, "refused": [3], "pinned": 0},
            [
                ("1", "UNAVAILABLE", "not served: version 2 is newer"),
                ("2", "READY", ""),
                ("3", "UNAVAILABLE", "refused: it failed to load or verify (see the log)"),
                ("4", "UNAVAILABLE", "not loaded yet: published since the last check"),
            ],
        ),
        (
            {"served": 1, "ready": True, "refused": [], "pinned": 1},
            [("1", "READY", "")]
            + [
                (v, "UNAVAILABLE", "not served: the server is pinned to version 1")
                for v in ("2", "3", "4")
            ],
        ),
        (
            {"served": 2, "ready": False, "refused": [], "pinned": 0},
            [
                ("1", "UNAVAILABLE", "not served: version 2 is newer"),
                (
                    "2",
                    "UNAVAILABLE",
                    "the server is not ready (starting or shutting down)",
                ),
                ("3", "UNAVAILABLE", "not loaded yet: published since the last check"),
                ("4", "UNAVAILABLE", "not loaded yet: published since the last check"),
            ],
        ),
    ],
    ids=["newest-valid", "pinned", "not-ready"],
)
def test_repository_index_gives_each_version_its_state_and_reason(kwargs, expected) -> None:
    index = repository_index([1, 2, 3, 4], only_ready=False, **kwargs)
    assert [(m.version, m.state, m.reason) for m in index.models] == expected
    assert {m.name for m in index.models} == {"fashion"}
    ready_only = repository_index([1, 2, 3, 4], only_ready=True, **kwargs)
    assert [m.version for m in ready_only.models] == [v for v, s, _ in expected if s == "READY"]


def test_every_unimplemented_rpc_has_a_reason() -> None:
    from server._proto.inference import grpc_predict_v2_pb2 as oip
    from server.triton import TritonServicer

    declared = {m.name for m in oip.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods}
    assert set(NOT_IMPLEMENTED) <= declared
    for name in declared:  # every declared RPC is ours, not the generated base's
        assert not getattr(TritonServicer, name).__module__.endswith("_pb2_grpc"), name
