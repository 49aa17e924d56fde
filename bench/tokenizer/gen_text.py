#!/usr/bin/env python3
"""gen_text.py: a few MB of mixed text for bench/tokenizer: English prose, code (C++, Python,
JSON, shell) and Chinese, in interleaved paragraphs, deterministic for a seed.

    python3 gen_text.py OUT [--megabytes 4] [--seed 0] [--corpus FILE]

--corpus FILE (e.g. the output of `dsmoe corpus`) adds runs of its lines to the mix as well.
"""
import argparse
import random

WORDS = """the of and to in is was that for on with as by at from it be this which or an are
have has had not but all were when we there can been one more if will their would about so what
up out them into time some than other its then two could may only over new also after first
these any use way even most made our between those because through before must much such under
well where just both each many people own being very little long still over life world
system model data memory expert router token layer attention cache compute network training
engine kernel thread machine vector matrix gradient parameter weight sequence language number
river mountain city garden winter summer morning evening window letter story history music
question answer reason method result problem example process language structure pattern
quickly slowly carefully suddenly together already almost always never often perhaps usually
build write read run test measure compare return improve reduce allow include describe follow
consider provide produce remain require suggest explain believe develop happen present appear
large small early late strong simple different important possible available common certain
local global public private general special recent similar single final natural physical
""".split()
NAMES = ["Alice", "Bob", "Dr. Chen", "Mrs. O'Neil", "Professor Kato", "Maria", "DeepSeek",
         "Paris", "Tokyo", "the Rhine", "GitHub", "Linux", "NVIDIA", "Hugging Face"]
HANZI = ("的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下"
         "过子说产种面而方后多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两"
         "体制机当使点从业本去把性好应开它合还因由其些然前外天政四日那社义事平形相全表间样与关各重新线"
         "内数正心反你明看原又么利比或但质气第向道命此变条只没结解问意建月公无系军很情者最立代想已通并"
         "提直题党程展五果料象员革位入常文总次品式活设及管特件长求老头基资边流路级少图山统接知较将组见"
         "计别她手角期根论运农指几九区强放决西被干做必战先回则任取据处队南给色光门即保治北造百规热领七"
         "海口东导器压志世金增争济阶油思术极交受联什认六共权收证改清己美再采转更单风切打白教速花带安场"
         "身车例真务具万每目至达走积示议声报斗完类八离华名确才科张信马节话米整空元况今集温传土许步群广"
         "石记需段研界拉林律叫且究观越织装影算低持音众书布复容儿须际商非验连断深难近矿千周委素技备半办"
         "青省列习响约支般史感劳便团往酸历市克何除消构府称太准精值号率族维划选标写存候毛亲快效斯院查江"
         "型眼王按格养易置派层片始却专状育厂京识适属圆包火住调满县局照参红细引听该铁价严龙飞")
ZH_PUNCT = ["，", "，", "，", "、", "。", "。", "！", "？", "；", "：", "“", "”"]


def english_paragraph(rng):
    sentences = []
    for _ in range(rng.randint(3, 8)):
        words = [rng.choice(WORDS) for _ in range(rng.randint(6, 22))]
        if rng.random() < 0.3:
            words.insert(rng.randrange(len(words)), rng.choice(NAMES))
        if rng.random() < 0.25:
            words.insert(rng.randrange(len(words)), str(rng.choice([rng.randint(0, 99),
                                                                   rng.randint(100, 99999),
                                                                   round(rng.random() * 100, 2)])))
        for i in range(1, len(words) - 1):
            if rng.random() < 0.08:
                words[i] += rng.choice([",", ",", ";", " -", ":"])
        if rng.random() < 0.1:
            words[rng.randrange(len(words))] = "(" + rng.choice(WORDS) + ")"
        if rng.random() < 0.1:
            words[-1] = words[-1] + "'s"
        sentence = " ".join(words)
        sentences.append(sentence[0].upper() + sentence[1:] + rng.choice([".", ".", ".", "?", "!"]))
    return " ".join(sentences)


