/**
 * Property-based robustness tests of every comms.v1 RPC (fast-check).
 *
 * Every unary RPC of every service that `gen/comms/v1/*.ts` defines, and every FeedService stream, gets
 * random and malformed requests at three levels:
 * - typed: `Req.fromPartial` with hostile values of each field's type (huge strings, lone surrogates,
 *   control characters, emoji, bogus ids, forged page tokens / cursors / resume tokens, unknown enum
 *   numbers, extreme dates, empty and oversized repeated fields);
 * - wire: hand-built protobuf that every decoder accepts, but with what `fromPartial` cannot express:
 *   invalid UTF-8 in strings, out-of-range varints, Timestamps and Durations outside any range, wrong
 *   wire types, unknown fields;
 * - bytes: random and mutated buffers (most of them are not protobuf at all).
 * Callers hold a valid token of a random role in a fresh tenant, or a garbage authorization header.
 * Properties: no call answers INTERNAL or UNKNOWN; a refused call stores nothing in its tenant; the
 * server is still up afterwards.
 *
 * Reproduce a failure with the seed and path fast-check prints: FUZZ_SEED=<seed> FUZZ_PATH=<path>
 * together with mocha's `-g '<title of the failing test>'` (the pair replays one property only).
 * FUZZ_RUNS=<factor> scales every run count (e.g. 10 for a long soak); FUZZ_SURVEY=1 lists every
 * distinct failure at the end instead of stopping at the first. The status distribution printed after
 * the run counts every call, those made while fast-check shrinks a failure included.
 */
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import {
  Client,
  type ClientReadableStream,
  credentials,
  Metadata,
  type ServiceDefinition,
  type ServiceError,
  status,
} from '@grpc/grpc-js';
import { loadFileDescriptorSetFromBuffer, type MessageTypeDefinition } from '@grpc/proto-loader';
import { BinaryWriter, WireType } from '@bufbuild/protobuf/wire';
import { expect } from 'chai';
import fc from 'fast-check';
import { SignJWT } from 'jose';
import * as feedGen from '../../gen/comms/v1/feed.js';
import * as governanceGen from '../../gen/comms/v1/governance.js';
import * as messageGen from '../../gen/comms/v1/message.js';
import * as notificationGen from '../../gen/comms/v1/notification.js';
import * as receiptGen from '../../gen/comms/v1/read_receipt.js';
import * as sessionGen from '../../gen/comms/v1/session.js';
import * as threadGen from '../../gen/comms/v1/thread.js';
import { ParticipantRole } from '../../gen/comms/v1/thread.js';
import { PERMISSIONS, type Role } from '../../src/domain/actor.js';
import { DESCRIPTOR_SET_PATH, SERVICE_NAMES } from '../../src/rpc/server.js';
import {
  call,
  errorDetails,
  messageClient,
  newTenant,
  newUser,
  newUserWith,
  type TestUser,
  threadClient,
} from '../support/clients.js';
import { checkHealth, healthClient } from '../support/health.js';
import { env } from '../support/hooks.js';
import { newKey } from '../support/messages.js';
import { sessionClient, sessionParticipant } from '../support/sessions.js';
import { createThread, db, participant } from '../support/threads.js';

// ---------------------------------------------------------------------------------------------------
// The contract, read from the generated code and the descriptor set (nothing listed by hand)
// ---------------------------------------------------------------------------------------------------

/** A ts-proto message codec. */
interface Codec {
  fromPartial(object: unknown): unknown;
  encode(message: unknown): { finish(): Uint8Array };
  decode(input: Uint8Array): unknown;
}

const GEN_MODULES: Record<string, unknown>[] = [
  threadGen,
  messageGen,
  receiptGen,
  notificationGen,
  sessionGen,
  feedGen,
  governanceGen,
];

/** Every message codec of the generated comms.v1 modules, by message name. */
const CODECS = new Map<string, Codec>();
/** Every service definition (`XServiceService`) of the generated comms.v1 modules. */
const DEFINITIONS: ServiceDefinition[] = [];
for (const mod of GEN_MODULES) {
  for (const [name, value] of Object.entries(mod)) {
    if (name.endsWith('ServiceService')) DEFINITIONS.push(value as ServiceDefinition);
    else if (value && typeof (value as Codec).fromPartial === 'function') CODECS.set(name, value as Codec);
  }
}

const PROTO = loadFileDescriptorSetFromBuffer(readFileSync(DESCRIPTOR_SET_PATH), {});

type Kind = 'string' | 'bytes' | 'bool' | 'int32' | 'uint32' | 'int64' | 'double' | 'enum' | 'message';

/** One field of a request message, as far as a fuzzer needs it. */
interface Field {
  readonly name: string;
  readonly tsName: string;
  readonly number: number;
  readonly repeated: boolean;
  readonly kind: Kind;
  /** Full name of the message or enum type. */
  readonly typeName: string;
}

interface DescriptorField {
  name: string;
  number: number;
  label: string;
  type: string;
  typeName: string;
}

const KINDS: Record<string, Kind> = {
  TYPE_STRING: 'string',
  TYPE_BYTES: 'bytes',
  TYPE_BOOL: 'bool',
  TYPE_INT32: 'int32',
  TYPE_SINT32: 'int32',
  TYPE_SFIXED32: 'int32',
  TYPE_UINT32: 'uint32',
  TYPE_FIXED32: 'uint32',
  TYPE_INT64: 'int64',
  TYPE_SINT64: 'int64',
  TYPE_SFIXED64: 'int64',
  TYPE_UINT64: 'int64',
  TYPE_FIXED64: 'int64',
  TYPE_DOUBLE: 'double',
  TYPE_FLOAT: 'double',
  TYPE_ENUM: 'enum',
  TYPE_MESSAGE: 'message',
};

const camel = (snake: string) => snake.replace(/_([a-z0-9])/g, (_, c: string) => c.toUpperCase());

/** Resolves a type name as the descriptor set names it, relative to the package of `scope`. */
function resolveType(typeName: string, scope: string): string {
  const name = typeName.replace(/^\./, '');
  if (PROTO[name]) return name;
  const pkg = scope.slice(0, scope.lastIndexOf('.'));
  if (PROTO[`${pkg}.${name}`]) return `${pkg}.${name}`;
  throw new Error(`cannot resolve type ${typeName} from ${scope}`);
}

const fieldCache = new Map<string, Field[]>();
/** The fields of message `fullName`. */
function fieldsOf(fullName: string): Field[] {
  let fields = fieldCache.get(fullName);
  if (!fields) {
    const type = (PROTO[fullName] as MessageTypeDefinition<unknown, unknown>).type as unknown as {
      field: DescriptorField[];
    };
    fields = type.field.map((f) => {
      const kind = KINDS[f.type];
      if (!kind) throw new Error(`${fullName}.${f.name}: unsupported type ${f.type}`);
      return {
        name: f.name,
        tsName: camel(f.name),
        number: f.number,
        repeated: f.label === 'LABEL_REPEATED',
        kind,
        typeName: f.typeName ? resolveType(f.typeName, fullName) : '',
      };
    });
    fieldCache.set(fullName, fields);
  }
  return fields;
}

