"""The classify job's pieces without Ray: part names and coverage, part files, the ledger's
replace-on-retry accounting, shard planning (skip / redo / clean up)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from gfpipe.budget.control import BudgetReport
from gfpipe.classify.layout import (
    Fingerprint,
    OutputLayout,
    contiguous_runs,
    covers_exactly,
    parse_part,
    part_name,
    shard_id,
)
from gfpipe.classify.ledger import BudgetLedger
from gfpipe.classify.parts import SCHEMA, read_rows, write_part
from gfpipe.classify.state import (
    MAX_PIECES,
    PIECE_CHUNK,
    ShardTracker,
    clear_leftovers,
    in_piece,
    plan_shards,
    shard_pieces,
)
from gfpipe.data.shards import Shard


def test_shard_ids_are_stable_safe_and_distinct_for_equal_file_names():
    a, b = shard_id("s3://bucket/a/train-000.tar"), shard_id("s3://bucket/b/train-000.tar")
    assert a != b and a.startswith("train-000.tar-") and b.startswith("train-000.tar-")
    assert shard_id("s3://bucket/a/train-000.tar") == a  # same URI, same id, every run
    odd = shard_id("/data/we ird/..name?*.tar")
    assert "/" not in odd and " " not in odd and not odd.startswith(".")


def test_part_names_round_trip_and_strays_are_not_parts():
    assert parse_part(part_name(10, 19)) == (10, 19)
    assert parse_part("prefix/shard/" + part_name(0, 0)) == (0, 0)
    for stray in (".part-00000000-00000009.parquet.123-abcd.tmp", "part-00000009-00000000.parquet", "x.parquet"):
        assert parse_part(stray) is None


def test_contiguous_runs_group_consecutive_ordinals_and_keep_input_positions():
    runs = contiguous_runs([5, 3, 4, 10, 11, 20])
    assert runs == [(3, 5, [1, 2, 0]), (10, 11, [3, 4]), (20, 20, [5])]


@pytest.mark.parametrize(
    ("ranges", "records", "expected"),
    [
        ([(0, 4), (5, 9)], 10, True),
        ([(5, 9), (0, 4)], 10, True),  # any order
        ([(0, 4), (6, 9)], 10, False),  # a gap
        ([(0, 5), (5, 9)], 10, False),  # an overlap (a row twice)
        ([(0, 4)], 10, False),  # short
        ([(0, 10)], 10, False),  # past the end
        ([(1, 9)], 10, False),  # does not start at 0
        ([], 0, True),  # an empty shard
        ([], 3, False),
    ],
)
def test_a_shard_is_covered_only_by_an_exact_tiling(ranges, records, expected):
    assert covers_exactly(ranges, records) is expected


def _row(key: str, exit_step: int = 1, macs: float = 1.0, error: str | None = None) -> dict:
    return {
        "key": key,
        "shard": "s",
        "label": None if error else 1,
        "label_name": None if error else "one",
        "confidence": None if error else 0.9,
        "topk_labels": [] if error else [1, 0],
        "topk_probs": [] if error else [0.9, 0.1],
        "exit_step": 0 if error else exit_step,
        "macs": 0.0 if error else macs,
        "glimpses": [[0, 1]] * (exit_step - 1) if not error else [],
        "width": 10,
        "height": 12,
        "error": error,
        "run_id": "r",
        "node": "n",
    }


def test_part_files_hold_the_schema_and_readers_skip_temp_files_and_state(tmp_path):
    out = tmp_path / "out"
    layout = OutputLayout(str(out))
    write_part(layout.part_uri("sid", 0, 1), [_row("a", 2), _row("b", error="corrupt image")])
    write_part(layout.part_uri("sid", 2, 2), [_row("c")])
    (out / "sid" / ".part-00000003-00000003.parquet.1-x.tmp").write_bytes(b"half a file")
    (out / "_gfpipe").mkdir()
    write_part(str(out / "_gfpipe" / part_name(0, 0)), [_row("not a row")])  # state is never rows
    table = read_rows(str(out))
    assert table.schema == SCHEMA
    assert sorted(table["key"].to_pylist()) == ["a", "b", "c"]
    rows = {r["key"]: r for r in table.to_pylist()}
    assert rows["a"]["glimpses"] == [[0, 1]] and rows["b"]["error"] == "corrupt image" and rows["b"]["label"] is None
    assert not [p for p in (out / "sid").iterdir() if p.name.endswith(".tmp") and p.name.startswith("part")]


def test_the_ledger_replaces_a_retried_calls_spend_instead_of_adding_it():
    macs = [1.0, 3.0, 6.0]
    ledger = BudgetLedger(macs, 3.0, np.random.default_rng(0).normal(size=(64, 3)), macs)
    first = BudgetReport.of([1, 1, 2], steps=3)
    ledger.report("call-a", "attempt-1", first)  # the actor dies after this partial report
    ledger.report("call-b", "attempt-1", BudgetReport.of([3], steps=3), final=True)
    assert ledger.images() == 4 and ledger.controller.images == 4
    # The retry of call-a reports everything again under a new attempt: replaced, not added.
    ledger.report("call-a", "attempt-2", BudgetReport.of([1, 1, 2, 3], steps=3))
    ledger.report("call-a", "attempt-2", BudgetReport.of([1], steps=3), final=True)
    status = ledger.status()
    assert status["images"] == 6 and ledger.controller.images == 6
    assert status["exits"] == [3, 1, 2]
    assert status["spent_macs"] == pytest.approx(3 * 1 + 3 + 2 * 6)
    assert ledger.controller.spent == pytest.approx(status["spent_macs"])
    assert status["replaced_attempts"] == 1
    # The same attempt reporting again adds (a call reports in several pieces).
    ledger.report("call-b", "attempt-1", BudgetReport.of([1], steps=3))
    assert ledger.images() == 7


def _shards(tmp_path, names):
    folder = tmp_path / "in"
    folder.mkdir(exist_ok=True)
    shards = []
    for name in names:
        (folder / name).write_bytes(b"x" * 10)
        shards.append(Shard(str(folder / name), "wds"))
    return shards


def test_plan_skips_done_shards_redoes_changed_ones_and_cleans_unfinished_ones(tmp_path):
    layout = OutputLayout(str(tmp_path / "out"))
    shards = _shards(tmp_path, ["a.tar", "b.tar", "c.tar"])
    plan = plan_shards(shards, layout)
    assert [s.uri for s, _, _ in plan.todo] == [s.uri for s in shards] and not plan.done
    tracker = ShardTracker(layout, plan, "run-1", steps=3)
    for _, sid, _ in plan.todo[:2]:  # a and b finish; c is left half done
        layout_records(layout, sid, 2)
        assert tracker.add(_summary(sid, 0, 0)) is None  # one of two records: not done
        assert tracker.add(_summary(sid, 1, 1)) == sid
    c_sid = plan.todo[2][1]
    layout_records(layout, c_sid, 2)
    tracker.add(_summary(c_sid, 0, 0))
    write_part(layout.part_uri(c_sid, 0, 0), [_row("stray")])
    assert tracker.unfinished() == [f"{shards[2].uri} (1 of 2 records)"]
    marker = json.loads(Path(layout.done_uri(plan.todo[0][1])).read_text())
    assert marker["records"] == 2 and marker["exits"] == [2, 0, 0] and marker["macs"] == 2.0
    # A retried call rewrites a part of a done shard (other exits): the marker follows the part.
    rewritten = {**_summary(plan.todo[0][1], 1, 1), "macs": 3.0, "exits": [0, 0, 1]}
    assert tracker.add(rewritten) is None  # not newly done
    marker = json.loads(Path(layout.done_uri(plan.todo[0][1])).read_text())
    assert marker["exits"] == [1, 0, 1] and marker["macs"] == 4.0

    # b changes after it was done (new size); c never finished.
    os.utime(shards[1].uri, (1, 1))
    (tmp_path / "in" / "b.tar").write_bytes(b"y" * 11)
    again = plan_shards(shards, layout)
    assert layout.part_ranges(c_sid) == [(0, 0)]  # planning only reads
    clear_leftovers(again, layout)
    assert list(again.done) == [plan.todo[0][1]]
    assert [s.uri for s, _, _ in again.todo] == [shards[1].uri, shards[2].uri]
    assert again.changed == [plan.todo[1][1]]
    assert layout.part_ranges(c_sid) == []  # the unfinished shard's stray part is gone
    assert os.path.exists(layout.done_uri(plan.todo[0][1]))  # the done one stays
    assert not os.path.exists(layout.done_uri(plan.todo[1][1]))  # the changed one is redone
    assert not os.path.exists(layout.records_uri(c_sid))


def layout_records(layout: OutputLayout, sid: str, records: int) -> None:
    from gfpipe.data.io import write_json

    write_json(layout.records_uri(sid), {"uri": sid, "records": records})


def _summary(sid: str, first: int, last: int) -> dict:
    n = last - first + 1
    return {
        "sid": sid,
        "first": first,
        "last": last,
        "macs": float(n),
        "exits": [n, 0, 0],
        "confidence": [[0] * 20] * 3,
        "errors": "{}",
        "node": "node-1",
    }


def test_fingerprints_see_size_and_version():
    assert Fingerprint.from_info({"size": 3, "ETag": '"abc"'}) == Fingerprint(3, "abc")
    assert Fingerprint.from_info({"size": 3, "mtime": 1.5}) == Fingerprint(3, "1.5")
    assert Fingerprint(3, "a") != Fingerprint(4, "a") and Fingerprint(3, "a") != Fingerprint(3, "b")


def test_a_refused_budget_removes_nothing_even_with_overwrite(tmp_path):
    """Checks come before anything is deleted: a typo in the budget must not cost last night's output."""
    from gfpipe.budget.grammar import parse_budget
    from gfpipe.classify.config import ClassifyConfig
    from gfpipe.data.synthetic import SynthConfig, write_dataset
    from gfpipe.pipeline import classify

    write_dataset(str(tmp_path / "in"), "test", 4, SynthConfig(image_size=128, seed=1), shard_size=4)
    shard = str(tmp_path / "in" / "test" / "shard-000000.tar")
    layout = OutputLayout(str(tmp_path / "out"))
    write_part(layout.part_uri(shard_id(shard), 0, 3), [_row(k) for k in "abcd"])
    config = ClassifyConfig(
        input=str(tmp_path / "in" / "test"), output=str(tmp_path / "out"), budget=parse_budget("1K"), overwrite=True
    )
    with pytest.raises(ValueError, match="below the glance-only cost"):
        classify(config)
    assert layout.part_ranges(shard_id(shard)) == [(0, 3)]


