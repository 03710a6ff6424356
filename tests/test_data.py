"""probseq.data: files, arrays, standardization, built-in data sets and splits.

Every error message is pinned on its key words; round trips are exact; the
splits lose no step and are scored directly by the models.
"""

import json
import subprocess
import sys
import warnings

import jax
import numpy as np
import pytest

import probseq
from probseq import data

# ----------------------------------------------------------------------------- existing helpers


def test_split_contiguous_cuts_along_time():
    parts = data.split_contiguous(np.arange(20.0).reshape(10, 2), (0.6, 0.2, 0.2))
    assert [p.shape for p in parts] == [(6, 2), (2, 2), (2, 2)]
    np.testing.assert_array_equal(np.concatenate(parts), np.arange(20.0).reshape(10, 2))
    with pytest.raises(ValueError, match=r"ids must be 1-D or \(T, ...\).*got shape \(\)"):
        data.split_contiguous(np.float64(1.0))


# ----------------------------------------------------------------------------- read_text


def test_read_text_utf8_bom_and_newlines(tmp_path):
    p = tmp_path / "a.txt"
    p.write_bytes("\ufeffhéllo\r\nwörld\rend\n".encode())
    assert data.read_text(p) == "héllo\nwörld\nend\n"
    assert data.read_text(str(p)) == "héllo\nwörld\nend\n"


def test_read_text_errors(tmp_path):
    with pytest.raises(ValueError, match=r"read_text: no such file '.*nope\.txt'"):
        data.read_text(tmp_path / "nope.txt")
    with pytest.raises(ValueError, match="is a directory, not a file"):
        data.read_text(tmp_path)
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.txt' is empty\.$"):
        data.read_text(tmp_path / "empty.txt")
    (tmp_path / "blank.txt").write_text(" \n\t\n")
    with pytest.raises(ValueError, match=r"is empty \(only whitespace\)"):
        data.read_text(tmp_path / "blank.txt")
    (tmp_path / "latin1.txt").write_bytes(b"ok\ncaf\xe9\n")
    with pytest.raises(ValueError, match=r"not UTF-8 text: byte 0xe9 at byte offset 6 \(line 2\)"):
        data.read_text(tmp_path / "latin1.txt")
    with pytest.raises(ValueError, match="path must be a str or os.PathLike; got int"):
        data.read_text(3)


def test_file_errors_are_one_line(tmp_path):
    (tmp_path / "bad.csv").write_bytes(b"a,b\n1,\xff\n")
    for fn, path in [(data.read_text, tmp_path / "x"), (data.read_csv, tmp_path / "bad.csv")]:
        with pytest.raises(ValueError) as e:
            fn(path)
        assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------- read_csv
CSV = """date,temp,label,pressure
2024-01-01,1.5,a,1000
2024-01-02,2.5,b,1001.5

2024-01-03, -3e-1 ,c,"1,002"
"""


