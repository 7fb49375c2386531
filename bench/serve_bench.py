#!/usr/bin/env python3
"""serve_bench.py: a load generator for any OpenAI-compatible server (troupe serve, vLLM, llama-server, ...), in the
spirit of `vllm bench serve`. Stdlib only.

It sends streaming /v1/completions (or /v1/chat/completions) requests at a fixed concurrency or at a Poisson arrival
rate (gamma-distributed gaps with --burstiness other than 1, as vLLM's) and reports, per run:
  request throughput (req/s), output tokens/s (and its peak over any 1 s window), total tokens/s,
  TTFT (time to first token), TPOT (time per output token after the first), ITL (gap between streamed chunks),
  e2e latency: mean, median (p50), standard deviation, p99 and any --metric-percentiles (ms),
  goodput: requests per second that met every SLO given with --goodput.
Output tokens are the server's usage.completion_tokens (stream_options.include_usage), else the number of content
chunks. The JSON output uses vLLM's key names (mean_ttft_ms, median_tpot_ms, p99_itl_ms, std_e2el_ms, ...).

Usage:
  troupe serve --port 8080 &
  bench/serve_bench.py --base-url http://127.0.0.1:8080 --concurrency 1,4,16,64 --num-prompts 64 --output-len 64
  bench/serve_bench.py --base-url http://127.0.0.1:8080 --request-rate 2,8,inf --num-prompts 100 \\
      --goodput ttft:500 tpot:50 --json results.json --markdown results.md
  bench/serve_bench.py --endpoint chat --api-key KEY --dataset prompts.jsonl   # lines {"prompt": "..."}
  bench/serve_bench.py --extra-body '{"logit_bias": {"2": -100}}'               # e.g. keep generating to max

  bench/serve_bench.py --concurrency 16 --ignore-eos --label troupe --save-detailed --json -   # one run, per request

Options (see --help): --endpoint completions|chat, --model (default: the first of /v1/models), --input-len (words
per synthetic prompt), --output-len (max_tokens), --ignore-eos (sent as vLLM and llama-server take it),
--temperature (default 0), --seed (prompts, arrivals), --burstiness, --max-concurrency (cap under --request-rate),
--metric-percentiles 50,90,99, --warmup N, --timeout, --label (names the server in the output), --save-detailed.
"""
import argparse
import http.client
import json
import math
import os
import queue
import random
import sys
import threading
import time
import urllib.parse

WORDS = ("time year people way day man thing woman life child world school state family student group country "
         "problem hand part place case week company system program question work government number night point "
         "home water room mother area money story fact month lot right study book eye job word business issue side "
         "kind head house service friend father power hour game line end member law car city community name").split()


# ---- one request ----

class Result:
    def __init__(self):
        self.ok = False
        self.error = ""
        self.prompt_tokens = 0
        self.output_tokens = 0
        self.ttft = 0.0       # s
        self.itl = []         # s, between content chunks
        self.e2e = 0.0        # s
        self.tpot = None      # s; None with fewer than 2 output tokens
        self.start = 0.0      # s, perf_counter when sent
        self.chunk_times = []  # s, perf_counter of each content chunk


def send(args, url, prompt):
    """One streaming request; its timings."""
    r = Result()
    if args.endpoint == "chat":
        path = "/v1/chat/completions"
        body = {"messages": [{"role": "user", "content": prompt}]}
    else:
        path = "/v1/completions"
        body = {"prompt": prompt}
    body.update(model=args.model, max_tokens=args.output_len, temperature=args.temperature, stream=True,
                stream_options={"include_usage": True})
    if args.ignore_eos:
        body["ignore_eos"] = True
    body.update(args.extra)
    headers = {"Content-Type": "application/json"}
    if args.api_key:
        headers["Authorization"] = "Bearer " + args.api_key
    conn_cls = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
    conn = conn_cls(url.hostname, url.port or (443 if url.scheme == "https" else 80), timeout=args.timeout)
    t0 = time.perf_counter()
    r.start = t0
    last = None
    chunks = 0
    try:
        conn.request("POST", url.path.rstrip("/") + path, body=json.dumps(body), headers=headers)
        resp = conn.getresponse()
        if resp.status != 200:
            r.error = f"HTTP {resp.status}: {resp.read()[:200]!r}"
            return r
        for line in resp:
            if not line.startswith(b"data: "):
                continue
            data = line[6:].strip()
            if data == b"[DONE]":
                r.ok = True
                break
            chunk = json.loads(data)
            if "error" in chunk:
                r.error = "stream error: " + json.dumps(chunk["error"])[:200]
                break
            if chunk.get("usage"):
                r.prompt_tokens = chunk["usage"].get("prompt_tokens", 0)
                r.output_tokens = chunk["usage"].get("completion_tokens", 0)
            for choice in chunk.get("choices") or []:
                text = choice.get("text") if "text" in choice else (choice.get("delta") or {}).get("content")
                if not text:
                    continue
                now = time.perf_counter()
                if last is None:
                    r.ttft = now - t0
                else:
                    r.itl.append(now - last)
                last = now
                r.chunk_times.append(now)
                chunks += 1
        if not r.ok and not r.error:
            r.error = "the stream ended without [DONE]"
    except (OSError, http.client.HTTPException, ValueError) as e:
        r.error = f"{type(e).__name__}: {e}"
    finally:
        conn.close()
    r.e2e = time.perf_counter() - t0
    if not r.output_tokens:
        r.output_tokens = chunks
    if r.ok and r.output_tokens > 1:
        r.tpot = (r.e2e - r.ttft) / (r.output_tokens - 1)
    return r


