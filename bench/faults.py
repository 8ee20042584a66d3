"""A node lost mid-job: does the classify job still give every image exactly once? (not CI)

Builds a two-node Ray cluster on this machine (`ray start --head` with 1 CPU, `ray start --address`
with 2 CPUs, each in its own process group), writes a glyph archive (default 6000 images in 12
shards of 500, 10 corrupt), submits the user's command

    ray job submit --address http://127.0.0.1:DASHBOARD --working-dir . --no-wait --submission-id ID \
        -- python jobs/classify.py --input IN --output OUT --budget 9M

and, once 2 shards are done or a quarter of the rows are written, kills the worker node's whole
process group with SIGKILL (its raylet; the actors and tasks on it die with it). Then it waits for
the job; if the job fails (or runs past --timeout, or makes no progress for --stall seconds: then
it is stopped) it submits the same command once more (a re-run skips done shards) on what is left
of the cluster. Measured:
  - whether and how the job finished (first try, after a re-run, not at all) and each try's wall time;
  - how long Ray took to mark the killed node dead, which actors died with it, and which of its
    processes outlived the kill (Ray's workers run in process groups of their own);
  - every input image exactly once in the output (rows, duplicated keys, missing keys, extra keys);
  - the summary's total_macs against the sum of the rows' macs; rows per node (head / killed worker);
  - Ray's retries (summary retried_calls), the pool the job chose, where its driver ran.

    PYTHONPATH=. .venv/bin/python bench/faults.py                    # ~5 minutes on 2 cores
    PYTHONPATH=. .venv/bin/python bench/faults.py --images 2000 --shard-size 250
    PYTHONPATH=. .venv/bin/python bench/faults.py --job-args "--replicas 2 --cpus-per-replica 0.5"

Both nodes use a Ray temp dir of their own (/tmp/rayf-*), so `ray.init()` elsewhere on this
machine never finds this cluster. Ray replaces --node-ip-address 127.0.0.1 by the machine's
address, so rows name both nodes by that IP: the figures tell them apart by node id.
Writes bench/results/faults.json (--results NAME: NAME.json) with the figures, machine, command.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))
# Ray 2.60 turns token authentication on for `ray start` clusters; a loopback cluster opts out
# (README, "Troubleshooting"), and the job's `python` must be the virtualenv's.
ENV = {
    **os.environ,
    "RAY_AUTH_MODE": "disabled",
    "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
}
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def log(message: str) -> None:
    """A timestamped progress line on stderr (stdout gets the figures)."""
    print(f"[faults {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Input and output
# ---------------------------------------------------------------------------------------------


def write_archive(root: Path, count: int, shard_size: int, corrupt: int) -> tuple[str, dict]:
    """A glyph archive at the demo model's geometry under root/test; returns (its folder, manifest)."""
    from gfpipe.data.synthetic import SynthConfig, write_dataset

    glyphs = SynthConfig(image_size=128, small_font=(0.11, 0.14), seed=1)
    manifest = write_dataset(str(root), "test", count, glyphs, shard_size=shard_size, corrupt=corrupt)
    return str(root / "test"), manifest


def input_keys(uri: str) -> list[str]:
    """Every record key of the archive, in reading order (what the output must hold once each)."""
    from gfpipe.data import discover_shards, iter_shard_records

    return [r.key for s in discover_shards(uri) for r in iter_shard_records(s)]


def done_markers(output: Path) -> int:
    """How many shards the job has marked done so far."""
    folder = output / "_gfpipe" / "done"
    return len(list(folder.glob("*.json"))) if folder.is_dir() else 0


def rows_written(output: Path) -> int:
    """Rows in the part files written so far (from their names: part-FIRST-LAST.parquet)."""
    from gfpipe.classify.layout import parse_part

    ranges = (parse_part(p.name) for p in output.glob("*/part-*.parquet"))
    return sum(last - first + 1 for first, last in filter(None, ranges))


