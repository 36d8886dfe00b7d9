# GPU image for Ray clusters (ray up / KubeRay). Based on an official rayproject/ray GPU
# image (the ray-ml images are discontinued). torch is pinned to a CUDA build here; the
# project's pyproject keeps torch a range so this pin is the one that counts.
#   docker build -t t2v-unlearn:0.1.0 .
FROM rayproject/ray:2.60.0-py311-cu128

ENV HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 \
    RAY_USAGE_STATS_ENABLED=0 MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true \
    DS_BUILD_OPS=0 PIP_NO_CACHE_DIR=1

WORKDIR /home/ray/t2v-unlearn
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users unlearn ./unlearn
COPY --chown=ray:users pipelines ./pipelines
COPY --chown=ray:users eval ./eval
COPY --chown=ray:users configs ./configs

# CUDA 12.8 wheels of torch; every other pin matches what the CPU test suite ran with.
RUN pip install --index-url https://download.pytorch.org/whl/cu128 "torch==2.13.0" && \
    pip install -c /dev/stdin -e . <<'PINS'
torch==2.13.0
ray==2.60.0
deepspeed==0.19.8
diffusers==0.42.1
transformers==5.24.0
nudenet==3.4.2
mlflow==3.17.2
PINS

# Model weights are NOT baked in: mount them (e.g. /mnt/models/CogVideoX-2b) and point
# model.path at the directory. Checkpoints and the embedding cache go to shared storage.
