"""params.yaml loads into typed, frozen objects; bad values name their key."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest
import yaml

from bridgenet.config import ConfigError, Params, apply_overrides, load_params, params_from_dict

REPO = Path(__file__).resolve().parents[1]
REPO_PARAMS = REPO / "params.yaml"


def test_repo_params_load_and_hold_the_required_keys():
    params = load_params(REPO_PARAMS)
    flat = params.flat()
    for key in ("data.root", "data.categories", "data.image_size", "model.backbone",
                "model.weights", "train.epochs", "train.seed", "tracking.uri"):
        assert key in flat
    assert params.model.weights == "package"


def test_repo_params_list_every_tunable():
    # params.yaml is the one place a user looks: every config key is spelled out.
    raw = yaml.safe_load(REPO_PARAMS.read_text())
    written = set(params_from_dict(raw).flat())
    assert set(Params().flat()) == written
    assert set(_flatten(raw)) == written


def _flatten(raw, prefix=""):
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and key not in ("tolerances", "category_overrides"):
            yield from _flatten(value, dotted + ".")
        else:
            yield dotted


def test_params_are_frozen():
    params = load_params(REPO_PARAMS)
    with pytest.raises(pydantic.ValidationError):
        params.train.epochs = 3


def test_unknown_key_names_the_key(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  epohcs: 3\n")
    with pytest.raises(ConfigError, match=r"train\.epohcs: unknown key"):
        load_params(path)


def test_unknown_section_names_the_section():
    with pytest.raises(ConfigError, match="trian"):
        params_from_dict({"trian": {"epochs": 3}})


def test_wrong_type_names_key_and_value():
    with pytest.raises(ConfigError, match=r"data\.image_size: got 'big'"):
        params_from_dict({"data": {"image_size": "big"}})


def test_bool_is_not_an_int():
    with pytest.raises(ConfigError, match=r"train\.epochs"):
        params_from_dict({"train": {"epochs": True}})


def test_out_of_range_names_key_value_and_bound():
    with pytest.raises(ConfigError, match=r"train\.threads: got -1; .*greater than or equal to 0"):
        params_from_dict({"train": {"threads": -1}})


def test_cross_field_rules():
    with pytest.raises(ConfigError, match="modality_probs"):
        params_from_dict({"anomalies": {"gaussian": {"modality_probs": [0.5, 0.5, 0.5]}}})
    with pytest.raises(ConfigError, match="perlin_min_scale"):
        params_from_dict({"anomalies": {"texture": {"perlin_min_scale": 6, "perlin_max_scale": 3}}})
    with pytest.raises(ConfigError, match="model.weights"):
        params_from_dict({"model": {"weights": "imagenet"}})
    with pytest.raises(ConfigError, match="promotion.tolerances"):
        params_from_dict({"promotion": {"tolerances": {"image_auroc": 0.1}}})


def test_the_threshold_limits_of_the_gate_are_shares_and_off_at_their_ends():
    with pytest.raises(ConfigError, match=r"promotion.max_fpr_at_threshold: got 1.5; .*less than or equal to 1"):
        params_from_dict({"promotion": {"max_fpr_at_threshold": 1.5}})
    with pytest.raises(ConfigError, match=r"promotion.min_recall_at_threshold: got -0.1"):
        params_from_dict({"promotion": {"min_recall_at_threshold": -0.1}})
    with pytest.raises(ConfigError, match=r"promotion.tolerances: .*unknown metrics \['fpr'\]"):
        params_from_dict({"promotion": {"tolerances": {"image_auroc": 0.1, "aupro_30": 0.1, "fpr": 0.1}}})
    project = load_params(Path(__file__).resolve().parents[1] / "params.yaml").promotion
    assert project.caps() == {"fpr_at_threshold": 0.2}
    assert project.floors() == {"image_auroc": 0.5, "recall_at_threshold": 0.5}
    off = params_from_dict({"promotion": {"max_fpr_at_threshold": 1, "min_recall_at_threshold": 0}}).promotion
    assert off.caps() == {} and "recall_at_threshold" not in off.floors()


def test_int_is_accepted_for_a_float():
    assert params_from_dict({"train": {"lr_discriminator": 1}}).train.lr_discriminator == 1.0


def test_overrides_reach_the_config():
    params = load_params(REPO_PARAMS, ["data.categories=[a, b]", "train.epochs=3",
                                       "model.weights=none", "anomalies.texture.enabled=false"])
    assert params.data.categories == ("a", "b")
    assert params.train.epochs == 3
    assert params.model.weights == "none"
    assert params.anomalies.texture.enabled is False


def test_bad_override_is_refused():
    with pytest.raises(ConfigError, match="section.key=value"):
        apply_overrides({}, ["epochs"])
    with pytest.raises(ConfigError, match="dotted"):
        apply_overrides({}, ["epochs=3"])
    with pytest.raises(ConfigError, match=r"train\.epochs: got 'x'"):
        load_params(REPO_PARAMS, ["train.epochs=x"])


def test_missing_explicit_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_params(tmp_path / "nope.yaml")


def test_category_overrides_apply_to_their_category_only():
    params = load_params(REPO_PARAMS, ["category_overrides.bagel={train: {epochs: 3}}"])
    assert params.for_category("bagel").train.epochs == 3
    assert params.for_category("dowel").train.epochs == params.train.epochs
    assert params.for_category("bagel").category_overrides == {}


def test_bad_category_override_names_category_and_key():
    with pytest.raises(ConfigError, match=r"category_overrides\.bagel:\n\s+train\.epochs: got -3"):
        load_params(REPO_PARAMS, ["category_overrides.bagel={train: {epochs: -3}}"])
    with pytest.raises(ConfigError, match=r"category_overrides\.bagel: sections \['data'\]"):
        load_params(REPO_PARAMS, ["category_overrides.bagel={data: {root: x}}"])
