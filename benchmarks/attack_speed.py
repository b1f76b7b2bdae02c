"""PGD-L∞ speed: robustlab against torchattacks, Foolbox and ART (same model, same settings).

Every library runs L∞ PGD with a random start, --steps iterations of step 2.5·ε/steps and one
restart on the first --n-test Fashion-MNIST test images (digits upsampled to 28×28 when
Fashion-MNIST is not installed), in batches of --batch-size. Reported per library: seconds per
batch, wall and process CPU time (median of --repeats timed runs after one warm-up; the libraries
run interleaved, one run each per repeat), images per second, and the robust
error (a fidelity check: all should be close). robustlab runs three ways: `robustlab-plain`
(fp32, contiguous, no early exit: the reference), `robustlab` (its default fp32 path:
channels_last where it helps and the verdict-preserving early exit of misclassified examples)
and `robustlab-bf16` (the same with bf16 gradients; verdicts and stop tests in fp32); the robustlab
rows say whether their per-example verdicts are identical to `robustlab-plain`'s. A library
that is not installed is skipped with a note. Writes benchmarks/results/attack_speed.json.

    python benchmarks/attack_speed.py --device cuda              # the real benchmark
    python benchmarks/attack_speed.py --n-test 64 --epochs 0     # a tiny CPU smoke run

Install the others with `.venv/bin/pip install -e '.[bench]'` and
`.venv/bin/pip install --no-deps torchattacks`.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from robustlab import data
from robustlab.attacks import pgd
from robustlab.device import resolve_device
from robustlab.io import atomic_write_json, versions
from robustlab.tasks.train import TrainSpec

Runner = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _robustlab(model, eps: float, alpha: float, steps: int, **kw) -> Runner:
    g = torch.Generator().manual_seed(0)

    def run(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return pgd(model, x, y, norm="linf", eps=eps, steps=steps, step_size=alpha, init="cube",
                   generator=g, **kw).x_adv

    return run


def robustlab_plain_runner(model, eps: float, alpha: float, steps: int, a) -> Runner:
    """Unaccelerated: fp32, contiguous memory, no early exit (the reference verdicts)."""
    return _robustlab(model, eps, alpha, steps, channels_last=False)


def robustlab_runner(model, eps: float, alpha: float, steps: int, a) -> Runner:
    """robustlab's default fp32 path: channels_last where it helps (auto) and the
    verdict-preserving early exit (an example stops once misclassified: `early_stop=0`)."""
    return _robustlab(model, eps, alpha, steps, early_stop=a.early_stop)


def robustlab_bf16_runner(model, eps: float, alpha: float, steps: int, a) -> Runner:
    """The default path with bf16 gradients (every verdict and stop test on fp32 logits)."""
    return _robustlab(model, eps, alpha, steps, early_stop=a.early_stop, bf16=True)


def torchattacks_runner(model, eps: float, alpha: float, steps: int, a) -> Runner:
    import torchattacks

    atk = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=True)
    return lambda x, y: atk(x, y)


def foolbox_runner(model, eps: float, alpha: float, steps: int, a) -> Runner:
    import foolbox as fb

    fmodel = fb.PyTorchModel(model, bounds=(0, 1))
    atk = fb.attacks.LinfPGD(abs_stepsize=alpha, steps=steps, random_start=True)

    def run(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        _, clipped, _ = atk(fmodel, x, y, epsilons=eps)
        return clipped

    return run


def art_runner(model, eps: float, alpha: float, steps: int, a) -> Runner:
    from art.attacks.evasion import ProjectedGradientDescentPyTorch
    from art.estimators.classification import PyTorchClassifier

    shape = tuple(a._shape)
    clf = PyTorchClassifier(model=model, loss=torch.nn.CrossEntropyLoss(), input_shape=shape,
                            nb_classes=a._classes, clip_values=(0.0, 1.0),
                            device_type="gpu" if a._device.type == "cuda" else "cpu")
    atk = ProjectedGradientDescentPyTorch(clf, norm=np.inf, eps=eps, eps_step=alpha,
                                          max_iter=steps, num_random_init=1,
                                          batch_size=a.batch_size, verbose=False)

    def run(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        adv = atk.generate(x.cpu().numpy(), y=y.cpu().numpy())
        return torch.from_numpy(adv).to(x.device)

    return run


LIBRARIES: dict[str, tuple[str, Callable[..., Runner]]] = {
    "robustlab-plain": ("robustlab", robustlab_plain_runner),
    "robustlab": ("robustlab", robustlab_runner),
    "robustlab-bf16": ("robustlab", robustlab_bf16_runner),
    "torchattacks": ("torchattacks", torchattacks_runner),
    "foolbox": ("foolbox", foolbox_runner),
    "art": ("art", art_runner),
}


def installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--model", default="convnet")
    ap.add_argument("--epochs", type=int, default=3, help="quick training before attacking "
                    "(0: random weights)")
    ap.add_argument("--subset", type=int, default=10000, help="training images for that")
    ap.add_argument("--n-test", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=250)
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--libraries", default=",".join(LIBRARIES))
    ap.add_argument("--early-stop", type=float, default=0.0,
                    help="robustlab, robustlab-bf16: stop attacking an example once it is "
                         "misclassified with wrong-class confidence ≥ this (0: once misclassified, "
                         "which keeps every RErr verdict)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    ap.add_argument("--out", default="benchmarks/results/attack_speed.json")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    device = resolve_device(a.device)
    try:
        train, test = data.load("fashion-mnist")
    except Exception as e:  # noqa: BLE001 — any missing-data error: fall back
        print(f"Fashion-MNIST not available ({e}); using digits upsampled to 28×28")
        train, test = data.digits(size=28)
    train = train.subset(slice(0, a.subset))
    spec = TrainSpec(model=a.model, epochs=max(a.epochs, 1), lr=0.05, batch_size=128, seed=a.seed)
    model = spec.make_model(train)
    if a.epochs > 0:
        spec.run(None, data=(train, None, None), model=model, device=device, progress=False)
    model = model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    a._shape, a._classes, a._device = test.shape, test.num_classes, device
    x_all = test.x[:a.n_test].to(device)
    y_all = test.y[:a.n_test].to(device)
    alpha = 2.5 * a.eps / a.steps
    with torch.no_grad():
        clean_err = float((model(x_all).argmax(1) != y_all).float().mean())
    batches = [(x_all[i:i + a.batch_size], y_all[i:i + a.batch_size])
               for i in range(0, a.n_test, a.batch_size)]
    rows, runs = [], {}
    for name in a.libraries.split(","):
        module, make = LIBRARIES[name]
        if not installed(module):
            print(f"{name}: not installed, skipped")
            rows.append({"library": name, "skipped": "not installed"})
            continue
        try:
            runs[name] = make(model, a.eps, alpha, a.steps, a)
        except Exception as e:  # noqa: BLE001 — report any library set-up failure and go on
            print(f"{name}: could not be set up ({type(e).__name__}: {e}), skipped")
            rows.append({"library": name, "skipped": f"{type(e).__name__}: {e}"})
            continue
        runs[name](*batches[0])  # warm-up
    # Interleaved: every repeat runs each library once (order rotated per repeat), so that a
    # change of machine load hits all libraries alike. Wall time and process CPU time (the latter
    # is what a shared, loaded CPU does not inflate) per batch.
    names = list(runs)
    wall: dict[str, list[float]] = {k: [] for k in names}
    cpu: dict[str, list[float]] = {k: [] for k in names}
    advs_first: dict[str, list[torch.Tensor]] = {}
    for r in range(a.repeats):
        for name in names[r % len(names):] + names[:r % len(names)] if names else []:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0, c0 = time.perf_counter(), time.process_time()
            advs = [runs[name](x, y) for x, y in batches]
            if device.type == "cuda":
                torch.cuda.synchronize()
            wall[name].append((time.perf_counter() - t0) / len(batches))
            cpu[name].append((time.process_time() - c0) / len(batches))
            advs_first.setdefault(name, advs)
    for name in names:
        wrong, verdicts = 0, []
        with torch.no_grad():
            for (x, y), adv in zip(batches, advs_first[name]):
                assert (adv - x).abs().max() <= a.eps + 1e-5, name
                v = (model(adv).argmax(1) != y) | (model(x).argmax(1) != y)
                wrong += int(v.sum())
                verdicts.append(v.cpu())
        sec, csec = statistics.median(wall[name]), statistics.median(cpu[name])
        verdict = torch.cat(verdicts)
        ref = next((r for r in rows if r["library"] == "robustlab-plain" and "verdicts" in r), None)
        same = (None if ref is None or not name.startswith("robustlab")
                else bool(torch.equal(verdict, torch.tensor(ref["verdicts"]))))
        rows.append({"library": name, "sec_per_batch": sec, "cpu_sec_per_batch": csec,
                     "images_per_sec": a.batch_size / sec, "rerr": wrong / a.n_test,
                     "verdicts": verdict.tolist(), "identical_verdicts_to_plain": same})
        print(f"{name:<15} {1000 * sec:9.1f} ms/batch  {1000 * csec:9.1f} CPU ms/batch  "
              f"{a.batch_size / sec:9.1f} img/s  RErr {100 * wrong / a.n_test:5.1f}%"
              + ("" if same is None else f"  verdicts identical to robustlab-plain: {same}"))
    base = next((r for r in rows if r["library"] == "robustlab" and "sec_per_batch" in r), None)
    if base:
        for r in rows:
            if "sec_per_batch" in r:
                r["relative_to_robustlab"] = r["sec_per_batch"] / base["sec_per_batch"]
        peers = [r for r in rows if "sec_per_batch" in r and not r["library"].startswith("robustlab")]
        if peers:
            for key, what in (("sec_per_batch", "wall"), ("cpu_sec_per_batch", "CPU")):
                fastest = min(peers, key=lambda r: r[key])
                print(f"robustlab default fp32 is {fastest[key] / base[key]:.2f}× as fast as the "
                      f"fastest peer ({fastest['library']}) in {what} time")
    bf = next((r for r in rows if r["library"] == "robustlab-bf16" and "rerr" in r), None)
    if base and bf:
        print(f"bf16 RErr − fp32 RErr: {100 * (bf['rerr'] - base['rerr']):+.1f} points")
    out = {"benchmark": "attack_speed", "device": str(device), "model": a.model,
           "clean_err": clean_err, "config": {k: v for k, v in vars(a).items()
                                              if not k.startswith("_")},
           "alpha": alpha, "rows": rows, "versions": versions()}
    atomic_write_json(a.out, out)
    print(f"clean Err {100 * clean_err:.1f}%; written to {a.out}")


if __name__ == "__main__":
    main()
