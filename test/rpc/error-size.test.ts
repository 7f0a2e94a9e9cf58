import { status } from '@grpc/grpc-js';
import { expect } from 'chai';
import { call, callError, errorDetails, newTenant, newUser, receiptClient } from '../support/clients.js';
import { sessionClient } from '../support/sessions.js';

describe('errors stay small enough for any client', () => {
  it('reports at most 20 field violations and counts the rest (a status travels in trailers)', async () => {
    const receipts = receiptClient();
    try {
      const user = await newUser(newTenant(), 'patient');
      const messageIds = Array.from({ length: 5000 }, (_, i) => `not-a-uuid-${i}`);
      const err = await callError(call(receipts, receipts.markRead, { messageIds, readAt: new Date() }, user.md));
      expect(err.code).to.equal(status.INVALID_ARGUMENT);
      const { badRequest } = errorDetails(err);
      const violations = badRequest!.fieldViolations;
      expect(violations).to.have.length.at.most(21);
      expect(err.details.length).to.be.at.most(1001);
    } finally {
      receipts.close();
    }
  });

  it('cuts long violation texts (the fuzzer: a 64 KiB update_mask path echoed back broke the client)', async () => {
    const sessions = sessionClient();
    try {
      const user = await newUser(newTenant(), 'provider');
      const paths = ['x'.repeat(65_536), ...Array.from({ length: 40 }, (_, i) => `${'y'.repeat(500)}${i}`)];
      const err = await callError(
        call(
          sessions,
          sessions.updateSession,
          { sessionId: crypto.randomUUID(), updateMask: paths, session: undefined, etag: '' },
          user.md,
        ),
      );
      expect(err.code, err.details).to.equal(status.INVALID_ARGUMENT);
      const { badRequest } = errorDetails(err);
      const violations = badRequest!.fieldViolations;
      for (const v of violations) expect(v.field.length + v.description.length).to.be.at.most(302);
      expect(violations.at(-1)!.description).to.match(/^and \d+ more violations$/);
      expect(err.details.length).to.be.at.most(1001);
    } finally {
      sessions.close();
    }
  });
});
