"""The cluttered-glyphs generator: determinism, structure knobs, writers, CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from gfpipe import cli
from gfpipe.config import Preprocessing
from gfpipe.data import read_images
from gfpipe.data.shards import count_images
from gfpipe.data.synthetic import (
    MAX_IMAGE_SIZE,
    SYNTH_PREPROCESSING,
    SynthConfig,
    encode_image,
    generate,
    generate_sample,
    oracle_crop,
    read_manifest,
    synthetic_preprocessing,
    write_dataset,
)

SMALL = SynthConfig(image_size=96)


def test_same_index_same_image_however_generated():
    batch = list(generate(6, "test", SMALL))
    later = list(generate(2, "test", SMALL, start=4))
    single = generate_sample(5, "test", SMALL)
    np.testing.assert_array_equal(batch[5].image, later[1].image)
    np.testing.assert_array_equal(batch[5].image, single.image)
    assert (batch[5].label, batch[5].bbox, batch[5].small) == (single.label, single.bbox, single.small)


def test_splits_and_seeds_are_different_streams():
    a = generate_sample(0, "train", SMALL)
    assert not np.array_equal(a.image, generate_sample(0, "val", SMALL).image)
    assert not np.array_equal(a.image, generate_sample(0, "test", SMALL).image)
    other_seed = SynthConfig(image_size=96, seed=1)
    assert not np.array_equal(a.image, generate_sample(0, "train", other_seed).image)


def test_bbox_is_inside_and_holds_the_target_ink():
    config = SynthConfig(image_size=224, clutter=0.0)
    for sample in generate(20, "val", config):
        x0, y0, x1, y1 = sample.bbox
        assert 0 <= x0 < x1 <= 224 and 0 <= y0 < y1 <= 224
        inside = sample.image[y0:y1, x0:x1].astype(float)
        # without clutter, the target is the only ink: the box has much more contrast than noise
        assert inside.std() > 20
        height = y1 - y0
        assert (height <= 22) if sample.small else (height >= 35), (sample.small, height)
        assert sample.image.shape == (224, 224, 3) and sample.image.dtype == np.uint8


def test_small_share_and_shift_change_the_mix_coherently():
    def small_set(**kw):
        return {s.index for s in generate(200, "test", SynthConfig(image_size=64, **kw)) if s.small}

    assert small_set(small_share=0.0) == set() and len(small_set(small_share=1.0)) == 200
    base, harder, easier = small_set(), small_set(shift=0.5), small_set(shift=-0.5)
    assert easier < base < harder  # the same images flip; nothing else moves
    assert 70 < len(base) < 130 and len(harder) > 130 and len(easier) < 70
    assert len(small_set(shift=1.0)) == 200 and small_set(shift=-1.0) == set()


def test_clutter_knob_and_custom_classes():
    bare = generate_sample(3, "train", SynthConfig(image_size=96, clutter=0.0, classes="AB"))
    busy = generate_sample(3, "train", SynthConfig(image_size=96, clutter=3.0, classes="AB"))
    assert bare.label in (0, 1)
    assert busy.image.astype(float).std() > bare.image.astype(float).std()


def test_clutter_contrast_changes_only_the_fragments():
    """The same draws whatever the clutter's contrast: target, label, noise and layout stay put,
    only the fragments' ink moves towards the background."""
    size = dict(image_size=128, small_font=(0.11, 0.14))
    for index in range(6):
        loud = generate_sample(index, "test", SynthConfig(**size))
        quiet = generate_sample(index, "test", SynthConfig(**size, clutter_contrast=(25.0, 60.0)))
        flat = generate_sample(index, "test", SynthConfig(**size, clutter_contrast=(0.0, 0.0)))
        assert (loud.label, loud.bbox, loud.small) == (quiet.label, quiet.bbox, quiet.small)
        x0, y0, x1, y1 = loud.bbox
        assert np.array_equal(loud.image[y0:y1, x0:x1], quiet.image[y0:y1, x0:x1])
        moved = np.any(loud.image != quiet.image, axis=2)
        assert moved.any()  # the fragments' pixels
        away = [np.abs(img.image.astype(float) - flat.image)[moved].mean() for img in (quiet, loud)]
        assert 0 < away[0] < 0.6 * away[1]


