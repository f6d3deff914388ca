"""One command for a GPU check: ``python -m minibn.gpucheck --out DIR``.

Run from the repository root on a machine with a GPU and ``minibn[gpu]``. Within about
eight minutes (each part runs in its own process under its own time budget, killed when
it overruns) it:

1. ``tests``: runs the CuPy halves of the test suite (``pytest -m cupy``) on the real CuPy;
2. ``dln_compare``: runs the DLN study's smoke preset on NumPy and on CuPy and compares every
   noise-free run's loss curve (float64: relative difference <= 1e-9 at every step, or the
   first step where they part is reported); the noisy runs differ by design (a GPU draws
   its own noise, docs/layers/noisy.md);
3. ``dln_paper``: times the DLN paper preset's runs on CuPy, as many as fit (steps/s of
   each, the whole preset's estimate);
4. ``vgg_step``: times the VGG-16 training step (batch 128, float32) on CuPy, and on
   PyTorch+CUDA in the same run when torch with CUDA is installed;
5. ``vgg_e1``: runs the VGG ``paper`` preset's E1 on CuPy for as many steps as its budget
   allows (CIFAR-10 must be in ``--data-dir`` or minibn's cache; skipped otherwise).

It writes ``DIR/gpucheck.json`` and ``DIR/gpucheck.md`` and exits 1 if a part failed (a
skipped part is not a failure). ``--quick`` sizes everything for a test on the CuPy
stand-in (``python -m tests.fakecupy -m minibn.gpucheck --out DIR --quick``): a 1/8-width
VGG-16 at batch 16, a few DLN steps.
"""

import argparse
import os
import subprocess
import sys
import time

from minibn import backend, io

#: Seconds per part: 440 in all, leaving a minute of the eight for starting processes and CuPy's
#: first kernel compilations (each part compiles what it uses on a fresh machine).
BUDGETS = {"tests": 150, "dln_compare": 50, "dln_paper": 70, "vgg_step": 60, "vgg_e1": 110}
PARTS = tuple(BUDGETS)
AGREEMENT = 1e-9
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _on_stand_in():
    cupy = sys.modules.get("cupy")
    return cupy is not None and "fakecupy" in (getattr(cupy, "__file__", "") or "")


def _python_m(module):
    """How to start ``python -m module`` with the same CuPy as this process (the stand-in's launcher on it)."""
    return [sys.executable, "-m", "tests.fakecupy", "-m", module] if _on_stand_in() else [sys.executable, "-m", module]


# --- the parts (each runs in a child process, returns a JSON-able dict) ----------------------

def part_tests(budget, quick, data_dir, work):
    if not os.path.isdir(os.path.join(ROOT, "tests")):
        return {"status": "skipped", "note": "no tests/ folder next to minibn/ (run from a checkout)"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "cupy", "-p", "no:cacheprovider"]
    if _on_stand_in():
        cmd.append("--fake-cupy")
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=budget)
    summary = (done.stdout.strip().splitlines() or [""])[-1]
    return {"status": "passed" if done.returncode == 0 else "failed", "note": summary,
            "tail": done.stdout[-2000:] if done.returncode else ""}


def _relative_difference(a, b):
    """Per step |a - b| / max(|a|, |b|) of two loss curves (None stays None)."""
    out = []
    for x, y in zip(a, b):
        if x is None or y is None:
            out.append(0.0 if x is y else float("inf"))
        else:
            out.append(abs(x - y) / max(abs(x), abs(y), 1e-300))
    return out


def part_dln_compare(budget, quick, data_dir, work):
    from minibn.studies import dln

    options = {"preset": "smoke", "report": False, "steps": 10 if quick else None}
    cpu = dln.run(out=os.path.join(work, "dln_numpy"), backend="numpy", **options)
    gpu = dln.run(out=os.path.join(work, "dln_cupy"), backend="cupy", **options)
    runs, worst, parted = {}, 0.0, []
    for name, run in gpu["runs"].items():
        if run["variant"] in ("noisy", "standard_noisy"):
            runs[name] = "noise drawn on the device: differs by design"
            continue
        diff = _relative_difference(cpu["runs"][name]["loss"], run["loss"])
        worst = max(worst, max(diff))
        first = next((cpu["runs"][name]["steps"][i] for i, d in enumerate(diff) if d > AGREEMENT), None)
        runs[name] = {"max_rel_diff": max(diff), "first_step_apart": first}
        if first is not None:
            parted.append(f"{name} from step {first}")
    return {"status": "failed" if parted else "passed", "max_rel_diff": worst, "runs": runs,
            "note": f"noise-free runs agree within {AGREEMENT:g} (max {worst:.1e})" if not parted
            else "parted: " + ", ".join(parted)}


