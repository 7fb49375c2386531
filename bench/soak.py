#!/usr/bin/env python3
"""soak.py: a soak test of `troupe serve` (issue 8; not in CI, it runs for minutes). Stdlib only.

Starts `troupe serve` on loopback and, for --minutes (default 10):
  - --clients (64) threads each send one request after another, streaming unless said otherwise:
      greedy      one of the reference requests (temperature 0, or a fixed seed), the answer read to the end: its
                  text and finish_reason must equal the same request's answer computed alone before the load;
                  some of them non-streamed
      disconnect  a reference request whose client goes away after 1..8 chunks (what came must be a prefix of the
                  reference), or right after sending it, before any answer
      sampled     temperature 0.9 without a seed: well-formed, finish_reason and usage consistent with max_tokens
      hostile     malformed JSON, a body over the limit (413), headers over the limit (431), a parameter out of
                  range (400 naming it), invalid UTF-8 and lone surrogates, deep nesting, random bytes, slowloris
                  (408 after the read timeout): each must get its error, in the OpenAI error shape, or a close
    A 429 (the server is run with fewer running + waiting slots than clients) must carry Retry-After and the error
    shape; the client waits that long and goes on.
  - --idle (1000) connections that send nothing are held open: one the server closes (its idle timeout) is opened
    again at once, so that many are open all along.
  - every 5 s: the server's VmRSS, threads and open descriptors (/proc/PID) and /metrics (KV blocks, requests).
Then: every client stopped, the idle connections closed, the server must come back to no request running or
waiting and troupe_kv_blocks_used 0, answer /health 200 and a reference request right, hold no more descriptors
than before the load, and exit 0 on SIGTERM. Memory must be flat after warm-up (the first --warmup seconds): the
server's anonymous RSS (RssAnon: heap, KV cache, stacks; VmRSS also counts the mmap'ed model's pages, which come and
go with other processes' needs) at most --rss-slack above its value at the end of warm-up, during the load and idle
after it.

    bench/soak.py --binary build/troupe                     # 10 minutes, 64 clients, 1000 idle connections
    bench/soak.py --minutes 1 --clients 8 --idle 100        # a quick look
    bench/soak.py --json soak.json                          # the figures and the samples

Exit status 0 when every check held; every failure is printed with "FAIL:". docs/hardening.md has the results.
"""
import argparse
import json
import os
import random
import resource
import selectors
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "http"))
from server import MODEL_ID, Checks, Response, Server, error_shape, http_stream, read_responses  # noqa: E402

CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"
TOPICS = ["the sea", "mountains", "a cat", "bread", "rain", "the moon", "trains", "music", "gardens", "winter",
          "bees", "a library", "coffee", "rivers", "chess", "the desert"]
MB = 1 << 20


def reference_requests():
    """The requests whose answers must not depend on the load: (path, body) without "stream"."""
    out = []
    for i in range(24):
        topic = TOPICS[i % len(TOPICS)]
        if i % 2 == 0:
            path, body = CHAT, {"messages": [{"role": "user", "content": f"Tell me about {topic} in {i // 2 + 2} words."}]}
        else:
            path, body = COMPLETIONS, {"prompt": f"Note {i}: {topic} is"}
        body["max_tokens"] = [8, 16, 32, 48, 64][i % 5]
        if i % 6 == 5:
            body.update(temperature=0.8, seed=1000 + i)  # seeded sampling: the same seed, the same answer
        else:
            body["temperature"] = 0
        if i % 7 == 3:
            body["stop"] = ["."]
        out.append((path, body))
    return out


def answer_of_stream(path, st):
    """(text, finish_reason) of a stream, and a problem with its shape or None."""
    chat = path == CHAT
    if st.problem:
        return None, st.problem
    if not st.done:
        return None, f"no [DONE]: {st.raw[-200:]!r}"
    ids = {c.get("id") for c in st.chunks}
    obj = {c.get("object") for c in st.chunks}
    want = "chat.completion.chunk" if chat else "text_completion"
    if len(ids) != 1 or obj != {want} or any(c.get("model") != MODEL_ID for c in st.chunks):
        return None, f"chunks disagree on id/object/model: {ids} {obj}"
    finish = [ch.get("finish_reason") for c in st.chunks for ch in c.get("choices") or [] if ch.get("finish_reason")]
    if len(finish) != 1:
        return None, f"{len(finish)} finish reasons"
    return (st.text(0, chat=chat), finish[0]), None


