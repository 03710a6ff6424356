"""Training throughput of a character-level LSTM / GRU: probseq vs flax vs PyTorch.

    python benchmarks/rnn.py [--workloads lstm128 gru128 lstm512 gru512] [--steps 20]
                             [--skip flax torch]

The same model on the same data in each engine: a token embedding of width H, one
recurrent layer of H units, a dense readout to the V symbols, softmax cross-entropy
of every next character; batch B=32 sequences of T=128 characters of
``pydoc_data.topics`` (V=103 here); Adam (lr 1e-3) after clipping by global norm 1;
float32. One optimizer step = forward + backward + update over B*T tokens.

* probseq: ``fit_sgd`` itself (the public call, its Python loop, progress off) over
  ``--steps`` batches, timed on a second call, which reuses the first call's compiled
  step (so no compile is in it); the first call's compile time is shown apart.
* flax (linen): ``nn.RNN(nn.OptimizedLSTMCell | nn.GRUCell)`` between ``nn.Embed``
  and ``nn.Dense``, a jitted train step (optax, the same optimizer) in a Python loop,
  as the flax examples write it; 2 warm-up steps are not timed.
* PyTorch: ``nn.Embedding`` + ``nn.LSTM | nn.GRU`` + ``nn.Linear``, ``Adam`` and
  ``clip_grad_norm_``, eager, in a Python loop; 2 warm-up steps are not timed;
  ``torch.set_num_threads`` = the number of CPU cores.

Printed: tokens per second (B * T * steps / seconds) and probseq's ratio to each
anchor (> 1: probseq is faster). flax and torch are optional (not in probseq's
extras); a missing one is reported and skipped.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import probseq
from probseq import data

WORKLOADS = {
    "lstm128": ("lstm", 128),
    "gru128": ("gru", 128),
    "lstm512": ("lstm", 512),
    "gru512": ("gru", 512),
}
B, T, LR, CLIP = 32, 128, 1e-3, 1.0


def _batches(steps: int, seed: int = 0):
    """(steps * B, T + 1) windows of pydoc text as ids: T inputs + the next character."""
    vocab = data.CharVocabulary.from_text(data.pydoc_text())
    ids = vocab.encode(data.pydoc_text())
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, ids.size - T - 1, size=steps * B)
    return np.stack([ids[s : s + T + 1] for s in starts]).astype(np.int32), vocab.vocab_size


def bench_probseq(cell, h, v, windows, steps):
    family = {"lstm": probseq.LSTM, "gru": probseq.GRU}[cell]
    model = family(vocab_size=v, hidden_size=h)
    params = model.init(jax.random.key(0))
    x = windows[:, :T]  # probseq scores every one of the T characters

    def fit():
        return probseq.fit_sgd(model, params, x, key=jax.random.key(1), num_epochs=1,
                               batch_size=B, learning_rate=LR, max_grad_norm=CLIP,
                               shuffle=False, progress=False)  # fmt: skip

    first = fit()
    start = time.perf_counter()
    result = fit()
    jax.block_until_ready(result.params)
    seconds = time.perf_counter() - start
    assert result.info["compile_time_s"] == 0.0, "the second fit_sgd call compiled"
    return B * T * steps / seconds, first.info["compile_time_s"]


def bench_flax(cell, h, v, windows, steps):
    import flax.linen as nn

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            e = nn.Embed(v, h)(x)
            rnn_cell = nn.OptimizedLSTMCell(h) if cell == "lstm" else nn.GRUCell(h)
            return nn.Dense(v)(nn.RNN(rnn_cell)(e))

    net = Net()
    batches = jnp.asarray(windows.reshape(steps, B, T + 1))
    params = net.init(jax.random.key(0), batches[0, :, :T])
    tx = optax.chain(optax.clip_by_global_norm(CLIP), optax.adam(LR))
    opt_state = tx.init(params)

    @jax.jit
    def train_step(params, opt_state, batch):
        def loss_fn(p):
            logits = net.apply(p, batch[:, :T])
            return optax.softmax_cross_entropy_with_integer_labels(logits, batch[:, 1:]).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    for i in range(2):  # compile + warm up
        params, opt_state, loss = train_step(params, opt_state, batches[i])
    jax.block_until_ready(loss)
    start = time.perf_counter()
    for i in range(steps):
        params, opt_state, loss = train_step(params, opt_state, batches[i])
    jax.block_until_ready(loss)
    return B * T * steps / (time.perf_counter() - start)


def bench_torch(cell, h, v, windows, steps):
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(v, h)
            rnn = torch.nn.LSTM if cell == "lstm" else torch.nn.GRU
            self.rnn = rnn(h, h, batch_first=True)
            self.out = torch.nn.Linear(h, v)

        def forward(self, x):
            return self.out(self.rnn(self.embed(x))[0])

    net = Net()
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    batches = torch.from_numpy(windows.astype(np.int64)).reshape(steps, B, T + 1)

    def step(batch):
        opt.zero_grad()
        logits = net(batch[:, :T])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, v), batch[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), CLIP)
        opt.step()
        return loss

    for i in range(2):
        step(batches[i])
    start = time.perf_counter()
    for i in range(steps):
        loss = step(batches[i])
    loss.item()
    return B * T * steps / (time.perf_counter() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--skip", nargs="*", default=[], choices=["flax", "torch"])
    args = parser.parse_args(argv)
    windows, v = _batches(args.steps)
    versions = [f"jax {jax.__version__}"]
    anchors = {}
    for name, fn in (("flax", bench_flax), ("torch", bench_torch)):
        if name in args.skip:
            continue
        try:
            module = __import__(name)
            versions.append(f"{name} {module.__version__}")
            anchors[name] = fn
        except ImportError:
            print(f"({name} is not installed: skipped)")
    print(f"{platform.machine()}, {os.cpu_count()} cores, {jax.devices()[0].device_kind}, "
          f"python {platform.python_version()}, {', '.join(versions)}")  # fmt: skip
    print(f"tokens/s training (B{B} T{T} V{v}, Adam + clipping, float32, {args.steps} steps)")
    header = f"{'workload':<9} {'probseq':>9} {'compile':>7}"
    header += "".join(f" {n:>9} {'x ' + n:>8}" for n in anchors)
    print(header)
    for name in args.workloads:
        cell, h = WORKLOADS[name]
        ours, compile_s = bench_probseq(cell, h, v, windows, args.steps)
        line = f"{name:<9} {ours:>9,.0f} {compile_s:>7.2f}"
        for fn in anchors.values():
            theirs = fn(cell, h, v, windows, args.steps)
            line += f" {theirs:>9,.0f} {ours / theirs:>7.2f}x"
        print(line, flush=True)


if __name__ == "__main__":
    main()
