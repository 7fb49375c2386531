"""test_bench.py TROUPE_BINARY SOURCE_DIR: bench/serve_bench.py against troupe serve, small enough for CI.

Completions at concurrency 1 and 4 and chat at an unbounded Poisson rate: every request completes, the token counts
are exact (special tokens biased away, so each request makes max_tokens), the latency figures are ordered
(p50 <= p99, TTFT <= e2e), goodput counts every request under a loose SLO and none under an impossible one, and the
JSON and markdown outputs are written.
"""
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from server import MODEL_ID, NO_EOG, Checks, Server, args_of  # noqa: E402

binary, model = args_of(sys.argv)
bench = os.path.join(os.path.dirname(os.path.dirname(model)), "bench", "serve_bench.py")
t = Checks()
tmp = tempfile.mkdtemp(prefix="serve-bench-")


def run_bench(server, *args):
    out_json = os.path.join(tmp, "out.json")
    out_md = os.path.join(tmp, "out.md")
    p = subprocess.run([sys.executable, bench, "--base-url", server.url(), "--num-prompts", "8", "--output-len", "8",
                        "--input-len", "12", "--extra-body", json.dumps({"logit_bias": NO_EOG}), "--json", out_json,
                        "--markdown", out_md] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=300, text=True)
    t.check(p.returncode == 0, f"serve_bench {args} exited {p.returncode}: {p.stderr[-500:]}")
    with open(out_json, encoding="utf-8") as f:
        doc = json.load(f)
    with open(out_md, encoding="utf-8") as f:
        md = f.read()
    return doc, md


with Server(binary, model) as s:
    with t.section("completions at concurrency 1 and 4"):
        doc, md = run_bench(s, "--concurrency", "1,4", "--goodput", "e2el:600000")
        runs = doc["runs"]
        t.check(doc["meta"]["model"] == MODEL_ID, f"the model from /v1/models: {doc['meta']}")
        t.check([r["load"] for r in runs] == ["concurrency 1", "concurrency 4"], f"runs: {[r['load'] for r in runs]}")
        for r in runs:
            t.check(r["completed"] == 8 and r["failed"] == 0, f"{r['load']}: {r['completed']} done, {r['errors']}")
            t.check(r["total_output_tokens"] == 64, f"{r['load']}: {r['total_output_tokens']} output tokens, not 8 x 8")
            t.check(r["total_input_tokens"] > 0 and r["output_throughput"] > 0 and r["request_throughput"] > 0,
                    f"{r['load']}: throughputs {r}")
            for m in ("ttft", "tpot", "itl", "e2el"):
                t.check(0 < r[f"median_{m}_ms"] <= r[f"p99_{m}_ms"], f"{r['load']}: {m} p50/p99 {r}")
            t.check(r["mean_ttft_ms"] <= r["mean_e2el_ms"], f"{r['load']}: TTFT above e2e")
            t.check(r["good_requests"] == 8 and abs(r["goodput"] - r["request_throughput"]) < 1e-9,
                    f"{r['load']}: goodput under a 10 minute SLO {r['good_requests']}")
        t.check(md.count("\n| concurrency") == 2 and "out tok/s" in md, f"markdown table:\n{md}")
    with t.section("chat at an unbounded Poisson rate"):
        doc, md = run_bench(s, "--endpoint", "chat", "--request-rate", "inf", "--goodput", "ttft:0.001")
        r = doc["runs"][0]
        t.check(r["load"] == "rate inf/s" and r["completed"] == 8 and r["total_output_tokens"] == 64,
                f"chat run: {r}")
        t.check(r["good_requests"] == 0 and r["goodput"] == 0, f"goodput under a 1 us TTFT SLO: {r['good_requests']}")
    t.check(s.stop() == 0, "SIGTERM did not exit 0")

sys.exit(t.summary())
