#!/usr/bin/env python3
"""Regenerates the golden files in tests/golden/ from the reference implementation, llama.cpp (via llama-cpp-python).

    scripts/setup.sh --ref && python3 scripts/make_goldens.py
    python3 scripts/make_goldens.py --f32-only       # only the F32 step (dequantised model, *_f32.json)
    python3 scripts/make_goldens.py --compare-fp32   # prints how far the logits goldens are from exact arithmetic

Writes, deterministically (same llama.cpp build and CPU features give byte-identical files):
    tests/golden/tokenizer.json     hand-written tokenizer cases (bytes -> ids) and detokenizer cases (ids -> bytes)
    tests/golden/logits.json        first-step logits (top 20) for plain and chat prompts
    tests/golden/greedy.json        32-token greedy continuations (our own argmax loop, no sampler)
    tests/golden/logits_f32.json    the same, for the F32 dequantisation of the model evaluated with an f32 KV cache
    tests/golden/greedy_f32.json    (the exact-arithmetic reference: no 8-bit activations, no fp16 K/V/probabilities)

The model is models/SmolLM2-135M-Instruct.Q4_1.gguf (scripts/fetch-model.sh fetches it). The F32 step writes its
lossless F32 copy to models/SmolLM2-135M-Instruct.F32.gguf (git-ignored, ~540 MB, rewritten on every run).
"""

import ctypes
import hashlib
import importlib.metadata
import json
import os
import subprocess
import sys

import numpy as np
import jinja2.sandbox
import gguf
import llama_cpp
import llama_cpp._logger  # its log callback, put back after open_model captures the log

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_DIR = os.path.join(ROOT, "tests", "golden")

# Settings for the model runs; recorded in each file's header.
N_CTX = 2048
N_BATCH = 512  # the whole prompt (at most ~330 tokens) goes in one llama_decode call
N_THREADS = 2
SEED = 0
N_TOP = 20        # logits kept per case in logits.json
N_GREEDY = 32     # tokens generated per case in greedy.json
LOGIT_DECIMALS = 5


# ---------------------------------------------------------------------------------------------------------------------
# Tokenizer cases: (name, text as str or bytes, parse_special)
# ---------------------------------------------------------------------------------------------------------------------

