"""What verified reuse costs: the store's check of a finished artifact, warm (stats only) and cold (re-hash).

    python benchmarks/store_verify.py [--gb 4] [--demo-store kiln-artifacts] [--out FILE.json]

Every run of a stage first asks the store whether its artifact exists, and the store
answers only after verifying it (`storage.local.LocalStore.check`): files whose
(size, mtime_ns, ctime_ns, inode) match what was recorded when they were last hashed
are trusted, every other file is re-hashed. Rows:

- ``build``: `produce` of a `--gb` GB artifact of 256 MB files (writing + the one sha256 pass);
- ``warm_check``: a rerun's check of it (stats only) — what a finished pipeline pays per stage;
- ``one_file_changed``: one file rewritten with the same bytes: only it is re-hashed;
- ``cold_check``: after copying the store (new inodes), every file is re-hashed once;
- ``verify``: ``kiln artifacts show --verify`` (re-hash everything, whatever the stats);
- ``demo_store``: a warm check of every artifact in `--demo-store` (after ``make demo``), if given;
- ``weights_load_verify``: `model.integrity.verify_checksums` of a 1 GB safetensors-sized file
  (what every model load adds).

Times are wall seconds, best of `--rounds`; the page cache is warm after the build,
so re-hash rows measure sha256 speed, not the disk.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from model.integrity import verify_checksums, write_checksums
from storage.store import Build, open_store

CHUNK = 256 << 20


def write_files(build: Build, gb: float) -> None:
    n = max(1, round(gb * (1 << 30) / CHUNK))
    block = os.urandom(1 << 20)
    for i in range(n):
        with open(build.dir / f"part-{i:04d}.bin", "wb") as fh:
            for _ in range(CHUNK >> 20):
                fh.write(block)


def best(fn: Any, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return round(min(times), 4)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gb", type=float, default=4.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--demo-store", type=Path, default=None)
    ap.add_argument("--tmp", type=Path, default=None, help="where to build (default: the system temp dir)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/store_verify.json"))
    args = ap.parse_args()
    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        store = open_store(Path(tmp) / "a")
        t = time.perf_counter()
        ref = store.produce("big", "1", {"gb": args.gb}, [], lambda b: write_files(b, args.gb))
        rows["build_s"] = round(time.perf_counter() - t, 3)
        files = sorted(ref.path.glob("part-*.bin"))
        size = sum(f.stat().st_size for f in files)
        rows["artifact"] = {"files": len(files), "bytes": size}
        rows["warm_check_s"] = best(lambda: store.get("big", ref.key), args.rounds)

        def touch_one() -> None:
            files[0].write_bytes(files[0].read_bytes())
            assert store.get("big", ref.key) == ref

        rows["one_file_changed_s"] = best(touch_one, args.rounds)
        rows["verify_s"] = best(lambda: store.verify(ref), 1)
        rows["verify_gb_per_s"] = round(size / (1 << 30) / rows["verify_s"], 2)
        shutil.copytree(Path(tmp) / "a", Path(tmp) / "b")
        copy = open_store(Path(tmp) / "b")
        t = time.perf_counter()
        assert copy.get("big", ref.key) is not None
        rows["cold_check_s"] = round(time.perf_counter() - t, 3)
        rows["warm_check_after_cold_s"] = best(lambda: copy.get("big", ref.key), args.rounds)
        shutil.rmtree(Path(tmp) / "b")
        weights = Path(tmp) / "model"
        weights.mkdir()
        (weights / "model.safetensors").write_bytes(os.urandom(1 << 20) * 1024)
        write_checksums(weights, ["model.safetensors"])
        rows["weights_load_verify_1gb_s"] = best(lambda: verify_checksums(weights, required=True), args.rounds)
    if args.demo_store:
        demo = open_store(args.demo_store)
        refs = [(m["stage"], m["key"]) for m in demo.list()]
        n_files = sum(len(m["files"]) + len(m.get("logs", {})) for m in demo.list())
        rows["demo_store"] = {"artifacts": len(refs), "files": n_files,
                              "warm_check_all_s": best(lambda: [demo.get(s, k) for s, k in refs], args.rounds)}
    result = {"benchmark": "store_verify", "at": datetime.now(UTC).isoformat(timespec="seconds"),
              "host": platform.node(), "cpus": os.cpu_count(), "load_avg": os.getloadavg(),
              "gb": args.gb, "rounds": args.rounds, **rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
