"""kernels/ installs as fastdd.kernels, never as a top-level module."""
import importlib.util
import pathlib
import subprocess
import sys
import zipfile

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


def test_wheel_maps_kernels_into_fastdd(tmp_path):
    root = pathlib.Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(root)], check=True, capture_output=True)
    (whl,) = tmp_path.glob("fastdd-*.whl")
    names = zipfile.ZipFile(whl).namelist()
    assert "fastdd/kernels/__init__.py" in names
    assert all(n.startswith(("fastdd/", "fastdd-")) for n in names), [n for n in names if not n.startswith("fastdd")]


def test_public_api_names():
    for name in ["load_dataset", "build_model", "train_experts", "evaluate", "select", "SyntheticSet", "ExpertBuffer"]:
        assert hasattr(fastdd, name), name
    assert importlib.util.find_spec("fastdd.augment") is not None
