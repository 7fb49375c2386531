"""server.py: what the HTTP tests share: start and stop `troupe serve`, talk to it (http.client and raw sockets),
read SSE streams and /metrics exactly, check the error JSON shape, count passes and failures.

Stdlib only (the openai package is imported by the tests that use it). No pytest: each test is a plain script that
prints "N passed, M failed" and exits non-zero on a failure.

    with Server(binary, model, ["--api-key", "k"]) as s:   # starts, parses "listening on http://HOST:PORT",
        r = s.request("GET", "/v1/models")                  # waits for /health 200
        ...
        rc = s.stop()                                       # SIGTERM; the exit code (None: it had to be killed)

The contract these tests hold the server to is docs/http-contract.md.
"""
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import threading
import time
import traceback

MODEL_ID = "SmolLM2-135M-Instruct.Q4_1"  # the default served name: the GGUF file name without .gguf
# SmolLM2's special tokens are ids 0..16 (<|endoftext|>, <|im_start|>, <|im_end|>, <repo_name>, <reponame>, ...);
# biasing them all to -100 keeps a generation going until max_tokens, so a request is long on purpose.
NO_EOG = {str(i): -100 for i in range(17)}
LISTENING = re.compile(r"listening on http://(\[[^\]]+\]|[^\s:/]+):(\d+)")


# ---- counting checks ----

class Checks:
    """check(ok, what) counts a pass or prints FAIL; section(name) turns an exception into one failure."""

    def __init__(self):
        self.passed = 0
        self.failed = 0
        self._lock = threading.Lock()

    def check(self, ok, what):
        with self._lock:
            if ok:
                self.passed += 1
            else:
                self.failed += 1
                print("FAIL:", what, flush=True)
        return bool(ok)

    def section(self, name):
        return _Section(self, name)

    def summary(self):
        print(f"{self.passed} passed, {self.failed} failed", flush=True)
        return 0 if self.failed == 0 and self.passed > 0 else 1


class _Section:
    def __init__(self, checks, name):
        self.checks, self.name, self.t0 = checks, name, 0.0

    def __enter__(self):
        self.t0 = time.monotonic()
        return self

    def __exit__(self, kind, value, tb):
        if kind is not None:
            self.checks.check(False, f"[{self.name}] raised {kind.__name__}: {value}\n"
                                     + "".join(traceback.format_tb(tb)[-3:]))
        print(f"  section {self.name}: {time.monotonic() - self.t0:.1f} s", flush=True)
        return True  # the next section still runs


# ---- HTTP ----

class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers  # lower-case name -> value (repeated headers joined with ", ")
        self.body = body        # bytes

    def json(self):
        return json.loads(self.body)

    def text(self):
        return self.body.decode("utf-8", "replace")

    def __repr__(self):
        return f"<{self.status} {self.body[:300]!r}>"


def _encode(body):
    if body is None or isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode()
    return json.dumps(body).encode()


def _headers_of(resp):
    out = {}
    for k, v in resp.getheaders():
        k = k.lower()
        out[k] = out[k] + ", " + v if k in out else v
    return out


