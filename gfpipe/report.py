"""The classify job's HTML report: headline figures, tables and plots of one run in one file.

The people who run the nightly job open one file to see whether the run kept its budget, where
the images left and what failed. The PNGs are embedded as base64 data URIs, so report.html works
when it is downloaded alone from object storage or attached to a message; they are also written
to `_gfpipe/plots/` for dashboards that want the images themselves.

Plots are drawn on plain `matplotlib.figure.Figure` objects (Agg canvas on save), not through
pyplot: no backend switch in the caller's process and no global figure registry to leak from a
long-running driver. No Ray here: the report is rendered from the summary dict alone.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from gfpipe.budget.grammar import format_amount
from gfpipe.data.io import join_uri, write_bytes

log = logging.getLogger(__name__)

REPORT_NAME = "report.html"
PLOTS_DIR = "_gfpipe/plots"
DPI = 110

MAX_SAMPLES = 12
"""At most this many sample images are drawn: a 4 x 3 grid still reads on one screen."""

CEILING = 1.01
"""The job never spends more than 1% above its budget (DESIGN.md); the cost plot draws that line."""

GLIMPSE_COLOURS = ("#ffd400", "#ff3b30", "#30d158", "#ff9f0a", "#bf5af2", "#64d2ff", "#ff375f", "#ffffff")
"""Edge colours of focus patches 1, 2, ... (cycled): bright, so they stand out on photographs."""

_MAC_UNITS = ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K"))

_CAPTIONS = {
    "exits.png": "Images by the step at which they exited; each tick gives the cumulative cost of exiting there.",
    "cost.png": "Realized mean cost per image during the run, against the target (solid) and the +1% ceiling (dashed).",
    "confidence.png": "Top-1 confidence of the images at the step where they exited, one line per exit step.",
    "glimpses.png": "Sample images with their focus patches, numbered in the order the policy chose them; "
    "titles give label, confidence and exit step.",
}

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1000px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1.5em 0; }
figure img { max-width: 100%; }
figcaption { color: #555; font-size: 0.9em; }
"""


def render_report(
    summary: Mapping[str, Any], samples: Sequence[Mapping[str, Any]] = ()
) -> tuple[str, dict[str, bytes]]:
    """-> (html text, {png file name: png bytes}). The HTML embeds every PNG as a base64 data URI so
    the one file is self-contained (it is also written next to the PNG files).

    Missing or empty parts of `summary` (no images, empty timeline, no samples) give a report that
    says so instead of raising; a malformed sample image is a ValueError that names its key.
    """
    pngs = {
        "exits.png": _plot_exits(summary),
        "cost.png": _plot_cost(summary),
        "confidence.png": _plot_confidence(summary),
    }
    shown = list(samples)[:MAX_SAMPLES]
    if len(samples) > MAX_SAMPLES:
        log.debug("report shows %d of %d samples", MAX_SAMPLES, len(samples))
    if shown:
        pngs["glimpses.png"] = _png(_glimpse_figure(shown))
    return _html(summary, shown, pngs), pngs


def write_report(
    output_uri: str,
    summary: Mapping[str, Any],
    samples: Sequence[Mapping[str, Any]] = (),
    storage_options: Mapping[str, Any] | None = None,
) -> str:
    """Writes OUTPUT/report.html and OUTPUT/_gfpipe/plots/<name>.png through gfpipe.data.io.write_bytes;
    returns the report's URI. The report is written last, so its presence means the plots are there too.
    """
    text, pngs = render_report(summary, samples)
    for name, data in pngs.items():
        write_bytes(join_uri(output_uri, PLOTS_DIR, name), data, storage_options)
    report_uri = join_uri(output_uri, REPORT_NAME)
    write_bytes(report_uri, text.encode("utf-8"), storage_options)
    log.info("wrote report %s", report_uri)
    return report_uri


# --- numbers from the summary (it has been through JSON: inf is "inf", NaN is null) ---


