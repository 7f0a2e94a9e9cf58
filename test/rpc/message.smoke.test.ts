import { expect } from 'chai';
import { ParticipantRole } from '../../gen/comms/v1/thread.js';
import { call, messageClient, newTenant, newUser, receiptClient, threadClient } from '../support/clients.js';
import { createThread, participant } from '../support/threads.js';

describe('messages smoke', () => {
  it('sends, replays, lists and marks read', async () => {
    const threads = threadClient();
    const messages = messageClient();
    const receipts = receiptClient();
    try {
      const tenant = newTenant();
      const provider = await newUser(tenant, 'provider');
      const patient = await newUser(tenant, 'patient');
      const thread = await createThread(threads, provider, {
        participants: [participant(patient.userId, ParticipantRole.PARTICIPANT_ROLE_PATIENT)],
      });
      const send = (key: string, body: string) =>
        call(
          messages,
          messages.sendMessage,
          { threadId: thread.threadId, clientMutationId: key, body, clientSentAt: undefined },
          provider.md,
        );
      const a = await send('k1', 'hello');
      const b = await send('k2', 'world');
      const again = await send('k1', 'hello');
      expect(again.replayed).to.equal(true);
      expect(again.message?.messageId).to.equal(a.message?.messageId);
      expect(b.message!.messageId > a.message!.messageId).to.equal(true);
      const page = await call(
        messages,
        messages.listMessages,
        { threadId: thread.threadId, pageSize: 0, pageToken: '', direction: 0, cursor: '' },
        patient.md,
      );
      expect(page.messages.map((m) => m.body)).to.deep.equal(['hello', 'world']);
      expect(page.latest?.messageId).to.equal(b.message?.messageId);
      const before = await call(threads, threads.getThread, { threadId: thread.threadId }, patient.md);
      expect(before.thread?.unreadCount).to.equal(2);
      const marked = await call(
        receipts,
        receipts.markRead,
        { messageIds: [a.message!.messageId], readAt: undefined },
        patient.md,
      );
      expect(marked.watermarks[0]?.unreadCount).to.equal(1);
      const after = await call(threads, threads.getThread, { threadId: thread.threadId }, patient.md);
      expect(after.thread?.unreadCount).to.equal(1);
      expect(after.thread?.readUpTo?.messageId).to.equal(a.message?.messageId);
      const senderView = await call(threads, threads.getThread, { threadId: thread.threadId }, provider.md);
      expect(senderView.thread?.unreadCount).to.equal(0);
    } finally {
      threads.close();
      messages.close();
      receipts.close();
    }
  });
});