@pytest.mark.parametrize(
    ("nodes", "gpus", "expected"),
    [
        ([2.0], 0, (1, "cpu", 1.0, 1)),  # this machine: one replica, one CPU left for reading
        ([16.0], 0, (4, "cpu", 2.0, 8)),
        ([1.0, 2.0], 0, (3, "cpu", 0.5, 1)),  # a replica takes half of the 1-CPU node at most
        ([1.0, 1.0, 1.0, 1.0], 0, (4, "cpu", 0.5, 2)),
        ([8.0, 8.0], 2, (2, "cuda", 1.0, 14)),
    ],
)
def test_replicas_fit_the_smallest_node_and_leave_reading_a_cpu(nodes, gpus, expected):
    from gfpipe.budget.grammar import parse_budget
    from gfpipe.classify.config import ClassifyConfig
    from gfpipe.pipeline import pool_shape

    config = ClassifyConfig(input="in", output="out", budget=parse_budget("9M"))
    cluster = {"CPU": sum(nodes), "GPU": gpus}
    shape = pool_shape(config, cluster, nodes)
    assert (shape.replicas, shape.device, shape.cpus_per_replica, shape.read_tasks) == expected
    assert shape.cpus_per_replica * shape.replicas <= sum(nodes) - 1  # a CPU's worth left for reading
    if shape.device == "cpu":
        assert shape.cpus_per_replica <= min(nodes) / 2  # re-placeable on any node after a loss


