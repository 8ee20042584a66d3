"""The nightly tagging job: `ray job submit --working-dir . -- python jobs/classify.py --input URI
--output URI --budget 1.2G [--checkpoint URI]`.

The same arguments as `gfpipe classify` (see `gfpipe classify --help`). Inside a Ray job
RAY_ADDRESS points at the cluster, so the job uses it; run directly, it starts a local Ray.
"""

import sys

from gfpipe.cli import main

if __name__ == "__main__":
    sys.exit(main(["classify", *sys.argv[1:]]))
