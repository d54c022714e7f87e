"""The `fastssl` command: argument handling only; the work lives in the library modules."""

from __future__ import annotations

import argparse
import ast
import signal
import sys
from pathlib import Path

from fastssl import __version__


def _quality(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 100:
        raise argparse.ArgumentTypeError(f"must be in 1..100, got {text}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _add_shards(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "shards",
        help="write a folder of images into WebDataset shards with DALI indexes",
        description=(
            "Shard SRC (an ImageFolder tree with one sub-folder per class, or a flat folder of "
            "unlabelled images) into OUT/shard-NNNNNN.tar with a DALI index (.idx) beside each, "
            "OUT/manifest.json and OUT/rejects.jsonl. Every input is decoded fully; bad inputs "
            "are listed in rejects.jsonl with a reason and do not stop the run. Exits non-zero "
            "only when nothing could be written or OUT cannot be used."
        ),
    )
    p.add_argument("src", type=Path, help="source folder")
    p.add_argument("out", type=Path, help="output folder (created if missing)")
    p.add_argument("--shard-size", type=_positive, default=1000, help="samples per shard (1000)")
    p.add_argument(
        "--workers",
        type=_positive,
        default=None,
        help="decode/validate processes (default: all cores)",
    )
    p.add_argument(
        "--max-side",
        type=_positive,
        default=None,
        help="downscale images whose longer side exceeds this (re-encodes them)",
    )
    p.add_argument(
        "--quality",
        type=_quality,
        default=None,
        help="re-encode every image at this JPEG quality (default: keep valid JPEG bytes)",
    )
    p.add_argument(
        "--shuffle-seed",
        type=int,
        default=None,
        help="shuffle inputs with this seed so classes mix across shards",
    )
    p.add_argument(
        "--max-pixels",
        type=_positive,
        default=None,
        help="refuse images with more pixels than this, before decoding (2**26)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace shard output already in OUT")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_index(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "index",
        help="write DALI (wds2idx v1.2) indexes for existing tar shards",
        description="Write TAR's index next to it (shard.tar -> shard.idx), as DALI's wds2idx does.",
    )
    p.add_argument("tars", type=Path, nargs="+", help="tar files")


def _add_inspect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect",
        help="summarise a shard folder and check it (checksums, index vs tar, decodable samples)",
        description=(
            "Print the manifest of DATA (a shard folder or manifest.json) and the rejects count. "
            "With --verify, re-hash every shard and read every sample through its index."
        ),
    )
    p.add_argument("data", help="shard folder, manifest.json, or an s3:// gs:// https:// shard set")
    p.add_argument("--verify", action="store_true", help="check checksums and read every sample")
    _add_remote(p)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="build the demo corpus from packaged photographs, shard it and plan an epoch",
        description=(
            "Build an ImageNet-like corpus from photographs shipped by scikit-image, scikit-learn "
            "and matplotlib, plant a few bad files, shard it (listing the bad files as rejects), "
            "then plan one epoch for 2 ranks x 2 workers and read a batch back through the index."
        ),
    )
    p.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder (demo_out)")
    p.add_argument("--num-images", type=_positive, default=2000, help="corpus size (2000)")
    p.add_argument("--seed", type=int, default=0, help="corpus and plan seed (0)")
    p.add_argument("--shard-size", type=_positive, default=250, help="samples per shard (250)")
    p.add_argument("--workers", type=_positive, default=None, help="sharding processes (all cores)")
    p.add_argument("--no-bad-files", action="store_true", help="do not plant bad files")
    p.add_argument(
        "--pretrain-epochs", type=int, default=5, help="SimCLR epochs on the demo shards, 0 to skip (5)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="time the loader against a DataLoader+PIL baseline and the PIL decode floor",
        description=(
            "Time, in one run and each in its own process tree: the fastssl loader; a baseline "
            "written the way users write it (torch DataLoader workers, PIL decode, the recipe's "
            "transforms as PIL operations with PIL's Gaussian blur; torchvision's transforms when "
            "torchvision imports); and the decode floor (PIL full decode only, same number of "
            "processes). Prints images/s, ratios to baseline and floor, peak RSS and CPU use."
        ),
    )
    p.add_argument("data", help="shard folder or manifest.json")
    p.add_argument(
        "--recipe",
        default="simclr",
        help="simclr, mocov2, byol, multicrop, rotation, crop, jigsaw, jigsawpp, context, patchgrid (simclr)",
    )
    p.add_argument(
        "--backend", choices=("auto", "dali", "kornia"), default="auto", help="fastssl backend (auto)"
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda (cpu)")
    p.add_argument("--batch-size", type=_positive, default=64, help="images per batch (64)")
    p.add_argument("--batches", type=_positive, default=20, help="timed batches per contestant (20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed batches first (3)")
    _add_remote(p)
    p.add_argument("--workers", type=_positive, default=None, help="worker processes / threads (all cores)")
    p.add_argument(
        "--only",
        default="fastssl,baseline,floor",
        help="comma-separated contestants (fastssl,baseline,floor); also dali_native: the recipe's views "
        "as DALI's docs write them (fn.readers.webdataset with random_shuffle, decoders.image, "
        "random_resized_crop, color_twist, gaussian_blur under coin_flip conditionals, "
        "crop_mirror_normalize), same shards, threads and batch; and webdataset: "
        "WebDataset's README loader (shard shuffle, shuffle(1000), decode('pil'), WebLoader workers) "
        "with the baseline's transforms",
    )
    p.add_argument("--size", type=_positive, default=None, help="the recipe's view size in px (its own)")
    p.add_argument(
        "--profile",
        action="store_true",
        help="also print fastssl's stages in microseconds per sample: read, checks, labels, parameters, "
        "packing (in the feeder processes, with DALI), then on the thread running the graph (the training "
        "thread on a GPU, a run-ahead thread on the CPU) feed (waiting for a ready batch), decode + views, "
        "the views into torch, and the consumer's time in next(loader)",
    )
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument("--plot", type=Path, default=None, help="write a PNG bar chart here")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_perms(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "perms",
        help="choose a jigsaw permutation set of maximal Hamming distance and write it as .npy",
        description=(
            "Greedy maximal-Hamming-distance selection (Noroozi & Favaro 2016): exhaustive over "
            "all n! permutations up to 10 tiles, else over a seeded random pool. Writes a 0-based "
            "(count, tiles) int64 table; recipes and `load_permutations` also accept 1-based files."
        ),
    )
    p.add_argument("--tiles", type=_positive, default=9, help="tiles per image, 2..16 (9)")
    p.add_argument("--count", type=_positive, default=1000, help="permutations to choose (1000)")
    p.add_argument("--criterion", choices=("max_min", "max_avg"), default="max_min", help="(max_min)")
    p.add_argument(
        "--min-distance",
        type=_positive,
        default=None,
        help="every pair keeps at least this Hamming distance (fails or passes candidates over)",
    )
    p.add_argument("--seed", type=int, default=0, help="pool order, start and tie-breaks (0)")
    p.add_argument(
        "--candidates", type=_positive, default=None, help="random pool size (default: all up to 10 tiles)"
    )
    p.add_argument("--engine", choices=("numba", "numpy"), default="numba", help="numpy: the slow reference")
    p.add_argument("--out", type=Path, required=True, help="output .npy file")


def _add_pretrain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain",
        help="pretrain a backbone (contrastive, momentum, DINO, pretexts); torchrun for several ranks",
        description=(
            "Pretrain on DATA (a shard folder or manifest) and write RUN/: checkpoint.pt (atomic; "
            "--resume continues it exactly), config.json, metrics.jsonl, loss.png, and for the "
            "colorization, inpainting and super-resolution pretexts pictures/epoch-NNN.png (input | "
            "target | prediction). Under "
            "`torchrun --nproc-per-node N fastssl pretrain ...` each rank reads its share."
        ),
    )
    _training_arguments(p)


