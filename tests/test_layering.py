"""DESIGN.md layering: the model core imports neither Ray nor storage libraries."""

import subprocess
import sys


def _python(code: str) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter, where imports start from nothing."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def test_model_core_imports_no_ray_or_storage():
    code = (
        "import sys; import gfpipe, gfpipe.model, gfpipe.checkpoint, gfpipe.budget, gfpipe.budget.costs; "
        "import gfpipe.budget.solver, gfpipe.budget.control, gfpipe.budget.grammar, gfpipe.engine; "
        "bad = [m for m in ('ray', 'fsspec', 's3fs') if m in sys.modules]; "
        "print(','.join(bad)); sys.exit(1 if bad else 0)"
    )
    result = _python(code)
    assert result.returncode == 0, f"imported: {result.stdout.strip()} {result.stderr[-2000:]}"


def test_the_classify_job_imports_ray_only_when_it_runs():
    """The job's modules import Ray inside functions, so `gfpipe classify --help`, argument checks
    and the report cost no Ray start-up, and the engine's callers stay Ray-free."""
    code = (
        "import sys; import gfpipe.pipeline, gfpipe.report, gfpipe.commands.classify; "
        "import gfpipe.classify.replica, gfpipe.classify.ledger, gfpipe.classify.state; "
        "print('ray' in sys.modules); sys.exit(1 if 'ray' in sys.modules else 0)"
    )
    result = _python(code)
    assert result.returncode == 0, f"ray imported: {result.stdout.strip()} {result.stderr[-2000:]}"


def test_the_jobs_processes_that_run_no_model_import_no_torch():
    """The budget ledger and the read/decode tasks run in processes of their own; importing torch
    there cost about a second of CPU each while a job starts (on 2 cores, about 0.6 s of wall
    time before the first image was classified). The public names still work, loaded on use."""
    code = (
        "import sys; import gfpipe, gfpipe.budget, gfpipe.classify.ledger, gfpipe.classify.reading; "
        "bad = 'torch' in sys.modules; "
        "from gfpipe import load_checkpoint, GFNet; from gfpipe.budget import exit_scores; "
        "sys.exit(1 if bad or not callable(exit_scores) else 0)"
    )
    result = _python(code)
    assert result.returncode == 0, f"torch imported too early: {result.stderr[-2000:]}"


def test_the_training_decode_tasks_import_no_torch():
    """Training's decode tasks (gfpipe.train.ingest) run in Ray worker processes of their own;
    when two run at once (an epoch's and the next one's, read ahead, or validation's), one may
    need a new process, which took about 2 s to start with torch imported."""
    code = "import sys; import gfpipe.train.ingest; sys.exit(1 if 'torch' in sys.modules else 0)"
    result = _python(code)
    assert result.returncode == 0, f"torch imported: {result.stderr[-2000:]}"


def test_library_modules_import_no_argparse_and_no_command_code():
    """argparse lives in gfpipe/cli.py and gfpipe/commands/ only; the library never imports them."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "gfpipe"
    offenders = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root).as_posix()
        if rel == "cli.py" or rel.startswith("commands/"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [
                f"{rel}: {n}" for n in names if n == "argparse" or n.startswith(("gfpipe.cli", "gfpipe.commands"))
            ]
    assert not offenders, offenders


def test_module_level_imports_have_no_cycles():
    """No import circles inside gfpipe (module-level imports; lazy ones in functions are the
    documented way to keep optional dependencies out of the model core)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "gfpipe"
    modules = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    graph = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.parse(path.read_text()).body:  # module level only
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            deps |= {t for t in targets if t in modules and t != name}
        graph[name] = deps

    def cycle_from(start, node, seen, path):
        for dep in graph[node]:
            if dep == start:
                return path + [dep]
            if dep not in seen:
                seen.add(dep)
                found = cycle_from(start, dep, seen, path + [dep])
                if found:
                    return found
        return None

    cycles = [c for m in graph if (c := cycle_from(m, m, {m}, [m]))]
    assert not cycles, cycles[:3]