def _float(value: Any) -> float:
    """A float from a summary value; "inf"/"-inf" strings become infinities, anything unusable NaN."""
    if value is None or isinstance(value, bool):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _int(value: Any) -> int:
    """A count from a summary value; anything unusable counts as 0."""
    number = _float(value)
    return int(number) if math.isfinite(number) else 0


def _floats(values: Any) -> list[float]:
    return [_float(v) for v in (values if values is not None else [])]


def _ints(values: Any) -> list[int]:
    return [_int(v) for v in (values if values is not None else [])]


def _mac_unit(reference: float) -> tuple[float, str]:
    """(factor, unit) that writes `reference` MACs with 1 to 3 digits, for an axis label."""
    for factor, prefix in _MAC_UNITS:
        if math.isfinite(reference) and abs(reference) >= factor:
            return factor, f"{prefix}MACs"
    return 1.0, "MACs"


def _amount(value: Any) -> str:
    number = _float(value)
    return format_amount(number) if math.isfinite(number) else "n/a"


def _count(value: Any) -> str:
    return f"{_int(value):,}"


def _percent(part: float, whole: float) -> str:
    return f"{100 * part / whole:.2f}%" if whole and math.isfinite(part / whole) else "n/a"


def _duration(seconds: Any) -> str:
    value = _float(seconds)
    if not math.isfinite(value):
        return "n/a"
    if value < 60:
        return f"{value:.1f} s"
    minutes, secs = divmod(round(value), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"


def _threshold(value: Any) -> str:
    """A threshold as text; the infinities say what they do, since that is why they are there."""
    number = _float(value)
    if math.isnan(number):
        return "n/a"
    if math.isinf(number):
        return "inf (none exit)" if number > 0 else "-inf (all exit)"
    return f"{number:.4g}"


# --- plots ---


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _no_data(ax: Any, text: str = "no images") -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=14, color="0.45")


def _step_tick(step: int, step_macs: Sequence[float]) -> str:
    cost = step_macs[step - 1] if step <= len(step_macs) else math.nan
    return f"{step}\n{format_amount(cost)}" if math.isfinite(cost) else str(step)


def _plot_exits(summary: Mapping[str, Any]) -> bytes:
    exits = _ints(summary.get("exits"))
    step_macs = _floats(summary.get("step_macs"))
    steps = max(len(exits), len(step_macs))
    counts = exits + [0] * (steps - len(exits))
    total = sum(counts)
    fig = Figure(figsize=(6.4, 3.8))
    ax = fig.add_subplot()
    if steps:
        positions = np.arange(1, steps + 1)
        bars = ax.bar(positions, counts, color="#4c72b0")
        ax.set_xticks(positions, [_step_tick(t, step_macs) for t in positions])
        if total:
            ax.bar_label(bars, labels=[f"{c:,} ({100 * c / total:.1f}%)" for c in counts], fontsize=8)
            ax.margins(y=0.15)
    if not total:
        ax.set_ylim(0, 1)
        _no_data(ax)
    ax.set_xlabel("exit step (cumulative cost to exit there)")
    ax.set_ylabel("images")
    ax.set_title("images by exit step")
    fig.tight_layout()
    return _png(fig)


def _timeline_points(summary: Mapping[str, Any]) -> tuple[list[float], list[float]]:
    points = [(_float(p.get("seconds")), _float(p.get("mean_macs"))) for p in summary.get("timeline") or []]
    points = [(s, m) for s, m in points if math.isfinite(s) and math.isfinite(m)]
    return [s for s, _ in points], [m for _, m in points]


