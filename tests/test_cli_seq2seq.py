"""Conditional models from the command line: ``kind = "pairs"`` specs with a [source]
table, pair files (``source<TAB>target``), and ``probseq fit`` / ``compare`` /
``sample --source`` of Seq2Seq, classifier and tagger runs.

References are independent of the CLI's own encoding: the expected ids are built here
from the saved vocabularies character by character, the split by hand from the
fractions, and the log-likelihoods by ``probseq.log_prob(..., source=...)``. Float32
tolerances: sums of ~100 log-probabilities, rtol 1e-5; values the CLI prints are
checked to the digits it prints.

Timing: one ``probseq fit`` of a tiny Seq2Seq (module fixture, ~10-15 s on a shared
2-core CPU, nearly all of it fit_sgd's compilation); every other run here is saved
from initial parameters (no fit), so each test takes a few seconds.
"""

import json
import re
import tomllib

import jax
import numpy as np
import pytest
from references import run_cli as _run

import probseq
from probseq import cli, io, spec, workflow

TINY = """
seed = 3
[data]
kind = "pairs"
split = [0.7, 0.15, 0.15]
[source]
family = "rnn"
hidden_size = 4
bidirectional = true
attention = "dot"
[model]
family = "rnn"
hidden_size = 4
[fit]
method = "sgd"
num_epochs = 1
batch_size = 16
"""


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def _reversal_lines(n=120, seed=1):
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(n):
        s = "".join(rng.choice(list("abcd"), int(rng.integers(2, 6))))
        lines.append(f"{s}\t{s[::-1]}")
    return lines


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    return _write(tmp_path_factory.mktemp("pairs") / "pairs.txt", "\n".join(_reversal_lines()))


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, pairs_file):
    """A Seq2Seq with dot attention fitted by ``probseq fit`` (its directory)."""
    root = tmp_path_factory.mktemp("runs")
    spec_path = _write(root / "tiny.toml", TINY)
    code = cli.main(["fit", str(spec_path), "--data", str(pairs_file), "--out",
                     str(root / "att"), "--quiet"])  # fmt: skip
    assert code == 0
    return root / "att"


def _unfitted(tmp_path, body, pairs, name):
    """A run saved from initial parameters (no fit): what the CLI reads, quickly."""
    s = spec.parse_spec(tomllib.loads(body), source=f"{name}.toml")
    enc = probseq.data.PairEncoding.from_pairs(pairs, s.data["target"])
    model = s.build_model(vocab_size=enc.target_vocab_size, source_vocab_size=enc.source.vocab_size)
    run = io.Run(model=model, params=s.init_params(model), spec=s, pair_encoding=enc)
    return io.save_run(run, tmp_path / name)


def _hand_encode(run, lines):
    """(sources, targets) ids from the run's saved vocabularies, character by character."""
    with open(f"{run.path}/data.json", encoding="utf-8") as f:
        saved = json.load(f)["pairs"]
    src_ids = {c: i for i, c in enumerate(saved["source"])}
    symbols = saved["symbols"]
    sources, targets = [], []
    for line in lines:
        s, t = line.split("\t")
        sources.append(np.array([src_ids[c] for c in s]))
        if saved["target"] == "label":
            targets.append(np.array([symbols.index(t)]))
        else:
            ids = [symbols.index(c) for c in t]
            eos = [len(symbols)] if saved["target"] == "sequence" else []
            targets.append(np.array(ids + eos))
    return sources, targets


def _table_log_lik(out, name):
    row = next(line for line in out.splitlines() if re.match(rf"\s*\d+\s+{name}\s", line))
    return float(row.split()[2])


# ------------------------------------------------------------------ round trip
def _test_part(run):
    """The test lines (split by hand from 0.7, 0.15, 0.15 of 120: lines 103-120), their
    hand-encoded ids and log_prob totals."""
    src, tgt = _hand_encode(run, _reversal_lines()[102:])
    total = np.asarray(probseq.log_prob(run.model, run.params, tgt, source=src), np.float64)
    return src, tgt, total


