"""`gfpipe plan`'s predictions against real classify jobs on this machine, side by side in one run.

Check (the default): for each archive size and budget, in an order that alternates between
rounds, `gfpipe plan --images ARCHIVE --budget B --devices 1 --json` (a subprocess, as a user runs
it: it measures the step seconds, probes the engine and times decoding now) predicts the whole
job's images/s, start-up and finish included; then the real job (`gfpipe.pipeline.classify`, Ray
already up as under `ray job submit`, the default configuration, a fresh output folder) runs on the
same archive and its images/s is measured (images / wall clock of the call). Figure: predicted /
measured, the median over rounds with the spread [min-max], per setting and over all. Goal: within
15% (0.85..1.15).

Calibrate (`--calibrate`): measures the job costs `gfpipe.capacity` keeps as constants. Each round
runs the job on a small and a large archive at 9 MMACs (order alternating) and plans the large one
first. Wall clock: elapsed = fixed + images / rate, so the two sizes give the steady rate and the
fixed seconds. The one model actor is the bound on this machine (the cores are not: the run's CPU
time per image, from /proc, stays under 2 / rate; `actor_cpu_share` is the share of its wall time
the actor computes), so the actor's seconds per image beyond its engine are 1 / rate minus the
probed engine's seconds per image. The CPU time per image of every other process of the run (driver,
ledger, Ray, read tasks) less the decoding the plan timed gives the pipeline's core-seconds per
image. Per-image figures are differences between the two sizes, so start-up costs cancel.

    PYTHONPATH=. .venv/bin/python bench/plan.py                           # check, about 2.5 minutes
    PYTHONPATH=. .venv/bin/python bench/plan.py --calibrate --rounds 3     # the constants, about 2 minutes
Writes bench/results/plan.json (or plan_calibrate.json).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_results  # noqa: E402
from pipeline import archive  # noqa: E402  (the glyph archives bench/pipeline.py makes)

ROOT = Path(__file__).resolve().parents[1]
HZ = os.sysconf("SC_CLK_TCK")


def plan(data: str, budget: str) -> dict:
    """`gfpipe plan ... --json` in a subprocess: the user's command, measuring now."""
    command = [sys.executable, "-m", "gfpipe.cli", "plan", "--checkpoint", "demo", "--images", data]
    command += ["--budget", budget, "--devices", "1", "--json"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    if result.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr}")
    return json.loads(result.stdout)


def job(data: str, budget: str) -> tuple[float, float, dict]:
    """(images/s, seconds, summary) of the classify job, default configuration, fresh output."""
    from gfpipe.budget.grammar import parse_budget
    from gfpipe.classify.config import ClassifyConfig
    from gfpipe.pipeline import classify

    out = tempfile.mkdtemp(prefix="gfpipe-bench-plan-")
    try:
        started = time.perf_counter()
        summary = classify(ClassifyConfig(input=data, output=out, budget=parse_budget(budget)))
        seconds = time.perf_counter() - started
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return summary["images"] / seconds, seconds, summary


def timeline_rate(summary: dict) -> float:
    """Images/s between 10% and 90% of the run's images, from the ledger's spend timeline."""
    points = summary["timeline"]
    total = summary["images"]
    start = next(p for p in points if p["images"] >= 0.1 * total)
    end = next(p for p in points if p["images"] >= 0.9 * total)
    return (end["images"] - start["images"]) / (end["seconds"] - start["seconds"])


# ----------------------------------------------------------------------------- CPU accounting


