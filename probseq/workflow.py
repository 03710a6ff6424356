"""From a spec and a data source to a fitted, saved, comparable run.

What the command line does, as Python functions:

* :func:`read_source` reads a text file, a CSV file, a pair file
  (``source<TAB>target`` lines, :mod:`probseq.data.pairs`) or a built-in data set
  (``builtin:pydoc`` text; ``builtin:sunspots``, ``builtin:nile``, ... series;
  ``builtin:reversal`` pairs);
* :func:`fit_spec` splits the data as the spec says, builds the model, fits it and
  scores the test part, returning a :class:`probseq.io.Run`;
* :func:`prepare` encodes new data the way a run was trained (its vocabulary or
  standardisation) and cuts it into scored sequences.

Example:
    >>> from probseq import spec, workflow
    >>> s = spec.load_spec("models/gru_text.toml")                # doctest: +SKIP
    >>> run = workflow.fit_spec(s, workflow.read_source("text", "builtin:pydoc"))
    ...                                                           # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from typing import NamedTuple

import jax
import numpy as np

from probseq import data as data_lib
from probseq import sharding
from probseq.io import Run
from probseq.spec import Spec

__all__ = [
    "Source",
    "read_source",
    "fit_spec",
    "fit_fingerprint",
    "prepare",
    "encode",
    "decode_accuracy",
    "PARTS",
    "data_fingerprint",
    "data_length",
    "match_columns",
    "HeldOutPlan",
    "held_out_plan",
    "prepare_steps",
]

PARTS = ("all", "train", "valid", "test")
BUILTIN = "builtin:"


class Source(NamedTuple):
    """Data read for a spec kind: ``text`` (str), ``values`` (T, D) with column
    ``names``, or ``pairs`` (:class:`probseq.data.Pairs`); ``origin`` says where it
    came from (for messages)."""

    kind: str
    text: str | None = None
    values: np.ndarray | None = None
    names: tuple[str, ...] | None = None
    origin: str = ""
    notice: str = ""  # CSV: the columns used and why any others were left out
    pairs: data_lib.Pairs | None = None


def read_source(kind: str, location, columns=None) -> Source:
    """Read data of ``kind`` ("text" or "series") from a file or a built-in set.

    Args:
        kind: what the model expects.
        location: a path (a text file for "text", a CSV file with a header row for
            "series", a file of ``source<TAB>target`` lines for "pairs"), or
            ``builtin:pydoc`` (English text that ships with Python),
            ``builtin:<name>`` for a statsmodels series (see
            :func:`probseq.data.series_names`), ``builtin:reversal`` (pairs, see
            :func:`probseq.data.builtin_pairs`).
        columns: CSV columns to use (names or indices; None: every numeric column).

    Raises:
        ValueError: a missing, empty or malformed file, an unknown column or
            built-in name (the message says which).
    """
    location = os.fspath(location)
    if kind == "pairs":
        if columns is not None:
            raise ValueError("--columns applies to CSV files of series, not to pairs.")
        if location.startswith(BUILTIN):
            pairs = data_lib.builtin_pairs(location[len(BUILTIN) :])
        else:
            pairs = data_lib.read_pairs(location)
        return Source("pairs", origin=location, pairs=pairs)
    if location.startswith(BUILTIN):
        name = location[len(BUILTIN) :]
        if kind == "text":
            if name != "pydoc":
                raise ValueError(f"built-in text is 'builtin:pydoc'; got {location!r}.")
            return Source("text", text=data_lib.pydoc_text(), origin=location)
        if name not in data_lib.series_names():
            raise ValueError(
                f"unknown built-in series {name!r}; available: "
                + ", ".join(BUILTIN + n for n in data_lib.series_names())
                + "."
            )
        s = data_lib.series(name)
        values = s.values if s.values.ndim == 2 else s.values[:, None]
        names = (
            (name,) if values.shape[1] == 1 else tuple(f"{name}{i}" for i in range(values.shape[1]))
        )
        if columns is not None:
            raise ValueError("--columns applies to CSV files, not to built-in series.")
        return Source("series", values=values, names=names, origin=location)
    if kind == "text":
        return Source("text", text=data_lib.read_text(location), origin=location)
    table = data_lib.read_csv(location, columns)
    return Source(
        "series",
        values=table.values,
        names=tuple(table.names),
        origin=location,
        notice=f"{location}: {table.notice}" if table.left_out else "",
    )


def fit_fingerprint(spec: Spec, source: Source) -> dict:
    """Everything that decides the result of ``fit_spec(spec, source)``, as JSON.

    The spec's seed and its [data], [model] and [fit] tables (every setting, with
    defaults filled in: the model and its sizes, the optimizer, its learning rate,
    clipping, patience, epochs, batch size, the EM settings, the cut and split of
    the data) and the identity of the data (its kind, the SHA-256 of its content,
    its shape and the columns used; for pairs, the SHA-256 of every ``source<TAB>target``
    line and their number). Only the description is left out. Two calls with equal
    fingerprints fit the same model to the same data the same way.
    """
    spec_part = {"seed": spec.seed, "data": spec.data, "model": spec.model, "fit": spec.fit}
    if spec.encoder is not None:
        spec_part["source"] = spec.encoder
    return json.loads(json.dumps({"spec": spec_part, "data": data_fingerprint(source)}))


def data_fingerprint(source: Source) -> dict:
    """The identity of the data in ``source`` (the "data" part of
    :func:`fit_fingerprint`): kind, SHA-256 of the content, shape, columns."""
    digest = hashlib.sha256()
    if source.kind == "pairs":
        sha256, shape = source.pairs.sha256(), [len(source.pairs.sources)]
    elif source.kind == "text":
        digest.update(source.text.encode("utf-8", "surrogatepass"))
        sha256, shape = digest.hexdigest(), [len(source.text)]
    else:
        values = np.ascontiguousarray(source.values, dtype=np.float64)
        digest.update(values.tobytes())
        sha256, shape = digest.hexdigest(), list(values.shape)
    return {
        "kind": source.kind,
        "sha256": sha256,
        "shape": shape,
        "columns": None if source.names is None else list(source.names),
    }


def data_length(source: Source) -> int:
    """The number of units the split fractions cut: characters, rows, or pairs."""
    if source.kind == "pairs":
        return len(source.pairs.sources)
    return len(source.text) if source.kind == "text" else len(source.values)


def match_columns(run: Run, source: Source) -> tuple[Source, str]:
    """``source``'s columns matched to ``run``'s by name: the same set in another
    order is reordered to the run's order (with a notice); another set is refused.
    Text and pairs pass unchanged. Returns (source, notice or "")."""
    if run.kind != "series" or source.kind != "series":
        return source, ""
    have, want = tuple(source.names), tuple(run.columns)
    if have == want:
        return source, ""
    if sorted(have) != sorted(want) or len(set(have)) != len(have):
        raise ValueError(
            f"{source.origin}: the columns read are {', '.join(have)}, but "
            f"{run.path or 'the run'} models {', '.join(want)}; columns are matched by "
            f"name: give --columns {','.join(want)} (a file with those columns)."
        )
    order = [have.index(c) for c in want]
    values = np.asarray(source.values)[:, order]
    notice = (
        f"{source.origin}: columns {', '.join(have)} reordered to the run's "
        f"{', '.join(want)} (matched by name)"
    )
    return source._replace(values=values, names=want), notice


class HeldOutPlan(NamedTuple):
    """Which steps [start, stop) of the data a comparison scores, and why.

    header: the line above the table (held-out or in-sample, which part and why);
    notices: lines printed before it (different splits, runs without a fit record).
    """

    start: int
    stop: int
    header: str
    notices: tuple[str, ...] = ()


def _fit_record(run: Run) -> dict | None:
    """The "data" part of the fingerprint ``probseq fit`` wrote to the run's fit.json,
    or None (a run saved from Python without one)."""
    if run.path is None:
        return None
    path = os.path.join(run.path, "fit.json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)["fingerprint"]["data"]
        return data if isinstance(data, dict) else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _span(bounds) -> str:
    a, b = bounds
    return f"{a}..{b}"


def held_out_plan(runs: dict, source: Source, part: str | None = None, *, in_sample=False):
    """The steps of ``source`` that a comparison of ``runs`` ({name: Run}) may score.

    The rule (so that a held-out table never holds training data):

    * A run was fitted on these data when its fit record (``fit.json``) has the
      data's SHA-256; a run without a record is taken, conservatively, as fitted on
      them with its spec's split.
    * No run fitted on these data: every step is held-out; ``part`` None is "all"
      (a named part is cut with the first run's split).
    * Some run fitted on them: ``part`` None is "test". "valid" / "test" score the
      intersection of those runs' parts of that name (a notice when their splits
      differ; refused when it is empty). "train" and "all" hold training data: refused
      unless ``in_sample``, and then labelled in-sample.

    Raises:
        ValueError: training data asked for without ``in_sample``, or no step held
            out by every run (the message names the runs and their splits).
    """
    if part is not None and part not in PARTS:
        raise ValueError(f"part must be one of {', '.join(PARTS)}; got {part!r}.")
    n = data_length(source)
    sha = data_fingerprint(source)["sha256"]
    notices = []
    fitted = {}
    for name, run in runs.items():
        record = _fit_record(run)
        if record is None:
            notices.append(
                f"{name} has no fit record (fit.json): taken as fitted on {source.origin} "
                f"with its split {list(run.spec.data['split'])}"
            )
        if record is None or record.get("sha256") == sha:
            fitted[name] = run.spec.data["split"]
    first = next(iter(runs.values()))
    if not fitted:
        part = "all" if part is None else part
        if part == "all":
            start, stop = 0, n
        else:
            bounds = data_lib.part_bounds(n, first.spec.data["split"], _unit(source))
            start, stop = bounds[_PART_INDEX[part]]
        header = (
            f"held-out comparison on {source.origin} (part: {part}; no run was fitted "
            "on these data, so every step is held-out)"
        )
        return HeldOutPlan(start, stop, header, tuple(notices))
    part = "test" if part is None else part
    if part == "all" and in_sample:  # no part is cut: data too short to split are fine
        header = (
            f"IN-SAMPLE comparison on {source.origin} (part: all, steps 0..{n}: "
            f"training data of {', '.join(fitted)}; not a held-out score)"
        )
        return HeldOutPlan(0, n, header, tuple(notices))
    fitted = {name: data_lib.part_bounds(n, split, _unit(source)) for name, split in fitted.items()}
    splits = ", ".join(
        f"{name} {list(runs[name].spec.data['split'])} (train {_span(b[0])})"
        for name, b in fitted.items()
    )
    if part in ("all", "train"):
        if not in_sample:
            raise ValueError(
                f"--part {part} of {source.origin} is training data of {', '.join(fitted)} "
                f"(splits: {splits}); compare on held-out steps (--part test, the default, "
                "or valid), or pass --in-sample to score it as in-sample."
            )
        start, stop = next(iter(fitted.values()))[0]  # "train" ("all" returned above)
        header = (
            f"IN-SAMPLE comparison on {source.origin} (part: {part}, steps {start}..{stop}: "
            f"training data of {', '.join(fitted)}; not a held-out score)"
        )
        return HeldOutPlan(start, stop, header, tuple(notices))
    i = _PART_INDEX[part]
    start = max(b[i][0] for b in fitted.values())
    stop = min(b[i][1] for b in fitted.values())
    parts = ", ".join(f"{name} {_span(b[i])}" for name, b in fitted.items())
    if stop <= start:
        raise ValueError(
            f"no step of {source.origin} is in the {part} part of every run fitted on it "
            f"({part} parts: {parts}; splits: {splits}); compare runs fitted with "
            "overlapping held-out parts, or on other data."
        )
    if len({b[i] for b in fitted.values()}) > 1:
        notices.append(
            f"the runs were fitted with different splits of {source.origin} ({part} parts: "
            f"{parts}): scoring steps {start}..{stop}, held out by every run"
        )
    header = (
        f"held-out comparison on {source.origin} (part: {part}, steps {start}..{stop} of "
        f"{n}: held out by every run fitted on these data)"
    )
    return HeldOutPlan(start, stop, header, tuple(notices))


_PART_INDEX = {"train": 0, "valid": 1, "test": 2}


def _unit(source: Source) -> str:
    return {"text": "characters", "series": "steps", "pairs": "pairs"}[source.kind]


def prepare_steps(run: Run, source: Source, start: int, stop: int, *, layout: Spec | None = None):
    """Steps [start, stop) of ``source`` encoded as ``run`` was trained and cut into
    rows of ``layout``'s (default: the run's) sequence length - for a part of a split,
    the same batch :func:`prepare` gives. Pairs: the pairs [start, stop) in file order.
    """
    layout = run.spec if layout is None else layout
    if run.kind == "pairs":
        _check_kind(run.spec, source)
        sources, targets = run.pair_encoding.encode(source.pairs)
        return data_lib.pair_batch(sources[start:stop], targets[start:stop])
    encoded = encode(run, source)[start:stop]
    return _as_float32(data_lib.cut_rows(encoded, layout.data.get("sequence_length")))


def _splits(spec: Spec, source_or_encoded, *, vocabulary=None) -> data_lib.DataSplits:
    """The spec's train/valid/test parts: text (with ``vocabulary``, or one built from
    the text) or an already-encoded real series (T, D)."""
    length = spec.data.get("sequence_length")
    fractions = tuple(spec.data["split"])
    if spec.kind == "text":
        return data_lib.text_splits(
            source_or_encoded, sequence_length=length, fractions=fractions, vocabulary=vocabulary
        )
    return data_lib.series_splits(
        source_or_encoded, sequence_length=length, fractions=fractions, standardize=False
    )


def _as_float32(split: data_lib.Split) -> data_lib.Split:
    return split._replace(x=np.asarray(split.x, np.float32)) if split.x.dtype.kind == "f" else split


def _check_kind(spec: Spec, source: Source) -> None:
    if spec.kind != source.kind:
        raise ValueError(f"{spec.source} models {spec.kind} data; {source.origin} was read as "
                         f"{source.kind}.")  # fmt: skip


def fit_spec(
    spec: Spec, source: Source, *, progress: bool = True, checkpoint_dir=None, mesh=None
) -> Run:
    """Fit the model of ``spec`` to ``source``: split, encode, fit, score the test part.

    Text is encoded with a character vocabulary built from the whole source; a series
    is standardised with the mean and scale of its training part (when the spec
    says ``standardize = true``). The run's ``info`` holds the test and validation
    scores (``test_log_lik`` per symbol, ``test_bits_per_symbol``; for a series, in
    the units of the data as read, not the standardised ones) and the time.
    """
    _check_kind(spec, source)
    if spec.kind == "pairs":
        return _fit_pairs(spec, source, progress=progress, checkpoint_dir=checkpoint_dir, mesh=mesh)
    start = time.perf_counter()
    if spec.kind == "text":
        splits = _splits(spec, source.text)
        model = spec.build_model(vocab_size=splits.vocabulary.vocab_size)
    else:
        splits = data_lib.series_splits(
            source.values,
            sequence_length=spec.data.get("sequence_length"),
            fractions=tuple(spec.data["split"]),
            standardize=spec.data.get("standardize", True),
        )
        model = spec.build_model(obs_dim=splits.train.x.shape[-1])
    parts = {n: _as_float32(getattr(splits, n)) for n in ("train", "valid", "test")}
    params = spec.init_params(model)
    train, valid = parts["train"], parts["valid"]
    if sharding.is_multiprocess(mesh):  # each process fits with its share of the sequences
        train, valid = (data_lib.Split(*sharding.process_split(tuple(p))) for p in (train, valid))
    fit = spec.fit_model(
        model, params, train, valid, progress=progress, checkpoint_dir=checkpoint_dir, mesh=mesh
    )
    if sharding.is_multiprocess(mesh):  # replicated over every process: a local copy
        fit = fit._replace(params=jax.tree.map(np.asarray, fit.params))
    info = {
        "source": source.origin,
        "num_train_symbols": int(parts["train"].mask.sum()),
        "fit_seconds": round(time.perf_counter() - start, 3),
        "stopped": fit.info.get("stopped", "converged" if fit.info.get("converged") else None),
    }
    from probseq.core import log_prob

    # Scores in the data's own units: a standardised series' density is mapped back.
    log_det = 0.0 if splits.scaler is None else splits.scaler.log_abs_det_jacobian
    from probseq.compare import per_step_log_lik, scored_steps

    for part in ("valid", "test"):
        total = float(np.sum(log_prob(model, fit.params, parts[part].x, parts[part].mask)))
        # per step scored: an AR(d) conditions on the first d steps of each row; a
        # part with no scored step has no score (None, shown "n/a"), never log_det
        per = per_step_log_lik(total, scored_steps(model, parts[part].mask), log_det)
        info[f"{part}_log_lik"] = per
        info[f"{part}_bits_per_symbol"] = None if per is None else -per / math.log(2)
    return Run(
        model=model,
        params=fit.params,
        spec=spec,
        vocabulary=splits.vocabulary,
        scaler=splits.scaler,
        columns=None if spec.kind == "text" else source.names,
        history=fit.history,
        info=info,
    )


def _fit_pairs(spec: Spec, source: Source, *, progress, checkpoint_dir, mesh) -> Run:
    """fit_spec for source/target pairs (a Seq2Seq, classifier or tagger)."""
    start = time.perf_counter()
    encoding = data_lib.PairEncoding.from_pairs(source.pairs, spec.data["target"])
    parts = data_lib.pair_splits(*encoding.encode(source.pairs), tuple(spec.data["split"]))
    model = spec.build_model(
        vocab_size=encoding.target_vocab_size, source_vocab_size=encoding.source.vocab_size
    )
    params = spec.init_params(model)
    train, valid = parts.train, parts.valid
    if sharding.is_multiprocess(mesh):
        raise ValueError("pairs models are fitted on one process (--devices N of this one).")
    fit = spec.fit_model(
        model, params, train, valid, progress=progress, checkpoint_dir=checkpoint_dir, mesh=mesh
    )
    info = {
        "source": source.origin,
        "num_train_pairs": int(train.x.shape[0]),
        "num_train_symbols": int(train.mask.sum()),
        "fit_seconds": round(time.perf_counter() - start, 3),
        "stopped": fit.info.get("stopped"),
    }
    from probseq.core import log_prob

    for name in ("valid", "test"):
        part = getattr(parts, name)
        total = log_prob(
            model, fit.params, part.x, part.mask, source=part.source, source_mask=part.source_mask
        )
        per = float(np.sum(np.asarray(total, np.float64))) / int(part.mask.sum())
        info[f"{name}_log_lik"] = per
        info[f"{name}_bits_per_symbol"] = -per / math.log(2)
    run = Run(
        model=model,
        params=fit.params,
        spec=spec,
        history=fit.history,
        info=info,
        pair_encoding=encoding,
    )
    info["test_exact_match"] = decode_accuracy(run, parts.test)
    return run


def decode_accuracy(run: Run, part: data_lib.PairSplit, batch_size: int = 1000) -> float:
    """The share of ``part``'s pairs whose greedy decoding (:func:`probseq.decoding.greedy`)
    equals the target exactly: every symbol and, for target "sequence", the end token
    at the right place (for "label", the classification accuracy)."""
    from probseq.decoding import greedy

    num, length = part.x.shape
    right = 0
    for i in range(0, num, batch_size):
        rows = slice(i, i + batch_size)
        out = greedy(
            run.model,
            run.params,
            length,
            source=part.source[rows],
            source_mask=part.source_mask[rows],
            eos=run.pair_encoding.eos,
        )
        same = (np.asarray(out.sequences) == part.x[rows]) | ~part.mask[rows]
        right += int(same.all(axis=1).sum())
    return right / num


def prepare(
    run: Run, source: Source, part: str = "all", *, layout: Spec | None = None
) -> data_lib.Split | data_lib.PairSplit:
    """``source`` encoded as ``run`` was trained (vocabulary / standardisation) and cut
    into the run's sequence length; ``part`` picks the spec's train/valid/test part
    of it, or "all". ``layout``: another spec whose sequence length and split
    fractions cut the data instead (so that runs fitted with different specs score
    the same sequences).

    For pairs: a :class:`probseq.data.PairSplit` (targets and their sources) of all
    pairs or of the ``part`` of them that the split fractions give, in file order.

    Raises:
        ValueError: a character outside the run's vocabulary (for pairs: the file,
            line and symbol), a series with another number of columns, or an
            unknown part.
    """
    if part not in PARTS:
        raise ValueError(f"part must be one of {', '.join(PARTS)}; got {part!r}.")
    layout = run.spec if layout is None else layout
    if run.kind == "pairs":
        _check_kind(run.spec, source)
        encoded = run.pair_encoding.encode(source.pairs)
        if part == "all":
            return data_lib.pair_batch(*encoded)
        return getattr(data_lib.pair_splits(*encoded, tuple(layout.data["split"])), part)
    encoded = encode(run, source)
    if part == "all":
        return _as_float32(data_lib.cut_rows(encoded, layout.data.get("sequence_length")))
    if run.kind == "text":
        splits = _splits(layout, source.text, vocabulary=run.vocabulary)
    else:
        splits = _splits(layout, encoded)
    return _as_float32(getattr(splits, part))


def encode(run: Run, source: Source) -> np.ndarray:
    """All of ``source`` encoded as ``run`` was trained: (T,) ids for text, (T, D)
    float32 standardised values for a series.

    Raises:
        ValueError: a character outside the run's vocabulary, or a series with
            another number of columns.
    """
    _check_kind(run.spec, source)
    if run.kind == "pairs":
        raise ValueError(
            f"{run.path or 'this run'} models source/target pairs: use `probseq sample "
            "--source` / `probseq compare`; forecast, states and diagnose take text and "
            "series runs."
        )
    if run.kind == "text":
        try:
            return run.vocabulary.encode(source.text)
        except ValueError as e:
            raise ValueError(f"{source.origin}: {e}") from None
    if source.values.shape[1] != run.obs_dim:
        raise ValueError(
            f"{source.origin} has {source.values.shape[1]} column(s) "
            f"({', '.join(source.names)}); the run models {run.obs_dim} "
            f"({', '.join(run.columns)})."
        )
    return np.asarray(run.encode(source.values), np.float32)
