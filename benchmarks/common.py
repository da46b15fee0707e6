"""Shared benchmark helpers: interleaved timing, machine facts, FLOP counts, RESULTS.md sections.

Timing rule: every method compared in one table is warmed up (compiled) first, then timed
*alternately* — repetition r runs every method once, in an order rotated each repetition — and
the medians are reported. On a shared machine the load moves during a run; interleaving makes
it fall on every method alike, so ratios stay meaningful even when absolute times drift.
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Collection, Mapping, Sequence

RESULTS = Path(__file__).with_name("RESULTS.md")


# ------------------------------------------------------------------------------------------------
# Memory
# ------------------------------------------------------------------------------------------------


def rss_bytes() -> int:
    """Resident memory of this process (Linux ``/proc/self/statm``)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_child(code: str, *args: Any, timeout: float = 3600) -> dict:
    """Run ``code`` in a fresh Python (this repository importable) with ``args``; its last stdout line as JSON."""
    import json
    import subprocess

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def peak_rss_growth(fn: Callable[[], Any], every: float = 0.001) -> tuple[int, int, float]:
    """Run ``fn()`` while a thread samples RSS every ``every`` s: ``(peak − before, before, seconds)`` in bytes."""
    import threading

    peak, done = [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_bytes())
            time.sleep(every)

    before = rss_bytes()
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    start = time.perf_counter()
    fn()
    seconds = time.perf_counter() - start
    done.set()
    thread.join()
    return max(peak[0], rss_bytes()) - before, before, seconds


# ------------------------------------------------------------------------------------------------
# Timing
# ------------------------------------------------------------------------------------------------


def block(value: Any) -> Any:
    """Wait for every JAX array in ``value`` (a pytree); other values pass through."""
    try:
        import jax

        return jax.block_until_ready(value)
    except Exception:  # noqa: BLE001 - non-JAX results (torch, numpy) are already computed
        return value


#: :func:`interleaved` with ``lead_in``: those cases, when their warm-up call took less than this many
#: seconds, get an untimed call of the same case right before each timed one. A short call is at the mercy
#: of what ran just before it (measured 2026-12-07 on 2 cores, Lite0 ``head``): chipjax CHIP auto right
#: after the torch CHIP took 92–96 ms (torch's idle OpenMP and OpenBLAS threads spin on the cores), after
#: its own call 60–64 ms; the torch CHIP itself is fastest right after a chipjax call (134 ms), slower after
#: a 0.2 s pause (158 ms, cold threads) or after its own call (200 ms: its OpenBLAS threads spin into its
#: next torch ops). So vs_torch_chip gives chipjax's short cases a lead-in and lets the torch cases follow a
#: chipjax call: each side in the condition it runs fastest in.
LEAD_IN_BELOW_S = 1.0


def interleaved(cases: Mapping[str, Callable[[], Any]], reps: int, warmup: int = 1,
                lead_in: Collection[str] = ()) -> dict[str, list[float]]:
    """Seconds per call of each case, measured alternately.

    Args:
      cases: name -> zero-argument callable doing one unit of work (its result is blocked on).
      reps: timed repetitions of every case.
      warmup: untimed calls of every case first (compilation, caches).
      lead_in: names of cases that, when their last warm-up call took less than
        :data:`LEAD_IN_BELOW_S`, run once untimed right before each of their timed calls.
    Returns:
      name -> list of ``reps`` wall times.
    """
    names = list(cases)
    took = {name: float("inf") for name in names}
    for _ in range(warmup):
        for name in names:
            start = time.perf_counter()
            block(cases[name]())
            took[name] = time.perf_counter() - start
    lead = {name for name in lead_in if took[name] < LEAD_IN_BELOW_S}
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(reps):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            if name in lead:
                block(cases[name]())
            start = time.perf_counter()
            block(cases[name]())
            times[name].append(time.perf_counter() - start)
    return times


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def median_ratio(num: Sequence[float], den: Sequence[float]) -> float:
    """Median of the per-repetition ratios ``num[r] / den[r]`` (pairs measured back to back)."""
    return float(statistics.median([a / b for a, b in zip(num, den)]))


