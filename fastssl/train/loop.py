"""The pretraining loop: one process, or one per rank under torchrun (gloo on CPU, nccl on GPU).

It wires SSLLoader, a method, an optimiser with warm-up and cosine decay, mixed precision on GPU,
metrics, atomic checkpoints and exact resumption (model, momentum encoders and queue, optimiser,
schedule, every rank's loader position, RNG states), and holds no method logic.
"""

from __future__ import annotations

import dataclasses
import datetime
import inspect
import json
import os
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from fastssl.data.plan import PlanState
from fastssl.loader import SSLLoader
from fastssl.recipes import Recipe, get_recipe
from fastssl.train.backbones import build_backbone
from fastssl.train.checkpoint import load_checkpoint, remove_stale_temporaries, save_checkpoint
from fastssl.train.distributed import world
from fastssl.train.methods import METHODS, Method
from fastssl.train.optim import build_optimizer, cosine_between, set_weight_decay, warmup_cosine

CHECKPOINT = "checkpoint.pt"


@dataclass
class PretrainConfig:
    """Everything a run is made of; saved in the checkpoint and in RUN/config.json."""

    data: str
    out: str
    method: str = "simclr"
    backbone: str = "resnet18"
    width: int = 32  # small_cnn only
    patch_size: int = 16  # ViT backbones only
    epochs: int = 1
    batch_size: int = 256  # per rank
    size: int = 224
    lr: float = 0.05
    optimizer: str = "sgd"
    weight_decay: float = 1e-4
    weight_decay_end: float | None = None  # cosine from weight_decay to this over the run (DINO)
    warmup_epochs: float = 0.0
    backend: str = "auto"
    device: str = "auto"
    seed: int = 0
    num_threads: int | None = None
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    channels_last: bool | None = None  # default: on CUDA
    compile: bool = False
    checkpoint_every: int = 0  # steps; 0: at the end of each epoch only
    log_every: int = 10
    resume: bool = False
    log_keys: bool = False
    max_steps: int | None = None
    progress: bool = True
    method_options: dict[str, Any] = field(default_factory=dict)
    recipe: str | None = None  # a registered recipe (fastssl.recipes.RECIPES); None: the method's own
    recipe_options: dict[str, Any] = field(default_factory=dict)  # changes to the recipe's fields
    on_error: str = "raise"  # or "skip": bad samples are counted and listed in metrics.jsonl
    verify_checksums: bool = False
    allow_pipe: bool = False  # let `data` be a pipe: URL (a shell command)
    cache_dir: str | None = None  # remote shard sets: where shards are cached
    cache_limit: int | None = None  # bytes
    read_order: str = "auto"  # block for remote shard sets, global for local ones
    download_ahead: int = 4
    dist_timeout: float = 1800.0  # seconds a collective waits for a silent rank before failing
    knn_every: int = 0  # epochs between kNN monitors on knn_data (0: none)
    knn_data: str | None = None  # held-out labelled shards the monitor probes
    knn_test_data: str | None = None  # its test set; None: a fixed 20% of knn_data by key
    monitor_linear: bool = False  # the monitor also trains the linear probe (evaluate's) each time
    labels: str | None = None  # a label sidecar read in place of the shards' .cls (fastssl.data.labels)


def build_run_backbone(config: PretrainConfig) -> tuple[nn.Module, int]:
    """The configured backbone at its initial weights for `config.seed` (what a run starts from,
    and the random-init baseline evaluation compares against)."""
    torch.manual_seed(config.seed)  # the same initial weights on every rank and on resume
    return build_backbone(
        config.backbone, width=config.width, patch_size=config.patch_size, image_size=config.size
    )


