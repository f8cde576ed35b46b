"""Shared helpers for the benchmarks: test data, an S3 endpoint (moto), per-process
peak RSS, tables. Nothing here is part of the platform."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
DATA_DIR = BENCH_DIR / ".data"
RESULTS_DIR = BENCH_DIR / "results"
# shared/ sits beside the repository (on developers' machines and in CI).
GEN_DATA = Path(os.environ.get("BENCH_GEN_DATA", Path(__file__).resolve().parents[2] / "shared" / "bench" / "gen_data.py"))

AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
}

if str(REPO) not in sys.path:  # `python benchmarks/x.py` from anywhere, without installing
    sys.path.insert(0, str(REPO))


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- test data ------------------------------------------------------------------------


def generated_jsonl(target_mb: float, seed: int = 42, bad_rate: float | None = None) -> tuple[Path, dict]:
    """A JSONL file of about `target_mb` MB from gen_data.py, generated once and cached
    in benchmarks/.data/ (reused while its .meta.json matches the arguments)."""
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    tag = f"{target_mb:g}".replace(".", "p")
    extra = [] if bad_rate is None else ["--bad-rate", str(bad_rate)]
    suffix = "" if bad_rate is None else f"_bad{bad_rate:g}"
    path = DATA_DIR / f"jsonl_{tag}mb_seed{seed}{suffix}.jsonl"
    meta_path = Path(f"{path}.meta.json")
    meta = _cached_meta(path, meta_path, seed)
    if meta is not None and bad_rate is not None and meta.get("bad_rate") != bad_rate:
        meta = None
    if meta is not None:
        log(f"using cached {path.name} ({meta['bytes'] / 1e6:.0f} MB, {meta['counts']['rows']} rows)")
        return path, meta
    partial = path.with_name(path.name + ".partial")
    log(f"generating {path.name} (~{target_mb:g} MB) with {GEN_DATA} ...")
    t = time.perf_counter()
    subprocess.run([sys.executable, str(GEN_DATA), "--target-mb", str(target_mb), "--format", "jsonl",
                    "--seed", str(seed), "--out", str(partial), *extra], check=True, stderr=subprocess.DEVNULL)
    meta = json.loads(Path(f"{partial}.meta.json").read_text())
    meta["path"] = str(path)
    meta["target_mb"] = target_mb
    os.replace(partial, path)
    meta_path.write_text(json.dumps(meta, indent=1))
    Path(f"{partial}.meta.json").unlink()
    log(f"generated {path.name} in {time.perf_counter() - t:.0f} s")
    return path, meta


def _cached_meta(path: Path, meta_path: Path, seed: int) -> dict | None:
    if not path.exists() or not meta_path.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except ValueError:
        return None
    if meta.get("format") != "jsonl" or meta.get("seed") != seed or meta.get("bytes") != path.stat().st_size:
        return None
    return meta


# -- catalogs ---------------------------------------------------------------------------


@contextmanager
def catalog_url(backend: str, pg_admin: str, tmp: Path):
    """A fresh, empty catalog database for `backend` (SQLite under `tmp`, or a new
    PostgreSQL database through `pg_admin`); a PostgreSQL one is dropped afterwards."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp}/catalog.db"
        return
    import psycopg2

    name = f"dp_bench_{uuid.uuid4().hex[:12]}"

    def admin(sql: str, *params) -> None:
        conn = psycopg2.connect(pg_admin)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params or None)
        finally:
            conn.close()

    admin(f'CREATE DATABASE "{name}"')
    try:
        yield f"{pg_admin.rsplit('/', 1)[0]}/{name}"
    finally:
        admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
              "AND pid <> pg_backend_pid()", name)
        admin(f'DROP DATABASE IF EXISTS "{name}"')


def per_backend(backends: str, run: Callable[[str], dict]) -> list[dict]:
    """`run(backend)` for each of a comma-separated list; a failure is reported as a failed
    result (with its traceback on stderr), and the other backends still run."""
    results = []
    for backend in [b for b in backends.split(",") if b]:
        try:
            results.append(run(backend))
        except Exception as err:  # noqa: BLE001 - reported as a failed run
            import traceback

            traceback.print_exc()
            results.append({"backend": backend, "ok": False, "error": f"{type(err).__name__}: {err}"})
    return results


# -- S3 endpoint ------------------------------------------------------------------------


class MotoServer:
    """moto's S3 server on a free loopback port, in this process (a thread)."""

    def __init__(self):
        from moto.server import ThreadedMotoServer

        import logging

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"

    def env(self) -> dict[str, str]:
        return {**AWS_ENV, "AWS_ENDPOINT_URL": self.endpoint}

    def reset(self) -> None:
        import requests

        requests.post(f"{self.endpoint}/moto-api/reset", timeout=60).raise_for_status()

    def stop(self) -> None:
        self._server.stop()


