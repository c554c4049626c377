# The CPU image: the transformer (python -m transformer), the router (python -m router), the local
# graph runner (python -m router.graph) and a predictor on the CPU (python -m runtime, the
# default). Manifests pick a component by overriding the command; KServe mounts the model at
# /mnt/models. The GPU predictors run Dockerfile.gpu's image.
#
#   docker build -f Dockerfile -t kserve-llm-runtime:0.1.0 .
#
# The engine's C++ CPU kernels (decode attention, grammar mask) are compiled here, in a stage that
# has the compiler, for AVX-512, AVX2 and portable CPUs, and copied into the slim runtime stage,
# which has no compiler: a pod loads them from KSERVE_LLM_CPU_KERNELS_DIR instead of compiling
# them (or, without a compiler, silently falling back to torch).
#
# The versions are the Makefile's; tests/test_images.py keeps them equal.
ARG PYTHON_VERSION=3.11
ARG TORCH_VERSION=2.13.0

FROM python:${PYTHON_VERSION}-slim AS base
ARG TORCH_VERSION

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The OpenMP runtime the C++ kernels link (torch's wheel bundles its own under another name).
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

# CPU torch first, from PyTorch's CPU index, so the project's torch requirement is already met
# and pip does not pull the CUDA build (nor Triton, which only the GPU path uses).
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==${TORCH_VERSION}

# Installed from a scratch copy that is then removed: the image holds the installed packages once,
# and no source tree or build folder shadows them.
COPY setup.cfg pyproject.toml README.md /tmp/src/
COPY runtime /tmp/src/runtime
COPY transformer /tmp/src/transformer
COPY router /tmp/src/router
COPY serving /tmp/src/serving
COPY task_models /tmp/src/task_models
RUN pip install /tmp/src && pip check && rm -rf /tmp/src


# Compiles the kernels against the very torch and Python of `base` (ninja comes with the project).
# Fails the build if one does not compile: the image must not ship without them unnoticed.
FROM base AS cpu-kernels
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ \
    && rm -rf /var/lib/apt/lists/*
RUN TORCH_EXTENSIONS_DIR=/tmp/torch-extensions \
    python -m runtime.engine.build_cpu_kernels /opt/kserve-llm/cpu-kernels


FROM base AS cpu
COPY --from=cpu-kernels /opt/kserve-llm/cpu-kernels /opt/kserve-llm/cpu-kernels
ENV KSERVE_LLM_CPU_KERNELS_DIR=/opt/kserve-llm/cpu-kernels

# A numeric user, so that Kubernetes can check runAsNonRoot.
RUN useradd --create-home --uid 1000 app
USER 1000:1000
ENV HOME=/home/app HF_HOME=/home/app/.cache/huggingface
WORKDIR /home/app

EXPOSE 8080 8081
ENTRYPOINT ["python", "-m", "runtime"]
CMD ["--model_dir", "/mnt/models", "--model_name", "llm"]
