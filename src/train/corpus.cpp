#include "train/corpus.h"

#include <array>
#include <vector>

#include "tensor/random.h"
#include "util/check.h"

namespace dsmoe {
namespace {

template <size_t N>
const char* pick(Rng& rng, const std::array<const char*, N>& words) {
  return words[rng.next_u64() % N];
}

int64_t number(Rng& rng, int64_t limit) { return static_cast<int64_t>(rng.next_u64() % limit); }

// "the quick engineer builds a small model near the river."
std::string prose(Rng& rng) {
  static const std::array<const char*, 10> subjects = {
      "the engineer", "a small robot", "the old teacher", "my neighbour", "the young cat",
      "a quiet student", "the river", "our team", "the baker", "a tired pilot"};
  static const std::array<const char*, 10> verbs = {"builds", "watches", "paints", "finds",
                                                    "carries", "follows", "writes", "repairs",
                                                    "sings about", "remembers"};
  static const std::array<const char*, 10> objects = {
      "a wooden boat", "the morning light", "an old letter", "the green garden", "a long road",
      "the broken clock", "a warm loaf of bread", "the distant hills", "a blue kite",
      "the quiet library"};
  static const std::array<const char*, 6> endings = {"before sunrise", "after the rain",
                                                     "with great care", "every evening",
                                                     "near the harbour", "without a word"};
  return fmt::format("{} {} {} {}.\n", pick(rng, subjects), pick(rng, verbs), pick(rng, objects),
                     pick(rng, endings));
}

// "417 + 86 = 503"
std::string arithmetic(Rng& rng) {
  const int64_t a = number(rng, 1000), b = number(rng, 1000);
  switch (number(rng, 3)) {
    case 0: return fmt::format("{} + {} = {}\n", a, b, a + b);
    case 1: return fmt::format("{} - {} = {}\n", a, b, a - b);
    default: return fmt::format("{} * {} = {}\n", a % 100, b % 100, (a % 100) * (b % 100));
  }
}

// "int scale_value(int x) { return x * 7 + 3; }"
std::string code(Rng& rng) {
  static const std::array<const char*, 8> names = {"scale", "clamp", "shift", "mix",
                                                   "count", "hash",  "step",  "merge"};
  static const std::array<const char*, 4> types = {"int", "long", "float", "double"};
  static const std::array<const char*, 4> ops = {"+", "-", "*", "^"};
  const char* type = pick(rng, types);
  return fmt::format("{} {}_value({} x) {{ return x {} {} {} {}; }}\n", type, pick(rng, names),
                     type, pick(rng, ops), number(rng, 16), pick(rng, ops), number(rng, 100));
}

// {"id": 42, "city": "Lyon", "temp": 17}
std::string record(Rng& rng) {
  static const std::array<const char*, 8> cities = {"Lyon", "Oslo", "Quito", "Perth",
                                                    "Kyoto", "Tunis", "Lima", "Riga"};
  return fmt::format("{{\"id\": {}, \"city\": \"{}\", \"temp\": {}, \"ok\": {}}}\n",
                     number(rng, 10000), pick(rng, cities), number(rng, 40) - 5,
                     number(rng, 2) ? "true" : "false");
}

// ACGTTGCA...
std::string dna(Rng& rng) {
  static const char bases[] = "ACGT";
  std::string line;
  const int64_t length = 40 + number(rng, 30);
  for (int64_t i = 0; i < length; i++) line += bases[number(rng, 4)];
  return line + "\n";
}

}  // namespace

std::string generate_corpus(int64_t bytes, uint64_t seed) {
  DSMOE_CHECK(bytes > 0, "corpus size must be positive");
  Rng rng(seed);
  std::string text;
  while (static_cast<int64_t>(text.size()) < bytes) {
    switch (number(rng, 5)) {
      case 0: text += prose(rng); break;
      case 1: text += arithmetic(rng); break;
      case 2: text += code(rng); break;
      case 3: text += record(rng); break;
      default: text += dna(rng); break;
    }
  }
  return text;
}

}  // namespace dsmoe
