"""search_subnets: budgets respected, impossible budgets refused, caching and resume, both strategies, output
files, select_subnet, and `supersam search` end to end."""

import json

import pytest

from helpers import tiny_processor, tiny_supernet
from supersam_hf.search import driver as search_module
from supersam_hf.search import opentuner_compat
from supersam_hf.cli import main as cli_main
from supersam_hf.data import make_synthetic_shapes
from supersam_hf.evaluation import EvaluationData
from supersam_hf import SearchSpace, SubnetConfig
from supersam_hf.search import (SearchResult, cheapest_subnet, load_pareto, pareto_front, repair, search_subnets,
                                select_subnet)
from supersam_hf.search.proposals import decode_opentuner_config, make_proposals

IMAGE = 64


@pytest.fixture(scope="module")
def supernet():
    return tiny_supernet(num_layers=6, image_size=IMAGE)


@pytest.fixture(scope="module")
def processor():
    return tiny_processor(IMAGE)


@pytest.fixture(scope="module")
def dataset():
    return make_synthetic_shapes(4, image_size=IMAGE, seed=5)


@pytest.fixture(scope="module")
def data(dataset, processor):
    return EvaluationData.prepare(dataset, processor)  # the 4 search images, batched once for every test


@pytest.fixture(scope="module")
def half_params(supernet):
    """A params budget halfway between the smallest and the largest subnet."""
    space = supernet.search_space
    return (supernet.count_parameters(space.smallest()) + supernet.count_parameters(space.largest())) // 2


@pytest.fixture
def counted(monkeypatch):
    """Every subnet the search scores, in order (wraps the evaluation function the search calls)."""
    calls = []
    original = search_module.evaluate_model

    def counting(model, dataset, processor=None, subnet=None, **kwargs):
        calls.append(subnet)
        return original(model, dataset, processor, subnet=subnet, **kwargs)

    monkeypatch.setattr(search_module, "evaluate_model", counting)
    return calls


