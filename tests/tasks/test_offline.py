"""No network at run time: a training reaches nothing but loopback (issue 12).

Ultralytics, YOLO_OFFLINE=1 or not, downloads its plot fonts (``check_font``) and, on a GPU, the
model of its AMP check (``check_amp``). trainyard gives it the fonts on disk (tasks/fonts.py,
``training_env``) and an AMP check that never downloads (tasks/adapters/ultralytics_trainer.py).
The slow test trains for real in a child whose every non-loopback connection is refused and
recorded by an audit hook; the fast ones check the AMP check at the network seam (no GPU here).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import pytest
import yaml

from tasks.fonts import FONT_NAMES, ULTRALYTICS_SUB_DIR, provide_fonts
from tasks.job import TrainJob
from tasks.runners import LocalRunner
from tasks.training_output import training_env
from tests.conftest import copy_dataset

RECORD_ENV = "TRAINYARD_TEST_NET_RECORD"

# Loaded by every Python process that has its folder on PYTHONPATH (site imports it at startup):
# any name lookup or connection beyond loopback is written to $TRAINYARD_TEST_NET_RECORD and refused.
SITECUSTOMIZE = r"""
import os
import socket
import sys

_RECORD = os.environ.get("TRAINYARD_TEST_NET_RECORD")
_LOOKUPS = {"socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyname_ex", "socket.gethostbyaddr"}


def _is_loopback(host):
    if host is None:
        return True
    if isinstance(host, (bytes, bytearray)):
        host = bytes(host).decode("ascii", "replace")
    host = str(host).strip("[]").lower()
    return host in ("", "localhost", "::1") or host.startswith("127.") or host.endswith(".localhost")


def _hook(event, args):
    if event in _LOOKUPS:
        host = args[0]
    elif event == "socket.getnameinfo":
        host = args[0][0]
    elif event in ("socket.connect", "socket.sendto"):
        if args[0].family not in (socket.AF_INET, socket.AF_INET6):
            return  # a Unix socket, netlink: not the network
        host = args[1][0]
    else:
        return
    if _is_loopback(host):
        return
    with open(_RECORD, "a", encoding="utf-8") as f:
        f.write(f"{os.getpid()} {event} {host}\n")
    if event in _LOOKUPS:
        raise socket.gaierror(socket.EAI_NONAME, f"no network in this test ({host})")
    raise ConnectionRefusedError(f"no network in this test ({host})")


if _RECORD:
    with open(_RECORD + ".armed", "a", encoding="utf-8") as f:
        f.write(f"{os.getpid()} {' '.join(sys.orig_argv)}\n")
    sys.addaudithook(_hook)