class MotoSubprocess:
    """moto's S3 server in its own process, so it competes with the measured code for
    neither the GIL nor memory accounting."""

    def __init__(self):
        code = (
            "import sys\n"
            "from moto.server import ThreadedMotoServer\n"
            "import logging; logging.getLogger('werkzeug').setLevel(logging.ERROR)\n"
            "s = ThreadedMotoServer(ip_address='127.0.0.1', port=0, verbose=False)\n"
            "s.start()\n"
            "print('%s %d' % s.get_host_and_port(), flush=True)\n"
            "sys.stdin.read()\n"
            "s.stop()\n"
        )
        self._proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      text=True)
        host, port = self._proc.stdout.readline().split()
        self.endpoint = f"http://{host}:{port}"

    def env(self) -> dict[str, str]:
        return {**AWS_ENV, "AWS_ENDPOINT_URL": self.endpoint}

    def stop(self) -> None:
        try:
            self._proc.stdin.close()
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


# -- measuring a child process -----------------------------------------------------------
#
# Peak RSS is the child's own VmHWM (/proc/self/status), which the child reports when
# it is done. ru_maxrss from os.wait4 is NOT used as the measure: on Linux the child
# starts as a (v)fork of this process, and exec() folds the parent's high-water RSS
# into the child's maxrss, so a parent holding 1 GB in the moto server would make
# every child look 1 GB big. It is kept in the results only as `wait4_maxrss_mb`.


def own_peak_rss_mb() -> float:
    """This process's peak resident set size (VmHWM), in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass
class ChildRun:
    returncode: int
    wait4_maxrss_mb: float  # includes this process's RSS at spawn time: see above
    wall_seconds: float  # process lifetime, start-up included


def run_measured(cmd: list[str], env: dict[str, str] | None = None) -> ChildRun:
    """Run `cmd` as a child; exit code, wait4's maxrss and lifetime."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})})
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: tell Popen
    return ChildRun(proc.returncode, usage.ru_maxrss / 1024, time.perf_counter() - t)  # KiB on Linux


def best_child_run(script: str, name: str, paths: list[Path], repeat: int, env: dict[str, str]) -> dict:
    """Run `script --child NAME --out-json FILE PATHS...` `repeat` times, each in its own
    process; the fastest run's JSON (its last line) with MB/s over the inputs' bytes."""
    best = None
    for _ in range(repeat):
        out_file = Path(tempfile.mkstemp(prefix=f"bench-{name}-out-")[1])
        cmd = [sys.executable, script, "--child", name, "--out-json", str(out_file), *map(str, paths)]
        run = run_measured(cmd, env=env)
        text = out_file.read_text().strip()
        out_file.unlink()
        if run.returncode != 0 or not text:
            return {"contender": name, "ok": False, "returncode": run.returncode}
        result = json.loads(text.splitlines()[-1])
        if best is None or result["seconds"] < best["seconds"]:
            best = result
    size = sum(p.stat().st_size for p in paths)
    best.update(contender=name, ok=True, input_mb=size / 1e6, mb_per_s=size / 1e6 / best["seconds"], repeats=repeat)
    log(f"{name}: {best['mb_per_s']:.0f} MB/s, peak RSS {best['peak_rss_mb']:.0f} MB")
    return best


# -- reporting ---------------------------------------------------------------------------


def machine_info() -> dict:
    import pyarrow

    info = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "pyarrow": pyarrow.__version__}
    try:
        with open("/proc/meminfo") as f:
            info["mem_total_gb"] = round(int(f.readline().split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return info


def table(headers: list[str], rows: list[list]) -> str:
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for n, r in enumerate(cells):
        lines.append("  ".join(c.rjust(w) if n and _numeric(c) else c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def _numeric(text: str) -> bool:
    return text.replace(",", "").replace(".", "").replace("x", "").replace("-", "").isdigit()


def finish(report: dict, targets: list[dict], out: str) -> int:
    """Print the targets table and the verdict, write the JSON; the exit code says it."""
    print()
    print(table(["target", "measured", "ok"],
                [[t["target"], f"{t['value']:.0f}" if isinstance(t["value"], float) else t["value"],
                  "yes" if t["ok"] else "MISSED"] for t in targets]))
    print("\nALL TARGETS MET" if report["ok"] else "\nTARGET(S) MISSED")
    write_json(Path(out), report)
    print(f"\nresults: {out}")
    return 0 if report["ok"] else 1


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