def http_request(host, port, method, path, body=None, headers=None, timeout=120):
    """One request on a fresh connection; the whole body read."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        data = _encode(body)
        h = {"Content-Type": "application/json"} if data is not None else {}
        h.update(headers or {})
        conn.request(method, path, body=data, headers=h)
        resp = conn.getresponse()
        return Response(resp.status, _headers_of(resp), resp.read())
    finally:
        conn.close()


def parse_sse(raw):
    """Splits an SSE body into events, strictly: every event is one line ending in a blank line, either
    `data: PAYLOAD` or a `: comment`. Returns (events, problem): events are ("data", str) / ("comment", str);
    problem is None or says what broke the framing."""
    events = []
    if not raw.endswith(b"\n\n"):
        return events, f"the stream does not end with a blank line: ...{raw[-80:]!r}"
    for block in raw[:-2].split(b"\n\n"):
        if b"\n" in block or b"\r" in block:
            return events, f"an event spans lines or has CR: {block[:200]!r}"
        if block.startswith(b"data: "):
            events.append(("data", block[6:].decode("utf-8")))
        elif block.startswith(b":"):
            events.append(("comment", block[1:].decode("utf-8").strip()))
        else:
            return events, f"an event is neither data nor a comment: {block[:200]!r}"
    return events, None


class Stream:
    """A streaming POST read to the end (or stopped early): status, headers, raw body, events and JSON chunks."""

    def __init__(self, status, headers, raw):
        self.status, self.headers, self.raw = status, headers, raw
        self.events, self.problem = parse_sse(raw) if status == 200 else ([], None)
        self.data = [p for kind, p in self.events if kind == "data"]
        self.done = bool(self.data) and self.data[-1] == "[DONE]"
        self.chunks = []  # JSON chunks before [DONE]
        for p in self.data:
            if p != "[DONE]":
                try:
                    self.chunks.append(json.loads(p))
                except ValueError:
                    self.problem = self.problem or f"a data event is not JSON: {p[:200]!r}"

    def choice_chunks(self):
        return [c for c in self.chunks if c.get("choices")]

    def text(self, index=0, chat=True):
        out = ""
        for c in self.chunks:
            for ch in c.get("choices") or []:
                if ch.get("index") == index:
                    out += ((ch.get("delta") or {}).get("content") or "") if chat else (ch.get("text") or "")
        return out


def http_stream(host, port, path, body, headers=None, timeout=120, stop_after_chunks=None):
    """POSTs and reads the SSE body. stop_after_chunks=k: closes the socket after k data events (a client that
    goes away mid-stream); the Stream then holds what was read."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        h = {"Content-Type": "application/json"}
        h.update(headers or {})
        conn.request("POST", path, body=_encode(body), headers=h)
        resp = conn.getresponse()
        if stop_after_chunks is None or resp.status != 200:
            return Stream(resp.status, _headers_of(resp), resp.read())
        raw, n = b"", 0
        while n < stop_after_chunks:
            line = resp.readline()
            if not line:
                break
            raw += line
            n += line.startswith(b"data: ")
        return Stream(resp.status, _headers_of(resp), raw + (b"" if raw.endswith(b"\n\n") else b"\n"))
    finally:
        # Closing the socket outright (not a polite shutdown) is what a vanished client looks like.
        if conn.sock is not None:
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        conn.close()


def raw_exchange(host, port, data, timeout=10.0, half_close=False):
    """Sends raw bytes and reads until the server closes or `timeout` passes. Returns (bytes, closed_by_server)."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(data)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        out = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                return out, False
            except ConnectionResetError:
                return out, True
            if not chunk:
                return out, True
            out += chunk
        return out, False


def read_responses(data):
    """Parses back-to-back HTTP/1.1 responses (Content-Length or chunked bodies) from raw bytes.
    Returns a list of Response; stops at the first incomplete one."""
    out = []
    while data:
        head_end = data.find(b"\r\n\r\n")
        if head_end < 0:
            break
        lines = data[:head_end].decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/"):
            break
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        rest = data[head_end + 4:]
        if "content-length" in headers:
            n = int(headers["content-length"])
            if len(rest) < n:
                break
            body, data = rest[:n], rest[n:]
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            body = b""
            while True:
                eol = rest.find(b"\r\n")
                if eol < 0:
                    return out
                size = int(rest[:eol].split(b";")[0], 16)
                if len(rest) < eol + 2 + size + 2:
                    return out
                body += rest[eol + 2:eol + 2 + size]
                rest = rest[eol + 2 + size + 2:]
                if size == 0:
                    break
            data = rest
        else:
            body, data = rest, b""
        out.append(Response(int(parts[1]), headers, body))
    return out


def error_shape(resp, status, kind=None, param=None):
    """None when `resp` is the contract's error: the status, and {"error": {"message", "type", "param", "code"}} with
    the given type (and param when given). Otherwise a description of what differs."""
    if resp.status != status:
        return f"status {resp.status}, expected {status}: {resp.body[:300]!r}"
    try:
        e = resp.json()["error"]
    except (ValueError, KeyError, TypeError):
        return f"not an error JSON body: {resp.body[:300]!r}"
    if not isinstance(e, dict):
        return f"error is not an object: {e!r}"
    missing = [k for k in ("message", "type", "param", "code") if k not in e]
    if missing:
        return f"error lacks {missing}: {e!r}"
    if not isinstance(e["message"], str) or not e["message"]:
        return f"error message empty or not a string: {e!r}"
    if kind is not None and e["type"] != kind:
        return f"error type {e['type']!r}, expected {kind!r}: {e!r}"
    if param is not None and e["param"] != param:
        return f"error param {e['param']!r}, expected {param!r}: {e!r}"
    return None


def parse_metrics(text):
    """Prometheus text -> {"name" or "name{labels}": value}; comments skipped."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        try:
            out[key.strip()] = float(value)
        except ValueError:
            out[line] = float("nan")
    return out


# ---- the server process ----