def rows_by_node(output: Path, names: dict[str, str]) -> dict[str, int]:
    """Rows on disk per node ('head', 'worker' or the raw node string if unknown)."""
    from gfpipe.classify.parts import read_rows

    counts = Counter(read_rows(str(output), columns=["node"]).column("node").to_pylist())
    return {names.get(node.rsplit("/", 1)[-1], node): n for node, n in sorted(counts.items())}


def check_output(output: Path, data: str, names: dict[str, str]) -> dict:
    """Exactly once (rows, duplicates, missing, extra), the summary's MACs against the rows', rows per node."""
    from gfpipe.classify.parts import read_rows

    table = read_rows(str(output), columns=["key", "macs", "error", "node"])
    keys = table.column("key").to_pylist()
    expected = input_keys(data)
    counts = Counter(keys)
    rows_macs = float(sum(table.column("macs").to_pylist()))
    figures = {
        "input_images": len(expected),
        "rows": len(keys),
        "duplicated_keys": sum(1 for n in counts.values() if n > 1),
        "missing_keys": len(set(expected) - set(counts)),
        "extra_keys": len(set(counts) - set(expected)),
        "error_rows": sum(1 for e in table.column("error").to_pylist() if e is not None),
        "exactly_once": len(keys) == len(expected) and set(keys) == set(expected),
        "rows_by_node": rows_by_node(output, names),
        "rows_macs": rows_macs,
    }
    summary_path = output / "_gfpipe" / "summary.json"
    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
        total = float(summary["budget"]["total_macs"]) - float(summary["budget"].get("calibration_macs", 0.0))
        figures.update(
            summary_images=summary["images"],
            summary_errors=summary["errors"],
            summary_total_macs=summary["budget"]["total_macs"],
            total_macs_matches_rows=abs(total - rows_macs) <= 1e-6 * max(rows_macs, 1.0),
            budget_ratio=summary["budget"]["ratio"],
        )
    return figures


def summary_figures(output: Path, names: dict[str, str]) -> dict | None:
    """The parts of the latest summary.json that say what this try did (None if none was written)."""
    path = output / "_gfpipe" / "summary.json"
    if not path.exists():
        return None
    summary = json.loads(path.read_text())
    return {
        "run_id": summary["run_id"],
        "images": summary["images"],
        "errors": summary["errors"],
        "shards": summary["shards"],
        "nodes_this_run": {names.get(k.rsplit("/", 1)[-1], k): v for k, v in summary["nodes_this_run"].items()},
        "retried_calls": summary["retried_calls"],
        "pool": summary.get("pool"),
        "elapsed_s": round(summary["elapsed_s"], 1),
        "total_macs": summary["budget"]["total_macs"],
        "budget_ratio": summary["budget"]["ratio"],
    }


# ---------------------------------------------------------------------------------------------
# The cluster
# ---------------------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_node(args: list[str], log_path: Path) -> subprocess.Popen:
    """`ray start ... --block` in its own process group (so that the whole node can be killed at once)."""
    with open(log_path, "w") as out:
        return subprocess.Popen(
            [RAY, "start", "--block", *args], stdout=out, stderr=subprocess.STDOUT, env=ENV, start_new_session=True
        )


