# One image for every component: the predictor (python -m runtime, the default), the transformer
# (python -m transformer), the router (python -m router) and the local graph runner
# (python -m router.graph). Manifests pick one by overriding the command; KServe mounts the model
# at /mnt/models.
#
# This image runs on the CPU. A CUDA image differs in one line: torch from PyTorch's CUDA index
# (e.g. https://download.pytorch.org/whl/cu128) instead of the CPU one. Those wheels bring the CUDA
# libraries (the nvidia-* packages, several GB) and Triton, which the GPU attention kernels need;
# the driver comes from the node, through the NVIDIA container toolkit.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# CPU torch first, from PyTorch's CPU index, so the project's torch requirement is already met
# and pip does not pull the CUDA build.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0

# Installed from a scratch copy that is then removed: the image holds the installed packages once,
# and no source tree or build folder shadows them.
COPY setup.cfg pyproject.toml README.md /tmp/src/
COPY runtime /tmp/src/runtime
COPY transformer /tmp/src/transformer
COPY router /tmp/src/router
COPY serving /tmp/src/serving
COPY task_models /tmp/src/task_models
RUN pip install /tmp/src && pip check && rm -rf /tmp/src

# A numeric user, so that Kubernetes can check runAsNonRoot. No compiler is installed: the CPU
# attention kernel (C++, built on first use) falls back to the torch backend.
RUN useradd --create-home --uid 1000 app
USER 1000:1000
ENV HOME=/home/app HF_HOME=/home/app/.cache/huggingface
WORKDIR /home/app

EXPOSE 8080 8081
ENTRYPOINT ["python", "-m", "runtime"]
CMD ["--model_dir", "/mnt/models", "--model_name", "llm"]
