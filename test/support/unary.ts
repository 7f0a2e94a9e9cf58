import type { Client, Metadata, ServiceError } from '@grpc/grpc-js';

/** A unary method of a ts-proto generated grpc-js client, in its callback form. */
export type UnaryMethod<Req, Res> = (
  req: Req,
  md: Metadata,
  opts: { deadline?: Date },
  cb: (err: ServiceError | null, res: Res) => void,
) => unknown;

/**
 * Promisifies one unary call of a generated client. Shared by the tests and the benchmark's setup
 * traffic; it depends on nothing but grpc-js.
 */
export function call<Req, Res>(
  client: Client,
  method: UnaryMethod<Req, Res>,
  req: Req,
  md: Metadata,
  opts: { deadline?: Date } = {},
): Promise<Res> {
  return new Promise((resolve, reject) =>
    method.call(client, req, md, opts, (err, res) => (err ? reject(err) : resolve(res))),
  );
}
