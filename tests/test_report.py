"""The classify job's HTML report: figures, escaping, glimpse placement, writing, empty runs."""

import base64
import io
import re

import numpy as np
import pytest
from PIL import Image

from gfpipe.report import GLIMPSE_COLOURS, _glimpse_boxes, _glimpse_figure, render_report, write_report


def realistic_summary() -> dict:
    """A T=3 run as the classify job writes it to _gfpipe/summary.json (inf as text, as JSON has it)."""
    return {
        "run_id": "20240601-0200-abc",
        "input": "s3://archive/shards-{000..009}.tar",
        "output": "s3://tags/2024-06-01",
        "model": {"checkpoint": "s3://models/gfnet-r50.pt", "backbone": "resnet50", "T": 3, "class_names_count": 1000},
        "images": 1000,
        "errors": 10,
        "errors_by_reason": {"decode": 7, "too_large": 3},
        "exits": [600, 250, 140],
        "step_macs": [1.2e6, 5.4e6, 9.6e6],
        "budget": {
            "text": "--budget 3.5M",
            "target_macs_per_image": 3.5e6,
            "realized_macs_per_image": 3.4867e6,
            "ratio": 3.4867e6 / 3.5e6,
        },
        "thresholds": {"initial": [0.91, 0.7, "-inf"], "final": [0.905, 0.71, float("-inf")]},
        "timeline": [
            {"seconds": 1.0, "images": 100, "mean_macs": 3.0e6},
            {"seconds": 5.0, "images": 500, "mean_macs": 3.45e6},
            {"seconds": 9.5, "images": 1000, "mean_macs": 3.4867e6},
        ],
        "confidence_hist": {
            "bins": [0.0, 0.25, 0.5, 0.75, 1.0],
            "per_step": [[0, 0, 100, 500], [0, 50, 100, 100], [20, 40, 40, 40]],
        },
        "images_per_s": 105.3,
        "elapsed_s": 9.5,
        "shards": {"total": 10, "classified": 8, "skipped_done": 2, "redone_changed": 1},
        "nodes": {"node-a": 600, "node-b": 400},
        "ray_version": "2.40.0",
    }


def empty_summary() -> dict:
    summary = realistic_summary()
    summary.update(
        images=0,
        errors=0,
        errors_by_reason={},
        exits=[0, 0, 0],
        timeline=[],
        confidence_hist={"bins": [0.0, 0.5, 1.0], "per_step": [[0, 0], [0, 0], [0, 0]]},
        images_per_s=0.0,
        nodes={},
    )
    summary["budget"].update(realized_macs_per_image=None, ratio=None)
    return summary


def sample(label="cat", glimpses=((0, 40), (20, 8)), size=64, patch=24, colour=(90, 90, 90)) -> dict:
    image = np.zeros((size, size, 3), np.uint8)
    image[:] = colour
    return {
        "image": image,
        "glimpses": [list(g) for g in glimpses],
        "patch_size": patch,
        "label_name": label,
        "exit_step": len(glimpses) + 1,
        "confidence": 0.87,
        "key": f"shard-000/{label}",
    }


def png_array(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)


def test_realistic_run_renders_figures_and_embeds_every_png():
    text, pngs = render_report(realistic_summary(), [sample(), sample("dog")])

    assert set(pngs) == {"exits.png", "cost.png", "confidence.png", "glimpses.png"}
    for name, data in pngs.items():
        assert data.startswith(b"\x89PNG"), name
        assert f"data:image/png;base64,{base64.b64encode(data).decode('ascii')}" in text, name
    assert "99.62% of target" in text  # realized 3.4867M / target 3.5M
    assert "3.49 MMACs realized vs 3.5 MMACs target" in text
    assert "20240601-0200-abc" in text and "105.3 images/s" in text
    assert "10 total: 8 classified, 2 skipped (done before), 1 redone (changed)" in text
    assert "node-a: 600 rows" in text
    assert re.search(r"<td>decode</td><td class=\"num\">7</td>", text)
    assert "-inf (all exit)" in text and "0.905" in text  # thresholds: text "-inf" and float -inf both read


