"""Session-wide fixture datasets (small: a few episodes of ~25 frames at 36x64)."""
import pytest

from data_pipelines.fixtures import make_fixture


@pytest.fixture(scope="session")
def fixture_root(tmp_path_factory):
    return tmp_path_factory.mktemp("fixtures")


def _cached(root, name, **kw):
    path = root / name
    if not path.exists():
        make_fixture(out=path, **kw)
    return path


@pytest.fixture(scope="session")
def yam_v3(fixture_root):
    return _cached(fixture_root, "yam_v3", fmt="lerobot-v3.0", embodiment="yam", episodes=6)


@pytest.fixture(scope="session")
def so100_v21(fixture_root):
    return _cached(fixture_root, "so100_v21", fmt="lerobot-v2.1", embodiment="so100", episodes=3)


@pytest.fixture(scope="session")
def droid_rlds(fixture_root):
    return _cached(fixture_root, "droid_rlds", fmt="droid-rlds", embodiment="droid", episodes=4) / "droid/1.0.1"