def tokenizer_cases():
    cases = []

    def add(name, text, special=False):
        cases.append((name, text, special))

    def add_both(name, text):
        add(name + "_special", text, True)
        add(name + "_plain", text, False)

    # -- empty and single characters
    add("empty", "")
    for name, ch in [("letter_a", "a"), ("letter_A", "A"), ("space", " "), ("newline", "\n"), ("tab", "\t"),
                     ("cr", "\r"), ("nul", "\x00"), ("del", "\x7f"), ("ctrl_01", "\x01"), ("ctrl_1b_esc", "\x1b"),
                     ("e_acute", "é"), ("han_zhong", "中"), ("hiragana_a", "あ"), ("hangul_han", "한"),
                     ("cyrillic_zhe", "ж"), ("greek_lambda", "λ"), ("arabic_ain", "ع"), ("devanagari_ka", "क"),
                     ("emoji_grin", "😀"), ("euro", "€"), ("pound", "£"), ("yen", "¥"), ("section", "§"),
                     ("replacement_char", "\ufffd"), ("private_use", "\ue000"), ("max_codepoint", "\U0010ffff"),
                     ("math_bold_a", "𝐚"), ("gothic_ahsa", "𐌰")]:
        add("char_" + name, ch)

    # -- English prose
    add("hello_world", "Hello world")
    add("hello_world_punct", "Hello, world!")
    add("pangram", "The quick brown fox jumps over the lazy dog.")
    add("pangram_upper", "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG.")
    add("lower_hello", "hello")
    add("leading_space_hello", " hello")
    add("title_hello", "Hello")
    add("upper_hello", "HELLO")
    add("sentences", "It was a bright cold day in April, and the clocks were striking thirteen. "
                     "Winston Smith, his chin nuzzled into his breast, slipped quickly through the glass doors.")
    add("paragraph", "Large language models are trained on vast amounts of text. They learn statistical patterns "
                     "of language, which lets them complete sentences, answer questions, and write code. However, "
                     "they can also make mistakes, and their outputs should be checked carefully.\n\nIn this "
                     "paragraph we test a longer stretch of ordinary English prose with commas, periods, and "
                     "a blank line.")
    add("question", "What is the capital of France?")
    add("dialogue", '"Are you coming?" she asked.\n"Not yet," he replied, "give me a minute."')
    add("abbreviations", "Mr. and Mrs. Smith met Dr. Jones at 5 p.m. on Main St., U.S.A., e.g. i.e. etc.")
    add("camel_snake", "camelCaseIdentifier snake_case_identifier SCREAMING_SNAKE kebab-case-name PascalCase")
    add("url", "Visit https://www.example.com/path/to/page?query=1&lang=en#section for details.")
    add("email", "Contact jane.doe+test@example.co.uk or admin@localhost.")
    add("hashtags_mentions", "#MachineLearning is trending; thanks @huggingface and @ggerganov!")
    add("mixed_case_word", "tHiS iS mIxEd CaSe")
    add("repeated_words", "the the the the the the the the")
    add("list_markdown", "Shopping list:\n- eggs\n- milk\n- bread\n\n1. first\n2. second\n3. third")
    add("markdown_heading", "# Title\n\n## Section 2\n\n**bold** and *italic* and `code` and [link](http://x.y)")

    # -- contractions ('s 't 're 've 'm 'll 'd), lower, upper, mixed
    for word in ["it's", "don't", "they're", "we've", "I'm", "you'll", "he'd"]:
        add("contraction_" + word.replace("'", "_"), word)
        add("contraction_upper_" + word.upper().replace("'", "_"), word.upper())
    add("contraction_mixed_case", "It'S don'T They'RE we'Ve i'M YOU'll HE'd")
    add("contraction_sentence", "I'm sure they're right: it's what we've said, and you'll see he'd agree; don't worry.")
    add("contraction_sentence_upper", "I'M SURE THEY'RE RIGHT: IT'S WHAT WE'VE SAID, AND YOU'LL SEE HE'D AGREE.")
    add("contraction_alone_s", "'s")
    add("contraction_alone_S", "'S")
    add("contraction_alone_ll", "'ll")
    add("contraction_alone_LL", "'LL")
    add("contraction_curly", "it’s don’t they’re")
    add("contraction_stacked", "y'all'd've")
    add("contraction_tis", "'tis the season, rock 'n' roll, o'clock")
    add("contraction_possessive", "James's book and the dogs' bowls")
    add("contraction_after_space", "it 's a test ' s")
    add("contraction_after_digit", "the 1990's and 2000's")
    add("apostrophes_only", "'''")
    add("single_quoted", "'single quoted' and \"double quoted\"")

    # -- punctuation
    add("ellipsis_dots", "Wait... what...?")
    add("ellipsis_char", "Wait… what…?")
    add("exclaim_run", "Wow!!!")
    add("interrobang", "Really?!")
    add("dashes", "a - b – c — d")
    add("guillemets", "«Bonjour» ‹hi›")
    add("curly_quotes", "“quoted” and ‘single’")
    add("brackets", "(parens) [brackets] {braces} <angles>")
    add("symbols", "#$%&*@^~`|\\")
    add("operators", "-> => != <= >= == && || << >> ++ -- :: ... ?? ?:")
    add("rule_dashes", "----------------")
    add("rule_equals", "================")
    add("rule_stars", "****************")
    add("punct_glued", "end.Start,next;colon:here!bang?q")
    add("space_punct", " . , ; : ! ?")
    add("cjk_punct", "「こんにちは」、『世界』。（括弧）！？")

    # -- languages
    add("chinese", "我爱自然语言处理。今天天气很好，我们去公园散步吧！")
    add("chinese_traditional", "機器學習是人工智慧的一個分支。")
    add("chinese_mixed_ascii", "GPT模型在2023年发布了新版本v4.0。")
    add("japanese", "日本語のテキストをトークン化します。ひらがな、カタカナ、漢字が混ざっています。")
    add("japanese_katakana", "コンピューター・プログラミング")
    add("japanese_halfwidth", "ｶﾀｶﾅ ﾃｽﾄ")
    add("korean", "안녕하세요. 한국어 문장을 토큰화합니다.")
    add("arabic", "مرحبا بالعالم. هذه جملة باللغة العربية.")
    add("arabic_diacritics", "اَلْعَرَبِيَّةُ")
    add("hebrew", "שלום עולם, זה משפט בעברית.")
    add("hindi", "नमस्ते दुनिया। यह हिंदी में एक वाक्य है।")
    add("hindi_conjuncts", "क्षत्रिय श्रद्धा द्वार")
    add("bengali", "আমি বাংলায় গান গাই")
    add("tamil", "தமிழ் மொழி")
    add("thai", "สวัสดีครับ ภาษาไทยไม่มีช่องว่างระหว่างคำ")
    add("russian", "Привет, мир! Это предложение на русском языке.")
    add("russian_upper", "МОСКВА — СТОЛИЦА РОССИИ")
    add("ukrainian", "Ґанок, їжак, єнот, і все.")
    add("greek", "Γεια σου κόσμε! Αυτή είναι μια ελληνική πρόταση.")
    add("greek_polytonic", "ἐν ἀρχῇ ἦν ὁ λόγος")
    add("german", "Grüße aus München! Die Straße ist schön. ẞ")
    add("german_compound", "Donaudampfschifffahrtsgesellschaftskapitän")
    add("french", "Ça coûte cher, n'est-ce pas ? L'été dernier, à Noël…")
    add("spanish", "¿Dónde está la biblioteca? ¡Mañana, señor!")
    add("portuguese", "Não há razão para não ir à praça.")
    add("polish", "Zażółć gęślą jaźń")
    add("czech", "Příliš žluťoučký kůň úpěl ďábelské ódy")
    add("turkish", "İstanbul'da ılık bir gün; ıIiİ")
    add("vietnamese", "Tiếng Việt có dấu: Xin chào thế giới")
    add("icelandic", "Þetta er íslenska: ð, þ, æ")
    add("armenian", "Բարեւ աշխարհ")
    add("georgian", "გამარჯობა მსოფლიო")
    add("amharic", "ሰላም ልዑል")
    add("mixed_scripts", "English 中文 日本語 한국어 العربية हिन्दी Русский Ελληνικά")
    add("rtl_with_numbers", "العدد 123 والعدد ٤٥٦")

    # -- emoji
    add("emoji_run", "😀😀😀")
    add("emoji_in_text", "I love pizza 🍕 and tacos 🌮!")
    add("emoji_skin_tone", "👍🏽")
    add("emoji_skin_tones_all", "👋🏻👋🏼👋🏽👋🏾👋🏿")
    add("emoji_zwj_family", "👨‍👩‍👧‍👦")
    add("emoji_zwj_technologist", "🧑🏿‍💻")
    add("emoji_zwj_rainbow_flag", "🏳️‍🌈")
    add("emoji_flags", "🇺🇸🇯🇵🇩🇪🇫🇷")
    add("emoji_flag_subdivision", "🏴󠁧󠁢󠁳󠁣󠁴󠁿")
    add("emoji_vs16", "❤️ ☺️ ✔️")
    add("emoji_vs15", "❤︎")
    add("emoji_keycap", "1️⃣#️⃣*️⃣")
    add("emoji_spaced", "🙂 🙃 😉")
    add("emoji_symbols", "★☆♠♣♥♦✓✗→←↑↓")
    add("box_drawing", "┌──┐\n│ok│\n└──┘")

    # -- combining marks and normalisation
    add("combining_acute", "e\u0301")
    add("precomposed_acute", "\u00e9")
    add("combining_stack", "a\u0300\u0301\u0302\u0303\u0304")
    add("combining_tilde_word", "man\u0303ana")
    add("zalgo", "Z\u0351\u036b\u0343a\u0352\u036al\u0357\u0313g\u0305\u030fo\u0304\u036c")
    add("combining_alone", "\u0301")
    add("combining_after_space", " \u0301x")
    add("hangul_jamo_decomposed", "\u1112\u1161\u11ab\u1100\u1173\u11af")
    add("devanagari_virama", "\u0915\u094d\u0937")
    add("ligature_fi", "ﬁnance ﬂow")
    add("fullwidth_ascii", "ＡＢＣ ａｂｃ")
    add("superscripts", "x² + y³ = z⁴, H₂O")

    # -- code
    add("python", 'def fib(n):\n    """Return the n-th Fibonacci number."""\n    if n < 2:\n        return n\n'
                  '    return fib(n - 1) + fib(n - 2)\n\n\nif __name__ == "__main__":\n    print(fib(10))\n')
    add("python_class", "class Point:\n    def __init__(self, x: float, y: float) -> None:\n        self.x = x\n"
                        "        self.y = y\n\n    def __repr__(self):\n        return f\"Point({self.x!r}, {self.y!r})\"\n")
    add("cpp", "#include <vector>\n\ntemplate <typename T>\nT sum(const std::vector<T>& v) {\n    T s{};\n"
               "    for (const auto& x : v) s += x;\n    return s;\n}\n\nint main() { return sum<int>({1, 2, 3}) != 6; }\n")
    add("cpp_tabs", "int f(int x) {\n\tif (x > 0) {\n\t\treturn x * 2;\n\t}\n\treturn -x;\n}\n")
    add("json", '{\n  "name": "troupe",\n  "version": "0.1.0",\n  "tags": ["llm", "c++"],\n  "nested": {"a": 1, '
                '"b": [true, false, null], "c": -3.5e-7}\n}\n')
    add("json_compact", '{"a":1,"b":[1,2,3],"c":{"d":"e"}}')
    add("html", '<!DOCTYPE html>\n<html lang="en">\n<head><meta charset="utf-8"><title>Test</title></head>\n'
                '<body>\n  <div class="box" id="main">Hello &amp; welcome</div>\n</body>\n</html>\n')
    add("shell", '#!/usr/bin/env bash\nset -euo pipefail\nfor f in *.txt; do\n  echo "$f: $(wc -l < "$f")"\ndone\n'
                 "grep -rn 'TODO' src/ | sort -u > /tmp/todo.txt 2>&1\n")
    add("javascript", "const add = (a, b) => a + b;\nconsole.log(`sum: ${add(1, 2)}`);\n")
    add("rust", "fn main() {\n    let v: Vec<i32> = (0..10).map(|x| x * x).collect();\n    println!(\"{:?}\", v);\n}\n")
    add("go", "package main\n\nimport \"fmt\"\n\nfunc main() {\n\tfmt.Println(\"hello\")\n}\n")
    add("sql", "SELECT id, name FROM users WHERE age >= 18 ORDER BY name DESC LIMIT 10;")
    add("makefile", "all: main\n\nmain: main.o util.o\n\t$(CC) -o $@ $^\n")
    add("yaml", "server:\n  port: 8080\n  hosts:\n    - a.example.com\n    - b.example.com\n")
    add("regex", r"^(?:[a-z0-9!#$%&'*+/=?^_`{|}~-]+)@[a-z]+\.(com|org)$")
    add("latex", r"\begin{equation} E = mc^2 \quad \frac{a}{b} \sum_{i=0}^{n} x_i \end{equation}")
    add("diff", "--- a/f.txt\n+++ b/f.txt\n@@ -1,2 +1,2 @@\n-old line\n+new line\n context\n")
    add("deep_indent", "a:\n" + "".join(" " * (4 * i) + "level%d\n" % i for i in range(1, 9)))

    # -- numbers
    for digits in ["0", "1", "12", "123", "1234", "12345", "123456", "1234567890"]:
        add("digits_" + digits, digits)
    add("digits_50", "31415926535897932384626433832795028841971693993751")
    add("digits_300", "".join(str(i % 10) for i in range(300)))
    add("decimal_pi", "3.14159")
    add("decimal_leading_dot", ".5 and 0.25")
    add("thousands_commas", "1,000,000")
    add("thousands_dots_eu", "1.000.000,00 €")
    add("negative", "-42 and -0.001")
    add("scientific", "6.022e23 1e-10 2.5E+3")
    add("hex_bin_oct", "0x1F 0xDEADBEEF 0b1010 0o755")
    add("money", "$19.99 £5 €3,50 ¥1000")
    add("percent", "50% of 200 is 100")
    add("date_iso", "2024-01-15")
    add("date_us", "01/15/2024")
    add("date_long", "January 15th, 2024 at 3:45 PM")
    add("time", "12:34:56.789")
    add("phone_us", "+1 (555) 123-4567")
    add("phone_intl", "+44 20 7946 0958")
    add("version", "v1.2.3-rc.1")
    add("ordinals", "1st 2nd 3rd 4th 21st 101st")
    add("ip_address", "192.168.0.1:8080")
    add("arithmetic", "2+2=4, 3*4=12, 10/3=3.333")
    add("digits_letters_glued", "abc123def456")
    add("fullwidth_digits", "１２３４５")
    add("arabic_indic_digits", "٠١٢٣٤٥٦٧٨٩")
    add("devanagari_digits", "०१२३४५६७८९")
    add("vulgar_fractions", "½ ⅓ ¾")
    add("roman_numerals", "Ⅻ ⅻ Ⅳ")

    # -- whitespace runs
    for n in [2, 3, 4, 8, 16, 33]:
        add("spaces_%d" % n, " " * n)
    for n in [2, 4]:
        add("tabs_%d" % n, "\t" * n)
    add("spaces_tabs_mixed", " \t \t  \t")
    add("word_spaces_word", "hello   world")
    add("word_tab_word", "hello\tworld")
    add("trailing_spaces", "trailing   ")
    add("leading_spaces", "   leading")
    add("both_sides_spaces", "  both  ")
    add("space_before_word", " a")
    add("space_after_word", "a ")
    add("two_spaces_between", "a  b")
    add("spaces_then_digits", "   123")
    add("spaces_then_punct", "   ...")
    add("spaces_then_newline", "   \n")
    add("spaces_newline_spaces", "  \n  ")
    add("spaces_newline_word", "a   \n   b")

    # -- newline runs
    add("newline_2", "\n\n")
    add("newline_3", "\n\n\n")
    add("newline_5", "\n" * 5)
    add("crlf", "\r\n")
    add("crlf_2", "\r\n\r\n")
    add("cr_2", "\r\r")
    add("lines_lf", "a\nb\nc")
    add("lines_blank", "a\n\nb")
    add("lines_crlf", "line1\r\nline2\r\n")
    add("newline_indented", "\n    indented")
    add("newline_tab_indented", "\n\tindented")
    add("word_newline_space_word", "a \n b")
    add("vt_ff", "a\vb\fc")
    add("whitespace_mix", "\t\n \r\n\t  \n\n \t")
    add("newline_then_punct", "end\n.\n!")

    # -- unusual whitespace
    for name, ch in [("nbsp", "\u00a0"), ("thin_space", "\u2009"), ("ideographic_space", "\u3000"),
                     ("zwsp", "\u200b"), ("bom", "\ufeff"), ("line_sep", "\u2028"), ("para_sep", "\u2029"),
                     ("nel", "\u0085"), ("ogham_space", "\u1680"), ("em_space", "\u2003"),
                     ("narrow_nbsp", "\u202f"), ("zwj", "\u200d"), ("zwnj", "\u200c"), ("word_joiner", "\u2060")]:
        add("ws_%s_alone" % name, ch)
        add("ws_%s_between" % name, "a" + ch + "b")
    add("ws_nbsp_run", "\u00a0\u00a0\u00a0x")
    add("ws_bom_start", "\ufeffHello")
    add("ws_ideographic_cjk", "日本\u3000語")
    add("ws_nbsp_before_word", "price:\u00a0100\u00a0€")

    # -- very long words and runs
    add("long_a_500", "a" * 500)
    add("long_ab_250", "ab" * 250)
    add("long_alphabet_20", "abcdefghijklmnopqrstuvwxyz" * 20)
    add("long_upper_300", "X" * 300)
    add("long_word_supercal", "supercalifragilisticexpialidocious")
    add("long_word_pneumono", "pneumonoultramicroscopicsilicovolcanoconiosis")
    add("long_han_200", "中" * 200)
    add("long_emoji_50", "😀" * 50)
    add("long_bang_200", "!" * 200)
    add("long_newlines_100", "\n" * 100)
    add("long_spaces_300", " " * 300)
    add("long_tabs_64", "\t" * 64)
    add("long_words_spaced", " ".join(["token"] * 200))
    add("long_cyrillic_200", "ж" * 200)
    add("long_dash_run_then_word", "-" * 120 + "end")

    # -- invalid UTF-8 (bytes)
    add("bad_lone_continuation_80", b"\x80")
    add("bad_lone_continuation_bf", b"\xbf")
    add("bad_continuation_run", b"\x80\x80\x80")
    add("bad_continuation_in_word", b"a\x80b")
    add("bad_truncated_2byte", b"\xc3")
    add("bad_truncated_2byte_then_ascii", b"\xc3(")
    add("bad_truncated_3byte", b"\xe4\xb8")
    add("bad_truncated_3byte_then_ascii", b"\xe2\x28\xa1")
    add("bad_truncated_4byte", b"\xf0\x9f\x98")
    add("bad_truncated_at_end_of_text", b"hello \xe4\xb8")
    add("bad_truncated_at_start", b"\x98\x80 world")
    add("bad_overlong_slash_2byte", b"\xc0\xaf")
    add("bad_overlong_slash_3byte", b"\xe0\x80\xaf")
    add("bad_overlong_slash_4byte", b"\xf0\x80\x80\xaf")
    add("bad_overlong_c1", b"\xc1\xbf")
    add("bad_overlong_nul", b"\xc0\x80")
    add("bad_ff", b"\xff")
    add("bad_fe", b"\xfe")
    add("bad_ff_fe", b"\xff\xfe")
    add("bad_ff_in_text", b"ok\xffok")
    add("bad_surrogate_high", b"\xed\xa0\x80")
    add("bad_surrogate_low", b"\xed\xbf\xbf")
    add("bad_surrogate_pair", b"\xed\xa0\xbd\xed\xb8\x80")
    add("bad_5byte", b"\xf8\x88\x80\x80\x80")
    add("bad_6byte", b"\xfc\x84\x80\x80\x80\x80")
    add("bad_mixed", b"caf\xc3\xa9 \xe9t\xe9 \xff\x80 \xe6\x97\xa5\xe6\x9c")
    add("bad_latin1", b"na\xefve r\xe9sum\xe9")
    add("bad_between_spaces", b"a \x80 b")
    add("bad_after_newline", b"\n\xff\n")

    # -- special-token text, each with parse_special true and false
    add_both("chatml_turn", "<|im_start|>user\nhi<|im_end|>")
    add_both("endoftext", "<|endoftext|>")
    add_both("im_start_alone", "<|im_start|>")
    add_both("im_end_alone", "<|im_end|>")
    add_both("chat_full", "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
                          "<|im_start|>assistant\n")
    add_both("special_glued_before", "hello<|im_end|>")
    add_both("special_glued_after", "<|im_start|>assistant")
    add_both("special_glued_both", "foo<|endoftext|>bar")
    add_both("special_spaced", " <|im_end|> ")
    add_both("special_twice", "<|im_end|><|im_end|>")
    add_both("special_newline_after", "<|im_end|>\n\n")
    add_both("partial_im_sta", "<|im_sta")
    add_both("partial_no_close", "<|im_start")
    add_both("partial_no_bar", "<|im_start>")
    add_both("partial_open_only", "<|")
    add_both("special_wrong_case", "<|IM_START|>")
    add_both("special_inner_space", "<| im_start |>")
    add_both("special_nested", "<|<|im_start|>|>")
    add_both("special_other_tokens", "<repo_name>troupe<file_sep><filename>main.cpp<gh_stars>100")
    add_both("special_jupyter", "<jupyter_start><jupyter_code>print(1)<jupyter_output>1<empty_output>")
    add_both("special_with_bad_utf8", b"<|im_start|>\xff<|im_end|>")
    add_both("special_with_emoji", "<|im_start|>😀<|im_end|>")

    # -- generated: every printable ASCII character alone, and with a leading space
    for c in range(0x20, 0x7f):
        add("ascii_%02x" % c, chr(c))
    for c in range(0x21, 0x7f):
        if not chr(c).isalnum():
            add("space_ascii_%02x" % c, " " + chr(c))

    names = [c[0] for c in cases]
    assert len(names) == len(set(names)), "duplicate case names"
    return cases