def test_params_budget_is_met_and_outputs_are_written(supernet, processor, data, half_params, counted, tmp_path):
    result = search_subnets(supernet, data, processor, budget=7, max_params=half_params, output_dir=tmp_path,
                            show_progress=False)
    assert result.num_evaluated == result.num_new_evaluations == len(counted) == 7
    assert len({e["name"] for e in result.evaluations}) == 7  # never the same subnet twice
    reference = result.evaluations[0]
    assert reference["reference"] and reference["name"] == supernet.search_space.largest().name
    assert not reference["feasible"] and reference["violations"] == ["max_params"]
    assert counted[0] == supernet.search_space.largest()
    # every subnet scored after the reference met the budget (infeasible ones were rejected unscored)
    for cfg in counted[1:]:
        assert supernet.count_parameters(cfg) <= half_params
    for entry in result.evaluations[1:] + result.pareto:
        assert entry["feasible"] and entry["params"] <= half_params
        assert entry["params"] == supernet.count_parameters(select_subnet(entry))
    best = result.best
    assert best is not None and best.metrics["params"] <= half_params and best.subnet == select_subnet(best.entry)
    assert best.metrics["miou"] == max(e["miou"] for e in result.evaluations if e["feasible"])
    assert best.metrics["prompt"] == "box" and best.metrics["num_images"] == 4
    params = [e["params"] for e in result.pareto]
    mious = [e["miou"] for e in result.pareto]
    assert params == sorted(params) and mious == sorted(mious) and best.entry in result.pareto
    assert len(set(params)) == len(params)

    saved = json.loads((tmp_path / "search_results.json").read_text())
    assert saved == result.to_dict() and SearchResult.load(tmp_path) == result  # the typed result is the file
    assert saved["constraints"]["max_params"] == half_params
    assert load_pareto(tmp_path) == result.pareto
    assert (tmp_path / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert select_subnet("best", tmp_path) == best.subnet
    assert select_subnet("pareto:0", tmp_path) == select_subnet(result.pareto[0])
    with pytest.raises(ValueError, match=rf"pareto:0 … pareto:{len(result.pareto) - 1}"):
        select_subnet("pareto:99", tmp_path)
    with pytest.raises(FileExistsError, match="resume"):
        search_subnets(supernet, data, processor, budget=7, output_dir=tmp_path, show_progress=False)


def test_impossible_budgets_name_the_smallest_value(supernet, processor, data, tmp_path, counted):
    smallest = cheapest_subnet(supernet.search_space, supernet.count_parameters)[1]
    with pytest.raises(ValueError, match=f"max_params=1,000 is below the smallest subnet's {smallest:,} parameters"):
        search_subnets(supernet, data, processor, max_params=1000, output_dir=tmp_path)
    macs = cheapest_subnet(supernet.search_space, supernet.count_macs)[1]
    with pytest.raises(ValueError, match=f"below the smallest subnet's {macs:,} MACs"):
        search_subnets(supernet, data, processor, max_macs=10, output_dir=tmp_path)
    with pytest.raises(ValueError, match="min_size_reduction=0.9 is above the largest achievable reduction"):
        search_subnets(supernet, data, processor, min_size_reduction=0.9, output_dir=tmp_path)
    with pytest.raises(ValueError, match="max_latency_ms=1e-06 is below the smallest subnet's measured"):
        search_subnets(supernet, data, processor, max_latency_ms=1e-6, output_dir=tmp_path)
    assert counted == [] and not (tmp_path / "search_results.json").exists()


@pytest.mark.parametrize("strategy", ["opentuner", "random"])
def test_resume_reuses_finished_evaluations(supernet, processor, dataset, data, half_params, counted, tmp_path, strategy):
    kwargs = dict(max_params=half_params, strategy=strategy, seed=1, show_progress=False)
    first = search_subnets(supernet, data, processor, budget=3, output_dir=tmp_path / "run", **kwargs)
    assert len(counted) == first.num_evaluated == 3
    resumed = search_subnets(supernet, data, processor, budget=6, output_dir=tmp_path / "run", resume=True, **kwargs)
    assert len(counted) == 6 and resumed.num_new_evaluations == 3 and resumed.num_evaluated == 6
    assert set(counted[3:]).isdisjoint(counted[:3])  # nothing scored twice
    # a resumed search is the uninterrupted one
    fresh = search_subnets(supernet, data, processor, budget=6, output_dir=tmp_path / "fresh", **kwargs)
    assert [e["name"] for e in fresh.evaluations] == [e["name"] for e in resumed.evaluations]
    assert [e["miou"] for e in fresh.evaluations] == [e["miou"] for e in resumed.evaluations]
    assert fresh.evaluations[0]["reference"] and all(not e["reference"] for e in fresh.evaluations[1:])
    with pytest.raises(ValueError, match="prompt"):  # results measured differently are not mixed
        search_subnets(supernet, dataset, processor, budget=6, resume=True, output_dir=tmp_path / "run", prompt="point",
                       max_images=1, **kwargs)


def test_latency_budget_is_measured_and_met(supernet, processor, data, tmp_path):
    result = search_subnets(supernet, data, processor, budget=3, max_latency_ms=1e4, latency_repeats=2,
                            strategy="random", output_dir=tmp_path, show_progress=False)
    assert all(isinstance(e["latency_ms"], float) and 0 < e["latency_ms"] <= 1e4 for e in result.evaluations)
    assert all(e["feasible"] for e in result.evaluations)


def test_pareto_front_keeps_only_non_dominated_feasible_points():
    def entry(name, params, miou, feasible=True):
        return {"name": name, "params": params, "miou": miou, "feasible": feasible}

    entries = [entry("a", 10, 0.5), entry("b", 20, 0.4), entry("c", 30, 0.7), entry("d", 5, 0.9, False),
               entry("e", 10, 0.6), entry("f", 40, 0.7)]
    assert [e["name"] for e in pareto_front(entries)] == ["e", "c"]


def test_too_few_layers_are_repaired_most_important_first():
    space = SearchSpace(num_layers=6, mlp_dim=8, elastic_layers=[1, 2, 3, 4, 5], layer_drop_probs=[0.4, 0.1, 0.3, 0.1, 0.2],
                        mlp_dim_choices=[[4, 8]] * 6, min_layers=4)
    widths = {i: 4 for i in range(6)}
    # everything dropped: the three lowest drop probabilities (2 and 4 tie at 0.1, then 5) come back
    assert repair(space, {i: False for i in range(1, 6)}, widths) == SubnetConfig((0, 2, 4, 5), (4, 4, 4, 4))
    assert repair(space, {1: False, 3: False}, widths) == SubnetConfig((0, 2, 4, 5), (4, 4, 4, 4))  # already valid
    assert repair(space, {1: False, 2: False, 3: False}, widths) == SubnetConfig((0, 2, 4, 5), (4, 4, 4, 4))


def test_differential_evolution_parent_order_is_reproducible():
    """opentuner's DE draws parents from a set of population members; hashed by address, that order (and the whole
    search) changed from run to run. After the search's workaround it follows creation order."""
    opentuner_compat.import_opentuner()
    from opentuner.search.differentialevolution import PopulationMember

    opentuner_compat.reset_member_counter()
    members = [PopulationMember(config=None) for _ in range(40)]
    assert list(set(members) - {members[5]}) == members[:5] + members[6:]


def test_unknown_technique_is_refused_before_any_work(supernet, processor, data, tmp_path, counted):
    with pytest.raises(ValueError, match="AUCBanditMetaTechniqueA"):
        search_subnets(supernet, data, processor, technique="NoSuchTechnique", output_dir=tmp_path)
    assert counted == []


def test_cli_search_end_to_end(supernet, processor, dataset, half_params, tmp_path, capsys):
    supernet.save_pretrained(tmp_path / "supernet")
    processor.save_pretrained(tmp_path / "supernet")
    dataset.save_to_disk(str(tmp_path / "data"))
    out = tmp_path / "search"
    argv = ["search", "--model_name_or_path", str(tmp_path / "supernet"), "--dataset_name", str(tmp_path / "data"), "--budget", "4",
            "--max_params", str(half_params), "--device", "cpu", "--output_dir", str(out)]
    assert cli_main(argv) == 0
    printed = capsys.readouterr().out
    assert "best feasible" in printed and "pareto:0" in printed
    for name in ("search_results.json", "pareto.json", "pareto.png", "best_subnet.json", "opentuner.db"):
        assert (out / name).is_file()
    results = json.loads((out / "search_results.json").read_text())
    assert len(results["evaluations"]) == 4
    assert all(e["params"] <= half_params for e in results["evaluations"] if not e["reference"])
    assert cli_main(argv) == 2 and "--resume" in capsys.readouterr().err  # an existing search is not overwritten
    assert cli_main(argv + ["--resume", "--budget", "5"]) == 0
    assert len(json.loads((out / "search_results.json").read_text())["evaluations"]) == 5
    capsys.readouterr()

    # the found subnet evaluates through `supersam evaluate --subnet best --search_dir`
    eval_dir = tmp_path / "best_eval"
    assert cli_main(["evaluate", "--model_name_or_path", str(tmp_path / "supernet"), "--dataset_name", str(tmp_path / "data"),
                     "--subnet", "best", "--search_dir", str(out), "--device", "cpu", "--output_dir", str(eval_dir)]) == 0
    eval_json = eval_dir / "eval_results.json"
    best = json.loads((out / "best_subnet.json").read_text())
    assert json.loads(eval_json.read_text())["miou"] == pytest.approx(best["miou"], abs=1e-9)
    capsys.readouterr()

    # foreign or corrupt --supernet folders: a clear error, no traceback
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "config.json").write_text("{not json")
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text('{"model_type": "bert"}')
    sam_dir = tmp_path / "sam"
    supernet.extract_subnet().save_pretrained(sam_dir)
    for folder, message in (("corrupt", "config.json cannot be read"), ("bert", "'bert'"), ("sam", "plain SAM checkpoint"),
                            ("missing", "No model folder")):
        code = cli_main(["search", "--model_name_or_path", str(tmp_path / folder), "--dataset_name", str(tmp_path / "data"),
                         "--output_dir", str(tmp_path / f"out_{folder}")])
        assert code == 2 and message in capsys.readouterr().err


