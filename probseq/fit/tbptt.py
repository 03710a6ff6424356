"""Truncated backpropagation through time: the pure window kernels and the layout of
an SGD fit's data (windows of the padded batch, each epoch's schedule of rows and
windows, validation chunks)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from probseq.core import batch_step_log_probs, start_states


# ---------------------------------------------------------------- pure TBPTT kernels
def window_log_probs(
    model, params, carried, reset, x, mask, inputs=None, source=None, *, training=False, key=None
):  # fmt: skip
    """Per-step log-likelihoods of one window of a batch, continuing a carried state.

    The window starts from ``model.initial_state(params)`` where ``reset`` is True
    (the first window of a sequence: the gradient reaches the initial state) and
    from ``jax.lax.stop_gradient(carried)`` otherwise, so no gradient crosses a
    window boundary.

    Args:
        model, params: the model.
        carried: batched state (B, ...) at the end of the previous window.
        reset: scalar bool: start the batch afresh.
        x: (B, L, *event) observations; mask: (B, L) prefix mask (a row may be all
            False: its state is kept); inputs: (B, L, input_dim) or None.
        source: ``(source (B, S, ...), source_mask (B, S))`` of a conditional model:
            a reset row starts from ``model.source_state`` instead.
        training, key: the training loss's view (``model.training_log_probs`` with
            this step's key); False: the model's likelihood.

    Returns:
        (log_probs (B, L) with zeros where masked, final states (B, ...)).
    """
    init = start_states(model, params, mask.shape[0], source)
    h0 = jax.tree.map(
        lambda i, c: jnp.where(
            reset, jnp.broadcast_to(i, c.shape).astype(c.dtype), jax.lax.stop_gradient(c)
        ),
        init,
        carried,
    )
    return batch_step_log_probs(model, params, x, mask, inputs, h0, training=training, key=key)


def truncated_step_log_probs(model, params, x, mask, bptt_length: int, inputs=None):
    """Per-step log-likelihoods computed window by window, as truncated BPTT sees them.

    Values equal :func:`probseq.core.batch_step_log_probs` on the whole sequences
    (the state is carried across windows); gradients do not cross windows (the
    carried state is behind ``stop_gradient``). A pure function of arrays.

    Args:
        x: (B, T, *event); mask: (B, T) prefix mask; inputs: (B, T, input_dim) or None.
        bptt_length: window length L (T need not be a multiple).

    Returns:
        (B, T) log-likelihoods, 0 where masked.

    Example:
        >>> import jax, jax.numpy as jnp, probseq
        >>> model = probseq.LSTM(vocab_size=3, hidden_size=4)
        >>> params = model.init(jax.random.key(0))
        >>> x, m = jnp.zeros((2, 6), int), jnp.ones((2, 6), bool)
        >>> truncated_step_log_probs(model, params, x, m, bptt_length=4).shape
        (2, 6)
    """
    bsz, num_timesteps = mask.shape
    num_windows = -(-num_timesteps // bptt_length)
    pad = num_windows * bptt_length - num_timesteps

    def windows(a):
        a = jnp.pad(a, [(0, 0), (0, pad)] + [(0, 0)] * (a.ndim - 2))
        a = a.reshape((bsz, num_windows, bptt_length) + a.shape[2:])
        return jnp.swapaxes(a, 0, 1)

    us = None if inputs is None else windows(inputs)
    carried = jax.tree.map(
        lambda a: jnp.broadcast_to(a, (bsz,) + a.shape), model.initial_state(params)
    )

    def body(state, window):
        w, xw, mw, uw = window
        lps, final = window_log_probs(model, params, state, w == 0, xw, mw, uw)
        return final, lps

    _, lps = jax.lax.scan(body, carried, (jnp.arange(num_windows), windows(x), windows(mask), us))
    return jnp.swapaxes(lps, 0, 1).reshape(bsz, -1)[:, :num_timesteps]


# ------------------------------------------------------------------ compiled pieces
class _Windows(NamedTuple):
    """Training data cut into windows: x (W, N + 1, L, *event), mask (W, N + 1, L),
    inputs (W, N + 1, L, input_dim) or None. Row N is all padding (mask False).
    source: (x (N + 1, S, ...), mask (N + 1, S)) of a conditional model, or None."""

    x: jax.Array
    mask: jax.Array
    inputs: jax.Array | None
    source: Any = None


def _windowed(a: np.ndarray, length: int, num_windows: int) -> np.ndarray:
    """(N, T, ...) -> (W, N + 1, L, ...), zero-padded in time, plus one padding row."""
    n, t = a.shape[:2]
    out = np.zeros((n + 1, num_windows * length) + a.shape[2:], a.dtype)
    out[:n, :t] = a
    out = out.reshape((n + 1, num_windows, length) + a.shape[2:])
    return np.swapaxes(out, 0, 1)


def _epoch_schedule(key, epoch, lengths, batch_size, window_len, shuffle):
    """(rows (S, B), windows (S,)): which rows and window each step of an epoch uses."""
    n = len(lengths)
    if shuffle:
        order = np.asarray(jax.random.permutation(jax.random.fold_in(key, epoch), n))
    else:
        order = np.arange(n)
    num_batches = -(-n // batch_size)
    padded = np.full(num_batches * batch_size, n, np.int32)  # row n: all padding
    padded[:n] = order
    batches = padded.reshape(num_batches, batch_size)
    longest = np.append(lengths, 0)[batches].max(axis=1)
    num_windows = -(-longest // window_len)
    rows = np.repeat(batches, num_windows, axis=0)
    windows = np.concatenate([np.arange(k, dtype=np.int32) for k in num_windows])
    return rows, windows


def _valid_chunks(batch, batch_size, source=None):
    """Validation data as (chunks, B, T, ...) with padding rows fully masked (and the
    source of a conditional model likewise; a padding row repeats source row 0)."""
    x, mask = np.asarray(batch.x), np.asarray(batch.mask)
    n = len(x)
    b = min(batch_size, n)
    chunks = -(-n // b)

    def pad(a):
        out = np.zeros((chunks * b,) + a.shape[1:], a.dtype)
        out[:n] = a
        return jnp.asarray(out.reshape((chunks, b) + a.shape[1:]))

    inputs = None if batch.inputs is None else pad(np.asarray(batch.inputs))
    if source is not None:
        source = tuple(
            jnp.asarray(_pad_rows(np.asarray(a), chunks * b).reshape((chunks, b) + a.shape[1:]))
            for a in source[:2]
        )
    return pad(x), pad(mask), inputs, source, int(mask.sum())


def _pad_rows(a: np.ndarray, n: int) -> np.ndarray:
    """``a`` (N, ...) with rows appended up to n, copies of row 0: a source a padding
    row can encode (an all-False source mask would have nothing to attend to)."""
    return np.concatenate([a, np.repeat(a[:1], n - len(a), axis=0)]) if n > len(a) else a


class _Plan(NamedTuple):
    """How the training data is cut: windows (W, N + 1, L, ...) on the device, the row
    lengths (N,), the batch size and window length used, and the optimizer steps per
    compiled call (balanced over the first epoch)."""

    windows: _Windows
    lengths: np.ndarray
    batch_size: int
    window_len: int
    steps_per_call: int
    first_epoch_steps: int


def _plan(train, key, batch_size, bptt_length, shuffle, steps_per_call, checkpoint_every):
    x, mask = np.asarray(train.x), np.asarray(train.mask)
    num_rows, num_timesteps = mask.shape
    lengths = mask.sum(axis=1)
    window_len = num_timesteps if bptt_length is None else min(int(bptt_length), num_timesteps)
    num_windows = -(-num_timesteps // window_len)
    bsz = int(min(batch_size, num_rows))
    cut = [
        None if a is None else jnp.asarray(_windowed(np.asarray(a), window_len, num_windows))
        for a in (x, mask, train.inputs)
    ]
    first = len(_epoch_schedule(key, 0, lengths, bsz, window_len, shuffle)[1])
    max_k = steps_per_call if checkpoint_every is None else min(steps_per_call, checkpoint_every)
    k_steps = -(-first // -(-first // max_k))  # balanced calls per epoch
    return _Plan(_Windows(*cut), lengths, bsz, window_len, k_steps, first)
