"""Data class names (classes.txt) and the map from data labels to a model's classes."""

from __future__ import annotations

import pytest

from gfpipe.data import read_images
from gfpipe.data.io import write_bytes
from gfpipe.data.labels import LabelMap, dataset_class_names, parse_class_names
from gfpipe.data.shards import RawRecord, ReadOptions
from gfpipe.data.synthetic import SynthConfig, write_dataset

DIGITS = tuple("0123456789")


# --- dataset_class_names --------------------------------------------------------------------


def test_class_names_of_a_synth_split_whatever_the_uri_form(tmp_path):
    write_dataset(str(tmp_path), "test", 3, SynthConfig(image_size=32, classes="ABC"), shard_size=2)
    split = tmp_path / "test"
    for uri in (
        str(split),
        f"{split}/",
        f"file://{split}",
        f"{split}/*.tar",
        f"{split}/shard-{{000000..000001}}.tar",
        f"{split}/shard-000000.tar",
        f"{split}/shard-",
        str(tmp_path),
    ):
        assert dataset_class_names(uri) == ("A", "B", "C"), uri


def test_class_names_prefer_the_data_folder_and_stop_at_the_parent(tmp_path):
    (tmp_path / "a" / "b" / "c").mkdir(parents=True)
    (tmp_path / "classes.txt").write_text("far\naway\n")
    assert dataset_class_names(str(tmp_path / "a" / "b" / "c")) is None  # two levels up: not used
    (tmp_path / "a" / "b" / "classes.txt").write_text("cat\ndog\n\n")
    assert dataset_class_names(str(tmp_path / "a" / "b" / "c")) == ("cat", "dog")
    (tmp_path / "a" / "b" / "c" / "classes.txt").write_text("eel\r\nowl\r\n")
    assert dataset_class_names(str(tmp_path / "a" / "b" / "c")) == ("eel", "owl")


@pytest.mark.parametrize(
    "text, match",
    [("a\n\nb\n", "line 2 is blank"), ("a\nb\na\n", "class 'a' is on lines 1 and 3"), ("\n\n", "is empty")],
)
def test_bad_classes_file_is_an_error_naming_the_file(tmp_path, text, match):
    (tmp_path / "classes.txt").write_text(text)
    with pytest.raises(ValueError, match=match) as info:
        dataset_class_names(str(tmp_path))
    assert str(tmp_path / "classes.txt") in str(info.value)
    assert parse_class_names("x\ny\n") == ("x", "y")


@pytest.mark.slow
def test_class_names_on_s3(s3_server):
    bucket = s3_server.make_bucket()
    opts = s3_server.storage_options
    write_dataset(f"s3://{bucket}/ds", "val", 2, SynthConfig(image_size=32, classes="XY"), storage_options=opts)
    assert dataset_class_names(f"s3://{bucket}/ds/val", opts) == ("X", "Y")
    assert dataset_class_names(f"s3://{bucket}/ds/val/*.tar", opts) == ("X", "Y")
    write_bytes(f"s3://{bucket}/bare/val/s.tar", b"x", opts)
    assert dataset_class_names(f"s3://{bucket}/bare/val", opts) is None


# --- LabelMap -------------------------------------------------------------------------------


def test_label_map_matches_by_name_and_accepts_a_subset():
    label_map = LabelMap.build(("cat", "dog", "eel"), ("eel", "cat"))
    assert [label_map.map(0), label_map.map(1)] == [2, 0]
    assert label_map.read_class_names == ("eel", "cat")
    identity = LabelMap.build(DIGITS, DIGITS)
    assert [identity.map(i) for i in range(10)] == list(range(10))


def test_label_map_refuses_data_classes_the_model_lacks_showing_both_sets():
    with pytest.raises(ValueError) as info:
        LabelMap.build(DIGITS, tuple("0123456789ABCDEFGHIJ"))
    text = str(info.value)
    assert "10 of the data's 20 classes are not among the model's 10: A, B, C" in text
    assert "model classes not in the data: none" in text
    assert "model classes: 0, 1, 2" in text and "(20 in all)" in text
    with pytest.raises(ValueError, match=r"1 of the data's 2 classes .*: owl \(model classes not in the data: dog"):
        LabelMap.build(("cat", "dog"), ("cat", "owl"))


def test_without_data_names_labels_must_be_model_indices():
    label_map = LabelMap.build(DIGITS)
    assert label_map.map(9) == 9
    with pytest.raises(ValueError, match=r"s.tar#k7: label 15 is not a class of this model, which has 10 classes"):
        label_map.map(15, key="s.tar#k7")
    with pytest.raises(ValueError, match="label 2 is outside the data's 2 classes"):
        LabelMap.build(DIGITS, ("3", "4")).check_index(2)


def test_record_label_refuses_unknown_text_and_marks_unlabelled():
    label_map = LabelMap.build(("cat", "dog"))
    assert label_map.record_label({"key": "k0", "label": 1, "unknown_label": None}) == 1
    assert label_map.record_label({"key": "k0", "label": 0}) == 0
    assert label_map.record_label(RawRecord("k1", "s", b"", None)) == -1
    with pytest.raises(ValueError, match=r"k2: label 'owl' is not one of the class names \(cat, dog\)"):
        label_map.record_label(RawRecord("k2", "s", b"", None, unknown_label="owl"))


def test_twenty_class_data_on_a_ten_class_model_is_refused_end_to_end(tmp_path):
    classes = "ABCDEFGHIJKLMNOPQRST"
    write_dataset(str(tmp_path), "test", 4, SynthConfig(image_size=32, classes=classes))
    data_names = dataset_class_names(str(tmp_path / "test"))
    assert data_names == tuple(classes)
    with pytest.raises(ValueError, match="not among the model's 10"):
        LabelMap.build(DIGITS, data_names)
    # without a classes.txt, out-of-range integer labels are caught record by record
    (tmp_path / "classes.txt").unlink()
    label_map = LabelMap.build(DIGITS, dataset_class_names(str(tmp_path / "test")))
    rows = list(read_images(str(tmp_path / "test"), options=ReadOptions(class_names=label_map.read_class_names)))
    big = [r for r in rows if r["label"] >= 10]
    assert big, "seeded data has labels >= 10"
    with pytest.raises(ValueError, match=f"{big[0]['key']}: label {big[0]['label']} is not a class"):
        for row in rows:
            label_map.record_label(row)
