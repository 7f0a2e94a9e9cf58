import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { credentials } from '@grpc/grpc-js';
import { expect } from 'chai';
import { GrpcReflection } from 'grpc-js-reflection-client';
import { SERVICE_NAMES } from '../src/rpc/server.js';
import { checkHealth, healthClient } from './support/health.js';
import { freePort } from './support/ports.js';
import { waitFor } from './support/wait.js';

const MAIN = path.resolve(import.meta.dirname, '../src/main.js');

describe('the service process (npm start)', () => {
  it('with no DATABASE_URL serves on an embedded PostgreSQL, answers health and reflection, exits 0 on SIGTERM', async function () {
    this.timeout(90_000);
    const dir = await mkdtemp(path.join(tmpdir(), 'comms-main-'));
    const port = await freePort();
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      PORT: String(port),
      HOST: '127.0.0.1',
      EMBEDDED_PG_DIR: path.join(dir, 'pg'),
      EMBEDDED_PG_PORT: String(await freePort()),
      SHUTDOWN_DRAIN_DELAY_MS: '100',
    };
    delete env.DATABASE_URL;
    const child = spawn(process.execPath, [MAIN], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (b: Buffer) => (output += b.toString()));
    child.stderr.on('data', (b: Buffer) => (output += b.toString()));
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    const health = healthClient(`127.0.0.1:${port}`);
    try {
      await waitFor(async () => /"msg":"serving"/.test(output), 60_000);
      expect(output).to.match(/"embedded":true/);
      expect(await checkHealth(health)).to.equal('SERVING');
      const services = await new GrpcReflection(`127.0.0.1:${port}`, credentials.createInsecure()).listServices();
      expect(services).to.include.members([...SERVICE_NAMES]);

      child.kill('SIGTERM');
      expect(await exited, output).to.equal(0);
      expect(output).to.match(/"msg":"stopped"/);
    } finally {
      health.close();
      if (child.exitCode === null) child.kill('SIGKILL');
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('refuses to start on bad configuration, naming each bad variable', async () => {
    const child = spawn(process.execPath, [MAIN], {
      env: { ...process.env, PORT: 'eighty', DB_POOL_MAX: '0' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
    const code = await new Promise<number | null>((resolve) => child.on('exit', resolve));
    expect(code).to.equal(2);
    expect(stderr).to.match(/PORT: must be a whole number/);
    expect(stderr).to.match(/DB_POOL_MAX: must be between 1 and 500/);
  });
});
