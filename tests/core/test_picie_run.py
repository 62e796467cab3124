"""train_picie's wiring with the epochs stubbed out: what the epoch context, the monitor, the untrained baseline,
the checkpoints and the result are built from, and where a resumed run starts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from picie_helpers import GEOMETRY_ONLY
from scenes import SceneStream

from unseg.core.picie import train as train_module
from unseg.core.picie.clustering import ClusterConfig
from unseg.core.picie.inference import ImageSource
from unseg.core.picie.loss import LossConfig
from unseg.core.picie.monitor import EvalConfig, ValMonitor
from unseg.core.picie.network import NetworkConfig, build_network
from unseg.core.picie.train import EpochContext, TrainConfig, derive_seed, run_fingerprint, train_picie
from unseg.core.picie.views import ViewConfig
from unseg.core.store import ShardStore, write_store

CPU = torch.device("cpu")
NETWORK = NetworkConfig(pretrained=False)
VIEWS = ViewConfig(input_size=64, base_size=48, **GEOMETRY_ONLY)  # all three sizes differ from the stores' 32
CLUSTERING = ClusterConfig(num_clusters=3, sample_size=400, batch_size=6)  # = the training set: allowed
LOSS = LossConfig(class_weights="none")


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> tuple[ShardStore, ShardStore]:
    tmp = tmp_path_factory.mktemp("picie_run")
    write_store(SceneStream("train", 6, 32), tmp / "train", progress=False)
    write_store(SceneStream("val", 2, 32), tmp / "val", progress=False)
    return ShardStore(tmp / "train"), ShardStore(tmp / "val")


class Recorder:
    """Stands in for run_epoch (moves one weight by 1 per epoch, returns a loss of 10 * epoch) and for
    ValMonitor.fresh_kmeans (fixed scores); records what they were given."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.epochs: list[tuple[EpochContext, int, torch.Tensor]] = []
        self.fresh: list[tuple[ValMonitor, torch.nn.Module, ImageSource, int]] = []
        monkeypatch.setattr(train_module, "run_epoch", self.run_epoch)

        def fresh_kmeans(monitor: ValMonitor, net: torch.nn.Module, source: ImageSource, seed: int) -> dict[str, float]:
            return self.fresh_kmeans(monitor, net, source, seed)

        monkeypatch.setattr(ValMonitor, "fresh_kmeans", fresh_kmeans)

    def run_epoch(self, ctx: EpochContext, epoch: int) -> dict[str, float]:
        weight = ctx.net.laterals[0].weight
        self.epochs.append((ctx, epoch, weight.detach().clone()))
        with torch.no_grad():
            weight.add_(1.0)
        return {"picie/loss": 10.0 * epoch}

    def fresh_kmeans(self, monitor: ValMonitor, net: torch.nn.Module, source: ImageSource,
                     seed: int) -> dict[str, float]:
        self.fresh.append((monitor, net, source, seed))
        return {"miou": 11.0, "acc": 22.0}


def run(stores: tuple[ShardStore, ShardStore | None], epochs: int, checkpoints: Path | None,
        evaluation: EvalConfig = EvalConfig(num_clusters=5, sample_size=50)) -> train_module.TrainResult:  # noqa: B008
    config = TrainConfig(epochs=epochs, batch_size=6, lr=0.01, progress=False, keep_checkpoints=2,
                         checkpoint_dir=None if checkpoints is None else str(checkpoints))
    return train_picie(stores[0], stores[1], NETWORK, VIEWS, CLUSTERING, LOSS, config, evaluation, 8, 3, CPU)


