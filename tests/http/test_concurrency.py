"""test_concurrency.py TROUPE_BINARY SOURCE_DIR: troupe serve under 64 concurrent streaming clients.

1. 64 different greedy requests (half chat, half completions, 16 tokens), each first sent alone (not streamed):
   the reference. Then all 64 streamed at once: every stream is framed exactly, ends with [DONE], and its text and
   finish_reason equal the request's alone. The engine must have run more than one at a time.
2. 20 long streams whose clients vanish after 3 chunks, among 20 normal ones: the normal ones are still right, and
   once idle /metrics shows no request running or waiting and troupe_kv_blocks_used 0 (the vanished requests were
   cancelled, not run to their 2000 tokens).
3. A client that stops reading: once the socket buffers are full its request is paused by engine credit (the tokens
   made stop growing while it still runs), and cancelled when the client goes.
"""
import json
import os
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from server import NO_EOG, Checks, Server, args_of  # noqa: E402

binary, model = args_of(sys.argv)
t = Checks()
N_CLIENTS = 64
MAX_TOKENS = 16
TOPICS = ["the sea", "mountains", "a cat", "bread", "rain", "the moon", "trains", "music", "gardens", "winter",
          "bees", "a library", "coffee", "rivers", "chess", "the desert"]


def request_for(i, stream):
    """Request i: even i chat, odd i completion; all different."""
    if i % 2 == 0:
        body = {"messages": [{"role": "user", "content": f"Say something about {TOPICS[i % 16]} in {i // 16 + 1} words."}]}
        path = "/v1/chat/completions"
    else:
        body = {"prompt": f"Item {i}: a short note about {TOPICS[i % 16]}. It"}
        path = "/v1/completions"
    body.update(max_tokens=MAX_TOKENS, temperature=0)
    if stream:
        body.update(stream=True)
    return path, body


def answer_of(i, r):
    c = r.json()["choices"][0]
    return (c["message"]["content"] if i % 2 == 0 else c["text"]), c["finish_reason"]


def stream_answer(i, st):
    finish = [c["choices"][0].get("finish_reason") for c in st.chunks if c.get("choices")]
    return st.text(0, chat=(i % 2 == 0)), (finish[-1] if finish else None)


def run_all(fns):
    """Runs the functions on their own threads, released together; their results in order."""
    results = [None] * len(fns)
    gate = threading.Barrier(len(fns))

    def run(k):
        gate.wait()
        try:
            results[k] = fns[k]()
        except Exception as e:  # noqa: BLE001 (reported per client)
            results[k] = e
    threads = [threading.Thread(target=run, args=(k,)) for k in range(len(fns))]
    for th in threads:
        th.start()
    for th in threads:
        th.join(300)
    return results


with Server(binary, model) as s:
    ref = {}
    with t.section("64 requests alone"):
        for i in range(N_CLIENTS):
            path, body = request_for(i, stream=False)
            r = s.post(path, body)
            if t.check(r.status == 200, f"request {i} alone: {r}"):
                ref[i] = answer_of(i, r)
        t.check(len(set(ref.values())) > N_CLIENTS // 2, "the 64 requests gave nearly all the same text")

    with t.section("64 streams at once"):
        busiest = [0]
        watching = threading.Event()

        def watch():  # the most requests running at once, from /metrics
            while not watching.is_set():
                busiest[0] = max(busiest[0], s.metrics().get("troupe_requests_running", 0))
                time.sleep(0.05)
        watcher = threading.Thread(target=watch)
        watcher.start()
        t0 = time.monotonic()
        streams = run_all([lambda i=i: s.stream(*request_for(i, stream=True)) for i in range(N_CLIENTS)])
        elapsed = time.monotonic() - t0
        watching.set()
        watcher.join()
        bad = []
        for i, st in enumerate(streams):
            if isinstance(st, Exception) or st.status != 200 or st.problem or not st.done:
                bad.append((i, st if isinstance(st, Exception) else (st.status, st.problem, st.done, st.raw[-200:])))
            elif i in ref and stream_answer(i, st) != ref[i]:
                bad.append((i, f"stream {stream_answer(i, st)!r} != alone {ref[i]!r}"))
        t.check(not bad, f"{len(bad)} of 64 concurrent streams wrong, e.g. {bad[:3]}")
        t.check(busiest[0] > 1, f"/metrics never showed more than {busiest[0]} request running at once")
        print(f"  64 streams in {elapsed:.1f} s; at most {busiest[0]:.0f} running at once")

    with t.section("20 clients vanish mid-stream"):
        def vanishing(i):
            path, body = request_for(i, stream=True)
            body.update(max_tokens=2000, logit_bias=NO_EOG)
            return s.stream(path, body, stop_after_chunks=3)
        fns = [lambda i=i: vanishing(i) for i in range(20)] + \
              [lambda i=i: s.stream(*request_for(i, stream=True)) for i in range(20, 40)]
        results = run_all(fns)
        early = [r for r in results[:20] if isinstance(r, Exception) or r.status != 200 or len(r.data) < 3]
        t.check(not early, f"vanishing clients did not get 3 chunks first: {early[:3]}")
        bad = [(i, r) for i, r in zip(range(20, 40), results[20:])
               if isinstance(r, Exception) or not r.done or (i in ref and stream_answer(i, r) != ref[i])]
        t.check(not bad, f"streams beside the vanishing ones were wrong: {bad[:3]}")
        m = s.wait_idle(timeout=10)
        t.check(m.get("troupe_kv_blocks_used") == 0 and m.get("troupe_requests_running") == 0
                and m.get("troupe_requests_waiting") == 0,
                "10 s after 20 clients vanished: running {}, waiting {}, KV blocks used {}".format(
                    m.get("troupe_requests_running"), m.get("troupe_requests_waiting"), m.get("troupe_kv_blocks_used")))
        path, body = request_for(1, stream=False)
        r = s.post(path, body)
        t.check(r.status == 200 and answer_of(1, r) == ref.get(1), f"a request afterwards: {r}")
    with t.section("a reader that stops reading"):
        # 8 choices with 20 top logprobs each make ~10 KB of SSE per step: the socket buffers fill in seconds, then
        # engine credit must pause the request (the contract: never buffered without bound) long before its
        # 8 x 1000 tokens are made
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((s.host, s.port))
        body = json.dumps({"prompt": "Story:", "max_tokens": 1000, "n": 8, "logprobs": 20, "stream": True,
                           "logit_bias": NO_EOG}).encode()
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        start = s.metrics().get("troupe_generation_tokens_total", 0)
        deadline = time.monotonic() + 60
        last, still_since, m = None, time.monotonic(), {}
        while time.monotonic() < deadline:
            m = s.metrics()
            made = m.get("troupe_generation_tokens_total", 0) - start
            if made != last:
                last, still_since = made, time.monotonic()
            elif time.monotonic() - still_since > 2 and made > 0:
                break
            time.sleep(0.25)
        t.check(0 < last < 8000 and m.get("troupe_requests_running", 0) > 0,
                f"a stalled reader's request was not paused: {last} of 8000 tokens made, still growing "
                f"{time.monotonic() - still_since < 2}, running {m.get('troupe_requests_running')}")
        print(f"  a stalled reader: paused after {last:.0f} tokens")
        sock.close()
        m = s.wait_idle(timeout=10)
        t.check(m.get("troupe_kv_blocks_used") == 0 and m.get("troupe_requests_running") == 0,
                f"the stalled reader's request was not cancelled when it went: {m.get('troupe_kv_blocks_used')} blocks")
    t.check(s.stop() == 0, "SIGTERM did not exit 0")

sys.exit(t.summary())
