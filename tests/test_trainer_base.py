"""What our trainers share (sadm_nnunet.training.trainer_base): progress lines within an epoch. The real trainers'
logs are checked in test_stage1_nnunet.py; here the mixin sits on a stand-in that records the log lines."""
import numpy as np
import pytest

from sadm_nnunet.training.trainer_base import SADMTrainerMixin


class LogOnly:
    """The two nnUNetTrainer methods the progress lines use."""

    def on_train_epoch_start(self) -> None:
        self.lines: list[str] = []

    def print_to_log_file(self, *args) -> None:
        self.lines.append(" ".join(map(str, args)))


class Trainer(SADMTrainerMixin, LogOnly):
    def __init__(self, iterations: int) -> None:
        self.num_iterations_per_epoch = iterations


@pytest.mark.parametrize("iterations, expected", [(100, list(range(10, 100, 10))), (250, list(range(25, 250, 25))),
                                                  (5, [1, 2, 3, 4]), (1, [])])
def test_progress_lines_carry_the_iteration_and_the_running_mean_loss(iterations, expected):
    trainer = Trainer(iterations)
    losses = np.random.default_rng(0).random(iterations)
    for _ in range(2):  # the count starts again every epoch
        trainer.on_train_epoch_start()
        for loss in losses:
            trainer.report_progress(np.float32(loss))
        assert [line.split(":")[0] for line in trainer.lines] == [f"iteration {i}/{iterations}" for i in expected]
        means = [float(line.split("mean train loss ")[1].split(",")[0]) for line in trainer.lines]
        assert means == pytest.approx([losses[:i].mean() for i in expected], abs=5e-5)


class Wrapped(SADMTrainerMixin):
    def __init__(self, network, is_ddp: bool) -> None:
        self.network, self.is_ddp = network, is_ddp


@pytest.mark.parametrize("is_ddp", [False, True])
def test_unwrapped_network_before_and_after_compile_whatever_is_ddp_says(is_ddp):
    """In DDP, nnU-Net's initialize calls configure_optimizers (which unwraps) before it wraps the network in DDP.
    DDP itself around the network: test_ddp.py (a gloo group)."""
    import torch

    net = torch.nn.Linear(2, 2)
    assert Wrapped(net, is_ddp).unwrapped_network() is net
    assert Wrapped(torch.compile(net, backend="eager"), is_ddp).unwrapped_network() is net
