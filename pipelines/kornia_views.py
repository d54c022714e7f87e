"""The Kornia backend: decode and crop in CPU worker processes (PIL, libjpeg-turbo), then colour,
blur, solarize, rotation and normalisation as batched tensor ops on the loader's device.

For users without DALI. Workers decode each JPEG once, in JPEG draft mode (DCT-domain downscale by
1/2, 1/4 or 1/8) when every view's crop still has at least its output resolution, and cut every
view from it with one resize per view (PIL's antialiased bilinear, crop box and scale in one pass).
On the device, jitter and grayscale are one affine colour pass per view (`fastssl.pipelines.colour`):
Kornia's ColorJitter applies op by op, with HSV round trips, several passes per view. Blur is
Kornia's `gaussian_blur2d` with a per-sample sigma, run only on the samples that drew it.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from fastssl.pipelines.colour import colour_transform
from kornia.enhance import normalize
from kornia.filters import gaussian_blur2d
from PIL import Image

from fastssl.errors import DataError, DecodeError, WorkerError
from fastssl.host.forking import collector_frozen
from fastssl.host.reader import BatchReader, HostBatch
from fastssl.recipes import Recipe

_PLACEHOLDER_VALUE = 120  # mid-gray view for a sample skipped at decode time


def _draft_factor(crops: list[np.ndarray], sizes: list[int]) -> int:
    """Largest DCT downscale (1, 2, 4 or 8) that leaves every view's crop at least its output size."""
    room = min(min(int(c[2]), int(c[3])) / s for c, s in zip(crops, sizes, strict=True))
    factor = 1
    while factor < 8 and room >= 2 * factor:
        factor *= 2
    return factor