/** The numbers an enum defines. */
function enumNumbers(fullName: string): number[] {
  const type = (PROTO[fullName] as { type: { value: { number: number }[] } }).type;
  return type.value.map((v) => v.number);
}

/** One RPC of the contract. */
interface Rpc {
  readonly path: string;
  readonly name: string;
  readonly stream: boolean;
  readonly requestType: string;
  readonly codec: Codec;
  readonly decodeResponse: (b: Buffer) => unknown;
}

const RPCS: Rpc[] = DEFINITIONS.flatMap((definition) =>
  Object.values(definition).map((def): Rpc => {
    const [, service, method] = /^\/([^/]+)\/([^/]+)$/.exec(def.path)!;
    const described = (PROTO[service!] as Record<string, { requestType: MessageTypeDefinition<unknown, unknown> }>)[
      method!
    ]!;
    const short = (described.requestType.type as unknown as { name: string }).name;
    const codec = CODECS.get(short);
    if (!codec) throw new Error(`no codec ${short} for ${def.path}`);
    return {
      path: def.path,
      name: `${service!.replace(/^comms\.v1\./, '')}/${method!}`,
      stream: def.responseStream,
      requestType: resolveType(short, `${service}`),
      codec,
      decodeResponse: def.responseDeserialize as (b: Buffer) => unknown,
    };
  }),
);
const UNARY = RPCS.filter((r) => !r.stream);
const RPC_BY_NAME = new Map(RPCS.map((r) => [r.name, r]));
const STREAMS = RPCS.filter((r) => r.stream);

// ---------------------------------------------------------------------------------------------------
// Scenes: a fresh tenant per case, either empty or seeded with a thread, a message and a session
// ---------------------------------------------------------------------------------------------------

/** What a case's values may refer to; resolved once the case's tenant exists. */
interface Scene {
  readonly tenantId: string;
  readonly caller: TestUser;
  readonly seeded: boolean;
  readonly threadId: string;
  readonly messageId: string;
  readonly sessionId: string;
  readonly threadEtag: string;
  readonly sessionEtag: string;
  readonly otherUserId: string;
  readonly seederUserId: string;
  /** The RPC the case calls ('ThreadService/ListThreads'). */
  readonly rpc: string;
}

/** A value that names something of the case's scene (a real id when the tenant is seeded). */
class Ref {
  constructor(
    readonly label: string,
    readonly make: (s: Scene) => string,
  ) {}
  [fc.toStringMethod](): string {
    return `ref(${this.label})`;
  }
}

const ref = (label: string, make: (s: Scene) => string) => new Ref(label, make);
const opaque = (text: string) => Buffer.from(text, 'utf8').toString('base64url');

/** Replaces every Ref in a generated value by what it names. */
function resolve(value: unknown, scene: Scene): unknown {
  if (value instanceof Ref) return value.make(scene);
  if (Array.isArray(value)) return value.map((v) => resolve(v, scene));
  if (value instanceof Date || value instanceof Uint8Array || value === null || typeof value !== 'object') return value;
  return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, resolve(v, scene)]));
}

const PARTICIPANT_ROLE: Record<Role, ParticipantRole | undefined> = {
  patient: ParticipantRole.PARTICIPANT_ROLE_PATIENT,
  provider: ParticipantRole.PARTICIPANT_ROLE_PROVIDER,
  staff: ParticipantRole.PARTICIPANT_ROLE_CARE_STAFF,
  service: undefined,
};

/** A scene of the same shape as a real one, to decide on a body before a tenant is made for it. */
const STAND_IN: Scene = {
  tenantId: 't-000000000000',
  caller: { tenantId: 't-000000000000', userId: 'u-patient-0000000000', roles: [], token: '', md: new Metadata() },
  seeded: false,
  threadId: randomUUID(),
  messageId: randomUUID(),
  sessionId: randomUUID(),
  threadEtag: '"1"',
  sessionEtag: '"1"',
  otherUserId: 'other-00000000',
  seederUserId: 'seeder-00000000',
  rpc: '',
};

let threads: threadGen.ThreadServiceClient;
let messages: messageGen.MessageServiceClient;
let sessions: sessionGen.VirtualSessionServiceClient;

/** A fresh tenant with the caller; when `seeded`, also a thread, a message and a session it takes part in. */
async function makeScene(rpc: string, roles: Role[], seeded: boolean): Promise<Scene> {
  const tenantId = newTenant();
  const otherUserId = `other-${randomUUID().slice(0, 8)}`;
  if (!seeded) {
    return {
      tenantId,
      caller: await newUserWith(tenantId, PERMISSIONS, ...roles),
      seeded,
      threadId: randomUUID(),
      messageId: randomUUID(),
      sessionId: randomUUID(),
      threadEtag: '"1"',
      sessionEtag: '"1"',
      otherUserId,
      seederUserId: `seeder-${randomUUID().slice(0, 8)}`,
      rpc,
    };
  }
  // Callers hold every governance permission, so staff reach the governance handlers too.
  const [caller, seeder] = await Promise.all([
    newUserWith(tenantId, PERMISSIONS, ...roles),
    newUser(tenantId, 'provider'),
  ]);
  const role = PARTICIPANT_ROLE[roles[0]!];
  const people = [
    ...(role === undefined ? [] : [{ userId: caller.userId, role }]),
    { userId: otherUserId, role: ParticipantRole.PARTICIPANT_ROLE_PATIENT },
  ];
  const start = new Date(Date.now() + 2 * 3_600_000);
  const [{ thread, sent }, created] = await Promise.all([
    (async () => {
      const thread = await createThread(threads, seeder, {
        subject: 'fuzz',
        participants: people.map((p) => participant(p.userId, p.role)),
      });
      const sent = await call(
        messages,
        messages.sendMessage,
        { threadId: thread.threadId, clientMutationId: newKey(), body: 'hello', clientSentAt: undefined },
        seeder.md,
      );
      return { thread, sent };
    })(),
    call(
      sessions,
      sessions.createSession,
      sessionGen.CreateSessionRequest.fromPartial({
        scheduledStartAt: start,
        scheduledEndAt: new Date(start.getTime() + 30 * 60_000),
        participants: people.map((p) => sessionParticipant(p.userId, p.role)),
      }),
      seeder.md,
    ),
  ]);
  return {
    tenantId,
    caller,
    seeded,
    threadId: thread.threadId,
    messageId: sent.message!.messageId,
    sessionId: created.session!.sessionId,
    threadEtag: thread.etag,
    sessionEtag: created.session!.etag,
    otherUserId,
    seederUserId: seeder.userId,
    rpc,
  };
}

// ---------------------------------------------------------------------------------------------------
// Hostile values
// ---------------------------------------------------------------------------------------------------

const INT32_MIN = -2_147_483_648;
const INT32_MAX = 2_147_483_647;

const repeat = (unit: string, length: number) => unit.repeat(Math.ceil(length / unit.length)).slice(0, length);

