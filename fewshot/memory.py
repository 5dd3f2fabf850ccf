"""How much memory a feature cache may take: free GPU memory, and host memory as a container
sees it.

/proc/meminfo describes the whole machine. A process in a container (or any cgroup with a memory
limit) is killed when its cgroup reaches the limit, however much MemAvailable still shows, so the
host's room is the smaller of MemAvailable and what the limits of the process's cgroup and of every
cgroup above it leave (limit − usage, with reclaimable file cache counted as free), for cgroup v2
(`memory.max`, `memory.current`) and v1 (`memory.limit_in_bytes`, `memory.usage_in_bytes`).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

PROC_SELF_CGROUP = Path("/proc/self/cgroup")
CGROUP_ROOT = Path("/sys/fs/cgroup")
MEMINFO = Path("/proc/meminfo")
# v1 reports "no limit" as a huge number (the page-aligned maximum of a signed 64-bit int)
NO_LIMIT_V1 = 2**62
# (limit file, usage file, reclaimable page cache in memory.stat) per cgroup version
CGROUP_V2_FILES = ("memory.max", "memory.current", "inactive_file")
CGROUP_V1_FILES = ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")


def meminfo_available_bytes(meminfo: Path = MEMINFO) -> int:
    """MemAvailable from /proc/meminfo, or the free physical pages where that file is missing."""
    try:
        for line in meminfo.read_text(encoding="ascii").splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _cgroup_folders(proc_self_cgroup: Path, cgroup_root: Path) -> list[tuple[Path, tuple]]:
    """The memory cgroup folders of this process and of its ancestors, with their file names."""
    try:
        lines = proc_self_cgroup.read_text(encoding="ascii").splitlines()
    except OSError:
        return []
    folders = []
    for line in lines:
        hierarchy, controllers, path = [*line.split(":", 2), "", ""][:3]
        if hierarchy == "0" and controllers == "":
            base, files = cgroup_root, CGROUP_V2_FILES
        elif "memory" in controllers.split(","):
            base, files = cgroup_root / "memory", CGROUP_V1_FILES
        else:
            continue
        # inside a cgroup namespace the path is "/" and the root folder is the process's own
        relative = Path(path.lstrip("/"))
        for folder in (relative, *relative.parents):
            folders.append((base / folder, files))
    return folders


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text(encoding="ascii").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max": no limit (v2)


def _reclaimable(stat: Path, key: str) -> int:
    try:
        for line in stat.read_text(encoding="ascii").splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def cgroup_room_bytes(
    proc_self_cgroup: Path = PROC_SELF_CGROUP, cgroup_root: Path = CGROUP_ROOT
) -> int | None:
    """What the tightest memory limit on this process's cgroups still leaves; None if unlimited."""
    rooms = []
    for folder, (limit_file, usage_file, reclaimable_key) in _cgroup_folders(
        proc_self_cgroup, cgroup_root
    ):
        limit, usage = _read_int(folder / limit_file), _read_int(folder / usage_file)
        if limit is None or usage is None or limit >= NO_LIMIT_V1:
            continue
        free = limit - usage + _reclaimable(folder / "memory.stat", reclaimable_key)
        rooms.append(max(0, min(limit, free)))
    return min(rooms) if rooms else None


def available_host_bytes() -> int:
    """Host memory this process may still take: MemAvailable, capped by its cgroup limits."""
    room = cgroup_room_bytes()
    available = meminfo_available_bytes()
    return available if room is None else min(available, room)


def free_device_bytes(device: torch.device) -> int:
    """Free memory of a CUDA device (what the driver reports, other processes included)."""
    free, _ = torch.cuda.mem_get_info(device)
    return int(free)
