"""Every bad input of the walking skeleton: exit 2, one line naming the problem, no traceback, nothing written."""

import pytest

from bigmodel_cli.config import catalog
from tests.conftest import tree

BAD_RECIPES = {
    "notyaml.yaml": "name: [unclosed\n  train: {\n",
    "unknown-key.yaml": "name: x\ndata: {source: 'sklearn:iris'}\nmodel: {name: mlp}\ntrain: {epoch: 3}\n",
    "wrong-type.yaml": "name: x\ndata: {source: 'sklearn:iris'}\nmodel: {name: mlp}\ntrain: {epochs: ten}\n",
}

CASES = [
    (["train", "-r", "no-such-recipe"], "unknown recipe 'no-such-recipe'"),
    (["train", "-r", "digit-cnn"], "did you mean 'digits-cnn'"),
    (["prepare-data", "-r", "missing.yaml"], "recipe file not found: missing.yaml"),
    (["prepare-data", "-r", "notyaml.yaml"], "notyaml.yaml: line"),
    (["train", "-r", "unknown-key.yaml"], "unknown key 'train.epoch'; did you mean 'train.epochs'?"),
    (["prepare-data", "-r", "wrong-type.yaml"], "train.epochs: Input should be a valid integer"),
    (["train", "-r", "digits-cnn", "--set", "train.epochs"], "--set 'train.epochs': expected KEY=VALUE"),
    (["train", "-r", "digits-cnn", "--set", "train.epoch=3"], "did you mean 'train.epochs'"),
    (["train", "-r", "digits-cnn", "--set", "train.scheduler.name=cosin"], "did you mean 'cosine'?"),
    (["train", "-r", "digits-cnn", "--set", "train.optimizer.name=rmsprob"], "did you mean 'rmsprop'?"),
    (["train", "-r", "digits-cnn", "--set", "train.precision=fp16"], "train.precision: 'fp16' is not one of"),
    (["train", "-r", "digits-cnn", "--resume"], "no prepared data in data/digits-cnn"),
    (["eval", "not-a-run"], "not-a-run: no such run directory"),
    (["eval", "notarun"], "notarun: not a run directory (no recipe.yaml)"),
    (["export", "notarun"], "notarun: not a run directory (no recipe.yaml)"),
    (["train", "-r", "digits-cnn"], "no prepared data in data/digits-cnn"),
    (["recipes", "validate", "unknown-key.yaml"], "unknown key 'train.epoch'"),
    (["recipes", "show", "nope"], "unknown recipe 'nope'"),
    (["train"], "Missing option '--recipe'"),
    (["train", "-r", "digits-cnn", "--bogus"], "No such option: --bogus"),
]


@pytest.fixture
def workdir(tmp_path):
    for name, text in BAD_RECIPES.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "notarun").mkdir()
    return tmp_path


@pytest.mark.parametrize("args,message", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_input_exits_2_with_one_line(cli, workdir, args, message):
    before = tree(workdir)
    result = cli(*args, cwd=workdir)
    assert result.code == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and message in lines[0]
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert tree(workdir) == before  # nothing written, source untouched


def test_export_before_train(cli, workdir):
    assert cli("prepare-data", "-r", "digits-cnn", cwd=workdir).code == 0
    before = tree(workdir)
    (workdir / "runs/digits-cnn").mkdir(parents=True)
    (workdir / "runs/digits-cnn/recipe.yaml").write_text(catalog.path_of("digits-cnn").read_text())
    result = cli("export", "runs/digits-cnn", cwd=workdir)
    assert result.code == 2 and "no best.pt checkpoint; train first" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (workdir / "runs/digits-cnn/model.onnx").exists()
    assert {k: v for k, v in tree(workdir).items() if k in before} == before


def test_debug_shows_the_traceback(cli, workdir):
    result = cli("--debug", "eval", "notarun", cwd=workdir)
    assert result.code == 2 and "Traceback" in result.stderr
    result = cli("eval", "notarun", cwd=workdir, env={"BIGMODEL_DEBUG": "1"})
    assert result.code == 2 and "Traceback" in result.stderr


def test_validate_lists_every_problem(cli, workdir):
    (workdir / "two.yaml").write_text("name: x\ntrain: {epoch: 3, batch_size: zero}\n")
    result = cli("recipes", "validate", "two.yaml", cwd=workdir)
    assert result.code == 2
    assert len(result.stderr.strip().splitlines()) == 2
    ok = cli("recipes", "validate", "unknown-key.yaml", "--json", cwd=workdir)
    assert ok.code == 2 and ok.json()["valid"] is False


def test_training_errors_that_need_prepared_data(cli, workdir):
    assert cli("prepare-data", "-r", "digits-cnn", cwd=workdir).code == 0
    before = tree(workdir)
    for args, message in [
        (["--set", "model.name=resnet19"], "did you mean 'resnet18'?"),
        (["--resume"], "--resume: no checkpoint at runs/digits-cnn/checkpoints/last.pt"),
        (["--set", "train.batch_size=5000"], "larger than the"),
        (["--set", "model.name=mlp"], "model 'mlp' takes tabular data, but the prepared data is image"),
        (["--set", "train.early_stopping.monitor=val_acc"], "did you mean 'val_accuracy'?"),
        (["--folds", "1"], "at least 2 folds"),
    ]:
        result = cli("train", "-r", "digits-cnn", *args, cwd=workdir)
        assert result.code == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert message in result.stderr and "Traceback" not in result.stderr
        assert tree(workdir) == before
