"""Docker seam: the one module that imports the docker SDK.

The Docker runner runs the same entry point as the local runner (``python -m tasks.adapters.ultralytics_trainer
job.json``) inside the training image, started **by digest**: a tag can move between two
runs, a digest cannot, so the digest recorded on the MLflow run names the exact bits.

Only two host paths enter the container: the staged dataset (read-only) and the run's
output directory (read-write), both at their host paths so job.json needs no rewriting.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from tasks.adapters.torch_environment import Environment
from tasks.errors import RunnerError, TrainingError
from tasks.job import JOB_FILE, TrainJob, data_root
from tasks.training_output import LogSink, last_frame, last_lines

CUDA_LABEL = "org.trainyard.cuda"
_DIGEST_RE = re.compile(r"^(?P<name>[^@]+?)(?::(?P<tag>[\w][\w.-]{0,127}))?@(?P<digest>sha256:[0-9a-f]{64})$")
_NO_GPU_RUNTIME = (
    "container.gpus={gpus!r} needs the NVIDIA container runtime, which this Docker engine lacks: install the NVIDIA "
    "Container Toolkit (then `nvidia-ctk runtime configure --runtime=docker` and restart Docker), or set container.gpus: none"
)


@dataclass(frozen=True)
class ResolvedImage:
    """An image as the runner starts it."""

    given: str  # container.image as written
    run_ref: str  # what the container is started from: name@sha256:… (registry) or sha256:… (local ID)
    digest: str  # the digest recorded on the run (repo digest if any, else the image ID)
    image_id: str  # `docker image inspect --format {{.Id}}`
    labels: dict[str, str]

    @property
    def cuda(self) -> str | None:
        return self.labels.get(CUDA_LABEL)


def docker_client() -> Any:
    """A client for the local engine, with an actionable error when it is down."""
    import docker.errors
    from requests.exceptions import RequestException

    try:
        client = docker.from_env(timeout=120)  # type: ignore[attr-defined]  # exported, not re-exported
        client.ping()
        return client
    except (docker.errors.DockerException, RequestException) as exc:  # "no daemon" comes as either
        raise RunnerError(
            f"the Docker daemon is not reachable ({_short(exc)}); start it (systemctl start docker) "
            "or set runner.kind: local"
        ) from None


def resolve_image(client: Any, image: str, require_digest: bool = False, pull: bool = True) -> ResolvedImage:
    """Resolve ``name:tag`` / ``name@sha256:…`` / ``name:tag@sha256:…`` to the digest to run.

    A bare tag is resolved now and the container started by the result. A reference that
    pins both a tag and a digest must still agree: a moved tag is refused, not followed.
    """
    import docker.errors
    from requests.exceptions import RequestException

    pinned = _DIGEST_RE.match(image)
    if require_digest and not pinned:
        raise RunnerError(
            f"container.image {image!r} is a tag, and container.require_digest is true; pin it as "
            f"name@sha256:<digest> (see `docker image inspect --format '{{{{.RepoDigests}}}}' {image}`)"
        )
    lookup = image
    if pinned and pinned.group("tag"):
        lookup = f"{pinned.group('name')}:{pinned.group('tag')}"
    elif pinned:
        lookup = f"{pinned.group('name')}@{pinned.group('digest')}"
    try:
        img = client.images.get(lookup)
    except docker.errors.ImageNotFound:
        if not pull:
            raise RunnerError(
                f"container.image {image!r} is not on this machine (container.pull is false); "
                "build it (`make image`) or fix container.image"
            ) from None
        try:  # a registry may have it; a digest pull is exact
            img = client.images.pull(lookup)
        except (docker.errors.DockerException, RequestException) as exc:
            raise RunnerError(
                f"container.image {image!r} is not on this machine and could not be pulled ({_short(exc)}); "
                "build it (`make image`) or fix container.image"
            ) from None
    except docker.errors.APIError as exc:
        raise RunnerError(f"cannot inspect container.image {image!r}: {_short(exc)}") from None
    repo_digests = [d for d in img.attrs.get("RepoDigests") or [] if "@sha256:" in d]
    if pinned:
        want = pinned.group("digest")
        have = {d.split("@", 1)[1] for d in repo_digests} | {img.id}
        if want not in have:
            now = repo_digests[0].split("@", 1)[1] if repo_digests else img.id
            raise RunnerError(
                f"container.image {image!r}: the tag now resolves to {now}, not the pinned {want}; "
                "rebuild/pull the pinned image or update the digest deliberately"
            )
    if repo_digests:  # pulled from / pushed to a registry: start by the registry digest
        run_ref = repo_digests[0]
        digest = run_ref.split("@", 1)[1]
    else:  # built here, never pushed: the image ID is the content digest
        run_ref = digest = img.id
    return ResolvedImage(image, run_ref, digest, img.id, dict(img.labels or {}))


class DockerRunner:
    """Trains in a container of ``container.image``, started by digest."""

    kind = "docker"

    def __init__(
        self,
        image: str,
        *,
        gpus: str = "none",
        shm_size: str = "8g",
        ipc: str | None = None,
        require_digest: bool = False,
        pull: bool = True,
        client: Any | None = None,
    ) -> None:
        self.image = image
        self.gpus = gpus
        self.shm_size = shm_size
        self.ipc = ipc
        self.require_digest = require_digest
        self.pull = pull
        self._client = client
        self._resolved: ResolvedImage | None = None

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = docker_client()
        return self._client

    @property
    def resolved(self) -> ResolvedImage:
        if self._resolved is None:
            self._resolved = resolve_image(self.client, self.image, self.require_digest, self.pull)
        return self._resolved

    def environment(self) -> Environment:
        img = self.resolved
        return Environment(
            kind="docker",
            digest=img.digest,
            details={"image": img.given, "digest": img.digest, "id": img.image_id, "cuda": img.cuda},
        )

    def warm_up(self) -> None:
        """Nothing to start ahead: a container's start-up is paid when it runs its job."""

    def discard(self) -> None:
        """Nothing was started ahead."""

    def run(self, job: TrainJob, env: Mapping[str, str], log: LogSink) -> None:
        import docker.errors
        from docker.types import DeviceRequest, Mount, Ulimit

        run_dir = Path(job.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        job_path = job.write(run_dir / JOB_FILE)
        data_dir = data_root(Path(job.data_yaml))
        mounts = [
            Mount(str(run_dir), str(run_dir), type="bind", read_only=False),
            Mount(str(data_dir), str(data_dir), type="bind", read_only=True),
        ]
        model = Path(str(job.args.get("model", "")))
        if model.suffix == ".pt" and model.is_absolute() and not model.is_relative_to(run_dir):
            mounts.append(Mount(str(model), str(model), type="bind", read_only=True))
        for mount in mounts:
            if not Path(mount["Source"]).exists():
                raise RunnerError(f"cannot mount {mount['Source']} into the container: it does not exist")
        user = None
        if os.getuid() != 0:
            user = f"{os.getuid()}:{os.getgid()}"  # outputs belong to the user who ran trainyard
        else:
            os.chmod(run_dir, 0o777)  # the image's non-root user writes here; root keeps access
        container_env = _container_env(env)
        kwargs: dict[str, Any] = dict(
            command=[str(job_path)],
            mounts=mounts,
            environment=container_env,
            shm_size=self.shm_size,  # Docker's 64 MB /dev/shm kills PyTorch dataloader workers
            labels={RUN_DIR_LABEL: str(run_dir)},
            working_dir=str(run_dir),
        )
        if user:
            kwargs["user"] = user
        if self.ipc:
            kwargs["ipc_mode"] = self.ipc
        requests = gpu_requests(self.gpus)
        if requests:
            kwargs["device_requests"] = [DeviceRequest(**r) for r in requests]
            # NVIDIA's recommended limits for CUDA/NCCL (pinned memory, deep stacks). Only with
            # GPUs: raising memlock needs privileges a CPU-only or rootless engine may not grant.
            kwargs["ulimits"] = [
                Ulimit(name="memlock", soft=-1, hard=-1),
                Ulimit(name="stack", soft=67108864, hard=67108864),
            ]
        # A container of an earlier attempt in this run directory outlives a flow killed with
        # SIGKILL (a preempted node): it would go on writing where this one resumes.
        for stale in self.client.containers.list(all=True, filters={"label": f"{RUN_DIR_LABEL}={run_dir}"}):
            log(f"removing the container {stale.short_id} an earlier, killed attempt left training in {run_dir}")
            with contextlib.suppress(docker.errors.APIError):
                stale.remove(force=True)
        try:
            container = self.client.containers.create(self.resolved.run_ref, **kwargs)
        except docker.errors.APIError as exc:
            raise RunnerError(
                f"could not create the training container from {self.resolved.run_ref}: {_short(exc)}"
            ) from None
        tail: list[str] = []
        try:
            try:
                container.start()
            except docker.errors.APIError as exc:
                text = _short(exc)
                if requests and ("device driver" in text or "nvidia" in text.lower() or "gpu" in text.lower()):
                    raise RunnerError(_NO_GPU_RUNTIME.format(gpus=self.gpus)) from None
                raise RunnerError(
                    f"could not start the training container from {self.resolved.run_ref}: {text}"
                ) from None
            pending = ""
            for chunk in container.logs(stream=True, follow=True):
                pending += chunk.decode("utf-8", errors="replace")
                *lines, pending = pending.split("\n")
                for raw in lines:
                    line = last_frame(raw)
                    if line:
                        tail = (tail + [line])[-30:]
                        log(line)
            code = int(container.wait().get("StatusCode", 1))
            container.reload()
            oom = bool(container.attrs.get("State", {}).get("OOMKilled"))
        finally:
            # Ctrl-C, a cancelled flow, a failed start or an error above: the container never
            # outlives the task, in any state.
            with contextlib.suppress(Exception):
                container.remove(force=True)
        if oom:
            raise TrainingError(
                f"the training container ran out of memory (OOMKilled); lower train.batch or "
                f"train.imgsz, or give the container more memory; output in {run_dir}",
                killed=True,
                out_of_memory=True,
            )
        if code != 0:
            # 128+9: `docker kill`, the host's OOM killer or a lost node; 128+15: docker stop
            raise TrainingError(
                f"training container exited with code {code}; output in {run_dir}{last_lines(tail)}",
                killed=code in (137, 143),
            )


RUN_DIR_LABEL = "org.trainyard.run_dir"


def gpu_requests(gpus: str) -> list[dict[str, Any]]:
    """``container.gpus`` -> Docker device requests: "all", "0,1" (device ids) or "none"."""
    value = str(gpus).strip().lower()
    if value in ("none", "", "false", "0 gpus"):
        return []
    if value == "all":
        return [{"count": -1, "capabilities": [["gpu"]]}]
    ids = [part.strip() for part in value.split(",") if part.strip()]
    if not all(i.isdigit() for i in ids):
        raise RunnerError(f'container.gpus {gpus!r}: valid forms are all, none, or GPU indices like "0,1"')
    return [{"device_ids": ids, "capabilities": [["gpu"]]}]


def has_nvidia_runtime(client: Any) -> bool:
    runtimes = (client.info() or {}).get("Runtimes") or {}
    return "nvidia" in runtimes


def _container_env(env: Mapping[str, str]) -> dict[str, str]:
    """The variables the training process needs (``env``: the runner's, on top); no AWS secrets and
    no tracking credentials ever enter the container.

    The training reaches nothing outside: it appends its epochs to epochs.jsonl in the mounted
    run directory and the flow, on the host, logs them to MLflow (tasks/live_logging.py).
    """
    # No YOLO_CONFIG_DIR: the image's own (its ENV) holds the plot fonts Ultralytics would download.
    return {**env, "YOLO_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "HOME": "/tmp"}


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:400] if text else type(exc).__name__
