import { randomBytes } from 'node:crypto';
import { credentials, Metadata, type ServiceError } from '@grpc/grpc-js';
import { expect } from 'chai';
import { ErrorInfo, BadRequest } from '../../gen/google/rpc/error_details.js';
import { Status } from '../../gen/google/rpc/status.js';
import { MessageServiceClient } from '../../gen/comms/v1/message.js';
import { ReadReceiptServiceClient } from '../../gen/comms/v1/read_receipt.js';
import { ThreadServiceClient } from '../../gen/comms/v1/thread.js';
import type { Permission, Role } from '../../src/domain/actor.js';
import { signDevToken } from '../../src/infra/auth/dev-token.js';
import { env } from './hooks.js';

/** A caller: its ids, token and ready-made metadata. */
export interface TestUser {
  readonly tenantId: string;
  readonly userId: string;
  readonly roles: readonly Role[];
  readonly token: string;
  readonly md: Metadata;
}

/** A fresh tenant id, so tests never see each other's data. */
export function newTenant(): string {
  return `t-${randomBytes(6).toString('hex')}`;
}

/** A fresh user in `tenantId` with a valid development token. */
export async function newUser(tenantId: string, ...roles: Role[]): Promise<TestUser> {
  const userId = `u-${roles.join('-')}-${randomBytes(5).toString('hex')}`;
  const token = await signDevToken(env.config.jwt.secret!, {
    sub: userId,
    tenant: tenantId,
    roles,
    issuer: env.config.jwt.issuer,
    audience: env.config.jwt.audience,
  });
  return { tenantId, userId, roles, token, md: bearer(token) };
}

/** A fresh user in `tenantId` whose token also carries governance `permissions`. */
export async function newUserWith(
  tenantId: string,
  permissions: readonly Permission[],
  ...roles: Role[]
): Promise<TestUser & { readonly permissions: readonly Permission[] }> {
  const userId = `u-${roles.join('-')}-${randomBytes(5).toString('hex')}`;
  const token = await signDevToken(env.config.jwt.secret!, {
    sub: userId,
    tenant: tenantId,
    roles,
    permissions,
    issuer: env.config.jwt.issuer,
    audience: env.config.jwt.audience,
  });
  return { tenantId, userId, roles, permissions, token, md: bearer(token) };
}

/** Metadata carrying `authorization: Bearer <token>`. */
export function bearer(token: string): Metadata {
  const md = new Metadata();
  md.set('authorization', `Bearer ${token}`);
  return md;
}

export { call } from './unary.js';

/** Awaits a call expected to fail; returns the ServiceError. */
export async function callError(promise: Promise<unknown>): Promise<ServiceError> {
  try {
    await promise;
  } catch (err) {
    return err as ServiceError;
  }
  expect.fail('the call was expected to fail');
}

/** The decoded google.rpc.Status details of an error: ErrorInfo and BadRequest when present. */
export function errorDetails(err: ServiceError): { info?: ErrorInfo; badRequest?: BadRequest; status: Status } {
  const raw = err.metadata?.get('grpc-status-details-bin')[0];
  expect(raw, 'grpc-status-details-bin present').to.be.instanceOf(Buffer);
  const status = Status.decode(raw as Buffer);
  const out: { info?: ErrorInfo; badRequest?: BadRequest; status: Status } = { status };
  for (const any of status.details) {
    if (any.typeUrl === 'type.googleapis.com/google.rpc.ErrorInfo') out.info = ErrorInfo.decode(any.value);
    if (any.typeUrl === 'type.googleapis.com/google.rpc.BadRequest') out.badRequest = BadRequest.decode(any.value);
  }
  return out;
}

/** Asserts a call failed with `code` and ErrorInfo `reason`; returns the details. */
export async function expectError(promise: Promise<unknown>, code: number, reason: string) {
  const err = await callError(promise);
  expect(err.code, `code (message: ${err.details})`).to.equal(code);
  const details = errorDetails(err);
  expect(details.info?.reason).to.equal(reason);
  expect(details.info?.domain).to.equal('comms.example.com');
  return { err, ...details };
}

/** A ThreadService client on the shared test server. */
export function threadClient(address = env.address): ThreadServiceClient {
  return new ThreadServiceClient(address, credentials.createInsecure());
}

/** A MessageService client on the shared test server. */
export function messageClient(address = env.address): MessageServiceClient {
  return new MessageServiceClient(address, credentials.createInsecure());
}

/** A ReadReceiptService client on the shared test server. */
export function receiptClient(address = env.address): ReadReceiptServiceClient {
  return new ReadReceiptServiceClient(address, credentials.createInsecure());
}
