r"""Held-out likelihood tables: several models scored on the same sequences.

For each model :func:`compare` computes the per-sequence log-likelihoods
:math:`\ell_{m,i} = \log p_m(x^{(i)})` with one :func:`probseq.score` call and
reports the total, the per-symbol cross-entropy in nats and bits, the perplexity
(token data), and the paired difference to the best model

.. math::  \Delta_m = \sum_i d_i, \quad d_i = \ell_{\mathrm{best}, i} - \ell_{m, i},
           \qquad \mathrm{SE}(\Delta_m) = \sqrt{n \, \mathrm{Var}(d)}

(ddof 0, as ``arviz.compare`` computes ``dse``). The pairing matters: two models
scored on the same sequences share most of their per-sequence variation, so the
SE of the difference is far smaller than either total's SE. Sequences must be
independent for that SE to mean anything (for one long series, cut it into
held-out chunks and read the SE as a rough guide only).

Example:
    >>> import jax, probseq
    >>> from probseq.compare import compare
    >>> hmm = probseq.CategoricalHMM(2, 4)
    >>> gru = probseq.GRU(vocab_size=4, hidden_size=8)
    >>> x = probseq.sample(hmm, hmm.init(jax.random.key(0)), jax.random.key(1), 30,
    ...                    num_samples=5)
    >>> table = compare({"hmm": (hmm, hmm.init(jax.random.key(0))),
    ...                  "gru": (gru, gru.init(jax.random.key(2)))}, x)
    >>> table.best.name
    'hmm'
    >>> print(table)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import NamedTuple

import jax
import numpy as np
from tqdm.auto import tqdm

from probseq import validation
from probseq.core import SequenceModel, score
from probseq.distribution import step_support

__all__ = ["Comparison", "ComparisonRow", "compare", "per_step_log_lik", "scored_steps"]

_LN2 = math.log(2.0)


class ComparisonRow(NamedTuple):
    """One model's line of a :class:`Comparison` (log-likelihoods in nats).

    name: the key the model was given under.
    rank: 0 for the best model (highest log-likelihood), then 1, 2, ... (as arviz).
    log_likelihood: total log-likelihood of all sequences.
    num_sequences: number of sequences scored.
    num_symbols: number of valid (unmasked) steps scored.
    nats_per_symbol: -log_likelihood / num_symbols (per step for real-valued data).
    bits_per_symbol: nats_per_symbol / ln 2.
    perplexity: exp(nats_per_symbol) for token data; NaN for real-valued data.
    elpd_diff: log_likelihood of the best model minus this one's (>= 0; 0 for the best).
    dse: standard error of elpd_diff over sequences, sqrt(n * var(d_i)) as in
        ``arviz.compare``; 0 for the best, NaN with fewer than 2 sequences.
    diff_bits_per_symbol: elpd_diff / (num_symbols * ln 2).
    se_bits_per_symbol: dse / (num_symbols * ln 2).
    """

    name: str
    rank: int
    log_likelihood: float
    num_sequences: int
    num_symbols: int
    nats_per_symbol: float
    bits_per_symbol: float
    perplexity: float
    elpd_diff: float
    dse: float
    diff_bits_per_symbol: float
    se_bits_per_symbol: float


@dataclasses.dataclass(frozen=True)
class Comparison:
    """The result of :func:`compare`.

    Attributes:
        rows: one :class:`ComparisonRow` per model, best first.
        kind: ``"tokens"`` (categorical data: probabilities, perplexity) or ``"real"``
            (densities: nats per step, no perplexity).
        pointwise: model name -> per-sequence log-likelihoods (NumPy float64, (B,)).

    Example:
        >>> table["gru"].bits_per_symbol  # doctest: +SKIP
        1.94...
        >>> table.to_dataframe()  # needs pandas  # doctest: +SKIP
    """

    rows: tuple[ComparisonRow, ...]
    kind: str
    pointwise: dict[str, np.ndarray]

    @property
    def best(self) -> ComparisonRow:
        """The row of the model with the highest held-out log-likelihood."""
        return self.rows[0]

    @property
    def names(self) -> tuple[str, ...]:
        """Model names, best first."""
        return tuple(r.name for r in self.rows)

    def __getitem__(self, name: str) -> ComparisonRow:
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(f"no model named {name!r} in this comparison; models: {list(self.names)}")

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self):
        return iter(self.rows)

    def to_dict(self) -> dict[str, list]:
        """Column name -> list of values (best first), for plotting and JSON.

        Every :class:`ComparisonRow` field is a column; ``perplexity`` holds NaN for
        real-valued data (``json.dumps`` writes it as ``NaN``).
        """
        return {field: [getattr(r, field) for r in self.rows] for field in ComparisonRow._fields}

    def to_dataframe(self):
        """A pandas DataFrame indexed by model name, best first (needs pandas)."""
        try:
            import pandas as pd
        except ModuleNotFoundError as e:
            raise ModuleNotFoundError(
                "Comparison.to_dataframe needs pandas, which is not installed; "
                "`pip install pandas`, or use Comparison.to_dict() instead."
            ) from e
        columns = self.to_dict()
        return pd.DataFrame(columns).set_index("name")

    def __str__(self) -> str:
        unit = "symbol" if self.kind == "tokens" else "step"
        first = self.rows[0]
        header = [
            ("rank", lambda r: f"{r.rank}"),
            ("model", lambda r: r.name),
            ("log_lik", lambda r: f"{r.log_likelihood:.2f}"),
            (f"nats/{unit}", lambda r: f"{r.nats_per_symbol:.4f}"),
            (f"bits/{unit}", lambda r: f"{r.bits_per_symbol:.4f}"),
        ]
        if self.kind == "tokens":
            header.append(("perplexity", lambda r: f"{r.perplexity:.3f}"))
        header += [
            ("elpd_diff", lambda r: f"{r.elpd_diff:.2f}"),
            ("dse", lambda r: f"{r.dse:.2f}"),
            (f"diff bits/{unit}", lambda r: f"{r.diff_bits_per_symbol:.4f}"),
            (f"se bits/{unit}", lambda r: f"{r.se_bits_per_symbol:.4f}"),
        ]
        cells = [[title for title, _ in header]]
        cells += [[fmt(r) for _, fmt in header] for r in self.rows]
        widths = [max(len(row[j]) for row in cells) for j in range(len(header))]
        lines = [
            f"held-out log-likelihood (nats) of {first.num_sequences} sequences, "
            f"{first.num_symbols} {unit}s ({self.kind});",
            "elpd_diff and dse: paired over sequences, relative to the best model",
        ]
        for row in cells:
            # The model name is left-aligned, numbers right-aligned.
            parts = [
                c.ljust(w) if j == 1 else c.rjust(w)
                for j, (c, w) in enumerate(zip(row, widths, strict=True))
            ]
            lines.append("  ".join(parts).rstrip())
        return "\n".join(lines)


def _perplexity(nats: float) -> float:
    with np.errstate(over="ignore"):  # a hopeless model: inf, not OverflowError
        return float(np.exp(np.float64(nats)))


def _is_discrete(head) -> bool:
    """Whether the head's emission is a probability mass function (vs a density)."""
    return bool(step_support(head).is_discrete)


