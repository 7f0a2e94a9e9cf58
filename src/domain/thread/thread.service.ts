import type { EntityManager } from '@mikro-orm/postgresql';
import type { Actor } from '../actor.js';
import { boundByDeadline, type Db } from '../db.js';
import type { Clock } from '../clock.js';
import { newId } from '../ids.js';
import { decodePositionToken, encodePositionToken } from '../page-token.js';
import { EtagMismatch, Violations } from '../errors.js';
import { checkRequestId, checkUserId, checkUuid, pageSize } from '../validation.js';
import {
  type EscalationLevel,
  Thread,
  ThreadParticipant,
  type ThreadState,
  type ThreadView,
  threadEtag,
} from './thread.entity.js';
import {
  ParticipantChangeRefused,
  ParticipantNotFound,
  ThreadArchived,
  ThreadNotFound,
  ThreadPermissionDenied,
} from './thread.errors.js';
import {
  type ParticipantSpec,
  THREAD_LIMITS,
  checkCreateThread,
  checkEscalation,
  checkParticipantSpec,
  creatorParticipantRole,
  memberPermissions,
  threadPermissions,
} from './thread.policy.js';
import { ThreadRepository } from './thread.repository.js';
import { toSnapshot } from './thread.snapshot.js';
import { ReadReceiptRepository } from '../read-receipt/read-receipt.repository.js';
import { FeedRepository, inboxEvents, threadChangeEvents } from '../feed/feed.repository.js';
import { NotificationRepository } from '../notification/notification.repository.js';

export interface CreateThreadInput {
  readonly subject: string;
  readonly participants: readonly ParticipantSpec[];
  readonly requestId: string;
}

export interface ListThreadsInput {
  readonly pageSize: number;
  readonly pageToken: string;
  readonly state: ThreadState | undefined;
}

export interface ThreadPage {
  readonly views: readonly ThreadView[];
  readonly nextPageToken: string;
  readonly asOf: Date;
}

/** What a mutation did: the thread after it, and whether anything changed. */
type Mutation = (view: ThreadView, em: EntityManager, now: Date) => boolean;

/**
 * The thread aggregate's use cases (server_authoritative). Every mutation runs in one transaction that
 * locks the thread row first, then checks visibility, etag and permission against the locked state, so
 * concurrent changes serialize and a stale etag can never win.
 */
export class ThreadService {
  constructor(private readonly clock: Clock) {}

  async create(actor: Actor, { em }: Db, input: CreateThreadInput): Promise<ThreadView> {
    const v = checkCreateThread(actor, input.subject, input.participants);
    checkRequestId(v, 'request_id', input.requestId);
    v.throwIfAny();
    const repo = new ThreadRepository(em);
    if (input.requestId !== '') {
      const existing = await repo.findByCreateRequest(actor.tenantId, actor.userId, input.requestId);
      if (existing) return this.#withReadState(actor, em, existing);
    }
    const now = this.clock.now();
    const thread = em.create(
      Thread,
      {
        tenantId: actor.tenantId,
        threadId: newId(),
        subject: input.subject,
        state: 'active',
        createdBy: actor.userId,
        createdAt: now,
        updatedAt: now,
        lastActivityAt: now,
        archivedAt: null,
        escalationLevel: 'none',
        escalationAssignee: null,
        escalationReason: null,
        escalatedBy: null,
        escalatedAt: null,
        createRequestId: input.requestId === '' ? null : input.requestId,
        messageSeq: 0,
        lastMessageId: null,
        lastMessageAt: null,
        version: 1,
      },
      { persist: false },
    );
    const selfRole = creatorParticipantRole(actor);
    const specs = selfRole ? [{ userId: actor.userId, role: selfRole }, ...input.participants] : input.participants;
    const participants = specs.map((spec) =>
      em.create(
        ThreadParticipant,
        {
          tenantId: actor.tenantId,
          threadId: thread.threadId,
          userId: spec.userId,
          role: spec.role!,
          addedAt: now,
          addedBy: actor.userId,
        },
        { persist: false },
      ),
    );
    const events = inboxEvents(
      thread.threadId,
      participants.map((p) => p.userId),
    );
    if (await repo.insert(thread, participants, events)) {
      // Read back so the participants come in the one order every read uses.
      return this.#withReadState(actor, em, (await repo.load(actor.tenantId, thread.threadId))!);
    }
    // A concurrent retry with the same request id committed first: answer with its thread.
    const winner = await new ThreadRepository(em.fork()).findByCreateRequest(
      actor.tenantId,
      actor.userId,
      input.requestId,
    );
    if (!winner) throw new Error('create request id conflict without a stored thread');
    return this.#withReadState(actor, em, winner);
  }

  async get(actor: Actor, { em }: Db, threadId: string): Promise<ThreadView> {
    const v = new Violations();
    const id = checkUuid(v, 'thread_id', threadId);
    v.throwIfAny();
    const view = await new ThreadRepository(em).load(actor.tenantId, id);
    if (!view || !threadPermissions(actor, view.participants).see) throw new ThreadNotFound(id);
    return this.#withReadState(actor, em, view);
  }

