"""Search spaces: dotted recipe keys checked against the schema before any trial runs."""

import optuna
import pytest
import yaml

from bigmodel_cli.config.recipe import load_yaml, locate, resolve
from bigmodel_cli.errors import UsageError
from bigmodel_cli.tuning.space import load_space, set_arg


@pytest.fixture
def base():
    return resolve("breast-cancer-mlp").model_dump(mode="json")


def space_file(tmp_path, text):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


def error(tmp_path, base, text):
    with pytest.raises(UsageError) as e:
        load_space(space_file(tmp_path, text), base)
    return str(e.value)


def test_the_three_kinds_suggest_values_that_train_accepts(tmp_path, base):
    path = space_file(tmp_path, """
train.optimizer.lr: {float: [1.0e-4, 1.0e-1], log: true}
model.args.width: {int: [8, 64], step: 8}
train.optimizer.name: {choice: [adamw, sgd]}
model.args.hidden: {choice: [[16], [64, 32]]}
train:
  batch_size: {int: [16, 64]}
""")
    space = load_space(path, base)
    assert [p.key for p in space.params] == ["train.optimizer.lr", "model.args.width", "train.optimizer.name",
                                             "model.args.hidden", "train.batch_size"]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen_hidden = set()
    for _ in range(12):
        values = space.suggest(study.ask())
        assert 1e-4 <= values["train.optimizer.lr"] <= 0.1
        assert values["model.args.width"] in range(8, 65, 8)
        assert values["train.optimizer.name"] in ("adamw", "sgd")
        seen_hidden.add(tuple(values["model.args.hidden"]))
        # what a trial passes to `bigmodel train --set` resolves to the same values
        recipe = resolve("breast-cancer-mlp", None, [set_arg(k, v) for k, v in values.items()])
        assert recipe.train.optimizer.lr == values["train.optimizer.lr"]
        assert recipe.model.args["hidden"] == values["model.args.hidden"]
        assert recipe.train.batch_size == values["train.batch_size"]
    assert seen_hidden == {(16,), (64, 32)}


def test_set_arg_keeps_types_through_yaml():
    assert set_arg("train.optimizer.lr", 1e-05) == "train.optimizer.lr=1.0e-05"
    assert yaml.safe_load(set_arg("a", 1e-05).split("=", 1)[1]) == 1e-05
    assert yaml.safe_load(set_arg("a", "123").split("=", 1)[1]) == "123"
    assert yaml.safe_load(set_arg("a", [64, 32]).split("=", 1)[1]) == [64, 32]


def test_unknown_key_names_the_nearest(tmp_path, base):
    msg = error(tmp_path, base, "train.optimizer.lrr: {float: [1.0e-4, 1.0e-1]}")
    assert "'train.optimizer.lrr' is not a recipe key" in msg and "did you mean 'train.optimizer.lr'" in msg
    assert "is a section" in error(tmp_path, base, "train.optimizer: {float: [1.0e-4, 1.0e-1]}")


def test_empty_and_inverted_ranges(tmp_path, base):
    assert "inverted range [0.1, 0.0001]" in error(tmp_path, base, "train.optimizer.lr: {float: [1.0e-1, 1.0e-4]}")
    assert "empty range" in error(tmp_path, base, "train.epochs: {int: [3, 3]}")
    assert "empty choice" in error(tmp_path, base, "train.optimizer.name: {choice: []}")
    assert "log range needs low > 0" in error(tmp_path, base, "train.l1: {float: [0.0, 0.1], log: true}")
    assert "not a whole number of steps" in error(tmp_path, base, "model.args.width: {int: [8, 60], step: 8}")


def test_values_outside_the_schema(tmp_path, base):
    msg = error(tmp_path, base, "train.optimizer.name: {choice: [adamw, sgdd]}")
    assert "train.optimizer.name" in msg and "'sgdd'" in msg and "did you mean 'sgd'" in msg
    msg = error(tmp_path, base, "train.optimizer.lr: {float: [0, 0.1]}")
    assert "train.optimizer.lr" in msg and "greater than 0" in msg


def test_malformed_specs(tmp_path, base):
    assert "did you mean 'step'" in error(tmp_path, base, "train.epochs: {int: [1, 5], stp: 2}")
    assert "exactly one of float, int, choice" in error(tmp_path, base, "train.epochs: {int: [1, 5], float: [1, 2]}")
    assert "is not an integer" in error(tmp_path, base, "train.epochs: {int: [1, 2.5]}")
    assert "expected a mapping" in error(tmp_path, base, "- train.epochs")
    with pytest.raises(UsageError, match="no such file"):
        load_space(tmp_path / "missing.yaml", base)


def test_yaml_exponent_without_dot_is_read_as_a_number(tmp_path, base):
    # PyYAML reads 1e-4 as a string; the space accepts it as the number the user meant
    space = load_space(space_file(tmp_path, "train.optimizer.lr: {float: [1e-4, 1e-1], log: true}"), base)
    assert (space.params[0].low, space.params[0].high) == (1e-4, 1e-1)


def test_space_is_checked_against_the_recipe_with_its_overrides(tmp_path):
    data = load_yaml(locate("breast-cancer-mlp"))
    data["train"]["epochs"] = 2
    space = load_space(space_file(tmp_path, "train.scheduler.warmup_epochs: {float: [0.0, 1.0]}"), data)
    assert space.params[0].key == "train.scheduler.warmup_epochs"
