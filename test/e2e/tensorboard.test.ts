// TensorBoard (issue #14): a short real run leaves RUN_DIR/tb/ with an event file whose scalars are
// the run's. The file is read back here without TensorFlow: TFRecord framing with both masked
// CRC-32C checksums checked, and the Event protobuf decoded by protobufjs from TensorFlow's schema
// (event.proto, summary.proto), so a writer that broke the format would fail it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import protobuf from 'protobufjs';
import { installStatus } from '../../src/model/tensorflow-env.ts';
import { MICRO_RECIPE, evalRecords, needsData, start, stepRecords, tempRunDir } from './cluster.ts';

const engine = installStatus('@tensorflow/tfjs-node');
const needsEngine = engine?.ok
  ? false
  : 'the TensorFlow engine is not built (node scripts/build-tensorflow-engine.mjs): TensorBoard files need it';

// The fields of tensorflow/core/util/event.proto and tensorflow/core/framework/summary.proto that
// scalars use, with TensorFlow's field numbers.
const SCHEMA = `
syntax = "proto3";
message Event {
  double wall_time = 1;
  int64 step = 2;
  oneof what {
    string file_version = 3;
    bytes graph_def = 4;
    Summary summary = 5;
  }
}
message Summary {
  message Value {
    string node_name = 7;
    string tag = 1;
    oneof value {
      float simple_value = 2;
      bytes obsolete_old_style_histogram = 3;
    }
  }
  repeated Value value = 1;
}`;
const Event = protobuf.parse(SCHEMA).root.lookupType('Event');

interface DecodedEvent {
  step?: { toNumber(): number } | number;
  fileVersion?: string;
  summary?: { value?: { tag: string; simpleValue?: number }[] };
}

/** CRC-32C (Castagnoli), bitwise: slow and plain, as a checker should be. */
function crc32c(bytes: Uint8Array): number {
  let crc = 0xffffffff;
  for (const byte of bytes) {
    crc ^= byte;
    for (let k = 0; k < 8; k++) crc = crc & 1 ? (crc >>> 1) ^ 0x82f63b78 : crc >>> 1;
  }
  return (crc ^ 0xffffffff) >>> 0;
}

/** TFRecord's masked CRC: rotate right by 15 and add a constant. */
function maskedCrc(bytes: Uint8Array): number {
  const crc = crc32c(bytes);
  return ((((crc >>> 15) | (crc << 17)) >>> 0) + 0xa282ead8) >>> 0;
}

/** Each record of a TFRecord file: uint64 length, masked CRC of the length, data, masked CRC of the data. */
function readRecords(file: string): Uint8Array[] {
  const buf = readFileSync(file);
  const records: Uint8Array[] = [];
  let at = 0;
  while (at < buf.length) {
    const lengthBytes = buf.subarray(at, at + 8);
    assert.equal(buf.readUInt32LE(at + 8), maskedCrc(lengthBytes), `${file}: length checksum at byte ${at}`);
    const length = Number(buf.readBigUInt64LE(at));
    const data = buf.subarray(at + 12, at + 12 + length);
    assert.equal(data.length, length, `${file}: record at byte ${at} is cut short`);
    assert.equal(buf.readUInt32LE(at + 12 + length), maskedCrc(data), `${file}: data checksum at byte ${at}`);
    records.push(data);
    at += 12 + length + 4;
  }
  return records;
}

/** tag -> [step, value] in file order, and the file's version record. */
function readScalars(file: string): { version: string | undefined; series: Map<string, [number, number][]> } {
  const series = new Map<string, [number, number][]>();
  let version: string | undefined;
  for (const record of readRecords(file)) {
    const event = Event.decode(record) as unknown as DecodedEvent;
    version ??= event.fileVersion;
    const step = typeof event.step === 'number' ? event.step : (event.step?.toNumber() ?? 0);
    for (const value of event.summary?.value ?? []) {
      if (value.simpleValue === undefined) continue;
      if (!series.has(value.tag)) series.set(value.tag, []);
      series.get(value.tag)!.push([step, value.simpleValue]);
    }
  }
  return { version, series };
}

/** The environments of `pid`'s child processes, from /proc. */
function childEnvironments(pid: number): string[][] {
  return readdirSync('/proc')
    .filter((entry) => /^\d+$/.test(entry))
    .flatMap((entry) => {
      try {
        // /proc/N/stat: "N (name) state ppid ...", the name in parentheses may hold spaces.
        const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
        const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
        return ppid === pid ? [readFileSync(`/proc/${entry}/environ`, 'utf8').split('\0')] : [];
      } catch {
        return []; // The process ended while we looked.
      }
    });
}

test('a run writes its loss, accuracy and evaluations to RUN_DIR/tb as TensorBoard event files', {
  skip: needsData || needsEngine,
  timeout: 180_000,
}, async () => {
  const out = tempRunDir('tensorboard');
  const launch = start(['launch', '--workers', '2', '--recipe', MICRO_RECIPE, '--steps', '40', '--out', out], { timeoutMs: 170_000 });
  await launch.waitFor(/ring of 2 workers formed/, 160_000);
  // The coordinator silences TensorFlow's oneDNN notice while it loads the writer; the workers it
  // spawns must not inherit that setting, which would change their kernels and so their bits.
  if (process.env.TF_ENABLE_ONEDNN_OPTS === undefined && existsSync('/proc/self/environ')) {
    // Read as soon as the ring forms, long before the 40 steps end and the workers exit.
    const workers = childEnvironments(launch.child.pid!);
    assert.ok(workers.length > 0, 'the local workers are found');
    for (const env of workers)
      assert.ok(!env.some((v) => v.startsWith('TF_ENABLE_ONEDNN_OPTS=')), 'a worker inherited TF_ENABLE_ONEDNN_OPTS');
  }
  const result = await launch.finished;
  assert.equal(result.code, 0, result.stdout + result.stderr);

  const files = readdirSync(join(out, 'tb')).filter((f) => f.startsWith('events.out.tfevents.'));
  assert.equal(files.length, 1, `one event file in ${join(out, 'tb')}: ${files.join(', ')}`);
  const { version, series } = readScalars(join(out, 'tb', files[0]!));
  assert.equal(version, 'brain.Event:2', 'the first record names the event format');

  const steps = stepRecords(out);
  const float32 = (x: number): number => Math.fround(x);
  assert.deepEqual(
    series.get('train/loss'),
    steps.map((s) => [s.step, float32(s.loss)]),
    "train/loss holds every step's loss from metrics.jsonl",
  );
  assert.deepEqual(
    series.get('train/learning_rate'),
    steps.map((s) => [s.step, float32(s.lr)]),
  );
  assert.deepEqual(
    series.get('eval/test_accuracy'),
    evalRecords(out).map((e) => [e.step, float32(e.testAccuracy)]),
  );
  assert.deepEqual(
    series.get('straggler_score/rank_1')?.map(([step]) => step),
    steps.map((s) => s.step),
  );
});