def with_derived_options(config: PretrainConfig) -> PretrainConfig:
    """`config` with the method options a method takes but was not given that the run itself
    decides: `num_classes` (supervised, distill) from the label sidecar, else the local shard
    set's classes, and `image_size` (distill's) from `size`. Saved so, a run's config rebuilds
    its method alone."""
    accepted = (
        inspect.signature(METHODS[config.method].__init__).parameters if config.method in METHODS else {}
    )
    options = dict(config.method_options)
    if "image_size" in accepted and "image_size" not in options:
        options["image_size"] = config.size
    if "num_classes" in accepted and "num_classes" not in options:
        classes = _class_count(config)
        if classes is not None:
            options["num_classes"] = classes
        elif accepted["num_classes"].default is inspect.Parameter.empty:
            raise ValueError(
                f"method {config.method!r} needs labels: shards with classes, a label sidecar (labels=, "
                "--labels), or the method option num_classes"
            )
    return dataclasses.replace(config, method_options=options) if options != config.method_options else config


def _class_count(config: PretrainConfig) -> int | None:
    """The run's number of classes: the label sidecar's, else the local shard set's, else None."""
    if config.labels is not None:
        from fastssl.data.labels import label_file_classes

        return label_file_classes(config.labels)
    from fastssl.data.store import is_remote
    from fastssl.loader import resolve_data

    names = (
        None if is_remote(config.data) else resolve_data(config.data, allow_pipe=config.allow_pipe).classes
    )
    return None if names is None else len(names)


def build_method(config: PretrainConfig) -> Method:
    """The configured method around the configured backbone."""
    if config.method not in METHODS:
        raise ValueError(f"unknown method {config.method!r}; known: {', '.join(METHODS)}")
    backbone, dim = build_run_backbone(config)
    accepted = inspect.signature(METHODS[config.method].__init__).parameters
    unknown = sorted(set(config.method_options) - set(accepted) - {"self", "backbone", "feature_dim"})
    if unknown:
        raise ValueError(f"method {config.method!r} takes no option {', '.join(unknown)}")
    return METHODS[config.method](backbone, dim, **config.method_options)


def build_recipe(method: Method, config: PretrainConfig) -> Recipe:
    """The run's views: `config.recipe` (a registry name) made at `config.size` px
    (`Recipe.resized`: multi-crop recipes size their global crops and scale the local ones), or
    the method's default recipe at that size; then `recipe_options` set fields by name (lists
    become tuples, as JSON keeps them). A ValueError when the method cannot train on the result."""
    if config.recipe is None:
        recipe = method.default_recipe(config.size)
    else:
        recipe = get_recipe(config.recipe).resized(config.size)
    if config.recipe_options:
        recipe = recipe.replace(**{k: _tuples(v) for k, v in config.recipe_options.items()})
    method.check_recipe(recipe)
    return recipe


def _tuples(value: Any) -> Any:
    """JSON's lists as the tuples recipes hold, nested ones too."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def _init_distributed(device: torch.device, timeout_s: float) -> None:
    """A process group under torchrun: nccl for CUDA devices, gloo for the CPU.

    `timeout_s` bounds every collective: a rank that stops answering (hung, or dead on another
    node where torchrun cannot kill its peers) makes the others fail after it instead of waiting
    for ever; a rank that dies on this node is noticed by torchrun, which stops the others."""
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and not dist.is_initialized():
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo", timeout=datetime.timedelta(seconds=timeout_s)
        )


def _device(name: str) -> torch.device:
    """The device of this rank: "auto" is CUDA when present; CUDA means this rank's local GPU."""
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    return device


# fields a resumed run must share with its checkpoint (the schedule and the stream depend on them)
# (the batch as the global batch: a run resumes on another number of ranks, each taking its share)
_RESUME_FIXED = ("method", "backbone", "width", "epochs", "size", "lr", "optimizer", "seed")


