import { status } from '@grpc/grpc-js';
import { expect } from 'chai';
import { call, callError, errorDetails, newTenant, newUser, receiptClient } from '../support/clients.js';

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
});
