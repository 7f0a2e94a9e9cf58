import { readFileSync } from 'node:fs';
import path from 'node:path';
import {
  type ChannelOptions,
  Server,
  ServerCredentials,
  type ServiceDefinition,
  type UntypedServiceImplementation,
} from '@grpc/grpc-js';
import { loadFileDescriptorSetFromBuffer, loadSync } from '@grpc/proto-loader';
import { ReflectionService } from '@grpc/reflection';
import { HealthImplementation, protoPath as healthProtoPath } from 'grpc-health-check';
import { FeedServiceService } from '../../gen/comms/v1/feed.js';
import { GovernanceServiceService } from '../../gen/comms/v1/governance.js';
import { MessageServiceService } from '../../gen/comms/v1/message.js';
import { NotificationServiceService } from '../../gen/comms/v1/notification.js';
import { ReadReceiptServiceService } from '../../gen/comms/v1/read_receipt.js';
import { VirtualSessionServiceService } from '../../gen/comms/v1/session.js';
import { ThreadServiceService } from '../../gen/comms/v1/thread.js';
import type { GovernanceService } from '../domain/governance/governance.service.js';
import type { MessageService } from '../domain/message/message.service.js';
import type { NotificationService } from '../domain/notification/notification.service.js';
import type { ReadReceiptService } from '../domain/read-receipt/read-receipt.service.js';
import type { SessionService } from '../domain/session/session.service.js';
import type { ThreadService } from '../domain/thread/thread.service.js';
import type { Config } from '../infra/config/config.js';
import type { FeedHub } from '../feeds/hub.js';
import type { RpcAdapter, StreamHandler, UnaryHandler } from './adapter.js';
import { feedHandlers } from './feed.handlers.js';
import { governanceHandlers } from './governance.handlers.js';
import { messageHandlers, readReceiptHandlers } from './message.handlers.js';
import { notificationHandlers } from './notification.handlers.js';
import { unpooled } from '../domain/db.js';
import { decodeSafely } from './request.js';
import { sessionHandlers } from './session.handlers.js';
import { threadHandlers } from './thread.handlers.js';

/** The descriptor set `npm run generate` writes with `buf build`; server reflection serves it. */
export const DESCRIPTOR_SET_PATH = path.resolve(import.meta.dirname, '../../../gen/comms.binpb');

/** Every comms.v1 service. */
const SERVICES = [
  { name: 'comms.v1.ThreadService', definition: ThreadServiceService },
  { name: 'comms.v1.MessageService', definition: MessageServiceService },
  { name: 'comms.v1.ReadReceiptService', definition: ReadReceiptServiceService },
  { name: 'comms.v1.FeedService', definition: FeedServiceService },
  { name: 'comms.v1.NotificationService', definition: NotificationServiceService },
  { name: 'comms.v1.VirtualSessionService', definition: VirtualSessionServiceService },
  { name: 'comms.v1.GovernanceService', definition: GovernanceServiceService },
] as const;

export const SERVICE_NAMES: readonly string[] = SERVICES.map((s) => s.name);

/** grpc-js options chosen on purpose (see README "Configuration"). */
export function serverOptions(grpc: Config['grpc']): ChannelOptions {
  return {
    'grpc.max_receive_message_length': grpc.maxReceiveBytes,
    'grpc.max_send_message_length': grpc.maxSendBytes,
    'grpc.max_concurrent_streams': grpc.maxConcurrentStreams,
    // Ping idle connections so dead peers and proxies that drop idle TCP are noticed.
    'grpc.keepalive_time_ms': grpc.keepaliveTimeMs,
    'grpc.keepalive_timeout_ms': grpc.keepaliveTimeoutMs,
    'grpc.keepalive_permit_without_calls': 1,
    // Let clients ping as often as every 10 s without being told to go away.
    'grpc.http2.min_ping_interval_without_data_ms': 10_000,
    // Close connections after a while so clients rebalance across replicas; in-flight calls get a grace.
    'grpc.max_connection_age_ms': grpc.maxConnectionAgeMs,
    'grpc.max_connection_age_grace_ms': grpc.maxConnectionAgeGraceMs,
  };
}

/** The use cases the handlers call, and the live feeds. */
export interface Domain {
  readonly threads: ThreadService;
  readonly messages: MessageService;
  readonly receipts: ReadReceiptService;
  readonly notifications: NotificationService;
  readonly sessions: SessionService;
  readonly governance: GovernanceService;
  readonly feeds: FeedHub;
  readonly feedHeartbeatMs: number;
  /** How long an export's client may take no data (EXPORT_STALL_MS): records systems write as they read. */
  readonly exportStallMs: number;
}

