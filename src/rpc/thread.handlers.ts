import type { ThreadService } from '../domain/thread/thread.service.js';
import type {
  AddParticipantRequest,
  AddParticipantResponse,
  ArchiveThreadRequest,
  ArchiveThreadResponse,
  CreateThreadRequest,
  CreateThreadResponse,
  EscalateThreadRequest,
  EscalateThreadResponse,
  GetThreadRequest,
  GetThreadResponse,
  ListThreadsRequest,
  ListThreadsResponse,
  RemoveParticipantRequest,
  RemoveParticipantResponse,
  ReopenThreadRequest,
  ReopenThreadResponse,
} from '../../gen/comms/v1/thread.js';
import type { UnaryHandler } from './adapter.js';
import { escalationLevelFromPb, participantSpecFromPb, threadStateFromPb, threadToPb } from './thread.mapper.js';

/** ThreadService handlers: decode → domain → encode. */
export function threadHandlers(threads: ThreadService) {
  const createThread: UnaryHandler<CreateThreadRequest, CreateThreadResponse> = async (req, ctx) => ({
    thread: threadToPb(
      await threads.create(ctx.actor, ctx, {
        subject: req.subject,
        participants: req.participants.map(participantSpecFromPb),
        requestId: req.requestId,
      }),
    ),
  });

  const getThread: UnaryHandler<GetThreadRequest, GetThreadResponse> = async (req, ctx) => ({
    thread: threadToPb(await threads.get(ctx.actor, ctx, req.threadId)),
  });

  const listThreads: UnaryHandler<ListThreadsRequest, ListThreadsResponse> = async (req, ctx) => {
    const page = await threads.list(ctx.actor, ctx, {
      pageSize: req.pageSize,
      pageToken: req.pageToken,
      state: threadStateFromPb(req.state),
    });
    return { threads: page.views.map(threadToPb), nextPageToken: page.nextPageToken, asOf: page.asOf };
  };

  const addParticipant: UnaryHandler<AddParticipantRequest, AddParticipantResponse> = async (req, ctx) => ({
    thread: threadToPb(
      await threads.addParticipant(ctx.actor, ctx, req.threadId, participantSpecFromPb(req.participant), req.etag),
    ),
  });

  const removeParticipant: UnaryHandler<RemoveParticipantRequest, RemoveParticipantResponse> = async (req, ctx) => ({
    thread: threadToPb(await threads.removeParticipant(ctx.actor, ctx, req.threadId, req.userId, req.etag)),
  });

  const escalateThread: UnaryHandler<EscalateThreadRequest, EscalateThreadResponse> = async (req, ctx) => ({
    thread: threadToPb(
      await threads.escalate(ctx.actor, ctx, req.threadId, {
        level: escalationLevelFromPb(req.level),
        assigneeUserId: req.assigneeUserId,
        reason: req.reason,
        etag: req.etag,
      }),
    ),
  });

  const archiveThread: UnaryHandler<ArchiveThreadRequest, ArchiveThreadResponse> = async (req, ctx) => ({
    thread: threadToPb(await threads.archive(ctx.actor, ctx, req.threadId, req.etag)),
  });

  const reopenThread: UnaryHandler<ReopenThreadRequest, ReopenThreadResponse> = async (req, ctx) => ({
    thread: threadToPb(await threads.reopen(ctx.actor, ctx, req.threadId, req.etag)),
  });

  return {
    createThread,
    getThread,
    listThreads,
    addParticipant,
    removeParticipant,
    escalateThread,
    archiveThread,
    reopenThread,
  };
}