def _add_distill(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "distill",
        help="distil a teacher run into a student backbone (KD, FitNets, RKD, embedding)",
        description=(
            "Train --student on DATA from the frozen --teacher run's outputs on the same views in the "
            "same step (fastssl.train.methods.distill): kd (Hinton: T 4, alpha 0.9; the teacher needs "
            "class logits, a run of --method supervised), fitnets (a hint regressor, beta 100), rkd "
            "(distance 25, angle 50), embedding (the teacher's normalised embedding; no labels). Writes "
            "RUN/ as `fastssl pretrain` does, with the same options, DDP, checkpoints and --resume. "
            "The same student trained alone: `fastssl pretrain DATA --method supervised --backbone ...`."
        ),
    )
    _training_arguments(p)
    g = p.add_argument_group("distillation")
    g.add_argument("--teacher", type=Path, required=True, help="the teacher's run folder")
    g.add_argument("--student", default="small_cnn", help="the student's backbone (small_cnn)")
    g.add_argument("--kind", choices=("kd", "fitnets", "rkd", "embedding"), default="kd", help="(kd)")
    g.add_argument("--alpha", type=float, default=None, help="kd: the KL term's weight (0.9)")
    g.add_argument(
        "--hint", type=int, default=None, help="fitnets: the student stage whose output is the hint (2)"
    )


