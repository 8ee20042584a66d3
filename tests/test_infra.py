"""infra/ stays usable: the launcher config passes the checks `ray up` makes, the KubeRay manifests
carry what KubeRay needs, the runtime_env is one Ray accepts, and the docs' commands are real.

Every validator here is also shown a broken copy (a misspelled key) and must refuse it, so a
validator that accepts anything cannot pass these tests. Nothing here starts Ray or a cluster.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from .markdown import bash_commands

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
LAUNCHER = INFRA / "aws-gpu.yaml"
RAYCLUSTER = INFRA / "kuberay" / "raycluster.yaml"
RAYJOBS = {"classify": INFRA / "kuberay" / "rayjob-classify.yaml", "train": INFRA / "kuberay" / "rayjob-train.yaml"}
RUNTIME_ENV = INFRA / "runtime_env.yaml"
DOCKERFILE = INFRA / "Dockerfile"
CLUSTER_DOC = ROOT / "docs" / "cluster.md"
TEMPLATES = [LAUNCHER, RAYCLUSTER, *RAYJOBS.values()]
IMAGE_HOME = "/home/ray/gfpipe/"  # where infra/Dockerfile puts jobs/ and configs/

PLACEHOLDER = re.compile(r"\$\{(\w+)\}")


# ----------------------------------------------------------------------------- helpers


def placeholders(text: str) -> set[str]:
    return set(PLACEHOLDER.findall(text))


def render(text: str, values: dict[str, str]) -> str:
    """What `envsubst '${A} ${B}'` does: replace the named ${VAR}s, leave every other `$` alone."""
    return PLACEHOLDER.sub(lambda m: values[m.group(1)] if m.group(1) in values else m.group(0), text)


def documented_values() -> dict[str, str]:
    """GFPIPE_* values from the `export` lines of docs/cluster.md: the examples a user copies."""
    values = {}
    for words in bash_commands(CLUSTER_DOC.read_text()):
        if words[0] == "export":
            for word in words[1:]:
                name, _, value = word.partition("=")
                if name.startswith("GFPIPE_"):
                    values[name] = value
    return values


def envsubst_commands(markdown: str) -> dict[str, set[str]]:
    """{template path: the variables its documented `envsubst '...' < PATH` names}."""
    found = {}
    for words in bash_commands(markdown):
        if words[0] == "envsubst":
            target = words[words.index("<") + 1]
            found[target] = set(re.findall(r"\$\{?(\w+)\}?", words[1]))
    return found


def load_scale_cluster():
    spec = importlib.util.spec_from_file_location("scale_cluster", INFRA / "scale_cluster.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def gfpipe_parser(command: str) -> argparse.ArgumentParser:
    """The parser of `gfpipe COMMAND` (jobs/COMMAND.py takes the same arguments)."""
    from gfpipe.commands import classify, train

    parser = argparse.ArgumentParser(prog=f"gfpipe {command}", exit_on_error=False)
    {"classify": classify, "train": train}[command].add_arguments(parser)
    return parser


def parse_job_args(command: str, args: list[str]) -> argparse.Namespace:
    try:
        return gfpipe_parser(command).parse_args(args)
    except SystemExit as exc:  # argparse exits on a missing or an unknown flag
        raise AssertionError(f"`{command} {shlex.join(args)}` does not parse") from exc


def ray_pin() -> str:
    """The Ray minor version pyproject.toml pins (e.g. '2.60')."""
    match = re.search(r'"ray\[[^]]*\]>=(\d+\.\d+),<', (ROOT / "pyproject.toml").read_text())
    assert match, "pyproject.toml no longer pins ray as ray[...]>=X.Y,<X.Z"
    return match.group(1)


# ----------------------------------------------------------------------------- the cluster launcher


def validate_launcher(config: dict[str, Any]) -> dict[str, Any]:
    """What `ray up` checks before it touches the cloud: the raw file against the autoscaler's
    JSON schema (ray/autoscaler/ray-schema.json, in the installed ray), then the config merged
    with the provider's defaults through the same `prepare_config` + `validate_config`."""
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def test_launcher_config_validates_as_shipped_and_rendered():
    text = LAUNCHER.read_text()
    validate_launcher(yaml.safe_load(text))  # placeholders are still strings the schema accepts

    values = documented_values()
    rendered = yaml.safe_load(render(text, values))
    prepared = validate_launcher(rendered)
    assert not placeholders(yaml.safe_dump(rendered)) & set(values), "a placeholder survived rendering"
    head = prepared["available_node_types"][prepared["head_node_type"]]
    assert head["node_config"]["ImageId"] == values["GFPIPE_AMI"]
    assert prepared["provider"]["region"] == values["GFPIPE_AWS_REGION"]


