"""SubnetConfig / SearchSpace: canonical subnets, sampling, validation errors, JSON round trips."""

import pytest
import torch
from transformers import SamConfig

from supersam_hf import SearchSpace, SubnetConfig, SuperSamConfig, build_sam_config


def space(**overrides) -> SearchSpace:
    kwargs = dict(
        num_layers=6,
        mlp_dim=128,
        elastic_layers=[1, 3, 4, 5],
        layer_drop_probs=[0.1, 0.5, 0.2, 0.9],
        mlp_dim_choices=[[32, 64, 96, 128]] * 6,
        min_layers=3,
    )
    kwargs.update(overrides)
    return SearchSpace(**kwargs)


def test_largest_and_smallest():
    s = space()
    assert s.largest() == SubnetConfig((0, 1, 2, 3, 4, 5), (128,) * 6)
    # Three layers may go; the most droppable (5, 3, 4) go first.
    assert s.smallest() == SubnetConfig((0, 1, 2), (32, 32, 32))


def test_sample_is_valid_deterministic_and_follows_drop_probs():
    s = space()
    draws = [s.sample(torch.Generator().manual_seed(k)) for k in range(400)]
    assert draws[:20] == [s.sample(torch.Generator().manual_seed(k)) for k in range(20)]
    for cfg in draws:
        s.validate(cfg)
    drop_rate = {i: sum(i not in c.kept_layers for c in draws) / len(draws) for i in range(6)}
    assert drop_rate[0] == drop_rate[2] == 0.0
    assert drop_rate[1] < drop_rate[4] < drop_rate[3] < drop_rate[5]  # min_layers restores keep this ordering
    widths = {d for c in draws for d in c.mlp_dims}
    assert widths == {32, 64, 96, 128}


def test_sample_respects_min_layers_even_with_high_drop_probs():
    s = space(layer_drop_probs=[0.99] * 4, min_layers=5)
    for k in range(50):
        assert len(s.sample(torch.Generator().manual_seed(k)).kept_layers) >= 5


def test_json_round_trips_and_hashing():
    cfg = SubnetConfig([0, 1, 3], [64, 32, 128])
    assert SubnetConfig.from_json(cfg.to_json()) == cfg
    assert hash(SubnetConfig((0, 1, 3), (64, 32, 128))) == hash(cfg)
    assert len({cfg, SubnetConfig((0, 1, 3), (64, 32, 128))}) == 1
    assert cfg.name == "L3-w64-w32-w128"
    assert SubnetConfig((0, 1, 2), (64, 64, 32)).name == "L3-w64x2-w32"
    s = space()
    assert SearchSpace.from_json(s.to_json()) == s


@pytest.mark.parametrize(
    "cfg, message",
    [
        (SubnetConfig((0, 1, 2, 3, 7), (32,) * 5), "out of range"),
        (SubnetConfig((0, -1, 2, 3), (32,) * 4), "out of range"),
        (SubnetConfig((0, 2, 1, 3), (32,) * 4), "sorted"),
        (SubnetConfig((0, 1, 1, 3), (32,) * 4), "duplicates"),
        (SubnetConfig((0, 1, 3, 4, 5), (32,) * 5), "not elastic"),
        (SubnetConfig((0, 1, 2, 3), (32, 33, 32, 32)), "not among its choices"),
        (SubnetConfig((0, 1, 2, 3), (32, 0, 32, 32)), "must be in 1..128"),
        (SubnetConfig((0, 1, 2, 3), (32, 256, 32, 32)), "must be in 1..128"),
        (SubnetConfig((0, 2), (32, 32)), "min_layers"),
        (SubnetConfig((0, 1, 2, 3), (32, 32)), "one width per kept layer"),
    ],
)
def test_validate_names_the_problem(cfg, message):
    with pytest.raises(ValueError, match=message):
        space().validate(cfg)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(layer_drop_probs=[0.1, 0.5, 1.0, 0.2]), r"outside \[0, 1\)"),
        (dict(layer_drop_probs=[0.1, -0.1, 0.0, 0.2]), r"outside \[0, 1\)"),
        (dict(layer_drop_probs=[0.1, 0.5]), "one probability per elastic layer"),
        (dict(elastic_layers=[1, 9, 4, 5]), "out of range"),
        (dict(min_layers=0), "min_layers"),
    ],
)
def test_bad_search_space_is_rejected(overrides, message):
    with pytest.raises(ValueError, match=message):
        space(**overrides)
    sam_config = build_sam_config(num_hidden_layers=6, hidden_size=32)
    names = {"num_layers", "mlp_dim"}
    config_overrides = {k: v for k, v in overrides.items() if k not in names}
    if "elastic_layers" not in config_overrides:
        config_overrides["elastic_layers"] = [1, 3, 4, 5]
    with pytest.raises(ValueError, match=message):
        SuperSamConfig.from_sam_config(sam_config, **config_overrides)


def test_config_defaults_and_round_trip(tmp_path):
    config = SuperSamConfig.from_sam_config(build_sam_config(num_hidden_layers=6, hidden_size=32))
    assert config.elastic_layers == [1, 2, 3, 4, 5]
    assert config.mlp_dim_choices[0] == [16, 32, 64, 96, 128]
    assert config.min_layers == 3 and config.prioritized is False
    config.save_pretrained(tmp_path)
    loaded = SuperSamConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    assert isinstance(config.to_sam_config(), SamConfig) and config.to_sam_config().model_type == "sam"
