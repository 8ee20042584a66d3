"""Ask the Ray autoscaler for GPUs and CPUs before a classify job, and wait until the cluster has them.

The classify job sizes its model pool from the GPUs the cluster has when it starts (one replica
per GPU) and its read concurrency from the CPUs; it does not wait for the autoscaler. Ray Train
(the training job) asks for its workers itself. Run this on the cluster, before the job:

    ray submit ~/gfpipe-cluster.yaml infra/scale_cluster.py -- --gpus 4 --cpus 64

and let the nodes go again afterwards (the request stays until the next one replaces it):

    ray submit ~/gfpipe-cluster.yaml infra/scale_cluster.py -- --gpus 0 --cpus 0

On KubeRay: `kubectl exec -i HEAD_POD -c ray-head -- python - --gpus 4 < infra/scale_cluster.py`
(docs/cluster.md). The exit status is 1 when the resources are not there within --timeout.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Mapping


def request(gpus: int, cpus: int) -> dict:
    """The `ray.autoscaler.sdk.request_resources` arguments: one 1-GPU bundle per GPU (one model
    replica each), plus a total CPU count (GPU nodes' CPUs count towards it)."""
    return {"num_cpus": cpus, "bundles": [{"GPU": 1} for _ in range(gpus)]}


def missing(resources: Mapping[str, float], gpus: int, cpus: int) -> str:
    """What the cluster still lacks, e.g. '2 GPUs, 16 CPUs'; empty when it has everything."""
    short = [(gpus - resources.get("GPU", 0.0), "GPU"), (cpus - resources.get("CPU", 0.0), "CPU")]
    return ", ".join(f"{n:g} {what}{'' if n == 1 else 's'}" for n, what in short if n > 0)


def wait_for(
    gpus: int,
    cpus: int,
    timeout: float,
    resources: Callable[[], Mapping[str, float]],
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> bool:
    """Poll the cluster's resources until it has `gpus` and `cpus`; False after `timeout` seconds."""
    deadline = clock() + timeout
    while True:
        lacking = missing(resources(), gpus, cpus)
        if not lacking:
            print(f"the cluster has {gpus} GPUs and {cpus} CPUs or more", flush=True)
            return True
        if clock() >= deadline:
            print(f"still missing {lacking} after {timeout:g} s; see `ray status`", file=sys.stderr, flush=True)
            return False
        print(f"waiting for {lacking}", flush=True)
        sleep(min(10.0, deadline - clock()))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--gpus", type=int, required=True, help="GPUs the cluster should have (0 releases)")
    parser.add_argument("--cpus", type=int, default=0, help="CPUs the cluster should have, GPU nodes' included")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for them (default 1800)")
    parser.add_argument("--address", default="auto", help="Ray cluster address (default: the one on this node)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.gpus < 0 or args.cpus < 0:
        parser.error("--gpus and --cpus must be >= 0")

    import ray
    from ray.autoscaler.sdk import request_resources

    ray.init(address=args.address, logging_level="WARNING", log_to_driver=False)
    request_resources(**request(args.gpus, args.cpus))
    if args.gpus == 0 and args.cpus == 0:
        print("released: idle worker nodes leave after the autoscaler's idle timeout", flush=True)
        return 0
    return 0 if wait_for(args.gpus, args.cpus, args.timeout, ray.cluster_resources) else 1


if __name__ == "__main__":
    sys.exit(main())