/** Strings no validation should let through to storage unchecked. */
const nastyString: fc.Arbitrary<string> = fc.oneof(
  fc.constantFrom(
    '',
    ' ',
    '\t',
    '\u0000',
    'a\u0000b',
    '\u0007\u001b[31m',
    '\u007f',
    '\u0085',
    '\u2028',
    '\u202e',
    '\ufeff',
    '\ud800',
    'x\udc00y',
    '\udbff\udfff',
    '\ufffd',
    '👩‍⚕️',
    '🏳️‍🌈🏳️‍🌈',
    'e\u0301\u0301\u0301',
    "'; drop table thread; --",
    '%_\\',
    '../../etc/passwd',
    '{"k":"threads"}',
    'null',
    '-1',
    '1e309',
  ),
  fc.string({ maxLength: 40 }),
  fc.string({ unit: 'binary', maxLength: 40 }),
  fc.string({ unit: fc.integer({ min: 0, max: 0x1f }).map((c) => String.fromCharCode(c)), maxLength: 8 }),
);

/** Strings from just over the documented limits up to ~100 KB. */
const hugeString: fc.Arbitrary<string> = fc
  .tuple(
    fc.constantFrom(65, 129, 201, 257, 401, 1001, 1025, 16_385, 65_536, 100_000),
    fc.constantFrom('x', 'é', '👩‍⚕️', '\u0000', 'ab '),
  )
  .map(([length, unit]) => repeat(unit, length));

const uuidLike: fc.Arbitrary<string> = fc.oneof(
  fc.uuid({ version: 7 }),
  fc.uuid(),
  fc.uuid().map((u) => u.toUpperCase()),
  fc.constantFrom(
    '00000000-0000-0000-0000-000000000000',
    'ffffffff-ffff-ffff-ffff-ffffffffffff',
    '{01890a5d-ac96-774b-bcce-b302099a8057}',
    '01890a5d-ac96-774b-bcce-b302099a805',
    '01890a5d-ac96-774b-bcce-b302099a80577',
    '01890a5d-ac96-774b-bcc\u0435-b302099a8057', // a Cyrillic "е" among the hex digits
    '01890a5dac96774bbcceb302099a8057',
    'zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz',
    'not-a-uuid',
  ),
);

const threadRef = ref('threadId', (s) => s.threadId);
const sessionRef = ref('sessionId', (s) => s.sessionId);
const messageRef = ref('messageId', (s) => s.messageId);
const callerRef = ref('caller', (s) => s.caller.userId);
const otherRef = ref('otherUser', (s) => s.otherUserId);
const seederRef = ref('seeder', (s) => s.seederUserId);

/** Instants within a month of now. */
const nearNow: fc.Arbitrary<Date> = fc
  .integer({ min: -30 * 86_400, max: 30 * 86_400 })
  .map((s) => new Date(Math.floor(Date.now() / 1000) * 1000 + s * 1000));

/** Far-away, edge and near-now instants (all valid JS dates). */
const dates: fc.Arbitrary<Date> = fc.oneof(
  fc.constantFrom(
    new Date(-8.64e15),
    new Date(8.64e15),
    new Date('0000-01-01T00:00:00Z'),
    new Date('0001-01-01T00:00:00Z'),
    new Date('1969-12-31T23:59:59.999Z'),
    new Date(0),
    new Date('9999-12-31T23:59:59.999Z'),
    new Date(Date.UTC(10_000, 0, 1)),
    new Date(-62_135_596_801_000),
  ),
  fc.date({ noInvalidDate: true }),
  nearNow,
);

/** Date strings a forged page token may carry. */
const tokenDates: fc.Arbitrary<unknown> = fc.oneof(
  dates.map((d) => d.toISOString()),
  fc.constantFrom(
    '-271821-04-20T00:00:00.000Z',
    '+275760-09-13T00:00:00.000Z',
    '-004714-11-23T00:00:00.000Z',
    'not a date',
    '',
    0,
    -1,
    1e21,
    null,
    true,
    [],
  ),
);

/** Sequence numbers a forged token may carry. */
const seqs: fc.Arbitrary<unknown> = fc.constantFrom(0, 1, -1, 1.5, INT32_MAX, INT32_MAX + 1, 2 ** 53, '1', null);

/** The kind of page token each List issues (src/domain/*.service.ts). */
const PAGE_TOKEN_KINDS: Record<string, string> = {
  'ThreadService/ListThreads': 'threads',
  'VirtualSessionService/ListSessions': 'sessions',
  'VirtualSessionService/ListSessionEvents': 'session-events',
  'NotificationService/ListNotifications': 'notifications',
  'ReadReceiptService/ListReadReceipts': 'receipts',
  'MessageService/ListMessages': 'messages',
};

/** Page tokens: the opaque JSON the lists issue, forged with hostile positions, plus garbage. */
const pageTokens: fc.Arbitrary<string | Ref> = fc.oneof(
  fc.constantFrom('', 'e30', 'bnVsbA', '!!!', 'eyJrIjoidGhyZWFkcyJ9', repeat('A', 2000)),
  fc.base64String({ maxLength: 64 }),
  fc
    .record({
      kind: fc.oneof(
        { weight: 3, arbitrary: fc.constant('ours') },
        {
          weight: 1,
          arbitrary: fc.constantFrom(
            'threads',
            'sessions',
            'session-events',
            'notifications',
            'receipts',
            'messages',
            'x',
          ),
        },
      ),
      at: tokenDates,
      id: uuidLike,
      s: seqs,
      u: fc.oneof(nastyString, fc.constant('')),
      d: fc.constantFrom('f', 'b', 'x'),
    })
    .map(
      ({ kind, at, id, s, u, d }) =>
        new Ref(`pageToken(${kind}, at ${fc.stringify(at)})`, (scene) =>
          opaque(
            JSON.stringify({
              // 'ours': the kind the called List issues, so the forged position reaches its query.
              k: kind === 'ours' ? (PAGE_TOKEN_KINDS[scene.rpc] ?? 'threads') : kind,
              // The filters the fuzzer's requests most often have, so forged positions get past them.
              state: null,
              thread: null,
              participant: null,
              from: null,
              until: null,
              session: scene.sessionId,
              subject: null,
              r: scene.caller.userId,
              s: (kind === 'ours' ? PAGE_TOKEN_KINDS[scene.rpc] : kind) === 'notifications' ? '' : s,
              kd: '',
              t: scene.threadId,
              f: '',
              u,
              c: opaque(`m1:${scene.threadId}:1`),
              d,
              at,
              id,
            }),
          ),
        ),
    ),
);

/** Message cursors: `m1:<thread>:<seq>` forged with hostile numbers and threads, plus garbage. */
const cursors: fc.Arbitrary<string | Ref> = fc.oneof(
  fc.constantFrom('', '====', 'bTE6', repeat('A', 300)),
  fc
    .tuple(fc.constantFrom('0', '1', '2147483647', '2147483648', '9999999999', '00', '-1'), fc.boolean())
    .map(([seq, own]) => new Ref(`cursor(${seq})`, (s) => opaque(`m1:${own ? s.threadId : randomUUID()}:${seq}`))),
);

