"""The user's exact commands on a real cluster: two Ray nodes on this machine (`ray start --head`
and `ray start --address`, 2 CPUs each, on loopback), and `ray job submit --working-dir . --
python jobs/classify.py ...` and `ray job submit --runtime-env infra/runtime_env.yaml -- python
jobs/train.py ...` submitted to them. The classify job's model replicas and the training
workers must run on both nodes (recorded per row, in the summary and in the training history),
and every image must come back exactly once. The nodes share this machine's file system, as a
cluster shares its object storage.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

import gfpipe
from gfpipe.classify.parts import read_rows

from .classify.conftest import write_archive
from .classify.test_pipeline import input_keys
from .ray_cluster import LoopbackCluster

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory) -> Iterator[tuple[LoopbackCluster, set[str]]]:
    """The cluster and the short ids (8 characters) of its two nodes.

    Ray Data hands calls to replicas as they come up. A 480-image job is two calls, and one
    replica could take both before the other node's replica has imported torch (it did, once the
    job started faster). These tests are about placement, so the pools wait for all their actors
    (Ray Data's documented `wait_for_min_actors_s`, here from the nodes' environment)."""
    cluster = LoopbackCluster(
        tmp_path_factory.mktemp("ray-nodes"), cpus=2, env={"RAY_DATA_DEFAULT_WAIT_FOR_MIN_ACTORS_S": "120"}
    )
    try:
        cluster.add_node(cpus=2)
        ids = {n["node_id"][:8] for n in cluster.alive_nodes()}
        assert len(ids) == 2
        yield cluster, ids
    finally:
        cluster.stop()


def node_ids(labels) -> set[str]:
    """'IP/node id' labels (rows, summaries, training history) -> the node ids."""
    return {str(label).rsplit("/", 1)[1] for label in labels}


def test_the_classify_job_runs_replicas_on_both_nodes(two_nodes, tmp_path):
    cluster, ids = two_nodes
    write_archive(tmp_path / "in", "test", 480, 60, corrupt=3)
    data, out = str(tmp_path / "in" / "test"), tmp_path / "out"
    submit = cluster.submit("python", "jobs/classify.py", "--input", data, "--output", str(out), "--budget", "9M")
    assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-3000:]
    assert "succeeded" in submit.stdout + submit.stderr
    assert "classified 480 images (3 error rows)" in submit.stdout

    rows = read_rows(str(out))
    keys = rows.column("key").to_pylist()
    assert len(keys) == len(set(keys)) and sorted(keys) == sorted(input_keys(data))
    assert sum(e is not None for e in rows.column("error").to_pylist()) == 3
    summary = json.loads((out / "_gfpipe" / "summary.json").read_text())
    assert summary["images"] == 480 and summary["errors"] == 3 and summary["ray_version"].startswith("2.60")
    # 4 CPUs on nodes of 2: two replicas of 1 CPU (at most half the smallest node), two read tasks
    assert (summary["pool"]["replicas"], summary["pool"]["cpus_per_replica"], summary["pool"]["read_tasks"]) == (
        2, 1.0, 2
    )  # fmt: skip
    # Rows per node: both nodes classified, and nothing else did
    assert node_ids(summary["nodes"]) == ids
    assert sum(summary["nodes"].values()) == 480
    assert node_ids(rows.column("node").to_pylist()) == ids


def test_training_spreads_its_workers_over_both_nodes(two_nodes, tmp_path):
    """Two workers of 1.5 CPUs (the cluster's 4 less one for decoding) fit one per node; the
    decode tasks then find half a CPU per node, so they must not wait for a whole one."""
    from gfpipe.data.synthetic import SynthConfig, write_dataset

    cluster, ids = two_nodes
    write_dataset(str(tmp_path / "glyphs"), "train", 48, SynthConfig(image_size=64, seed=0), shard_size=16)
    write_dataset(str(tmp_path / "glyphs"), "val", 15, SynthConfig(image_size=64, seed=0), shard_size=8)
    submit = cluster.submit(
        "python", "jobs/train.py", "--config", "configs/test-tiny.yaml",
        "--train", str(tmp_path / "glyphs" / "train"), "--val", str(tmp_path / "glyphs" / "val"),
        "--storage", str(tmp_path / "runs"),
        runtime_env="infra/runtime_env.yaml",  # the shipped example, as docs/cluster.md shows it
    )  # fmt: skip
    assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-3000:]
    model = gfpipe.load_checkpoint(str(tmp_path / "runs" / "test-tiny" / "model.pt"))
    history = model.card.provenance["history"]
    assert [h["stage"] for h in history] == ["stage0", "stage1", "stage2", "stage3"]
    assert all(h["train_images"] == 48 and h["val_images"] == 15 for h in history)
    for h in history:
        assert len(h["nodes"]) == 2 and node_ids(h["nodes"]) == ids, h["nodes"]
    assert model.card.calibration["scores"].shape == (15, 3)