def stop_node(proc: subprocess.Popen) -> None:
    """SIGTERM to the node's process group, SIGKILL if it is still there after 30 s."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def http_json(url: str, data: bytes | None = None, timeout: float = 10.0) -> dict:
    """GET (or POST `data`) a dashboard URL; the JSON answer."""
    request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def actors_after_loss(dashboard: str, node_id: str) -> dict[str, list[str]]:
    """Actors still placed on the lost node ('Class: STATE': they did not move) and, under
    'restarted', every actor Ray tried to restart (num_restarts > 0), with its state and node now:
    one that came back elsewhere keeps its id and shows its new node."""
    try:
        answer = http_json(f"{dashboard}/api/v0/actors?limit=1000&detail=true&timeout=10", timeout=30)
    except (OSError, ValueError):
        return {}
    actors = answer["data"]["result"]["result"]
    return {
        "on_killed_node": sorted(f"{a['class_name']}: {a['state']}" for a in actors if a.get("node_id") == node_id),
        "restarted": sorted(
            f"{a['class_name']}: {a['state']} on {'the killed node' if a.get('node_id') == node_id else 'another node'}"
            for a in actors
            if int(a.get("num_restarts") or 0) > 0
        ),
    }


def list_nodes(dashboard: str) -> list[dict]:
    """The cluster's nodes from the state API: node_id, is_head_node, state, resources_total..."""
    answer = http_json(f"{dashboard}/api/v0/nodes?limit=100&detail=false&timeout=10")
    return answer["data"]["result"]["result"]


def wait_for_nodes(dashboard: str, count: int, procs: list[subprocess.Popen], logs: list[Path]) -> list[dict]:
    """Poll until `count` nodes are ALIVE (a node process exiting first is an error)."""
    deadline = time.time() + 120
    while time.time() < deadline:
        for proc, path in zip(procs, logs, strict=True):
            if proc.poll() is not None:
                raise RuntimeError(f"ray start exited with {proc.returncode}: {path.read_text()[-3000:]}")
        try:
            alive = [n for n in list_nodes(dashboard) if n["state"] == "ALIVE"]
        except (OSError, KeyError, ValueError):
            alive = []
        if len(alive) >= count:
            return alive
        time.sleep(1)
    raise RuntimeError(f"the cluster did not reach {count} alive nodes in 120 s")


def process_tree(root_pid: int) -> dict[int, str]:
    """The pids under `root_pid` (itself included) with their command lines, from /proc."""
    parents: dict[int, int] = {}
    commands: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            commands[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()[:120]
        except OSError:
            continue
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    tree, frontier = {root_pid}, [root_pid]
    while frontier:
        pid = frontier.pop()
        children = [p for p, parent in parents.items() if parent == pid and p not in tree]
        tree.update(children)
        frontier.extend(children)
    return {pid: commands.get(pid, "") for pid in sorted(tree) if pid in commands}


def alive(pids: dict[int, str]) -> dict[int, str]:
    """Those of `pids` that still run (not zombies) with the same command line."""
    out = {}
    for pid, command in pids.items():
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            same = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:120] == command
        except OSError:
            continue
        if state != "Z" and same:
            out[pid] = command
    return out


# ---------------------------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------------------------


def submit_command(dashboard: str, submission_id: str, data: str, output: Path, budget: str, extra: str) -> list[str]:
    """The user's `ray job submit` command line for the classify job."""
    return [
        RAY, "job", "submit", "--address", dashboard, "--working-dir", str(ROOT), "--no-wait",
        "--submission-id", submission_id, "--",
        "python", "jobs/classify.py", "--input", data, "--output", str(output), "--budget", budget, *shlex.split(extra),
    ]  # fmt: skip


def submit(command: list[str]) -> None:
    """Run `ray job submit --no-wait` (uploads the working dir, returns once the job is accepted)."""
    done = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"ray job submit failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")


def job_info(dashboard: str, submission_id: str) -> dict:
    """The job's record from the jobs API (status, message, start_time, end_time in ms, driver_node_id)."""
    return http_json(f"{dashboard}/api/jobs/{submission_id}")


def job_logs(dashboard: str, submission_id: str) -> str:
    """The job driver's whole log."""
    return http_json(f"{dashboard}/api/jobs/{submission_id}/logs", timeout=30).get("logs", "")