def test_fit_saves_a_seq2seq_run_and_its_test_score(fitted):
    run = io.load(fitted)
    assert isinstance(run.model, probseq.Seq2Seq) and run.model.attention == "dot"
    assert run.model.encoder.bidirectional and run.pair_encoding.symbols == tuple("abcd")
    # the fit's saved test score is log_prob on the test lines
    _, tgt, total = _test_part(run)
    num_symbols = sum(len(t) for t in tgt)
    np.testing.assert_allclose(run.info["test_log_lik"], total.sum() / num_symbols, rtol=1e-5)
    assert 0 <= run.info["test_exact_match"] <= 1


def test_compare_a_fitted_run_with_one_without_attention(tmp_path, pairs_file, fitted, capsys):
    run = io.load(fitted)
    src, tgt, total = _test_part(run)
    num_symbols = sum(len(t) for t in tgt)
    # the fitted run against an unfitted one without attention
    body = TINY.replace('attention = "dot"', 'attention = "none"')
    other = _unfitted(tmp_path, body, workflow.read_source("pairs", pairs_file).pairs, "noatt")
    code, out, err = _run(["compare", fitted, other, "--data", pairs_file, "--part", "test",
                           "--quiet"], capsys)  # fmt: skip
    assert code == 0, err
    assert f"of {len(tgt)} sequences, {num_symbols} symbols" in out
    # the CLI's log-likelihood is probseq's log_prob (to the 2 decimals printed)
    assert abs(_table_log_lik(out, "att") - total.sum()) <= 0.006
    loaded = io.load(other)
    lp_other = probseq.log_prob(loaded.model, loaded.params, tgt, source=src)
    assert abs(_table_log_lik(out, "noatt") - float(np.sum(lp_other))) <= 0.006


def test_sample_decodes_sources_greedy_beam_and_ancestral(fitted, capsys):
    """Greedy, beam (k=1 is greedy; beams sorted), ancestral; the log p printed equals
    log_prob of the printed target (with its end token when it has one)."""
    run = io.load(fitted)

    def decoded(argv):
        code, out, err = _run(["sample", fitted, "--source", "abc", "--source", "dcab",
                               "--length", "6", *argv], capsys)  # fmt: skip
        assert code == 0, err
        rows = re.findall(r"^  (\w+) (\d+): (\w*)(.*)\tlog p = (-?[\d.]+)$", out, re.M)
        assert out.count("source ") == 2 and rows
        return rows

    greedy = decoded([])
    assert [r[0] for r in greedy] == ["greedy", "greedy"]
    assert [r[2:] for r in decoded(["--decode", "beam", "--beam-width", "1"])] == [
        r[2:] for r in greedy
    ]
    beams = decoded(["--decode", "beam", "--beam-width", "3"])
    assert len(beams) == 6
    for first in (0, 3):
        scores = [float(r[4]) for r in beams[first : first + 3]]
        assert scores == sorted(scores, reverse=True)
    draws = decoded(["--decode", "ancestral", "--num-samples", "2", "--seed", "5"])
    assert len(draws) == 4
    for rows, sources in ((greedy, ["abc", "dcab"]), (beams[:1], ["abc"])):
        for (_, _, text, unfinished, log_p), source in zip(rows, sources, strict=False):
            if unfinished:  # no end token within --length: 6 symbols, no EOS
                tgt_ids = [run.pair_encoding.symbols.index(c) for c in text]
            else:
                tgt_ids = [run.pair_encoding.symbols.index(c) for c in text] + [4]
            src_ids = [run.pair_encoding.source.chars.index(c) for c in source]
            want = probseq.log_prob(run.model, run.params, np.array(tgt_ids),
                                    source=np.array(src_ids))  # fmt: skip
            assert abs(float(want) - float(log_p)) <= 1e-4 + 1e-5 * abs(float(want))


def test_refit_into_the_run_with_other_pairs_is_refused(tmp_path, fitted, capsys):
    other = _write(tmp_path / "other.txt", "\n".join(_reversal_lines(seed=2)))
    spec_path = _write(tmp_path / "tiny.toml", TINY)
    code, out, err = _run(["fit", spec_path, "--data", other, "--out", fitted], capsys)
    assert code == 1 and err.count("\n") == 1
    assert "its data differs (data.sha256" in err