# Well-formed-looking 4-byte sequences above U+10FFFF: llama.cpp decodes them to a code point, then
# unicode_cpt_to_utf8 throws std::invalid_argument("invalid codepoint") and the process aborts. They cannot have golden
# ids; the script checks (in a child process) that they still abort and records the result in tokenizer.json's notes.
ABORTING_INPUTS = [
    ("above_max_codepoint_110000", b"\xf4\x90\x80\x80"),
    ("above_max_codepoint_140000_lead_f5", b"\xf5\x80\x80\x80"),
    ("above_max_codepoint_1fffff", b"\xf7\xbf\xbf\xbf"),
]


def aborts(path, raw):
    code = ("import sys, llama_cpp; llm = llama_cpp.Llama(model_path=sys.argv[1], vocab_only=True, verbose=False); "
            "llm.tokenize(bytes.fromhex(sys.argv[2]), add_bos=False, special=False)")
    env = dict(os.environ, GGML_NO_BACKTRACE="1")
    result = subprocess.run([sys.executable, "-c", code, path, raw.hex()], capture_output=True, env=env)
    return result.returncode != 0


# ---------------------------------------------------------------------------------------------------------------------
# Prompts for logits.json and greedy.json: (name, text); each is used plain and through the chat template
# ---------------------------------------------------------------------------------------------------------------------