def _write(tmp_path, text, name="t.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_read_csv_auto_columns(tmp_path):
    p = _write(tmp_path, CSV.replace('"1,002"', "1002"))
    table = data.read_csv(p)
    assert table.names == ("temp", "pressure")
    assert table.values.dtype == np.float64
    np.testing.assert_array_equal(table.values, [[1.5, 1000], [2.5, 1001.5], [-0.3, 1002]])


@pytest.mark.parametrize(
    "columns", [["pressure", "temp"], (3, 1), "pressure, temp", "3,1", ["pressure", 1]]
)
def test_read_csv_chosen_columns(tmp_path, columns):
    p = _write(tmp_path, CSV.replace('"1,002"', "1002"))
    table = data.read_csv(p, columns=columns)
    assert table.names == ("pressure", "temp")
    np.testing.assert_array_equal(table.values[:, 1], [1.5, 2.5, -0.3])


def test_read_csv_single_column_and_quoted_fields(tmp_path):
    p = _write(tmp_path, 'x,"name, with comma"\n1,"2"\n3,"4"\n')
    table = data.read_csv(p, columns=["name, with comma"])  # a list: names may hold commas
    assert table.names == ("name, with comma",)
    assert table.values.shape == (2, 1)
    assert data.read_csv(p, columns=0).values[:, 0].tolist() == [1.0, 3.0]


def test_read_csv_errors(tmp_path):
    with pytest.raises(ValueError, match="read_csv: no such file"):
        data.read_csv(tmp_path / "missing.csv")
    with pytest.raises(ValueError, match=r"is empty"):
        data.read_csv(_write(tmp_path, "", "empty.csv"))
    with pytest.raises(ValueError, match="has no header row"):
        data.read_csv(_write(tmp_path, '"\n', "quote.csv"))
    with pytest.raises(ValueError, match="has a header but no data rows"):
        data.read_csv(_write(tmp_path, "a,b\n\n", "header.csv"))
    p = _write(tmp_path, CSV)
    with pytest.raises(ValueError, match=r"t\.csv'.*no column named 'wind'.*'date', 'temp'"):
        data.read_csv(p, columns=["temp", "wind"])
    with pytest.raises(ValueError, match=r"column index 4 is out of range.*4 columns"):
        data.read_csv(p, columns=[4])
    with pytest.raises(ValueError, match=r"row 5, column 'pressure': '1,002' is not a finite"):
        data.read_csv(p, columns="temp,pressure")
    with pytest.raises(ValueError, match=r"row 2, column 'label': 'a' is not a finite number"):
        data.read_csv(p, columns=["label"])
    with pytest.raises(ValueError, match="column 'temp' is chosen twice"):
        data.read_csv(p, columns=["temp", 1])
    with pytest.raises(ValueError, match="columns is empty"):
        data.read_csv(p, columns=[])
    with pytest.raises(ValueError, match="each column must be a name"):
        data.read_csv(p, columns=[1.0])
    with pytest.raises(ValueError, match="columns must be None, a list"):
        data.read_csv(p, columns={"temp"})
    ragged = _write(tmp_path, "a,b\n1,2\n3\n", "ragged.csv")
    with pytest.raises(ValueError, match=r"row 3 has 1 fields, but the header \(row 1\) has 2"):
        data.read_csv(ragged)
    gaps = _write(tmp_path, "a,b\n1,2\n3,\n4,nan\n", "gaps.csv")
    with pytest.raises(ValueError, match=r"row 3, column 'b': is empty"):
        data.read_csv(gaps, columns=["b"])
    with pytest.raises(ValueError, match=r"row 4, column 'b': 'nan' is not a finite number"):
        data.read_csv(_write(tmp_path, "a,b\n1,2\n3,4\n4,nan\n", "nan.csv"), columns=["b"])
    with pytest.raises(ValueError, match=r"no column that holds numbers.*'x', 'y'"):
        data.read_csv(_write(tmp_path, "x,y\na,b\n", "words.csv"))
    dup = _write(tmp_path, "a,a\n1,2\n", "dup.csv")
    with pytest.raises(ValueError, match=r"names 'a' 2 times \(columns 0, 1\)"):
        data.read_csv(dup, columns="a")
    assert data.read_csv(dup, columns=[1]).values.tolist() == [[2.0]]


@pytest.mark.parametrize(
    "text, line, column, what",
    [
        ("a,b\n1,2\n3,\n4,5\n", 3, "b", "is empty"),  # the gap used to drop column b
        ("a,b\n1,2\n3,4\n4,nan\n", 4, "b", "'nan' is not a finite number"),
        ("t,value\n1,2.5\n2,NaN\n3,1\n", 3, "value", "'NaN' is not a finite number"),
        ("date,x\n2024-01-01,1\n2024-01-02,\n", 3, "x", "is empty"),  # the only numeric one
        ("x\n1\n2\n\n4\n", 4, "x", "is empty"),  # a one-column file: a blank line is a gap
        ("a,b\n1,inf\n2,3\n", 2, "b", "'inf' is not a finite number"),
        ("a,b\n1,2\n2,-Infinity\n", 3, "b", "'-Infinity' is not a finite number"),
        ("a,b\n1,2\n2,oops\n", 3, "b", "'oops' is not a finite number"),
    ],
)
def test_read_csv_never_drops_a_numeric_column_with_a_gap(tmp_path, text, line, column, what):
    p = _write(tmp_path, text)
    with pytest.raises(ValueError) as e:
        data.read_csv(p)
    msg = str(e.value)
    assert f"row {line}, column {column!r}: {what}" in msg
    assert "\n" not in msg
    with pytest.raises(ValueError, match=f"row {line}, column {column!r}: "):
        data.read_csv(p, columns=[column])  # the same when the column is chosen


def test_read_csv_says_which_columns_it_used_and_why_others_were_left_out(tmp_path):
    p = _write(
        tmp_path, "date,temp,label,empty,pressure\n2024-01-01,1.5,a,,1000\n2024-01-02,2.5,b,,1001\n"
    )
    table = data.read_csv(p)
    assert table.names == ("temp", "pressure")
    assert table.left_out == (
        ("date", "holds no number: row 2 is '2024-01-01'"),
        ("label", "holds no number: row 2 is 'a'"),
        ("empty", "every cell is empty"),
    )
    assert table.notice == (
        "using columns 'temp', 'pressure'; left out 'date' (holds no number: row 2 is "
        "'2024-01-01'); 'label' (holds no number: row 2 is 'a'); 'empty' (every cell is empty)"
    )
    chosen = data.read_csv(p, columns="pressure")
    assert chosen.left_out == () and chosen.notice == "using column 'pressure'"
    values, names, left_out = table  # a plain NamedTuple
    assert values.shape == (2, 2)
    # Blank lines around the data, and between rows of a wider file, are no gaps.
    assert data.read_csv(_write(tmp_path, "\nx\n\n1\n2\n\n\n", "x.csv")).values.tolist() == [
        [1.0],
        [2.0],
    ]


@pytest.mark.parametrize("cell", ["1e308", "-1e308", "3.5e38", "1e39"])
def test_read_csv_refuses_values_beyond_float32_before_any_work(tmp_path, cell):
    p = _write(tmp_path, f"a,b\n1,2\n2,{cell}\n3,4\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow RuntimeWarning may leak
        with pytest.raises(ValueError, match=rf"row 3, column 'b': '{cell}' is too large"):
            data.read_csv(p)
        with pytest.raises(ValueError, match=r"row 3, column 'b'"):
            data.read_csv(p, columns=["b"])
        ok = data.read_csv(_write(tmp_path, "a\n3.4e38\n-3.4e38\n", "ok.csv"))
        assert ok.values[:, 0].tolist() == [3.4e38, -3.4e38]


def test_standardizer_huge_values_without_overflow():
    x = np.array([1e308, -1e308, 5e307, 0.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = data.Standardizer.fit(x)
        z = s.transform(x)
        splits = data.series_splits(np.r_[x, x], fractions=(0.5, 0.25, 0.25))
    np.testing.assert_allclose(s.mean, [np.mean(x / 1e300) * 1e300])
    np.testing.assert_allclose(s.scale, [np.std(x / 1e300) * 1e300])
    np.testing.assert_allclose(z, (x / 1e300 - s.mean[0] / 1e300) / (s.scale[0] / 1e300))
    assert np.isfinite(splits.train.x).all()
    # Ordinary data: the same numbers as before (no rescaling below 1e150).
    y = np.array([[1.0, 2.0], [3.0, 5.0], [4.0, 7.0]])
    s = data.Standardizer.fit(y)
    assert s.mean == tuple(y.mean(0).tolist()) and s.scale == tuple(y.std(0).tolist())


# ----------------------------------------------------------------------------- from_arrays


def test_from_arrays_shapes():
    x, mask = data.from_arrays(np.arange(4.0))
    assert x.shape == (1, 4, 1) and mask.shape == (1, 4) and mask.all()
    x, mask = data.from_arrays(np.arange(4))
    assert x.shape == (1, 4) and mask.all()
    x, _ = data.from_arrays(np.zeros((5, 3)))
    assert x.shape == (1, 5, 3)
    x, mask = data.from_arrays(np.zeros((2, 5, 3)))
    assert x.shape == (2, 5, 3) and mask.shape == (2, 5) and mask.all()
    x, _ = data.from_arrays(np.zeros((2, 5), np.int32))
    assert x.shape == (2, 5) and x.dtype == np.int32
    x, mask = data.from_arrays([1.0, 2.0, 3.0])
    assert x.shape == (1, 3, 1) and mask.all()
    x, _ = data.from_arrays(np.zeros((2, 5), np.int64), event_ndim=1)  # counts, (T, D)
    assert x.shape == (1, 2, 5)


def test_from_arrays_ragged():
    x, mask = data.from_arrays([np.array([1.0, 2.0, 3.0]), np.array([4.0])])
    assert x.shape == (2, 3, 1)
    assert mask.tolist() == [[True, True, True], [True, False, False]]
    np.testing.assert_array_equal(x[1, :, 0], [4.0, 0.0, 0.0])
    x, mask = data.from_arrays([[0, 1], [2, 3, 4]])
    assert x.shape == (2, 3) and mask.sum() == 5
    x, mask = data.from_arrays([np.ones((3, 2)), np.ones((1, 2))])
    assert x.shape == (2, 3, 2) and mask.sum() == 4


def test_from_arrays_errors():
    with pytest.raises(ValueError, match=r"data must hold integers or real numbers.*bool"):
        data.from_arrays(np.ones(3, bool))
    with pytest.raises(ValueError, match=r"data must hold integers or real numbers.*<U1"):
        data.from_arrays(np.array(["a", "b"]))
    with pytest.raises(ValueError, match=r"data\[1\] must hold integers or real numbers"):
        data.from_arrays([np.ones(2), np.array(["a"])])
    with pytest.raises(ValueError, match=r"real vectors of shape \(T,\), \(T, D\) or \(B, T, D\)"):
        data.from_arrays(np.zeros((1, 2, 3, 4)))
    with pytest.raises(ValueError, match=r"token ids of shape \(T,\) or \(B, T\)"):
        data.from_arrays(np.zeros((2, 3, 4), int))
    with pytest.raises(ValueError, match="data is empty"):
        data.from_arrays(np.zeros((0, 3)))
    with pytest.raises(ValueError, match=r"data\[1\] is an empty sequence"):
        data.from_arrays([np.ones(2), np.ones(0)])
    with pytest.raises(ValueError, match=r"non-finite value nan at index \(1, 0, 0\)"):
        data.from_arrays([np.ones(2), np.array([np.nan])])
    with pytest.raises(ValueError, match="event_ndim must be None, 0"):
        data.from_arrays(np.ones(3), event_ndim=2)


# ----------------------------------------------------------------------------- Standardizer


def test_standardizer_fit_shapes_and_constant_dimension():
    rng = np.random.default_rng(0)
    y = rng.normal([1.0, -2.0, 5.0], [2.0, 0.5, 1.0], size=(200, 3))
    y[:, 2] = 7.0  # constant: centred, scale 1
    s = data.Standardizer.fit(y)
    np.testing.assert_allclose(s.mean, [y[:, 0].mean(), y[:, 1].mean(), 7.0], rtol=1e-14)
    np.testing.assert_allclose(s.scale[:2], y[:, :2].std(axis=0), rtol=1e-14)
    assert s.scale[2] == 1.0 and s.obs_dim == 3
    z = s.transform(y)
    np.testing.assert_allclose(z[:, :2].mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(z[:, :2].std(0), 1, atol=1e-12)
    np.testing.assert_array_equal(z[:, 2], 0.0)
    assert isinstance(s.mean, tuple) and all(type(v) is float for v in s.mean + s.scale)
    assert hash(s) == hash(data.Standardizer(tuple(s.mean), tuple(s.scale)))


def test_standardizer_fit_with_mask_ignores_padding():
    x = np.array([[[1.0], [2.0], [np.nan]], [[3.0], [np.inf], [0.0]]])
    mask = np.array([[True, True, False], [True, False, False]])
    s = data.Standardizer.fit(x, mask)
    assert s.mean == (2.0,)
    np.testing.assert_allclose(s.scale, [np.std([1.0, 2.0, 3.0])])
    assert data.Standardizer.fit(x[..., 0], mask) == s  # (B, T) with a (B, T) mask
    assert data.Standardizer.fit(np.array([1.0, 2.0, 3.0])) == s  # (T,): D = 1
    assert data.Standardizer.fit(np.array([[1.0], [2.0], [3.0]]), np.ones(3, bool)) == s


def test_standardizer_fit_errors():
    with pytest.raises(ValueError, match=r"x has a non-finite value nan at index \(1, 1\)"):
        data.Standardizer.fit(np.array([[0.0, 1.0], [2.0, np.nan]]))
    with pytest.raises(ValueError, match=r"non-finite value inf at index \(0, 2\)"):
        data.Standardizer.fit(np.array([[0.0, 1.0, np.inf]]), np.ones((1, 3), bool))
    with pytest.raises(ValueError, match=r"mask has shape \(2,\), which does not fit x"):
        data.Standardizer.fit(np.zeros((2, 3, 1)), np.ones(2, bool))
    with pytest.raises(ValueError, match="mask has no valid step"):
        data.Standardizer.fit(np.zeros((2, 3)), np.zeros(2, bool))
    with pytest.raises(ValueError, match="mask must be boolean"):
        data.Standardizer.fit(np.zeros(3), np.full(3, 0.5))
    with pytest.raises(ValueError, match=r"x must be \(T,\), \(T, D\) or \(B, T, D\)"):
        data.Standardizer.fit(np.zeros((1, 2, 3, 4)))
    with pytest.raises(ValueError, match="x must hold integers or real numbers"):
        data.Standardizer.fit(np.array(["a"]))


def test_standardizer_round_trip_any_leading_shape():
    y = data.series("co2").values if _has_statsmodels() else np.linspace(300, 400, 500)
    s = data.Standardizer.fit(y)
    z = s.transform(y)
    assert z.shape == y.shape and z.dtype == np.float64  # (T,) stays (T,) with D = 1
    np.testing.assert_allclose(s.inverse(z), y, rtol=1e-12, atol=1e-12)
    paths = np.random.default_rng(1).normal(size=(7, 5, 2))  # (S, H, D) sample paths
    s2 = data.Standardizer((1.0, -3.0), (2.0, 0.25))
    np.testing.assert_allclose(s2.inverse(paths), paths * [2.0, 0.25] + [1.0, -3.0])
    np.testing.assert_allclose(s2.transform(s2.inverse(paths)), paths, rtol=1e-12, atol=1e-12)
    assert s.inverse(np.float32(0.5)).dtype == np.float64
    with pytest.raises(ValueError, match=r"x has shape \(7, 5, 3\).*last axis must have length 2"):
        s2.inverse(np.zeros((7, 5, 3)))


def test_standardizer_jacobian():
    s = data.Standardizer((1.0, 2.0), (0.5, 4.0))
    assert s.log_abs_det_jacobian == pytest.approx(np.log(0.5) + np.log(4.0))
    y = np.array([0.3, -1.2])
    z = s.transform(y)

    def log_normal(v, loc, scale):
        return np.sum(-0.5 * ((v - loc) / scale) ** 2 - np.log(scale) - 0.5 * np.log(2 * np.pi))

    # A standard normal in z-space is N(mean, scale) in original units.
    lhs = log_normal(y, np.array(s.mean), np.array(s.scale))
    assert lhs == pytest.approx(log_normal(z, 0.0, 1.0) - s.log_abs_det_jacobian, abs=1e-12)


def test_standardizer_dict_round_trip_and_strictness():
    s = data.Standardizer.fit(np.random.default_rng(2).normal(size=(50, 3)))
    d = json.loads(json.dumps(s.to_dict()))
    assert data.Standardizer.from_dict(d) == s  # exact
    assert data.Standardizer.from_dict(s.to_dict()) == s
    with pytest.raises(ValueError, match=r"missing 'scale'; expected exactly the keys"):
        data.Standardizer.from_dict({"mean": [0.0]})
    with pytest.raises(ValueError, match=r"unexpected 'std'"):
        data.Standardizer.from_dict({"mean": [0.0], "scale": [1.0], "std": [1.0]})
    with pytest.raises(ValueError, match="takes a dict with keys 'mean' and 'scale'; got list"):
        data.Standardizer.from_dict([[0.0], [1.0]])
    with pytest.raises(ValueError, match=r"scale\[1\] must be positive; got 0.0"):
        data.Standardizer.from_dict({"mean": [0.0, 0.0], "scale": [1.0, 0.0]})
    with pytest.raises(ValueError, match="mean has 2 values but scale has 1"):
        data.Standardizer((0.0, 1.0), (1.0,))
    with pytest.raises(ValueError, match=r"mean\[0\] must be finite; got nan"):
        data.Standardizer((float("nan"),), (1.0,))
    with pytest.raises(ValueError, match=r"scale\[0\] must be a number; got '1'"):
        data.Standardizer((0.0,), ("1",))
    with pytest.raises(ValueError, match="mean is empty"):
        data.Standardizer((), ())


# ----------------------------------------------------------------------------- casino


def test_casino_shapes_and_reproducibility():
    c = data.casino(seed=3, num_sequences=4, num_timesteps=50)
    assert c.rolls.shape == c.states.shape == (4, 50)
    assert c.rolls.dtype == c.states.dtype == np.int32
    assert c.rolls.min() >= 0 and c.rolls.max() <= 5 and set(np.unique(c.states)) <= {0, 1}
    np.testing.assert_array_equal(c.initial_probs, [0.5, 0.5])
    np.testing.assert_array_equal(c.transition_matrix, [[0.95, 0.05], [0.1, 0.9]])
    np.testing.assert_allclose(c.emission_probs.sum(1), 1.0)
    again = data.casino(seed=3, num_sequences=4, num_timesteps=50)
    np.testing.assert_array_equal(c.rolls, again.rolls)
    np.testing.assert_array_equal(c.states, again.states)
    assert not np.array_equal(c.rolls, data.casino(seed=4, num_sequences=4, num_timesteps=50).rolls)
    assert data.casino().rolls.shape == (5, 300)


def test_casino_statistics_match_the_true_parameters():
    c = data.casino(seed=0, num_sequences=400, num_timesteps=500)
    z, x = c.states, c.rolls

    def within(count, total, p, k=4.0):
        se = np.sqrt(p * (1 - p) / total)
        assert abs(count / total - p) < k * se, (count / total, p, se)

    within((z[:, 0] == 1).sum(), z.shape[0], 0.5)
    prev, nxt = z[:, :-1].ravel(), z[:, 1:].ravel()
    for i in range(2):
        for j in range(2):
            within(((prev == i) & (nxt == j)).sum(), (prev == i).sum(), c.transition_matrix[i, j])
    for i in range(2):
        for v in range(6):
            within(((z == i) & (x == v)).sum(), (z == i).sum(), c.emission_probs[i, v])


def test_casino_scores_under_its_hmm():
    c = data.casino(seed=1, num_sequences=3, num_timesteps=40)
    model = probseq.CategoricalHMM(2, 6)
    params = model.init(
        jax.random.key(0),
        initial_probs=c.initial_probs,
        transition_matrix=c.transition_matrix,
        emission_probs=c.emission_probs,
    )
    lp = np.asarray(probseq.log_prob(model, params, c.rolls))
    assert lp.shape == (3,) and np.isfinite(lp).all()
    assert (lp > 40 * np.log(1 / 6) - 10).all()


def test_casino_errors():
    for bad in (True, -1, 1.5, "0", None):
        with pytest.raises(ValueError, match="seed must be a non-negative int"):
            data.casino(bad)
    with pytest.raises(
        ValueError, match=r"num_sequences must be a positive int, got num_sequences=0"
    ):
        data.casino(0, num_sequences=0)
    with pytest.raises(ValueError, match="num_timesteps must be a positive int"):
        data.casino(0, num_timesteps=2.0)


# ----------------------------------------------------------------------------- series


def _has_statsmodels():
    try:
        import statsmodels  # noqa: F401
    except ModuleNotFoundError:
        return False
    return True


@pytest.mark.parametrize(
    "name, length, first, last, words",
    [
        ("sunspots", 309, 1700.0, 2008.0, ["SUNACTIVITY", "sunspot number", "statsmodels"]),
        ("nile", 100, 1871.0, 1970.0, ["Aswan", "10^8 cubic metres", "Cobb"]),
        ("co2", 2284, 1958.2, 2002.0, ["ppmv", "linear interpolation", "Mauna Loa"]),
        ("elnino", 732, 1950.0, 2010.95, ["degrees Celsius", "Nino 1+2", "ERSST"]),
    ],
)
def test_series_load(name, length, first, last, words):
    pytest.importorskip("statsmodels")
    s = data.series(name)
    assert s.name == name
    assert s.values.shape == (length,) and s.values.dtype == np.float64
    assert np.isfinite(s.values).all()
    assert s.index.shape == (length,) and s.index.dtype == np.float64
    assert np.all(np.diff(s.index) > 0)
    assert s.index[0] == pytest.approx(first, abs=0.05)
    assert s.index[-1] == pytest.approx(last, abs=0.05)
    for w in words:
        assert w in s.description


def test_series_co2_gaps_are_interpolated_in_time():
    pytest.importorskip("statsmodels")
    from statsmodels.datasets import co2

    raw = co2.load_pandas().data["co2"].to_numpy()
    s = data.series("co2")
    known = np.isfinite(raw)
    assert (~known).sum() == 59 and "59 missing weeks" in s.description
    np.testing.assert_array_equal(s.values[known], raw[known])
    i = int(np.flatnonzero(~known)[0])  # a single gap: the midpoint of its neighbours
    assert known[i - 1] and known[i + 1]
    assert s.values[i] == pytest.approx((raw[i - 1] + raw[i + 1]) / 2)
    assert s.index[0] == pytest.approx(1958 + (31 + 28 + 28) / 365)  # 1958-03-29


def test_series_elnino_is_month_by_month():
    pytest.importorskip("statsmodels")
    from statsmodels.datasets import elnino

    table = elnino.load_pandas().data
    s = data.series("elnino")
    assert s.values[:2].tolist() == [table["JAN"][0], table["FEB"][0]]
    assert s.values[12] == table["JAN"][1]
    assert s.index[13] == pytest.approx(1951 + 1 / 12)


def test_series_names_and_unknown():
    assert data.series_names() == ("sunspots", "nile", "co2", "elnino")
    with pytest.raises(ValueError, match=r"unknown series 'sunspot'.*'sunspots', 'nile'"):
        data.series("sunspot")


def test_series_without_statsmodels(monkeypatch):
    monkeypatch.setitem(sys.modules, "statsmodels", None)
    monkeypatch.setitem(sys.modules, "statsmodels.datasets", None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'probseq\[series\]'"):
        data.series("nile")


def test_importing_probseq_does_not_import_statsmodels():
    code = "import sys, probseq; print('statsmodels' in sys.modules, 'pandas' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


# ----------------------------------------------------------------------------- text_splits
TEXT = "the quick brown fox jumps over the lazy dog. " * 7  # 315 characters


def _valid_ids(split):
    return split.x[split.mask]


def test_text_splits_lose_no_character():
    s = data.text_splits(TEXT, sequence_length=16)
    decoded = "".join(s.vocabulary.decode(_valid_ids(p)) for p in (s.train, s.valid, s.test))
    assert decoded == TEXT
    assert s.scaler is None and s.vocabulary == data.CharVocabulary.from_text(TEXT)
    n_train = int(0.9 * len(TEXT))  # 283 = 17 rows of 16 + 11
    assert s.train.x.shape == (18, 16) and s.train.x.dtype == np.int32
    assert s.train.mask.sum(1).tolist() == [16] * 17 + [11]
    assert s.train.mask.sum() == n_train
    assert (s.train.x[-1, 11:] == 0).all()
    assert s.valid.x.shape == (1, 16) and s.valid.mask.all()  # 16 characters: one row
    assert s.test.x.shape == (1, 16)


def test_text_splits_short_part_and_given_vocabulary():
    vocab = data.CharVocabulary.from_text(TEXT + "XYZ")
    s = data.text_splits(TEXT, sequence_length=100, fractions=(0.8, 0.1, 0.1), vocabulary=vocab)
    assert s.vocabulary is vocab
    assert s.train.x.shape == (3, 100) and s.train.mask.sum(1).tolist() == [100, 100, 52]
    assert s.valid.x.shape == (1, 31) and s.valid.mask.all()  # shorter than one row
    assert "".join(vocab.decode(_valid_ids(p)) for p in s[:3]) == TEXT


def test_text_splits_errors():
    with pytest.raises(ValueError, match=r"text\[3\] = 'd' is not in the vocabulary"):
        data.text_splits("abcd", sequence_length=2, vocabulary=data.CharVocabulary("abc"))
    with pytest.raises(ValueError, match=r"the valid part is empty: 10 characters"):
        data.text_splits("abcdefghij", sequence_length=4, fractions=(0.9, 0.05, 0.05))
    with pytest.raises(ValueError, match=r"the test part is empty.*larger test fraction"):
        data.text_splits("abcdefghij", sequence_length=4, fractions=(0.5, 0.45, 0.04))
    with pytest.raises(ValueError, match="fractions must be three positive numbers"):
        data.text_splits(TEXT, sequence_length=4, fractions=(0.9, 0.1))
    with pytest.raises(ValueError, match="fractions must be three positive numbers"):
        data.text_splits(TEXT, sequence_length=4, fractions=(0.9, 0.1, 0.1))
    with pytest.raises(ValueError, match="fractions must be three positive numbers"):
        data.text_splits(TEXT, sequence_length=4, fractions=(0.9, 0.0, 0.1))
    with pytest.raises(
        ValueError, match="sequence_length must be a positive int, got sequence_length=0"
    ):
        data.text_splits(TEXT, sequence_length=0)
    with pytest.raises(
        ValueError, match="sequence_length must be a positive int, got sequence_length=None"
    ):
        data.text_splits(TEXT, sequence_length=None)
    with pytest.raises(ValueError, match="text must be a non-empty str"):
        data.text_splits("", sequence_length=4)
    with pytest.raises(ValueError, match="vocabulary must be a CharVocabulary or None; got str"):
        data.text_splits(TEXT, sequence_length=4, vocabulary="abc")


# ----------------------------------------------------------------------------- series_splits


def test_series_splits_train_only_scaling():
    y = np.linspace(0.0, 10.0, 100) + np.sin(np.arange(100.0))
    s = data.series_splits(y)
    assert s.vocabulary is None
    assert s.scaler == data.Standardizer.fit(y[:80])
    assert s.train.x.shape == (1, 80, 1) and s.valid.x.shape == (1, 10, 1)
    assert s.test.x.shape == (1, 10, 1) and s.train.x.dtype == np.float64
    np.testing.assert_allclose(s.train.x.mean(), 0.0, atol=1e-12)
    np.testing.assert_allclose(s.train.x.std(), 1.0, atol=1e-12)
    assert s.test.x.mean() > 1.0  # the trend continues: the test part is not re-centred
    whole = np.concatenate([p.x[p.mask] for p in s[:3]])
    np.testing.assert_allclose(s.scaler.inverse(whole)[:, 0], y, rtol=1e-12, atol=1e-12)


def test_series_splits_windows_and_columns():
    y = np.random.default_rng(0).normal(size=(103, 2)) * [1.0, 50.0]
    s = data.series_splits(y, sequence_length=20, fractions=(0.7, 0.2, 0.1))
    assert s.scaler.obs_dim == 2
    assert s.train.x.shape == (4, 20, 2) and s.train.mask.sum(1).tolist() == [20, 20, 20, 12]
    assert s.valid.x.shape == (1, 20, 2) and s.valid.mask.all()  # exactly one row
    assert s.test.x.shape == (1, 11, 2)
    assert (s.train.x[-1, 12:] == 0).all()
    whole = np.concatenate([p.x[p.mask] for p in s[:3]])
    np.testing.assert_allclose(s.scaler.inverse(whole), y, rtol=1e-12, atol=1e-12)
    raw = data.series_splits(y.astype(np.float32), standardize=False)
    assert raw.scaler is None and raw.train.x.dtype == np.float64
    np.testing.assert_array_equal(raw.train.x[0], y[:82].astype(np.float32))


def test_series_splits_errors():
    with pytest.raises(ValueError, match=r"values has a non-finite value nan at index \(3,\)"):
        data.series_splits(np.array([0.0, 1.0, 2.0, np.nan, 4.0]))
    with pytest.raises(ValueError, match=r"values must be one series of shape \(T,\) or \(T, D\)"):
        data.series_splits(np.zeros((2, 3, 1)))
    with pytest.raises(ValueError, match=r"got shape \(0,\)"):
        data.series_splits(np.zeros(0))
    with pytest.raises(ValueError, match="values must hold integers or real numbers"):
        data.series_splits(np.array(["1", "2"]))
    with pytest.raises(ValueError, match="the valid part is empty: 5 steps"):
        data.series_splits(np.arange(5.0))
    with pytest.raises(ValueError, match="sequence_length must be None or a positive int"):
        data.series_splits(np.arange(50.0), sequence_length=-2)


# ----------------------------------------------------------------------------- integration


def test_series_splits_feed_a_gaussian_hmm():
    y = np.cumsum(np.random.default_rng(0).normal(size=(130, 2)), axis=0)
    s = data.series_splits(y, sequence_length=32)  # train (4, 32), valid and test (1, 13)
    model = probseq.GaussianHMM(2, obs_dim=2)
    params = model.init(jax.random.key(0))
    for part in (s.train, s.valid, s.test):
        lp = np.asarray(probseq.log_prob(model, params, part.x, part.mask))
        assert lp.shape == (part.x.shape[0],) and np.isfinite(lp).all()
    # The masked, padded last row scores exactly as the short row alone.
    n = int(s.train.mask[-1].sum())
    last = probseq.log_prob(model, params, s.train.x, s.train.mask)[-1]
    alone = probseq.log_prob(model, params, s.train.x[-1, :n])
    np.testing.assert_allclose(np.asarray(last), np.asarray(alone), rtol=1e-5)


def test_series_splits_feed_an_lstm():
    y = np.sin(np.arange(90) / 5.0) * 10 + 3  # (T,): D = 1
    s = data.series_splits(y, sequence_length=25)
    assert s.train.x.shape == (3, 25, 1)
    model = probseq.LSTM(obs_dim=1, hidden_size=4)
    params = model.init(jax.random.key(1))
    lp = np.asarray(probseq.log_prob(model, params, s.train.x, s.train.mask))
    assert lp.shape == (s.train.x.shape[0],) and np.isfinite(lp).all()


def test_text_splits_feed_a_categorical_hmm():
    s = data.text_splits(TEXT, sequence_length=50)
    model = probseq.CategoricalHMM(3, s.vocabulary.vocab_size)
    params = model.init(jax.random.key(2))
    for part in (s.train, s.valid, s.test):
        lp = np.asarray(probseq.log_prob(model, params, part.x, part.mask))
        assert lp.shape == (part.x.shape[0],) and np.isfinite(lp).all()


# ----------------------------------------------------------------------------- package layout
_PUBLIC = (
    "pad_sequences pydoc_text CharVocabulary split_contiguous cut_sequences read_text read_csv "
    "CsvColumns from_arrays Standardizer casino Casino series series_names Series Split "
    "DataSplits cut_rows text_splits series_splits reversal_pairs Pairs PairEncoding PairSplit "
    "PairSplits read_pairs builtin_pairs pair_names pair_batch pair_splits part_bounds "
    "parse_columns"
).split()


def test_data_is_a_package_that_reexports_every_public_name():
    import importlib

    assert hasattr(data, "__path__"), "probseq.data must be a package, one module per concern"
    assert sorted(data.__all__) == sorted(_PUBLIC)
    for name in _PUBLIC:
        assert getattr(data, name) is getattr(importlib.import_module("probseq.data"), name)
    from probseq.data import csv as csv_module
    from probseq.data import splits, text

    assert csv_module.read_csv is data.read_csv
    assert text.CharVocabulary is data.CharVocabulary
    assert splits.series_splits is data.series_splits


def test_validation_does_not_import_the_data_layer():
    """Padding lives below the core: validation imports probseq.padding, not probseq.data."""
    import ast
    import inspect

    import probseq.padding
    import probseq.validation

    tree = ast.parse(inspect.getsource(probseq.validation))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not any(m and m.startswith("probseq.data") for m in imported), imported
    assert data.pad_sequences is probseq.padding.pad_sequences
    padding_tree = ast.parse(inspect.getsource(probseq.padding))
    assert not any(
        isinstance(n, ast.ImportFrom) and (n.module or "").startswith("probseq")
        for n in ast.walk(padding_tree)
    ), "probseq.padding is the ground floor: it imports nothing from probseq"
