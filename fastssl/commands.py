"""Bodies of the `fastssl` subcommands: call the library, print what happened, pick the exit status."""

from __future__ import annotations

import argparse
import io
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from fastssl.errors import DataError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _err(message: str) -> None:
    print(f"fastssl: error: {message}", file=sys.stderr)


def run_shards(args: argparse.Namespace) -> int:
    from fastssl.data.images import DEFAULT_MAX_PIXELS
    from fastssl.data.writer import OutputError, write_shards

    try:
        report = write_shards(
            args.src,
            args.out,
            shard_size=args.shard_size,
            workers=args.workers,
            max_side=args.max_side,
            quality=args.quality,
            shuffle_seed=args.shuffle_seed,
            max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS,
            overwrite=args.overwrite,
            progress=not args.quiet,
        )
    except (OutputError, NotADirectoryError, ValueError) as err:  # raised before any work
        _err(str(err))
        return EXIT_USAGE
    except OSError as err:  # disk full, I/O error: no manifest was written
        _err(f"shard run stopped: {err}")
        return EXIT_FAILED
    print(report.summary())
    if report.written == 0:
        _err(f"nothing was written: all {report.inputs} inputs were rejected or there were none")
        return EXIT_FAILED
    return EXIT_OK


def run_index(args: argparse.Namespace) -> int:
    from fastssl.data.index import build_index, write_index
    from fastssl.data.sums import member_sums, sums_path, write_sums

    status = EXIT_OK
    for tar in args.tars:
        target = tar.with_suffix(".idx")
        try:
            index = build_index(tar)
        except DataError as err:
            _err(str(err))
            status = EXIT_FAILED
            continue
        write_index(index, target)
        write_sums(member_sums(tar, index), index.exts, sums_path(target))  # for range reads
        print(f"{target}: {len(index)} samples, members {', '.join(index.exts) or 'none'}")
    return status


def _verify(manifest) -> list[str]:
    """Re-hash each shard, and check, read and decode every sample; find keys repeated across
    shards (which the loader, reading shard by shard, cannot see); returns the problems found."""
    from PIL import Image

    from fastssl.data.header import check_image, parse_label
    from fastssl.data.images import DEFAULT_MAX_PIXELS
    from fastssl.data.manifest import sha256_file
    from fastssl.data.source import ByteSource

    problems: list[str] = []
    first_shard: dict[str, str] = {}  # key -> the shard it was first seen in
    with ByteSource(manifest) as source:
        for i, info in enumerate(manifest.shards):
            try:
                if sha256_file(manifest.shard_path(i)) != info.sha256:
                    problems.append(f"{info.path}: checksum does not match the manifest")
                index = source.index(i)
            except (OSError, DataError) as err:
                problems.append(f"{info.path}: {err}")
                continue
            for key in dict.fromkeys(index.keys):  # repeats within a shard are reported by the reads
                if first_shard.setdefault(key, info.path) != info.path:
                    problems.append(
                        f"key {key!r} is in shard {first_shard[key]!r} and again in {info.path!r}"
                    )
            for sample in range(len(index)):
                try:  # the loader's own checks (same verdicts), then a full decode
                    got = source.read(i, sample)
                    check_image(
                        got.members["jpg"], max_pixels=DEFAULT_MAX_PIXELS, shard=got.shard, key=got.key
                    )
                    if "cls" in got.members:
                        parse_label(got.members["cls"], shard=got.shard, key=got.key)
                    with Image.open(io.BytesIO(got.members["jpg"])) as image:
                        image.load()
                except DataError as err:
                    problems.append(str(err))
                except Exception as err:  # noqa: BLE001 (any decode failure is a finding)
                    problems.append(f"{info.path} key {index.keys[sample]!r}: cannot decode: {err}")
    return problems


