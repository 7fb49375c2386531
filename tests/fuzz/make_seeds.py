#!/usr/bin/env python3
"""make_seeds.py OUT_DIR [MODEL]: small valid GGUF files for fuzz_gguf's seed corpus (and the model's first 64 KiB).

The committed corpus is its output: python3 tests/fuzz/make_seeds.py tests/fuzz/corpus/fuzz_gguf
"""
import os
import struct
import sys

GGUF_U8, GGUF_I8, GGUF_U16, GGUF_I16, GGUF_U32, GGUF_I32, GGUF_F32, GGUF_BOOL, GGUF_STR, GGUF_ARR, GGUF_U64, \
    GGUF_I64, GGUF_F64 = range(13)
FMT = {GGUF_U8: "<B", GGUF_I8: "<b", GGUF_U16: "<H", GGUF_I16: "<h", GGUF_U32: "<I", GGUF_I32: "<i",
       GGUF_F32: "<f", GGUF_BOOL: "<B", GGUF_U64: "<Q", GGUF_I64: "<q", GGUF_F64: "<d"}
TYPE_SIZE = {0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 8: (32, 34), 30: (1, 2)}  # id: (block elems, bytes)


def gstr(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def payload(t, v):
    if t == GGUF_STR:
        return gstr(v)
    if t == GGUF_ARR:
        et, items = v
        return struct.pack("<IQ", et, len(items)) + b"".join(payload(et, x) for x in items)
    return struct.pack(FMT[t], v)


def gguf(kvs, tensors, version=3, alignment=32):
    out = struct.pack("<IIQQ", 0x46554747, version, len(tensors), len(kvs))
    for key, t, v in kvs:
        out += gstr(key) + struct.pack("<I", t) + payload(t, v)
    offs, at = [], 0
    for name, dims, ty in tensors:
        at = (at + alignment - 1) // alignment * alignment
        offs.append(at)
        n = 1
        for d in dims:
            n *= d
        be, bb = TYPE_SIZE[ty]
        at += n // be * bb
    for (name, dims, ty), off in zip(tensors, offs):
        out += gstr(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        out += struct.pack("<IQ", ty, off)
    out += b"\0" * (-len(out) % alignment)
    out += bytes((k * 131 + 7) & 255 for k in range(at))
    return out


def main():
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)
    kvs = [
        ("general.architecture", GGUF_STR, "llama"),
        ("general.alignment", GGUF_U32, 32),
        ("llama.block_count", GGUF_U32, 2),
        ("llama.rope.freq_base", GGUF_F32, 10000.0),
        ("u8", GGUF_U8, 7), ("i8", GGUF_I8, -7), ("u16", GGUF_U16, 700), ("i16", GGUF_I16, -700),
        ("i32", GGUF_I32, -70000), ("u64", GGUF_U64, 1 << 40), ("i64", GGUF_I64, -(1 << 40)),
        ("f64", GGUF_F64, 0.5), ("flag", GGUF_BOOL, 1),
        ("tokenizer.ggml.tokens", GGUF_ARR, (GGUF_STR, ["<s>", "a", "b\n"])),
        ("tokenizer.ggml.scores", GGUF_ARR, (GGUF_F32, [0.0, -1.0, -2.0])),
        ("nested", GGUF_ARR, (GGUF_ARR, [(GGUF_I32, [1, 2]), (GGUF_U8, [])])),
    ]
    tensors = [("token_embd.weight", [32, 3], 8), ("norm.weight", [8], 0), ("blk.0.w", [64, 2], 3),
               ("blk.0.h", [4, 2, 1, 1], 1), ("q40", [32], 2), ("bf", [3], 30)]
    seeds = {
        "full_v3.gguf": gguf(kvs, tensors),
        "full_v2.gguf": gguf(kvs[:4], tensors[:2], version=2),
        "metadata_only.gguf": gguf(kvs, []),
        "one_tensor.gguf": gguf([("general.architecture", GGUF_STR, "llama")], [("t", [4], 0)]),
        "empty.gguf": gguf([], []),
    }
    for name, data in seeds.items():
        with open(os.path.join(out_dir, name), "wb") as f:
            f.write(data)
    if len(sys.argv) > 2 and os.path.isfile(sys.argv[2]):
        with open(sys.argv[2], "rb") as f:
            head = f.read(65536)
        with open(os.path.join(out_dir, "model_head.gguf"), "wb") as f:
            f.write(head)


if __name__ == "__main__":
    main()
