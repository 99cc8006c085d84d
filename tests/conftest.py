import os
import sys

# Tests run on the CPU; multi-device tests start their own subprocesses with fake devices.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


import jax  # noqa: E402
import pytest  # noqa: E402

from train_harness import CACHE  # noqa: E402

# In-process compiles share the trainer subprocesses' persistent XLA cache: a re-run compiles nothing it compiled
# before (compiles under a second are not cached; jax's default).
jax.config.update("jax_compilation_cache_dir", CACHE)


@pytest.fixture(scope="session")
def gcs():
    """A GCS emulator for the whole session (gcsfs caches its client per process, so one server per worker).
    Its variables are set in this process too, so in-process gs:// reads and writes go to it."""
    from gcs_emulator import Emulator
    emulator = Emulator()
    saved = {k: os.environ.get(k) for k in emulator.env}
    os.environ.update(emulator.env)
    yield emulator
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    emulator.stop()
