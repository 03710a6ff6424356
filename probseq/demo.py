"""``probseq demo``: an HMM, an LSTM and an LRU on English text, compared.

The text is CPython's help topics (``builtin:pydoc``, ~465k characters, no
download). The three models are specs like those in ``models/`` (sized to fit in
about three minutes on two CPU cores), fitted through the same
:func:`probseq.workflow.fit_spec` the command line uses: the HMM by EM, the two
networks by SGD. Then the held-out comparison table and a sample from each.
"""

from __future__ import annotations

import os
import time

import jax
import numpy as np

from probseq import io, spec, workflow
from probseq.compare import compare
from probseq.core import sample

__all__ = ["DEMO_SPECS", "run_demo"]

_DATA = {"kind": "text", "sequence_length": 128, "split": [0.9, 0.05, 0.05]}
_SGD = {"method": "sgd", "batch_size": 32, "learning_rate": 5e-3, "patience": 2}

# name -> (full spec, what --quick changes)
DEMO_SPECS = {
    "hmm": (
        {
            "description": "categorical HMM, 32 states, EM",
            "data": _DATA,
            "model": {"family": "hmm", "num_states": 32},
            # prior: Dirichlet pseudo-counts of 0.01, so a character unseen in training
            # keeps a small probability (maximum likelihood would give it zero)
            "fit": {"method": "em", "num_iters": 60, "tol": 1e-4, "prior": 1.01},
        },
        {"model": {"num_states": 8}, "fit": {"num_iters": 5}},
    ),
    "lstm": (
        {
            "description": "LSTM, 128 units, SGD",
            "data": _DATA,
            "model": {"family": "lstm", "hidden_size": 128},
            "fit": {**_SGD, "num_epochs": 2},
        },
        {"model": {"hidden_size": 16}, "fit": {"num_epochs": 1}},
    ),
    "lru": (
        {
            "description": "LRU, 128 units, SGD",
            "data": _DATA,
            "model": {"family": "lru", "hidden_size": 128},
            "fit": {**_SGD, "num_epochs": 2},
        },
        {"model": {"hidden_size": 16}, "fit": {"num_epochs": 1}},
    ),
}
_QUICK_CHARS = 20_000
_PROMPT = "The "


def demo_specs(quick: bool = False) -> dict[str, spec.Spec]:
    """The demo's specs, checked by the same strict loader as ``models/*.toml``."""
    out = {}
    for name, (full, smaller) in DEMO_SPECS.items():
        s = spec.parse_spec(full, source=f"demo:{name}")
        out[name] = s.replace(**smaller) if quick else s
    return out


def run_demo(*, quick=False, out=None, plot=None, progress=True, echo=print):
    """Fit, compare and sample the three demo models; returns the comparison table.

    Args:
        quick: a tiny version (a 20k-character slice, small models): seconds.
        out: also save each run under ``out/<name>``.
        plot: write the comparison bar chart to this image file.
        progress: progress bars.
        echo: where lines go.
    """
    start = time.perf_counter()
    source = workflow.read_source("text", "builtin:pydoc")
    if quick:
        source = source._replace(text=source.text[:_QUICK_CHARS])
    echo(
        f"probseq demo: {len(source.text):,} characters of English from CPython's help "
        "topics (builtin:pydoc), split 90/5/5 into train/valid/test"
    )
    runs = {}
    for name, s in demo_specs(quick).items():
        echo(f"\n[{name}] {s.description}: {s.method.upper()}")
        run = workflow.fit_spec(s, source, progress=progress)
        runs[name] = run
        echo(
            f"[{name}] valid {run.info['valid_bits_per_symbol']:.3f} bits/char "
            f"({run.info['fit_seconds']:.1f} s)"
        )
        if out is not None:
            io.save_run(run, os.path.join(out, name))
    first = next(iter(runs.values()))
    test = workflow.prepare(first, source, "test")
    table = compare({n: (r.model, r.params) for n, r in runs.items()}, test.x, test.mask)
    echo(f"\nheld-out test text: {int(test.mask.sum()):,} characters in {len(test.x)} sequences")
    echo(str(table))
    echo(f"\nsamples (temperature 0.8) continuing {_PROMPT!r}:")
    prompt = first.encode(_PROMPT)
    for i, (name, run) in enumerate(runs.items()):
        xs = sample(
            run.model, run.params, jax.random.key(100 + i), 160, prefix=prompt, temperature=0.8
        )
        text = _PROMPT + run.decode(np.asarray(xs))
        echo(f"[{name}] {text!r}")
    if plot:
        from probseq import plots

        plots.save_figure(plots.plot_comparison(table), plot)
        echo(f"wrote {plot}")
    echo(f"\ndone in {time.perf_counter() - start:.0f} s")
    return table
