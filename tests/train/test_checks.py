"""What training checks before Ray starts, and the pieces of the Ray wiring that need no cluster:
`gfpipe train` refusing bad input in one line, `prepare_run` (class names, resume records),
`worker_resources`, and the decode UDF dropping bad images instead of raising."""

from __future__ import annotations

import dataclasses
import io
import logging
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gfpipe.data.io import join_uri, write_json
from gfpipe.data.labels import LabelMap
from gfpipe.data.shards import ReadOptions, Shard
from gfpipe.data.synthetic import SynthConfig, write_dataset
from gfpipe.train.config import config_dict, load_config
from gfpipe.train.ingest import DropLedger, decode_shards
from gfpipe.train.plan import DONE_RECORD, RUN_RECORD, prepare_run
from gfpipe.train.run import worker_resources
from tests.cli_helpers import one_line_error_problems

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "configs" / "test-tiny.yaml")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """Digit glyphs (train, val), letter glyphs (val), a plain file."""
    root = tmp_path_factory.mktemp("train-checks")
    write_dataset(str(root / "glyphs"), "train", 4, SynthConfig(image_size=64, seed=0), shard_size=4)
    write_dataset(str(root / "glyphs"), "val", 2, SynthConfig(image_size=64, seed=0), shard_size=2)
    write_dataset(str(root / "letters"), "val", 2, SynthConfig(image_size=64, seed=0, classes="ABCDEFGHIJ"))
    (root / "a-file").write_text("not a folder\n")
    return root


def tiny(workspace: Path, *sets: str):
    return load_config(
        TINY,
        [
            f"data.train={workspace / 'glyphs' / 'train'}",
            f"data.val={workspace / 'glyphs' / 'val'}",
            f"run.storage={workspace / 'runs'}",
            *sets,
        ],
    )


DATA = ["--train", "glyphs/train", "--val", "glyphs/val", "--storage", "runs"]
# (arguments after `gfpipe train`, text the one error line must contain)
BAD = [
    (["--config", TINY, "--train", "nowhere/train", "--val", "glyphs/val"], "nowhere/train: no files matched"),
    (["--config", TINY, *DATA[:2], "--val", "letters/val"], "only in train: 0, 1, 2"),
    (["--config", TINY, *DATA, "--set", "stage1.epoch=3"], "unknown config key stage1.epoch"),
    (["--config", TINY], "data.train and data.val are required"),
    (["--config", TINY, *DATA, "--workers", "0"], "--workers: must be >= 1, got 0"),
    (["--config", TINY, *DATA, "--set", "model.num_classes=4"], "model.num_classes is 4 but the data has 10"),
    (["--config", TINY, *DATA, "--set", "preprocessing.crop=32"], "must equal model.input_size 64"),
    (["--config", TINY, *DATA, "--name", "a/b"], "run.name 'a/b'"),
    (["--config", TINY, *DATA[:4], "--storage", "a-file/runs"], "a-file"),
    (["--config", TINY, *DATA, "--set", "batch_size=1"], "batch_size 1 is below num_workers 2"),
]


@pytest.mark.slow
def test_bad_input_is_one_line_with_status_2_before_ray_starts(workspace):
    problems = one_line_error_problems(BAD, workspace, prefix=["train"], env={"RAY_ADDRESS": ""})
    assert not problems, "\n".join(problems)
    assert not (workspace / "runs").exists()  # nothing was written for any of them


def test_class_names_come_from_the_data_and_set_num_classes(workspace):
    plan = prepare_run(tiny(workspace, "model.num_classes=10"))
    assert plan.class_names == tuple("0123456789") and plan.config.model.num_classes == 10
    assert plan.config.run.output == str(workspace / "runs" / "test-tiny" / "model.pt")
    assert plan.splits["calibration"].uri == plan.splits["val"].uri and plan.state == "new"


def test_given_class_names_must_match_the_data(workspace):
    names = "[" + ", ".join("abcdefghij") + "]"
    with pytest.raises(ValueError, match=r"classes of data.class_names \(the config\) and train \(.*\) differ"):
        prepare_run(tiny(workspace, f"data.class_names={names}"))


