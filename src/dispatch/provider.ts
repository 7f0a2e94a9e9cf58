import type { Channel, DeliveryStatus } from '../domain/notification/notification.policy.js';

/** What the dispatcher asks a channel provider to send. Never carries message content by default. */
export interface SendRequest {
  readonly tenantId: string;
  readonly recipientUserId: string;
  readonly channel: Channel;
  readonly address: string;
  /** Our id for this attempt: the provider's idempotency key where it has one, and the lookup key. */
  readonly reference: string;
  readonly text: string;
  readonly deepLink: string;
  /** Aborted when the request deadline passes. */
  readonly signal: AbortSignal;
}

/** The provider's answer to a send. */
export type SendResult =
  | {
      readonly outcome: 'accepted';
      readonly providerMessageId: string;
      readonly status: DeliveryStatus;
      readonly providerTimestamp: Date | null;
    }
  | { readonly outcome: 'rejected' | 'error'; readonly errorCode: string; readonly errorMessage: string };

/** The provider's answer to a status lookup, or undefined when it has no such message. */
export interface LookupResult {
  readonly providerMessageId: string;
  readonly status: DeliveryStatus;
  readonly providerTimestamp: Date | null;
  readonly errorCode: string;
}

/** A delivery report a provider produces (through its webhook, or the sandbox's own). */
export interface ProviderReport {
  readonly tenantId: string;
  readonly provider: string;
  readonly providerMessageId: string;
  readonly providerEventId: string;
  readonly status: DeliveryStatus;
  readonly providerTimestamp: Date;
  readonly errorCode: string;
}

/**
 * A channel provider (SMS, push, email gateway). Small on purpose: send, and look up what happened to a
 * send by our reference or by the provider's message id (for reconciliation). Real providers are added
 * behind this interface and chosen per channel by configuration.
 */
export interface ChannelProvider {
  readonly name: string;
  send(req: SendRequest): Promise<SendResult>;
  lookup(tenantId: string, ref: { reference: string; providerMessageId: string }): Promise<LookupResult | undefined>;
  /** Stops timers (pending sandbox reports); called on shutdown. */
  close?(): void;
}

/** Where a user is reached on a channel; undefined when the user has no address there. */
export interface AddressBook {
  address(tenantId: string, userId: string, channel: Channel): Promise<string | undefined>;
}

/**
 * The in-app channel: the entry in the app's own notification list (ListNotifications) is the delivery,
 * so the attempt is delivered at once. Not subject to quiet hours.
 */
export const inAppProvider: ChannelProvider = {
  name: 'in_app',
  send: (req) =>
    Promise.resolve({
      outcome: 'accepted',
      providerMessageId: `in_app:${req.reference}`,
      status: 'delivered',
      providerTimestamp: new Date(),
    }),
  lookup: (_tenant, ref) =>
    Promise.resolve({
      providerMessageId: `in_app:${ref.reference}`,
      status: 'delivered',
      providerTimestamp: null,
      errorCode: '',
    }),
};

/** The sandbox address book: every user has a pseudo-address on every channel. */
export const sandboxAddressBook: AddressBook = {
  address: (_tenantId, userId, channel) => Promise.resolve(`sandbox:${channel}:${userId}`),
};