def test_user_text_is_escaped_in_the_html():
    summary = realistic_summary()
    summary["run_id"] = "<b>run</b>"
    summary["errors_by_reason"] = {"<img src=x onerror=alert(1)>": 2}
    text, _ = render_report(summary, [sample(label="<script>alert(1)</script> $x$")])

    assert "<script>" not in text and "<img src=x" not in text and "<b>run" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt; $x$" in text
    assert "&lt;img src=x onerror=alert(1)&gt;" in text


def test_glimpse_rectangles_take_col_as_x_and_row_as_y():
    size, patch = 64, 24
    fig = _glimpse_figure([sample(glimpses=[(0, size - patch)], size=size, patch=patch)])
    (ax,) = fig.axes
    (box,) = ax.patches
    assert box.get_xy() == (size - patch, 0) and box.get_width() == box.get_height() == patch
    assert _glimpse_boxes([[5, 30]], 8) == [(30.0, 5.0, 8.0)]


def test_glimpse_box_is_drawn_at_the_top_right_of_the_image():
    """Pixels of the rendered PNG: with row and col swapped the box would be at the bottom left."""
    size, patch = 64, 24
    blue = (0, 0, 255)
    _, pngs = render_report(
        realistic_summary(), [sample(glimpses=[(0, size - patch)], size=size, patch=patch, colour=blue)]
    )
    pixels = png_array(pngs["glimpses.png"])

    rows, cols = np.nonzero(np.all(pixels == blue, axis=-1))
    top, bottom, left, right = rows.min(), rows.max(), cols.min(), cols.max()
    box_colour = np.array([int(GLIMPSE_COLOURS[0][i : i + 2], 16) for i in (1, 3, 5)])
    box_rows, box_cols = np.nonzero(np.abs(pixels - box_colour).sum(axis=-1) < 30)
    assert len(box_rows) > 4 * patch  # the outline is there
    assert box_rows.max() < top + (bottom - top) / 2, "box reaches the lower half of the image"
    assert box_cols.min() > left + (right - left) / 2, "box reaches the left half of the image"
    assert box_rows.min() <= top + 3 and box_cols.max() >= right - 3  # flush with the top right corner


def test_write_report_writes_html_and_pngs(tmp_path):
    out = tmp_path / "run"
    uri = write_report(str(out), realistic_summary(), [sample()])

    assert uri == f"{out}/report.html"
    text = (out / "report.html").read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    for name in ("exits.png", "cost.png", "confidence.png", "glimpses.png"):
        data = (out / "_gfpipe" / "plots" / name).read_bytes()
        assert base64.b64encode(data).decode("ascii") in text


@pytest.mark.parametrize("summary", [empty_summary(), {}], ids=["no-images", "bare"])
def test_empty_run_renders_a_valid_report(summary):
    text, pngs = render_report(summary)

    assert set(pngs) == {"exits.png", "cost.png", "confidence.png"}
    assert all(data.startswith(b"\x89PNG") for data in pngs.values())
    assert text.rstrip().endswith("</html>") and "no errors" in text
    assert "Samples" not in text


def test_a_malformed_sample_image_names_its_key():
    bad = sample()
    bad["image"] = np.zeros((3, 64, 64), np.float32)  # a CHW float tensor, not the uint8 HWC image
    with pytest.raises(ValueError, match=r"shard-000/cat.*uint8 numpy array of shape \(H, W, 3\)"):
        render_report(realistic_summary(), [bad])


def test_at_most_twelve_samples_are_drawn():
    text, _ = render_report({}, [sample(label=f"c{i}") for i in range(15)])
    assert "shard-000/c11" in text and "shard-000/c12" not in text
