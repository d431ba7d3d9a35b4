"""What every result row records about where it came from: versions, device, git revision."""
from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import os
import platform
import re
import socket
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__

if TYPE_CHECKING:  # torch is imported where it is used: sweeps' --dry-run reads PROVENANCE only
    import torch

# The provenance columns of every result row. device_name, hostname, ray_node_id and
# cuda_visible_devices describe where a trial ran; ray_node_id is Ray's node id (None outside
# Ray), filled in by the sweep's trainable (l2bn itself never imports ray);
# cuda_visible_devices is the process's $CUDA_VISIBLE_DEVICES (Ray sets it to the GPUs it
# assigned a trial; None when unset).
PROVENANCE = ("l2bn_version", "torch_version", "torchvision_version", "python_version",
              "device_name", "hostname", "git_rev", "ray_node_id", "cuda_visible_devices")
MACHINE = ("device_name", "hostname", "ray_node_id", "cuda_visible_devices")
# What a driver can vouch for about a trial that never ran (not the machine it would have used).
VERSIONS = tuple(k for k in PROVENANCE if k not in MACHINE)


def _git(*args: str) -> str | None:
    """stdout of a git command run in this package's checkout, or None."""
    try:
        out = subprocess.run(["git", *args], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def git_revision() -> str:
    """$L2BN_GIT_REV (set by the sweep driver for its workers), else `git rev-parse HEAD`,
    with a `-dirty` suffix when tracked files had uncommitted changes."""
    if os.environ.get("L2BN_GIT_REV"):
        return os.environ["L2BN_GIT_REV"]
    rev = _git("rev-parse", "HEAD")
    if rev is None:
        return "unknown"
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return f"{rev}-dirty" if dirty else rev


def device_name(device: torch.device) -> str:
    """GPU model name on CUDA, else the CPU's architecture."""
    if device.type == "cuda":
        import torch

        return torch.cuda.get_device_name(device)
    return f"cpu-{platform.machine()}"


@functools.cache
def torchvision_version() -> str:
    """torchvision.__version__ (with its CUDA tag) read from its version.py, not by importing it:
    `import torchvision` pulls in torch._dynamo, about 1 s in every trial and probe process."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:  # pragma: no cover - torchvision is a dependency
        return "missing"
    path = Path(spec.origin).with_name("version.py")
    found = re.search(r"^__version__\s*=\s*['\"]([^'\"]+)", path.read_text(), re.M) if path.exists() else None
    return found.group(1) if found else importlib.metadata.version("torchvision")


def run_info(device: torch.device) -> dict[str, str]:
    """Columns that make a row explain itself."""
    import torch

    tv = torchvision_version()
    return {
        "l2bn_version": __version__,
        "torch_version": torch.__version__,
        "torchvision_version": tv,
        "python_version": platform.python_version(),
        "device_name": device_name(device),
        "hostname": socket.gethostname(),
        "git_rev": git_revision(),
        "ray_node_id": None,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }
