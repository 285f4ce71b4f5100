"""kernels/ installs as fastdd.kernels, never as a top-level module."""

import importlib.util
import pathlib
import subprocess
import sys
import zipfile

import pytest

import fastdd


def test_kernels_is_a_subpackage_of_fastdd():
    import fastdd.kernels as k

    assert pathlib.Path(k.__file__).parent.name == "kernels"
    assert k.__name__ == "fastdd.kernels"
    assert isinstance(k.triton_available(), bool)


def test_no_top_level_kernels_module_installed(tmp_path):
    # from a folder outside the repository, no module named `kernels` is importable
    code = "import importlib.util, fastdd.kernels; print(importlib.util.find_spec('kernels'))"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "None"


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory) -> list[str]:
    """The file names in a wheel built from this checkout."""
    root, out = pathlib.Path(__file__).resolve().parents[1], tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(root)],
        check=True,
        capture_output=True,
    )
    (whl,) = out.glob("fastdd-*.whl")
    return zipfile.ZipFile(whl).namelist()


def test_wheel_maps_kernels_into_fastdd(wheel_names):
    names = wheel_names
    assert "fastdd/kernels/__init__.py" in names
    assert all(n.startswith(("fastdd/", "fastdd-")) for n in names), [n for n in names if not n.startswith("fastdd")]


def test_public_api_names():
    for name in ["load_dataset", "build_model", "train_experts", "evaluate", "select", "SyntheticSet", "ExpertBuffer"]:
        assert hasattr(fastdd, name), name
    assert importlib.util.find_spec("fastdd.augment") is not None


def test_the_version_is_written_once_and_read_from_the_installed_metadata():
    import importlib.metadata

    import tomllib

    root = pathlib.Path(__file__).resolve().parents[1]
    declared = tomllib.loads((root / "pyproject.toml").read_text())["project"]["version"]
    assert fastdd.__version__ == importlib.metadata.version("fastdd") == declared
    assert declared not in (root / "fastdd" / "__init__.py").read_text()  # not spelled out a second time


def test_wheel_carries_py_typed_and_the_license(wheel_names):
    root, names = pathlib.Path(__file__).resolve().parents[1], wheel_names
    assert "fastdd/py.typed" in names
    assert any(n.endswith("licenses/LICENSE") for n in names), names
    assert "Apache License" in (root / "LICENSE").read_text() and (root / "CHANGELOG.md").exists()


def test_every_module_imports_by_its_path_and_no_public_name_shadows_one():
    """``import fastdd.<path> as m`` binds the module (no public function hides a module of the same name)."""
    import importlib
    import pkgutil

    import fastdd.kernels as kernels

    names = [m.name for m in pkgutil.walk_packages(fastdd.__path__, "fastdd.") if not m.name.endswith("__main__")]
    names += ["fastdd.kernels"] + [m.name for m in pkgutil.walk_packages(kernels.__path__, "fastdd.kernels.")]
    assert {"fastdd.distillation.loop", "fastdd.selection", "fastdd.evaluation", "fastdd.knn_coverage"} <= set(names)
    for name in names:
        module = importlib.import_module(name)
        obj = fastdd
        for part in name.split(".")[1:]:
            obj = getattr(obj, part)
        assert obj is module, f"fastdd.{name.split('.', 1)[1]} is {obj!r}, not the module"
    for public in ("distill", "select", "evaluate", "coverage", "methods"):
        assert callable(getattr(fastdd, public)) and f"fastdd.{public}" not in names


def test_kernels_import_only_torch_triton_and_themselves():
    """The op layer stands alone: no module of kernels/ imports from the rest of fastdd."""
    import ast
    import sys as _sys

    root = pathlib.Path(__file__).resolve().parents[1] / "kernels"
    allowed = {"torch", "triton", *_sys.stdlib_module_names}
    for path in sorted(root.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert node.level in (0, 1), f"{path.name}:{node.lineno} imports from above kernels/"
                if node.level == 0:
                    assert node.module.split(".")[0] in allowed, f"{path.name}:{node.lineno} imports {node.module}"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    assert alias.name.split(".")[0] in allowed, f"{path.name}:{node.lineno} imports {alias.name}"
