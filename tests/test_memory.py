"""How much memory the feature cache may take: the host's room as a container's cgroup sees it."""

from __future__ import annotations

from pathlib import Path

from sact.fewshot.memory import available_host_bytes, cgroup_room_bytes, meminfo_available_bytes

GB = 1024**3


def cgroup_tree(root: Path, files: dict[str, dict[str, str]]) -> Path:
    """Folders of cgroup files under `root`, e.g. {"memory/docker/abc": {"memory.max": "..."}}."""
    for folder, contents in files.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for name, text in contents.items():
            (root / folder / name).write_text(text)
    return root


def test_cgroup_v2_limit_minus_usage_counts_reclaimable_cache_as_free(tmp_path):
    proc = tmp_path / "cgroup"
    proc.write_text("0::/system.slice/job.scope\n")
    root = cgroup_tree(
        tmp_path / "sys",
        {
            "system.slice/job.scope": {
                "memory.max": str(16 * GB),
                "memory.current": str(10 * GB),
                "memory.stat": f"anon {8 * GB}\ninactive_file {2 * GB}\n",
            },
            "system.slice": {"memory.max": "max", "memory.current": str(40 * GB)},
        },
    )
    assert cgroup_room_bytes(proc, root) == 8 * GB


def test_cgroup_v1_takes_the_tightest_ancestor_and_ignores_no_limit(tmp_path):
    proc = tmp_path / "cgroup"
    proc.write_text("12:cpu,cpuacct:/\n4:memory:/process_api/abc\n0::/\n")
    unlimited = str(2**63 - 4096)  # what v1 reports without a limit
    root = cgroup_tree(
        tmp_path / "sys",
        {
            "memory/process_api/abc": {
                "memory.limit_in_bytes": unlimited,
                "memory.usage_in_bytes": str(1 * GB),
            },
            "memory/process_api": {
                "memory.limit_in_bytes": str(6 * GB),
                "memory.usage_in_bytes": str(5 * GB),
                "memory.stat": f"cache {GB}\ntotal_inactive_file {GB // 2}\n",
            },
            "memory": {"memory.limit_in_bytes": unlimited, "memory.usage_in_bytes": "0"},
        },
    )
    assert cgroup_room_bytes(proc, root) == GB + GB // 2


def test_no_cgroup_limit_leaves_meminfo(tmp_path):
    proc = tmp_path / "cgroup"
    proc.write_text("0::/\n")
    assert cgroup_room_bytes(proc, tmp_path / "nothing") is None
    assert cgroup_room_bytes(tmp_path / "no-proc-file", tmp_path) is None
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 100 kB\nMemAvailable:    2048 kB\n")
    assert meminfo_available_bytes(meminfo) == 2048 * 1024
    assert 0 < available_host_bytes() <= meminfo_available_bytes()
