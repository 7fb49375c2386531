"""sse_check.py FILE: reads an SSE response body saved by curl and prints a JSON summary of it, for the bash tests
to check with jq. The framing is parsed strictly (server.parse_sse): one `data: ...` or `: comment` line per event,
each ended by a blank line.

Summary keys:
  problem          null, or what broke the framing / JSON
  done_last        the last event is `data: [DONE]` and nothing follows it
  objects, ids     the distinct "object" and "id" values of the chunks
  first_delta      the first chunk's choices[0].delta (chat)
  texts            {index: concatenated delta content (chat) or text (completions)}
  finish           {index: finish_reason of that choice's last chunk}
  finish_early     indexes that had a non-null finish_reason on a chunk that was not their last
  usage            the usage of the chunk with "choices": [] (null when there is none)
  usage_chunks     how many chunks have "choices": []
  usage_last       the usage chunk is the last one before [DONE]
  non_null_usage   chunks with choices and a non-null usage
  error            the "error" object of a data event, if any
  pings            `: ping` comments
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from server import Stream  # noqa: E402


def summarize(raw):
    s = Stream(200, {}, raw)
    out = {"problem": s.problem, "done_last": s.done, "n_chunks": len(s.chunks), "pings": 0, "error": None}
    out["pings"] = sum(1 for kind, text in s.events if kind == "comment" and text == "ping")
    out["objects"] = sorted({str(c.get("object")) for c in s.chunks if "error" not in c})
    out["ids"] = sorted({str(c.get("id")) for c in s.chunks if "error" not in c})
    texts, finish, early, last_seen = {}, {}, set(), {}
    usage_chunks, usage, non_null_usage, first_delta = 0, None, 0, None
    for i, c in enumerate(s.chunks):
        if "error" in c:
            out["error"] = c["error"]
            continue
        choices = c.get("choices")
        if choices == []:
            usage_chunks += 1
            usage = c.get("usage")
            out["usage_last"] = i == len(s.chunks) - 1
            continue
        if c.get("usage") is not None:
            non_null_usage += 1
        for ch in choices or []:
            k = str(ch.get("index"))
            if first_delta is None and "delta" in ch:
                first_delta = ch["delta"]
            if k in finish and finish[k] is not None:
                early.add(k)  # a chunk for this choice after its finish_reason
            delta = ch.get("delta")
            piece = (delta.get("content") or "") if isinstance(delta, dict) else (ch.get("text") or "")
            texts[k] = texts.get(k, "") + piece
            finish[k] = ch.get("finish_reason")
            last_seen[k] = i
    out.update(first_delta=first_delta, texts=texts, finish=finish, finish_early=sorted(early), usage=usage,
               usage_chunks=usage_chunks, non_null_usage=non_null_usage)
    out.setdefault("usage_last", False)
    return out


if __name__ == "__main__":
    with open(sys.argv[1], "rb") as f:
        print(json.dumps(summarize(f.read())))