def answer_of_body(path, r):
    try:
        c = r.json()["choices"][0]
        return (c["message"]["content"] if path == CHAT else c["text"]), c["finish_reason"]
    except (ValueError, KeyError, IndexError, TypeError):
        return None


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.counts = {}

    def add(self, key, n=1):
        with self.lock:
            self.counts[key] = self.counts.get(key, 0) + n


class Soak:
    def __init__(self, args, server):
        self.args, self.s = args, server
        self.t = Checks()
        self.tally = Tally()
        self.refs = reference_requests()
        self.answers = {}
        self.stop = threading.Event()
        self.samples = []  # (seconds since the load began, rss MiB, threads, fds, kv used, running, waiting)
        self.t0 = 0.0
        self.idle_open = 0
        self.idle_closed_by_server = 0
        self.idle_lifetimes = []
        self.idle_bytes = 0

    # ---- checks of one exchange ----

    def fail(self, what):
        self.tally.add("errors")
        self.t.check(False, what)

    def refused(self, status, headers, body, what):
        """A 429: Retry-After and the error shape. Returns seconds to wait, or None when it was not a good 429."""
        problem = error_shape(Response(status, headers, body), 429)
        retry = headers.get("retry-after", "")
        if problem or not retry.isdigit():
            self.fail(f"{what}: a 429 without Retry-After or the error shape: {problem} {headers}")
            return None
        self.tally.add("refused")
        return min(int(retry), 2)

    def greedy(self, rng):
        k = rng.randrange(len(self.refs))
        path, body = self.refs[k]
        body = dict(body, stream_options={"include_usage": True})
        if rng.random() < 0.15:  # not streamed
            r = self.s.try_post(path, body, timeout=self.args.timeout)
            if r.status == 429:
                return self.refused(r.status, r.headers, r.body, f"ref {k}")
            got = answer_of_body(path, r) if r.status == 200 else None
            if got != self.answers[k]:
                return self.fail(f"ref {k} not streamed: {got!r} != {self.answers[k]!r} ({r})")
            self.tally.add("ok")
            return None
        try:
            st = http_stream(self.s.host, self.s.port, path, dict(body, stream=True), timeout=self.args.timeout)
        except OSError as e:
            return self.fail(f"ref {k}: lost: {type(e).__name__}: {e}")
        if st.status == 429:
            return self.refused(st.status, st.headers, st.raw, f"ref {k}")
        got, problem = answer_of_stream(path, st) if st.status == 200 else (None, f"status {st.status} {st.raw[:200]!r}")
        if problem or got != self.answers[k]:
            return self.fail(f"ref {k} streamed: {problem or f'{got!r} != {self.answers[k]!r}'}")
        self.tally.add("ok")
        return None

    def disconnect(self, rng):
        k = rng.randrange(len(self.refs))
        path, body = self.refs[k]
        body = dict(body, stream=True)
        if rng.random() < 0.25:  # gone before any answer
            with socket.create_connection((self.s.host, self.s.port), timeout=10) as sock:
                data = json.dumps(body).encode()
                sock.sendall(b"POST %s HTTP/1.1\r\nHost: soak\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (path.encode(), len(data), data))
            self.tally.add("disconnected")
            return None
        n = rng.randrange(1, 9)
        try:
            st = http_stream(self.s.host, self.s.port, path, body, timeout=self.args.timeout, stop_after_chunks=n)
        except OSError as e:
            return self.fail(f"ref {k} (to be cut after {n} chunks): lost: {type(e).__name__}: {e}")
        if st.status == 429:
            return self.refused(st.status, st.headers, st.raw, f"ref {k}")
        text = st.text(0, chat=path == CHAT) if st.status == 200 and not st.problem else None
        if text is None or not self.answers[k][0].startswith(text):
            return self.fail(f"ref {k} cut after {n} chunks: {text!r} is not a prefix of {self.answers[k][0]!r} "
                             f"({st.status} {st.problem})")
        self.tally.add("disconnected")
        return None

    def sampled(self, rng):
        path = rng.choice([CHAT, COMPLETIONS])
        topic = rng.choice(TOPICS)
        body = {"messages": [{"role": "user", "content": f"Write about {topic}."}]} if path == CHAT else \
            {"prompt": f"A story about {topic}:"}
        max_tokens = rng.choice([4, 16, 40, 80])
        body.update(max_tokens=max_tokens, temperature=0.9, top_p=0.95, stream=True,
                    stream_options={"include_usage": True})
        try:
            st = http_stream(self.s.host, self.s.port, path, body, timeout=self.args.timeout)
        except OSError as e:
            return self.fail(f"sampled: lost: {type(e).__name__}: {e}")
        if st.status == 429:
            return self.refused(st.status, st.headers, st.raw, "sampled")
        got, problem = answer_of_stream(path, st) if st.status == 200 else (None, f"status {st.status}")
        usage = [c["usage"] for c in st.chunks if c.get("usage")]
        if not problem:
            n = usage[-1].get("completion_tokens") if len(usage) == 1 else None
            if n is None or not 0 < n <= max_tokens or (got[1] == "length") != (n == max_tokens):
                problem = f"usage {usage} against max_tokens {max_tokens}, finish {got[1]}"
        if problem:
            return self.fail(f"sampled: {problem}")
        self.tally.add("ok")
        return None

    def hostile(self, rng):
        kind = rng.choice(["json", "json", "range", "utf8", "nesting", "body", "headers", "garbage", "slowloris"])
        s = self.s
        if kind in ("json", "range", "utf8", "nesting"):
            param = None
            if kind == "json":
                body = rng.choice([b"{", b'{"prompt": "hi",}', b"nul", b"[]", b'{"prompt": "hi"} x', b"",
                                   b'{"messages": [{"role": "user", "content": "hi"}]'])
            elif kind == "range":
                param, value = rng.choice([("max_tokens", -1), ("temperature", -0.5), ("top_p", 1.5), ("n", 1000),
                                           ("max_tokens", 10 ** 9), ("logit_bias", {"999999": 1})])
                body = json.dumps({"prompt": "hello", param: value}).encode()
            elif kind == "utf8":
                body = rng.choice([b'{"prompt": "bad \xff\xfe bytes"}', b'{"prompt": "lone \\ud800 surrogate"}'])
            else:
                body = b'{"prompt": ' + b"[" * 5000 + b"]" * 5000 + b"}"
            r = s.try_post(COMPLETIONS, body, timeout=60)
            problem = error_shape(r, 400, "invalid_request_error", param)
            if problem:
                return self.fail(f"hostile {kind} {body[:60]!r}: {problem}")
        elif kind == "body":  # over --max-body-bytes (1 MiB): 413, whether sent or only announced
            if rng.random() < 0.5:
                r = s.try_post(COMPLETIONS, b'{"prompt": "' + b"a" * MB + b'"}', timeout=60)
            else:
                rs = read_responses(self.exchange(b"POST /v1/completions HTTP/1.1\r\nHost: soak\r\nContent-Type: "
                                                  b"application/json\r\nContent-Length: 1000000000000\r\n\r\n", 60))
                r = rs[0] if rs else Response(0, {}, b"no response")
            if error_shape(r, 413) is not None:
                return self.fail(f"hostile body: {error_shape(r, 413)}")
        elif kind == "headers":  # over --max-header-bytes (16 KiB): 431
            try:
                r = s.request("GET", "/v1/models", headers={"X-Big": "h" * 20000}, timeout=60)
            except OSError as e:
                r = Response(0, {}, str(e).encode())
            if error_shape(r, 431) is not None:
                return self.fail(f"hostile headers: {error_shape(r, 431)}")
        elif kind == "garbage":
            got = self.exchange(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 4096))), 60, half_close=True)
            if got and not got.startswith(b"HTTP/1.1 4"):
                return self.fail(f"hostile garbage: answered {got[:200]!r}")
        else:  # slowloris: a header line a byte every 0.5 s; the read timeout answers 408 and closes
            got, took = b"", None
            with socket.create_connection((s.host, s.port), timeout=10) as sock:
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: soak\r\n")
                t0 = time.monotonic()
                feed = b"X-Slow: " + b"z" * 200
                for i in range(int((self.args.read_timeout + 20) / 0.5)):
                    try:
                        sock.settimeout(0.5)
                        chunk = sock.recv(65536)
                        if not chunk:
                            took = time.monotonic() - t0
                            break
                        got += chunk
                    except socket.timeout:
                        try:
                            sock.send(feed[i % len(feed):i % len(feed) + 1])
                        except OSError:
                            took = time.monotonic() - t0
                            break
                    except OSError:
                        took = time.monotonic() - t0
                        break
            rs = read_responses(got)
            if took is None or not rs or rs[0].status != 408:
                return self.fail(f"hostile slowloris: closed after {took} s, {got[:200]!r}")
        self.tally.add("hostile answered")
        return None

    def exchange(self, data, timeout, half_close=False):
        """Sends data (ignoring a reset from a server that stopped reading), reads until the close."""
        got = b""
        with socket.create_connection((self.s.host, self.s.port), timeout=timeout) as sock:
            try:
                sock.sendall(data)
                if half_close:
                    sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            try:
                while True:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    got += chunk
            except OSError:
                pass
        return got

    # ---- the load ----

    def client(self, seed):
        rng = random.Random(seed)
        while not self.stop.is_set():
            x = rng.random()
            try:
                if x < 0.60:
                    wait = self.greedy(rng)
                elif x < 0.75:
                    wait = self.disconnect(rng)
                elif x < 0.85:
                    wait = self.sampled(rng)
                else:
                    wait = self.hostile(rng)
            except Exception as e:  # noqa: BLE001  anything unexpected is a finding, not the end of the run
                self.fail(f"client {seed}: {type(e).__name__}: {e}")
                wait = 1
            if wait:
                self.stop.wait(wait)

    def idle_holder(self):
        sel = selectors.DefaultSelector()
        opened = {}

        def open_one():
            try:
                sock = socket.create_connection((self.s.host, self.s.port), timeout=10)
            except OSError as e:
                self.fail(f"idle connection refused: {e}")
                return
            sock.setblocking(False)
            opened[sock] = time.monotonic()
            sel.register(sock, selectors.EVENT_READ)

        for _ in range(self.args.idle):
            open_one()
        self.idle_open = len(opened)
        while not self.stop.is_set():
            for key, _ in sel.select(timeout=0.5):
                sock = key.fileobj
                try:
                    chunk = sock.recv(4096)
                except OSError:
                    chunk = b""
                if chunk:  # a connection that sent nothing gets nothing but the close
                    self.idle_bytes += len(chunk)
                    continue
                self.idle_closed_by_server += 1
                self.idle_lifetimes.append(time.monotonic() - opened.pop(sock))
                sel.unregister(sock)
                sock.close()
                open_one()
        for sock in list(opened):
            sel.unregister(sock)
            sock.close()

    def sampler(self):
        while True:
            self.samples.append(self.sample())
            if self.stop.wait(5):
                return

    def sample(self):
        pid = self.s.proc.pid
        with open(f"/proc/{pid}/status") as f:
            status = dict(line.split(":", 1) for line in f if ":" in line)
        rss, anon, file = (int(status[k].split()[0]) / 1024 for k in ("VmRSS", "RssAnon", "RssFile"))
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        try:
            m = self.s.metrics()
        except OSError:
            m = {}
        return (round(time.monotonic() - self.t0, 1), round(rss, 1), int(status["Threads"]), fds,
                m.get("troupe_kv_blocks_used"), m.get("troupe_requests_running"), m.get("troupe_requests_waiting"),
                round(anon, 1), round(file, 1))

    def run(self):
        a, s, t = self.args, self.s, self.t
        print(f"soak: troupe serve pid {s.proc.pid} on {s.url()}; references alone", flush=True)
        for k, (path, body) in enumerate(self.refs):
            st = s.stream(path, dict(body, stream=True), timeout=a.timeout)
            got, problem = answer_of_stream(path, st) if st.status == 200 else (None, f"status {st.status}")
            if not t.check(problem is None, f"reference {k} alone: {problem}"):
                return 1
            self.answers[k] = got
        fds_before = self.sample()[3]
        self.t0 = time.monotonic()
        threads = [threading.Thread(target=self.sampler), threading.Thread(target=self.idle_holder)]
        threads += [threading.Thread(target=self.client, args=(a.seed * 1000 + i,)) for i in range(a.clients)]
        for th in threads:
            th.start()
        print(f"soak: {a.clients} clients, {a.idle} idle connections, {a.minutes} minutes", flush=True)
        end = self.t0 + a.minutes * 60
        while time.monotonic() < end:
            time.sleep(min(30, max(0.1, end - time.monotonic())))
            last = self.samples[-1]
            print(f"  {last[0]:6.0f} s: rss {last[1]} MiB (anon {last[7]}, file {last[8]}), threads {last[2]}, "
                  f"fds {last[3]}, kv used {last[4]}, running {last[5]}, waiting {last[6]}; {dict(sorted(self.tally.counts.items()))}", flush=True)
        self.stop.set()
        for th in threads:
            th.join()
        load_s = time.monotonic() - self.t0
        print(f"soak: load stopped after {load_s:.0f} s; waiting for the server to be idle", flush=True)

        m = s.wait_idle(60)
        after = self.sample()
        t.check(m.get("troupe_kv_blocks_used") == 0 and m.get("troupe_requests_running") == 0
                and m.get("troupe_requests_waiting") == 0,
                f"not idle after the load: kv used {m.get('troupe_kv_blocks_used')}, running "
                f"{m.get('troupe_requests_running')}, waiting {m.get('troupe_requests_waiting')}")
        t.check(s.healthy(), "/health is not 200 after the load")
        path, body = self.refs[0]
        st = s.stream(path, dict(body, stream=True), timeout=a.timeout)
        t.check(answer_of_stream(path, st)[0] == self.answers[0], f"reference 0 after the load: {st.raw[-300:]!r}")
        t.check(after[3] <= fds_before, f"the server holds {after[3]} descriptors after the load, {fds_before} before")
        t.check(self.idle_bytes == 0, f"idle connections got {self.idle_bytes} bytes")
        if self.idle_lifetimes:
            t.check(max(self.idle_lifetimes) < a.idle_timeout + 30,
                    f"an idle connection lived {max(self.idle_lifetimes):.0f} s (--idle-timeout {a.idle_timeout})")

        # Flat: the anonymous memory (heap, KV cache, stacks). VmRSS also counts the pages of the mmap'ed model file,
        # which the kernel drops and reads back as other processes need memory.
        warm = [x for x in self.samples if x[0] >= a.warmup]
        anon_warm = warm[0][7] if warm else None
        anon_max_after = max(x[7] for x in warm) if warm else None
        if warm:
            t.check(anon_max_after <= anon_warm + a.rss_slack,
                    f"RssAnon grew after warm-up: {anon_warm} -> at most {anon_max_after} MiB (slack {a.rss_slack} MiB)")
            t.check(after[7] <= anon_warm + a.rss_slack,
                    f"RssAnon once idle after the load: {after[7]} MiB, {anon_warm} MiB after warm-up")
        c = self.tally.counts
        figures = {
            "load_seconds": round(load_s), "clients": a.clients, "idle_connections": self.idle_open,
            "ok": c.get("ok", 0), "refused_429": c.get("refused", 0), "disconnected": c.get("disconnected", 0),
            "hostile_answered": c.get("hostile answered", 0), "errors": c.get("errors", 0),
            "idle_closed_by_server": self.idle_closed_by_server,
            "idle_lifetime_s": [round(min(self.idle_lifetimes), 1), round(max(self.idle_lifetimes), 1)]
            if self.idle_lifetimes else None,
            "rss_mib": {"before_load": self.samples[0][1], "after_warmup": warm[0][1] if warm else None,
                        "max_after_warmup": max(x[1] for x in warm) if warm else None,
                        "end_of_load": self.samples[-1][1], "idle_after": after[1]},
            "rss_anon_mib": {"before_load": self.samples[0][7], "after_warmup": anon_warm,
                             "max_after_warmup": anon_max_after, "end_of_load": self.samples[-1][7],
                             "idle_after": after[7]},
            "rss_file_mib": [min(x[8] for x in self.samples), max(x[8] for x in self.samples)],
            "server_fds": {"before": fds_before, "max": max(x[3] for x in self.samples), "after": after[3]},
            "server_threads": [min(x[2] for x in self.samples), max(x[2] for x in self.samples)],
            "kv_blocks_used_end": m.get("troupe_kv_blocks_used"), "kv_blocks_total": m.get("troupe_kv_blocks_total"),
            "generation_tokens": m.get("troupe_generation_tokens_total"),
            "preemptions": m.get("troupe_preemptions_total"), "shard_restarts": m.get("troupe_shard_restarts_total"),
            "responses_by_status": {k.split('"')[1]: int(v) for k, v in m.items()
                                    if k.startswith("troupe_requests_total{")},
        }
        rc = s.stop()
        t.check(rc == 0, f"troupe serve exited {rc} after SIGTERM")
        bad = [line for line in s.log_text().splitlines() if "[error]" in line or "Sanitizer" in line]
        t.check(not bad, f"the server logged errors: {bad[:5]}")
        figures["exit_code"] = rc
        print(json.dumps(figures, indent=1), flush=True)
        if a.json:
            with (sys.stdout if a.json == "-" else open(a.json, "w")) as f:
                json.dump(dict(figures, samples=self.samples,
                               sample_fields=["s", "rss_mib", "threads", "fds", "kv_used", "running", "waiting",
                                              "rss_anon_mib", "rss_file_mib"]), f)
        return t.summary()


