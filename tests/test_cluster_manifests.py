"""Deployment files under cluster/ are checked against the schemas their consumers enforce.

- KubeRay manifests against the CRDs' served openAPIV3Schema (from ../shared/kuberay-crds), strictly:
  unknown fields are errors, as with ``kubectl apply --validate=strict``.
- The AWS launcher YAML against the ray-schema.json that the installed ray package ships.
- Ray versions and images in the Dockerfile, manifests, launcher YAML and runtime_env agree with pyproject.

No cluster is needed: a manifest that would be rejected by the API server or by ``ray up`` fails here.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

jsonschema = pytest.importorskip("jsonschema")

from mak_ray.registry import STAGES as REGISTRY_STAGES  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CRD_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "kuberay-crds"
CLUSTER = REPO / "cluster"
KUBERAY = CLUSTER / "kuberay"
DOCKERFILE = CLUSTER / "Dockerfile"
LAUNCHER = CLUSTER / "aws" / "autoscaler.yaml"
RUNTIME_ENV = CLUSTER / "runtime_env.yaml"
STAGES = {*REGISTRY_STAGES, "pipeline"}
KUBERAY_KINDS = {"RayCluster", "RayJob"}

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

needs_crds = pytest.mark.skipif(
    not CRD_DIR.is_dir(), reason=f"KubeRay CRD schemas not found at {CRD_DIR} (expected repo-root/../shared)"
)


# ---------------------------------------------------------------------------------------------- loading


def load_docs(path: Path, text: str | None = None) -> list[dict[str, Any]]:
    docs = yaml.load_all(text if text is not None else path.read_text(), Loader=_Loader)
    return [d for d in docs if d]


def kuberay_docs(text_by_file: dict[Path, str] | None = None) -> list[tuple[str, dict[str, Any]]]:
    """(label, document) for every RayCluster/RayJob document in cluster/kuberay/*.yaml."""
    out = []
    for path in sorted(KUBERAY.glob("*.yaml")):
        text = text_by_file.get(path) if text_by_file else None
        for i, doc in enumerate(load_docs(path, text)):
            if doc.get("kind") in KUBERAY_KINDS:
                out.append((f"{path.name}#{i}", doc))
    return out


def ray_pin() -> str:
    """The `major.minor` of pyproject's `ray[...]==X.Y.*` pin."""
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in deps:
        m = re.fullmatch(r"ray(\[[^\]]*\])?\s*==\s*(\d+\.\d+)\.\*", dep.strip())
        if m:
            return m.group(2)
    raise AssertionError(f"pyproject.toml has no `ray[...]==X.Y.*` pin among {deps}")


def dockerfile_ray_version() -> tuple[str, str]:
    """(RAY_VERSION default, the FROM line with it substituted)."""
    text = DOCKERFILE.read_text()
    arg = re.search(r"^ARG\s+RAY_VERSION=(\S+)\s*$", text, re.M)
    frm = re.search(r"^FROM\s+(\S+)", text, re.M)
    assert arg and frm, "cluster/Dockerfile needs `ARG RAY_VERSION=...` and a FROM line"
    return arg.group(1), frm.group(1).replace("${RAY_VERSION}", arg.group(1))


# ------------------------------------------------------------------- openAPIV3 -> JSON Schema translation


def openapi_to_jsonschema(node: Any, strict: bool = True) -> Any:
    """Translate a structural openAPIV3Schema into JSON Schema (Draft 7) semantics.

    - ``x-kubernetes-int-or-string: true`` admits integers and strings (controller-gen already writes an
      anyOf; a bare marker gets one here).
    - ``nullable: true`` admits null.
    - ``strict``: an object with ``properties`` and no ``additionalProperties`` rejects unknown fields, unless
      it carries ``x-kubernetes-preserve-unknown-fields`` (the API server would prune or reject them).
    The other ``x-kubernetes-*`` keys (list/map types, CEL validations) are not JSON Schema and are ignored.
    """
    if isinstance(node, list):
        return [openapi_to_jsonschema(n, strict) for n in node]
    if not isinstance(node, dict):
        return node
    out = {
        k: openapi_to_jsonschema(v, strict)
        for k, v in node.items()
        if not k.startswith("x-kubernetes-") and k != "properties"
    }
    # `properties` maps field names to schemas: its keys are field names, never keywords to translate.
    if isinstance(node.get("properties"), dict):
        out["properties"] = {k: openapi_to_jsonschema(v, strict) for k, v in node["properties"].items()}
    if node.get("x-kubernetes-int-or-string") and "anyOf" not in node:
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"] if isinstance(out["type"], str) else [*out["type"], "null"]
    if (
        strict
        and "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


FORMATS = jsonschema.FormatChecker(formats=())


@FORMATS.checks("int32")
def _int32(value: Any) -> bool:
    return not isinstance(value, int) or -(2**31) <= value < 2**31


@FORMATS.checks("int64")
def _int64(value: Any) -> bool:
    return not isinstance(value, int) or -(2**63) <= value < 2**63


@functools.cache
def crd_validator(kind: str, version: str) -> Any:
    """Validator for the served `version` of the CRD whose spec.names.kind is `kind`."""
    for path in sorted(CRD_DIR.glob("*.yaml")):
        for crd in load_docs(path):
            if crd.get("kind") != "CustomResourceDefinition" or crd["spec"]["names"]["kind"] != kind:
                continue
            for v in crd["spec"]["versions"]:
                if v["name"] == version and v.get("served"):
                    schema = openapi_to_jsonschema(v["schema"]["openAPIV3Schema"])
                    jsonschema.Draft7Validator.check_schema(schema)
                    return jsonschema.Draft7Validator(schema, format_checker=FORMATS)
            raise AssertionError(f"{path.name}: no served version {version!r}")
    raise AssertionError(f"no CRD for kind {kind!r} in {CRD_DIR}")


def crd_errors(doc: dict[str, Any]) -> list[str]:
    group, _, version = doc["apiVersion"].partition("/")
    assert group == "ray.io", doc["apiVersion"]
    validator = crd_validator(doc["kind"], version)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]
    if not doc.get("metadata", {}).get("name"):
        errors.append("metadata/name: required")
    return errors


# ----------------------------------------------------------------------------------- manifest helpers


def cluster_spec(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]


def pod_specs(spec: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    groups = [("head", spec["headGroupSpec"])]
    groups += [(g["groupName"], g) for g in spec.get("workerGroupSpecs", [])]
    return [(name, g["template"]["spec"]) for name, g in groups]


def ray_container(pod: dict[str, Any]) -> dict[str, Any]:
    return pod["containers"][0]  # KubeRay runs Ray in the first container


_UNITS = {"": 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def quantity_bytes(q: str | int) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([kMGT]i?|)", str(q))
    assert m, f"unsupported quantity {q!r}"
    return float(m.group(1)) * _UNITS[m.group(2)]


def all_images(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["image"]] if isinstance(node.get("image"), str) else []
        return found + [i for v in node.values() for i in all_images(v)]
    if isinstance(node, list):
        return [i for v in node for i in all_images(v)]
    return []


# ------------------------------------------------------------------------------------ KubeRay vs CRDs


def test_kuberay_manifests_cover_both_kinds() -> None:
    kinds = {doc["kind"] for _, doc in kuberay_docs()}
    assert kinds == KUBERAY_KINDS


@needs_crds
@pytest.mark.parametrize("label", [label for label, _ in kuberay_docs()])
def test_kuberay_manifest_matches_crd_schema(label: str) -> None:
    doc = dict(kuberay_docs())[label]
    assert crd_errors(doc) == []


def _break(doc: dict[str, Any], path: list[Any], value: Any, *, delete: bool = False) -> dict[str, Any]:
    broken = copy.deepcopy(doc)
    node = broken
    for key in path[:-1]:
        node = node[key]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return broken


@needs_crds
def test_crd_validation_rejects_broken_manifests() -> None:
    """The schema check is not vacuous: each kind of mistake a reviewer might miss is caught."""
    docs = dict(kuberay_docs())
    rc = docs["raycluster.yaml#0"]
    rj = docs["rayjob.yaml#0"]
    w = ["spec", "workerGroupSpecs", 1]
    cases = {
        "wrong type": _break(rc, [*w, "minReplicas"], "zero"),
        "unknown field (typo)": _break(rc, [*w, "maxReplica"], 8),
        "rayStartParams value not a string": _break(
            rc, ["spec", "headGroupSpec", "rayStartParams", "num-cpus"], 0
        ),
        "missing required groupName": _break(rc, [*w, "groupName"], None, delete=True),
        "malformed quantity": _break(
            rc, [*w, "template", "spec", "containers", 0, "resources", "limits", "memory"], "64 GB"
        ),
        "int32 overflow": _break(rc, [*w, "maxReplicas"], 2**40),
        "RayJob wrong type": _break(rj, ["spec", "shutdownAfterJobFinishes"], "yes"),
        "RayJob embedded cluster typo": _break(
            rj, ["spec", "rayClusterSpec", "enableInTreeAutoScaling"], True
        ),
    }
    for name, broken in cases.items():
        assert crd_errors(broken), f"validator accepted a manifest with: {name}"


def test_int_or_string_and_nullable_translation() -> None:
    schema = openapi_to_jsonschema(
        {
            "type": "object",
            "properties": {
                "port": {"x-kubernetes-int-or-string": True},
                "when": {"type": "string", "nullable": True},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True, "properties": {}},
            },
        }
    )
    v = jsonschema.Draft7Validator(schema)
    assert v.is_valid({"port": 80, "when": None, "free": {"anything": 1}})
    assert v.is_valid({"port": "http", "when": "2024-01-01T00:00:00Z"})
    assert not v.is_valid({"port": 1.5})
    assert not v.is_valid({"port": 80, "unknown": 1})


# --------------------------------------------------------------------------- KubeRay content and intent


@pytest.mark.parametrize("label", [label for label, _ in kuberay_docs()])
def test_kuberay_cluster_shape(label: str) -> None:
    spec = cluster_spec(dict(kuberay_docs())[label])
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["headGroupSpec"]["rayStartParams"].get("dashboard-host") == "0.0.0.0"

    workers = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    gpu_groups, cpu_groups = [], []
    for name, g in workers.items():
        assert 0 <= g["minReplicas"] <= g.get("replicas", g["minReplicas"]) <= g["maxReplicas"], name
        assert g["maxReplicas"] > g["minReplicas"], f"{name}: autoscaling needs room between min and max"
        limits = ray_container(g["template"]["spec"])["resources"]["limits"]
        (gpu_groups if int(limits.get("nvidia.com/gpu", 0)) >= 1 else cpu_groups).append(name)
    assert gpu_groups and cpu_groups, (
        f"need a CPU and a GPU worker group, got cpu={cpu_groups} gpu={gpu_groups}"
    )


@pytest.mark.parametrize("label", [label for label, _ in kuberay_docs()])
def test_kuberay_pods_have_s3_env_shm_and_memory(label: str) -> None:
    for name, pod in pod_specs(cluster_spec(dict(kuberay_docs())[label])):
        c = ray_container(pod)
        env = {e["name"]: e for e in c.get("env", [])}
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            ref = env[key]["valueFrom"]["secretKeyRef"]
            assert ref["key"] == key and ref["name"], f"{name}: {key} must come from a Secret"
        assert env["AWS_ENDPOINT_URL"]["value"].startswith(("http://", "https://")), name

        res = c["resources"]
        assert quantity_bytes(res["requests"]["memory"]) == quantity_bytes(res["limits"]["memory"]), name
        mem = quantity_bytes(res["limits"]["memory"])
        volumes = {v["name"]: v for v in pod["volumes"]}
        shm_mount = next(m for m in c["volumeMounts"] if m["mountPath"] == "/dev/shm")
        shm = volumes[shm_mount["name"]]["emptyDir"]
        assert shm["medium"] == "Memory", name
        # tmpfs pages count towards the memory limit: the object store must leave room for the workload.
        assert 0.2 * mem <= quantity_bytes(shm["sizeLimit"]) <= 0.5 * mem, (
            f"{name}: /dev/shm {shm['sizeLimit']}"
        )


IRSA_LINE = re.compile(r"^(\s*)# (serviceAccountName: \S+)\s*$", re.M)


@needs_crds
def test_irsa_variant_is_valid_and_names_the_irsa_service_account() -> None:
    """Uncommenting the serviceAccountName lines (the documented IRSA switch) still gives valid manifests."""
    sa = load_docs(KUBERAY / "serviceaccount-irsa.yaml")[0]
    assert sa["kind"] == "ServiceAccount"
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")

    texts = {p: IRSA_LINE.sub(r"\1\2", p.read_text()) for p in KUBERAY.glob("*.yaml")}
    docs = kuberay_docs(texts)
    assert docs
    for label, doc in docs:
        assert crd_errors(doc) == [], label
        for name, pod in pod_specs(cluster_spec(doc)):
            assert pod.get("serviceAccountName") == sa["metadata"]["name"], f"{label} {name}"


def test_rayjob_embeds_the_raycluster_spec() -> None:
    docs = dict(kuberay_docs())
    assert docs["rayjob.yaml#0"]["spec"]["rayClusterSpec"] == docs["raycluster.yaml#0"]["spec"]


def test_rayjob_entrypoint_runs_a_stage_with_valid_overrides() -> None:
    from mak_ray.config import load_config

    job = dict(kuberay_docs())["rayjob.yaml#0"]["spec"]
    argv = shlex.split(job["entrypoint"])
    assert argv[:2] == ["python", "-m"] and argv[2].startswith("jobs.")
    stage = argv[2].removeprefix("jobs.")
    assert stage in STAGES
    assert importlib.util.find_spec(f"jobs.{stage}") is not None, f"no module jobs.{stage}"

    assert argv[3] == "--config"
    workdir = re.search(r"^WORKDIR\s+(\S+)", DOCKERFILE.read_text(), re.M).group(1)
    config = Path(argv[4])
    if config.is_absolute():  # inside the image: WORKDIR holds the repository's configs/
        config = config.relative_to(workdir)
    assert config.parts[0] == "configs" and (REPO / config).is_file(), f"{argv[4]} is not in the repository"
    overrides = argv[5:]
    assert all("=" in o for o in overrides), overrides
    cfg = load_config(REPO / config, overrides)  # unknown keys or bad values raise ConfigError
    assert cfg.run.output_uri.startswith("s3://")
    assert cfg.score.gpus_per_actor >= 1


# ------------------------------------------------------------------------------------ AWS launcher


@functools.lru_cache(maxsize=1)
def launcher_validator() -> Any:
    import ray

    schema_path = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"
    schema = json.loads(schema_path.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def launcher_errors(cfg: dict[str, Any]) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in launcher_validator().iter_errors(cfg)
    ]


def test_launcher_yaml_matches_ray_schema() -> None:
    assert launcher_errors(load_docs(LAUNCHER)[0]) == []


def test_launcher_schema_rejects_broken_configs() -> None:
    cfg = load_docs(LAUNCHER)[0]
    gpu = ["available_node_types", "ray.worker.gpu"]
    cases = {
        "unknown top-level key": _break(cfg, ["max_worker"], 4),
        "wrong type": _break(cfg, [*gpu, "max_workers"], "eight"),
        "missing resources": _break(cfg, [*gpu, "resources"], None, delete=True),
        "missing provider": _break(cfg, ["provider"], None, delete=True),
    }
    for name, broken in cases.items():
        assert launcher_errors(broken), f"ray-schema.json accepted a launcher config with: {name}"


def test_launcher_node_types() -> None:
    cfg = load_docs(LAUNCHER)[0]
    assert cfg["provider"]["type"] == "aws"
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert not head["node_config"]["InstanceType"].startswith(("g", "p")), "head should be a CPU instance"
    gpu_types = [
        t
        for n, t in types.items()
        if n != cfg["head_node_type"] and t["node_config"]["InstanceType"][0] in "gp"
    ]
    assert gpu_types, "need a GPU worker node type (g*/p* instance)"
    for t in gpu_types:
        assert 0 <= t["min_workers"] < t["max_workers"] <= cfg["max_workers"]
    for name, t in types.items():
        assert "IamInstanceProfile" in t["node_config"], f"{name}: S3 access needs an instance profile"
    assert any("mak-ray" in c and "pip install" in c for c in cfg["setup_commands"])