class _StepSync:
    """What the ranks agree on at each step boundary, in one all-reduce when there are several:
    whether to stop (Ctrl-C, SIGTERM) and whether any rank skipped bad samples, whose entries are
    then gathered for rank 0's metrics file.

    SIGINT and SIGTERM (a scheduler's preemption, torchrun stopping its workers) ask to stop at the
    next step boundary, where every rank agrees to save a checkpoint of the last completed step,
    rather than unwinding from the middle of a step."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StepSync:
        if threading.current_thread() is threading.main_thread():
            for number in (signal.SIGINT, signal.SIGTERM):
                self._previous[number] = signal.signal(number, self._ask)
        return self

    def _ask(self, signum: int, frame: object) -> None:
        self.signal = self.signal or signum

    def exchange(self, device: torch.device, skipped: list[dict[str, Any]]) -> tuple[int | None, list]:
        """(the signal any rank was sent, or None; every rank's new skip entries)."""
        if world()[1] == 1:
            return self.signal, skipped
        flags = torch.tensor([float(self.signal or 0), float(len(skipped))], device=device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        everyone: list[Any] = []
        if flags[1] > 0:
            gathered: list[Any] = [None] * world()[1]
            dist.all_gather_object(gathered, skipped)
            everyone = [entry for rank_entries in gathered for entry in rank_entries]
        return (int(flags[0]) or None), everyone

    def __exit__(self, *exc: object) -> None:
        for number, previous in self._previous.items():
            if previous is not None:
                signal.signal(number, previous)


def _rng_state() -> dict[str, Any]:
    """Every generator's state in types `torch.load(weights_only=True)` accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = (torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached))
    state = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state(("MT19937", keys.cpu().numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class _Metrics:
    """RUN/metrics.jsonl (one object per logged step) and TensorBoard when it imports; rank 0."""

    def __init__(self, out: Path, enabled: bool) -> None:
        self.enabled = enabled
        self.path = out / "metrics.jsonl"
        self.board = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.board = SummaryWriter(str(out / "tensorboard"))
            except Exception:  # noqa: BLE001 - tensorboard is optional
                self.board = None

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.board is not None and "loss" in record:
            for name in ("loss", "lr", "images_per_s", "loader_wait"):
                self.board.add_scalar(name, record[name], record["step"])
        if self.board is not None and record.get("event") == "knn":
            for name in ("knn", "linear"):
                if name in record:
                    self.board.add_scalar(name, record[name], record["step"])

    def close(self) -> None:
        if self.board is not None:
            self.board.close()


def _plot_loss(out: Path) -> Path | None:
    """RUN/loss.png from metrics.jsonl (matplotlib, when it imports)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    path = out / "metrics.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []
    records = [r for r in records if "loss" in r]  # not the skipped-sample entries
    if not records:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["step"] for r in records], [r["loss"] for r in records])
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(f"{records[0].get('method', '')} pretraining loss")
    fig.tight_layout()
    fig.savefig(out / "loss.png", dpi=100)
    plt.close(fig)
    return out / "loss.png"


def _save_pictures(
    method: Method, batch: dict[str, Any], out: Path, epoch: int, autocast: Any
) -> Path | None:
    """RUN/pictures/epoch-NNN.png: what the method makes of the epoch's last batch (input | target
    | prediction, one sample a row), for the methods whose outputs are pictures."""
    from fastssl.train.dense import save_grid

    was_training = method.training
    method.eval()
    try:
        with torch.no_grad(), autocast:
            columns = method.pictures(batch)
    finally:
        method.train(was_training)
    if columns is None:
        return None
    return save_grid(columns, out / "pictures" / f"epoch-{epoch:03d}.png")


def _clear_stale_temporaries(checkpoint: Path) -> None:
    """Remove a killed writer's temporary checkpoints and say so on stderr, as they are the run's own."""
    removed, kept = remove_stale_temporaries(checkpoint)
    for path in removed:
        print(f"fastssl: removed {path}, a temporary checkpoint whose writer was killed", file=sys.stderr)
    for note in kept:
        print(f"fastssl: kept {note}", file=sys.stderr)


def _resumed_batch(state: dict[str, Any], world_size: int, asked: int, report: bool) -> int:
    """This rank's batch on resume: the checkpoint's global batch over `world_size` ranks (the
    stream continues only with the same global batch), with a clear error when it does not divide."""
    saved_world = len(state["loaders"])
    global_batch = PlanState.from_dict(state["loaders"][0]["plan"]).global_batch  # any version
    if global_batch % world_size:
        raise ValueError(
            f"cannot resume on {world_size} ranks: the checkpoint's global batch of {global_batch} "
            f"({saved_world} ranks) does not divide by {world_size}; use a number of ranks that divides it"
        )
    batch = global_batch // world_size
    if report and (batch != asked or saved_world != world_size):
        print(
            f"fastssl: resuming a {saved_world}-rank run on {world_size} ranks: each takes {batch} of the "
            f"global batch of {global_batch}" + (f" (not --batch-size {asked})" if batch != asked else ""),
            file=sys.stderr,
        )
    return batch