@pytest.mark.parametrize(
    ("per_gpu", "replicas", "expected"),
    [
        (1, None, (2, 1.0, 1.0)),
        (2, None, (4, 0.5, 1.0)),  # two actors share each GPU
        (3, 5, (5, 1 / 3, 1.0)),
    ],
)
def test_replicas_per_gpu_share_each_gpu(per_gpu, replicas, expected):
    from gfpipe.budget.grammar import parse_budget
    from gfpipe.classify.config import ClassifyConfig
    from gfpipe.pipeline import pool_shape

    config = ClassifyConfig(
        input="in", output="out", budget=parse_budget("9M"), replicas_per_gpu=per_gpu, replicas=replicas
    )
    shape = pool_shape(config, {"CPU": 16.0, "GPU": 2.0}, [8.0, 8.0])
    assert (shape.replicas, shape.gpus_per_replica, shape.cpus_per_replica) == pytest.approx(expected)
    assert shape.device == "cuda" and shape.replicas * shape.gpus_per_replica <= 2 + 1e-9
    too_many = ClassifyConfig(
        input="in", output="out", budget=parse_budget("9M"), replicas_per_gpu=per_gpu, replicas=2 * per_gpu + 1
    )
    with pytest.raises(ValueError, match="need 3 GPUs, the cluster has 2"):
        pool_shape(too_many, {"CPU": 16.0, "GPU": 2.0}, [8.0, 8.0])


