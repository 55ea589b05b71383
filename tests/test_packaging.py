"""Packaging: the root folders map onto one import package, for editable and wheel installs."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT

ROOTS = {"edgeopt": "edgeopt", "edgeopt.ir": "ir", "edgeopt.passes": "passes",
         "edgeopt.targets": "targets", "edgeopt.search": "search"}


def _declared() -> tuple[dict[str, str], list[str]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    return config["package-dir"], config["packages"]


def _on_disk() -> set[str]:
    found = set()
    for package, folder in ROOTS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder)
            found.add(".".join([package, *relative.parts]) if relative.parts else package)
    return found


def test_every_package_folder_is_declared() -> None:
    package_dir, packages = _declared()
    assert package_dir == ROOTS
    assert set(packages) == _on_disk()


def test_torch_is_pinned_exactly() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["torch"] == ["torch==2.13.0"]


def test_subpackages_import_from_the_root_folders() -> None:
    import edgeopt.ir
    import edgeopt.passes.cleanup
    import edgeopt.targets

    assert Path(edgeopt.ir.__file__).parent == ROOT / "ir"
    assert Path(edgeopt.passes.cleanup.__file__).parent == ROOT / "passes" / "cleanup"
    assert Path(edgeopt.targets.__file__).parent == ROOT / "targets"


@pytest.mark.slow
def test_wheel_contains_every_module_and_data_file(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(ROOT)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("edgeopt-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for package, folder in ROOTS.items():
        for source in (ROOT / folder).rglob("*.py"):
            relative = source.relative_to(ROOT / folder)
            assert "/".join([*package.split("."), *relative.parts]) in names
    assert any(n.startswith("edgeopt/targets/devices/") and n.endswith(".toml") for n in names)