def test_run_builds_its_epochs_monitor_baseline_checkpoints_and_result(stores: tuple[ShardStore, ShardStore],
                                                                        tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Epochs 1..E, each given one context built from the arguments (the seeded network, Adam at the asked lr,
    the train images at base_size, the blocks, the seed, the device, a val monitor at input_size); the untrained
    baseline scored once at step 0 on the train images at input_size with its own seed; a checkpoint per epoch
    holding the state; the result's info and history."""
    train, val = stores
    rec = Recorder(monkeypatch)
    evaluation = EvalConfig(num_clusters=5, sample_size=50)
    result = run(stores, 2, tmp_path)
    assert [epoch for _, epoch, _ in rec.epochs] == [1, 2]
    ctx = rec.epochs[0][0]
    assert rec.epochs[1][0] is ctx and result.network is ctx.net and not ctx.net.training
    assert (ctx.views, ctx.clustering, ctx.loss, ctx.seed, ctx.device) == (VIEWS, CLUSTERING, LOSS, 3, CPU)
    assert ctx.train.epochs == 2 and ctx.train.lr == 0.01
    assert ctx.source.store is train and ctx.source.size == 48
    assert [g["lr"] for g in ctx.optimizer.param_groups] == [0.01]
    assert {id(p) for g in ctx.optimizer.param_groups for p in g["params"]} == {id(p) for p in ctx.net.parameters()}
    seeded, init = build_network(NETWORK, 3)
    torch.testing.assert_close(rec.epochs[0][2], seeded.laterals[0].weight.detach())
    monitor = ctx.monitor
    assert isinstance(monitor, ValMonitor)
    assert (monitor.val, monitor.num_classes, monitor.config, monitor.device) == (val, 8, evaluation, CPU)
    assert monitor.source.size == 64
    ((baseline_monitor, net, source, seed),) = rec.fresh
    assert baseline_monitor is monitor and net is ctx.net
    assert source.store is train and source.size == 64 and seed == derive_seed(3, 0, 99)

    fingerprint = run_fingerprint(NETWORK, init, VIEWS, CLUSTERING, LOSS, ctx.train, evaluation, 3, train, val)
    assert result.info == {"init": "random", "fingerprint": fingerprint,
                           "checkpoint_dir": str(tmp_path / fingerprint), "resumed_from_epoch": 0, "epochs": 2,
                           "train_images": 6}
    assert result.history == {
        "picie/pretrained_init": [{"value": 0.0, "step": 0}],
        "picie/untrained_kmeans_miou": [{"value": 11.0, "step": 0}],
        "picie/untrained_kmeans_acc": [{"value": 22.0, "step": 0}],
        "picie/loss": [{"value": 10.0, "step": 1}, {"value": 20.0, "step": 2}],
    }
    assert sorted(p.name for p in (tmp_path / fingerprint).iterdir()) == ["epoch_0001.pt", "epoch_0002.pt"]
    payload = torch.load(tmp_path / fingerprint / "epoch_0002.pt", weights_only=True)
    assert sorted(payload) == ["epoch", "fingerprint", "history", "init", "model", "optimizer", "rng"]
    assert (payload["epoch"], payload["fingerprint"], payload["init"]) == (2, fingerprint, "random")
    assert payload["history"] == result.history
    torch.testing.assert_close(payload["model"]["laterals.0.weight"], seeded.laterals[0].weight.detach() + 2)


def test_resume_starts_after_the_newest_checkpoint_within_the_epochs_asked(
        stores: tuple[ShardStore, ShardStore], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Asking for fewer epochs than checkpointed resumes from the last one within them (nothing to run); asking
    for more continues from the newest with its weights and history, without a second baseline."""
    rec = Recorder(monkeypatch)
    run(stores, 2, tmp_path)  # writes epochs 1 and 2
    rec.epochs.clear()
    rec.fresh.clear()
    shorter = run(stores, 1, tmp_path)
    assert shorter.info["resumed_from_epoch"] == 1 and not rec.epochs and not rec.fresh
    assert shorter.history["picie/loss"] == [{"value": 10.0, "step": 1}]
    longer = run(stores, 3, tmp_path)
    assert longer.info["resumed_from_epoch"] == 2 and [epoch for _, epoch, _ in rec.epochs] == [3]
    seeded, _ = build_network(NETWORK, 3)
    torch.testing.assert_close(rec.epochs[0][2], seeded.laterals[0].weight.detach() + 2)  # epoch 2's weights
    assert [m["step"] for m in longer.history["picie/loss"]] == [1, 2, 3]
    assert len(longer.history["picie/pretrained_init"]) == 1 and not rec.fresh


@pytest.mark.parametrize("monitor, baseline", [(True, False), (False, True), (False, False)])
def test_monitor_and_baseline_switches(stores: tuple[ShardStore, ShardStore], monkeypatch: pytest.MonkeyPatch,
                                       monitor: bool, baseline: bool) -> None:
    """evaluation.monitor gives the epochs a val monitor; evaluation.untrained_baseline scores the untrained
    network once; each independently of the other."""
    rec = Recorder(monkeypatch)
    evaluation = EvalConfig(num_clusters=5, sample_size=50, monitor=monitor, untrained_baseline=baseline)
    result = run(stores, 1, None, evaluation)
    ctx = rec.epochs[0][0]
    assert isinstance(ctx.monitor, ValMonitor) if monitor else ctx.monitor is None
    assert len(rec.fresh) == int(baseline)
    assert ("picie/untrained_kmeans_miou" in result.history) == baseline
    assert result.info["checkpoint_dir"] is None


def test_no_val_store_no_monitor(stores: tuple[ShardStore, ShardStore], monkeypatch: pytest.MonkeyPatch) -> None:
    rec = Recorder(monkeypatch)
    result = run((stores[0], None), 1, None)
    assert rec.epochs[0][0].monitor is None and not rec.fresh
    assert sorted(result.history) == ["picie/loss", "picie/pretrained_init"]
    assert np.isclose(result.history["picie/loss"][0]["value"], 10.0)
