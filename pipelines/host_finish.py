"""The views of the CPU path: each view's crop-resize, flip, colour transform, blur, solarize,
rotation, normalisation and CHW layout in one compiled pass per sample
(`fastssl.kernels.view_finish`), written straight into the torch tensors the loader yields.

On the CPU the DALI graph only decodes: its resize, colour, blur and normalise ops cost ten
times this pass (`benchmarks/bench_roofline.py`), and its float32 views had to be copied once
more into torch-owned memory. The kernel releases the GIL, so `threads` threads split each batch.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from fastssl.kernels.view_finish import finish_view, scratch_size

from fastssl.recipes import Recipe

# the kernel's parameter groups, in the order of its `columns` argument
_COLUMNS = ("roi_start", "roi_end", "matrix", "v", "w", "blur", "sigma", "solarize")


class TensorPool:
    """Output tensors handed out before, taken again once nothing else holds them, so that a batch
    of views is written into memory already mapped: a fresh (64, 3, 224, 224) float32 tensor costs
    its page faults on first write and an munmap when freed (glibc maps blocks that large on their
    own), about as much as the view's whole colour pass on the 2-core VM.

    A tensor is reused only when this pool holds the sole reference to it and to its storage (no
    name, batch dict, slice, view or NumPy array of it left anywhere) and it is not in shared
    memory: a tensor the caller still has never changes. Without torch's storage use count
    (a private function) nothing is reused."""

    def __init__(self, keep: int = 4) -> None:
        self.keep = keep
        self._given: dict[tuple, list[torch.Tensor]] = {}

    def take(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        given = self._given.setdefault((shape, dtype), [])
        for k in range(len(given)):
            if _sole_owner(given, k):
                tensor = given.pop(k)
                given.append(tensor)
                return tensor
        tensor = torch.empty(shape, dtype=dtype)
        if _STORAGE_USES is not None:
            given.append(tensor)
            del given[: -self.keep]
        return tensor


_STORAGE_USES = getattr(torch._C, "_storage_Use_Count", None)


def _sole_owner(tensors: list[torch.Tensor], k: int) -> bool:
    """Whether the list's reference is the only one to tensor k and it the only user of its storage."""
    tensor = tensors[k]
    # references now: the list's, `tensor`'s and getrefcount's argument; storage uses: the
    # tensor's and the temporary storage object's
    return (
        sys.getrefcount(tensor) <= 3
        and _STORAGE_USES(tensor.untyped_storage()._cdata) <= 2
        and not tensor.is_shared()
    )


class HostFinish:
    """Makes a batch's views from its decoded images (one (H, W, 3) uint8 array per sample) into
    the recipe's output tensors (float32 normalised CHW, or uint8 CHW), reading each sample's
    parameters from the batch's (B, K) parameter array at the columns of `layout`
    (`fastssl.pipelines.dali_views.param_layout`). With a ROI decode (`roi_decode`) the images are
    the crop boxes and the ROI columns are relative to them, as on the GPU graph. One thread calls
    it at a time (the backend's run-ahead thread); `threads` split each batch."""

    def __init__(self, recipe: Recipe, layout: list[dict[str, slice]], threads: int, keep: int = 4) -> None:
        self.specs = recipe.graph_views()
        self.columns = [
            np.array([columns[name].start if name in columns else -1 for name in _COLUMNS], np.int64)
            for columns in layout
        ]
        self.levels = [spec.solarize_level for spec in self.specs]
        if recipe.view_dtype == "uint8":
            self.dtype = torch.uint8
            self.scale, self.shift = np.ones(3, np.float32), np.zeros(3, np.float32)
        else:  # bfloat16 views leave here as float32; the loader converts them
            self.dtype = torch.float32
            self.scale = np.array([1 / (255 * s) for s in recipe.std], np.float32)
            self.shift = np.array([-m / s for m, s in zip(recipe.mean, recipe.std, strict=True)], np.float32)
        self.threads = max(1, threads)
        self._pool = (
            ThreadPoolExecutor(self.threads, thread_name_prefix="fastssl-views") if self.threads > 1 else None
        )
        self._scratch = threading.local()  # each thread's view and float buffers, reused
        self._pool_out = TensorPool(keep)  # `keep` batches' tensors: those in flight ahead of the consumer

    def __call__(self, images: Sequence[np.ndarray], params: np.ndarray) -> list[torch.Tensor]:
        """One output tensor per view for the batch's decoded `images` and parameters."""
        n = len(images)
        outputs = [self._pool_out.take((n, 3, spec.size, spec.size), self.dtype) for spec in self.specs]
        targets = [out.numpy() for out in outputs]
        if self._pool is None or n < 2:
            self._run(images, params, targets, 0, n)
        else:
            bounds = np.linspace(0, n, self.threads + 1).astype(int)
            jobs = [self._pool.submit(self._run, images, params, targets, int(a), int(b))
                    for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]  # fmt: skip
            for job in jobs:
                job.result()
        return outputs

    def _run(self, images: Sequence[np.ndarray], params: np.ndarray, targets: list[np.ndarray],
             start: int, stop: int) -> None:  # fmt: skip
        # sample by sample, every view of it: its decoded image is read from cache after the first
        width = max(images[i].shape[1] for i in range(start, stop))
        buffers = [self._buffers(spec.size, width) for spec in self.specs]
        for i in range(start, stop):
            image, row = images[i], params[i]
            for v, spec in enumerate(self.specs):
                view, scratch = buffers[v]
                columns, level = self.columns[v], self.levels[v]
                finish_view(image, row, columns, spec.rotation, level, self.scale, self.shift, view, scratch,
                            targets[v][i])  # fmt: skip

    def _buffers(self, side: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """This thread's (side, side, 3) uint8 view and float32 scratch for images up to `width`
        columns (`finish_view`'s sizes), grown when too small."""
        local = self._scratch
        views = getattr(local, "views", None)
        if views is None:
            views = local.views = {}
            local.scratch = np.empty(0, np.float32)
        if side not in views:
            views[side] = np.empty((side, side, 3), np.uint8)
        need = scratch_size(width, side)
        if len(local.scratch) < need:
            local.scratch = np.empty(need, np.float32)
        return views[side], local.scratch

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
