#!/usr/bin/env bash
# CI: build the training image trainyard-train:ci before `make test` (no registry needed).
#
#   1. local base trainyard-base:bookworm-py311 (debootstrap; skipped when present)
#   2. content hash of everything that goes into the image; trainyard-train:ci-<hash>
#      present -> retag it as trainyard-train:ci and stop (nothing else runs)
#   3. wheelhouse docker/.wheelhouse from requirements.lock + docker/image-extras.txt
#      (pip download; files already there are reused, stale ones removed)
#   4. DOCKER_BUILDKIT=0 docker build ... INSTALL_TORCH=1 (offline: all wheels from the wheelhouse)
#
# Needs docker, debootstrap, root/sudo and Python 3.11 with pip (the project venv's pip when
# VENV is set, else python3.11 -m pip). Env: TRAINYARD_CI_IMAGE (default trainyard-train:ci),
# TRAINYARD_BASE_IMAGE, DEBIAN_MIRROR, TRAINYARD_CI_KEEP_OLD=1 (keep older ci-<hash> tags).
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE="${TRAINYARD_CI_IMAGE:-trainyard-train:ci}"
REPO="${IMAGE%:*}"
export TRAINYARD_BASE_IMAGE="${TRAINYARD_BASE_IMAGE:-trainyard-base:bookworm-py311}"
BASE="$TRAINYARD_BASE_IMAGE"
WHEELHOUSE=docker/.wheelhouse
DOCKERFILE=docker/train.Dockerfile

T0=$(date +%s); LAST=$T0
step() { local now; now=$(date +%s); echo "   ($(( now - LAST ))s)"; LAST=$now; echo "== $*"; }
done_() { local now; now=$(date +%s); echo "   ($(( now - LAST ))s)"; echo "== $* (total $(( now - T0 ))s)"; }

if [ -n "${VENV:-}" ] && [ -x "$VENV/bin/pip" ]; then
  PY="$VENV/bin/python"
elif command -v python3.11 >/dev/null 2>&1; then
  PY=python3.11
else
  PY=python3
fi

echo "== base image $BASE"
docker/base/build-local-base.sh

step "content hash"
# Everything the image is built from: the base (by ID), the Dockerfile, build tools, the lock,
# the project code and metadata, the context filter. Same hash -> same image; rebuild skipped.
HASH=$(
  {
    docker image inspect --format '{{.Id}}' "$BASE"
    echo "INSTALL_TORCH=1"
    FILES=$(find tasks flows -type f ! -path '*/__pycache__/*' ! -name '*.pyc' ! -path '*.egg-info/*')
    printf '%s\n' "$DOCKERFILE" docker/image-extras.txt requirements.lock pyproject.toml README.md .dockerignore $FILES \
      | LC_ALL=C sort -u | while read -r f; do [ -f "$f" ] && sha256sum "$f"; done
  } | sha256sum | cut -c1-16
)
LOCK_SHA=$(sha256sum requirements.lock | cut -d' ' -f1)
echo "   $REPO:ci-$HASH"
if docker image inspect "$REPO:ci-$HASH" >/dev/null 2>&1; then
  docker tag "$REPO:ci-$HASH" "$IMAGE"
  done_ "up to date: $IMAGE = $REPO:ci-$HASH ($(docker image inspect --format '{{.Id}}' "$IMAGE" | cut -c1-19))"
  exit 0
fi

step "wheelhouse $WHEELHOUSE ($PY -m pip)"
mkdir -p "$WHEELHOUSE"
STAMP="$WHEELHOUSE/.complete-$(cat requirements.lock docker/image-extras.txt | sha256sum | cut -c1-16)"
if [ -f "$STAMP" ]; then
  echo "   complete for this lock ($(ls "$WHEELHOUSE"/*.whl | wc -l) wheels)"
