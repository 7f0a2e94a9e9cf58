import type { EntityManager, MikroORM } from '@mikro-orm/postgresql';
import type { Actor } from '../actor.js';
import { sqlDate } from '../db.js';
import { DomainError } from '../errors.js';
import { isUuid, newId } from '../ids.js';

/** What a call read or wrote, as an audit record names it (never content). */
export interface AuditTarget {
  readonly threadId?: string;
  /** Anything else the call was about: `session:<id>`, `hold:<id>`, `user:<id>`, … */
  readonly resource?: string;
  /** The messages, with their positions in the thread when known. */
  readonly messages?: readonly { readonly messageId: string; readonly seq?: number }[];
  /** A contiguous run of a thread's messages (a page, an export's batch): its ends and count. */
  readonly range?: {
    readonly first: { readonly messageId: string; readonly seq: number };
    readonly last: { readonly messageId: string; readonly seq: number };
    readonly count: number;
  };
}

/** The call an audit record belongs to. */
export interface AuditCall {
  readonly actor: Actor;
  readonly method: string;
  readonly requestId: string;
}

/** One access_audit row before it is written. */
interface Pending {
  tenant_id: string;
  audit_id: string;
  occurred_at: string;
  actor_user_id: string;
  actor_roles: string[];
  method: string;
  action: 'read' | 'write';
  request_id: string;
  thread_id: string | null;
  resource: string | null;
  message_ids: string[] | null;
  first_seq: number | null;
  last_seq: number | null;
  first_message_id: string | null;
  last_message_id: string | null;
  message_count: number;
}

/** Ids listed per record; a record that would list more keeps its range and count only. */
const MAX_LISTED = 1000;

/** Records written per statement; as many pending start a write at once, without waiting for the timer. */
const BATCH = 1000;

/** The audit cannot take more records (the database has not taken them for a while): refuse reads. */
export class AuditUnavailable extends DomainError {
  constructor() {
    super('unavailable', 'AUDIT_UNAVAILABLE', 'the access audit cannot be written right now; retry shortly');
  }
}

export interface AuditOptions {
  /** Off: nothing is recorded (only to measure the audit's cost in bench/). */
  readonly enabled: boolean;
  /** A record waits at most this long before its batch is written. */
  readonly flushMs: number;
  /** Records held while the database refuses them; beyond, reads are refused (fail closed). */
  readonly bufferMax: number;
}

/**
 * The access audit's writer. Calls record what they read or wrote; records are written in batches, one
 * INSERT per batch (AUDIT_FLUSH_MS apart at most), so a read costs no extra statement. Records of the
 * same call in one batch (a feed stream delivering messages) become one row. A failed write keeps its
 * records and retries; while more than `bufferMax` wait, reads are refused with UNAVAILABLE rather than
 * served unaudited. `close()` (graceful shutdown) writes everything pending. A crash loses at most the
 * records of the last `flushMs`.
 */
export class AuditLog {
  #pending: Pending[] = [];
  /** The open record of each call in the current batch, to extend instead of adding rows. */
  #open = new Map<string, Pending>();
  #timer: NodeJS.Timeout | undefined;
  #flushing: Promise<void> = Promise.resolve();
  #failures = 0;

  constructor(
    private readonly orm: MikroORM,
    private readonly options: AuditOptions,
    private readonly warn: (err: unknown, pending: number) => void,
  ) {}

  /** Records pending (not yet written). */
  get pending(): number {
    return this.#pending.length;
  }