def run_inspect(args: argparse.Namespace) -> int:
    from fastssl.data.manifest import Manifest
    from fastssl.data.remote import default_cache_dir
    from fastssl.data.store import RemoteShards, is_remote

    remote = None
    try:
        if is_remote(args.data):
            cache = args.cache_dir or default_cache_dir()
            remote = RemoteShards(args.data, cache, cache_limit=args.cache_limit)
            manifest = remote.open()
        else:
            manifest = Manifest.load(args.data)
    except DataError as err:
        _err(str(err))
        return EXIT_USAGE
    if remote is not None:
        print(f"remote    {remote.shown} (manifest and indexes copied to {manifest.root})")
        if args.verify:
            _err("--verify reads local shards; a remote set's shards are checked as they download")
            return EXIT_USAGE
    sizes = manifest.shard_sizes
    print(f"manifest  {manifest.root / 'manifest.json'}")
    print(
        f"samples   {manifest.num_samples} in {len(manifest.shards)} shards "
        f"({sizes.min() if len(sizes) else 0}-{sizes.max() if len(sizes) else 0} per shard), "
        f"{sum(s.bytes for s in manifest.shards) / 1e6:.1f} MB"
    )
    classes = manifest.classes
    print(
        f"classes   {len(classes)}: {', '.join(classes[:8])}{' ...' if len(classes) > 8 else ''}"
        if classes is not None
        else "classes   none (unlabelled)"
    )
    rejects = manifest.root / "rejects.jsonl"
    if rejects.exists():
        kinds = Counter(json.loads(line)["kind"] for line in rejects.read_text().splitlines() if line)
        detail = ", ".join(f"{k} {n}" for k, n in sorted(kinds.items()))
        print(f"rejects   {sum(kinds.values())}" + (f" ({detail})" if detail else ""))
    if not args.verify:
        return EXIT_OK
    problems = _verify(manifest)
    for problem in problems:
        print(f"  problem: {problem}")
    print(
        f"verify    {'OK' if not problems else f'{len(problems)} problems'}: checksums, index vs "
        "tar, every image decodes"
    )
    return EXIT_OK if not problems else EXIT_FAILED


def run_demo(args: argparse.Namespace) -> int:
    from fastssl.demo import run_demo as demo

    return demo(
        args.out,
        num_images=args.num_images,
        seed=args.seed,
        shard_size=args.shard_size,
        workers=args.workers,
        plant_bad=not args.no_bad_files,
        progress=not args.quiet,
        pretrain_epochs=args.pretrain_epochs,
    )


