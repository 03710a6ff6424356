"""What ``"auto"`` picks, per backend, and the measurements behind each rule.

The kernels (probseq.hmm_inference, probseq.scan) implement exact paths; this module
decides between them. Every rule names the table it came from (benchmarks/RESULTS.md).

HMM filtering (log_prob, score, step_log_probs, ``HMM.filter``, forecast and sampling
conditioned on a history, fit_sgd) has three exact paths
(:func:`probseq.hmm_inference.hmm_filter_batch`):

* CPU (measured, 2-core x86, jax 0.10.2; RESULTS.md "HMM filter paths"): the
  sequential scan, except for a few sequences (B <= 16) of 128 to 200,000 steps,
  where the time-chunked filter wins (:func:`chunked_filter_pays_on_cpu`). The
  associative scan never wins on CPU (O(T K^3) work on two cores: 8-150x slower on
  the benchmark workloads).
* GPU and other accelerators (provisional: from the H200 run that filed issue 10 and
  ECOSYSTEM.md, i.e. dynamax's parallel filter 1.75 ms vs sequential 7.8 ms on
  medium K32 B64 T1000, 3.5 ms vs ~6.9 s on T=1e6 K=8, and 78 ms vs 10.3 ms on
  K64 B1024 T1000; a sequential step costs ~6 us there): the associative scan where
  its work B T K^3 is at most ``PARALLEL_MAX_WORK`` and its memory fits (in groups of
  sequences if needed), else the chunked filter for T >= 256, else sequential.
  ``benchmarks/gpu.py`` times all three paths per workload so the thresholds can be
  checked on the device.

HMM smoothing (the EM E-step, ``HMM.smoother``): the time-chunked forward-backward
where :func:`chunking_pays`, else the sequential one (:func:`choose_smoother`), on every
backend; on CPU the chunked E-step takes a large batch in groups of sequences
(:func:`estep_groups`). CPU: measured (RESULTS.md, EM section). GPU: the H200 run of
issue 10 measured this rule's choices (one EM iteration 4.95 ms on medium, 12.6 ms on
K64 B1024 T1000, 43.8 ms on K256 B8 T2000, 21 ms on T=1e6 K=8), not the alternatives;
benchmarks/gpu.py times both E-steps.

Memory: the parallel path's need is estimated by :func:`parallel_filter_bytes`
(checked against ``compiled.memory_analysis()`` in tests/test_hmm_filters.py) and
compared with :func:`memory_budget_bytes` (a quarter of
:func:`probseq.memory.memory_limit`); a batch that does not fit at once runs in groups
of sequences, and a single sequence that does not fit falls back to chunking.
"""

from __future__ import annotations

import math

import jax

from probseq import memory

__all__ = [
    "chunking_pays",
    "chunked_filter_pays_on_cpu",
    "choose_hmm_filter",
    "choose_smoother",
    "default_chunk_size",
    "estep_groups",
    "memory_budget_bytes",
    "parallel_filter_bytes",
    "PARALLEL_MAX_WORK",
]

#: Largest B * T * K^3 for which accelerators use the associative-scan filter: the
#: medium workload (2.1e9) is 4.5x faster in parallel on an H200 (dynamax), the
#: K64 B1024 T1000 one (2.7e11) 7.6x slower.
PARALLEL_MAX_WORK = 2**33

#: Bytes per B * T * K^2 element (times the dtype's size) of the parallel filter:
#: ~4 for the values alone and ~12-16 with reverse-mode gradients (fit_sgd, NUTS),
#: measured by compiled.memory_analysis() on CPU for K = 4..64, T = 500..1e5. The rule
#: budgets for the gradient.
PARALLEL_BYTES_PER_ELEMENT = 17


