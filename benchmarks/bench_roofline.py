"""The CPU roofline of a SimCLR view: each stage alone, one thread, CPU microseconds per image, for
every library implementation that can do it here, beside the op fastssl's DALI-CPU graph uses.

Stages: decode (the whole JPEG; and the ROI-decode and DCT-scaled decode fastssl can pick); one
224 px crop-resize from a random-resized-crop box; the colour transform (jitter + grayscale as one
3x3 matrix with offset); a Gaussian blur (sigma uniform in 0.1-2); normalise and convert to float32
CHW; the copy of a float32 view into torch-owned memory, into fresh and into reused buffers. Each
figure is CPU time of the one thread that runs the stage (`time.thread_time`), over the same images
and parameters for every implementation. DALI ops run in a graph of their own with one thread,
minus the cost of a graph that only passes its inputs through.

    python benchmarks/bench_roofline.py DATA --images 256 --repeats 3 --json out.json
"""

from __future__ import annotations

import argparse
import io
import json
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from fastssl.kernels.view_finish import _blur, _colour, _crop_resize_transposed, finish_view, scratch_size
from fastssl.pipelines.host_finish import HostFinish
from PIL import Image, ImageFilter

from fastssl.host.params import sample_params
from fastssl.recipes import SimCLR

SIZE = 224


def load_jpegs(data: str, count: int) -> list[bytes]:
    """The first `count` JPEGs of the shard folder's tar files, as bytes."""
    out = []
    for path in sorted(Path(data).glob("*.tar")):
        with tarfile.open(path) as tar:
            for member in tar:
                if member.name.endswith(".jpg"):
                    out.append(tar.extractfile(member).read())
                    if len(out) == count:
                        return out
    return out


def per_image(fn: Callable[[int], object], n: int, repeats: int) -> float:
    """Best-of-`repeats` CPU microseconds per item of `fn(i)` for i in range(n), on this thread."""
    best = float("inf")
    fn(0)  # warm: compiled kernels, caches
    for _ in range(repeats):
        start = time.thread_time()
        for i in range(n):
            fn(i)
        best = min(best, (time.thread_time() - start) / n * 1e6)
    return best


def _constant(data: list[np.ndarray]) -> Callable[[], list[np.ndarray]]:
    return lambda: data


