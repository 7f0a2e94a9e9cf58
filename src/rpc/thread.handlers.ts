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
  const createThread: UnaryHandler<CreateThreadRequest, CreateThreadResponse> = async (req, { actor, em }) => ({
    thread: threadToPb(
      await threads.create(em, actor, {
        subject: req.subject,
        participants: req.participants.map(participantSpecFromPb),
        requestId: req.requestId,
      }),
    ),
  });

  const getThread: UnaryHandler<GetThreadRequest, GetThreadResponse> = async (req, { actor, em }) => ({
    thread: threadToPb(await threads.get(em, actor, req.threadId)),
  });

  const listThreads: UnaryHandler<ListThreadsRequest, ListThreadsResponse> = async (req, { actor, em }) => {
    const page = await threads.list(em, actor, {
      pageSize: req.pageSize,
      pageToken: req.pageToken,
      state: threadStateFromPb(req.state),
    });
    return { threads: page.views.map(threadToPb), nextPageToken: page.nextPageToken, asOf: page.asOf };
  };

  const addParticipant: UnaryHandler<AddParticipantRequest, AddParticipantResponse> = async (req, { actor, em }) => ({
    thread: threadToPb(
      await threads.addParticipant(em, actor, req.threadId, participantSpecFromPb(req.participant), req.etag),
    ),
  });

  const removeParticipant: UnaryHandler<RemoveParticipantRequest, RemoveParticipantResponse> = async (
    req,
    { actor, em },
  ) => ({ thread: threadToPb(await threads.removeParticipant(em, actor, req.threadId, req.userId, req.etag)) });

  const escalateThread: UnaryHandler<EscalateThreadRequest, EscalateThreadResponse> = async (req, { actor, em }) => ({
    thread: threadToPb(
      await threads.escalate(em, actor, req.threadId, {
        level: escalationLevelFromPb(req.level),
        assigneeUserId: req.assigneeUserId,
        reason: req.reason,
        etag: req.etag,
      }),
    ),
  });

  const archiveThread: UnaryHandler<ArchiveThreadRequest, ArchiveThreadResponse> = async (req, { actor, em }) => ({
    thread: threadToPb(await threads.archive(em, actor, req.threadId, req.etag)),
  });

  const reopenThread: UnaryHandler<ReopenThreadRequest, ReopenThreadResponse> = async (req, { actor, em }) => ({
    thread: threadToPb(await threads.reopen(em, actor, req.threadId, req.etag)),
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
