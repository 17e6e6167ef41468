// Runs the wasm32-wasip1 build of verify-bench under node's WASI (V8, the engine Envoy
// uses for the filter). Usage: node run-wasi.mjs <verify-bench.wasm> <input.json> [target-ms]
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { WASI } from 'node:wasi';

const [wasmPath, inputPath, targetMs = '700'] = process.argv.slice(2);
if (!wasmPath || !inputPath) {
  console.error('usage: node run-wasi.mjs <verify-bench.wasm> <input.json> [target-ms]');
  process.exit(2);
}
const input = path.resolve(inputPath);
const wasi = new WASI({
  version: 'preview1',
  args: ['verify-bench', `/input/${path.basename(input)}`, targetMs],
  env: {},
  preopens: { '/input': path.dirname(input) },
  returnOnExit: true,
});
const module = await WebAssembly.compile(await readFile(wasmPath));
const instance = await WebAssembly.instantiate(module, wasi.getImportObject());
process.exitCode = wasi.start(instance);