/** Adds every comms.v1 service to `server`. */
export function addServices(server: Server, adapter: RpcAdapter, domain: Domain): void {
  const implemented: Record<string, Record<string, UnaryHandler<never, unknown> | StreamHandler<never, unknown>>> = {
    'comms.v1.ThreadService': threadHandlers(domain.threads),
    'comms.v1.MessageService': messageHandlers(domain.messages),
    'comms.v1.ReadReceiptService': readReceiptHandlers(domain.receipts),
    'comms.v1.FeedService': feedHandlers(domain.feeds, domain.threads, domain.sessions, {
      heartbeatMs: domain.feedHeartbeatMs,
    }),
    'comms.v1.NotificationService': notificationHandlers(domain.notifications),
    'comms.v1.VirtualSessionService': sessionHandlers(domain.sessions),
    'comms.v1.GovernanceService': governanceHandlers(domain.governance),
  } as Record<string, Record<string, UnaryHandler<never, unknown> | StreamHandler<never, unknown>>>;
  for (const { name, definition } of SERVICES) {
    const impl: UntypedServiceImplementation = {};
    for (const [method, def] of Object.entries(definition as ServiceDefinition)) {
      const handler = implemented[name]?.[method];
      // Every method of the contract is served: a missing handler is a bug, caught at start.
      if (!handler) throw new Error(`no handler for ${def.path}`);
      if (def.responseStream) {
        // Feed responses carry a resume_token; an export's items do not.
        type FeedResponse = { resumeToken?: string; occurredAt?: Date; event?: { $case: string } };
        impl[method] = adapter.serverStream(
          def.path,
          handler as StreamHandler<unknown, FeedResponse>,
          (res) => res.resumeToken ?? '',
          (res) => (res.event?.$case === 'caughtUp' || res.event?.$case === 'heartbeat' ? undefined : res.occurredAt),
          name === 'comms.v1.GovernanceService' ? domain.exportStallMs : undefined,
        );
      } else impl[method] = adapter.unary(def.path, handler as UnaryHandler<unknown, unknown>);
    }
    server.addService(decodeSafely(encodeOnce(definition as ServiceDefinition)), impl);
  }
}

/**
 * The service definition with each streaming method's response serializer remembering what it encoded,
 * by response object: a feed event written to many streams (one object, see feed.handlers.ts) is
 * encoded once. Unary responses are left alone.
 */
function encodeOnce(definition: ServiceDefinition): ServiceDefinition {
  return Object.fromEntries(
    Object.entries(definition).map(([method, def]) => {
      if (!def.responseStream) return [method, def];
      const encoded = new WeakMap<object, Buffer>();
      const serialize = def.responseSerialize;
      const responseSerialize = (value: object) => {
        let buf = encoded.get(value);
        // Kept as long as the feed caches the event: in memory of its own, not a slice of a shared slab.
        if (!buf) encoded.set(value, (buf = unpooled(serialize(value))));
        return buf;
      };
      return [method, { ...def, responseSerialize }];
    }),
  ) as ServiceDefinition;
}

/** Health (grpc.health.v1) for the whole server ("") and each service; all NOT_SERVING until ready. */
export function createHealth(): HealthImplementation {
  return new HealthImplementation(Object.fromEntries(['', ...SERVICE_NAMES].map((n) => [n, 'NOT_SERVING'])));
}

/** Sets the status of the server and every service at once. */
export function setServing(health: HealthImplementation, serving: boolean): void {
  for (const name of ['', ...SERVICE_NAMES]) health.setStatus(name, serving ? 'SERVING' : 'NOT_SERVING');
}

/** Server reflection (v1 and v1alpha) over our descriptor set plus grpc.health.v1, as grpcurl expects. */
export function addReflection(server: Server): void {
  const ours = loadFileDescriptorSetFromBuffer(readFileSync(DESCRIPTOR_SET_PATH));
  const health = loadSync(healthProtoPath);
  new ReflectionService({ ...ours, ...health }).addToServer(server);
}

/** Binds the server; resolves with the bound port. */
export function bind(server: Server, host: string, port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    server.bindAsync(`${host}:${port}`, ServerCredentials.createInsecure(), (err, bound) =>
      err ? reject(err) : resolve(bound),
    );
  });
}

export { Server };