@pytest.mark.parametrize(
    "breakage",
    [
        lambda c: c.update(available_node_type=c.pop("available_node_types")),  # top-level typo
        lambda c: c["available_node_types"]["gpu_worker"].update(min_worker=1),  # node-type typo
        lambda c: c["available_node_types"]["gpu_worker"].update(resources={"GPU": "1"}),  # wrong type
        lambda c: c["docker"].update(worker_imag="rayproject/ray:2.60.0-py311-gpu"),
        lambda c: c.update(max_workers=1),  # fewer than the node types' min_workers would need
    ],
    ids=["top-level-key", "node-type-key", "resource-type", "docker-key", "max-workers"],
)
def test_launcher_validator_refuses_a_broken_config(breakage):
    config = yaml.safe_load(LAUNCHER.read_text())
    config["available_node_types"]["gpu_worker"]["min_workers"] = 2
    validate_launcher(copy.deepcopy(config))  # the intact copy passes
    breakage(config)
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        validate_launcher(config)


def test_launcher_has_a_cpu_head_and_autoscaling_gpu_and_cpu_groups():
    config = yaml.safe_load(LAUNCHER.read_text())
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}, "the head should hold no replica"
    workers = {name: t for name, t in types.items() if name != config["head_node_type"]}
    gpu = [t for t in workers.values() if t["node_config"]["InstanceType"].startswith(("g", "p"))]
    cpu = [t for t in workers.values() if t["node_config"]["InstanceType"].startswith(("c", "m"))]
    assert len(gpu) == 1 and len(cpu) == 1, sorted(workers)
    for group in workers.values():
        assert group.get("min_workers", 0) == 0 < group["max_workers"], "worker groups should autoscale from 0"
    assert "gpu" in gpu[0]["docker"]["worker_image"] and "cpu" in config["docker"]["worker_image"]


def test_launcher_installs_a_pinned_torch_before_gfpipe_on_every_node():
    config = yaml.safe_load(LAUNCHER.read_text())
    assert config["setup_commands"] == [], "shared setup_commands would run before the head's pinned torch"
    lists = {"head": config["head_setup_commands"], "worker": config["worker_setup_commands"]}
    lists |= {
        name: t["worker_setup_commands"]
        for name, t in config["available_node_types"].items()
        if "worker_setup_commands" in t
    }
    indexes = set()
    for name, commands in lists.items():
        torch = [i for i, c in enumerate(commands) if "${GFPIPE_TORCH}" in c]
        gfpipe = [i for i, c in enumerate(commands) if "${GFPIPE_PACKAGE}" in c]
        assert torch and gfpipe and torch[0] < gfpipe[0], f"{name}: torch must be installed, pinned, before gfpipe"
        indexes.add(re.search(r"--index-url\s+(\S+)", commands[torch[0]]).group(1).strip('"'))
    assert indexes == {"https://download.pytorch.org/whl/cpu", "${GFPIPE_TORCH_GPU_INDEX}"}


