"""Offline checks of the Kubernetes manifests in k8s/: KubeRay's CRD schemas, then what no schema can express.

Every check returns a list of problems (empty: good), each naming the document and the field it is about.

* `schema_problems(doc)`: RayJob, RayService and RayCronJob against the `openAPIV3Schema` of the KubeRay v1.7.0
  CRDs (copied to tests/k8s/crds/ by `python -m tests.k8s.validate extract DIR`), read the way the API server
  reads it: an unknown field is an error (kubectl's default strict field validation), `x-kubernetes-int-or-string`
  is an integer or a string, `nullable` admits null, `x-kubernetes-list-map-keys` must be unique. CEL rules
  (`x-kubernetes-validations`) are not evaluated. The plain Kubernetes kinds beside them (CronJob, ConfigMap,
  ServiceAccount, Role, RoleBinding) have no CRD: they get small schemas written here from the Kubernetes API
  reference, whose pod templates are the CRDs' own PodTemplateSpec schema.
* `semantic_problems(doc)`: rules the KubeRay operator applies at run time, and how the manifest fits this
  project: the config named by the entrypoint or the Serve args exists and validates with
  `contract.config.load_config` (with the manifest's environment), GPUs per GPU pod = the config's tensor
  parallel size, a head that takes no work, pinned images whose Ray version is `rayVersion`, credentials only
  from `secretKeyRef`, the model path on a mounted volume. A ConfigMap that carries a manifest is checked too.
* `file_problems(docs)`: what ties the documents of one file together (the CronJob's ServiceAccount, RBAC and
  mounted RayJob manifest).
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = Path(__file__).resolve().parent / "crds"
KUBERAY_VERSION = "v1.7.0"
CRD_PLURALS = {"RayJob": "rayjobs", "RayService": "rayservices", "RayCronJob": "raycronjobs"}
DRIVER_SCRIPT = "jobs/transcribe.py"
GPU = "nvidia.com/gpu"
# KubeRay appends 6 characters to a RayJob's or RayService's name for its RayCluster, whose name (plus
# "-serve-svc") must fit a 63-character label.
MAX_RAY_NAME = 47
GENERATE_NAME_SUFFIX = 5  # the API server's random suffix for metadata.generateName
DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# What a shell turns `$(date ...)` into for this check; the date itself is not checked.
SAMPLE_DATE = "2000-01-01"
CREDENTIAL_NAME = re.compile(r"SECRET|TOKEN|PASSWORD|PASSWD|ACCESS_KEY|API_KEY|CREDENTIAL|PRIVATE_KEY", re.I)
CREDENTIAL_VALUES = (
    re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),  # an AWS access key id
    re.compile(r"\bhf_[A-Za-z0-9]{30,}\b"),  # a Hugging Face token
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"(?i)aws_secret_access_key\s*[=:]\s*[A-Za-z0-9/+]{20,}"),
)


# ---------------------------------------------------------------------------------------------------------------
# Loading


def load_manifests(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The YAML documents of one file, empty ones dropped."""
    return [d for d in yaml.safe_load_all(Path(path).read_text()) if d is not None]


def extract_crd_schemas(src: Path, dst: Path = CRD_DIR) -> list[Path]:
    """Copy the v1 `openAPIV3Schema` of KubeRay's CRD files in `src` to `dst`, one JSON file per kind."""
    written = []
    dst.mkdir(parents=True, exist_ok=True)
    for kind, plural in CRD_PLURALS.items():
        source = src / f"ray.io_{plural}.yaml"
        crd = yaml.safe_load(source.read_text())
        version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
        out = dst / f"{plural}.ray.io.v1.json"
        record = {"kind": kind, "crd": crd["metadata"]["name"], "version": "v1", "kuberay": KUBERAY_VERSION,
                  "source": source.name, "openAPIV3Schema": version["schema"]["openAPIV3Schema"]}
        out.write_text(json.dumps(record, separators=(",", ":")) + "\n")
        written.append(out)
    return written


# ---------------------------------------------------------------------------------------------------------------
# Schemas


