"""`bench/scale.py --quick`: the 1M bench's every stage at 2k and 5k rows, against real `chroma run`
servers, the real web service and CLI, on vectors derived from a real ingest (issue 16)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import MODEL, REPO, copy_library, run_json


def test_scale_bench_quick(tmp_path: Path) -> None:
    lib = copy_library(tmp_path / "lib", categories=6, per_category=10)
    run_json("ingest", lib, "--db", tmp_path / "base", "--model", MODEL)
    out = tmp_path / "scale.json"
    cmd = [sys.executable, str(REPO / "bench" / "scale.py"), "--quick", "--base-db", str(tmp_path / "base")]
    done = subprocess.run(
        [*cmd, "--work", str(tmp_path / "work"), "--out", str(out), "--md", str(tmp_path / "scale.md")],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert [r["size"] for r in result["sizes"]] == [2000, 5000]
    for r in result["sizes"]:
        assert r["rows"] == r["size"] and r["rows_per_second"] > 0 and r["disk_kb_per_vector"] > 0
        assert r["restart"]["first_query_s"] >= r["restart"]["heartbeat_s"] > 0
        for f, runs in r["store"].items():
            assert [run["clients"] for run in runs] == [1, 4, 16]
            assert all(run["errors"] == 0 and run["p99"] >= run["p50"] > 0 for run in runs)
            # every filter finds its matches: side collections answer the selective ones exactly
            assert r["recall@10"][f] >= 0.99 and r["short"][f] == 0, (r["size"], f, r["recall@10"][f], r["short"][f])
        assert set(r["chroma_filter"]) == {"tenth-percent", "one-percent", "ten-percent", "half"}
        built = r["partitions"]
        assert built["rows"] == r["size"] and built["sides"] >= 3  # 0.1 %, 1 %, 10 % (and the albums)
        assert built["side_rows"] >= r["size"] * 111 // 1000 and built["copied"] == built["side_rows"]
        assert all(w["non_200"] == 0 and w["uploads"] == 5 for w in r["web"].values())
        assert r["cli_search"]["median_s"] > 0
    assert result["resnet_width"]["dim"] == 2048 and result["resnet_width"]["rows"] == 2000
    assert {v["target"] for v in result["verdicts"]} >= {"store p50 unfiltered ms", "recall@10"}
    assert "| target |" in (tmp_path / "scale.md").read_text()
