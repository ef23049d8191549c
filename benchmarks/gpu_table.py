"""One table of everything benchmarks/gpu_suite.sh wrote: python3 benchmarks/gpu_table.py OUT_DIR."""

import json
import sys
from pathlib import Path

out = Path(sys.argv[1])
print(f"GPU: {(out / 'gpu.txt').read_text().strip() if (out / 'gpu.txt').exists() else '?'}")
print(f"{'model':<28} {'C':>3} {'method':<10} {'att/s':>8} {'tok/s':>8} {'dec ms':>7} {'floor':>7} {'xfloor':>6} "
      f"{'upd s':>6} {'sdpo/bok':>8}")
for path in sorted(out.glob("tp-*.json")):
    report = json.loads(path.read_text())
    by = {(r["concurrency"], r["method"]): r for r in report["rows"]}
    for r in report["rows"]:
        ratio = by[(r["concurrency"], "best-of-k")]["attempts_per_s"] / r["attempts_per_s"] if r["method"] == "sdpo" else None
        over = r["decode_ms_per_step"] / r["decode_floor_ms"] if r.get("decode_floor_ms") else None
        cells = [f"{v:>{w}.{p}f}" if v is not None else f"{'-':>{w}}" for v, w, p in (
            (r["attempts_per_s"], 8, 1), (r["tokens_per_s"], 8, 0), (r.get("decode_ms_per_step"), 7, 2),
            (r.get("decode_floor_ms"), 7, 3), (over, 6, 1), (r.get("update_s_per_step"), 6, 2), (ratio, 8, 2))]
        print(f"{report['model']:<28} {r['concurrency']:>3} {r['method']:<10} " + " ".join(cells))
    print(f"  bandwidth {report['bandwidth_gb_s']:.0f} GB/s, weights {report['weight_bytes'] / 1e9:.2f} GB")
discovery = out / "discovery.json"
if discovery.exists():
    report = json.loads(discovery.read_text())
    print(f"discovery: {len(report['problems'])} problems x {report['seeds']} seeds, budget {report['budget']}")
    for curve in report["average_curves"]:
        print(f"  {curve['label']:<11} P@budget {curve['mean'][-1]:.3f} [{curve['low'][-1]:.3f}, {curve['high'][-1]:.3f}]"
              f"  mean attempts {report['mean_attempts'][curve['label']]:.1f}")
    print(f"  {report['note']}")
