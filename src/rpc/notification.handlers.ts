import type {
  GetNotificationPreferencesRequest,
  GetNotificationPreferencesResponse,
  GetNotificationRequest,
  GetNotificationResponse,
  ListNotificationsRequest,
  ListNotificationsResponse,
  ReportDeliveryRequest,
  ReportDeliveryResponse,
  RequestNotificationRequest,
  RequestNotificationResponse,
  UpdateNotificationPreferencesRequest,
  UpdateNotificationPreferencesResponse,
} from '../../gen/comms/v1/notification.js';
import type { NotificationService } from '../domain/notification/notification.service.js';
import type { UnaryHandler } from './adapter.js';
import {
  deliveryFromPb,
  kindFromPb,
  notificationToPb,
  planFromPb,
  preferencesFromPb,
  preferencesToPb,
  recordToPb,
  statusFromPb,
} from './notification.mapper.js';

/** NotificationService handlers: decode → domain → encode. */
export function notificationHandlers(notifications: NotificationService) {
  const getNotification: UnaryHandler<GetNotificationRequest, GetNotificationResponse> = async (req, ctx) => ({
    notification: notificationToPb(await notifications.get(ctx.actor, ctx, req.notificationId)),
  });

  const listNotifications: UnaryHandler<ListNotificationsRequest, ListNotificationsResponse> = async (req, ctx) => {
    const page = await notifications.list(ctx.actor, ctx, {
      pageSize: req.pageSize,
      pageToken: req.pageToken,
      recipientUserId: req.recipientUserId,
      status: statusFromPb(req.status, 'status'),
      kind: kindFromPb(req.kind, 'kind'),
    });
    return { notifications: page.views.map(notificationToPb), nextPageToken: page.nextPageToken, asOf: page.asOf };
  };

  const requestNotification: UnaryHandler<RequestNotificationRequest, RequestNotificationResponse> = async (
    req,
    ctx,
  ) => ({
    notification: notificationToPb(
      await notifications.request(ctx.actor, ctx, {
        recipientUserId: req.recipientUserId,
        dedupeKey: req.dedupeKey,
        templateKey: req.templateKey,
        threadId: req.threadId,
        messageId: req.messageId,
        sessionId: req.sessionId,
        urgent: req.urgent,
        plan: planFromPb(req.channelPlan),
      }),
    ),
  });

  const reportDelivery: UnaryHandler<ReportDeliveryRequest, ReportDeliveryResponse> = async (req, ctx) => ({
    record: recordToPb(
      await notifications.report(ctx.actor, ctx, {
        provider: req.provider,
        providerMessageId: req.providerMessageId,
        providerEventId: req.providerEventId,
        status: deliveryFromPb(req.status, 'status'),
        providerTimestamp: req.providerTimestamp,
        errorCode: req.errorCode,
        errorMessage: req.errorMessage,
      }),
    ),
  });

  const getNotificationPreferences: UnaryHandler<
    GetNotificationPreferencesRequest,
    GetNotificationPreferencesResponse
  > = async (req, ctx) => ({
    preferences: preferencesToPb(await notifications.getPreferences(ctx.actor, ctx, req.userId)),
  });

  const updateNotificationPreferences: UnaryHandler<
    UpdateNotificationPreferencesRequest,
    UpdateNotificationPreferencesResponse
  > = async (req, ctx) => ({
    preferences: preferencesToPb(
      await notifications.updatePreferences(ctx.actor, ctx, {
        userId: req.userId,
        preferences: preferencesFromPb(req.preferences),
        mask: req.updateMask ?? [],
        etag: req.etag,
      }),
    ),
  });

  return {
    getNotification,
    listNotifications,
    requestNotification,
    reportDelivery,
    getNotificationPreferences,
    updateNotificationPreferences,
  };
}