def _plot_cost(summary: Mapping[str, Any]) -> bytes:
    seconds, means = _timeline_points(summary)
    target = _float((summary.get("budget") or {}).get("target_macs_per_image"))
    has_target = math.isfinite(target) and target > 0
    factor, unit = _mac_unit(target if has_target else max(means, default=math.nan))
    fig = Figure(figsize=(6.4, 3.8))
    ax = fig.add_subplot()
    if means:
        ax.plot(seconds, np.asarray(means) / factor, "-o", ms=2, label="realized mean cost per image")
    else:
        _no_data(ax)
    if has_target:
        ax.axhline(target / factor, color="black", lw=1, label=f"target {format_amount(target)}")
        ax.axhline(target * CEILING / factor, color="#c44e52", lw=1, ls="--", label="ceiling (+1%)")
    if means or has_target:
        ax.legend(fontsize=8)
    ax.set_xlabel("seconds since start")
    ax.set_ylabel(f"mean {unit} per image")
    ax.set_title("cost vs budget")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def _plot_confidence(summary: Mapping[str, Any]) -> bytes:
    hist = summary.get("confidence_hist") or {}
    edges = _floats(hist.get("bins"))
    fig = Figure(figsize=(6.4, 3.8))
    ax = fig.add_subplot()
    drawn = False
    for step, counts in enumerate(hist.get("per_step") or [], start=1):
        counts = _ints(counts)
        if len(counts) != len(edges) - 1:
            log.warning(
                "confidence_hist step %d has %d counts for %d bin edges; left out of the plot",
                step,
                len(counts),
                len(edges),
            )
            continue
        if sum(counts):
            ax.stairs(counts, edges, lw=1.5, label=f"exit {step} ({sum(counts):,} images)")
            drawn = True
    if drawn:
        ax.legend(fontsize=8)
    else:
        _no_data(ax)
    ax.set_xlim(0, 1)
    ax.set_xlabel("top-1 confidence at the exit step")
    ax.set_ylabel("images")
    ax.set_title("confidence at exit")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def _glimpse_boxes(glimpses: Any, patch_size: float) -> list[tuple[float, float, float]]:
    """(x, y, side) of each glimpse's matplotlib Rectangle. Glimpses are (row, col) = (y, x)
    top-left corners and matplotlib takes x first: the pair is swapped here and only here."""
    pairs = np.asarray(glimpses if glimpses is not None else [], dtype=float).reshape(-1, 2)
    return [(float(col), float(row), float(patch_size)) for row, col in pairs]


def _sample_image(sample: Mapping[str, Any]) -> np.ndarray:
    image = sample.get("image")
    array = np.asarray(image) if image is not None else np.zeros((0,), np.uint8)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if (
        array.dtype != np.uint8
        or array.ndim not in (2, 3)
        or array.size == 0
        or array.ndim == 3
        and array.shape[2] != 3
    ):
        raise ValueError(
            f"sample {sample.get('key')!r}: image is {array.dtype} with shape {array.shape}; pass the model input "
            "after resize/centre-crop as a uint8 numpy array of shape (H, W, 3), before normalisation"
        )
    return array


def _sample_title(sample: Mapping[str, Any]) -> str:
    label = sample.get("label_name")
    label = "(no label)" if label is None else str(label)
    label = label if len(label) <= 28 else label[:27] + "…"
    confidence = _float(sample.get("confidence"))
    details = f"exit {_int(sample.get('exit_step'))}"
    if math.isfinite(confidence):
        details = f"{confidence:.2f}, {details}"
    return f"{label}\n{details}"