# ---- a run: many requests at a concurrency or a rate ----

def run_concurrency(args, url, prompts, concurrency):
    work = queue.Queue()
    for p in prompts:
        work.put(p)
    results, lock = [], threading.Lock()

    def worker():
        while True:
            try:
                p = work.get_nowait()
            except queue.Empty:
                return
            res = send(args, url, p)
            with lock:
                results.append(res)
    threads = [threading.Thread(target=worker) for _ in range(min(concurrency, len(prompts)))]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return results, time.perf_counter() - t0


def run_rate(args, url, prompts, rate, rng):
    """Arrivals at `rate` requests/s (inf: all at once), at most --max-concurrency in flight. The gaps are
    gamma-distributed with shape --burstiness and mean 1/rate: exponential (a Poisson process) at burstiness 1,
    burstier below 1, more even above, as vLLM's bench serve draws them."""
    results, lock = [], threading.Lock()
    slots = threading.Semaphore(args.max_concurrency or len(prompts))

    def one(p):
        try:
            res = send(args, url, p)
            with lock:
                results.append(res)
        finally:
            slots.release()
    threads = []
    t0 = time.perf_counter()
    for p in prompts:
        slots.acquire()
        th = threading.Thread(target=one, args=(p,))
        th.start()
        threads.append(th)
        if math.isfinite(rate):
            time.sleep(rng.gammavariate(args.burstiness, 1.0 / (rate * args.burstiness)))
    for th in threads:
        th.join()
    return results, time.perf_counter() - t0