def _training_arguments(p: argparse.ArgumentParser) -> None:
    """The options `fastssl pretrain` and `fastssl distill` share."""
    p.add_argument("data", nargs="?", help="shard folder or manifest.json (or the --config run's)")
    p.add_argument("--out", type=Path, default=None, help="run folder (required unless --config gives it)")
    p.add_argument(
        "--config", type=Path, default=None,
        help="RUN/config.json of an earlier run: rerun it as it was; options given here override it "
        "(give --out for a new run folder)",
    )  # fmt: skip
    p.add_argument(
        "--method", default="simclr",
        help="simclr, mocov2, mocov3, byol, dino, rotnet, jigsaw, context, cpc, colorization, inpainting, "
        "superres, deepcluster, supervised (class labels: the shards' or --labels) (simclr)",
    )  # fmt: skip
    p.add_argument(
        "--method-option", dest="method_option", action="append", type=_key_value, default=[],
        metavar="KEY=VALUE", help="a method's constructor option (repeatable), e.g. momentum=0.99",
    )  # fmt: skip
    p.add_argument(
        "--recipe", default=None,
        help="the views: a registered recipe (simclr, mocov2, byol, multicrop, rotation, crop, jigsaw, "
        "context, patchgrid, colorization, inpainting, superres, ...); "
        "default the method's own. --size sets its view size (multicrop: the global crops, the local "
        "crops keep their fraction of it, 96/224); --recipe-option then sets any field by name",
    )  # fmt: skip
    p.add_argument(
        "--recipe-option", dest="recipe_option", action="append", type=_key_value, default=[],
        metavar="KEY=VALUE",
        help="a recipe field (repeatable); VALUE is a Python literal (6, 0.5, (0.05, 0.4)) or else a "
        "string; multicrop also takes global_size and local_size, e.g. --recipe-option n_local=6 "
        "--recipe-option local_size=96; applied after --size",
    )  # fmt: skip
    p.add_argument(
        "--backbone", default="resnet18",
        help="resnet18, resnet50, small_cnn, edsr (super-resolution's encoder), vit_tiny, vit_small, "
        "vit_base (resnet18)",
    )  # fmt: skip
    p.add_argument("--width", type=_positive, default=32, help="small_cnn and edsr width (32)")
    p.add_argument(
        "--patch-size", type=_positive, default=16,
        help="ViT patch size (16); the view sizes must be multiples of it, e.g. 4 for 28 px images",
    )  # fmt: skip
    p.add_argument("--epochs", type=_positive, default=1)
    p.add_argument("--batch-size", type=_positive, default=256, help="per rank (256)")
    p.add_argument("--size", type=_positive, default=224, help="view size (224)")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument(
        "--optimizer", choices=("sgd", "lars", "adamw"), default="sgd",
        help="sgd (momentum 0.9), lars, or adamw (no decay on biases and norms) (sgd)",
    )  # fmt: skip
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument(
        "--weight-decay-end", type=float, default=None,
        help="cosine schedule of the weight decay from --weight-decay to this (DINO's ViT: 0.04 -> 0.4)",
    )  # fmt: skip
    p.add_argument("--warmup-epochs", type=float, default=0.0)
    p.add_argument("--backend", choices=("auto", "dali", "kornia"), default="auto")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda (auto)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=_positive, default=None, help="loader threads / processes per rank")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto", help="auto: bf16 on GPU")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--checkpoint-every", type=int, default=0, help="steps between checkpoints (0: per epoch)")
    p.add_argument("--log-every", type=_positive, default=10, help="steps between metrics lines (10)")
    p.add_argument("--resume", action="store_true", help="continue RUN/checkpoint.pt")
    p.add_argument("--log-keys", action="store_true", help="write each step's sample keys (keys-rankR.jsonl)")
    p.add_argument("--max-steps", type=_positive, default=None, help="stop after this many steps")
    p.add_argument("--queue-size", type=_positive, default=None, help="mocov2 queue (65536)")
    p.add_argument("--temperature", type=float, default=None, help="contrastive temperature (method's)")
    p.add_argument(
        "--on-error",
        choices=("raise", "skip"),
        default="raise",
        help="bad sample: stop naming it (raise), or skip it and list it in RUN/metrics.jsonl (raise)",
    )
    p.add_argument("--verify-checksums", action="store_true", help="check each shard's sha256 on first use")
    p.add_argument(
        "--dist-timeout",
        type=_positive_float,
        default=1800.0,
        help="seconds a rank waits for a silent peer before failing (1800)",
    )
    p.add_argument("--allow-pipe", action="store_true", help="let DATA be a pipe: URL (runs a shell command)")
    p.add_argument(
        "--knn-every", type=int, default=0,
        help="epochs between kNN accuracy monitors on --knn-data, in metrics.jsonl and TensorBoard (0: none)",
    )  # fmt: skip
    p.add_argument("--knn-data", default=None, help="held-out labelled shards the kNN monitor probes")
    p.add_argument("--knn-test-data", default=None, help="its test set (20%% of --knn-data)")
    p.add_argument(
        "--monitor-linear", action="store_true", help="the monitor also reports linear-probe accuracy"
    )
    p.add_argument(
        "--labels", default=None,
        help="a label sidecar (fastssl pseudo-label writes one) read in place of the shards' .cls",
    )  # fmt: skip
    _add_remote(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="kNN / linear-probe accuracy of a run's backbone on labelled shards",
        description=(
            "Extract frozen features of RUN's backbone on --data (one centre view per image) and "
            "report weighted kNN (cosine, k=200, T=0.1) and/or linear-probe accuracy, trained on "
            "--data and tested on --test-data (default: a fixed 20%% of --data split by key)."
        ),
    )
    p.add_argument("run", type=Path, help="run folder of `fastssl pretrain`")
    p.add_argument("--data", required=True, help="labelled shard folder or manifest.json")
    p.add_argument("--test-data", default=None, help="labelled test shards (default: split --data)")
    p.add_argument("--probe", choices=("knn", "linear", "both"), default="both")
    p.add_argument("--size", type=_positive, default=None, help="view size (the run's)")
    p.add_argument("--random-init", action="store_true", help="also evaluate the same backbone untrained")
    p.add_argument("--device", default="cpu")
    p.add_argument("--backend", choices=("auto", "dali", "kornia"), default="auto")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    transfer = p.add_argument_group(
        "transfer protocols",
        "train through the loader on augmented views instead of probing cached features "
        "(fastssl.train.transfer; parameters from the papers' code, ../shared/METHODS.md)",
    )
    transfer.add_argument(
        "--protocol", choices=("probe", "linear-moco", "linear-simclr", "finetune"), default="probe",
        help="probe: kNN / linear on cached features (default); linear-moco, linear-simclr: a linear "
        "head on the frozen trunk as MoCo's / SimCLR's evaluation; finetune: trunk and head (SwAV's "
        "semi-supervised recipe)",
    )  # fmt: skip
    transfer.add_argument("--freeze", type=int, default=0, help="finetune: stages frozen from the input")
    transfer.add_argument(
        "--freeze-sweep", action="store_true", help="finetune with 0..all stages frozen: table and plot"
    )
    transfer.add_argument(
        "--labels-fraction", type=float, default=None,
        help="train on this balanced fraction of every class (0.01, 0.1), written as a subset file",
    )  # fmt: skip
    transfer.add_argument("--subset", type=Path, default=None, help="train on the keys of this subset file")
    transfer.add_argument("--epochs", type=_positive, default=None, help="shorten the protocol's epochs")
    transfer.add_argument("--batch-size", type=_positive, default=None, help="the protocol's is 256")
    transfer.add_argument("--scale", type=float, nargs=2, default=(0.08, 1.0), help="training crop areas")
    transfer.add_argument("--eval-every", type=_positive, default=1, help="test every N epochs")
    transfer.add_argument("--out", type=Path, default=None, help="folder for the JSON, plots and subsets")


