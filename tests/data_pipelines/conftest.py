"""Session-wide fixture datasets (small: a few episodes of ~25 frames at 36x64)."""
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
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


@pytest.fixture
def so100_nan_episode(tmp_path, so100_v21):
    """so100_v21 with a NaN in episode 1's actions (frame 3, dim 0): the episode a conversion must skip or refuse."""
    root = tmp_path / "nan"
    shutil.copytree(so100_v21, root)
    path = root / "data/chunk-000/episode_000001.parquet"
    t = pq.read_table(path)
    a = np.stack(t["action"].to_numpy(zero_copy_only=False)).astype(np.float32)
    a[3, 0] = np.nan
    pq.write_table(t.set_column(t.column_names.index("action"), "action", pa.array(list(a))), path)
    return root
