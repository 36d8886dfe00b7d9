# GPU image for Ray clusters (ray up / KubeRay). Based on an official rayproject/ray GPU
# image (the ray-ml images are discontinued). torch is pinned to a CUDA build here; the
# project's pyproject keeps torch a range so this pin is the one that counts.
#   docker build -t t2v-unlearn:0.1.0 .
FROM rayproject/ray:2.60.0-py311-cu128

ENV HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 \
    RAY_USAGE_STATS_ENABLED=0 MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true \
    DS_BUILD_OPS=0 PIP_NO_CACHE_DIR=1

WORKDIR /home/ray/t2v-unlearn
# The package is INSTALLED (`pip install .`, not editable) from a build copy of its sources, which is then
# removed: every import comes from site-packages, never from a source tree on sys.path. It holds every
# package `t2vu` imports at start-up (toyworld too: `t2vu toy` is registered with the others) and the
# package data (unlearn/assets: the tokenizer, the committed toy models). tests/test_image_tree.py rebuilds
# this file tree from these COPY lines, installs it the same way and runs `t2vu` from it.
COPY --chown=ray:users pyproject.toml README.md /tmp/t2v-src/
COPY --chown=ray:users unlearn /tmp/t2v-src/unlearn
COPY --chown=ray:users pipelines /tmp/t2v-src/pipelines
COPY --chown=ray:users eval /tmp/t2v-src/eval
COPY --chown=ray:users toyworld /tmp/t2v-src/toyworld

# CUDA 12.8 wheels of torch; every other pin matches what the CPU test suite ran with.
RUN pip install --index-url https://download.pytorch.org/whl/cu128 "torch==2.13.0" && \
    pip install -c /dev/stdin /tmp/t2v-src <<'PINS' && rm -rf /tmp/t2v-src
torch==2.13.0
ray==2.60.0
deepspeed==0.19.8
diffusers==0.42.1
transformers==5.24.0
nudenet==3.4.2
mlflow==3.17.2
PINS

# What is not package data stays next to the working directory, which T2VU_HOME names
# (pipelines.runtime.paths): configs/ (the code reads configs/deepspeed/zero*.json and the toy recipes
# from there; the RayJob's --config paths are relative to it), benchmarks/ (gpu_smoke.sh) and examples/
# (the prompt CSVs the configs and the smoke check name). No package sources here.
ENV T2VU_HOME=/home/ray/t2v-unlearn
COPY --chown=ray:users configs ./configs
COPY --chown=ray:users benchmarks ./benchmarks
COPY --chown=ray:users examples ./examples

# Model weights are NOT baked in: mount them (e.g. /mnt/models/CogVideoX-2b) and point
# model.path at the directory. Checkpoints and the embedding cache go to shared storage.