def percentile(values, q):
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return None
    v = sorted(values)
    k = (len(v) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def peak_output_throughput(ok):
    """The most output chunks that arrived in any 1-second window (chunks are tokens for servers that stream one
    token per chunk, as troupe serve, vLLM and llama-server do)."""
    times = sorted(t for r in ok for t in r.chunk_times)
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while t - times[lo] > 1.0:
            lo += 1
        best = max(best, hi - lo + 1)
    return float(best)


def summarize(results, duration, slo, percentiles=(99,)):
    ok = [r for r in results if r.ok]
    out = {"completed": len(ok), "failed": len(results) - len(ok), "duration_s": duration,
           "errors": sorted({r.error for r in results if not r.ok})[:5]}
    n_out = sum(r.output_tokens for r in ok)
    n_in = sum(r.prompt_tokens for r in ok)
    out.update(total_input_tokens=n_in, total_output_tokens=n_out,
               request_throughput=len(ok) / duration if duration else 0,
               output_throughput=n_out / duration if duration else 0,
               total_token_throughput=(n_in + n_out) / duration if duration else 0,
               peak_output_throughput=peak_output_throughput(ok))
    series = {"ttft": [r.ttft for r in ok], "tpot": [r.tpot for r in ok if r.tpot is not None],
              "itl": [x for r in ok for x in r.itl], "e2el": [r.e2e for r in ok]}
    for name, values in series.items():
        ms = [x * 1000 for x in values]
        mean = sum(ms) / len(ms) if ms else None
        out[f"mean_{name}_ms"] = mean
        out[f"median_{name}_ms"] = percentile(ms, 50)
        out[f"std_{name}_ms"] = math.sqrt(sum((x - mean) ** 2 for x in ms) / len(ms)) if ms else None
        for q in sorted(set(percentiles) | {99}):
            out[f"p{q:g}_{name}_ms"] = percentile(ms, q)
    if slo:
        def good(r):
            got = {"ttft": r.ttft, "tpot": r.tpot or 0.0, "e2el": r.e2e}
            return all(got[k] * 1000 <= limit for k, limit in slo.items())
        n_good = sum(1 for r in ok if good(r))
        out["goodput"] = n_good / duration if duration else 0
        out["good_requests"] = n_good
    return out


def details(results):
    """Per request, as vLLM's --save-detailed writes them (seconds)."""
    return {"ttfts": [r.ttft for r in results], "itls": [r.itl for r in results], "e2els": [r.e2e for r in results],
            "input_lens": [r.prompt_tokens for r in results], "output_lens": [r.output_tokens for r in results],
            "errors": [r.error for r in results]}


# ---- output ----

COLUMNS = [("load", "{}"), ("completed", "{}"), ("failed", "{}"), ("request_throughput", "{:.2f}"),
           ("output_throughput", "{:.1f}"), ("mean_ttft_ms", "{:.1f}"), ("median_ttft_ms", "{:.1f}"),
           ("p99_ttft_ms", "{:.1f}"), ("mean_tpot_ms", "{:.1f}"), ("median_tpot_ms", "{:.1f}"),
           ("p99_tpot_ms", "{:.1f}"), ("mean_itl_ms", "{:.1f}"), ("median_itl_ms", "{:.1f}"), ("p99_itl_ms", "{:.1f}"),
           ("mean_e2el_ms", "{:.1f}"), ("median_e2el_ms", "{:.1f}"), ("p99_e2el_ms", "{:.1f}"), ("goodput", "{:.2f}")]
HEADINGS = {"request_throughput": "req/s", "output_throughput": "out tok/s", "goodput": "goodput req/s"}


def markdown(runs, meta):
    label = f"{meta['label']}: " if meta.get("label") else ""
    lines = [f"serve_bench: {label}{meta['endpoint']} on {meta['base_url']} ({meta['model']}), {meta['num_prompts']} "
             f"prompts of ~{meta['input_len']} words, max_tokens {meta['output_len']}", ""]
    cols = [c for c in COLUMNS if c[0] != "goodput" or any("goodput" in r for r in runs)]
    lines.append("| " + " | ".join(HEADINGS.get(k, k.replace("_ms", " ms").replace("_", " ")) for k, _ in cols) + " |")
    lines.append("|" + "---|" * len(cols))
    for r in runs:
        cells = [("-" if r.get(k) is None else fmt.format(r[k])) for k, fmt in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--base-url", default="http://127.0.0.1:8080", help="server root, without /v1")
    p.add_argument("--endpoint", choices=["completions", "chat"], default="completions")
    p.add_argument("--model", default=None, help="model name to send; default: the first id of /v1/models")
    p.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", ""), help="Bearer key (env OPENAI_API_KEY)")
    p.add_argument("--num-prompts", type=int, default=64)
    p.add_argument("--concurrency", default=None, help="comma-separated concurrencies, one run each (e.g. 1,4,16,64)")
    p.add_argument("--request-rate", default=None, help="comma-separated Poisson rates in req/s, 'inf' = all at once")
    p.add_argument("--max-concurrency", type=int, default=0, help="cap on requests in flight under --request-rate")
    p.add_argument("--burstiness", type=float, default=1.0,
                   help="shape of the gamma-distributed gaps under --request-rate: 1 = Poisson, <1 burstier")
    p.add_argument("--input-len", type=int, default=32, help="words per synthetic prompt")
    p.add_argument("--output-len", type=int, default=64, help="max_tokens per request")
    p.add_argument("--ignore-eos", action="store_true",
                   help="send \"ignore_eos\": true (vLLM, llama-server) so requests run to --output-len")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--dataset", default=None, help="JSONL with a \"prompt\" per line instead of synthetic prompts")
    p.add_argument("--extra-body", default="{}", help="JSON merged into every request body")
    p.add_argument("--goodput", nargs="*", default=[], metavar="METRIC:MS",
                   help="SLOs for goodput: ttft:MS tpot:MS e2el:MS")
    p.add_argument("--metric-percentiles", default="99",
                   help="comma-separated percentiles reported besides the median (p99 always): e.g. 50,90,99")
    p.add_argument("--warmup", type=int, default=1, help="requests sent (one at a time) before measuring")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=600, help="seconds per request")
    p.add_argument("--label", default="", help="a name for the server under test, kept in the output")
    p.add_argument("--save-detailed", action="store_true", help="add per-request timings to the JSON output")
    p.add_argument("--json", default=None, help="write the results as JSON to this file ('-': stdout)")
    p.add_argument("--markdown", default=None, help="write the markdown table to this file (default: stdout)")
    args = p.parse_args(argv)
    if not args.concurrency and not args.request_rate:
        args.concurrency = "1,4,16,64"
    args.extra = json.loads(args.extra_body)
    if args.burstiness <= 0:
        p.error("--burstiness must be above 0")
    try:
        args.percentiles = [float(q) for q in args.metric_percentiles.split(",") if q.strip()]
    except ValueError:
        p.error(f"--metric-percentiles {args.metric_percentiles!r}: expected numbers, e.g. 50,90,99")
    if any(not 0 < q < 100 for q in args.percentiles):
        p.error("--metric-percentiles: each must be above 0 and below 100")
    args.slo = {}
    for item in args.goodput:
        name, _, ms = item.partition(":")
        if name not in ("ttft", "tpot", "e2el") or not ms:
            p.error(f"--goodput {item!r}: expected ttft:MS, tpot:MS or e2el:MS")
        args.slo[name] = float(ms)
    return args