def _knn_monitor(method: Method, config: PretrainConfig, device: torch.device) -> dict[str, Any]:
    """The monitor of `knn_every`: weighted kNN accuracy of the backbone as it is now on the
    held-out labelled set (centre views, the probe input the method trains its backbone on), and
    with `monitor_linear` the linear probe's; `seconds` is what it took (not pretraining time)."""
    from fastssl.train.evaluate import evaluate

    was_training = method.training
    started = time.perf_counter()
    try:
        result = evaluate(
            method.backbone, config.knn_data, size=config.size, test_data=config.knn_test_data,
            probes=("knn", "linear") if config.monitor_linear else ("knn",), device=device,
            backend=config.backend, input=method.probe_input,
        )  # fmt: skip
    finally:
        method.train(was_training)
    record = {
        "knn": result["knn"],
        "knn_train_samples": result["train_samples"],
        "knn_test_samples": result["test_samples"],
    }
    if config.monitor_linear:
        record["linear"] = result["linear"]
    return {**record, "seconds": round(time.perf_counter() - started, 2)}


def _recluster(
    method: Method, config: PretrainConfig, keys: list[str], device: torch.device, epoch: int
) -> tuple[np.ndarray, dict[str, Any] | None]:
    """DeepCluster's clustering before `epoch`: rank 0 extracts and clusters (the others wait in
    the broadcast of its assignments, one int64 per sample); its facts are rank 0's only."""
    from fastssl.train.deepcluster import cluster_epoch

    rank, size = world()
    facts = None
    if rank == 0:
        started = time.perf_counter()
        assignments, facts = cluster_epoch(
            method.backbone, config.data, keys, clusters=method.clusters, size=config.size, seed=config.seed,
            epoch=epoch, pca_dim=method.pca_dim, niter=method.niter, backend=method.kmeans, device=device,
            num_threads=config.num_threads, input=method.probe_input, loader_backend=config.backend,
        )  # fmt: skip
        facts["seconds"] = round(time.perf_counter() - started, 2)
    else:
        assignments = np.empty(len(keys), dtype=np.int64)
    if size > 1:
        shared = torch.from_numpy(assignments).to(device)
        dist.broadcast(shared, src=0)
        assignments = shared.cpu().numpy()
    return assignments, facts


def _use_clusters(
    method: Method, optimizer: torch.optim.Optimizer, loader: SSLLoader, assignments: np.ndarray,
    seed: int, epoch: int, *, fresh: bool,
) -> dict[str, int]:  # fmt: skip
    """The loader reads the epoch's draw uniform over the clusters, labelled by them; with `fresh`
    the classifier and its optimiser state start anew (DeepCluster's new top layer per epoch).
    Returns the draw's coverage (samples drawn twice, not at all)."""
    from fastssl.train.deepcluster import draw_coverage, uniform_draw

    if fresh:
        method.reset_classifier(seed=seed, epoch=epoch)
        for parameter in method.classifier.parameters():
            optimizer.state.pop(parameter, None)
    draw = uniform_draw(assignments, seed, epoch)
    loader.set_draw(draw, labels=assignments, num_classes=method.clusters)
    return draw_coverage(draw, assignments)