def dali_per_image(build: Callable, inputs: list[list[np.ndarray]], repeats: int) -> float:
    """CPU microseconds per image of a one-thread DALI graph `build(*external_sources)` fed
    `inputs` (lists of per-sample arrays, one list per source), minus a pass-through graph's. DALI's
    worker thread does the work, so process CPU time is measured, with nothing else running."""
    from nvidia.dali import fn, pipeline_def

    def rate(body: Callable) -> float:
        n = len(inputs[0])

        @pipeline_def(batch_size=n, num_threads=1, device_id=None, prefetch_queue_depth=1, exec_dynamic=True)
        def graph():  # noqa: ANN202 - DALI traces this function
            # callables with no parameters: DALI would pass one the iteration number
            sources = [fn.external_source(source=_constant(data), batch=True, cycle=None) for data in inputs]
            return body(*sources)

        pipe = graph()
        pipe.build()
        pipe.run()
        best = float("inf")
        for _ in range(repeats):
            start = time.process_time()
            pipe.run()
            best = min(best, (time.process_time() - start) / n * 1e6)
        pipe._shutdown()
        return best

    return rate(build) - rate(lambda *xs: xs[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from nvidia.dali import fn, types

    jpegs = load_jpegs(args.data, args.images)
    n = len(jpegs)
    decoded = [np.asarray(Image.open(io.BytesIO(j)).convert("RGB")) for j in jpegs]
    recipe = SimCLR()
    heights, widths = np.array([d.shape[0] for d in decoded]), np.array([d.shape[1] for d in decoded])
    every_view = sample_params(
        recipe, seed=0, epoch=0, sample_ids=np.arange(n), heights=heights, widths=widths
    )
    params = every_view[0]
    crop = params["crop"].astype(np.int64)  # (top, left, height, width)
    boxes = [(int(c[1]), int(c[0]), int(c[1] + c[3]), int(c[0] + c[2])) for c in crop]
    sigma = np.random.default_rng(0).uniform(0.1, 2.0, n).astype(np.float32)  # every view blurred
    views = [np.asarray(Image.fromarray(d).resize((SIZE, SIZE), Image.BILINEAR, box=b))
             for d, b in zip(decoded, boxes, strict=True)]  # fmt: skip
    rows: dict[str, dict[str, float]] = {}

    def put(stage: str, name: str, value: float) -> None:
        rows.setdefault(stage, {})[name] = round(value, 1)
        print(f"{stage:34s} {name:42s} {value:9.1f} us/image", flush=True)

    # decode
    def pil_decode(i: int) -> None:
        with Image.open(io.BytesIO(jpegs[i])) as im:
            im.load()

    def pil_draft(scale: int) -> Callable[[int], None]:
        def run(i: int) -> None:
            with Image.open(io.BytesIO(jpegs[i])) as im:
                im.draft("RGB", (im.width // scale, im.height // scale))
                im.load()

        return run

    put("decode", "PIL (libjpeg-turbo), full", per_image(pil_decode, n, args.repeats))
    put("decode", "PIL draft 1/2 (DCT-scaled)", per_image(pil_draft(2), n, args.repeats))
    put("decode", "PIL draft 1/4 (DCT-scaled)", per_image(pil_draft(4), n, args.repeats))
    raw = [[np.frombuffer(j, np.uint8) for j in jpegs]]
    put("decode", "DALI decoders.image (cpu)", dali_per_image(
        lambda x: fn.decoders.image(x, device="cpu", output_type=types.RGB), raw, args.repeats))  # fmt: skip
    anchors = [
        [np.array([b[0], b[1]], np.float32) for b in boxes],
        [np.array([b[2] - b[0], b[3] - b[1]], np.float32) for b in boxes],
    ]
    put("decode", "DALI decoders.image_slice (crop box only)", dali_per_image(
        lambda x, a, s: fn.decoders.image_slice(x, a, s, device="cpu", output_type=types.RGB,
                                                normalized_anchor=False, normalized_shape=False),
        raw + anchors, args.repeats))  # fmt: skip

    # one 224 crop-resize, uint8 HWC in and out
    def pil_resize(i: int) -> None:
        Image.fromarray(decoded[i]).resize((SIZE, SIZE), Image.BILINEAR, box=boxes[i])

    images = [Image.fromarray(d) for d in decoded]

    def pil_resize_only(i: int) -> None:
        images[i].resize((SIZE, SIZE), Image.BILINEAR, box=boxes[i])

    put(
        "crop-resize 224",
        "PIL resize(box=), bilinear antialiased",
        per_image(pil_resize_only, n, args.repeats),
    )
    put("crop-resize 224", "PIL resize(box=), incl. fromarray", per_image(pil_resize, n, args.repeats))
    chw = [torch.from_numpy(d).permute(2, 0, 1)[None].float() for d in decoded]

    def torch_resize(i: int) -> None:
        left, top, right, bottom = boxes[i]
        torch.nn.functional.interpolate(chw[i][..., top:bottom, left:right], size=(SIZE, SIZE),
                                        mode="bilinear", antialias=True, align_corners=False)  # fmt: skip

    put("crop-resize 224", "torch interpolate antialias (float)", per_image(torch_resize, n, args.repeats))
    hwc = [[d for d in decoded]]
    roi = [
        [np.array([b[1], b[0]], np.float32) for b in boxes],
        [np.array([b[3], b[2]], np.float32) for b in boxes],
    ]
    put("crop-resize 224", "DALI resize(roi), antialias (fastssl before)", dali_per_image(
        lambda x, s, e: fn.resize(x, roi_start=s, roi_end=e, size=[SIZE, SIZE], antialias=True,
                                  dtype=types.UINT8), hwc + roi, args.repeats))  # fmt: skip
    put("crop-resize 224", "DALI resize(roi), no antialias", dali_per_image(
        lambda x, s, e: fn.resize(x, roi_start=s, roi_end=e, size=[SIZE, SIZE], antialias=False,
                                  dtype=types.UINT8), hwc + roi, args.repeats))  # fmt: skip

    view_buf = np.empty((SIZE, SIZE, 3), np.uint8)
    scratch = np.empty(scratch_size(max(d.shape[1] for d in decoded), SIZE), np.float32)

    def kernel_resize(i: int) -> None:
        left, top, right, bottom = boxes[i]
        _crop_resize_transposed(decoded[i], top, left, bottom, right, False, view_buf, scratch)

    put("crop-resize 224", "fastssl kernel (after)", per_image(kernel_resize, n, args.repeats))

    # colour transform on a 224 view
    from fastssl.pipelines.colour import colour_transform

    mats, vecs, ws = colour_transform(params["jitter"], params["jitter_order"], params["gray"])
    vfloat = [v.astype(np.float32) for v in views]

    def numpy_colour(i: int) -> None:
        x = vfloat[i]
        mu = x.reshape(-1, 3).mean(0)
        out = x @ mats[i].T + vecs[i] * float(ws[i] @ mu)
        np.clip(out + 0.5, 0, 255).astype(np.uint8)

    put("colour matrix (224 view)", "NumPy float32 matmul + clip", per_image(numpy_colour, n, args.repeats))
    vt = [torch.from_numpy(v) for v in views]
    mt = [torch.from_numpy(m) for m in mats]

    def torch_colour(i: int) -> None:
        x = vt[i].float()
        mu = x.reshape(-1, 3).mean(0)
        out = x @ mt[i].T + torch.from_numpy(vecs[i]) * float(torch.from_numpy(ws[i]) @ mu)
        out.add_(0.5).clamp_(0, 255).to(torch.uint8)

    put("colour matrix (224 view)", "torch float32 matmul + clamp", per_image(torch_colour, n, args.repeats))
    vin = [[v for v in views]]
    cin = [[m for m in mats], [v for v in vecs], [w for w in ws]]

    def dali_colour(x, m, v, w):  # noqa: ANN001, ANN202
        mu = fn.reductions.mean(x, axes=(0, 1))
        return fn.coord_transform(x, M=m, T=v * fn.reductions.sum(w * mu), dtype=types.UINT8)

    put("colour matrix (224 view)", "DALI mean + coord_transform (fastssl before)",
        dali_per_image(dali_colour, vin + cin, args.repeats))  # fmt: skip

    flat_m = mats.reshape(n, 9)

    def kernel_colour(i: int) -> None:  # on a copy: the kernel works in place (copy ~2% of this)
        view_buf[:] = views[i]
        _colour(view_buf, flat_m[i], vecs[i], ws[i])

    put("colour matrix (224 view)", "fastssl kernel (after)", per_image(kernel_colour, n, args.repeats))

    # Gaussian blur on a 224 view
    pil_views = [Image.fromarray(v) for v in views]

    def pil_blur(i: int) -> None:
        pil_views[i].filter(ImageFilter.GaussianBlur(float(sigma[i])))

    put(
        "blur (224 view, sigma 0.1-2)",
        "PIL GaussianBlur (box approximation)",
        per_image(pil_blur, n, args.repeats),
    )
    put("blur (224 view, sigma 0.1-2)", "DALI gaussian_blur (fastssl before)", dali_per_image(
        lambda x, s: fn.gaussian_blur(x, sigma=s), vin + [[np.float32(max(s, 1e-3)) for s in sigma]],
        args.repeats))  # fmt: skip

    cut = (3 * SIZE - 2) * 3

    def kernel_blur(i: int) -> None:
        view_buf[:] = views[i]
        _blur(view_buf, max(float(sigma[i]), 1e-3), scratch[:cut], scratch[cut : cut + SIZE * SIZE * 3])

    put("blur (224 view, sigma 0.1-2)", "fastssl kernel (after)", per_image(kernel_blur, n, args.repeats))

    # normalise + float32 CHW
    mean = torch.tensor([255 * m for m in recipe.mean]).view(3, 1, 1)
    inv_std = 1 / torch.tensor([255 * s for s in recipe.std]).view(3, 1, 1)
    out = torch.empty(3, SIZE, SIZE)

    def torch_normalise(i: int) -> None:
        torch.sub(vt[i].permute(2, 0, 1), mean, out=out).mul_(inv_std)

    put(
        "normalise, float32 CHW",
        "torch sub/mul into a reused tensor",
        per_image(torch_normalise, n, args.repeats),
    )
    mean_np = np.array([255 * m for m in recipe.mean], np.float32)[:, None, None]
    inv_np = 1 / np.array([255 * s for s in recipe.std], np.float32)[:, None, None]
    out_np = np.empty((3, SIZE, SIZE), np.float32)

    def numpy_normalise(i: int) -> None:
        np.subtract(views[i].transpose(2, 0, 1), mean_np, out=out_np)
        np.multiply(out_np, inv_np, out=out_np)

    put(
        "normalise, float32 CHW",
        "NumPy subtract/multiply, reused",
        per_image(numpy_normalise, n, args.repeats),
    )
    put("normalise, float32 CHW", "DALI crop_mirror_normalize (fastssl before)", dali_per_image(
        lambda x: fn.crop_mirror_normalize(x, dtype=types.FLOAT, output_layout="CHW",
                                           mean=list(mean_np.ravel()), std=list(1 / inv_np.ravel())),
        vin, args.repeats))  # fmt: skip

    # the whole fused pass for one view; less the crop-resize alone it is the normalise + write
    from fastssl.pipelines.dali_views import pack_params, param_layout

    from fastssl.host.reader import HostBatch

    layout, k = param_layout(recipe)
    finish = HostFinish(recipe, layout, threads=1)
    columns, scale, shift = finish.columns[0], finish.scale, finish.shift
    batch = HostBatch(
        number=0, jpegs=[], heights=heights, widths=widths, keys=[str(i) for i in range(n)],
        shards=[""] * n, labels=None, valid=np.ones(n, bool), params=every_view,
    )  # fmt: skip
    table = pack_params(recipe, batch, np.zeros((n, k), np.float32))  # as the feeders pack a batch
    plain = table.copy()
    plain[:, layout[0]["matrix"]] = np.eye(3, dtype=np.float32).reshape(9)
    plain[:, layout[0]["v"]] = 0.0
    plain[:, layout[0]["blur"]] = 0.0
    target = np.empty((3, SIZE, SIZE), np.float32)

    def kernel_view(table: np.ndarray) -> Callable[[int], None]:
        def run(i: int) -> None:
            finish_view(decoded[i], table[i], columns, 0, 128, scale, shift, view_buf, scratch, target)

        return run

    put(
        "normalise, float32 CHW",
        "fastssl kernel: crop + normalise (after)",
        per_image(kernel_view(plain), n, args.repeats),
    )
    put(
        "whole view",
        "fastssl kernel: SimCLR view, every op (after)",
        per_image(kernel_view(table), n, args.repeats),
    )

    # the copy of a float32 224 view into torch-owned memory
    src = torch.randn(3, SIZE, SIZE)
    reused = torch.empty(3, SIZE, SIZE)
    put(
        "copy into torch (602 KB)",
        "copy_ into a reused tensor",
        per_image(lambda i: reused.copy_(src), n, args.repeats),
    )
    batch = 64

    def fresh(i: int) -> None:  # a batch-sized fresh buffer, as a loader allocates per batch
        if i % batch == 0:
            fresh.buf = torch.empty(batch, 3, SIZE, SIZE)
        fresh.buf[i % batch].copy_(src)

    put("copy into torch (602 KB)", "copy_ into fresh batch buffers", per_image(fresh, n, args.repeats))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"images": n, "size": SIZE, "us_per_image": rows}, f, indent=2)


if __name__ == "__main__":
    main()
