"""The data layer stays light: no Ray at import time (Ray arrives with gfpipe/pipeline.py)."""

from __future__ import annotations

import subprocess
import sys


def test_data_modules_do_not_import_ray():
    code = (
        "import sys, gfpipe.data, gfpipe.data.io, gfpipe.data.shards, gfpipe.data.decode, gfpipe.data.synthetic; "
        "print('ray' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
