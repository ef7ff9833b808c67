"""What starting a sidecar costs: modules loaded, time to /readyz, idle RSS.

Each run starts ``tokenomy sidecar`` as its own process (standalone, on
examples/local/, as the image's entrypoint would) and measures from process
start until /readyz answers 200, then the process's RSS after a second of
idling and how many modules it holds. ``--as-before`` first imports every
subcommand's module, which is what ``tokenomy`` did before it imported only
the subcommand it runs (kopf, the kubernetes client, eval and demo code in
every sidecar).

    python bench/sidecar_start.py [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from harness import free_port

REPO = Path(__file__).resolve().parent.parent
CHILD = """
import json, sys, threading, time, urllib.request
metrics, api, out, before = sys.argv[1:5]
if before == "1":
    import importlib
    from tokenomy_cli.main import SUBCOMMANDS
    for module in SUBCOMMANDS.values():
        importlib.import_module(module)
def report():
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{metrics}/readyz", timeout=1)
            break
        except Exception:
            time.sleep(0.01)
    ready = time.time()
    time.sleep(1.0)
    rss = int(open("/proc/self/statm").read().split()[1]) * 4096
    with open(out, "w") as f:
        json.dump({"ready": ready, "rss": rss, "modules": len(sys.modules),
                   "control_plane": sorted({m.split(".")[0] for m in sys.modules}
                       & {"kopf", "kubernetes", "tokenomy_operator", "tokenomy_eval", "tokenomy_demo"})}, f)
    import os
    os._exit(0)
threading.Thread(target=report, daemon=True).start()
from tokenomy_cli.main import main
main(["sidecar", "--config", "examples/local/", "--listen", f"127.0.0.1:{api}",
      "--metrics", f"127.0.0.1:{metrics}"])
"""


def once(before: bool, out: Path) -> dict[str, float]:
    started = time.time()
    subprocess.run(
        [sys.executable, "-c", CHILD, str(free_port()), str(free_port()), str(out), "1" if before else "0"],
        cwd=REPO, check=True, timeout=120,
    )  # fmt: skip
    found = json.loads(out.read_text())
    found["ready_s"] = found.pop("ready") - started
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    out = Path("/tmp/tokenomy-sidecar-start.json")
    for label, before in (("as before (every subcommand imported)", True), ("now", False)):
        runs = [once(before, out) for _ in range(args.runs)]
        ready = statistics.median(r["ready_s"] for r in runs)
        rss = statistics.median(r["rss"] for r in runs) / 2**20
        modules = statistics.median(r["modules"] for r in runs)
        print(f"{label:40} ready {ready:5.2f} s  RSS {rss:6.1f} MiB  modules {modules:5.0f}  "
              f"control-plane packages {runs[0]['control_plane'] or 'none'}")  # fmt: skip


if __name__ == "__main__":
    main()
