"""`robustlab train`: train a model with a method; writes a run directory.

Under `torchrun --nproc-per-node N -m robustlab train …` the ranks train together (data-parallel,
see docs/distributed.md); rank 0 writes the run directory and prints.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from robustlab.cli import add_device
from robustlab.errors import UserError
from robustlab.io import atomic_write_text, create_dir, remove_created
from robustlab.tasks.train import TrainSpec


def register(sub: argparse._SubParsersAction) -> None:
    from robustlab import models

    p = sub.add_parser("train", help="train a model", description="Train a classifier with a "
                       "training method and write a run directory (model.safetensors, model.json, "
                       "metrics.jsonl). An interrupted run continues with --resume. Models: "
                       f"{', '.join(models.names())}.")
    per_method = TrainSpec.add_options(p)  # the spec's fields, then every method's fields
    add_device(p)
    p.add_argument("--out", default=None, help="run directory (default: runs/DATA-MODEL-METHOD-sSEED)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run, _method_options=per_method)


# Options that may differ on --resume: --epochs extends a run; the rest do not change its weights.
RESUME_SAFE = {"epochs", "resume", "quiet", "device", "out", "data_dir"}
# option names recorded in config.yaml by earlier versions → today's
RENAMED = {"norm": "norm_layer", "step_size": "lr_step"}


def run(args: argparse.Namespace) -> int:
    from robustlab import checkpoint, distributed, runs

    # Validate everything before anything is written.
    if args.out is not None and not args.out.strip():
        raise UserError("--out '' is empty; give a run directory (or leave --out out for the "
                        "default runs/DATA-MODEL-METHOD-sSEED)")
    spec = TrainSpec.from_args(args, args._method_options)
    method, config, quant = spec.check()
    from robustlab import data as data_mod

    data_mod.check_data_dir(args.data_dir)  # a missing folder is an error, not a fall back
    arch = Path(args.init).name if args.init else args.model
    out = Path(args.out or f"runs/{Path(args.data).stem}-{arch}-{args.method}-s{args.seed}")
    runs.claim(out)  # a second writer of `out` exits 2 naming this one; removes stale temp files
    fresh_start = False  # --resume of a run interrupted before its first epoch finished
    if args.resume:
        fresh_start = _check_resume(out, args)
    elif (out / checkpoint.META).exists():
        raise UserError(f"{out} already holds a run; use --resume to continue it or another --out")
    owns_group = not distributed.is_initialized()
    device = distributed.init(args.device)  # joins the process group under torchrun
    data = runs.load_data(spec.data_spec())
    if len(data[0]) == 0:
        raise UserError(f"--data {args.data}: the training set is empty")
    model = spec.make_model(data[0])
    if args.resume and args.init is None and (out / checkpoint.META).is_file():
        _check_resume_meta(out, model, method, config, spec.data_spec(), quant)
    if args.resume and not fresh_start:  # a corrupt resume point is refused before any write
        import torch

        from robustlab.train.trainer import load_resume_point, make_optimizer

        load_resume_point(out, model, make_optimizer(model, config), torch.device("cpu"), args.epochs)

    distributed.barrier()  # every rank has checked `out` before rank 0 writes to it
    main = distributed.is_main()
    created = create_dir(out) if main else None
    try:
        if main:
            _write_config(out, args)
        if fresh_start and main:
            print(f"{out}: no epoch had finished; training it from the start")
        spec.run(out, data=data, model=model, resume=args.resume and not fresh_start,
                 device=device, progress=False if args.quiet else None)
    except UserError:
        # remove only what this invocation created and that holds no finished epoch
        if main and not checkpoint.has_state(out):
            remove_created(out, created)
        raise
    finally:
        if owns_group:
            distributed.destroy()
    if main:
        print(f"run written to {out}")
    return 0


def _recorded_options(out: Path) -> dict | None:
    """The options `robustlab train` recorded in OUT/config.yaml (None: not written by train)."""
    import yaml

    path = out / "config.yaml"
    if not path.is_file():
        return None
    try:
        rec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as e:
        raise UserError(f"--resume: {path} is unreadable ({str(e).splitlines()[0]})") from None
    if not isinstance(rec, dict) or rec.get("command") != "train" or "method" not in rec:
        return None  # written by a preset (demo/reproduce): model.json is compared instead
    return {RENAMED.get(k, k): v for k, v in rec.items()}


def _flag(key: str) -> str:
    return "--" + RENAMED.get(key, key).replace("_", "-")


def _differences(recorded: dict, now: dict) -> list[str]:
    return [f"{_flag(k)} {now.get(k)!r} (recorded {recorded.get(k)!r})"
            for k in sorted(set(recorded) | set(now))
            if k not in RESUME_SAFE and not k.startswith("_") and k != "func"
            and recorded.get(k) != now.get(k)]


def _check_resume(out: Path, args: argparse.Namespace) -> bool:
    """Refuse --resume when there is nothing to resume or the options differ from the recorded
    ones; True when the run never finished an epoch (it is then trained from the start)."""
    from robustlab import checkpoint

    rec = _recorded_options(out)
    if rec is not None:
        now = {k: v for k, v in vars(args).items() if not k.startswith("_") and k != "func"}
        diff = _differences(rec, now)
        if diff:
            raise UserError(f"--resume: options differ from the ones {out} was started with: "
                            f"{'; '.join(diff)}; only --epochs (to extend), --device, --data-dir "
                            f"and --quiet may change")
    if checkpoint.has_state(out):  # the state itself is validated when fit loads it
        _check_epochs_left(out, args.epochs)
        return False
    if rec is not None and not (out / checkpoint.META).exists():
        return True  # interrupted during its first epoch: only config.yaml was written
    raise UserError(f"--resume: {out} holds no interrupted run to continue")


def _check_epochs_left(out: Path, epochs: int) -> None:
    from robustlab import checkpoint

    info = checkpoint.read_state_info(out)
    done = info.get("epoch") if isinstance(info, dict) else None
    if isinstance(done, int) and not isinstance(done, bool) and done == epochs:
        raise UserError(f"--resume: {out} already completed its {done} epochs; pass a larger "
                        f"--epochs to train it further")


def _check_resume_meta(out: Path, model, method, config, spec: dict,
                       quant) -> None:
    """Compare what determines the weights with the run's model.json (preset runs, or a missing
    config.yaml): architecture, data, method, training settings other than epochs, quantization."""
    from robustlab import checkpoint

    meta = checkpoint.read_meta(out)
    if not isinstance(meta, dict):
        raise UserError(f"--resume: {out / checkpoint.META} is not a JSON object")
    diff = []
    rec_kwargs = meta.get("kwargs") if isinstance(meta.get("kwargs"), dict) else {}
    spec_now = model.robustlab_spec
    if meta.get("architecture") != spec_now["name"]:
        diff.append(f"--model {spec_now['name']!r} (recorded {meta.get('architecture')!r})")
    for k, v in spec_now["kwargs"].items():
        if k not in ("in_shape", "num_classes") and rec_kwargs.get(k, v) != v:
            diff.append(f"{_flag(k)} {v!r} (recorded {rec_kwargs.get(k)!r})")
    rec_data = meta.get("data") if isinstance(meta.get("data"), dict) else {}
    for k, flag in (("name", "--data"), ("subset", "--subset"), ("val_fraction", "--val-fraction")):
        if rec_data.get(k) != spec.get(k):
            diff.append(f"{flag} {spec.get(k)!r} (recorded {rec_data.get(k)!r})")
    rec_cfg = meta.get("train_config") if isinstance(meta.get("train_config"), dict) else {}
    for k, v in config.to_dict().items():
        if k != "epochs" and k in rec_cfg and rec_cfg[k] != v:
            diff.append(f"{_flag(k)} {v!r} (recorded {rec_cfg[k]!r})")
    rec_method = meta.get("method") if isinstance(meta.get("method"), dict) else {}
    for k, v in method.config().items():
        if rec_method.get(k) != v:
            diff.append(f"{'--method' if k == 'name' else _flag(k)} {v!r} "
                        f"(recorded {rec_method.get(k)!r})")
    q_now = quant.to_dict() if quant is not None else None
    if q_now is not None and meta.get("quant") != q_now:
        diff.append(f"--quant {q_now!r} (recorded {meta.get('quant')!r})")
    if diff:
        raise UserError(f"--resume: options differ from the ones {out} was trained with: "
                        f"{'; '.join(diff)}; only --epochs (to extend), --device, --data-dir and "
                        f"--quiet may change")


def _write_config(out: Path, args: argparse.Namespace) -> None:
    """OUT/config.yaml: the options of the run. A resumed run keeps its recorded options; only
    an extended --epochs is updated."""
    import yaml

    now = {k: v for k, v in vars(args).items() if not k.startswith("_") and k != "func"}
    rec = _recorded_options(out) if args.resume else None
    if rec is None:
        atomic_write_text(out / "config.yaml", _yaml(now))
    elif rec.get("epochs") != args.epochs:
        atomic_write_text(out / "config.yaml", yaml.safe_dump({**rec, "epochs": args.epochs},
                                                              sort_keys=True))


def _yaml(options: dict) -> str:
    import yaml

    keep = {k: v for k, v in options.items() if not k.startswith("_") and k != "func"}
    return yaml.safe_dump(keep, sort_keys=True)
