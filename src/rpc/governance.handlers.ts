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

  /**
   * The export. Each batch is recorded in the audit (as a range; consecutive batches of one export
   * become one record) before any of it is handed out, so content never leaves unaudited, and a full
   * audit buffer stops the export (UNAVAILABLE) rather than letting it go on unrecorded.
   */
  const exportThread: StreamHandler<ExportThreadRequest, ExportThreadResponse> = async function* (req, ctx) {
    let threadId = '';
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
      } else if (item.kind === 'batch') {
        const first = item.items[0]!.message;
        const last = item.items.at(-1)!.message;
        ctx.audit({ threadId, range: { first, last, count: item.items.length } });
        for (const { message, receipts } of item.items) {
          yield {
            item: { $case: 'message', value: { message: messageToPb(message), receipts: receipts.map(receiptToPb) } },
          };
        }
      } else {
        yield {
          item: { $case: 'end', value: { messageCount: String(item.messages), receiptCount: String(item.receipts) } },
        };
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