# ------------------------------------------------------------------------------ versions agree everywhere


def test_ray_versions_agree_with_pyproject() -> None:
    import ray

    pin = ray_pin()
    assert ray.__version__.startswith(pin + "."), f"installed ray {ray.__version__} vs pin {pin}.*"

    version, base_image = dockerfile_ray_version()
    assert version.startswith(pin + "."), f"Dockerfile RAY_VERSION {version} vs pyproject pin {pin}.*"
    m = re.fullmatch(r"rayproject/ray:(\S+?)-(py3\d+-gpu)", base_image)
    assert m and m.group(1) == version, (
        f"Dockerfile base {base_image} is not rayproject/ray:{version}-py3X-gpu"
    )
    flavour = m.group(2)

    # KubeRay: every image is the project image, tagged ray<version>-<flavour of the base image>.
    project_image = re.compile(rf"(\S+/)?mak-ray:ray{re.escape(version)}-{re.escape(flavour)}")
    for label, doc in kuberay_docs():
        spec = cluster_spec(doc)
        assert spec["rayVersion"] == version, label
        images = all_images(doc)
        assert images, label
        for image in images:
            assert project_image.fullmatch(image), f"{label}: image {image}"

    # AWS launcher: the official image, and setup pins Ray to it.
    cfg = load_docs(LAUNCHER)[0]
    assert all_images(cfg["docker"]) == [f"rayproject/ray:{version}-{flavour}"]
    pins = re.findall(r"ray(?:\[[^\]]*\])?==([\d.*]+)", " ".join(cfg["setup_commands"]))
    assert pins and set(pins) == {version}, pins


def test_runtime_env_example_is_valid_and_matches_pyproject() -> None:
    from ray.runtime_env import RuntimeEnv

    env = load_docs(RUNTIME_ENV)[0]
    assert set(env) <= {"working_dir", "py_modules", "excludes", "pip", "env_vars", "config"}
    RuntimeEnv(**env)  # Ray's own type checks (env_vars values are strings, pip a list, ...)
    assert env["env_vars"]["AWS_ENDPOINT_URL"].startswith(("http://", "https://"))
    assert not any("SECRET" in k or "ACCESS_KEY" in k for k in env["env_vars"]), "credentials do not go here"

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    wanted = {d.replace(" ", "") for d in deps if not re.match(r"ray\b", d)}
    assert set(env["pip"]) == wanted, "runtime_env pip list drifted from pyproject dependencies"


def test_dockerfile_installs_the_project_with_gpu_extra() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r'pip install\s+"\.\[gpu\]"', text)
    for src in ("pyproject.toml", "mak_ray", "jobs", "configs"):
        assert re.search(rf"^COPY\b.*\b{re.escape(src)}\b", text, re.M), f"Dockerfile does not COPY {src}"
