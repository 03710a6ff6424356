"""Fixed-seed fits whose results are pinned in tests/data/pinned_fits.npz.

The numbers were recorded from main at f59b72a (before the fitting layer became one
protocol, issue 19) by ``python tests/pinned_fits.py --record``; tests/test_pinned_fits.py
refits each case and compares. Every case is small (seconds) and deterministic.
"""

from __future__ import annotations

import os
import sys

import jax
import numpy as np

import probseq

HERE = os.path.dirname(os.path.abspath(__file__))
PINNED = os.path.join(HERE, "data", "pinned_fits.npz")


def _tokens(seed, n, t, v):
    rng = np.random.default_rng(seed)
    return rng.integers(0, v, size=(n, t))


def _ragged_mask(seed, n, t):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(t // 2, t + 1, size=n)
    return np.arange(t)[None, :] < lengths[:, None]


def sgd_lstm_tbptt():
    model = probseq.LSTM(vocab_size=5, hidden_size=6)
    x = _tokens(1, 24, 17, 5)
    mask = _ragged_mask(2, 24, 17)
    res = probseq.fit_sgd(model, model.init(jax.random.key(0)), x, mask=mask,
                          key=jax.random.key(1), num_epochs=3, batch_size=8, bptt_length=5,
                          learning_rate=0.02, valid_data=x[:6], valid_mask=mask[:6],
                          steps_per_call=4, progress=False)  # fmt: skip
    return res


def sgd_hmm():
    model = probseq.CategoricalHMM(num_states=3, vocab_size=4)
    x = _tokens(3, 20, 12, 4)
    return probseq.fit_sgd(model, model.init(jax.random.key(2)), x, key=jax.random.key(3),
                           num_epochs=2, batch_size=6, learning_rate=0.05,
                           progress=False)  # fmt: skip


def sgd_seq2seq():
    enc = probseq.GRU(vocab_size=5, hidden_size=6)
    dec = probseq.GRU(vocab_size=5, hidden_size=6)
    model = probseq.Seq2Seq(enc, dec, attention="dot")
    src = _tokens(4, 16, 7, 5)
    tgt = np.flip(src, axis=1).copy()
    return probseq.fit_sgd(model, model.init(jax.random.key(4)), tgt, source=src,
                           key=jax.random.key(5), num_epochs=2, batch_size=8,
                           learning_rate=0.05, bptt_length=4, progress=False)  # fmt: skip


def em_categorical():
    model = probseq.CategoricalHMM(num_states=3, vocab_size=4)
    x = _tokens(6, 10, 30, 4)
    mask = _ragged_mask(7, 10, 30)
    return probseq.fit_em(model, model.init(jax.random.key(6)), x, mask=mask, num_iters=8, tol=0.0)


def em_gaussian():
    model = probseq.GaussianHMM(num_states=2, obs_dim=2)
    rng = np.random.default_rng(8)
    x = rng.normal(size=(6, 25, 2)).astype(np.float32)
    x[:, ::3] += 2.0
    return probseq.fit_em(model, model.init(jax.random.key(8)), x, num_iters=6, tol=0.0)


def em_inputs():
    model = probseq.CategoricalHMM(3, 4, input_dim=2)
    x = _tokens(9, 8, 20, 4)
    u = np.random.default_rng(10).normal(size=(8, 20, 2)).astype(np.float32)
    return probseq.fit_em(model, model.init(jax.random.key(9)), x, inputs=u, num_iters=4, tol=0.0)


def em_lds():
    model = probseq.LDS(state_dim=2, obs_dim=2)
    rng = np.random.default_rng(11)
    x = np.cumsum(rng.normal(size=(4, 30, 2)), axis=1).astype(np.float32) * 0.3
    return probseq.fit_lds_em(model, model.init(jax.random.key(11)), x, num_iters=5, tol=0.0)


def ls_ar():
    model = probseq.AR(order=2, obs_dim=2)
    rng = np.random.default_rng(12)
    x = np.cumsum(rng.normal(size=(3, 40, 2)), axis=1).astype(np.float32) * 0.1
    return probseq.fit_ls(model, x)


CASES = {
    "sgd_lstm_tbptt": sgd_lstm_tbptt,
    "sgd_hmm": sgd_hmm,
    "sgd_seq2seq": sgd_seq2seq,
    "em_categorical": em_categorical,
    "em_gaussian": em_gaussian,
    "em_inputs": em_inputs,
    "em_lds": em_lds,
    "ls_ar": ls_ar,
}


def flat(name: str, result) -> dict[str, np.ndarray]:
    """The result's parameters (and history log-likelihoods) as named arrays."""
    leaves = jax.tree_util.tree_leaves_with_path(result.params)
    out = {f"{name}/params{jax.tree_util.keystr(p)}": np.asarray(a) for p, a in leaves}
    out[f"{name}/log_likelihood"] = np.asarray(result.history["log_likelihood"], np.float64)
    return out


def record(path: str = PINNED) -> None:
    arrays = {}
    for name, case in CASES.items():
        arrays.update(flat(name, case()))
    np.savez(path, **arrays)


if __name__ == "__main__" and "--record" in sys.argv:
    record()
    print(f"wrote {PINNED}")
