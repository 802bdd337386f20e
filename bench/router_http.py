"""`hap router` over real HTTP, driven by wrk, next to the same requests scored in-process.

Starts a private Redis, trains both tiers briefly (learner.trainer.OnlineTrainer on simulated
traffic) and publishes them with feature_store.model_store.ModelStore, writes item statistics and
user histories in the feature store's layout, starts `hap router --policy damr` and drives it
with wrk (Debian's package; installed with apt-get when missing, as root) with 8 rotating bodies
per case: 1000/2000/5000 candidates, concurrency 1 and 4, ids only and with inline statistics.
The router re-reads each item row once a minute, at its slot's phase of the minute
(router.features.next_read_s), so the refreshes of a case's rows fall inside its runs. The same
bodies are then scored in-process (decode + score + encode, no HTTP).
With ``--compare DIR`` (a checkout of another revision, e.g. ``git archive HEAD~1``), that
revision's router is measured the same way in the same run and ratios are printed.

Each case is measured ``--repeat`` times (default 3) per router, the routers alternating run by
run, so one lucky run cannot pass a bar: the summary gives each case's median and worst p99. Each
run records the machine's load: the 1-minute load average, and the cores busy during it split into
the router's, Redis's, wrk's and everything else's ("others": what no bench controls).

    python bench/router_http.py [--duration 10] [--sizes 1000,2000,5000] [--repeat 3] [--compare /tmp/old]

Ends with one JSON line: {"http": [{"router", "candidates", "concurrency", "bodies", "repetition", "rps",
"p50_ms", "p90_ms", "p99_ms", "p99_over_p50", "errors", "load1", "cores": {"busy", "router", "redis",
"wrk", "others"}, "router_cpu_ms_per_request"}], "summary": [{"router", "candidates", "bodies", "concurrency",
"repetitions",
"p50_ms_median", "p99_ms_median", "p99_ms_worst", "p99_over_p50_worst", "load1_max", "others_cores_max",
"in_process_p50_ms", "in_process_p99_ms"}], "in_process": [{..., "stage_cpu_ms_median"}], "ratios": [{"other", ...,
"rps_other_over_this", "p99_other_over_this"}], "traces": [...], "machine": {...}}. ``--workers 1,2`` adds
`hap router --workers 2` ("this-w2") to the routers measured side by side.

``--trace`` starts this tree's routers with ``--server-timing`` and, after each case's wrk runs, sends
the case's bodies one at a time for ``--duration`` s: "traces" gives per case the mean of each stage
(router.timing), of the request thread's CPU, the other threads' CPU ("others": the feature refresh),
the collector's time and "outside" (the client's latency beyond the router's span) over the slowest 1%
of requests and over the middle ones, to tell where a tail comes from.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import collections  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import orjson  # noqa: E402
import redis  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deploy.settings import Settings, settings_env  # noqa: E402
from deploy.stack.process import free_port  # noqa: E402
from deploy.stack.services import Redis  # noqa: E402
from feature_store.item_stats import WINDOWS, ItemStats  # noqa: E402
from feature_store.model_store import ModelStore, TierForm  # noqa: E402
from feature_store.user_features import user_features_key  # noqa: E402
from feature_store.user_items import CLICKED, SHOWN, UserItems  # noqa: E402

WRK_SCRIPT = """
local bodies, i = {}, 0
init = function(args)
  for _, path in ipairs(args) do local f = io.open(path, "rb"); bodies[#bodies + 1] = f:read("*a"); f:close() end
  wrk.method = "POST"; wrk.headers["Content-Type"] = "application/json"
end
request = function() i = i % #bodies + 1; return wrk.format(nil, "/v1/prerank", nil, bodies[i]) end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRK {"requests": %d, "seconds": %f, "p50_us": %d, "p90_us": %d, "p99_us": %d, '
    .. '"errors": %d}\\n', summary.requests, summary.duration / 1e6, latency:percentile(50),
    latency:percentile(90), latency:percentile(99), e.connect + e.read + e.write + e.status + e.timeout))
