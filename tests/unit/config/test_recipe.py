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


# -- where a bad value came from (issue 20) ------------------------------------------


def test_a_bad_set_value_names_the_set_not_the_file(tmp_path):
    path = write(tmp_path, "name: x\ntrain: {epochs: 4}\n")
    with pytest.raises(RecipeError) as e:
        resolve(str(path), sets=["train.epochs=ten"])
    assert str(e.value).startswith("--set train.epochs=ten: train.epochs:") and str(path) not in str(e.value)
    with pytest.raises(RecipeError) as e:  # a key inside a section set as a whole
        resolve(str(path), sets=["train={epochs: 0}"])
    assert str(e.value).startswith("--set train={epochs: 0}: train.epochs:")
    with pytest.raises(RecipeError) as e:  # an unknown key given by --set
        resolve(str(path), sets=["model.nam=mlp"])
    assert str(e.value).startswith("--set model.nam=mlp: unknown key 'model.nam'")


def test_a_bad_value_in_the_file_still_names_the_file(tmp_path):
    path = write(tmp_path, "name: x\ntrain: {epochs: ten}\n")
    with pytest.raises(RecipeError) as e:
        resolve(str(path), sets=["train.batch_size=8"])  # a --set beside the bad key is not blamed
    assert str(e.value).startswith(f"{path}: train.epochs:")


def test_a_bad_flag_value_names_the_flag():
    with pytest.raises(RecipeError) as e:
        resolve("digits-cnn", {"train.devices": "foo"})
    assert str(e.value).startswith("--devices foo: train.devices: must be auto, cpu, cuda")
    with pytest.raises(RecipeError) as e:  # the last --set of a key wins, and is the one named
        resolve("digits-cnn", {"train.devices": "cpu"}, ["train.devices=0"])
    assert str(e.value).startswith("--set train.devices=0: train.devices:")


@pytest.mark.parametrize("item", ["train.epochs=[1", "model.args={width: 3", "data.source=@raw", "a=b: c: d"])
def test_malformed_yaml_in_set_is_an_error(item):
    with pytest.raises(UsageError) as e:
        parse_set(item)
    assert str(e.value).startswith(f"--set {item}: VALUE is not valid YAML")
    assert e.value.__cause__ is not None  # the YAML parser's own error stays visible under --debug


def test_strings_that_are_valid_yaml_stay_strings():
    assert parse_set("data.source=torchvision:cifar10:~/datasets") == ("data.source", "torchvision:cifar10:~/datasets")
    assert parse_set("model.component=my_pkg.nets:build") == ("model.component", "my_pkg.nets:build")
    assert parse_set('data.source="@raw.csv"') == ("data.source", "@raw.csv")  # quoted: the way out the error names


@pytest.mark.parametrize("off", ["null", "false", "~"])
def test_set_early_stopping_null_turns_it_off_and_keeps_the_monitor(off):
    shipped = resolve("digits-cnn")
    assert shipped.train.early_stopping.patience == 5 and shipped.train.early_stopping.monitor == "val_accuracy"
    r = resolve("digits-cnn", sets=[f"train.early_stopping={off}"])
    assert r.train.early_stopping.patience is None  # never stops early
    assert r.train.early_stopping.monitor == "val_accuracy"  # best.pt still follows the recipe's monitor
    assert yaml.safe_load(dump(r))["train"]["early_stopping"]["patience"] is None


def test_early_stopping_null_in_a_recipe_file_turns_it_off(tmp_path):
    path = write(tmp_path, "name: x\ntrain: {early_stopping: null}\n")
    assert resolve(str(path)).train.early_stopping.patience is None


def test_changing_the_model_by_set_suggests_dropping_the_recipes_args():
    with pytest.raises(RecipeError) as e:
        resolve("digits-cnn", sets=["model.name=resnet18"])  # digits-cnn's args are cnn_small's {width, dropout}
    message = str(e.value)
    assert message.startswith("--set model.name=resnet18: model.args width, dropout in digits-cnn.yaml")
    assert "--set model.args={}" in message and "zero_init_residual" in message
    # the way out the message gives works, and so do args that fit the new model
    assert resolve("digits-cnn", sets=["model.name=resnet18", "model.args={}"]).model.args == {}
    assert resolve("digits-cnn", sets=["model.name=mobilenet_v3_small", "model.args={dropout: 0.1}"]).model.name
    # args are checked key by key: mobilenet_v3_small takes dropout, not width
    with pytest.raises(RecipeError, match="model.args width in digits-cnn.yaml"):
        resolve("digits-cnn", sets=["model.name=mobilenet_v3_small"])
    # a model for tables on an image recipe: the registry's "takes tabular data" error is the one that helps
    assert resolve("digits-cnn", sets=["model.name=mlp"]).model.args == {"width": 32, "dropout": 0.1}


def test_changing_the_model_in_the_file_is_left_to_the_registry(tmp_path):
    """Args written in the file itself are the user's choice: the registry's own error reports them at build time."""
    path = write(tmp_path, "name: x\nmodel: {name: resnet18, args: {width: 3}}\n")
    assert resolve(str(path)).model.args == {"width": 3}
