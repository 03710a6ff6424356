r"""Log-likelihoods of posterior draws as ArviZ data: the only module that calls arviz.

:func:`to_inference_data` evaluates a model's log-likelihood of some sequences under
every posterior draw of its parameters and returns an ArviZ object with a
``log_likelihood`` group:

* ``x`` (chain, draw, sequence): :math:`\log p(x^{(i)} \mid \theta^{(c, d)})`, the
  total over each sequence's valid steps;
* ``x_step`` (chain, draw, sequence, time): the per-step terms
  :math:`\log p(x_t \mid x_{<t}, \theta)`, 0 on padded steps (``pointwise="step"``
  or ``"both"``).

:func:`add_log_likelihood` adds the same group to an object from
``arviz.from_numpyro``. Parameters are either one point estimate (a pytree shaped
like ``model.init(key)``: chain = draw = 1) or the same pytree with leading
(chain, draw) axes on every leaf, e.g. built from
``mcmc.get_samples(group_by_chain=True)``.

Which cross-validation the group supports:
    ``az.loo`` / ``az.compare`` leave out one *observation* of the group at a time.
    On ``x`` that is one whole sequence, which is valid when the sequences are
    independent (many short series, documents, patients). It is NOT valid on
    ``x_step``: the time steps of one series are dependent, and leaving out step t
    while conditioning on steps after it answers no forecasting question. For one
    long series score held-out future data (:func:`probseq.compare.compare`) or use
    leave-future-out cross-validation. ``az.loo`` needs posterior draws: on a point
    estimate (one draw) it raises.

ArviZ versions:
    arviz 0.x (tested: 0.23) returns :class:`arviz.InferenceData`. arviz 1.x
    (Python >= 3.12) replaced it by xarray's ``DataTree``; :func:`_to_arviz` is the one
    function that knows the difference, and its 1.x branch is written to that API but
    untested here.

Example:
    >>> import jax, probseq
    >>> from probseq.inference_data import to_inference_data
    >>> hmm = probseq.CategoricalHMM(2, 3)
    >>> params = hmm.init(jax.random.key(0))
    >>> x = probseq.sample(hmm, params, jax.random.key(1), 20, num_samples=4)
    >>> idata = to_inference_data(hmm, params, x, pointwise="both")
    >>> idata.log_likelihood["x_step"].shape
    (1, 1, 4, 20)
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from probseq import validation
from probseq.core import as_batch, batch_step_log_probs
from probseq.scan import pairwise_sum

__all__ = ["to_inference_data", "add_log_likelihood"]

POINTWISE = ("sequence", "step", "both")

#: Draws evaluated together (vectorised) inside the ``lax.map`` over draws: bounds the
#: memory to this many copies of one draw's activations.
_DRAWS_PER_MAP_STEP = 16


# ------------------------------------------------------------------ parameter draws
def _sample_axes(model, params, sample_dims) -> int:
    """How many leading sample axes (0: point estimate, 1: draw, 2: chain, draw) every
    leaf of ``params`` carries, checked against the model's parameter template."""
    if sample_dims is not None and sample_dims not in (0, 1, 2):
        raise ValueError(
            f"sample_dims must be None (detect), 0 (a point estimate), 1 (draw,) or "
            f"2 (chain, draw); got {sample_dims=}."
        )
    template = jax.eval_shape(lambda: model.init(jax.random.key(0)))
    if jax.tree.structure(params) != jax.tree.structure(template):
        raise ValueError(
            f"params does not have the structure of {model!r}'s parameters "
            f"({jax.tree.structure(template)}); got {jax.tree.structure(params)}. Pass one "
            "point estimate like model.init(key), or that pytree with leading (chain, draw) "
            "axes on every leaf."
        )
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    leaves = [np.shape(a) for a in jax.tree.leaves(params)]
    wants = [tuple(w.shape) for w in jax.tree.leaves(template)]
    extras = {len(s) - len(w) for s, w in zip(leaves, wants, strict=True)}
    extra = extras.pop() if len(extras) == 1 else None
    ok = extra is not None and extra in ((0, 1, 2) if sample_dims is None else (sample_dims,))
    if ok:
        leads = {s[:extra] for s in leaves}
        ok = len(leads) == 1 and all(s[extra:] == w for s, w in zip(leaves, wants, strict=True))
    if not ok:
        listing = "; ".join(
            f"params{p} {s} (one draw: {w})"
            for p, s, w in list(zip(paths, leaves, wants, strict=True))[:4]
        )
        expect = "0, 1 or 2" if sample_dims is None else str(sample_dims)
        raise ValueError(
            f"params leaves must all carry the same {expect} leading sample axes "
            f"((chain, draw), (draw,) or none) in front of {model!r}'s parameter shapes; "
            f"got {listing}."
        )
    return extra


