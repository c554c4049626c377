# The predictor image (python -m runtime); KServe mounts the model at /mnt/models.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# CPU torch first, from PyTorch's CPU index, so the project's torch requirement is already met
# and pip does not pull the CUDA build.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0

WORKDIR /app
COPY setup.cfg pyproject.toml README.md ./
COPY runtime ./runtime
COPY transformer ./transformer
COPY router ./router
COPY serving ./serving
RUN pip install . && pip check

RUN useradd --create-home --uid 1000 app
USER app
ENV HOME=/home/app HF_HOME=/home/app/.cache/huggingface

EXPOSE 8080 8081
ENTRYPOINT ["python", "-m", "runtime"]
CMD ["--model_dir", "/mnt/models", "--model_name", "llm"]