def _check_models(models) -> list[tuple[str, SequenceModel, object]]:
    if not isinstance(models, Mapping):
        raise ValueError(
            "models must be a dict {name: (model, params)}; got "
            f"{type(models).__name__}. Example: compare({{'hmm': (hmm, params)}}, x)."
        )
    if not models:
        raise ValueError("models is an empty dict; give at least one {name: (model, params)}.")
    entries = []
    for name, entry in models.items():
        if not isinstance(entry, tuple | list) or len(entry) != 2:
            raise ValueError(
                f"models[{name!r}] must be a (model, params) pair; got {type(entry).__name__}."
            )
        model, params = entry
        if not isinstance(model, SequenceModel):
            raise ValueError(
                f"models[{name!r}][0] must be a probseq model; got {type(model).__name__}."
            )
        entries.append((str(name), model, params))
    # Likelihoods are comparable only on the same data under the same base measure:
    # the same event shape, and all probabilities or all densities.
    ref_name, ref_model, _ = entries[0]
    ref = (ref_model.head.is_token, ref_model.head.event_shape, _is_discrete(ref_model.head))
    for name, model, _ in entries[1:]:
        got = (model.head.is_token, model.head.event_shape, _is_discrete(model.head))
        if got != ref:

            def what(t):
                kind = "tokens" if t[0] else ("discrete" if t[2] else "real-valued")
                return f"{kind} observations of shape {t[1]}"

            raise ValueError(
                f"model {name!r} ({model!r}) models {what(got)}, but model {ref_name!r} "
                f"({ref_model!r}) models {what(ref)}: their log-likelihoods are not comparable. "
                "Compare models of the same kind of data."
            )
    return entries