def _add_pseudo_label(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pseudo-label",
        help="cluster a run's features into a label sidecar (knowledge transfer by clustering)",
        description=(
            "Extract RUN's backbone features of --data (one centre view per image), PCA-whiten them "
            "(256 dimensions), L2-normalise, k-means them into --clusters clusters (faiss when "
            "installed, else torch) and write each sample's cluster as a label sidecar to --out, "
            "for `fastssl pretrain DATA --method supervised --labels LABELS`."
        ),
    )
    p.add_argument("run", type=Path, help="run folder of `fastssl pretrain`")
    p.add_argument("--data", required=True, help="shard folder or manifest.json (labels not needed)")
    p.add_argument("--clusters", type=_positive, default=2000, help="k (2000, as Noroozi et al.)")
    p.add_argument("--out", type=Path, required=True, help="the label file to write")
    p.add_argument("--pca-dim", type=_positive, default=256, help="whitened dimensions (256)")
    p.add_argument("--niter", type=_positive, default=20, help="k-means iterations (20)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kmeans", choices=("auto", "faiss", "torch"), default="auto", help="implementation")
    p.add_argument("--device", default="cpu", help="where features are computed (and torch k-means runs)")
    p.add_argument("--workers", type=_positive, default=None, help="loader threads")


def _add_colour_prior(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "colour-prior",
        help="measure a shard set's ab colour distribution for colorization's class rebalancing",
        description=(
            "Count the nearest ab bin of every target pixel of the colourful images of SHARDS, as "
            "the colorization recipe crops them, smooth the counts over the ab plane (Gaussian, "
            "sigma 5) and save the (Q,) prior; train with `--method-option prior=PATH`."
        ),
    )
    p.add_argument("data", help="shard folder, manifest.json or remote URL")
    p.add_argument("--out", type=Path, required=True, help="the .npy file to write")
    p.add_argument("--size", type=_positive, default=176, help="crop side, as training's (176)")
    p.add_argument("--batch-size", type=_positive, default=64)
    p.add_argument("--sigma", type=_positive_float, default=5.0, help="smoothing in ab units (5)")
    p.add_argument("--device", default="auto")
    p.add_argument("--backend", choices=("auto", "dali", "kornia"), default="auto")


