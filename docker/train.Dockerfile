# Training image: `python -m tasks.adapters.ultralytics_trainer JOB.json` with the exact dependency set of
# requirements.lock. The Docker runner (tasks/adapters/docker_engine.py) starts it by digest and reads
# the org.trainyard.cuda label. Build from the repository root:
#
#   make image      # users: official PyTorch base, torch from the base, other deps from PyPI
#   make image-ci   # CI/offline: .ci/build-image.sh (local debootstrap base, INSTALL_TORCH=1,
#                   # every wheel from docker/.wheelhouse, no network)
#
# Written for the legacy builder too (DOCKER_BUILDKIT=0): no RUN --mount, no heredocs.
# Layers, cheapest to invalidate last: OS libraries + user -> locked deps (venv built in a
# separate stage, so the wheelhouse never ends up in the image) -> project code.

# Base: the official PyTorch CUDA *runtime* image whose torch/CUDA match requirements.lock
# (torch==2.14.1 with the CUDA 13.0 wheels: nvidia-cuda-runtime 13.0.x, cuDNN 9). The
# official images put Python 3.11 in /opt/conda (their Dockerfile's PYTHON_VERSION=3.11), and
# our lock's compiled wheels are cp311, so the locked deps install on top of the base's torch
# unchanged. The project's origin used PyTorch 2.7 + CUDA 12.x
# (pytorch/pytorch:2.7.1-cuda12.8-cudnn9-runtime, also Python 3.11); that base still works with
# INSTALL_TORCH=0 but then trains with ITS torch, not the locked one: pass CUDA_VERSION=12.8 and
# expect the run's environment digest to differ. The stage below refuses a base whose Python
# is not 3.11 and, with INSTALL_TORCH=0, one without torch.
ARG BASE_IMAGE=pytorch/pytorch:2.14.1-cuda13.0-cudnn9-runtime

# ---------------------------------------------------------------- deps (build stage only)
FROM ${BASE_IMAGE} AS deps
USER root
# 1: the base has torch (official image): keep it, install everything else from the lock.
#    Lines filtered out of the lock: torch, torchvision, torchaudio, triton, cuda-toolkit,
#    cuda-bindings, cuda-pathfinder and nvidia-* (except nvidia-ml-py, which is ours).
# 0 -> 1: a base without torch (the local CI base): install the whole lock.
ARG INSTALL_TORCH=0
# A folder in the build context holding every wheel needed (docker/.wheelhouse: see
# .ci/build-image.sh). Empty or missing: pip downloads from its index (needs network).
ARG WHEELHOUSE=docker/.wheelhouse
ARG VENV=/opt/trainyard/venv

RUN python -c 'import sys; v = sys.version_info[:2]; sys.exit(0 if v == (3, 11) else "BASE_IMAGE has Python %d.%d; requirements.lock is for 3.11 (cp311 wheels)" % v)' \
 && if [ "$INSTALL_TORCH" = 0 ]; then \
      python -c 'import torch; print("base torch", torch.__version__, "cuda", torch.version.cuda)' \
      || { echo "BASE_IMAGE has no torch: build with --build-arg INSTALL_TORCH=1" >&2; exit 1; }; \
    fi

# requirements.lock rides along so the wildcard source can match nothing without failing
COPY requirements.lock ${WHEELHOUSE}* /tmp/wheels/
COPY requirements.lock docker/image-extras.txt /tmp/build/

