import type {
  ExportThreadRequest,
  ExportThreadResponse,
  GetAuditedMessageRequest,
  GetAuditedMessageResponse,
  GetRetentionPolicyRequest,
  GetRetentionPolicyResponse,
  ListLegalHoldsRequest,
  ListLegalHoldsResponse,
  PlaceLegalHoldRequest,
  PlaceLegalHoldResponse,
  QueryAuditRequest,
  QueryAuditResponse,
  ReleaseLegalHoldRequest,
  ReleaseLegalHoldResponse,
  UpdateRetentionPolicyRequest,
  UpdateRetentionPolicyResponse,
} from '../../gen/comms/v1/governance.js';
import type { GovernanceService } from '../domain/governance/governance.service.js';
import type { StreamHandler, UnaryHandler } from './adapter.js';
import { auditRecordToPb, holdToPb, retentionToPb } from './governance.mapper.js';
import { messageToPb, receiptToPb } from './message.mapper.js';
import { threadToPb } from './thread.mapper.js';

/** GovernanceService handlers: decode → domain → encode. */
export function governanceHandlers(governance: GovernanceService) {
  const queryAudit: UnaryHandler<QueryAuditRequest, QueryAuditResponse> = async (req, ctx) => {
    const { records, nextPageToken } = await governance.queryAudit(ctx.actor, ctx, {
      threadId: req.threadId,
      actorUserId: req.actorUserId,
      patientUserId: req.patientUserId,
      messageId: req.messageId,
      startTime: req.startTime,
      endTime: req.endTime,
      pageSize: req.pageSize,
      pageToken: req.pageToken,
    });
    return { records: records.map(auditRecordToPb), nextPageToken };
  };

  const getAuditedMessage: UnaryHandler<GetAuditedMessageRequest, GetAuditedMessageResponse> = async (req, ctx) => {
    const message = await governance.auditedMessage(ctx.actor, ctx, req.messageId);
    ctx.audit({ threadId: message.threadId, messages: [message] });
    return { message: messageToPb(message, true), retractionReason: message.retraction?.reason ?? '' };
  };

  const getRetentionPolicy: UnaryHandler<GetRetentionPolicyRequest, GetRetentionPolicyResponse> = async (
    _req,
    ctx,
  ) => ({ policy: retentionToPb(await governance.retention(ctx.actor, ctx)) });

  const updateRetentionPolicy: UnaryHandler<UpdateRetentionPolicyRequest, UpdateRetentionPolicyResponse> = async (
    req,
    ctx,
  ) => ({
    policy: retentionToPb(
      await governance.setRetention(ctx.actor, ctx, { days: req.bodyRetentionDays, etag: req.etag }),
    ),
  });

  const placeLegalHold: UnaryHandler<PlaceLegalHoldRequest, PlaceLegalHoldResponse> = async (req, ctx) => {
    const { hold, replayed } = await governance.placeHold(ctx.actor, ctx, {
      threadId: req.target?.$case === 'threadId' ? req.target.value : undefined,
      patientUserId: req.target?.$case === 'patientUserId' ? req.target.value : undefined,
      reason: req.reason,
    });
    return { hold: holdToPb(hold), replayed };
  };

  const releaseLegalHold: UnaryHandler<ReleaseLegalHoldRequest, ReleaseLegalHoldResponse> = async (req, ctx) => ({
    hold: holdToPb(await governance.releaseHold(ctx.actor, ctx, { holdId: req.holdId, reason: req.reason })),
  });

  const listLegalHolds: UnaryHandler<ListLegalHoldsRequest, ListLegalHoldsResponse> = async (req, ctx) => {
    const { holds, nextPageToken } = await governance.holds(ctx.actor, ctx, {
      includeReleased: req.includeReleased,
      pageSize: req.pageSize,
      pageToken: req.pageToken,
    });
    return { holds: holds.map(holdToPb), nextPageToken };
  };

  /** The export, recorded in the audit as the one range it delivered (also when it ends early). */
  const exportThread: StreamHandler<ExportThreadRequest, ExportThreadResponse> = async function* (req, ctx) {
    let first: { messageId: string; seq: number } | undefined;
    let last: { messageId: string; seq: number } | undefined;
    let count = 0;
    let threadId = '';
    try {
      for await (const item of governance.exportThread(ctx.actor, ctx, req.threadId)) {
        if (item.kind === 'header') {
          threadId = item.thread.thread.threadId;
          yield {
            item: {
              $case: 'header',
              value: {
                thread: threadToPb(item.thread),
                asOf: item.asOf,
                through: item.through,
                messageCount: String(item.count),
              },
            },
          };
        } else if (item.kind === 'message') {
          const { message } = item;
          yield {
            item: {
              $case: 'message',
              value: { message: messageToPb(message), receipts: item.receipts.map(receiptToPb) },
            },
          };
          // Resumed once the adapter has written the item: the audit counts what was handed out.
          first ??= message;
          last = message;
          count++;
        } else {
          yield {
            item: {
              $case: 'end',
              value: { messageCount: String(item.messages), receiptCount: String(item.receipts) },
            },
          };
        }
      }
    } finally {
      if (first && last) {
        ctx.audit({
          threadId,
          range: {
            first: { messageId: first.messageId, seq: first.seq },
            last: { messageId: last.messageId, seq: last.seq },
            count,
          },
        });
      }
    }
  };

  return {
    queryAudit,
    getAuditedMessage,
    getRetentionPolicy,
    updateRetentionPolicy,
    placeLegalHold,
    releaseLegalHold,
    listLegalHolds,
    exportThread,
  };
}