/** Resume tokens: `f1|<stream>|<position>` forged for each feed, plus garbage. */
const resumeTokens: fc.Arbitrary<string | Ref> = fc.oneof(
  fc.constantFrom('', 'Zg', 'ZjF8fA', repeat('A', 500)),
  fc.base64String({ maxLength: 64 }),
  fc
    .tuple(
      fc.constantFrom('t', 's', 'u'),
      fc.constantFrom(
        '0',
        '1',
        '999999999999999',
        '9999999999999999',
        '-1',
        '1.5',
        `00000000000000000000:${randomUUID()}`,
        `18446744073709551615:${randomUUID()}`,
        `99999999999999999999:${randomUUID()}`,
        `00000000000000000001:${randomUUID().toUpperCase()}`,
        '',
      ),
    )
    .map(
      ([feed, position]) =>
        new Ref(`resumeToken(${feed}|${position})`, (s) => {
          const key = feed === 't' ? s.threadId : feed === 's' ? s.sessionId : s.caller.userId;
          return opaque(`f1|${feed}:${key}|${position}`);
        }),
    ),
);

const etags: fc.Arbitrary<string | Ref> = fc.oneof(
  fc.constantFrom('', '"1"', '"0"', '"-1"', '"99999999999999999999"', 'W/"1"', '1', '"'),
  fc.constant(ref('threadEtag', (s) => s.threadEtag)),
  fc.constant(ref('sessionEtag', (s) => s.sessionEtag)),
);

const userIds: fc.Arbitrary<string | Ref> = fc.oneof(
  fc.constantFrom(callerRef, otherRef, seederRef),
  fc.constantFrom('pat-1', 'u-1', repeat('u', 128), repeat('u', 129)),
);

/** Plausible values by field name, so some requests get past validation to the domain and the database. */
function plausible(field: string): fc.Arbitrary<string | Ref> | undefined {
  if (field === 'thread_id') return fc.oneof(fc.constant(threadRef), uuidLike);
  if (field === 'session_id') return fc.oneof(fc.constant(sessionRef), uuidLike);
  if (field === 'message_id' || field === 'message_ids' || field === 'up_to_message_id') {
    return fc.oneof(fc.constant(messageRef), uuidLike);
  }
  if (field.endsWith('_id') && field.includes('user')) return userIds;
  if (field === 'user_id') return userIds;
  if (field.endsWith('_id')) return fc.oneof(uuidLike, fc.string({ minLength: 1, maxLength: 20 }));
  if (field === 'page_token') return pageTokens;
  if (field.endsWith('cursor')) return cursors;
  if (field === 'resume_token') return resumeTokens;
  if (field === 'etag') return etags;
  if (field === 'template_key') return fc.constantFrom('document_available', 'missing_template', 'x');
  if (field === 'provider') return fc.constantFrom('sandbox', 'twilio', 'SANDBOX');
  if (field === 'time_zone') return fc.constantFrom('Europe/Berlin', 'UTC', 'Mars/Olympus', '+05:00', 'Etc/GMT+14');
  if (field === 'paths') {
    return fc.constantFrom(
      'kind_channels',
      'quiet_hours',
      'scheduled_start_at',
      'scheduled_end_at',
      'waiting_room_opens_at',
      'thread_id',
      'state',
      'participants',
      'quiet_hours.start',
      '*',
      '',
    );
  }
  return fc.constantFrom('hello', 'Lab results', 'k-1', 'a');
}

/** A string field: plausible, nasty or (not inside repeated fields) huge. */
function stringValue(field: string, mode: Mode): fc.Arbitrary<string | Ref> {
  if (!mode.hostile) {
    return fc.oneof({ weight: 12, arbitrary: plausible(field) ?? nastyString }, { weight: 1, arbitrary: nastyString });
  }
  const arbs: fc.WeightedArbitrary<string | Ref>[] = [
    { weight: 4, arbitrary: plausible(field) ?? nastyString },
    { weight: 3, arbitrary: nastyString },
  ];
  if (mode.big) arbs.push({ weight: 1, arbitrary: hugeString });
  return fc.oneof(...arbs);
}

const int32s = fc.oneof(
  fc.constantFrom(0, 1, -1, 50, 200, 201, 500, 501, 1000, INT32_MAX, INT32_MIN),
  fc.integer({ min: INT32_MIN, max: INT32_MAX }),
);

const int64s = fc.oneof(
  fc.constantFrom(
    '0',
    '1',
    '-1',
    '315576000000',
    '315576000001',
    '-315576000001',
    '9223372036854775807',
    '-9223372036854775808',
    '253402300800',
  ),
  fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }).map(String),
);

function enumValue(typeName: string, mode: Mode): fc.Arbitrary<number> {
  return fc.oneof(
    { weight: mode.hostile ? 3 : 12, arbitrary: fc.constantFrom(...enumNumbers(typeName)) },
    { weight: 1, arbitrary: fc.constantFrom(99, -1, INT32_MAX, INT32_MIN, 7, 8) },
  );
}

/** A printable form of a generated value: strings over 80 characters abbreviated. */
function show(value: unknown): string {
  const short = (v: unknown): unknown => {
    if (typeof v === 'string' && v.length > 80)
      return `${v.slice(0, 20)}…(${v.length} chars of ${fc.stringify(v.slice(0, 4))})`;
    if (Array.isArray(v)) return v.length > 8 ? [...v.slice(0, 4).map(short), `…(${v.length} items)`] : v.map(short);
    if (v && typeof v === 'object' && !(v instanceof Ref) && !(v instanceof Date) && !(v instanceof Uint8Array)) {
      return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, short(x)]));
    }
    return v;
  };
  return fc.stringify(short(value));
}

// ---------------------------------------------------------------------------------------------------
// (a) typed requests: objects for Req.fromPartial
// ---------------------------------------------------------------------------------------------------

/**
 * How a request is generated: `hostile` values everywhere (most requests fail validation), or plausible
 * values with the odd hostile one (requests get past validation to the domain and the database);
 * `big` allows huge strings (not inside repeated fields).
 */
interface Mode {
  readonly hostile: boolean;
  readonly big: boolean;
}

const HOSTILE: Mode = { hostile: true, big: true };
const PLAUSIBLE: Mode = { hostile: false, big: false };

const typedCache = new Map<string, fc.Arbitrary<Record<string, unknown>>>();

/** A partial object of message `typeName` (every field optional). */
function typedMessage(typeName: string, depth: number, mode: Mode): fc.Arbitrary<Record<string, unknown>> {
  const key = `${typeName}|${depth}|${mode.hostile}|${mode.big}`;
  let arb = typedCache.get(key);
  if (arb) return arb;
  if (typeName === 'google.protobuf.Timestamp') throw new Error('timestamps are Dates');
  const model: Record<string, fc.Arbitrary<unknown>> = {};
  for (const f of fieldsOf(typeName)) {
    const one = typedValue(f, depth, { ...mode, big: mode.big && !f.repeated });
    if (!one) continue;
    model[f.tsName] = f.repeated ? repeated(f, one, mode) : one;
  }
  // Hostile requests leave any field out; plausible ones set every field.
  arb = mode.hostile ? fc.record(model, { requiredKeys: [] }) : fc.record(model);
  typedCache.set(key, arb);
  return arb;
}