def _die_with_parent():
    """In the child before exec: SIGKILL when the test process dies (a ctest timeout leaves no server behind)."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Server:
    def __init__(self, binary, model, args=(), env=None, host="127.0.0.1"):
        self.binary, self.model, self.args = binary, model, list(args)
        self.env = dict(os.environ, **(env or {}))
        self.host, self.port = host, None
        self.proc = None
        # the key its own helper calls (metrics, wait_idle) send, when started with one
        key = self.args[self.args.index("--api-key") + 1] if "--api-key" in self.args else None
        self.auth = {"Authorization": "Bearer " + key} if key else {}
        self.log = []                  # every stderr and stdout line, as text
        self.health_seen = []          # (status, body) of the /health polls made while starting
        self._listening = threading.Event()
        self._lock = threading.Lock()
        self._cwd = tempfile.mkdtemp(prefix="troupe-http-")  # no config/troupe.json from the caller's directory

    # start / stop

    def start(self, timeout=60.0):
        cmd = [self.binary, "serve", "--host", self.host, "--port", "0", "--model", self.model] + self.args
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=self.env, cwd=self._cwd, preexec_fn=_die_with_parent)
        threading.Thread(target=self._drain, args=(self.proc.stderr, True), daemon=True).start()
        threading.Thread(target=self._drain, args=(self.proc.stdout, False), daemon=True).start()
        deadline = time.monotonic() + timeout
        while not self._listening.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"troupe serve did not log 'listening on http://HOST:PORT' "
                                   f"(exit {self.proc.returncode}): {self.log_text()[-2000:]}")
        while True:  # ready: /health 200 (503 "loading" is allowed before)
            try:
                r = self.request("GET", "/health", timeout=5)
                self.health_seen.append((r.status, r.body))
                if r.status == 200:
                    return self
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"/health never answered 200: {self.health_seen[-3:]} {self.log_text()[-2000:]}")
            time.sleep(0.02)

    def _drain(self, pipe, is_stderr):
        for raw in iter(pipe.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self._lock:
                self.log.append(line)
            m = LISTENING.search(line) if is_stderr and self.port is None else None
            if m:
                self.host = m.group(1).strip("[]")
                self.port = int(m.group(2))
                self._listening.set()

    def stop(self, timeout=30.0):
        """SIGTERM and wait: the exit code, or None when it had to be killed."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def log_text(self):
        with self._lock:
            return "\n".join(self.log)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.kill()
        return False

    # talking to it

    def request(self, method, path, body=None, headers=None, timeout=120):
        return http_request(self.host, self.port, method, path, body, headers, timeout)

    def post(self, path, body, headers=None, timeout=120):
        return self.request("POST", path, body, headers, timeout)

    def try_post(self, path, body, headers=None, timeout=60):
        """post, with a dropped connection or a timeout as a Response of status 0 (for checks, not exceptions)."""
        try:
            return self.request("POST", path, body, headers, timeout)
        except (OSError, http.client.HTTPException) as e:
            return Response(0, {}, f"no response: {type(e).__name__}: {e}".encode())

    def stream(self, path, body, headers=None, timeout=120, stop_after_chunks=None):
        return http_stream(self.host, self.port, path, body, headers, timeout, stop_after_chunks)

    def raw(self, data, timeout=10.0, half_close=False):
        return raw_exchange(self.host, self.port, data, timeout, half_close)

    def connect(self, timeout=10.0):
        return socket.create_connection((self.host, self.port), timeout=timeout)

    def healthy(self):
        try:
            return self.request("GET", "/health", timeout=10).status == 200
        except OSError:
            return False

    def metrics(self):
        r = self.request("GET", "/metrics", headers=self.auth, timeout=10)
        return parse_metrics(r.text()) if r.status == 200 else {}

    def wait_idle(self, timeout=10.0):
        """Polls /metrics until no request runs or waits and no KV block is used; the last metrics read."""
        deadline = time.monotonic() + timeout
        while True:
            m = self.metrics()
            idle = (m.get("troupe_requests_running") == 0 and m.get("troupe_requests_waiting") == 0
                    and m.get("troupe_kv_blocks_used") == 0)
            if idle or time.monotonic() > deadline:
                return m
            time.sleep(0.1)

    def url(self):
        return f"http://{self.host}:{self.port}"


def args_of(argv):
    """BINARY SOURCE_DIR from a test's command line -> (absolute binary, absolute model path)."""
    if len(argv) != 3:
        raise SystemExit(f"usage: {argv[0]} TROUPE_BINARY SOURCE_DIR")
    binary = os.path.abspath(argv[1])
    model = os.path.join(os.path.abspath(argv[2]), "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
    return binary, model


def troupe_generate(binary, model, args, timeout=120):
    """`troupe generate MODEL ARGS` (the single-sequence reference path): its text, without the final newline."""
    out = subprocess.run([binary, "generate", "--model", model] + list(args), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, timeout=timeout, check=True).stdout.decode("utf-8")
    return out[:-1] if out.endswith("\n") else out
