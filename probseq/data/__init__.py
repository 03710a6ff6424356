"""Sequences as arrays: padding ragged sequences into a batch with a mask, text and
CSV files, standardization, built-in data sets that need no download, and the
train/validation/test splits the command line and the examples use.

Example:
    >>> x, mask = pad_sequences([[1, 2, 3], [4]])
    >>> x.tolist(), mask.tolist()
    ([[1, 2, 3], [4, 0, 0]], [[True, True, True], [True, False, False]])

Text, from characters to training sequences:
    >>> text = pydoc_text()                      # English, ships with CPython
    >>> vocab = CharVocabulary.from_text(text)
    >>> ids = vocab.encode(text)                 # np.int32, one id per character
    >>> train, valid, test = split_contiguous(ids, (0.9, 0.05, 0.05))
    >>> x = cut_sequences(train, 128)            # (N, 128): fit_sgd's batch form
    >>> vocab.decode(x[0, :10])
    'The "asser'

The same in one call, keeping every character (the last row of each part is
shorter, padded and masked):
    >>> splits = text_splits(text, sequence_length=128)
    >>> splits.train.x.shape[1], splits.vocabulary.vocab_size
    (128, 103)

Real-valued series, from a file or a built-in data set to standardized (B, T, D)
batches (the scaler is fit on the training part only):
    >>> nile = series("nile")                    # needs statsmodels
    >>> splits = series_splits(nile.values, fractions=(0.8, 0.1, 0.1))
    >>> splits.train.x.shape                     # one sequence of 80 steps, D = 1
    (1, 80, 1)
    >>> orig = splits.scaler.inverse(splits.valid.x)   # back to 10^8 m^3
    >>> table = read_csv("prices.csv", columns="open,close")  # doctest: +SKIP
    >>> import numpy as np
    >>> x, mask = from_arrays([np.ones(5), np.ones(3)])       # ragged -> padded

Source/target pairs for conditional models (``source<TAB>target`` lines; see
:mod:`probseq.data.pairs`):
    >>> pairs = builtin_pairs("reversal")        # digit strings and their reversals
    >>> enc = PairEncoding.from_pairs(pairs, "sequence")
    >>> splits = pair_splits(*enc.encode(pairs))
    >>> splits.train.source.shape, splits.train.x.shape
    ((18000, 20), (18000, 21))

Simulated data with known parameters (the occasionally dishonest casino):
    >>> c = casino(seed=0, num_sequences=2, num_timesteps=100)
    >>> c.rolls.shape, c.transition_matrix.tolist()
    ((2, 100), [[0.95, 0.05], [0.1, 0.9]])
"""

from probseq.data.arrays import from_arrays
from probseq.data.builtin import Casino, Series, casino, reversal_pairs, series, series_names
from probseq.data.csv import CsvColumns, parse_columns, read_csv
from probseq.data.pairs import (
    PairEncoding,
    Pairs,
    PairSplit,
    PairSplits,
    builtin_pairs,
    pair_batch,
    pair_names,
    pair_splits,
    read_pairs,
)
from probseq.data.scaling import Standardizer
from probseq.data.splits import (
    DataSplits,
    Split,
    cut_rows,
    part_bounds,
    series_splits,
    text_splits,
)
from probseq.data.text import CharVocabulary, cut_sequences, pydoc_text, read_text, split_contiguous
from probseq.padding import pad_sequences

__all__ = [
    "pad_sequences",
    "pydoc_text",
    "CharVocabulary",
    "split_contiguous",
    "cut_sequences",
    "read_text",
    "read_csv",
    "CsvColumns",
    "from_arrays",
    "Standardizer",
    "casino",
    "Casino",
    "reversal_pairs",
    "series",
    "series_names",
    "Series",
    "Split",
    "DataSplits",
    "cut_rows",
    "part_bounds",
    "parse_columns",
    "text_splits",
    "series_splits",
    "Pairs",
    "PairEncoding",
    "PairSplit",
    "PairSplits",
    "read_pairs",
    "builtin_pairs",
    "pair_names",
    "pair_batch",
    "pair_splits",
]
