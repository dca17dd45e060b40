"""Whatever a profile file or mapping holds, the loader either returns a Profile or raises SkipsearchError."""

import dataclasses
import datetime

import jsonschema
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from skipsearch import DraftSettings, Profile, ProfileMetrics, ProfileModel, SkipsearchError, SkipSet
from skipsearch.config import profiles
from skipsearch.engine.drafting import NgramSettings, PolicySettings, RelativeCosts

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
NUM_LAYERS = 4
VALID = profiles.profile_to_dict(
    Profile(
        model=ProfileModel("tiny", "llama", NUM_LAYERS, "sha256:" + "0" * 64),
        task="humaneval",
        skip=SkipSet(attention=(1, 2), mlp=(2,)),
        draft=DraftSettings(max_draft_tokens=8, confidence_threshold=0.8, ngram=NgramSettings(2, 4, 10),
                            policy=PolicySettings(), costs=RelativeCosts(verify=(1.0, 1.7, 2.2), draft_step=0.85)),
        metrics=ProfileMetrics(matchness=0.8, speedup=1.1, device="cpu"),
        provenance={"seed": 0, "command": ["skipsearch", "search"]},
    )
)
# the same profile as version 1 wrote it: the skip set drafts every round
VALID_V1 = {**VALID, "skipsearch_profile": 1,
            "draft": {"max_draft_tokens": 8, "confidence_threshold": 0.8}}
SCHEMA = jsonschema.Draft202012Validator(profiles.profile_schema())
KEYS = ["skipsearch_profile", "model", "name", "architecture", "num_hidden_layers", "fingerprint", "task", "skip",
        "attention", "mlp", "draft", "max_draft_tokens", "confidence_threshold", "ngram", "min_n", "max_n",
        "max_tokens", "policy", "ngram_prior", "layer_skip_prior", "prior_weight", "margin", "costs", "verify",
        "draft_step", "metrics", "speedup", "provenance"]

scalars = (
    st.none() | st.booleans() | st.integers(-3, 40) | st.integers() | st.floats()
    | st.text(max_size=10) | st.sampled_from(KEYS) | st.dates() | st.sampled_from([1, 2, 1.0, 0.5])
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8) | st.sampled_from(KEYS), inner,
                                                                  max_size=4),
    max_leaves=10,
)


def load_text(tmp_path, content) -> None:
    path = tmp_path / "p.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8", "surrogatepass"))
    try:
        profiles.load_profile(path)
    except SkipsearchError as exc:
        assert "\n" not in str(exc)


@pytest.mark.slow
@FAST
@given(values)
def test_any_yaml_document_loads_or_gives_one_line(tmp_path, value):
    load_text(tmp_path, yaml.safe_dump(value))


@FAST
@given(st.text())
def test_any_text_loads_or_gives_one_line(tmp_path, text):
    load_text(tmp_path, text)


@FAST
@given(st.binary())
def test_any_bytes_load_or_give_one_line(tmp_path, content):
    load_text(tmp_path, content)


@FAST
@given(st.data())
def test_spliced_profile_text_loads_or_gives_one_line(tmp_path, data):
    text = profiles.dump_profile(profiles.parse_profile(VALID))
    start = data.draw(st.integers(0, len(text)))
    end = data.draw(st.integers(start, min(len(text), start + 20)))
    load_text(tmp_path, text[:start] + data.draw(st.text(max_size=10)) + text[end:])


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, prefix + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, prefix + (index,))


def _mutate(root: dict, data) -> dict:
    """Replace, delete, rename or add one entry somewhere in the mapping."""
    path = data.draw(st.sampled_from(list(_paths(root))))
    if not path:
        return data.draw(values)
    parent = root
    for key in path[:-1]:
        parent = parent[key]
    last = path[-1]
    action = data.draw(st.sampled_from(["replace", "delete", "rename", "add"]))
    if action == "replace":
        parent[last] = data.draw(values)
    elif action == "delete":
        del parent[last]
    elif isinstance(parent, dict) and action == "rename":
        parent[data.draw(st.text(max_size=8) | st.sampled_from(KEYS))] = parent.pop(last)
    elif isinstance(parent, dict):
        parent[data.draw(st.text(max_size=8) | st.sampled_from(KEYS))] = data.draw(values)
    else:
        parent.append(data.draw(values))
    return root


@pytest.mark.slow
@settings(max_examples=600, deadline=None)
@given(st.data())
def test_mutated_mappings_parse_or_give_one_line_and_the_schema_agrees(data):
    mapping = yaml.safe_load(yaml.safe_dump(data.draw(st.sampled_from([VALID, VALID_V1]))))
    for _ in range(data.draw(st.integers(1, 3))):
        mapping = _mutate(mapping, data)
        if not isinstance(mapping, dict):
            break
    try:
        profile = profiles.parse_profile(mapping, source="p.yaml")
    except SkipsearchError as exc:
        assert str(exc).startswith("p.yaml: ") and "\n" not in str(exc)
        return
    # The schema cannot check cross-field bounds or tell 2.0 from 2, so it may accept more;
    # it must never refuse what the loader accepts.
    SCHEMA.validate(mapping)
    # Written as version 3 as the runtime reads it: an older file's missing n-gram settings become the defaults.
    written = dataclasses.replace(profile, skipsearch_profile=profiles.PROFILE_VERSION)
    if profile.skipsearch_profile < 3 and profile.draft.ngram is None:
        written = dataclasses.replace(written, draft=dataclasses.replace(profile.draft, ngram=NgramSettings()))
    reread = profiles.parse_profile(yaml.safe_load(profiles.dump_profile(profile)))
    assert reread == written
    assert profiles.decode_fields(reread) == profiles.decode_fields(profile)