def to_json_schema(node: dict[str, Any]) -> dict[str, Any]:
    """One structural OpenAPI v3 schema node of a CRD as JSON Schema, as the API server applies it."""
    s = dict(node)
    if "properties" in s:
        s["properties"] = {name: to_json_schema(sub) for name, sub in s["properties"].items()}
    if isinstance(s.get("items"), dict):
        s["items"] = to_json_schema(s["items"])
    if isinstance(s.get("additionalProperties"), dict):
        s["additionalProperties"] = to_json_schema(s["additionalProperties"])
    for key in ("anyOf", "allOf", "oneOf"):
        if key in s:
            s[key] = [to_json_schema(sub) for sub in s[key]]
    if s.get("x-kubernetes-int-or-string") and "anyOf" not in s:
        s["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if s.get("nullable") and isinstance(s.get("type"), str):
        s["type"] = [s["type"], "null"]
    # The API server prunes unknown fields, and kubectl's default (--validate=strict) makes them errors.
    if "properties" in s and "additionalProperties" not in s and not s.get("x-kubernetes-preserve-unknown-fields"):
        s["additionalProperties"] = False
    return s


def _item_default(schema: dict[str, Any], key: str) -> Any:
    return schema.get("items", {}).get("properties", {}).get(key, {}).get("default")


def _unique_list_map_keys(validator, keys, instance, schema) -> Iterator[jsonschema.ValidationError]:
    if not validator.is_type(instance, "array"):
        return
    seen: dict[tuple, int] = {}
    for i, item in enumerate(instance):
        if not isinstance(item, dict):
            continue
        key = tuple(json.dumps(item.get(k, _item_default(schema, k)), sort_keys=True) for k in keys)
        if key in seen:
            named = ", ".join(f"{k}={item.get(k, _item_default(schema, k))!r}" for k in keys)
            yield jsonschema.ValidationError(f"items {seen[key]} and {i} are the same entry ({named})")
        seen.setdefault(key, i)


def _unique_set(validator, list_type, instance, schema) -> Iterator[jsonschema.ValidationError]:
    if list_type == "set" and validator.is_type(instance, "array"):
        values = [json.dumps(v, sort_keys=True) for v in instance]
        for v in sorted({v for v in values if values.count(v) > 1}):
            yield jsonschema.ValidationError(f"{v} appears more than once in a set")


KubeValidator = jsonschema.validators.extend(
    jsonschema.Draft4Validator,
    {"x-kubernetes-list-map-keys": _unique_list_map_keys, "x-kubernetes-list-type": _unique_set},
)

OBJECT_META = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 253, "pattern": DNS1123_SUBDOMAIN},
        "generateName": {"type": "string"},
        "namespace": {"type": "string", "maxLength": 63, "pattern": DNS1123_SUBDOMAIN},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    "additionalProperties": False,
    "anyOf": [{"required": ["name"]}, {"required": ["generateName"]}],
}


@lru_cache(maxsize=None)
def crd_schema(kind: str) -> dict[str, Any]:
    """The converted schema of a KubeRay kind, with ObjectMeta and apiVersion filled in."""
    record = json.loads((CRD_DIR / f"{CRD_PLURALS[kind]}.ray.io.v1.json").read_text())
    schema = to_json_schema(record["openAPIV3Schema"])
    schema["properties"]["metadata"] = OBJECT_META
    schema["properties"]["apiVersion"] = {"enum": ["ray.io/v1"]}
    schema["properties"]["kind"] = {"enum": [kind]}
    schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata", "spec"})
    return schema


def _obj(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(required), "additionalProperties": False}


def _top(api_version: str, kind: str, required: tuple[str, ...] = (), **properties) -> dict[str, Any]:
    return _obj({"apiVersion": {"enum": [api_version]}, "kind": {"enum": [kind]}, "metadata": OBJECT_META,
                 **properties}, ("apiVersion", "kind", "metadata", *required))


