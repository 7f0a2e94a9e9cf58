/**
 * The raw baseline: a minimal grpc-js server (no MikroORM, no auth) with one unary method,
 * /bench.Baseline/Insert, that takes SendMessage's request and answers SendMessage's response (the same
 * generated encoders, so the wire and client costs match SendMessage) after ONE plain `pg` INSERT of a
 * message-like row through a prepared statement on a pg.Pool of DB_POOL_MAX connections.
 *
 * Run as a child of run.ts (forked, with IPC): env DATABASE_URL, DB_POOL_MAX (default 20), HOST
 * (default 127.0.0.1), PORT (default 0). It creates its table if needed, binds, and sends
 * `{ port }` to the parent. Exits on SIGTERM/SIGINT or when the parent goes away.
 */
import { Server, ServerCredentials, type ServerUnaryCall, type sendUnaryData, status } from '@grpc/grpc-js';
import pg from 'pg';
import { v7 as uuidv7 } from 'uuid';
import type { SendMessageRequest, SendMessageResponse } from '../gen/comms/v1/message.js';
import { loadConfig } from '../src/infra/config/config.js';
import { serverOptions } from '../src/rpc/server.js';
import { METHODS } from './protocol.js';

/** The baseline's table: the columns a message needs, keyed as messages are (tenant first). */
export const BASELINE_TABLE_SQL = `
  create table if not exists bench_baseline_message (
    tenant_id          text        not null,
    thread_id          uuid        not null,
    message_id         uuid        not null,
    sender             text        not null,
    client_mutation_id text        not null,
    body               text        not null,
    sent_at            timestamptz not null,
    primary key (tenant_id, message_id),
    unique (tenant_id, sender, client_mutation_id)
  )`;

const INSERT = {
  name: 'bench_baseline_insert',
  text: `insert into bench_baseline_message
           (tenant_id, thread_id, message_id, sender, client_mutation_id, body, sent_at)
         values ($1, $2, $3, $4, $5, $6, $7)`,
};

const TENANT = 'bench-baseline';
const SENDER = 'bench-baseline-sender';

async function main(): Promise<void> {
  const url = process.env.DATABASE_URL;
  if (!url) throw new Error('DATABASE_URL is required');
  // The service's own configuration rules (pool size, gRPC server options) with the same defaults.
  const config = loadConfig({
    DATABASE_URL: url,
    DB_POOL_MAX: process.env.DB_POOL_MAX,
    LOG_LEVEL: 'silent',
  } as NodeJS.ProcessEnv);
  const pool = new pg.Pool({ connectionString: url, max: config.dbPoolMax });
  pool.on('error', () => {}); // an idle client dropped by the server (database dropped at the end)
  await pool.query(BASELINE_TABLE_SQL);

  // The service's gRPC server options (message limits, concurrent streams, keepalive, connection age).
  const server = new Server(serverOptions(config.grpc));
  const insert = (
    call: ServerUnaryCall<SendMessageRequest, SendMessageResponse>,
    callback: sendUnaryData<SendMessageResponse>,
  ) => {
    const req = call.request;
    const messageId = uuidv7();
    const sentAt = new Date();
    pool
      .query({
        ...INSERT,
        values: [TENANT, req.threadId, messageId, SENDER, req.clientMutationId, req.body, sentAt],
      })
      .then(
        () =>
          callback(null, {
            message: {
              messageId,
              threadId: req.threadId,
              senderUserId: SENDER,
              body: req.body,
              clientMutationId: req.clientMutationId,
              clientSentAt: req.clientSentAt,
              sentAt,
              cursor: '',
              retraction: undefined,
              bodyPurgedAt: undefined,
            },
            replayed: false,
          }),
        (err: unknown) => callback({ code: status.INTERNAL, details: String(err) }),
      );
  };
  server.addService({ insert: METHODS.baseline }, { insert });
  const host = process.env.HOST ?? '127.0.0.1';
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync(`${host}:${process.env.PORT ?? '0'}`, ServerCredentials.createInsecure(), (err, p) =>
      err ? reject(err) : resolve(p),
    ),
  );

  const stop = () => {
    server.forceShutdown();
    pool.end().finally(() => process.exit(0));
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
  process.once('disconnect', stop);
  process.send?.({ port });
}

main().catch((err: unknown) => {
  process.stderr.write(`baseline server failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(1);
});
