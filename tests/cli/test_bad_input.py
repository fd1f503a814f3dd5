"""Every bad input of the walking skeleton: exit 2, one line naming the problem, no traceback, nothing written."""

import sys

import pytest

from bigmodel_cli.config import catalog
from bigmodel_cli.errors import UsageError
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
    (["train", "-r", "digits-cnn", "--set", "train.precision=fp16"],
     "--set train.precision=fp16: train.precision: 'fp16' is not one of"),
    # issue 20: a bad value given on the command line names the option that gave it, not the shipped file
    (["train", "-r", "digits-cnn", "--devices", "foo"], "error: --devices foo: train.devices: must be"),
    (["prepare-data", "-r", "digits-cnn", "--set", "data.split.val=lots"], "error: --set data.split.val=lots: "),
    (["train", "-r", "digits-cnn", "--set", "train.epochs=[1"], "--set train.epochs=[1: VALUE is not valid YAML"),
    (["train", "-r", "digits-cnn", "--set", "model.name=resnet18"], "add --set model.args={} to use its defaults"),
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
    # a run folder whose training never started (only recipe.yaml): it says so and what to do
    assert result.code == 2 and "a training that never started" in result.stderr and "train it again" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (workdir / "runs/digits-cnn/model.onnx").exists()
    assert {k: v for k, v in tree(workdir).items() if k in before} == before


def test_debug_shows_the_traceback(cli, workdir):
    result = cli("--debug", "eval", "notarun", cwd=workdir)
    assert result.code == 2 and "Traceback" in result.stderr
    result = cli("eval", "notarun", cwd=workdir, env={"BIGMODEL_DEBUG": "1"})
    assert result.code == 2 and "Traceback" in result.stderr


def test_debug_shows_the_cause_of_a_usage_error(cli, workdir):
    """Issue 13: the root cause of an error re-raised as a usage error stays visible under --debug."""
    (workdir / "binary.yaml").write_bytes(b"\xff\xfe\x00garbage")
    plain = cli("prepare-data", "-r", "binary.yaml", cwd=workdir)
    assert plain.code == 2 and plain.stderr.strip().splitlines() == [
        "error: binary.yaml: not a text file (recipes are UTF-8 YAML)"]
    debug = cli("prepare-data", "-r", "binary.yaml", "--debug", cwd=workdir)
    assert debug.code == 2 and "UnicodeDecodeError" in debug.stderr
    assert "The above exception was the direct cause" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1] == plain.stderr.strip()
    bad_set = cli("--debug", "train", "-r", "digits-cnn", "--set", "train.epochs=[1", cwd=workdir)
    assert bad_set.code == 2 and "yaml.parser.ParserError" in bad_set.stderr


def test_debug_shows_a_cause_hidden_by_from_none(monkeypatch, capsys):
    """Engine code that says `raise UsageError(...) from None` hides its cause from Python's own traceback;
    --debug shows it anyway."""
    from bigmodel_cli.cli.app import _fail

    try:
        try:
            {}["rows"]
        except KeyError:
            raise UsageError("the table has no column 'rows'") from None
    except UsageError as e:
        error = e
    monkeypatch.setenv("BIGMODEL_DEBUG", "1")
    with pytest.raises(SystemExit) as exited:
        _fail(str(error), 2, error)
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "KeyError: 'rows'" in err and "During handling of the above exception" in err
    assert err.strip().splitlines()[-1] == "error: the table has no column 'rows'"
    monkeypatch.delenv("BIGMODEL_DEBUG")
    with pytest.raises(SystemExit):
        _fail(str(error), 2, error)
    assert capsys.readouterr().err == "error: the table has no column 'rows'\n"


GREEDY_MODEL = """
import torch


class Greedy(torch.nn.Module):
    def __init__(self, outputs):
        super().__init__()
        self.head = torch.nn.LazyLinear(outputs)

    def forward(self, x):
        torch.empty(2**45)  # 128 TiB: the allocator refuses, as it does for a batch too large for the machine
        return self.head(x.flatten(1))


def build(num_classes, input_shape):
    return Greedy(num_classes)
"""


@pytest.mark.slow
def test_out_of_memory_is_reported_as_out_of_memory(cli, workdir):
    """Issue 13: a model that runs out of memory was reported as "the model does not fit the data" (exit 2)."""
    (workdir / "greedy_model.py").write_text(GREEDY_MODEL)
    (workdir / "greedy.yaml").write_text("name: greedy\ndata: {source: 'sklearn:iris'}\n"
                                         "model: {component: 'greedy_model:build'}\n")
    assert cli("prepare-data", "-r", "greedy.yaml", cwd=workdir).code == 0
    assert str(workdir) not in sys.path  # as for the `bigmodel` script: greedy_model.py is found in the working dir
    try:
        result = cli("train", "-r", "greedy.yaml", cwd=workdir)
    finally:
        sys.modules.pop("greedy_model", None)
        sys.path[:] = [p for p in sys.path if p != str(workdir)]
    lines = result.stderr.strip().splitlines()
    assert result.code == 1 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: out of memory (RuntimeError: ") and "lower the batch size" in lines[0]
    assert "does not fit" not in lines[0] and "Traceback" not in result.stderr


def test_out_of_memory_errors_are_recognised_in_the_chain():
    import torch

    from bigmodel_cli.cli.app import _out_of_memory

    for error in (MemoryError(), torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                  RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory")):
        try:
            try:
                raise error
            except Exception:
                raise UsageError("model 'x' does not fit the data") from None
        except UsageError as wrapped:
            assert _out_of_memory(wrapped) is not None and type(error).__name__ in _out_of_memory(wrapped)
    assert _out_of_memory(UsageError("train.batch_size 5000 is larger than the train split")) is None
    assert _out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied")) is None


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
