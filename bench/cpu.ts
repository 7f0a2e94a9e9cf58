/**
 * Where the CPU goes during a measurement window, from /proc (Linux): the service process, the baseline
 * server, every `postgres` process, and the whole machine. Values are % of one core (2 cores = 200 %).
 * Elsewhere than Linux the figures are simply absent.
 */
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';

let clockTicks: number | undefined;
function ticksPerSecond(): number {
  if (clockTicks === undefined) {
    try {
      clockTicks = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
    } catch {
      clockTicks = 100;
    }
  }
  return clockTicks;
}

/** utime + stime of a process, in clock ticks; undefined when it is gone. */
function processTicks(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // After "pid (comm) ", field 3 (state) is index 0; utime and stime are fields 14 and 15.
    return Number(fields[11]) + Number(fields[12]);
  } catch {
    return undefined;
  }
}

function postgresPids(): number[] {
  const pids: number[] = [];
  let entries: string[];
  try {
    entries = readdirSync('/proc');
  } catch {
    return pids;
  }
  for (const entry of entries) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      if (readFileSync(`/proc/${entry}/comm`, 'utf8').trim() === 'postgres') pids.push(Number(entry));
    } catch {
      // gone meanwhile
    }
  }
  return pids;
}

function machineTicks(): { busy: number; iowait: number } | undefined {
  try {
    const line = readFileSync('/proc/stat', 'utf8').split('\n')[0]!;
    const [, ...values] = line.trim().split(/\s+/);
    const n = values.map(Number);
    const total = n.slice(0, 8).reduce((s, v) => s + v, 0); // user … steal
    return { busy: total - n[3]! - n[4]!, iowait: n[4]! };
  } catch {
    return undefined;
  }
}

interface Snapshot {
  readonly at: number;
  readonly procs: Map<string, Map<number, number>>;
  readonly machine: ReturnType<typeof machineTicks>;
}

/** CPU used during a window, in % of one core. */
export interface CpuUsage {
  readonly service?: number;
  readonly baseline?: number;
  readonly postgres?: number;
  /** Everything that ran on the machine (all cores), iowait excluded. */
  readonly machineBusy?: number;
  readonly machineIowait?: number;
}

/** Samples the named processes (and all postgres processes) at two points in time. */
export class CpuSampler {
  #start: Snapshot | undefined;
  #end: Snapshot | undefined;

  constructor(private readonly pids: () => Record<string, number | undefined>) {}

  #snapshot(): Snapshot {
    const procs = new Map<string, Map<number, number>>();
    for (const [name, pid] of Object.entries(this.pids())) {
      const t = pid === undefined ? undefined : processTicks(pid);
      procs.set(name, new Map(t === undefined || pid === undefined ? [] : [[pid, t]]));
    }
    const pg = new Map<number, number>();
    for (const pid of postgresPids()) {
      const t = processTicks(pid);
      if (t !== undefined) pg.set(pid, t);
    }
    procs.set('postgres', pg);
    return { at: performance.now(), procs, machine: machineTicks() };
  }

  /** Schedules the two samples at the window's epoch bounds. */
  schedule(window: { start: number; end: number }): void {
    this.#start = this.#end = undefined;
    setTimeout(() => (this.#start = this.#snapshot()), Math.max(0, window.start - Date.now()));
    setTimeout(() => (this.#end = this.#snapshot()), Math.max(0, window.end - Date.now()));
  }

  /** The usage between the two samples (empty if they were not both taken). */
  usage(): CpuUsage {
    const a = this.#start;
    const b = this.#end;
    if (!a || !b || b.at <= a.at) return {};
    const seconds = (b.at - a.at) / 1000;
    const pct = (ticks: number) => (ticks / ticksPerSecond() / seconds) * 100;
    const group = (name: string) => {
      const before = a.procs.get(name);
      const after = b.procs.get(name);
      if (!after || after.size === 0) return undefined;
      let ticks = 0;
      for (const [pid, t] of after) ticks += t - (before?.get(pid) ?? 0);
      return pct(ticks);
    };
    return {
      service: group('service'),
      baseline: group('baseline'),
      postgres: group('postgres'),
      machineBusy: a.machine && b.machine ? pct(b.machine.busy - a.machine.busy) : undefined,
      machineIowait: a.machine && b.machine ? pct(b.machine.iowait - a.machine.iowait) : undefined,
    };
  }
}

/** VmRSS of a process in MB, from /proc/<pid>/status; undefined when unreadable. */
export function rssMb(pid: number | undefined): number | undefined {
  if (pid === undefined) return undefined;
  try {
    const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) / 1024 : undefined;
  } catch {
    return undefined;
  }
}