else
  rm -f "$WHEELHOUSE"/.complete-*
  "$PY" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "the wheelhouse needs Python 3.11 (cp311 wheels); set VENV or install python3.11")'
  # pip wheel, not pip download: a few locked packages are sdists only (antlr4-python3-runtime
  # 4.9.3); the image build has no compiler and no network, so they are built into wheels here.
  # --no-deps: the lock is complete. Wheels already in the folder are reused.
  "$PY" -m pip wheel -q --disable-pip-version-check --no-deps \
    -r requirements.lock -r docker/image-extras.txt -w "$WHEELHOUSE" 2>&1 \
    | { grep -v "is ignored: it is neither a file nor a directory" || true; }
  # drop wheels of versions no longer locked (keeps the build context small)
  "$PY" - "$WHEELHOUSE" requirements.lock docker/image-extras.txt <<'PYEOF'
import pathlib, re, sys
norm = lambda s: re.sub(r"[-_.]+", "-", s).lower()
want = set()
for req in sys.argv[2:]:
    for line in pathlib.Path(req).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            want.add((norm(name.split("[")[0]), version.strip()))
stale = [w for w in pathlib.Path(sys.argv[1]).glob("*.whl")
         if (norm(w.name.split("-")[0]), w.name.split("-")[1]) not in want]
for w in stale:
    w.unlink()
print(f"   {len(stale)} stale wheel(s) removed" if stale else "   no stale wheels")
PYEOF
  touch "$STAMP"
  echo "   $(ls "$WHEELHOUSE"/*.whl | wc -l) wheels, $(du -sh "$WHEELHOUSE" | cut -f1)"
fi

# CUDA version of the locked torch, from the locked CUDA runtime wheel (nvidia-cuda-runtime==13.0.96 -> 13.0)
CUDA_VERSION=$(sed -nE 's/^nvidia-cuda-runtime(-cu[0-9]+)?==([0-9]+)\.([0-9]+).*/\2.\3/p' requirements.lock | head -n1)
CUDA_VERSION="${CUDA_VERSION:-13.0}"

step "docker build $REPO:ci-$HASH (base $BASE, INSTALL_TORCH=1, CUDA $CUDA_VERSION)"
DOCKER_BUILDKIT=0 docker build -f "$DOCKERFILE" \
  --build-arg BASE_IMAGE="$BASE" \
  --build-arg INSTALL_TORCH=1 \
  --build-arg WHEELHOUSE="$WHEELHOUSE" \
  --build-arg CUDA_VERSION="$CUDA_VERSION" \
  --build-arg LOCK_SHA256="$LOCK_SHA" \
  --build-arg BUILD_HASH="$HASH" \
  -t "$REPO:ci-$HASH" -t "$IMAGE" . 2>&1 \
  | grep --line-buffered -v -e '^DEPRECATED: The legacy builder' -e 'BuildKit is currently disabled' \
      -e 'Install the buildx component' -e 'https://docs.docker.com/go/buildx' -e '^ *environment-variable' -e '^$' \
  | while IFS= read -r line; do printf '%(%T)T %s\n' -1 "$line"; done

step "check"
docker run --rm --entrypoint python "$IMAGE" -c "import tasks.adapters.ultralytics_trainer, torch, cv2; print('   ok: torch', torch.__version__, 'cv2', cv2.__version__)"

if [ "${TRAINYARD_CI_KEEP_OLD:-0}" != 1 ]; then
  for old in $(docker image ls --format '{{.Repository}}:{{.Tag}}' "$REPO" | grep -E ":ci-[0-9a-f]{16}$" | grep -v ":ci-$HASH$"); do
    docker rmi "$old" >/dev/null 2>&1 && echo "   removed old tag $old" || true
  done
  # The legacy builder leaves each build's "deps" stage behind untagged (~11 GB with CUDA torch);
  # those of earlier builds filled this machine's disk once. This build's stays: the next one's cache.
  docker image prune -f --filter "until=30m" >/dev/null 2>&1 || true
fi
done_ "$IMAGE = $REPO:ci-$HASH ($(docker image inspect --format '{{.Id}}' "$IMAGE" | cut -c1-19), $(docker image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%.1f GB", $1/1e9}'))"