def identifier(rng, style):
    parts = [rng.choice(WORDS[60:]) for _ in range(rng.randint(1, 3))]
    if style == "snake":
        return "_".join(parts)
    return parts[0] + "".join(part.capitalize() for part in parts[1:])


def code_paragraph(rng):
    kind = rng.choice(["cpp", "python", "json", "shell"])
    if kind == "cpp":
        name, arg, other = (identifier(rng, "camel") for _ in range(3))
        n = rng.randint(2, 4096)
        return (f"// {english_paragraph(rng)[:80]}\n"
                f"std::vector<float> {name}(const std::vector<float>& {arg}, int {other}) {{\n"
                f"  std::vector<float> out({arg}.size());\n"
                f"  for (size_t i = 0; i < {arg}.size(); ++i) {{\n"
                f"    out[i] = {arg}[i] * {other} + {n}.0f;  // scale by {n}\n"
                f"    if (out[i] > {rng.random():.4f}f) out[i] = std::max(out[i], 0.0f);\n"
                f"  }}\n  return out;\n}}\n")
    if kind == "python":
        name, arg, other = (identifier(rng, "snake") for _ in range(3))
        return (f"def {name}({arg}, {other}={rng.randint(0, 100)}):\n"
                f"    \"\"\"{english_paragraph(rng)[:70]}\"\"\"\n"
                f"    result = [x ** 2 for x in {arg} if x % {rng.randint(2, 9)} == 0]\n"
                f"    if not result:\n        raise ValueError(f\"empty {{len({arg})}}\")\n"
                f"    return sum(result) / max({other}, 1)\n")
    if kind == "json":
        keys = [identifier(rng, "snake") for _ in range(rng.randint(2, 6))]
        fields = ", ".join(f'"{key}": {rng.choice([rng.randint(-999, 99999), "true", "null"])}'
                           if rng.random() < 0.6 else f'"{key}": "{rng.choice(WORDS)}"'
                           for key in keys)
        return "{" + fields + "}\n"
    path = "/".join(identifier(rng, "snake") for _ in range(rng.randint(1, 3)))
    return (f"$ ls -la /usr/local/{path} | grep -E '^d' && echo \"done\" > /dev/null\n"
            f"$ git commit -m \"{english_paragraph(rng)[:60]}\"\n")


def chinese_paragraph(rng):
    out = []
    for _ in range(rng.randint(3, 10)):
        clause = "".join(rng.choice(HANZI) for _ in range(rng.randint(4, 18)))
        if rng.random() < 0.15:
            clause += rng.choice(["GPU", "Python", "AI", "DeepSeek", "API"])
        if rng.random() < 0.15:
            clause += str(rng.randint(1, 2025)) + rng.choice(["年", "个", "元", "%"])
        out.append(clause + rng.choice(ZH_PUNCT))
    return "".join(out) + "。"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--megabytes", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--corpus", help="a text file whose lines join the mix")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    corpus = []
    if args.corpus:
        with open(args.corpus, encoding="utf-8", errors="replace") as f:
            corpus = f.read().splitlines()
    makers = [english_paragraph, code_paragraph, chinese_paragraph]
    target = int(args.megabytes * 1e6)
    size, parts = 0, []
    while size < target:
        if corpus and rng.random() < 0.25:  # a run of 5-20 lines of the corpus
            first = rng.randrange(len(corpus))
            paragraph = "\n".join(corpus[first:first + rng.randint(5, 20)])
        else:
            paragraph = rng.choice(makers)(rng)
        parts.append(paragraph + "\n\n")
        size += len(parts[-1].encode("utf-8"))
    with open(args.out, "w", encoding="utf-8") as f:
        f.write("".join(parts))
    print(f"wrote {args.out}: {size} bytes")


if __name__ == "__main__":
    main()