# ------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "line, message",
    [
        ("abc cba", r"bad.txt, line 2: no tab; each line of a pair file is source<TAB>target"),
        ("abc\t", r"bad.txt, line 2: the target is empty"),
        ("\tcba", r"bad.txt, line 2: the source is empty"),
        ("ab\tc\td", r"bad.txt, line 2: 2 tabs"),
    ],
)
def test_bad_pair_files_give_one_line(tmp_path, line, message, capsys):
    bad = _write(tmp_path / "bad.txt", f"ab\tba\n{line}\n")
    spec_path = _write(tmp_path / "tiny.toml", TINY)
    code, out, err = _run(["fit", spec_path, "--data", bad, "--out", tmp_path / "r"], capsys)
    assert code == 1 and err.count("\n") == 1, err
    assert re.search(message, err), err
    assert not (tmp_path / "r").exists()  # refused before any work


def test_unknown_symbols_at_compare_and_sample_time(tmp_path, pairs_file, capsys):
    run = _unfitted(tmp_path, TINY, workflow.read_source("pairs", pairs_file).pairs, "r")
    new = _write(tmp_path / "new.txt", "ab\tba\nabc\tcba\nabz\tzba\n")
    # the run has no fit record, so it is taken as fitted on these data: score them all
    in_sample = ["--part", "all", "--in-sample"]
    code, out, err = _run(["compare", run, "--data", new, *in_sample], capsys)
    assert code == 1 and err.count("\n") == 1
    assert "new.txt, line 3: source symbol 'z' is not in the run's source vocabulary" in err
    new = _write(tmp_path / "new2.txt", "ab\tba\nabc\tcbx\n")
    code, out, err = _run(["compare", run, "--data", new, *in_sample], capsys)
    assert "new2.txt, line 2: target symbol 'x' is not in the run's target vocabulary" in err
    code, out, err = _run(["sample", run, "--source", "a?c"], capsys)
    assert code == 1 and "--source 'a?c': source symbol '?' is not in" in err
    for argv, message in [
        (["sample", run], "give --source TEXT"),
        (["sample", run, "--source", "ab", "--beam-width", "2"], "--beam-width needs --decode"),
        (["sample", run, "--source", "ab", "--decode", "beam", "--beam-width", "9"],
         "--beam-width 9 exceeds the 5 target symbols"),
        (["sample", run, "--source", "ab", "--temperature", "0.5"], "apply to --decode ancestral"),
    ]:  # fmt: skip
        code, out, err = _run(argv, capsys)
        assert code == 1 and message in err and err.count("\n") == 1, err


@pytest.mark.parametrize(
    "edit, message",
    [
        (("hidden_size = 4\nbidirectional", "hiden = 4\nbidirectional"),
         r"tiny.toml: unknown key 'hiden' in \[source\] \(family 'rnn'\); allowed keys: family, "
         "hidden_size"),
        (('bidirectional = true', 'bidirectional = "yes"'),
         r"tiny.toml: \[source\] \(family 'rnn'\).bidirectional must be true or false; got 'yes'"),
        (('attention = "dot"', 'attention = "luong"'),
         r"tiny.toml: \[source\] \(family 'rnn'\).attention must be one of 'none', 'additive', "
         "'dot'"),
        (('attention = "dot"', 'pooling = "mean"'),
         r"tiny.toml: \[source\].pooling applies to target = 'label' only"),
        (('family = "rnn"\nhidden_size = 4\nbidirectional', 'family = "hmm"\nbidirectional'),
         r"tiny.toml: \[source\].family must be a recurrent family \(rnn, lstm, gru"),
        (("[source]", "[encoder]"), "tiny.toml: unknown key 'encoder' at the top level"),
        (('split = [0.7, 0.15, 0.15]', 'sequence_length = 8'),
         r"tiny.toml: \[data\].sequence_length applies to kind = 'text' or 'series' only"),
        (('method = "sgd"\nnum_epochs = 1\nbatch_size = 16', 'method = "em"'),
         r"method = 'em' fits family = 'hmm' or 'lds' only; for kind = 'pairs' use 'sgd'"),
        (('kind = "pairs"', 'kind = "text"'),
         r"tiny.toml: \[source\] \(an encoder\) applies to kind = 'pairs' only"),
    ],
)  # fmt: skip
def test_bad_source_tables_give_one_line_naming_file_and_key(
    tmp_path, pairs_file, edit, message, capsys
):
    body = TINY.replace(*edit)
    assert body != TINY
    spec_path = _write(tmp_path / "tiny.toml", body)
    code, out, err = _run(["fit", spec_path, "--data", pairs_file, "--out", tmp_path / "r"],
                          capsys)  # fmt: skip
    assert code == 1 and err.count("\n") == 1, err
    assert re.search(message, err), err