  /**
   * Records a read of message content. Throws AuditUnavailable when the buffer is full: the caller must
   * not hand out content it could not audit.
   */
  read(call: AuditCall, target: AuditTarget): void {
    if (!this.options.enabled) return;
    if (this.#pending.length >= this.options.bufferMax) throw new AuditUnavailable();
    this.#add(call, 'read', target);
  }

  /** Records a write that has happened (never refused: the change is committed). */
  write(call: AuditCall, target: AuditTarget): void {
    if (!this.options.enabled) return;
    this.#add(call, 'write', target);
  }

  /** Writes everything pending now. */
  flush(): Promise<void> {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#flushing = this.#flushing.then(() => this.#write());
    return this.#flushing;
  }

  /** Graceful shutdown: writes what is pending, retrying until `timeoutMs` has passed. */
  async close(timeoutMs: number): Promise<void> {
    const until = Date.now() + timeoutMs;
    for (;;) {
      await this.flush();
      if (this.#pending.length === 0 || Date.now() >= until) break;
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
    clearTimeout(this.#timer);
    if (this.#pending.length > 0) this.warn(new Error('audit records not written at shutdown'), this.#pending.length);
  }

  #add(call: AuditCall, action: 'read' | 'write', target: AuditTarget): void {
    const threadId = target.threadId && isUuid(target.threadId) ? target.threadId : null;
    const messages = (target.messages ?? []).filter((m) => isUuid(m.messageId));
    const key = `${call.requestId} ${call.method} ${action} ${threadId ?? ''} ${target.resource ?? ''}`;
    const open = this.#open.get(key);
    const { range } = target;
    if (open && !range && open.message_ids && open.message_ids.length + messages.length <= MAX_LISTED) {
      extend(open, messages);
      return;
    }
    // The next stretch of a range already open in this batch (an export's next batch): one row.
    if (open && range && !open.message_ids && open.last_seq !== null && range.first.seq === open.last_seq + 1) {
      open.last_seq = range.last.seq;
      open.last_message_id = range.last.messageId;
      open.message_count += range.count;
      return;
    }
    const row: Pending = {
      tenant_id: call.actor.tenantId,
      audit_id: newId(),
      occurred_at: new Date().toISOString(),
      actor_user_id: call.actor.userId,
      actor_roles: [...call.actor.roles],
      method: call.method,
      action,
      request_id: call.requestId,
      thread_id: threadId,
      resource: target.resource ? target.resource.slice(0, 300) : null,
      message_ids: [],
      first_seq: null,
      last_seq: null,
      first_message_id: null,
      last_message_id: null,
      message_count: 0,
    };
    if (range) {
      row.message_ids = null;
      row.first_seq = range.first.seq;
      row.last_seq = range.last.seq;
      row.first_message_id = range.first.messageId;
      row.last_message_id = range.last.messageId;
      row.message_count = range.count;
    } else {
      extend(row, messages.slice(0, MAX_LISTED));
    }
    this.#open.set(key, row);
    this.#pending.push(row);
    if (this.#pending.length === BATCH && this.#failures === 0) void this.flush();
    else this.#timer ??= setTimeout(() => void this.flush(), this.options.flushMs).unref();
  }

  async #write(): Promise<void> {
    if (this.#pending.length === 0) return;
    const batch = this.#pending;
    this.#pending = [];
    this.#open.clear();
    let written = 0;
    try {
      const repo = new AuditRepository(this.orm.em.fork() as EntityManager);
      while (written < batch.length) {
        const chunk = batch.slice(written, written + BATCH);
        await repo.insert(chunk);
        written += chunk.length;
      }
      this.#failures = 0;
    } catch (err) {
      // Keep what was not written, in order, ahead of what came since; retry with backoff.
      this.#pending = batch.slice(written).concat(this.#pending);
      this.#failures++;
      this.warn(err, this.#pending.length);
      this.#timer ??= setTimeout(() => void this.flush(), Math.min(30_000, 250 * 2 ** this.#failures)).unref();
    }
  }
}

function extend(row: Pending, messages: readonly { messageId: string; seq?: number }[]): void {
  for (const m of messages) {
    row.message_ids!.push(m.messageId);
    row.message_count++;
    if (m.seq === undefined) continue;
    if (row.first_seq === null || m.seq < row.first_seq) {
      row.first_seq = m.seq;
      row.first_message_id = m.messageId;
    }
    if (row.last_seq === null || m.seq > row.last_seq) {
      row.last_seq = m.seq;
      row.last_message_id = m.messageId;
    }
  }
}

/** One stored audit record. */
export interface AuditRecord {
  readonly auditId: string;
  readonly occurredAt: Date;
  readonly actorUserId: string;
  readonly actorRoles: readonly string[];
  readonly method: string;
  readonly action: 'read' | 'write';
  readonly requestId: string;
  readonly threadId: string | null;
  readonly resource: string | null;
  readonly messageIds: readonly string[];
  readonly firstMessageId: string | null;
  readonly lastMessageId: string | null;
  readonly messageCount: number;
}

/** What QueryAudit filters by (all optional; all that are set apply). */
export interface AuditFilter {
  readonly threadId?: string;
  readonly actorUserId?: string;
  readonly patientUserId?: string;
  /** The message's thread and position, to match ranges too. */
  readonly message?: { readonly messageId: string; readonly threadId: string; readonly seq: number };
  readonly from?: Date;
  readonly to?: Date;
}

/** access_audit (append-only: the database refuses UPDATE, DELETE and TRUNCATE). */
export class AuditRepository {
  constructor(private readonly em: EntityManager) {}

  /** Writes a batch in one statement. */
  async insert(rows: readonly object[]): Promise<void> {
    await this.em.execute(
      `insert into access_audit (tenant_id, audit_id, occurred_at, actor_user_id, actor_roles, method, action, request_id,
                                 thread_id, resource, message_ids, first_seq, last_seq, first_message_id,
                                 last_message_id, message_count)
       select x.tenant_id, x.audit_id, x.occurred_at, x.actor_user_id, x.actor_roles, x.method, x.action, x.request_id,
              x.thread_id, x.resource, x.message_ids, x.first_seq, x.last_seq, x.first_message_id,
              x.last_message_id, x.message_count
         from jsonb_array_elements(?::jsonb) with ordinality as e(value, n),
              jsonb_to_record(e.value) as x(tenant_id text, audit_id uuid, occurred_at timestamptz, actor_user_id text,
              actor_roles text[], method text, action text, request_id text, thread_id uuid, resource text,
              message_ids uuid[], first_seq integer, last_seq integer, first_message_id uuid,
              last_message_id uuid, message_count integer)
        order by e.n`,
      [JSON.stringify(rows)],
    );
  }

  /** Records of a tenant matching `filter`, newest first, below `beforeId`. */
  async query(tenantId: string, filter: AuditFilter, beforeId: string | undefined, limit: number) {
    const where: string[] = ['a.tenant_id = ?'];
    const params: unknown[] = [tenantId];
    const add = (sql: string, ...values: unknown[]) => {
      where.push(sql);
      params.push(...values);
    };
    if (filter.threadId) add('a.thread_id = ?', filter.threadId);
    if (filter.actorUserId) add('a.actor_user_id = ?', filter.actorUserId);
    if (filter.patientUserId) {
      add(
        `a.thread_id in (select p.thread_id from thread_participant p
                          where p.tenant_id = a.tenant_id and p.user_id = ? and p.role = 'patient')`,
        filter.patientUserId,
      );
    }
    if (filter.message) {
      const { threadId, messageId, seq } = filter.message;
      add(
        `a.thread_id = ? and (a.message_ids @> array[?::uuid]
                             or (a.message_ids is null and ? between a.first_seq and a.last_seq))`,
        threadId,
        messageId,
        seq,
      );
    }
    if (filter.from) add('a.occurred_at >= ?', filter.from);
    if (filter.to) add('a.occurred_at < ?', filter.to);
    if (beforeId !== undefined) add('a.audit_id < ?::uuid', beforeId);
    const rows: Record<string, unknown>[] = await this.em.execute(
      `select a.audit_id, a.occurred_at, a.actor_user_id, a.actor_roles, a.method, a.action,
              a.request_id, a.thread_id, a.resource, coalesce(a.message_ids::text[], '{}') as message_ids,
              a.first_message_id, a.last_message_id, a.message_count
         from access_audit a where ${where.join(' and ')}
        order by a.audit_id desc limit ?`,
      [...params, limit],
    );
    return rows.map((r): AuditRecord => ({
      auditId: r.audit_id as string,
      occurredAt: sqlDate(r.occurred_at),
      actorUserId: r.actor_user_id as string,
      actorRoles: r.actor_roles as string[],
      method: r.method as string,
      action: r.action as 'read' | 'write',
      requestId: r.request_id as string,
      threadId: (r.thread_id as string | null) ?? null,
      resource: (r.resource as string | null) ?? null,
      messageIds: r.message_ids as string[],
      firstMessageId: (r.first_message_id as string | null) ?? null,
      lastMessageId: (r.last_message_id as string | null) ?? null,
      messageCount: Number(r.message_count),
    }));
  }
}
