"""Load test of the web API: concurrent clients against a store of >= 5,000 images while the worker ingests.

Topology (docker-compose's, as real processes): `chroma run` on the store, `imgsearch worker`
watching the library, `imgsearch serve`. The library is derived from the demo library: each of its
593 real images in up to 9 transformed copies (crops, mirror, resizes, turns, colour, JPEG quality),
ingested once with the handout's cheap features (`--pooling avg --crop center --scales 224`); the
build is kept in --workdir and reused by later runs. When the load starts, --incoming more derived
images are copied into the library, so the worker is embedding them while the clients run.

Clients: --clients threads share --requests requests, a seeded mix of POST /api/search (an image
upload; 60 %), POST /api/search/by-id (15 %), GET /api/stats (15 %) and GET /api/images/ID/thumb
(10 %). Reported: throughput, p50/p95/p99 latency per kind and overall, status codes, transport
errors. Exit code 1 if any request got a 5xx or failed.

    python bench/load.py [--size 5000] [--clients 8] [--requests 500] [--out test-artifacts/load.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
LIBRARY = REPO / "examples" / "library"
QUERIES = REPO / "examples" / "queries"
CHEAP = ["--pooling", "avg", "--crop", "center", "--scales", "224"]
MIX = {"search": 60, "by-id": 15, "stats": 15, "thumb": 10}
TRANSFORMS = 9  # derived copies per original at most: 593 x 9 = 5,337


def derive(src: Path, dest: Path, variant: int) -> None:
    """A transformed copy of a real image; ``variant`` picks the transform (and its seed)."""
    from PIL import Image, ImageEnhance, ImageOps

    rng = random.Random(f"{src.name}-{variant}")
    img = Image.open(src).convert("RGB")
    w, h = img.size
    kind = variant % 6
    if kind == 0:
        img = img.crop((rng.randint(0, w // 4), rng.randint(0, h // 4), w - rng.randint(0, w // 4), h))
    elif kind == 1:
        img = ImageOps.mirror(img)
    elif kind == 2:
        img = img.resize((max(8, int(w * rng.uniform(0.4, 0.8))), max(8, int(h * rng.uniform(0.4, 0.8)))))
    elif kind == 3:
        img = img.rotate(rng.uniform(-20, 20), expand=True, fillcolor=(255, 255, 255))
    elif kind == 4:
        img = ImageEnhance.Color(ImageEnhance.Brightness(img).enhance(rng.uniform(0.7, 1.3))).enhance(rng.uniform(0, 2))
    else:
        img = ImageOps.flip(img.crop((0, rng.randint(0, h // 5), w, h)))
    img.save(dest, "JPEG", quality=rng.randint(60, 95))


def build_library(root: Path, size: int, first_variant: int = 0) -> list[Path]:
    """``size`` derived images under root/CATEGORY/, variants from ``first_variant`` on (kept if present)."""
    originals = sorted(LIBRARY.glob("*/*.jpg"))
    made = []
    for variant in range(first_variant, first_variant + TRANSFORMS * 10):
        for src in originals:
            if len(made) >= size:
                return made
            dest = root / src.parent.name / f"{src.stem}_v{variant}.jpg"
            if not dest.exists():
                dest.parent.mkdir(parents=True, exist_ok=True)
                derive(src, dest, variant)
            made.append(dest)
    return made


def cli(*args: str | os.PathLike[str]) -> list[str]:
    return [sys.executable, "-m", "cli.main", *map(str, args)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(what: str, check: Any, timeout: float, procs: list[subprocess.Popen[bytes]]) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            raise SystemExit(f"a process died while waiting for {what}")
        try:
            if check():
                return
        except (OSError, ValueError, KeyError, httpx.HTTPError):
            pass
        time.sleep(0.5)
    raise SystemExit(f"timed out waiting for {what}")


def watch_worker(status: Path, done: threading.Event, seen: Counter[str]) -> None:
    """Sample the worker's status file while the clients run: proof that it was ingesting meanwhile."""
    while not done.wait(0.5):
        try:
            state = json.loads(status.read_text())
        except (OSError, ValueError):
            continue
        seen[f"{state['state']} samples"] += 1
        if state["state"] == "syncing":
            seen["largest queue"] = max(seen["largest queue"], int(state.get("queue") or 0))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))] if ordered else 0.0