def test_label_and_tag_targets_refuse_a_decoder_and_check_tags(tmp_path, capsys):
    body = TINY.replace('kind = "pairs"', 'kind = "pairs"\ntarget = "label"')
    body = body.replace('attention = "dot"', "")
    with pytest.raises(spec.SpecError, match=r"target = 'label' reads its targets off the enc"):
        spec.parse_spec(tomllib.loads(body))
    tags = _write(tmp_path / "tags.txt", "abc\tNVN\nab\tNVN\n")
    pairs = probseq.data.read_pairs(tags)
    enc = probseq.data.PairEncoding.from_pairs(pairs, "tags")
    with pytest.raises(ValueError, match="tags.txt, line 2: target = 'tags' needs one tag per"):
        enc.encode(pairs)


# ----------------------------------------------------------------- specs
def test_pair_specs_round_trip_and_build(tmp_path):
    decoder = '[model]\nfamily = "lstm"\nhidden_size = 6\nnum_layers = 2\n'
    fit = '[fit]\nmethod = "sgd"\n'
    bodies = {
        "seq": '[data]\nkind = "pairs"\n[source]\nfamily = "gru"\nhidden_size = 5\n'
        'layers = 2\nattention = "additive"\nattention_size = 3\n' + decoder + fit,
        "label": '[data]\nkind = "pairs"\ntarget = "label"\n[source]\nfamily = "lru"\n'
        'hidden_size = 4\npooling = "mean"\n' + fit,
        "tags": '[data]\nkind = "pairs"\ntarget = "tags"\n[source]\nfamily = "mingru"\n'
        "hidden_size = 4\nbidirectional = true\n[model]\n" + fit,
    }
    built = {}
    for name, body in bodies.items():
        s = spec.load_spec(_write(tmp_path / f"{name}.toml", body))
        again = spec.load_spec(_write(tmp_path / f"{name}_again.toml", spec.spec_text(s)))
        assert again.to_dict() == s.to_dict() and again.encoder == s.encoder
        built[name] = s.build_model(vocab_size=7, source_vocab_size=9)
    seq = built["seq"]
    assert seq == probseq.Seq2Seq(
        probseq.Encoder(probseq.GRU(vocab_size=9, hidden_size=5), num_layers=2),
        probseq.LSTM(vocab_size=7, hidden_size=6, num_layers=2),
        attention="additive",
        attention_size=3,
    )
    assert built["label"] == probseq.SequenceClassifier(
        probseq.LRU(vocab_size=9, hidden_size=4), num_classes=7, pooling="mean"
    )
    assert built["tags"] == probseq.SequenceTagger(
        probseq.Encoder(probseq.MinGRU(vocab_size=9, hidden_size=4), bidirectional=True),
        num_classes=7,
    )
    # the fingerprint holds the [source] table: another attention size is another fit
    s = spec.load_spec(tmp_path / "seq.toml")
    source = workflow.Source("pairs", origin="x", pairs=probseq.data.builtin_pairs("reversal"))
    a = workflow.fit_fingerprint(s, source)
    b = workflow.fit_fingerprint(s.replace(source={"attention_size": 4}), source)
    assert a["spec"]["source"]["attention_size"] == 3
    assert b["spec"]["source"]["attention_size"] == 4
    with pytest.raises(spec.SpecError, match="attention_size needs attention = 'additive'"):
        s.replace(source={"attention": "dot"})
    assert a["data"]["shape"] == [20000] and len(a["data"]["sha256"]) == 64


def test_builtin_reversal_is_fixed_and_matches_the_example():
    pairs = probseq.data.builtin_pairs("reversal")
    assert len(pairs.sources) == 20000
    assert all(t == s[::-1] for s, t in zip(pairs.sources[:500], pairs.targets, strict=False))
    lengths = [len(s) for s in pairs.sources]
    assert min(lengths) == 5 and max(lengths) == 20
    src, _ = probseq.data.reversal_pairs(np.random.default_rng(0), 20000)
    assert pairs.sources == tuple("".join(map(str, s)) for s in src)
    with pytest.raises(ValueError, match="unknown built-in pairs 'rev'; available: builtin:rev"):
        probseq.data.builtin_pairs("rev")