LONG_PASSAGE = (
    "The history of computing is a story of layers. At the bottom are transistors, switching on and off billions of "
    "times a second. Above them sit logic gates, then arithmetic units, then processors that fetch and execute "
    "instructions. Operating systems manage memory and devices so that programs can share a machine safely. "
    "Compilers translate languages that people can read into instructions that processors can run. Libraries "
    "package common work, from sorting lists to drawing windows, so that each program does not start from nothing. "
    "Networks connect machines, and protocols let them agree on how to talk. On top of all of this, applications "
    "serve the people who use them: word processors, web browsers, games, databases, and now language models that "
    "answer questions in plain English. Each layer hides the details of the one below, which is what makes the "
    "whole tower possible to build and to understand. But the hiding is never perfect. A slow disk shows through "
    "as a frozen window; a rounding error in floating point arithmetic shows through as a wrong total in a "
    "spreadsheet; a cache miss shows through as a program that runs ten times slower than expected. Good engineers "
    "learn to look through the layers when something goes wrong, and to trust them when it does not. The best "
    "systems are designed so that the layers rarely leak, and so that when they do, the leak is easy to find. "
    "Summarize this passage in one sentence."
)

PROMPTS = [
    ("one_word", "The"),
    ("one_char", "a"),
    ("short_fact", "The capital of France is"),
    ("count", "1, 2, 3, 4, 5,"),
    ("question", "What is the boiling point of water at sea level?"),
    ("story_start", "Once upon a time, in a small village by the sea, there lived"),
    ("code_python", "def is_prime(n):\n    \"\"\"Return True if n is prime.\"\"\"\n"),
    ("code_cpp", "#include <iostream>\n\nint main() {\n    std::cout <<"),
    ("json_start", '{"name": "Alice", "age": 30, "city":'),
    ("translate", "Translate to French: Good morning, how are you?"),
    ("list", "Three primary colors are:\n1."),
    ("math", "If x + 3 = 10, then x ="),
    ("recipe", "Give me a simple recipe for pancakes."),
    ("chinese", "请用一句话介绍一下你自己。"),
    ("whitespace_prompt", "Name:\tBob\nAge:\t42\n\nName:\tCarol\nAge:"),
    ("long_passage", LONG_PASSAGE),
]