def stop_job(dashboard: str, submission_id: str) -> None:
    """Ask Ray to stop the job, and wait up to 60 s for it to reach a terminal state."""
    http_json(f"{dashboard}/api/jobs/{submission_id}/stop", data=b"")
    deadline = time.time() + 60
    while time.time() < deadline and job_info(dashboard, submission_id)["status"] not in TERMINAL:
        time.sleep(1)


def wait_for_kill_point(
    dashboard: str, submission_id: str, output: Path, shards: int, rows: int, timeout: float
) -> None:
    """Wait until `shards` shards are done or `rows` rows are written, whichever comes first (done
    markers can lag: the driver marks a shard once Ray Data hands it the parts' summaries)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if done_markers(output) >= shards or rows_written(output) >= rows:
            return
        status = job_info(dashboard, submission_id)["status"]
        if status in TERMINAL:
            raise RuntimeError(f"the job ended ({status}) before the kill point; lower --kill-after/--kill-fraction")
        time.sleep(0.5)
    raise RuntimeError(f"the job did not reach the kill point in {timeout:.0f} s")


def progress_mark(output: Path) -> tuple[int, int]:
    """(done markers, part files) under the output: changes whenever the job makes progress."""
    return done_markers(output), len(list(output.glob("*/part-*.parquet")))


def wait_for_job(
    dashboard: str, submission_id: str, output: Path, timeout: float, stall: float, watch: dict | None = None
) -> str:
    """Poll the job until it ends; stop it after `timeout` s ('TIMED_OUT') or after `stall` s without
    a new part file or done marker ('STALLED').

    `watch` (killed node's id, kill time) also records when the state API first shows that node
    DEAD, and when the first new done marker appears after the kill, into `watch` itself.
    """
    deadline = time.time() + timeout
    mark, moved = progress_mark(output), time.time()
    while True:
        if watch is not None:
            _watch_recovery(dashboard, watch)
        status = job_info(dashboard, submission_id)["status"]
        if status in TERMINAL:
            return status
        if progress_mark(output) != mark:
            mark, moved = progress_mark(output), time.time()
        if time.time() > deadline or time.time() - moved > stall:
            status = "TIMED_OUT" if time.time() > deadline else "STALLED"
            log(f"job {submission_id}: {status} (no progress for {time.time() - moved:.0f} s): stopping it")
            stop_job(dashboard, submission_id)
            return status
        time.sleep(1)


def _watch_recovery(dashboard: str, watch: dict) -> None:
    """One poll of the killed node's state and of the done markers (see wait_for_job)."""
    if watch.get("node_dead_after_s") is None:
        try:
            state = {n["node_id"]: n for n in list_nodes(dashboard)}.get(watch["node_id"], {})
        except (OSError, KeyError, ValueError):
            state = {}
        if state.get("state") == "DEAD":
            watch["node_dead_after_s"] = round(time.time() - watch["killed_at"], 1)
            watch["node_death_message"] = state.get("state_message")
            log(f"Ray marked the worker node dead {watch['node_dead_after_s']} s after the kill")
    if watch.get("next_done_marker_after_s") is None and done_markers(watch["output"]) > watch["done_at_kill"]:
        watch["next_done_marker_after_s"] = round(time.time() - watch["killed_at"], 1)
        log(f"a new shard was done {watch['next_done_marker_after_s']} s after the kill")


def attempt_record(dashboard: str, submission_id: str, status: str, work: Path, names: dict[str, str]) -> dict:
    """What one try did: status, message, wall time, the driver's node, its log's tail (saved in full)."""
    info = job_info(dashboard, submission_id)
    logs = job_logs(dashboard, submission_id)
    (work / f"{submission_id}.log").write_text(logs)
    start, end = info.get("start_time"), info.get("end_time")
    driver = info.get("driver_node_id") or ""
    return {
        "submission_id": submission_id,
        "status": status,
        "ray_status": info.get("status"),
        "message": (info.get("message") or "")[-500:],
        "wall_s": round((end - start) / 1000, 1) if start and end else None,
        "driver_node": names.get(driver[:8], driver),
        "log_tail": logs.strip().splitlines()[-8:] if status != "SUCCEEDED" else logs.strip().splitlines()[-2:],
        "log": str(work / f"{submission_id}.log"),
    }


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    """The sizes, the kill point, the job's extra arguments and the limits."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--images", type=int, default=6000, help="images in the archive")
    parser.add_argument("--shard-size", type=int, default=500, help="images per shard")
    parser.add_argument("--corrupt", type=int, default=10, help="corrupt images among them (error rows)")
    parser.add_argument("--kill-after", type=int, default=2, help="kill the worker once this many shards are done")
    parser.add_argument("--kill-fraction", type=float, default=0.25, help="... or once this share of rows is written")
    parser.add_argument("--head-cpus", type=float, default=1, help="CPUs of the head node")
    parser.add_argument("--worker-cpus", type=float, default=2, help="CPUs of the worker node (the one killed)")
    parser.add_argument("--budget", default="9M", help="the job's --budget")
    parser.add_argument("--job-args", default="", help="extra classify arguments, e.g. '--replicas 2'")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per try before the job is stopped")
    parser.add_argument("--stall", type=float, default=180, help="seconds without progress before the job is stopped")
    parser.add_argument("--reruns", type=int, default=1, help="re-runs of the same command if a try fails")
    parser.add_argument("--results", default="faults", help="results name: bench/results/NAME.json")
    parser.add_argument("--workdir", default=None, help="work folder (default: a new temp folder, kept)")
    return parser.parse_args()


def main() -> int:
    """Archive, cluster, job with a node killed, checks; stops both nodes whatever happens. Exit 0
    when the job finished (on any try) with every image exactly once."""
    args = parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="gfpipe-faults-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    output = work / "out"
    log(f"work folder {work}")
    started = time.time()
    data, manifest = write_archive(work / "in", args.images, args.shard_size, args.corrupt)
    shards = len(manifest.get("shards", [])) or -(-args.images // args.shard_size)
    log(f"archive: {args.images} images in {shards} shards ({time.time() - started:.0f} s)")

    port, dashboard_port = free_port(), free_port()
    dashboard = f"http://127.0.0.1:{dashboard_port}"
    temp = Path(tempfile.mkdtemp(prefix="rayf-"))  # short: Ray's socket paths live under it
    common = ["--node-ip-address=127.0.0.1", f"--temp-dir={temp}"]
    head_args = [
        "--head", f"--port={port}", f"--dashboard-port={dashboard_port}", "--dashboard-host=127.0.0.1",
        f"--num-cpus={args.head_cpus:g}", "--resources", '{"head": 1}', "--disable-usage-stats", *common,
    ]  # fmt: skip
    worker_args = [f"--address=127.0.0.1:{port}", f"--num-cpus={args.worker_cpus:g}", "--resources", '{"worker": 1}']
    logs = [work / "head.log", work / "worker.log"]
    nodes: list[subprocess.Popen] = []
    figures: dict = {
        "archive": {"images": args.images, "shards": shards, "shard_size": args.shard_size, "corrupt": args.corrupt},
        "cluster": {"head_cpus": args.head_cpus, "worker_cpus": args.worker_cpus},
    }
    try:
        nodes.append(start_node(head_args, logs[0]))
        wait_for_nodes(dashboard, 1, nodes, logs[:1])
        nodes.append(start_node([*worker_args, *common], logs[1]))
        up = wait_for_nodes(dashboard, 2, nodes, logs)
        worker_id = next(n["node_id"] for n in up if not n["is_head_node"])
        names = {n["node_id"][:8]: "head" if n["is_head_node"] else "worker" for n in up}
        log(f"cluster up: head + worker {worker_id[:8]} ({time.time() - started:.0f} s)")
        figures.update(run_with_kill(args, dashboard, data, output, work, nodes[1], worker_id, names))
        figures["outcome"] = check_output(output, data, names)
    finally:
        for proc in reversed(nodes):
            stop_node(proc)
    figures["work_folder"] = str(work)
    figures["total_s"] = round(time.time() - started, 1)
    path = write_results(args.results, figures)
    print(json.dumps(figures, indent=2))
    log(f"wrote {path}")
    return 0 if figures["finished"] and figures["outcome"]["exactly_once"] else 1


def run_with_kill(
    args: argparse.Namespace,
    dashboard: str,
    data: str,
    output: Path,
    work: Path,
    worker: subprocess.Popen,
    worker_id: str,
    names: dict[str, str],
) -> dict:
    """Submit, kill the worker node at the kill point (--kill-after, --kill-fraction), wait; re-run on failure."""
    tag = time.strftime("%H%M%S")
    command = submit_command(dashboard, f"faults-{tag}-1", data, output, args.budget, args.job_args)
    display = " ".join(shlex.quote(c) for c in [Path(command[0]).name, *command[1:]])
    submit(command)
    log(f"submitted: {display}")
    submission_id = command[command.index("--submission-id") + 1]
    kill_rows = max(1, int(args.kill_fraction * args.images))
    wait_for_kill_point(dashboard, submission_id, output, args.kill_after, kill_rows, args.timeout)

    tree = process_tree(worker.pid)
    done_at_kill = done_markers(output)
    on_disk = rows_by_node(output, names)
    written = rows_written(output)
    killed_at = time.time()
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait(timeout=10)
    time.sleep(2)
    survivors = alive(tree)
    log(f"killed the worker node ({len(tree)} processes) with {done_at_kill} shards done; rows on disk {on_disk}")
    watch = {"node_id": worker_id, "killed_at": killed_at, "output": output, "done_at_kill": done_at_kill}
    kill = {
        "shards_done_at_kill": done_at_kill,
        "rows_on_disk_at_kill": on_disk,
        "kill_mid_job": written < args.images,  # False: every row was written already, the kill came late
        "worker_processes_killed": len(tree),
        "worker_processes_left_after_2s": sorted(survivors.values()),
        "job_running_s_at_kill": round(killed_at - job_info(dashboard, submission_id)["start_time"] / 1000, 1),
    }

    attempts = []
    status = wait_for_job(dashboard, submission_id, output, args.timeout, args.stall, watch)
    kill["job_end_after_kill_s"] = round(time.time() - killed_at, 1)
    kill["actors_after_loss"] = actors_after_loss(dashboard, worker_id)
    leftovers = alive(tree)
    kill["worker_processes_left_at_try_end"] = sorted(leftovers.values())
    for pid in leftovers:  # our own descendants: leave no orphans behind
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    attempts.append({**attempt_record(dashboard, submission_id, status, work, names), "summary": None})
    if status == "SUCCEEDED":
        attempts[-1]["summary"] = summary_figures(output, names)
    for n in range(2, args.reruns + 2):
        if status == "SUCCEEDED":
            break
        log(f"try {n - 1} ended {status}: re-running the same command on the remaining node")
        submission_id = f"faults-{tag}-{n}"
        submit(submit_command(dashboard, submission_id, data, output, args.budget, args.job_args))
        status = wait_for_job(dashboard, submission_id, output, args.timeout, args.stall)
        attempts.append({**attempt_record(dashboard, submission_id, status, work, names), "summary": None})
        if status == "SUCCEEDED":
            attempts[-1]["summary"] = summary_figures(output, names)
    for key in ("node_dead_after_s", "node_death_message", "next_done_marker_after_s"):
        kill[key] = watch.get(key)
    return {
        "finished": status == "SUCCEEDED",
        "finished_on_try": len(attempts) if status == "SUCCEEDED" else None,
        "kill": kill,
        "attempts": attempts,
        "job_command": display,
    }


if __name__ == "__main__":
    sys.exit(main())
