"""Data parallelism over a ``jax.sharding.Mesh``: the sequence batch is split across
the mesh's devices, parameters are replicated, and ``jax.jit`` (GSPMD) inserts the
collectives (sums of expected statistics, of log-likelihoods). Results equal one
device's to rounding (tests/test_sharding.py, 1, 2, 4 and 8 CPU devices).

Every function that takes ``mesh=`` (``probseq.score`` / ``log_prob`` /
``step_log_probs``, ``probseq.compare``, ``probseq.fit_em``) pads the batch with fully
masked rows up to a multiple of the device count, so that every device gets whole
sequences and a batch of any size works; padded rows contribute nothing (a masked step
has log-likelihood 0 and no expected counts) and are dropped from the results.

The mesh must use ``AxisType.Auto`` axes (``jax.make_mesh(shape, names,
axis_types=(AxisType.Auto,) * n)``, the default before jax 0.7): with Explicit axes,
scan carries and embedding gathers need per-operation sharding annotations.

Example:
    >>> import jax, numpy as np, probseq
    >>> from jax.sharding import AxisType
    >>> mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(AxisType.Auto,))
    >>> hmm = probseq.CategoricalHMM(2, 3)
    >>> probseq.log_prob(hmm, hmm.init(jax.random.key(0)), np.zeros((5, 4), int), mesh=mesh).shape
    (5,)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["check_mesh", "batch_sharding", "replicate", "shard_batch", "mesh_of"]


def check_mesh(mesh) -> Mesh | None:
    """``mesh`` itself if it is a usable Mesh (or None); a ValueError that teaches
    otherwise."""
    if mesh is None:
        return None
    if not isinstance(mesh, Mesh):
        raise ValueError(
            f"mesh must be a jax.sharding.Mesh (e.g. jax.make_mesh((n,), ('data',), "
            f"axis_types=(jax.sharding.AxisType.Auto,))); got {type(mesh).__name__}."
        )
    types = getattr(mesh, "axis_types", None) or ()
    auto = getattr(jax.sharding, "AxisType", None)
    if auto is not None and any(t != auto.Auto for t in types):
        raise ValueError(
            f"mesh axes must be AxisType.Auto; got {tuple(str(t) for t in types)}. Build it "
            "with jax.make_mesh(shape, names, axis_types=(jax.sharding.AxisType.Auto,) * "
            "len(names))."
        )
    return mesh


def mesh_of(devices) -> Mesh:
    """A one-axis ("data") Auto mesh over ``devices`` ("all", an int count of the
    first devices, or a list of devices)."""
    if isinstance(devices, str):
        if devices != "all":
            raise ValueError(f"devices must be 'all', a positive int or a list; got {devices!r}")
        devices = jax.devices()
    elif isinstance(devices, int) and not isinstance(devices, bool):
        if not 1 <= devices <= jax.device_count():
            raise ValueError(
                f"devices={devices} but this process sees {jax.device_count()} device(s)."
            )
        devices = jax.devices()[:devices]
    devices = list(devices)
    kwargs = {}
    if hasattr(jax.sharding, "AxisType"):
        kwargs["axis_types"] = (jax.sharding.AxisType.Auto,)
    return jax.make_mesh((len(devices),), ("data",), devices=devices, **kwargs)


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Axis 0 split over every axis of ``mesh``, the rest whole."""
    return NamedSharding(mesh, PartitionSpec(tuple(mesh.axis_names), *([None] * (ndim - 1))))


def replicate(mesh: Mesh, tree):
    """Every leaf of ``tree`` on every device of ``mesh``."""
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def shard_batch(mesh: Mesh, x, mask, *others):
    """Pad the batch (axis 0 of ``x``, ``mask`` and every leaf of each non-None pytree
    in ``others``) to a multiple of ``mesh.size`` and split it over the mesh. Padded
    rows repeat the last sequence (valid values everywhere) with an all-False mask.

    Returns (x, mask, *others) placed on the mesh; slice results with ``[:B]``.
    """
    pad = -x.shape[0] % mesh.size

    def place(z):
        z = jnp.asarray(z)
        if pad:
            z = jnp.concatenate([z, jnp.repeat(z[-1:], pad, axis=0)])
        return jax.device_put(z, batch_sharding(mesh, z.ndim))

    mask = jnp.asarray(mask, bool)
    if pad:
        mask = jnp.concatenate([mask, jnp.zeros((pad,) + mask.shape[1:], bool)])
    mask = jax.device_put(mask, batch_sharding(mesh, mask.ndim))
    return (place(x), mask, *(None if o is None else jax.tree.map(place, o) for o in others))
