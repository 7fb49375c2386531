"""test_openai_client.py TROUPE_BINARY SOURCE_DIR: troupe serve through the official `openai` package.

Chat and completions, streaming and not, models.list and models.retrieve; greedy text over HTTP equal to `troupe generate --temp 0`
(the single-sequence reference path) for the same prompt and max tokens; the client's exception classes raised
where docs/http-contract.md says: BadRequestError (400), NotFoundError (404), AuthenticationError (401),
RateLimitError (429, with Retry-After).
"""
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from server import MODEL_ID, NO_EOG, Checks, Server, args_of, troupe_generate  # noqa: E402

try:
    import openai
except ImportError:
    raise SystemExit("FAIL: the openai package is missing; run scripts/setup.sh")

binary, model = args_of(sys.argv)
t = Checks()
N = 24  # tokens per reference comparison


def client_for(server, key="unused"):
    return openai.OpenAI(base_url=server.url() + "/v1", api_key=key, max_retries=0, timeout=120)


def raises(kind, fn):
    """The exception fn raised when it is an instance of `kind`, else None (printing what happened)."""
    try:
        fn()
    except kind as e:
        return e
    except Exception as e:  # noqa: BLE001 (the wrong exception is a failure to report, not to propagate)
        print(f"  raised {type(e).__name__}: {e}")
        return None
    print("  raised nothing")
    return None


def error_body_ok(e, kind):
    body = getattr(e, "body", None)  # the client gives the "error" object of the JSON body
    return isinstance(body, dict) and body.get("type") == kind and all(k in body for k in ("message", "param", "code"))


with Server(binary, model) as s:
    c = client_for(s)

    with t.section("models.list, models.retrieve"):
        ids = [m.id for m in c.models.list()]
        t.check(ids == [MODEL_ID], f"models.list: {ids}")
        m = c.models.retrieve(MODEL_ID)
        t.check(m.id == MODEL_ID and m.object == "model" and m.owned_by == "troupe" and isinstance(m.created, int),
                f"models.retrieve: {m}")
        e = raises(openai.NotFoundError, lambda: c.models.retrieve("gpt-4o"))
        t.check(e is not None and error_body_ok(e, "not_found_error") and e.body.get("code") == "model_not_found",
                f"models.retrieve('gpt-4o'): {e and e.body}")

    with t.section("chat, reference path"):
        cases = [("What is the capital of France?", None), ("Name a colour.", "You are terse."),
                 ("Write a haiku about the sea.", None)]
        for question, system in cases:
            messages = ([{"role": "system", "content": system}] if system else []) + [
                {"role": "user", "content": question}]
            r = c.chat.completions.create(model=MODEL_ID, messages=messages, max_tokens=N, temperature=0)
            ref = troupe_generate(binary, model, ["--chat", question, "--temp", "0", "-n", str(N)]
                                  + (["--system", system] if system else []))
            got = r.choices[0].message.content
            t.check(got == ref, f"chat {question!r}: HTTP {got!r} != troupe generate {ref!r}")
            t.check(r.object == "chat.completion" and r.id.startswith("chatcmpl-") and r.model == MODEL_ID
                    and r.choices[0].message.role == "assistant", f"chat response fields: {r}")
            t.check(r.usage.completion_tokens <= N and r.usage.total_tokens == r.usage.prompt_tokens
                    + r.usage.completion_tokens, f"chat usage: {r.usage}")
            t.check(r.choices[0].finish_reason == ("length" if r.usage.completion_tokens == N else "stop"),
                    f"finish_reason {r.choices[0].finish_reason} with {r.usage.completion_tokens} of {N} tokens")

            stream = c.chat.completions.create(model=MODEL_ID, messages=messages, max_tokens=N, temperature=0,
                                               stream=True, stream_options={"include_usage": True})
            text, finish, usage, first_role = "", None, None, None
            for i, chunk in enumerate(stream):
                if chunk.usage is not None:
                    usage = chunk.usage
                for ch in chunk.choices:
                    if i == 0:
                        first_role = ch.delta.role
                    text += ch.delta.content or ""
                    finish = ch.finish_reason or finish
            t.check(text == ref, f"chat stream {question!r}: {text!r} != {ref!r}")
            t.check(first_role == "assistant", f"chat stream: first delta role {first_role!r}")
            t.check(finish == r.choices[0].finish_reason, f"chat stream finish {finish} != {r.choices[0].finish_reason}")
            t.check(usage is not None and usage.completion_tokens == r.usage.completion_tokens
                    and usage.prompt_tokens == r.usage.prompt_tokens, f"chat stream usage {usage} != {r.usage}")

    with t.section("completions, reference path"):
        for prompt in ["Once upon a time", "1, 2, 3, 4,", "def fibonacci(n):"]:
            r = c.completions.create(model=MODEL_ID, prompt=prompt, max_tokens=N, temperature=0)
            ref = troupe_generate(binary, model, ["--prompt", prompt, "--temp", "0", "-n", str(N)])
            t.check(r.choices[0].text == ref, f"completion {prompt!r}: HTTP {r.choices[0].text!r} != {ref!r}")
            t.check(r.object == "text_completion" and r.id.startswith("cmpl-"), f"completion fields: {r}")
            text = "".join(ch.text for chunk in c.completions.create(model=MODEL_ID, prompt=prompt, max_tokens=N,
                                                                      temperature=0, stream=True)
                           for ch in chunk.choices)
            t.check(text == ref, f"completion stream {prompt!r}: {text!r} != {ref!r}")
        # a token-id prompt and a batch of prompts through the client
        ids = s.post("/tokenize", {"prompt": "Once upon a time"}).json()["tokens"]
        a = c.completions.create(model=MODEL_ID, prompt=ids, max_tokens=8, temperature=0).choices[0].text
        b = c.completions.create(model=MODEL_ID, prompt="Once upon a time", max_tokens=8, temperature=0)
        t.check(a == b.choices[0].text, f"token-id prompt {a!r} != string prompt {b.choices[0].text!r}")
        r = c.completions.create(model=MODEL_ID, prompt=["Once upon a time", "1, 2, 3,"], max_tokens=8,
                                 temperature=0)
        t.check(sorted(ch.index for ch in r.choices) == [0, 1], f"two prompts: indexes {[ch.index for ch in r.choices]}")

    with t.section("sampling through the client"):
        kw = dict(model=MODEL_ID, prompt="My favourite food is", max_tokens=16, temperature=1.0)
        x = c.completions.create(seed=11, **kw).choices[0].text
        y = c.completions.create(seed=11, **kw).choices[0].text
        z = [c.completions.create(seed=k, **kw).choices[0].text for k in (12, 13, 14)]
        t.check(x == y, f"the same seed sampled different text: {x!r} vs {y!r}")
        t.check(any(v != x for v in z), f"three other seeds all sampled {x!r}")
        r = c.completions.create(model=MODEL_ID, prompt="1, 2, 3, 4,", max_tokens=40, temperature=0, stop=[" 7"])
        t.check(" 6" in r.choices[0].text and " 7" not in r.choices[0].text and r.choices[0].finish_reason == "stop",
                f"stop [' 7']: {r.choices[0].text!r} ({r.choices[0].finish_reason})")
        r = c.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": "Hi"}], max_tokens=4,
                                      temperature=0, logprobs=True, top_logprobs=3)
        lp = r.choices[0].logprobs
        t.check(lp is not None and len(lp.content) == r.usage.completion_tokens
                and all(len(e.top_logprobs) == 3 and e.logprob <= 0 for e in lp.content)
                and all(abs(e.logprob - e.top_logprobs[0].logprob) < 1e-4 for e in lp.content)  # greedy: the top
                and all(e.top_logprobs[0].logprob >= e.top_logprobs[1].logprob for e in lp.content),
                f"chat logprobs with top_logprobs 3: {lp}")

    with t.section("errors: BadRequestError, NotFoundError"):
        msg = [{"role": "user", "content": "hi"}]
        e = raises(openai.BadRequestError, lambda: c.chat.completions.create(model=MODEL_ID, messages=msg,
                                                                            temperature=5))
        t.check(e is not None and e.status_code == 400 and error_body_ok(e, "invalid_request_error")
                and e.body.get("param") == "temperature", f"temperature 5: {e and e.body}")
        e = raises(openai.BadRequestError, lambda: c.completions.create(model=MODEL_ID, prompt="hi", echo=True))
        t.check(e is not None and e.body.get("param") == "echo", f"echo: {e and e.body}")
        e = raises(openai.NotFoundError, lambda: c.chat.completions.create(model="gpt-4o", messages=msg))
        t.check(e is not None and error_body_ok(e, "not_found_error") and e.body.get("code") == "model_not_found",
                f"model gpt-4o: {e and e.body}")
        e = raises(openai.NotFoundError, lambda: c.completions.create(model="nope", prompt="hi", stream=True))
        t.check(e is not None, "a streamed request for another model did not raise NotFoundError")
    t.check(s.stop() == 0, "server a: SIGTERM did not exit 0")

