import type {
  GetMessageRequest,
  GetMessageResponse,
  ListMessagesRequest,
  ListMessagesResponse,
  RetractMessageRequest,
  RetractMessageResponse,
  SendMessageRequest,
  SendMessageResponse,
} from '../../gen/comms/v1/message.js';
import type {
  ListReadReceiptsRequest,
  ListReadReceiptsResponse,
  MarkReadRequest,
  MarkReadResponse,
  MarkThreadReadRequest,
  MarkThreadReadResponse,
} from '../../gen/comms/v1/read_receipt.js';
import type { MessageService } from '../domain/message/message.service.js';
import type { ReadReceiptService } from '../domain/read-receipt/read-receipt.service.js';
import type { UnaryHandler } from './adapter.js';
import { directionFromPb, messageToPb, receiptToPb, watermarkToPb } from './message.mapper.js';

/** MessageService handlers: decode → domain → encode. */
export function messageHandlers(messages: MessageService) {
  const sendMessage: UnaryHandler<SendMessageRequest, SendMessageResponse> = async (req, ctx) => {
    const { message, replayed } = await messages.send(ctx.actor, ctx, {
      threadId: req.threadId,
      clientMutationId: req.clientMutationId,
      body: req.body,
      clientSentAt: req.clientSentAt,
    });
    return { message: messageToPb(message), replayed };
  };

  const getMessage: UnaryHandler<GetMessageRequest, GetMessageResponse> = async (req, ctx) => {
    const message = await messages.get(ctx.actor, ctx, req.messageId);
    ctx.audit({ threadId: message.threadId, messages: [message] });
    return { message: messageToPb(message) };
  };

  const listMessages: UnaryHandler<ListMessagesRequest, ListMessagesResponse> = async (req, ctx) => {
    const page = await messages.list(ctx.actor, ctx, {
      threadId: req.threadId,
      pageSize: req.pageSize,
      pageToken: req.pageToken,
      direction: directionFromPb(req.direction),
      cursor: req.cursor,
    });
    // A page is a contiguous run of the thread (gapless seqs): its ends and count say which messages.
    const [first, last] = [page.messages[0], page.messages.at(-1)];
    ctx.audit(
      first && last
        ? { threadId: req.threadId, range: { first, last, count: page.messages.length } }
        : { threadId: req.threadId },
    );
    return {
      messages: page.messages.map((m) => messageToPb(m)),
      nextPageToken: page.nextPageToken,
      latest: page.latest,
      asOf: page.asOf,
    };
  };

  const retractMessage: UnaryHandler<RetractMessageRequest, RetractMessageResponse> = async (req, ctx) => {
    const { message, replayed } = await messages.retract(ctx.actor, ctx, {
      messageId: req.messageId,
      reason: req.reason,
    });
    return { message: messageToPb(message), replayed };
  };

  return { sendMessage, getMessage, listMessages, retractMessage };
}

/** ReadReceiptService handlers. */
export function readReceiptHandlers(receipts: ReadReceiptService) {
  const markRead: UnaryHandler<MarkReadRequest, MarkReadResponse> = async (req, ctx) => {
    const result = await receipts.markRead(ctx.actor, ctx, { messageIds: req.messageIds, readAt: req.readAt });
    return { receipts: result.receipts.map(receiptToPb), watermarks: result.watermarks.map(watermarkToPb) };
  };

  const markThreadRead: UnaryHandler<MarkThreadReadRequest, MarkThreadReadResponse> = async (req, ctx) => {
    const { watermark, changed } = await receipts.markThreadRead(ctx.actor, ctx, {
      threadId: req.threadId,
      upToMessageId: req.upToMessageId,
      upToCursor: req.upToCursor,
      readAt: req.readAt,
    });
    return { watermark: watermarkToPb(watermark), receiptsChanged: changed };
  };

  const listReadReceipts: UnaryHandler<ListReadReceiptsRequest, ListReadReceiptsResponse> = async (req, ctx) => {
    const page = await receipts.list(ctx.actor, ctx, {
      threadId: req.threadId,
      messageIds: req.messageIds,
      pageSize: req.pageSize,
      pageToken: req.pageToken,
    });
    return { receipts: page.receipts.map(receiptToPb), nextPageToken: page.nextPageToken };
  };

  return { markRead, markThreadRead, listReadReceipts };
}
