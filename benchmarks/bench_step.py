"""Speed and memory of one training step: minibn against PyTorch (when installed), same run.

Two workloads, float32, channels-last for minibn:

* ``vgg16``: one full training step of the CIFAR VGG-16 (docs/protocol.md §1, BatchNorm before
  each ReLU by default) on a batch of 128 32x32x3 images: forward, softmax cross-entropy,
  backward, plain SGD update;
* ``block``: conv3x3(64->64, padding 1) + BatchNorm + ReLU, forward and backward (dx
  included) on 128 images of 32x32x64.

Every measurement runs in a fresh subprocess (so one framework's allocator state cannot
help or hurt another, and peak memory is per measurement): ``warmup`` untimed steps, then
``repeats`` timed ones; the median is reported with the min and max. Memory is the
process's peak resident set (``ru_maxrss``), shown whole ("peak RSS": interpreter,
libraries, model, data and the step) and above the resident set measured just before the
first step ("step peak": what the step itself needed on top). PyTorch is timed in NCHW and
channels_last with ``torch.set_num_threads`` equal to the BLAS thread count given to
minibn. The load average is printed beside each measurement: on a shared machine other
work slows everything, so read ratios from one run, not absolute figures across runs.

``--malloc no-mmap`` applies a *process* setting (glibc ``mallopt``: no mmap for large
blocks, no trimming), in every measured process alike: freed arrays then go back to the
heap and are reused, instead of being unmapped and page-faulted in again at every step.
No layer code depends on it; see benchmarks/README.md.

    python benchmarks/bench_step.py                       # both workloads, numpy vs torch
    python benchmarks/bench_step.py --what block --malloc default,no-mmap
    python benchmarks/bench_step.py --backend cupy --no-torch
"""

import argparse
import json
import os
import subprocess
import sys
import time

import blas  # benchmarks/blas.py, beside this script

IMAGES = {"vgg16": 128, "block": 128}


def thread_env(threads):
    env = dict(os.environ)
    for key in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[key] = str(threads)
    return env


def set_malloc(policy):
    """glibc mallopt as a process setting: 'no-mmap' keeps large blocks on the heap for reuse."""
    if policy == "default":
        return
    import ctypes
    libc = ctypes.CDLL("libc.so.6")
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    if not (libc.mallopt(M_MMAP_MAX, 0) and libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)):
        raise RuntimeError("mallopt failed (not glibc?)")


def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


# --- the work, per framework ---------------------------------------------------------------
def minibn_work(what, backend_name, norm, batch):
    import numpy as np
    from minibn import backend, models, nn, optim

    xp = backend.get(backend_name)
    host = np.random.default_rng(0)
    if what == "vgg16":
        model = models.vgg("vgg16", norm=norm, rng=0, dtype="float32").to(backend_name)
        x = xp.asarray(host.standard_normal((batch, 32, 32, 3), dtype=np.float32))
        labels = xp.asarray(host.integers(0, 10, batch))
        sgd = optim.SGD(model, lr=0.01)

        def step():
            model.value_and_grad(nn.softmax_cross_entropy, x, labels, "train")
            sgd.step()
    else:
        model = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1, rng=0), nn.BatchNorm(64), nn.ReLU()).to(backend_name)
        x = xp.asarray(host.standard_normal((batch, 32, 32, 64), dtype=np.float32))
        dy = xp.asarray(host.standard_normal((batch, 32, 32, 64), dtype=np.float32))

        def step():
            model.forward(x, "train")
            model.backward(dy)

    def synced_step():
        step()
        backend.synchronize(xp)

    def device_memory():
        if backend.name_of(xp) != "cupy":
            return None
        return xp.get_default_memory_pool().total_bytes() / 2**20

    return synced_step, device_memory


def torch_work(what, layout, norm, batch, threads):
    import torch
    import torch.nn as tnn

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    if what == "vgg16":
        from minibn.models import VGG_CONFIGS
        layers, channels = [], 3
        for entry in VGG_CONFIGS["vgg16"]:
            if entry == "M":
                layers.append(tnn.MaxPool2d(2, 2))
                continue
            layers.append(tnn.Conv2d(channels, entry, 3, padding=1))
            if norm == "batchnorm":
                layers.append(tnn.BatchNorm2d(entry))
            layers.append(tnn.ReLU())
            channels = entry
        model = tnn.Sequential(*layers, tnn.Flatten(), tnn.Linear(channels, 10)).to(memory_format=fmt)
        x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=fmt)
        labels = torch.randint(0, 10, (batch,))
        sgd = torch.optim.SGD(model.parameters(), lr=0.01)

        def step():
            sgd.zero_grad(set_to_none=True)
            tnn.functional.cross_entropy(model(x), labels).backward()
            sgd.step()
    else:
        model = tnn.Sequential(tnn.Conv2d(64, 64, 3, padding=1), tnn.BatchNorm2d(64), tnn.ReLU()).to(memory_format=fmt)
        x = torch.randn(batch, 64, 32, 32).contiguous(memory_format=fmt).requires_grad_(True)
        dy = torch.randn(batch, 64, 32, 32).contiguous(memory_format=fmt)

        def step():
            model.zero_grad(set_to_none=True)
            x.grad = None
            model(x).backward(dy)

    return step, lambda: None


