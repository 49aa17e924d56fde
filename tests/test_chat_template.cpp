// test_chat_template.cpp: chat templates rendered as transformers renders them. Every rendering
// in tests/data/chat_templates/expected.jsonl (made by Python jinja2 with transformers' settings,
// make_expected.py) and the chats of the DeepSeek-V3 tokenizer fixture must match byte for byte;
// then unit tests of the Jinja subset.
#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "text/chat_template.h"
#include "util/check.h"

namespace dsmoe::text {
namespace {

using OrderedJson = nlohmann::ordered_json;

const std::string kDataDir = DSMOE_TEST_DATA;

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << path;
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

std::vector<OrderedJson> read_jsonl(const std::string& path) {
  std::vector<OrderedJson> rows;
  std::istringstream in(read_file(path));
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) rows.push_back(OrderedJson::parse(line));
  return rows;
}

std::string render(const std::string& source, const OrderedJson& context = OrderedJson::object()) {
  return ChatTemplate(source).render(context);
}

// The message of the error that rendering (or parsing) `source` throws.
std::string error_of(const std::string& source,
                     const OrderedJson& context = OrderedJson::object()) {
  try {
    render(source, context);
  } catch (const Error& error) {
    return error.what();
  }
  return "(no error)";
}

TEST(ChatTemplate, ExpectedRenderingsMatchJinja2) {
  const std::string dir = kDataDir + "/chat_templates/";
  const auto rows = read_jsonl(dir + "expected.jsonl");
  ASSERT_GE(rows.size(), 80u);
  std::map<std::string, ChatTemplate> templates;
  int n_rendered = 0, n_errors = 0;
  for (const auto& row : rows) {
    const std::string name = row["template"];
    if (!templates.count(name)) templates.emplace(name, ChatTemplate(read_file(dir + name)));
    const ChatTemplate& chat_template = templates.at(name);
    const std::string where = name + " " + row["case"].get<std::string>();
    if (row.contains("error")) {
      EXPECT_THROW(chat_template.render(row["context"]), Error) << where;
      ++n_errors;
      continue;
    }
    std::string rendered;
    try {
      rendered = chat_template.render(row["context"]);
    } catch (const Error& error) {
      ADD_FAILURE() << where << ": " << error.what();
      continue;
    }
    EXPECT_EQ(rendered, row["rendered"].get<std::string>()) << where;
    ++n_rendered;
  }
  EXPECT_GT(n_rendered, 70);
  EXPECT_GT(n_errors, 0);
}

TEST(ChatTemplate, DeepSeekV3FixtureChats) {
  const std::string dir = kDataDir + "/tokenizer-v3/";
  const auto config = OrderedJson::parse(read_file(dir + "tokenizer_config.json"));
  const ChatTemplate chat_template(config["chat_template"].get<std::string>());
  const auto chats = read_jsonl(dir + "chat.jsonl");
  ASSERT_EQ(chats.size(), 3u);
  for (const auto& chat : chats) {
    OrderedJson context = {{"messages", chat["messages"]},
                           {"add_generation_prompt", chat["add_generation_prompt"]},
                           {"bos_token", config["bos_token"]["content"]},
                           {"eos_token", config["eos_token"]["content"]}};
    EXPECT_EQ(chat_template.render(context), chat["rendered"].get<std::string>());
  }
}

TEST(ChatTemplate, PlainJsonContextWorks) {
  const ChatTemplate chat_template(
      "{% for m in messages %}{{ m.role }}:{{ m['content'] }};{% endfor %}");
  const nlohmann::json context = {{"messages", {{{"role", "user"}, {"content", "hi"}}}}};
  EXPECT_EQ(chat_template.render(context), "user:hi;");
}

TEST(JinjaSubset, WhitespaceControl) {
  EXPECT_EQ(render("a  {%- if true %} b {% endif -%}  \n c"), "a b c");
  EXPECT_EQ(render("a  {{- 'x' -}}  b"), "axb");
  // trim_blocks: the newline after a block tag goes; lstrip_blocks: the indent before it goes.
  EXPECT_EQ(render("{% if true %}\n  x\n  {% endif %}\ny"), "  x\ny");
  EXPECT_EQ(render("<\n    {% for i in [1, 2] %}\n    {{ i }}\n    {% endfor %}\n>"),
            "<\n    1\n    2\n>");
  // Not at the start of a line: lstrip_blocks leaves the spaces.
  EXPECT_EQ(render("{{ 'x' }}  {% if true %}y{% endif %}"), "x  y");
  // `+` turns lstrip_blocks and trim_blocks off for that tag.
  EXPECT_EQ(render("  {%+ if true +%}\nx{% endif %}"), "  \nx");
  // Variable tags keep their newline; one trailing newline of the template is dropped.
  EXPECT_EQ(render("{{ 1 }}\n{{ 2 }}\n"), "1\n2");
  EXPECT_EQ(render("a\r\nb{# comment #}\nc {#- x -#} d"), "a\nbcd");
  EXPECT_EQ(render("{% raw %}{{ not evaluated }}{% endraw %}"), "{{ not evaluated }}");
}

TEST(JinjaSubset, LoopsAndLoopVariable) {
  EXPECT_EQ(render("{% for x in ['a', 'b', 'c'] %}{{ loop.index0 }}{{ loop.index }}{{ x }}"
                   "{% if loop.first %}F{% endif %}{% if loop.last %}L{% endif %}"
                   "{{ loop.length }}{{ loop.revindex }},{% endfor %}"),
            "01aF33,12b32,23cL31,");
  EXPECT_EQ(render("{% for x in [] %}x{% else %}empty{% endfor %}"), "empty");
  EXPECT_EQ(render("{% for x in [1, 2, 3, 4] if x is even %}{{ x }}{{ loop.length }} {% endfor %}"),
            "22 42 ");
  EXPECT_EQ(render("{% for x in range(10) %}{% if x == 3 %}{% break %}{% endif %}"
                   "{% if x == 1 %}{% continue %}{% endif %}{{ x }}{% endfor %}"),
            "02");
  EXPECT_EQ(render("{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}",
                   OrderedJson::parse(R"({"d": {"z": 1, "a": [2]}})")),
            "z=1;a=[2];");
  EXPECT_EQ(render("{% for m in messages[1:] %}{{ m }}{% endfor %}{{ messages[::-1] }}",
                   {{"messages", {1, 2, 3}}}),
            "23[3, 2, 1]");
}

TEST(JinjaSubset, SetScopesAndNamespace) {
  // A set inside a loop does not leak out of it, nor from one iteration into the next.
  EXPECT_EQ(render("{% set x = 1 %}{% for i in [1, 2] %}{{ x }}{% set x = i * 10 %}{{ x }}"
                   "{% endfor %}{{ x }}"),
            "1101201");
  // A set inside an if does.
  EXPECT_EQ(render("{% if true %}{% set y = 'in' %}{% endif %}{{ y }}"), "in");
  EXPECT_EQ(render("{% set ns = namespace(count=0, text='') %}{% for i in range(3) %}"
                   "{% set ns.count = ns.count + i %}{% set ns.text = ns.text ~ i %}{% endfor %}"
                   "{{ ns.count }} {{ ns.text }}"),
            "3 012");
  EXPECT_EQ(render("{% set a, b = [1, 'two'] %}{{ b }}{{ a }}"), "two1");
  // jinja2 compiles a name a frame assigns before reading it into a local that starts undefined:
  // a loop body or macro reading it earlier sees undefined, not the context's value, unless an
  // enclosing frame knows the name (then it starts with that frame's value).
  const OrderedJson x3 = {{"x", 3}};
  EXPECT_EQ(render("{% for i in [1] %}[{{ x }}]{% endfor %}{% set x = 5 %}", x3), "[]");
  EXPECT_EQ(render("{{ x }}{% for i in [1] %}[{{ x }}]{% endfor %}{% set x = 5 %}", x3), "3[3]");
  EXPECT_EQ(
      render("{% for i in [1] %}[{{ x }}]{% endfor %}{% if x %}{% set x = 5 %}{% endif %}", x3),
      "[3]");
  EXPECT_EQ(render("{% macro m() %}[{{ x }}]{% endmacro %}{{ m() }}{% set x = 5 %}{{ m() }}", x3),
            "[][5]");
  EXPECT_EQ(render("{% for o in [1, 2] %}{% for i in [1] %}[{{ x }}]{% endfor %}{% set x = o %}"
                   "{% endfor %}",
                   x3),
            "[][]");
  EXPECT_EQ(render("{% set y = 1 %}{% for o in [1] %}{% for i in [1] %}[{{ y }}]{% endfor %}"
                   "{% set y = 5 %}{% endfor %}"),
            "[1]");

  EXPECT_EQ(render("{% set block %}x{{ 1 + 1 }}{% endset %}[{{ block }}]"), "[x2]");
  EXPECT_EQ(render("{% if not add_generation_prompt is defined %}{% set add_generation_prompt = "
                   "false %}{% endif %}{{ add_generation_prompt }}"),
            "False");
}

TEST(JinjaSubset, Macros) {
  EXPECT_EQ(render("{% macro greet(name, punct='!') %}Hi {{ name }}{{ punct }}{% endmacro %}"
                   "{{ greet('a') }} {{ greet('b', punct='?') }}"),
            "Hi a! Hi b?");
  // A macro sees top-level variables and the context, not the caller's loop variables.
  EXPECT_EQ(render("{% set top = 'T' %}{% macro m() %}{{ top }}{{ bos }}{{ i }}{% endmacro %}"
                   "{% for i in [1] %}{{ m() }}{% endfor %}",
                   {{"bos", "<s>"}}),
            "T<s>");
}

TEST(JinjaSubset, ExpressionsAndOperators) {
  EXPECT_EQ(render("{{ 1 + 2 * 3 }} {{ (1 + 2) * 3 }} {{ 7 // 2 }} {{ -7 % 3 }} {{ 3 / 2 }} "
                   "{{ 2 ** 10 }} {{ 'ab' * 2 }} {{ 1 ~ 'x' ~ none }}"),
            "7 9 3 2 1.5 1024 abab 1xNone");
  EXPECT_EQ(render("{{ 1 < 2 < 3 }} {{ 'a' in 'cat' }} {{ 2 not in [1] }} {{ 1 == 1.0 }} "
                   "{{ not 0 }} {{ '' or 'd' }} {{ 0 and 1 }}"),
            "True True True True True d 0");
  EXPECT_EQ(render("{{ 'yes' if x else 'no' }}{{ 'a' if true }}", {{"x", 1}}), "yesa");
  EXPECT_EQ(render("{{ 1.0 }} {{ 1e16 }} {{ 1e-5 }} {{ 0.1 + 0.2 }} {{ [1, 'a', none, true] }} "
                   "{{ {'k': \"v's\"} }}"),
            "1.0 1e+16 1e-05 0.30000000000000004 [1, 'a', None, True] {'k': \"v's\"}");
  EXPECT_EQ(render("{{ '\\u00e9\\n\\t\\x41' }}"), "\xC3\xA9\n\tA");
}

TEST(JinjaSubset, UndefinedSemantics) {
  EXPECT_EQ(
      render(
          "[{{ missing }}]{% if missing %}x{% endif %}{{ missing is defined }}"
          "{{ missing | default('d') }}{{ missing | length }}{% for x in missing %}x{% endfor %}"),
      "[]Falsed0");
  // A missing key is undefined; an attribute of an undefined value is an error (as in jinja2).
  EXPECT_EQ(render("[{{ m.nothing }}]{{ m.nothing is defined }}", {{"m", OrderedJson::object()}}),
            "[]False");
  EXPECT_EQ(render("[{{ n.x }}]", {{"n", nullptr}}), "[]");
  EXPECT_NE(error_of("{{ missing.x }}").find("'missing' is undefined"), std::string::npos);
  EXPECT_NE(error_of("{{ missing + 'a' }}").find("'missing' is undefined"), std::string::npos);
}

TEST(JinjaSubset, FiltersTestsAndMethods) {
  EXPECT_EQ(
      render("{{ '  a b  ' | trim }}|{{ 'x' | upper }}|{{ [1, 2] | length }}|{{ 3 | string }}"
             "|{{ ['a', 'b'] | join(', ') }}|{{ [3, 1, 2] | sort | first }}|{{ 'abc' | last }}"),
      "a b|X|2|3|a, b|1|c");
  EXPECT_EQ(
      render(
          "{{ ' a,b ,c '.strip().split(',') }} {{ 'a</think>b</think>c'.split('</think>')[-1] }} "
          "{{ 'hello'.startswith('he') }} {{ 'x'.endswith(('y', 'x')) }} {{ 'a-b'.replace('-', "
          "'+') }} "
          "{{ '  x \\n'.rstrip() }}|{{ 'Hello World'.lower() }}"),
      "['a', 'b ', 'c'] c True True a+b   x|hello world");
  const OrderedJson context = OrderedJson::parse(
      R"({"tools": [{"name": "f", "args": {"b": 1, "a": "é\n"}}, {"name": "g", "args": {}}]})");
  EXPECT_EQ(render("{{ tools | tojson }}", context),
            R"([{"name": "f", "args": {"b": 1, "a": "é\n"}}, {"name": "g", "args": {}}])");
  EXPECT_EQ(render("{{ tools[0] | tojson(indent=2) }}", context),
            "{\n  \"name\": \"f\",\n  \"args\": {\n    \"b\": 1,\n    \"a\": \"é\\n\"\n  }\n}");
  EXPECT_EQ(render("{{ tools | map(attribute='name') | join(',') }} "
                   "{{ tools | selectattr('name', 'equalto', 'g') | list | length }} "
                   "{{ tools[0].args.get('c', 'none') }} {{ tools[0].args.keys() | list }}",
                   context),
            "f,g 1 none ['b', 'a']");
  EXPECT_EQ(
      render("{{ '42.23' | int }} {{ ' 7 ' | int }} {{ 'x' | int(5) }} {{ '2.5' | float }} "
             "{{ 3 | float }} {{ 3.9 | int }} {{ [1, 2] | reverse | list }} {{ 'abc' | reverse }} "
             "{% for k, v in {'b': 1, 'a': 2} | dictsort %}{{ k }}{{ v }}{% endfor %} {{ "
             "'a\\nb\\n\\nc' | indent(2) }} {{ 'x' | indent(2, true) }}"),
      "42 7 5 2.5 3.0 3 [2, 1] cba a2b1 a\n  b\n\n  c   x");
  EXPECT_EQ(render("{{ x is string }}{{ x is mapping }}{{ d is mapping }}{{ n is none }}"
                   "{{ 3 is odd }}{{ 4 is divisibleby 2 }}{{ x is not number }}",
                   {{"x", "s"}, {"d", OrderedJson::object()}, {"n", nullptr}}),
            "TrueFalseTrueTrueTrueTrueTrue");
}

TEST(JinjaSubset, SyntaxErrorsNameLineAndColumn) {
  EXPECT_NE(error_of("ok\n{{ 1 + }}").find("line 2:8: expected an expression, got '}}'"),
            std::string::npos)
      << error_of("ok\n{{ 1 + }}");
  EXPECT_NE(error_of("{% if x %}\nno end").find("expected '{% endif %}', got end of template"),
            std::string::npos)
      << error_of("{% if x %}\nno end");
  EXPECT_NE(
      error_of("a\n  {% frobnicate %}").find("line 2:6: unknown or unexpected tag 'frobnicate'"),
      std::string::npos)
      << error_of("a\n  {% frobnicate %}");
  EXPECT_NE(error_of("{{ 'open").find("line 1:4: unterminated string literal"), std::string::npos)
      << error_of("{{ 'open");
  EXPECT_NE(error_of("x {{ a").find("line 1:3: unexpected end of template, expected '}}'"),
            std::string::npos)
      << error_of("x {{ a");
  EXPECT_NE(error_of("{% endfor %}").find("line 1:4"), std::string::npos);
  // Nesting deep enough to threaten the stack is refused, not crashed on.
  EXPECT_NE(error_of("{{ " + std::string(5000, '(') + " }}").find("less deeply nested"), std::string::npos);
  std::string nested_ifs;
  for (int i = 0; i < 1000; ++i) nested_ifs += "{% if true %}";
  EXPECT_NE(error_of(nested_ifs).find("less deeply nested"), std::string::npos);
}

TEST(JinjaSubset, RuntimeErrors) {
  // raise_exception's message reaches the caller as the template wrote it.
  EXPECT_EQ(
      error_of("{% if messages | length == 0 %}{{ raise_exception('No messages!') }}{% endif %}",
               {{"messages", OrderedJson::array()}}),
      "No messages!");
  EXPECT_NE(
      error_of("line one\n{{ 'a' | frobnicate }}").find("line 2:1: no filter named 'frobnicate'"),
      std::string::npos)
      << error_of("line one\n{{ 'a' | frobnicate }}");
  EXPECT_NE(error_of("{{ 'a' + none }}").find("can only concatenate str (not \"NoneType\") to str"),
            std::string::npos)
      << error_of("{{ 'a' + none }}");
  EXPECT_NE(error_of("{% set x = 1 %}{% set x.y = 2 %}").find("non-namespace"), std::string::npos);
  EXPECT_NE(error_of("{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}").find("recursion depth"),
            std::string::npos);
  EXPECT_NE(error_of("{{ 'x' * 100000 * 100000 }}").find("too large"), std::string::npos);
  EXPECT_NE(error_of("{{ [].append(1) }}").find("no method 'append'"), std::string::npos)
      << error_of("{{ [].append(1) }}");
}

// Python's integers have no bound; ours are 64-bit, so what would leave them is an error (found by
// fuzz_chat_template: an integer literal past 64 bits threw std::out_of_range; fuzz/corpus).
TEST(JinjaSubset, IntegersBeyond64BitsAreErrors) {
  EXPECT_NE(error_of("{{ 99999999999999999999 }}").find("line 1:4: the integer"),
            std::string::npos)
      << error_of("{{ 99999999999999999999 }}");
  EXPECT_NE(error_of("{{ [1].99999999999999999999 }}").find("64 bits"), std::string::npos);
  for (const char* expression :
       {"9223372036854775807 + 1", "-9223372036854775807 - 2", "4294967296 * 4294967296",
        "2 ** 64", "(-9223372036854775807 - 1) // -1", "-(-9223372036854775807 - 1)"})
    EXPECT_NE(error_of(fmt::format("{{{{ {} }}}}", expression)).find("integer overflow"),
              std::string::npos)
        << expression << ": " << error_of(fmt::format("{{{{ {} }}}}", expression));
  EXPECT_EQ(render("{{ 9223372036854775807 }} {{ 7 % -3 }} {{ -7 % 3 }} {{ -7 // 2 }}"),
            "9223372036854775807 -2 2 -4");
  EXPECT_EQ(render("{{ 1e999 | int }} {{ '1e300' | int(5) }} {{ 1e300 | int(3) }}"), "0 5 3");
}

}  // namespace
}  // namespace dsmoe::text