def decode_views(batch: HostBatch, recipe: Recipe, *, on_error: str = "raise") -> list[np.ndarray]:
    """Every view of every sample as uint8 (B, S, S, 3): decoded once, cropped, resized, flipped."""
    specs = recipe.graph_views()
    sizes = [spec.size for spec in specs]
    out = [np.empty((len(batch), s, s, 3), dtype=np.uint8) for s in sizes]
    for i, jpeg in enumerate(batch.jpegs):
        crops = [p["crop"][i] for p in batch.params]
        try:
            with Image.open(io.BytesIO(jpeg.tobytes())) as image:
                factor = _draft_factor(crops, sizes)
                if factor > 1 and image.format == "JPEG":
                    image.draft("RGB", (-(-image.width // factor), -(-image.height // factor)))
                image = image.convert("RGB")  # decodes
                sx, sy = image.width / batch.widths[i], image.height / batch.heights[i]
                for v, (size, crop) in enumerate(zip(sizes, crops, strict=True)):
                    top, left, height, width = (int(c) for c in crop)
                    box = (left * sx, top * sy, (left + width) * sx, (top + height) * sy)
                    view = image.resize((size, size), Image.Resampling.BILINEAR, box=box)
                    if batch.params[v]["flip"][i]:
                        view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
                    out[v][i] = np.asarray(view)
        except (OSError, SyntaxError, ValueError) as err:
            if on_error == "raise":
                raise DecodeError(
                    f"cannot decode image: {err}", shard=batch.shards[i], key=batch.keys[i]
                ) from err
            if batch.valid[i]:  # padding repeats a sample another rank reads and lists
                batch.skipped.append(
                    {"shard": batch.shards[i], "key": batch.keys[i], "reason": f"decode: {err}"}
                )
            batch.valid[i] = False
            for view in out:
                view[i] = _PLACEHOLDER_VALUE
    return out


class KorniaViews:
    """The device half: uint8 (B, S, S, 3) views and their parameters in, finished views out."""

    def __init__(self, recipe: Recipe, device: torch.device | str = "cpu") -> None:
        self.recipe = recipe
        self.specs = recipe.graph_views()
        self.device = torch.device(device)
        self.mean = torch.tensor(recipe.mean, device=self.device)
        self.std = torch.tensor(recipe.std, device=self.device)

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array)).to(self.device, non_blocking=True)

    def __call__(
        self, views: Sequence[torch.Tensor], params: list[dict[str, np.ndarray]]
    ) -> list[torch.Tensor]:
        return [self.view(v, x, p) for v, (x, p) in enumerate(zip(views, params, strict=True))]

    def view(self, v: int, pixels: torch.Tensor, params: dict[str, np.ndarray]) -> torch.Tensor:
        """View `v` for a batch: colour, blur, solarize, rotate, normalise (rounding to the uint8
        grid after colour and blur, as the DALI graph stores uint8 between its ops)."""
        spec = self.specs[v]
        x = pixels.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
        if spec.p_jitter > 0 or spec.p_gray > 0:
            mats, vs, ws = colour_transform(params["jitter"], params["jitter_order"], params["gray"])
            mats, vs, ws = self._tensor(mats), self._tensor(vs), self._tensor(ws)
            mu = x.mean(dim=(2, 3))
            offset = vs * (ws * mu).sum(dim=1, keepdim=True)
            x = torch.einsum("bij,bjhw->bihw", mats, x) + offset[:, :, None, None]
            x = x.clamp_(0, 255).round_()
        if spec.p_blur > 0 and params["blur"].any():
            rows = torch.from_numpy(np.flatnonzero(params["blur"])).to(self.device)
            sigma = self._tensor(params["blur_sigma"][params["blur"]]).float()
            radius = math.ceil(3 * float(sigma.max()))
            blurred = gaussian_blur2d(
                x[rows], (2 * radius + 1, 2 * radius + 1), sigma[:, None].repeat(1, 2), border_type="reflect"
            )
            x[rows] = blurred.round_()
        if spec.p_solarize > 0 and params["solarize"].any():
            chosen = self._tensor(params["solarize"])[:, None, None, None]
            x = torch.where(chosen & (x >= spec.solarize_threshold * 255), 255 - x, x)
        if spec.rotation:
            x = torch.rot90(x, spec.rotation, dims=(2, 3))
        if self.recipe.view_dtype == "uint8":
            return x.to(torch.uint8).contiguous()
        x = normalize(x.div_(255.0), self.mean, self.std)
        return x.to(torch.bfloat16) if self.recipe.view_dtype == "bfloat16" else x.contiguous()


class _DecodedBatches(torch.utils.data.Dataset):
    """Batch number -> (HostBatch without its bytes, uint8 views), built in a worker process."""

    def __init__(self, reader: BatchReader, recipe: Recipe) -> None:
        self.reader, self.recipe = reader, recipe

    def __len__(self) -> int:
        return len(self.reader.plan)

    def __getitem__(self, number: int) -> tuple[HostBatch, list[np.ndarray]] | DataError:
        try:
            batch = self.reader(number)
            valid = batch.valid.copy()
            views = decode_views(batch, self.recipe, on_error=self.reader.on_error)
        except DataError as err:
            # returned, not raised: a DataLoader re-raises a worker's exception as a new one built
            # from the traceback text, which loses its shard and key attributes
            return err
        if not np.array_equal(valid, batch.valid):  # a decode failure: no tiles borrowed from it
            self.reader.draw_stage(batch)
        batch.jpegs = []  # the bytes stay in the worker
        return batch, views


class KorniaBackend:
    """Runs batches through decode workers (a torch DataLoader) and the device-side `KorniaViews`."""

    def __init__(
        self, recipe: Recipe, *, device: torch.device | str, num_workers: int, prefetch: int
    ) -> None:
        self.recipe = recipe
        self.device = torch.device(device)
        self.num_workers = num_workers
        self.prefetch = prefetch
        self.views = KorniaViews(recipe, self.device)

    def run(
        self, reader: BatchReader, numbers: Sequence[int]
    ) -> Iterator[tuple[HostBatch, list[torch.Tensor]]]:
        loader = torch.utils.data.DataLoader(
            _DecodedBatches(reader, self.recipe),
            batch_size=None,
            sampler=list(numbers),
            num_workers=self.num_workers,
            prefetch_factor=self.prefetch if self.num_workers else None,
            pin_memory=self.device.type == "cuda",
        )
        with collector_frozen():  # workers are forked here
            batches = iter(loader)
        try:
            while True:
                try:
                    item = next(batches)
                except StopIteration:
                    return
                if isinstance(item, DataError):
                    raise item
                batch, pixels = item
                yield batch, self.views(pixels, batch.params)
        except RuntimeError as err:
            # torch notices a dead worker at once (its SIGCHLD handler raises wherever the main
            # thread is: here, or in the caller's code between batches) or at its 5 s status check
            if "DataLoader worker" in str(err):
                raise WorkerError(f"a decode worker process died: {err}") from err
            raise
        except (ConnectionError, EOFError) as err:
            # a worker killed while handing a batch's tensors over (torch shares them through a
            # socket): the handover breaks before torch's own check sees the death
            dead = [w.pid for w in getattr(batches, "_workers", ()) if w.exitcode is not None]
            raise WorkerError(
                f"a decode worker process died while handing over a batch (dead: {dead or 'unknown'}): "
                f"{err!r}; it was killed by signal or exited unexpectedly"
            ) from err
        finally:
            # Stop the workers now, and unregister them from torch's SIGCHLD handler. Left to the
            # garbage collector, the iterator lives as long as any traceback through it (a raised
            # error holds one): its queues may be finalised before it, making its shutdown wait
            # 5 s, and a dead worker's pid stays registered, so that any later child exit in the
            # process raised "DataLoader worker ... killed" again, far from here.
            shutdown = getattr(batches, "_shutdown_workers", None)  # absent without workers
            if shutdown is not None:
                shutdown()
            del batches

    def close(self) -> None:
        """Nothing held between epochs: each `run` owns its DataLoader and workers."""