def pretrain(config: PretrainConfig) -> dict[str, Any]:
    """Run (or resume) a pretraining run; returns a summary (steps, last loss, rates, paths)."""
    if config.knn_every < 0:
        raise ValueError(f"knn_every must be 0 or more, got {config.knn_every}")
    if config.knn_every and config.knn_data is None:
        raise ValueError("knn_every needs knn_data: held-out labelled shards to probe")
    device = _device(config.device)
    _init_distributed(device, config.dist_timeout)
    rank, size = world()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    if rank == 0:  # the one writer of checkpoints clears what a killed writer left
        _clear_stale_temporaries(out / CHECKPOINT)
    config = with_derived_options(config)
    method = build_method(config)
    recipe = build_recipe(method, config)
    checkpoint_path = out / CHECKPOINT
    state = None
    batch_size = config.batch_size
    if config.resume and checkpoint_path.exists():
        state = load_checkpoint(checkpoint_path)  # on the CPU: RNG states must stay there
        batch_size = _resumed_batch(state, size, config.batch_size, rank == 0)
    loader = SSLLoader(
        config.data,
        recipe,
        batch_size,
        backend=config.backend,
        device=device,
        seed=config.seed,
        num_threads=config.num_threads,
        on_error=config.on_error,
        verify_checksums=config.verify_checksums,
        allow_pipe=config.allow_pipe,
        cache_dir=config.cache_dir,
        cache_limit=config.cache_limit,
        read_order=config.read_order,
        download_ahead=config.download_ahead,
        labels=config.labels,
    )
    cuda = device.type == "cuda"
    channels_last = cuda if config.channels_last is None else config.channels_last
    method.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    model: nn.Module = method
    if size > 1:  # a queue is identical on every rank already: no 32 MiB broadcast per step
        model = nn.parallel.DistributedDataParallel(method, broadcast_buffers=not hasattr(method, "queue"))
    if config.compile:
        model = torch.compile(model)
    optimizer = build_optimizer(method, config.optimizer, config.lr, config.weight_decay)
    steps_per_epoch = len(loader)
    total = config.epochs * steps_per_epoch
    warmup = int(config.warmup_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, total, warmup))
    step = 0
    reclusters = getattr(method, "reclusters", False)
    keys = loader.sample_keys() if reclusters else []
    clusters: dict[str, Any] | None = None  # the current epoch's assignments (DeepCluster)
    if state is not None:
        saved = state["config"]
        differ = [
            f"{k} {saved[k]!r} -> {getattr(config, k)!r}"
            for k in _RESUME_FIXED
            if saved[k] != getattr(config, k)
        ]
        if differ:
            raise ValueError(f"--resume with a different setup than {checkpoint_path}: " + ", ".join(differ))
        method.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if reclusters and state.get("clusters") is not None:  # the saved epoch's labels and draw
            clusters = state["clusters"]
            _use_clusters(
                method, optimizer, loader, clusters["assignments"].numpy(), config.seed, clusters["epoch"],
                fresh=False,
            )  # fmt: skip
        # every rank's loader state holds the same global position; on another world size the
        # ranks beyond the saved ones take a saved rank's generators (model numerics may differ)
        loader.load_state_dict(state["loaders"][rank % len(state["loaders"])])
        _set_rng_state(state["rng"][rank % len(state["rng"])])
        step = state["step"]
        if rank == 0 and (out / "metrics.jsonl").exists():  # drop records of steps about to be redone
            lines = (out / "metrics.jsonl").read_text().splitlines()
            kept = [line for line in lines if line and json.loads(line)["step"] <= step]
            (out / "metrics.jsonl").write_text("".join(line + "\n" for line in kept))
    elif rank == 0:
        (out / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2) + "\n")
        (out / "metrics.jsonl").unlink(missing_ok=True)
    precision = config.precision if config.precision != "auto" else ("bf16" if cuda else "fp32")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    metrics = _Metrics(out, rank == 0)
    keys_file = open(out / f"keys-rank{rank}.jsonl", "a") if config.log_keys else None  # noqa: SIM115
    bar = None
    if config.progress and rank == 0:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=step, unit="step", desc=config.method)

    def save() -> None:
        loaders = [None] * size
        rngs = [None] * size
        if size > 1:
            dist.all_gather_object(loaders, loader.state_dict())
            dist.all_gather_object(rngs, _rng_state())
        else:
            loaders, rngs = [loader.state_dict()], [_rng_state()]
        if rank == 0:
            state = {
                "model": method.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "loaders": loaders,
                "rng": rngs,
                "step": step,
                "config": dataclasses.asdict(config),
            }
            if clusters is not None:
                state["clusters"] = clusters
            save_checkpoint(checkpoint_path, state)

    images = waited = 0.0
    window_start = last = time.perf_counter()
    loss_value = float("nan")
    loss_sum = torch.zeros((), device=device)  # read back only at logging steps: no sync per step
    window_steps = 0
    stop = False
    skipped_total = reported = 0
    sync = _StepSync()
    try:
        sync.__enter__()
        while loader.epoch < config.epochs and not stop:
            epoch = loader.epoch
            if reclusters and (clusters is None or epoch - clusters["epoch"] >= method.reassign):
                assignments, facts = _recluster(method, config, keys, device, epoch)
                coverage = _use_clusters(
                    method, optimizer, loader, assignments, config.seed, epoch, fresh=True
                )
                clusters = {"epoch": epoch, "assignments": torch.from_numpy(assignments)}
                if rank == 0:
                    metrics.log(
                        {"event": "clusters", "epoch": epoch, "step": step, **(facts or {}), **coverage}
                    )
            model.train()
            method.on_epoch(epoch, config.epochs)
            batch_seen = None  # the epoch's last batch, for the pictures a pretext draws of it
            for batch in loader:
                batch_seen = batch
                now = time.perf_counter()
                waited += now - last
                with autocast:
                    loss = model(batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                method.adjust_gradients(epoch)
                if config.weight_decay_end is not None:
                    decay = cosine_between(config.weight_decay, config.weight_decay_end, step, total)
                    set_weight_decay(optimizer, decay)
                optimizer.step()
                scheduler.step()
                method.on_step(step, total)
                step += 1
                loss_sum += loss.detach().float()
                window_steps += 1
                images += len(batch["key"]) * size
                if keys_file is not None:
                    keys_file.write(json.dumps({"step": step, "epoch": epoch, "keys": batch["key"]}) + "\n")
                    keys_file.flush()
                last = time.perf_counter()
                last_step = step == total or (config.max_steps is not None and step >= config.max_steps)
                if step % config.log_every == 0 or last_step:
                    loss_value = float(loss_sum) / window_steps
                    loss_sum.zero_()
                    window_steps = 0
                    span = last - window_start
                    metrics.log(
                        {
                            "method": config.method,
                            "epoch": epoch,
                            "step": step,
                            "loss": loss_value,
                            "lr": scheduler.get_last_lr()[0],
                            "images_per_s": images / span,
                            "loader_wait": waited / span,
                        }
                    )
                    images = waited = 0.0
                    window_start = last
                if bar is not None:
                    bar.update()
                    if window_steps == 0:
                        bar.set_postfix(loss=f"{loss_value:.3f}")
                signum, skipped = sync.exchange(device, loader.skipped[reported:])
                reported = len(loader.skipped)
                for entry in skipped:  # rank 0 lists every rank's skipped samples
                    metrics.log({"event": "skipped", "step": step, **entry})
                skipped_total += len(skipped)
                if signum is not None:
                    save()  # a valid checkpoint of the last completed step, on every rank
                    if signum == signal.SIGINT:
                        raise KeyboardInterrupt
                    raise SystemExit(128 + signum)
                if config.checkpoint_every and step % config.checkpoint_every == 0:
                    save()
                if config.max_steps is not None and step >= config.max_steps:
                    save()
                    stop = True
                    break
            if rank == 0 and batch_seen is not None:
                _save_pictures(method, batch_seen, out, epoch, autocast)
            if config.knn_every and not stop and (epoch + 1) % config.knn_every == 0:
                if rank == 0:
                    metrics.log(
                        {"event": "knn", "epoch": epoch, "step": step, **_knn_monitor(method, config, device)}
                    )
                if size > 1:  # the other ranks wait for rank 0's probe before the next epoch
                    dist.barrier()
            if not stop:
                save()  # the end of an epoch
    finally:
        sync.__exit__()
        if bar is not None:
            bar.close()
        if keys_file is not None:
            keys_file.close()
        metrics.close()
        loader.close()
    plot = _plot_loss(out) if rank == 0 else None
    return {
        "steps": step,
        "loss": loss_value,
        "checkpoint": str(checkpoint_path),
        "loss_plot": str(plot) if plot else None,
        "recipe": recipe.name,
        "skipped": skipped_total,
    }