def _processes() -> dict[int, tuple[str, float]]:
    """This process and its descendants (the local Ray it started): pid -> (title, CPU seconds)."""
    stats, children = {}, {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
            title = Path(f"/proc/{name}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        children.setdefault(int(fields[1]), []).append(int(name))
        stats[int(name)] = (title[:80], (int(fields[11]) + int(fields[12])) / HZ)
    mine, todo = set(), [os.getpid()]
    while todo:
        pid = todo.pop()
        mine.add(pid)
        todo += children.get(pid, [])
    return {p: stats[p] for p in mine if p in stats}


class CpuAccount:
    """CPU seconds per kind of process over a block: actor, reader, driver, everything else.

    Ray worker processes change their titles with the task they run, so titles are sampled every
    0.2 s while the block runs; a process ever titled with the model actor is the actor."""

    def __enter__(self) -> CpuAccount:
        self.before = _processes()
        self.titles: dict[int, set[str]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            for pid, (title, _) in _processes().items():
                self.titles.setdefault(pid, set()).add(title)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        after = _processes()
        self.cpu: dict[str, float] = {}
        for pid, (title, seconds) in after.items():
            kind = self._kind(pid, " ".join(self.titles.get(pid, {title})))
            self.cpu[kind] = self.cpu.get(kind, 0.0) + seconds - self.before.get(pid, (title, 0.0))[1]

    @staticmethod
    def _kind(pid: int, titles: str) -> str:
        if pid == os.getpid():
            return "driver"
        if "ClassifyReplica" in titles:
            return "actor"
        if "read_shards" in titles:
            return "reader"
        return "other"


# ----------------------------------------------------------------------------- the two modes


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "values": values}


def check(args) -> None:
    sizes = [int(s) for s in args.sizes.split(",")]
    budgets = args.budgets.split(",")
    settings = [(n, b) for n in sizes for b in budgets]
    data = {n: archive(n) for n in sizes}
    job(data[sizes[0]], budgets[0])  # warm-up: Ray's first dataset pays for starting its worker processes
    rows = []
    for r in range(args.rounds):
        for n, budget in settings if r % 2 == 0 else settings[::-1]:
            predicted = plan(data[n], budget)
            rate, seconds, summary = job(data[n], budget)
            row = {
                "round": r + 1,
                "images": n,
                "budget": budget,
                "predicted_images_per_s": predicted["expected_images_per_s"],
                "measured_images_per_s": rate,
                "ratio": predicted["expected_images_per_s"] / rate,
                "predicted_seconds": predicted["expected_seconds"],
                "measured_seconds": seconds,
                "predicted_bound": predicted["bound"],
                "predicted_actor_ms_per_image": 1e3 * predicted["replica_seconds_per_image"],
                "measured_actor_model_ms_per_image": 1e3 * summary["engine"]["model_seconds"] / summary["images"],
                "engine_efficiency": predicted["engine_efficiency"],
                "predicted_macs": predicted["expected_macs_per_image"],
                "measured_macs": summary["budget"]["realized_macs_per_image"],
            }
            rows.append(row)
            print(
                f"round {r + 1} {n:>6} images {budget:>4}: predicted {row['predicted_images_per_s']:6.0f} images/s, "
                f"measured {rate:6.0f} ({seconds:5.1f} s) -> {row['ratio']:.3f}",
                flush=True,
            )
    figures = {"predicted_over_measured": spread([r["ratio"] for r in rows])}
    for n, budget in settings:
        figures[f"predicted_over_measured_{n}_{budget}"] = spread(
            [r["ratio"] for r in rows if r["images"] == n and r["budget"] == budget]
        )
    figures["runs"] = rows
    figures["config"] = {"sizes": sizes, "budgets": budgets, "rounds": args.rounds}
    print(f"machine: {machine()}")
    for key, value in figures.items():
        if key.startswith("predicted_over"):
            print(f"{key}: {value['median']:.3f} [{value['min']:.3f}-{value['max']:.3f}]")
    print(f"wrote {write_results(args.name, figures, {'predicted_over_measured': '0.85 .. 1.15'})}")


def calibrate(args) -> None:
    small, large = (int(s) for s in args.sizes.split(","))
    budget = "9M"
    data = {n: archive(n) for n in (small, large)}
    job(data[small], budget)  # warm-up
    rounds = []
    for r in range(args.rounds):
        predicted = plan(data[large], budget)
        runs = {}
        for n in (small, large) if r % 2 == 0 else (large, small):
            with CpuAccount() as account:
                rate, seconds, summary = job(data[n], budget)
            runs[n] = {
                "seconds": seconds,
                "cpu": account.cpu,
                "model_seconds": summary["engine"]["model_seconds"],
                "timeline_images_per_s": timeline_rate(summary),
            }
            print(f"round {r + 1} {n} images: {seconds:.2f} s, CPU {json.dumps(account.cpu)}", flush=True)
        extra = large - small
        per_image = (runs[large]["seconds"] - runs[small]["seconds"]) / extra
        cpu = {k: (runs[large]["cpu"].get(k, 0.0) - runs[small]["cpu"].get(k, 0.0)) / extra for k in runs[large]["cpu"]}
        engine = predicted["model_seconds_per_image"] / predicted["engine_efficiency"]
        decode = predicted["job_costs"]["decode_seconds"]
        steady = runs[large]["timeline_images_per_s"]
        rounds.append(
            {
                "steady_images_per_s": 1.0 / per_image,
                "fixed_seconds": runs[small]["seconds"] - small * per_image,
                "timeline_steady_images_per_s": steady,
                "timeline_fixed_seconds": runs[large]["seconds"] - large / steady,
                "engine_seconds_per_image": engine,
                "actor_seconds_per_image": per_image - engine,
                "actor_cpu_share": cpu.get("actor", 0.0) / per_image,
                "decode_seconds_per_image": decode,
                "pipeline_core_seconds_per_image": sum(cpu.values()) - cpu.get("actor", 0.0) - decode,
                "cpu_seconds_per_image": cpu,
                "actor_model_seconds_per_image": (runs[large]["model_seconds"] - runs[small]["model_seconds"]) / extra,
                "runs": {str(k): v for k, v in runs.items()},
            }
        )
        print(json.dumps({k: v for k, v in rounds[-1].items() if k != "runs"}), flush=True)
    keys = [
        "steady_images_per_s",
        "fixed_seconds",
        "timeline_steady_images_per_s",
        "timeline_fixed_seconds",
        "engine_seconds_per_image",
        "actor_seconds_per_image",
        "actor_cpu_share",
        "decode_seconds_per_image",
        "pipeline_core_seconds_per_image",
        "actor_model_seconds_per_image",
    ]
    figures = {k: spread([r[k] for r in rounds]) for k in keys}
    figures["rounds"] = rounds
    figures["config"] = {"sizes": [small, large], "budget": budget, "rounds": args.rounds}
    print(f"machine: {machine()}")
    for k in keys:
        v = figures[k]
        print(f"{k}: {v['median']:.6g} [{v['min']:.6g}-{v['max']:.6g}]")
    print(f"wrote {write_results(args.name or 'plan_calibrate', figures)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calibrate", action="store_true", help="measure the job constants instead of checking")
    parser.add_argument("--sizes", default=None, help="archive sizes (check: 4000,16000; calibrate: 2000,16000)")
    parser.add_argument("--budgets", default="6M,12M", help="check: budgets per image")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--name", default=None, help="results file name (default: plan, plan_calibrate)")
    args = parser.parse_args()
    import ray

    logging.basicConfig(level=logging.WARNING)
    ray.init(address="local", num_cpus=os.cpu_count(), logging_level=logging.WARNING)
    try:
        if args.calibrate:
            args.sizes = args.sizes or "2000,16000"
            calibrate(args)
        else:
            args.sizes = args.sizes or "4000,16000"
            args.name = args.name or "plan"
            check(args)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