def _share_located_in_glance(config: SynthConfig, n: int = 40, glance: int = 48) -> float:
    """How often the strongest local blob of the downsampled image lies on the target."""
    hits = 0
    for sample in generate(n, "test", config):
        grey = Image.fromarray(sample.image).convert("L").resize((glance, glance), Image.Resampling.BOX)
        local = np.asarray(grey, np.float32) - np.asarray(grey.filter(ImageFilter.BoxBlur(4)), np.float32)
        row, col = np.unravel_index(np.abs(local).argmax(), local.shape)
        scale = config.image_size / glance
        x0, y0, x1, y1 = sample.bbox
        y, x = (row + 0.5) * scale, (col + 0.5) * scale
        hits += x0 - scale <= x <= x1 + scale and y0 - scale <= y <= y1 + scale
    return hits / n


def test_quiet_clutter_makes_a_small_target_the_glances_most_salient_blob():
    """What the knob is for (bench/fidelity.py): with the default contrast a small target looks
    like a fragment in the glance (a blob detector finds it in 27 of 40 images); with quiet
    clutter the glance says where it is (40 of 40), while reading it still needs full resolution."""
    small = dict(image_size=128, small_font=(0.11, 0.14), small_share=1.0)
    assert _share_located_in_glance(SynthConfig(**small)) < 0.8
    assert _share_located_in_glance(SynthConfig(**small, clutter_contrast=(25.0, 60.0))) >= 0.95


@pytest.mark.parametrize(
    "kw",
    [
        {"clutter_contrast": (60.0, 25.0)},
        {"clutter_contrast": (-1.0, 25.0)},
        {"clutter_contrast": (25.0, 300.0)},
        {"small_share": 1.5},
        {"shift": 2.0},
        {"clutter": -1.0},
        {"classes": "A"},
        {"image_size": 8},
        {"image_size": MAX_IMAGE_SIZE + 1},
        {"image_format": "gif"},
    ],
)
def test_config_rejects_bad_knobs(kw):
    with pytest.raises(ValueError):
        SynthConfig(**kw)


def test_oracle_crop_and_preprocessing_helper():
    sample = generate_sample(1, "test", SynthConfig())
    crop = oracle_crop(sample.image, sample.bbox, 96)
    assert crop.shape == (96, 96, 3)
    corner = oracle_crop(sample.image, (0, 0, 4, 4), 96)
    np.testing.assert_array_equal(corner, sample.image[:96, :96])
    assert SYNTH_PREPROCESSING == Preprocessing(resize=224, crop=224) == synthetic_preprocessing()


def test_write_dataset_both_formats_read_back_with_metadata(tmp_path):
    config = SynthConfig(image_size=64, seed=3)
    manifest = write_dataset(str(tmp_path), "test", 10, config, formats=("wds", "parquet"), shard_size=4)
    assert manifest["count"] == 10 and len(manifest["shards"]) == 6
    assert (tmp_path / "classes.txt").read_text().split() == list("0123456789")
    assert json.loads((tmp_path / "test" / "_manifest.json").read_text())["config"]["seed"] == 3
    wds = list(read_images(f"{tmp_path}/test/*.tar"))
    pqt = list(read_images(str(tmp_path / "test"), format="parquet"))
    assert len(wds) == len(pqt) == 10
    for row_w, row_p in zip(wds, pqt, strict=True):
        index = row_w["metadata"]["index"]
        truth = generate_sample(index, "test", config)
        assert row_w["label"] == row_p["label"] == truth.label
        assert row_w["metadata"]["bbox"] == row_p["metadata"]["bbox"] == list(truth.bbox)
        assert row_w["metadata"]["small"] == truth.small and row_w["image"].shape == (64, 64, 3)
        np.testing.assert_array_equal(row_w["image"], row_p["image"])
    assert wds[0]["key"] == f"{tmp_path}/test/shard-000000.tar#test-00000000"