function typedValue(f: Field, depth: number, mode: Mode): fc.Arbitrary<unknown> | undefined {
  const sometimes = <T>(usual: fc.Arbitrary<T>, hostile: fc.Arbitrary<T>) =>
    mode.hostile ? hostile : fc.oneof({ weight: 10, arbitrary: usual }, { weight: 1, arbitrary: hostile });
  switch (f.kind) {
    case 'string':
      return stringValue(f.name, mode);
    case 'bytes':
      return fc.uint8Array({ maxLength: 64 });
    case 'bool':
      return fc.boolean();
    case 'int32':
      return sometimes(fc.integer({ min: 0, max: 60 }), int32s);
    case 'uint32':
      return fc.integer({ min: 0, max: 2 ** 32 - 1 });
    case 'int64':
      return int64s;
    case 'double':
      return fc.double();
    case 'enum':
      return enumValue(f.typeName, mode);
    case 'message':
      if (f.typeName === 'google.protobuf.Timestamp') return sometimes(nearNow, dates);
      if (f.typeName === 'google.protobuf.FieldMask') {
        return sometimes(
          fc.array(stringValue('paths', { hostile: false, big: false }), { maxLength: 3 }),
          fc.oneof(fc.array(stringValue('paths', mode), { maxLength: 4 }), fc.array(nastyString, { maxLength: 3 })),
        );
      }
      if (f.typeName === 'google.protobuf.Duration') {
        return sometimes(
          fc.record({ seconds: fc.integer({ min: 0, max: 3600 }).map(String), nanos: fc.constant(0) }),
          fc.record({ seconds: int64s, nanos: int32s }, { requiredKeys: [] }),
        );
      }
      if (depth >= 3) return undefined;
      return typedMessage(f.typeName, depth + 1, mode);
  }
}

/** A repeated field: usually a few elements, sometimes more than any documented limit. */
function repeated(f: Field, element: fc.Arbitrary<unknown>, mode: Mode): fc.Arbitrary<unknown[]> {
  if (!mode.hostile) return fc.array(element, { maxLength: 3 });
  const many =
    f.kind === 'string'
      ? fc.array(plausible(f.name) ?? fc.uuid(), { minLength: 21, maxLength: 600 })
      : fc.array(element, { minLength: 21, maxLength: 60 });
  return fc.oneof(
    { weight: 6, arbitrary: fc.array(element, { maxLength: 4 }) },
    { weight: 1, arbitrary: fc.array(element, { minLength: 2, maxLength: 3 }).map((xs) => [...xs, ...xs]) },
    { weight: 1, arbitrary: many },
  );
}

/** A typed request of `rpc`, encoded after its Refs are resolved. */
function typedRequest(rpc: Rpc): fc.Arbitrary<Body> {
  return fc
    .oneof(typedMessage(rpc.requestType, 0, HOSTILE), typedMessage(rpc.requestType, 0, PLAUSIBLE))
    .map(
      (partial) =>
        new Body('typed', show(partial), (scene) =>
          Buffer.from(rpc.codec.encode(rpc.codec.fromPartial(resolve(partial, scene))).finish()),
        ),
    );
}

// ---------------------------------------------------------------------------------------------------
// (b) wire requests: decodable protobuf with what fromPartial cannot express
// ---------------------------------------------------------------------------------------------------

/** One wire entry; `value` is a varint, raw bytes, a Ref (UTF-8 of what it names) or a nested message. */
type WireValue = bigint | Uint8Array | Ref | WireEntry[];
interface WireEntry {
  readonly number: number;
  readonly wireType: WireType;
  readonly value: WireValue;
}

/** Bytes that are not UTF-8 (and some that are, but hostile). */
const badUtf8: fc.Arbitrary<Uint8Array> = fc.oneof(
  fc
    .constantFrom(
      [0xff, 0xfe],
      [0xc0, 0x80],
      [0xed, 0xa0, 0x80],
      [0xed, 0xbf, 0xbf, 0x41],
      [0x80],
      [0xf4, 0x90, 0x80, 0x80],
      [0xe2, 0x82],
      [0xf0, 0x9f, 0x98],
      [0x00],
      [0xef, 0xbb, 0xbf],
      [0x61, 0xff, 0x62],
    )
    .map((b) => Uint8Array.from(b)),
  fc.uint8Array({ maxLength: 40 }),
  fc
    .tuple(fc.uint8Array({ minLength: 1, maxLength: 4 }), fc.integer({ min: 1, max: 200 }))
    .map(([unit, n]) => Uint8Array.from(Array.from({ length: n }, () => [...unit]).flat())),
);

const varints: fc.Arbitrary<bigint> = fc.oneof(
  fc.constantFrom(
    0n,
    1n,
    2n,
    99n,
    2n ** 31n - 1n,
    2n ** 31n,
    2n ** 32n - 1n,
    2n ** 32n,
    2n ** 63n - 1n,
    2n ** 64n - 1n,
  ),
  fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
);

const utf8 = (s: string) => new TextEncoder().encode(s);

function wireValue(f: Field, depth: number): fc.Arbitrary<WireValue> {
  switch (f.kind) {
    case 'string': {
      const fromStr = (a: fc.Arbitrary<string | Ref>) => a.map((s) => (s instanceof Ref ? s : utf8(s)));
      return fc.oneof(badUtf8, fromStr(plausible(f.name) ?? nastyString), fromStr(nastyString));
    }
    case 'bytes':
      return fc.uint8Array({ maxLength: 40 });
    case 'message':
      if (depth >= 3) return fc.constant([]);
      return wireMessage(f.typeName, depth + 1);
    default:
      return varints;
  }
}

function wireTypeOf(f: Field): WireType {
  return f.kind === 'string' || f.kind === 'bytes' || f.kind === 'message'
    ? WireType.LengthDelimited
    : f.kind === 'double'
      ? WireType.Bit64
      : WireType.Varint;
}

/**
 * A value of another wire type than field `f` has (decoders skip those), or of any wire type for an
 * unknown field number.
 */
function strayEntry(number: number, f?: Field): fc.Arbitrary<WireEntry> {
  const own = f === undefined ? undefined : wireTypeOf(f);
  // Packed repeated scalars are length-delimited too.
  const packed = f !== undefined && f.repeated && wireTypeOf(f) === WireType.Varint;
  const all: [WireType, fc.Arbitrary<WireValue>][] = [
    [WireType.Varint, varints],
    [WireType.LengthDelimited, fc.uint8Array({ maxLength: 16 })],
    [WireType.Bit64, fc.uint8Array({ minLength: 8, maxLength: 8 })],
    [WireType.Bit32, fc.uint8Array({ minLength: 4, maxLength: 4 })],
  ];
  return fc.oneof(
    ...all
      .filter(([wt]) => wt !== own && !(packed && wt === WireType.LengthDelimited))
      .map(([wireType, value]) => value.map((v) => ({ number, wireType, value: v }))),
  );
}

const wireCache = new Map<string, fc.Arbitrary<WireEntry[]>>();

