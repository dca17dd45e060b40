"""Property tests: whatever the file holds, loading a study raises SkipsearchError or nothing."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from skipsearch.config.studies import (
    StudyConfig,
    apply_overrides,
    load_study,
    parse_study,
    resolve_skip_budget,
    study_to_dict,
)
from skipsearch.errors import SkipsearchError

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
VALID = study_to_dict(parse_study({"name": "valid"}, "valid.yaml"))
KEYS = ["name", "model", "task", "search", "draft", "storage", "output", "trials", "source", "seed", "skip_budget",
        "device_map", "lm_head", ""]

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(["tpe", "pareto", "float32", "specbench", "cuda:1", "sqlite:///x.db", "0.5", "auto", "disk",
                       "sdpa"])
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6) | st.integers(), inner, max_size=4),
    max_leaves=12,
)


def _accepts(outcome) -> None:
    assert outcome is None or isinstance(outcome, StudyConfig)


def _parse(data) -> StudyConfig | None:
    try:
        return parse_study(data, "prop.yaml")
    except SkipsearchError as exc:
        assert str(exc).strip()
        return None


@SETTINGS
@given(values)
def test_arbitrary_data_only_raises_skipsearch_error(data):
    _accepts(_parse(data))


@st.composite
def mutated_studies(draw):
    """The valid study with a few leaves replaced, keys dropped or keys added."""
    study = {section: dict(value) if isinstance(value, dict) else value for section, value in VALID.items()}
    for _ in range(draw(st.integers(1, 4))):
        section = draw(st.sampled_from(sorted(study)))
        action = draw(st.sampled_from(["replace", "drop", "add"]))
        target = study[section]
        if isinstance(target, dict) and target and action != "add":
            key = draw(st.sampled_from(list(target)))
            if action == "drop":
                del target[key]
            else:
                target[key] = draw(values)
        elif isinstance(target, dict):
            target[draw(st.text(max_size=8))] = draw(values)
        elif action == "drop":
            del study[section]
        else:
            study[section] = draw(values)
    return study


@SETTINGS
@given(mutated_studies())
def test_mutated_studies_only_raise_skipsearch_error(study):
    cfg = _parse(study)
    if cfg is not None:
        assert parse_study(study_to_dict(cfg), "prop.yaml") == cfg  # what validates round-trips


yaml_texts = st.text(max_size=200) | values.map(lambda v: yaml.safe_dump(v, default_flow_style=None))
yaml_fragments = st.lists(
    st.sampled_from(["name: x\n", "search:\n", "  trials: ", "5", "0.5", "[", "]", "{", "}", ": ", "- ", "&a ", "*a ",
                     "!!binary ", "!!set ", "!!python/object ", "2024-13-45", "\t", "\n", "'", '"', "#", "---\n",
                     "\x00"]),
    max_size=20,
).map("".join)


@SETTINGS
@given(yaml_texts | yaml_fragments | st.binary(max_size=100))
def test_arbitrary_yaml_files_only_raise_skipsearch_error(text):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "study.yaml"
        path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
        try:
            _accepts(load_study(path))
        except SkipsearchError as exc:
            assert str(exc).strip()


@pytest.mark.slow
@SETTINGS
@given(
    st.fixed_dictionaries(
        {},
        optional={
            key: values
            for key in ("trials", "sampler", "objective", "skip_budget", "storage", "seed", "data", "category",
                        "output_profile", "dtype", "device", "device_map", "attn_implementation")
        },
    )
)
def test_overrides_only_raise_skipsearch_error(overrides):
    cfg = parse_study({"name": "valid"}, "valid.yaml")
    try:
        _accepts(apply_overrides(cfg, **overrides))
    except SkipsearchError:
        pass


@SETTINGS
@given(values, st.integers(-3, 100) | st.booleans())
def test_resolve_skip_budget_is_in_range_or_an_error(budget, n_eligible):
    try:
        count = resolve_skip_budget(budget, n_eligible)
    except SkipsearchError:
        return
    assert 1 <= count <= n_eligible