  /** Validates a thread id and refuses a thread the caller may not see (NOT_FOUND), in one query. */
  async requireVisible(actor: Actor, { em }: Db, threadId: string): Promise<string> {
    const v = new Violations();
    const id = checkUuid(v, 'thread_id', threadId);
    v.throwIfAny();
    const access = await new ThreadRepository(em).access(actor.tenantId, id, actor.userId);
    if (!access || !memberPermissions(actor, access.member).see) throw new ThreadNotFound(id);
    return id;
  }

  /** A thread view (e.g. one a feed event kept) with the caller's read state added. */
  withReadState(actor: Actor, { em }: Db, view: ThreadView): Promise<ThreadView> {
    return this.#withReadState(actor, em, view);
  }

  /** The threads among `threadIds` the caller takes part in, as its inbox shows them (with read state). */
  async inboxViews(actor: Actor, { em }: Db, threadIds: readonly string[]): Promise<Map<string, ThreadView>> {
    const views = (await new ThreadRepository(em).loadMany(actor.tenantId, threadIds)).filter((v) =>
      v.participants.some((p) => p.userId === actor.userId),
    );
    return new Map((await this.#withReadStates(actor, em, views)).map((v) => [v.thread.threadId, v]));
  }

  async list(actor: Actor, { em }: Db, input: ListThreadsInput): Promise<ThreadPage> {
    const size = pageSize(input.pageSize, 50, 200);
    const state = input.state ?? null;
    let after: { lastActivityAt: Date; threadId: string } | undefined;
    if (input.pageToken !== '') {
      const { at, id } = decodePositionToken('threads', input.pageToken, { state });
      after = { lastActivityAt: at, threadId: id };
    }
    const asOf = this.clock.now();
    const { views, more } = await new ThreadRepository(em).listForParticipant(
      actor.tenantId,
      actor.userId,
      input.state,
      after,
      size,
    );
    const last = views.at(-1)?.thread;
    const nextPageToken =
      more && last ? encodePositionToken('threads', { state }, { at: last.lastActivityAt, id: last.threadId }) : '';
    return { views: await this.#withReadStates(actor, em, views), nextPageToken, asOf };
  }

  addParticipant(actor: Actor, db: Db, threadId: string, spec: ParticipantSpec, etag: string) {
    const v = new Violations();
    checkParticipantSpec(v, 'participant', spec);
    return this.#mutate(actor, db, threadId, etag, v, 'manage', 'add participants to', (view, tem, now) => {
      requireActive(view);
      if (view.participants.some((p) => p.userId === spec.userId)) return false;
      requireRoom(view, spec.userId);
      addParticipantRow(tem, view, spec.userId, spec.role!, actor.userId, now);
      return true;
    });
  }

  removeParticipant(actor: Actor, db: Db, threadId: string, userId: string, etag: string) {
    const v = new Violations();
    checkUserId(v, 'user_id', userId);
    return this.#mutate(actor, db, threadId, etag, v, 'manage', 'remove participants from', (view, tem) => {
      requireActive(view);
      const { thread } = view;
      const row = view.participants.find((p) => p.userId === userId);
      if (!row) throw new ParticipantNotFound(thread.threadId, userId);
      if (view.participants.length === 1) {
        throw new ParticipantChangeRefused(
          thread.threadId,
          userId,
          'cannot remove the last participant',
          'LAST_PARTICIPANT',
        );
      }
      if (thread.escalationLevel !== 'none' && thread.escalationAssignee === userId) {
        throw new ParticipantChangeRefused(
          thread.threadId,
          userId,
          'cannot remove the assignee of the current escalation',
          'ESCALATION_ASSIGNEE',
        );
      }
      tem.remove(row);
      (view.participants as ThreadParticipant[]).splice(view.participants.indexOf(row), 1);
      return true;
    });
  }

  escalate(
    actor: Actor,
    db: Db,
    threadId: string,
    input: { level: EscalationLevel | undefined; assigneeUserId: string; reason: string; etag: string },
  ) {
    const v = checkEscalation(input.level, input.assigneeUserId, input.reason);
    // An escalation to someone (new level or new assignee) tells the assignee, unless they made it.
    let tell: string | undefined;
    return this.#mutate(
      actor,
      db,
      threadId,
      input.etag,
      v,
      'manage',
      'escalate',
      (view, tem, now) => {
        requireActive(view);
        const { thread } = view;
        const level = input.level!;
        const assignee = level === 'none' ? null : input.assigneeUserId;
        if (
          assignee &&
          assignee !== actor.userId &&
          (thread.escalationLevel !== level || thread.escalationAssignee !== assignee)
        ) {
          tell = assignee;
        }
        thread.escalationLevel = level;
        thread.escalationAssignee = assignee;
        thread.escalationReason = input.reason;
        thread.escalatedBy = actor.userId;
        thread.escalatedAt = now;
        if (level !== 'none' && !view.participants.some((p) => p.userId === input.assigneeUserId)) {
          requireRoom(view, input.assigneeUserId);
          addParticipantRow(tem, view, input.assigneeUserId, 'care_staff', actor.userId, now);
        }
        return true;
      },
      async (view, tem, now) => {
        if (!tell) return;
        await new NotificationRepository(tem).create({
          tenantId: actor.tenantId,
          kind: 'thread_escalated',
          requestedBy: '',
          eventId: newId(),
          recipients: [tell],
          threadId: view.thread.threadId,
          messageId: null,
          sessionId: null,
          templateKey: '',
          urgent: false,
          plan: undefined,
          now,
        });
      },
    );
  }

  archive(actor: Actor, db: Db, threadId: string, etag: string) {
    return this.#mutate(actor, db, threadId, etag, new Violations(), 'manage', 'archive', (view, _tem, now) => {
      if (view.thread.state === 'archived') return false;
      view.thread.state = 'archived';
      view.thread.archivedAt = now;
      return true;
    });
  }

  reopen(actor: Actor, db: Db, threadId: string, etag: string) {
    return this.#mutate(actor, db, threadId, etag, new Violations(), 'reopen', 'reopen', (view) => {
      if (view.thread.state === 'active') return false;
      view.thread.state = 'active';
      view.thread.archivedAt = null;
      return true;
    });
  }

  /**
   * Runs one metadata change: validate input, lock the thread row, check visibility, etag and
   * permission, apply, bump version/updated_at when something changed, commit.
   */
  async #mutate(
    actor: Actor,
    db: Db,
    threadId: string,
    etag: string,
    v: Violations,
    permission: 'manage' | 'reopen',
    action: string,
    change: Mutation,
    afterChange?: (view: ThreadView, tem: EntityManager, now: Date) => Promise<void>,
  ): Promise<ThreadView> {
    const id = checkUuid(v, 'thread_id', threadId);
    v.throwIfAny();
    const view = await db.em.transactional(async (tem) => {
      await boundByDeadline(tem, db);
      const view = await new ThreadRepository(tem).load(actor.tenantId, id, true);
      const allowed = view && threadPermissions(actor, view.participants);
      if (!view || !allowed?.see) throw new ThreadNotFound(id);
      if (etag !== '' && etag !== threadEtag(view.thread)) {
        throw new EtagMismatch(`thread ${id}`, { thread_id: id }, threadEtag(view.thread));
      }
      if (!allowed[permission]) throw new ThreadPermissionDenied(id, action);
      const now = this.clock.now();
      const before = view.participants.map((p) => p.userId);
      if (change(view, tem, now)) {
        view.thread.updatedAt = now;
        view.thread.lastActivityAt = now;
        await tem.flush();
        await afterChange?.(view, tem, now);
        // Last in the transaction: the feeds' head rows are locked until commit.
        const after = view.participants.map((p) => p.userId);
        await new FeedRepository(tem).append(
          actor.tenantId,
          threadChangeEvents(
            toSnapshot(view),
            after,
            before.filter((u) => !after.includes(u)),
          ),
          now,
        );
      }
      return view;
    });
    return this.#withReadState(actor, db.em, view);
  }

  #withReadState(actor: Actor, em: EntityManager, view: ThreadView): Promise<ThreadView> {
    return this.#withReadStates(actor, em, [view]).then((views) => views[0]!);
  }

  /** Adds the caller's watermark and unread count to each view, in one query. */
  async #withReadStates(actor: Actor, em: EntityManager, views: readonly ThreadView[]): Promise<ThreadView[]> {
    const marks = await new ReadReceiptRepository(em).watermarks(
      actor.tenantId,
      actor.userId,
      views.map((v) => v.thread.threadId),
    );
    const byThread = new Map(marks.map((m) => [m.threadId, m]));
    return views.map((view) => {
      const mark = byThread.get(view.thread.threadId);
      return { ...view, readState: { readUpTo: mark?.readUpTo, unreadCount: mark?.unreadCount ?? 0 } };
    });
  }
}

/** Refuses to add `userId` to a thread that already has the maximum number of participants. */
function requireRoom(view: ThreadView, userId: string): void {
  if (view.participants.length >= THREAD_LIMITS.maxParticipants) {
    throw new ParticipantChangeRefused(
      view.thread.threadId,
      userId,
      `a thread has at most ${THREAD_LIMITS.maxParticipants} participants`,
      'THREAD_FULL',
    );
  }
}

function requireActive(view: ThreadView): void {
  if (view.thread.state === 'archived') throw new ThreadArchived(view.thread.threadId);
}

function addParticipantRow(
  em: EntityManager,
  view: ThreadView,
  userId: string,
  role: ThreadParticipant['role'],
  addedBy: string,
  now: Date,
): void {
  const row = em.create(ThreadParticipant, {
    tenantId: view.thread.tenantId,
    threadId: view.thread.threadId,
    userId,
    role,
    addedAt: now,
    addedBy,
  });
  (view.participants as ThreadParticipant[]).push(row);
}