def test_launcher_turns_token_auth_on_everywhere_with_one_token():
    config = yaml.safe_load(LAUNCHER.read_text())
    assert "--env RAY_AUTH_MODE=token" in config["docker"]["run_options"]
    assert config["file_mounts"] == {"~/.ray/auth_token": "~/.ray/auth_token"}
    assert "$RAY_HEAD_IP" in " ".join(config["worker_start_ray_commands"])  # untouched by envsubst


# ----------------------------------------------------------------------------- KubeRay

# The fields of KubeRay's ray.io/v1 Go types (ray-operator/apis/ray/v1: RayClusterSpec,
# HeadGroupSpec, WorkerGroupSpec, RayJobSpec) at the levels gfpipe writes. Pod templates are
# plain Kubernetes and stay open; an unknown key at these levels is a typo the API server would
# refuse (or, with lenient validation, silently drop).
_POD_TEMPLATE = {
    "type": "object",
    "required": ["spec"],
    "properties": {"spec": {"type": "object", "required": ["containers"]}},
}
_START_PARAMS = {"type": "object", "additionalProperties": {"type": "string"}}
_CLUSTER_SPEC = {
    "type": "object",
    "additionalProperties": False,
    "required": ["headGroupSpec"],
    "properties": {
        "rayVersion": {"type": "string"},
        "authOptions": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"mode": {"enum": ["disabled", "token"]}, "secretName": {"type": "string"}},
        },
        "enableInTreeAutoscaling": {"type": "boolean"},
        "autoscalerOptions": {"type": "object"},
        "headServiceAnnotations": {"type": "object"},
        "suspend": {"type": "boolean"},
        "headGroupSpec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["rayStartParams", "template"],
            "properties": {
                "serviceType": {"type": "string"},
                "headService": {"type": "object"},
                "enableIngress": {"type": "boolean"},
                "rayStartParams": _START_PARAMS,
                "template": _POD_TEMPLATE,
            },
        },
        "workerGroupSpecs": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["groupName", "minReplicas", "maxReplicas", "rayStartParams", "template"],
                "properties": {
                    "groupName": {"type": "string"},
                    "replicas": {"type": "integer", "minimum": 0},
                    "minReplicas": {"type": "integer", "minimum": 0},
                    "maxReplicas": {"type": "integer", "minimum": 0},
                    "numOfHosts": {"type": "integer"},
                    "rayStartParams": _START_PARAMS,
                    "template": _POD_TEMPLATE,
                    "scaleStrategy": {"type": "object"},
                    "suspend": {"type": "boolean"},
                },
            },
        },
    },
}
_OBJECT = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {"apiVersion": {"const": "ray.io/v1"}, "metadata": {"type": "object", "required": ["name"]}},
}
RAYCLUSTER_SCHEMA = {
    **_OBJECT,
    "properties": {**_OBJECT["properties"], "kind": {"const": "RayCluster"}, "spec": _CLUSTER_SPEC},
}
RAYJOB_SCHEMA = {
    **_OBJECT,
    "properties": {
        **_OBJECT["properties"],
        "kind": {"const": "RayJob"},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["entrypoint"],
            # a RayJob either brings its cluster or selects a running one, never both
            "oneOf": [{"required": ["rayClusterSpec"]}, {"required": ["clusterSelector"]}],
            "properties": {
                "entrypoint": {"type": "string", "minLength": 1},
                "rayClusterSpec": _CLUSTER_SPEC,
                "clusterSelector": {"type": "object", "additionalProperties": {"type": "string"}},
                "runtimeEnvYAML": {"type": "string"},
                "submissionMode": {"enum": ["K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"]},
                "submitterPodTemplate": _POD_TEMPLATE,
                "submitterConfig": {"type": "object"},
                "shutdownAfterJobFinishes": {"type": "boolean"},
                "ttlSecondsAfterFinished": {"type": "integer", "minimum": 0},
                "activeDeadlineSeconds": {"type": "integer", "minimum": 1},
                "backoffLimit": {"type": "integer", "minimum": 0},
                "jobId": {"type": "string"},
                "metadata": {"type": "object"},
                "entrypointNumCpus": {"type": "number"},
                "entrypointNumGpus": {"type": "number"},
                "entrypointResources": {"type": "string"},
                "suspend": {"type": "boolean"},
                "deletionStrategy": {"type": "object"},
                "managedBy": {"type": "string"},
            },
        },
    },
}


