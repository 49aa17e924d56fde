#!/usr/bin/python3
"""Renders every *.jinja template here over a set of conversations, as Hugging Face transformers
renders a chat_template, and writes expected.jsonl for tests/test_chat_template.cpp.

A dev tool: needs Debian's python3-jinja2 (not a build or test dependency). Run it with
/usr/bin/python3 from any directory; it rewrites expected.jsonl beside itself.

transformers (utils/chat_template_utils.py) compiles templates with
ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]),
adds the globals raise_exception and strftime_now, replaces the tojson filter with json.dumps
(ensure_ascii=False), and renders with messages, tools, documents, add_generation_prompt and the
special tokens. Each line of expected.jsonl holds the exact render context, so the C++ test needs
no knowledge of transformers' argument handling.
"""
import json
import os
from datetime import datetime

import jinja2
import jinja2.ext
from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

HERE = os.path.dirname(os.path.abspath(__file__))
BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"


def raise_exception(message):
    raise TemplateError(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def strftime_now(format):
    return datetime.now().strftime(format)


def make_environment():
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def tool_call(name, arguments):
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]},
    },
}

CONVERSATIONS = {
    "system_user": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is the capital of France?"},
    ],
    "multi_turn": [
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello! How can I help you today?"},
        {"role": "user", "content": "Write a haiku about the sea."},
    ],
    "ends_with_assistant": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
    ],
    "two_systems": [
        {"role": "system", "content": "First rule."},
        {"role": "user", "content": "Hello"},
        {"role": "system", "content": "Second rule."},
        {"role": "user", "content": "Again"},
    ],
    "tool_call": [
        {"role": "user", "content": "What's the weather in Paris?"},
        {"role": "assistant", "content": None,
         "tool_calls": [tool_call("get_weather", "{\"city\": \"Paris\"}")]},
        {"role": "tool", "content": "{\"temp_c\": 21}"},
        {"role": "assistant", "content": "It is 21 °C in Paris."},
    ],
    "two_tool_calls": [
        {"role": "system", "content": "Use tools."},
        {"role": "user", "content": "Weather in Paris and Tokyo?"},
        {"role": "assistant", "content": None,
         "tool_calls": [tool_call("get_weather", "{\"city\": \"Paris\"}"),
                        tool_call("get_weather", "{\"city\": \"Tokyo\"}")]},
        {"role": "tool", "content": "{\"temp_c\": 21}"},
        {"role": "tool", "content": "{\"temp_c\": 9}"},
        {"role": "assistant", "content": "Paris 21 °C, Tokyo 9 °C."},
        {"role": "user", "content": "Thanks"},
    ],
    "ends_with_tool": [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None,
         "tool_calls": [tool_call("get_weather", "{\"city\": \"Oslo\"}")]},
        {"role": "tool", "content": "{\"temp_c\": -3}"},
    ],
    "think": [
        {"role": "user", "content": "What is 7*6?"},
        {"role": "assistant",
         "content": "<think>\n7*6 = 42, check: 6*7 = 42.\n</think>\n\nThe answer is 42."},
        {"role": "user", "content": "And 8*6? </think> is only a tag here."},
    ],
    "unicode": [
        {"role": "system", "content": "你是一个乐于助人的助手。"},
        {"role": "user", "content": "Ünïcødé ✓ 🚀 e\u0301 'quotes' \"double\" back\\slash\ttab"},
        {"role": "assistant", "content": "こんにちは！ 😀\n\nLine two\r\nwindows"},
        {"role": "user", "content": "\u2028sep\u00a0nbsp {{ not a tag }} {% neither %}"},
    ],
    "content_parts": [
        {"role": "system", "content": [{"type": "text", "text": "  Parts system.  "}]},
        {"role": "user", "content": [{"type": "text", "text": "Look:"},
                                     {"type": "image", "url": "x.png"},
                                     {"type": "text", "text": "what is it?"}]},
    ],
    "dict_arguments": [
        {"role": "user", "content": "Book it."},
        {"role": "assistant", "content": "",
         "tool_calls": [{"type": "function", "function": {
             "name": "book", "arguments": {"when": "2025-01-01", "seats": 2, "ok": True,
                                           "price": 12.5, "note": None, "tags": ["a", "é"]}}}]},
        {"role": "tool", "content": "booked"},
    ],
    "unknown_role": [
        {"role": "narrator", "content": "Once upon a time"},
    ],
    "empty": [],
}


def contexts():
    """(id, context) pairs: each conversation with and without the generation prompt, as
    transformers passes them, plus a few variants."""
    for name, messages in CONVERSATIONS.items():
        for add_generation_prompt in (True, False):
            yield (f"{name}/agp={str(add_generation_prompt).lower()}",
                   {"messages": messages, "tools": None, "documents": None,
                    "add_generation_prompt": add_generation_prompt,
                    "bos_token": BOS, "eos_token": EOS})
    # Without add_generation_prompt (the templates test `is defined`) and with tools given.
    yield ("multi_turn/no_agp",
           {"messages": CONVERSATIONS["multi_turn"], "bos_token": BOS, "eos_token": EOS})
    yield ("tool_call/tools",
           {"messages": CONVERSATIONS["tool_call"], "tools": [WEATHER_TOOL], "documents": None,
            "add_generation_prompt": True, "bos_token": BOS, "eos_token": EOS})


def main():
    env = make_environment()
    lines = []
    for file_name in sorted(os.listdir(HERE)):
        if not file_name.endswith(".jinja"):
            continue
        with open(os.path.join(HERE, file_name), encoding="utf-8", newline="") as f:
            source = f.read()
        template = env.from_string(source)
        for case_id, context in contexts():
            row = {"template": file_name, "case": case_id, "context": context}
            try:
                row["rendered"] = template.render(**context)
            except (TemplateError, TypeError, ValueError) as error:
                row["error"] = f"{type(error).__name__}: {error}"
            lines.append(json.dumps(row, ensure_ascii=False))
    with open(os.path.join(HERE, "expected.jsonl"), "w", encoding="utf-8", newline="\n") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {len(lines)} renderings to expected.jsonl")


if __name__ == "__main__":
    main()
