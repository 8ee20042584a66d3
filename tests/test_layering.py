"""DESIGN.md layering: the model core imports neither Ray nor storage libraries."""

import subprocess
import sys


def test_model_core_imports_no_ray_or_storage():
    code = (
        "import sys; import gfpipe, gfpipe.model, gfpipe.checkpoint, gfpipe.budget, gfpipe.budget.costs; "
        "import gfpipe.budget.solver, gfpipe.budget.control, gfpipe.budget.grammar, gfpipe.engine; "
        "bad = [m for m in ('ray', 'fsspec', 's3fs') if m in sys.modules]; "
        "print(','.join(bad)); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, f"imported: {result.stdout.strip()} {result.stderr[-2000:]}"
