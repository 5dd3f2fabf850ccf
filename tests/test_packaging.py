"""sact installs as one package, `sact`: nothing generic (`cli`, `data`, `extract`) lands at the top
of site-packages, and a user's own `data/` or `cli.py` cannot hide sact's."""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import sact

REPO = Path(__file__).resolve().parents[1]


def project_files() -> list[str]:
    """What a fresh clone holds: tracked files and new ones git does not ignore."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        check=True,
    )
    return [name for name in listed.stdout.decode().split("\0") if name and (REPO / name).exists()]


@pytest.mark.slow
def test_wheel_installs_only_the_sact_package(tmp_path: Path) -> None:
    source = tmp_path / "source"
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        for name in project_files():
            tar.add(REPO / name, arcname=name, recursive=False)
    archive.seek(0)
    with tarfile.open(fileobj=archive) as tar:
        tar.extractall(source, filter="data")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(tmp_path / "wheel"), str(source)],
        check=True, capture_output=True,
    )  # fmt: skip
    (wheel,) = (tmp_path / "wheel").glob("sact-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names} == {
        "sact",
        wheel.name.split("-py")[0] + ".dist-info",
    }
    expected = ("__init__.py", "cli.py", "store/backends.py", "fewshot/model.py",
                "data/splits/ssv2_OTAM/testlist07.txt")  # fmt: skip
    assert all(f"sact/{module}" in names for module in expected)


def test_own_data_and_cli_do_not_hide_sacts(tmp_path: Path) -> None:
    """Research repos have their own `data/` package and `cli.py`; run from such a folder."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "__init__.py").write_text("raise ImportError('the user data package')\n")
    (tmp_path / "cli.py").write_text("raise SystemExit('the user cli')\n")
    splits = subprocess.run(
        [sys.executable, "-c",
         "from sact.data.split_lists import known_splits; print(','.join(known_splits()))"],
        cwd=tmp_path, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "ssv2_OTAM" in splits.stdout.split(",")
    helped = subprocess.run(
        [sys.executable, "-m", "sact.cli", "--help"], cwd=tmp_path, capture_output=True, text=True
    )
    assert helped.returncode == 0, helped.stderr
    assert "extract" in helped.stdout


def test_import_sact_is_light_and_reaches_the_public_api() -> None:
    imported = subprocess.run(
        [sys.executable, "-c", "import sys, sact; print('torch' in sys.modules, sact.__version__)"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert imported.stdout.split()[0] == "False"
    assert set(sact.__all__) == {"__version__", *sact._PUBLIC}
    for name in sact._PUBLIC:
        assert getattr(sact, name).__module__.startswith("sact.")
    with pytest.raises(AttributeError):
        _ = sact.no_such_thing