/** A decodable but hostile message of `typeName`: fields in any order, repeated, of the wrong wire type, unknown. */
function wireMessage(typeName: string, depth: number): fc.Arbitrary<WireEntry[]> {
  const key = `${typeName}|${depth}`;
  let arb = wireCache.get(key);
  if (arb) return arb;
  const fields = fieldsOf(typeName);
  // An empty request message (GetRetentionPolicyRequest) has only stray fields to send.
  if (fields.length === 0) {
    arb = fc.array(
      fc.constantFrom(1, 99, 1000, 2 ** 29 - 1).chain((n) => strayEntry(n)),
      { maxLength: 4 },
    );
    wireCache.set(key, arb);
    return arb;
  }
  const entry = fc.oneof(
    { weight: 8, arbitrary: fc.constantFrom(...fields).chain((f) => entryOf(f, depth)) },
    { weight: 1, arbitrary: fc.constantFrom(...fields).chain((f) => strayEntry(f.number, f)) },
    {
      weight: 1,
      arbitrary: fc
        .constantFrom(Math.max(...fields.map((f) => f.number)) + 1, 99, 1000, 2 ** 29 - 1)
        .chain((n) => strayEntry(n)),
    },
  );
  arb = fc.array(entry, { maxLength: 8 });
  wireCache.set(key, arb);
  return arb;
}

function entryOf(f: Field, depth: number): fc.Arbitrary<WireEntry> {
  if (f.repeated && (f.kind === 'enum' || f.kind === 'int32')) {
    // Packed repeated scalars.
    return fc.oneof(
      wireValue(f, depth).map((value) => ({ number: f.number, wireType: WireType.Varint, value })),
      fc.array(varints, { maxLength: 8 }).map((vs) => {
        const w = new BinaryWriter();
        for (const v of vs) w.uint64(v);
        return { number: f.number, wireType: WireType.LengthDelimited, value: w.finish() };
      }),
    );
  }
  return wireValue(f, depth).map((value) => ({ number: f.number, wireType: wireTypeOf(f), value }));
}

function encodeWire(entries: WireEntry[], scene: Scene): Uint8Array {
  const w = new BinaryWriter();
  for (const e of entries) {
    w.tag(e.number, e.wireType);
    const v = e.value;
    if (e.wireType === WireType.Varint) w.uint64(v as bigint);
    else if (e.wireType === WireType.Bit64 || e.wireType === WireType.Bit32) w.raw(v as Uint8Array);
    else if (v instanceof Ref) w.bytes(utf8(v.make(scene)));
    else if (v instanceof Uint8Array) w.bytes(v);
    else w.bytes(encodeWire(v as WireEntry[], scene));
  }
  return w.finish();
}