RUN set -eu; \
    cd /tmp/build; \
    if [ "$INSTALL_TORCH" = 1 ]; then \
      cp requirements.lock install.txt; \
      python -m venv "$VENV"; \
    else \
      grep -viE '^(torch|torchvision|torchaudio|triton|cuda[-_.](toolkit|bindings|pathfinder)|nvidia[-_.][a-z0-9_.-]+)==' requirements.lock > install.txt || true; \
      grep -iE '^nvidia[-_.]ml[-_.]py==' requirements.lock >> install.txt || true; \
      python -m venv --system-site-packages "$VENV"; \
    fi; \
    if ls /tmp/wheels/*.whl >/dev/null 2>&1; then \
      echo "installing from the wheelhouse ($(ls /tmp/wheels/*.whl | wc -l) wheels, no network)"; \
      set -- --no-index --find-links /tmp/wheels; \
    else \
      echo "no wheels in ${WHEELHOUSE}: installing from the package index (network)"; \
      set --; \
    fi; \
    "$VENV/bin/pip" install -q --disable-pip-version-check --no-cache-dir --no-deps "$@" -r image-extras.txt; \
    "$VENV/bin/pip" install -q --disable-pip-version-check --no-cache-dir --no-deps "$@" -r install.txt; \
    echo "$(grep -c '==' install.txt) locked packages installed into $VENV"; \
    if [ "$INSTALL_TORCH" = 1 ]; then "$VENV/bin/pip" check; \
    else "$VENV/bin/pip" check || echo "WARNING: the locked deps and the base's packages disagree (above)"; fi; \
    rm -rf /tmp/build /tmp/wheels /root/.cache

# ---------------------------------------------------------------- the image
FROM ${BASE_IMAGE}
USER root
ARG VENV=/opt/trainyard/venv

# OS libraries opencv-python (not headless) needs, if the base lacks them (the official
# PyTorch image does; the local CI base ships them), and the non-root user.
RUN if ! ldconfig -p | grep -q 'libGL\.so\.1 ' || ! ldconfig -p | grep -q 'libglib-2\.0\.so\.0 '; then \
      apt-get update \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
      && rm -rf /var/lib/apt/lists/*; \
    fi \
 && if getent passwd 1000 >/dev/null; then userdel -r "$(getent passwd 1000 | cut -d: -f1)" 2>/dev/null || true; fi \
 && if getent group 1000 >/dev/null; then groupdel "$(getent group 1000 | cut -d: -f1)" 2>/dev/null || true; fi \
 && useradd --uid 1000 --user-group --create-home --home-dir /home/trainyard --shell /bin/bash trainyard

# YOLO_CONFIG_DIR: Ultralytics' config dir, shipped with the plot fonts it would otherwise download
# (Arial.ttf, Arial.Unicode.ttf: matplotlib's DejaVu Sans, made by `python -m tasks.fonts` below);
# world-writable (sticky), as the runner picks the user, for settings.json and DDP's temp files.
ENV VIRTUAL_ENV=${VENV} \
    PATH=${VENV}/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    YOLO_OFFLINE=1 \
    YOLO_CONFIG_DIR=/opt/trainyard/ultralytics

COPY --from=deps ${VENV} ${VENV}

# CUDA version of the torch inside; the label is what the runner records on the run.
ARG CUDA_VERSION=13.0
# Smoke test of the locked deps; also refuses a CUDA_VERSION that is not torch's.
RUN python -c "import torch, torchvision, cv2, ultralytics, mlflow; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cv2', cv2.__version__, 'ultralytics', ultralytics.__version__)" \
 && python -c "import sys, torch; c = torch.version.cuda or 'cpu'; sys.exit(0 if c == '${CUDA_VERSION}' else 'torch is built for CUDA %s but CUDA_VERSION=${CUDA_VERSION}: pass --build-arg CUDA_VERSION=%s' % (c, c))" \
 && rm -rf "$YOLO_CONFIG_DIR" /root/.config /root/.cache

ARG VERSION=0.1.0
ARG SOURCE_URL=https://github.com/trainyard/trainyard
LABEL org.trainyard.cuda="${CUDA_VERSION}" \
      org.opencontainers.image.title="trainyard-train" \
      org.opencontainers.image.description="trainyard YOLO11 training image: python -m tasks.adapters.ultralytics_trainer JOB.json" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV TRAINYARD_CUDA_VERSION=${CUDA_VERSION}

# /stage: where the work pools of docker/pools/ mount the stage cache (stage.root=/stage). Owned by
# the image's user because a new named volume takes the owner of the directory it is mounted on.
RUN install -d -o trainyard -g trainyard /stage

# Project code last: a code change rebuilds only these layers. Installed (not editable) into
# the venv, because the runner starts the container with working_dir = the run directory.
WORKDIR /opt/trainyard/src
COPY pyproject.toml README.md ./
COPY flows ./flows
COPY tasks ./tasks
RUN pip install -q --disable-pip-version-check --no-cache-dir --no-index --no-deps --no-build-isolation . \
 && rm -rf build ./*.egg-info /root/.cache \
 && cd / && python -c "import tasks.adapters.ultralytics_trainer, flows.cli; print('trainyard', __import__('importlib.metadata').metadata.version('trainyard'))" \
 && rm -rf "$YOLO_CONFIG_DIR" \
 && python -m tasks.fonts "$YOLO_CONFIG_DIR" \
 && chmod 1777 "$YOLO_CONFIG_DIR/Ultralytics"

# Provenance from .ci/build-image.sh (empty for plain builds); last so it never busts the cache.
ARG LOCK_SHA256=""
ARG BUILD_HASH=""
LABEL org.trainyard.lock-sha256="${LOCK_SHA256}" \
      org.trainyard.build-hash="${BUILD_HASH}"

USER trainyard
ENTRYPOINT ["python", "-m", "tasks.adapters.ultralytics_trainer"]