# ------------------------------------------------- classifier and tagger runs
LABEL = """
[data]
kind = "pairs"
target = "label"
split = [0.5, 0.25, 0.25]
[source]
family = "gru"
hidden_size = 4
[fit]
method = "sgd"
"""


@pytest.mark.parametrize("target", ["label", "tags"])
def test_classifier_and_tagger_runs_compare_and_sample(tmp_path, target, capsys):
    if target == "label":
        lines = ["abab\tpos", "ba\tneg", "aab\tpos", "bbba\tneg", "ab\tpos", "bab\tneg"] * 2
        body = LABEL
    else:
        lines = ["abab\tNVNV", "ba\tVN", "aab\tNNV", "bbba\tVVVN", "ab\tNV", "bab\tVNV"] * 2
        body = LABEL.replace('"label"', '"tags"').replace("hidden_size = 4", "hidden_size = 4\n"
                                                          "bidirectional = true")  # fmt: skip
    data = _write(tmp_path / "data.txt", "\n".join(lines) + "\n")
    run_dir = _unfitted(tmp_path, body, probseq.data.read_pairs(data), "run")
    run = io.load(run_dir)
    src, tgt = _hand_encode(run, lines)
    want = float(np.sum(probseq.log_prob(run.model, run.params, tgt, source=src)))
    # an unfitted run (no fit record): all of the data, labelled in-sample
    code, out, err = _run(["compare", run_dir, "--data", data, "--quiet", "--part", "all",
                           "--in-sample"], capsys)  # fmt: skip
    assert code == 0, err
    assert "IN-SAMPLE" in out + err
    assert abs(_table_log_lik(out, "run") - want) <= 0.006
    # the view the CLI scores is the hand encoding, to float32 rounding
    view = workflow.prepare(run, workflow.read_source("pairs", data))
    lp = run.log_prob(view.x, view.mask, source=view.source, source_mask=view.source_mask)
    np.testing.assert_allclose(float(np.sum(lp)), want, rtol=1e-5)
    code, out, err = _run(["sample", run_dir, "--source", "abba", "--decode", "beam",
                           "--beam-width", "2"], capsys)  # fmt: skip
    assert code == 0, err
    rows = re.findall(r"^  beam (\d): (\S+)\tlog p = (-?[\d.]+)$", out, re.M)
    assert len(rows) == 2
    for _, text, log_p in rows:
        if target == "label":
            assert text in ("pos", "neg")
            y = np.array([run.pair_encoding.symbols.index(text)])
        else:
            assert len(text) == 4 and set(text) <= {"N", "V"}
            y = np.array([run.pair_encoding.symbols.index(c) for c in text])
        x = np.array([run.pair_encoding.source.chars.index(c) for c in "abba"])
        assert (
            abs(float(probseq.log_prob(run.model, run.params, y, source=x)) - float(log_p)) < 2e-4
        )
    code, out, err = _run(["sample", run_dir, "--source", "ab", "--length", "3"], capsys)
    assert code == 1 and "has a fixed length" in err


@pytest.mark.slow
def test_fit_a_classifier_from_the_command_line(tmp_path, capsys):
    """``probseq fit`` of target = 'label' (a fit: ~10-15 s of compilation)."""
    rng = np.random.default_rng(0)
    lines = []
    for _ in range(200):
        s = "".join(rng.choice(list("ab"), int(rng.integers(2, 8))))
        lines.append(f"{s}\t{'first_a' if s[0] == 'a' else 'first_b'}")
    data = _write(tmp_path / "labels.txt", "\n".join(lines))
    body = LABEL.replace('method = "sgd"', 'method = "sgd"\nnum_epochs = 30\nlearning_rate = 0.03')
    spec_path = _write(tmp_path / "clf.toml", body.replace("hidden_size = 4", "hidden_size = 8\n"
                                                           "bidirectional = true"))  # fmt: skip
    code, out, err = _run(["fit", spec_path, "--data", data, "--out", tmp_path / "clf",
                           "--quiet"], capsys)  # fmt: skip
    assert code == 0, err
    run = io.load(tmp_path / "clf")
    assert run.info["test_exact_match"] >= 0.9, run.info  # the first symbol is easy to keep
    assert jax.tree.leaves(run.params)