with Server(binary, model, ["--api-key", "k-123", "--max-running", "1", "--max-waiting", "1"]) as s:
    with t.section("errors: AuthenticationError"):
        e = raises(openai.AuthenticationError, lambda: client_for(s, "wrong").models.list())
        t.check(e is not None and e.status_code == 401 and error_body_ok(e, "authentication_error"),
                f"a wrong key: {e and e.body}")
        e = raises(openai.AuthenticationError, lambda: client_for(s, "wrong").models.retrieve(MODEL_ID))
        t.check(e is not None and e.status_code == 401, f"a wrong key: models.retrieve: {e and e.body}")
        c = client_for(s, "k-123")
        t.check([m.id for m in c.models.list()] == [MODEL_ID], "the right key: models.list")
        t.check(c.models.retrieve(MODEL_ID).id == MODEL_ID, "the right key: models.retrieve")

    with t.section("errors: RateLimitError"):
        long = dict(model=MODEL_ID, prompt="Count:", max_tokens=4000, stream=True, logit_bias=NO_EOG)
        first = c.completions.create(**long)
        next(iter(first))  # running
        # the second from a bare socket: its headers may wait for its first token, which waits for the first
        body = json.dumps(dict(long, logit_bias=NO_EOG)).encode()
        second = s.connect()
        second.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer k-123\r\n"
                       b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        deadline = time.monotonic() + 15
        while s.metrics().get("troupe_requests_waiting") != 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        e = raises(openai.RateLimitError, lambda: c.completions.create(model=MODEL_ID, prompt="hi", max_tokens=2))
        t.check(e is not None and e.status_code == 429 and error_body_ok(e, "rate_limit_error")
                and e.response.headers.get("retry-after", "").isdigit(),
                f"past --max-waiting: {e and e.body} {e and dict(e.response.headers)}")
        first.close()
        second.close()
        m = s.wait_idle(10)
        t.check(m.get("troupe_kv_blocks_used") == 0 and m.get("troupe_requests_running") == 0,
                f"closed streams were not cancelled: running {m.get('troupe_requests_running')}, "
                f"KV blocks {m.get('troupe_kv_blocks_used')}")
        r = c.completions.create(model=MODEL_ID, prompt="hi", max_tokens=2)
        t.check(r.usage.completion_tokens >= 1, "a request after the overload")
    t.check(s.stop() == 0, "server b: SIGTERM did not exit 0")

sys.exit(t.summary())
