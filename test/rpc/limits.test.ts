import { status } from '@grpc/grpc-js';
import { expect } from 'chai';
import { RetryInfo } from '../../gen/google/rpc/error_details.js';
import type { ThreadServiceClient } from '../../gen/comms/v1/thread.js';
import type { App } from '../../src/app.js';
import { call, callError, errorDetails, newTenant, newUser, threadClient } from '../support/clients.js';
import { feedClient, watchInbox } from '../support/feeds.js';
import { startTestApp } from '../support/hooks.js';
import { db } from '../support/threads.js';

/** The RetryInfo delay of an error, in milliseconds. */
function retryDelayMs(err: Parameters<typeof errorDetails>[0]): number {
  const any = errorDetails(err).status.details.find((d) => d.typeUrl === 'type.googleapis.com/google.rpc.RetryInfo');
  expect(any, 'RetryInfo detail').to.not.equal(undefined);
  const delay = RetryInfo.decode(any!.value).retryDelay!;
  return Number(delay.seconds) * 1000 + delay.nanos / 1e6;
}

async function metricsText(app: App): Promise<string> {
  const res = await fetch(`http://127.0.0.1:${app.metricsPort}/metrics`);
  expect(res.status).to.equal(200);
  expect(res.headers.get('content-type')).to.match(/^text\/plain/);
  return res.text();
}

/** The value of one sample line (`name{labels} value`), 0 when absent. */
function sample(text: string, line: string): number {
  const found = text.split('\n').find((l) => l.startsWith(`${line} `));
  return found ? Number(found.slice(line.length + 1)) : 0;
}