# -- the embedding-width dimension -------------------------------------------------------------------------------
def _full_width(cfg: SubnetConfig) -> SubnetConfig:
    return SubnetConfig(cfg.kept_layers, cfg.mlp_dims)


@pytest.mark.parametrize("strategy", ["opentuner", "random"])
def test_macs_budget_that_only_width_can_meet_finds_narrow_subnets(supernet, processor, data, counted, tmp_path, strategy):
    space = supernet.search_space
    # one MAC below the cheapest full-width subnet: only a narrower embedding width can meet it
    max_macs = supernet.count_macs(_full_width(space.smallest())) - 1
    assert supernet.count_macs(space.smallest()) <= max_macs
    result = search_subnets(supernet, data, processor, budget=5, max_macs=max_macs, strategy=strategy, seed=0,
                            output_dir=tmp_path, show_progress=False)
    assert result.num_evaluated == 5 and counted[0] == space.largest()
    for entry in result.evaluations[1:] + result.pareto:  # every reported result respects the budget
        assert entry["feasible"] and entry["macs"] <= max_macs
        assert entry["macs"] == supernet.count_macs(select_subnet(entry))
        assert entry["hidden_size"] in space.hidden_size_choices[:-1]  # narrower than the full width
    best = result.best
    assert best is not None and best.subnet.hidden_size < space.hidden_size and best.metrics["macs"] <= max_macs
    assert select_subnet("best", tmp_path) == best.subnet


