// hf_tokenizers.js: encoding speed of Hugging Face tokenizers (npm `tokenizers` 0.23.2, the
// official Node binding of the Rust library) on the same file as bench_tokenizer.
//   node hf_tokenizers.js TOKENIZER_DIR FILE [PASSES] [whole|lines]
// Prints one JSON line in bench_tokenizer's format. Lines mode encodes the lines (each with its
// '\n') with one encodeBatch call; run it with TOKENIZERS_PARALLELISM=false RAYON_NUM_THREADS=1
// (run.sh does) so that the batch runs on one thread, like bench_tokenizer. Install first (run.sh does):
//   npm install --no-save --prefix bench/tokenizer tokenizers@0.23.2
'use strict';
const fs = require('fs');
const path = require('path');
const { Tokenizer } = require(path.join(__dirname, 'node_modules', 'tokenizers'));

// The same hash as bench_tokenizer.cpp: h = h * 31 + id (mod 2^32).
function hashIds(ids) {
  let hash = 0;
  for (const id of ids) hash = (Math.imul(hash, 31) + id) >>> 0;
  return hash;
}

async function main() {
  const [dir, file, passesArg, modeArg] = process.argv.slice(2);
  const mode = modeArg || 'whole';
  if (mode !== 'whole' && mode !== 'lines') {
    console.error(`hf_tokenizers.js: mode '${mode}' is not whole or lines`);
    process.exit(2);
  }
  if (!dir || !file) {
    console.error('usage: node hf_tokenizers.js TOKENIZER_DIR FILE [PASSES]');
    process.exit(2);
  }
  const passes = Math.max(1, parseInt(passesArg || '3', 10));
  const bytes = fs.readFileSync(file);
  const text = bytes.toString('utf8');
  const lines = text.split(/(?<=\n)/);
  const loadStart = process.hrtime.bigint();
  const tokenizer = Tokenizer.fromFile(path.join(dir, 'tokenizer.json'));
  const loadSeconds = Number(process.hrtime.bigint() - loadStart) / 1e9;
  const mbPerS = [];
  const mbPerCpuS = [];  // CPU seconds of the whole process, as bench_tokenizer counts them
  let encodings = null;
  for (let pass = 0; pass < passes; ++pass) {
    const start = process.hrtime.bigint();
    const cpuStart = process.cpuUsage();
    if (mode === 'whole') {
      encodings = [await tokenizer.encode(text, null, { addSpecialTokens: false })];
    } else {
      encodings = await tokenizer.encodeBatch(lines, { addSpecialTokens: false });
    }
    mbPerS.push(bytes.length / 1e6 / (Number(process.hrtime.bigint() - start) / 1e9));
    const cpu = process.cpuUsage(cpuStart);
    mbPerCpuS.push(bytes.length / 1e6 / ((cpu.user + cpu.system) / 1e6));
  }
  const ids = [].concat(...encodings.map((encoding) => encoding.getIds()));
  const median = (values) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];
  console.log(JSON.stringify({
    impl: 'hf-tokenizers', mode, load_s: Number(loadSeconds.toFixed(3)), bytes: bytes.length,
    tokens: ids.length, ids_hash: hashIds(ids), mb_per_s_passes: mbPerS,
    mb_per_s_median: median(mbPerS), mb_per_cpu_s_passes: mbPerCpuS,
    mb_per_cpu_s_median: median(mbPerCpuS),
  }));
}

main().catch((error) => {
  console.error(`hf_tokenizers.js: ${error}`);
  process.exit(1);
});