def main():
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--binary", default=os.path.join(root, "build", "troupe"))
    p.add_argument("--model", default=os.path.join(root, "models", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    p.add_argument("--minutes", type=float, default=10)
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--idle", type=int, default=1000, help="idle connections held open")
    p.add_argument("--warmup", type=float, default=120, help="seconds of load before RSS must stay flat")
    p.add_argument("--rss-slack", type=float, default=16, help="MiB RssAnon may exceed its value after warm-up")
    p.add_argument("--timeout", type=float, default=600, help="seconds a request may take")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", help="write the figures and samples here (- for stdout)")
    p.add_argument("--idle-timeout", type=int, default=60)
    p.add_argument("--read-timeout", type=int, default=30)
    p.add_argument("--server-args", default="--max-running 40 --max-waiting 16 --ctx-size 1024 --kv-blocks 112",
                   help="more troupe serve arguments (default: fewer slots than clients, so that some get 429, and "
                        "a KV pool that runs dry, so that sequences are preempted)")
    a = p.parse_args()
    # The idle connections, the clients and the server's side of them: the server inherits the limit.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * (a.idle + a.clients) + 256
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard) if hard != resource.RLIM_INFINITY else need, hard))
    server_args = ["--idle-timeout", str(a.idle_timeout), "--read-timeout", str(a.read_timeout)] + a.server_args.split()
    with Server(os.path.abspath(a.binary), os.path.abspath(a.model), server_args) as s:
        return Soak(a, s).run()


if __name__ == "__main__":
    sys.exit(main())