def test_output_is_byte_identical_whatever_the_sharding(tmp_path):
    config = SynthConfig(image_size=48)
    write_dataset(str(tmp_path / "a"), "val", 9, config, shard_size=3)
    write_dataset(str(tmp_path / "b"), "val", 9, config, shard_size=9)
    write_dataset(str(tmp_path / "c"), "val", 9, config, shard_size=3)
    assert (tmp_path / "a/val/shard-000001.tar").read_bytes() == (tmp_path / "c/val/shard-000001.tar").read_bytes()
    a = {r["key"].split("#")[1]: r["image"] for r in read_images(str(tmp_path / "a" / "val"))}
    b = {r["key"].split("#")[1]: r["image"] for r in read_images(str(tmp_path / "b" / "val"))}
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert encode_image(generate_sample(4, "val", config).image, config)[:2] == b"\xff\xd8"


def test_cli_synth_writes_and_reports(tmp_path):
    out = tmp_path / "ds"
    code = cli.main(
        [
            "synth",
            "--out",
            str(out),
            "--split",
            "train",
            "--count",
            "5",
            "--seed",
            "3",
            "--format",
            "parquet",
            "--image-size",
            "64",
            "--small-share",
            "0.2",
            "--clutter",
            "0.5",
            "--shift",
            "0.1",
            "--clutter-contrast",
            "25,60",
            "--image-format",
            "png",
        ]
    )
    assert code == 0
    manifest = json.loads((out / "train" / "_manifest.json").read_text())
    assert manifest["config"]["small_share"] == 0.2 and manifest["config"]["image_format"] == "png"
    assert manifest["config"]["clutter_contrast"] == [25.0, 60.0]
    assert [Path(s).name for s in manifest["shards"]] == ["shard-000000.parquet"]


