import type {
  AdmitParticipantRequest,
  AdmitParticipantResponse,
  CreateSessionRequest,
  CreateSessionResponse,
  DenyParticipantRequest,
  DenyParticipantResponse,
  GetSessionRequest,
  GetSessionResponse,
  InviteParticipantRequest,
  InviteParticipantResponse,
  JoinSessionRequest,
  JoinSessionResponse,
  LeaveSessionRequest,
  LeaveSessionResponse,
  ListSessionEventsRequest,
  ListSessionEventsResponse,
  ListSessionsRequest,
  ListSessionsResponse,
  RemoveSessionParticipantRequest,
  RemoveSessionParticipantResponse,
  RequestTransitionRequest,
  RequestTransitionResponse,
  UpdateSessionRequest,
  UpdateSessionResponse,
} from '../../gen/comms/v1/session.js';
import type { ParticipantResult, SessionService } from '../domain/session/session.service.js';
import type { UnaryHandler } from './adapter.js';
import {
  credentialToPb,
  participantToPb,
  sessionEventToPb,
  sessionParticipantFromPb,
  sessionStateFromPb,
  sessionToPb,
  transitionFromPb,
} from './session.mapper.js';

function participantResponse(r: ParticipantResult) {
  return { participant: participantToPb(r.participant), session: sessionToPb(r.view) };
}

/** VirtualSessionService handlers: decode → domain → encode. */
export function sessionHandlers(sessions: SessionService) {
  const createSession: UnaryHandler<CreateSessionRequest, CreateSessionResponse> = async (req, ctx) => ({
    session: sessionToPb(
      await sessions.create(ctx.actor, ctx, {
        threadId: req.threadId,
        scheduledStartAt: req.scheduledStartAt,
        scheduledEndAt: req.scheduledEndAt,
        waitingRoomOpensAt: req.waitingRoomOpensAt,
        participants: req.participants.map(sessionParticipantFromPb),
        requestId: req.requestId,
      }),
    ),
  });

  const getSession: UnaryHandler<GetSessionRequest, GetSessionResponse> = async (req, ctx) => ({
    session: sessionToPb(await sessions.get(ctx.actor, ctx, req.sessionId)),
  });

  const listSessions: UnaryHandler<ListSessionsRequest, ListSessionsResponse> = async (req, ctx) => {
    const page = await sessions.list(ctx.actor, ctx, {
      pageSize: req.pageSize,
      pageToken: req.pageToken,
      state: sessionStateFromPb(req.state, 'state'),
      threadId: req.threadId,
      participantUserId: req.participantUserId,
      scheduledStartFrom: req.scheduledStartFrom,
      scheduledStartUntil: req.scheduledStartUntil,
    });
    return { sessions: page.views.map(sessionToPb), nextPageToken: page.nextPageToken, asOf: page.asOf };
  };

  const updateSession: UnaryHandler<UpdateSessionRequest, UpdateSessionResponse> = async (req, ctx) => ({
    session: sessionToPb(
      await sessions.update(ctx.actor, ctx, req.sessionId, {
        paths: req.updateMask ?? [],
        threadId: req.session?.threadId ?? '',
        scheduledStartAt: req.session?.scheduledStartAt,
        scheduledEndAt: req.session?.scheduledEndAt,
        waitingRoomOpensAt: req.session?.waitingRoomOpensAt,
        etag: req.etag,
      }),
    ),
  });

  const requestTransition: UnaryHandler<RequestTransitionRequest, RequestTransitionResponse> = async (req, ctx) => {
    const r = await sessions.requestTransition(
      ctx.actor,
      ctx,
      req.sessionId,
      transitionFromPb(req.transition, 'transition'),
      req.reason,
    );
    const session = sessionToPb(r.view);
    return {
      accepted: r.accepted,
      state: session.state,
      rejectionReason: r.rejectionReason,
      session,
      participant: r.participant && participantToPb(r.participant),
    };
  };

  const inviteParticipant: UnaryHandler<InviteParticipantRequest, InviteParticipantResponse> = async (req, ctx) =>
    participantResponse(
      await sessions.invite(ctx.actor, ctx, req.sessionId, sessionParticipantFromPb(req.participant)),
    );

  const joinSession: UnaryHandler<JoinSessionRequest, JoinSessionResponse> = async (req, ctx) => {
    const r = await sessions.join(ctx.actor, ctx, req.sessionId);
    return { ...participantResponse(r), credential: r.credential && credentialToPb(r.credential) };
  };

  const leaveSession: UnaryHandler<LeaveSessionRequest, LeaveSessionResponse> = async (req, ctx) =>
    participantResponse(await sessions.leave(ctx.actor, ctx, req.sessionId, req.reason));

  const admitParticipant: UnaryHandler<AdmitParticipantRequest, AdmitParticipantResponse> = async (req, ctx) =>
    participantResponse(await sessions.admit(ctx.actor, ctx, req.sessionId, req.userId, req.reason));

  const denyParticipant: UnaryHandler<DenyParticipantRequest, DenyParticipantResponse> = async (req, ctx) =>
    participantResponse(await sessions.deny(ctx.actor, ctx, req.sessionId, req.userId, req.reason));

  const removeSessionParticipant: UnaryHandler<
    RemoveSessionParticipantRequest,
    RemoveSessionParticipantResponse
  > = async (req, ctx) =>
    participantResponse(await sessions.remove(ctx.actor, ctx, req.sessionId, req.userId, req.reason));

  const listSessionEvents: UnaryHandler<ListSessionEventsRequest, ListSessionEventsResponse> = async (req, ctx) => {
    const page = await sessions.events(ctx.actor, ctx, {
      sessionId: req.sessionId,
      subjectUserId: req.subjectUserId,
      pageSize: req.pageSize,
      pageToken: req.pageToken,
    });
    return { events: page.events.map(sessionEventToPb), nextPageToken: page.nextPageToken };
  };

  return {
    createSession,
    getSession,
    listSessions,
    updateSession,
    requestTransition,
    inviteParticipant,
    joinSession,
    leaveSession,
    admitParticipant,
    denyParticipant,
    removeSessionParticipant,
    listSessionEvents,
  };
}
