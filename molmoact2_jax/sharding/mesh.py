"""Device mesh from config: axes (slice, data, fsdp, tensor); `slice` is the DCN axis of multi-slice runs."""
from __future__ import annotations

import math

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh

MESH_AXES = ("slice", "data", "fsdp", "tensor")
BATCH_AXES = ("slice", "data", "fsdp")  # the global batch is split over every non-tensor axis


def mesh_shape(mesh_cfg, n_devices: int) -> dict[str, int]:
    """Resolves config.mesh (at most one field may be -1 = "the rest") against the device count."""
    sizes = {a: int(mesh_cfg.get(a, 1)) for a in MESH_AXES}
    fill = [a for a, s in sizes.items() if s == -1]
    bad = [a for a, s in sizes.items() if s == 0 or s < -1]
    if bad:
        raise ValueError(f"config.mesh.{bad[0]}={sizes[bad[0]]}: mesh sizes must be positive or -1")
    if len(fill) > 1:
        raise ValueError(f"config.mesh: only one axis may be -1, got {fill}")
    known = math.prod(s for s in sizes.values() if s != -1)
    if fill:
        if n_devices % known:
            raise ValueError(f"config.mesh: {n_devices} devices are not divisible by the fixed axes "
                             f"({known}) to fill mesh.{fill[0]}")
        sizes[fill[0]] = n_devices // known
    total = math.prod(sizes.values())
    if total != n_devices:
        shown = " x ".join(f"{a}={s}" for a, s in sizes.items())
        raise ValueError(f"config.mesh: {shown} = {total} devices, but {n_devices} are available")
    return sizes


def make_mesh(mesh_cfg, devices=None) -> Mesh:
    devices = list(devices if devices is not None else jax.devices())
    sizes = mesh_shape(mesh_cfg, len(devices))
    shape = tuple(sizes[a] for a in MESH_AXES)
    types = (AxisType.Auto,) * len(MESH_AXES)
    if sizes["slice"] > 1 and getattr(devices[0], "slice_index", None) is not None:
        ici = (1,) + shape[1:]
        dcn = (sizes["slice"], 1, 1, 1)
        arr = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices=devices, allow_split_physical_axes=True)
        return Mesh(arr, MESH_AXES, axis_types=types)
    try:
        return jax.make_mesh(shape, MESH_AXES, axis_types=types, devices=devices)
    except NotImplementedError:
        # An axis that is not a product of whole physical axes (e.g. fsdp=128 x tensor=2 on a 16x16 slice):
        # split a physical axis instead of failing; neighbours along each mesh axis stay ICI neighbours.
        arr = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
        return Mesh(arr, MESH_AXES, axis_types=types)


def data_parallel_size(mesh: Mesh) -> int:
    return int(np.prod([mesh.shape[a] for a in BATCH_AXES]))