end
"""


def bench_router_module():  # noqa: ANN201 - bench/router.py, whose name the router package shadows
    spec = importlib.util.spec_from_file_location("bench_router", ROOT / "bench" / "router.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def ensure_wrk() -> str:
    """Path of wrk, installed from Debian's packages when missing (needs root)."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() != 0:
        sys.exit("wrk is missing: run `apt-get install -y wrk` as root (or this bench as root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, check=True, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], env=env, check=True, capture_output=True)
    return shutil.which("wrk") or sys.exit("wrk did not install")


def write_features(client: redis.Redis, key_prefix: str, world, stats_of, n_items: int,  # noqa: ANN001
                   n_users: int) -> None:
    """Item statistics (one closed bucket per window, the layout of feature_store.item_stats), histories and
    each user's shown / clicked items (feature_store.user_items)."""
    stats, now_ms = ItemStats(client, key_prefix), int(time.time() * 1000)
    pipe = client.pipeline(transaction=False)
    for i in range(n_items):
        s = stats_of(world, i)
        fields = {f"{prefix}:{kind}:{now_ms // length - 1}": int(s[f"{kind}_1d"])
                  for prefix, length, _ in WINDOWS.values() for kind in ("exp", "clk")}
        pipe.hset(stats.key(world.item_id(i)), mapping=fields)
        if i % 2000 == 1999:
            pipe.execute()
    rng = np.random.default_rng(7)
    events = []
    for u in range(n_users):
        history = [world.item_id(int(i)) for i in rng.choice(n_items, 30, replace=False)]
        pipe.set(user_features_key(f"u{u}", key_prefix), orjson.dumps({"history": history}))
        # what the streams remember of the user (feature_store.user_items): 300 items shown, 30 of them clicked
        shown = [world.item_id(int(i)) for i in rng.choice(n_items, 300, replace=False)]
        at = now_ms - rng.integers(1, 86_400_000, 300)
        events += [(f"u{u}", item, SHOWN, int(t)) for item, t in zip(shown, at, strict=True)]
        events += [(f"u{u}", item, CLICKED, int(t) + 1000) for item, t in zip(shown[:30], at[:30], strict=True)]
    pipe.execute()
    UserItems(client, key_prefix).record(events)


def make_bodies(world, stats_of, n: int, inline: bool, count: int = 8) -> list[dict]:  # noqa: ANN001
    rng = np.random.default_rng(n + inline)
    out = []
    for r in range(count):
        items = rng.choice(len(world.items), n, replace=False)
        cands = [{"item_id": world.item_id(int(i)), "content_type": "video"} for i in items]
        if inline:
            for c, i in zip(cands, items, strict=True):
                s = stats_of(world, int(i))
                c["features"] = {"exp_1d": s["exp_1d"], "clk_1d": s["clk_1d"], "ctr_1d": s["clk_1d"] / s["exp_1d"]}
        out.append({"request_id": f"b{n}-{r}", "user_id": f"u{int(rng.integers(500))}", "k": 100,
                    "candidates": cands})
    return out


def start_router(tree: Path, env: dict[str, str], port: int, extra: tuple[str, ...] = ()) -> subprocess.Popen:
    code = "import sys; from deploy.cli import main; sys.exit(main())"
    proc = subprocess.Popen([sys.executable, "-c", code, "router", "--policy", "damr", "--port", str(port), *extra],
                            cwd=tree, env={**env, "PYTHONPATH": str(tree)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as resp:
                if resp.status == 200:
                    return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    sys.exit(f"router from {tree} not ready in 120 s")


def run_wrk(wrk: str, script: Path, port: int, files: list[Path], concurrency: int, seconds: float) -> dict:
    command = [wrk, "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--timeout", "10s", "-s", str(script),
               f"http://127.0.0.1:{port}", "--", *map(str, files)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    line = next(x for x in done.stdout.splitlines() if x.startswith("WRK "))
    return json.loads(line[4:])


def top_frames(raw: Path, count: int = 15) -> list[tuple[str, float, float]]:
    """``(frame, self %, inclusive %)`` of the busiest frames in a py-spy raw (collapsed) profile."""
    own: dict[str, int] = {}
    total: dict[str, int] = {}
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames, n = stack.split(";"), int(n)
        samples += n
        own[frames[-1]] = own.get(frames[-1], 0) + n
        for frame in set(frames):
            total[frame] = total.get(frame, 0) + n
    best = sorted(own, key=own.get, reverse=True)[:count]
    return [(f, round(100 * own[f] / samples, 1), round(100 * total[f] / samples, 1)) for f in best]


Routers = dict[str, tuple[Path, tuple[str, ...]]]
TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    """CPU seconds of ``pid`` and its live child processes (a multi-worker router's workers); 0 once gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) * TICK_S + sum(process_cpu_s(int(c)) for c in children)


def machine_cpu_s() -> tuple[float, float]:
    """``(busy, all)`` CPU seconds of the machine since boot, summed over its cores (``/proc/stat``)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    idle = values[3] + values[4]  # idle, iowait
    return (sum(values) - idle) * TICK_S, sum(values) * TICK_S


class Load:
    """What ran on the machine during one wrk run: the 1-minute load average at its start and the
    cores busy over it, split into the router's, Redis's, wrk's and everybody else's."""

    def __init__(self, router_pid: int, redis_pid: int) -> None:
        self.pids = {"router": router_pid, "redis": redis_pid}
        self.load1 = os.getloadavg()[0]
        self.machine = machine_cpu_s()
        self.own = {name: process_cpu_s(pid) for name, pid in self.pids.items()}
        children = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk, once waited for
        self.wrk = children.ru_utime + children.ru_stime
        self.wall = time.monotonic()

    def since(self) -> dict:
        seconds = time.monotonic() - self.wall
        busy, _ = machine_cpu_s()
        cores = {"busy": (busy - self.machine[0]) / seconds}
        cores |= {name: (process_cpu_s(pid) - self.own[name]) / seconds for name, pid in self.pids.items()}
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        cores["wrk"] = (children.ru_utime + children.ru_stime - self.wrk) / seconds
        cores["others"] = max(0.0, cores["busy"] - cores["router"] - cores["redis"] - cores["wrk"])
        return {"load1": round(self.load1, 2), "cores": {k: round(v, 2) for k, v in cores.items()}}


def trace_requests(port: int, files: list[Path], seconds: float) -> dict:
    """Send the case's bodies one at a time for ``seconds`` to a router started with ``--server-timing``;
    per request, the client's latency, the router's stages and CPU (router.timing) and "outside": the
    client's latency beyond the router's span (HTTP, the event loop, the client). Returns the mean of each
    field over the slowest 1% of requests and over the middle ones (45th to 55th percentile), and the share
    of the slowest 1% during which a collection ran or other threads took more than 0.5 ms of CPU."""
    import http.client

    from router.timing import parse_server_timing

    bodies = [f.read_bytes() for f in files]
    conn = http.client.HTTPConnection("127.0.0.1", port)
    samples = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        t0 = time.perf_counter()
        conn.request("POST", "/v1/prerank", body=bodies[len(samples) % len(bodies)],
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        client_ms = (time.perf_counter() - t0) * 1000
        stages = parse_server_timing(resp.getheader("Server-Timing") or "")
        samples.append({"client": client_ms, **stages, "outside": client_ms - stages.get("total", 0.0)})
    conn.close()
    samples.sort(key=lambda x: x["client"])
    n = len(samples)
    slow, middle = samples[n - max(1, n // 100):], samples[int(n * 0.45):max(int(n * 0.55), int(n * 0.45) + 1)]

    def mean(group: list[dict]) -> dict:
        return {k: round(float(np.mean([x.get(k, 0.0) for x in group])), 3) for k in samples[0]}

    return {"requests": n, "p50_ms": round(samples[n // 2]["client"], 3),
            "p99_ms": round(samples[min(n - 1, int(n * 0.99))]["client"], 3), "slowest_1pct": mean(slow),
            "middle": mean(middle), "slowest_with_gc": round(sum(x.get("gc", 0) > 0 for x in slow) / len(slow), 2),
            "slowest_with_others_over_0_5ms": round(sum(x.get("others", 0) > 0.5 for x in slow) / len(slow), 2)}


def measure_http(routers: Routers, env: dict, wrk: str, script: Path, cases: dict, redis_pid: int,  # noqa: ANN001
                 args, traces: list[dict]) -> list[dict]:  # noqa: ANN001
    """Every router started at once; each case run ``args.repeat`` times on each in turn, so a noisy
    minute hits all of them. With ``args.trace``, each case is then traced on this tree's routers
    (:func:`trace_requests`) into ``traces``."""
    ports = {name: free_port() for name in routers}
    traced = ("--server-timing",) if args.trace else ()
    procs = {name: start_router(tree, env, ports[name], extra + (traced if tree == ROOT else ()))
             for name, (tree, extra) in routers.items()}
    time.sleep(3)  # every worker of a multi-worker router up, not only the first to answer
    spies = {}
    if args.py_spy:
        for name, proc in procs.items():
            out = args.py_spy.with_suffix(f".{name}.txt")
            spies[name] = subprocess.Popen([str(Path(sys.executable).with_name("py-spy")), "record", "--pid",
                                            str(proc.pid), "--rate", "250", "--format", "raw", "--nonblocking",
                                            "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1)
    rows = []
    try:
        for (n, kind), files in cases.items():
            for name in routers:
                run_wrk(wrk, script, ports[name], files, 1, 2)  # warm: every body seen, features read, vectors cached
            for concurrency in args.concurrency:
                for repetition in range(1, args.repeat + 1):
                    for name in routers:
                        load = Load(procs[name].pid, redis_pid)
                        out = run_wrk(wrk, script, ports[name], files, concurrency, args.duration)
                        row = {"router": name, "candidates": n, "bodies": kind, "concurrency": concurrency,
                               "repetition": repetition, "rps": round(out["requests"] / out["seconds"], 1),
                               "p50_ms": out["p50_us"] / 1000, "p90_ms": out["p90_us"] / 1000,
                               "p99_ms": out["p99_us"] / 1000,
                               "p99_over_p50": round(out["p99_us"] / max(out["p50_us"], 1), 2),
                               "errors": out["errors"]} | load.since()
                        # the router's CPU per request: its cores over its requests/s (a spinning thread shows here)
                        cpu = 1000 * row["cores"]["router"] / max(row["rps"], 0.1)
                        row["router_cpu_ms_per_request"] = round(cpu, 2)
                        rows.append(row)
                        print(json.dumps(row), file=sys.stderr)
            if args.trace:
                for name in (name for name in routers if routers[name][0] == ROOT):
                    load = Load(procs[name].pid, redis_pid)
                    trace = {"router": name, "candidates": n, "bodies": kind} | trace_requests(ports[name], files,
                                                                                             args.duration)
                    traces.append(trace | load.since())
                    print(json.dumps({"trace": traces[-1]}), file=sys.stderr)
    finally:
        for name, spy in spies.items():
            spy.send_signal(2)
            spy.wait(60)
            for frame, own, inclusive in top_frames(args.py_spy.with_suffix(f".{name}.txt")):
                print(f"py-spy {name}: self {own:5.1f}%  total {inclusive:5.1f}%  {frame}", file=sys.stderr)
        for proc in procs.values():
            proc.terminate()
            proc.wait(30)
    return rows


def measure_in_process(client: redis.Redis, key_prefix: str, bodies: dict, reps: int) -> list[dict]:
    """The request path without HTTP: the body decoded as the router decodes it, scored, the answer encoded;
    each row also gives the median thread CPU of each stage (router.timing.STAGES)."""
    from router.features import FeatureCache
    from router.holder import build
    from router.prerank import score
    from router.request import decode_request
    from router.timing import RequestTiming

    model = build(ModelStore(client, prefix=key_prefix).load())
    features = FeatureCache(client, prefix=key_prefix)
    rows = []
    for (n, kind), group in bodies.items():
        raws = [orjson.dumps(body) for body in group]
        for raw in raws:  # warm, as the HTTP runs are
            score(model, features, decode_request(raw, max_candidates=5000))
        latencies, cpu = [], collections.defaultdict(list)
        for r in range(reps):
            t0 = time.perf_counter()
            timing = RequestTiming()
            req = decode_request(raws[r % len(raws)], max_candidates=5000)
            timing.mark("decode")
            orjson.dumps(score(model, features, req, timing))
            timing.mark("encode")
            latencies.append((time.perf_counter() - t0) * 1000)
            for stage, seconds in timing.stages_cpu.items():
                cpu[stage.removesuffix("-cpu")].append(seconds * 1000)
        p50, p90, p99 = np.percentile(latencies, [50, 90, 99])
        rows.append({"candidates": n, "bodies": kind, "p50_ms": round(float(p50), 3), "p90_ms": round(float(p90), 3),
                     "p99_ms": round(float(p99), 3), "rps": round(1000 / float(np.mean(latencies)), 1),
                     "stage_cpu_ms_median": {stage: round(float(np.median(v)), 3) for stage, v in cpu.items()}})
        print(json.dumps({"in_process": rows[-1]}), file=sys.stderr)
    features.stop()
    return rows


def summarize(http: list[dict], in_process: list[dict]) -> list[dict]:
    """Per router and case over its repetitions: the median and the worst p99, the worst p99/p50 and the
    most load any repetition saw, next to the in-process figures of the same bodies."""
    keys = ("router", "candidates", "bodies", "concurrency")
    out = []
    for case in dict.fromkeys(tuple(r[k] for k in keys) for r in http):
        runs = [r for r in http if tuple(r[k] for k in keys) == case]
        local = next(r for r in in_process if (r["candidates"], r["bodies"]) == case[1:3])
        out.append(dict(zip(keys, case, strict=True)) | {
            "repetitions": len(runs), "p50_ms_median": float(np.median([r["p50_ms"] for r in runs])),
            "p99_ms_median": float(np.median([r["p99_ms"] for r in runs])),
            "p99_ms_worst": max(r["p99_ms"] for r in runs),
            "p99_over_p50_worst": max(r["p99_over_p50"] for r in runs),
            "load1_max": max(r["load1"] for r in runs), "others_cores_max": max(r["cores"]["others"] for r in runs),
            "in_process_p50_ms": local["p50_ms"], "in_process_p99_ms": local["p99_ms"]})
    print(f"{'router':8} {'case':>18} {'c':>2} {'reps':>4} {'p50 med':>8} {'p99 med':>8} {'p99 worst':>9} "
          f"{'p99/p50 worst':>13} {'load1 max':>9} {'others max':>10} {'in-proc p50/p99':>16}", file=sys.stderr)
    for r in out:
        print(f"{r['router']:8} {str(r['candidates']) + ' ' + r['bodies']:>18} {r['concurrency']:>2} "
              f"{r['repetitions']:>4} {r['p50_ms_median']:8.2f} {r['p99_ms_median']:8.2f} {r['p99_ms_worst']:9.2f} "
              f"{r['p99_over_p50_worst']:13.2f} {r['load1_max']:9.2f} {r['others_cores_max']:10.2f} "
              f"{r['in_process_p50_ms']:7.2f} / {r['in_process_p99_ms']:6.2f}", file=sys.stderr)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run")
    parser.add_argument("--sizes", default="1000,2000,5000")
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4])
    parser.add_argument("--train-groups", type=int, default=200)
    parser.add_argument("--compare", type=Path, help="another checkout whose router is measured the same way")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each case per router (median and worst p99)")
    parser.add_argument("--in-process-reps", type=int, default=200)
    parser.add_argument("--workers", type=lambda s: [int(x) for x in s.split(",")], default=[1],
                        help="also measure `hap router --workers N` for each N > 1 here (e.g. 1,2)")
    parser.add_argument("--py-spy", type=Path, help="profile each router with py-spy into this path (.NAME.txt)")
    parser.add_argument("--trace", action="store_true",
                        help="after each case's wrk runs, send its bodies one at a time for --duration s to this "
                             "tree's router and report the stages of the slowest 1%% against the middle ones")
    args = parser.parse_args()
    wrk = ensure_wrk()
    import torch

    torch.set_num_threads(1)
    bench = bench_router_module()
    world = bench.World(seed=3, n_users=500, n_items=20000)
    with tempfile.TemporaryDirectory(prefix="hap-router-http-") as tmp:
        env = {**os.environ, **settings_env(data_dir=tmp, redis_port=free_port())}
        settings = Settings.load(env)
        server = Redis(settings)
        server.start()
        try:
            client = redis.Redis.from_url(server.endpoint())
            print(f"training both tiers on {args.train_groups} simulated groups ...", file=sys.stderr)
            trainer = bench.train(world, args.train_groups)
            version = ModelStore(client, prefix=settings.redis_prefix).publish(
                {name: TierForm(*tier.export()) for name, tier in trainer.tiers().items()},
                trained_until_event_ts_ms=int(time.time() * 1000), trained_until_finalized_ts_ms=1, samples_seen=1)
            write_features(client, settings.redis_prefix, world, bench.stats_of, len(world.items), len(world.users))
            bodies, cases = {}, {}
            for n in (int(x) for x in args.sizes.split(",")):
                for kind in ("ids", "inline"):
                    bodies[n, kind] = make_bodies(world, bench.stats_of, n, kind == "inline")
                    cases[n, kind] = []
                    for r, body in enumerate(bodies[n, kind]):
                        path = Path(tmp) / f"body-{n}-{kind}-{r}.json"
                        path.write_bytes(orjson.dumps(body))
                        cases[n, kind].append(path)
            script = Path(tmp) / "bodies.lua"
            script.write_text(WRK_SCRIPT)
            router_env = {k: v for k, v in env.items() if not k.endswith("_NUM_THREADS")}
            router_env |= settings_env(redis_url=server.endpoint())
            routers = {"this": (ROOT, ())}
            routers |= {f"this-w{w}": (ROOT, ("--workers", str(w))) for w in args.workers if w > 1}
            routers |= {"compare": (args.compare.resolve(), ())} if args.compare else {}
            traces: list[dict] = []
            http = measure_http(routers, router_env, wrk, script, cases, server.process.pid(), args, traces)
            in_process = measure_in_process(client, settings.redis_prefix, bodies, args.in_process_reps)
        finally:
            server.process.stop()
    ratios, run_of = [], ("candidates", "bodies", "concurrency", "repetition")
    for row in (r for r in http if r["router"] != "this"):
        mine = next(r for r in http if r["router"] == "this" and all(r[k] == row[k] for k in run_of))
        ratios.append({"other": row["router"]} | {k: row[k] for k in run_of} | {
            "rps_other_over_this": round(row["rps"] / max(mine["rps"], 1e-9), 2),
            "p99_other_over_this": round(row["p99_ms"] / max(mine["p99_ms"], 1e-9), 3)})
    machine = {"cpus": os.cpu_count(), "loadavg_at_end": os.getloadavg(), "version": version}
    for t in traces:
        print(f"trace {t['router']} {t['candidates']} {t['bodies']}: {t['requests']} requests, p50 {t['p50_ms']} "
              f"p99 {t['p99_ms']} ms; slowest 1% with gc {t['slowest_with_gc']}, with others > 0.5 ms "
              f"{t['slowest_with_others_over_0_5ms']}", file=sys.stderr)
        for group in ("slowest_1pct", "middle"):
            print(f"  {group:13} " + " ".join(f"{k} {v:.2f}" for k, v in t[group].items()), file=sys.stderr)
    print(json.dumps({"http": http, "summary": summarize(http, in_process), "in_process": in_process,
                      "ratios": ratios, "traces": traces, "machine": machine}))


if __name__ == "__main__":
    main()
