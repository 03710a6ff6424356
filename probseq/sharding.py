"""Data parallelism over a ``jax.sharding.Mesh``: the sequence batch is split across
the mesh's devices, parameters are replicated, and ``jax.jit`` (GSPMD) inserts the
collectives (sums of expected statistics, of log-likelihoods). Results equal one
device's to rounding (tests/test_sharding.py, 1, 2, 4 and 8 CPU devices).

Every function that takes ``mesh=`` (``probseq.score`` / ``log_prob`` /
``step_log_probs``, ``probseq.compare``, ``probseq.fit_em``) pads the batch with fully
masked rows up to a multiple of the device count, so that every device gets whole
sequences and a batch of any size works; padded rows contribute nothing (a masked step
has log-likelihood 0 and no expected counts) and are dropped from the results.

**Several processes** (``jax.distributed``, one process per host or per accelerator):
after ``jax.distributed.initialize(...)``, ``jax.devices()`` lists every process's
devices and ``mesh_of("all")`` spans them all. Each process then passes *its own share*
of the sequences (:func:`process_split` cuts a dataset the same way on every process)
to the same call with the same ``mesh``:

* ``log_prob`` / ``score`` / ``step_log_probs`` return the results of this process's
  sequences;
* ``fit_em`` sums the expected statistics of every process's sequences (each share
  stays on its own process's devices): one model, the same on every process;
* ``fit_sgd`` gathers the shares (every process then holds the whole training set,
  in share order, as the single-process fit holds it), so the shuffles and the
  result equal a one-process fit of the concatenated shares; its checkpoints are
  written by process 0 only (``checkpoint_dir`` must be a directory every process
  reads, e.g. on a shared file system) and every process resumes from them.
* ``probseq.compare`` scores each process's share: its table is that share's, not
  the whole data set's (sum the per-sequence ``log_prob`` across processes instead).

Shares may differ in length and in their longest sequence: each is padded (time to
the longest of all, rows with fully masked sequences to a multiple of its devices),
so every device gets whole sequences. On CPU, cross-process collectives need
``jax.config.update("jax_cpu_collectives_implementation", "gloo")`` (the default
in jax 0.10) before JAX starts computing; probseq changes no JAX setting itself.

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
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = [
    "check_mesh",
    "batch_sharding",
    "replicate",
    "shard_batch",
    "mesh_of",
    "is_multiprocess",
    "process_split",
    "local_rows",
    "gather_batch",
]


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


def is_multiprocess(mesh) -> bool:
    """Whether ``mesh`` spans the devices of more than one process."""
    return mesh is not None and len({d.process_index for d in mesh.devices.flat}) > 1


def process_split(data, *, process_index: int | None = None, process_count: int | None = None):
    """This process's share of a dataset: contiguous blocks, in order, one per process.

    Process p of P gets items ``[p * n // P, (p + 1) * n // P)`` of the ``n`` items
    (sequences), so shares differ by at most one item and their concatenation in
    process order is ``data`` again. Every process calls it with the same ``data``
    (or reads only its own block: the bounds depend on ``n``, ``p`` and ``P`` only).

    Args:
        data: a list of sequences, or an array (or a tuple of arrays, e.g.
            ``(x, mask)``) whose axis 0 indexes sequences.
        process_index, process_count: default ``jax.process_index()`` and
            ``jax.process_count()``.

    Returns:
        The same kind of object holding this process's sequences.

    Example:
        >>> process_split(list(range(5)), process_index=1, process_count=2)
        [2, 3, 4]
    """
    p = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    if not (isinstance(count, int) and count >= 1 and isinstance(p, int) and 0 <= p < count):
        raise ValueError(
            f"process_split needs 0 <= process_index < process_count; got "
            f"process_index={p!r}, process_count={count!r}."
        )
    items = data if isinstance(data, tuple) else (data,)
    sizes = {len(a) for a in items if a is not None}
    if len(sizes) != 1:
        raise ValueError(f"process_split: the arrays hold different numbers of rows {sizes}.")
    n = sizes.pop()
    if n < count:
        raise ValueError(
            f"process_split: {n} sequence(s) cannot give each of {count} processes one."
        )
    lo, hi = p * n // count, (p + 1) * n // count
    out = tuple(None if a is None else a[lo:hi] for a in items)
    return out if isinstance(data, tuple) else out[0]


def _local_devices(mesh: Mesh) -> int:
    return sum(d.process_index == jax.process_index() for d in mesh.devices.flat)


def _allgather(a: np.ndarray) -> np.ndarray:
    """(P, *a.shape): every process's ``a`` (same shape everywhere)."""
    return np.asarray(multihost_utils.process_allgather(np.asarray(a), tiled=False))


def _pad(a: np.ndarray, rows: int, steps: int, fill_mask: bool = False) -> np.ndarray:
    """``a`` (B, T, ...) padded to (rows, steps, ...): new steps repeat the last step,
    new rows the last row (valid values everywhere); a mask is padded with False."""
    a = np.asarray(a)
    widths = [(0, rows - a.shape[0]), (0, steps - a.shape[1])] + [(0, 0)] * (a.ndim - 2)
    if fill_mask:
        return np.pad(a, widths, constant_values=False)
    return np.pad(a, widths, mode="edge")


def replicate(mesh: Mesh, tree):
    """Every leaf of ``tree`` on every device of ``mesh`` (with several processes,
    every process must pass the same values)."""
    replicated = NamedSharding(mesh, PartitionSpec())
    if not is_multiprocess(mesh):
        return jax.device_put(tree, replicated)

    def place(a):
        if isinstance(a, jax.Array) and a.sharding == replicated:
            return a
        if jax.dtypes.issubdtype(getattr(a, "dtype", None), jax.dtypes.prng_key):
            # a typed PRNG key has no NumPy form: place its data, then wrap it again
            return jax.random.wrap_key_data(
                place(jax.random.key_data(a)), impl=jax.random.key_impl(a)
            )
        a = np.asarray(a)
        return jax.make_array_from_callback(a.shape, replicated, lambda index: a[index])

    return jax.tree.map(place, tree)


def shard_batch(mesh: Mesh, x, mask, *others):
    """Pad the batch (axis 0 of ``x``, ``mask`` and every leaf of each non-None pytree
    in ``others``) to a multiple of ``mesh.size`` and split it over the mesh. Padded
    rows repeat the last sequence (valid values everywhere) with an all-False mask.

    With a mesh over several processes, ``x``, ``mask`` and ``others`` are this
    process's share (B_p rows, T_p steps): every share is padded to the longest T and
    to the same number of rows (a multiple of its devices), and the global batch
    holds the shares in process order; :func:`local_rows` takes a process's rows
    back out of a result.

    Returns (x, mask, *others) placed on the mesh; slice results with ``[:B]`` (one
    process) or :func:`local_rows` (several).
    """
    if is_multiprocess(mesh):
        return _shard_process_local(mesh, x, mask, *others)
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


def _shard_process_local(mesh: Mesh, x, mask, *others):
    mask = np.asarray(mask, bool)
    sizes = _allgather(np.array(mask.shape, np.int64))  # (P, 2): rows, steps
    local = _local_devices(mesh)
    rows = -(-int(sizes[:, 0].max()) // local) * local
    steps = int(sizes[:, 1].max())
    num_processes = mesh.size // local

    def place(z, is_mask=False, timed=True):
        z = np.asarray(z)
        if timed:
            z = _pad(z, rows, steps, is_mask)
        else:  # no time axis (e.g. initial states (B, ...)): rows only
            z = np.concatenate([z, np.repeat(z[-1:], rows - z.shape[0], axis=0)])
        shape = (rows * num_processes,) + z.shape[1:]
        return jax.make_array_from_process_local_data(batch_sharding(mesh, z.ndim), z, shape)

    placed = []
    for o in others:
        if o is None:
            placed.append(None)
            continue
        timed = all(np.ndim(a) >= 2 and np.shape(a)[1] == mask.shape[1] for a in jax.tree.leaves(o))
        placed.append(jax.tree.map(lambda a, t=timed: place(a, timed=t), o))
    return (place(x), place(mask, is_mask=True), *placed)


def _process_block(mesh: Mesh, global_rows: int) -> tuple[int, int]:
    """[lo, hi): the rows of a batch-sharded (``batch_sharding``) array that live on
    this process's devices."""
    indices = batch_sharding(mesh, 1).addressable_devices_indices_map((global_rows,)).values()
    return min(i[0].start or 0 for i in indices), max(i[0].stop or global_rows for i in indices)


def local_rows(mesh: Mesh, tree, num_rows: int):
    """The first ``num_rows`` rows of this process's block of results computed on a
    batch from :func:`shard_batch` over several processes, as NumPy arrays."""

    def take(a):
        lo, hi = _process_block(mesh, a.shape[0])
        block = np.empty((hi - lo,) + a.shape[1:], a.dtype)
        filled = np.zeros(hi - lo, bool)
        for shard in a.addressable_shards:
            if any(i != slice(None) for i in shard.index[1:]):
                continue  # split along another axis: take the gathered value below
            start, stop, _ = shard.index[0].indices(a.shape[0])
            s, e = max(start, lo), min(stop, hi)
            if s < e:
                block[s - lo : e - lo] = np.asarray(shard.data)[s - start : e - start]
                filled[s - lo : e - lo] = True
        if not filled.all():  # an unusual layout: every process gets the whole value
            block = np.asarray(multihost_utils.process_allgather(a, tiled=True))[lo:hi]
        return block[:num_rows]

    return jax.tree.map(take, tree)


def gather_batch(mesh: Mesh, *arrays):
    """Every process's share, concatenated in process order, on every process.

    Args:
        arrays: this process's (B_p, T_p, ...) arrays, the first of them a (B_p, T_p)
            mask (None entries pass through).

    Returns:
        NumPy arrays (sum of B_p, max of T_p, ...): padding steps masked out.
    """
    mask = np.asarray(arrays[0], bool)
    sizes = _allgather(np.array(mask.shape, np.int64))
    rows, steps = int(sizes[:, 0].max()), int(sizes[:, 1].max())
    out = []
    for i, a in enumerate(arrays):
        if a is None:
            out.append(None)
            continue
        everyone = _allgather(_pad(a, rows, steps, fill_mask=i == 0))
        out.append(np.concatenate([everyone[p, : sizes[p, 0]] for p in range(len(sizes))]))
    return tuple(out)