def test_class_folders_name_the_classes_and_must_agree(tmp_path):
    def image(path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(path)

    for split, classes in (("train", ("cat", "dog", "emu")), ("val", ("cat", "dog", "emu")), ("odd", ("cat", "owl"))):
        for name in classes:
            image(tmp_path / split / name / "1.png")
    sets = ["data.class_folders=true", f"run.storage={tmp_path / 'runs'}", f"data.train={tmp_path / 'train'}"]
    plan = prepare_run(load_config(TINY, [*sets, f"data.val={tmp_path / 'val'}"]))
    assert plan.class_names == ("cat", "dog", "emu") and plan.config.model.num_classes == 3
    assert sorted(s.label for s in plan.splits["train"].shards) == [0, 1, 2]
    with pytest.raises(ValueError, match=r"only in train: dog, emu; only in val: owl"):
        prepare_run(load_config(TINY, [*sets, f"data.val={tmp_path / 'odd'}"]))


def test_a_run_resumes_only_with_the_config_it_started_with(workspace):
    config = tiny(workspace, "run.name=resumable")
    plan = prepare_run(config)
    write_json(join_uri(plan.run_dir, RUN_RECORD), {"config": config_dict(plan.config)})
    assert prepare_run(config).state == "started"
    assert prepare_run(tiny(workspace, "run.name=resumable", "scaling.num_workers=1")).state == "started"
    with pytest.raises(ValueError, match=r"started with another config \(stage1.epochs: 1 -> 5\).*--restart"):
        prepare_run(tiny(workspace, "run.name=resumable", "stage1.epochs=5"))
    assert prepare_run(tiny(workspace, "run.name=resumable", "stage1.epochs=5"), restart=True).state == "new"
    write_json(join_uri(plan.run_dir, DONE_RECORD), {"output": plan.output})
    assert prepare_run(config).state == "finished"


def test_worker_resources_leave_a_cpu_for_decoding(caplog):
    assert worker_resources(2, False, None, {"CPU": 2.0}) == {"CPU": 0.5}
    assert worker_resources(3, False, None, {"CPU": 16.0}) == {"CPU": 5.0}
    assert worker_resources(8, True, None, {"CPU": 64.0, "GPU": 8.0}) == {"CPU": 1.0, "GPU": 1.0}
    assert worker_resources(4, True, None, {"CPU": 3.0, "GPU": 4.0}) == {"CPU": 0.5, "GPU": 1.0}
    with pytest.raises(ValueError, match="need 4 GPUs, but the cluster has 2"):
        worker_resources(4, True, None, {"CPU": 16.0, "GPU": 2.0})
    with pytest.raises(ValueError, match="the cluster has 1 CPUs"):
        worker_resources(1, False, None, {"CPU": 1.0})
    with pytest.raises(ValueError, match="need 6 CPUs, but the cluster has 2"):
        worker_resources(2, False, 3.0, {"CPU": 2.0})
    with caplog.at_level(logging.WARNING, logger="gfpipe"):
        assert worker_resources(2, False, 1.0, {"CPU": 2.0}) == {"CPU": 1.0}
    assert "less than one CPU" in caplog.text


def _jpeg(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((80, 64, 3), value, np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_decode_drops_bad_images_and_maps_labels_by_name(tmp_path):
    members = {
        "good1.jpg": _jpeg(10),
        "good1.cls": b"0",  # data class 0 = "b" -> model index 1
        "good2.jpg": _jpeg(200),
        "good2.cls": b"a",  # a class name
        "broken.jpg": b"not a jpeg",
        "broken.cls": b"0",
        "nolabel.jpg": _jpeg(50),
        "unknown.jpg": _jpeg(50),
        "unknown.cls": b"zebra",
        "outside.jpg": _jpeg(50),
        "outside.cls": b"7",
    }
    tar_path = tmp_path / "shard.tar"
    with tarfile.open(tar_path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    label_map = LabelMap.build(("a", "b"), ("b", "a"))
    ledger = DropLedger()
    prep = load_config(TINY).preprocessing
    kwargs = dict(
        split="train",
        storage_options=None,
        read_options=ReadOptions(class_names=label_map.read_class_names),
        label_map=label_map,
        preprocessing=prep,
        ledger=ledger,
    )
    shard = Shard(str(tar_path), "wds")
    batch = {"uri": np.array([shard.uri]), "format": np.array(["wds"]), "label": np.array([-1])}
    for training, size in ((True, prep.resize), (False, prep.crop)):
        rows = list(decode_shards(batch, training=training, **kwargs))
        images = np.concatenate([r["image"] for r in rows])
        labels = np.concatenate([r["label"] for r in rows])
        assert images.shape == (2, 3, size, size) and images.dtype == np.uint8
        assert labels.tolist() == [1, 0] and labels.dtype == np.int64
    summary = ledger.summary()["train"]
    assert summary["images"] == 4  # counted once although the shard was read twice
    assert summary["reasons"]["no label"] == 1 and summary["reasons"]["bad label"] == 2
    assert any("broken" in e for e in summary["examples"])
    assert dataclasses.asdict(shard) == {"uri": str(tar_path), "format": "wds", "label": None}