def _draw_sample(ax: Any, sample: Mapping[str, Any]) -> None:
    """One Fig. 7-style panel: the image, its focus patches as numbered boxes, label in the title."""
    image = _sample_image(sample)
    height, width = image.shape[:2]
    # extent puts pixel (r, c) on [c, c+1] x [r, r+1], so a box at (col, row) covers exactly its pixels
    ax.imshow(image, extent=(0, width, height, 0), cmap="gray" if image.ndim == 2 else None)
    boxes = _glimpse_boxes(sample.get("glimpses"), _float(sample.get("patch_size")))
    if boxes and not boxes[0][2] > 0:
        raise ValueError(
            f"sample {sample.get('key')!r}: patch_size must be a positive number of pixels, got "
            f"{sample.get('patch_size')!r}; pass the model's patch size"
        )
    for step, (x, y, side) in enumerate(boxes, start=1):
        colour = GLIMPSE_COLOURS[(step - 1) % len(GLIMPSE_COLOURS)]
        ax.add_patch(Rectangle((x, y), side, side, fill=False, edgecolor=colour, linewidth=2, clip_on=False))
        ax.text(
            x + 1,
            y + 1,
            str(step),
            fontsize=7,
            ha="left",
            va="top",
            bbox={"facecolor": colour, "edgecolor": "none", "pad": 1},
        )
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(_sample_title(sample), fontsize=8, parse_math=False)  # labels are user text: no $...$ maths


def _glimpse_figure(samples: Sequence[Mapping[str, Any]]) -> Figure:
    columns = min(4, len(samples))
    rows = math.ceil(len(samples) / columns)
    fig = Figure(figsize=(2.6 * columns, 2.9 * rows))
    for index, sample in enumerate(samples, start=1):
        _draw_sample(fig.add_subplot(rows, columns, index), sample)
    fig.tight_layout()
    return fig


# --- HTML ---


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str] = (), numeric: Sequence[int] = ()) -> str:
    """An HTML table of plain-text cells; every cell is escaped here, since keys and labels are user data."""
    lines = ["<table>"]
    if header:
        lines.append("<tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>")
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            css = ' class="num"' if i in numeric else ""
            cells.append(f"<td{css}>{html.escape(str(cell))}</td>")
        lines.append("<tr>" + "".join(cells) + "</tr>")
    lines.append("</table>")
    return "\n".join(lines)


def _cost_text(summary: Mapping[str, Any]) -> str:
    budget = summary.get("budget") or {}
    realized = _float(budget.get("realized_macs_per_image"))
    target = _float(budget.get("target_macs_per_image"))
    ratio = _float(budget.get("ratio"))
    if math.isnan(ratio) and target:
        ratio = realized / target
    ratio_text = f"{100 * ratio:.2f}% of target" if math.isfinite(ratio) else "ratio n/a"
    return f"{_amount(realized)} realized vs {_amount(target)} target ({ratio_text})"


def _headline_rows(summary: Mapping[str, Any]) -> list[tuple[str, str]]:
    model = summary.get("model") or {}
    shards = summary.get("shards") or {}
    nodes = summary.get("nodes") or {}
    images, errors = _int(summary.get("images")), _int(summary.get("errors"))
    rate = _float(summary.get("images_per_s"))
    return [
        ("run", str(summary.get("run_id", "n/a"))),
        ("input", str(summary.get("input", "n/a"))),
        ("output", str(summary.get("output", "n/a"))),
        (
            "model",
            f"{model.get('checkpoint', 'n/a')} ({model.get('backbone', '?')}, T={model.get('T', '?')}, "
            f"{model.get('class_names_count', '?')} classes)",
        ),
        ("images", f"{images:,}"),
        ("errors", f"{errors:,} ({_percent(errors, images)} of images)"),
        ("throughput", f"{rate:,.1f} images/s" if math.isfinite(rate) else "n/a"),
        ("elapsed", _duration(summary.get("elapsed_s"))),
        ("budget", str((summary.get("budget") or {}).get("text", "n/a"))),
        ("cost per image", _cost_text(summary)),
        (
            "shards",
            f"{_count(shards.get('total'))} total: {_count(shards.get('classified'))} classified, "
            f"{_count(shards.get('skipped_done'))} skipped (done before), "
            f"{_count(shards.get('redone_changed'))} redone (changed)",
        ),
        ("nodes", ", ".join(f"{node}: {_count(rows)} rows" for node, rows in nodes.items()) or "none"),
        ("Ray", str(summary.get("ray_version", "n/a"))),
    ]