def main(argv):
    args = parse_args(argv)
    url = urllib.parse.urlparse(args.base_url)
    rng = random.Random(args.seed)
    if args.model is None:
        conn = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=30)
        h = {"Authorization": "Bearer " + args.api_key} if args.api_key else {}
        conn.request("GET", url.path.rstrip("/") + "/v1/models", headers=h)
        resp = conn.getresponse()
        if resp.status != 200:
            sys.exit(f"serve_bench: GET /v1/models: HTTP {resp.status}")
        args.model = json.loads(resp.read())["data"][0]["id"]
    if args.dataset:
        with open(args.dataset, encoding="utf-8") as f:
            pool = [json.loads(line)["prompt"] for line in f if line.strip()]
        prompts = [pool[i % len(pool)] for i in range(args.num_prompts)]
    else:
        prompts = [" ".join(rng.choice(WORDS) for _ in range(args.input_len)) for _ in range(args.num_prompts)]
    for i in range(args.warmup):
        w = send(args, url, prompts[i % len(prompts)])
        if not w.ok:
            sys.exit(f"serve_bench: the warm-up request failed: {w.error}")

    runs = []
    loads = [("concurrency", int(c)) for c in args.concurrency.split(",")] if args.concurrency else \
        [("rate", float(r)) for r in args.request_rate.split(",")]
    for kind, value in loads:
        if kind == "concurrency":
            results, duration = run_concurrency(args, url, prompts, value)
            label = f"concurrency {value}"
        else:
            results, duration = run_rate(args, url, prompts, value, rng)
            label = f"rate {value:g}/s"
        summary = dict(load=label, **summarize(results, duration, args.slo, args.percentiles))
        if kind == "concurrency":
            summary["max_concurrency"] = value
        else:
            summary.update(request_rate=value, burstiness=args.burstiness, max_concurrency=args.max_concurrency or None)
        if args.save_detailed:
            summary["detailed"] = details(results)
        runs.append(summary)
        print(f"serve_bench: {label}: {summary['completed']} done, {summary['failed']} failed in {duration:.1f} s",
              file=sys.stderr)
    meta = {"label": args.label, "base_url": args.base_url, "endpoint": args.endpoint, "model": args.model,
            "num_prompts": args.num_prompts, "input_len": args.input_len, "output_len": args.output_len,
            "ignore_eos": args.ignore_eos, "temperature": args.temperature, "slo_ms": args.slo,
            "metric_percentiles": args.percentiles, "extra_body": args.extra,
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    table = markdown(runs, meta)
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as f:
            f.write(table)
    else:
        sys.stdout.write(table)
    if args.json:
        doc = json.dumps({"meta": meta, "runs": runs}, indent=2)
        if args.json == "-":
            print(doc)
        else:
            with open(args.json, "w", encoding="utf-8") as f:
                f.write(doc + "\n")
    return 0 if all(r["failed"] == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