describe('limits and metrics', () => {
  let app: App;
  let threads: ThreadServiceClient;
  before(async function () {
    this.timeout(30_000);
    app = await startTestApp({
      RATE_LIMIT_WRITES: '5',
      RATE_LIMIT_WINDOW_SECONDS: '60',
      MAX_STREAMS_PER_CALLER: '2',
      PAGE_SIZE_MAX: '3',
    });
    threads = threadClient(`127.0.0.1:${app.port}`);
  });
  after(async function () {
    this.timeout(30_000);
    threads?.close();
    await app?.shutdown();
  });

  const create = (md: Parameters<typeof call>[3], subject: string) =>
    call(threads, threads.createThread, { subject, participants: [], requestId: '' }, md);

  it('refuses a caller’s writes beyond its budget with RESOURCE_EXHAUSTED, RetryInfo, and nothing stored', async () => {
    const tenant = newTenant();
    const [busy, other] = await Promise.all([newUser(tenant, 'provider'), newUser(tenant, 'provider')]);
    for (let i = 0; i < 5; i++) await create(busy.md, `allowed ${i}`);
    const err = await callError(create(busy.md, 'one too many'));
    expect(err.code).to.equal(status.RESOURCE_EXHAUSTED);
    const { info } = errorDetails(err);
    expect(info?.reason).to.equal('RATE_LIMITED');
    expect(info?.metadata).to.include({
      method: '/comms.v1.ThreadService/CreateThread',
      limit: '5',
      window_seconds: '60',
    });
    const delay = retryDelayMs(err);
    expect(delay).to.be.greaterThan(0).and.at.most(60_000);
    const { rows } = await db().query<{ n: string }>('select count(*) as n from thread where tenant_id = $1', [tenant]);
    expect(Number(rows[0]!.n), 'threads stored').to.equal(5);
    // Reads are not limited; another caller has its own budget.
    const listed = await call(threads, threads.listThreads, { pageSize: 0, pageToken: '', state: 0 }, busy.md);
    expect(listed.threads).to.have.length(3); // PAGE_SIZE_MAX
    await create(other.md, 'someone else');
  });

  it('lowers every List’s maximum page size to PAGE_SIZE_MAX; the walk still reaches every item', async () => {
    const user = await newUser(newTenant(), 'provider');
    for (let i = 0; i < 4; i++) await create(user.md, `paged ${i}`);
    const seen: string[] = [];
    let pageToken = '';
    let pages = 0;
    do {
      const res = await call(threads, threads.listThreads, { pageSize: 200, pageToken, state: 0 }, user.md);
      expect(res.threads.length).to.be.at.most(3);
      seen.push(...res.threads.map((t) => t.threadId));
      pageToken = res.nextPageToken;
      pages++;
    } while (pageToken !== '');
    expect(pages).to.equal(2);
    expect(new Set(seen).size).to.equal(4);
    const err = await callError(call(threads, threads.listThreads, { pageSize: -1, pageToken: '', state: 0 }, user.md));
    expect(err.code).to.equal(status.INVALID_ARGUMENT);
  });

  it('refuses a caller’s streams beyond the limit with TOO_MANY_STREAMS; closing one frees a slot', async () => {
    const feeds = feedClient(`127.0.0.1:${app.port}`);
    const user = await newUser(newTenant(), 'patient');
    const a = watchInbox(feeds, user.md);
    const b = watchInbox(feeds, user.md);
    try {
      await a.waitFor((r) => r.length >= 1, 5000, 'first stream caught up');
      await b.waitFor((r) => r.length >= 1, 5000, 'second stream caught up');
      const third = watchInbox(feeds, user.md);
      const end = await third.ended;
      expect(end?.code).to.equal(status.RESOURCE_EXHAUSTED);
      expect(errorDetails(end!).info?.reason).to.equal('TOO_MANY_STREAMS');
      expect(retryDelayMs(end!)).to.be.greaterThan(0);
      // Another caller is not affected.
      const stranger = watchInbox(feeds, (await newUser(newTenant(), 'patient')).md);
      await stranger.waitFor((r) => r.length >= 1, 5000, 'another caller’s stream');
      stranger.cancel();
      a.cancel();
      await a.ended;
      // The slot is released when the server sees the cancel.
      let fourth = watchInbox(feeds, user.md);
      for (let i = 0; i < 50; i++) {
        const first = await fourth
          .waitFor((r) => r.length >= 1, 5000, 'a stream after one closed')
          .then(
            () => 'open' as const,
            () => 'ended' as const,
          );
        if (first === 'open') break;
        await new Promise((r) => setTimeout(r, 20));
        fourth = watchInbox(feeds, user.md);
      }
      expect(fourth.responses.length, 'a new stream once one closed').to.be.greaterThan(0);
      fourth.cancel();
    } finally {
      a.cancel();
      b.cancel();
      feeds.close();
    }
  });

  it('serves Prometheus metrics on its own port, counting each call by method and code', async () => {
    const user = await newUser(newTenant(), 'patient');
    const list = () => call(threads, threads.listThreads, { pageSize: 0, pageToken: '', state: 0 }, user.md);
    const ok = 'comms_rpc_requests_total{method="/comms.v1.ThreadService/ListThreads",code="OK"}';
    await list();
    const before = sample(await metricsText(app), ok);
    await list();
    await list();
    const text = await metricsText(app);
    expect(sample(text, ok) - before).to.equal(2);
    expect(text).to.contain(
      'comms_rpc_duration_seconds_bucket{le="0.005",method="/comms.v1.ThreadService/ListThreads",code="OK"}',
    );
    const notFound = 'comms_rpc_requests_total{method="/comms.v1.ThreadService/GetThread",code="NOT_FOUND"}';
    const nf = sample(text, notFound);
    await callError(call(threads, threads.getThread, { threadId: '0190d7a0-0000-7000-8000-000000000000' }, user.md));
    expect(sample(await metricsText(app), notFound) - nf).to.equal(1);
    for (const name of [
      'comms_streams_open',
      'comms_job_queue_jobs{queue="notification-dispatch",state="queued"}',
      'comms_db_pool_connections{state="total"}',
      'comms_process_resident_memory_bytes',
      'comms_nodejs_eventloop_lag_p99_seconds',
    ]) {
      expect(text, name).to.contain(name);
    }
    expect(sample(text, 'comms_db_pool_connections{state="total"}')).to.be.greaterThan(0);
    // The write refused by the rate limit in the first test is counted as such.
    expect(sample(text, 'comms_rate_limited_total{method="/comms.v1.ThreadService/CreateThread"}')).to.equal(1);
    const missing = await fetch(`http://127.0.0.1:${app.metricsPort}/other`);
    expect(missing.status).to.equal(404);
  });
});