def _headline_table(summary: Mapping[str, Any]) -> str:
    lines = ["<table>"]
    for name, value in _headline_rows(summary):
        lines.append(f"<tr><th>{html.escape(name)}</th><td>{html.escape(value)}</td></tr>")
    lines.append("</table>")
    return "\n".join(lines)


def _errors_section(summary: Mapping[str, Any]) -> str:
    reasons = summary.get("errors_by_reason") or {}
    if not reasons:
        return "<h2>Errors by reason</h2>\n<p>no errors</p>"
    images = _int(summary.get("images"))
    ordered = sorted(reasons.items(), key=lambda item: (-_int(item[1]), str(item[0])))
    rows = [(reason, _count(n), _percent(_int(n), images)) for reason, n in ordered]
    return "<h2>Errors by reason</h2>\n" + _table(rows, ("reason", "images", "share of images"), numeric=(1, 2))


def _thresholds_section(summary: Mapping[str, Any]) -> str:
    thresholds = summary.get("thresholds") or {}
    initial, final = list(thresholds.get("initial") or []), list(thresholds.get("final") or [])
    exits, step_macs = _ints(summary.get("exits")), _floats(summary.get("step_macs"))
    steps = max(len(initial), len(final), len(exits), len(step_macs))
    if not steps:
        return "<h2>Thresholds</h2>\n<p>no thresholds in the summary</p>"

    def at(values: Sequence[Any], i: int) -> Any:
        return values[i] if i < len(values) else None

    rows = [
        (i + 1, _amount(at(step_macs, i)), _count(at(exits, i)), _threshold(at(initial, i)), _threshold(at(final, i)))
        for i in range(steps)
    ]
    header = ("exit step", "cumulative cost", "images exited", "initial threshold", "final threshold")
    return "<h2>Thresholds</h2>\n" + _table(rows, header, numeric=(1, 2, 3, 4))


def _figure_html(name: str, data: bytes) -> str:
    caption = html.escape(_CAPTIONS.get(name, name))
    encoded = base64.b64encode(data).decode("ascii")
    return (
        f'<figure id="{html.escape(name)}"><img src="data:image/png;base64,{encoded}" alt="{caption}">'
        f"<figcaption>{caption}</figcaption></figure>"
    )


def _samples_section(samples: Sequence[Mapping[str, Any]]) -> str:
    if not samples:
        return ""
    rows = []
    for i, sample in enumerate(samples, start=1):
        confidence = _float(sample.get("confidence"))
        glimpses = " ".join(f"({int(y)}, {int(x)})" for x, y, _ in _glimpse_boxes(sample.get("glimpses"), 0))
        rows.append(
            (
                i,
                sample.get("key", ""),
                "(no label)" if sample.get("label_name") is None else sample["label_name"],
                f"{confidence:.3f}" if math.isfinite(confidence) else "n/a",
                _int(sample.get("exit_step")),
                glimpses or "none",
            )
        )
    header = ("#", "key", "label", "confidence", "exit step", "glimpses (row, col)")
    return "<h2>Samples</h2>\n" + _table(rows, header, numeric=(0, 3, 4))


def _html(summary: Mapping[str, Any], samples: Sequence[Mapping[str, Any]], pngs: Mapping[str, bytes]) -> str:
    title = html.escape(f"gfpipe classify report: {summary.get('run_id', 'n/a')}")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        f'<head><meta charset="utf-8"><title>{title}</title><style>{_STYLE}</style></head>',
        "<body>",
        f"<h1>{title}</h1>",
        _headline_table(summary),
        _errors_section(summary),
        _thresholds_section(summary),
        "<h2>Plots</h2>",
        *(_figure_html(name, data) for name, data in pngs.items()),
        _samples_section(samples),
        "</body>",
        "</html>",
    ]
    return "\n".join(part for part in parts if part) + "\n"