"""


@pytest.fixture
def no_network(tmp_path: Path) -> dict[str, str]:
    """Environment for a child process: the recording, refusing hook installed (record file empty)."""
    hook_dir = tmp_path / "no-network"
    hook_dir.mkdir()
    (hook_dir / "sitecustomize.py").write_text(SITECUSTOMIZE)
    record = tmp_path / "network-attempts.txt"
    record.write_text("")
    path = os.pathsep.join(p for p in (str(hook_dir), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, RECORD_ENV: str(record)}


def test_the_hook_records_and_refuses_the_network_but_not_loopback(no_network: dict[str, str]) -> None:
    code = (
        "import socket\n"
        "socket.getaddrinfo('localhost', 80)\n"
        "try:\n"
        "    socket.getaddrinfo('github.com', 443)\n"
        "except OSError:\n"
        "    print('refused')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **no_network}, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "refused"
    record = Path(no_network[RECORD_ENV])
    assert record.read_text().split()[1:] == ["socket.getaddrinfo", "github.com"]
    assert Path(f"{record}.armed").read_text()


def test_fonts_are_copied_once_readable_by_anyone_and_a_users_config_dir_is_left_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("YOLO_CONFIG_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    config_dir = tmp_path / "cache" / "trainyard" / "ultralytics"
    assert not config_dir.exists()  # nothing is written before a training asks for its environment
    assert training_env()["YOLO_CONFIG_DIR"] == str(config_dir)
    fonts = config_dir / ULTRALYTICS_SUB_DIR
    assert sorted(p.name for p in fonts.iterdir()) == sorted(FONT_NAMES)  # no temporary file left behind
    for name in FONT_NAMES:
        assert (fonts / name).stat().st_mode & 0o777 == 0o644
        assert (fonts / name).read_bytes()[:4] == b"\x00\x01\x00\x00"  # a TrueType font
    (fonts / "Arial.ttf").write_bytes(b"the user's own")
    provide_fonts(config_dir)
    assert (fonts / "Arial.ttf").read_bytes() == b"the user's own"

    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path / "mine"))
    assert "YOLO_CONFIG_DIR" not in training_env()
    assert not (tmp_path / "mine").exists()


@pytest.mark.slow
def test_a_training_with_plots_and_a_non_ascii_class_makes_no_network_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_dataset: Path, no_network: dict[str, str]
) -> None:
    # trainyard's own Ultralytics config dir (under a temp XDG cache), as a user who set none gets
    monkeypatch.delenv("YOLO_CONFIG_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "TRAINYARD_JOB"):
        monkeypatch.delenv(name, raising=False)
    data = copy_dataset(tiny_dataset, tmp_path / "data")
    spec = yaml.safe_load((data / "data.yaml").read_text())
    spec["names"] = {0: "circle", 1: "квадрат", 2: "triangle"}  # non-ASCII: Ultralytics wants Arial.Unicode.ttf
    (data / "data.yaml").write_text(yaml.safe_dump(spec, allow_unicode=True))
    run_dir = tmp_path / "run"
    args = {
        "model": "yolo11n.yaml",
        "epochs": 1,
        "imgsz": 32,
        "batch": 8,
        "workers": 0,
        "device": "cpu",
        "plots": True,
        "seed": 0,
        "deterministic": True,
    }
    job = TrainJob(run_dir=str(run_dir), data_yaml=str(data / "data.yaml"), args=args)
    lines: list[str] = []

    LocalRunner(interactive=False).run(job, no_network, lines.append)

    record = Path(no_network[RECORD_ENV])
    assert record.read_text() == "", "the training tried to reach the network:\n" + record.read_text()
    armed = Path(f"{record}.armed").read_text()
    assert "tasks.adapters.ultralytics_trainer" in armed, "the hook was not in the training process"
    for plot in ("labels.jpg", "train_batch0.jpg", "results.png"):
        assert (run_dir / plot).is_file(), f"no {plot}; output:\n" + "\n".join(lines[-30:])
    config = tmp_path / "cache" / "trainyard" / "ultralytics" / ULTRALYTICS_SUB_DIR
    assert (config / "settings.json").is_file()  # the training used trainyard's config dir, not the user's


# ---------------------------------------------------------------- the AMP check, at the network seam


class FakeGpuModel:
    """What check_amp reads of a model before it loads its own: the device of its parameters."""

    stride = None

    def parameters(self) -> Iterator[Any]:
        import torch

        yield SimpleNamespace(device=torch.device("cuda", 0))


@pytest.fixture
def amp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, yolo_config_dir: Path) -> Iterator[SimpleNamespace]:
    """Ultralytics' real check_amp on a "GPU", behind trainyard's wrapper; the network records and refuses."""
    import torch
    import ultralytics.engine.trainer as engine
    import ultralytics.utils
    from ultralytics.utils import LOGGER, checks

    from tasks.adapters.ultralytics_trainer import _amp_check_never_downloads

    attempts: list[str] = []
    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in (None, "localhost", "127.0.0.1", "::1"):
            attempts.append(str(host))
            raise socket.gaierror(socket.EAI_NONAME, f"no network in this test ({host})")
        return real_getaddrinfo(host, *args, **kwargs)

    def connect(self: socket.socket, address: Any) -> None:
        attempts.append(repr(address))
        raise ConnectionRefusedError("no network in this test")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    monkeypatch.setattr(ultralytics.utils, "WEIGHTS_DIR", tmp_path / "weights")
    (tmp_path / "weights").mkdir()
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    messages: list[str] = []
    monkeypatch.setattr(LOGGER, "info", lambda msg, *a, **k: messages.append(str(msg)))
    monkeypatch.setattr(engine, "check_amp", checks.check_amp)  # restored after the test
    _amp_check_never_downloads()
    yield SimpleNamespace(
        check=engine.check_amp, attempts=attempts, messages=messages, weights=tmp_path / "weights", engine=engine
    )


def test_the_amp_check_without_local_weights_skips_without_any_download_and_keeps_amp_on(
    amp: SimpleNamespace,
) -> None:
    assert amp.check(FakeGpuModel()) is True  # what Ultralytics decides offline
    assert amp.attempts == []
    assert any("trainyard never downloads weights" in m for m in amp.messages)


def test_the_amp_check_still_turns_amp_off_on_gpus_ultralytics_knows_to_fail(
    amp: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA GeForce GTX 1660")
    assert amp.check(FakeGpuModel()) is False
    assert amp.attempts == []


@pytest.mark.filterwarnings("ignore:CUDA is not available")  # autocast on a CPU-only torch
def test_the_amp_check_runs_in_full_with_weights_on_disk_and_is_installed_once(
    amp: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch
    import ultralytics
    import ultralytics.models

    from tasks.adapters.ultralytics_trainer import _amp_check_never_downloads

    lazy = "YOLO" in vars(ultralytics)
    loaded: list[str] = []

    class FakeYOLO:
        def __init__(self, weights: str) -> None:
            loaded.append(weights)

        def __call__(self, *args: Any, **kwargs: Any) -> list[Any]:
            return [SimpleNamespace(boxes=SimpleNamespace(data=torch.zeros(2, 6)))]

    monkeypatch.setattr(ultralytics.models, "YOLO", FakeYOLO)
    for name in ("yolo11n.pt", "yolo26n.pt"):  # the model Ultralytics' AMP check loads, by version
        (amp.weights / name).write_bytes(b"on disk")
    model = FakeGpuModel()
    model.stride = torch.tensor([8.0, 16.0, 32.0])
    assert amp.check(model) is True
    assert len(loaded) == 1 and Path(loaded[0]).parent == amp.weights and amp.attempts == []
    assert not any("trainyard never downloads weights" in m for m in amp.messages)
    assert ("YOLO" in vars(ultralytics)) == lazy  # Ultralytics' lazy model import is as it was

    _amp_check_never_downloads()
    assert amp.engine.check_amp is amp.check