# Every numeric draft field at and around its bounds. min_n is 1 in the base mapping so that
# max_n's own bound, not the cross-field min_n <= max_n the schema cannot express, decides.
DRAFT_FIELDS = [("max_draft_tokens",), ("confidence_threshold",), ("ngram", "min_n"), ("ngram", "max_n"),
                ("ngram", "max_tokens"), ("policy", "ngram_prior"), ("policy", "layer_skip_prior"),
                ("policy", "prior_weight"), ("policy", "margin"), ("costs", "verify", 0), ("costs", "verify", 1),
                ("costs", "draft_step")]
INTEGER_FIELDS = {("max_draft_tokens",), ("ngram", "min_n"), ("ngram", "max_n"), ("ngram", "max_tokens")}
BOUNDARY_VALUES = [-1, 0, 0.0, 5e-324, 0.5, 0.999, 1, 1.0, 1.5, 2, True, "1", None, [1]]


@pytest.mark.parametrize("path", DRAFT_FIELDS, ids=lambda path: ".".join(map(str, path)))
def test_parser_and_schema_agree_at_the_bounds_of_each_draft_field(path):
    for value in BOUNDARY_VALUES:
        if path in INTEGER_FIELDS and isinstance(value, float) and value.is_integer():
            continue  # JSON Schema counts 1.0 as an integer; the loader asks for 1 (see test_profiles)
        mapping = yaml.safe_load(yaml.safe_dump(VALID))
        mapping["draft"]["ngram"]["min_n"] = 1
        target = mapping["draft"]
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        try:
            profiles.parse_profile(mapping)
            accepted = True
        except SkipsearchError:
            accepted = False
        assert SCHEMA.is_valid(mapping) == accepted, f"draft.{'.'.join(map(str, path))} = {value!r}"


indices = st.lists(st.integers(0, 29), unique=True, max_size=30).map(tuple)
finite = st.floats(0, 1e6, allow_nan=False, allow_infinity=False)
plain_text = st.text(min_size=1, max_size=20)
provenance_scalars = st.none() | st.booleans() | st.integers() | finite | st.text(max_size=20)

positive = st.floats(0, 1e6, exclude_min=True)
prior = st.floats(0, 1, exclude_max=True)
ngram_settings = st.builds(lambda min_n, extra, max_tokens: NgramSettings(min_n, min_n + extra, max_tokens),
                           st.integers(1, 8), st.integers(0, 8), st.integers(1, 64))
policies = st.builds(PolicySettings, ngram_prior=prior, layer_skip_prior=prior, prior_weight=positive,
                     margin=positive)
relative_costs = st.builds(RelativeCosts, verify=st.lists(positive, min_size=1, max_size=16).map(lambda v: (1.0, *v)),
                           draft_step=positive)

skip_sets = st.builds(SkipSet, attention=indices, mlp=indices)


@st.composite
def valid_policies(draw) -> tuple[SkipSet, DraftSettings]:
    """A skip set and draft settings under version 2's rules: costs exactly with a policy;
    something drafts; without a policy, n-grams only with an empty skip set (which would
    otherwise draft every round)."""
    ngram = draw(st.none() | ngram_settings)
    policy = draw(st.none() | policies)
    costs = draw(relative_costs) if policy else None
    if ngram is None:
        skip = draw(skip_sets.filter(len))
    else:
        skip = SkipSet() if policy is None else draw(st.just(SkipSet()) | skip_sets)
    return skip, DraftSettings(draw(st.integers(1, 64)), draw(st.floats(0, 1)), ngram=ngram, policy=policy,
                               costs=costs)


valid_profiles = st.builds(
    lambda policy, **fields: Profile(skip=policy[0], draft=policy[1], **fields),
    policy=valid_policies(),
    model=st.builds(ProfileModel, name=plain_text, architecture=plain_text, num_hidden_layers=st.just(30),
                    fingerprint=st.from_regex(r"sha256:[0-9a-f]{64}", fullmatch=True)),
    task=plain_text,
    metrics=st.none() | st.builds(
        ProfileMetrics,
        matchness=st.none() | st.floats(0, 1), acceptance_rate=st.none() | st.floats(0, 1),
        mean_accepted_tokens=st.none() | finite, speedup=st.none() | finite, predicted_speedup=st.none() | finite,
        device=st.none() | plain_text, dtype=st.none() | plain_text,
    ),
    provenance=st.dictionaries(st.text(max_size=10),
                               provenance_scalars | st.lists(provenance_scalars, max_size=3), max_size=4),
)


@pytest.mark.slow
@FAST
@given(valid_profiles)
def test_valid_profiles_round_trip_through_a_file_and_fit_the_schema(tmp_path, profile):
    path = tmp_path / "p.yaml"
    profiles.save_profile(profile, path)
    assert profiles.load_profile(path) == profile
    SCHEMA.validate(yaml.safe_load(path.read_text(encoding="utf-8")))


def test_dates_are_strings_once_written():
    profile = profiles.parse_profile({**VALID, "provenance": {"date": "2025-01-31"}})
    assert yaml.safe_load(profiles.dump_profile(profile))["provenance"]["date"] == "2025-01-31"
    assert not isinstance(yaml.safe_load("d: 2025-01-31")["d"], str)  # why the writer must quote it
    assert isinstance(yaml.safe_load("d: 2025-01-31")["d"], datetime.date)