def _add_fashion_mnist(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fashion-mnist",
        help="write Fashion-MNIST (Debian's dataset-fashion-mnist) as labelled train/test shards",
        description="Write OUT/train and OUT/test shard folders from /usr/share/datasets/fashion-mnist.",
    )
    p.add_argument("out", type=Path, help="output folder")
    p.add_argument("--train-limit", type=_positive, default=None, help="first N training images (all)")
    p.add_argument("--test-limit", type=_positive, default=None, help="first N test images (all)")
    p.add_argument("--workers", type=_positive, default=None, help="sharding processes (all cores)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastssl",
        description="fastssl: a data engine for self-supervised image pretraining.",
    )
    parser.add_argument("--version", action="version", version=f"fastssl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_shards(sub)
    _add_index(sub)
    _add_inspect(sub)
    _add_demo(sub)
    _add_bench(sub)
    _add_perms(sub)
    _add_pretrain(sub)
    _add_distill(sub)
    _add_eval(sub)
    _add_pseudo_label(sub)
    _add_colour_prior(sub)
    _add_fashion_mnist(sub)
    return parser


def _byte_count(text: str) -> int:
    """`50G`, `512M`, `1.5T` or a plain number of bytes."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    number, unit = (text[:-1], text[-1].upper()) if text[-1:].upper() in units else (text, "")
    try:
        value = int(float(number) * units.get(unit, 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a byte count: {text} (say 50G, 512M or 1000000)") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _add_remote(p: argparse.ArgumentParser) -> None:
    """Options of shard sets in object storage (s3://, gs://, https:// DATA)."""
    g = p.add_argument_group("remote shard sets (s3://, gs://, https://)")
    g.add_argument("--cache-dir", type=Path, default=None, help="shard cache ($FASTSSL_CACHE)")
    g.add_argument("--cache-limit", type=_byte_count, default=None, help="cache bytes, e.g. 200G (unbounded)")
    g.add_argument(
        "--read-order", choices=("auto", "global", "block"), default="auto",
        help="block: whole shards per node bucket (remote default); global: one shuffle, range reads",
    )  # fmt: skip
    g.add_argument("--download-ahead", type=int, default=4, help="batches whose shards are fetched ahead (4)")


def _key_value(text: str) -> tuple[str, object]:
    """`KEY=VALUE` with VALUE a Python literal (numbers, tuples, booleans, quoted strings), or else
    the text itself (`dtype=uint8`)."""
    key, equals, value = text.partition("=")
    if not equals or not key.strip() or not key.strip().isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        parsed: object = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        parsed = value
    return key.strip(), parsed


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `fastssl` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from fastssl import commands  # imported late so that `--help` stays fast

    if args.command in ("pretrain", "distill") and args.config is not None:
        # the earlier run's settings become the defaults, so that what is given here overrides them
        try:
            defaults = commands.pretrain_defaults(args.config)
        except (OSError, ValueError) as err:
            parser.error(f"--config {args.config}: {err}")
        pretrain_parser = parser._subparsers._group_actions[0].choices[args.command]  # noqa: SLF001
        pretrain_parser.set_defaults(**defaults)
        args = parser.parse_args(argv)

    # SIGTERM (kill, a scheduler's timeout) unwinds like Ctrl-C, so that the shard in progress
    # is removed instead of being left behind as a temporary file.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    handler = {
        "shards": commands.run_shards,
        "index": commands.run_index,
        "inspect": commands.run_inspect,
        "demo": commands.run_demo,
        "bench": commands.run_bench,
        "perms": commands.run_perms,
        "pretrain": commands.run_pretrain,
        "distill": commands.run_distill,
        "eval": commands.run_eval,
        "pseudo-label": commands.run_pseudo_label,
        "colour-prior": commands.run_colour_prior,
        "fashion-mnist": commands.run_fashion_mnist,
    }[args.command]
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