# ---------------------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------------------

def model_path():
    return subprocess.run([os.path.join(ROOT, "scripts", "fetch-model.sh")], check=True, capture_output=True,
                          text=True).stdout.strip()


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def to_bytes(text):
    return text if isinstance(text, bytes) else text.encode("utf-8")


def piece(vocab, token, special):
    """Bytes of one token, as llama_token_to_piece gives them (lstrip 0), with a buffer large enough for any token."""
    buf = ctypes.create_string_buffer(256)
    n = llama_cpp.llama_token_to_piece(vocab, llama_cpp.llama_token(token), buf, len(buf), 0, special)
    assert 0 <= n <= len(buf), (token, n)
    return buf.raw[:n]


def detokenize(vocab, ids, special):
    """llama_detokenize(remove_special=false, unparse_special=special): the reference decoding of a whole sequence."""
    arr = (llama_cpp.llama_token * max(len(ids), 1))(*ids)
    cap = 64 + 256 * len(ids)
    buf = ctypes.create_string_buffer(cap)
    n = llama_cpp.llama_detokenize(vocab, arr, len(ids), buf, cap, False, special)
    assert 0 <= n <= cap, n
    return buf.raw[:n]


def write_json(name, obj):
    """Header keys one per line, then one line per case, so that diffs between regenerations stay readable."""
    lines = []
    for key, value in obj.items():
        if isinstance(value, list) and value and isinstance(value[0], dict):
            items = ",\n".join("  " + json.dumps(v, ensure_ascii=False) for v in value)
            lines.append(" %s: [\n%s\n ]" % (json.dumps(key), items))
        else:
            lines.append(" %s: %s" % (json.dumps(key), json.dumps(value, ensure_ascii=False)))
    path = os.path.join(OUT_DIR, name)
    with open(path, "w", encoding="utf-8") as f:
        f.write("{\n" + ",\n".join(lines) + "\n}\n")
    json.load(open(path, encoding="utf-8"))
    print("wrote %s (%d bytes)" % (path, os.path.getsize(path)))


def reference_name():
    return "llama.cpp via llama-cpp-python %s" % llama_cpp.__version__


def chat_template(path):
    reader = gguf.GGUFReader(path)
    return reader.fields["tokenizer.chat_template"].contents()


def render_chat(template, prompt):
    # Same environment options as Hugging Face transformers' apply_chat_template.
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(messages=[{"role": "user", "content": prompt}],
                                            add_generation_prompt=True)


# ---------------------------------------------------------------------------------------------------------------------
# tokenizer.json
# ---------------------------------------------------------------------------------------------------------------------

def make_tokenizer(path):
    llm = llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)
    vocab = llm._model.vocab
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)

    cases = []
    by_name = {}
    for name, text, special in tokenizer_cases():
        raw = to_bytes(text)
        ids = llm.tokenize(raw, add_bos=False, special=special)
        again = llm.tokenize(raw, add_bos=False, special=special)
        assert ids == again, name
        cases.append({"name": name, "text_hex": raw.hex(), "parse_special": special, "ids": ids})
        by_name[name] = (raw, ids)

    # Detokenizer cases: ids from some tokenizer cases, plus special ids, plus the longest pieces in the vocabulary.
    detok_sources = [
        "empty", "hello_world", "pangram", "paragraph", "contraction_sentence", "contraction_sentence_upper",
        "chinese", "japanese", "korean", "arabic", "hindi", "russian", "greek", "thai", "emoji_zwj_family",
        "emoji_flags", "emoji_skin_tone", "combining_stack", "zalgo", "python", "cpp_tabs", "json", "html", "shell",
        "digits_300", "thousands_commas", "whitespace_mix", "long_spaces_300", "long_newlines_100",
        "ws_nbsp_between", "ws_bom_start", "ws_zwsp_between", "bad_ff_in_text", "bad_surrogate_high",
        "bad_overlong_slash_2byte", "bad_truncated_3byte", "bad_mixed", "long_a_500",
        "chatml_turn_special", "chat_full_special", "special_glued_both_special", "special_jupyter_special",
        "special_with_bad_utf8_special",
    ]
    detok = []
    notes = {"llm_detokenize_differs": []}

    def add_detok(name, ids, special):
        text = detokenize(vocab, ids, special)
        pieces = b"".join(piece(vocab, t, special) for t in ids)
        assert text == pieces, (name, text, pieces)
        if llm.detokenize(ids, special=special) != text:
            notes["llm_detokenize_differs"].append("%s (special=%s)" % (name, special))
        detok.append({"name": name, "ids": ids, "special": special, "text_hex": text.hex()})

    for name in detok_sources:
        ids = by_name[name][1]
        if any(llama_cpp.llama_vocab_is_control(vocab, t) for t in ids):
            add_detok(name, ids, False)
            add_detok(name, ids, True)
        else:
            add_detok(name, ids, False)
    all_special = [t for t in range(n_vocab) if llama_cpp.llama_vocab_is_control(vocab, t)]
    add_detok("all_control_tokens", all_special, False)
    add_detok("all_control_tokens", all_special, True)
    lengths = sorted(range(n_vocab), key=lambda t: (-len(piece(vocab, t, True)), t))
    add_detok("longest_pieces", lengths[:8], False)
    add_detok("first_256_ids", list(range(256)), True)

    # Round trip: which tokenizer cases do not decode back to their input bytes?
    not_round_trip = [c["name"] for c in cases if detokenize(vocab, c["ids"], c["parse_special"]) !=
                      bytes.fromhex(c["text_hex"])]

    header = {
        "reference": reference_name(),
        "model": os.path.basename(path),
        "model_sha256": sha256(path),
        "settings": {"api": "Llama(model_path, vocab_only=True); llm.tokenize(raw, add_bos=False, special=parse_special)",
                     "detokenize": "llama_detokenize(vocab, ids, remove_special=false, unparse_special=special), "
                                   "equal to the concatenation of llama_token_to_piece(id, lstrip=0, special)"},
        "vocab": {"n_vocab": n_vocab, "control_ids": all_special,
                  "bos": llama_cpp.llama_vocab_bos(vocab), "eos": llama_cpp.llama_vocab_eos(vocab)},
        "notes": {
            "invalid_utf8": "each byte that does not start a well-formed sequence becomes U+FFFD (EF BF BD) before "
                            "byte-level BPE; the decoder checks only lead/continuation bit patterns, so overlong "
                            "forms, surrogates (ED A0 80) and code points above U+10FFFF pass through as decoded "
                            "code points",
            "inputs_that_abort_llama_cpp": [{"name": name, "text_hex": raw.hex(), "aborts": aborts(path, raw)}
                                            for name, raw in ABORTING_INPUTS],
            "cases_that_do_not_round_trip": not_round_trip,
            "llm_detokenize_differs_from_llama_detokenize": notes["llm_detokenize_differs"],
        },
    }
    return dict(header, cases=cases, detokenize=detok)