/** A printable form of wire entries: `#field/wiretype=value`, bytes in hex. */
function describeWire(entries: WireEntry[]): string {
  return `[${entries
    .map((e) => {
      const v = e.value;
      const text =
        typeof v === 'bigint'
          ? `${v}`
          : v instanceof Ref
            ? v[fc.toStringMethod]()
            : v instanceof Uint8Array
              ? `0x${Buffer.from(v.subarray(0, 64)).toString('hex')}${v.length > 64 ? `…(${v.length} bytes)` : ''}`
              : describeWire(v);
      return `#${e.number}/${e.wireType}=${text}`;
    })
    .join(' ')}]`;
}

function wireRequest(rpc: Rpc): fc.Arbitrary<Body> {
  return wireMessage(rpc.requestType, 0).map(
    (entries) => new Body('wire', describeWire(entries), (scene) => Buffer.from(encodeWire(entries, scene))),
  );
}

// ---------------------------------------------------------------------------------------------------
// (c) raw bytes: random and mutated buffers
// ---------------------------------------------------------------------------------------------------

/** Hand-made malformations: truncated lengths, bad tags, overlong varints, groups, field number 0. */
const MALFORMED = [
  [0x0a],
  [0x0a, 0x05, 0x61],
  [0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f],
  [0x08],
  [0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
  [0x00],
  [0x07],
  [0x0e, 0x01],
  [0x0b],
  [0x0b, 0x0b, 0x0b, 0x0b],
  [0x0c],
  [0x09, 0x01],
  [0x0d, 0x01, 0x02],
  [0xf8, 0xff, 0xff, 0xff, 0xff, 0x01, 0x00],
  [0x12, 0x02, 0x0a, 0x05],
].map((b) => Uint8Array.from(b));

function bytesRequest(rpc: Rpc): fc.Arbitrary<Body> {
  const fixed = (bytes: Uint8Array, label: string) =>
    new Body('bytes', `${label} ${Buffer.from(bytes).toString('hex')}`, () => Buffer.from(bytes));
  const mutated = fc
    .tuple(
      fc.oneof(typedMessage(rpc.requestType, 0, PLAUSIBLE), typedMessage(rpc.requestType, 1, HOSTILE)),
      fc.constantFrom('truncate', 'flip', 'append', 'insert'),
      fc.nat(),
      fc.uint8Array({ minLength: 1, maxLength: 8 }),
    )
    .map(
      ([partial, how, at, noise]) =>
        new Body('bytes', `${how}@${at} ${Buffer.from(noise).toString('hex')} of ${show(partial)}`, (scene) => {
          const b = Buffer.from(rpc.codec.encode(rpc.codec.fromPartial(resolve(partial, scene))).finish());
          const i = b.length === 0 ? 0 : at % b.length;
          if (how === 'truncate') return b.subarray(0, i);
          if (how === 'flip') {
            if (b.length > 0) b[i] = b[i]! ^ (noise[0]! || 0xff);
            return b;
          }
          if (how === 'append') return Buffer.concat([b, noise]);
          return Buffer.concat([b.subarray(0, i), noise, b.subarray(i)]);
        }),
    );
  return fc.oneof(
    fc.uint8Array({ maxLength: 256 }).map((b) => fixed(b, 'random')),
    fc.constantFrom(...MALFORMED).map((b) => fixed(b, 'malformed')),
    mutated,
  );
}

// ---------------------------------------------------------------------------------------------------
// Callers
// ---------------------------------------------------------------------------------------------------

type Auth =
  | { kind: 'valid' }
  | { kind: 'none' }
  | { kind: 'header'; value: string }
  | { kind: 'tampered'; at: number }
  | { kind: 'otherSecret' };

const printable = fc.string({ unit: fc.integer({ min: 0x20, max: 0x7e }).map((c) => String.fromCharCode(c)) });

const auths: fc.Arbitrary<Auth> = fc.oneof(
  { weight: 30, arbitrary: fc.constant({ kind: 'valid' as const }) },
  { weight: 1, arbitrary: fc.constant({ kind: 'none' as const }) },
  {
    weight: 1,
    arbitrary: fc
      .oneof(
        printable.map((s) => `Bearer ${s}`),
        printable,
        fc.constantFrom(
          'Bearer',
          'Bearer ',
          'bearer a.b.c',
          'Bearer a.b.c',
          'Basic dXNlcjpwYXNz',
          `Bearer ${'A'.repeat(6000)}`,
        ),
        fc
          .tuple(fc.base64String(), fc.base64String(), fc.base64String())
          .map(([a, b, c]) => `Bearer ${a.replace(/=/g, '')}.${b.replace(/=/g, '')}.${c.replace(/=/g, '')}`),
      )
      .map((value) => ({ kind: 'header' as const, value })),
  },
  { weight: 1, arbitrary: fc.nat().map((at) => ({ kind: 'tampered' as const, at })) },
  { weight: 1, arbitrary: fc.constant({ kind: 'otherSecret' as const }) },
);

const roles: fc.Arbitrary<Role[]> = fc.oneof(
  { weight: 6, arbitrary: fc.constantFrom<Role>('patient', 'provider', 'staff', 'service').map((r) => [r]) },
  { weight: 1, arbitrary: fc.subarray<Role>(['patient', 'provider', 'staff', 'service'], { minLength: 2 }) },
);

async function metadataFor(auth: Auth, scene: Scene): Promise<Metadata> {
  const md = new Metadata();
  switch (auth.kind) {
    case 'valid':
      return scene.caller.md;
    case 'none':
      return md;
    case 'header':
      md.set('authorization', auth.value);
      return md;
    case 'tampered': {
      const t = scene.caller.token;
      const i = auth.at % t.length;
      const c = t[i] === 'A' ? 'B' : 'A';
      md.set('authorization', `Bearer ${t.slice(0, i)}${c}${t.slice(i + 1)}`);
      return md;
    }
    case 'otherSecret': {
      const token = await new SignJWT({ tenant: scene.tenantId, roles: ['staff'] })
        .setProtectedHeader({ alg: 'HS256' })
        .setSubject(scene.caller.userId)
        .setIssuer(env.config.jwt.issuer)
        .setAudience(env.config.jwt.audience)
        .setExpirationTime('1h')
        .sign(new TextEncoder().encode('another secret of at least thirty-two characters'));
      md.set('authorization', `Bearer ${token}`);
      return md;
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// Calls, outcomes and the properties
// ---------------------------------------------------------------------------------------------------

/** A request body of some level; `bytes` encodes it once the case's scene exists. */
class Body {
  constructor(
    readonly level: 'typed' | 'wire' | 'bytes',
    /** What fast-check prints for it (long strings abbreviated; the seed reproduces it exactly). */
    readonly description: string,
    readonly bytes: (scene: Scene) => Buffer,
  ) {}
  [fc.toStringMethod](): string {
    return `${this.level} ${this.description}`;
  }
}

interface Case {
  readonly rpc: string;
  readonly body: Body;
  readonly roles: Role[];
  readonly auth: Auth;
  readonly seeded: boolean;
}

interface Outcome {
  readonly code: status;
  readonly reason: string;
  readonly details: string;
  /** The first stream response, or the unary response, did not decode. */
  readonly undecodable?: boolean;
}

const identity = (b: Buffer) => b;
const CALL_TIMEOUT_MS = 20_000;
let raw: Client;

function outcomeOf(err: ServiceError): Outcome {
  let reason = '';
  try {
    reason = err.metadata?.get('grpc-status-details-bin').length ? (errorDetails(err).info?.reason ?? '') : '';
  } catch {
    reason = '(undecodable details)';
  }
  return { code: err.code, reason, details: err.details };
}

function unary(rpc: Rpc, body: Buffer, md: Metadata): Promise<Outcome> {
  return new Promise((resolve) => {
    raw.makeUnaryRequest(
      rpc.path,
      identity,
      identity,
      body,
      md,
      { deadline: new Date(Date.now() + CALL_TIMEOUT_MS) },
      (err, res) => {
        if (err) return resolve(outcomeOf(err));
        try {
          rpc.decodeResponse(res!);
          resolve({ code: status.OK, reason: '', details: '' });
        } catch (e) {
          resolve({ code: status.OK, reason: '', details: String(e), undecodable: true });
        }
      },
    );
  });
}

/** Opens a stream, waits for its first response or its end, then cancels it. */
function firstOfStream(rpc: Rpc, body: Buffer, md: Metadata): Promise<Outcome> {
  return new Promise((resolve) => {
    const stream: ClientReadableStream<Buffer> = raw.makeServerStreamRequest(rpc.path, identity, identity, body, md, {
      deadline: new Date(Date.now() + CALL_TIMEOUT_MS),
    });
    let settled = false;
    const settle = (o: Outcome) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolve(o);
      stream.cancel();
    };
    const timer = setTimeout(() => settle({ code: status.OK, reason: 'NO_FIRST_RESPONSE', details: '' }), 5_000);
    stream.on('data', (res: Buffer) => {
      try {
        rpc.decodeResponse(res);
        settle({ code: status.OK, reason: '', details: '' });
      } catch (e) {
        settle({ code: status.OK, reason: '', details: String(e), undecodable: true });
      }
    });
    stream.on('error', (err: ServiceError) => settle(outcomeOf(err)));
    stream.on('status', (st: { code: status }) => {
      if (st.code === status.OK) settle({ code: status.OK, reason: 'ENDED', details: '' });
    });
  });
}

// ---- storage ----

let tenantTables: string[] = [];
let countSql = '';

/**
 * What a tenant has stored: per tenant table with rows, `<count>:<md5 of the rows>` (so an update is
 * seen too). An empty tenant is `{}`.
 */
async function tenantRows(tenantId: string): Promise<Record<string, string>> {
  const { rows } = await db().query<{ t: string; n: number; digest: string }>(countSql, [tenantId]);
  return Object.fromEntries(rows.filter((r) => r.n > 0).map((r) => [r.t, `${r.n}:${r.digest}`]));
}

// ---- the distribution the fuzzer saw ----

const seen = new Map<string, number>();
function record(level: string, outcome: Outcome): void {
  const bad = outcome.code === status.INTERNAL || outcome.code === status.UNKNOWN;
  const why = bad ? ` "${outcome.details.slice(0, 60)}"` : outcome.reason ? ` ${outcome.reason}` : '';
  const key = `${level.padEnd(26)} ${status[outcome.code]}${why}`;
  seen.set(key, (seen.get(key) ?? 0) + 1);
}

/**
 * FUZZ_SURVEY=1: failures are collected (one example per kind) and listed at the end instead of
 * failing the property, so one run shows every distinct problem, not only the first.
 */
const SURVEY = process.env.FUZZ_SURVEY === '1';
const surveyed = new Map<string, { count: number; example: string }>();
function check(kind: string, c: Case, assertion: () => void): void {
  if (!SURVEY) return assertion();
  try {
    assertion();
  } catch (err) {
    const entry = surveyed.get(kind) ?? {
      count: 0,
      example: `${(err as Error).message}\n      case: ${fc.stringify(c)}`,
    };
    entry.count++;
    surveyed.set(kind, entry);
  }
}

/**
 * Runs one case and checks the properties. `decoding` says which bodies the test wants: `must` (typed
 * and wire-level bodies decode by construction; one that does not is a bug of this file), or only those
 * that do (`only`) or do not (`never`) decode as the request message (others are skipped).
 */
function runCase(decoding: 'must' | 'only' | 'never') {
  return async (c: Case): Promise<void> => {
    const rpc = RPC_BY_NAME.get(c.rpc)!;
    const via = rpc.stream ? 'stream' : 'unary';
    const decodes = (body: Buffer) => {
      try {
        rpc.codec.decode(body);
        return true;
      } catch {
        return false;
      }
    };
    const wanted = (body: Buffer) => (decoding === 'never' ? !decodes(body) : decodes(body));
    // Decided on a stand-in scene first, so a skipped case costs no tenant.
    fc.pre(decoding === 'must' || wanted(c.body.bytes({ ...STAND_IN, rpc: c.rpc })));
    const scene = await makeScene(c.rpc, c.roles, c.seeded);
    const body = c.body.bytes(scene);
    if (decoding === 'must' && !decodes(body)) {
      throw new Error(`generator bug: ${body.toString('hex')} does not decode`);
    }
    fc.pre(wanted(body));
    // Audit records are written a moment after their call: the scene's first, so `before` holds them.
    await env.app.audit.flush();
    const before: Record<string, string> = c.seeded ? await tenantRows(scene.tenantId) : {};
    const md = await metadataFor(c.auth, scene);
    const outcome = via === 'unary' ? await unary(rpc, body, md) : await firstOfStream(rpc, body, md);
    record(`${via}/${c.body.level}${decoding === 'never' ? '(undecodable)' : ''}`, outcome);
    const hex = body.length > 300 ? `${body.subarray(0, 300).toString('hex')}…` : body.toString('hex');
    const where = `${c.rpc} (request 0x${hex}, ${body.length} bytes; auth ${c.auth.kind}, ${c.seeded ? 'seeded' : 'empty'} tenant)`;
    check(`${c.rpc} ${status[outcome.code]} ${outcome.details.slice(0, 80)}`, c, () => {
      expect(
        [status.INTERNAL, status.UNKNOWN],
        `${where} answered ${status[outcome.code]} ${outcome.reason}: ${outcome.details}`,
      ).to.not.include(outcome.code);
      expect(outcome.undecodable, `${where}: response does not decode: ${outcome.details}`).to.not.equal(true);
    });
    if (outcome.code !== status.OK) {
      // A refusal records nothing in the audit either.
      await env.app.audit.flush();
      const after = await tenantRows(scene.tenantId);
      check(`${c.rpc} ${status[outcome.code]} ${outcome.reason} stored rows`, c, () => {
        expect(
          after,
          `${where} was refused (${status[outcome.code]} ${outcome.reason}) but changed its tenant's rows`,
        ).to.deep.equal(before);
      });
    }
  };
}