def test_a_pool_that_leaves_reading_no_cpu_is_refused():
    from gfpipe.budget.grammar import parse_budget
    from gfpipe.classify.config import ClassifyConfig
    from gfpipe.pipeline import pool_shape

    config = ClassifyConfig(input="in", output="out", budget=parse_budget("9M"), replicas=2, cpus_per_replica=1.0)
    with pytest.raises(ValueError, match="leave no CPU for reading"):
        pool_shape(config, {"CPU": 2.0}, [2.0])


@pytest.mark.parametrize(
    ("sizes", "read_tasks", "pieces"),
    [
        ([100] * 16, 4, [1] * 16),  # balanced, more shards than read tasks: never split
        ([100] * 15 + [1000], 4, [1] * 15 + [MAX_PIECES]),  # one 10x shard
        ([100, 100, 100, 199, 200], 2, [1, 1, 1, 1, 2]),  # split from twice the median on
        ([1000], 4, [4]),  # a lone shard: one piece per read task
        ([1000], 1, [1]),
        ([100, 100], 8, [4, 4]),  # fewer shards than read tasks: cut into the input's share per task
        ([None, 100, 5000], 2, [1, 1, MAX_PIECES]),  # an unknown size is never split
        ([None, None], 4, [1, 1]),
    ],
)
def test_large_shards_are_cut_into_pieces(sizes, read_tasks, pieces):
    assert shard_pieces(sizes, read_tasks) == pieces


def test_the_pieces_of_a_shard_take_every_record_once_in_contiguous_chunks():
    for pieces in (2, 3, 8):
        owners = [[k for k in range(pieces) if in_piece(k, pieces)(i)] for i in range(5000)]
        assert all(len(o) == 1 for o in owners)  # every record in exactly one piece
        assert {o[0] for o in owners} == set(range(pieces))  # every piece has work
        runs = contiguous_runs([i for i in range(5000) if in_piece(1, pieces)(i)])
        assert all(last - first + 1 == PIECE_CHUNK for first, last, _ in runs[:-1])
    assert in_piece(0, 1) is None


def test_read_items_list_pieces_largest_first_and_equal_ones_in_listing_order(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    sizes = {"a.tar": 10, "b.tar": 300, "c.tar": 10, "d.tar": 20, "e.tar": 300}
    for name, size in sizes.items():
        (folder / name).write_bytes(b"x" * size)
    plan = plan_shards([Shard(str(folder / n), "wds") for n in sizes], OutputLayout(str(tmp_path / "out")))
    items = plan.read_items(read_tasks=1)  # median 20: b and e (15x) are cut in 8 pieces of 37.5 bytes
    names = [(Path(item["uri"]).name, item["piece"], item["pieces"]) for item in items]
    assert names == [("b.tar", k, 8) for k in range(8)] + [("e.tar", k, 8) for k in range(8)] + [
        ("d.tar", 0, 1), ("a.tar", 0, 1), ("c.tar", 0, 1)
    ]  # fmt: skip
    assert [Path(s.uri).name for s, _, _ in plan.todo] == list(sizes)  # the plan itself keeps the listing
