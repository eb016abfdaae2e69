"""Shared test set-up: make `tiny_models` importable from every test folder."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import settings  # noqa: E402

from tiny_models import FAMILIES, build_model  # noqa: E402


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    """Each supported model family in turn."""
    return request.param


@pytest.fixture(scope="module")
def model(family):
    """The tiny random-weight model of ``family`` (sdpa)."""
    return build_model(family)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``): tiny models
    gain nothing from a second thread, which only waits when the machine is loaded."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def proxy_dir(tmp_path_factory):
    """The proxy's architecture and processor with fresh weights (576 visual tokens for 32 frames), saved so
    ``from_pretrained`` loads it."""
    from hieravid.proxy.build import build_model, save

    folder = tmp_path_factory.mktemp("proxy")
    save(build_model(seed=0).eval(), folder)
    return folder


@pytest.fixture
def check_a_picture_stopped_mid_write(monkeypatch):
    """A check: ``write()`` writes the picture at ``path`` (alone in its folder); stopped as Ctrl-C would
    stop it halfway through its file (matplotlib's ``Figure.savefig`` writes the first half of what it would
    write, then raises KeyboardInterrupt), a second ``write()`` leaves the first picture as it was, and
    nothing beside it."""
    import io

    from matplotlib.figure import Figure

    real = Figure.savefig

    def halfway(self, fname, *args, **kwargs):
        if isinstance(fname, (str, Path)):
            kwargs.setdefault("format", Path(fname).suffix[1:])
        whole = io.BytesIO()
        real(self, whole, *args, **kwargs)
        half = whole.getvalue()[: len(whole.getvalue()) // 2]
        if hasattr(fname, "write"):
            fname.write(half)
        else:
            Path(fname).write_bytes(half)
        raise KeyboardInterrupt

    def check(write, path: Path) -> None:
        write()
        before = path.read_bytes()
        with monkeypatch.context() as patched:
            patched.setattr(Figure, "savefig", halfway)
            with pytest.raises(KeyboardInterrupt):
                write()
        assert path.read_bytes() == before and [p.name for p in path.parent.iterdir()] == [path.name]

    return check


@pytest.fixture(autouse=True)
def _seeded_torch():
    """Every test starts from the same torch RNG state, so unseeded draws are reproducible."""
    torch.manual_seed(0)


# Hypothesis draws the same examples on every run and machine: a CI run cannot turn red by chance.
settings.register_profile("deterministic", derandomize=True, deadline=None)
settings.load_profile("deterministic")