def _views(entries, data, mask):
    """{name: (data, mask)}: every model's own view of the held-out sequences."""
    if not isinstance(data, Mapping):
        return {name: (data, mask) for name, _, _ in entries}
    if mask is not None:
        raise ValueError(
            "with data given per model (a dict), give each model's mask in its entry "
            "(a probseq.data.Split, with .x and .mask), not as mask=."
        )
    names = [name for name, _, _ in entries]
    if sorted(map(str, data)) != sorted(names):
        raise ValueError(
            f"data given per model must have exactly the models' names as keys: models "
            f"{names}, data {sorted(map(str, data))}."
        )
    views = {}
    for key, view in data.items():
        if hasattr(view, "x") and hasattr(view, "mask"):
            views[str(key)] = (view.x, view.mask)
        else:
            views[str(key)] = (view, None)
    return views


def conditioned_steps(model) -> int:
    """Steps at the start of every sequence that ``model`` conditions on instead of
    scoring (``model.num_conditioned_steps``: an AR(d)'s d; 0 for most families)."""
    return int(model.num_conditioned_steps)


def scored_steps(model, mask) -> int:
    """How many steps of a masked batch ``model`` scores: the valid steps of each
    sequence less the ones it conditions on (:func:`conditioned_steps`), never below 0."""
    lengths = np.asarray(mask).reshape(-1, np.shape(mask)[-1]).sum(axis=-1)
    return int(np.maximum(lengths - conditioned_steps(model), 0).sum())


def per_step_log_lik(total: float, num_scored: int, log_det_jacobian: float = 0.0):
    """The one per-step score of probseq: ``total / num_scored - log_det_jacobian``
    (nats per scored step, in the data's own units), or None when no step is scored.

    A score of zero steps is not a number: dividing by ``max(n, 1)`` would print the
    standardisation's log-determinant alone as if it were a score. Fit's report and
    its saved info use this helper and show None as "n/a"; :func:`compare` refuses
    a table with no scored step.
    """
    if num_scored <= 0:
        return None
    return float(total) / int(num_scored) - float(log_det_jacobian)


