"""Training as a Ray job: `ray job submit --working-dir . -- python jobs/train.py --config configs/X.yaml ...`.

The same arguments as `gfpipe train` (see `gfpipe train --help`); inside a job RAY_ADDRESS
points at the cluster, so the run uses it.
"""

import sys

from gfpipe.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
