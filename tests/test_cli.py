"""The command line as a user meets it: every bad invocation is one line, status 2, no traceback.

Each case runs `python -m gfpipe.cli ...` in a subprocess (as a user's shell would) and checks:
exit status 2, exactly one line on stderr, no traceback, the bad value named in that line.
The cases run in parallel threads (each is its own process) to keep the suite short.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import gfpipe
from gfpipe.data.synthetic import SYNTH_PREPROCESSING, SynthConfig, write_dataset
from gfpipe.model import GFNet, GFNetConfig, ModelCard
from tests.cli_helpers import gfpipe_cli, one_line_error_problems


def tiny_checkpoint(path: Path, num_classes: int = 10, T: int = 3) -> GFNet:
    torch.manual_seed(0)
    names = tuple("0123456789ABCDEFGHIJ"[:num_classes])
    card = ModelCard(class_names=names, preprocessing=SYNTH_PREPROCESSING)
    model = GFNet(
        GFNetConfig(backbone="tiny", tiny_width=4, num_classes=num_classes, input_size=224, patch_size=96, T=T), card
    )
    gfpipe.save_checkpoint(model, str(path))
    return model


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A folder with a 10-class checkpoint, glyph data with 10 and with 20 classes, and a file."""
    root = tmp_path_factory.mktemp("cli")
    tiny_checkpoint(root / "model.pt")
    write_dataset(str(root / "glyphs"), "val", 8, SynthConfig(seed=1), shard_size=8)
    write_dataset(str(root / "letters"), "val", 8, SynthConfig(seed=1, classes="ABCDEFGHIJ"), shard_size=8)
    write_dataset(str(root / "twenty"), "val", 8, SynthConfig(seed=1, classes="0123456789abcdefghij"), shard_size=8)
    (root / "a-file").write_text("not a folder\n")
    return root


EVAL = ["evaluate", "--checkpoint", "model.pt", "--data", "glyphs/val", "--out", "eval"]
CLASSIFY = ["classify", "--checkpoint", "model.pt", "--input", "glyphs/val", "--output", "tags"]

