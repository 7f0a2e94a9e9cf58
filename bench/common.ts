/**
 * What both benchmarks' entry points (bench/run.ts, bench/feeds/run.ts) read and say the same way: their
 * knobs from the environment, the run's header (machine, commit, command), where the report goes, and a
 * bounded parallel map.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const ROOT = path.resolve(import.meta.dirname, '../..');
const RESULTS = path.join(ROOT, 'bench/results');

/** What a report says about the run besides its figures. */
export interface RunInfo<Config> {
  readonly startedAt: string;
  readonly command: string;
  readonly machine: string;
  readonly cores: number;
  readonly node: string;
  readonly database: string;
  readonly commit: string;
  readonly config: Config;
}

/** An integer knob from the environment, within [min, max]. */
export function intEnv(name: string, fallback: number, min: number, max: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  if (!/^\d+$/.test(raw.trim())) throw new Error(`${name}: must be a whole number, got "${raw}"`);
  const n = Number(raw);
  if (n < min || n > max) throw new Error(`${name}: must be between ${min} and ${max}, got ${n}`);
  return n;
}

/** A comma-separated subset of `all` from the environment (all when unset), in the order of `all`. */
export function listEnv<T extends string>(name: string, all: readonly T[]): T[] {
  const raw = process.env[name];
  const wanted = raw ? raw.split(',').map((s) => s.trim()) : all;
  const unknown = wanted.filter((s) => !all.includes(s as T));
  if (unknown.length > 0) throw new Error(`${name}: unknown ${unknown.join(', ')}; known: ${all.join(', ')}`);
  return all.filter((s) => wanted.includes(s));
}

function commitOf(): string {
  try {
    const sha = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: ROOT, encoding: 'utf8' }).trim();
    const status = ['status', '--porcelain', '--untracked-files=no', '--', '.', ':!bench/results'];
    const dirty = execFileSync('git', status, { cwd: ROOT, encoding: 'utf8' }).trim() !== '';
    return dirty ? `${sha} (with uncommitted changes)` : sha;
  } catch {
    return 'unknown';
  }
}

/**
 * How to repeat the run: `DATABASE_URL=…` when set (its value withheld), the knobs `isKnob` accepts as
 * they were set, and `script`.
 */
function commandOf(isKnob: (name: string) => boolean, script: string): string {
  const knobs = Object.entries(process.env)
    .filter(([k]) => isKnob(k))
    .map(([k, v]) => `${k}=${v}`)
    .sort();
  const db = process.env.DATABASE_URL ? ['DATABASE_URL=…'] : [];
  return [...db, ...knobs, script].join(' ');
}

/** The run's header, taken now; the database is added once it is made. */
export function runInfo<Config>(
  config: Config,
  isKnob: (name: string) => boolean,
  script: string,
): Omit<RunInfo<Config>, 'database'> {
  const cpus = os.cpus();
  return {
    startedAt: new Date().toISOString(),
    command: commandOf(isKnob, script),
    machine: `${cpus.length} cores (${cpus[0]?.model.trim() ?? 'unknown CPU'}), ${Math.round(os.totalmem() / 2 ** 30)} GiB RAM, ${os.type()} ${os.release()}`,
    cores: cpus.length,
    node: process.version,
    commit: commitOf(),
    config,
  };
}

/** Prints the markdown report `md` and writes it to bench/results/<name>.md, and `data` to <name>.json. */
export function writeReport(name: string, md: string, data: unknown, log: (line: string) => void): void {
  process.stdout.write(`\n${md}`);
  mkdirSync(RESULTS, { recursive: true });
  writeFileSync(path.join(RESULTS, `${name}.md`), md);
  writeFileSync(path.join(RESULTS, `${name}.json`), `${JSON.stringify(data, null, 2)}\n`);
  log(`wrote bench/results/${name}.md and bench/results/${name}.json`);
}

/** Runs `fn` over `items` with at most `limit` at a time; the first failure rejects. */
export async function mapLimit<T, R>(items: readonly T[], limit: number, fn: (item: T, i: number) => Promise<R>) {
  const out: R[] = new Array<R>(items.length);
  let next = 0;
  const lane = async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i]!, i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, lane));
  return out;
}