# ---------------------------------------------------------------------------------------------------------------------
# logits.json and greedy.json
# ---------------------------------------------------------------------------------------------------------------------

def last_logits(llm):
    n_vocab = llm.n_vocab()
    ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(n_vocab,)).astype(np.float32).copy()


def top_k(logits, k):
    order = sorted(range(len(logits)), key=lambda t: (-float(logits[t]), t))[:k]
    return [[t, round(float(logits[t]), LOGIT_DECIMALS)] for t in order]


def run_settings(llm):
    cp = llm.context_params
    fa = {llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED: "on", llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED: "off",
          llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO: "auto"}[cp.flash_attn_type]
    types = {1: "f16", 0: "f32", 8: "q8_0", 30: "bf16"}
    return {
        "n_ctx": cp.n_ctx, "n_batch": cp.n_batch, "n_ubatch": cp.n_ubatch,
        "n_threads": cp.n_threads, "n_threads_batch": cp.n_threads_batch,
        "flash_attn": fa, "type_k": types.get(cp.type_k, cp.type_k), "type_v": types.get(cp.type_v, cp.type_v),
        "offload_kqv": bool(cp.offload_kqv), "n_gpu_layers": 0, "logits_all": False, "seed": SEED,
        "backend": llama_cpp.llama_print_system_info().decode().strip(),
        "prompt_eval": "whole prompt in one llama_decode call, logits of the last position only",
    }


def open_model(path, kv_type=None):
    """A full-model Llama with the golden settings. Returns it with the lines llama.cpp logged while making the
    context that show the settings in effect (flash attention, KV cache types), checked against context_params."""
    log = []

    @llama_cpp.llama_log_callback
    def capture(level, text, user_data):
        log.append(text.decode("utf-8", "replace"))

    llama_cpp.llama_log_set(capture, ctypes.c_void_p(0))
    try:
        kv = {} if kv_type is None else {"type_k": kv_type, "type_v": kv_type}
        llm = llama_cpp.Llama(model_path=path, n_ctx=N_CTX, n_batch=N_BATCH, n_threads=N_THREADS,
                              n_threads_batch=N_THREADS, logits_all=False, flash_attn=False, seed=SEED,
                              verbose=False, **kv)
    finally:
        llama_cpp.llama_log_set(llama_cpp._logger.llama_log_callback, ctypes.c_void_p(0))
    lines = "".join(log).splitlines()
    in_effect = [" ".join(line.split()) for line in lines
                 if line.startswith("llama_context: flash_attn") or line.startswith("llama_kv_cache: size")]
    settings = run_settings(llm)
    assert len(in_effect) == 2, in_effect
    assert in_effect[0].endswith("= disabled"), in_effect
    assert "K (%s)" % settings["type_k"] in in_effect[1] and "V (%s)" % settings["type_v"] in in_effect[1], in_effect
    return llm, in_effect


