"""SSLLoader as a PyTorch Lightning `LightningDataModule` (Lightning is not a fastssl dependency).

    trainer = lightning.Trainer(strategy="ddp", devices=2, use_distributed_sampler=False)
    trainer.fit(model, datamodule=SSLDataModule("shards/", SimCLR()))

`use_distributed_sampler=False` because the loader already splits each epoch across ranks itself
(exactly once, equal batch counts). Lightning's fit loop sets the epoch through `set_epoch` on the
loader it gets, and resumes it through the datamodule's `state_dict` / `load_state_dict`.
"""

from __future__ import annotations

from typing import Any

try:
    import lightning.pytorch as pl
except ImportError:  # Lightning 1.x name; neither is required by fastssl
    import pytorch_lightning as pl

from fastssl import SSLLoader
from fastssl.recipes import Recipe


class SSLDataModule(pl.LightningDataModule):
    """Hands Lightning an SSLLoader built on the trainer's own device, rank and world size."""

    def __init__(self, data: str, recipe: Recipe, batch_size: int = 256, **loader_options: Any) -> None:
        super().__init__()
        self.data, self.recipe, self.batch_size = data, recipe, batch_size
        self.loader_options = loader_options
        self.loader: SSLLoader | None = None
        self._pending_state: dict | None = None

    def train_dataloader(self) -> SSLLoader:
        trainer = self.trainer
        self.loader = SSLLoader(
            self.data,
            self.recipe,
            self.batch_size,
            device=trainer.strategy.root_device,
            rank=trainer.global_rank,
            world_size=trainer.world_size,
            **self.loader_options,
        )
        if self._pending_state is not None:
            self.loader.load_state_dict(self._pending_state)
        return self.loader

    def transfer_batch_to_device(self, batch: dict, device: Any, dataloader_idx: int) -> dict:
        return batch  # already on the trainer's device

    def state_dict(self) -> dict:
        return self.loader.state_dict() if self.loader is not None else {}

    def load_state_dict(self, state: dict) -> None:
        self._pending_state = state or None

    def teardown(self, stage: str) -> None:
        if self.loader is not None:
            self.loader.close()
