"""diff on an LLM-shaped checkpoint against the torch scripts it replaces, whole processes.

Files from `python bench/make_llm.py` (a ~3 GB float32 state_dict saved with torch.save,
194 tensors up to 131 MB, a tied embedding; its safetensors conversion; a copy with
every value + 1). Two cases:

- identical: llm.pt vs llm.safetensors, against `torch.load(mmap=True)`, `load_file` and
  `torch.equal` per key. Target: at most 0.67x the script's time.
- every value differs: llm.pt vs llm_plus1.safetensors, against the same loads and, per
  key, the numbers diff reports (max abs, max rel, count of differing elements, relative
  L2 error). Targets: no slower than the script, peak memory under twice the largest
  tensor plus 100 MB.

The machine may be shared: runs are interleaved (ckpttool, script, ckpttool, ...) after
one warm-up each, the median time and the largest peak RSS of each are reported with
the CPU time (user + system), and the load average is printed before and after.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from common import ENV, Measurement, ckpttool, python, run_once

LLM_DIR = Path(os.environ.get("CKPTTOOL_BENCH_DIR", "/tmp/ckpttool-bench"))
ROUNDS = int(os.environ.get("ROUNDS", "3"))

EQUAL_SCRIPT = """
import sys, torch
from safetensors.torch import load_file
a = torch.load(sys.argv[1], mmap=True, weights_only=True)
b = load_file(sys.argv[2])
different = [k for k in a if k not in b or not torch.equal(a[k], b[k])]
print(len(different))
"""
ERRORS_SCRIPT = """
import sys, torch
from safetensors.torch import load_file
a = torch.load(sys.argv[1], mmap=True, weights_only=True)
b = load_file(sys.argv[2])
rows = []
for k in a:
    x, y = a[k], b[k]
    d = (x - y).abs()
    rows.append((k, d.max().item(), (d / y.abs()).max().item(), int((x != y).sum()), (d.norm() / x.norm()).item()))
print(len(rows))
"""


def interleaved(pairs: dict[str, tuple[list[str], list[str]]]) -> dict[str, tuple[Measurement, Measurement]]:
    """Each case's (ckpttool, script) measured alternately, ROUNDS times, after a warm-up."""
    runs: dict[str, tuple[list[Measurement], list[Measurement]]] = {name: ([], []) for name in pairs}
    for argv in (a for pair in pairs.values() for a in pair):
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    for _ in range(ROUNDS):
        for name, (ours, script) in pairs.items():
            runs[name][0].append(run_once(ours))
            runs[name][1].append(run_once(script))
    return {name: (_summary(o), _summary(s)) for name, (o, s) in runs.items()}


def _summary(runs: list[Measurement]) -> Measurement:
    return Measurement(
        statistics.median(r.seconds for r in runs),
        max(r.peak_mb for r in runs),
        statistics.median(r.cpu_seconds for r in runs),
    )


def check_answers(equal: list[str], differing: list[str]) -> None:
    """ckpttool's own answers, before timing them: identical, then every tensor differing."""
    same = json.loads(subprocess.run(equal, capture_output=True, env=ENV).stdout)
    assert same["identical"] is True and same["equal"] == 195, same
    other = json.loads(subprocess.run(differing, capture_output=True, env=ENV).stdout)
    rows = other["value_mismatch"]
    assert len(rows) == 195 and all(r["share"] == 1.0 for r in rows), "every value should differ"


def largest_tensor_mb(path: Path) -> float:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from ckpttool.formats import read_checkpoint
    from ckpttool.weights import find_weights

    return max(t.nbytes for t in find_weights(read_checkpoint(str(path)).root).tensors) / 2**20


def main() -> None:
    pt, same, plus1 = (str(LLM_DIR / n) for n in ("llm.pt", "llm.safetensors", "llm_plus1.safetensors"))
    if not Path(plus1).exists():
        raise SystemExit(f"run bench/make_llm.py first (no {plus1})")
    equal_cmd = ckpttool("diff", pt, same, "--format", "json")
    differing_cmd = ckpttool("diff", pt, plus1, "--format", "json")
    check_answers(equal_cmd, differing_cmd)
    print(f"load average before: {os.getloadavg()[0]:.2f}; {ROUNDS} interleaved rounds")
    results = interleaved(
        {
            "identical": (equal_cmd, python(EQUAL_SCRIPT, pt, same)),
            "every value differs": (differing_cmd, python(ERRORS_SCRIPT, pt, plus1)),
        }
    )
    print(f"load average after:  {os.getloadavg()[0]:.2f}")
    limit = 2 * largest_tensor_mb(Path(pt)) + 100 * 1e6 / 2**20
    targets = {"identical": 0.67, "every value differs": 1.0}
    for name, (ours, script) in results.items():
        ratio = ours.seconds / script.seconds
        print(f"diff llm.pt, {name}")
        print(f"  ckpttool  {ours.seconds:7.2f} s  cpu {ours.cpu_seconds:7.2f} s  peak {ours.peak_mb:7.1f} MiB")
        print(f"  script    {script.seconds:7.2f} s  cpu {script.cpu_seconds:7.2f} s  peak {script.peak_mb:7.1f} MiB")
        verdict = "ok" if ratio <= targets[name] else "MISSED"
        print(f"  time ratio {ratio:.2f} (target <= {targets[name]}) {verdict}")
    peak = results["every value differs"][0].peak_mb
    print(f"peak memory, every value differs: {peak:.1f} MiB (limit 2 x largest tensor + 100 MB = {limit:.1f} MiB)")
    sys.exit(0 if peak < limit else 1)


if __name__ == "__main__":
    main()