def compare(
    models,
    data,
    mask=None,
    *,
    inputs=None,
    log_det_jacobians=None,
    progress: bool = False,
    mesh=None,
    source=None,
    source_mask=None,
) -> Comparison:
    """Score several models on the same held-out sequences and rank them.

    Args:
        models: a dict ``{name: (model, params)}``; every model must model the same
            kind of observation (tokens, or real vectors of one size).
        data: anything :func:`probseq.score` accepts: one sequence, a padded batch
            with ``mask``, or a list of unequal-length sequences. Or a dict
            ``{name: data}`` giving each model its own encoding of the *same*
            sequences (e.g. models fitted with different vocabularies or
            standardisations): each value is data as above or a
            :class:`probseq.data.Split` (``.x``, ``.mask``); every view must have
            the same number of sequences and of valid steps in each. A view with
            ``.source`` and ``.source_mask`` (a :class:`probseq.data.PairSplit`)
            gives its conditional model its own encoding of the sources too.
        mask: optional (B, T) boolean prefix mask for a padded batch.
        inputs: per-step conditioning inputs, passed to every model.
        log_det_jacobians: optional ``{name: float}``, log|det J| per step of the map
            from the original data to that model's view (for a standardised series,
            ``Standardizer.log_abs_det_jacobian``); subtracted once per valid step,
            so every model's density is in the original units. Missing names: 0.
        progress: show a tqdm progress bar over the models (on stderr).
        mesh: a ``jax.sharding.Mesh`` to split the sequences over (see
            :func:`probseq.score`); the same table as on one device.
        source, source_mask: the sources of conditional models (Seq2Seq, ...),
            passed to every model that takes one.

    When a model conditions on the first steps of each sequence (an AR(d) scores
    log p(x_{d+1:T} | x_{1:d})), every model is scored on the same steps: the first
    ``max(conditioned_steps)`` of each sequence are conditioned on by all of them
    (``num_symbols`` counts the steps scored).

    Returns:
        A :class:`Comparison`: rows best first (highest total log-likelihood), with
        ``elpd_diff`` and its paired standard error ``dse`` computed from the
        per-sequence differences exactly as ``arviz.compare`` does. With fewer than
        2 sequences the SE is NaN (for every model but the best, whose difference to
        itself is exactly 0).

    Raises:
        ValueError: empty ``models``, models of different kinds of data, data that
            some model cannot score (the message names the model), or per-model
            views that are not the same sequences.

    Example:
        >>> table = compare({"hmm": (hmm, p_hmm), "gru": (gru, p_gru)}, test_seqs)  # doctest: +SKIP
        >>> print(table)  # doctest: +SKIP
    """
    entries = _check_models(models)
    views = _views(entries, data, mask)
    jacobians = dict(log_det_jacobians or {})
    unknown = sorted(set(map(str, jacobians)) - set(views))
    if unknown:
        raise ValueError(f"log_det_jacobians names no model: {unknown}.")
    pointwise, lengths, kind = {}, None, None
    # Steps some model conditions on (an AR(d)'s first d) are scored by no model.
    skip = max(conditioned_steps(model) for _, model, _ in entries)
    bar = tqdm(entries, desc="scoring", unit="model", disable=not progress, leave=False)
    for name, model, params in bar:
        bar.set_postfix_str(name)
        x, m = views[name]
        try:
            # Validated here for the lengths; score validates again (cheap, NumPy).
            batch = validation.prepare_batch(model, x, m, inputs)
            src = (source, source_mask) if model.takes_source else (None, None)
            own = (
                {str(k): v for k, v in data.items()}.get(name)
                if isinstance(data, Mapping)
                else None
            )
            if model.takes_source and hasattr(own, "source") and hasattr(own, "source_mask"):
                src = (own.source, own.source_mask)
            res = score(
                model, params, x, m, inputs=inputs, mesh=mesh, source=src[0], source_mask=src[1]
            )
        except ValueError as e:
            raise ValueError(f"model {name!r} ({model!r}) cannot score the data: {e}") from None
        lp = res.log_prob
        if skip:
            lp = np.asarray(res.step_log_probs, np.float64)[..., skip:].sum(-1)
        steps = np.asarray(batch.mask).reshape(-1, np.shape(batch.mask)[-1]).sum(-1)
        steps = np.maximum(steps - skip, 0)
        if lengths is None:
            lengths, first, kind = steps, name, "tokens" if model.head.is_token else "real"
        elif steps.shape != lengths.shape or (steps != lengths).any():
            raise ValueError(
                f"the data of model {name!r} is not the same sequences as model {first!r}'s: "
                f"{steps.size} sequences of {int(steps.sum())} steps vs {lengths.size} of "
                f"{int(lengths.sum())}."
            )
        ll = np.atleast_1d(np.asarray(jax.device_get(lp), np.float64))
        pointwise[name] = ll - float(jacobians.get(name, 0.0)) * steps.reshape(ll.shape)
    num_symbols = int(lengths.sum())
    if num_symbols == 0:
        raise ValueError(f"no step is left to score: every sequence is within the first {skip} "
                         "steps that the models condition on; give longer sequences.")  # fmt: skip

    totals = {name: float(ll.sum()) for name, ll in pointwise.items()}
    # Stable: ties keep the order the models were given in.
    order = sorted(totals, key=lambda n: -totals[n])
    best = pointwise[order[0]]
    num_sequences = best.shape[0]
    rows = []
    for rank, name in enumerate(order):
        ll = totals[name]
        nats = -ll / num_symbols
        # Paired difference to the best model over sequences. The standard error is
        # arviz's `dse` (arviz-devs/arviz, arviz/stats/stats.py, `compare`, 0.x:
        # `diff = min_ic_i_val - res[ic_i]; d_std_err = np.sqrt(len(diff) * np.var(diff))`),
        # i.e. sqrt(n * var(d)) with np.var's default ddof=0.
        d = best - pointwise[name]
        if rank == 0:
            diff, dse = 0.0, 0.0
        else:
            diff = float(d.sum())
            if num_sequences < 2:
                dse = math.nan
            elif not np.isfinite(d).all():  # a sequence impossible under this model
                dse = math.inf
            else:
                dse = float(np.sqrt(d.size * np.var(d)))
        rows.append(
            ComparisonRow(
                name=name,
                rank=rank,
                log_likelihood=ll,
                num_sequences=num_sequences,
                num_symbols=num_symbols,
                nats_per_symbol=nats,
                bits_per_symbol=nats / _LN2,
                perplexity=_perplexity(nats) if kind == "tokens" else math.nan,
                elpd_diff=diff,
                dse=dse,
                diff_bits_per_symbol=diff / (num_symbols * _LN2),
                se_bits_per_symbol=dse / (num_symbols * _LN2),
            )
        )
    return Comparison(rows=tuple(rows), kind=kind, pointwise=pointwise)