def part_dln_paper(budget, quick, data_dir, work):
    from minibn.studies import dln

    cfg = dln.PRESETS["paper"]
    probe_steps = 20 if quick else 300
    deadline = time.perf_counter() + 0.7 * budget
    timed = {}
    for variant, lr in cfg["runs"]:
        if time.perf_counter() > deadline:
            break
        out = dln.run(out=os.path.join(work, f"dln_paper_{variant}_{lr:g}"), preset="paper", variants=[variant], lr=[lr],
                      steps=probe_steps, backend="cupy", report=False)
        run = next(iter(out["runs"].values()))
        timed[f"{variant}_lr{lr:g}"] = probe_steps / run["wall_s"]
    if not timed:
        return {"status": "failed", "note": "no run fitted the budget"}
    mean_rate = sum(timed.values()) / len(timed)
    estimate = sum(cfg["steps"] / timed.get(f"{v}_lr{lr:g}", mean_rate) for v, lr in cfg["runs"])
    return {"status": "passed", "steps_per_s": timed, "probe_steps": probe_steps, "runs_timed": len(timed),
            "runs_in_preset": len(cfg["runs"]), "preset_estimate_s": estimate,
            "note": f"{len(timed)}/{len(cfg['runs'])} runs timed over {probe_steps} steps (instruments included, "
                    f"so an upper estimate): {sum(timed.values()) / len(timed):.0f} steps/s on average; "
                    f"the whole preset ~{estimate / 60:.0f} min at --jobs 1"}


def _vgg_step_images_per_s(xp, width, batch, repeats=5):
    from minibn import models, nn
    from minibn.optim import SGD

    rng = backend.rng(0)
    model = models.vgg("vgg16", norm="batchnorm", width=width, rng=0).to(backend.name_of(xp))
    x = xp.asarray(rng.standard_normal((batch, 32, 32, 3), dtype="float32"))
    labels = xp.asarray(rng.integers(0, 10, size=batch))
    opt = SGD(model, 0.01)
    times = []
    for i in range(2 + repeats):
        backend.synchronize(xp)
        start = time.perf_counter()
        model.value_and_grad(nn.softmax_cross_entropy, x, labels)
        opt.step()
        backend.synchronize(xp)
        if i >= 2:
            times.append(time.perf_counter() - start)
    times.sort()
    return batch / times[len(times) // 2], times[len(times) // 2]


def _torch_vgg_step_images_per_s(batch, repeats=5):
    import torch

    layers, channels = [], 3
    for entry in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"):
        if entry == "M":
            layers.append(torch.nn.MaxPool2d(2, 2))
        else:
            layers += [torch.nn.Conv2d(channels, entry, 3, padding=1), torch.nn.BatchNorm2d(entry), torch.nn.ReLU()]
            channels = entry
    model = torch.nn.Sequential(*layers, torch.nn.Flatten(), torch.nn.Linear(512, 10)).cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, labels = torch.randn(batch, 3, 32, 32, device="cuda"), torch.randint(0, 10, (batch,), device="cuda")
    times = []
    for i in range(2 + repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), labels).backward()
        opt.step()
        torch.cuda.synchronize()
        if i >= 2:
            times.append(time.perf_counter() - start)
    times.sort()
    return batch / times[len(times) // 2]


def part_vgg_step(budget, quick, data_dir, work):
    xp = backend.get("cupy")
    width, batch = (0.125, 16) if quick else (1.0, 128)
    images_per_s, step_s = _vgg_step_images_per_s(xp, width, batch)
    out = {"status": "passed", "width": width, "batch": batch, "minibn_images_per_s": images_per_s,
           "minibn_step_s": step_s, "torch_images_per_s": None}
    note = f"VGG-16 (BatchNorm, width {width:g}, batch {batch}, float32): minibn/CuPy {images_per_s:.0f} img/s"
    try:
        import torch
        cuda = torch.cuda.is_available()
    except ImportError:
        cuda = False
    if cuda and not quick:
        out["torch_images_per_s"] = _torch_vgg_step_images_per_s(batch)
        note += f", PyTorch+CUDA (NCHW) {out['torch_images_per_s']:.0f} img/s"
    else:
        note += "; PyTorch+CUDA not timed (not installed with CUDA)" if not quick else ""
    out["note"] = note
    return out


def part_vgg_e1(budget, quick, data_dir, work):
    from minibn.studies import vgg

    preset = "smoke" if quick else "paper"
    cfg = dict(vgg.PRESETS[preset])
    try:
        vgg.load_data(data_dir, cfg["train_size"], cfg["eval_test_size"], cfg["eval_train_size"])
    except Exception as err:  # no CIFAR-10 here (and no network to fetch it)
        return {"status": "skipped", "note": f"CIFAR-10 not available: {err}"}
    xp = backend.get("cupy")
    width = 0.125 if quick else cfg["width"]
    _, step_s = _vgg_step_images_per_s(xp, width, 16 if quick else cfg["batch"], repeats=2)
    runs = len(vgg.EXPERIMENTS["E1"])
    steps = max(1, min(cfg["steps"], int(0.4 * budget / (runs * step_s))))
    started = time.perf_counter()
    out = vgg.run(out=os.path.join(work, "vgg_e1"), preset=preset, experiments=("E1",), backend="cupy",
                  data_dir=data_dir, steps=steps)
    return {"status": "passed", "steps": steps, "wall_s": time.perf_counter() - started,
            "final_loss": {name: run["loss"][-1] for name, run in out["runs"].items()},
            "note": f"E1's {runs} runs for {steps} steps each (of {cfg['steps']})"}


# --- the driver -----------------------------------------------------------------------------

def _run_part(name, args):
    """Run one part in a child process under its budget; its dict, or a failure saying why."""
    budget = BUDGETS[name] * args.scale
    result_path = os.path.join(args.out, f"part_{name}.json")
    cmd = _python_m("minibn.gpucheck") + ["--part", name, "--out", args.out, "--scale", str(args.scale)]
    cmd += ["--quick"] if args.quick else []
    cmd += ["--data-dir", args.data_dir] if args.data_dir else []
    started = time.perf_counter()
    try:
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=budget + 15)
    except subprocess.TimeoutExpired:
        return {"status": "failed", "note": f"overran its budget of {budget:.0f} s", "wall_s": budget + 15}
    wall = time.perf_counter() - started
    if done.returncode != 0 or not os.path.exists(result_path):
        return {"status": "failed", "note": "the part crashed: " + (done.stderr.strip().splitlines() or ["?"])[-1],
                "stderr": done.stderr[-3000:], "wall_s": wall}
    result = io.read_json(result_path)
    os.unlink(result_path)
    return {**result, "wall_s": wall}