def manifests(path: Path, values: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """The YAML documents of a manifest file, by kind."""
    text = path.read_text() if values is None else render(path.read_text(), values)
    docs = [d for d in yaml.safe_load_all(text) if d]
    kinds = {d["kind"]: d for d in docs}
    assert len(kinds) == len(docs), f"{path.name}: two documents of one kind"
    return kinds


def containers(template: dict[str, Any]) -> list[dict[str, Any]]:
    return template["spec"]["containers"]


@pytest.mark.parametrize("values", [None, "documented"], ids=["shipped", "rendered"])
def test_kuberay_manifests_carry_what_kuberay_requires(values):
    values = documented_values() if values else None
    cluster = manifests(RAYCLUSTER, values)["RayCluster"]
    jsonschema.validate(cluster, RAYCLUSTER_SCHEMA)
    for path in RAYJOBS.values():
        jsonschema.validate(manifests(path, values)["RayJob"], RAYJOB_SCHEMA)

    spec = cluster["spec"]
    assert spec["rayVersion"].startswith(ray_pin() + "."), spec["rayVersion"]
    assert spec["enableInTreeAutoscaling"] is True and spec["authOptions"]["mode"] == "token"
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0", "the head should hold no replica"
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    gpus = {
        name: containers(g["template"])[0]["resources"]["limits"].get("nvidia.com/gpu") for name, g in groups.items()
    }
    assert sorted(gpus.values(), key=str) == ["1", None], gpus  # one GPU group, one CPU group
    for name, group in groups.items():
        assert group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"], name
        assert group["minReplicas"] == 0 < group["maxReplicas"], f"{name} should autoscale from 0"


@pytest.mark.parametrize(
    ("path", "breakage"),
    [
        (RAYCLUSTER, lambda c: c["spec"].update(workerGroupSpec=c["spec"].pop("workerGroupSpecs"))),
        (RAYCLUSTER, lambda c: c["spec"]["workerGroupSpecs"][0].update(maxReplica=8)),
        (RAYCLUSTER, lambda c: c["spec"]["headGroupSpec"]["rayStartParams"].update({"num-gpus": 0})),
        (RAYCLUSTER, lambda c: c.update(apiVersion="ray.io/v1alpha1")),
        (RAYJOBS["classify"], lambda j: j["spec"].update(entryPoint=j["spec"].pop("entrypoint"))),
        (RAYJOBS["classify"], lambda j: j["spec"].update(rayClusterSpec={"headGroupSpec": {}})),
        (RAYJOBS["train"], lambda j: j["spec"].update(entrypoint="")),
    ],
    ids=["spec-key", "group-key", "start-param-type", "api-version", "job-key", "selector-and-spec", "no-entrypoint"],
)
def test_kuberay_validator_refuses_a_broken_manifest(path, breakage):
    kind = "RayCluster" if path == RAYCLUSTER else "RayJob"
    schema = RAYCLUSTER_SCHEMA if path == RAYCLUSTER else RAYJOB_SCHEMA
    manifest = manifests(path)[kind]
    jsonschema.validate(manifest, schema)
    breakage(manifest)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(manifest, schema)


def test_rayjobs_use_the_raycluster_and_its_token():
    cluster_docs = manifests(RAYCLUSTER)
    cluster = cluster_docs["RayCluster"]
    name = cluster["metadata"]["name"]
    account = cluster_docs["ServiceAccount"]["metadata"]["name"]
    templates = [cluster["spec"]["headGroupSpec"]["template"]]
    templates += [g["template"] for g in cluster["spec"]["workerGroupSpecs"]]
    assert {t["spec"]["serviceAccountName"] for t in templates} == {account}, "every pod needs the S3 role"
    images = {c["image"] for t in templates for c in containers(t)}
    for path in RAYJOBS.values():
        spec = manifests(path)["RayJob"]["spec"]
        # KubeRay finds the cluster of a clusterSelector by the value of ray.io/cluster: its name.
        assert spec["clusterSelector"] == {"ray.io/cluster": name}, path.name
        submitter = containers(spec["submitterPodTemplate"])[0]
        assert submitter["image"] in images, f"{path.name}: the submitter should run the cluster's image"
        env = {e["name"]: e for e in submitter["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": name, "key": "auth_token"}


@pytest.mark.parametrize("command", sorted(RAYJOBS))
def test_rayjob_entrypoints_are_real_job_commands(command):
    """The entrypoint runs jobs/COMMAND.py from the image with flags `gfpipe COMMAND` accepts, and
    every path under the image's gfpipe folder is a file infra/Dockerfile copies there."""
    entrypoint = manifests(RAYJOBS[command], documented_values())["RayJob"]["spec"]["entrypoint"]
    words = shlex.split(entrypoint)
    assert words[:2] == ["python", f"{IMAGE_HOME}jobs/{command}.py"], words[:2]
    parse_job_args(command, words[2:])
    copied = re.findall(rf"^COPY .* {re.escape(IMAGE_HOME)}(\w+)$", DOCKERFILE.read_text(), flags=re.M)
    for word in words[1:]:
        if word.startswith(IMAGE_HOME):
            rel = word[len(IMAGE_HOME) :]
            assert (ROOT / rel).is_file(), f"{RAYJOBS[command].name} runs {rel}, which does not exist"
            assert rel.split("/")[0] in copied, f"infra/Dockerfile does not copy {rel} into the image"


def test_the_image_pins_ray_and_torch_and_holds_what_the_jobs_run():
    text = DOCKERFILE.read_text()
    assert re.search(rf"^ARG RAY_IMAGE=rayproject/ray:{re.escape(ray_pin())}\.\d+-py311-gpu$", text, flags=re.M)
    lines = text.splitlines()
    torch = next(i for i, line in enumerate(lines) if '"${TORCH}"' in line)
    gfpipe = next(i for i, line in enumerate(lines) if "pip install --no-cache-dir /home/ray/gfpipe" in line)
    assert torch < gfpipe, "torch must be installed, pinned, before gfpipe"
    allowed = {line[1:].rstrip("/") for line in (INFRA / "Dockerfile.dockerignore").read_text().splitlines()}
    for sources in re.findall(r"^COPY --chown=\S+ (.+) \S+$", text, flags=re.M):
        for source in sources.split():
            assert source in allowed and (ROOT / source).exists(), f"COPY {source}: not in the build context"


# ----------------------------------------------------------------------------- runtime_env


def validate_runtime_env(env: dict[str, Any]) -> None:
    """Ray's own check (`RuntimeEnv` validates each known field), plus what it lets through:
    an unknown key would be taken for a plugin and fail only on the cluster."""
    from ray.runtime_env import RuntimeEnv

    unknown = set(env) - RuntimeEnv.known_fields
    if unknown:
        raise ValueError(f"not runtime_env fields: {sorted(unknown)}")
    RuntimeEnv(**env)


def test_runtime_env_is_one_ray_accepts_and_installs_nothing():
    env = yaml.safe_load(RUNTIME_ENV.read_text())
    validate_runtime_env(env)
    assert env["working_dir"] == "."
    assert not {"pip", "conda", "uv"} & set(env), "a package list would install an unpinned torch"
    assert not {k for k in env["env_vars"] if "SECRET" in k or "KEY" in k or "TOKEN" in k}, "no credentials here"
    for pattern in env["excludes"]:
        assert (ROOT / pattern.strip("/")).is_dir(), f"excludes {pattern}, which is not a folder"
        assert pattern.strip("/") not in {"gfpipe", "jobs", "configs"}, "the jobs need those"


@pytest.mark.parametrize(
    "breakage",
    [
        lambda e: e.update(env_var=e.pop("env_vars")),
        lambda e: e.update(workingdir=e.pop("working_dir")),
        lambda e: e["env_vars"].update(OMP_NUM_THREADS=4),  # values must be strings
    ],
    ids=["env-vars-key", "working-dir-key", "value-type"],
)
def test_runtime_env_validator_refuses_a_broken_copy(breakage):
    env = yaml.safe_load(RUNTIME_ENV.read_text())
    breakage(env)
    with pytest.raises((ValueError, TypeError)):
        validate_runtime_env(env)


# ----------------------------------------------------------------------------- placeholders and secrets


def test_every_placeholder_is_documented_with_its_file():
    """Each template's ${GFPIPE_*} names are exactly those its envsubst command in docs/cluster.md
    (and its own header) names, and the docs export an example value for every one."""
    documented = envsubst_commands(CLUSTER_DOC.read_text())
    values = documented_values()
    for path in TEMPLATES:
        rel = path.relative_to(ROOT).as_posix()
        text = path.read_text()
        names = placeholders(text)
        assert names and all(n.startswith("GFPIPE_") for n in names), f"{rel}: {sorted(names)}"
        assert documented.get(rel) == names, f"docs/cluster.md renders {rel} with {documented.get(rel)}, not {names}"
        header = re.search(r"envsubst '([^']*)'[\s\\#]*<\s*(\S+)", text)
        assert header and header.group(2) == rel, f"{rel}: its header shows no envsubst command for it"
        assert placeholders(header.group(1)) == names, f"{rel}: its header's envsubst names other variables"
        assert names <= set(values), f"no example value in docs/cluster.md for {sorted(names - set(values))}"


@pytest.mark.skipif(shutil.which("envsubst") is None, reason="envsubst (gettext) is not installed")
def test_the_documented_envsubst_commands_render_every_template():
    documented = envsubst_commands(CLUSTER_DOC.read_text())
    values = documented_values()
    for path in TEMPLATES:
        rel = path.relative_to(ROOT).as_posix()
        shell_format = " ".join(f"${{{name}}}" for name in sorted(documented[rel]))
        out = subprocess.run(
            [shutil.which("envsubst"), shell_format],
            input=path.read_text(),
            capture_output=True,
            text=True,
            env=values,
            check=True,
        ).stdout
        assert out == render(path.read_text(), values), rel
        assert not set(PLACEHOLDER.findall(out)) & set(values)


def test_infra_holds_no_accounts_keys_or_buckets():
    patterns = {
        "AWS access key id": r"\b(AKIA|ASIA)[0-9A-Z]{16}\b",
        "AWS account id": r"\b\d{12}\b",
        "ARN": r"arn:aws:",
        "bucket": r"\bs3://",
        "secret key": r"(?i)aws_secret_access_key\s*[:=]\s*\S",
    }
    for path in sorted(p for p in INFRA.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        text = path.read_text()
        for what, pattern in patterns.items():
            assert not re.search(pattern, text), f"{path.relative_to(ROOT)} holds a {what}"


# ----------------------------------------------------------------------------- the docs' commands


def test_docs_name_only_infra_files_that_exist():
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for path in re.findall(r"\binfra/[\w./-]*\w", doc.read_text()):
            assert (ROOT / path).exists(), f"{doc.relative_to(ROOT)} names {path}, which does not exist"


def test_docs_links_to_their_own_sections_resolve():
    text = CLUSTER_DOC.read_text()
    headings = {
        re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in re.findall(r"^#+ (.+)$", text, re.M)
    }
    for anchor in re.findall(r"\]\(#([\w-]+)\)", text):
        assert anchor in headings, f"docs/cluster.md links to #{anchor}, which is no heading"


def _ray_command(words: list[str]):
    """The click command a `ray ...` line runs, and its arguments."""
    import click
    from ray.scripts.scripts import cli

    command, rest = cli, words[1:]
    while isinstance(command, click.Group):
        assert rest and rest[0] in command.commands, f"`{shlex.join(words)}`: no such ray command"
        command, rest = command.commands[rest[0]], rest[1:]
    return command, rest


def test_docs_commands_are_real():
    """Every `ray ...` line of docs/cluster.md parses with the installed ray CLI; every job
    command parses with gfpipe's own parser; every infra/scale_cluster.py call with its parser."""
    scale = load_scale_cluster().build_parser()
    seen = set()
    for words in bash_commands(CLUSTER_DOC.read_text()):
        for i, word in enumerate(words):  # the job commands, wherever they appear on the line
            match = re.fullmatch(r"jobs/(classify|train)\.py", word)
            if match and words[i - 1] == "python":
                parse_job_args(match.group(1), words[i + 1 :])
                seen.add(match.group(1))
        if words[0] == "ray":
            command, rest = _ray_command(words)
            command.make_context(shlex.join(words[:2]), list(rest), resilient_parsing=False)
            if "infra/scale_cluster.py" in words:
                scale.parse_args(words[words.index("--") + 1 :])
                seen.add("scale")
        if words[0] == "kubectl" and "infra/scale_cluster.py" in words:
            scale.parse_args(words[words.index("-") + 1 : words.index("<")])
            seen.add("scale")
        if words[:2] == ["docker", "build"]:
            for i, word in enumerate(words):
                if word == "--build-arg":
                    name = words[i + 1].partition("=")[0]
                    assert re.search(rf"^ARG {name}=", DOCKERFILE.read_text(), re.M), f"no build arg {name}"
    assert seen == {"classify", "train", "scale"}, seen


def test_docs_tuning_flags_exist():
    section = CLUSTER_DOC.read_text().split("## Tuning", 1)[1]
    known = set()
    for parser in (gfpipe_parser("classify"), gfpipe_parser("train"), load_scale_cluster().build_parser()):
        known |= {option for action in parser._actions for option in action.option_strings}
    for flag in re.findall(r"`(--[\w-]+)", section):
        assert flag in known, f"docs/cluster.md, Tuning: {flag} is no flag of classify, train or scale_cluster"


# ----------------------------------------------------------------------------- infra/scale_cluster.py


def test_scale_cluster_requests_one_bundle_per_gpu_and_waits():
    scale = load_scale_cluster()
    assert scale.request(3, 40) == {"num_cpus": 40, "bundles": [{"GPU": 1}] * 3}
    assert scale.request(0, 0) == {"num_cpus": 0, "bundles": []}  # replaces, so releases, the request
    assert scale.missing({"GPU": 1.0, "CPU": 8.0}, 3, 8) == "2 GPUs"
    assert scale.missing({"GPU": 2.0, "CPU": 8.0}, 3, 9) == "1 GPU, 1 CPU"
    assert scale.missing({"GPU": 4.0, "CPU": 64.0}, 3, 40) == ""

    now = [0.0]
    seen = iter([{"CPU": 8.0}, {"GPU": 2.0, "CPU": 24.0}, {"GPU": 4.0, "CPU": 40.0}])
    tick = lambda s: now.__setitem__(0, now[0] + s)  # noqa: E731
    assert scale.wait_for(4, 40, 60, lambda: next(seen), sleep=tick, clock=lambda: now[0])
    assert now[0] == 20.0
    assert not scale.wait_for(4, 40, 15, lambda: {"GPU": 1.0}, sleep=tick, clock=lambda: now[0])
    with pytest.raises(SystemExit):
        scale.main(["--gpus", "-1"])  # refused before Ray is touched