# (arguments, text the one error line must contain)
BAD_INVOCATIONS = [
    (EVAL + ["--batch-size", "0"], "--batch-size: must be >= 1, got 0"),
    (EVAL + ["--batch-size", "-3"], "--batch-size: must be >= 1, got -3"),
    (EVAL + ["--batch-size", "lots"], "--batch-size: expected an integer, got 'lots'"),
    (EVAL + ["--points", "0"], "--points: must be >= 2, got 0"),
    (EVAL + ["--device", "cuda"], "--device 'cuda'"),
    (EVAL + ["--device", "gpu"], "--device 'gpu'"),
    (EVAL + ["--budget", "1.2g"], "1.2g"),
    (EVAL + ["--budget", "1K"], "budget 0.001 MMACs is below the glance-only cost"),
    (EVAL + ["--budget", "nan"], "nan"),
    (EVAL + ["--storage-options", '{"anon": true}'], "every location here is local"),
    (
        [
            "evaluate",
            "--checkpoint",
            "model.pt",
            "--data",
            "s3://bucket/val",
            "--out",
            "eval",
            "--storage-options",
            '{"endpoit_url": "http://x"}',
        ],
        "did you mean 'endpoint_url'",
    ),
    (EVAL + ["--storage-options", "not json"], "--storage-options is not valid JSON"),
    (EVAL + ["--storage-options", "[1]"], "must be a JSON object"),
    (["evaluate", "--checkpoint", "missing.pt", "--data", "glyphs/val", "--out", "eval"], "missing.pt"),
    (["evaluate", "--checkpoint", "model.pt", "--data", "nowhere/val", "--out", "eval"], "nowhere/val"),
    (EVAL + ["--calibration", "no-calibration"], "no-calibration"),
    (["evaluate", "--checkpoint", "model.pt", "--data", "glyphs/val", "--out", "a-file/eval"], "a-file"),
    (["evaluate", "--checkpoint", "model.pt", "--data", "twenty/val", "--out", "eval"], "classes"),
    (["evaluate", "--checkpoint", "model.pt", "--data", "letters/val", "--out", "eval"], "not among the model's 10"),
    (EVAL + ["--arch", "resnet50"], "arch"),
    (EVAL + ["--class-folders"], "--class-folders is for image folders"),
    (["evaluate", "--checkpoint", "model.pt"], "--data"),
    (["costs", "--checkpoint", "model.pt", "--T", "5", "--patch-size", "64"], "--T 5 (the checkpoint has 3)"),
    (["costs", "--arch", "resnet5"], "resnet5"),
    (["costs", "--arch", "tiny", "--T", "0"], "--T: must be >= 1, got 0"),
    (["synth", "--out", "new", "--image-size", "100000"], "--image-size: must be between 32 and 4096, got 100000"),
    (["synth", "--out", "new", "--count", "0"], "--count: must be >= 1, got 0"),
    (["synth", "--out", "new", "--format", "zip"], "'zip'"),
    (["synth", "--out", "new", "--shift", "2"], "--shift: must be between -1 and 1, got 2"),
    (["synth", "--out", "glyphs", "--split", "val", "--count", "4"], "--overwrite"),
    (["synth", "--out", "s3://bucket/x", "--endpoint-url", "http://127.0.0.1:9", "--count", "1"], "127.0.0.1:9"),
    (["nosuch"], "nosuch"),
    (["classify", "--input", "glyphs/val", "--output", "tags"], "--budget"),
    (CLASSIFY + ["--budget", "1K"], "below the glance-only cost"),
    (CLASSIFY + ["--budget-total", "1K"], "--budget-total 1K over 8 images"),
    (CLASSIFY + ["--budget", "9M", "--batches-per-call", "0"], "--batches-per-call: must be >= 1, got 0"),
    (CLASSIFY + ["--budget", "9M", "--replicas", "0"], "--replicas: must be >= 1, got 0"),
    (CLASSIFY + ["--budget", "9M", "--cpus-per-replica", "-1"], "--cpus-per-replica must be > 0"),
    (CLASSIFY + ["--budget", "9M", "--calibrate", "0"], "--calibrate: must be >= 1, got 0"),
    (CLASSIFY + ["--budget", "9M", "--device", "tpu"], "'tpu'"),
    (["classify", "--input", "nowhere/val", "--output", "tags", "--budget", "9M"], "nowhere/val"),
    (["classify", "--input", "glyphs", "--output", "glyphs/tags", "--budget", "9M"], "lies inside --input glyphs"),
    (["classify", "--input", "glyphs/val", "--output", "a-file/tags", "--budget", "9M"], "a-file"),
    (
        ["classify", "--input", "glyphs/val", "--output", "tags", "--budget", "9M", "--checkpoint", "missing.pt"],
        "missing.pt",
    ),
]


@pytest.mark.slow
def test_every_bad_invocation_is_one_line_with_status_2(workspace):
    problems = one_line_error_problems(BAD_INVOCATIONS, workspace)
    assert not problems, "\n".join(problems)
    assert not (workspace / "eval").exists() or not any((workspace / "eval").iterdir())
    assert not (workspace / "tags").exists() or not any(p.name != "_gfpipe" for p in (workspace / "tags").iterdir())


def test_help_shows_every_flag_with_a_help_line_and_its_default(workspace):
    from gfpipe.cli import _parser
    from gfpipe.commands import SUBCOMMANDS

    checked = []
    for name in SUBCOMMANDS:
        parser = _parser(name)
        sub = next(a for a in parser._actions if a.dest == "command").choices[name]
        for action in sub._actions:
            if action.dest in ("help",):
                continue
            assert action.help, f"gfpipe {name} {action.option_strings} has no help line"
        text = re.sub(r"\s+", " ", sub.format_help())
        for action in sub._actions:
            if action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
                continue
            shown = f"(default: {action.default})" in text or "default" in action.help
            assert shown, f"gfpipe {name} {action.option_strings[0]} hides its default"
            checked.append(action.option_strings[0])
    assert {"--batch-size", "--points", "--device", "--count", "--split"} <= set(checked)


def test_verbose_works_before_and_after_the_subcommand(workspace):
    for args in (["-v", "costs", "--arch", "tiny"], ["costs", "--arch", "tiny", "-v"]):
        result = gfpipe_cli(*args, cwd=workspace)
        assert result.returncode == 0, result.stderr
    failed = gfpipe_cli("costs", "--arch", "resnet5", "-v", cwd=workspace)
    assert failed.returncode == 2 and "Traceback" in failed.stderr  # -v adds the traceback


