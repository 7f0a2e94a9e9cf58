import {
  AuditAction,
  type AuditRecord as PbAuditRecord,
  type LegalHold as PbLegalHold,
  type RetentionPolicy as PbRetentionPolicy,
} from '../../gen/comms/v1/governance.js';
import type { AuditRecord } from '../domain/audit/audit.log.js';
import type { HoldRecord, RetentionRecord } from '../domain/governance/governance.repository.js';
import { retentionEtag } from '../domain/governance/governance.service.js';

export function auditRecordToPb(r: AuditRecord): PbAuditRecord {
  return {
    auditId: r.auditId,
    occurredAt: r.occurredAt,
    actorUserId: r.actorUserId,
    actorRoles: [...r.actorRoles],
    method: r.method,
    requestId: r.requestId,
    threadId: r.threadId ?? '',
    messageIds: [...r.messageIds],
    firstMessageId: r.firstMessageId ?? '',
    lastMessageId: r.lastMessageId ?? '',
    messageCount: r.messageCount,
    action: r.action === 'read' ? AuditAction.AUDIT_ACTION_READ : AuditAction.AUDIT_ACTION_WRITE,
    resource: r.resource ?? '',
  };
}

/** The policy in force; a tenant that never set one keeps bodies for ever. */
export function retentionToPb(p: RetentionRecord | undefined): PbRetentionPolicy {
  if (!p) return { bodyRetentionDays: 0, etag: '', updatedByUserId: '', updateTime: undefined };
  return {
    bodyRetentionDays: p.bodyRetentionDays ?? 0,
    etag: retentionEtag(p),
    updatedByUserId: p.updatedBy,
    updateTime: p.updatedAt,
  };
}

export function holdToPb(h: HoldRecord): PbLegalHold {
  return {
    holdId: h.holdId,
    target: h.threadId
      ? { $case: 'threadId', value: h.threadId }
      : { $case: 'patientUserId', value: h.patientUserId ?? '' },
    reason: h.reason,
    placedByUserId: h.placedBy,
    placeTime: h.placedAt,
    releasedByUserId: h.releasedBy ?? '',
    releaseTime: h.releasedAt ?? undefined,
    releaseReason: h.releaseReason ?? '',
  };
}
