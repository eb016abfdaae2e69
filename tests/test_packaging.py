"""What a user installs from a source distribution: the package with its data and type marker, the
licence, and a test suite that runs from the unpacked archive."""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sdist(tmp_path_factory) -> list[str]:
    out = tmp_path_factory.mktemp("sdist")
    build = (
        "import sys; from setuptools import build_meta; "
        f"print(build_meta.build_sdist({str(out)!r}))"
    )
    done = subprocess.run([sys.executable, "-c", build], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    archive = out / done.stdout.strip().splitlines()[-1]
    with tarfile.open(archive) as tar:
        top = tar.getnames()[0].split("/")[0]
        return [name.removeprefix(top + "/") for name in tar.getnames()]


def test_sdist_carries_the_suite_and_what_it_reads(sdist):
    tracked = subprocess.run(["git", "ls-files", "tests", ".ci"], cwd=ROOT, capture_output=True, text=True)
    if tracked.returncode != 0:
        pytest.skip("not a git checkout")
    missing = set(tracked.stdout.split()) - set(sdist)
    assert not missing, f"the sdist lacks {sorted(missing)}: add them to MANIFEST.in"
    assert not [name for name in sdist if "__pycache__" in name or ".hypothesis" in name]


def test_sdist_carries_the_licence_the_metadata_names(sdist):
    assert "LICENSE" in sdist and "Apache License" in (ROOT / "LICENSE").read_text()
    assert "src/hieravid/py.typed" in sdist and "src/hieravid/proxy/weights/model.safetensors" in sdist


def test_the_proxy_files_ship_and_what_training_leaves_beside_them_does_not():
    import fnmatch
    import tomllib

    import hieravid.proxy

    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    patterns = package_data["hieravid.proxy"]
    shipped = [f"weights/{f.name}" for f in sorted(hieravid.proxy.model_dir().iterdir()) if not f.name.startswith(".")]
    assert [f for f in shipped if not any(fnmatch.fnmatch(f, p) for p in patterns)] == []
    left = ["weights/checkpoint.pt", "weights/.lock", "weights/checkpoint.pt.123-abcdef01.tmp"]
    assert [f for f in left if any(fnmatch.fnmatch(f, p) for p in patterns)] == []