def make_model_files(path, kv_type=None, expect_tokens=None, header_extra=None,
                     spread_note="tinyBLAS vs vec_dot for the attention matmuls, amplified by 8-bit activation "
                                 "quantisation"):
    """logits.json and greedy.json contents for the model at path. kv_type: the ggml type of the K and V cache
    (None: llama.cpp's default, f16). expect_tokens: {case name: prompt ids} the prompts must tokenize to."""
    llm, in_effect = open_model(path, kv_type)
    template = chat_template(path)
    eos = llama_cpp.llama_vocab_eos(llm._model.vocab)

    prompts = []
    for chat in (False, True):
        for name, text in PROMPTS:
            rendered = render_chat(template, text) if chat else text
            tokens = llm.tokenize(rendered.encode("utf-8"), add_bos=False, special=chat)
            case_name = "chat_" + name if chat else "plain_" + name
            if expect_tokens is not None:
                assert tokens == expect_tokens[case_name], case_name
            prompts.append((case_name, chat, text, rendered, tokens))

    def prompt_logits(tokens):
        llm.reset()
        llm.eval(tokens)
        return last_logits(llm)

    # llama.cpp on the CPU is deterministic for a given build: check it before writing anything.
    first = prompt_logits(prompts[4][4])
    assert np.array_equal(first, prompt_logits(prompts[4][4])), "logits differ between two identical runs"

    logit_cases, greedy_cases = [], []
    for name, chat, text, rendered, tokens in prompts:
        logits = prompt_logits(tokens)
        case = {"name": name, "chat": chat, "text": text}
        if chat:
            case["rendered"] = rendered
        case["tokens"] = tokens
        # The same prompt fed one token per llama_decode call: llama.cpp's own spread between its two paths.
        llm.reset()
        for token in tokens:
            llm.eval([token])
        spread = float(np.abs(last_logits(llm) - logits).max())
        logit_cases.append(dict(case, logsumexp=round(float(np.logaddexp.reduce(logits.astype(np.float64))),
                                                       LOGIT_DECIMALS),
                                max_abs_diff_token_by_token=round(spread, LOGIT_DECIMALS),
                                top=top_k(logits, N_TOP)))

        # Greedy: argmax (lowest id on ties), one token per llama_decode call, never stopping at EOS.
        continuation, margins = [], []
        for _ in range(N_GREEDY):
            best2 = np.argsort(-logits, kind="stable")[:2]
            token = int(best2[0])
            continuation.append(token)
            margins.append(round(float(logits[best2[0]] - logits[best2[1]]), LOGIT_DECIMALS))
            llm.eval([token])
            logits = last_logits(llm)
        eos_at = continuation.index(eos) if eos in continuation else None
        greedy_cases.append(dict(case, continuation=continuation, eos_at=eos_at, margins=margins))

    header = {"reference": reference_name(), "model": os.path.basename(path), "model_sha256": sha256(path)}
    header.update(header_extra or {})
    header["settings"] = run_settings(llm)
    if kv_type is not None:
        header["settings"]["in_effect"] = in_effect
    logits_header = dict(header)
    logits_header["settings"] = dict(header["settings"], max_abs_diff_token_by_token="max over the vocabulary of "
                                     "|logit| difference between this batched prompt eval and the same prompt fed "
                                     "one token per llama_decode call (%s)" % spread_note)
    logits_file = dict(logits_header, top_k=N_TOP, cases=logit_cases)
    greedy_header = dict(header)
    greedy_header["settings"] = dict(header["settings"], greedy="prompt in one llama_decode call, then one token "
                                     "per call; argmax of the float32 logits, lowest id on ties; no penalties, no "
                                     "sampler; does not stop at EOS",
                                     margins="logit(best) - logit(second best) at each step")
    greedy_file = dict(greedy_header, n_tokens=N_GREEDY, cases=greedy_cases)
    return logits_file, greedy_file


# ---------------------------------------------------------------------------------------------------------------------
# logits_f32.json and greedy_f32.json: the exact-arithmetic reference
# ---------------------------------------------------------------------------------------------------------------------

GGML_TYPE_F32 = 0
DEQUANTISATION = ("every tensor of the source GGUF converted to float32 with gguf-py %s (GGUFReader, "
                  "gguf.quants.dequantize: Q4_1 d*q+m, Q8_0 d*q, F32 copied) and written with GGUFWriter: same "
                  "metadata keys, values and order (strings byte for byte), same tensor names, shapes and order, "
                  "general.file_type 0 (ALL_F32). Every dequantised weight is exactly representable in float32, so "
                  "the copy is lossless: it is the weights the Q4_1 file stands for")


def f32_model_path(path):
    name = os.path.basename(path)
    stem = name[:-len(".gguf")].rsplit(".", 1)[0] if name.count(".") >= 2 else name[:-len(".gguf")]
    return os.path.join(os.path.dirname(path), stem + ".F32.gguf")


def exact_dequantise(data, qtype):
    """Float64 dequantisation of Q4_1/Q8_0 blocks, written independently of gguf-py, to prove float32 loses nothing."""
    f16 = lambda b: b.view(np.float16).astype(np.float64)
    if qtype == gguf.GGMLQuantizationType.Q8_0:
        blocks = data.reshape(-1, 34)
        return (f16(blocks[:, :2].copy()) * blocks[:, 2:].view(np.int8)).reshape(data.shape[0], -1)
    if qtype == gguf.GGMLQuantizationType.Q4_1:
        blocks = data.reshape(-1, 20)
        q = np.concatenate([blocks[:, 4:] & 15, blocks[:, 4:] >> 4], axis=1).astype(np.float64)
        return (f16(blocks[:, :2].copy()) * q + f16(blocks[:, 2:4].copy())).reshape(data.shape[0], -1)
    assert qtype == gguf.GGMLQuantizationType.F32, qtype
    return data.astype(np.float64)


def field_raw(field):
    """A metadata value as the writer takes it, with strings as raw bytes so that they round-trip exactly."""
    main = field.types[0]
    if main == gguf.GGUFValueType.STRING:
        return bytes(field.parts[field.data[0]])
    if main == gguf.GGUFValueType.ARRAY:
        sub = field.types[-1]
        if sub == gguf.GGUFValueType.STRING:
            return [bytes(field.parts[i]) for i in field.data]
        assert len(field.types) == 2, field.name  # no nested arrays in this model
        return [field.parts[i].tolist()[0] for i in field.data]
    return field.parts[field.data[0]].tolist()[0]


def write_f32_model(src, dst):
    reader = gguf.GGUFReader(src)
    arch = reader.fields["general.architecture"].contents()
    tmp = dst + ".tmp"
    writer = gguf.GGUFWriter(tmp, arch)
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue  # the writer makes the GGUF header and general.architecture itself
        value = field_raw(field)
        if name == "general.file_type":
            value = int(gguf.LlamaFileType.ALL_F32)
        sub = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, value, field.types[0], sub_type=sub)
    inexact = 0
    for t in reader.tensors:
        shape = [int(d) for d in reversed(t.shape)]
        data = np.ascontiguousarray(gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(shape))
        exact = exact_dequantise(np.asarray(t.data), t.tensor_type).reshape(shape)
        inexact += int(np.count_nonzero(data.astype(np.float64) != exact))
        writer.add_tensor(t.name, data)
    assert inexact == 0, "%d weights are not exactly representable in float32" % inexact
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(tmp, dst)
    return reader


def check_f32_model(src_reader, dst):
    """The F32 file reads back with the source's metadata (all but file_type) and the dequantised tensors."""
    reader = gguf.GGUFReader(dst)
    skip = ("GGUF.tensor_count", "general.file_type")
    a = [(k, f.types, field_raw(f)) for k, f in src_reader.fields.items() if k not in skip]
    b = [(k, f.types, field_raw(f)) for k, f in reader.fields.items() if k not in skip]
    assert a == b, "metadata differs"
    assert reader.fields["general.file_type"].contents() == int(gguf.LlamaFileType.ALL_F32)
    assert [(t.name, t.shape.tolist()) for t in reader.tensors] == \
        [(t.name, t.shape.tolist()) for t in src_reader.tensors]
    for t, s in zip(reader.tensors, src_reader.tensors):
        assert t.tensor_type == gguf.GGMLQuantizationType.F32, t.name
        assert np.array_equal(np.asarray(t.data).reshape(-1),
                              gguf.quants.dequantize(s.data, s.tensor_type).astype(np.float32).reshape(-1)), t.name
    return reader