def _draw_layout(params, extra) -> tuple[int, int]:
    lead = np.shape(jax.tree.leaves(params)[0])[:extra]
    return ((1, 1), (1,) + lead, lead)[extra]


def _check_draw_values(params, chains, draws):
    """NaN or +inf in any draw (-inf is a structural zero of an HMM: allowed)."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        a = np.asarray(leaf).reshape((chains, draws, -1))
        bad = np.isnan(a) | np.isposinf(a)
        if bad.any():
            c, d, _ = (int(i) for i in np.argwhere(bad)[0])
            raise ValueError(
                f"params{jax.tree_util.keystr(path)} has a non-finite value (NaN or +inf) "
                f"in chain {c}, draw {d}."
            )


@functools.partial(jax.jit, static_argnums=(0, 5))
def _draw_log_probs(model, flat_params, x, mask, inputs, draws_per_step):
    """(S, B) totals and (S, B, T) per-step terms for S stacked parameter draws."""

    def one(p):
        return batch_step_log_probs(model, p, x, mask, inputs)[0]

    lps = jax.lax.map(one, flat_params, batch_size=draws_per_step)
    return pairwise_sum(lps, axis=-1), lps


def _log_likelihood(model, params, data, mask, inputs, sample_dims, pointwise, var_name):
    """The log_likelihood Dataset, (chain, draw), and the validated batch."""
    validation.check_choice("pointwise", pointwise, POINTWISE)
    if not isinstance(var_name, str) or not var_name:
        raise ValueError(f"var_name must be a non-empty string; got {var_name!r}.")
    extra = _sample_axes(model, params, sample_dims)
    chains, draws = _draw_layout(params, extra)
    if chains * draws == 0:
        raise ValueError(f"params has no draws: (chain, draw) = ({chains}, {draws}).")
    flat = jax.tree.map(
        lambda a: jnp.reshape(jnp.asarray(a), (chains * draws,) + jnp.shape(a)[extra:]), params
    )
    # Data (and the first draw's structure and values) validated once, eagerly.
    batch = as_batch(model, jax.tree.map(lambda a: a[0], flat), data, mask, inputs)
    _check_draw_values(params, chains, draws)
    s = chains * draws
    totals, steps = _draw_log_probs(
        model, flat, batch.x, batch.mask, batch.inputs, min(s, _DRAWS_PER_MAP_STEP)
    )
    num_seq, num_t = batch.mask.shape
    variables = {}
    if pointwise in ("sequence", "both"):
        variables[var_name] = (
            ("chain", "draw", "sequence"),
            np.asarray(totals, np.float64).reshape(chains, draws, num_seq),
        )
    if pointwise in ("step", "both"):
        variables[f"{var_name}_step"] = (
            ("chain", "draw", "sequence", "time"),
            np.asarray(steps, np.float64).reshape(chains, draws, num_seq, num_t),
        )
    coords = {
        "chain": np.arange(chains),
        "draw": np.arange(draws),
        "sequence": np.arange(num_seq),
        "time": np.arange(num_t),
    }
    return _dataset(variables, coords), (chains, draws), batch


# ----------------------------------------------------------------------- datasets
def _dataset(variables: dict, coords: dict):
    """An xarray Dataset with only the coordinates its variables use."""
    import xarray as xr

    used = {d for dims, _ in variables.values() for d in dims}
    return xr.Dataset(variables, coords={k: v for k, v in coords.items() if k in used})


def _posterior_dataset(posterior, chains, draws):
    if not isinstance(posterior, dict) or not posterior:
        raise ValueError(
            "posterior must be a non-empty dict {name: array with leading (chain, draw) axes}; "
            f"got {type(posterior).__name__}."
        )
    variables = {}
    for name, value in posterior.items():
        a = np.asarray(value)
        if a.shape[:2] != (chains, draws):
            raise ValueError(
                f"posterior[{name!r}] has shape {a.shape}, but params have (chain, draw) = "
                f"({chains}, {draws}); every posterior array needs those leading axes."
            )
        dims = ("chain", "draw") + tuple(f"{name}_dim_{i}" for i in range(a.ndim - 2))
        variables[str(name)] = (dims, a)
    coords = {"chain": np.arange(chains), "draw": np.arange(draws)}
    return _dataset(variables, coords)


def _observed_dataset(batch, var_name):
    x = np.asarray(batch.x)
    mask = np.asarray(batch.mask)
    dims = ("sequence", "time") + tuple(f"{var_name}_dim_{i}" for i in range(x.ndim - 2))
    variables = {var_name: (dims, x)}
    if not mask.all():
        variables[f"{var_name}_mask"] = (("sequence", "time"), mask)
    return _dataset(variables, {"sequence": np.arange(x.shape[0]), "time": np.arange(x.shape[1])})


def _to_arviz(groups: dict, base=None):
    """The only function that knows the arviz major version.

    Returns a new arviz object holding ``base``'s groups (if given) with ``groups``
    (name -> xarray Dataset) merged in: a variable of the same name is replaced, the
    group's other variables kept. ``base`` itself is not modified.
    """
    import arviz as az

    def merge(old, new):
        old = old.drop_vars([v for v in new.data_vars if v in old.data_vars])
        unused = [
            c for c in old.coords if c not in {d for v in old.data_vars.values() for d in v.dims}
        ]
        return old.drop_vars(unused).merge(new)

    if int(az.__version__.split(".")[0]) < 1:
        # arviz 0.x: InferenceData, a container of xarray Datasets.
        existing = {} if base is None else {g: base[g] for g in base.groups()}
        for name, ds in groups.items():
            existing[name] = merge(existing[name], ds) if name in existing else ds
        attrs = getattr(base, "attrs", None) if base is not None else None
        return az.InferenceData(attrs=attrs, **existing)

    # arviz 1.x: xarray's DataTree with one child node per group (not tested here:
    # arviz 1.x needs Python >= 3.12).
    import xarray as xr

    existing = {} if base is None else {k: base[k].to_dataset() for k in base.children}
    for name, ds in groups.items():
        existing[name] = merge(existing[name], ds) if name in existing else ds
    tree = xr.DataTree.from_dict(existing)
    if base is not None:
        tree.attrs.update(base.attrs)
    return tree


# --------------------------------------------------------------------- public API
def to_inference_data(
    model,
    params,
    data,
    mask=None,
    *,
    inputs=None,
    sample_dims: int | None = None,
    posterior: dict | None = None,
    pointwise: str = "sequence",
    observed_data: bool = True,
    var_name: str = "x",
):
    """An ArviZ object with the log-likelihood of ``data`` under each parameter draw.

    LOO (``az.loo``, ``az.compare``) on the result leaves out one sequence at a time:
    valid across independent sequences, not across the time steps of one series
    (use held-out log-likelihood or leave-future-out there). On a point estimate
    ``az.loo`` raises: it needs posterior draws.

    Args:
        model: any probseq model.
        params: one point estimate (a pytree shaped like ``model.init(key)``; stored
            as chain = draw = 1), or that pytree with leading (chain, draw) axes on
            every leaf (e.g. from ``mcmc.get_samples(group_by_chain=True)``), or a
            leading (draw,) axis (one chain).
        data: one sequence, a padded batch with ``mask``, or a list of unequal-length
            sequences (as :func:`probseq.score`). A single sequence gets sequence = 1.
        mask: optional (B, T) boolean prefix mask.
        inputs: per-step conditioning inputs for conditional models.
        sample_dims: leading sample axes on every params leaf: 0, 1 or 2; None
            detects them by comparing leaf ranks with the model's parameter shapes.
        posterior: optional dict name -> array with leading (chain, draw) axes,
            stored as the ``posterior`` group (e.g. the numpyro samples).
        pointwise: ``"sequence"`` stores ``x`` (chain, draw, sequence), the total per
            sequence; ``"step"`` stores ``x_step`` (chain, draw, sequence, time), 0 on
            padded steps; ``"both"`` stores both (then pass ``var_name="x"`` to
            ``az.loo``, which refuses to pick one of two variables).
        observed_data: also store the padded data as the ``observed_data`` group
            (``x`` (sequence, time, ...), plus ``x_mask`` when sequences are ragged).
        var_name: the name of the observed variable (``"x"``); the per-step variable
            is ``var_name + "_step"``. Match the observed site's name of a numpyro
            model to line up with ``az.from_numpyro``.

    Returns:
        ``arviz.InferenceData`` (arviz 0.x; an xarray ``DataTree`` on arviz 1.x).

    Raises:
        ValueError: params that are neither one draw nor draws with the same leading
            axes on every leaf, non-finite values in a draw, bad data, a bad option.

    Example:
        >>> samples = mcmc.get_samples(group_by_chain=True)  # doctest: +SKIP
        >>> draws = probseq.HMMParams(jnp.log(samples["pi"]), jnp.log(samples["A"]),
        ...                           {"logits": jnp.log(samples["B"])})  # doctest: +SKIP
        >>> idata = to_inference_data(hmm, draws, x, posterior=samples)  # doctest: +SKIP
        >>> az.loo(idata)  # independent sequences  # doctest: +SKIP
    """
    log_lik, (chains, draws), batch = _log_likelihood(
        model, params, data, mask, inputs, sample_dims, pointwise, var_name
    )
    groups = {}
    if posterior is not None:
        groups["posterior"] = _posterior_dataset(posterior, chains, draws)
    groups["log_likelihood"] = log_lik
    if observed_data:
        groups["observed_data"] = _observed_dataset(batch, var_name)
    return _to_arviz(groups)


def add_log_likelihood(
    idata,
    model,
    params,
    data,
    mask=None,
    *,
    inputs=None,
    sample_dims: int | None = None,
    pointwise: str = "sequence",
    var_name: str = "x",
):
    """A copy of ``idata`` with probseq's log-likelihood of ``data`` in its
    ``log_likelihood`` group.

    Use it on ``az.from_numpyro(mcmc)``: ``params`` are the same draws rebuilt as the
    model's parameter pytree with leading (chain, draw) axes. A variable already named
    ``var_name`` (numpyro's own pointwise log-likelihood of the observed site) is
    replaced; other variables are kept. ``idata`` is not modified. The same caveat on
    LOO as :func:`to_inference_data` holds: valid across independent sequences only.

    Args:
        idata: an arviz object with a ``posterior`` group whose (chain, draw) sizes
            match ``params``.
        model, params, data, mask, inputs, sample_dims, pointwise, var_name: as for
            :func:`to_inference_data`.

    Returns:
        A new arviz object.

    Example:
        >>> idata = add_log_likelihood(az.from_numpyro(mcmc), hmm, draws, x)  # doctest: +SKIP
    """
    log_lik, (chains, draws), _ = _log_likelihood(
        model, params, data, mask, inputs, sample_dims, pointwise, var_name
    )
    if "posterior" in idata:
        sizes = dict(idata["posterior"].sizes)
        have = (sizes.get("chain"), sizes.get("draw"))
        if have != (chains, draws):
            raise ValueError(
                f"idata's posterior has (chain, draw) = {have}, but params have "
                f"({chains}, {draws}); pass the same draws that built idata."
            )
    return _to_arviz({"log_likelihood": log_lik}, base=idata)
