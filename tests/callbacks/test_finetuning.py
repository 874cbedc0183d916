"""Tests for fulmen.callbacks.finetuning."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fulmen as L
from fulmen.callbacks.finetuning import BackboneFinetuning, BaseFinetuning
from fulmen.callbacks.model_checkpoint import ModelCheckpoint
from fulmen.utilities.exceptions import MisconfigurationException


def _net() -> nn.Sequential:
    return nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3), nn.Sequential(nn.ReLU(), nn.Linear(3, 1)))


def test_flatten_modules() -> None:
    net = _net()
    flat = BaseFinetuning.flatten_modules(net)
    assert [type(m).__name__ for m in flat] == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert BaseFinetuning.flatten_modules([net[0], [net[1]]]) == [net[0], net[1]]
    assert BaseFinetuning.flatten_modules(nn.ModuleDict({"a": net[0]})) == [net[0]]

    class Parent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.own = nn.Parameter(torch.zeros(1))
            self.child = nn.Linear(1, 1)

    parent = Parent()
    assert BaseFinetuning.flatten_modules(parent) == [parent, parent.child]  # parents owning parameters count


def test_freeze_make_trainable_and_filter_params() -> None:
    net = _net()
    BaseFinetuning.freeze(net, train_bn=True)
    assert [p.requires_grad for p in net.parameters()] == [False, False, True, True, False, False]
    BaseFinetuning.freeze(net, train_bn=False)
    assert not any(p.requires_grad for p in net.parameters()) and not net[1].track_running_stats
    assert list(BaseFinetuning.filter_params(net, requires_grad=True)) == []
    BaseFinetuning.make_trainable(net)
    assert all(p.requires_grad for p in net.parameters()) and net[1].track_running_stats
    without_bn = list(BaseFinetuning.filter_params(net, train_bn=False))
    assert len(without_bn) == 4 and all(p is not net[1].weight for p in without_bn)


def test_unfreeze_and_add_param_group() -> None:
    net = _net()
    BaseFinetuning.freeze(net[0])
    opt = torch.optim.SGD(net[2].parameters(), lr=1.0)
    BaseFinetuning.unfreeze_and_add_param_group(net[0], opt)  # lr None -> first group's lr / initial_denom_lr
    assert len(opt.param_groups) == 2 and opt.param_groups[1]["lr"] == pytest.approx(0.1)
    assert all(p.requires_grad for p in net[0].parameters())
    BaseFinetuning.unfreeze_and_add_param_group(
        net[1], opt, lr=0.5, initial_denom_lr=4.0
    )  # explicit lr: as given
    assert opt.param_groups[2]["lr"] == 0.5
    # parameters already in the optimizer are skipped with a warning (membership by identity)
    with pytest.warns(UserWarning, match="already exist within another group"):
        BaseFinetuning.unfreeze_and_add_param_group(net[0], opt, lr=0.1)
    assert len(opt.param_groups) == 3
    twin = nn.Linear(2, 3)
    twin.load_state_dict(net[0].state_dict())  # equal values, different tensors: not "already in"
    BaseFinetuning.unfreeze_and_add_param_group(twin, opt, lr=0.1)
    assert len(opt.param_groups) == 4
    with pytest.raises(MisconfigurationException, match="initial_denom_lr"):
        BaseFinetuning.unfreeze_and_add_param_group(twin, opt, initial_denom_lr=0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"unfreeze_backbone_at_epoch": -1}, r"unfreeze_backbone_at_epoch=...\): got -1"),
        ({"lambda_func": 2.0}, r"lambda_func"),
        ({"backbone_initial_ratio_lr": 0}, r"backbone_initial_ratio_lr"),
        ({"backbone_initial_lr": -1.0}, r"backbone_initial_lr"),
        ({"initial_denom_lr": 0}, r"initial_denom_lr"),
    ],
)
def test_backbone_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(MisconfigurationException, match=match):
        BackboneFinetuning(**kwargs)


class WithBackbone(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4))
        self.head = nn.Linear(4, 1)
        self.seen: list[tuple[int, bool, list[float]]] = []

    def on_train_epoch_start(self) -> None:
        opt = self.trainer.optimizers[0]
        self.seen.append(
            (self.current_epoch, self.backbone[0].weight.requires_grad, [g["lr"] for g in opt.param_groups])
        )

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.head(self.backbone(batch[0])).pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam([p for p in self.parameters() if p.requires_grad], lr=0.1)


def _fit(
    tmp_path: Path,
    callbacks: list[Any],
    model: L.LightningModule,
    max_epochs: int,
    ckpt_path: Any = None,
    checkpointing: bool = False,
) -> L.Trainer:
    trainer = L.Trainer(
        max_epochs=max_epochs,
        callbacks=callbacks,
        default_root_dir=str(tmp_path),
        logger=False,
        enable_checkpointing=checkpointing,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=4), ckpt_path=ckpt_path)
    return trainer


def test_backbone_finetuning_schedule(tmp_path: Path) -> None:
    model = WithBackbone()
    cb = BackboneFinetuning(unfreeze_backbone_at_epoch=1, lambda_func=lambda epoch: 4.0, train_bn=False)
    before = model.backbone[0].weight.detach().clone()
    _fit(tmp_path, [cb], model, 4)
    # epoch 1: backbone joins at 0.1 * 0.1 = 0.01; then x4 each epoch: 0.04, 0.16 -> capped at the head's 0.1
    assert [(e, trainable) for e, trainable, _ in model.seen] == [(0, False), (1, True), (2, True), (3, True)]
    assert model.seen[0][2] == [0.1]
    lrs = [lrs for _, _, lrs in model.seen[1:]]
    assert lrs[0] == pytest.approx([0.1, 0.01]) and lrs[1] == pytest.approx([0.1, 0.04])
    assert lrs[2] == pytest.approx([0.1, 0.1])
    assert cb.previous_backbone_lr == pytest.approx(0.1)
    assert not torch.equal(before, model.backbone[0].weight)  # the backbone trained after unfreezing
    # train_bn=False: the BatchNorm parameters were left out of the new group
    group_params = {id(p) for p in model.trainer.optimizers[0].param_groups[1]["params"]}
    assert id(model.backbone[1].weight) not in group_params and id(model.backbone[0].weight) in group_params


def test_backbone_required(tmp_path: Path) -> None:
    class NoBackbone(WithBackbone):
        def __init__(self) -> None:
            super().__init__()
            self.features = self.backbone
            del self.backbone

        def on_train_epoch_start(self) -> None:
            pass

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return self.head(self.features(batch[0])).pow(2).mean()

    with pytest.raises(MisconfigurationException, match="should have a `backbone` attribute"):
        _fit(tmp_path, [BackboneFinetuning()], NoBackbone(), 1)


def test_base_requires_overrides() -> None:
    with pytest.raises(NotImplementedError, match="freeze_before_training"):
        BaseFinetuning().setup(None, nn.Linear(1, 1), "fit")  # type: ignore[arg-type]


@pytest.mark.filterwarnings("ignore:The provided params to be frozen already exist")
def test_resume_rebuilds_param_groups(tmp_path: Path) -> None:
    ck = ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True, save_top_k=0)
    first_cb = BackboneFinetuning(unfreeze_backbone_at_epoch=1, lambda_func=lambda epoch: 1.5)
    _fit(tmp_path, [first_cb, ck], WithBackbone(), 2, checkpointing=True)
    state = torch.load(ck.last_model_path, weights_only=True)["callbacks"]["BackboneFinetuning"]
    groups = state["internal_optimizer_metadata"][0]
    # train_bn=True: the BatchNorm stayed trainable, so it was in the configured group already
    assert [sorted(g["params"]) for g in groups] == [
        ["backbone.1.bias", "backbone.1.weight", "head.bias", "head.weight"],
        ["backbone.0.bias", "backbone.0.weight"],
    ]
    assert state["previous_backbone_lr"] == pytest.approx(0.01)

    model = WithBackbone()
    cb = BackboneFinetuning(unfreeze_backbone_at_epoch=1, lambda_func=lambda epoch: 1.5)
    trainer = _fit(tmp_path, [cb], model, 4, ckpt_path=ck.last_model_path)
    opt = trainer.optimizers[0]
    # both groups are back (the optimizer state, with Adam moments for the backbone, loaded into them)
    assert len(opt.param_groups) == 2 and id(model.backbone[0].weight) in {
        id(p) for p in opt.param_groups[1]["params"]
    }
    assert model.backbone[0].weight.requires_grad  # unfrozen again although setup froze it
    assert [lrs for _, _, lrs in model.seen] == [pytest.approx([0.1, 0.015]), pytest.approx([0.1, 0.0225])]