def _markdown(doc):
    lines = [f"# GPU check: {doc['device'].get('device_name', '?')}", "",
             f"CuPy {doc['device'].get('cupy')}, CUDA runtime {doc['device'].get('cuda_runtime')}, "
             f"driver {doc['device'].get('cuda_driver')}, {doc['device'].get('device_memory_gib')} GiB; "
             f"{doc['wall_s']:.0f} s in all{' (--quick: sizes for the stand-in, not figures)' if doc['quick'] else ''}.",
             "", "| part | status | s | result |", "|---|---|---|---|"]
    for name, part in doc["parts"].items():
        lines.append(f"| {name} | {part['status']} | {part.get('wall_s', 0):.0f} | {part.get('note', '')} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m minibn.gpucheck", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for gpucheck.json and gpucheck.md")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)} [all]")
    p.add_argument("--data-dir", default=None, help="CIFAR-10 folder for vgg_e1 [minibn's cache]")
    p.add_argument("--quick", action="store_true", help="sizes for a test on the CuPy stand-in")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every part's time budget [1]")
    p.add_argument("--part", default=None, help=argparse.SUPPRESS)  # a child: run this part only
    args = p.parse_args(argv)
    parts = [s for s in args.parts.split(",") if s]
    unknown = [s for s in parts if s not in PARTS]
    if unknown:
        p.error(f"unknown part(s) {unknown}; choose from {list(PARTS)}")
    try:
        backend.get("cupy")
    except backend.BackendUnavailable as err:
        p.error(str(err))
    os.makedirs(args.out, exist_ok=True)
    if args.part is not None:
        work = os.path.join(args.out, "work")
        result = globals()[f"part_{args.part}"](BUDGETS[args.part] * args.scale, args.quick, args.data_dir, work)
        io.write_json(os.path.join(args.out, f"part_{args.part}.json"), result)
        return 0
    from minibn.studies import common

    started = time.perf_counter()
    results = {}
    for name in parts:
        print(f"gpucheck: {name} (budget {BUDGETS[name] * args.scale:.0f} s) ...", flush=True)
        results[name] = _run_part(name, args)
        print(f"gpucheck: {name}: {results[name]['status']}: {results[name].get('note', '')}", flush=True)
    doc = {"device": common.gpu_environment(), "environment": common.environment(), "quick": args.quick,
           "stand_in": _on_stand_in(), "parts": results, "wall_s": time.perf_counter() - started,
           "ok": all(r["status"] != "failed" for r in results.values())}
    io.write_json(os.path.join(args.out, "gpucheck.json"), doc)
    io.write_text(os.path.join(args.out, "gpucheck.md"), _markdown(doc))
    print(f"gpucheck: {'all passed' if doc['ok'] else 'FAILED'} -> {args.out}/gpucheck.md", flush=True)
    return 0 if doc["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