def check_same_tokenizer(src, dst):
    a = llama_cpp.Llama(model_path=src, vocab_only=True, verbose=False)
    b = llama_cpp.Llama(model_path=dst, vocab_only=True, verbose=False)
    n = 0
    for name, text, special in tokenizer_cases():
        raw = to_bytes(text)
        assert a.tokenize(raw, add_bos=False, special=special) == b.tokenize(raw, add_bos=False, special=special), name
        n += 1
    va, vb = a._model.vocab, b._model.vocab
    n_vocab = llama_cpp.llama_vocab_n_tokens(va)
    assert n_vocab == llama_cpp.llama_vocab_n_tokens(vb)
    assert all(piece(va, t, True) == piece(vb, t, True) for t in range(n_vocab))
    return n


def make_f32_files(path, expect_tokens):
    dst = f32_model_path(path)
    src_reader = write_f32_model(path, dst)
    check_f32_model(src_reader, dst)
    n = check_same_tokenizer(path, dst)
    print("wrote %s (%d bytes); metadata, tensors and tokenizer (%d cases, every piece) match the source"
          % (dst, os.path.getsize(dst), n))
    extra = {"source_model": os.path.basename(path), "source_model_sha256": sha256(path),
             "dequantisation": DEQUANTISATION % importlib.metadata.version("gguf")}
    return make_model_files(dst, kv_type=GGML_TYPE_F32, expect_tokens=expect_tokens, header_extra=extra,
                            spread_note="with F32 weights and an f32 KV cache there is no activation quantisation "
                                        "and no fp16 rounding, so only summation order differs: tinyBLAS vs "
                                        "vec_dot")


# ---------------------------------------------------------------------------------------------------------------------
# --compare-fp32: how far llama.cpp is from exact arithmetic (prints only; writes nothing)
# ---------------------------------------------------------------------------------------------------------------------

def fp32_forward(weights, hp, tokens):
    """Plain forward pass with the dequantised GGUF weights: float32 weights, float64 accumulation, f32 KV, exact
    softmax and SiLU. RoPE is llama.cpp's NORM mode (adjacent pairs), which the converter's Q/K permutation expects."""
    dim, n_head, n_kv, head, eps, base = hp
    n = len(tokens)
    x = weights["token_embd.weight"][tokens].astype(np.float64)
    pos = np.arange(n, dtype=np.float64)
    theta = pos[:, None] * base ** (-2.0 * np.arange(head // 2) / head)
    cos, sin = np.cos(theta)[:, None, :], np.sin(theta)[:, None, :]

    def rms(v, w):
        return v / np.sqrt((v * v).mean(-1, keepdims=True) + eps) * w

    def rope(v):
        out = np.empty_like(v)
        out[..., 0::2] = v[..., 0::2] * cos - v[..., 1::2] * sin
        out[..., 1::2] = v[..., 0::2] * sin + v[..., 1::2] * cos
        return out

    layer = 0
    while "blk.%d.attn_q.weight" % layer in weights:
        w = lambda name: weights["blk.%d.%s.weight" % (layer, name)]
        h = rms(x, w("attn_norm"))
        q = rope((h @ w("attn_q").T).reshape(n, n_head, head))
        k = np.repeat(rope((h @ w("attn_k").T).reshape(n, n_kv, head)), n_head // n_kv, axis=1)
        v = np.repeat((h @ w("attn_v").T).reshape(n, n_kv, head), n_head // n_kv, axis=1)
        att = np.einsum("thd,shd->hts", q, k) / np.sqrt(head) + np.triu(np.full((n, n), -np.inf), 1)
        att = np.exp(att - att.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        x = x + np.einsum("hts,shd->thd", att, v).reshape(n, dim) @ w("attn_output").T
        h = rms(x, w("ffn_norm"))
        g, u = h @ w("ffn_gate").T, h @ w("ffn_up").T
        x = x + (g / (1 + np.exp(-g)) * u) @ w("ffn_down").T
        layer += 1
    out = weights.get("output.weight", weights["token_embd.weight"])
    return rms(x[-1], weights["output_norm.weight"]) @ out.T


def compare_fp32(path):
    from gguf.quants import dequantize
    reader = gguf.GGUFReader(path)
    weights = {}
    for t in reader.tensors:
        a = dequantize(t.data, t.tensor_type).astype(np.float32)
        weights[t.name] = a.reshape([int(d) for d in reversed(t.shape)])
    f = lambda key: reader.fields["llama." + key].contents()
    hp = (f("embedding_length"), f("attention.head_count"), f("attention.head_count_kv"),
          f("embedding_length") // f("attention.head_count"), f("attention.layer_norm_rms_epsilon"),
          f("rope.freq_base"))
    files = [name for name in ("logits.json", "logits_f32.json") if os.path.exists(os.path.join(OUT_DIR, name))]
    goldens = [json.load(open(os.path.join(OUT_DIR, name), encoding="utf-8"))["cases"] for name in files]
    print("case  tokens  " + "  ".join("%s: max|top20 - fp32|, top1 agrees" % name for name in files))
    for cases in zip(*goldens):
        exact = fp32_forward(weights, hp, np.array(cases[0]["tokens"]))
        cols = []
        for case in cases:
            assert case["tokens"] == cases[0]["tokens"], case["name"]
            diff = max(abs(logit - exact[t]) for t, logit in case["top"])
            cols.append("%.5f %-5s" % (diff, int(np.argmax(exact)) == case["top"][0][0]))
        print("%-26s %4d  %s" % (cases[0]["name"], len(cases[0]["tokens"]), "  ".join(cols)))


def main():
    path = model_path()
    if sys.argv[1:] == ["--compare-fp32"]:
        return compare_fp32(path)
    assert sys.argv[1:] in ([], ["--f32-only"]), "usage: make_goldens.py [--f32-only | --compare-fp32]"
    os.makedirs(OUT_DIR, exist_ok=True)
    if sys.argv[1:] == []:
        write_json("tokenizer.json", make_tokenizer(path))
        logits_file, greedy_file = make_model_files(path)
        write_json("logits.json", logits_file)
        write_json("greedy.json", greedy_file)
    # The F32 reference uses exactly the prompts (and ids) of logits.json.
    logits = json.load(open(os.path.join(OUT_DIR, "logits.json"), encoding="utf-8"))
    logits_file, greedy_file = make_f32_files(path, {c["name"]: c["tokens"] for c in logits["cases"]})
    write_json("logits_f32.json", logits_file)
    write_json("greedy_f32.json", greedy_file)


if __name__ == "__main__":
    sys.exit(main())