# ------------------------------------------------------------------------------------------------
# Machine, FLOPs
# ------------------------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> dict[str, str]:
    """Installed versions of the packages the benchmarks use (distribution names)."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in ("jax", "jaxlib", "flax", "numpy", "torch", "torchvision", "scikit-learn", "grad-cam"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def machine() -> dict[str, str]:
    """CPU model, cores, load, JAX backend and devices."""
    info = {"cpu": cpu_model(), "cores": str(os.cpu_count())}
    try:
        info["load average (1/5/15 min, at start)"] = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        pass
    try:
        import jax

        devices = jax.devices()
        info["jax backend"] = f"{jax.default_backend()} × {len(devices)} ({devices[0].device_kind})"
    except Exception:  # noqa: BLE001
        pass
    return info


def set_threads(n: int) -> None:
    """Pin torch to ``n`` threads (XLA:CPU uses every core of this machine)."""
    import torch

    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set once in this process
        pass


def matmul_rate(dtype: str = "float32", n: int = 2048, reps: int = 5, precision=None) -> float:
    """Measured FLOP/s of an ``n × n @ n × n`` matmul in ``dtype`` (bfloat16 with float32 accumulation),
    median of ``reps``. ``precision`` None: XLA's default, as a network's layers run (TF32 on recent
    NVIDIA GPUs for float32; exact float32 on CPU)."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    dt = jnp.dtype(dtype)
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dt)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32).astype(dt)
    f = jax.jit(lambda a, b: lax.dot(a, b, precision=precision, preferred_element_type=jnp.float32))
    times = interleaved({"mm": lambda: f(a, b)}, reps=reps, warmup=1)["mm"]
    return 2.0 * n ** 3 / median(times)


def cost_flops(fn: Callable, *args) -> float:
    """FLOPs XLA counts for ``fn(*args)`` (``jit(fn).lower(*args).compile().cost_analysis()``); NaN if unknown."""
    import jax

    analysis = jax.jit(fn).lower(*args).compile().cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else {}
    flops = (analysis or {}).get("flops")
    return float(flops) if flops is not None else float("nan")


# ------------------------------------------------------------------------------------------------
# Output
# ------------------------------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table (numbers formatted with :func:`fmt`)."""
    cells = [[fmt(c) for c in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) if cells else len(str(h)) for i, h in enumerate(headers)]
    line = lambda items: "| " + " | ".join(str(x).ljust(w) for x, w in zip(items, widths)) + " |"  # noqa: E731
    out = [line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in cells]
    return "\n".join(out)


def fmt(x: Any) -> str:
    if isinstance(x, float):
        if x != x:
            return "–"
        if abs(x) >= 100:
            return f"{x:,.0f}"
        if abs(x) >= 10:
            return f"{x:.1f}"
        if abs(x) >= 0.01:
            return f"{x:.3g}" if abs(x) < 1 else f"{x:.2f}"
        return f"{x:.2e}"
    return str(x)


def command_line() -> str:
    """The exact command that ran this benchmark."""
    module = sys.modules["__main__"].__spec__
    head = f"python -m {module.name}" if module is not None else f"python {sys.argv[0]}"
    return " ".join([head] + [shlex.quote(a) for a in sys.argv[1:]])


def append_section(title: str, body: str, *, write: bool = True, path: Path = RESULTS) -> str:
    """Append a dated section (machine, versions, command, then ``body``) to RESULTS.md; return its text."""
    now = _dt.datetime.now().astimezone()
    facts = machine()
    facts.update({"date": now.strftime("%Y-%m-%d %H:%M %Z"), "command": f"`{command_line()}`"})
    facts["versions"] = ", ".join(f"{k} {v}" for k, v in versions().items())
    lines = [f"### {title} — {now:%Y-%m-%d %H:%M}", ""]
    lines += [f"- {k}: {v}" for k, v in facts.items()]
    text = "\n".join(lines) + "\n\n" + body.strip() + "\n\n"
    if write:
        existing = path.read_text() if path.exists() else "# chipjax benchmark results\n\n"
        if not existing.endswith("\n\n"):
            existing = existing.rstrip("\n") + "\n\n"
        path.write_text(existing + text)
    return text


def report(title: str, body: str, notes: str, *, write: bool = True) -> str:
    """Print a benchmark's table ``body`` and its ``notes``, and append both as one section (:func:`append_section`)."""
    text = body + "\n\n" + notes
    print(text)
    return append_section(title, text, write=write)


def standard_args(parser) -> None:
    """``--quick``, ``--reps``, ``--no-write`` (every benchmark takes them)."""
    parser.add_argument("--quick", action="store_true", help="small sizes that finish in minutes on 2 CPU cores")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions per case (after one warm-up)")
    parser.add_argument("--no-write", action="store_true", help="print only; do not append to RESULTS.md")