@lru_cache(maxsize=None)
def k8s_schemas() -> dict[str, dict[str, Any]]:
    """Hand-written schemas (from the Kubernetes API reference) for the plain kinds in k8s/."""
    integer, boolean, string = {"type": "integer"}, {"type": "boolean"}, {"type": "string"}
    strings = {"type": "array", "items": string}
    string_map = {"type": "object", "additionalProperties": string}
    pod_template = crd_schema("RayJob")["properties"]["spec"]["properties"]["submitterPodTemplate"]
    job_spec = _obj({
        "activeDeadlineSeconds": integer, "backoffLimit": integer, "backoffLimitPerIndex": integer,
        "completionMode": {"enum": ["NonIndexed", "Indexed"]}, "completions": integer, "managedBy": string,
        "manualSelector": boolean, "maxFailedIndexes": integer, "parallelism": integer,
        "podFailurePolicy": {"type": "object"}, "podReplacementPolicy": {"enum": ["TerminatingOrFailed", "Failed"]},
        "selector": {"type": "object"}, "successPolicy": {"type": "object"}, "suspend": boolean,
        "template": pod_template, "ttlSecondsAfterFinished": integer,
    }, ("template",))
    cron_spec = _obj({
        "schedule": string, "timeZone": string, "startingDeadlineSeconds": integer,
        "concurrencyPolicy": {"enum": ["Allow", "Forbid", "Replace"]}, "suspend": boolean,
        "successfulJobsHistoryLimit": integer, "failedJobsHistoryLimit": integer,
        "jobTemplate": _obj({"metadata": _obj({"labels": string_map, "annotations": string_map}), "spec": job_spec},
                            ("spec",)),
    }, ("schedule", "jobTemplate"))
    rule = _obj({"apiGroups": strings, "resources": strings, "resourceNames": strings, "verbs": strings,
                 "nonResourceURLs": strings}, ("verbs",))
    subject = _obj({"kind": {"enum": ["ServiceAccount", "User", "Group"]}, "name": string, "namespace": string,
                    "apiGroup": string}, ("kind", "name"))
    role_ref = _obj({"apiGroup": string, "kind": {"enum": ["Role", "ClusterRole"]}, "name": string},
                    ("apiGroup", "kind", "name"))
    return {
        "CronJob": _top("batch/v1", "CronJob", ("spec",), spec=cron_spec),
        "ConfigMap": _top("v1", "ConfigMap", data=string_map, binaryData=string_map, immutable=boolean),
        "ServiceAccount": _top("v1", "ServiceAccount", automountServiceAccountToken=boolean,
                               imagePullSecrets={"type": "array"}, secrets={"type": "array"}),
        "Role": _top("rbac.authorization.k8s.io/v1", "Role", rules={"type": "array", "items": rule}),
        "RoleBinding": _top("rbac.authorization.k8s.io/v1", "RoleBinding", ("roleRef",), roleRef=role_ref,
                            subjects={"type": "array", "items": subject}),
    }


def describe(doc: dict[str, Any]) -> str:
    meta = doc.get("metadata") or {}
    return f"{doc.get('kind')} {meta.get('name') or meta.get('generateName') or '?'}"


def schema_problems(doc: dict[str, Any]) -> list[str]:
    kind = doc.get("kind")
    if kind in CRD_PLURALS:
        schema = crd_schema(kind)
    elif kind in k8s_schemas():
        schema = k8s_schemas()[kind]
    else:
        return [f"{describe(doc)}: no schema for kind {kind!r}"]
    errors = sorted(KubeValidator(schema).iter_errors(doc), key=lambda e: [str(p) for p in e.absolute_path])
    return [f"{describe(doc)}: {'.'.join(str(p) for p in e.absolute_path) or '(top level)'}: {e.message}"
            for e in errors]


# ---------------------------------------------------------------------------------------------------------------
# Reading Ray cluster specs


@dataclass
class ConfigUse:
    """A config the cluster loads: the job's --config, or a Serve application's args."""

    source: str
    path: str
    overrides: list[str] = field(default_factory=list)
    app_name: str | None = None
    runs_pipeline: bool = False  # the batch pipeline (reads input, writes output), not only the Serve app