def run_bench(args: argparse.Namespace) -> int:
    """`fastssl bench`: run the contestants, print the table, write JSON and the plot."""
    import os

    from fastssl.bench.harness import CONTESTANTS, format_table, plot, run_bench
    from fastssl.recipes import get_recipe

    contestants = [c.strip() for c in args.only.split(",") if c.strip()]
    unknown = sorted(set(contestants) - set(CONTESTANTS))
    if unknown or not contestants:
        _err(f"--only takes {', '.join(CONTESTANTS)}; got {args.only!r}")
        return 2
    try:
        recipe = get_recipe(args.recipe)
        if args.size:
            recipe = recipe.replace(size=args.size)
    except (ValueError, TypeError) as err:
        _err(str(err))
        return 2
    if "dali_native" in contestants:
        from fastssl.bench.dali_native import supports

        if not supports(recipe):
            _err(
                "the dali_native contestant times whole-image random-resized-crop recipes, "
                f"not {args.recipe!r}"
            )
            return 2
    if "webdataset" in contestants:
        from fastssl.bench.webdataset_pipeline import supports as webdataset_supports

        if not webdataset_supports(recipe):
            _err(f"the webdataset contestant times whole-image recipes, not {args.recipe!r}")
            return 2
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    config = {
        "data": str(args.data),
        "recipe": args.recipe,
        "backend": args.backend,
        "device": args.device,
        "batch_size": args.batch_size,
        "batches": args.batches,
        "warmup": max(0, args.warmup),
        "workers": args.workers or cores,
        "progress": not args.quiet,
        "size": args.size,
        "profile": args.profile,
        "cache_dir": str(args.cache_dir) if args.cache_dir else None,
        "cache_limit": args.cache_limit,
    }
    try:
        report = run_bench(config, contestants)
    except (RuntimeError, DataError) as err:
        _err(str(err))
        return 1
    print(format_table(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    if args.plot:
        plot(report, args.plot)
        print(f"wrote {args.plot}")
    return 0


def run_perms(args: argparse.Namespace) -> int:
    """`fastssl perms`: choose a permutation set, report its distances and time, write it."""
    import time

    from fastssl.kernels.permutations import describe, permutation_set, save_permutations

    start = time.perf_counter()
    try:
        perms = permutation_set(
            args.tiles,
            args.count,
            args.criterion,
            min_distance=args.min_distance,
            seed=args.seed,
            candidates=args.candidates,
            engine=args.engine,
        )
    except ValueError as err:
        _err(str(err))
        return EXIT_USAGE
    elapsed = time.perf_counter() - start
    found = describe(perms)
    try:
        path = save_permutations(args.out, perms)
    except OSError as err:
        _err(f"cannot write {args.out}: {err}")
        return EXIT_FAILED
    print(
        f"{len(perms)} permutations of {args.tiles} tiles ({args.criterion}, seed {args.seed}, "
        f"{args.engine}) in {elapsed:.2f} s: minimum Hamming distance {found.min_distance}, "
        f"mean {found.mean_distance:.3f}"
    )
    print(f"wrote {path} (0-based)")
    return EXIT_OK


# PretrainConfig fields whose `fastssl pretrain` option has another name, or another meaning
_CLI_NAMES = {"num_threads": "workers"}


def pretrain_defaults(path: Path) -> dict[str, Any]:
    """The `fastssl pretrain` defaults that rerun the run `path` (its RUN/config.json) describes,
    by argument name; fields without an option of their own ride along in `config_rest`."""
    import dataclasses

    from fastssl.train import PretrainConfig

    saved = json.loads(Path(path).read_text())
    if not isinstance(saved, dict):
        raise ValueError("not a run's config.json (expected a JSON object)")
    known = {f.name for f in dataclasses.fields(PretrainConfig)}
    unknown = sorted(set(saved) - known)
    if unknown:
        raise ValueError(f"fields no run has: {', '.join(unknown)}")
    defaults: dict[str, Any] = {"config_rest": {}}
    for name, value in saved.items():
        if name == "progress":
            defaults["quiet"] = not value
        elif name in ("method_options", "recipe_options"):
            defaults[f"saved_{name}"] = dict(value)
        elif name in ("channels_last",):
            defaults["config_rest"][name] = value
        else:
            defaults[_CLI_NAMES.get(name, name)] = value
    return defaults


def run_distill(args: argparse.Namespace) -> int:
    """`fastssl distill`: `fastssl pretrain` with the distill method around the student backbone."""
    args.method, args.backbone = "distill", args.student
    given = {"teacher": str(args.teacher), "kind": args.kind, "alpha": args.alpha, "hint": args.hint}
    args.method_option = [*((k, v) for k, v in given.items() if v is not None), *args.method_option]
    return run_pretrain(args)


def run_pretrain(args: argparse.Namespace) -> int:
    """`fastssl pretrain`: build the config from the arguments (over `--config`'s run) and run it."""
    from fastssl.train import PretrainConfig, pretrain

    if args.data is None or args.out is None:
        _err("pretrain needs DATA and --out (or --config RUN/config.json of a run that has them)")
        return EXIT_USAGE
    options = dict(getattr(args, "saved_method_options", {}))
    options.update(args.method_option)
    if args.queue_size is not None:
        options["queue_size"] = args.queue_size
    if args.temperature is not None:
        options["temperature"] = args.temperature
    recipe_options = dict(getattr(args, "saved_recipe_options", {}))
    recipe_options.update(args.recipe_option)
    config = PretrainConfig(
        data=str(args.data),
        out=str(args.out),
        method=args.method,
        backbone=args.backbone,
        width=args.width,
        patch_size=args.patch_size,
        epochs=args.epochs,
        batch_size=args.batch_size,
        size=args.size,
        lr=args.lr,
        optimizer=args.optimizer,
        weight_decay=args.weight_decay,
        weight_decay_end=args.weight_decay_end,
        warmup_epochs=args.warmup_epochs,
        backend=args.backend,
        device=args.device,
        seed=args.seed,
        num_threads=args.workers,
        precision=args.precision,
        compile=args.compile,
        checkpoint_every=args.checkpoint_every,
        log_every=args.log_every,
        resume=args.resume,
        log_keys=args.log_keys,
        max_steps=args.max_steps,
        progress=not args.quiet,
        method_options=options,
        recipe=args.recipe,
        recipe_options=recipe_options,
        on_error=args.on_error,
        verify_checksums=args.verify_checksums,
        dist_timeout=args.dist_timeout,
        allow_pipe=args.allow_pipe,
        cache_dir=str(args.cache_dir) if args.cache_dir else None,
        cache_limit=args.cache_limit,
        read_order=args.read_order,
        download_ahead=args.download_ahead,
        knn_every=args.knn_every,
        knn_data=args.knn_data,
        knn_test_data=args.knn_test_data,
        monitor_linear=args.monitor_linear,
        labels=args.labels,
        **getattr(args, "config_rest", {}),
    )
    try:
        summary = pretrain(config)
    except (ValueError, DataError) as err:
        _err(str(err))
        return EXIT_USAGE if isinstance(err, ValueError) else EXIT_FAILED
    print(
        f"{config.method}: {summary['steps']} steps, last loss {summary['loss']:.4f}; "
        f"checkpoint {summary['checkpoint']}"
        + (f", loss curve {summary['loss_plot']}" if summary["loss_plot"] else "")
        + (
            f"; skipped {summary['skipped']} bad samples (listed in {config.out}/metrics.jsonl)"
            if summary["skipped"]
            else ""
        )
    )
    return EXIT_OK


def _run_transfer(
    args: argparse.Namespace, trained: Any, untrained: Any, config: dict, size: int, probe_input: str
) -> int:
    """`fastssl eval --protocol ...`: a transfer protocol on the run's backbone (and the same
    backbone untrained), or the layer-freezing sweep; JSON and plots under --out."""
    import copy

    from fastssl.train.evaluate import write_json
    from fastssl.train.transfer import make_split, plot_history, plot_sweep, stages, sweep_table, transfer

    protocol = "finetune" if args.protocol == "probe" else args.protocol
    if args.labels_fraction is not None and not 0 < args.labels_fraction <= 1:
        _err(f"--labels-fraction must lie in (0, 1], got {args.labels_fraction}")
        return EXIT_USAGE
    try:
        split = make_split(
            args.data, args.test_data, labels_fraction=args.labels_fraction, subset=args.subset,
            seed=config.get("seed", 0), out=args.out,
        )  # fmt: skip
    except (ValueError, FileNotFoundError) as err:
        _err(str(err))
        return EXIT_USAGE
    common = dict(
        protocol=protocol, size=size, epochs=args.epochs, batch_size=args.batch_size, scale=tuple(args.scale),
        device=args.device, backend=args.backend, input=probe_input, eval_every=args.eval_every,
    )  # fmt: skip
    inits = {"pretrained": trained, **({"random init": untrained} if untrained is not None else {})}
    result: dict[str, Any] = {
        "run": str(args.run), "method": config["method"], "backbone": config["backbone"],
        "protocol": protocol, "labels_fraction": args.labels_fraction,
        "subset": str(args.subset) if args.subset else None,
    }  # fmt: skip
    out = args.out
    title = f"{config['method']} {config['backbone']}"
    if args.freeze_sweep:
        if protocol != "finetune":
            _err("--freeze-sweep fine-tunes: use it with --protocol finetune")
            return EXIT_USAGE
        rows = []
        for frozen in range(len(stages(trained)) + 1):
            for init, backbone in inits.items():
                got = transfer(copy.deepcopy(backbone), split, freeze=frozen, **common)
                rows.append({"freeze": frozen, "init": init, "accuracy": got["accuracy"]})
                print(f"{frozen} stage(s) frozen, {init:<11} test top-1 {got['accuracy']:.4f}")
        result["sweep"] = rows
        if out is not None:
            (out / "freeze-sweep.md").parent.mkdir(parents=True, exist_ok=True)
            (out / "freeze-sweep.md").write_text(sweep_table(rows))
            plot_sweep(rows, out / "freeze-sweep.png", f"{title}: layers frozen")
    else:
        try:
            runs = {init: transfer(b, split, freeze=args.freeze, **common) for init, b in inits.items()}
        except ValueError as err:
            _err(str(err))
            return EXIT_USAGE
        result.update(runs)
        for init, got in runs.items():
            samples = f"{got['train_samples']} train samples"
            print(f"{init:<11} {protocol} test top-1 {got['accuracy']:.4f} ({samples})")
        if out is not None:
            plot_history(runs, out / f"{protocol}.png", f"{title}: {protocol}")
    for path in [args.json, out / f"{protocol}.json" if out is not None else None]:
        if path is not None:
            write_json(path, result)
            print(f"wrote {path}")
    return EXIT_OK


def run_eval(args: argparse.Namespace) -> int:
    """`fastssl eval`: probe a run's backbone (and, on request, the same backbone untrained)."""
    from fastssl.train import PretrainConfig, build_run_backbone, evaluate, load_backbone
    from fastssl.train.evaluate import write_json
    from fastssl.train.methods import METHODS

    try:
        backbone, config = load_backbone(args.run)
    except FileNotFoundError as err:
        _err(f"{args.run}: no checkpoint ({err})")
        return EXIT_USAGE
    probes = ("knn", "linear") if args.probe == "both" else (args.probe,)
    size = args.size or config["size"]
    probe_input = METHODS[config["method"]].probe_input  # colorization's backbone sees lightness
    if args.protocol != "probe" or args.freeze_sweep or args.labels_fraction or args.subset:
        untrained = None
        if args.random_init or args.freeze_sweep:
            untrained = build_run_backbone(PretrainConfig(**config))[0]
        return _run_transfer(args, backbone, untrained, config, size, probe_input)
    common = dict(
        size=size, test_data=args.test_data, probes=probes, device=args.device, backend=args.backend,
        input=probe_input,
    )  # fmt: skip
    result = {
        "run": str(args.run), "method": config["method"], "backbone": config["backbone"], "input": probe_input
    }  # fmt: skip
    result["trained"] = evaluate(backbone, args.data, **common)
    if args.random_init:
        untrained, _ = build_run_backbone(PretrainConfig(**config))
        result["random_init"] = evaluate(untrained, args.data, **common)
    for name in ("trained", "random_init"):
        if name in result:
            scores = ", ".join(f"{p} {result[name][p]:.4f}" for p in probes)
            counts = f"{result[name]['train_samples']} train / {result[name]['test_samples']} test"
            print(f"{name:<12} {scores}  ({counts})")
    if args.json:
        write_json(args.json, result)
        print(f"wrote {args.json}")
    return EXIT_OK


def run_pseudo_label(args: argparse.Namespace) -> int:
    """`fastssl pseudo-label`: a run's clustered features of a shard set as a label sidecar."""
    from fastssl.train.pseudo_label import pseudo_label

    try:
        facts = pseudo_label(
            args.run, args.data, args.out, clusters=args.clusters, pca_dim=args.pca_dim, niter=args.niter,
            seed=args.seed, backend=args.kmeans, device=args.device, num_threads=args.workers,
        )  # fmt: skip
    except (ValueError, FileNotFoundError, ImportError, DataError) as err:
        _err(str(err))
        return EXIT_FAILED
    sizes = facts["sizes"]
    print(
        f"{facts['samples']} samples in {facts['clusters']} clusters ({facts['backend']} k-means, "
        f"{facts['niter']} iterations on {facts['pca_dim']} whitened dimensions, {facts['seconds']:.1f} s): "
        f"sizes {sizes['min']}-{sizes['max']} (median {sizes['median']:g}), {facts['resplits']} empty "
        f"clusters re-split, {facts['empty']} left empty"
        + (f"; NMI with the shards' labels {facts['nmi']:.3f}" if "nmi" in facts else "")
    )
    print(
        f"wrote {facts['out']}; train on it: fastssl pretrain {args.data} --method supervised "
        f"--labels {facts['out']}"
    )
    return EXIT_OK


def run_colour_prior(args: argparse.Namespace) -> int:
    """`fastssl colour-prior`: a shard set's smoothed ab distribution, for colorization."""
    from fastssl.pipelines.lab import ab_bins
    from fastssl.recipes import Colorization
    from fastssl.train.colour_prior import colour_prior, write_prior

    try:
        recipe = Colorization().resized(args.size)
        prior, seen = colour_prior(
            args.data, recipe=recipe, batch_size=args.batch_size, device=args.device,
            backend=args.backend, sigma=args.sigma,
        )  # fmt: skip
    except (ValueError, FileNotFoundError) as err:
        _err(str(err))
        return EXIT_FAILED
    write_prior(prior, args.out)
    top = prior.argsort()[::-1][:3]
    common = ", ".join(f"ab {tuple(int(v) for v in ab_bins()[i])}: {prior[i]:.3f}" for i in top)
    print(
        f"{seen['colourful']} of {seen['images']} images colourful, {seen['pixels']} pixels over "
        f"{len(prior)} bins; most common {common}"
    )
    print(f"wrote {args.out}")
    return EXIT_OK


def run_fashion_mnist(args: argparse.Namespace) -> int:
    """`fastssl fashion-mnist`: the Debian package's IDX files to labelled shards."""
    from fastssl.data.fashion_mnist import write_fashion_mnist

    limit = {k: v for k, v in (("train", args.train_limit), ("test", args.test_limit)) if v}
    try:
        written = write_fashion_mnist(args.out, limit=limit, workers=args.workers, progress=True)
    except FileNotFoundError as err:
        _err(str(err))
        return EXIT_FAILED
    for split, path in written.items():
        print(f"{split}: {path}")
    return EXIT_OK
