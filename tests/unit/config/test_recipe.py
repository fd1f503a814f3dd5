from pathlib import Path

import pytest
import yaml

from bigmodel_cli.config.recipe import RecipeError, dump, locate, parse_set, problems, resolve
from bigmodel_cli.errors import UsageError


def write(tmp_path: Path, text: str, name: str = "r.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_precedence_defaults_recipe_flags_set(tmp_path):
    path = write(tmp_path, "name: x\ntrain: {epochs: 4, batch_size: 8}\n")
    r = resolve(str(path))
    assert (r.train.epochs, r.train.batch_size, r.train.optimizer.lr) == (4, 8, 1e-3)  # recipe over defaults
    r = resolve(str(path), {"train.epochs": 6})
    assert r.train.epochs == 6  # flag over recipe
    r = resolve(str(path), {"train.epochs": 6}, ["train.epochs=9", "train.optimizer.lr=0.5"])
    assert r.train.epochs == 9 and r.train.optimizer.lr == 0.5  # --set over flags


def test_set_values_are_yaml():
    assert parse_set("a.b=3") == ("a.b", 3)
    assert parse_set("a=[1, 2]") == ("a", [1, 2])
    assert parse_set("a=hello") == ("a", "hello")
    assert parse_set("a=") == ("a", "")
    with pytest.raises(UsageError, match="expected KEY=VALUE"):
        parse_set("train.epochs")


def test_unknown_key_suggests_nearest(tmp_path):
    path = write(tmp_path, "name: x\ntrain: {epoch: 3}\n")
    with pytest.raises(RecipeError) as e:
        resolve(str(path))
    assert "unknown key 'train.epoch'" in str(e.value) and "did you mean 'train.epochs'" in str(e.value)
    assert str(path) in str(e.value)


def test_unknown_top_level_key_and_set(tmp_path):
    path = write(tmp_path, "name: x\n")
    with pytest.raises(RecipeError, match="did you mean 'model.name'"):
        resolve(str(path), sets=["model.nam=mlp"])


def test_wrong_type_names_key_and_value(tmp_path):
    path = write(tmp_path, "name: x\ntrain: {epochs: ten}\n")
    with pytest.raises(RecipeError) as e:
        resolve(str(path))
    assert "train.epochs" in str(e.value) and "'ten'" in str(e.value)


def test_bad_choice_suggests_nearest(tmp_path):
    path = write(tmp_path, "name: x\ntrain: {optimizer: {name: adamm}}\n")
    with pytest.raises(RecipeError, match="did you mean 'adam"):
        resolve(str(path))


def test_validate_lists_every_problem(tmp_path):
    path = write(tmp_path, "name: x\ntrain: {epoch: 3, batch_size: -1}\nmodle: {}\n")
    found = problems(path)
    assert len(found) == 3
    assert any("train.epoch'" in p for p in found) and any("batch_size" in p for p in found)
    assert any("'modle'" in p and "model" in p for p in found)


def test_missing_and_non_yaml_files(tmp_path):
    with pytest.raises(UsageError, match="recipe file not found"):
        locate(str(tmp_path / "nope.yaml"))
    bad = write(tmp_path, "name: [unclosed\n")
    with pytest.raises(UsageError, match="not valid YAML"):
        resolve(str(bad))
    scalar = write(tmp_path, "just a string\n", "s.yaml")
    with pytest.raises(UsageError, match="must be a YAML mapping"):
        resolve(str(scalar))
    binary = tmp_path / "b.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(UsageError, match="not a text file"):
        resolve(str(binary))


def test_unknown_recipe_name_suggests():
    with pytest.raises(UsageError, match="did you mean 'digits-cnn'"):
        locate("digit-cnn")


def test_resolved_recipe_round_trips():
    r = resolve("digits-cnn", sets=["train.epochs=2"])
    again = yaml.safe_load(dump(r))
    assert again["train"]["epochs"] == 2 and again["name"] == "digits-cnn"
    assert again["train"]["scheduler"]["name"] == "cosine"  # every key, defaults included
