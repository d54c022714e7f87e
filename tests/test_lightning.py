"""`fastssl.examples.lightning_datamodule` under a real Lightning Trainer: a run stopped mid-epoch and
resumed from its checkpoint continues the loader's position (Lightning's own loaders do not)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pl = pytest.importorskip("lightning.pytorch")

from fastssl.examples.lightning_datamodule import SSLDataModule  # noqa: E402
from fastssl.recipes import Crop  # noqa: E402
from tests.shardsets import demo_shard_set  # noqa: E402


class KeyRecorder(pl.LightningModule):
    """A linear model on the views that records the keys of every batch it trains on."""

    def __init__(self) -> None:
        super().__init__()
        self.head = torch.nn.Linear(3 * 16 * 16, 4)
        self.keys: list[list[str]] = []

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self.keys.append(list(batch["key"]))
        return self.head(batch["views"][0].flatten(1)).pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lightning")
    return demo_shard_set(root, num_images=48, seed=6, shard_size=16)


def _trainer(**kw) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
        use_distributed_sampler=False, **kw,
    )  # fmt: skip


def _data(shards: Path) -> SSLDataModule:
    return SSLDataModule(str(shards), Crop(size=16), batch_size=8, seed=3, num_threads=1)


def test_a_run_resumed_mid_epoch_continues_the_loaders_position(shards, tmp_path):
    whole = KeyRecorder()
    _trainer(max_epochs=1, enable_checkpointing=False).fit(whole, datamodule=_data(shards))
    assert len(whole.keys) == 6

    stopped = KeyRecorder()
    saver = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=2, save_top_k=-1)
    _trainer(max_steps=2, callbacks=[saver]).fit(stopped, datamodule=_data(shards))
    (checkpoint,) = tmp_path.glob("*step=2*.ckpt")
    resumed = KeyRecorder()
    _trainer(max_epochs=1, enable_checkpointing=False).fit(
        resumed, datamodule=_data(shards), ckpt_path=str(checkpoint)
    )
    assert stopped.keys == whole.keys[:2]
    assert resumed.keys == whole.keys[2:]  # not the epoch from its start, not a repeat of steps 1-2
