"""sact installs as one package, `sact`: nothing generic (`cli`, `data`, `extract`) lands at the top
of site-packages, and a user's own `data/` or `cli.py` cannot hide sact's. Every module it installs
imports with only the dependencies it declares, and every package it imports is declared."""

from __future__ import annotations

import ast
import io
import json
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

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


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def installed_modules() -> dict[str, Path]:
    """Every module the wheel installs, and its file, from pyproject's package list (the root
    folder is the package `sact`, each listed package one of its folders)."""
    modules = {}
    for package in pyproject()["tool"]["setuptools"]["packages"]:
        folder = REPO.joinpath(*package.split(".")[1:])
        for path in sorted(folder.glob("*.py")):
            modules[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return modules


def distribution_name(requirement: str) -> str:
    return canonicalize_name(Requirement(requirement).name)


def declared(*, extras: bool) -> set[str]:
    """The distributions pyproject declares: the dependencies, and with `extras` every extra."""
    project = pyproject()["project"]
    requirements = list(project["dependencies"])
    if extras:
        requirements += [r for group in project["optional-dependencies"].values() for r in group]
    return {distribution_name(requirement) for requirement in requirements}


def dependency_closure(names: set[str]) -> set[str]:
    """The distributions `names` need when installed without extras, as installed here."""
    closure: set[str] = set()
    pending = list(names)
    while pending:
        name = pending.pop()
        if name in closure:
            continue
        closure.add(name)
        for requirement in metadata.requires(name) or []:
            parsed = Requirement(requirement)
            if parsed.marker is None or parsed.marker.evaluate({"extra": ""}):
                pending.append(canonicalize_name(parsed.name))
    return closure


def clean_site_packages(distributions: set[str], folder: Path) -> None:
    """`folder` as the site-packages of a venv holding only `distributions` (links to their
    installed files here) and sact."""
    for name in distributions:
        distribution = metadata.distribution(name)
        for file in distribution.files or []:
            top = file.parts[0]
            source = Path(str(distribution.locate_file(top)))
            if top != ".." and source.exists() and not (folder / top).exists():
                (folder / top).symlink_to(source)
    (folder / "sact").symlink_to(Path(sact.__file__).resolve().parent)


def third_party_imports() -> dict[str, set[str]]:
    """Top-level modules outside the standard library that the installed modules import anywhere
    (at the top, in functions, under TYPE_CHECKING), with the files importing each."""
    found: dict[str, set[str]] = {}
    for path in installed_modules().values():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top != "sact" and top not in sys.stdlib_module_names:
                    found.setdefault(top, set()).add(str(path.relative_to(REPO)))
    return found


def test_every_third_party_import_is_a_declared_dependency() -> None:
    """A module sact imports is declared by sact, not only brought by another dependency (Pillow
    came with matplotlib, huggingface_hub with timm); optional ones in an extra."""
    names = declared(extras=True)
    providers = metadata.packages_distributions()
    undeclared = {
        module: sorted(files)
        for module, files in third_party_imports().items()
        if not {canonicalize_name(p) for p in providers.get(module, [module])} & names
    }
    assert undeclared == {}


IMPORT_EACH = """
import importlib, json, sys
folder, modules = json.loads(sys.argv[1])
sys.path.insert(0, folder)
for module in modules:
    importlib.import_module(module)
print(len(modules))
"""


@pytest.mark.slow
def test_every_installed_module_imports_with_only_the_declared_dependencies(tmp_path) -> None:
    """Each module the wheel installs imports in an interpreter that sees only the standard
    library, sact and the closure of its declared dependencies (what a clean venv of `pip install
    sact` holds: `-I -S`, no site-packages but a folder of links); extras are imported only where
    they are used."""
    clean_site_packages(dependency_closure(declared(extras=False)), tmp_path)
    modules = list(installed_modules())
    imported = subprocess.run(
        [sys.executable, "-I", "-S", "-c", IMPORT_EACH, json.dumps([str(tmp_path), modules])],
        capture_output=True,
        text=True,
    )
    assert imported.returncode == 0, imported.stderr[-3000:]
    assert int(imported.stdout) == len(modules) > 60
