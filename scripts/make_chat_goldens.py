#!/usr/bin/env python3
"""Regenerates tests/golden/chat_template.json: chat templates rendered by Python's jinja2, the reference for Troupe's
own Jinja interpreter (src/chat_template.cpp, src/jinja_*.cpp).

    python3 scripts/make_chat_goldens.py

The environment is the one Hugging Face transformers builds for apply_chat_template:
    jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                 extensions=[jinja2.ext.loopcontrols])
with jinja2's defaults otherwise (keep_trailing_newline=False, no autoescape), plus a `raise_exception(msg)` global
that raises. (transformers also adds its AssistantTracker extension, which only matters for {% generation %} blocks,
and a `tojson` filter and `strftime_now` global; none of the templates here use them.) Each case renders
    template.render(messages=..., add_generation_prompt=..., bos_token=..., eos_token=...)

Templates: SmolLM2's own (read from the GGUF with the `gguf` package), a plain multi-line ChatML, a Qwen2.5-style
ChatML with whitespace control and a default system prompt, a Llama-2/Mistral-style template that calls
raise_exception on a bad role order, a "kitchen sink" template that exercises the rest of the supported subset, a
Zephyr-style template, and one built on namespace(), slices and filtered loops.
Output is deterministic: same jinja2 gives a byte-identical file.
"""

import json
import os

import gguf
import jinja2
import jinja2.ext
import jinja2.sandbox

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
OUT = os.path.join(ROOT, "tests", "golden", "chat_template.json")

SETTINGS = {
    "environment": "jinja2.sandbox.ImmutableSandboxedEnvironment",
    "trim_blocks": True,
    "lstrip_blocks": True,
    "keep_trailing_newline": False,
    "extensions": ["jinja2.ext.loopcontrols"],
    "globals": ["raise_exception"],
    "jinja2_version": jinja2.__version__,
}


def make_env():
    # The same settings as transformers' _compile_jinja_template (see the module docstring).
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    env.globals["raise_exception"] = raise_exception
    return env


def smollm2_template():
    reader = gguf.GGUFReader(MODEL)
    field = reader.fields["tokenizer.chat_template"]
    return bytes(field.parts[field.data[0]]).decode("utf-8")


# A plain ChatML template written over several lines: trim_blocks removes the newline after each block tag,
# and keep_trailing_newline=False drops the template's final newline.
CHATML = """{% for message in messages %}
<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% endfor %}
{% if add_generation_prompt %}
<|im_start|>assistant
{% endif %}
"""

