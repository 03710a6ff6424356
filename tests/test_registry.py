"""Families register themselves: the spec loader knows a family only through its
FamilySpec, so a family defined here (outside probseq) is loaded, built and fitted
from a spec without any change to probseq/spec.py."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

import probseq
from probseq import core, spec
from probseq.families import FAMILY_SPECS, FamilySpec, register, registry
from probseq.heads import NormalHead


def test_every_public_family_class_is_registered_by_its_own_file():
    classes = {s.model for s in FAMILY_SPECS.values()}
    for name in probseq.families.__all__:
        obj = getattr(probseq.families, name)
        concrete = isinstance(obj, type) and issubclass(obj, core.SequenceModel)
        if concrete and not getattr(obj, "__abstractmethods__", None):
            assert any(issubclass(obj, c) for c in classes), f"{name} has no FamilySpec"
    for name, fam in FAMILY_SPECS.items():
        module = __import__(fam.model.__module__, fromlist=["SPEC"])
        assert module.SPEC is fam and fam.name == name
        assert spec.FAMILIES[name] is fam.model


@pytest.mark.parametrize("name", list(FAMILY_SPECS))
def test_each_family_builds_from_its_smallest_spec(name):
    fam = FAMILY_SPECS[name]
    kind = "text" if "categorical" in fam.heads else "series"
    model_table = {"family": name, **{k: 2 for k in fam.required}}
    if "hidden_size" in fam.keys:
        model_table["hidden_size"] = 4
    method = fam.fit_methods[0]
    s = spec.parse_spec({"data": {"kind": kind}, "model": model_table, "fit": {"method": method}})
    model = s.build_model(vocab_size=5, obs_dim=1)
    assert isinstance(model, fam.model)
    assert spec.parse_spec(s.to_dict()).build_model(vocab_size=5, obs_dim=1) == model


def test_recurrent_specs_build_the_model_a_user_writes():
    s = spec.parse_spec(
        {"data": {"kind": "text"}, "model": {"family": "gru", "hidden_size": 8},
         "fit": {"method": "sgd"}}
    )  # fmt: skip
    assert s.build_model(vocab_size=5) == probseq.GRU(vocab_size=5, hidden_size=8)
    s = s.replace(data={"kind": "series"}, model={"head": "normal"})
    assert s.build_model(obs_dim=2) == probseq.GRU(obs_dim=2, hidden_size=8)


@dataclasses.dataclass(frozen=True)
class _IID(core.SequenceModel):
    """x_t ~ N(loc, scale^2) independently: a family defined outside probseq."""

    head: NormalHead
    shrink: float = 0.0

    def init(self, key, *, dtype=None):
        d = core.param_dtype(dtype)
        return {"loc": jnp.zeros(self.head.event_shape, d), "log_scale": jnp.zeros((), d)}

    def initial_state(self, params):
        return jnp.zeros((), params["loc"].dtype)

    def emission(self, params, state, u=None):
        loc = params["loc"] * (1 - self.shrink)
        return dist.Normal(loc, jnp.exp(params["log_scale"])).to_event(1)

    def update(self, params, state, x, u=None):
        return state


_IID_SPEC = FamilySpec(
    name="iid_test",
    model=_IID,
    keys={"shrink": registry.FRACTION},
    build=lambda options, head: _IID(head=head, **options),
    heads=("normal",),
)


@pytest.fixture
def iid_registered():
    register(_IID_SPEC)
    yield
    registry._REGISTRY.pop(_IID_SPEC.name)


def test_a_family_registered_outside_probseq_is_usable_from_a_spec(iid_registered):
    assert "iid_test" in FAMILY_SPECS  # the public view is live
    s = spec.parse_spec(
        {"data": {"kind": "series"}, "model": {"family": "iid_test", "shrink": 0.5},
         "fit": {"method": "sgd", "num_epochs": 2, "batch_size": 1}}
    )  # fmt: skip
    model = s.build_model(obs_dim=1)
    assert model == _IID(head=NormalHead(1), shrink=0.5)
    assert "iid_test" in spec.FAMILIES
    x = np.random.default_rng(0).normal(2.0, 1.0, size=(1, 50, 1))
    split = probseq.data.Split(x=x, mask=np.ones(x.shape[:2], bool))
    fit = s.fit_model(model, s.init_params(model), split, progress=False)
    assert np.isfinite(np.asarray(fit.params["loc"])).all()
    with pytest.raises(spec.SpecError, match=r"unknown key 'hidden_size'.*allowed keys: "
                       "family, shrink, head"):  # fmt: skip
        spec.parse_spec({"data": {"kind": "series"},
                         "model": {"family": "iid_test", "hidden_size": 3},
                         "fit": {"method": "sgd"}})  # fmt: skip
    with pytest.raises(spec.SpecError, match="models real-valued series, not text"):
        spec.parse_spec({"data": {"kind": "text"}, "model": {"family": "iid_test"},
                         "fit": {"method": "sgd"}})  # fmt: skip
    with pytest.raises(spec.SpecError, match="method = 'em' fits family = 'hmm' or 'lds' only"):
        spec.parse_spec({"data": {"kind": "series"}, "model": {"family": "iid_test"},
                         "fit": {"method": "em"}})  # fmt: skip


@pytest.mark.parametrize(
    "change, message",
    [
        ({"name": "lstm"}, "already registered"),
        ({"name": "two words"}, "identifier"),
        ({"heads": ("gaussian",)}, "heads must be among"),
        ({"heads": ()}, "heads must be among"),
        ({"keys": {"head": registry.BOOL}}, "are the loader's"),
        ({"required": ("order",)}, "required keys"),
        ({"keys": {"shrink": (float, None, "x")}}, "must be a Key"),
    ],
)
def test_register_refuses_an_inconsistent_family(change, message):
    with pytest.raises(ValueError, match=message):
        register(_IID_SPEC._replace(**change))
    with pytest.raises(ValueError, match="takes a FamilySpec"):
        register({"name": "x"})


def test_make_head_says_what_is_missing():
    with pytest.raises(ValueError, match="needs vocab_size"):
        registry.make_head("categorical")
    with pytest.raises(ValueError, match="needs obs_dim"):
        registry.make_head("poisson", vocab_size=3)
    assert registry.make_head("mixture_normal", obs_dim=2, num_components=4).num_components == 4


def test_registry_is_read_only_from_outside():
    with pytest.raises(TypeError):
        FAMILY_SPECS["x"] = FAMILY_SPECS["rnn"]