def _proposed_widths(strategy: str, space: SearchSpace, tmp_path, count: int = 40) -> list[SubnetConfig]:
    """`count` proposals of `strategy`, each answered with a made-up objective (narrower and shallower is better)."""
    generator = make_proposals(strategy, space, seed=3, technique="AUCBanditMetaTechniqueA", database=tmp_path / "ot.db")
    proposals = []
    with opentuner_compat.quiet_opentuner():
        cfg = next(generator)
        while len(proposals) < count:
            if cfg is None:
                cfg = next(generator)
                continue
            proposals.append(cfg)
            hidden = cfg.hidden_size or space.hidden_size
            cfg = generator.send(hidden / space.hidden_size + len(cfg.kept_layers) / space.num_layers)
        generator.close()
    return proposals


@pytest.mark.parametrize("strategy", ["opentuner", "random"])
def test_both_strategies_propose_every_embedding_width(supernet, tmp_path, strategy):
    space = supernet.search_space
    first = _proposed_widths(strategy, space, tmp_path)
    widths = {cfg.hidden_size or space.hidden_size for cfg in first}
    assert widths == set(space.hidden_size_choices) and len(widths) == 4
    for cfg in first:
        space.validate(cfg)
        assert cfg.hidden_size != space.hidden_size  # the full width is written None (canonical, one cache key)
    (tmp_path / "again").mkdir()
    assert _proposed_widths(strategy, space, tmp_path / "again") == first  # deterministic given the seed
    if strategy == "opentuner":
        assert first[0] == space.largest()  # the search starts from its seed, the largest subnet


def test_opentuner_configuration_round_trip_covers_the_width(supernet):
    space = supernet.search_space
    for cfg in (space.largest(), space.smallest(), space.uniform(0.5, (0, 1, 3, 5), hidden_size=24)):
        data = opentuner_compat.seed_configuration(space, cfg)
        assert data["hidden_size"] == space.hidden_size_choices.index(cfg.hidden_size or space.hidden_size)
        assert decode_opentuner_config(space, data) == cfg
    assert opentuner_compat.seed_configuration(space, space.largest())["hidden_size"] == 3
    assert repair(space, {}, {i: 32 for i in range(6)}, hidden_size=space.hidden_size).hidden_size is None


def test_cheapest_subnet_takes_the_narrowest_width(supernet):
    space = supernet.search_space
    for key, count in (("macs", supernet.count_macs), ("params", supernet.count_parameters)):
        cfg, value = cheapest_subnet(space, count)
        assert cfg.hidden_size == space.hidden_size_choices[0] and value == count(cfg)
        assert value < count(_full_width(cfg)), key


def test_arguments_object_equals_keywords_and_unknown_keywords_are_refused(supernet, processor, data, tmp_path,
                                                                           counted):
    from supersam_hf.arguments import DataArguments, SearchArguments
    from supersam_hf.errors import SupersamError

    with pytest.raises(SupersamError, match="unknown keyword argument.*budjet"):
        search_subnets(supernet, data, processor, budjet=3, output_dir=tmp_path / "none")
    assert counted == [] and not (tmp_path / "none").exists()
    args = SearchArguments(budget=3, strategy="random", seed=1)
    data_args = DataArguments(dataset_name="shapes", eval_split_name="validation")
    by_object = search_subnets(supernet, data, processor, args, data_args, output_dir=tmp_path / "a",
                               show_progress=False)
    by_keywords = search_subnets(supernet, data, processor, budget=3, strategy="random", seed=1, dataset_name="shapes",
                                 split="validation", output_dir=tmp_path / "b", show_progress=False)
    assert [e["name"] for e in by_object.evaluations] == [e["name"] for e in by_keywords.evaluations]
    assert [e["miou"] for e in by_object.evaluations] == [e["miou"] for e in by_keywords.evaluations]
    for run in ("a", "b"):
        settings = json.loads((tmp_path / run / "search_results.json").read_text())["settings"]
        assert (settings["dataset"], settings["split"]) == ("shapes", "validation")
