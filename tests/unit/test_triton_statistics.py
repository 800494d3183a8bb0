"""Triton's per-version statistics and the pure builders of server/triton_codec.py, alone.

The same paths run end to end, through tritonclient and perf_analyzer, in tests_tritonclient/.
"""

from __future__ import annotations

from server.repository_view import IndexEntry
from server.statistics import InferenceStatistics
from server.triton_codec import NOT_IMPLEMENTED, model_statistics, repository_index


def test_a_request_moves_all_its_counts_together() -> None:
    stats = InferenceStatistics()
    stats.observe_batch("fashion", 2, images=5, inference_s=0.004)
    stats.observe_request(
        "fashion",
        2,
        ok=True,
        total_s=0.010,
        input_s=0.001,
        queue_s=0.002,
        infer_s=0.004,
        output_s=0.0005,
    )
    stats.observe_request("fashion", 2, ok=False, total_s=0.003)
    v2 = stats.of("fashion", 2)
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


def test_versions_and_models_are_kept_apart_and_unknown_ones_read_as_zero() -> None:
    stats = InferenceStatistics()
    stats.observe_batch("fashion", 3, images=1, inference_s=0.001)
    stats.observe_batch("fashion", 1, images=2, inference_s=0.001)
    stats.observe_batch("other", 1, images=5, inference_s=0.001)
    assert stats.of("fashion", 1).inference_count == 2
    assert stats.of("other", 1).inference_count == 5
    assert stats.of("fashion", 7).inference_count == 0
    stats.forget("fashion", 1)  # unloaded: its statistics go
    assert stats.of("fashion", 1).inference_count == 0
    assert stats.of("fashion", 3).inference_count == 1


def test_model_statistics_message_carries_every_count() -> None:
    stats = InferenceStatistics()
    stats.observe_batch("fashion", 1, images=8, inference_s=0.002)
    stats.observe_batch("fashion", 1, images=8, inference_s=0.002)
    stats.observe_batch("fashion", 1, images=1, inference_s=0.001)
    stats.observe_request("fashion", 1, ok=True, total_s=0.005, queue_s=0.001, infer_s=0.002)
    message = model_statistics(stats.of("fashion", 1))
    assert (message.name, message.version) == ("fashion", "1")
    assert (message.inference_count, message.execution_count) == (17, 3)
    assert message.inference_stats.success.count == 1
    assert message.inference_stats.queue.ns == 1_000_000
    assert [(b.batch_size, b.compute_infer.count) for b in message.batch_stats] == [(1, 1), (8, 2)]


def test_repository_index_lists_every_entry_and_filters_the_ready_ones() -> None:
    entries = [
        IndexEntry("fashion", 1, "UNAVAILABLE", "not served: version policy latest 1"),
        IndexEntry("fashion", 2, "READY", ""),
        IndexEntry("other", None, "UNAVAILABLE", "no version in the repository"),
    ]
    index = repository_index(entries, only_ready=False)
    assert [(m.name, m.version, m.state, m.reason) for m in index.models] == [
        ("fashion", "1", "UNAVAILABLE", "not served: version policy latest 1"),
        ("fashion", "2", "READY", ""),
        ("other", "", "UNAVAILABLE", "no version in the repository"),
    ]
    ready_only = repository_index(entries, only_ready=True)
    assert [(m.name, m.version) for m in ready_only.models] == [("fashion", "2")]


def test_every_unimplemented_rpc_has_a_reason() -> None:
    from server._proto.inference import grpc_predict_v2_pb2 as oip
    from server.triton import TritonServicer

    declared = {m.name for m in oip.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods}
    assert set(NOT_IMPLEMENTED) <= declared
    for name in declared:  # every declared RPC is ours, not the generated base's
        assert not getattr(TritonServicer, name).__module__.endswith("_pb2_grpc"), name