def test_cli_bad_format_is_a_one_line_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["synth", "--out", str(tmp_path), "--format", "zip", "--count", "1"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'zip'" in err and "wds" in err
    assert not (tmp_path / "test").exists()


@pytest.mark.parametrize("value", ["60,25", "25", "0,300", "a,b"])
def test_cli_bad_clutter_contrast_is_a_one_line_usage_error(tmp_path, capsys, value):
    with pytest.raises(SystemExit) as info:
        cli.main(["synth", "--out", str(tmp_path), "--clutter-contrast", value, "--count", "1"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "LOW" in err and value in err
    assert not (tmp_path / "test").exists()


def test_cli_huge_image_size_is_refused_before_any_work(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["synth", "--out", str(tmp_path / "ds"), "--image-size", "100000", "--count", "1"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "100000" in err and str(MAX_IMAGE_SIZE) in err and err.count("\n") == 1
    assert not (tmp_path / "ds").exists()


def test_cli_second_write_needs_overwrite_and_then_replaces_the_split(tmp_path, capsys):
    out = tmp_path / "ds"
    base = ["synth", "--out", str(out), "--split", "test", "--image-size", "48", "--shard-size", "4"]
    assert cli.main([*base, "--count", "10", "--seed", "1"]) == 0
    capsys.readouterr()
    assert cli.main([*base, "--count", "3", "--seed", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{out}/test already holds 4 files" in err and "--overwrite" in err
    assert len(list(read_images(str(out / "test")))) == 10  # untouched
    assert cli.main([*base, "--count", "3", "--seed", "2", "--overwrite"]) == 0
    rows = list(read_images(str(out / "test")))
    assert len(rows) == 3 and {r["metadata"]["seed"] for r in rows} == {2}


# --- write_dataset: refusing, replacing, validating -----------------------------------------


def test_write_dataset_refuses_a_non_empty_split_even_of_foreign_files(tmp_path):
    config = SynthConfig(image_size=48, seed=1)
    write_dataset(str(tmp_path), "test", 10, config, shard_size=4)
    (tmp_path / "test" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"test already holds 5 files .*overwrite=True"):
        write_dataset(str(tmp_path), "test", 3, SynthConfig(image_size=48, seed=2), shard_size=4)
    assert len(list(read_images(str(tmp_path / "test")))) == 10
    other = tmp_path / "other"
    (other / "val").mkdir(parents=True)
    (other / "val" / "x.bin").write_bytes(b"not ours")
    with pytest.raises(FileExistsError, match=r"val already holds 1 files \(x.bin\)"):
        write_dataset(str(other), "val", 1, config)


def test_overwrite_removes_everything_that_was_in_the_split_first(tmp_path):
    write_dataset(
        str(tmp_path), "test", 10, SynthConfig(image_size=48, seed=1), shard_size=4, formats=("wds", "parquet")
    )
    (tmp_path / "test" / "notes.txt").write_text("mine")
    (tmp_path / "val").mkdir()
    (tmp_path / "val" / "keep.bin").write_bytes(b"other split")
    manifest = write_dataset(str(tmp_path), "test", 3, SynthConfig(image_size=48, seed=2), shard_size=4, overwrite=True)
    assert sorted(p.name for p in (tmp_path / "test").iterdir()) == ["_manifest.json", "shard-000000.tar"]
    assert manifest["count"] == len(list(read_images(str(tmp_path / "test")))) == 3
    assert (tmp_path / "val" / "keep.bin").exists()  # only the split is replaced


def test_classes_file_conflict_is_refused_even_with_overwrite(tmp_path):
    write_dataset(str(tmp_path), "test", 2, SynthConfig(image_size=48))
    for overwrite in (False, True):
        with pytest.raises(
            ValueError, match=r"classes.txt lists 10 classes \(0, 1, .*but this split uses 2 classes \(A, B\)"
        ):
            write_dataset(str(tmp_path), "val", 2, SynthConfig(image_size=48, classes="AB"), overwrite=overwrite)
    assert not (tmp_path / "val").exists()
    write_dataset(str(tmp_path), "val", 2, SynthConfig(image_size=48))  # same classes: fine


@pytest.mark.parametrize(
    "count, shard_size, split, match",
    [
        (0, 4, "test", "count >= 1"),
        (-5, 4, "test", "count >= 1"),
        (3, 0, "test", "shard_size >= 1"),
        (3, 4, "_tmp", "plain folder name"),
        (3, 4, "a/b", "plain folder name"),
        (3, 4, "", "plain folder name"),
    ],
)
def test_write_dataset_checks_arguments_before_writing(tmp_path, count, shard_size, split, match):
    with pytest.raises(ValueError, match=match):
        write_dataset(str(tmp_path / "ds"), split, count, SynthConfig(image_size=48), shard_size=shard_size)
    assert not (tmp_path / "ds").exists()


def test_image_size_limit_is_checked_before_any_allocation():
    with pytest.raises(ValueError, match=f"between 32 and {MAX_IMAGE_SIZE} pixels, got 100000"):
        SynthConfig(image_size=100_000)
    assert SynthConfig(image_size=MAX_IMAGE_SIZE).image_size == MAX_IMAGE_SIZE


def test_out_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "ds").write_text("x")
    with pytest.raises(OSError, match="existing file"):
        write_dataset(str(tmp_path / "ds"), "test", 1, SynthConfig(image_size=48))


def test_manifest_names_shards_relative_to_itself_so_copies_work(tmp_path):
    write_dataset(str(tmp_path / "a"), "test", 5, SynthConfig(image_size=48), shard_size=2, formats=("wds", "parquet"))
    raw = json.loads((tmp_path / "a" / "test" / "_manifest.json").read_text())
    assert raw["shards"][:2] == ["shard-000000.tar", "shard-000000.parquet"]
    assert all("/" not in s for s in raw["shards"]) and len(raw["shard_md5"]) == 6
    assert raw["shard_images"]["shard-000002.tar"] == 1
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "a")
    manifest = read_manifest(str(tmp_path / "b" / "test"))
    assert manifest["shards"][0] == f"{tmp_path}/b/test/shard-000000.tar"
    assert all(Path(s).exists() for s in manifest["shards"])
    assert sum(count_images(s) for s in manifest["shards"] if s.endswith(".tar")) == 5
    assert read_manifest(str(tmp_path / "nothing")) is None
