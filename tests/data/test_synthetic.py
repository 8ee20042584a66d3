"""The cluttered-glyphs generator: determinism, structure knobs, writers, CLI."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from gfpipe import cli
from gfpipe.config import Preprocessing
from gfpipe.data import read_images
from gfpipe.data.synthetic import (
    SYNTH_PREPROCESSING,
    SynthConfig,
    add_arguments,
    encode_image,
    generate,
    generate_sample,
    oracle_crop,
    run,
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


@pytest.mark.parametrize(
    "kw",
    [
        {"small_share": 1.5},
        {"shift": 2.0},
        {"clutter": -1.0},
        {"classes": "A"},
        {"image_size": 8},
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
    assert (tmp_path / "a/val/shard-000001.tar").read_bytes() == (
        tmp_path / "c/val/shard-000001.tar"
    ).read_bytes()
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
            "--image-format",
            "png",
        ]
    )
    assert code == 0
    manifest = json.loads((out / "train" / "_manifest.json").read_text())
    assert manifest["config"]["small_share"] == 0.2 and manifest["config"]["image_format"] == "png"
    assert [Path(s).name for s in manifest["shards"]] == ["shard-000000.parquet"]


def test_cli_bad_format_is_an_error_code(tmp_path):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--out", str(tmp_path), "--format", "zip", "--count", "1"])
    assert run(args) == 2