def child(args):
    """Run one measurement and print it as JSON on the last line."""
    set_malloc(args.malloc)
    if args.framework == "minibn":
        step, device_memory = minibn_work(args.what, args.backend, args.norm, args.batch)
    else:
        step, device_memory = torch_work(args.what, args.framework.split(":")[1], args.norm, args.batch, args.threads)
    import resource
    rss_before = rss_mb()
    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"times": times, "peak_rss_mb": peak, "rss_before_mb": rss_before,
                      "device_pool_mb": device_memory(), "blas": blas.describe()}))


def measure(args, what, framework, malloc):
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--what", what, "--framework", framework,
           "--backend", args.backend, "--norm", args.norm, "--batch", str(args.batch), "--threads", str(args.threads),
           "--warmup", str(args.warmup), "--repeats", str(args.repeats), "--malloc", malloc]
    load_before = os.getloadavg()[0]
    done = subprocess.run(cmd, env=thread_env(args.threads), capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["load"] = (load_before, os.getloadavg()[0])
    times = sorted(result["times"])
    result["median_s"] = times[len(times) // 2] if len(times) % 2 else sum(times[len(times) // 2 - 1:len(times) // 2 + 1]) / 2
    result["images_per_s"] = args.batch / result["median_s"]
    return result


def torch_available():
    try:
        import importlib.util
        return importlib.util.find_spec("torch") is not None
    except ValueError:
        return False


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--what", default="vgg16,block", help="comma list of: vgg16, block")
    parser.add_argument("--backend", default="numpy", choices=("numpy", "cupy"), help="minibn's backend")
    parser.add_argument("--norm", default="batchnorm", choices=("batchnorm", "standard"), help="VGG-16 with or without BN")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="BLAS/torch threads (default: all cores)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--malloc", default="default", help="comma list of: default, no-mmap (process setting, see docstring)")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch baselines")
    parser.add_argument("--json", help="also write all results to this file")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--framework", default="minibn", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)

    frameworks = ["minibn"]
    if not args.no_torch and torch_available():
        frameworks += ["torch:nchw", "torch:channels_last"]
    elif not args.no_torch:
        print("torch is not installed: minibn only (pip install 'minibn[bench]' for the baselines)")
    print(f"threads: {args.threads} (os.cpu_count()={os.cpu_count()}); minibn backend: {args.backend}; "
          f"float32, batch {args.batch}; warmup {args.warmup}, median of {args.repeats}; "
          f"load average now {os.getloadavg()[0]:.2f}")
    results, printed_blas = [], None
    for malloc in args.malloc.split(","):
        for what in args.what.split(","):
            if what not in IMAGES:
                parser.error(f"--what: unknown workload {what!r}")
            print(f"\n{what} ({'VGG-16, ' + args.norm if what == 'vgg16' else 'conv3x3 64->64 + BN + ReLU, 32x32'}), "
                  f"malloc: {malloc}")
            print(f"  {'framework':22s} {'images/s':>9s} {'median s':>9s} {'min-max s':>15s} {'peak RSS MB':>12s} "
                  f"{'step peak MB':>13s} {'load before/after':>18s}")
            rows = {}
            for framework in frameworks:
                r = measure(args, what, framework, malloc)
                name = f"minibn {args.backend}" if framework == "minibn" else framework.replace(":", " ")
                rows[framework] = r
                results.append({"what": what, "framework": name, "malloc": malloc, **r})
                if "error" in r:
                    print(f"  {name:22s} failed: {r['error']}")
                    continue
                if framework == "minibn" and r["blas"] != printed_blas:
                    printed_blas = r["blas"]
                    print(f"  ({printed_blas}, in the minibn process)")
                extra = f"  device pool {r['device_pool_mb']:.0f} MB" if r.get("device_pool_mb") is not None else ""
                print(f"  {name:22s} {r['images_per_s']:9.1f} {r['median_s']:9.3f} "
                      f"{min(r['times']):7.3f}-{max(r['times']):<7.3f} {r['peak_rss_mb']:12.0f} "
                      f"{r['peak_rss_mb'] - r['rss_before_mb']:13.0f} {r['load'][0]:8.2f}/{r['load'][1]:<8.2f}{extra}")
            ours = rows["minibn"]
            for framework in frameworks[1:]:
                theirs = rows[framework]
                if "error" in ours or "error" in theirs:
                    continue
                print(f"  minibn / {framework.replace(':', ' ')}: throughput {ours['images_per_s'] / theirs['images_per_s']:.2f}x, "
                      f"peak RSS {ours['peak_rss_mb'] / theirs['peak_rss_mb']:.2f}x, "
                      f"step peak {(ours['peak_rss_mb'] - ours['rss_before_mb']) / (theirs['peak_rss_mb'] - theirs['rss_before_mb']):.2f}x")
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"threads": args.threads, "backend": args.backend, "results": results}, f, indent=1)
        os.replace(tmp, args.json)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