def cluster_of(doc: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    spec = doc.get("spec") or {}
    if doc.get("kind") == "RayJob":
        return spec.get("rayClusterSpec"), "spec.rayClusterSpec"
    if doc.get("kind") == "RayCronJob":
        return (spec.get("jobTemplate") or {}).get("rayClusterSpec"), "spec.jobTemplate.rayClusterSpec"
    if doc.get("kind") == "RayService":
        return spec.get("rayClusterConfig"), "spec.rayClusterConfig"
    return None, ""


def groups(cluster: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(label, group spec) for the head and each worker group."""
    found = [("headGroupSpec", cluster.get("headGroupSpec") or {})]
    found += [(f"worker group {g.get('groupName')!r}", g) for g in cluster.get("workerGroupSpecs") or []]
    return found


def ray_container(group: dict[str, Any]) -> dict[str, Any]:
    """KubeRay runs Ray in the pod's first container."""
    containers = ((group.get("template") or {}).get("spec") or {}).get("containers") or [{}]
    return containers[0]


def pod_spec(group: dict[str, Any]) -> dict[str, Any]:
    return (group.get("template") or {}).get("spec") or {}


def literal_env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env") or [] if "value" in e}


def quantity(value: Any) -> float:
    """A Kubernetes quantity as a number of units ("500m" CPUs = 0.5)."""
    text = str(value)
    if text.endswith("m"):
        return float(text[:-1]) / 1000
    return float(text)


def pod_gpus(group: dict[str, Any]) -> int:
    return sum(int(quantity((c.get("resources") or {}).get("limits", {}).get(GPU, 0)))
               for c in pod_spec(group).get("containers") or [])


def ray_cpus(group: dict[str, Any]) -> float:
    """The CPUs Ray advertises for a pod: num-cpus if set, else the Ray container's CPU limit, else request."""
    if "num-cpus" in (group.get("rayStartParams") or {}):
        return quantity(group["rayStartParams"]["num-cpus"])
    resources = ray_container(group).get("resources") or {}
    for key in ("limits", "requests"):
        if "cpu" in resources.get(key, {}):
            return quantity(resources[key]["cpu"])
    return 0.0


def containers_in(node: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every container (and init container) anywhere in a document, with its path."""
    if isinstance(node, dict):
        for key, value in node.items():
            here = f"{path}.{key}" if path else key
            if key in ("containers", "initContainers") and isinstance(value, list):
                for i, c in enumerate(value):
                    if isinstance(c, dict):
                        yield f"{here}[{i}]", c
            else:
                yield from containers_in(value, here)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from containers_in(value, f"{path}[{i}]")


def strings_in(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from strings_in(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings_in(value)


@lru_cache(maxsize=None)
def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def image_workdir() -> str | None:
    """The last WORKDIR of the Dockerfile: where the image keeps the repository (configs/, jobs/)."""
    dirs = re.findall(r"^\s*WORKDIR\s+(\S+)", dockerfile(), re.M)
    return dirs[-1] if dirs else None


def image_tag(image: str) -> tuple[str | None, str | None]:
    """(tag, digest) of an image reference."""
    rest, _, digest = image.partition("@")
    name_end = rest.rfind("/")
    colon = rest.rfind(":")
    tag = rest[colon + 1:] if colon > name_end else None
    return tag, digest or None


def image_ray_version(image: str) -> str | None:
    """The Ray version an image name says it has: rayproject/ray:X.Y.Z[-...] or a tag with `rayX.Y.Z`."""
    tag, _ = image_tag(image)
    if not tag:
        return None
    if re.search(r"(^|/)rayproject/ray(-ml|-llm)?:", image):
        m = re.match(r"(\d+\.\d+\.\d+)", tag)
    else:
        m = re.search(r"(?:^|[-_.])ray-?(\d+\.\d+\.\d+)", tag)
    return m.group(1) if m else None


def image_problems(image: str, where: str) -> list[str]:
    tag, digest = image_tag(image)
    if digest:
        return []
    if not tag:
        return [f"{where}: image {image!r} has no tag (so it means `latest`): pin it"]
    if tag in ("latest", "nightly", "master", "main"):
        return [f"{where}: image {image!r} is not pinned: use a version tag or a digest"]
    return []


# ---------------------------------------------------------------------------------------------------------------
# Entrypoints and Serve configs


@contextmanager
def environ(env: dict[str, str]) -> Iterator[None]:
    """Run with exactly `env` as the process environment, as a pod with that env would."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def shell_words(command: str, env: dict[str, str], where: str) -> tuple[list[str], list[str]]:
    """The argv a shell makes of `command`: `$(date ...)` gives a date, `$VAR`/`${VAR}` come from `env`."""
    problems = []
    text = re.sub(r"\$\(\s*date\b[^()]*\)", SAMPLE_DATE, command)
    if "$(" in text or "`" in text:
        problems.append(f"{where}: command substitution other than $(date ...) is not checked; avoid it")

    def expand(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        if name not in env:
            problems.append(f"{where}: ${name} is not set in the shell that expands the entrypoint")
        return env.get(name, "")

    text = re.sub(r"\$\{(\w+)\}|\$([A-Za-z_]\w*)", expand, text)
    try:
        return shlex.split(text), problems
    except ValueError as e:
        return [], problems + [f"{where}: not a valid shell command: {e}"]


def entrypoint_use(entrypoint: str, shell_env: dict[str, str], where: str) -> tuple[ConfigUse | None, list[str]]:
    """The config a `python jobs/transcribe.py --config X --set k=v ...` entrypoint runs with."""
    argv, problems = shell_words(entrypoint, shell_env, where)
    if len(argv) < 2 or Path(argv[0]).name not in ("python", "python3") or argv[1] != DRIVER_SCRIPT:
        return None, problems + [f"{where}: expected `python {DRIVER_SCRIPT} --config ...`, got {argv[:2]}"]
    if not (ROOT / DRIVER_SCRIPT).is_file():
        problems.append(f"{where}: {DRIVER_SCRIPT} does not exist in the repository")
    config, overrides, args = None, [], iter(argv[2:])
    for arg in args:
        option, eq, value = arg.partition("=")
        if option in ("--config", "--set"):
            value = value if eq else next(args, None)
            if value is None:
                problems.append(f"{where}: {option} without a value")
            elif option == "--config":
                config = value
            else:
                overrides.append(value)
        else:
            problems.append(f"{where}: {DRIVER_SCRIPT} takes no argument {arg!r}")
    if config is None:
        problems.append(f"{where}: no --config: the job would run configs/local.yaml (whisper on sample audio)")
        return None, problems
    return ConfigUse(f"{where} (--config)", config, overrides, runs_pipeline=True), problems


def defines(import_path: str) -> bool:
    """Whether `module:attr` names a top-level function or variable of a module in this repository."""
    module, _, attr = import_path.partition(":")
    path = ROOT / (module.replace(".", "/") + ".py")
    if not attr or not path.is_file():
        return False
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == attr:
            return True
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == attr for t in node.targets):
            return True
    return False


def serve_uses(serve_config: str, where: str) -> tuple[list[ConfigUse], list[str]]:
    """The configs of the applications in a serveConfigV2 (their `args` go to deployments.app:build_app)."""
    try:
        parsed = yaml.safe_load(serve_config) or {}
    except yaml.YAMLError as e:
        return [], [f"{where}: not valid YAML: {e}"]
    apps = parsed.get("applications") if isinstance(parsed, dict) else None
    if not apps:
        return [], [f"{where}: no applications"]
    uses, problems = [], []
    for i, app in enumerate(apps):
        here = f"{where} application {app.get('name', i)!r}"
        import_path = app.get("import_path", "")
        if not defines(import_path):
            problems.append(f"{here}: import_path {import_path!r} names nothing in this repository")
            continue
        args = app.get("args") or {}
        unknown = sorted(set(args) - {"config", "set"})
        if unknown:
            problems.append(f"{here}: build_app takes args `config` and `set`, not {unknown}")
        if "config" not in args:
            problems.append(f"{here}: no args.config: build_app would load configs/local.yaml")
            continue
        overrides = args.get("set") or []
        uses.append(ConfigUse(here, args["config"], [overrides] if isinstance(overrides, str) else list(overrides),
                              app_name=app.get("name")))
    return uses, problems


def leftover_variables(node: Any) -> set[str]:
    """`${VAR}` / `$VAR` left in a loaded config: variables its environment did not set."""
    return {a or b for s in strings_in(node) for a, b in re.findall(r"\$\{(\w+)\}|\$([A-Z_][A-Z0-9_]*)", s)}


def load_use(use: ConfigUse, env: dict[str, str]):
    """(Config or None, problems) for a config used by the cluster, loaded with the pods' environment."""
    import contract.formats  # noqa: F401  (imported by config validation; import it with the real env)
    from contract.config import ConfigError, load_config

    path = ROOT / use.path
    if Path(use.path).is_absolute() or not path.is_file():
        return None, [f"{use.source}: config {use.path} is not a file of the repository (the image's /app)"]
    try:
        with environ(env):
            config = load_config(path, use.overrides)
    except ConfigError as e:
        return None, [f"{use.source}: {e}"]
    missing = leftover_variables(config.model_dump(mode="json"))
    if missing:
        return config, [f"{use.source}: {use.path} uses ${', $'.join(sorted(missing))}, which not every Ray "
                        f"container sets (to one value)"]
    return config, []


# ---------------------------------------------------------------------------------------------------------------
# Semantic checks


def credential_problems(doc: dict[str, Any], where: str) -> list[str]:
    problems = []
    for path, container in containers_in(doc):
        for env in container.get("env") or []:
            name = env.get("name", "")
            if CREDENTIAL_NAME.search(name) and "secretKeyRef" not in (env.get("valueFrom") or {}):
                problems.append(f"{where}: {path}: env {name} must come from a Secret (valueFrom.secretKeyRef)")
    for text in strings_in(doc):
        for pattern in CREDENTIAL_VALUES:
            if pattern.search(text):
                problems.append(f"{where}: a literal credential ({pattern.pattern}) in the manifest: use a Secret")
    return problems


def name_problems(doc: dict[str, Any], where: str) -> list[str]:
    meta = doc.get("metadata") or {}
    if doc.get("kind") not in ("RayJob", "RayService", "RayCronJob"):
        return []
    name = meta.get("name") or meta.get("generateName", "")
    length = len(name) + (0 if meta.get("name") else GENERATE_NAME_SUFFIX)
    problems = []
    if length > MAX_RAY_NAME:
        problems.append(f"{where}: name is {length} characters; KubeRay accepts at most {MAX_RAY_NAME}")
    if not DNS1035.match(name.rstrip("-")):
        problems.append(f"{where}: name {name!r} is not a DNS-1035 label (a-z, 0-9, '-', starting with a letter)")
    return problems


def cron_problems(schedule: Any, where: str) -> list[str]:
    """A standard 5-field cron line (what KubeRay's and Kubernetes' parsers take), without a TZ prefix."""
    fields = str(schedule).split()
    if "TZ" in str(schedule):
        return [f"{where}: schedule {schedule!r}: use timeZone, not TZ= in the schedule"]
    limits = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]
    if len(fields) != 5:
        return [f"{where}: schedule {schedule!r} is not 5 cron fields"]
    for text, (low, high) in zip(fields, limits):
        for part in text.split(","):
            span, _, step = part.partition("/")
            if step and not step.isdigit():
                return [f"{where}: schedule {schedule!r}: bad step in {part!r}"]
            if span == "*":
                continue
            bounds = span.split("-")
            if len(bounds) > 2 or not all(b.isdigit() and low <= int(b) <= high for b in bounds):
                return [f"{where}: schedule {schedule!r}: {part!r} is not within {low}-{high}"]
    return []


def rayjob_spec_problems(spec: dict[str, Any], where: str) -> list[str]:
    """Rules of KubeRay's ValidateRayJobSpec that the CRD schema does not hold."""
    problems = []
    if spec.get("ttlSecondsAfterFinished", 0) > 0 and not spec.get("shutdownAfterJobFinishes"):
        problems.append(f"{where}: ttlSecondsAfterFinished needs shutdownAfterJobFinishes: true")
    for key in ("activeDeadlineSeconds", "preRunningDeadlineSeconds"):
        if key in spec and spec[key] <= 0:
            problems.append(f"{where}: {key} must be positive")
    if spec.get("deletionStrategy") and spec.get("shutdownAfterJobFinishes") \
            and (spec["deletionStrategy"].get("deletionRules")):
        problems.append(f"{where}: deletionStrategy.deletionRules and shutdownAfterJobFinishes exclude each other")
    return problems


def cluster_problems(cluster: dict[str, Any], where: str) -> list[str]:
    """What the operator or Ray would get wrong with this cluster, before looking at the configs."""
    problems = []
    version = str(cluster.get("rayVersion", ""))
    if not re.fullmatch(r"\d+\.\d+\.\d+", version):
        problems.append(f"{where}.rayVersion: {version!r} is not a Ray version X.Y.Z")
    autoscaling = bool(cluster.get("enableInTreeAutoscaling"))
    workdir = image_workdir()
    for label, group in groups(cluster):
        here = f"{where} {label}"
        container = ray_container(group)
        image = container.get("image", "")
        image_version = image_ray_version(image)
        if image_version != version:
            said = image_version or "(unknown: tag the image ...-rayX.Y.Z)"
            problems.append(f"{here}: image {image!r} has Ray {said}, rayVersion is {version!r}: they must match")
        if workdir and container.get("workingDir") != workdir:
            problems.append(f"{here}: workingDir {container.get('workingDir')!r} is not the image's {workdir} "
                            f"(the Dockerfile's WORKDIR), where configs/ and jobs/ resolve")
        params = group.get("rayStartParams") or {}
        gpus = pod_gpus(group)
        if "num-gpus" in params and quantity(params["num-gpus"]) != gpus:
            problems.append(f"{here}: rayStartParams num-gpus {params['num-gpus']} but {gpus} {GPU} in limits")
        for c in pod_spec(group).get("containers") or []:
            resources = c.get("resources") or {}
            if GPU in resources.get("requests", {}) and \
                    quantity(resources["requests"][GPU]) != quantity(resources.get("limits", {}).get(GPU, -1)):
                problems.append(f"{here}: {GPU} requests and limits differ (Kubernetes requires them equal)")
        if label == "headGroupSpec":
            if str(params.get("num-cpus")) != "0":
                problems.append(f"{here}: rayStartParams num-cpus must be \"0\" so no task or actor runs on the "
                                f"head, got {params.get('num-cpus')!r}")
            if gpus:
                problems.append(f"{here}: the head has {gpus} GPUs; GPU work belongs in a GPU worker group")
            continue
        low, high = group.get("minReplicas", 0), group.get("maxReplicas", 2**31 - 1)
        if low > high:
            problems.append(f"{here}: minReplicas {low} > maxReplicas {high}")
        if "replicas" in group and not low <= group["replicas"] <= high:
            problems.append(f"{here}: replicas {group['replicas']} outside [{low}, {high}]")
        if low < high and not autoscaling:
            problems.append(f"{here}: minReplicas < maxReplicas needs enableInTreeAutoscaling: true")
    return problems


def cluster_env(cluster: dict[str, Any]) -> dict[str, str]:
    """The literal env vars every Ray container sets to the same value (a config may load on any node)."""
    envs = [literal_env(ray_container(g)) for _, g in groups(cluster)]
    return {k: v for k, v in envs[0].items() if all(e.get(k) == v for e in envs[1:])}


def config_problems(config, use: ConfigUse, cluster: dict[str, Any], where: str) -> list[str]:
    """Does the cluster fit what the config asks of it?"""
    problems = []
    d, engine = config.deployment, config.engine
    kwargs = engine.engine_kwargs
    tp = int(kwargs.get("tensor_parallel_size", 1)) * int(kwargs.get("pipeline_parallel_size", 1))
    if engine.kind == "vllm" and d.gpus_per_replica != tp:
        problems.append(f"{use.source}: {use.path}: deployment.gpus_per_replica {d.gpus_per_replica} is not "
                        f"the engine's tensor x pipeline parallel size {tp}")
    workers = groups(cluster)[1:]
    gpu_groups = [(label, g) for label, g in workers if pod_gpus(g)]
    if d.gpus_per_replica:
        if not gpu_groups:
            problems.append(f"{where}: no worker group has {GPU}, but {use.path} needs {d.gpus_per_replica} "
                            f"GPUs per replica")
        needed = d.autoscaling.max_replicas if d.autoscaling else d.num_replicas
        capacity, sized = 0, True
        for label, g in gpu_groups:
            here = f"{where} {label}"
            gpus = pod_gpus(g)
            if gpus != d.gpus_per_replica:
                sized = False
                problems.append(f"{here}: {gpus} GPUs per pod ({GPU} limit), but {use.path} runs tensor parallel "
                                f"{tp} with {d.gpus_per_replica} GPUs per replica, all on one pod (STRICT_PACK): "
                                f"they must be equal")
            if ray_cpus(g) < d.num_cpus:
                problems.append(f"{here}: {ray_cpus(g)} CPUs per pod, below the replica's deployment.num_cpus "
                                f"{d.num_cpus}")
            pods = g.get("maxReplicas", 2**31 - 1) if cluster.get("enableInTreeAutoscaling") else g.get("replicas", 0)
            capacity += pods
        if gpu_groups and sized and capacity < needed:
            problems.append(f"{where}: the GPU worker groups have room for {capacity} replicas (one per pod), "
                            f"{use.path} scales to {needed}: raise maxReplicas")
    model = kwargs.get("model")
    if engine.kind == "vllm" and isinstance(model, str) and model.startswith("/"):
        for label, g in gpu_groups:
            container, volumes = ray_container(g), {v.get("name") for v in pod_spec(g).get("volumes") or []}
            mounts = [m for m in container.get("volumeMounts") or []
                      if model.rstrip("/").startswith(m.get("mountPath", "").rstrip("/") + "/")
                      and m.get("name") in volumes]
            if not mounts:
                problems.append(f"{where} {label}: engine_kwargs.model {model} is on no volume mounted in the "
                                f"Ray container")
    if use.app_name is not None and use.app_name != d.app_name:
        problems.append(f"{use.source}: the application is named {use.app_name!r}, the config's "
                        f"deployment.app_name is {d.app_name!r} (the name the batch job and callers look up)")
    if use.runs_pipeline and any(u.startswith(("s3://", "s3a://")) for u in (config.input.uri, config.output.uri)):
        for label, g in groups(cluster):
            env = {e.get("name"): e for e in ray_container(g).get("env") or []}
            for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
                if "secretKeyRef" not in (env.get(name, {}).get("valueFrom") or {}):
                    problems.append(f"{where} {label}: the job reads/writes s3:// but {name} is not set from a "
                                    f"Secret in the Ray container")
    return problems


def ray_problems(doc: dict[str, Any], where: str) -> list[str]:
    """Checks of a RayJob, RayCronJob or RayService."""
    cluster, cluster_path = cluster_of(doc)
    if not isinstance(cluster, dict):
        return [f"{where}: no Ray cluster spec"]
    spec = doc.get("spec") or {}
    cluster_where = f"{where} {cluster_path}"
    problems = cluster_problems(cluster, cluster_where)
    uses: list[ConfigUse] = []
    if doc["kind"] in ("RayJob", "RayCronJob"):
        job = spec if doc["kind"] == "RayJob" else spec.get("jobTemplate") or {}
        job_where = where if doc["kind"] == "RayJob" else f"{where} spec.jobTemplate"
        problems += rayjob_spec_problems(job, job_where)
        # K8sJobMode pastes the entrypoint into the submitter pod's shell (which has no env of ours);
        # HTTPMode hands it to the head's shell.
        if job.get("submissionMode", "K8sJobMode") == "HTTPMode":
            shell_env = literal_env(ray_container(cluster.get("headGroupSpec") or {}))
        else:
            submitter = ((job.get("submitterPodTemplate") or {}).get("spec") or {}).get("containers") or [{}]
            shell_env = literal_env(submitter[0])
        use, found = entrypoint_use(job.get("entrypoint", ""), shell_env, f"{job_where} entrypoint")
        problems += found
        uses += [use] if use else []
    if doc["kind"] == "RayCronJob":
        problems += cron_problems(spec.get("schedule"), f"{where} spec.schedule")
    if doc["kind"] == "RayService":
        found_uses, found = serve_uses(spec.get("serveConfigV2", ""), f"{where} spec.serveConfigV2")
        uses += found_uses
        problems += found
    env = cluster_env(cluster)
    for use in uses:
        config, found = load_use(use, env)
        problems += found
        if config is not None:
            problems += config_problems(config, use, cluster, cluster_where)
    return problems


def semantic_problems(doc: dict[str, Any]) -> list[str]:
    where = describe(doc)
    problems = name_problems(doc, where) + credential_problems(doc, where)
    for path, container in containers_in(doc):
        problems += image_problems(container.get("image", ""), f"{where}: {path}")
    if doc.get("kind") in CRD_PLURALS:
        problems += ray_problems(doc, where)
    elif doc.get("kind") == "CronJob":
        problems += cron_problems((doc.get("spec") or {}).get("schedule"), f"{where} spec.schedule")
    elif doc.get("kind") == "ConfigMap":
        for key, text in ((doc.get("data") or {}).items()):
            if key.endswith((".yaml", ".yml")):
                for inner in yaml.safe_load_all(text):
                    if isinstance(inner, dict) and "kind" in inner:
                        problems += [f"{where} data[{key}]: {p}" for p in problems_of(inner)]
    return problems


def problems_of(doc: dict[str, Any]) -> list[str]:
    """Schema problems first; semantic checks only run on a document the schema accepts."""
    return schema_problems(doc) or semantic_problems(doc)


# ---------------------------------------------------------------------------------------------------------------
# A file's documents together


def file_problems(docs: list[dict[str, Any]]) -> list[str]:
    """A CronJob's ServiceAccount, its RBAC to create RayJobs, and the files it mounts must be in the file."""
    named = {(d.get("kind"), (d.get("metadata") or {}).get("name")): d for d in docs}
    problems = []
    for doc in docs:
        if doc.get("kind") != "CronJob":
            continue
        where = describe(doc)
        pod = doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        account = pod.get("serviceAccountName")
        if ("ServiceAccount", account) not in named:
            problems.append(f"{where}: serviceAccountName {account!r} is not defined in this file")
        creates_rayjobs = False
        for binding in (d for d in docs if d.get("kind") == "RoleBinding"):
            if any(s.get("kind") == "ServiceAccount" and s.get("name") == account
                   for s in binding.get("subjects") or []):
                role = named.get((binding["roleRef"]["kind"], binding["roleRef"]["name"])) or {}
                creates_rayjobs |= any("ray.io" in r.get("apiGroups", []) and "rayjobs" in r.get("resources", [])
                                       and "create" in r.get("verbs", []) for r in role.get("rules") or [])
        if not creates_rayjobs:
            problems.append(f"{where}: no Role in this file lets {account!r} create ray.io rayjobs")
        volumes = {v.get("name"): v for v in pod.get("volumes") or []}
        for container in pod.get("containers") or []:
            args = container.get("args") or []
            files = [args[i + 1] for i, a in enumerate(args[:-1]) if a in ("-f", "--filename")]
            for file in files:
                mount = next((m for m in container.get("volumeMounts") or []
                              if file.startswith(m.get("mountPath", "").rstrip("/") + "/")), None)
                config_map = ((volumes.get(mount.get("name")) or {}).get("configMap") or {}) if mount else {}
                key = file[len(mount["mountPath"].rstrip("/")) + 1:] if mount else None
                data = (named.get(("ConfigMap", config_map.get("name"))) or {}).get("data") or {}
                if key not in data:
                    problems.append(f"{where}: {file} is not a key of a ConfigMap of this file mounted there")
    return problems


def manifest_problems(path: str | os.PathLike) -> list[str]:
    """Everything wrong with one manifest file."""
    docs = load_manifests(path)
    problems = [p for d in docs for p in problems_of(d)]
    return problems or file_problems(docs)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "extract":
        for written in extract_crd_schemas(Path(sys.argv[2])):
            print(written)
    else:
        failed = False
        for arg in sys.argv[1:]:
            for problem in manifest_problems(arg):
                failed = True
                print(problem)
        sys.exit(1 if failed else 0)