# In the style of Qwen2.5's template: whitespace control everywhere, a default system prompt, loop.last.
QWEN_STYLE = """{#- Qwen2.5-style ChatML (written for Troupe's tests) -#}
{%- set default_system = 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' %}
{%- if messages[0]['role'] == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
{%- else %}
    {{- '<|im_start|>system\\n' ~ default_system ~ '<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if message.role == "system" and loop.first %}
    {%- elif message.role in ['user', 'assistant'] %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content | trim + '<|im_end|>' }}
        {%- if not loop.last or add_generation_prompt %}
            {{- '\\n' }}
        {%- endif %}
    {%- else %}
        {{- '<|im_start|>' ~ message['role'] ~ '\\n' ~ message.content ~ '<|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

# Llama-2 / Mistral style: roles must alternate user/assistant, or the template raises.
ALTERNATING = """{% if messages[0]['role'] == 'system' %}
    {% set loop_messages = messages[1:] %}
    {% set system_message = messages[0]['content'] %}
{% else %}
    {% set loop_messages = messages %}
    {% set system_message = false %}
{% endif %}
{{ bos_token }}
{% for message in loop_messages %}
    {% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {% endif %}
    {% if loop.index0 == 0 and system_message != false %}
        {% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}
    {% else %}
        {% set content = message['content'] %}
    {% endif %}
    {% if message['role'] == 'user' %}
        {{ '[INST] ' + content.strip() + ' [/INST]' }}
    {% elif message['role'] == 'assistant' %}
        {{ ' ' + content.strip() + ' ' + eos_token }}
    {% endif %}
{% endfor %}
"""

# Everything else in the subset: literals, printing of values (Python str/repr), arithmetic, comparisons, tests,
# filters, undefined variables, slices, negative indices, inline if, for-else, loop fields, break/continue, comments,
# {%+ and +%}, and string methods.
KITCHEN_SINK = """{# header comment #}
count={{ messages | length }} first={{ messages[0].role }} last={{ messages[-1]['role'] | upper }}
{% set xs = [1, 2, 'three', none, true, False] %}
xs={{ xs }} len={{ xs|length }} sum={{ 1 + 2 * 3 - 4 // 3 }} mod={{ 7 % 3 }} neg={{ -5 + 2 }}
{{ 'a' ~ 1 ~ none ~ true }}|{{ "dq \\"esc\\" \\t tab" }}|{{ 'sq \\'esc\\'' }}|{{ 'uni \\u00e9 é' }}
{{ [1, 'two', "it's", 'a"b', [none]] }}|{{ {'k': 'v', 'n': 1} }}|{{ none }}|{{ True }}|{{ 'x' * 3 }}
undefined=[{{ nothing }}][{{ nothing | default('dflt') }}][{{ nothing | length }}][{{ nothing | trim }}]
{% if nothing is defined %}defined{% else %}undefined{% endif %} {% if nothing is not defined %}ok{% endif %}
{{ 'yes' if add_generation_prompt else 'no' }} {{ 'x' if false }}|{{ none is none }} {{ 'a' is string }} {{ 1 is string }}
{{ 1 < 2 }} {{ 2 <= 1 }} {{ 'a' == 'a' }} {{ 'a' != 'b' }} {{ 3 > 2 > 1 }} {{ 1 == true }} {{ 'b' in 'abc' }} {{ 'z' not in ['a'] }}
{{ not true or false and true }} {{ (1 or 0) }} {{ 0 or 'fallback' }} {{ '' and 'x' }}
{{ '  padded  ' | trim }}|{{ 'MiXeD' | lower }}|{{ 42 | string + '!' }}|{{ ''|default('empty') }}|{{ ''|default('empty', true) }}
    {% for m in messages %}
  {{ loop.index }}/{{ loop.length }} i0={{ loop.index0 }} first={{ loop.first }} last={{ loop.last }} rev={{ loop.revindex }} {{ m.role }}: {{ m.content | length }}
    {% endfor %}
{% for x in [] %}never{% else %}empty-else{% endfor %}
{% for x in [1, 2, 3, 4, 5] %}{% if x == 2 %}{% continue %}{% endif %}{% if x == 4 %}{% break %}{% endif %}{{ x }}{% endfor %}
{% for m in messages[1:] %}[{{ m.role }}]{% endfor %} {{ messages[:1] | length }} {{ 'hello'[1:3] }} {{ 'hello'[-1] }}
{%+ if true %}plus-kept{% endif %}
   {% if true +%}
trim-kept{% endif %}
{% set outer = 'o' %}{% for i in [1] %}{% set outer = 'inner' %}{{ outer }}{% endfor %} {{ outer }}
{{ ' a b '.strip() }}|{{ 'abc'.startswith('ab') }}|{{ 'abc'.endswith('x') }}|{{ 'a,b'.split(',') }}|{{ 'aXa'.replace('X', '-') }}
{{ messages[0].get('role') }} {{ messages[0].get('missing', 'dv') }} {{ 'abc'.upper() }} {{ messages[0].get('x') }}
{{ 'héllo Straße ÀÉ Привет Ωμέγα' | upper }} {{ 'ÀÉ ПРИВЕТ ΩΜΈΓΑ' | lower }} {{ 'éCOLE' | capitalize }}
{% for k, v in {'a': 1, 'b': [2]}.items() %}{{ k }}={{ v }};{% endfor %} {{ range(3) | list }} {{ [3, 1] | first }}
{%- for m in messages -%}
  <{{- m.role -}}>
{%- endfor %}
tail {{ bos_token }}{{ eos_token }}
"""

# Zephyr style: one tag per role, the generation prompt after the last message.
ZEPHYR_STYLE = """{% for message in messages %}
{% if message['role'] == 'user' %}
{{ '<|user|>\n' + message['content'] + eos_token }}
{% elif message['role'] == 'system' %}
{{ '<|system|>\n' + message['content'] + eos_token }}
{% elif message['role'] == 'assistant' %}
{{ '<|assistant|>\n'  + message['content'] + eos_token }}
{% endif %}
{% if loop.last and add_generation_prompt %}
{{ '<|assistant|>' }}
{% endif %}
{% endfor %}"""

# A namespace() carried across the loop, a reversed walk over the messages, a filtered loop and {% set %} blocks.
NAMESPACE_STYLE = """{%- set ns = namespace(last_user=-1, n_user=0) %}
{%- for m in messages[::-1] %}
    {%- if ns.last_user == -1 and m.role == 'user' %}
        {%- set ns.last_user = messages | length - 1 - loop.index0 %}
    {%- endif %}
{%- endfor %}
{%- for m in messages if m.role != 'system' %}
    {%- set ns.n_user = ns.n_user + (1 if m.role == 'user' else 0) %}
    {%- set header %}<|{{ m.role }}|> #{{ loop.index }}/{{ loop.length }}{% endset %}
    {{- header }}
    {%- if loop.index0 + (1 if messages[0].role == 'system' else 0) == ns.last_user %} (last user turn){% endif %}
{{ m.content | trim }}
{% endfor %}
{%- if add_generation_prompt -%}
    <|assistant|> after {{ ns.n_user }} user turn{{ 's' if ns.n_user != 1 }}
{% endif %}"""

M_USER = {"role": "user", "content": "Hello!"}
M_SYS = {"role": "system", "content": "You are a terse assistant."}
M_ASSIST = {"role": "assistant", "content": "Hi there. How can I help?"}
M_USER2 = {"role": "user", "content": "What is 2+2?"}
M_EMPTY = {"role": "user", "content": ""}
M_NEWLINES = {"role": "user", "content": "line one\nline two\n\n  indented line\n"}
M_UNICODE = {"role": "user", "content": "héllo wörld, 世界, Привет, 🎉👍🏽, \u00a0nbsp"}
M_JINJA = {"role": "user", "content": "{{ x }} {% if y %}z{% endif %} {# c #} {{- raise_exception('no') -}}"}
M_PADDED = {"role": "user", "content": "   padded with spaces\t \n"}
M_QUOTES = {"role": "assistant", "content": "It's \"quoted\" \\ backslash"}
M_TOOL = {"role": "tool", "content": "{\"result\": 4}"}

CONVERSATIONS = [
    ("no_system", [M_USER]),
    ("with_system", [M_SYS, M_USER]),
    ("multi_turn", [M_SYS, M_USER, M_ASSIST, M_USER2]),
    ("multi_turn_no_system", [M_USER, M_ASSIST, M_USER2, M_ASSIST]),
    ("empty_content", [M_EMPTY]),
    ("newlines", [M_SYS, M_NEWLINES]),
    ("unicode", [M_UNICODE]),
    ("jinja_looking_content", [M_JINJA, M_ASSIST]),
    ("padded_and_quotes", [M_PADDED, M_QUOTES]),
    ("tool_role", [M_USER, M_TOOL]),
]

BAD_ORDER = [
    ("assistant_first", [{"role": "assistant", "content": "I speak first."}]),
    ("two_users", [M_SYS, M_USER, M_USER2]),
]


def render_cases(env, source, conversations, bos="", eos=""):
    template = env.from_string(source)
    cases = []
    for name, messages in conversations:
        for agp in (False, True):
            case = {
                "name": name,
                "messages": messages,
                "add_generation_prompt": agp,
                "bos_token": bos,
                "eos_token": eos,
            }
            try:
                case["rendered"] = template.render(
                    messages=messages, add_generation_prompt=agp, bos_token=bos, eos_token=eos
                )
            except jinja2.exceptions.TemplateError as e:
                case["error"] = True
                case["error_message"] = str(e)
            cases.append(case)
    return cases


def main():
    env = make_env()
    templates = [
        ("smollm2", smollm2_template(), CONVERSATIONS, "", ""),
        ("chatml_plain", CHATML, CONVERSATIONS, "", ""),
        ("qwen_style", QWEN_STYLE, CONVERSATIONS, "", ""),
        ("alternating_roles", ALTERNATING, CONVERSATIONS[:4] + BAD_ORDER, "<s>", "</s>"),
        ("kitchen_sink", KITCHEN_SINK, CONVERSATIONS[:4], "<s>", "</s>"),
        ("zephyr_style", ZEPHYR_STYLE, CONVERSATIONS, "<s>", "</s>"),
        ("namespace_style", NAMESPACE_STYLE, CONVERSATIONS, "", ""),
    ]
    out = {"settings": SETTINGS, "templates": []}
    n = 0
    for name, source, conversations, bos, eos in templates:
        cases = render_cases(env, source, conversations, bos, eos)
        n += len(cases)
        out["templates"].append({"name": name, "source": source, "cases": cases})
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {OUT}: {len(templates)} templates, {n} cases")


if __name__ == "__main__":
    main()