def run_clients(url: str, args: argparse.Namespace, queries: list[Path], ids: list[str]) -> list[dict[str, Any]]:
    """Fire ``args.requests`` requests from ``args.clients`` threads; one record per request."""
    import httpx

    plan_rng = random.Random(args.seed)
    kinds = plan_rng.choices(list(MIX), weights=list(MIX.values()), k=args.requests)
    plan = [(kind, plan_rng.choice(queries), plan_rng.choice(ids), plan_rng.choice([1, 5, 10, 20])) for kind in kinds]
    records: list[dict[str, Any]] = []
    lock = threading.Lock()
    next_index = iter(range(len(plan)))

    def client() -> None:
        with httpx.Client(base_url=url, timeout=120) as http:
            while True:
                with lock:
                    i = next(next_index, None)
                if i is None:
                    return
                kind, query, id_, k = plan[i]
                started = time.perf_counter()
                try:
                    if kind == "search":
                        data = {"k": str(k)} | ({"where": "width>=64"} if i % 4 == 0 else {})
                        res = http.post("/api/search", files={"image": (query.name, query.read_bytes())}, data=data)
                    elif kind == "by-id":
                        res = http.post(f"/api/search/by-id/{id_}", data={"k": str(k)})
                    elif kind == "stats":
                        res = http.get("/api/stats")
                    else:
                        res = http.get(f"/api/images/{id_}/thumb")
                    status, error = res.status_code, ""
                except httpx.HTTPError as err:
                    status, error = 0, f"{type(err).__name__}: {err}"
                with lock:
                    records.append(
                        {"kind": kind, "status": status, "seconds": time.perf_counter() - started, "error": error}
                    )

    threads = [threading.Thread(target=client) for _ in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return records


def summarise(records: list[dict[str, Any]], wall: float) -> dict[str, Any]:
    def stats(rows: list[dict[str, Any]]) -> dict[str, Any]:
        lat = [r["seconds"] * 1000 for r in rows]
        return {
            "requests": len(rows),
            "p50_ms": round(percentile(lat, 50), 1),
            "p95_ms": round(percentile(lat, 95), 1),
            "p99_ms": round(percentile(lat, 99), 1),
            "max_ms": round(max(lat, default=0), 1),
        }

    by_kind = {kind: stats([r for r in records if r["kind"] == kind]) for kind in MIX}
    statuses = Counter(str(r["status"]) for r in records)
    return {
        "requests": len(records),
        "seconds": round(wall, 1),
        "throughput_rps": round(len(records) / wall, 2),
        "overall": stats(records),
        "by_kind": by_kind,
        "status_codes": dict(sorted(statuses.items())),
        "5xx": sum(1 for r in records if r["status"] >= 500),
        "transport_errors": sorted({r["error"] for r in records if r["error"]})[:10],
        "failed": sum(1 for r in records if r["status"] == 0),
    }


def markdown(result: dict[str, Any]) -> str:
    rows = [
        "| requests | kind | p50 ms | p95 ms | p99 ms | max ms |",
        "|---|---|---|---|---|---|",
        *(
            f"| {s['requests']} | {kind} | {s['p50_ms']} | {s['p95_ms']} | {s['p99_ms']} | {s['max_ms']} |"
            for kind, s in [*result["load"]["by_kind"].items(), ("all", result["load"]["overall"])]
        ),
    ]
    load, build = result["load"], result["build"]
    return (
        f"{load['requests']} requests from {result['clients']} clients in {load['seconds']} s: "
        f"**{load['throughput_rps']} requests/s**; status codes {load['status_codes']}; "
        f"5xx: **{load['5xx']}**, transport errors: {load['failed']}.\n"
        f"Store: {result['entries_before']} entries at the start, {result['entries_after']} at the end of the "
        f"load; the worker's state, sampled every 0.5 s during the load: {result['worker_states_during_load']}; "
        f"it had stored all {result['incoming']} images copied in as the load began "
        f"{result['incoming_stored_after_s']} s after the start (it writes rows in batches of 256).\n"
        f"Building the store: {build['images']} derived images ingested in {build['seconds']} s "
        f"({build['images_per_second']} img/s, {build['features']}).\n\n" + "\n".join(rows)
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/imgsearch-load"), help="library + store (kept)")
    parser.add_argument("--size", type=int, default=5000, help="images in the store before the load")
    parser.add_argument("--incoming", type=int, default=300, help="images copied in for the worker during the load")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--model", default="efficientnet-lite0")
    parser.add_argument("--out", type=Path, help="write the figures here as JSON (and .md beside it)")
    args = parser.parse_args()

    import httpx

    lib, db = args.workdir / "library", args.workdir / "db"
    build_started = time.monotonic()
    build_library(lib, args.size)
    print(f"library: {args.size} derived images in {lib} ({time.monotonic() - build_started:.0f} s)", file=sys.stderr)
    shutil.rmtree(lib / "incoming", ignore_errors=True)
    ingest = subprocess.run(
        cli("ingest", lib, "--db", db, "--model", args.model, *CHEAP, "--prune", "--json"),
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    if ingest.returncode != 0:
        raise SystemExit(f"ingest failed ({ingest.returncode}): {ingest.stderr[-2000:]}")
    summary = json.loads(ingest.stdout)
    build_file = args.workdir / "build.json"
    if summary["embedded"] or not build_file.exists():  # keep the figures of the run that embedded them
        build_file.write_text(
            json.dumps(
                {
                    "images": summary["added"] + summary["unchanged"],
                    "seconds": summary["seconds"],
                    "images_per_second": summary["images_per_second"],
                    "features": f"{args.model}, {' '.join(CHEAP)}",
                }
            )
        )
    build = json.loads(build_file.read_text())
    print(f"store built: {build}", file=sys.stderr)

    chroma_port, web_port = free_port(), free_port()
    chroma_url, web_url = f"http://127.0.0.1:{chroma_port}", f"http://127.0.0.1:{web_port}"
    status = args.workdir / "worker-status.json"
    store = ["--chroma-url", chroma_url]
    chroma = shutil.which("chroma") or str(Path(sys.executable).with_name("chroma"))
    logs = {name: open(args.workdir / f"{name}.log", "w") for name in ("chroma", "worker", "web")}  # noqa: SIM115
    procs = [
        subprocess.Popen(
            [chroma, "run", "--path", str(db), "--host", "127.0.0.1", "--port", str(chroma_port)],
            stdout=logs["chroma"],
            stderr=subprocess.STDOUT,
        )
    ]
    try:
        wait_until("chroma", lambda: httpx.get(f"{chroma_url}/api/v2/heartbeat").is_success, 60, procs)
        procs.append(
            subprocess.Popen(
                cli("worker", lib, *store, "--interval", "1", "--settle", "1", "--status", status),
                cwd=REPO,
                stdout=logs["worker"],
                stderr=subprocess.STDOUT,
            )
        )
        procs.append(
            subprocess.Popen(
                cli("serve", "--port", web_port, *store, "--status", status),
                cwd=REPO,
                stdout=logs["web"],
                stderr=subprocess.STDOUT,
            )
        )
        wait_until("the web server", lambda: httpx.get(f"{web_url}/readyz").is_success, 120, procs)
        wait_until("the worker's first sync", lambda: json.loads(status.read_text())["last_sync"], 300, procs)
        before = httpx.get(f"{web_url}/api/stats", timeout=60).json()["count"]
        # ids for by-id and thumbnails: the top results of the example queries
        queries = sorted(QUERIES.glob("*.png"))
        ids = []
        for q in queries[:10]:
            res = httpx.post(f"{web_url}/api/search", files={"image": (q.name, q.read_bytes())}, data={"k": "10"})
            ids += [r["id"] for r in res.json()["results"]]
        incoming = build_library(lib / "incoming", args.incoming, first_variant=TRANSFORMS * 10)
        started = time.monotonic()
        watching, seen = threading.Event(), Counter[str]()
        watcher = threading.Thread(target=watch_worker, args=(status, watching, seen))
        watcher.start()
        records = run_clients(web_url, args, queries + incoming[:20], ids)
        wall = time.monotonic() - started
        watching.set()
        watcher.join()
        after = httpx.get(f"{web_url}/api/stats", timeout=60).json()["count"]
        # then how long the worker takes to store all that was copied in (it writes in batches)
        wait_until(
            "the worker to store the incoming images",
            lambda: httpx.get(f"{web_url}/api/stats", timeout=60).json()["count"] >= before + args.incoming,
            900,
            procs,
        )
        stored_after = time.monotonic() - started
    finally:
        for proc in reversed(procs):  # web and worker first: the worker stores its rows in chroma
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                proc.kill()
        for log in logs.values():
            log.close()
        shutil.rmtree(lib / "incoming", ignore_errors=True)  # the next run starts from the same store
    result = {
        "clients": args.clients,
        "worker_states_during_load": dict(seen),
        "incoming_stored_after_s": round(stored_after, 1),
        "entries_before": before,
        "entries_after": after,
        "incoming": args.incoming,
        "build": build,
        "load": summarise(records, wall),
        "cpu_cores": os.cpu_count(),
    }
    print(json.dumps(result, indent=1))
    print(markdown(result))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        args.out.with_suffix(".md").write_text(markdown(result) + "\n")
    return 1 if result["load"]["5xx"] or result["load"]["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