def test_piping_into_head_is_not_an_error(workspace, tmp_path):
    for command, first in (
        ("costs --arch resnet50 --T 5", "resnet50"),
        (f"evaluate --checkpoint model.pt --data glyphs/val --out {tmp_path}/eval --points 2000", "8 images"),
    ):
        shell = f"{sys.executable} -m gfpipe.cli {command} | head -1"
        result = subprocess.run(["bash", "-o", "pipefail", "-c", shell], cwd=workspace, capture_output=True, text=True)
        assert result.returncode == 0 and result.stdout.startswith(first), result.stderr
        assert "Error" not in result.stderr and "Traceback" not in result.stderr
    assert (tmp_path / "eval" / "evaluate.json").exists()  # the work was finished all the same


def test_synth_refuses_to_mix_datasets_and_overwrite_replaces(workspace, tmp_path):
    out = str(tmp_path / "ds")
    assert (
        gfpipe_cli(
            "synth", "--out", out, "--split", "test", "--count", "12", "--seed", "1", "--shard-size", "5", cwd=workspace
        ).returncode
        == 0
    )
    second = gfpipe_cli("synth", "--out", out, "--split", "test", "--count", "4", "--seed", "2", cwd=workspace)
    assert second.returncode == 2 and "--overwrite" in second.stderr
    third = gfpipe_cli(
        "synth", "--out", out, "--split", "test", "--count", "4", "--seed", "2", "--overwrite", cwd=workspace
    )
    assert third.returncode == 0, third.stderr
    from gfpipe.data import read_images

    assert len(list(read_images(out + "/test"))) == 4
    manifest = json.loads((tmp_path / "ds" / "test" / "_manifest.json").read_text())
    assert manifest["count"] == 4 and manifest["shards"] == ["shard-000000.tar"]


@pytest.mark.slow
def test_s3_mistakes_are_one_line_too(workspace, s3_server):
    """With credentials from the environment (as on a cluster): a missing bucket, prefix or
    checkpoint is one line naming it; library chatter (botocore's credential notes) stays quiet."""
    bucket = s3_server.make_bucket("cli")
    env = s3_server.env()
    ok = gfpipe_cli("synth", "--out", f"s3://{bucket}/glyphs", "--split", "val", "--count", "4", cwd=workspace, env=env)
    assert ok.returncode == 0 and ok.stderr == "", ok.stderr  # per-shard progress is DEBUG-only
    assert ok.stdout.startswith("wrote 4 val images"), ok.stdout
    cases = [
        (["--data", f"s3://{bucket}/glyphs/val", "--out", "s3://no-such-bucket/eval"], "no-such-bucket"),
        (["--data", f"s3://{bucket}/nothing-here", "--out", f"s3://{bucket}/eval"], "nothing-here"),
    ]
    for args, named in cases:
        result = gfpipe_cli("evaluate", "--checkpoint", "model.pt", *args, cwd=workspace, env=env)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and named in lines[0], result.stderr
    missing = gfpipe_cli("costs", "--checkpoint", f"s3://{bucket}/model.pt", cwd=workspace, env=env)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "model.pt" in missing.stderr


@pytest.mark.parametrize("ratio, noted", [(1.116, True), (1.0101, True), (1.01, False), (0.998, False), (None, False)])
def test_the_end_of_run_summary_says_why_a_run_went_over_the_budget(ratio, noted):
    """Over 1% above the budget (small runs on an archive unlike the calibration data), the last
    lines say so and what to do; at or under the promise they do not."""
    from gfpipe.commands.classify import summary_text

    summary = {
        "images": 120, "errors": 0, "exits": [42, 26, 52], "elapsed_s": 9.0, "images_per_s": 13.3, "output": "out",
        "shards": {"total": 3, "classified": 3, "skipped_done": 0, "redone_changed": 0},
        "budget": {"ratio": ratio, "realized_macs_per_image": 1e7, "target_macs_per_image": 9e6},
    }  # fmt: skip
    text = summary_text(summary)
    assert ("over the budget" in text and "--calibrate N" in text) == noted
    assert text.splitlines()[-1] == "report: out/report.html"