function caseOf(rpcs: Rpc[], body: (rpc: Rpc) => fc.Arbitrary<Body>): fc.Arbitrary<Case> {
  return fc.oneof(
    ...rpcs.map((rpc) =>
      fc
        .record({
          body: body(rpc),
          roles,
          auth: auths,
          // A third of the cases run in a tenant seeded with a thread, a message and a session.
          seeded: fc.oneof({ weight: 2, arbitrary: fc.constant(false) }, { weight: 1, arbitrary: fc.constant(true) }),
        })
        .map((r): Case => ({ rpc: rpc.name, ...r })),
    ),
  );
}

const scale = Number(process.env.FUZZ_RUNS ?? '1');
function params(numRuns: number): fc.Parameters<[Case]> {
  return {
    numRuns: Math.max(1, Math.round(numRuns * scale)),
    ...(process.env.FUZZ_SEED ? { seed: Number(process.env.FUZZ_SEED) } : {}),
    ...(process.env.FUZZ_PATH ? { path: process.env.FUZZ_PATH } : {}),
  };
}

describe('fuzz: every comms.v1 RPC with random and malformed requests', function () {
  this.timeout(300_000);

  before(async () => {
    raw = new Client(env.address, credentials.createInsecure());
    threads = threadClient();
    messages = messageClient();
    sessions = sessionClient();
    const { rows } = await db().query<{ table_name: string; data_type: string }>(
      `select c.table_name, c.data_type
         from information_schema.columns c
         join information_schema.tables t on t.table_schema = c.table_schema and t.table_name = c.table_name
        where c.table_schema = 'public' and c.column_name = 'tenant_id' and t.table_type = 'BASE TABLE'
        order by c.table_name`,
    );
    tenantTables = rows.map((r) => r.table_name);
    countSql = rows
      .map(
        (r) =>
          `select '${r.table_name}' as t, count(*)::int as n,
                  md5(coalesce(string_agg(x::text, '|' order by x::text), '')) as digest
             from public."${r.table_name}" x where tenant_id${
               r.data_type === 'text' || r.data_type === 'character varying' ? '' : '::text'
             } = $1`,
      )
      .join(' union all ');
  });

  after(() => {
    raw?.close();
    threads?.close();
    messages?.close();
    sessions?.close();
    const lines = [...seen.entries()]
      .sort(([a], [b]) => a.localeCompare(b))
      .map(([k, n]) => `  ${String(n).padStart(5)}  ${k}`);
    for (const [kind, { count, example }] of surveyed) console.log(`\n  SURVEY ${count}× ${kind}\n      ${example}`);
    console.log(
      `\n  status distribution (${[...seen.values()].reduce((a, b) => a + b, 0)} calls):\n${lines.join('\n')}\n`,
    );
  });

  it('covers every service and RPC of the contract, and the tenant tables', () => {
    const services = new Set(RPCS.map((r) => `comms.v1.${r.name.split('/')[0]!}`));
    expect([...services]).to.have.members([...SERVICE_NAMES]);
    expect(UNARY.length, 'unary RPCs').to.be.greaterThan(30);
    expect(STREAMS.map((r) => r.name)).to.have.members([
      'FeedService/WatchThread',
      'FeedService/WatchInbox',
      'FeedService/WatchSession',
      'GovernanceService/ExportThread',
    ]);
    expect(tenantTables).to.include.members(['thread', 'thread_participant', 'message']);
  });

  it('typed requests (Req.fromPartial with hostile values): no INTERNAL/UNKNOWN, refusals store nothing', async () => {
    await fc.assert(fc.asyncProperty(caseOf(UNARY, typedRequest), runCase('must')), params(600));
  });

  it('wire-level requests (invalid UTF-8, out-of-range varints and timestamps, stray fields): same properties', async () => {
    await fc.assert(fc.asyncProperty(caseOf(UNARY, wireRequest), runCase('must')), params(400));
  });

  it('server streams, typed and wire-level (open, first answer, cancel): same properties', async () => {
    const body = (rpc: Rpc) => fc.oneof(typedRequest(rpc), wireRequest(rpc));
    await fc.assert(fc.asyncProperty(caseOf(STREAMS, body), runCase('must')), params(150));
  });

  it('random and mutated bytes that still decode, unary and streams: same properties', async () => {
    await fc.assert(fc.asyncProperty(caseOf(RPCS, bytesRequest), runCase('only')), params(200));
  });

  it('bytes that are not the request message: INVALID_ARGUMENT (or UNAUTHENTICATED), never INTERNAL', async () => {
    await fc.assert(fc.asyncProperty(caseOf(RPCS, bytesRequest), runCase('never')), params(50));
  });

  it('the server is still up: health SERVING and a normal CreateThread works', async () => {
    const health = healthClient();
    try {
      expect(await checkHealth(health)).to.equal('SERVING');
      for (const name of SERVICE_NAMES) expect(await checkHealth(health, name), name).to.equal('SERVING');
    } finally {
      health.close();
    }
    const user = await newUser(newTenant(), 'provider');
    const thread = await createThread(threads, user, {
      subject: 'after the fuzz',
      participants: [participant('pat-1', ParticipantRole.PARTICIPANT_ROLE_PATIENT)],
    });
    expect(thread.subject).to.equal('after the fuzz');
  });
});