def default_chunk_size(num_steps: int, num_sequences: int, num_states: int) -> int:
    """The chunk length L of the time-chunked filter and smoother when none is given.

    A sweep costs L sequential steps of fixed loop overhead plus the vector work over
    all B * T / L chunk rows; the fix-up after it costs ~F more steps over all rows (F:
    the steps a filter takes to forget its start to float precision, ~30-40 on the
    benchmark models). Balancing the two gives L ~ sqrt(F * B * T * K^2 * work /
    overhead), ~sqrt(B * T * K^2 / 30) on the 2-core CPU (benchmarks/RESULTS.md);
    at most T / 4 (at least four chunks) and at least 32 steps."""
    work = num_sequences * num_steps * max(num_states, 2) ** 2
    return int(max(32, min(round(math.sqrt(work / 30)), -(-num_steps // 4))))


def chunking_pays(num_steps: int, num_states: int) -> bool:
    """Whether the time-chunked smoother beats the sequential one on CPU ("auto").

    Measured (2-core CPU, one EM iteration, benchmarks/RESULTS.md): chunks pay where the
    fixed cost of a sequential step dominates its vector work: K=4 (about 2x) and K=8 at
    T=1e6 (about 1.7x), a little at K=32, B=64, T=1000; at K=256 each step is a real
    matrix product and the fix-up's extra work loses (0.8x)."""
    return num_states <= 64 and num_steps >= 128


def chunked_filter_pays_on_cpu(num_sequences: int, num_steps: int, num_states: int) -> bool:
    """Whether the time-chunked filter beats the sequential one on the 2-core CPU.

    Measured (jax 0.10.2, 2026-11-30, compiled filter alone, sequential / chunked
    time): it pays where a sequential step is mostly loop overhead, i.e. few sequences:
    K4 B10 T1000 1.6x, K8 B10 T1000 1.1x, K16 B10 T1000 1.1x, K4 B1 T1e5 1.3x,
    K8 B1 T1e5 1.2x, K16 B1 T1e5 3.9x; not with a wider batch (K4 B64 T1000 0.7x, K8 B64
    0.98x, K32 B8 0.96x, K32 B64 T1000 0.8x) nor on a 1e6-step sequence, where the
    sequential loop is memory-bound and chunking only adds traffic (K4 1.02x, K8 0.9x).
    """
    return num_sequences <= 16 and num_states <= 64 and 128 <= num_steps <= 200_000


def memory_budget_bytes() -> int:
    """What one filter call may allocate: a quarter of probseq's memory limit
    (:func:`probseq.memory.memory_limit`: the user's setting, else the accelerator's
    own limit, else half the machine's memory); the rest holds parameters, data,
    optimizer state and XLA's own buffers."""
    limit = memory.memory_limit()
    return (8 * 2**30 if limit is None else limit) // 4


def parallel_filter_bytes(
    num_sequences: int, num_steps: int, num_states: int, itemsize: int = 4
) -> int:
    """Estimated peak bytes of the associative-scan filter on a batch, gradients
    included (:data:`PARALLEL_BYTES_PER_ELEMENT` per B T K^2 element)."""
    k = num_states
    return PARALLEL_BYTES_PER_ELEMENT * num_sequences * num_steps * k * k * itemsize


def choose_hmm_filter(
    num_sequences: int,
    num_steps: int,
    num_states: int,
    itemsize: int = 4,
    *,
    backend: str | None = None,
    budget: int | None = None,
) -> tuple[str, int | None]:
    """The filter path "auto" runs: (method, group_size) for
    :func:`probseq.hmm_inference.hmm_filter_batch`. See the module docstring for the
    rules and the measurements behind them."""
    backend = jax.default_backend() if backend is None else backend
    if backend == "cpu":
        if chunked_filter_pays_on_cpu(num_sequences, num_steps, num_states):
            return "chunked", None
        return "sequential", None
    budget = memory_budget_bytes() if budget is None else budget
    work = num_sequences * num_steps * num_states**3
    per_sequence = parallel_filter_bytes(1, num_steps, num_states, itemsize)
    if work <= PARALLEL_MAX_WORK and num_steps >= 32 and per_sequence <= budget:
        group = budget // per_sequence
        return "parallel", (None if group >= num_sequences else int(group))
    if num_steps >= 256:
        return "chunked", None
    return "sequential", None


#: Largest working set (bytes) of one group of sequences in the chunked E-step on CPU.
CPU_ESTEP_BYTES = 24 * 2**20


def estep_groups(
    num_sequences: int, num_steps: int, num_states: int, itemsize: int, *, backend=None
) -> int:
    """How many groups of sequences the chunked EM E-step runs one after the other.

    CPU: enough that a group's working set, about five (B, T, K) arrays (likelihoods,
    filtered and backward messages, posteriors, count weights), stays under
    ``CPU_ESTEP_BYTES``. XLA:CPU allocates a call's temporaries anew per call, and glibc
    serves blocks over 32 MiB by a fresh mmap whose every page faults on first touch.
    Measured on medium (K32 B64 T1000, float32; RESULTS.md session 7): the whole batch
    has a 40 MiB temporary, 10,333 page faults and 28-29 ms per one-iteration EM call;
    two groups, 28 MiB, no page faults once warm, 16-18 ms; the same time per extra
    iteration either way (15.5-16.4 vs 15.4-16.6 ms; one core: 18.6-19.5 vs 19.4-20.5).
    Other backends: 1 (an accelerator wants the whole batch at once)."""
    backend = jax.default_backend() if backend is None else backend
    if backend != "cpu" or num_sequences <= 1:
        return 1
    per_sequence = 5 * max(num_steps, 1) * num_states * itemsize
    size = max(1, CPU_ESTEP_BYTES // per_sequence)  # sequences per group
    return -(-num_sequences // size)


def choose_smoother(
    num_sequences: int, num_steps: int, num_states: int, *, backend: str | None = None
) -> str:
    """The smoother "auto" runs (E-step and ``HMM.smoother``): "chunked" or
    "forward_backward". The same rule on every backend (see the module docstring)."""
    del num_sequences, backend  # measured to matter on neither backend so far
    return "chunked" if chunking_pays(num_steps, num_states) else "forward_backward"
