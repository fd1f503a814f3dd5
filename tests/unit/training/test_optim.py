import pytest
import torch

from bigmodel_cli.config.schema import OptimizerSection, SchedulerSection
from bigmodel_cli.training.optim import create_optimizer, create_schedule, lr_factor


def net():
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 2))


@pytest.mark.parametrize("name,cls", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam),
                                      ("adamw", torch.optim.AdamW), ("adagrad", torch.optim.Adagrad),
                                      ("rmsprop", torch.optim.RMSprop)])
def test_optimizers_skip_decay_on_biases_and_norms(name, cls):
    opt = create_optimizer(net(), OptimizerSection(name=name, lr=0.1, weight_decay=0.01))
    assert isinstance(opt, cls)
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 0.01 and all(p.ndim == 2 for p in decayed["params"])
    assert plain["weight_decay"] == 0.0 and all(p.ndim == 1 for p in plain["params"])
    everything = create_optimizer(net(), OptimizerSection(name=name, weight_decay=0.01, decay_norm_and_bias=True))
    assert len(everything.param_groups) == 1


def test_sgd_nesterov():
    opt = create_optimizer(net(), OptimizerSection(name="sgd", nesterov=True, momentum=0.9))
    assert opt.param_groups[0]["nesterov"] is True


def factors(cfg, total=100, per_epoch=10):
    return [lr_factor(cfg, s, total, per_epoch) for s in range(total)]


def test_warmup_is_linear_then_schedule():
    f = factors(SchedulerSection(name="cosine", warmup_epochs=1, warmup_start_factor=0.1))
    assert f[0] == pytest.approx(0.1) and f[5] == pytest.approx(0.55) and f[10] == pytest.approx(1.0)
    assert f[10:] == sorted(f[10:], reverse=True) and f[-1] < 0.01
    assert factors(SchedulerSection(name="constant", warmup_steps=4))[4:] == [1.0] * 96


def test_each_schedule_shape():
    step = factors(SchedulerSection(name="step", step_size=3, gamma=0.5))
    assert step[29] == 1.0 and step[30] == 0.5 and step[60] == 0.25
    exp = factors(SchedulerSection(name="exponential", gamma=0.9))
    assert exp[9] == 1.0 and exp[10] == pytest.approx(0.9) and exp[25] == pytest.approx(0.81)
    lin = factors(SchedulerSection(name="linear", min_lr_factor=0.2))
    assert lin[0] == 1.0 and lin[50] == pytest.approx(0.6) and lin[99] == pytest.approx(0.2, abs=0.01)
    cos = factors(SchedulerSection(name="cosine", min_lr_factor=0.1))
    assert cos[50] == pytest.approx(0.55) and cos[99] == pytest.approx(0.1, abs=0.01)
    one = factors(SchedulerSection(name="onecycle", pct_start=0.3, div_factor=25, final_div_factor=100))
    assert one[0] == pytest.approx(1 / 25) and max(one) == pytest.approx(1.0) and one.index(max(one)) == 30
    assert one[-1] == pytest.approx(1 / 2500, abs=1e-3)


def test_plateau_lowers_lr_after_patience_and_not_in_warmup():
    model = net()
    opt = create_optimizer(model, OptimizerSection(name="sgd", lr=1.0))
    schedule = create_schedule(opt, SchedulerSection(name="plateau", patience=1, factor=0.5, warmup_steps=2),
                               total_steps=20, steps_per_epoch=2)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01)  # warm-up starts low
    for _ in range(2):
        schedule.step_batch()
    assert opt.param_groups[0]["lr"] == pytest.approx(1.0)
    for metric in (1.0, 1.0, 1.0):  # no improvement for patience+1 epochs
        schedule.step_epoch(metric)
        schedule.step_batch()  # later batches must not undo the reduction
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5)
    restored = create_schedule(create_optimizer(net(), OptimizerSection(name="sgd", lr=1.0)),
                               SchedulerSection(name="plateau", patience=1, factor=0.5, warmup_steps=2), 20, 2)
    restored.load_state_dict(schedule.state_dict())
    assert restored.steps == schedule.steps and restored.plateau.num_bad_epochs == schedule.plateau.num_bad_epochs


def test_an_optimizer_that_steps_every_other_step_follows_the_runs_schedule():
    """A GAN's G with d_steps 2 steps half as often as D; both must end the run at the schedule's end."""
    cfg = SchedulerSection(name="linear", warmup_steps=4)
    every_step, every_other = (create_optimizer(net(), OptimizerSection(name="sgd", lr=1.0)) for _ in range(2))
    d = create_schedule(every_step, cfg, total_steps=20, steps_per_epoch=5)
    g = create_schedule(every_other, cfg, total_steps=20, steps_per_epoch=5, every=2)
    for step in range(20):
        d.step_batch()
        if step % 2 == 1:
            g.step_batch()
            assert every_other.param_groups[0]["lr"] == pytest.approx(every_step.param_groups[0]["lr"])
    assert every_other.param_groups[0]["lr"] == pytest.approx(0.0)
