"""The Performance table: ckpttool against the script each command replaces, in one run.

Files: `python bench/make_llm.py` (llm.pt, a ~3 GB LLM-shaped state_dict of 194 tensors,
and llm.safetensors) and `python bench/make_checkpoints.py` (many.pt, 50,000 small
tensors). Each job runs as whole processes, ckpttool and script alternately, ROUNDS times
after one warm-up each (page cache warm); the median time and the largest peak RSS are
printed, with the ratio ckpttool / script (below 1: ckpttool is faster) and the goal.

    python bench/bench_table.py [--tree DIR] [--peers VENV] [--only COMMAND ...]

`--tree DIR` runs the ckpttool package of another checkout (`python -m ckpttool` with DIR
on PYTHONPATH; by default this one's), so a before/after pair is two runs on the same
files. `--peers VENV` adds `picklescan` from that venv beside `scan` of the 50k file.
`--only inspect diff` runs those commands' rows alone (a quick before/after of one change).
The DCP row comes from `bench/bench_dcp.py --gb 3`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from common import ENV, OUT, Measurement

# make_llm.py's folder, not imported from it: it imports torch, and a child forked from a
# process that holds torch reports torch's memory as its own peak
LLM_DIR = Path(os.environ.get("CKPTTOOL_BENCH_DIR", "/tmp/ckpttool-bench"))

ROUNDS = int(os.environ.get("ROUNDS", "3"))
LOAD = "import sys, torch\nstate = torch.load(sys.argv[1], mmap=True, weights_only=True)\n"
SCRIPTS = {
    "inspect": LOAD + "print(len(state), sum(t.numel() for t in state.values()))\n",
    # save_file refuses tensors that share memory (a tied lm_head): the script clones the later ones.
    "convert": LOAD
    + "from safetensors.torch import save_file\nseen = set()\nfor key, tensor in state.items():\n"
    + "    pointer = tensor.untyped_storage().data_ptr()\n"
    + "    state[key] = tensor.clone() if pointer in seen else tensor\n    seen.add(pointer)\n"
    + "save_file(state, sys.argv[2])\n",
    "diff": LOAD
    + "from safetensors.torch import load_file\nother = load_file(sys.argv[2])\n"
    + "print(sum(not torch.equal(state[k], other[k]) for k in state))\n",
    "remap": "import sys, torch\n"
    + "torch.save(torch.load(sys.argv[1], map_location='cpu', weights_only=True), sys.argv[2])\n",
}


@dataclass
class Job:
    title: str
    ours: list[str]
    script: list[str]
    goal: str
    clean: tuple[Path, ...] = ()


def jobs(tool: Callable[..., list[str]], peers: Path | None) -> list[Job]:
    llm, many = LLM_DIR / "llm.pt", OUT / "many.pt"
    st, out_st, out_pt = LLM_DIR / "llm.safetensors", LLM_DIR / "out.safetensors", LLM_DIR / "out.pt"
    script_st, script_pt = LLM_DIR / "script.safetensors", LLM_DIR / "script.pt"

    def script(name: str, *args: Path) -> list[str]:
        return [sys.executable, "-c", SCRIPTS[name], *map(str, args)]

    table = [
        Job("inspect 3 GB LLM-shaped .pt (194 tensors)", tool("inspect", llm), script("inspect", llm), "<= 0.03"),
        Job("inspect 50,000 small tensors", tool("inspect", many), script("inspect", many), "<= 0.25"),
        Job(
            "convert -> safetensors, 3 GB",
            tool("convert", llm, out_st, "--force"),
            script("convert", llm, script_st),
            "<= 0.6",
            (out_st, script_st),
        ),
        Job("diff .pt vs its .safetensors, 3 GB", tool("diff", llm, st), script("diff", llm, st), "<= 0.5"),
        Job(
            "remap --device cpu, 3 GB",
            tool("remap", llm, out_pt, "--device", "cpu", "--force"),
            script("remap", llm, script_pt),
            "<= 0.4",
            (out_pt, script_pt),
        ),
    ]
    if peers is not None:
        picklescan = [str(peers / "bin" / "picklescan"), "-p", str(many)]
        table.append(Job("scan 50,000 small tensors (script: picklescan)", tool("scan", many), picklescan, ""))
    return table


def run_once(argv: list[str], env: dict[str, str], ok: tuple[int, ...] = (0, 1)) -> Measurement:
    """One whole process; an exit code outside `ok` stops the benchmark (a failed run is no time).
    Dirty pages are written out first, so no run pays for the previous run's writes."""
    os.sync()
    start = time.perf_counter()
    child = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(child.pid, 0)
    elapsed = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code not in ok:
        assert child.stderr is not None
        raise SystemExit(f"{' '.join(argv)} failed ({code}): {child.stderr.read().decode()}")
    return Measurement(elapsed, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime)


def measure(job: Job, ours_env: dict[str, str]) -> tuple[Measurement, Measurement]:
    """Median time and largest peak of each side, run alternately after a warm-up each."""
    runs: tuple[list[Measurement], list[Measurement]] = ([], [])
    run_once(job.ours, ours_env)
    run_once(job.script, ENV, ok=(0,))  # ckpttool exits 1 for findings; a script only ever 0
    for _ in range(ROUNDS):
        runs[0].append(run_once(job.ours, ours_env))
        runs[1].append(run_once(job.script, ENV, ok=(0,)))
    for path in job.clean:
        path.unlink(missing_ok=True)
    ours, script = (
        Measurement(statistics.median(r.seconds for r in side), max(r.peak_mb for r in side)) for side in runs
    )
    return ours, script


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tree", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--peers", type=Path)
    parser.add_argument("--only", nargs="+", metavar="COMMAND", help="the rows of these commands alone")
    options = parser.parse_args()
    tree = options.tree.resolve()
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(tree / "ckpttool")], check=True, env=ENV)
    ours_env = {**ENV, "PYTHONPATH": str(tree)}

    def tool(*args: str | Path) -> list[str]:
        return [sys.executable, "-m", "ckpttool", *map(str, args), "--format", "json"]

    print(f"ckpttool from {tree}; load average before: {os.getloadavg()[0]:.2f}")
    print("| job | ckpttool | script | ckpttool / script | goal |")
    print("| --- | --- | --- | --- | --- |")
    for job in jobs(tool, options.peers):
        if options.only and job.ours[3] not in options.only:  # [python, -m, ckpttool, COMMAND, ...]
            continue
        ours, script = measure(job, ours_env)
        print(
            f"| {job.title} | {ours.seconds:.2f} s, {ours.peak_mb:.0f} MB | {script.seconds:.2f} s, "
            f"{script.peak_mb:.0f} MB | {ours.seconds / script.seconds:.3f} | {job.goal} |",
            flush=True,
        )
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
